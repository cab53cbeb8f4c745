//! Snapshot and restore with the probe guest: a ticking guest paused,
//! written to a snapshot, its vmm gone, and restored by new vmm processes
//! (from the command line and through `vm.restore`) goes on from the tick
//! it had reached, every tick once; restoring twice from one snapshot
//! works both times; a bad snapshot is refused by name and left as it was.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rstest::rstest;
use test_infra::api::{curl, wait_for_socket, Reply};
use test_infra::digest::sha256_file;
use test_infra::host::{kvm, KvmHost};
use test_infra::mock::MockOptions;
use test_infra::process::Child;
use test_infra::tempdir;
use test_infra::virtiofsd::Virtiofsd;
use test_infra::vmm::VmmCommand;
use test_infra::{Guest, Hypervisor};

const WAIT: Duration = Duration::from_secs(60);

/// `cmd` with `--api-socket DIR/NAME`, once it listens.
fn start(dir: &Path, name: &str, mut cmd: VmmCommand) -> (Child, PathBuf) {
    let socket = dir.join(name);
    cmd.arg("--api-socket")
        .arg(format!("path={}", socket.display()));
    let child = cmd.spawn(dir).expect("vmm starts");
    wait_for_socket(&socket, WAIT).expect("the API socket");
    (child, socket)
}

/// The tick numbers in `output`, in order.
fn ticks(output: &str) -> Vec<u64> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("probe: tick "))
        .map(|n| n.trim().parse().expect("a tick number"))
        .collect()
}

fn wait_ticks(child: &mut Child, count: usize) {
    assert!(
        child.wait_until(WAIT, |c| ticks(&c.stdout_so_far()).len() >= count),
        "the guest did not tick: {}",
        child.stderr_so_far()
    );
}

/// `vm.pause`, then `vm.snapshot` to `snap`, each answered 204.
fn pause_and_snapshot(socket: &Path, snap: &Path) {
    let url = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    assert_no_content(&curl(socket, "PUT", "vm.pause", None), "pause");
    assert_no_content(&curl(socket, "PUT", "vm.snapshot", Some(&url)), "snapshot");
}

/// `vmm.shutdown` answered, and vmm gone with status 0.
fn shut_down(child: Child, socket: &Path) -> test_infra::Output {
    assert_no_content(&curl(socket, "PUT", "vmm.shutdown", None), "vmm.shutdown");
    let out = child.wait(WAIT).expect("vmm exits");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    out
}

/// A restore that must fail: status 1 and one error line, which it
/// returns.
fn refused_restore(dir: &Path, snap: &Path, extra: &str) -> String {
    let out = restore_command(snap, extra)
        .run(dir)
        .expect("vmm runs")
        .output;
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("vmm: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.describe());
    errors[0].to_owned()
}

/// `vmm --restore source_url=file://SNAP` and `extra` keys.
fn restore_command(snap: &Path, extra: &str) -> VmmCommand {
    let mut restore = VmmCommand::bare();
    restore
        .arg("--restore")
        .arg(format!("source_url=file://{}{extra}", snap.display()));
    restore
}

fn assert_no_content(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 204, "{what}: {reply:?}");
}

/// Every file of a snapshot, by name, with its size and sha256: to show
/// none was touched.
fn contents(dir: &Path) -> Vec<(String, u64, String)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("the snapshot directory")
        .map(|e| {
            let e = e.expect("an entry");
            let name = e.file_name().to_string_lossy().into_owned();
            let len = e.metadata().expect("metadata").len();
            (name, len, sha256_file(&e.path()).expect("sha256"))
        })
        .collect();
    files.sort();
    files
}

/// A probe ticking every 10 ms in 64 MiB on two vCPUs (the second
/// waiting for a SIPI that never comes), paused after some ticks and
/// snapshotted to DIR/snap; its vmm shut down. Returns what the guest
/// printed.
fn ticking_snapshot(dir: &Path) -> (PathBuf, String) {
    let mut cmd = VmmCommand::probe("probe.run=tick").expect("probe");
    cmd.args(["--memory", "size=64M", "--cpus", "boot=2"]);
    let (mut child, socket) = start(dir, "first.sock", cmd);
    wait_ticks(&mut child, 5);
    let snap = dir.join("snap");
    let url = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    let running = curl(&socket, "PUT", "vm.snapshot", Some(&url));
    assert_eq!(running.status, 409, "snapshot of a running VM: {running:?}");
    assert!(running.body.contains("vm.pause first"), "{running:?}");
    assert!(!snap.exists(), "a refused snapshot left {}", snap.display());

    assert_no_content(&curl(&socket, "PUT", "vm.pause", None), "pause");
    assert_no_content(&curl(&socket, "PUT", "vm.snapshot", Some(&url)), "snapshot");
    let written = contents(&snap);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snap.join("state.json")).expect("state.json"))
            .expect("JSON");
    let vcpus = state["body"]["state"]["vcpus"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(vcpus, 2, "each vCPU saved by its own thread");
    let again = curl(&socket, "PUT", "vm.snapshot", Some(&url));
    assert_eq!(
        again.status, 409,
        "a second snapshot over the first: {again:?}"
    );
    assert_eq!(contents(&snap), written, "the first snapshot was touched");
    let relative = curl(
        &socket,
        "PUT",
        "vm.snapshot",
        Some(r#"{"destination_url":"file://snap2"}"#),
    );
    assert_eq!(relative.status, 400, "{relative:?}");

    let out = shut_down(child, &socket);
    (snap, out.stdout)
}

/// The ticks of the first run and then the restored one: one sequence,
/// each number once. A tick line the pause cut in two is finished by the
/// restored guest.
fn assert_goes_on(before: &str, after: &str) {
    let all = ticks(&format!("{before}{after}"));
    let first = ticks(before);
    assert!(first.len() >= 5, "{before}");
    assert!(
        ticks(after).len() >= 5,
        "the restored guest did not tick: {after}"
    );
    let expected: Vec<u64> = (all[0]..all[0] + all.len() as u64).collect();
    assert_eq!(
        all, expected,
        "the ticks do not go on from the snapshot:\n{before}---\n{after}"
    );
}

#[rstest]
fn a_restored_guest_goes_on_from_its_snapshot_every_time(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let (snap, before) = ticking_snapshot(dir.path());
    let saved = contents(&snap);

    // From the command line, running at once.
    let restore = restore_command(&snap, ",resume=on");
    let (mut child, socket) = start(dir.path(), "second.sock", restore);
    wait_ticks(&mut child, 5);
    let info = curl(&socket, "GET", "vm.info", None).json();
    assert_eq!(info["state"], "Running", "{info}");
    let out = shut_down(child, &socket);
    assert_goes_on(&before, &out.stdout);

    // Again from the same snapshot, paused until vm.resume, with the
    // event monitor telling it.
    let events = dir.path().join("events.json");
    let mut restore = restore_command(&snap, "");
    restore
        .arg("--event-monitor")
        .arg(format!("path={}", events.display()));
    let (mut child, socket) = start(dir.path(), "third.sock", restore);
    let info = curl(&socket, "GET", "vm.info", None).json();
    assert_eq!(info["state"], "Paused", "{info}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ticks(&child.stdout_so_far()).is_empty(),
        "a paused restore ran: {}",
        child.stdout_so_far()
    );
    assert_no_content(&curl(&socket, "PUT", "vm.resume", None), "resume");
    wait_ticks(&mut child, 5);
    let out = shut_down(child, &socket);
    assert_goes_on(&before, &out.stdout);
    let said: Vec<String> = std::fs::read_to_string(&events)
        .expect("events")
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("an event"))
        .filter(|e| e["source"] == "vm")
        .map(|e| e["event"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        said,
        [
            "restoring",
            "restored",
            "paused",
            "resuming",
            "resumed",
            "shutdown"
        ],
        "the VM's events"
    );

    assert_eq!(contents(&snap), saved, "a restore touched the snapshot");
}

/// `vm.restore` on a vmm started with only `--api-socket`, as ch-remote
/// sends it (Cloud Hypervisor's whole `RestoreConfig`).
#[rstest]
fn vm_restore_brings_a_vm_into_an_empty_vmm(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let (snap, before) = ticking_snapshot(dir.path());
    let (mut child, socket) = start(dir.path(), "empty.sock", VmmCommand::bare());
    let body = |extra: &str| {
        format!(
            r#"{{"source_url":"file://{}","prefault":false,"memory_restore_mode":"Copy","net_fds":null,"vfio_fds":null,"iommufd_fd":null,"resume":false,"zone_updates":[]{extra}}}"#,
            snap.display()
        )
    };
    let refused = curl(&socket, "PUT", "vm.restore", Some(&body(r#","bogus":1"#)));
    assert_eq!(refused.status, 400, "{refused:?}");
    let lazy = body("").replace(r#""Copy""#, r#""OnDemand""#);
    let refused = curl(&socket, "PUT", "vm.restore", Some(&lazy));
    assert_eq!(refused.status, 400, "{refused:?}");
    assert!(refused.body.contains("memory_restore_mode"), "{refused:?}");

    // A snapshot of a CPU this host is not fails as the VM is built, and
    // leaves no VM behind: a vm.boot would boot its payload afresh.
    let foreign = dir.path().join("foreign");
    copy_dir(&snap, &foreign);
    resign(&foreign.join("state.json"), every_leaf_7_feature);
    let foreign_body = body("").replace(
        &format!("file://{}", snap.display()),
        &format!("file://{}", foreign.display()),
    );
    let failed = curl(&socket, "PUT", "vm.restore", Some(&foreign_body));
    assert_eq!(failed.status, 500, "{failed:?}");
    assert!(failed.body.contains("CPU features"), "{failed:?}");
    let none = curl(&socket, "GET", "vm.info", None);
    assert_eq!(none.status, 409, "{none:?}");
    assert!(none.body.contains("no VM is created"), "{none:?}");

    assert_no_content(
        &curl(&socket, "PUT", "vm.restore", Some(&body(""))),
        "vm.restore",
    );
    let info = curl(&socket, "GET", "vm.info", None).json();
    assert_eq!(info["state"], "Paused", "{info}");
    let again = curl(&socket, "PUT", "vm.restore", Some(&body("")));
    assert_eq!(again.status, 409, "{again:?}");
    assert_no_content(&curl(&socket, "PUT", "vm.resume", None), "resume");
    wait_ticks(&mut child, 5);
    let out = shut_down(child, &socket);
    assert_goes_on(&before, &out.stdout);
}

/// What a damaged snapshot gets: `--restore` fails with status 1 and one
/// line naming what is wrong, and the snapshot is left as it was.
#[rstest]
fn a_bad_snapshot_is_refused_by_name_and_left_alone(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let (snap, _) = ticking_snapshot(dir.path());
    type Damage = fn(&Path);
    let cases: [(&str, Damage, &str); 6] = [
        (
            "truncated state.json",
            |d| truncate(&d.join("state.json"), 100),
            "state.json: not valid JSON",
        ),
        (
            "a byte of state.json changed",
            |d| flip_digit(&d.join("state.json")),
            "state.json: checksum",
        ),
        (
            "a short memory file",
            |d| {
                let path = d.join("memory-ranges");
                let len = std::fs::metadata(&path).expect("memory").len();
                truncate(&path, len - 4096);
            },
            "memory-ranges",
        ),
        (
            "another format version",
            |d| {
                let path = d.join("state.json");
                let text = std::fs::read_to_string(&path).expect("state.json");
                let changed = text.replacen("\"version\": 1", "\"version\": 7", 1);
                assert_ne!(text, changed, "no version field");
                std::fs::write(&path, changed).expect("write");
            },
            "format version 7, this vmm reads version 1",
        ),
        (
            "a CPU with every feature of CPUID leaf 7",
            |d| resign(&d.join("state.json"), every_leaf_7_feature),
            "CPU features this host's KVM does not offer: CPUID leaf 0x7.0 EBX",
        ),
        (
            "config.json gone",
            |d| std::fs::remove_file(d.join("config.json")).expect("remove"),
            "config.json",
        ),
    ];
    for (what, damage, expected) in cases {
        let copy = dir.path().join(format!("bad-{}", what.replace(' ', "-")));
        copy_dir(&snap, &copy);
        damage(&copy);
        let damaged = contents(&copy);
        let error = refused_restore(dir.path(), &copy, ",resume=on");
        assert!(
            error.contains(expected) && error.contains(&*copy.to_string_lossy()),
            "{what}: expected {expected:?} and the path in {error:?}"
        );
        assert_eq!(contents(&copy), damaged, "{what}: the snapshot was touched");
    }
}

/// Every vCPU's CPUID leaf 7.0 EBX with every bit set: a CPU this host's
/// KVM does not offer.
fn every_leaf_7_feature(state: &mut serde_json::Value) {
    for vcpu in state["vcpus"].as_array_mut().expect("vcpus") {
        // Each kvm_cpuid_entry2 is the hex of its bytes: function, index,
        // flags, then EAX, EBX (at byte 16), ECX, EDX.
        for entry in vcpu["cpuid"].as_array_mut().expect("cpuid") {
            let hex = entry.as_str().expect("an entry's hex").to_owned();
            let mut bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            let word =
                |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            if (word(0), word(4)) == (7, 0) {
                bytes[16..20].fill(0xff);
            }
            *entry = bytes
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
                .into();
        }
    }
}

/// Changes what state.json saved and signs it again, as a snapshot of
/// another machine would be: only what is checked beyond the checksums
/// can refuse it.
fn resign(path: &Path, change: impl FnOnce(&mut serde_json::Value)) {
    let text = std::fs::read_to_string(path).expect("state.json");
    let mut file: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    change(&mut file["body"]["state"]);
    let crc = crc32fast::hash(&serde_json::to_vec(&file["body"]).expect("JSON"));
    file["crc32"] = crc.into();
    std::fs::write(path, serde_json::to_vec_pretty(&file).expect("JSON")).expect("write");
}

fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .expect("truncate");
}

/// Changes one digit inside state.json's body: still JSON, another value.
fn flip_digit(path: &Path) {
    let mut bytes = std::fs::read(path).expect("state.json");
    let at = bytes.iter().rposition(u8::is_ascii_digit).expect("a digit");
    bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
    std::fs::write(path, bytes).expect("write");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir(to).expect("a copy");
    for entry in std::fs::read_dir(from).expect("the snapshot") {
        let entry = entry.expect("an entry");
        std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
    }
}

/// The round numbers the probe printed (`probe: round N`), in order.
fn rounds(output: &str) -> Vec<u64> {
    output
        .lines()
        .filter_map(|l| l.strip_prefix("probe: round "))
        .map(|n| n.trim().parse().expect("a round number"))
        .collect()
}

/// A guest writing, reading back and hashing its disk (given by a path
/// relative to vmm's directory) round after round through virtio-blk is
/// snapshotted with requests on the ring and restored by a new vmm in
/// another directory: the device comes back at the queue's saved
/// place, so the next round follows the last and every check the guest
/// makes of what it reads passes.
#[rstest]
fn a_disk_s_io_goes_on_across_a_restore(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 16 << 20]).expect("image");
    let mut cmd = VmmCommand::probe(
        "probe.run=blk probe.repeat=0 probe.blk.write=0:8192 probe.blk.sha=0:8192",
    )
    .expect("probe");
    // Relative to vmm's working directory: the snapshot must name the
    // image itself, not whatever `disk.img` a restore's directory holds.
    cmd.arg("--memory")
        .arg("size=64M")
        .arg("--disk")
        .arg("path=disk.img,id=data");
    let (mut child, socket) = start(dir.path(), "first.sock", cmd);
    assert!(
        child.wait_until(WAIT, |c| rounds(&c.stdout_so_far()).len() >= 2),
        "no rounds of I/O: {}",
        child.stderr_so_far()
    );
    let snap = dir.path().join("snap");
    pause_and_snapshot(&socket, &snap);
    let before = shut_down(child, &socket);

    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snap.join("state.json")).expect("state.json"))
            .expect("JSON");
    let queues = &state["body"]["state"]["devices"]["pci"]["data"]["state"]["running"]["queues"];
    assert!(
        queues[0]["next_used"].as_u64() > Some(0),
        "the disk's queue was saved at its start: {queues}"
    );

    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(snap.join("config.json")).expect("config.json"))
            .expect("JSON");
    assert_eq!(
        config["disks"][0]["path"],
        image.display().to_string(),
        "{config}"
    );

    // Restored from another directory, which has a disk.img of its own.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).expect("elsewhere");
    let decoy = elsewhere.join("disk.img");
    std::fs::write(&decoy, vec![0xffu8; 16 << 20]).expect("decoy");
    let restore = restore_command(&snap, ",resume=on");
    let (mut child, socket) = start(&elsewhere, "second.sock", restore);
    assert!(
        child.wait_until(WAIT, |c| rounds(&c.stdout_so_far()).len() >= 3),
        "the restored guest's I/O did not go on: {}\n{}",
        child.stdout_so_far(),
        child.stderr_so_far()
    );
    let after = shut_down(child, &socket);
    assert!(
        std::fs::read(&decoy)
            .expect("decoy")
            .iter()
            .all(|&b| b == 0xff),
        "the restore wrote to the restoring directory's disk.img"
    );
    assert!(
        !after.stdout.contains("result=fail"),
        "the guest found its disk wrong after the restore: {}",
        after.stdout
    );
    let (first, then) = (rounds(&before.stdout), rounds(&after.stdout));
    let expected: Vec<u64> = (0..then.len() as u64)
        .map(|i| first[first.len() - 1] + 1 + i)
        .collect();
    assert_eq!(then, expected, "rounds before: {first:?}");
}

/// The echoing guest's rounds, and its round trips in each: it does them
/// all and powers off, so every echo it made can be counted.
const ECHO_ROUNDS: u64 = 12;
const ECHOES_PER_ROUND: u64 = 1000;

/// The highest `echoed buffer N` a mock's log shows (0 for none).
fn echoed(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| l.split_once("echoed buffer ").map(|(_, n)| n.trim()))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

/// What `echoing_snapshot` leaves: the snapshot, the echo device's saved
/// state, what the guest printed and the backend's log; vmm and the
/// backend are gone.
struct EchoingSnapshot {
    snap: PathBuf,
    device: serde_json::Value,
    stdout: String,
    backend_log: String,
}

/// A probe echoing through the mock `options` describes (device `echo`,
/// custom type 33), snapshotted to DIR/snap while the device runs.
fn echoing_snapshot(dir: &Path, options: MockOptions) -> EchoingSnapshot {
    let mock = options.start(dir).expect("the mock starts");
    let mut cmd = VmmCommand::probe(&format!(
        "probe.run=echo probe.repeat={ECHO_ROUNDS} probe.echo.rounds={ECHOES_PER_ROUND}"
    ))
    .expect("probe");
    cmd.arg("--memory")
        .arg("size=64M,shared=on")
        .arg("--generic-vhost-user")
        .arg(format!("{},id=echo", mock.device("33", &[64, 64])));
    let (mut child, socket) = start(dir, "first.sock", cmd);
    assert!(
        child.wait_until(WAIT, |c| !rounds(&c.stdout_so_far()).is_empty()),
        "no echo rounds: {}\n{}",
        child.stdout_so_far(),
        mock.log()
    );
    let snap = dir.join("snap");
    let url = format!(r#"{{"destination_url":"file://{}"}}"#, snap.display());
    // A snapshot finds the device running, unless the pause came between
    // two of the guest's rounds (it resets the device at each): then the
    // guest is let run a little and paused again.
    let mut tries = 0;
    let saved = loop {
        assert_no_content(&curl(&socket, "PUT", "vm.pause", None), "pause");
        let state = curl(&socket, "GET", "vm.info", None).json();
        assert_eq!(state["state"], "Paused", "{state}");
        assert_no_content(&curl(&socket, "PUT", "vm.snapshot", Some(&url)), "snapshot");
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(snap.join("state.json")).expect("state.json"))
                .expect("JSON");
        let device = saved["body"]["state"]["devices"]["pci"]["echo"]["state"].clone();
        if !device["running"].is_null() {
            break device;
        }
        tries += 1;
        assert!(tries < 20, "the device was never running at a pause");
        std::fs::remove_dir_all(&snap).expect("remove a snapshot of a stopped device");
        assert_no_content(&curl(&socket, "PUT", "vm.resume", None), "resume");
        std::thread::sleep(Duration::from_millis(50));
    };
    let before = shut_down(child, &socket);
    let first_log = mock.log();
    drop(mock);

    EchoingSnapshot {
        snap,
        device: saved,
        stdout: before.stdout,
        backend_log: first_log,
    }
}

/// A guest echoing through the generic vhost-user device (the mock
/// reverses what queue 0 brings onto queue 1) is snapshotted mid-run; vmm
/// and the backend are killed, and a new vmm restores against a new
/// backend process. With DEVICE_STATE the backend's own state goes with
/// the snapshot (the count of buffers it echoed, the message it held);
/// without, the snapshot says so and the rings still restart at their
/// saved places. Either way the guest finishes its rounds with every echo
/// checked, and every round trip it made was served exactly once (the
/// backends' counts add up to the guest's). The new backend may listen
/// elsewhere: the restore's `vhost_user_sockets` says where.
#[rstest]
#[case::with_device_state(true)]
#[case::without_device_state(false)]
fn a_vhost_user_device_goes_on_against_a_new_backend(
    kvm: Option<KvmHost>,
    #[case] device_state: bool,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let options = || {
        let options = MockOptions::new("echo");
        if device_state {
            options
        } else {
            options.no_device_state()
        }
    };
    let echoing = echoing_snapshot(dir.path(), options());
    let (snap, saved, before, first_log) = (
        echoing.snap,
        echoing.device,
        echoing.stdout,
        echoing.backend_log,
    );

    let backend_state = &saved["running"]["device"]["backend_state"];
    let saved_line = first_log
        .lines()
        .find(|l| l.contains("saving the state: "))
        .map(str::to_owned);
    if device_state {
        assert!(backend_state.is_string(), "{saved}");
        assert!(saved_line.is_some(), "{first_log}");
    } else {
        assert!(backend_state.is_null(), "{saved}");
        assert!(saved_line.is_none(), "{first_log}");
    }
    let queues = saved["running"]["queues"].as_array().expect("queue places");
    assert_eq!(queues.len(), 2, "{saved}");

    // With device state, the new backend listens at a new socket, which
    // the restore names; without, where the old one did.
    let (mock, sockets) = if device_state {
        let mock = MockOptions::new("echo2")
            .start(dir.path())
            .expect("a new mock starts");
        let sockets = format!(",vhost_user_sockets=[echo@{}]", mock.socket().display());
        (mock, sockets)
    } else {
        (
            options().start(dir.path()).expect("a new mock starts"),
            String::new(),
        )
    };
    let restore = restore_command(&snap, &format!(",resume=on{sockets}"));
    let (child, _socket) = start(dir.path(), "second.sock", restore);
    // The guest does its remaining rounds and powers off.
    let after = child.wait(WAIT).expect("vmm exits");
    assert!(
        after.stdout.contains("result=pass"),
        "the restored guest's echoes did not all come back right: {}\n{}",
        after.describe(),
        mock.log()
    );
    let (first, then) = (rounds(&before), rounds(&after.stdout));
    assert_eq!(
        then[0],
        first[first.len() - 1] + 1,
        "{first:?} then {then:?}"
    );
    assert_eq!(then.last(), Some(&ECHO_ROUNDS), "{then:?}");
    // Every round trip the guest made was served once: the backends'
    // counts add up to the guest's, the new one going on from the old
    // one's count when its state came with the snapshot.
    let (old, new) = (echoed(&first_log), echoed(&mock.log()));
    let total = ECHO_ROUNDS * ECHOES_PER_ROUND;
    if device_state {
        assert_eq!(new, total, "the old backend echoed {old}");
    } else {
        assert_eq!(
            old + new,
            total,
            "the old backend echoed {old}, the new {new}"
        );
    }
    // The new backend took in exactly what the old one saved.
    let log = mock.log();
    if let Some(saved_line) = saved_line {
        let counts = |line: &str, prefix: &str| {
            line.split_once(prefix)
                .map(|(_, rest)| rest.to_owned())
                .unwrap_or_default()
        };
        let loaded = log
            .lines()
            .find(|l| l.contains("state loaded: "))
            .unwrap_or_else(|| panic!("the new backend loaded no state: {log}"));
        assert_eq!(
            counts(loaded, "state loaded: "),
            counts(&saved_line, "saving the state: "),
            "saved and loaded states differ"
        );
    } else {
        assert!(!log.contains("state loaded"), "{log}");
    }
}

/// What a vhost-user restore cannot do is refused before the guest runs,
/// with status 1 and one line naming the device and what failed, and the
/// snapshot left as it was: no backend listening; a backend that fails
/// the state's check (CHECK_DEVICE_STATE); one without DEVICE_STATE for a
/// snapshot that has the old backend's state; a new socket for a device
/// that is not there.
#[rstest]
fn a_vhost_user_restore_that_cannot_be_done_is_refused_by_name(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let snap = echoing_snapshot(dir.path(), MockOptions::new("echo")).snap;
    let saved = contents(&snap);
    let restore = |extra: &str| refused_restore(dir.path(), &snap, extra);

    let error = restore("");
    assert!(
        error.contains("Nothing listens on vhost-user socket"),
        "{error}"
    );

    let refusing = MockOptions::new("echo")
        .refuse_state_load()
        .start(dir.path())
        .expect("the mock starts");
    let error = restore("");
    assert!(
        error.contains("echo") && error.contains("CHECK_DEVICE_STATE"),
        "{error}"
    );
    drop(refusing);

    let stateless = MockOptions::new("echo")
        .no_device_state()
        .start(dir.path())
        .expect("the mock starts");
    let error = restore("");
    assert!(error.contains("offers no DEVICE_STATE"), "{error}");
    drop(stateless);

    let error = restore(",vhost_user_sockets=[nothing@/tmp/none.sock]");
    assert!(
        error.contains("no vhost-user device has id \"nothing\""),
        "{error}"
    );
    assert_eq!(
        contents(&snap),
        saved,
        "a refused restore touched the snapshot"
    );
}

/// Cloud Hypervisor's `ch-remote` (given as CH_REMOTE) snapshots and
/// restores unchanged: `snapshot file:///DIR`, then `restore
/// source_url=file:///DIR` on a vmm with only its API socket, and
/// `resume`.
#[rstest]
fn ch_remote_snapshots_and_restores_unchanged(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let Some(ch_remote) = std::env::var_os("CH_REMOTE") else {
        eprintln!("ch_remote_snapshots_and_restores_unchanged: CH_REMOTE is not set; skipped");
        return;
    };
    let run = |socket: &Path, command: &str| {
        let out = std::process::Command::new(&ch_remote)
            .arg("--api-socket")
            .arg(socket)
            .args(command.split(' '))
            .output()
            .expect("ch-remote runs");
        assert_eq!(
            out.status.code(),
            Some(0),
            "ch-remote {command}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let dir = tempdir();
    let mut cmd = VmmCommand::probe("probe.run=tick").expect("probe");
    cmd.arg("--memory").arg("size=64M");
    let (mut child, socket) = start(dir.path(), "first.sock", cmd);
    wait_ticks(&mut child, 5);
    let snap = dir.path().join("snap");
    run(&socket, "pause");
    run(&socket, &format!("snapshot file://{}", snap.display()));
    run(&socket, "shutdown-vmm");
    let before = child.wait(WAIT).expect("vmm exits").stdout;

    let (mut child, socket) = start(dir.path(), "second.sock", VmmCommand::bare());
    run(
        &socket,
        &format!("restore source_url=file://{}", snap.display()),
    );
    run(&socket, "resume");
    wait_ticks(&mut child, 5);
    run(&socket, "shutdown-vmm");
    let out = child.wait(WAIT).expect("vmm exits");
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    assert_goes_on(&before, &out.stdout);
}

/// A guest reading and writing through virtio-fs round after round is
/// snapshotted; vmm and virtiofsd are killed, and a new vmm restores
/// against a new virtiofsd (`--migration-mode=find-paths`), which loads
/// the old one's state (the guest's FUSE session and the inodes it
/// holds). The guest's rounds go on, and every read of the host's file
/// hashes as the host's does.
#[rstest]
fn a_virtio_fs_guest_goes_on_against_a_new_virtiofsd(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let input: Vec<u8> = (0..4u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(share.join("input.bin"), &input).expect("input");
    let host_sha = test_infra::digest::sha256_hex(&input).expect("sha256");
    let fs = Virtiofsd::start_migratable(dir.path(), "myfs", &share).expect("virtiofsd");
    let guest = Guest::probe(
        Hypervisor::Vmm,
        "probe.run=fs probe.repeat=0 probe.fs.read=input.bin probe.fs.write=out.bin:1048576",
    )
    .virtiofs(&fs);
    let (mut child, socket) = start(
        dir.path(),
        "first.sock",
        guest.vmm_command().expect("command"),
    );
    assert!(
        child.wait_until(WAIT, |c| rounds(&c.stdout_so_far()).len() >= 2),
        "no rounds: {}\n{}",
        child.stdout_so_far(),
        fs.log()
    );
    let snap = dir.path().join("snap");
    pause_and_snapshot(&socket, &snap);
    let before = shut_down(child, &socket).stdout;
    drop(fs);

    let fs = Virtiofsd::start_migratable(dir.path(), "myfs", &share).expect("a new virtiofsd");
    let restore = restore_command(&snap, ",resume=on");
    let (mut child, socket) = start(dir.path(), "second.sock", restore);
    assert!(
        child.wait_until(WAIT, |c| rounds(&c.stdout_so_far()).len() >= 3),
        "the restored guest's file I/O did not go on: {}\n{}\n{}",
        child.stdout_so_far(),
        child.stderr_so_far(),
        fs.log()
    );
    let after = shut_down(child, &socket);
    assert!(!after.stdout.contains("result=fail"), "{}", after.stdout);
    let (first, then) = (rounds(&before), rounds(&after.stdout));
    assert_eq!(
        then[0],
        first[first.len() - 1] + 1,
        "{first:?} then {then:?}"
    );
    let reads: Vec<&str> = after
        .stdout
        .lines()
        .filter(|l| l.starts_with("probe: fs read path=\"input.bin\""))
        .collect();
    assert!(reads.len() >= 2, "{}", after.stdout);
    for read in reads {
        assert!(read.ends_with(&format!("sha256={host_sha}")), "{read}");
    }
}

/// The facts a round of `probe.run=pci,virtio` prints (every function's
/// identity, BARs and MSI-X; every virtio device's features, queues,
/// config window and status), by round number.
fn facts_by_round(output: &str) -> Vec<(u64, Vec<String>)> {
    let mut rounds: Vec<(u64, Vec<String>)> = Vec::new();
    let mut current: Option<(u64, Vec<String>)> = None;
    for line in output.lines() {
        if let Some(n) = line.strip_prefix("probe: round ") {
            if let Some(done) = current.take() {
                rounds.push(done);
            }
            current = n.trim().parse().ok().map(|n| (n, Vec::new()));
        } else if line.starts_with("probe: pci ") || line.starts_with("probe: virtio ") {
            if let Some((_, facts)) = &mut current {
                facts.push(line.to_owned());
            }
        }
    }
    // The last round may be cut short: only whole ones count.
    rounds
}

/// A guest enumerating PCI and bringing every virtio device up, again
/// and again (virtio-fs through virtiofsd, a disk, and a generic
/// vhost-user device), is snapshotted between two of its rounds' lines
/// and restored with new backend processes: every
/// whole round after the restore prints the very facts the rounds before
/// it did, as QEMU's and vmm's guests are held to in the PCI tests.
#[rstest]
fn the_probe_sees_the_same_pci_and_virtio_facts_after_a_restore(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let image = dir.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).expect("image");
    let mock = MockOptions::new("echo")
        .start(dir.path())
        .expect("the mock starts");
    let share = dir.path().join("share");
    std::fs::create_dir(&share).expect("share");
    let fs = Virtiofsd::start_migratable(dir.path(), "myfs", &share).expect("virtiofsd");
    let mut cmd = Guest::probe(Hypervisor::Vmm, "probe.run=pci,virtio probe.repeat=0")
        .virtiofs(&fs)
        .vmm_command()
        .expect("command");
    cmd.arg("--generic-vhost-user")
        .arg(format!("{},id=echo", mock.device("33", &[64, 64])))
        .arg("--disk")
        .arg(format!("path={},id=data", image.display()));
    let (mut child, socket) = start(dir.path(), "first.sock", cmd);
    assert!(
        child.wait_until(WAIT, |c| facts_by_round(&c.stdout_so_far()).len() >= 2),
        "no rounds: {}",
        child.stdout_so_far()
    );
    let snap = dir.path().join("snap");
    pause_and_snapshot(&socket, &snap);
    let before = shut_down(child, &socket).stdout;
    drop(mock);
    drop(fs);

    let mock = MockOptions::new("echo")
        .start(dir.path())
        .expect("a new mock");
    let _fs = Virtiofsd::start_migratable(dir.path(), "myfs", &share).expect("a new virtiofsd");
    let (mut child, socket) = start(
        dir.path(),
        "second.sock",
        restore_command(&snap, ",resume=on"),
    );
    assert!(
        child.wait_until(WAIT, |c| facts_by_round(&c.stdout_so_far()).len() >= 3),
        "the restored guest's rounds did not go on: {}\n{}",
        child.stdout_so_far(),
        mock.log()
    );
    let after = shut_down(child, &socket).stdout;
    assert!(!after.contains("result=fail"), "{after}");
    let before = facts_by_round(&before);
    let after = facts_by_round(&after);
    let (_, facts) = &before[0];
    // The host bridge and three functions, and the three virtio devices.
    assert!(facts.len() >= 7, "{facts:?}");
    for (round, seen) in before.iter().chain(&after) {
        assert_eq!(seen, facts, "round {round}");
    }
}

/// The resident memory of process `pid`, in MiB.
fn rss_mib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("the process's status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmRSS")
        >> 10
}

/// `prefault=on` (Cloud Hypervisor's key) allocates all of guest memory
/// before the guest runs: a 64 MiB guest restored paused holds its 64 MiB
/// at once, where without it the restored vmm holds only what the guest
/// had touched.
#[rstest]
fn prefault_allocates_guest_memory_at_restore(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let (snap, _) = ticking_snapshot(dir.path());
    let resident = |extra: &str, name: &str| {
        let (child, socket) = start(dir.path(), name, restore_command(&snap, extra));
        let state = curl(&socket, "GET", "vm.info", None).json();
        assert_eq!(state["state"], "Paused", "{state}");
        let rss = rss_mib(child.id());
        shut_down(child, &socket);
        rss
    };
    let lazy = resident("", "lazy.sock");
    let eager = resident(",prefault=on", "eager.sock");
    assert!(lazy < 32, "{lazy} MiB resident without prefault");
    assert!(eager >= 64, "{eager} MiB resident with prefault=on");
}
