//! Protocol tests: the device against the in-process mock backend over a
//! real Unix socket.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vmm_sys_util::eventfd::EventFd;

use super::mock::{Mock, Server, PROTOCOL, VERSION_1};
use super::*;
use virtio_queue::QueueT;
use vm_memory::{FileOffset, GuestAddress};

use crate::interrupt::fake::FakeMsiGroup;

/// Guest RAM at 0, backed by a file that a backend can map when `shared`.
pub(super) fn guest_memory(size: usize, shared: bool) -> GuestMemoryMmap {
    let backing = shared.then(|| {
        let file = tempfile::tempfile().unwrap();
        file.set_len(size as u64).unwrap();
        FileOffset::new(file, 0)
    });
    GuestMemoryMmap::from_ranges_with_files([(GuestAddress(0), size, backing)]).unwrap()
}

fn memory() -> GuestMemoryMmap {
    guest_memory(16 << 20, true)
}

fn fs_config(path: &Path, queues: &[u16]) -> VhostUserParams {
    VhostUserParams {
        id: "fs0".into(),
        socket: path.to_owned(),
        device_type: "fs".parse().unwrap(),
        queue_sizes: queues.to_vec(),
        config_len: 40,
        config_len_by_features: false,
        config: None,
    }
}

fn quick() -> Timeouts {
    Timeouts {
        connect: Duration::from_millis(300),
        reply: Duration::from_millis(300),
    }
}

fn device(server: &Server) -> GenericVhostUser {
    GenericVhostUser::with_timeouts(fs_config(&server.path, &[64, 64]), &memory(), quick()).unwrap()
}

/// A ring laid out as a driver would.
pub(super) fn ring(size: u16, desc: u64, avail: u64, used: u64) -> virtio_queue::Queue {
    let mut queue = virtio_queue::Queue::new(size).unwrap();
    queue
        .try_set_desc_table_address(GuestAddress(desc))
        .unwrap();
    queue
        .try_set_avail_ring_address(GuestAddress(avail))
        .unwrap();
    queue.try_set_used_ring_address(GuestAddress(used)).unwrap();
    queue.set_ready(true);
    queue
}

/// Rings in guest memory, the fds a transport would pass, and the
/// interrupt handle it would hand over.
pub(super) struct Rings {
    size: u16,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    pub interrupt: VirtioInterrupt,
}

impl Rings {
    pub(super) fn new(n: usize) -> Rings {
        Rings::with_size(n, 64)
    }

    pub(super) fn with_size(n: usize, size: u16) -> Rings {
        let fds = || (0..n).map(|_| EventFd::new(0).unwrap()).collect();
        Rings {
            size,
            kicks: fds(),
            calls: fds(),
            interrupt: VirtioInterrupt::new(Arc::new(FakeMsiGroup::new(n + 1))),
        }
    }

    /// DRIVER_OK with `features` and the first `count` rings, in `dev`'s
    /// memory.
    pub(super) fn context(
        &self,
        dev: &GenericVhostUser,
        features: u64,
        count: usize,
    ) -> ActivateContext {
        let queues = (0..count)
            .map(|i| {
                let base = 0x10_0000 * (i as u64 + 1);
                ActiveQueue {
                    index: i,
                    queue: ring(self.size, base, base + 0x1000, base + 0x2000),
                    kick: self.kicks[i].try_clone().unwrap(),
                    call: self.calls[i].try_clone().unwrap(),
                }
            })
            .collect();
        ActivateContext {
            mem: dev.memory.clone(),
            features,
            queues,
            interrupt: self.interrupt.clone(),
        }
    }
}

#[test]
fn negotiation_offers_device_and_ring_bits_but_never_protocol_features() {
    let server = Server::start(Mock::fs(), 1);
    let dev = device(&server);
    assert_eq!(dev.features(), VERSION_1 | (1 << 29) | (1 << 28) | 1);
    let wanted = WANTED_PROTOCOL.bits();
    assert_eq!(
        server.log(),
        vec![
            "SET_OWNER".to_string(),
            "GET_FEATURES".into(),
            "GET_PROTOCOL_FEATURES".into(),
            format!("SET_PROTOCOL_FEATURES {wanted:#x}"),
            "GET_QUEUE_NUM".into(),
            "SET_VRING_NUM 0 64".into(),
            "SET_VRING_NUM 1 64".into(),
            "SET_MEM_TABLE 1".into(),
        ]
    );
}

#[test]
fn without_mq_a_refused_ring_is_found_at_start_up() {
    let server = Server::start(
        Mock {
            queue_num: 1,
            protocol: VhostUserProtocolFeatures::all() - VhostUserProtocolFeatures::MQ,
            ..Mock::fs()
        },
        1,
    );
    let err =
        GenericVhostUser::with_timeouts(fs_config(&server.path, &[64, 64]), &memory(), quick())
            .err()
            .unwrap();
    assert!(
        matches!(
            err,
            Error::QueueRefused {
                index: 1,
                size: 64,
                ..
            }
        ),
        "{err:?}"
    );
    let text = crate::util::error_chain(&err);
    for part in ["fs0", "queue 1", "SET_VRING_NUM"] {
        assert!(text.contains(part), "{part:?} not in {text:?}");
    }
}

#[test]
fn more_queues_than_the_backend_has_is_refused_by_name() {
    let server = Server::start(
        Mock {
            queue_num: 1,
            ..Mock::fs()
        },
        1,
    );
    let err =
        GenericVhostUser::with_timeouts(fs_config(&server.path, &[64, 64]), &memory(), quick())
            .err()
            .unwrap();
    let text = crate::util::error_chain(&err);
    for part in ["fs0", "2 queues", "offers 1", "GET_QUEUE_NUM"] {
        assert!(text.contains(part), "{part:?} not in {text:?}");
    }
}

#[test]
fn a_spec_config_needs_the_config_feature_or_config_bytes() {
    let no_config = || Mock {
        protocol: VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK,
        ..Mock::fs()
    };
    let server = Server::start(no_config(), 1);
    let err =
        GenericVhostUser::with_timeouts(fs_config(&server.path, &[64, 64]), &memory(), quick())
            .err()
            .unwrap();
    assert!(matches!(err, Error::NoConfigFeature { .. }));
    assert!(err.to_string().contains("VHOST_USER_PROTOCOL_F_CONFIG"));

    let server = Server::start(no_config(), 1);
    let mut config = fs_config(&server.path, &[64, 64]);
    config.config = Some(b"given".to_vec());
    let mut dev = GenericVhostUser::with_timeouts(config, &memory(), quick()).unwrap();
    let mut data = [0xaa; 8];
    dev.read_config(0, &mut data).unwrap();
    assert_eq!(&data, b"given\0\0\0");
    dev.write_config(1, b"I").unwrap();
    dev.read_config(0, &mut data[..2]).unwrap();
    assert_eq!(&data[..2], b"gI");
    assert!(!server.log().iter().any(|m| m.contains("CONFIG ")));
}

#[test]
fn config_window_goes_to_get_and_set_config() {
    let server = Server::start(Mock::fs(), 1);
    let mut dev = device(&server);
    assert_eq!(dev.config_len(), 40);
    let mut tag = [0u8; 4];
    dev.read_config(0, &mut tag).unwrap();
    assert_eq!(&tag, b"myfs");
    let mut queues = [0u8; 4];
    dev.read_config(36, &mut queues).unwrap();
    assert_eq!(u32::from_le_bytes(queues), 1);
    dev.write_config(8, &[1, 2]).unwrap();
    let log = server.log();
    // Both reads asked for the window from offset 0 to the end of the
    // access: backends on libvhost-user ignore the offset.
    assert_eq!(
        log.iter()
            .filter(|m| m.starts_with("GET_CONFIG"))
            .collect::<Vec<_>>(),
        ["GET_CONFIG 0 4", "GET_CONFIG 0 40"]
    );
    assert!(log.contains(&"SET_CONFIG 8 [1, 2]".to_string()));
}

/// The protocol's refusal (a reply of size 0) fails the read at once and
/// leaves the connection usable: the next read is answered on it (the
/// server takes no second connection).
#[test]
fn a_refused_config_read_fails_at_once_and_keeps_the_connection() {
    let server = Server::start(Mock::fs(), 1);
    let mut dev = device(&server);
    let mut past_the_end = [0u8; 4];
    let e = dev.read_config(40, &mut past_the_end).unwrap_err();
    assert!(
        matches!(e, Error::GetConfig(get_config::Error::Refused)),
        "{e:?}"
    );
    assert!(!dev.broken);
    let mut tag = [0u8; 4];
    dev.read_config(0, &mut tag).unwrap();
    assert_eq!(&tag, b"myfs");
}

/// What starting ring `q` at available index `base` sends, in order
/// (after every ring's SET_VRING_NUM).
fn ring_started(q: usize, base: u16) -> [String; 5] {
    [
        format!("SET_VRING_ADDR {q}"),
        format!("SET_VRING_BASE {q} {base}"),
        format!("SET_VRING_CALL {q} true"),
        format!("SET_VRING_KICK {q} true"),
        format!("SET_VRING_ENABLE {q} 1"),
    ]
}

#[test]
fn activation_and_reset_follow_the_protocol() {
    let server = Server::start(Mock::fs(), 1);
    let mut dev = device(&server);
    server.take_log();
    let rings = Rings::new(2);
    // The guest acks VERSION_1, EVENT_IDX and a bit nobody offered.
    let features = VERSION_1 | (1 << 29) | (1 << 40);
    dev.activate(rings.context(&dev, features, 2)).unwrap();
    let acked = VERSION_1 | (1 << 29) | PROTOCOL;
    let mut expected = vec![
        format!("SET_FEATURES {acked:#x}"),
        "SET_MEM_TABLE 1".into(),
        "SET_VRING_NUM 0 64".into(),
        "SET_VRING_NUM 1 64".into(),
    ];
    for q in 0..2 {
        expected.extend(ring_started(q, 0));
    }
    assert_eq!(server.take_log(), expected);

    dev.reset().unwrap();
    assert_eq!(
        server.take_log(),
        vec![
            "SET_VRING_ENABLE 0 0",
            "GET_VRING_BASE 0",
            "SET_VRING_ENABLE 1 0",
            "GET_VRING_BASE 1",
            "RESET_DEVICE"
        ]
    );
    // And again from the top, on the same connection.
    dev.activate(rings.context(&dev, VERSION_1, 1)).unwrap();
    assert_eq!(
        server.log()[0],
        format!("SET_FEATURES {:#x}", VERSION_1 | PROTOCOL)
    );
    dev.reset().unwrap();
    server.take_log();
    dev.reset().unwrap();
    assert_eq!(
        server.log(),
        ["GET_FEATURES", "RESET_DEVICE"],
        "idle reset probes"
    );
}

/// A pause stops every ring the vhost-user way and keeps where each
/// stopped; a resume starts them there, as they were laid out, and kicks
/// each once so nothing made available meanwhile waits for the next kick.
#[test]
fn a_pause_stops_the_rings_and_a_resume_restarts_them_where_they_stopped() {
    let server = Server::start(Mock::fs(), 1);
    let mut dev = device(&server);
    let rings = Rings::new(2);
    dev.activate(rings.context(&dev, VERSION_1, 2)).unwrap();
    server.take_log();

    dev.pause().unwrap();
    assert_eq!(
        server.take_log(),
        vec![
            "SET_VRING_ENABLE 0 0",
            "GET_VRING_BASE 0",
            "SET_VRING_ENABLE 1 0",
            "GET_VRING_BASE 1",
        ]
    );
    dev.resume().unwrap();
    let mut expected = vec![
        "SET_VRING_NUM 0 64".to_string(),
        "SET_VRING_NUM 1 64".into(),
    ];
    for (q, base) in [(0, 7), (1, 17)] {
        expected.extend(ring_started(q, base));
    }
    assert_eq!(server.take_log(), expected);
    for kick in &rings.kicks {
        // One of ours on top, so that a missing kick fails instead of
        // blocking the read.
        kick.write(1).unwrap();
        assert_eq!(kick.read().unwrap(), 2, "no kick after the resume");
    }
    // A reset after a resume stops the rings as after any activation.
    dev.reset().unwrap();
    assert_eq!(
        server.take_log()[..2],
        ["SET_VRING_ENABLE 0 0", "GET_VRING_BASE 0"]
    );
}

/// The guest's reset reaches the backend's device state: a buffer it holds
/// back, a FUSE session. Without RESET_DEVICE the echo mock kept a message
/// read from a ring chaos had started and answered the first request after
/// the reset with it, every round one behind; virtiofsd likewise kept its
/// session. Found by the chaos test.
#[test]
fn a_reset_resets_the_backend_device_when_it_can() {
    for (protocol, sent) in [
        (VhostUserProtocolFeatures::all(), true),
        (
            VhostUserProtocolFeatures::all() - VhostUserProtocolFeatures::RESET_DEVICE,
            false,
        ),
    ] {
        let server = Server::start(
            Mock {
                protocol,
                ..Mock::fs()
            },
            1,
        );
        let mut dev = device(&server);
        let rings = Rings::new(2);
        dev.activate(rings.context(&dev, VERSION_1, 2)).unwrap();
        server.take_log();
        dev.reset().unwrap();
        let log = server.take_log();
        assert_eq!(
            log.last().map(String::as_str) == Some("RESET_DEVICE"),
            sent,
            "after the rings stopped: {log:?}"
        );
        assert_eq!(
            log.iter().filter(|m| *m == "RESET_DEVICE").count(),
            usize::from(sent)
        );
        // An idle reset too: the driver may have written config bytes.
        dev.reset().unwrap();
        assert_eq!(
            server.take_log().contains(&"RESET_DEVICE".to_string()),
            sent
        );
    }
}

#[test]
fn without_protocol_features_no_vring_enable_and_no_version_1_to_the_backend() {
    let server = Server::start(
        Mock {
            features: 1 | (1 << 29),
            ..Mock::fs()
        },
        1,
    );
    let mut config = fs_config(&server.path, &[64, 64]);
    config.config = Some(b"myfs".to_vec());
    let mut dev = GenericVhostUser::with_timeouts(config, &memory(), quick()).unwrap();
    assert_eq!(
        dev.features(),
        VERSION_1 | (1 << 29) | 1,
        "VERSION_1 is ours"
    );
    let rings = Rings::new(2);
    dev.activate(rings.context(&dev, VERSION_1 | 1, 2)).unwrap();
    // Without REPLY_ACK nothing is answered, so activation ends with a
    // request that is: the log is complete as soon as it returns, before
    // a guest could kick a ring the backend has not set up.
    let log = server.log();
    assert_eq!(
        log[log.len() - 2..],
        ["SET_VRING_KICK 1 true", "GET_FEATURES"],
        "{log:?}"
    );
    dev.reset().unwrap();
    let log = server.log();
    assert!(log.contains(&"SET_FEATURES 0x1".to_string()));
    assert!(!log.iter().any(|m| m.starts_with("SET_VRING_ENABLE")));
    assert!(!log.iter().any(|m| m.contains("PROTOCOL")));
}

#[test]
fn rings_outside_guest_memory_are_refused() {
    let server = Server::start(Mock::fs(), 1);
    let mut dev = device(&server);
    let rings = Rings::new(1);
    let mut context = rings.context(&dev, VERSION_1, 1);
    // 64 descriptors need 0x400 bytes.
    context.queues[0].queue = ring(64, (16 << 20) - 0x100, 0, 0x1000);
    let err = dev.activate(context).err().unwrap();
    assert!(matches!(err, Error::BadRingAddress { queue: 0, .. }));
}

#[test]
fn a_hung_backend_costs_one_timeout_then_reset_reconnects() {
    let mut server = Server::start(
        Mock {
            hang: Some(Duration::from_secs(30)),
            ..Mock::fs()
        },
        2,
    );
    // A reply deadline long enough that "at once" cannot be mistaken for
    // "waited again" on a loaded machine.
    let reply = Duration::from_secs(2);
    let mut dev = GenericVhostUser::with_timeouts(
        fs_config(&server.path, &[64, 64]),
        &memory(),
        Timeouts { reply, ..quick() },
    )
    .unwrap();
    let start = Instant::now();
    let err = dev.read_config(0, &mut [0u8; 4]).err().unwrap();
    assert!(
        matches!(
            err,
            Error::NoReply {
                what: "GET_CONFIG",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(start.elapsed() >= reply, "waited for the reply");
    assert!(start.elapsed() < Duration::from_secs(20), "hung");
    // Later requests fail at once instead of waiting again.
    let start = Instant::now();
    let err = dev.read_config(0, &mut [0u8; 4]).err().unwrap();
    assert!(matches!(err, Error::Disconnected { .. }));
    assert!(start.elapsed() < reply / 2, "waited again");

    server.mock.lock().unwrap().hang = None;
    dev.reset().unwrap();
    let mut tag = [0u8; 4];
    dev.read_config(0, &mut tag).unwrap();
    assert_eq!(&tag, b"myfs");
    drop(dev);
    server.join();
}

#[test]
fn a_backend_that_went_away_is_reconnected_at_reset() {
    let mut server = Server::start(Mock::fs(), 3);
    let mut dev = device(&server);
    let rings = Rings::new(2);
    dev.activate(rings.context(&dev, VERSION_1, 2)).unwrap();

    // Dies while running: stopping the rings finds out, reset reconnects.
    server.kill_connection();
    server.take_log();
    dev.reset().unwrap();
    let log = server.take_log();
    assert_eq!(log[0], "SET_OWNER", "{log:?}");
    assert!(log.contains(&"SET_MEM_TABLE 1".to_string()));
    dev.activate(rings.context(&dev, VERSION_1, 2)).unwrap();
    dev.reset().unwrap();

    // Dies while idle: a config access fails (all ones for the guest),
    // and the next reset reconnects.
    server.kill_connection();
    assert!(dev.read_config(0, &mut [0u8; 4]).is_err());
    dev.reset().unwrap();
    let mut tag = [0u8; 4];
    dev.read_config(0, &mut tag).unwrap();
    assert_eq!(&tag, b"myfs");
    drop(dev);
    server.join();
}

#[test]
fn a_backend_hanging_up_while_the_guest_is_away_is_signalled_at_once() {
    let mut server = Server::start(Mock::fs(), 2);
    let mut dev = device(&server);
    let rings = Rings::new(2);
    dev.activate(rings.context(&dev, VERSION_1, 2)).unwrap();
    assert!(!rings.interrupt.needs_reset());

    server.kill_connection();
    let start = Instant::now();
    while !rings.interrupt.needs_reset() {
        assert!(start.elapsed() < Duration::from_secs(30), "no signal");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Known lost: a config read fails at once, without a request, and
    // says the backend hung up; after that, that the connection is down.
    server.take_log();
    let err = dev.read_config(0, &mut [0u8; 4]).err().unwrap();
    assert!(
        matches!(
            err,
            Error::HungUp {
                what: "GET_CONFIG",
                ..
            }
        ),
        "{err:?}"
    );
    let err = dev.read_config(0, &mut [0u8; 4]).err().unwrap();
    assert!(matches!(err, Error::Disconnected { .. }), "{err:?}");
    // Reset reconnects (the transport clears the flag); the new connection
    // keeps the interrupt handle.
    dev.reset().unwrap();
    rings.interrupt.reset();
    assert_eq!(server.take_log()[0], "SET_OWNER");
    server.kill_connection();
    let start = Instant::now();
    while !rings.interrupt.needs_reset() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no second signal"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(dev);
    server.join();
}

/// The driver is still negotiating (no DRIVER_OK yet) when the backend
/// goes: the transport's handle, given at attachment, is flagged at once.
#[test]
fn a_backend_hanging_up_before_driver_ok_is_signalled_at_once() {
    let mut server = Server::start(Mock::fs(), 1);
    let mut dev = device(&server);
    let rings = Rings::new(2);
    dev.attach(rings.interrupt.clone());
    assert!(!rings.interrupt.needs_reset());
    server.kill_connection();
    let start = Instant::now();
    while !rings.interrupt.needs_reset() {
        assert!(start.elapsed() < Duration::from_secs(30), "no signal");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(dev);
    server.join();
}

#[test]
fn a_failed_reconnect_leaves_the_device_disconnected_until_the_next_reset() {
    let mut server = Server::start(Mock::fs(), 2);
    let mut dev = device(&server);
    std::fs::remove_file(&server.path).unwrap();
    server.kill_connection();
    let err = dev.reset().err().unwrap();
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(matches!(
        dev.read_config(0, &mut [0u8; 4]),
        Err(Error::Disconnected { .. })
    ));
    let rings = Rings::new(2);
    assert!(dev.activate(rings.context(&dev, VERSION_1, 2)).is_err());
    drop(dev);
    // Let the backend thread finish: one more connection to its listener
    // is impossible now that the path is gone, so just detach it.
    server.thread.take();
}

#[test]
fn nobody_listening_is_an_error_naming_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nobody.sock");
    let start = Instant::now();
    let err = GenericVhostUser::with_timeouts(fs_config(&path, &[64, 64]), &memory(), quick())
        .err()
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300), "retried");
    assert!(start.elapsed() < Duration::from_secs(20), "hung");
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn guest_memory_must_be_shared() {
    let path = Path::new("/nonexistent/never-connected.sock");
    let memory = guest_memory(16 << 20, false);
    let err = GenericVhostUser::with_timeouts(fs_config(path, &[64, 64]), &memory, quick())
        .err()
        .unwrap();
    assert!(matches!(err, Error::NotShared { addr: 0 }));
    assert!(err.to_string().contains("shared=on"));
}

/// A path where no backend can ever listen is named for what it is at
/// once, not after the 5 s a starting backend gets.
#[test]
fn a_path_that_is_no_socket_is_named_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    for (path, kind) in [
        (file.as_path(), "regular file"),
        (dir.path(), "directory"),
        (Path::new("/dev/null"), "character device"),
    ] {
        let start = Instant::now();
        let err = GenericVhostUser::new(fs_config(path, &[64, 64]), &memory())
            .err()
            .unwrap();
        // The default connect deadline is 5 s: half of it is "at once".
        assert!(
            start.elapsed() < Duration::from_millis(2500),
            "{path:?} waited"
        );
        assert!(
            matches!(err, Error::NotASocket { kind: k, .. } if k == kind),
            "{path:?}: {err:?}"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "vhost-user socket {} is a {kind}, not a socket",
                path.display()
            )
        );
    }
}

/// A raw backend: reads SET_OWNER and GET_FEATURES (headers only), then
/// answers GET_FEATURES with `reply` and keeps the connection open until
/// joined.
fn raw_backend(
    dir: &Path,
    reply: Vec<u8>,
) -> (
    std::path::PathBuf,
    std::thread::JoinHandle<std::os::unix::net::UnixStream>,
) {
    use std::io::{Read, Write};
    let path = dir.join("raw.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let thread = std::thread::spawn(move || {
        let (mut stream, _) = listener.accept().unwrap();
        let mut header = [0u8; 12];
        stream.read_exact(&mut header).unwrap();
        assert_eq!(header[0], 3, "SET_OWNER");
        stream.read_exact(&mut header).unwrap();
        assert_eq!(header[0], 1, "GET_FEATURES");
        stream.write_all(&reply).unwrap();
        stream
    });
    (path, thread)
}

/// A reply whose header claims 0xffffffff bytes arrived, and the frontend
/// waited for the rest: "no reply" was wrong, the error now says a part
/// may have come and why.
#[test]
fn a_reply_cut_short_is_not_called_missing() {
    let dir = tempfile::tempdir().unwrap();
    let header: Vec<u8> = [1u32, 0x5, 0xffff_ffff]
        .iter()
        .flat_map(|w| w.to_le_bytes())
        .collect();
    let (path, backend) = raw_backend(dir.path(), header);
    let err = GenericVhostUser::with_timeouts(fs_config(&path, &[64, 64]), &memory(), quick())
        .err()
        .unwrap();
    assert!(
        matches!(
            err,
            Error::IncompleteReply {
                what: "GET_FEATURES",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("no reply, or only part of one, within 300ms (a header announcing more"),
        "{err}"
    );
    drop(backend.join().unwrap());
}
