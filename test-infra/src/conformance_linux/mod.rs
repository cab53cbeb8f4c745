//! The conformance runner's Linux tier: Debian's kernel under `vmm` with
//! the backend attached through `--generic-vhost-user`, the type's own
//! Linux driver loaded, and the driver made to work (nested in an L1 where
//! this host has no hardware virtualization). The backend runs exactly as
//! the user gave it, as a program of this host (`start_host_program`).
//!
//! What each type's check asks of the driver is in `type_script`; every
//! type's run also has its kernel log scanned, after the driver loaded:
//! what the device under test caused (errors naming its driver, virtio,
//! its PCI address; any oops, BUG or WARNING) fails with the lines quoted,
//! other complaints (the clock on a slow emulator) are a warning
//! (`conformance::kernel_log`).

use std::path::Path;
use std::time::{Duration, Instant};

use crate::conformance::{kernel_log, means, Check, Status};
use crate::linux::GuestInit;
use crate::probe::ProbeReport;
use crate::scenario::{shell_quote, Scenario, ScenarioRun};

mod guest;
mod verdict;

use self::guest::{type_script, BACKEND_WATCH, COMMON_TAIL, MARKER};
use self::verdict::type_outcome;

pub const TIER: &str = "linux";

/// What the Linux tier needs to know of the device and its backend.
#[derive(Debug, Clone)]
pub struct LinuxTierSpec {
    pub virtio_id: u32,
    pub queue_sizes: Vec<u32>,
    pub config_size: Option<u32>,
    /// The backend's command line, `{socket}` standing for its socket and
    /// `{dir}` for a scratch directory beside it. Nested, `{dir}` is on
    /// L1's own memory: virtiofsd cannot serve a directory that is itself
    /// on virtio-fs (new files come back as stale handles), so a share for
    /// the Linux tier belongs there.
    pub backend: Vec<String>,
    /// What the backend adds to the path it is given (vhost-device-rng
    /// listens on `PATH0`).
    pub socket_suffix: String,
    /// virtio-fs: the tag to mount.
    pub fs_tag: Option<String>,
    /// vsock: the host Unix socket the backend forwards guest
    /// connections to (vhost-device-vsock's `uds-path`); port P is
    /// `PATH_P`.
    pub vsock_host_socket: Option<String>,
    /// console: the TCP port on which the backend offers the console's
    /// other side (vhost-device-console's network backend).
    pub console_tcp_port: Option<u16>,
    /// The config bytes, when the probe tier read them (sound's stream
    /// count, block's capacity).
    pub config: Option<Vec<u8>>,
    pub timeout: Duration,
}

/// Whether Linux has a driver for the type (the runner's default is then
/// both guests).
pub fn has_tier(virtio_id: u32) -> bool {
    driver(virtio_id).is_some()
}

/// The Linux driver's modules for a type, and the name of the check.
fn driver(virtio_id: u32) -> Option<(&'static [&'static str], &'static str)> {
    Some(match virtio_id {
        1 => (&["virtio_net"], "net"),
        2 => (&["virtio_blk"], "block"),
        3 => (&["virtio_console"], "console"),
        4 => (&["virtio_rng"], "rng"),
        8 => (&["virtio_scsi", "sd_mod"], "scsi"),
        18 => (&["virtio_input"], "input"),
        19 => (&["vmw_vsock_virtio_transport"], "vsock"),
        25 => (&["virtio_snd"], "sound"),
        26 => (&["virtiofs"], "fs"),
        29 => (&["gpio_virtio"], "gpio"),
        34 => (&["i2c_virtio"], "i2c"),
        _ => return None,
    })
}

/// Runs the Linux tier for `spec`; `work` is a host directory of the
/// runner's (for the backend's socket and files).
pub fn linux_tier(spec: &LinuxTierSpec, work: &Path) -> Vec<Check> {
    let started = Instant::now();
    let Some((modules, name)) = driver(spec.virtio_id) else {
        return vec![skip(
            "driver",
            &format!("Linux has no driver for device ID {}", spec.virtio_id),
        )];
    };
    if let Err(e) = crate::linux::module_closure(modules) {
        return vec![skip(
            "driver",
            &format!(
                "the Linux tier's kernel (Debian's cloud kernel) has no driver for {name}: {e}"
            ),
        )];
    }
    match run_scenario(spec, work, modules, name) {
        Ok(run) => judge(spec, modules, name, &run, started.elapsed()),
        Err(e) => vec![fail("boot", &e, started.elapsed())],
    }
}

fn run_scenario(
    spec: &LinuxTierSpec,
    work: &Path,
    modules: &[&str],
    name: &str,
) -> Result<ScenarioRun, String> {
    let mut s = Scenario::new(&format!("conformance-{name}"))?;
    s.host_programs().timeout(spec.timeout);
    let sock_dir = work.join("sockets");
    std::fs::create_dir_all(&sock_dir).map_err(|e| format!("{}: {e}", sock_dir.display()))?;
    let mut init = GuestInit::new(&format!(
        "want=$(printf '0x%04x' {id})\n\
         mark=$(dmesg -r | wc -l)\n\
         load_late\n\
         {script}\n\
         {COMMON_TAIL}",
        id = spec.virtio_id,
        script = type_script(name, spec),
    ))
    .modules(&["virtio_pci"]);
    // The type's modules load after the mark, so their complaints count.
    init = init.late_modules(modules);
    if name == "vsock" {
        init = init.file("bin/vsock-echo", build_vsock_program(work)?);
    }
    s.guest("guest.cpio", &init)?;
    let backend: Vec<String> = spec
        .backend
        .iter()
        .map(|a| {
            a.replace(
                "{socket}",
                &sock_dir.join("backend.sock").display().to_string(),
            )
            .replace("{dir}", &sock_dir.display().to_string())
        })
        .collect();
    let quoted: Vec<String> = backend.iter().map(|a| shell_quote(a)).collect();
    let mut queues = spec
        .queue_sizes
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    queues = format!("[{queues}]");
    let config_size = spec
        .config_size
        .map(|n| format!(",config_size={n}"))
        .unwrap_or_default();
    let vsock_server = match (&spec.vsock_host_socket, name) {
        (Some(path), "vsock") => {
            let listen = format!("{path}_5000")
                .replace('"', "")
                .replace("{dir}", "$socks");
            format!(
                "$IN/vsock-echo serve \"{listen}\" >$OUT/vsock-host.log 2>&1 &\n\
                 wait_file \"{listen}\" 60 || record error what=\"vsock-echo made no socket within 60s\"\n"
            )
        }
        (_, "console") => match spec.console_tcp_port {
            Some(port) => format!(
                "ip link set lo up 2>/dev/null\n\
                 mkfifo $WORK/console.in\n\
                 ( sleep 600 > $WORK/console.in & cat $WORK/console.in | nc 127.0.0.1 {port} > $OUT/console-peer.log 2>&1 ) &\n\
                 ( wait_line $OUT/console-peer.log guest-says-{MARKER} 120 && echo host-says-{MARKER} > $WORK/console.in && record console-reply sent_ms=$(now_ms) ) &\n"
            ),
            None => String::new(),
        },
        _ => String::new(),
    };
    if name == "vsock" && spec.vsock_host_socket.is_some() {
        s.input("vsock-echo", &build_vsock_program(work)?)?;
    }
    s.script(&format!(
        "chmod +x $IN/vsock-echo 2>/dev/null\n\
         socks=$(start_host_program backend {sock_dir} {argv})\n\
         wait_file \"$socks/backend.sock{suffix}\" 60 || record error what=\"the backend made no socket within 60s\"\n\
         {vsock_server}\
         start_vmm guest 300 --memory size=512M,shared=on --kernel \"$VMLINUX\" \
         --initramfs \"$IN/guest.cpio\" --cmdline 'console=ttyS0 quiet panic=-1' --console off \
         --generic-vhost-user \"socket=$socks/backend.sock{suffix},virtio_id={id},queue_sizes={queues}{config_size}\"\n\
         {BACKEND_WATCH}\n\
         wait_vmm guest 20\n\
         kill $(cat $WORK/backend.pid) 2>/dev/null",
        sock_dir = shell_quote(&sock_dir.display().to_string()),
        argv = quoted.join(" "),
        id = spec.virtio_id,
        suffix = spec.socket_suffix,
    ));
    s.run()
}

/// `vsock-echo`, built once.
fn build_vsock_program(work: &Path) -> Result<Vec<u8>, String> {
    crate::static_c::build("vsock-echo", crate::static_c::VSOCK_ECHO, work)
}

fn check(name: &'static str, outcome: Result<String, String>, elapsed: Duration) -> Check {
    let (status, detail) = match outcome {
        Ok(seen) => (Status::Pass, seen),
        Err(why) => (Status::Fail, why),
    };
    Check::new(TIER, name, status, detail).after(elapsed)
}

fn fail(name: &'static str, why: &str, elapsed: Duration) -> Check {
    check(name, Err(why.to_string()), elapsed)
}

fn skip(name: &'static str, why: &str) -> Check {
    Check::new(TIER, name, Status::Skip, why)
}

fn judge(
    spec: &LinuxTierSpec,
    modules: &[&str],
    name: &str,
    run: &ScenarioRun,
    elapsed: Duration,
) -> Vec<Check> {
    let guest = run.guest("guest");
    let mut checks = Vec::new();
    let tail = |text: &str| {
        let lines: Vec<&str> = text.lines().rev().take(8).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    };
    if run.records.first("backend-died").is_some() {
        checks.push(fail(
            "boot",
            &format!(
                "the backend died while the guest ran: {}",
                backend_story(&run.out_file("backend.log"))
            ),
            elapsed,
        ));
        return checks;
    }
    let device = guest.first("device");
    let Some(device) = device else {
        let why = match run.vmm_exit("guest") {
            Some(code) => format!(
                "the guest reported no device (vmm exit {code}); vmm: {}; backend: {}",
                tail(&run.out_file("guest.vmm.log")),
                backend_story(&run.out_file("backend.log"))
            ),
            None => format!(
                "the guest did not finish; backend: {}",
                backend_story(&run.out_file("backend.log"))
            ),
        };
        checks.push(fail("boot", &why, elapsed));
        return checks;
    };
    checks.push(check(
        "driver",
        match (device.get("path"), device.get("driver")) {
            (Some("none"), _) | (None, _) => Err("no virtio device of this type in sysfs".into()),
            (Some(path), Some(driver)) if !driver.is_empty() => Ok(format!(
                "{path} bound to {driver}, status {}",
                device.get("status").unwrap_or("?")
            )),
            (Some(path), _) => Err(format!(
                "{path} has no driver bound (status {})",
                device.get("status").unwrap_or("?")
            )),
        },
        elapsed,
    ));
    let type_check = name_static(name);
    checks.push(
        match means::missing_means(type_check, spec.vsock_host_socket.as_deref()) {
            Some(why) => skip(type_check, why),
            None => check(type_check, type_outcome(name, spec, &guest, run), elapsed),
        },
    );
    checks.push(kernel_log_check(modules, name, &guest, elapsed));
    checks
}

/// The guest's kernel log since the driver loaded: a complaint the device
/// under test caused fails; any other (the clock, the emulator, the
/// platform) is a warning with its lines.
fn kernel_log_check(modules: &[&str], name: &str, guest: &ProbeReport, elapsed: Duration) -> Check {
    let Some(klog) = guest.first("klog") else {
        return fail(
            "kernel-log",
            "the guest did not report its kernel log",
            elapsed,
        );
    };
    let lines: Vec<&str> = guest
        .all("klog-line")
        .filter_map(|r| r.get("text"))
        .collect();
    let terms = kernel_log::device_terms(modules, klog.get("pci"), device_names(name));
    let log = kernel_log::classify(&lines, &terms);
    let others = |log: &kernel_log::KernelLog| {
        format!(
            "complaints not of the device (clock, emulator, platform): {}",
            log.other.join(" | ")
        )
    };
    let check = match (log.device.is_empty(), log.other.is_empty()) {
        (true, true) => {
            return check(
                "kernel-log",
                Ok("no errors, warnings, oopses or hung tasks".into()),
                elapsed,
            )
        }
        (true, false) => Check::new(TIER, "kernel-log", Status::Warn, others(&log)),
        (false, true) => Check::new(
            TIER,
            "kernel-log",
            Status::Fail,
            format!(
                "the kernel complained of the device: {}",
                log.device.join(" | ")
            ),
        ),
        (false, false) => Check::new(
            TIER,
            "kernel-log",
            Status::Fail,
            format!(
                "the kernel complained of the device: {}; {}",
                log.device.join(" | "),
                others(&log)
            ),
        ),
    };
    check.after(elapsed)
}

/// The kernel's names for a type's devices, which its complaints use
/// instead of the driver's (`I/O error, dev vda`).
fn device_names(name: &str) -> &'static [&'static str] {
    match name {
        "block" => &["vda", "blk_update_request"],
        "scsi" => &["sda", "scsi"],
        "console" => &["hvc", "hvc0", "virtio-ports"],
        "rng" => &["hwrng", "hw_random"],
        "fs" => &["fuse"],
        "vsock" => &["vsock"],
        "sound" => &["snd", "ALSA"],
        "net" => &["eth0", "eth1"],
        _ => &[],
    }
}

/// A backend's log for a failure's detail: its first panic, if it
/// panicked (the cause; later panics are its consequences), else its end.
fn backend_story(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    match lines.iter().position(|l| l.contains("panicked at")) {
        Some(at) => format!(
            "the backend panicked: {}",
            lines[at..lines.len().min(at + 2)].join(" ")
        ),
        None => last_lines(text),
    }
}

/// One check of every name the Linux tier can report, for the catalogue's
/// test: the fixed ones and each type's.
pub fn every_check() -> Vec<Check> {
    let mut names = vec!["boot", "driver", "kernel-log"];
    for id in 1..=63 {
        if let Some((_, name)) = driver(id) {
            names.push(name_static(name));
        }
    }
    names.push(name_static("other"));
    names.sort_unstable();
    names.dedup();
    names.into_iter().map(|n| skip(n, "listed")).collect()
}

/// The end of a log, on one line, for a failure's detail.
fn last_lines(text: &str) -> String {
    let lines: Vec<&str> = text.lines().rev().take(6).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

fn name_static(name: &str) -> &'static str {
    match name {
        "fs" => "fs-mount-io",
        "block" => "block-size-io",
        "rng" => "rng-hwrng",
        "console" => "console-port",
        "vsock" => "vsock-connect",
        "sound" => "sound-card",
        "scsi" => "scsi-disk",
        "net" => "net-link",
        _ => "binds",
    }
}
