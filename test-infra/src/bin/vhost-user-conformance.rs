//! `vhost-user-conformance`: checks a vhost-user backend by booting the
//! probe guest under `vmm` with a generic vhost-user device for it.
//!
//! ```text
//! vhost-user-conformance --virtio-id fs --queue-sizes 512,512 -- \
//!     virtiofsd --socket-path={socket} --shared-dir=/tmp/share --tag=myfs
//! vhost-user-conformance --virtio-id 60 --socket /run/my-backend.sock
//! ```
//!
//! With a command, `{socket}` in its arguments becomes the socket path the
//! runner chose, and the backend is started afresh for every guest (many
//! backends serve one connection and exit). With `--socket`, the backend
//! must accept a new connection for every guest. Backends that add to the
//! path they are given (vhost-device-rng listens on `PATH0`) take
//! `--socket-suffix 0`.
//!
//! With a command, the generic tier ends with a reconnect: the runner
//! kills the backend while the guest has the device running, starts it
//! again on the same socket, and the guest must see DEVICE_NEEDS_RESET,
//! reset the device and bring it up again through the new backend.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use clap::Parser;
use test_infra::conformance::{self, Check, Expectation};
use test_infra::guest::quote;
use test_infra::process::Child;
use test_infra::vmm::{GuestRun, VmmCommand};
use test_infra::ProbeReport;

const SOCKET_DEADLINE: Duration = Duration::from_secs(10);

/// Checks a vhost-user backend: boots the probe guest under vmm with a
/// generic vhost-user device for it and reports each check (generic tier:
/// negotiation, PCI identity, features, queues, DRIVER_OK, config read,
/// reset and re-initialisation, and with a command a reconnect to the
/// backend restarted; then the tier for the device type: fs, rng, or echo
/// with --echo). Exit status 0 only if no check failed.
#[derive(Parser, Debug)]
#[command(name = "vhost-user-conformance", version)]
struct Args {
    /// The VIRTIO device ID, by number (1..63) or name (fs, net, block,
    /// console, rng, vsock, sound, scmi, i2c, gpio).
    #[arg(long, value_parser = parse_virtio_id)]
    virtio_id: u32,
    /// Queue sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256,256")]
    queue_sizes: Vec<u32>,
    /// Length of the device config window, for types the VIRTIO
    /// specification gives no size.
    #[arg(long)]
    config_size: Option<u32>,
    /// A backend already listening here (instead of a command).
    #[arg(long, conflicts_with = "command")]
    socket: Option<PathBuf>,
    /// The backend is an echo device (queue 0 comes back reversed on
    /// queue 1, as vhost-user-mock does): run the echo tier.
    #[arg(long)]
    echo: bool,
    /// The backend listens on the path it is given plus this suffix (the
    /// rust-vmm vhost-device backends append their socket index: `0`).
    #[arg(long, default_value = "", value_name = "SUFFIX")]
    socket_suffix: String,
    /// Print the checks as JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Also write the checks as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// How long one guest may run, in seconds (at least 1).
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_secs: u64,
    /// The backend command; `{socket}` in its arguments is replaced by the
    /// socket path.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// A VIRTIO device ID or name from the table `vmm` uses, within the IDs
/// virtio-pci carries.
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

struct Runner<'a> {
    args: &'a Args,
    dir: &'a Path,
    boots: usize,
}

impl Runner<'_> {
    /// The backend for one guest: started from the command, or the given
    /// socket. The child (if any) is killed when dropped.
    fn backend(&mut self) -> Result<(PathBuf, Option<Child>), String> {
        if let Some(socket) = &self.args.socket {
            return Ok((socket.clone(), None));
        }
        let given = self.next_socket();
        let child = self.start_backend(&given, &format!("backend-{}", self.boots))?;
        Ok((self.listening_at(&given), Some(child)))
    }

    /// A fresh socket path to give the next backend.
    fn next_socket(&mut self) -> PathBuf {
        self.boots += 1;
        self.dir.join(format!("backend-{}.sock", self.boots))
    }

    /// Where a backend given `given` listens.
    fn listening_at(&self, given: &Path) -> PathBuf {
        PathBuf::from(format!("{}{}", given.display(), self.args.socket_suffix))
    }

    /// Starts the command on `given` and waits for its socket; a stale
    /// socket left by an earlier backend is removed first.
    fn start_backend(&self, given: &Path, name: &str) -> Result<Child, String> {
        let socket = self.listening_at(given);
        let _ = std::fs::remove_file(&socket);
        let socket_text = given.to_string_lossy().to_string();
        let argv: Vec<String> = self
            .args
            .command
            .iter()
            .map(|a| a.replace("{socket}", &socket_text))
            .collect();
        let (program, rest) = argv
            .split_first()
            .ok_or("give a backend command after --, or --socket PATH")?;
        let mut command = Command::new(program);
        command.args(rest);
        let mut child = Child::spawn(name, command, self.dir)
            .map_err(|e| format!("starting {program}: {e}"))?;
        if !child.wait_until(SOCKET_DEADLINE, |_| socket.exists()) {
            // Its own failure, not a slow start: say how it ended.
            if let Some(status) = child.exit_status() {
                return Err(format!(
                    "{program} exited ({status}) without creating {}\n{}",
                    socket.display(),
                    child.stderr_so_far()
                ));
            }
            return Err(format!(
                "{program} did not create {} within {SOCKET_DEADLINE:?} (is {{socket}} in its arguments?)\n{}",
                socket.display(),
                child.stderr_so_far()
            ));
        }
        Ok(child)
    }

    fn boot(&mut self, cmdline: &str) -> Result<GuestRun, String> {
        let (socket, _backend) = self.backend()?;
        self.vmm(cmdline, &socket)?.run(self.dir)
    }

    /// A guest running `probe.run=pci,reconnect`: once it says the device
    /// is `ready`, the backend is killed and started again on the same
    /// socket. Only for a backend the runner starts.
    fn boot_and_restart_backend(&mut self) -> Result<GuestRun, String> {
        let given = self.next_socket();
        let first = self.start_backend(&given, &format!("backend-{}", self.boots))?;
        let mut vmm = self
            .vmm("probe.run=pci,reconnect", &self.listening_at(&given))?
            .spawn(self.dir)?;
        let ready = vmm.wait_until(Duration::from_secs(self.args.timeout_secs), |c| {
            c.stdout_so_far()
                .lines()
                .any(|l| l.starts_with("probe: reconnect ") && l.ends_with(" ready"))
        });
        // Killed, as a crash would end it; then a new one in its place.
        first.signal(libc::SIGKILL);
        drop(first);
        let _second = if ready {
            let name = format!("backend-{}-restarted", self.boots);
            let restarted = self.start_backend(&given, &name);
            Some(restarted.map_err(|e| format!("the backend did not start again: {e}"))?)
        } else {
            None
        };
        let output = vmm
            .wait(Duration::from_secs(self.args.timeout_secs))
            .map_err(|e| e.to_string())?;
        let report = ProbeReport::parse(&output.stdout);
        Ok(GuestRun { output, report })
    }

    fn vmm(&self, cmdline: &str, socket: &Path) -> Result<VmmCommand, String> {
        let sizes: Vec<String> = self.args.queue_sizes.iter().map(u32::to_string).collect();
        let mut device = format!(
            "socket={},virtio_id={},queue_sizes=[{}]",
            quote(&socket.to_string_lossy()),
            self.args.virtio_id,
            sizes.join(",")
        );
        if let Some(size) = self.args.config_size {
            device.push_str(&format!(",config_size={size}"));
        }
        let mut cmd = VmmCommand::probe(cmdline)?;
        cmd.args(["--memory", "size=512M,shared=on", "--generic-vhost-user"])
            .arg(device)
            .timeout(Duration::from_secs(self.args.timeout_secs));
        Ok(cmd)
    }
}

fn run(args: &Args) -> Result<Vec<Check>, String> {
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    let mut runner = Runner {
        args,
        dir: dir.path(),
        boots: 0,
    };
    let want = Expectation {
        virtio_id: args.virtio_id,
        queue_sizes: args.queue_sizes.clone(),
    };
    let generic = runner.boot("probe.run=pci,virtio,config")?;
    let mut checks = conformance::generic_tier(&generic, &want);
    let usable = conformance::all_passed(&checks);
    if args.socket.is_some() {
        checks.push(conformance::skipped(
            "generic",
            "reconnect",
            "the runner did not start the backend (--socket), so it cannot restart it",
        ));
    } else if usable {
        checks.push(match runner.boot_and_restart_backend() {
            Ok(run) => conformance::reconnect_check(&run),
            Err(why) => conformance::failed("generic", "reconnect", &why),
        });
    } else {
        checks.push(conformance::skipped(
            "generic",
            "reconnect",
            "the generic tier failed",
        ));
    }
    if args.virtio_id == 26 {
        if usable {
            let run = runner.boot(
                "probe.run=fs probe.fs.write=.vhost-user-conformance:65536 probe.fs.list=/ probe.fs.ops=on",
            )?;
            checks.extend(conformance::fs_tier(&run));
        } else {
            checks.push(conformance::skipped("fs", "all", "the generic tier failed"));
        }
    } else if args.virtio_id == 4 {
        if usable {
            let run = runner.boot("probe.run=rng")?;
            checks.extend(conformance::rng_tier(&run));
        } else {
            checks.push(conformance::skipped(
                "rng",
                "all",
                "the generic tier failed",
            ));
        }
    } else if args.echo {
        if usable {
            let run = runner.boot("probe.run=echo probe.echo.rounds=16 probe.echo.bytes=4096")?;
            checks.extend(conformance::echo_tier(&run));
        } else {
            checks.push(conformance::skipped(
                "echo",
                "all",
                "the generic tier failed",
            ));
        }
    } else {
        checks.push(conformance::skipped(
            "type",
            "all",
            &format!("no type tier for device ID {} yet", args.virtio_id),
        ));
    }
    Ok(checks)
}

fn main() {
    let args = Args::parse();
    let checks = match run(&args) {
        Ok(checks) => checks,
        Err(e) => {
            eprintln!("vhost-user-conformance: {e}");
            std::process::exit(2);
        }
    };
    if args.json {
        print!("{}", conformance::json(&checks));
    } else {
        print!("{}", conformance::table(&checks));
    }
    if let Some(path) = &args.junit {
        if let Err(e) = std::fs::write(path, conformance::junit(&checks)) {
            eprintln!("vhost-user-conformance: writing {}: {e}", path.display());
            std::process::exit(2);
        }
    }
    std::process::exit(if conformance::all_passed(&checks) {
        0
    } else {
        1
    });
}
