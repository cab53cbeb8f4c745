//! Protocol tests: the device against an in-process backend built on the
//! vhost crate's own request handler, over a real Unix socket in a
//! temporary directory. The backend records every request it gets.

use std::fs::File;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::*;
use vhost::vhost_user::{
    Backend, BackendReqHandler, Error as VuError, GpuBackend, Result as VuResult,
    VhostUserBackendReqHandlerMut,
};
use vhost::VhostUserMemoryRegionBase;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::config::MemoryConfig;
use crate::vstate::memory::create_guest_memory;

const VERSION_1: u64 = 1 << 32;
const PROTOCOL: u64 = 1 << 30;

pub struct Mock {
    pub features: u64,
    pub protocol: VhostUserProtocolFeatures,
    pub queue_num: u64,
    pub config: Vec<u8>,
    /// GET_CONFIG sleeps this long before answering.
    pub hang: Option<Duration>,
    pub log: Vec<String>,
}

impl Mock {
    fn fs() -> Mock {
        let mut config = vec![0u8; 40];
        config[..4].copy_from_slice(b"myfs");
        config[36] = 1;
        Mock {
            features: VERSION_1 | PROTOCOL | (1 << 29) | (1 << 28) | (1 << 33) | (1 << 34) | 1,
            protocol: VhostUserProtocolFeatures::all(),
            queue_num: 2,
            config,
            hang: None,
            log: Vec::new(),
        }
    }

    fn note(&mut self, what: String) -> VuResult<()> {
        self.log.push(what);
        Ok(())
    }
}

fn refuse<T>() -> VuResult<T> {
    Err(VuError::InvalidOperation("not implemented by the mock"))
}

impl VhostUserBackendReqHandlerMut for Mock {
    fn set_owner(&mut self) -> VuResult<()> {
        self.note("SET_OWNER".into())
    }
    fn reset_owner(&mut self) -> VuResult<()> {
        refuse()
    }
    fn reset_device(&mut self) -> VuResult<()> {
        refuse()
    }
    fn get_features(&mut self) -> VuResult<u64> {
        self.log.push("GET_FEATURES".into());
        Ok(self.features)
    }
    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.features != 0 {
            return Err(VuError::InvalidParam);
        }
        self.note(format!("SET_FEATURES {features:#x}"))
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        assert_eq!(ctx.len(), files.len());
        self.note(format!("SET_MEM_TABLE {}", ctx.len()))?;
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        self.note(format!("SET_VRING_NUM {index} {num}"))
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        _descriptor: u64,
        _used: u64,
        _available: u64,
        _log: u64,
    ) -> VuResult<()> {
        self.note(format!("SET_VRING_ADDR {index}"))
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        self.note(format!("SET_VRING_BASE {index} {base}"))
    }
    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        self.log.push(format!("GET_VRING_BASE {index}"));
        Ok(VhostUserVringState::new(index, 0))
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.note(format!("SET_VRING_KICK {index} {}", fd.is_some()))
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.note(format!("SET_VRING_CALL {index} {}", fd.is_some()))
    }
    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> VuResult<()> {
        refuse()
    }
    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        self.log.push("GET_PROTOCOL_FEATURES".into());
        Ok(self.protocol)
    }
    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.note(format!("SET_PROTOCOL_FEATURES {features:#x}"))
    }
    fn get_queue_num(&mut self) -> VuResult<u64> {
        self.log.push("GET_QUEUE_NUM".into());
        Ok(self.queue_num)
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        self.note(format!("SET_VRING_ENABLE {index} {}", u8::from(enable)))
    }
    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> VuResult<Vec<u8>> {
        self.log.push(format!("GET_CONFIG {offset} {size}"));
        if let Some(hang) = self.hang {
            std::thread::sleep(hang);
        }
        let (offset, size) = (offset as usize, size as usize);
        self.config
            .get(offset..offset + size)
            .map(<[u8]>::to_vec)
            .ok_or(VuError::InvalidParam)
    }
    fn set_config(
        &mut self,
        offset: u32,
        buf: &[u8],
        _flags: VhostUserConfigFlags,
    ) -> VuResult<()> {
        self.note(format!("SET_CONFIG {offset} {buf:?}"))
    }
    fn set_backend_req_fd(&mut self, _backend: Backend) {}
    fn set_gpu_socket(&mut self, _gpu: GpuBackend) -> VuResult<()> {
        refuse()
    }
    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        refuse()
    }
    fn get_inflight_fd(&mut self, _: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        refuse()
    }
    fn set_inflight_fd(&mut self, _: &VhostUserInflight, _: File) -> VuResult<()> {
        refuse()
    }
    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        refuse()
    }
    fn add_mem_region(
        &mut self,
        _: &VhostUserSingleMemoryRegion,
        _: File,
        _: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        refuse()
    }
    fn remove_mem_region(&mut self, _: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        refuse()
    }
    fn set_device_state_fd(
        &mut self,
        _: VhostTransferStateDirection,
        _: VhostTransferStatePhase,
        _: File,
    ) -> VuResult<Option<File>> {
        refuse()
    }
    fn check_device_state(&mut self) -> VuResult<()> {
        refuse()
    }
    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        refuse()
    }
    fn set_log_base(&mut self, _: &VhostUserLog, _: File) -> VuResult<()> {
        refuse()
    }
}

/// A backend serving `connections` connections one after the other on a
/// socket in its own temporary directory.
struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    mock: Arc<Mutex<Mock>>,
    /// The backend's end of the connection being served.
    current: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    fn start(mock: Mock, connections: usize) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backend.sock");
        let mock = Arc::new(Mutex::new(mock));
        let current = Arc::new(Mutex::new(None));
        let listener = UnixListener::bind(&path).unwrap();
        let thread = std::thread::Builder::new()
            .name("mock-backend".into())
            .spawn({
                let mock = mock.clone();
                let current = current.clone();
                move || {
                    for _ in 0..connections {
                        let (stream, _) = listener.accept().unwrap();
                        *current.lock().unwrap() = Some(stream.try_clone().unwrap());
                        let mut handler = BackendReqHandler::from_stream(stream, mock.clone());
                        // Until the frontend goes away (or we fail to answer).
                        while handler.handle_request().is_ok() {}
                    }
                }
            })
            .unwrap();
        Server {
            _dir: dir,
            path,
            mock,
            current,
            thread: Some(thread),
        }
    }

    fn log(&self) -> Vec<String> {
        self.mock.lock().unwrap().log.clone()
    }

    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.mock.lock().unwrap().log)
    }

    /// The backend "crashes": its end of the connection goes away and it
    /// takes the next connection, as a restarted backend would.
    fn kill_connection(&self) {
        if let Some(s) = self.current.lock().unwrap().take() {
            s.shutdown(std::net::Shutdown::Both).unwrap();
        }
    }

    /// Waits until the backend has served all its connections.
    fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

fn memory() -> GuestMemory {
    create_guest_memory(&MemoryConfig {
        size: 16 << 20,
        shared: true,
        hugepages: false,
    })
    .unwrap()
}

fn fs_config(path: &Path, queues: &[u16]) -> GenericVhostUserConfig {
    GenericVhostUserConfig {
        id: "fs0".into(),
        socket: path.to_owned(),
        device_type: "fs".parse().unwrap(),
        queue_sizes: queues.to_vec(),
        config_size: None,
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
    GenericVhostUser::with_timeouts(&fs_config(&server.path, &[64, 64]), &memory(), quick())
        .unwrap()
}

/// Rings in guest memory and the fds a transport would pass.
struct Rings {
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
}

impl Rings {
    fn new(n: usize) -> Rings {
        let fds = || (0..n).map(|_| EventFd::new(0).unwrap()).collect();
        Rings {
            kicks: fds(),
            calls: fds(),
        }
    }

    fn setups(&self) -> Vec<QueueSetup<'_>> {
        (0..self.kicks.len())
            .map(|i| QueueSetup {
                index: i,
                size: 64,
                desc: 0x10_0000 * (i as u64 + 1),
                avail: 0x10_0000 * (i as u64 + 1) + 0x1000,
                used: 0x10_0000 * (i as u64 + 1) + 0x2000,
                kick: &self.kicks[i],
                call: &self.calls[i],
            })
            .collect()
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
            "SET_MEM_TABLE 1".into(),
        ]
    );
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
        GenericVhostUser::with_timeouts(&fs_config(&server.path, &[64, 64]), &memory(), quick())
            .err()
            .unwrap();
    let text = crate::error_chain(&err);
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
        GenericVhostUser::with_timeouts(&fs_config(&server.path, &[64, 64]), &memory(), quick())
            .err()
            .unwrap();
    assert!(matches!(err, Error::NoConfigFeature { .. }));
    assert!(err.to_string().contains("VHOST_USER_PROTOCOL_F_CONFIG"));

    let server = Server::start(no_config(), 1);
    let mut config = fs_config(&server.path, &[64, 64]);
    config.config = Some(b"given".to_vec());
    let mut dev = GenericVhostUser::with_timeouts(&config, &memory(), quick()).unwrap();
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
    assert!(log.contains(&"GET_CONFIG 0 4".to_string()));
    assert!(log.contains(&"SET_CONFIG 8 [1, 2]".to_string()));
}

#[test]
fn activation_and_reset_follow_the_protocol() {
    let server = Server::start(Mock::fs(), 1);
    let mut dev = device(&server);
    server.take_log();
    let rings = Rings::new(2);
    // The guest acks VERSION_1, EVENT_IDX and a bit nobody offered.
    dev.activate(VERSION_1 | (1 << 29) | (1 << 40), &rings.setups())
        .unwrap();
    let acked = VERSION_1 | (1 << 29) | PROTOCOL;
    let mut expected = vec![
        format!("SET_FEATURES {acked:#x}"),
        "SET_MEM_TABLE 1".into(),
        "SET_VRING_NUM 0 64".into(),
        "SET_VRING_NUM 1 64".into(),
    ];
    for q in 0..2 {
        expected.extend([
            format!("SET_VRING_ADDR {q}"),
            format!("SET_VRING_BASE {q} 0"),
            format!("SET_VRING_CALL {q} true"),
            format!("SET_VRING_KICK {q} true"),
            format!("SET_VRING_ENABLE {q} 1"),
        ]);
    }
    assert_eq!(server.take_log(), expected);

    dev.reset().unwrap();
    assert_eq!(
        server.take_log(),
        vec![
            "SET_VRING_ENABLE 0 0",
            "GET_VRING_BASE 0",
            "SET_VRING_ENABLE 1 0",
            "GET_VRING_BASE 1"
        ]
    );
    // And again from the top, on the same connection.
    dev.activate(VERSION_1, &rings.setups()[..1]).unwrap();
    assert_eq!(
        server.log()[0],
        format!("SET_FEATURES {:#x}", VERSION_1 | PROTOCOL)
    );
    dev.reset().unwrap();
    dev.reset().unwrap();
    assert_eq!(
        server.log().last().unwrap(),
        "GET_FEATURES",
        "idle reset probes"
    );
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
    let mut dev = GenericVhostUser::with_timeouts(&config, &memory(), quick()).unwrap();
    assert_eq!(
        dev.features(),
        VERSION_1 | (1 << 29) | 1,
        "VERSION_1 is ours"
    );
    let rings = Rings::new(2);
    dev.activate(VERSION_1 | 1, &rings.setups()).unwrap();
    // Without REPLY_ACK nothing is answered: GET_VRING_BASE's reply (in
    // reset) says the backend has seen everything before it.
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
    let kick = EventFd::new(0).unwrap();
    let setup = QueueSetup {
        index: 0,
        size: 64,
        desc: (16 << 20) - 0x100, // 64 descriptors need 0x400 bytes
        avail: 0,
        used: 0x1000,
        kick: &kick,
        call: &kick,
    };
    let err = dev.activate(VERSION_1, &[setup]).err().unwrap();
    assert!(matches!(err, Error::BadRingAddress { queue: 0, .. }));
}

#[test]
fn a_hung_backend_costs_one_timeout_then_reset_reconnects() {
    let mut server = Server::start(
        Mock {
            hang: Some(Duration::from_secs(2)),
            ..Mock::fs()
        },
        2,
    );
    let mut dev = device(&server);
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
    assert!(start.elapsed() < Duration::from_millis(1500));
    // Later requests fail at once instead of waiting again.
    let start = Instant::now();
    let err = dev.read_config(0, &mut [0u8; 4]).err().unwrap();
    assert!(matches!(err, Error::Disconnected { .. }));
    assert!(start.elapsed() < Duration::from_millis(100));

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
    dev.activate(VERSION_1, &rings.setups()).unwrap();

    // Dies while running: stopping the rings finds out, reset reconnects.
    server.kill_connection();
    server.take_log();
    dev.reset().unwrap();
    let log = server.take_log();
    assert_eq!(log[0], "SET_OWNER", "{log:?}");
    assert!(log.contains(&"SET_MEM_TABLE 1".to_string()));
    dev.activate(VERSION_1, &rings.setups()).unwrap();
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
    assert!(dev.activate(VERSION_1, &rings.setups()).is_err());
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
    let err = GenericVhostUser::with_timeouts(&fs_config(&path, &[64, 64]), &memory(), quick())
        .err()
        .unwrap();
    assert!(start.elapsed() >= Duration::from_millis(300), "retried");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn start_up_checks_that_need_no_backend() {
    let path = Path::new("/nonexistent/never-connected.sock");
    let check = |queues: &[u16], shared: bool| {
        let memory = create_guest_memory(&MemoryConfig {
            size: 16 << 20,
            shared,
            hugepages: false,
        })
        .unwrap();
        GenericVhostUser::with_timeouts(&fs_config(path, queues), &memory, quick())
            .err()
            .unwrap()
    };
    assert!(matches!(
        check(&[64], true),
        Error::TooFewQueues { min: 2, .. }
    ));
    assert!(matches!(
        check(&[64, 48], true),
        Error::QueueSize { size: 48, .. }
    ));
    assert!(matches!(check(&[64, 65535], true), Error::QueueSize { .. }));
    assert!(matches!(
        check(&[64, 64], false),
        Error::NotShared { addr: 0 }
    ));
    assert!(check(&[64, 64], false).to_string().contains("shared=on"));
}
