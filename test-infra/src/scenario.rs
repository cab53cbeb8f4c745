//! Linux-tier scenarios: a shell script that starts backends and `vmm`
//! with a real Linux guest, run where `vmm` can boot Linux: directly on a
//! host with hardware virtualization, else inside the nested runner's L1.
//!
//! The script sees the same environment either way: `$VMM`, `$VIRTIOFSD`,
//! `$MOCK`, `$PROBE`, `$BZIMAGE`, `$VMLINUX`, `$IN` (the test's input
//! files), `$OUT` (logs that come back to the test) and `$WORK` (scratch
//! space: L1's own memory when nested). It reports facts with `record`
//! (`scenario: ` records); the Linux guests it boots report theirs on
//! their serial consoles (`linux: ` records, see [`crate::linux::GuestInit`]).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::host::{HostKind, KvmHost};
use crate::linux::{GuestInit, GUEST_PREFIX};
use crate::nested::{self, L1Shape, L1_PREFIX};
use crate::probe::{ProbeReport, Record};
use crate::process::{Child, Output};

pub const SCENARIO_PREFIX: &str = "scenario: ";

/// Helpers every scenario script starts with. Each wait has a deadline;
/// every process a helper starts writes its log under `$OUT`. A deadline
/// detects a hang and never judges speed: what takes milliseconds gets a
/// minute, so that a slow emulator on a loaded machine passes slowly
/// (docs/ci.md, "Deadlines").
const PRELUDE: &str = r#"# Linux-tier scenario prelude (test-infra/src/scenario.rs)
record() { echo "scenario: $*"; }
now_ms() { read -r up _ < /proc/uptime; frac=${up#*.}; frac=${frac#0}; echo $(( ${up%.*} * 1000 + frac * 10 )); }
# wait_file PATH SECS
wait_file() { n=$(( $2 * 10 )); while [ ! -e "$1" ]; do n=$((n - 1)); [ $n -le 0 ] && return 1; sleep 0.1; done; return 0; }
# wait_line FILE TEXT SECS: until FILE holds TEXT
wait_line() { n=$(( $3 * 10 )); until grep -q -F -- "$2" "$1" 2>/dev/null; do n=$((n - 1)); [ $n -le 0 ] && return 1; sleep 0.1; done; return 0; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
# start_virtiofsd TAG DIR: serves DIR on $WORK/TAG.sock
start_virtiofsd() {
  mkdir -p "$2"; rm -f "$WORK/$1.sock"
  "$VIRTIOFSD" --socket-path="$WORK/$1.sock" --shared-dir="$2" --tag="$1" --sandbox=none \
    --cache=never --log-level=info >>"$OUT/virtiofsd-$1.log" 2>&1 &
  echo $! >"$WORK/virtiofsd-$1.pid"
  wait_file "$WORK/$1.sock" 60 || { record error what="virtiofsd $1 made no socket within 60s"; return 1; }
}
kill_virtiofsd() { kill -9 "$(cat "$WORK/virtiofsd-$1.pid")" 2>/dev/null; }
# start_mock NAME ARGS...: vhost-user-mock on $WORK/NAME.sock
start_mock() {
  name=$1; shift; rm -f "$WORK/$name.ready"
  "$MOCK" --socket "$WORK/$name.sock" --ready-file "$WORK/$name.ready" "$@" >>"$OUT/mock-$name.log" 2>&1 &
  wait_file "$WORK/$name.ready" 60 || { record error what="mock $name not listening within 60s"; return 1; }
}
# start_vmm NAME SECS ARGS...: vmm in the background, killed after SECS;
# the guest's serial port goes to $OUT/NAME.serial
start_vmm() {
  name=$1 secs=$2; shift 2
  now_ms >"$WORK/vmm-$name.start"
  rm -f "$WORK/vmm-$name.rc"
  ( timeout -s KILL "$secs" "$VMM" "$@" --serial "file=$OUT/$name.serial" \
      --log-file "$OUT/$name.vmm.log" -v >"$OUT/$name.vmm.out" 2>&1
    echo $? >"$WORK/vmm-$name.rc" ) &
}
# wait_vmm NAME SECS: records `vmm NAME exit=STATUS ms=TIME`
wait_vmm() {
  if ! wait_file "$WORK/vmm-$1.rc" "$2"; then record vmm "$1" exit=hung; return 1; fi
  rc=$(cat "$WORK/vmm-$1.rc")
  record vmm "$1" exit="$rc" ms=$(( $(now_ms) - $(cat "$WORK/vmm-$1.start") ))
}
# run_vmm NAME SECS ARGS...
run_vmm() { start_vmm "$@"; wait_vmm "$1" $(( $2 + 5 )); }
# start_vmm_as_given NAME SECS ARGS...: vmm with exactly ARGS, nothing
# added; stdout (the virtio console with the default --console tty) goes
# to $OUT/NAME.serial, stderr to $OUT/NAME.vmm.log
start_vmm_as_given() {
  name=$1 secs=$2; shift 2
  now_ms >"$WORK/vmm-$name.start"
  rm -f "$WORK/vmm-$name.rc"
  ( timeout -s KILL "$secs" "$VMM" "$@" >"$OUT/$name.serial" 2>"$OUT/$name.vmm.log"
    echo $? >"$WORK/vmm-$name.rc" ) &
}
run_vmm_as_given() { start_vmm_as_given "$@"; wait_vmm "$1" $(( $2 + 5 )); }
# host_mounts: L1's /proc, /sys and /dev in the host's root (nested), so
# that a program chrooted there finds /dev/kvm; then ON_HOST is the prefix
# that runs a program of the host as on the host (empty when direct).
host_mounts() {
  ON_HOST=
  [ -n "$HOSTROOT" ] || return 0
  for fs in proc sys dev; do
    if ! grep -q " $HOSTROOT/$fs " /proc/mounts; then
      case $fs in proc) mount -t proc proc "$HOSTROOT/proc" ;; sys) mount -t sysfs sys "$HOSTROOT/sys" ;; dev) mount --bind /dev "$HOSTROOT/dev" ;; esac
    fi
  done
  ON_HOST="chroot $HOSTROOT"
}
# start_host_program NAME DIR ARGV...: a program of the host, run as on the
# host, from the directory the harness was started in, so relative paths
# mean what the user meant (nested: chrooted into the host's root, which
# Scenario::host_programs shares), with the host directory DIR on L1's own memory so that sockets it
# makes there can be reached; prints where the script finds DIR. Output
# goes to $OUT/NAME.log, the pid to $WORK/NAME.pid.
start_host_program() {
  name=$1 dir=$2; shift 2
  if [ -n "$HOSTROOT" ]; then
    mkdir -p "$WORK/$name.d"
    host_mounts
    mount --bind "$WORK/$name.d" "$HOSTROOT$dir"
    chroot "$HOSTROOT" /bin/sh -c 'cd "$0" && exec "$@"' "$HOSTCWD" "$@" >>"$OUT/$name.log" 2>&1 </dev/null &
    echo $! >"$WORK/$name.pid"
    echo "$WORK/$name.d"
  else
    mkdir -p "$dir"
    ( cd "$HOSTCWD" && exec "$@" ) >>"$OUT/$name.log" 2>&1 </dev/null &
    echo $! >"$WORK/$name.pid"
    echo "$dir"
  fi
}
"#;

/// Where the Linux tier runs `vmm`, decided once per run and said once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinuxTier {
    /// Hardware virtualization: scenarios run on the host.
    Direct,
    /// PVM or no KVM: scenarios run in an L1 under QEMU TCG.
    Nested,
}

impl LinuxTier {
    pub fn detect() -> LinuxTier {
        static TIER: std::sync::OnceLock<LinuxTier> = std::sync::OnceLock::new();
        *TIER.get_or_init(|| {
            let tier = match KvmHost::detect().kind {
                HostKind::Hardware => LinuxTier::Direct,
                HostKind::Pvm | HostKind::NoKvm => LinuxTier::Nested,
            };
            eprintln!("test-infra: Linux tier: {}", tier.describe());
            tier
        })
    }

    pub fn describe(self) -> &'static str {
        match self {
            LinuxTier::Direct => "direct (hardware virtualization: vmm runs on this host)",
            LinuxTier::Nested => {
                "NESTED (no hardware virtualization here: vmm runs inside an L1 Linux under \
                 QEMU TCG with emulated SVM; timings are emulator timings)"
            }
        }
    }
}

/// How long a scenario may run, L1's boot included, unless it says
/// otherwise: a hang detector. The longest scenario takes about a minute
/// here, three under a CPU hog (docs/ci.md, "Deadlines").
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(600);

/// One scenario: its script, its input files and its limits.
pub struct Scenario {
    name: String,
    dir: tempfile::TempDir,
    script: String,
    timeout: Duration,
    l1: L1Shape,
}

impl Scenario {
    pub fn new(name: &str) -> Result<Scenario, String> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("linux-{name}-"))
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        // A program that is stopped by a signal still removes it.
        crate::reaper::remove_at_end(dir.path());
        for sub in ["share/in", "share/out"] {
            std::fs::create_dir_all(dir.path().join(sub))
                .map_err(|e| format!("creating {sub}: {e}"))?;
        }
        Ok(Scenario {
            name: name.to_string(),
            dir,
            script: String::new(),
            timeout: DEFAULT_TIMEOUT,
            l1: L1Shape {
                memory_mib: 2048,
                cpus: 1,
                host_root: false,
            },
        })
    }

    /// A directory of the test's own, not shared with the script: for
    /// building inputs.
    pub fn scratch_dir(&self, name: &str) -> Result<PathBuf, String> {
        let path = self.dir.path().join("scratch").join(name);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// Where `$IN/NAME` is on the host: the path to give a program of the
    /// host (`$ON_HOST`, `start_host_program`), which sees the host's files.
    pub fn input_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("share/in").join(name)
    }

    /// A file the script finds as `$IN/NAME`.
    pub fn input(&mut self, name: &str, body: &[u8]) -> Result<&mut Self, String> {
        let path = self.input_path(name);
        std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(self)
    }

    /// A guest initramfs the script finds as `$IN/NAME`.
    pub fn guest(&mut self, name: &str, init: &GuestInit) -> Result<&mut Self, String> {
        init.write(&self.input_path(name))?;
        Ok(self)
    }

    /// Shell lines, appended to the script.
    pub fn script(&mut self, lines: &str) -> &mut Self {
        self.script.push_str(lines);
        self.script.push('\n');
        self
    }

    /// The whole run, L1's boot included, is killed after this
    /// ([`DEFAULT_TIMEOUT`] unless set).
    pub fn timeout(&mut self, timeout: Duration) -> &mut Self {
        self.timeout = timeout;
        self
    }

    /// L1's memory and vCPUs (nested only): room for the guests' memory and
    /// threads.
    pub fn l1(&mut self, memory_mib: u64, cpus: u8) -> &mut Self {
        self.l1.memory_mib = memory_mib;
        self.l1.cpus = cpus;
        self
    }

    /// Lets the script run programs of the host (`start_host_program`):
    /// nested, L1 mounts the host's `/` and chroots into it.
    pub fn host_programs(&mut self) -> &mut Self {
        self.l1.host_root = true;
        self
    }

    pub fn run(self) -> Result<ScenarioRun, String> {
        let tier = LinuxTier::detect();
        let cwd = std::env::current_dir().map_err(|e| format!("the current directory: {e}"))?;
        let script = format!(
            "HOSTCWD={}\n{PRELUDE}\n{}",
            shell_quote(&cwd.display().to_string()),
            self.script
        );
        let script_path = self.input_path("scenario.sh");
        std::fs::write(&script_path, script)
            .map_err(|e| format!("{}: {e}", script_path.display()))?;
        let started = Instant::now();
        let (console, share_log) = match tier {
            LinuxTier::Nested => nested::boot_l1(
                self.dir.path(),
                &self.dir.path().join("share"),
                self.l1,
                self.timeout,
            )?,
            LinuxTier::Direct => (self.run_direct()?, String::new()),
        };
        let run = ScenarioRun {
            name: self.name,
            tier,
            elapsed: started.elapsed(),
            records: ProbeReport::parse_prefixed(SCENARIO_PREFIX, &console.stdout),
            l1: ProbeReport::parse_prefixed(L1_PREFIX, &console.stdout),
            console,
            share_log,
            dir: self.dir,
        };
        eprintln!(
            "test-infra: scenario {} took {:.1} s ({:?})",
            run.name,
            run.elapsed.as_secs_f64(),
            run.tier
        );
        Ok(run)
    }

    /// Runs the scenario and panics with every log unless its script ran
    /// to its end with status 0: what a Linux-tier test does first.
    pub fn run_completed(self) -> ScenarioRun {
        let name = self.name.clone();
        let run = self
            .run()
            .unwrap_or_else(|e| panic!("scenario {name} did not run: {e}"));
        run.assert_completed();
        run
    }

    fn run_direct(&self) -> Result<Output, String> {
        let work = self.dir.path().join("work");
        std::fs::create_dir_all(&work).map_err(|e| format!("creating {}: {e}", work.display()))?;
        let mut command = Command::new("sh");
        command
            .arg(self.input_path("scenario.sh"))
            .current_dir(&work)
            .env("IN", self.dir.path().join("share/in"))
            .env("OUT", self.dir.path().join("share/out"))
            .env("WORK", &work)
            .env("HOSTROOT", "");
        for p in nested::payloads()? {
            command.env(p.var, &p.host_path);
        }
        Child::spawn("scenario", command, self.dir.path())
            .map_err(|e| e.to_string())?
            .wait(self.timeout)
            .map_err(|e| e.to_string())
    }
}

/// What a scenario left: its records, its guests' consoles, every log.
pub struct ScenarioRun {
    pub name: String,
    pub tier: LinuxTier,
    pub elapsed: Duration,
    /// L1's console (nested) or the script's output (direct).
    pub console: Output,
    /// `scenario: ` records.
    pub records: ProbeReport,
    /// `nested: ` records (none in direct mode).
    pub l1: ProbeReport,
    share_log: String,
    dir: tempfile::TempDir,
}

impl ScenarioRun {
    pub fn out_dir(&self) -> PathBuf {
        self.dir.path().join("share/out")
    }

    /// A log the script wrote under `$OUT` (empty if it wrote none).
    pub fn out_file(&self, name: &str) -> String {
        String::from_utf8_lossy(&std::fs::read(self.out_dir().join(name)).unwrap_or_default())
            .into_owned()
    }

    /// The serial console of the guest started as `NAME`.
    pub fn serial(&self, name: &str) -> String {
        self.out_file(&format!("{name}.serial"))
    }

    /// The `linux: ` records the guest `NAME` printed.
    pub fn guest(&self, name: &str) -> ProbeReport {
        ProbeReport::parse_prefixed(GUEST_PREFIX, &self.serial(name))
    }

    /// The `vmm NAME exit=...` record.
    pub fn vmm(&self, name: &str) -> Option<&Record> {
        self.records.first_at("vmm", name)
    }

    /// `vmm NAME`'s exit status, if it ended.
    pub fn vmm_exit(&self, name: &str) -> Option<i32> {
        self.vmm(name)?.get("exit")?.parse().ok()
    }

    /// The scenario script's own exit status.
    pub fn script_exit(&self) -> Option<i32> {
        match self.tier {
            LinuxTier::Nested => self
                .l1
                .first("scenario-exit")?
                .number("scenario-exit")
                .map(|n| n as i32),
            LinuxTier::Direct => self.console.code(),
        }
    }

    /// Everything a person needs when a test fails: the console, then every
    /// log under `$OUT`.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "=== scenario {} ({:?}, {:.1} s)\n{}\n",
            self.name,
            self.tier,
            self.elapsed.as_secs_f64(),
            self.console.describe()
        );
        let mut logs: Vec<PathBuf> = std::fs::read_dir(self.out_dir())
            .map(|d| d.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default();
        logs.sort();
        for log in logs {
            let bytes = std::fs::read(&log).unwrap_or_default();
            // Disk images and other outputs that are not logs.
            if bytes.contains(&0) {
                text.push_str(&format!(
                    "--- {}: {} bytes of binary output
",
                    log.display(),
                    bytes.len()
                ));
                continue;
            }
            let body = String::from_utf8_lossy(&bytes).into_owned();
            text.push_str(&format!(
                "--- {}:\n{}\n",
                log.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default(),
                tail(&body, 200)
            ));
        }
        if !self.share_log.is_empty() {
            text.push_str(&format!(
                "--- host share (virtiofsd):\n{}\n",
                tail(&self.share_log, 40)
            ));
        }
        text
    }

    /// Panics with every log unless the script ran to its end with status 0.
    pub fn assert_completed(&self) {
        if let Some(error) = self.l1.first("error") {
            panic!("L1 failed: {:?}\n{}", error.get("what"), self.describe());
        }
        assert_eq!(
            self.script_exit(),
            Some(0),
            "the scenario did not complete\n{}",
            self.describe()
        );
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    let from = all.len().saturating_sub(lines);
    let mut out = String::new();
    if from > 0 {
        out.push_str(&format!("[... {from} lines before]\n"));
    }
    out.push_str(&all[from..].join("\n"));
    out
}

/// `s` as one word of a POSIX shell command line.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}
