//! What the Linux tier needs from the user: a type check it was given no
//! means for is skipped, naming the option that enables it (never a fail
//! of the backend's), and a host path must mean the same file nested or
//! not, or the runner refuses it before anything runs.

use crate::scenario::LinuxTier;

/// The placeholder for the scratch directory beside the backend's socket.
const DIR: &str = "{dir}";

/// Why the Linux tier cannot use `--vsock-host-socket PATH` here, if it
/// cannot. Nested, the backend runs chrooted into the host's root inside
/// the L1 and the L1's script listens beside it: a socket both can reach
/// must be on L1's own memory, which `{dir}` is; a host path is on
/// virtio-fs there, where a connection to a socket times out, and a
/// relative path means the backend's directory to one and L1's to the
/// other.
pub fn host_socket_problem(path: &str, tier: LinuxTier) -> Option<String> {
    if tier == LinuxTier::Direct || path.starts_with(DIR) {
        return None;
    }
    let name = std::path::Path::new(path)
        .file_name()
        .map_or("vm.vsock".into(), |n| n.to_string_lossy().into_owned());
    Some(format!(
        "--vsock-host-socket {path}: the Linux tier runs nested here (no hardware \
         virtualization), where the backend and the guest's host side meet only in \
         {DIR}: write --vsock-host-socket {DIR}/{name} and give the backend the same \
         ({DIR}/{name} for vhost-device-vsock's --uds-path)"
    ))
}

/// The options a type's Linux check needs beyond the backend: the skip
/// reason when they were not given.
pub fn missing_means(check: &str, vsock_host_socket: Option<&str>) -> Option<&'static str> {
    match check {
        "vsock-connect" if vsock_host_socket.is_none() => Some(
            "not checked: give --vsock-host-socket PATH (the backend's uds-path) for the \
             guest to connect through the backend",
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The case found as a backend author would write it: an absolute
    /// path that works on a KVM host and timed out nested.
    #[test]
    fn a_host_path_is_refused_nested_and_the_fix_is_named() {
        let why =
            host_socket_problem("/root/vs/vm.vsock", LinuxTier::Nested).expect("refused nested");
        assert!(why.contains("--vsock-host-socket {dir}/vm.vsock"), "{why}");
        assert!(why.contains("nested"), "{why}");
        assert_eq!(
            host_socket_problem("/root/vs/vm.vsock", LinuxTier::Direct),
            None
        );
        assert!(host_socket_problem("vm.vsock", LinuxTier::Nested).is_some());
        assert_eq!(
            host_socket_problem("{dir}/vm.vsock", LinuxTier::Nested),
            None
        );
    }

    #[test]
    fn a_check_without_its_means_is_a_skip_naming_the_option() {
        let why = missing_means("vsock-connect", None).expect("skipped");
        assert!(why.contains("--vsock-host-socket"), "{why}");
        assert_eq!(missing_means("vsock-connect", Some("{dir}/vm.vsock")), None);
        assert_eq!(missing_means("fs-mount-io", None), None);
    }
}
