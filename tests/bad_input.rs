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
