//! The API socket of a running VM, as Cloud Hypervisor's users drive it:
//! Debian's curl for what they send, a raw socket for what no client
//! should. The probe guest shows what a pause does: its ticks stop and
//! its vCPU threads use no CPU; every byte of I/O across 200 pauses is
//! checked, by the guest and on the host.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rstest::rstest;
use test_infra::api::{curl, raw, status_of, vcpu_cpu_ticks, wait_for_socket, Reply};
use test_infra::host::{kvm, KvmHost};
use test_infra::process::Child;
use test_infra::tempdir;
use test_infra::virtiofsd::Virtiofsd;
use test_infra::vmm::VmmCommand;
use test_infra::{Disk, Guest, Hypervisor, ProbeReport};

const WAIT: Duration = Duration::from_secs(60);

/// `vmm` with the probe and `--api-socket DIR/api.sock`, once it listens.
fn start(dir: &Path, mut cmd: VmmCommand) -> (Child, PathBuf) {
    let socket = dir.join("api.sock");
    cmd.arg("--api-socket")
        .arg(format!("path={}", socket.display()));
    let child = cmd.spawn(dir).expect("vmm starts");
    wait_for_socket(&socket, WAIT).expect("the API socket");
    (child, socket)
}

fn ticks(child: &Child) -> usize {
    child
        .stdout_so_far()
        .lines()
        .filter(|l| l.starts_with("probe: tick "))
        .count()
}

/// Waits until the guest has ticked `more` times since `from`.
fn wait_ticks(child: &mut Child, from: usize, more: usize) {
    assert!(
        child.wait_until(WAIT, |c| ticks(c) >= from + more),
        "the guest did not tick: {}",
        child.stderr_so_far()
    );
}

/// How many times the probe started in `output`. A VM stopped mid-line
/// leaves the line unfinished, as a serial port does, and the next boot's
/// first line continues it: a start ends a line, it may not begin one.
fn boots(output: &str) -> usize {
    output
        .lines()
        .filter(|l| l.ends_with("probe: start"))
        .count()
}

/// `vmm.shutdown` answered 204, and vmm gone with status 0.
fn shut_down(child: Child, socket: &Path) -> test_infra::Output {
    assert_no_content(&curl(socket, "PUT", "vmm.shutdown", None), "vmm.shutdown");
    let out = child.wait(WAIT).expect("vmm exits");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    out
}

fn assert_no_content(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 204, "{what}: {reply:?}");
    assert!(reply.body.is_empty(), "{what}: {reply:?}");
}

#[rstest]
fn ping_info_pause_resume_and_shutdown(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("image");
    let mut cmd = VmmCommand::probe("probe.run=tick").expect("probe");
    cmd.arg("--disk")
        .arg(format!("path={},id=data", image.display()));
    let (mut child, socket) = start(dir.path(), cmd);

    let ping = curl(&socket, "GET", "vmm.ping", None);
    assert_eq!(ping.status, 200, "{ping:?}");
    assert_eq!(ping.json()["pid"], u64::from(child.id()));
    assert!(ping.json()["version"].is_string(), "{ping:?}");

    let info = curl(&socket, "GET", "vm.info", None).json();
    assert_eq!(info["state"], "Running", "{info}");
    assert_eq!(info["config"]["cpus"]["boot_vcpus"], 1, "{info}");
    assert_eq!(info["config"]["disks"][0]["id"], "data", "{info}");
    let bdf = info["device_tree"]["data"]["pci_bdf"]
        .as_str()
        .unwrap_or_default();
    assert!(bdf.starts_with("0000:00:") && bdf.ends_with(".0"), "{info}");

    wait_ticks(&mut child, 0, 5);
    // Exit accounting: the guest's ticks are UART writes, each an exit to
    // vmm at COM1's ports, counted by kind and by the range reached.
    let exits = || curl(&socket, "GET", "vm.counters", None).json()["vcpu-exits"].clone();
    let serial = |exits: &serde_json::Value| exits["io 0x3f8+0x8"].as_u64().unwrap_or(0);
    let first = exits();
    assert!(serial(&first) > 0, "{first}");
    assert!(first["io"].as_u64() >= Some(serial(&first)), "{first}");
    let seen = ticks(&child);
    wait_ticks(&mut child, seen, 2);
    let later = exits();
    assert!(serial(&later) > serial(&first), "{first} then {later}");

    assert_no_content(&curl(&socket, "PUT", "vm.pause", None), "pause");
    assert_eq!(
        curl(&socket, "GET", "vm.info", None).json()["state"],
        "Paused"
    );
    let (before, cpu_before) = (ticks(&child), vcpu_cpu_ticks(child.id()));
    std::thread::sleep(Duration::from_secs(1));
    let (after, cpu_after) = (ticks(&child), vcpu_cpu_ticks(child.id()));
    assert_eq!(after, before, "the guest ticked while paused");
    // One clock tick of slack: the accounting's granularity, not work.
    assert!(
        cpu_after - cpu_before <= 1,
        "paused vCPU threads used {} clock ticks in 1 s",
        cpu_after - cpu_before
    );

    let again = curl(&socket, "PUT", "vm.pause", None);
    assert_eq!(again.status, 409, "{again:?}");
    let chain: Vec<String> = serde_json::from_str(&again.body).expect("a JSON array");
    assert!(chain[0].contains("Paused"), "{chain:?}");

    assert_no_content(&curl(&socket, "PUT", "vm.resume", None), "resume");
    wait_ticks(&mut child, after, 5);
    assert_eq!(curl(&socket, "PUT", "vm.resume", None).status, 409);
    assert_eq!(
        curl(&socket, "GET", "vm.info", None).json()["state"],
        "Running"
    );

    shut_down(child, &socket);
    assert!(!socket.exists(), "the socket is removed at the end");
}

/// Each request no client should send gets its own status, and the VM
/// runs on as if nothing had come.
#[rstest]
fn bad_requests_get_a_clear_status_and_the_vm_runs_on(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let (mut child, socket) = start(
        dir.path(),
        VmmCommand::probe("probe.run=tick").expect("probe"),
    );
    let cases: &[(&str, Vec<u8>, u16)] = &[
        (
            "unknown name",
            b"GET /api/v1/vm.nothing HTTP/1.1\r\n\r\n".to_vec(),
            404,
        ),
        (
            "not the API",
            b"GET /index.html HTTP/1.1\r\n\r\n".to_vec(),
            404,
        ),
        (
            "wrong method",
            b"POST /api/v1/vm.pause HTTP/1.1\r\n\r\n".to_vec(),
            405,
        ),
        (
            "a body where none is taken",
            b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}".to_vec(),
            400,
        ),
        ("not HTTP", b"hello there\r\n\r\n".to_vec(), 400),
        (
            "a bad Content-Length",
            b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: lots\r\n\r\n".to_vec(),
            400,
        ),
        (
            "a body cut short",
            b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 10\r\n\r\n{}".to_vec(),
            400,
        ),
        (
            "chunked",
            b"PUT /api/v1/vm.pause HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                .to_vec(),
            411,
        ),
        (
            "a 100 MiB body announced",
            b"PUT /api/v1/vm.pause HTTP/1.1\r\nContent-Length: 104857600\r\n\r\n".to_vec(),
            413,
        ),
        (
            "a head without end",
            [
                b"GET /api/v1/vmm.ping HTTP/1.1\r\nX: ".as_slice(),
                &vec![b'a'; 64 << 10],
            ]
            .concat(),
            431,
        ),
    ];
    for (what, request, status) in cases {
        let response = raw(&socket, request);
        assert_eq!(status_of(&response), Some(*status), "{what}: {response:?}");
        let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        let chain: Vec<String> = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("{what}: no JSON error body ({e}): {response:?}"));
        assert_eq!(chain.len(), 1, "{what}: {chain:?}");
    }
    // curl sending a real 100 MiB body is told before it sends it.
    let body = dir.path().join("big.json");
    std::fs::write(&body, vec![b' '; 100 << 20]).expect("body");
    let big = curl(
        &socket,
        "PUT",
        "vm.pause",
        Some(&format!("@{}", body.display())),
    );
    assert_eq!(big.status, 413, "{big:?}");
    // A request cut off in its head: the server drops it, nothing else.
    let _ = raw(&socket, b"GET /api/v1/vm");

    let running = ticks(&child);
    wait_ticks(&mut child, running, 5);
    assert_eq!(
        curl(&socket, "GET", "vm.info", None).json()["state"],
        "Running"
    );
    child.signal(libc::SIGTERM);
    let out = child.wait(WAIT).expect("vmm exits");
    assert_eq!(out.code(), Some(128 + libc::SIGTERM), "{}", out.describe());
}

/// A client that connects and says nothing holds nobody up: 64 others at
/// once are all answered, and the VM is paused and resumed meanwhile.
#[rstest]
fn a_silent_client_and_64_at_once_block_nobody(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let (mut child, socket) = start(
        dir.path(),
        VmmCommand::probe("probe.run=tick").expect("probe"),
    );
    let _silent = UnixStream::connect(&socket).expect("connect");
    let _half = {
        let mut s = UnixStream::connect(&socket).expect("connect");
        std::io::Write::write_all(&mut s, b"GET /api/v1/vmm.ping HTTP/1.1\r\n").expect("write");
        s
    };
    let clients: Vec<_> = (0..64)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || curl(&socket, "GET", "vmm.ping", None).status)
        })
        .collect();
    assert_no_content(&curl(&socket, "PUT", "vm.pause", None), "pause");
    assert_no_content(&curl(&socket, "PUT", "vm.resume", None), "resume");
    for client in clients {
        assert_eq!(client.join().expect("client thread"), 200);
    }
    let running = ticks(&child);
    wait_ticks(&mut child, running, 5);
    shut_down(child, &socket);
}

/// Only the socket's owner drives the VM: the socket is 0600, and a
/// client of another uid that reaches it anyway is refused with 403.
#[rstest]
fn another_uid_is_refused(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("another_uid_is_refused: needs root to act as another uid; skipped");
        return;
    }
    let dir = tempdir();
    let (child, socket) = start(
        dir.path(),
        VmmCommand::probe("probe.run=tick").expect("probe"),
    );
    let as_nobody = || {
        let out = std::process::Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "curl"])
            .args(["--silent", "--write-out", "%{http_code}", "--unix-socket"])
            .arg(&socket)
            .arg("http://localhost/api/v1/vmm.ping")
            .output()
            .expect("setpriv runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    use std::os::unix::fs::PermissionsExt;
    // The test directory is the test's own; let nobody reach the socket.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    // curl exit 7: it could not connect.
    assert_eq!(as_nobody().0, Some(7), "0600 lets nobody in");
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o666)).expect("chmod");
    let (code, out) = as_nobody();
    assert!(out.ends_with("403"), "{code:?} {out:?}");
    assert_eq!(curl(&socket, "GET", "vmm.ping", None).status, 200);
    child.signal(libc::SIGTERM);
    child.wait(WAIT).expect("vmm exits");
}

/// A live socket is another VMM's: a second `vmm` on it is refused and
/// the first one keeps it. A stale one (its VMM gone) is replaced.
#[rstest]
fn a_live_socket_is_refused_and_a_stale_one_replaced(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let socket = dir.path().join("api.sock");
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("a stale socket"));
    let (first, socket) = start(
        dir.path(),
        VmmCommand::probe("probe.run=tick").expect("probe"),
    );
    let mut second = VmmCommand::probe("probe.run=tick").expect("probe");
    second
        .arg("--api-socket")
        .arg(format!("path={}", socket.display()));
    let out = second
        .spawn(dir.path())
        .expect("vmm starts")
        .wait(WAIT)
        .expect("vmm exits");
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("is the socket of a running process"),
        "{}",
        out.describe()
    );
    assert_eq!(
        curl(&socket, "GET", "vmm.ping", None).json()["pid"],
        u64::from(first.id())
    );
    first.signal(libc::SIGTERM);
    first.wait(WAIT).expect("vmm exits");
    assert!(!socket.exists());
}

/// 200 pauses and resumes while the probe reads and writes a virtio-fs
/// share and a disk, round after round: every round's bytes are right,
/// as the guest reads them back and as the host hashes them.
#[rstest]
fn io_is_exact_across_200_pauses(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    const CYCLES: usize = 200;
    let dir = tempdir();
    let fs = Virtiofsd::start(dir.path(), "myfs").expect("virtiofsd starts");
    let input: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(fs.shared_dir().join("input.bin"), &input).expect("input");
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 16 << 20]).expect("image");
    let guest = Guest::probe(
        Hypervisor::Vmm,
        "probe.run=fs,blk probe.repeat=0 probe.fs.read=input.bin probe.fs.write=out.bin:4194304 probe.blk.write=0:8192 probe.blk.sha=0:8192",
    )
    .virtiofs(&fs)
    .disk(Disk::new(&image));
    let (mut child, socket) = start(dir.path(), guest.vmm_command().expect("command"));
    let rounds = |c: &Child| {
        c.stdout_so_far()
            .lines()
            .filter(|l| l.starts_with("probe: round "))
            .count()
    };
    assert!(
        child.wait_until(WAIT, |c| rounds(c) >= 1),
        "{}",
        child.stderr_so_far()
    );

    let counters = |socket: &Path| {
        let reply = curl(socket, "GET", "vm.counters", None);
        assert_eq!(reply.status, 200, "{reply:?}");
        reply.json()
    };
    let before = counters(&socket);
    let first = rounds(&child);
    let start = Instant::now();
    for cycle in 0..CYCLES {
        for name in ["vm.pause", "vm.resume"] {
            let reply = curl(&socket, "PUT", name, None);
            assert_eq!(
                reply.status,
                204,
                "cycle {cycle}, {name}: {reply:?}\n{}\n{}",
                child.stdout_so_far(),
                child.stderr_so_far()
            );
        }
    }
    let during = rounds(&child) - first;
    eprintln!(
        "{CYCLES} pause/resume cycles in {:?}, {during} rounds of I/O meanwhile",
        start.elapsed()
    );
    // The guest goes on: one more whole round after the last resume.
    let last = rounds(&child);
    assert!(
        child.wait_until(WAIT, |c| rounds(c) > last + 1),
        "{}",
        child.stderr_so_far()
    );
    // Paused, the host's files hold still: the disk's range is the
    // pattern, and the share's file (rewritten every round) a prefix of
    // its pattern.
    assert_no_content(&curl(&socket, "PUT", "vm.pause", None), "pause");
    let disk_pattern: Vec<u8> = (0..8192usize * 512).map(|o| (o % 251) as u8).collect();
    let on_disk = std::fs::read(&image).expect("image");
    assert!(
        on_disk[..disk_pattern.len()] == disk_pattern[..],
        "the disk differs from the pattern"
    );
    let pattern: Vec<u8> = (0..4usize << 20).map(|i| (i % 251) as u8).collect();
    let after = counters(&socket);
    let written = std::fs::read(fs.shared_dir().join("out.bin")).expect("the guest's file");
    assert!(
        written.len() <= pattern.len() && written[..] == pattern[..written.len()],
        "out.bin is no prefix of its pattern"
    );
    let out = shut_down(child, &socket);
    assert!(during >= 1, "no round of I/O ran during the cycles");

    let report = ProbeReport::parse(&out.stdout);
    assert!(
        report.result().is_none(),
        "the guest failed: {}",
        out.describe()
    );
    let host_sha = |bytes: &[u8]| test_infra::digest::sha256_hex(bytes).expect("sha256");
    let read_sha = host_sha(&input);
    let (mut reads, mut writes, mut blk) = (0, 0, 0);
    for record in report.all("fs") {
        match record.positional.first().map(String::as_str) {
            Some("read") => {
                assert_eq!(record.get("sha256"), Some(read_sha.as_str()), "{record:?}");
                reads += 1;
            }
            Some("write") => {
                assert_eq!(record.get("readback"), Some("ok"), "{record:?}");
                assert_eq!(
                    record.get("sha256"),
                    Some(host_sha(&pattern).as_str()),
                    "{record:?}"
                );
                writes += 1;
            }
            _ => {}
        }
    }
    for record in report.all("blk") {
        if record.positional.first().map(String::as_str) == Some("write") {
            assert_eq!(record.get("readback"), Some("ok"), "{record:?}");
            assert_eq!(record.get("status"), Some("0"), "{record:?}");
            blk += 1;
        }
    }
    let rounds_done = report.all("round").count();
    assert!(
        reads >= rounds_done && writes >= rounds_done && blk >= rounds_done,
        "{reads} reads, {writes} writes, {blk} disk writes in {rounds_done} rounds"
    );
    // vm.counters moved with the guest's I/O: every round wrote the
    // 4 MiB range and read it back, through vmm's own virtio-blk.
    let grew = |device: &str, name: &str| {
        let at = |c: &serde_json::Value| {
            c[device][name]
                .as_u64()
                .unwrap_or_else(|| panic!("no {device}.{name} in {c}"))
        };
        at(&after) - at(&before)
    };
    let range = 8192 * 512;
    let rounds_meanwhile = during as u64;
    assert!(
        grew("_disk0", "write_bytes") >= rounds_meanwhile * range,
        "{before}\n{after}"
    );
    assert!(
        grew("_disk0", "read_bytes") >= 2 * rounds_meanwhile * range,
        "{before}\n{after}"
    );
    assert!(grew("_disk0", "write_ops") >= rounds_meanwhile, "{after}");
    // Each round's bring-ups reset and activate both devices again.
    for device in ["_disk0", "_generic_vhost_user0"] {
        assert!(
            grew(device, "activations") >= rounds_meanwhile,
            "{device}: {after}"
        );
        assert!(
            grew(device, "resets") >= rounds_meanwhile,
            "{device}: {after}"
        );
        assert_eq!(after[device]["needs_reset"], 0, "{device}: {after}");
    }
    assert_eq!(after["_generic_vhost_user0"]["reconnects"], 0, "{after}");
}

/// Cloud Hypervisor's own client, unchanged: `CH_REMOTE` names a
/// ch-remote built from Cloud Hypervisor's source (never part of this
/// repository; the README's Testing section says how). Without it the
/// test says so and checks nothing.
#[rstest]
fn ch_remote_drives_the_vm_unchanged(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let Some(ch_remote) = std::env::var_os("CH_REMOTE") else {
        eprintln!("ch_remote_drives_the_vm_unchanged: CH_REMOTE is not set; skipped");
        return;
    };
    let dir = tempdir();
    let (mut child, socket) = start(
        dir.path(),
        VmmCommand::probe("probe.run=tick").expect("probe"),
    );
    let run = |command: &str| {
        let out = std::process::Command::new(&ch_remote)
            .arg("--api-socket")
            .arg(&socket)
            .args(command.split(' '))
            .output()
            .expect("ch-remote runs");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, ping, err) = run("ping");
    assert_eq!(code, Some(0), "{err}");
    let ping: serde_json::Value = serde_json::from_str(&ping).expect("ping JSON");
    assert_eq!(ping["pid"], u64::from(child.id()));
    let (code, info, err) = run("info");
    assert_eq!(code, Some(0), "{err}");
    assert!(info.contains("\"state\":\"Running\""), "{info}");

    assert_eq!(run("pause").0, Some(0));
    let (_, info, _) = run("info");
    assert!(info.contains("\"state\":\"Paused\""), "{info}");
    let paused = ticks(&child);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(ticks(&child), paused, "ticks while paused");
    // A wrong state fails the command, with our reason in its chain.
    let (code, _, err) = run("pause");
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("the VM is Paused: cannot pause"), "{err}");
    assert_eq!(run("resume").0, Some(0));
    wait_ticks(&mut child, paused, 5);

    // What info says, create takes back: delete, create and boot again.
    let (_, info, _) = run("info");
    let info: serde_json::Value = serde_json::from_str(&info).expect("info JSON");
    let config = dir.path().join("config.json");
    std::fs::write(&config, info["config"].to_string()).expect("config.json");
    assert_eq!(run("delete").0, Some(0));
    let (code, _, err) = run("info");
    assert_eq!(code, Some(1), "info after delete");
    assert!(err.contains("no VM is created"), "{err}");
    let (code, _, err) = run(&format!("create {}", config.display()));
    assert_eq!(code, Some(0), "{err}");
    let (code, _, err) = run("boot");
    assert_eq!(code, Some(0), "{err}");
    let starts = |c: &Child| boots(&c.stdout_so_far());
    assert!(child.wait_until(WAIT, |c| starts(c) == 2), "no second boot");
    // A press is an edge: before the second boot has routed the event
    // device's pin, the IOAPIC drops it, as it would on a PC (once in 10
    // runs beside a CI run).
    let routed = |c: &Child| {
        c.stdout_so_far()
            .lines()
            .filter(|l| l.starts_with("probe: acpi-ged "))
            .count()
    };
    assert!(
        child.wait_until(WAIT, |c| routed(c) == 2),
        "no event device routed"
    );

    // The guest powers itself off at the press, and vmm ends with it.
    let (code, _, err) = run("power-button");
    assert_eq!(code, Some(0), "{err}");
    let out = child.wait(WAIT).expect("vmm exits");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert!(
        out.stdout.lines().any(|l| l == "probe: power-button"),
        "{}",
        out.describe()
    );
}

/// The event monitor tells, one JSON object a line in Cloud Hypervisor's
/// shape, what the VM and its devices did: boot, a pause and a resume
/// asked through the API, a backend lost at DRIVER_OK (the device asks
/// for a reset), back at the guest's reset and then activated, and the
/// shutdown.
#[rstest]
fn the_event_monitor_tells_what_happened(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let mock = test_infra::MockOptions::new("kick")
        .fault("SET_VRING_KICK#1:close")
        .relisten()
        .start(dir.path())
        .expect("mock");
    let events_path = dir.path().join("events.json");
    let mut cmd = VmmCommand::probe("probe.run=echo,tick probe.echo.rounds=4 probe.echo.recover=1")
        .expect("probe");
    cmd.args(["--memory", "size=512M,shared=on"])
        .arg("--generic-vhost-user")
        .arg(format!("{},id=echo", mock.device("60", &[256, 256])))
        .arg("--event-monitor")
        .arg(format!("path={}", events_path.display()));
    let (mut child, socket) = start(dir.path(), cmd);
    wait_ticks(&mut child, 0, 5);
    assert_no_content(&curl(&socket, "PUT", "vm.pause", None), "pause");
    assert_no_content(&curl(&socket, "PUT", "vm.resume", None), "resume");
    let counted = curl(&socket, "GET", "vm.counters", None).json();
    shut_down(child, &socket);

    let text = std::fs::read_to_string(&events_path).expect("events");
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    for event in &events {
        assert!(event["timestamp"]["secs"].is_u64(), "{event}");
        assert!(event["timestamp"]["nanos"].is_u64(), "{event}");
    }
    let said: Vec<String> = events
        .iter()
        .map(|e| {
            let id = e["properties"]["id"].as_str().unwrap_or("");
            format!(
                "{} {} {id}",
                e["source"].as_str().unwrap_or(""),
                e["event"].as_str().unwrap_or("")
            )
            .trim_end()
            .to_owned()
        })
        .collect();
    let position = |what: &str| {
        said.iter()
            .position(|s| s == what)
            .unwrap_or_else(|| panic!("no {what:?} in {said:#?}"))
    };
    let order = [
        "vmm starting",
        "vm booting",
        "vm booted",
        "vhost-user reconnected echo",
        "virtio-device activated echo",
    ];
    let at: Vec<usize> = order.iter().map(|what| position(what)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "out of order: {said:#?}"
    );
    // The lost backend and the failed activation are one fault seen by two
    // threads (the backend's watcher, the vCPU that set DRIVER_OK): both
    // are told, in whichever order they saw it, before the reconnection.
    for what in [
        "vhost-user disconnected echo",
        "virtio-device needs-reset echo",
    ] {
        let when = position(what);
        assert!(at[2] < when && when < at[3], "{what}: {said:#?}");
    }
    // The guest's reset, after the device asked for one, is what
    // reconnects (the watcher may tell of the loss after it).
    let needs_reset = position("virtio-device needs-reset echo");
    assert!(
        said[needs_reset..at[3]].contains(&"virtio-device reset echo".to_owned()),
        "no reset between the request and the reconnection: {said:#?}"
    );
    let (pausing, paused) = (position("vm pausing"), position("vm paused"));
    let (resuming, resumed) = (position("vm resuming"), position("vm resumed"));
    assert!(
        pausing < paused && paused < resuming && resuming < resumed,
        "{said:#?}"
    );
    assert_eq!(
        said.last().map(String::as_str),
        Some("vm shutdown"),
        "{said:#?}"
    );
    assert_eq!(counted["event-monitor"]["dropped"], 0, "{counted}");
    assert!(
        counted["event-monitor"]["events"].as_u64() >= Some(12),
        "{counted}"
    );
}

/// Cloud Hypervisor's `fd=` forms: a listening socket and an event file
/// the caller opened, handed down as descriptors 3 and 4.
#[rstest]
fn an_api_socket_and_an_event_monitor_handed_down_as_descriptors(kvm: Option<KvmHost>) {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let socket = dir.path().join("given.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let events_path = dir.path().join("events.json");
    let events = std::fs::File::create(&events_path).expect("events file");
    let mut cmd = VmmCommand::probe("probe.run=tick").expect("probe");
    cmd.args(["--api-socket", "fd=3", "--event-monitor", "fd=4"]);
    let mut command = cmd.command().expect("command");
    let (listener_fd, events_fd) = (listener.as_raw_fd(), events.as_raw_fd());
    // SAFETY: fcntl and dup2 only, between fork and exec; the descriptors
    // stay open in the parent until the child has started.
    unsafe {
        command.pre_exec(move || {
            // Out of the way first: either may already be 3 or 4, and
            // dup2 onto itself would keep its close-on-exec.
            let high = [listener_fd, events_fd].map(|fd| libc::fcntl(fd, libc::F_DUPFD, 100));
            for (from, to) in high.into_iter().zip([3, 4]) {
                if from < 0 || libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command.current_dir(dir.path());
    let mut child = Child::spawn("vmm", command, dir.path()).expect("vmm starts");
    drop(OwnedFd::from(listener));
    drop(events);
    wait_ticks(&mut child, 0, 3);
    assert_eq!(
        curl(&socket, "GET", "vmm.ping", None).json()["pid"],
        u64::from(child.id())
    );
    shut_down(child, &socket);
    let text = std::fs::read_to_string(&events_path).expect("events");
    assert!(
        text.lines()
            .next()
            .is_some_and(|l| l.contains("\"starting\"")),
        "{text}"
    );
    assert!(
        text.lines()
            .last()
            .is_some_and(|l| l.contains("\"shutdown\"")),
        "{text}"
    );
    // The socket was the caller's: vmm leaves its file alone.
    assert!(socket.exists());
}

/// `vm.shutdown` ends the VM and keeps vmm with its configuration
/// (`Created`); `vm.boot` boots it again and `vm.reboot` ends and boots
/// it in one step: the probe starts anew each time, with its disk (whose
/// lock the shut-down VM gave back). Each request is answered once done.
#[rstest]
fn shutdown_boot_and_reboot_run_the_guest_again(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("image");
    let mut cmd = VmmCommand::probe("probe.run=tick").expect("probe");
    cmd.arg("--disk").arg(format!("path={}", image.display()));
    let (mut child, socket) = start(dir.path(), cmd);
    let starts = |c: &Child| boots(&c.stdout_so_far());
    let state = || curl(&socket, "GET", "vm.info", None).json()["state"].clone();
    wait_ticks(&mut child, 0, 3);

    assert_no_content(&curl(&socket, "PUT", "vm.shutdown", None), "shutdown");
    assert_eq!(state(), "Created");
    let stopped = ticks(&child);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ticks(&child), stopped, "a shut-down VM ticked");
    for name in ["vm.pause", "vm.resume", "vm.shutdown", "vm.reboot"] {
        let refused = curl(&socket, "PUT", name, None);
        assert_eq!(refused.status, 409, "{name}: {refused:?}");
    }
    // The shut-down VM's disk is free: a writer's lock is granted.
    let taken = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .expect("image");
    // SAFETY: flock is plain data; zero is valid for each field.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads `lock`, which outlives the call.
    let rc = unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&taken),
            libc::F_OFD_SETLK,
            &lock,
        )
    };
    assert_eq!(rc, 0, "the shut-down VM still locks its image");
    drop(taken);

    assert_no_content(&curl(&socket, "PUT", "vm.boot", None), "boot");
    assert_eq!(state(), "Running");
    assert_eq!(curl(&socket, "PUT", "vm.boot", None).status, 409);
    wait_ticks(&mut child, stopped, 3);
    assert_eq!(starts(&child), 2);

    assert_no_content(&curl(&socket, "PUT", "vm.reboot", None), "reboot");
    assert_eq!(state(), "Running");
    assert!(
        child.wait_until(WAIT, |c| starts(c) == 3),
        "no third boot: {}\n{}",
        child.stdout_so_far(),
        child.stderr_so_far()
    );
    let info = curl(&socket, "GET", "vm.info", None).json();
    assert!(
        info["device_tree"]["_disk0"]["pci_bdf"].is_string(),
        "{info}"
    );

    shut_down(child, &socket);
}

/// vmm started with only `--api-socket` has no VM until `vm.create`
/// brings one in Cloud Hypervisor's JSON; `vm.delete` forgets it.
#[rstest]
fn vm_create_boot_and_delete_from_json(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("image");
    let (mut child, socket) = start(dir.path(), VmmCommand::bare());
    let starts = |c: &Child| boots(&c.stdout_so_far());
    let no_vm = |name: &str, method: &str| {
        let reply = curl(&socket, method, name, None);
        assert_eq!(reply.status, 409, "{name}: {reply:?}");
        assert!(reply.body.contains("no VM is created"), "{name}: {reply:?}");
    };
    no_vm("vm.info", "GET");
    no_vm("vm.boot", "PUT");
    no_vm("vm.pause", "PUT");

    let kernel = test_infra::paths::probe_guest().expect("probe guest");
    let body = serde_json::json!({
        "payload": {"kernel": kernel, "cmdline": "probe.run=tick"},
        "disks": [{"path": image, "id": "data"}],
        "serial": {"mode": "Tty"},
        "console": {"mode": "Off"},
    });
    let mut bad = body.clone();
    bad["disks"][0]["queue_size"] = 3.into();
    let refused = curl(&socket, "PUT", "vm.create", Some(&bad.to_string()));
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(
        refused
            .body
            .contains("disks[0].queue_size: 3: expected a power of two"),
        "{refused:?}"
    );
    no_vm("vm.info", "GET");

    let create = || curl(&socket, "PUT", "vm.create", Some(&body.to_string()));
    assert_no_content(&create(), "create");
    assert_eq!(create().status, 409, "a second create");
    let info = curl(&socket, "GET", "vm.info", None).json();
    assert_eq!(info["state"], "Created", "{info}");
    assert_eq!(info["config"]["disks"][0]["id"], "data", "{info}");
    assert_eq!(info["config"]["memory"]["size"], 512u64 << 20, "{info}");
    assert_eq!(starts(&child), 0, "the VM ran before vm.boot");

    assert_no_content(&curl(&socket, "PUT", "vm.boot", None), "boot");
    wait_ticks(&mut child, 0, 3);
    let info = curl(&socket, "GET", "vm.info", None).json();
    assert_eq!(info["state"], "Running", "{info}");
    assert!(info["device_tree"]["data"]["pci_bdf"].is_string(), "{info}");

    // A running VM is deleted: it stops, and its configuration is gone.
    assert_no_content(&curl(&socket, "PUT", "vm.delete", None), "delete");
    let stopped = ticks(&child);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ticks(&child), stopped, "a deleted VM ticked");
    no_vm("vm.info", "GET");
    assert_no_content(&curl(&socket, "PUT", "vm.delete", None), "delete again");

    assert_no_content(&create(), "create again");
    assert_no_content(&curl(&socket, "PUT", "vm.boot", None), "boot again");
    assert!(child.wait_until(WAIT, |c| starts(c) == 2), "no second boot");

    shut_down(child, &socket);
}

/// `vm.power-button` is an ACPI event: the guest takes the GED's
/// interrupt, reads its status byte (which says power button, once) and
/// powers off on its own; vmm ends as for any guest power-off.
#[rstest]
fn the_power_button_reaches_the_guest_which_powers_off(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let (mut child, socket) = start(
        dir.path(),
        VmmCommand::probe("probe.run=tick").expect("probe"),
    );
    wait_ticks(&mut child, 0, 3);
    let out = child.stdout_so_far();
    assert!(
        out.lines().any(|l| l == "probe: acpi-ged port=0x610 gsi=5"),
        "the guest found no ACPI event device:\n{out}"
    );

    // A paused guest takes no interrupt: the press is refused, not queued.
    assert_no_content(&curl(&socket, "PUT", "vm.pause", None), "pause");
    let refused = curl(&socket, "PUT", "vm.power-button", None);
    assert_eq!(refused.status, 409, "{refused:?}");
    assert!(refused.body.contains("Paused"), "{refused:?}");
    assert_no_content(&curl(&socket, "PUT", "vm.resume", None), "resume");
    let resumed = ticks(&child);
    wait_ticks(&mut child, resumed, 3);
    assert!(
        !child.stdout_so_far().contains("acpi-event"),
        "an event while paused"
    );

    assert_no_content(
        &curl(&socket, "PUT", "vm.power-button", None),
        "power-button",
    );
    let out = child.wait(WAIT).expect("the guest powers off");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    let events: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("probe: acpi-event") || *l == "probe: power-button")
        .collect();
    assert_eq!(
        events,
        [
            "probe: acpi-event status=0x1 interrupts=1",
            "probe: power-button"
        ],
        "{}",
        out.describe()
    );
}

/// A reboot builds a new VM from the same configuration; a console file
/// keeps what the earlier boots wrote, as a user reading it expects.
#[rstest]
fn a_serial_file_keeps_every_boot(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let log = dir.path().join("serial.log");
    let mut cmd = VmmCommand::probe("probe.run=tick").expect("probe");
    cmd.serial(&format!("file={}", log.display()));
    let (mut child, socket) = start(dir.path(), cmd);
    let starts = |_: &Child| boots(&std::fs::read_to_string(&log).unwrap_or_default());
    assert!(child.wait_until(WAIT, |c| starts(c) == 1), "no first boot");
    assert_no_content(&curl(&socket, "PUT", "vm.reboot", None), "reboot");
    assert!(
        child.wait_until(WAIT, |c| starts(c) == 2),
        "no second boot in the file"
    );
    assert_no_content(&curl(&socket, "PUT", "vm.shutdown", None), "shutdown");
    assert_no_content(&curl(&socket, "PUT", "vm.boot", None), "boot");
    assert!(
        child.wait_until(WAIT, |c| starts(c) == 3),
        "no third boot in the file"
    );
    shut_down(child, &socket);
}

/// With its descriptor table full, vmm cannot accept: clients wait in the
/// backlog, no thread is started for a failed accept (the accept pool of
/// 9f1d6a1 bred 9,579 in a second), and once descriptors are free again
/// clients are served.
#[rstest]
fn a_full_descriptor_table_breeds_no_threads(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let (mut child, socket) = start(
        dir.path(),
        VmmCommand::probe("probe.run=tick").expect("probe"),
    );
    wait_ticks(&mut child, 0, 3);
    let pid = child.id() as libc::pid_t;
    let count = |what: &str| {
        std::fs::read_dir(format!("/proc/{pid}/{what}"))
            .map(|entries| entries.count())
            .unwrap_or(0)
    };
    let set_soft_limit = |soft: u64| {
        let mut old = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: prlimit reads nothing and writes `old`, which outlives
        // the call.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, std::ptr::null(), &mut old) };
        assert_eq!(rc, 0, "read vmm's limit");
        let new = libc::rlimit {
            rlim_cur: soft,
            rlim_max: old.rlim_max,
        };
        // SAFETY: prlimit reads `new`, which outlives the call.
        let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &new, std::ptr::null_mut()) };
        assert_eq!(rc, 0, "set vmm's limit");
        old.rlim_cur
    };
    let threads = count("task");
    let before = set_soft_limit(count("fd") as u64);
    let waiting: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&socket).expect("connect"))
        .collect();
    std::thread::sleep(Duration::from_secs(1));
    let during = count("task");
    set_soft_limit(before);
    assert!(
        during <= threads + 1,
        "{threads} threads before, {during} with accept failing"
    );
    drop(waiting);
    let ping = curl(&socket, "GET", "vmm.ping", None);
    assert_eq!(ping.status, 200, "{ping:?}");
    shut_down(child, &socket);
}
