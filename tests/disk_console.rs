//! `--disk` and `--console` as users get them wrong: missing, unusable and
//! locked images each stop `vmm` at once with one message naming the
//! option and the file (and, for a lock, who holds it); and the pty
//! console, which a user opens by the path `vmm` prints.

use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use rstest::rstest;
use test_infra::host::{kvm, KvmHost};
use test_infra::process::Child;
use test_infra::tempdir;
use test_infra::vmm::VmmCommand;
use test_infra::ProbeReport;

/// The probe with `--disk DISK`, ended or not within `timeout`.
fn probe_with_disk(dir: &Path, cmdline: &str, disk: &str) -> Child {
    let mut cmd = VmmCommand::probe(cmdline).expect("probe guest");
    cmd.arg("--disk").arg(disk);
    cmd.spawn(dir).expect("vmm starts")
}

/// Start-up fails before the guest runs: status 1 and one line naming
/// `--disk` and `what`.
fn assert_refused(dir: &Path, disk: &str, what: &[&str]) {
    let out = probe_with_disk(dir, "probe.run=boot", disk)
        .wait(Duration::from_secs(60))
        .expect("vmm exits");
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let error: Vec<&str> = out.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(error.len(), 1, "{}", out.describe());
    for needle in ["--disk"].iter().chain(what) {
        assert!(error[0].contains(needle), "no {needle:?} in {:?}", error[0]);
    }
    assert!(
        !out.stdout.contains("probe: start"),
        "the guest ran: {}",
        out.describe()
    );
}

/// Issue 21, finding 14: one image given twice as writable disks (here
/// through a link) was refused as "locked by another process". Now the
/// message names both options, and read-only disks still share one.
#[rstest]
fn one_image_is_never_two_writable_disks(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let image = dir.path().join("one.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("image");
    let link = dir.path().join("link.img");
    std::os::unix::fs::symlink(&image, &link).expect("link");
    let two_disks = |options: &str| {
        let mut cmd = VmmCommand::probe("probe.run=boot").expect("probe guest");
        for path in [&image, &link] {
            cmd.arg("--disk")
                .arg(format!("path={}{options}", path.display()));
        }
        cmd.spawn(dir.path())
            .expect("vmm starts")
            .wait(Duration::from_secs(60))
            .expect("vmm exits")
    };
    let out = two_disks("");
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let error: Vec<&str> = out.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(error.len(), 1, "{}", out.describe());
    for needle in ["--disk path=", "link.img", "one.img too", "serves one disk"] {
        assert!(error[0].contains(needle), "no {needle:?} in {:?}", error[0]);
    }
    assert!(!out.stdout.contains("probe: start"), "{}", out.describe());

    let shared = two_disks(",readonly=on");
    assert!(
        ProbeReport::parse(&shared.stdout).passed(),
        "{}",
        shared.describe()
    );
}

#[rstest]
fn a_missing_image_is_named(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let path = dir.path().join("missing.img");
    assert_refused(
        dir.path(),
        &format!("path={}", path.display()),
        &["missing.img", "No such file"],
    );
}

/// Issue 21, finding 2: a qcow2 image given without `image_type=` was
/// served as raw, and the guest's first write destroyed its header. Now a
/// known foreign format is refused, the file untouched; `image_type=raw`
/// still serves the bytes as they are.
#[rstest]
#[case::qcow2(0, b"QFI\xfb\0\0\0\x03", "qcow2 image (magic QFI")]
#[case::vhdx(0, b"vhdxfile", "vhdx image")]
#[case::fixed_vhd((1 << 20) - 512, b"conectix", "vhd image (footer conectix in the last 512 bytes)")]
fn a_foreign_image_without_image_type_is_refused_and_kept(
    kvm: Option<KvmHost>,
    #[case] at: usize,
    #[case] magic: &[u8],
    #[case] said: &str,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let path = dir.path().join("guest.img");
    let mut bytes = vec![0u8; 1 << 20];
    bytes[at..at + magic.len()].copy_from_slice(magic);
    std::fs::write(&path, &bytes).expect("image");
    let disk = format!("path={}", path.display());
    assert_refused(
        dir.path(),
        &disk,
        &[said, "image_type=raw", "qemu-img convert"],
    );
    assert!(
        std::fs::read(&path).expect("image") == bytes,
        "the image changed"
    );
    // Said to be raw, it is served as raw.
    let out = probe_with_disk(
        dir.path(),
        "probe.run=boot",
        &format!("{disk},image_type=raw"),
    )
    .wait(Duration::from_secs(60))
    .expect("vmm exits");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
}

#[rstest]
fn a_directory_or_a_fifo_is_not_an_image_and_never_blocks(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    assert_refused(
        dir.path(),
        &format!("path={}", dir.path().display()),
        &["directory"],
    );
    let fifo = dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid C string; the result is checked.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for readonly in ["on", "off"] {
        assert_refused(
            dir.path(),
            &format!("path={},readonly={readonly}", fifo.display()),
            &["fifo", "not a regular file"],
        );
    }
}

#[rstest]
fn a_read_only_file_needs_readonly_on(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let path = dir.path().join("ro.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("image");
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: a valid C string; the result is checked.
    assert_eq!(unsafe { libc::chmod(c.as_ptr(), 0o444) }, 0);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert_refused(
            dir.path(),
            &format!("path={}", path.display()),
            &["ro.img", "Permission denied"],
        );
    }
    let run = probe_with_disk(
        dir.path(),
        "probe.run=boot",
        &format!("path={},readonly=on", path.display()),
    )
    .wait(Duration::from_secs(20))
    .expect("vmm exits");
    let report = ProbeReport::parse(&run.stdout);
    assert!(report.passed(), "{}", run.describe());
}

/// A writer holds the image alone; readers share it. The refusal names
/// the holder's pid and program.
#[rstest]
fn an_image_in_use_is_refused_with_its_holder(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let path = dir.path().join("shared.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).expect("image");
    let image = path.display().to_string();

    let mut reader = probe_with_disk(
        dir.path(),
        "probe.run=spin",
        &format!("path={image},readonly=on"),
    );
    assert!(
        reader.wait_until(Duration::from_secs(20), |c| c
            .stdout_so_far()
            .contains("probe: start")),
        "the first vmm did not start: {}",
        reader.stderr_so_far()
    );
    // A second reader shares the image.
    let second = probe_with_disk(
        dir.path(),
        "probe.run=boot",
        &format!("path={image},readonly=on"),
    )
    .wait(Duration::from_secs(20))
    .expect("vmm exits");
    assert!(
        ProbeReport::parse(&second.stdout).passed(),
        "{}",
        second.describe()
    );
    // A writer does not.
    let holder = format!("process {} (vmm)", reader.id());
    assert_refused(
        dir.path(),
        &format!("path={image}"),
        &["shared.img", "locked", &holder],
    );
    reader.signal(libc::SIGTERM);
    let out = reader.wait(Duration::from_secs(20)).expect("vmm exits");
    assert_eq!(out.code(), Some(128 + libc::SIGTERM), "{}", out.describe());
    // Once it is gone, the image is free.
    let run = probe_with_disk(dir.path(), "probe.run=boot", &format!("path={image}"))
        .wait(Duration::from_secs(20))
        .expect("vmm exits");
    assert!(
        ProbeReport::parse(&run.stdout).passed(),
        "{}",
        run.describe()
    );
}

#[rstest]
fn console_output_that_cannot_be_created_is_named(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let mut cmd = VmmCommand::bare();
    cmd.arg("--kernel")
        .arg(test_infra::paths::probe_guest().expect("probe"))
        .args(["--console", "file=/nonexistent/dir/console.log"]);
    let out = cmd
        .spawn(dir.path())
        .expect("vmm starts")
        .wait(Duration::from_secs(20))
        .expect("vmm exits");
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("--console"), "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent/dir/console.log"),
        "{}",
        out.stderr
    );
}

/// The pty `vmm` created for `option`, from the line it prints:
/// `vmm: OPTION pty: /dev/pts/N`.
fn pty_path(vmm: &mut Child, option: &str) -> String {
    let line = format!("{option} pty: /dev/pts/");
    assert!(
        vmm.wait_until(Duration::from_secs(20), |c| c
            .stderr_so_far()
            .contains(&line)),
        "no {option} pty path: {}",
        vmm.stderr_so_far()
    );
    let stderr = vmm.stderr_so_far();
    stderr
        .lines()
        .find_map(|l| l.split_once(&format!("{option} pty: ")).map(|(_, p)| p))
        .expect("pty path")
        .trim()
        .to_string()
}

/// Reads `pty` until what came holds `needle`, for 20 s at most.
fn read_until(pty: &mut std::fs::File, needle: &str) {
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !String::from_utf8_lossy(&seen).contains(needle) {
        assert!(Instant::now() < deadline, "pty gave only {seen:?}");
        let mut buf = [0u8; 256];
        let n = pty.read(&mut buf).expect("read the pty");
        seen.extend_from_slice(&buf[..n]);
    }
}

/// `--console file=` on a full disk (`/dev/full`): the guest runs on and
/// vmm says once, at the default log level, that the output is being
/// lost. It used to say so only with `-v` (issue 21, finding 7).
#[rstest]
fn a_console_file_that_cannot_be_written_is_said_once(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let mut cmd = VmmCommand::bare();
    cmd.arg("--kernel")
        .arg(test_infra::paths::probe_guest().expect("probe"))
        .args([
            "--cmdline",
            "probe.run=console probe.console.tx=lost-on-a-full-disk probe.console.tx_bytes=300",
            "--console",
            "file=/dev/full",
            "--serial",
            "tty",
        ]);
    let out = cmd
        .spawn(dir.path())
        .expect("vmm starts")
        .wait(Duration::from_secs(60))
        .expect("vmm exits");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        ProbeReport::parse(&out.stdout).passed(),
        "{}",
        out.describe()
    );
    let said: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("No space left on device"))
        .collect();
    assert_eq!(said.len(), 1, "{}", out.describe());
    assert!(
        said[0].contains("cannot write the guest's console output"),
        "{said:?}"
    );
}

/// `--console pty`: vmm says where the pty is; what the guest writes comes
/// out of it and what we type there reaches the guest.
#[rstest]
fn a_pty_console_carries_both_ways(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let mut cmd = VmmCommand::bare();
    cmd.arg("--kernel")
        .arg(test_infra::paths::probe_guest().expect("probe"))
        .args([
            "--cmdline",
            "probe.run=console probe.console.tx=hello-from-the-guest probe.console.tx_bytes=0 \
             probe.console.rx_end=END probe.console.timeout_ms=20000",
            "--console",
            "pty",
            "--serial",
            "tty",
        ]);
    let mut vmm = cmd.spawn(dir.path()).expect("vmm starts");
    let path = pty_path(&mut vmm, "--console");
    let mut pty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open the pty");
    // The guest's output arrives first...
    read_until(&mut pty, "hello-from-the-guest");
    // ...then our input reaches it.
    pty.write_all(b"typed at the pty\nEND\n")
        .expect("write the pty");
    let out = vmm.wait(Duration::from_secs(30)).expect("vmm exits");
    let report = ProbeReport::parse(&out.stdout);
    assert!(report.passed(), "{}", out.describe());
    let rx = report
        .first_at("console", "rx")
        .expect("a console rx record");
    assert_eq!(rx.get("end"), Some("line"), "{}", out.describe());
    assert_eq!(
        rx.number("bytes"),
        Some("typed at the pty\nEND\n".len() as u64),
        "{}",
        out.describe()
    );
}

/// A terminal pair: `vmm` gets the far end as stdin and stdout, the test
/// reads its settings from the near end.
struct Terminal {
    _near: std::fs::File,
    far: std::fs::File,
}

impl Terminal {
    fn open() -> Terminal {
        let (mut near, mut far) = (0, 0);
        // SAFETY: openpty writes two descriptors into the ints we pass; the
        // other arguments may be null. The result is checked.
        let rc = unsafe {
            libc::openpty(
                &mut near,
                &mut far,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
        use std::os::fd::FromRawFd;
        // SAFETY: both descriptors are new and owned by nothing else.
        let (near, far) = unsafe {
            (
                std::fs::File::from_raw_fd(near),
                std::fs::File::from_raw_fd(far),
            )
        };
        Terminal { _near: near, far }
    }

    /// ICANON and ECHO: a terminal in its usual (cooked) mode has both.
    fn cooked(&self) -> bool {
        use std::os::fd::AsRawFd;
        // SAFETY: termios is plain data that tcgetattr fills; checked.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::tcgetattr(self.far.as_raw_fd(), &mut t) }, 0);
        t.c_lflag & (libc::ICANON | libc::ECHO) == (libc::ICANON | libc::ECHO)
    }

    fn spawn(&self, dir: &Path, args: &[&str]) -> std::process::Child {
        self.command(dir, &["--serial", "null"], args)
            .spawn()
            .expect("vmm starts")
    }

    /// `vmm` with the terminal as stdin and stdout; `serial` first.
    fn command(&self, dir: &Path, serial: &[&str], args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new(test_infra::paths::vmm_binary().expect("vmm"));
        command
            .arg("--kernel")
            .arg(test_infra::paths::probe_guest().expect("probe"))
            .args(serial)
            .args(args)
            .current_dir(dir)
            .stdin(self.far.try_clone().expect("dup"))
            .stdout(self.far.try_clone().expect("dup"))
            .stderr(std::process::Stdio::null());
        command
    }

    /// Columns and rows, as a user's terminal emulator sets them: the
    /// kernel sends SIGWINCH to the terminal's foreground process group.
    fn resize(&self, cols: u16, rows: u16) {
        use std::os::fd::AsRawFd;
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads the winsize we pass; checked.
        let rc = unsafe { libc::ioctl(self._near.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
        assert_eq!(rc, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
    }
}

fn wait(child: &mut std::process::Child) -> Option<i32> {
    use std::os::unix::process::ExitStatusExt;
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().expect("wait") {
            return status.code().or(status.signal().map(|s| 128 + s));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    None
}

/// `--console tty` (the default) puts the terminal in raw mode while the
/// guest runs and puts it back however `vmm` ends: the guest powering
/// off, SIGTERM, SIGHUP and SIGQUIT (which left it raw before issue 21's
/// finding 5), SIGUSR1, and a start-up error after the terminal was taken.
#[rstest]
fn the_terminal_is_given_back_on_every_way_out(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let terminal = Terminal::open();
    assert!(terminal.cooked());

    let mut vmm = terminal.spawn(dir.path(), &["--cmdline", "probe.run=boot"]);
    assert_eq!(wait(&mut vmm), Some(0));
    assert!(terminal.cooked(), "not restored after power-off");

    for signo in [libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1] {
        let mut vmm = terminal.spawn(dir.path(), &["--cmdline", "probe.run=spin"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while terminal.cooked() {
            assert!(Instant::now() < deadline, "the terminal never went raw");
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: kill sends a signal to our own child; the result is checked.
        assert_eq!(unsafe { libc::kill(vmm.id() as i32, signo) }, 0);
        assert_eq!(wait(&mut vmm), Some(128 + signo), "signal {signo}");
        assert!(terminal.cooked(), "not restored after signal {signo}");
    }

    let missing = dir.path().join("missing.img");
    let disk = format!("path={}", missing.display());
    let mut vmm = terminal.spawn(dir.path(), &["--disk", &disk]);
    assert_eq!(wait(&mut vmm), Some(1));
    assert!(terminal.cooked(), "not restored after a start-up error");
}

/// The console on the user's terminal follows its size. The guest reads
/// the size at start; when the user resizes the terminal, vmm (the
/// terminal's foreground process, as in a shell) gets SIGWINCH and the
/// guest the new size, with a config interrupt and a new
/// config_generation. QEMU's virtconsole offers no size, so the probe's
/// facts here have no QEMU counterpart. A terminal that is 0x0 at start (a
/// new pty before its user sets a size) is still one whose size the guest
/// follows: it used to get no VIRTIO_CONSOLE_F_SIZE at all (issue 21,
/// finding 6).
#[rstest]
#[case::sized_at_start(100, 30)]
#[case::zero_at_start(0, 0)]
fn the_console_follows_the_terminal_s_size(
    kvm: Option<KvmHost>,
    #[case] cols: u16,
    #[case] rows: u16,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let terminal = Terminal::open();
    terminal.resize(cols, rows);
    let serial = dir.path().join("serial.out");
    let serial_arg = format!("file={}", serial.display());
    let mut command = terminal.command(
        dir.path(),
        &["--serial", &serial_arg],
        &[
            "--cmdline",
            "probe.run=console probe.console.resize=on probe.console.tx_bytes=0 probe.console.timeout_ms=20000",
        ],
    );
    use std::os::unix::process::CommandExt;
    // SAFETY: between fork and exec the closure calls only setsid and
    // ioctl, which are async-signal-safe, and allocates nothing.
    unsafe {
        command.pre_exec(|| {
            // A session of its own with the terminal as its controlling
            // terminal, as a login shell's child in the foreground.
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut vmm = command.spawn().expect("vmm starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    let waiting = loop {
        // Whole lines only: the guest may be halfway through one.
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        let whole = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
        let report = ProbeReport::parse(whole);
        if let Some(r) = report.first_at("console", "resize-wait") {
            break r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the probe never waited for a resize:\n{}",
            std::fs::read_to_string(&serial).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    terminal.resize(132, 43);
    assert_eq!(wait(&mut vmm), Some(0));
    let text = std::fs::read_to_string(&serial).expect("serial output");
    let report = ProbeReport::parse(&text);
    assert!(report.passed(), "{text}");
    let config = report
        .first_at("console", "config")
        .expect("console config");
    assert_eq!(config.get("f_size"), Some("1"), "{text}");
    assert_eq!(
        (config.get("cols"), config.get("rows")),
        (
            Some(cols.to_string().as_str()),
            Some(rows.to_string().as_str())
        ),
        "{text}"
    );
    let resized = report
        .first_at("console", "resize")
        .expect("console resize");
    assert_eq!(
        (resized.get("cols"), resized.get("rows")),
        (Some("132"), Some("43")),
        "{text}"
    );
    assert_eq!(resized.get("generation_moved"), Some("1"), "{text}");
    assert!(
        resized.number("config_irqs").is_some_and(|n| n >= 1),
        "{text}"
    );
    assert!(waiting.number("generation").is_some(), "{text}");
}

/// `--serial pty`: the UART on a pseudo-terminal, found by the path vmm
/// prints; the probe's records come out of it.
#[rstest]
fn a_pty_serial_port_carries_the_guest_s_output(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let mut cmd = VmmCommand::bare();
    cmd.arg("--kernel")
        .arg(test_infra::paths::probe_guest().expect("probe"))
        .args([
            "--cmdline",
            "probe.run=spin",
            "--serial",
            "pty",
            "--console",
            "off",
        ]);
    let mut vmm = cmd.spawn(dir.path()).expect("vmm starts");
    let path = pty_path(&mut vmm, "--serial");
    let mut pty = std::fs::File::open(&path).expect("open the pty");
    read_until(&mut pty, "probe: start");
    vmm.signal(libc::SIGTERM);
    let out = vmm.wait(Duration::from_secs(20)).expect("vmm exits");
    assert_eq!(out.code(), Some(128 + libc::SIGTERM), "{}", out.describe());
}

/// A reboot through the API builds a new VM but keeps the consoles' host
/// ends: the user's pty is the same one (its path said once), and the
/// second boot's output comes out of it. The pty is read all along, as a
/// terminal would: one nobody reads fills, and then loses the guest's
/// output.
#[rstest]
fn a_pty_stays_the_same_across_a_reboot(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let socket = dir.path().join("api.sock");
    let mut cmd = VmmCommand::bare();
    cmd.arg("--kernel")
        .arg(test_infra::paths::probe_guest().expect("probe"))
        .args([
            "--cmdline",
            "probe.run=tick probe.tick_ms=100",
            "--serial",
            "pty",
            "--console",
            "off",
        ])
        .arg("--api-socket")
        .arg(&socket);
    let mut vmm = cmd.spawn(dir.path()).expect("vmm starts");
    let path = pty_path(&mut vmm, "--serial");
    let mut pty = std::fs::File::open(&path).expect("open the pty");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pty.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let boots = || {
        seen.lock()
            .unwrap()
            .lines()
            .filter(|l| l.ends_with("probe: start"))
            .count()
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}: {}",
                seen.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("the first boot", &|| boots() == 1);
    test_infra::api::wait_for_socket(&socket, Duration::from_secs(60)).expect("API socket");
    let reboot = test_infra::api::curl(&socket, "PUT", "vm.reboot", None);
    assert_eq!(reboot.status, 204, "{reboot:?}");
    wait_for("the second boot on the same pty", &|| boots() == 2);
    let shutdown = test_infra::api::curl(&socket, "PUT", "vmm.shutdown", None);
    assert_eq!(shutdown.status, 204, "{shutdown:?}");
    let out = vmm.wait(Duration::from_secs(60)).expect("vmm exits");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_eq!(
        out.stderr.matches("--serial pty: ").count(),
        1,
        "one pty, said once: {}",
        out.stderr
    );
    // The far end closes with vmm: the reader sees the end.
    reader.join().expect("the reader");
}
