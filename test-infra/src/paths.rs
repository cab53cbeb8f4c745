//! Where the project's artifacts are: the workspace root, `vmm`, the probe
//! guest. Environment variables override each, for other projects' CI.

use std::path::{Path, PathBuf};

/// The workspace root (this crate, and the integration tests', live one
/// level below it). Under nextest, where the tests run: a test from an
/// archive (ci/partition) runs in a checkout at another path than the
/// one it was built in, which nextest gives as `CARGO_MANIFEST_DIR`.
/// Elsewhere where this crate was built: a program started by hand (the
/// conformance runner, the bench) may run inside someone else's cargo
/// project.
pub fn workspace_root() -> PathBuf {
    let runtime = std::env::var_os("NEXTEST")
        .and(std::env::var_os("CARGO_MANIFEST_DIR"))
        .map(PathBuf::from);
    let manifest_dir = runtime.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The newest modification time of the files under `dir`, but `ignored`.
fn newest_mtime(dir: &Path, ignored: &[PathBuf]) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let mtime = if ignored.contains(&path) {
            None
        } else if path.is_dir() {
            newest_mtime(&path, ignored)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        newest = newest.max(mtime);
    }
    newest
}

/// An artifact built from `sources` (less `ignored`: files under them that
/// it is not built from), or an explanation of why it cannot be used.
pub(crate) fn built_artifact(
    env_var: &str,
    default: PathBuf,
    sources: &[&str],
    ignored: &[&str],
    build: &str,
) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(path));
    }
    let built = std::fs::metadata(&default)
        .and_then(|m| m.modified())
        .map_err(|_| {
            format!(
                "{} is missing: run `{build}` (or set {env_var})",
                default.display()
            )
        })?;
    let root = workspace_root();
    let ignored: Vec<PathBuf> = ignored.iter().map(|i| root.join(i)).collect();
    for source in sources {
        if newest_mtime(&root.join(source), &ignored).is_some_and(|m| m > built) {
            return Err(format!(
                "{} is older than {source}: run `{build}` (or set {env_var})",
                default.display()
            ));
        }
    }
    Ok(default)
}

/// The `vmm` binary under test (`VMM_BIN` overrides).
pub fn vmm_binary() -> Result<PathBuf, String> {
    built_artifact(
        "VMM_BIN",
        workspace_root().join("target/release/vmm"),
        &["vmm/src", "vmm/Cargo.toml", "virtio-types/src"],
        &[],
        "cargo build --release -p vmm",
    )
}

/// The probe guest ELF (`PROBE_GUEST` overrides).
pub fn probe_guest() -> Result<PathBuf, String> {
    built_artifact(
        "PROBE_GUEST",
        workspace_root().join("target/probe-guest.elf"),
        &["test-infra/probe-guest/src"],
        &[],
        "ci/build-probe-guest",
    )
}

/// The conformance runner (`VHOST_USER_CONFORMANCE` overrides).
pub fn conformance_binary() -> Result<PathBuf, String> {
    built_artifact(
        "VHOST_USER_CONFORMANCE",
        workspace_root().join("target/release/vhost-user-conformance"),
        &["test-infra/src", "virtio-types/src"],
        // cargo does not relink the runner when only another binary changed.
        &[
            "test-infra/src/bin/bench",
            "test-infra/src/bin/linux-demo.rs",
        ],
        "cargo build --release -p test-infra",
    )
}

/// Where `find_or_install` installs what it cannot find: `$VMM_TOOLS_ROOT`,
/// else the user's cache (`$XDG_CACHE_HOME` or `~/.cache`, then
/// `vmm-test-tools`), which every clone on the machine shares (a fresh
/// clone does not build them again), else `target/tools`. ci/setup uses
/// the same place.
pub fn tools_root() -> PathBuf {
    if let Some(root) = std::env::var_os("VMM_TOOLS_ROOT").filter(|r| !r.is_empty()) {
        return PathBuf::from(root);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    match cache {
        Some(cache) => cache.join("vmm-test-tools"),
        None => workspace_root().join("target/tools"),
    }
}

/// A backend from crates.io: `env_var` if set, else `program` on PATH or
/// in ~/.cargo/bin, else installed once with `cargo install CRATE --locked`
/// into `tools_root()` (tests running at the same time wait for the one
/// that installs). ci/setup installs them up front; this serves a suite
/// run without it.
pub fn find_or_install(env_var: &str, program: &str, krate: &str) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(path));
    }
    if let Some(path) = find_program(program) {
        return Ok(path);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    install(Path::new(&cargo), &tools_root(), program, krate)
}

/// `cargo install KRATE --locked --root ROOT` under a lock, unless
/// ROOT/bin/PROGRAM is there already.
fn install(cargo: &Path, root: &Path, program: &str, krate: &str) -> Result<PathBuf, String> {
    use std::os::fd::AsRawFd;

    let bin = root.join("bin").join(program);
    std::fs::create_dir_all(root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    let lock_path = root.join(format!(".{krate}.lock"));
    let lock = std::fs::File::create(&lock_path)
        .map_err(|e| format!("creating {}: {e}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; it is released when `lock` is
    // dropped at the end of this function.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "locking {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    if bin.is_file() {
        return Ok(bin);
    }
    eprintln!(
        "test-infra: {program} not found; installing it: cargo install {krate} --locked --root {}",
        root.display()
    );
    let output = std::process::Command::new(cargo)
        .args(["install", krate, "--locked", "--quiet", "--root"])
        .arg(root)
        .output()
        .map_err(|e| format!("running {}: {e}", cargo.display()))?;
    if !output.status.success() || !bin.is_file() {
        return Err(format!(
            "cargo install {krate} failed ({}); ci/setup installs it with the packages it needs:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(bin)
}

/// A program on PATH or in ~/.cargo/bin.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for cargo that "installs" by writing the program, and
    /// counts how often it ran.
    fn fake_cargo(dir: &Path) -> PathBuf {
        let cargo = dir.join("cargo");
        std::fs::write(
            &cargo,
            "#!/bin/sh\n\
             # cargo install KRATE --locked --quiet --root ROOT\n\
             echo run >> \"$6/runs\"\n\
             mkdir -p \"$6/bin\" && printf '#!/bin/sh\\n' > \"$6/bin/$2-bin\"\n",
        )
        .unwrap();
        std::fs::set_permissions(&cargo, std::fs::Permissions::from_mode(0o755)).unwrap();
        cargo
    }

    #[test]
    fn installs_once_even_when_asked_at_the_same_time() {
        let dir = tempfile::tempdir().unwrap();
        let cargo = fake_cargo(dir.path());
        let root = dir.path().join("tools");
        let results: Vec<Result<PathBuf, String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| install(&cargo, &root, "thing-bin", "thing")))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in &results {
            assert_eq!(r.as_deref(), Ok(root.join("bin/thing-bin").as_path()));
        }
        let runs = std::fs::read_to_string(root.join("runs")).unwrap();
        assert_eq!(runs.lines().count(), 1, "cargo install ran {runs:?}");
    }

    #[test]
    fn a_failed_install_says_how_to_get_the_program() {
        let dir = tempfile::tempdir().unwrap();
        let e = install(Path::new("/bin/false"), dir.path(), "nothing", "nothing").unwrap_err();
        assert!(e.contains("ci/setup"), "{e}");
    }
}
