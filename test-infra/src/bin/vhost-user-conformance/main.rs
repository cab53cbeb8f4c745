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
//! With a command, the runner first starts the backend for a pre-flight
//! of its own (the backend tier: the features, the queue count, whether
//! GET_CONFIG honours its offset), stops it, and sizes the guests' queues
//! from what it learnt unless `--queue-sizes` is given.
//!
//! With a command, the generic tier ends with a reconnect: the runner
//! kills the backend while the guest has the device running, starts it
//! again on the same socket, and the guest must see DEVICE_NEEDS_RESET,
//! reset the device and bring it up again through the new backend.

mod args;
mod snapshot;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;

use self::args::{Args, GuestKind};
use test_infra::conformance::backend::{Asked, NoAnswers, Plan};
use test_infra::conformance::progress::Progress;
use test_infra::conformance::{self, catalogue, preflight, Check, Expectation};
use test_infra::conformance_linux::{self, LinuxTierSpec};
use test_infra::created::CreationWatch;
use test_infra::guest::quote;
use test_infra::process::Child;
use test_infra::vmm::{GuestRun, VmmCommand};
use test_infra::ProbeReport;
use test_infra::{paths, reaper, LinuxTier};

/// For the backend to create its socket: a hang detector (a backend that
/// exits first is told at once), generous for a loaded machine.
const SOCKET_DEADLINE: Duration = Duration::from_secs(30);
/// For each request of the pre-flight: a hang detector, like the socket's
/// (microseconds for a working backend, yet a mock relaying a reply with
/// 250 descriptors went past 5 s beside a CI run's nested tests).
const PREFLIGHT_DEADLINE: Duration = Duration::from_secs(30);

type Stderr = std::io::Stderr;

struct Runner<'a> {
    args: &'a Args,
    dir: &'a Path,
    boots: usize,
    /// The queues and config window the guests get.
    plan: Plan,
    progress: Progress<Stderr>,
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
        // `{dir}`: the directory the socket is in, as in the Linux tier.
        let dir_text = given
            .parent()
            .unwrap_or(self.dir)
            .to_string_lossy()
            .to_string();
        let argv: Vec<String> = self
            .args
            .command
            .iter()
            .map(|a| {
                a.replace("{socket}", &socket_text)
                    .replace("{dir}", &dir_text)
            })
            .collect();
        let (program, rest) = argv
            .split_first()
            .ok_or("give a backend command after --, or --socket PATH")?;
        let mut command = Command::new(program);
        command.args(rest);
        // Watched from before the start: a backend that serves one
        // connection may create its socket, be reconnected to by a
        // waiting vmm, and remove it as it exits between two looks.
        let created = CreationWatch::new(&socket)
            .map_err(|e| format!("watching for {}: {e}", socket.display()))?;
        let mut child = Child::spawn(name, command, self.dir)
            .map_err(|e| format!("starting {program}: {}", error_chain(&e)))?;
        if !child.wait_until(SOCKET_DEADLINE, |_| socket.exists() || created.seen()) {
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

    /// The backend tier: a backend of its own for the pre-flight, stopped
    /// after it (each guest gets a backend of its own too, so one that
    /// exits when its frontend hangs up is no trouble). Sets the plan.
    fn preflight(&mut self, asked: &Asked) -> Result<Vec<Check>, String> {
        let start = Instant::now();
        let answers = if self.args.socket.is_some() {
            self.progress
                .stage("backend: --socket: no pre-flight (the backend is yours to run)");
            Err(NoAnswers::UserSocket)
        } else {
            let given = self.next_socket();
            self.progress
                .stage("backend: starting the backend for the pre-flight");
            let _backend = self.start_backend(&given, &format!("backend-{}", self.boots))?;
            let window = |features| asked.config_window(features);
            preflight::ask(&self.listening_at(&given), PREFLIGHT_DEADLINE, window)
                .map_err(|e| NoAnswers::Failed(error_chain(&e)))
        };
        let (checks, plan) = conformance::backend::judge(asked, answers.as_ref(), start.elapsed());
        self.progress.checks(&checks);
        if let Some(size) = plan.config_size {
            self.progress.stage(&format!(
                "backend: the guests get a {size}-byte config window (config_size={size}): what the backend's features call for"
            ));
        }
        self.plan = plan;
        Ok(checks)
    }

    fn boot(&mut self, cmdline: &str) -> Result<GuestRun, String> {
        self.progress
            .stage(&format!("booting the probe guest: {cmdline}"));
        let (socket, _backend) = self.backend()?;
        self.vmm(cmdline, &socket)?.run(self.dir)
    }

    /// A guest running `probe.run=pci,reconnect`: once it says the device
    /// is `ready`, the backend is killed and started again on the same
    /// socket. Only for a backend the runner starts.
    fn boot_and_restart_backend(&mut self) -> Result<GuestRun, String> {
        self.progress.stage(
            "generic: booting the probe guest for the reconnect (probe.run=pci,reconnect); the backend is killed and started again under it",
        );
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
        let sizes: Vec<String> = self.plan.queue_sizes.iter().map(u32::to_string).collect();
        let mut device = format!(
            "socket={},virtio_id={},queue_sizes=[{}]",
            quote(&socket.to_string_lossy()),
            self.virtio_id(),
            sizes.join(",")
        );
        if let Some(size) = self.args.config_size.or(self.plan.config_size) {
            device.push_str(&format!(",config_size={size}"));
        }
        let mut cmd = VmmCommand::probe(cmdline)?;
        cmd.args(["--memory", "size=512M,shared=on", "--generic-vhost-user"])
            .arg(device)
            .timeout(Duration::from_secs(self.args.timeout_secs));
        Ok(cmd)
    }

    /// Reports a tier's checks as they are decided; returns them.
    fn tier(&mut self, checks: Vec<Check>) -> Vec<Check> {
        self.progress.checks(&checks);
        checks
    }

    fn virtio_id(&self) -> u32 {
        self.args.virtio_id.unwrap_or_default()
    }
}

/// An error and its sources, one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!(": {s}"));
        source = s.source();
    }
    text
}

fn run(args: &Args) -> Result<Vec<Check>, String> {
    let virtio_id = args
        .virtio_id
        .ok_or("give --virtio-id (or --list-checks)")?;
    let device_type =
        virtio_types::VirtioDeviceType::new(virtio_id).ok_or("device ID 0 is reserved")?;
    // Refused before anything runs: nested, this path could only time out.
    let linux_wanted = args
        .guest
        .map_or(conformance_linux::has_tier(virtio_id), |g| {
            g != GuestKind::Probe
        });
    if let (true, Some(path)) = (linux_wanted, &args.vsock_host_socket) {
        if let Some(why) = conformance::means::host_socket_problem(path, LinuxTier::detect()) {
            return Err(why);
        }
    }
    let dir = tempfile::tempdir().map_err(|e| format!("temporary directory: {e}"))?;
    reaper::remove_at_end(dir.path());
    let mut runner = Runner {
        args,
        dir: dir.path(),
        boots: 0,
        plan: Plan {
            queue_sizes: Vec::new(),
            config_size: None,
        },
        progress: Progress::new((!args.quiet).then(std::io::stderr)),
    };
    let asked = Asked {
        device_type,
        queue_sizes: args.queue_sizes.as_deref(),
        config_size: args.config_size,
    };
    let mut checks = runner.preflight(&asked)?;
    let want = Expectation {
        virtio_id,
        queue_sizes: runner.plan.queue_sizes.clone(),
    };
    let linux_driver = conformance_linux::has_tier(virtio_id);
    let guest = args.guest.unwrap_or(if linux_driver {
        GuestKind::Both
    } else {
        GuestKind::Probe
    });
    if guest != GuestKind::Both {
        runner.progress.stage(&format!("guests: {guest:?}"));
    }

    let mut config_bytes = None;
    if guest != GuestKind::Linux {
        let generic = runner.boot("probe.run=pci,virtio,config")?;
        config_bytes = generic
            .report
            .all("virtio")
            .find_map(|r| r.get("config"))
            .and_then(hex_bytes);
        let generic = conformance::generic_tier(&generic, &want);
        probe_tiers(&mut runner, &mut checks, generic, virtio_id)?;
    }
    if guest != GuestKind::Probe {
        checks.extend(linux_tier(&mut runner, virtio_id, config_bytes));
    }
    Ok(checks)
}

/// The probe guest's tiers after the generic one: reconnect, then the
/// type's own.
fn probe_tiers(
    runner: &mut Runner<'_>,
    checks: &mut Vec<Check>,
    generic: Vec<Check>,
    virtio_id: u32,
) -> Result<(), String> {
    let args = runner.args;
    runner.progress.checks(&generic);
    let usable = conformance::all_passed(&generic);
    checks.extend(generic);
    if args.socket.is_some() {
        checks.push(conformance::skipped(
            "generic",
            "reconnect",
            "the runner did not start the backend (--socket), so it cannot restart it",
        ));
    } else if usable {
        let reconnect = match runner.boot_and_restart_backend() {
            Ok(run) => conformance::reconnect_check(&run),
            Err(why) => conformance::failed("generic", "reconnect", &why),
        };
        runner.progress.check(&reconnect);
        checks.push(reconnect);
    } else {
        checks.push(conformance::skipped(
            "generic",
            "reconnect",
            "the generic tier failed",
        ));
    }
    if args.socket.is_some() {
        checks.push(conformance::skipped(
            "generic",
            "snapshot",
            "the runner did not start the backend (--socket), so it cannot start a new one for the restore",
        ));
    } else if usable {
        let cmdline = if args.echo {
            "probe.run=echo probe.repeat=0 probe.echo.rounds=200"
        } else {
            "probe.run=virtio probe.repeat=0"
        };
        let snapshot = match runner.snapshot_and_restore(cmdline) {
            Ok(run) => conformance::snapshot_check(&run),
            Err(why) => conformance::failed("generic", "snapshot", &why),
        };
        runner.progress.check(&snapshot);
        checks.push(snapshot);
    } else {
        checks.push(conformance::skipped(
            "generic",
            "snapshot",
            "the generic tier failed",
        ));
    }
    if virtio_id == 26 {
        if usable {
            // A name no file of the user's has, removed at the end: the
            // share is the user's.
            let name = format!(
                ".vhost-user-conformance-{}-{}",
                std::process::id(),
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            );
            let run = runner.boot(&format!(
                "probe.run=fs probe.fs.write={name}:65536 probe.fs.list=/ probe.fs.ops=on probe.fs.remove={name}"
            ))?;
            checks.extend(runner.tier(conformance::fs_tier(&run)));
        } else {
            checks.push(conformance::skipped("fs", "all", "the generic tier failed"));
        }
    } else if virtio_id == 4 {
        if usable {
            let run = runner.boot("probe.run=rng")?;
            checks.extend(runner.tier(conformance::rng_tier(&run)));
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
            checks.extend(runner.tier(conformance::echo_tier(&run)));
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
            &format!("no type tier for device ID {virtio_id} yet"),
        ));
    }
    Ok(())
}

/// The Linux tier: Debian's driver for the type against the backend.
fn linux_tier(runner: &mut Runner<'_>, virtio_id: u32, config: Option<Vec<u8>>) -> Vec<Check> {
    let args = runner.args;
    if args.command.is_empty() {
        return vec![conformance::skipped(
            conformance_linux::TIER,
            "all",
            "the Linux tier starts the backend itself, in the L1 when nested: give its command, not --socket",
        )];
    }
    let fs_tag = args.fs_tag.clone().or_else(|| {
        let bytes = config.as_deref()?.get(..36)?;
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        Some(String::from_utf8_lossy(&bytes[..end]).into_owned()).filter(|t| !t.is_empty())
    });
    let spec = LinuxTierSpec {
        virtio_id,
        queue_sizes: runner.plan.queue_sizes.clone(),
        config_size: runner.plan.config_size,
        backend: args.command.clone(),
        socket_suffix: args.socket_suffix.clone(),
        fs_tag,
        vsock_host_socket: args.vsock_host_socket.clone(),
        console_tcp_port: args.console_tcp_port,
        config,
        timeout: Duration::from_secs(args.timeout_secs.max(60) * 4),
    };
    runner
        .progress
        .stage("Linux tier: booting Debian's kernel (nested: 15-60 s under emulation)");
    let dir = runner.dir.join("linux");
    let checks = conformance_linux::linux_tier(&spec, &dir);
    runner.progress.checks(&checks);
    checks
}

/// `0a0b...` as bytes.
fn hex_bytes(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The report on stdout; one that cannot be written (a full disk, a
/// closed pipe) is said on stderr and ends the run with status 2.
fn print_report(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        eprintln!("vhost-user-conformance: cannot write the report to standard output: {e}");
        reaper::exit(2);
    }
}

fn main() {
    // First, before any thread: whatever ends the run, every process it
    // started (and theirs, daemons included) ends with it.
    if let Err(e) = reaper::install(|signo| {
        eprintln!("vhost-user-conformance: stopped by signal {signo}; ending the backend, vmm and the guests")
    }) {
        eprintln!("vhost-user-conformance: cannot watch over the processes it starts: {e}");
        std::process::exit(2);
    }
    let mut args = Args::parse();
    // A bare name means what the user's shell would run: the Linux tier
    // runs the backend where PATH is not the user's.
    if let Some(program) = args.command.first_mut() {
        if !program.contains('/') {
            match paths::find_program(program) {
                Some(found) => *program = found.display().to_string(),
                None => {
                    eprintln!("vhost-user-conformance: the backend {program:?} is not on PATH");
                    reaper::exit(2);
                }
            }
        }
    }
    if args.list_checks {
        if args.json {
            print_report(&catalogue::json());
        } else {
            print_report(&catalogue::table());
        }
        return;
    }
    let checks = run(&args);
    // Backends' own children and daemons, before the report; a signal's
    // cleanup is no failure of the backend's, and ends the run itself.
    if reaper::stopping() {
        reaper::exit(2);
    }
    reaper::end();
    let checks = match checks {
        Ok(checks) => checks,
        Err(e) => {
            eprintln!("vhost-user-conformance: {e}");
            reaper::exit(2);
        }
    };
    if args.json {
        print_report(&conformance::json(&checks));
    } else {
        print_report(&conformance::table(&checks));
    }
    if let Some(path) = &args.junit {
        let written = conformance::junit(&checks)
            .map_err(|e| e.to_string())
            .and_then(|xml| std::fs::write(path, xml).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("vhost-user-conformance: writing {}: {e}", path.display());
            reaper::exit(2);
        }
    }
    reaper::exit(if conformance::all_passed(&checks) {
        0
    } else {
        1
    });
}
