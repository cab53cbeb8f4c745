//! The generic vhost-user device: everything device-specific lives in the
//! backend. We connect, negotiate, check the queue layout against what the
//! backend offers, and on DRIVER_OK hand it the memory table and the rings
//! the guest set up, with KVM ioeventfds as kicks and irqfds as calls.
//!
//! Every request runs under a watchdog deadline; a request that fails at
//! the connection level marks the connection broken, later requests fail at
//! once, and the next device reset reconnects (a restarted backend then
//! serves the re-initialised device).

mod connection;
mod error;
pub(crate) mod get_config;
mod negotiate;
mod persist;
mod rings;
mod watchdog;

use std::path::PathBuf;

use vhost::vhost_user::message::VhostUserConfigFlags;
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::VhostBackend;
use virtio_queue::QueueT;
use virtio_types::VirtioDeviceType;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
};

pub use self::connection::Timeouts;
use self::connection::{connect, peer_hung_up, Connection, Link};
pub use self::error::Error;
use self::error::RequestError;
use self::watchdog::Watchdog;
use super::{
    ActivateContext, ActiveQueue, QueuePlace, VirtioDevice, VirtioInterrupt, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::util::error_chain;

/// VHOST_USER_F_PROTOCOL_FEATURES: a vhost-user bit, never the guest's.
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
/// Device-type feature bits (VIRTIO 1.3, 6): 0-23 and 50-63.
const DEVICE_FEATURES: u64 = 0x00ff_ffff | (0x3fff << 50);
/// Ring features that need nothing from the transport. The other transport
/// bits (packed rings, access platform, notification data, ...) would need
/// support here and are never offered.
const RING_FEATURES: u64 = VIRTIO_RING_F_INDIRECT_DESC | VIRTIO_RING_F_EVENT_IDX;
/// The protocol features we use when the backend has them.
const WANTED_PROTOCOL: VhostUserProtocolFeatures = VhostUserProtocolFeatures::MQ
    .union(VhostUserProtocolFeatures::REPLY_ACK)
    .union(VhostUserProtocolFeatures::CONFIG)
    .union(VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS)
    .union(VhostUserProtocolFeatures::RESET_DEVICE)
    .union(VhostUserProtocolFeatures::DEVICE_STATE);

/// What the device is, as plain values; the configuration step has checked
/// them (queue sizes and count, the window and the bytes in it).
#[derive(Debug, Clone)]
pub struct VhostUserParams {
    /// For log lines and errors: the user's device id.
    pub id: String,
    pub socket: PathBuf,
    pub device_type: VirtioDeviceType,
    pub queue_sizes: Vec<u16>,
    /// Length of the device config window the guest sees.
    pub config_len: u32,
    /// The window is the spec's layout for the type, not a size the user
    /// gave: once the backend's features are known it shrinks to the
    /// fields those features bring (QEMU sizes a device's config so), and
    /// a backend whose structure ends there is never asked past its end.
    pub config_len_by_features: bool,
    /// Config bytes served instead of GET_CONFIG (backends without the
    /// CONFIG protocol feature).
    pub config: Option<Vec<u8>>,
}

/// What negotiation settled.
#[derive(Debug, Clone, Copy)]
struct Negotiated {
    backend_features: u64,
    protocol: VhostUserProtocolFeatures,
}

pub struct GenericVhostUser {
    params: VhostUserParams,
    memory: GuestMemoryMmap,
    timeouts: Timeouts,
    /// None after a reconnect failed.
    connection: Option<Connection>,
    /// The connection failed; requests fail at once until reset reconnects.
    broken: bool,
    negotiated: Negotiated,
    /// User-supplied config bytes (`config=`), served instead of GET_CONFIG.
    config_bytes: Option<Vec<u8>>,
    /// Queues the backend is running.
    started: Vec<usize>,
    /// The rings as the driver set them up, kept from DRIVER_OK to reset
    /// so that a pause can hand them back to the backend.
    rings: Vec<ActiveQueue>,
    /// Each stopped ring's next available index (GET_VRING_BASE), while
    /// the VM is paused.
    paused: Vec<(usize, u16)>,
    /// Whether the acked features carried VHOST_USER_F_PROTOCOL_FEATURES,
    /// which makes SET_VRING_ENABLE available.
    vring_enable: bool,
    /// Where the watchdog reports a backend that hung up: the transport's
    /// interrupt handle, from attachment on, kept across reconnects.
    interrupt: Option<VirtioInterrupt>,
    /// Connections made after the first, and those that failed.
    reconnects: u64,
    failed_reconnects: u64,
    /// What SET_FEATURES gave the backend at the last DRIVER_OK.
    acked: u64,
    /// A restore's state, given to the backend, until the activation.
    restored: Option<persist::Restored>,
}

impl GenericVhostUser {
    /// Connects and negotiates; every check that can fail does so here,
    /// before the guest runs.
    pub fn new(params: VhostUserParams, memory: &GuestMemoryMmap) -> Result<Self, Error> {
        Self::with_timeouts(params, memory, Timeouts::default())
    }

    pub fn with_timeouts(
        params: VhostUserParams,
        memory: &GuestMemoryMmap,
        timeouts: Timeouts,
    ) -> Result<Self, Error> {
        if let Some(region) = memory.iter().find(|r| r.file_offset().is_none()) {
            return Err(Error::NotShared {
                addr: region.start_addr().0,
            });
        }
        let mut params = params;
        let config_bytes = params.config.take();
        let mut device = GenericVhostUser {
            params,
            memory: memory.clone(),
            timeouts,
            connection: None,
            broken: true,
            negotiated: Negotiated {
                backend_features: 0,
                protocol: VhostUserProtocolFeatures::empty(),
            },
            config_bytes,
            started: Vec::new(),
            rings: Vec::new(),
            paused: Vec::new(),
            vring_enable: false,
            interrupt: None,
            reconnects: 0,
            failed_reconnects: 0,
            acked: 0,
            restored: None,
        };
        device.connect()?;
        if device.params.config_len_by_features {
            let features = device.negotiated.backend_features;
            if let Some(len) = device.params.device_type.config_size_for(features) {
                let given = device.config_bytes.as_ref().map_or(0, Vec::len);
                let len = len.max(u32::try_from(given).unwrap_or(u32::MAX));
                if len != device.params.config_len {
                    log::info!(
                        "{}: config window of {len} bytes for the features the backend offers ({features:#x}; the full layout is {})",
                        device.params.id,
                        device.params.config_len
                    );
                    device.params.config_len = len;
                }
            }
        }
        Ok(device)
    }

    /// A fresh connection and negotiation, replacing any old connection.
    fn connect(&mut self) -> Result<(), Error> {
        self.connection = None;
        self.broken = true;
        self.started.clear();
        self.vring_enable = false;
        let (frontend, socket) = connect(&self.params, self.timeouts.connect)?;
        let watchdog_error = |source| Error::Watchdog {
            path: self.params.socket.clone(),
            source,
        };
        let watched = socket.try_clone().map_err(watchdog_error)?;
        let watchdog = Watchdog::new(&self.params.id, watched).map_err(watchdog_error)?;
        if let Some(interrupt) = &self.interrupt {
            watchdog.set_interrupt(interrupt.clone());
        }
        self.connection = Some(Connection {
            link: Link { frontend, socket },
            watchdog,
        });
        self.broken = false;
        let set_up = self.negotiate().and_then(|negotiated| {
            self.negotiated = negotiated;
            self.set_mem_table()
        });
        if let Err(e) = set_up {
            // Not a connection the device can use, whatever the cause.
            self.broken = true;
            return Err(e);
        }
        log::info!(
            "{}: connected to {}: features {:#x}, protocol features {:?}",
            self.params.id,
            self.params.socket.display(),
            self.negotiated.backend_features,
            self.negotiated.protocol
        );
        Ok(())
    }

    /// Sends one request through the vhost crate's frontend.
    fn request<T>(
        &mut self,
        what: &'static str,
        op: impl FnOnce(&mut Frontend) -> vhost::Result<T>,
    ) -> Result<T, Error> {
        self.request_on(what, |link| op(&mut link.frontend))
    }

    /// Sends one request under the watchdog. Connection-level failures mark
    /// the connection broken so that nothing waits on it again.
    fn request_on<T, E: RequestError>(
        &mut self,
        what: &'static str,
        op: impl FnOnce(&mut Link) -> Result<T, E>,
    ) -> Result<T, Error> {
        let path = &self.params.socket;
        let connection = match &mut self.connection {
            Some(c) if !self.broken && !c.watchdog.lost() => c,
            // The watchdog saw the hang-up (at start-up too): say so, once.
            Some(_) if !self.broken => {
                self.broken = true;
                return Err(Error::HungUp {
                    path: path.clone(),
                    what,
                });
            }
            _ => {
                self.broken = true;
                return Err(Error::Disconnected { path: path.clone() });
            }
        };
        let Connection { link, watchdog } = connection;
        let (result, cut_off) = watchdog.run(self.timeouts.reply, || op(link));
        // Whatever the vhost crate calls it ("partial message", "socket is
        // broken"), a request that met a closed connection is a hang-up.
        let hung_up = result.is_err() && !cut_off && peer_hung_up(&link.socket);
        result.map_err(|source| {
            if cut_off {
                self.broken = true;
                let after = self.timeouts.reply;
                if source.incomplete_reply() {
                    return Error::IncompleteReply { what, after };
                }
                return Error::NoReply { what, after };
            }
            if source.breaks_connection() {
                self.broken = true;
                if hung_up {
                    return Error::HungUp {
                        path: path.clone(),
                        what,
                    };
                }
            }
            log::debug!("{}: {what}: {source}", self.params.id);
            source.into_error(what)
        })
    }

    /// The guest's reset reaches the backend's device state (a request it
    /// holds back, a FUSE session) through RESET_DEVICE, when it has it.
    fn reset_backend_device(&mut self) {
        if !self
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::RESET_DEVICE)
        {
            return;
        }
        if let Err(e) = self.request("RESET_DEVICE", |f| f.reset_device()) {
            log::warn!("{}: {}", self.params.id, error_chain(&e));
        }
    }
}

impl VirtioDevice for GenericVhostUser {
    type Error = Error;

    fn id(&self) -> &str {
        &self.params.id
    }

    fn device_type(&self) -> u32 {
        self.params.device_type.id()
    }

    fn queue_sizes(&self) -> &[u16] {
        &self.params.queue_sizes
    }

    /// The backend's device and ring features plus VERSION_1; never
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    fn features(&self) -> u64 {
        (self.negotiated.backend_features & (DEVICE_FEATURES | RING_FEATURES)) | VIRTIO_F_VERSION_1
    }

    fn config_len(&self) -> u32 {
        self.params.config_len
    }

    fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), Error> {
        if let Some(bytes) = &self.config_bytes {
            data.fill(0);
            let start = (offset as usize).min(bytes.len());
            let end = (start + data.len()).min(bytes.len());
            data[..end - start].copy_from_slice(&bytes[start..end]);
            return Ok(());
        }
        if !self
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            // Only types without a spec-defined config get here (start-up
            // refuses the others): their window reads zero.
            data.fill(0);
            return Ok(());
        }
        // The window from offset 0 up to the end of the access, sliced
        // here: backends on QEMU's libvhost-user (qemu-storage-daemon's
        // vhost-user-blk among them) answer from offset 0 whatever offset
        // is asked. Not the whole window, as QEMU reads it: the window
        // holds the whole VIRTIO layout, and a backend whose structure
        // stops before fields it has no feature for (qemu-storage-daemon
        // 7.2 serves 60 of virtio-blk's 96 bytes) refuses a longer read.
        // A refusal is a failed access like any other.
        let window = self.params.config_len.min(get_config::MAX_SIZE);
        let end = offset as usize + data.len();
        if end <= window as usize {
            let payload = self.request_on("GET_CONFIG", |link| {
                get_config::get_config(&link.socket, 0, end as u32)
            })?;
            data.copy_from_slice(&payload[offset as usize..end]);
            return Ok(());
        }
        let len = data.len() as u32;
        let payload = self.request_on("GET_CONFIG", |link| {
            get_config::get_config(&link.socket, offset, len)
        })?;
        // get_config has checked that the reply has the asked size.
        let n = payload.len().min(data.len());
        data[..n].copy_from_slice(&payload[..n]);
        Ok(())
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), Error> {
        if let Some(bytes) = &mut self.config_bytes {
            let start = offset as usize;
            if bytes.len() < start + data.len() {
                bytes.resize(start + data.len(), 0);
            }
            bytes[start..start + data.len()].copy_from_slice(data);
            return Ok(());
        }
        if !self
            .negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG)
        {
            return Ok(());
        }
        self.request("SET_CONFIG", |f| {
            f.set_config(offset, VhostUserConfigFlags::WRITABLE, data)
        })
    }

    /// From now on the watchdog reports a hang-up through the interrupt,
    /// whether or not the driver got as far as DRIVER_OK.
    fn attach(&mut self, interrupt: VirtioInterrupt) {
        if let Some(connection) = &self.connection {
            connection.watchdog.set_interrupt(interrupt.clone());
        }
        self.interrupt = Some(interrupt);
    }

    /// DRIVER_OK: features, memory, then every queue the guest enabled.
    fn activate(&mut self, context: ActivateContext) -> Result<(), Error> {
        let ActivateContext {
            mem,
            features,
            queues,
            interrupt,
        } = context;
        // The rings are where the activation's memory says (the same
        // memory the backend has mapped since connecting).
        self.memory = mem;
        self.attach(interrupt);
        let backend_features = self.negotiated.backend_features;
        // VERSION_1 is ours to offer; the backend gets only bits it has.
        let mut acked = features & self.features() & backend_features;
        if backend_features & VHOST_USER_F_PROTOCOL_FEATURES != 0 {
            acked |= VHOST_USER_F_PROTOCOL_FEATURES;
        }
        if let Some(restored) = self.restored.take() {
            if restored.acked_features != acked {
                log::warn!(
                    "{}: restored with features {:#x}, the driver's now give {acked:#x}",
                    self.params.id,
                    restored.acked_features
                );
            }
        }
        self.request("SET_FEATURES", |f| f.set_features(acked))?;
        self.acked = acked;
        self.vring_enable = acked & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        self.set_mem_table()?;
        self.paused.clear();
        // 0 at DRIVER_OK; where the snapshot had them after a restore.
        let bases: Vec<(usize, u16)> = queues
            .iter()
            .map(|q| (q.index, q.queue.next_avail()))
            .collect();
        self.start_queues(&queues, |index| {
            bases
                .iter()
                .find(|(q, _)| *q == index)
                .map_or(0, |(_, base)| *base)
        })?;
        self.rings = queues;
        log::info!(
            "{}: started queues {:?} with features {acked:#x}",
            self.params.id,
            self.started
        );
        Ok(())
    }

    /// Device reset: stop the rings so the backend is ready for a new
    /// negotiation. If the connection is gone, connect again and redo the
    /// set-up, so that a restarted backend serves the re-initialised device.
    fn reset(&mut self) -> Result<(), Error> {
        if !self.broken {
            if self.started.is_empty() {
                // Nothing was running, so nothing has talked to the backend
                // lately: make sure it is still there.
                let _ = self.request("GET_FEATURES", |f| f.get_features());
            } else {
                self.stop_queues();
            }
        }
        self.started.clear();
        self.rings.clear();
        self.paused.clear();
        if !self.broken {
            self.reset_backend_device();
        }
        if !self.broken {
            return Ok(());
        }
        log::warn!(
            "{}: vhost-user connection to {} lost; reconnecting",
            self.params.id,
            self.params.socket.display()
        );
        let connected = self.connect();
        match connected {
            Ok(()) => {
                self.reconnects += 1;
                crate::events::emit("vhost-user", "reconnected", &[("id", &self.params.id)]);
            }
            Err(_) => self.failed_reconnects += 1,
        }
        connected
    }

    fn counters(&self) -> Vec<crate::lifecycle::Counter> {
        vec![
            ("reconnects", self.reconnects),
            ("failed_reconnects", self.failed_reconnects),
        ]
    }

    /// Stops every ring the vhost-user way (`rings.rs`).
    fn pause(&mut self) -> Result<(), Error> {
        self.stop_rings()
    }

    /// The next available index is where GET_VRING_BASE said the backend
    /// stopped; the next used one is the ring's own, which only the
    /// backend writes and which it no longer touches.
    fn queue_places(&self) -> Result<Vec<QueuePlace>, Error> {
        self.rings
            .iter()
            .map(|ring| {
                let (_, next_avail) = self
                    .paused
                    .iter()
                    .find(|(q, _)| *q == ring.index)
                    .copied()
                    .ok_or(Error::NotStopped { queue: ring.index })?;
                let used_idx = GuestAddress(ring.queue.used_ring()).checked_add(2);
                let next_used = used_idx
                    .and_then(|at| self.memory.read_obj::<[u8; 2]>(at).ok())
                    .ok_or(Error::BadRingAddress {
                        queue: ring.index,
                        addr: ring.queue.used_ring(),
                        len: 4,
                    })?;
                Ok(QueuePlace {
                    index: ring.index,
                    next_avail,
                    next_used: u16::from_le_bytes(next_used),
                })
            })
            .collect()
    }

    /// The acked features, the config window and, where the backend
    /// offers DEVICE_STATE, its own state (`persist.rs`).
    fn save_state(&mut self) -> Result<serde_json::Value, Error> {
        let saved = self.save()?;
        serde_json::to_value(saved).map_err(|e| Error::RestoreRefused(e.to_string()))
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), Error> {
        let saved = <persist::VhostUserSnapshot as serde::Deserialize>::deserialize(state)
            .map_err(|e| Error::RestoreRefused(format!("its saved state does not read: {e}")))?;
        self.restore(&saved)
    }

    fn resume(&mut self) -> Result<(), Error> {
        self.restart_rings()
    }
}

#[cfg(test)]
mod mock;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod virtiofsd_tests;
