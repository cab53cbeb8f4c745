//! What a careless or hostile user gives `vmm` (issue 16): every case ends
//! promptly with the documented exit status and one line that names the
//! option or file and the limit. Nothing hangs, dies of a signal, or loses
//! data silently.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use test_infra::host::require_kvm;
use test_infra::vmm::VmmCommand;
use test_infra::Output;

/// Far more than any of these cases needs: reaching it means `vmm` hung.
const DEADLINE: Duration = Duration::from_secs(20);

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary directory")
}

fn probe() -> PathBuf {
    test_infra::paths::probe_guest().expect("probe guest built")
}

/// Runs `vmm` with exactly `args` in `dir`.
fn run_in<S: Into<OsString> + Clone>(dir: &Path, args: &[S]) -> Output {
    let mut cmd = VmmCommand::bare();
    cmd.args(args.iter().cloned());
    cmd.spawn(dir)
        .expect("vmm starts")
        .wait(DEADLINE)
        .expect("vmm exits")
}

/// Exited by itself with `code` within `within`, with a `vmm: error:` line
/// holding every one of `needles`.
fn assert_refused(out: &Output, code: i32, within: Duration, needles: &[&str]) {
    assert_eq!(out.code(), Some(code), "{}", out.describe());
    assert!(
        out.elapsed < within,
        "took {:?}:\n{}",
        out.elapsed,
        out.describe()
    );
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| panic!("no error line:\n{}", out.describe()));
    for needle in needles {
        assert!(line.contains(needle), "{line:?} lacks {needle:?}");
    }
}

fn mkfifo(path: &Path) {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
}

fn free_huge_pages() -> u64 {
    std::fs::read_to_string("/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages")
        .map_or(0, |t| t.trim().parse().expect("a number"))
}

// Finding 1: huge pages the host does not have.

/// One 2M page more than the host has free: refused at start-up, where
/// it used to be killed by SIGBUS (exit 135, no output) at the first touch.
#[test]
fn hugepages_beyond_the_hosts_pool_are_refused_naming_hugepages() {
    let dir = tempdir();
    let size = format!("size={}M,hugepages=on", (free_huge_pages() + 1) * 2);
    let out = run_in(
        dir.path(),
        &[
            "--kernel",
            "/nonexistent",
            "--serial",
            "null",
            "--memory",
            &size,
        ],
    );
    assert_refused(
        &out,
        1,
        Duration::from_secs(10),
        &["hugepages=on", "huge pages"],
    );
}

// Finding 4: FIFOs where files are expected.

#[test]
fn a_kernel_fifo_is_refused_at_once() {
    let dir = tempdir();
    let fifo = dir.path().join("kernel");
    mkfifo(&fifo);
    let out = run_in(dir.path(), &["--kernel", "kernel", "--serial", "null"]);
    assert_refused(
        &out,
        1,
        Duration::from_secs(5),
        &["kernel kernel", "FIFO", "regular file"],
    );
}

#[test]
fn an_initramfs_fifo_is_refused_at_once() {
    if !require_kvm("an_initramfs_fifo_is_refused_at_once") {
        return;
    }
    let dir = tempdir();
    mkfifo(&dir.path().join("initrd"));
    let kernel = probe();
    let out = run_in(
        dir.path(),
        &[
            "--kernel".as_ref(),
            kernel.as_os_str(),
            "--initramfs".as_ref(),
            "initrd".as_ref(),
            "--serial".as_ref(),
            "null".as_ref(),
        ],
    );
    assert_refused(
        &out,
        1,
        Duration::from_secs(5),
        &["initramfs initrd", "FIFO"],
    );
}

#[test]
fn a_serial_fifo_nobody_reads_is_refused_at_once() {
    if !require_kvm("a_serial_fifo_nobody_reads_is_refused_at_once") {
        return;
    }
    let dir = tempdir();
    mkfifo(&dir.path().join("com1"));
    let kernel = probe();
    let out = run_in(
        dir.path(),
        &[
            "--kernel".as_ref(),
            kernel.as_os_str(),
            "--serial".as_ref(),
            "file=com1".as_ref(),
        ],
    );
    assert_refused(
        &out,
        1,
        Duration::from_secs(5),
        &["serial", "com1", "FIFO", "reader"],
    );
}

/// A FIFO is a fine place for the serial output when its reader is there
/// first: the guest's whole output comes through it.
#[test]
fn a_serial_fifo_with_a_reader_gets_the_output() {
    if !require_kvm("a_serial_fifo_with_a_reader_gets_the_output") {
        return;
    }
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = tempdir();
    let fifo = dir.path().join("com1");
    mkfifo(&fifo);
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .expect("reader");
    let kernel = probe();
    let out = run_in(
        dir.path(),
        &[
            "--kernel".as_ref(),
            kernel.as_os_str(),
            "--cmdline".as_ref(),
            "probe.run=boot".as_ref(),
            "--serial".as_ref(),
            "file=com1".as_ref(),
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let mut text = Vec::new();
    reader.read_to_end(&mut text).expect("read the FIFO");
    let text = String::from_utf8_lossy(&text);
    assert!(text.contains("probe: result=pass"), "{text}");
}

#[test]
fn a_log_fifo_nobody_reads_is_refused_at_once() {
    let dir = tempdir();
    mkfifo(&dir.path().join("log"));
    let out = run_in(
        dir.path(),
        &["--kernel", "/nonexistent", "--log-file", "log"],
    );
    assert_refused(
        &out,
        2,
        Duration::from_secs(5),
        &["log file log", "FIFO", "reader"],
    );
}

// Finding 2: SIGINT and SIGTERM, at start-up and with a device attached.

/// Whether `pid` has created the memfd of its guest memory: it is in the
/// middle of start-up.
fn has_guest_memory(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .any(|target| target.to_string_lossy().contains("vmm-guest-ram"))
}

/// SIGTERM while `vmm` is starting: waiting for a backend's socket (which
/// it would do for 5 s), or registering 256G of memory with KVM (which
/// takes seconds on some hosts). It stops with 128 + 15 and says so,
/// instead of dying by the default action.
#[rstest::rstest]
#[case::waiting_for_a_socket(&["--memory", "size=512M,shared=on", "--generic-vhost-user", "socket=nobody.sock,virtio_id=60,queue_sizes=[8]"])]
#[case::setting_up_memory(&["--memory", "size=256G,shared=on"])]
fn sigterm_during_start_up_ends_with_128_plus_15(#[case] args: &[&str]) {
    if !require_kvm("sigterm_during_start_up_ends_with_128_plus_15") {
        return;
    }
    let dir = tempdir();
    let kernel = probe();
    let mut cmd = VmmCommand::bare();
    cmd.arg("--kernel")
        .arg(&kernel)
        .args(["--serial", "null", "--cmdline", "probe.run=boot,spin"])
        .args(args.iter().copied());
    let mut child = cmd.spawn(dir.path()).expect("vmm starts");
    let pid = child.id();
    assert!(
        child.wait_until(Duration::from_secs(5), |_| has_guest_memory(pid)),
        "vmm never created its guest memory:\n{}",
        child.stderr_so_far()
    );
    child.signal(libc::SIGTERM);
    let out = child.wait(DEADLINE).expect("vmm exits");
    assert_refused(
        &out,
        128 + libc::SIGTERM,
        Duration::from_secs(10),
        &["stopped by signal 15"],
    );
}

/// With a vhost-user device the watchdog thread started before the run
/// loop blocked the signals, so they killed `vmm` outright; now the VM is
/// torn down and the status is 128 + N.
#[rstest::rstest]
#[case::sigterm(libc::SIGTERM)]
#[case::sigint(libc::SIGINT)]
fn a_signal_stops_a_vm_with_a_vhost_user_device_cleanly(#[case] signo: i32) {
    if !require_kvm("a_signal_stops_a_vm_with_a_vhost_user_device_cleanly") {
        return;
    }
    let dir = tempdir();
    let mock = test_infra::MockOptions::new("echo")
        .start(dir.path())
        .expect("mock");
    let mut cmd = VmmCommand::probe("probe.run=boot,spin").expect("artifacts");
    cmd.args(["--memory", "size=512M,shared=on", "--generic-vhost-user"])
        .arg(mock.device("60", &[256, 256]));
    let mut child = cmd.spawn(dir.path()).expect("vmm starts");
    assert!(
        child.wait_until(Duration::from_secs(30), |c| c
            .stdout_so_far()
            .contains("probe: spin")),
        "the guest never reached the spin test:\n{}",
        child.stderr_so_far()
    );
    child.signal(signo);
    let out = child.wait(DEADLINE).expect("vmm exits");
    assert_refused(
        &out,
        128 + signo,
        Duration::from_secs(30),
        &[&format!("stopped by signal {signo}")],
    );
}
