//! The echo device: what the driver puts on queue 0 comes back reversed
//! on queue 1. Queues past 1 are drained. Its config space is a byte
//! array with writable ranges, shared by every connection of the process
//! so that it persists across reconnects, as a real device's would.

use std::fs::File;
use std::io::{Read, Write};
use std::ops::Range;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserProtocolFeatures,
};
use vhost_user_backend::{VhostUserBackendMut, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{
    new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier,
};

use crate::fault::{Faults, What};
use crate::relay::crash;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;

/// The config space, as the command line set it up.
#[derive(Debug, Clone)]
pub struct ConfigSpace {
    pub bytes: Vec<u8>,
    pub writable: Vec<Range<u32>>,
    /// Answer GET_CONFIG from offset 0 whatever offset is asked, as
    /// backends on QEMU's libvhost-user do (qemu-storage-daemon's
    /// vhost-user-blk export among them).
    pub ignores_offset: bool,
}

impl ConfigSpace {
    fn read(&self, offset: u32, size: u32) -> Vec<u8> {
        let offset = if self.ignores_offset { 0 } else { offset };
        let (start, len) = (offset as usize, size as usize);
        // An empty answer is the protocol's error: out of range.
        self.bytes
            .get(start..start.saturating_add(len))
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    fn write(&mut self, offset: u32, data: &[u8]) -> std::io::Result<()> {
        let end = u64::from(offset) + data.len() as u64;
        let allowed = self
            .writable
            .iter()
            .any(|r| u64::from(r.start) <= u64::from(offset) && end <= u64::from(r.end));
        if !allowed || end > self.bytes.len() as u64 {
            log::info!(
                "SET_CONFIG of {} bytes at {offset} refused: outside the writable ranges {:?}",
                data.len(),
                self.writable
            );
            return Err(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        }
        self.bytes[offset as usize..end as usize].copy_from_slice(data);
        Ok(())
    }
}

/// What the device saves with DEVICE_STATE: how many buffers it echoed,
/// the reversed message it holds for queue 1 (a request in flight), and
/// its config space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedState {
    echoed: u64,
    pending: Option<Vec<u8>>,
    config: Vec<u8>,
}

pub struct EchoDevice {
    pub queues: usize,
    pub queue_max: usize,
    pub features: u64,
    pub config: Arc<Mutex<ConfigSpace>>,
    pub faults: Arc<Faults>,
    /// The connection being served, for faults that close it.
    pub connection: Arc<Mutex<Option<UnixStream>>>,
    memory: Option<GuestMemoryAtomic<GuestMemoryMmap>>,
    /// Reversed bytes from queue 0 waiting for a buffer on queue 1.
    pending: Option<Vec<u8>>,
    echoed: u64,
    /// A fault closed the connection: the rings are dead too, as they
    /// are when a real backend goes away.
    stopped: bool,
    /// `--block FILE`: queue 0 serves virtio-blk requests from it.
    pub block: Option<std::fs::File>,
    /// A ring turned out unusable (a buffer outside guest memory, a
    /// message too large): nothing is served until the device is reset,
    /// as a device that needs a reset behaves. An error returned to
    /// vhost-user-backend would instead end the ring thread for good.
    broken: bool,
    /// Offer VHOST_USER_PROTOCOL_F_DEVICE_STATE (`--no-device-state`
    /// withholds it).
    pub device_state: bool,
    /// `--refuse-state-load`: CHECK_DEVICE_STATE fails after a load, as a
    /// backend's does when the state it read is not its own.
    pub refuse_state_load: bool,
    /// A state transfer's thread (the transfer must not block the
    /// request), and what a load read, until CHECK_DEVICE_STATE.
    transfer: Mutex<Option<JoinHandle<std::io::Result<Option<SavedState>>>>>,
    loaded: Mutex<Option<SavedState>>,
}

/// The largest message the echo device takes (the probe sends at most
/// 1 MiB).
const MAX_MESSAGE: usize = 1 << 20;

type Result<T> = std::io::Result<T>;

fn queue_error(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

impl EchoDevice {
    pub fn new(
        queues: usize,
        queue_max: usize,
        features: u64,
        config: Arc<Mutex<ConfigSpace>>,
        faults: Arc<Faults>,
        connection: Arc<Mutex<Option<UnixStream>>>,
    ) -> EchoDevice {
        EchoDevice {
            queues,
            queue_max,
            features,
            config,
            faults,
            connection,
            memory: None,
            pending: None,
            echoed: 0,
            stopped: false,
            block: None,
            broken: false,
            device_state: true,
            refuse_state_load: false,
            transfer: Mutex::new(None),
            loaded: Mutex::new(None),
        }
    }

    /// A state CHECK_DEVICE_STATE accepted, taken in before the device
    /// serves or saves anything.
    fn apply_loaded(&mut self) {
        let loaded = self
            .loaded
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(state) = loaded {
            log::info!(
                "state loaded: {} buffers echoed, {} bytes pending",
                state.echoed,
                state.pending.as_ref().map_or(0, Vec::len)
            );
            self.echoed = state.echoed;
            self.pending = state.pending;
            self.config().bytes = state.config;
        }
    }

    fn config(&self) -> std::sync::MutexGuard<'_, ConfigSpace> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn buffer_done(&mut self) {
        self.echoed += 1;
        log::debug!("echoed buffer {}", self.echoed);
        match self.faults.on_buffer().map(|f| f.what) {
            Some(What::Close | What::CloseAfter) => {
                self.stopped = true;
                let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(c) = connection.as_ref() {
                    let _ = c.shutdown(std::net::Shutdown::Both);
                }
            }
            Some(What::Crash | What::CrashAfter) => crash(),
            Some(What::Delay(d)) => std::thread::sleep(d),
            _ => {}
        }
    }

    /// Serves the rings; a ring that fails leaves the device broken until
    /// the next reset, and the ring thread alive.
    fn process(&mut self, vrings: &[VringRwLock]) -> Result<()> {
        self.apply_loaded();
        if self.stopped || self.broken {
            return Ok(());
        }
        if let Err(e) = self.serve(vrings) {
            log::warn!("a ring is unusable; nothing is served until a reset: {e}");
            self.broken = true;
        }
        Ok(())
    }

    fn serve(&mut self, vrings: &[VringRwLock]) -> Result<()> {
        if let (Some(file), Some(memory), Some(queue)) = (&self.block, &self.memory, vrings.first())
        {
            return crate::block::serve(file, memory, queue);
        }
        let Some(memory) = self.memory.as_ref().map(GuestMemoryAtomic::memory) else {
            return Ok(());
        };
        for vring in vrings.iter().skip(2) {
            let mut used = false;
            loop {
                let chain = vring
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(memory.clone());
                let Some(chain) = chain else { break };
                vring.add_used(chain.head_index(), 0).map_err(queue_error)?;
                used = true;
            }
            if used {
                vring.signal_used_queue()?;
            }
        }
        let [out, back, ..] = vrings else {
            return Ok(());
        };
        loop {
            if self.pending.is_none() {
                let chain = out
                    .get_mut()
                    .get_queue_mut()
                    .pop_descriptor_chain(memory.clone());
                let Some(chain) = chain else { break };
                let mut data = Vec::new();
                for desc in chain.clone().readable() {
                    let start = data.len();
                    let len = desc.len() as usize;
                    if start + len > MAX_MESSAGE {
                        return Err(std::io::Error::other("a message over 1 MiB"));
                    }
                    data.resize(start + len, 0);
                    memory
                        .read_slice(&mut data[start..], desc.addr())
                        .map_err(queue_error)?;
                }
                data.reverse();
                out.add_used(chain.head_index(), 0).map_err(queue_error)?;
                out.signal_used_queue()?;
                self.pending = Some(data);
            }
            let chain = back
                .get_mut()
                .get_queue_mut()
                .pop_descriptor_chain(memory.clone());
            let Some(chain) = chain else { break };
            let data = self.pending.take().unwrap_or_default();
            let mut written = 0usize;
            for desc in chain.clone().writable() {
                let n = (desc.len() as usize).min(data.len() - written);
                memory
                    .write_slice(&data[written..written + n], desc.addr())
                    .map_err(queue_error)?;
                written += n;
            }
            back.add_used(chain.head_index(), written as u32)
                .map_err(queue_error)?;
            back.signal_used_queue()?;
            self.buffer_done();
            if self.stopped {
                break;
            }
        }
        Ok(())
    }
}

impl VhostUserBackendMut for EchoDevice {
    type Bitmap = ();
    type Vring = VringRwLock;

    fn num_queues(&self) -> usize {
        self.queues
    }

    fn max_queue_size(&self) -> usize {
        self.queue_max
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VHOST_USER_F_PROTOCOL_FEATURES | self.features
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // The relay hides what the command line withholds.
        let features = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::RESET_DEVICE;
        if self.device_state {
            features | VhostUserProtocolFeatures::DEVICE_STATE
        } else {
            features
        }
    }

    /// Save writes the state to `file` from a thread; load reads it from
    /// one, and CHECK_DEVICE_STATE takes it in.
    fn set_device_state_fd(
        &mut self,
        direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        mut file: File,
    ) -> Result<Option<File>> {
        self.apply_loaded();
        let thread = match direction {
            VhostTransferStateDirection::SAVE => {
                let state = SavedState {
                    echoed: self.echoed,
                    pending: self.pending.clone(),
                    config: self.config().bytes.clone(),
                };
                log::info!(
                    "saving the state: {} buffers echoed, {} bytes pending",
                    state.echoed,
                    state.pending.as_ref().map_or(0, Vec::len)
                );
                let bytes = serde_json::to_vec(&state).map_err(std::io::Error::other)?;
                std::thread::Builder::new()
                    .name("state-save".into())
                    .spawn(move || file.write_all(&bytes).map(|()| None))?
            }
            VhostTransferStateDirection::LOAD => std::thread::Builder::new()
                .name("state-load".into())
                .spawn(move || {
                    let mut bytes = Vec::new();
                    file.read_to_end(&mut bytes)?;
                    serde_json::from_slice(&bytes)
                        .map(Some)
                        .map_err(std::io::Error::other)
                })?,
        };
        *self.transfer.lock().unwrap_or_else(|p| p.into_inner()) = Some(thread);
        Ok(None)
    }

    fn check_device_state(&self) -> Result<()> {
        let thread = self
            .transfer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(thread) = thread else {
            return Err(std::io::Error::other("no state transfer to check"));
        };
        let result = thread
            .join()
            .map_err(|_| std::io::Error::other("the transfer thread panicked"))?;
        match result {
            Ok(Some(_)) if self.refuse_state_load => {
                log::warn!("refusing the state loaded (--refuse-state-load)");
                Err(std::io::Error::other("state refused"))
            }
            Ok(Some(state)) => {
                *self.loaded.lock().unwrap_or_else(|p| p.into_inner()) = Some(state);
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(e) => {
                log::warn!("state transfer failed: {e}");
                Err(e)
            }
        }
    }

    fn reset_device(&mut self) {
        self.apply_loaded();
        self.pending = None;
        self.broken = false;
    }

    fn set_event_idx(&mut self, _enabled: bool) {
        // EVENT_IDX is never offered: every used buffer is signalled.
    }

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        self.config().read(offset, size)
    }

    fn set_config(&mut self, offset: u32, buf: &[u8]) -> Result<()> {
        self.config().write(offset, buf)
    }

    fn update_memory(&mut self, memory: GuestMemoryAtomic<GuestMemoryMmap>) -> Result<()> {
        self.memory = Some(memory);
        Ok(())
    }

    /// Without one the crate cannot stop the ring thread, and the next
    /// connection would wait for it for ever.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        match new_event_consumer_and_notifier(EventFlag::NONBLOCK) {
            Ok(pair) => Some(pair),
            Err(e) => {
                log::error!("cannot create the ring thread's exit event: {e}");
                None
            }
        }
    }

    fn handle_event(
        &mut self,
        device_event: u16,
        evset: EventSet,
        vrings: &[VringRwLock],
        _thread_id: usize,
    ) -> Result<()> {
        if evset != EventSet::IN {
            return Err(std::io::Error::other(format!(
                "unexpected event set {evset:?} on queue {device_event}"
            )));
        }
        self.process(vrings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded_and_writes_need_a_writable_range() {
        let mut c = ConfigSpace {
            bytes: b"abcdefgh".to_vec(),
            writable: vec![Range { start: 4, end: 8 }],
            ignores_offset: false,
        };
        assert_eq!(c.read(2, 4), b"cdef");
        assert!(c.read(6, 4).is_empty(), "past the end is the error form");
        assert!(c.read(u32::MAX, 4).is_empty());
        c.write(4, b"XY").unwrap();
        assert_eq!(c.read(0, 8), b"abcdXYgh");
        assert!(c.write(3, b"XY").is_err());
        assert!(c.write(7, b"XY").is_err());
        assert_eq!(c.read(0, 8), b"abcdXYgh");
    }

    #[test]
    fn a_config_that_ignores_the_offset_answers_from_offset_0() {
        let c = ConfigSpace {
            bytes: b"abcdefgh".to_vec(),
            writable: Vec::new(),
            ignores_offset: true,
        };
        assert_eq!(c.read(4, 4), b"abcd");
        assert_eq!(c.read(0, 8), b"abcdefgh");
        assert!(c.read(4, 12).is_empty(), "more than there is: refused");
    }
}
