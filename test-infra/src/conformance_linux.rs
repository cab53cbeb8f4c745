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

/// A marker each direction of I/O carries, unlikely in any log.
const MARKER: &str = "conformance-7f3a";

/// The guest's script for the type: `report` records the runner judges.
fn type_script(name: &str, spec: &LinuxTierSpec) -> String {
    match name {
        "fs" => format!(
            r#"tag={tag}
mkdir -p /mnt
if mount -t virtiofs "$tag" /mnt; then
  report fs mounted=1
  head -c 1048577 /dev/urandom > /tmp/w
  cp /tmp/w /mnt/.{MARKER}-file 2>/tmp/err || report fs error what=\"$(tail -n1 /tmp/err)\"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  report fs io wrote=$(sha256sum /tmp/w | cut -d' ' -f1) read=$(sha256sum /mnt/.{MARKER}-file 2>/tmp/err | cut -d' ' -f1)
  [ -s /tmp/err ] && report fs error what=\"$(tail -n1 /tmp/err)\"
  ok=1
  mkdir /mnt/.{MARKER}-dir || ok=0
  mv /mnt/.{MARKER}-file /mnt/.{MARKER}-dir/renamed || ok=0
  ln -s renamed /mnt/.{MARKER}-dir/link || ok=0
  [ "$(readlink /mnt/.{MARKER}-dir/link)" = renamed ] || ok=0
  rm /mnt/.{MARKER}-dir/link /mnt/.{MARKER}-dir/renamed || ok=0
  rmdir /mnt/.{MARKER}-dir || ok=0
  [ ! -e /mnt/.{MARKER}-dir ] || ok=0
  report fs namespace ok=$ok
  umount /mnt && report fs unmounted=1
else
  report fs mounted=0
fi"#,
            tag = spec.fs_tag.as_deref().unwrap_or("myfs")
        ),
        "block" => r#"n=0; while [ ! -b /dev/vda ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
if [ -b /dev/vda ]; then
  sectors=$(cat /sys/block/vda/size)
  report block size sectors=$sectors ro=$(cat /sys/block/vda/ro)
  # The last MiB (or all of a smaller disk): saved, overwritten, read back
  # past the page cache, restored. Nothing is written unless all of it was
  # saved first: what cannot be put back is never overwritten.
  count=$(( sectors < 2048 ? sectors : 2048 ))
  skip=$(( sectors - count ))
  saved=0
  if dd if=/dev/vda of=/tmp/orig bs=512 skip=$skip count=$count 2>/tmp/dd.err \
      && [ "$(wc -c < /tmp/orig)" -eq $(( count * 512 )) ]; then
    saved=1
    report block read-end ok=1 sha=$(sha256sum /tmp/orig | cut -d' ' -f1)
  else
    report block read-end ok=0 error=\"$(tail -n1 /tmp/dd.err)\"
  fi
  if [ "$(cat /sys/block/vda/ro)" = 0 ] && [ $saved = 0 ]; then
    report block write skipped=1
  elif [ "$(cat /sys/block/vda/ro)" = 0 ]; then
    head -c $(( count * 512 )) /dev/urandom > /tmp/pat
    dd if=/tmp/pat of=/dev/vda bs=512 seek=$skip conv=fsync 2>/dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches
    dd if=/dev/vda of=/tmp/back bs=512 skip=$skip count=$count 2>/dev/null
    report block write wrote=$(sha256sum /tmp/pat | cut -d' ' -f1) read=$(sha256sum /tmp/back | cut -d' ' -f1)
    dd if=/tmp/orig of=/dev/vda bs=512 seek=$skip conv=fsync 2>/dev/null && sync && report block restored=1
  fi
fi"#
        .to_string(),
        "rng" => r#"if [ -c /dev/hwrng ]; then
  report rng current=\"$(cat /sys/class/misc/hw_random/rng_current)\"
  report rng distinct=$(head -c 1024 /dev/hwrng | od -An -v -tx1 | tr -s ' ' '\n' | grep . | sort -u | wc -l)
else
  report rng hwrng=0
fi"#
        .to_string(),
        "console" => format!(
            r#"n=0; while [ ! -c /dev/hvc0 ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
if [ -c /dev/hvc0 ]; then
  report console port=hvc0
  echo "guest-says-{MARKER}" > /dev/hvc0
  report console wrote=1
  t0=$(cut -d' ' -f1 /proc/uptime)
  if read -t 30 line < /dev/hvc0; then
    report console read=\"$line\" from=$t0 to=$(cut -d' ' -f1 /proc/uptime)
  else
    report console read=none from=$t0 to=$(cut -d' ' -f1 /proc/uptime)
  fi
else
  report console port=none
fi"#
        ),
        "vsock" => r#"if [ -e /dev/vsock ]; then
  report vsock cid=$(/bin/vsock-echo cid)
  report vsock echo=\"$(/bin/vsock-echo connect 2 5000 conformance-7f3a-vsock)\"
else
  report vsock dev=none
fi"#
        .to_string(),
        "sound" => r#"n=0; while ! grep -q . /proc/asound/cards 2>/dev/null && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
report sound cards=\"$(grep -v '^ ' /proc/asound/cards | tr -s ' ' | head -n1)\"
report sound pcms=$(ls -d /proc/asound/card0/pcm* 2>/dev/null | wc -l)
report sound streams=$(cat /proc/asound/card0/pcm*/info 2>/dev/null | grep -c '^stream:')"#
            .to_string(),
        "scsi" => r#"n=0; while [ ! -b /dev/sda ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
if [ -b /dev/sda ]; then
  sectors=$(cat /sys/block/sda/size)
  report scsi disk=sda sectors=$sectors ro=$(cat /sys/block/sda/ro)
  count=$(( sectors < 2048 ? sectors : 2048 ))
  skip=$(( sectors - count ))
  if dd if=/dev/sda of=/tmp/orig bs=512 skip=$skip count=$count 2>/tmp/err; then
    report scsi read ok=1 sha=$(sha256sum /tmp/orig | cut -d' ' -f1)
  else
    report scsi read ok=0 error=\"$(tail -n1 /tmp/err)\"
  fi
  head -c $(( count * 512 )) /dev/urandom > /tmp/pat
  dd if=/tmp/pat of=/dev/sda bs=512 seek=$skip conv=fsync 2>/tmp/err || report scsi write-error what=\"$(tail -n1 /tmp/err)\"
  sync; echo 3 > /proc/sys/vm/drop_caches
  dd if=/dev/sda of=/tmp/back bs=512 skip=$skip count=$count 2>/dev/null
  report scsi write wrote=$(sha256sum /tmp/pat | cut -d' ' -f1) read=$(sha256sum /tmp/back | cut -d' ' -f1)
  dd if=/tmp/orig of=/dev/sda bs=512 seek=$skip conv=fsync 2>/dev/null && sync && report scsi restored=1
else
  report scsi disk=none
fi"#
        .to_string(),
        "net" => r#"for d in /sys/class/net/*; do
  [ "$(basename $d)" = lo ] && continue
  report net link=$(basename $d) mac=$(cat $d/address)
done"#
            .to_string(),
        _ => String::new(),
    }
}

/// While the guest runs: a backend that died leaves Linux's driver
/// waiting out its own timeouts (SCSI's are minutes), so 10 s after the
/// death the guest is stopped and the death recorded.
const BACKEND_WATCH: &str = r#"gone=0
while [ ! -e "$WORK/vmm-guest.rc" ]; do
  if kill -0 "$(cat $WORK/backend.pid)" 2>/dev/null; then gone=0; else gone=$((gone + 1)); fi
  if [ $gone -ge 100 ]; then
    record backend-died
    pkill -f "socket=$socks/backend.sock" 
    break
  fi
  sleep 0.1
done"#;

/// Finds the device, says whether its driver bound, scans the kernel log
/// from `$mark` (lines seen before the driver loaded are not its own).
const COMMON_TAIL: &str = r#"dev=
for d in /sys/bus/virtio/devices/*; do
  [ "$(cat $d/device)" = "$want" ] && dev=$d
done
if [ -n "$dev" ]; then
  report device path=$(basename $dev) driver=$(basename "$(readlink $dev/driver)" 2>/dev/null) status=$(cat $dev/status)
else
  report device path=none
fi
sleep 1
dmesg -r | tail -n +$((mark + 1)) > /tmp/klog
pci=; [ -n "$dev" ] && pci=$(basename "$(readlink -f $dev/..)")
report klog lines=$(wc -l < /tmp/klog) pci=$pci
head -n 300 /tmp/klog | while read -r line; do report klog-line text=\"$(echo "$line" | tr -d '"\\')\"; done"#;

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

fn type_outcome(
    name: &str,
    spec: &LinuxTierSpec,
    guest: &ProbeReport,
    run: &ScenarioRun,
) -> Result<String, String> {
    let at = |word: &str| guest.first_at(name, word);
    let none = || format!("no {name} record from the guest");
    match name {
        "fs" => {
            let io = at("io").ok_or_else(|| "the mount failed".to_string())?;
            if io.get("wrote") != io.get("read") {
                let errors: Vec<&str> = guest.all("fs").filter_map(|r| r.get("what")).collect();
                return Err(format!(
                    "read back {:?}, wrote {:?}: {}; backend: {}",
                    io.get("read"),
                    io.get("wrote"),
                    errors.join(" | "),
                    last_lines(&run.out_file("backend.log"))
                ));
            }
            match at("namespace").and_then(|r| r.get("ok")) {
                Some("1") => {}
                _ => return Err("mkdir, rename, symlink, unlink or rmdir failed".into()),
            }
            if at("unmounted").is_none() && guest.all("fs").all(|r| r.get("unmounted").is_none()) {
                return Err("umount failed".into());
            }
            Ok("mounted; 1 MiB + 1 written and read back with the same sha256; mkdir, rename, symlink, unlink, rmdir; unmounted".into())
        }
        "block" => {
            let size = at("size").ok_or_else(none)?;
            let sectors = size.number("sectors").unwrap_or(0);
            if let Some(capacity) = spec.config.as_deref().and_then(|c| c.get(0..8)) {
                let capacity = u64::from_le_bytes(capacity.try_into().unwrap_or_default());
                if capacity != sectors {
                    return Err(format!(
                        "Linux shows {sectors} sectors, the config says {capacity}"
                    ));
                }
            }
            match at("read-end") {
                Some(r) if r.get("ok") == Some("1") => {}
                Some(r) => {
                    return Err(format!(
                        "reading the last sectors of the {sectors} the config announces failed: {} (so nothing was written: what cannot be put back is never overwritten)",
                        r.get("error").unwrap_or("?")
                    ))
                }
                None => return Err(none()),
            }
            if size.get("ro") == Some("1") {
                return Ok(format!("{sectors} sectors, read-only, last MiB read"));
            }
            let write = at("write").ok_or_else(|| "no write record".to_string())?;
            if write.get("wrote") != write.get("read") {
                return Err(format!(
                    "read back {:?} after writing {:?}",
                    write.get("read"),
                    write.get("wrote")
                ));
            }
            if guest.all("block").all(|r| r.get("restored").is_none()) {
                return Err("restoring the original sectors failed".into());
            }
            Ok(format!("{sectors} sectors as the config says; last MiB written, synced, read back with the same sha256, restored"))
        }
        "rng" => {
            let distinct = guest
                .all("rng")
                .find_map(|r| r.number("distinct"))
                .ok_or_else(|| "no /dev/hwrng".to_string())?;
            if distinct < 128 {
                return Err(format!(
                    "only {distinct} distinct values in 1 KiB from /dev/hwrng"
                ));
            }
            Ok(format!(
                "1 KiB from /dev/hwrng, {distinct} distinct byte values"
            ))
        }
        "console" => {
            let port = guest
                .all("console")
                .find_map(|r| r.get("port"))
                .ok_or_else(none)?;
            if port == "none" {
                return Err("no /dev/hvc0".into());
            }
            let Some(port) = spec.console_tcp_port else {
                return Ok("hvc0 appeared and took the guest's line (give the backend's TCP port to check its side)".into());
            };
            let peer = run.out_file("console-peer.log");
            if !peer.contains(&format!("guest-says-{MARKER}")) {
                return Err(format!(
                    "the guest's line did not reach TCP port {port}: {:?}",
                    last_lines(&peer)
                ));
            }
            let reading = guest.all("console").find(|r| r.get("read").is_some());
            let read = reading.and_then(|r| r.get("read")).unwrap_or("none");
            if read == "none" {
                let waited = reading
                    .and_then(|r| {
                        let at = |k| r.get(k)?.parse::<f64>().ok();
                        Some(at("to")? - at("from")?)
                    })
                    .map_or(String::new(), |s| format!(" in {s:.1} s"));
                let sent = if run.records.first("console-reply").is_some() {
                    "the host sent its line to port {port}"
                } else {
                    "the host never saw the guest's line to answer it"
                };
                return Err(format!(
                    "the guest read nothing from hvc0{waited} ({}); backend: {}",
                    sent.replace("{port}", &port.to_string()),
                    last_lines(&run.out_file("backend.log"))
                ));
            }
            if read != format!("host-says-{MARKER}") {
                return Err(format!(
                    "the guest read {read:?} from hvc0, not the line sent to port {port}"
                ));
            }
            Ok(format!("hvc0 appeared; the guest's line reached port {port}, and the line sent there reached the guest"))
        }
        "vsock" => {
            let echo = guest.all("vsock").find_map(|r| r.get("echo"));
            // Without --vsock-host-socket it is skipped (`means`).
            match echo {
                Some(e) if e.contains("conformance-7f3a-vsock") => Ok(format!(
                    "guest connected to the host (CID 2, port 5000): {e}"
                )),
                e => Err(format!("no echo through the backend: {e:?}")),
            }
        }
        "sound" => {
            let cards = guest
                .all("sound")
                .find_map(|r| r.get("cards"))
                .unwrap_or("");
            let pcms = guest
                .all("sound")
                .find_map(|r| r.number("pcms"))
                .unwrap_or(0);
            if cards.is_empty() {
                return Err("no ALSA card in /proc/asound/cards".into());
            }
            let announced = spec
                .config
                .as_deref()
                .and_then(|c| c.get(4..8))
                .map(|s| u32::from_le_bytes(s.try_into().unwrap_or_default()));
            let streams = guest
                .all("sound")
                .find_map(|r| r.number("streams"))
                .unwrap_or(0);
            if let Some(n) = announced {
                if u64::from(n) != streams {
                    return Err(format!(
                        "{streams} PCM streams in /proc/asound, the config announces {n}"
                    ));
                }
            }
            Ok(format!(
                "card {cards:?}, {pcms} PCM device(s), {streams} stream(s)"
            ))
        }
        "scsi" => {
            let disk = guest
                .all("scsi")
                .find_map(|r| r.get("disk"))
                .ok_or_else(none)?;
            if disk == "none" {
                return Err("no SCSI disk appeared".into());
            }
            let write = at("write").ok_or_else(|| "no write record".to_string())?;
            if write.get("wrote") != write.get("read") {
                return Err("the last MiB read back differs from what was written".into());
            }
            Ok(
                "a disk appeared; its last MiB written, read back with the same sha256, restored"
                    .into(),
            )
        }
        "net" => {
            let link = guest
                .all("net")
                .find(|r| r.get("link").is_some())
                .ok_or_else(|| "no link appeared".to_string())?;
            Ok(format!(
                "{} with MAC {}",
                link.get("link").unwrap_or("?"),
                link.get("mac").unwrap_or("?")
            ))
        }
        _ => Ok("the driver bound".into()),
    }
}
