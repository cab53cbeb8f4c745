//! The runner's command line.

use clap::Parser;

use super::*;

/// Checks a vhost-user backend: asks it directly (backend tier, for a
/// backend the runner starts: features, queue count, GET_CONFIG's offset),
/// then boots the probe guest under vmm with a generic vhost-user device
/// for it and reports each check (generic tier: negotiation, PCI identity,
/// features, queues, DRIVER_OK, config read, reset and re-initialisation,
/// and with a command a reconnect to the backend restarted; then the tier
/// for the device type: fs, rng, or echo with --echo). A warning reports a
/// deviation without failing the run. Exit status 0 only if no check
/// failed. --list-checks lists them all.
#[derive(Parser, Debug)]
#[command(name = "vhost-user-conformance", version)]
pub(super) struct Args {
    /// The VIRTIO device ID, by number (1..63) or name (fs, net, block,
    /// console, rng, vsock, sound, scmi, i2c, gpio).
    #[arg(long, value_parser = parse_virtio_id, required_unless_present = "list_checks")]
    pub(super) virtio_id: Option<u32>,
    /// Queue sizes, comma-separated. Without it, queues of 256: as many as
    /// GET_QUEUE_NUM says (with MQ) up to the type's usual count, or the
    /// usual count (2 for a type the table does not know).
    #[arg(long, value_delimiter = ',', value_parser = parse_queue_size)]
    pub(super) queue_sizes: Option<Vec<u32>>,
    /// Length of the device config window, for types the VIRTIO
    /// specification gives no size.
    #[arg(long)]
    pub(super) config_size: Option<u32>,
    /// A backend already listening here (instead of a command).
    #[arg(long, conflicts_with = "command")]
    pub(super) socket: Option<PathBuf>,
    /// The backend is an echo device (queue 0 comes back reversed on
    /// queue 1, as vhost-user-mock does): run the echo tier.
    #[arg(long)]
    pub(super) echo: bool,
    /// The backend listens on the path it is given plus this suffix (the
    /// rust-vmm vhost-device backends append their socket index: `0`).
    #[arg(long, default_value = "", value_name = "SUFFIX")]
    pub(super) socket_suffix: String,
    /// Print the checks as JSON instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    /// List every check (tier, name, what it looks at) and exit; as JSON
    /// with --json.
    #[arg(long)]
    pub(super) list_checks: bool,
    /// No progress lines on stderr.
    #[arg(short, long)]
    pub(super) quiet: bool,
    /// Also write the checks as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    pub(super) junit: Option<PathBuf>,
    /// How long one guest may run, in seconds (at least 1).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub(super) timeout_secs: u64,
    /// Which guests check the backend: the probe guest (the protocol,
    /// precisely), Linux (Debian's own driver for the type, under vmm;
    /// nested in an emulated L1 where this host has no hardware
    /// virtualization), or both. Default: both where Linux has a driver
    /// for the type, else probe.
    #[arg(long, value_enum)]
    pub(super) guest: Option<GuestKind>,
    /// fs, Linux tier: the tag to mount (default: the tag in the device's
    /// config, as the probe guest read it).
    #[arg(long, value_name = "TAG")]
    pub(super) fs_tag: Option<String>,
    /// vsock, Linux tier: the host Unix socket the backend forwards guest
    /// connections to (vhost-device-vsock's --uds-path); port P is PATH_P.
    /// `{dir}` stands for a directory beside the socket.
    #[arg(long, value_name = "PATH")]
    pub(super) vsock_host_socket: Option<String>,
    /// console, Linux tier: the TCP port where the backend offers the
    /// console's other side (vhost-device-console --backend network).
    #[arg(long, value_name = "PORT")]
    pub(super) console_tcp_port: Option<u16>,
    /// The backend command; `{socket}` in its arguments is replaced by the
    /// socket path, `{dir}` by a scratch directory beside it (the Linux
    /// tier needs files a backend writes, such as virtiofsd's shared
    /// directory, there).
    #[arg(last = true, value_name = "COMMAND")]
    pub(super) command: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum GuestKind {
    Probe,
    Linux,
    Both,
}

/// A VIRTIO device ID or name from the table `vmm` uses, within the IDs
/// virtio-pci carries.
/// A split virtqueue's size: a power of two up to 32768, as `vmm` takes.
fn parse_queue_size(s: &str) -> Result<u32, String> {
    match s.trim().parse::<u32>() {
        Ok(n) if n.is_power_of_two() && n <= 32768 => Ok(n),
        _ => Err("expected a power of two from 1 to 32768".into()),
    }
}

fn parse_virtio_id(s: &str) -> Result<u32, String> {
    const PCI_IDS: std::ops::RangeInclusive<u32> = 1..=63;
    match s.parse::<virtio_types::VirtioDeviceType>() {
        Ok(t) if PCI_IDS.contains(&t.id()) => Ok(t.id()),
        _ => Err(format!(
            "expected a device ID from 1 to 63 or one of {}",
            virtio_types::names()
                .filter(|(id, _)| PCI_IDS.contains(id))
                .map(|(_, name)| name)
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}
