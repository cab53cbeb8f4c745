//! The generic vhost-user device: everything device-specific lives in the
//! backend. We connect, negotiate, check the queue layout against what the
//! backend offers, and on DRIVER_OK hand it the memory table and the rings
//! the guest set up, with KVM ioeventfds as kicks and irqfds as calls.

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::QueueSetup;
use crate::config::GenericVhostUserConfig;
use crate::vstate::memory::GuestMemory;

const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
/// Transport and ring features we pass through from the backend to the
/// guest: device bits 0-23, INDIRECT_DESC (28), EVENT_IDX (29), VERSION_1.
/// Bits the transport would have to implement itself (packed rings, access
/// platform, notification data, ...) are never offered.
const PASSTHROUGH_FEATURES: u64 = 0x00ff_ffff | (1 << 28) | (1 << 29) | VIRTIO_F_VERSION_1;
/// How long start-up waits for a backend to listen.
const CONNECT_DEADLINE: Duration = Duration::from_secs(5);
/// A backend that does not answer within this is treated as failed, so a
/// hung backend can never hang a vCPU.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
pub const MAX_QUEUE_SIZE: u16 = 32768;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Nothing listens on vhost-user socket {path} (waited {waited:?})")]
    Connect {
        path: PathBuf,
        waited: Duration,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to set a timeout on vhost-user socket {path}")]
    Timeout {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("vhost-user {what} failed")]
    Backend {
        what: &'static str,
        #[source]
        source: vhost::Error,
    },
    #[error(
        "device {id}: {asked} queues were asked for (queue_sizes) but the backend offers {offered} (VHOST_USER_GET_QUEUE_NUM)"
    )]
    TooManyQueues {
        id: String,
        asked: usize,
        offered: u64,
    },
    #[error("device {id}: {ty} needs at least {min} queues ({why}); queue_sizes gives {asked}")]
    TooFewQueues {
        id: String,
        ty: String,
        min: usize,
        why: &'static str,
        asked: usize,
    },
    #[error("device {id}: queue size {size} is not a power of two between 1 and {MAX_QUEUE_SIZE}")]
    QueueSize { id: String, size: u16 },
    #[error(
        "device {id}: {ty} has a config space but the backend lacks VHOST_USER_PROTOCOL_F_CONFIG; give its bytes with config=HEX"
    )]
    NoConfigFeature { id: String, ty: String },
    #[error("the backend does not offer VIRTIO_F_VERSION_1 (features {features:#x})")]
    NotModern { features: u64 },
    #[error("guest memory region at {addr:#x} is not shared (use --memory shared=on)")]
    NotShared { addr: u64 },
    #[error("queue {queue}: ring address {addr:#x} is not in guest memory")]
    BadRingAddress { queue: usize, addr: u64 },
    #[error("backend answered GET_CONFIG with {got} bytes for {asked}")]
    ConfigSize { asked: usize, got: usize },
}

fn backend(what: &'static str) -> impl FnOnce(vhost::Error) -> Error {
    move |source| Error::Backend { what, source }
}

pub struct GenericVhostUser {
    config: GenericVhostUserConfig,
    memory: GuestMemory,
    frontend: Frontend,
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
    /// User-supplied config bytes (`config=`), served instead of GET_CONFIG.
    config_bytes: Option<Vec<u8>>,
    started: Vec<usize>,
}

impl GenericVhostUser {
    /// Connects and negotiates; every check that can fail does so here,
    /// before the guest runs.
    pub fn new(config: &GenericVhostUserConfig, memory: &GuestMemory) -> Result<Self, Error> {
        validate_queues(config)?;
        for region in memory.iter() {
            if region.file_offset().is_none() {
                return Err(Error::NotShared {
                    addr: region.start_addr().0,
                });
            }
        }
        let frontend = connect(config)?;
        let mut device = GenericVhostUser {
            config: config.clone(),
            memory: memory.clone(),
            frontend,
            backend_features: 0,
            protocol: VhostUserProtocolFeatures::empty(),
            config_bytes: config.config.clone(),
            started: Vec::new(),
        };
        device.negotiate()?;
        Ok(device)
    }

    fn negotiate(&mut self) -> Result<(), Error> {
        let id = &self.config.id;
        self.frontend.set_owner().map_err(backend("SET_OWNER"))?;
        self.backend_features = self
            .frontend
            .get_features()
            .map_err(backend("GET_FEATURES"))?;
        if self.backend_features & VIRTIO_F_VERSION_1 == 0 {
            return Err(Error::NotModern {
                features: self.backend_features,
            });
        }
        self.protocol = VhostUserProtocolFeatures::empty();
        if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            let offered = self
                .frontend
                .get_protocol_features()
                .map_err(backend("GET_PROTOCOL_FEATURES"))?;
            let wanted = VhostUserProtocolFeatures::CONFIG
                | VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
            self.protocol = offered & wanted;
            self.frontend
                .set_protocol_features(self.protocol)
                .map_err(backend("SET_PROTOCOL_FEATURES"))?;
        }
        let asked = self.config.queue_sizes.len();
        if self.protocol.contains(VhostUserProtocolFeatures::MQ) {
            let offered = self
                .frontend
                .get_queue_num()
                .map_err(backend("GET_QUEUE_NUM"))?;
            if asked as u64 > offered {
                return Err(Error::TooManyQueues {
                    id: id.clone(),
                    asked,
                    offered,
                });
            }
        }
        let spec_config = self.config.device_type.spec_config_size().unwrap_or(0) > 0;
        if spec_config
            && self.config_bytes.is_none()
            && !self.protocol.contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Err(Error::NoConfigFeature {
                id: id.clone(),
                ty: self.config.device_type.to_string(),
            });
        }
        log::info!(
            "{id}: connected to {}: features {:#x}, protocol features {:?}",
            self.config.socket.display(),
            self.backend_features,
            self.protocol
        );
        Ok(())
    }

    pub fn id(&self) -> &str {
        &self.config.id
    }

    pub fn device_type(&self) -> u32 {
        self.config.device_type.id()
    }

    pub fn queue_sizes(&self) -> &[u16] {
        &self.config.queue_sizes
    }

    pub fn config_len(&self) -> u32 {
        self.config.config_window_len()
    }

    /// What the guest is offered.
    pub fn features(&self) -> u64 {
        (self.backend_features & PASSTHROUGH_FEATURES) | VIRTIO_F_VERSION_1
    }

    /// Reads `data.len()` bytes at `offset` (already inside the window).
    pub fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), Error> {
        if let Some(bytes) = &self.config_bytes {
            data.fill(0);
            let start = (offset as usize).min(bytes.len());
            let end = (start + data.len()).min(bytes.len());
            data[..end - start].copy_from_slice(&bytes[start..end]);
            return Ok(());
        }
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            data.fill(0);
            return Ok(());
        }
        let (_, payload) = self
            .frontend
            .get_config(
                offset,
                data.len() as u32,
                VhostUserConfigFlags::WRITABLE,
                &vec![0; data.len()],
            )
            .map_err(backend("GET_CONFIG"))?;
        if payload.len() != data.len() {
            return Err(Error::ConfigSize {
                asked: data.len(),
                got: payload.len(),
            });
        }
        data.copy_from_slice(&payload);
        Ok(())
    }

    pub fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), Error> {
        if let Some(bytes) = &mut self.config_bytes {
            let start = offset as usize;
            if bytes.len() < start + data.len() {
                bytes.resize(start + data.len(), 0);
            }
            bytes[start..start + data.len()].copy_from_slice(data);
            return Ok(());
        }
        if !self.protocol.contains(VhostUserProtocolFeatures::CONFIG) {
            return Ok(());
        }
        self.frontend
            .set_config(offset, VhostUserConfigFlags::WRITABLE, data)
            .map_err(backend("SET_CONFIG"))
    }

    fn host_address(&self, queue: usize, gpa: u64) -> Result<u64, Error> {
        self.memory
            .get_host_address(GuestAddress(gpa))
            .map(|p| p as u64)
            .map_err(|_| Error::BadRingAddress { queue, addr: gpa })
    }

    /// DRIVER_OK: features, memory, then every queue the guest enabled.
    pub fn activate(&mut self, features: u64, queues: &[QueueSetup<'_>]) -> Result<(), Error> {
        let mut acked = features & self.features();
        if self.backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            acked |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        self.frontend
            .set_features(acked)
            .map_err(backend("SET_FEATURES"))?;
        let regions = self
            .memory
            .iter()
            .map(|r| {
                VhostUserMemoryRegionInfo::from_guest_region(r).map_err(backend("memory region"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.frontend
            .set_mem_table(&regions)
            .map_err(backend("SET_MEM_TABLE"))?;
        for q in queues {
            let ring = VringConfigData {
                queue_max_size: q.size,
                queue_size: q.size,
                flags: 0,
                desc_table_addr: self.host_address(q.index, q.desc)?,
                used_ring_addr: self.host_address(q.index, q.used)?,
                avail_ring_addr: self.host_address(q.index, q.avail)?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(q.index, q.size)
                .map_err(backend("SET_VRING_NUM"))?;
            self.frontend
                .set_vring_addr(q.index, &ring)
                .map_err(backend("SET_VRING_ADDR"))?;
            self.frontend
                .set_vring_base(q.index, 0)
                .map_err(backend("SET_VRING_BASE"))?;
            self.frontend
                .set_vring_call(q.index, q.call)
                .map_err(backend("SET_VRING_CALL"))?;
            self.frontend
                .set_vring_kick(q.index, q.kick)
                .map_err(backend("SET_VRING_KICK"))?;
            if acked & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
                self.frontend
                    .set_vring_enable(q.index, true)
                    .map_err(backend("SET_VRING_ENABLE"))?;
            }
            self.started.push(q.index);
        }
        log::info!(
            "{}: started queues {:?} with features {acked:#x}",
            self.config.id,
            self.started
        );
        Ok(())
    }

    /// Device reset: stop the rings so the backend is ready for a new
    /// negotiation. If the connection is gone, connect again and redo the
    /// set-up, so that a restarted backend serves the re-initialised device.
    pub fn reset(&mut self) -> Result<(), Error> {
        let started = std::mem::take(&mut self.started);
        let mut healthy = true;
        for q in started {
            let disabled = if self.protocol.is_empty() {
                true
            } else {
                self.frontend.set_vring_enable(q, false).is_ok()
            };
            let stopped = disabled && self.frontend.get_vring_base(q).is_ok();
            healthy &= stopped;
        }
        if healthy {
            return Ok(());
        }
        log::warn!("{}: backend connection lost; reconnecting", self.config.id);
        self.frontend = connect(&self.config)?;
        self.negotiate()
    }
}

fn validate_queues(config: &GenericVhostUserConfig) -> Result<(), Error> {
    let id = &config.id;
    for &size in &config.queue_sizes {
        if !size.is_power_of_two() || size > MAX_QUEUE_SIZE {
            return Err(Error::QueueSize {
                id: id.clone(),
                size,
            });
        }
    }
    let min = config.device_type.min_queues();
    if config.queue_sizes.len() < min {
        return Err(Error::TooFewQueues {
            id: id.clone(),
            ty: config.device_type.to_string(),
            min,
            why: config.device_type.required_queues(),
            asked: config.queue_sizes.len(),
        });
    }
    Ok(())
}

fn connect(config: &GenericVhostUserConfig) -> Result<Frontend, Error> {
    let path = &config.socket;
    let start = Instant::now();
    let stream = loop {
        match UnixStream::connect(path) {
            Ok(stream) => break stream,
            Err(source) if start.elapsed() >= CONNECT_DEADLINE => {
                return Err(Error::Connect {
                    path: path.clone(),
                    waited: start.elapsed(),
                    source,
                })
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    stream
        .set_read_timeout(Some(REPLY_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(REPLY_TIMEOUT)))
        .map_err(|source| Error::Timeout {
            path: path.clone(),
            source,
        })?;
    Ok(Frontend::from_stream(
        stream,
        config.queue_sizes.len() as u64,
    ))
}
