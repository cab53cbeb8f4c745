//! What a careless or hostile user gives `vmm` (issue 16): every case ends
//! promptly with the documented exit status and one line that names the
//! option or file and the limit. Nothing hangs, dies of a signal, or loses
//! data silently.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rstest::rstest;
use test_infra::host::{kvm, KvmHost};
use test_infra::tempdir;
use test_infra::vmm::VmmCommand;
use test_infra::Output;

/// Far more than any of these cases needs, even on a loaded machine:
/// reaching it means `vmm` hung.
const DEADLINE: Duration = Duration::from_secs(60);

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

/// Exited by itself with `code` (a hang is killed at `DEADLINE` and has
/// none), with a `vmm: error:` line holding every one of `needles`.
fn assert_refused(out: &Output, code: i32, needles: &[&str]) {
    assert_eq!(out.code(), Some(code), "{}", out.describe());
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
    assert_refused(&out, 1, &["hugepages=on", "huge pages"]);
}

// Finding 4: FIFOs where files are expected.

#[test]
fn a_kernel_fifo_is_refused_at_once() {
    let dir = tempdir();
    let fifo = dir.path().join("kernel");
    mkfifo(&fifo);
    let out = run_in(dir.path(), &["--kernel", "kernel", "--serial", "null"]);
    assert_refused(&out, 1, &["kernel kernel", "FIFO", "regular file"]);
}

#[rstest]
fn an_initramfs_fifo_is_refused_at_once(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
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
    assert_refused(&out, 1, &["initramfs initrd", "FIFO"]);
}

#[rstest]
fn a_serial_fifo_nobody_reads_is_refused_at_once(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
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
    assert_refused(&out, 1, &["serial", "com1", "FIFO", "reader"]);
}

/// A FIFO is a fine place for the serial output when its reader is there
/// first: the guest's whole output comes through it.
#[rstest]
fn a_serial_fifo_with_a_reader_gets_the_output(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
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
    assert_refused(&out, 2, &["log file log", "FIFO", "reader"]);
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
fn sigterm_during_start_up_ends_with_128_plus_15(kvm: Option<KvmHost>, #[case] args: &[&str]) {
    let Some(_kvm) = kvm else { return };
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
        child.wait_until(DEADLINE, |_| has_guest_memory(pid)),
        "vmm never created its guest memory:\n{}",
        child.stderr_so_far()
    );
    child.signal(libc::SIGTERM);
    let out = child.wait(DEADLINE).expect("vmm exits");
    assert_refused(&out, 128 + libc::SIGTERM, &["stopped by signal 15"]);
}

/// With a vhost-user device the watchdog thread started before the run
/// loop blocked the signals, so they killed `vmm` outright; now the VM is
/// torn down and the status is 128 + N.
#[rstest::rstest]
#[case::sigterm(libc::SIGTERM)]
#[case::sigint(libc::SIGINT)]
fn a_signal_stops_a_vm_with_a_vhost_user_device_cleanly(kvm: Option<KvmHost>, #[case] signo: i32) {
    let Some(_kvm) = kvm else { return };
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
    assert_refused(&out, 128 + signo, &[&format!("stopped by signal {signo}")]);
}

// Finding 3: kernel images that do not fit the VM or are not x86_64.

/// The probe guest with `patch` applied to its bytes.
fn patched_probe(dir: &Path, patch: fn(&mut Vec<u8>)) -> PathBuf {
    let mut bytes = std::fs::read(probe()).expect("probe guest");
    patch(&mut bytes);
    let path = dir.join("kernel");
    std::fs::write(&path, bytes).expect("write kernel");
    path
}

fn unchanged(_: &mut Vec<u8>) {}

/// The first program header's physical address (the probe has its one
/// PT_LOAD first).
fn first_segment_at(bytes: &mut [u8], paddr: u64) {
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes")) as usize;
    assert_eq!(bytes[phoff..phoff + 4], 1u32.to_le_bytes(), "PT_LOAD first");
    bytes[phoff + 24..phoff + 32].copy_from_slice(&paddr.to_le_bytes());
}

/// The PVH note's entry address (after namesz 4, descsz 8, type 18, "Xen").
fn pvh_entry_at(bytes: &mut [u8], entry: u32) {
    let note: Vec<u8> = [4u32, 8, 18]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .chain(*b"Xen\0")
        .collect();
    let at = bytes
        .windows(note.len())
        .position(|w| w == note)
        .expect("the probe has a PVH note")
        + note.len();
    bytes[at..at + 4].copy_from_slice(&entry.to_le_bytes());
}

/// A bzImage header (protocol 2.15, 64-bit entry, 30 setup sectors) in a
/// file shorter than its setup code: it used to underflow in linux-loader.
fn truncated_bzimage(bytes: &mut Vec<u8>) {
    bytes.clear();
    bytes.resize(0x400, 0);
    bytes[0x1f1] = 30;
    bytes[0x202..0x206].copy_from_slice(b"HdrS");
    bytes[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    bytes[0x211] = 1;
    bytes[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
    bytes[0x236..0x238].copy_from_slice(&1u16.to_le_bytes());
}

/// Each case used to be loaded anyway (and crashed or hung the guest, once
/// after 58 s) or failed with linux-loader's bare words; now `vmm` refuses
/// it before the guest runs, naming the kernel and the limit.
#[rstest::rstest]
#[case::ram_of_2m(unchanged, "size=2M", &["is not within guest RAM 0x100000..0x200000 (--memory size=2M)"])]
#[case::ram_of_3m(unchanged, "size=3M", &["is not within guest RAM 0x100000..0x300000 (--memory size=3M)"])]
#[case::segment_at_0(|b: &mut Vec<u8>| first_segment_at(b, 0), "size=512M", &["segment 0 at 0x0..", "below 1 MiB"])]
#[case::segment_in_ecam(|b: &mut Vec<u8>| first_segment_at(b, 0xe000_0000), "size=512M", &["segment 0 at 0xe0000000..", "not within guest RAM"])]
#[case::segment_above_4g(|b: &mut Vec<u8>| first_segment_at(b, 0x1_0000_0000), "size=512M", &["segment 0 at 0x100000000..", "not within guest RAM"])]
#[case::pvh_entry_outside(|b: &mut Vec<u8>| pvh_entry_at(b, 0x0500_0000), "size=512M", &["PVH entry point 0x5000000"])]
#[case::aarch64(|b: &mut Vec<u8>| b[18..20].copy_from_slice(&183u16.to_le_bytes()), "size=512M", &["AArch64", "expected x86_64"])]
#[case::elf_class_32(|b: &mut Vec<u8>| b[4] = 1, "size=512M", &["32-bit ELF"])]
#[case::truncated_bzimage(truncated_bzimage, "size=512M", &["cut short"])]
fn kernels_that_do_not_fit_are_refused_naming_the_limit(
    kvm: Option<KvmHost>,
    #[case] patch: fn(&mut Vec<u8>),
    #[case] memory: &str,
    #[case] needles: &[&str],
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let kernel = patched_probe(dir.path(), patch);
    let mut cmd = VmmCommand::bare();
    cmd.arg("--kernel")
        .arg(&kernel)
        .args(["--serial", "null", "--cmdline", "probe.run=boot"])
        .args(["--memory", memory]);
    let out = cmd
        .spawn(dir.path())
        .expect("vmm starts")
        .wait(DEADLINE)
        .expect("vmm exits");
    let mut all = vec![kernel.to_str().expect("UTF-8 path")];
    all.extend_from_slice(needles);
    assert_refused(&out, 1, &all);
}

/// An initramfs that does not fit between the kernel and the top of RAM
/// is refused naming both limits.
#[rstest]
fn an_initramfs_too_large_for_ram_is_refused(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    std::fs::write(dir.path().join("initrd"), vec![0u8; 6 << 20]).expect("initrd");
    let kernel = probe();
    let out = run_in(
        dir.path(),
        &[
            "--kernel".as_ref(),
            kernel.as_os_str(),
            "--initramfs".as_ref(),
            "initrd".as_ref(),
            "--memory".as_ref(),
            "size=8M".as_ref(),
            "--serial".as_ref(),
            "null".as_ref(),
        ],
    );
    assert_refused(
        &out,
        1,
        &[
            "Initramfs initrd",
            "between the kernel's end at 0x",
            "and 0x800000 (--memory size=8M)",
        ],
    );
}

// Finding 5: limits the command line alone decides, and errors that name
// what they concern.

/// A `--generic-vhost-user` value for device `i` on socket `backend<i>.sock`.
fn device(i: usize, queues: usize) -> String {
    let sizes = vec!["8"; queues].join(",");
    format!("socket=backend{i}.sock,virtio_id=60,queue_sizes=[{sizes}]")
}

/// The arguments for `devices` and `--console console` (a device unless
/// off), with a kernel that start-up would not find.
fn with_devices(devices: &[String], console: &str) -> Vec<String> {
    let mut args: Vec<String> = ["--kernel", "/nonexistent", "--serial", "null"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--memory", "size=512M,shared=on", "--console", console].map(String::from));
    for device in devices {
        args.extend(["--generic-vhost-user".into(), device.clone()]);
    }
    args
}

/// Each used to pass the parser and fail at start-up, some only after
/// waiting for (or connecting to) every backend; now each is a usage error
/// (status 2) at once, naming the option and the limit.
#[rstest::rstest]
#[case::virtio_id_64(vec!["socket=a.sock,virtio_id=64,queue_sizes=[8]".into()], "off", &["--generic-vhost-user", "virtio_id 64", "1 to 63"])]
#[case::virtio_id_65535(vec!["socket=a.sock,virtio_id=65535,queue_sizes=[8]".into()], "off", &["virtio_id 65535", "1 to 63"])]
#[case::virtio_id_65536(vec!["socket=a.sock,virtio_id=65536,queue_sizes=[8]".into()], "off", &["virtio_id 65536", "1 to 63"])]
#[case::socket_path_over_sun_path(vec![format!("socket=/tmp/{},virtio_id=60,queue_sizes=[8]", "s".repeat(120))], "off", &["--generic-vhost-user", "125 bytes long", "at most 107"])]
#[case::two_devices_on_one_socket(vec![device(0, 1), device(0, 1)], "off", &["--generic-vhost-user", "backend0.sock", "one device per backend socket"])]
#[case::thirty_two_devices((0..32).map(|i| device(i, 1)).collect(), "off", &["32 virtio-pci devices", "at most 31"])]
#[case::thirty_one_and_the_console((0..31).map(|i| device(i, 1)).collect(), "null", &["32 virtio-pci devices (31 from --generic-vhost-user, 1 from --console)"])]
#[case::msi_vectors((0..16).map(|i| device(i, 64)).collect(), "off", &["1040 MSI-X vectors", "at most 1000"])]
fn platform_limits_are_usage_errors_at_once(
    #[case] devices: Vec<String>,
    #[case] console: &str,
    #[case] needles: &[&str],
) {
    let dir = tempdir();
    let out = run_in(dir.path(), &with_devices(&devices, console));
    assert_refused(&out, 2, needles);
}

/// linux-loader refused these at start-up with status 1 and without
/// naming the option.
#[rstest::rstest]
#[case::too_long("x".repeat(2048), &["--cmdline: 2048 bytes long", "at most 2047"])]
#[case::not_ascii("root=/dev/vda \u{e9}".into(), &["--cmdline", "'\u{e9}' at byte 14", "printable ASCII"])]
#[case::control_byte("a\u{1b}[2J".into(), &["--cmdline", "'\\u{1b}' at byte 1"])]
fn a_bad_cmdline_is_a_usage_error_naming_it(#[case] cmdline: String, #[case] needles: &[&str]) {
    let dir = tempdir();
    let out = run_in(
        dir.path(),
        &[
            "--kernel",
            "/nonexistent",
            "--serial",
            "null",
            "--cmdline",
            &cmdline,
        ],
    );
    assert_refused(&out, 2, needles);
    assert!(
        !out.stderr.contains('\u{1b}'),
        "raw escape: {:?}",
        out.stderr
    );
}

/// clap said "invalid UTF-8 was detected in one or more arguments" over
/// five lines without naming the option.
#[test]
fn a_value_that_is_not_utf8_is_one_line_naming_the_option() {
    use std::os::unix::ffi::OsStringExt;
    let dir = tempdir();
    let args = [
        OsString::from("--kernel"),
        "/nonexistent".into(),
        "--memory".into(),
        OsString::from_vec(b"size=512\xffM".to_vec()),
    ];
    let out = run_in(dir.path(), &args);
    assert_refused(
        &out,
        2,
        &["--memory", "\"size=512\\xFFM\" is not valid UTF-8"],
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
}

/// Control bytes in what the user gave come back escaped, never raw.
#[rstest::rstest]
#[case::in_a_path(&["--kernel", "/nonexistent/\u{1b}[31mkernel", "--serial", "null"], 1)]
#[case::in_a_value(&["--kernel", "/k", "--memory", "size=1\u{1b}[2J"], 2)]
#[case::in_an_option(&["--kernel", "/k", "--bogus\u{7}\u{1b}[2J"], 2)]
fn control_bytes_are_escaped_in_errors(#[case] args: &[&str], #[case] code: i32) {
    let dir = tempdir();
    let out = run_in(dir.path(), args);
    assert_eq!(out.code(), Some(code), "{}", out.describe());
    assert!(
        !out.stderr.chars().any(|c| c.is_control() && c != '\n'),
        "raw control bytes: {:?}",
        out.stderr
    );
}

/// A socket path where no backend can listen used to cost the 5 s wait
/// for one and then say "Connection refused".
#[rstest::rstest]
#[case::regular_file("file", "regular file")]
#[case::directory("dir", "directory")]
#[case::dev_null("/dev/null", "character device")]
fn a_socket_path_that_is_no_socket_is_named_at_once(
    kvm: Option<KvmHost>,
    #[case] path: &str,
    #[case] kind: &str,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    std::fs::write(dir.path().join("file"), b"").expect("file");
    std::fs::create_dir(dir.path().join("dir")).expect("dir");
    let kernel = probe();
    let mut args = vec![
        "--kernel".to_string(),
        kernel.to_string_lossy().into_owned(),
    ];
    args.extend(
        with_devices(
            &[format!("socket={path},virtio_id=60,queue_sizes=[8]")],
            "off",
        )
        .into_iter()
        .skip(2),
    );
    let out = run_in(dir.path(), &args);
    assert_refused(
        &out,
        1,
        &[&format!(
            "vhost-user socket {path} is a {kind}, not a socket"
        )],
    );
}

/// A backend that closes the connection while `vmm` sets the device up:
/// said as such, where it used to read "partial message", "connection is
/// down until the device is reset", or that the backend refused a queue.
#[rstest::rstest]
#[case::at_set_owner("SET_OWNER:close", "GET_FEATURES")]
#[case::after_get_queue_num("GET_QUEUE_NUM:close-after", "SET_VRING_NUM")]
fn a_backend_hanging_up_at_start_up_is_named_as_such(
    kvm: Option<KvmHost>,
    #[case] fault: &str,
    #[case] what: &str,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let mock = test_infra::MockOptions::new("m")
        .fault(fault)
        .start(dir.path())
        .expect("mock");
    let kernel = probe();
    let mut cmd = VmmCommand::bare();
    cmd.arg("--kernel")
        .arg(&kernel)
        .args(["--serial", "null", "--console", "off"])
        .args(["--memory", "size=512M,shared=on", "--generic-vhost-user"])
        .arg(mock.device("60", &[8]));
    let out = cmd
        .spawn(dir.path())
        .expect("vmm starts")
        .wait(DEADLINE)
        .expect("vmm exits");
    assert_refused(
        &out,
        1,
        &[
            &format!("vhost-user {what}: the backend at"),
            "closed the connection",
        ],
    );
    assert!(!out.stderr.contains("until the device is reset"));
    assert!(!out.stderr.contains("refuses queue"));
}

// Finding 6: data lost without a word.

/// The log went nowhere and vmm said nothing (exit 0). Now the failure is
/// said once on stderr, naming the file; the guest's status is kept.
#[rstest]
fn a_log_file_that_cannot_be_written_is_reported_once(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let kernel = probe();
    let out = run_in(
        dir.path(),
        &[
            "--kernel".as_ref(),
            kernel.as_os_str(),
            "--cmdline".as_ref(),
            "probe.run=boot".as_ref(),
            "--serial".as_ref(),
            "null".as_ref(),
            "--console".as_ref(),
            "off".as_ref(),
            "-vv".as_ref(),
            "--log-file".as_ref(),
            "/dev/full".as_ref(),
        ],
    );
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let warnings: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        warnings,
        ["vmm: warning: cannot write the log to /dev/full: No space left on device (os error 28); records from here on may be lost"],
        "{}",
        out.describe()
    );
}

/// `vhost-user-mock --socket PATH` on what is not its to delete.
fn mock_on(dir: &Path, socket: &str) -> Output {
    let mut command = std::process::Command::new(test_infra::mock::mock_binary().expect("mock"));
    command.arg("--socket").arg(socket).current_dir(dir);
    test_infra::process::Child::spawn("mock", command, dir)
        .expect("mock starts")
        .wait(DEADLINE)
        .expect("mock exits")
}

/// A regular file in the way used to be deleted, and the mock listened in
/// its place.
#[test]
fn the_mock_never_deletes_a_file_in_the_way_of_its_socket() {
    let dir = tempdir();
    std::fs::write(dir.path().join("data"), b"precious").expect("file");
    let out = mock_on(dir.path(), "data");
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr
            .contains("data is a regular file, not a socket: not replacing it"),
        "{}",
        out.describe()
    );
    assert_eq!(
        std::fs::read(dir.path().join("data")).expect("still there"),
        b"precious"
    );
}

/// A socket nothing listens on (a backend that died) is replaced; one a
/// backend listens on is not taken from it.
#[test]
fn the_mock_replaces_only_a_stale_socket() {
    let dir = tempdir();
    let live = test_infra::MockOptions::new("live")
        .relisten()
        .start(dir.path())
        .expect("mock");
    let out = mock_on(dir.path(), "live.sock");
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out
        .stderr
        .contains("something already listens on live.sock"));

    drop(std::os::unix::net::UnixListener::bind(dir.path().join("stale.sock")).expect("bind"));
    let stale = test_infra::MockOptions::new("stale").start(dir.path());
    assert!(stale.is_ok(), "{:?}", stale.err());
    drop(live);
}

// Issue 21, finding 1: an output that is an input. Each of these used to
// empty (or append to) the user's disk image or kernel before anything
// was refused.

/// 1 MiB of a pattern, and its copy to compare against afterwards.
fn precious_image(path: &Path) -> Vec<u8> {
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(path, &bytes).expect("image");
    bytes
}

#[rstest::rstest]
#[case::console_over_the_disk(&["--serial", "null", "--console", "file=img.raw"], 1, "--disk path=img.raw too")]
#[case::serial_over_the_disk(&["--console", "off", "--serial", "file=img.raw"], 1, "--disk path=img.raw too")]
#[case::serial_through_a_link(&["--console", "off", "--serial", "file=link.raw"], 1, "--disk path=img.raw too")]
#[case::log_over_the_disk(&["--serial", "null", "--console", "off", "--log-file", "img.raw"], 2, "--disk path=img.raw too")]
#[case::serial_over_the_kernel(&["--console", "off", "--serial", "file=k.elf"], 1, "--kernel k.elf too")]
#[case::serial_and_console_one_file(&["--serial", "file=out.log", "--console", "file=out.log"], 1, "--serial file=out.log too")]
fn an_output_over_a_file_the_vm_uses_is_refused_and_nothing_is_lost(
    kvm: Option<KvmHost>,
    #[case] outputs: &[&str],
    #[case] status: i32,
    #[case] needle: &str,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let image = dir.path().join("img.raw");
    let bytes = precious_image(&image);
    std::os::unix::fs::symlink("img.raw", dir.path().join("link.raw")).expect("link");
    std::fs::copy(probe(), dir.path().join("k.elf")).expect("kernel");
    let kernel = std::fs::read(dir.path().join("k.elf")).expect("kernel");
    let mut args = vec![
        "--kernel",
        "k.elf",
        "--cmdline",
        "probe.run=boot",
        "--disk",
        "path=img.raw,image_type=raw",
    ];
    args.extend_from_slice(outputs);
    let out = run_in(dir.path(), &args);
    assert_refused(&out, status, &[needle, "never overwrites"]);
    assert!(
        std::fs::read(&image).expect("image") == bytes,
        "the image changed"
    );
    assert!(
        std::fs::read(dir.path().join("k.elf")).expect("kernel") == kernel,
        "the kernel changed"
    );
}

/// Across processes: a second `vmm` given the first one's disk image as
/// its serial file is refused before it writes a byte, with or without
/// the image as its own disk too.
#[rstest::rstest]
#[case::as_its_own_disk_too(&["--disk", "path=vm1.raw,image_type=raw"], "--disk path=vm1.raw too")]
#[case::as_an_output_only(&[], "locked by process")]
fn an_output_over_another_vm_s_disk_is_refused_and_the_disk_kept(
    kvm: Option<KvmHost>,
    #[case] disk: &[&str],
    #[case] needle: &str,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let image = dir.path().join("vm1.raw");
    let bytes = precious_image(&image);
    let mut first = VmmCommand::probe("probe.run=boot,spin").expect("artifacts");
    first.args(["--disk", "path=vm1.raw,image_type=raw"]);
    let mut running = first.spawn(dir.path()).expect("vmm starts");
    assert!(
        running.wait_until(DEADLINE, |c| c.stdout_so_far().contains("probe: spin")),
        "the first VM never ran:\n{}",
        running.stderr_so_far()
    );
    let mut args = vec![
        "--kernel".to_string(),
        probe().display().to_string(),
        "--cmdline".into(),
        "probe.run=boot".into(),
        "--console".into(),
        "off".into(),
        "--serial".into(),
        "file=vm1.raw".into(),
    ];
    args.extend(disk.iter().map(|a| a.to_string()));
    let out = run_in(dir.path(), &args);
    assert_refused(&out, 1, &[needle]);
    running.signal(libc::SIGTERM);
    running.wait(DEADLINE).expect("the first VM stops");
    assert!(
        std::fs::read(&image).expect("image") == bytes,
        "the image changed"
    );
}

/// Issue 21, finding 14: `vhost-user-mock --block /nonexistent` listened
/// and failed only at the first connection; now it says so at once and
/// makes no socket.
#[test]
fn a_mock_block_file_that_cannot_be_opened_is_said_before_listening() {
    let dir = tempdir();
    let mut command = std::process::Command::new(test_infra::mock::mock_binary().expect("mock"));
    command
        .args(["--socket", "m.sock", "--block", "/nonexistent/disk.img"])
        .current_dir(dir.path());
    let out = test_infra::process::Child::spawn("mock", command, dir.path())
        .expect("mock starts")
        .wait(DEADLINE)
        .expect("mock exits");
    assert_ne!(out.code(), Some(0), "{}", out.describe());
    assert!(out.code().is_some(), "{}", out.describe());
    assert!(
        out.stderr.contains("cannot open the --block file"),
        "{}",
        out.describe()
    );
    assert!(!dir.path().join("m.sock").exists(), "it listened");
}
