//! virtio-blk (VIRTIO 1.3 §5.2), served by `vmm` itself: a raw image file,
//! one worker thread per queue. A kick is a KVM ioeventfd the worker waits
//! on; it pops requests through `virtio-queue`, moves the data with
//! preadv/pwritev straight between the file and guest memory, and calls
//! through the queue's irqfd. vCPU threads never touch the disk.

mod direct;
pub mod disk;
pub mod format;
#[cfg(any(test, feature = "fuzzing"))]
pub mod memory_disk;
mod queue;
pub(crate) mod request;

#[cfg(feature = "fuzzing")]
pub use self::queue::fuzzing;

use std::sync::Arc;

use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;

use self::disk::{DiskFile, SECTOR_SIZE};
use self::queue::{BlockCounts, QueueHandler, QueueParams};
use self::request::{DiskInfo, ID_BYTES, MAX_DISCARD_SECTORS, MAX_DISCARD_SEGMENTS};
use super::worker::Worker;
use super::{
    ActivateContext, PlaceSlot, QueuePlace, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use crate::util::lock;

/// The VIRTIO device ID of a block device.
pub const DEVICE_TYPE: u32 = 2;
/// `struct virtio_blk_config` up to `write_zeroes_may_unmap` and its
/// padding: every field our features give a meaning to.
const CONFIG_LEN: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error("Failed to start the worker thread of queue {index}")]
    Worker {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to pause the worker thread of queue {index}")]
    Pause {
        index: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("queue {index}'s worker has ended: where the queue stands is not known")]
    NoPlace { index: usize },
    #[error("a disk holds no state beyond its queues, the snapshot has {0}")]
    State(String),
}

/// What the builder hands the device: plain values and an open image.
pub struct BlockParams {
    pub id: String,
    pub disk: DiskFile,
    pub readonly: bool,
    pub serial: Option<String>,
    pub num_queues: u16,
    pub queue_size: u16,
}

pub struct Block {
    id: String,
    disk: Arc<DiskFile>,
    readonly: bool,
    capacity: u64,
    serial_id: [u8; ID_BYTES],
    queue_sizes: Vec<u16>,
    features: u64,
    config: [u8; CONFIG_LEN],
    workers: Vec<Worker>,
    /// Each running queue's place, left by its worker when it pauses.
    places: Vec<PlaceSlot>,
    /// Shared by every queue's worker, kept across resets.
    counts: Arc<BlockCounts>,
}

impl Block {
    pub fn new(params: BlockParams) -> Block {
        let capacity = params.disk.size() / SECTOR_SIZE;
        if !params.disk.size().is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "{}: {} is {} bytes, not whole sectors: the last {} bytes are out of the guest's reach",
                params.id,
                params.disk.path().display(),
                params.disk.size(),
                params.disk.size() % SECTOR_SIZE
            );
        }
        let serial_id = match &params.serial {
            Some(serial) => {
                if serial.len() > ID_BYTES {
                    log::warn!(
                        "{}: serial {serial:?} is longer than {ID_BYTES} bytes: the guest sees its first {ID_BYTES} at most",
                        params.id
                    );
                }
                serial_id(serial)
            }
            None => [0u8; ID_BYTES],
        };
        let queues = params.num_queues.max(1);
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_BLK_F_SIZE_MAX
            | 1 << VIRTIO_BLK_F_SEG_MAX
            | 1 << VIRTIO_BLK_F_BLK_SIZE
            | 1 << VIRTIO_BLK_F_FLUSH;
        // Offered on read-only disks too, as QEMU does: a driver's discard
        // there gets IOERR, like its writes.
        features |= 1 << VIRTIO_BLK_F_DISCARD | 1 << VIRTIO_BLK_F_WRITE_ZEROES;
        if params.readonly {
            features |= 1 << VIRTIO_BLK_F_RO;
        }
        if queues > 1 {
            features |= 1 << VIRTIO_BLK_F_MQ;
        }
        let config = config_bytes(
            capacity,
            params.queue_size,
            queues,
            params.disk.block_size(),
        );
        Block {
            id: params.id,
            disk: Arc::new(params.disk),
            readonly: params.readonly,
            capacity,
            serial_id,
            queue_sizes: vec![params.queue_size; usize::from(queues)],
            features,
            config,
            workers: Vec::new(),
            places: Vec::new(),
            counts: Arc::default(),
        }
    }
}

/// What GET_ID answers: the serial's first `ID_BYTES` bytes, cut before a
/// character that would not fit whole, so the guest never reads half a
/// UTF-8 character.
fn serial_id(serial: &str) -> [u8; ID_BYTES] {
    let mut n = serial.len().min(ID_BYTES);
    while !serial.is_char_boundary(n) {
        n -= 1;
    }
    let mut id = [0u8; ID_BYTES];
    id[..n].copy_from_slice(&serial.as_bytes()[..n]);
    id
}

/// The config space: read-only for the driver, as we offer no CONFIG_WCE.
fn config_bytes(capacity: u64, queue_size: u16, queues: u16, blk_size: u32) -> [u8; CONFIG_LEN] {
    let mut c = [0u8; CONFIG_LEN];
    let mut put = |at: usize, bytes: &[u8]| c[at..at + bytes.len()].copy_from_slice(bytes);
    put(0, &capacity.to_le_bytes());
    // size_max: one descriptor may carry up to 1 MiB.
    put(8, &(1u32 << 20).to_le_bytes());
    // seg_max: a request's data descriptors, leaving room for the header
    // and status when the driver does not use indirect tables.
    put(
        12,
        &u32::from(queue_size.saturating_sub(2).max(1)).to_le_bytes(),
    );
    // blk_size: the disk's logical block under O_DIRECT, so that Linux
    // sends nothing smaller.
    put(20, &blk_size.to_le_bytes());
    put(34, &queues.to_le_bytes());
    put(36, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(40, &MAX_DISCARD_SEGMENTS.to_le_bytes());
    // discard_sector_alignment: a page, the granularity of hole punching.
    put(44, &8u32.to_le_bytes());
    put(48, &MAX_DISCARD_SECTORS.to_le_bytes());
    put(52, &MAX_DISCARD_SEGMENTS.to_le_bytes());
    // write_zeroes_may_unmap
    put(56, &[1]);
    c
}

impl VirtioDevice for Block {
    type Error = BlockError;

    fn id(&self) -> &str {
        &self.id
    }

    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> u32 {
        CONFIG_LEN as u32
    }

    fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), BlockError> {
        crate::virtio::read_config_bytes(&self.config, offset, data);
        Ok(())
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), BlockError> {
        // Only `writeback` is writable, and only with CONFIG_WCE.
        log::debug!(
            "{}: ignored a write of {} bytes at config offset {offset}",
            self.id,
            data.len()
        );
        Ok(())
    }

    fn activate(&mut self, context: ActivateContext) -> Result<(), BlockError> {
        self.workers.clear();
        self.places.clear();
        let info = Arc::new(DiskInfo {
            capacity: self.capacity,
            readonly: self.readonly,
            id: self.serial_id,
            discard: context.features & (1 << VIRTIO_BLK_F_DISCARD) != 0,
        });
        let io_threads = if self.disk.direct() {
            queue::DIRECT_IO_THREADS
        } else {
            0
        };
        for active in context.queues {
            let index = active.index;
            let place = PlaceSlot::default();
            let handler = QueueHandler::new(QueueParams {
                id: self.id.clone(),
                index,
                mem: context.mem.clone(),
                queue: active.queue,
                kick: active.kick,
                call: active.call,
                disk: self.disk.clone(),
                info: info.clone(),
                interrupt: context.interrupt.clone(),
                io_threads,
                counts: self.counts.clone(),
                place: place.clone(),
            })
            .map_err(|source| BlockError::Worker { index, source })?;
            let sources = handler.sources();
            let worker = Worker::spawn(&format!("{}-q{index}", self.id), &sources, handler)
                .map_err(|source| BlockError::Worker { index, source })?;
            self.workers.push(worker);
            self.places.push(place);
        }
        log::info!(
            "{}: {} queue(s) active, {} sectors{}",
            self.id,
            self.workers.len(),
            self.capacity,
            if self.readonly { ", read-only" } else { "" }
        );
        Ok(())
    }

    fn reset(&mut self) -> Result<(), BlockError> {
        // Dropping a worker joins its thread: no request is in flight after.
        self.workers.clear();
        self.places.clear();
        Ok(())
    }

    /// Each queue's worker completes what its I/O threads hold, then
    /// parks with its ring where it is (and says where).
    fn pause(&mut self) -> Result<(), BlockError> {
        for place in &self.places {
            *lock(place) = None;
        }
        for (index, worker) in self.workers.iter().enumerate() {
            worker
                .pause()
                .map_err(|source| BlockError::Pause { index, source })?;
        }
        Ok(())
    }

    fn resume(&mut self) -> Result<(), BlockError> {
        for worker in &self.workers {
            worker.resume();
        }
        Ok(())
    }

    fn counters(&self) -> Vec<crate::lifecycle::Counter> {
        self.counts.counters()
    }

    fn queue_places(&self) -> Result<Vec<QueuePlace>, BlockError> {
        self.places
            .iter()
            .enumerate()
            .map(|(i, slot)| (*lock(slot)).ok_or(BlockError::NoPlace { index: i }))
            .collect()
    }

    fn save_state(&mut self) -> Result<serde_json::Value, BlockError> {
        Ok(serde_json::Value::Null)
    }

    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), BlockError> {
        if state.is_null() {
            return Ok(());
        }
        Err(BlockError::State(state.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 21, finding 14: a serial was cut inside a UTF-8 character.
    #[test]
    fn a_long_serial_is_cut_between_characters() {
        let id = serial_id("disk-ééééééééééé");
        let end = id.iter().position(|&b| b == 0).unwrap_or(ID_BYTES);
        assert_eq!(std::str::from_utf8(&id[..end]).unwrap(), "disk-ééééééé");
        assert_eq!(&serial_id("short")[..6], b"short\0");
        let exact = serial_id("01234567890123456789xyz");
        assert_eq!(&exact, b"01234567890123456789");
    }

    #[test]
    fn config_holds_capacity_limits_and_queue_count() {
        let c = config_bytes(0x1_0000_0001, 256, 4, 512);
        assert_eq!(
            u64::from_le_bytes(c[0..8].try_into().unwrap()),
            0x1_0000_0001
        );
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 254);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 512);
        assert_eq!(u16::from_le_bytes(c[34..36].try_into().unwrap()), 4);
        assert_eq!(u32::from_le_bytes(c[40..44].try_into().unwrap()), 1);
        assert_eq!(c[56], 1);
        // A two-entry queue still allows one data segment.
        let c = config_bytes(1, 2, 1, 4096);
        assert_eq!(u32::from_le_bytes(c[12..16].try_into().unwrap()), 1);
        assert_eq!(u32::from_le_bytes(c[20..24].try_into().unwrap()), 4096);
    }
}
