//! The virtio-blk request layer: bring-up with the features the tests
//! use, config fields, and requests (header, data descriptors a page
//! apart, status byte), one in flight per queue.

use crate::pci::Function;
use crate::rt::Failure;
use crate::sha256::Sha256;
use crate::virtio::{Device, MAX_QUEUES};
use crate::{bail, Clock, Ctx};

pub(super) const BLK_ID: u32 = 2;

// Feature bits (5.2.3).
pub(super) const F_SEG_MAX: u64 = 1 << 2;
pub(super) const F_RO: u64 = 1 << 5;
pub(super) const F_BLK_SIZE: u64 = 1 << 6;
pub(super) const F_FLUSH: u64 = 1 << 9;
pub(super) const F_MQ: u64 = 1 << 12;
pub(super) const F_DISCARD: u64 = 1 << 13;
pub(super) const F_WRITE_ZEROES: u64 = 1 << 14;

// Request types (5.2.6).
pub(super) const T_IN: u32 = 0;
pub(super) const T_OUT: u32 = 1;
pub(super) const T_FLUSH: u32 = 4;
pub(super) const T_GET_ID: u32 = 8;
pub(super) const T_DISCARD: u32 = 11;
pub(super) const T_WRITE_ZEROES: u32 = 13;
/// A type the specification does not define: the device must answer
/// VIRTIO_BLK_S_UNSUPP.
pub(super) const T_UNDEFINED: u32 = 0x20;

pub(super) const S_OK: u8 = 0;
/// What the status byte holds until the device writes it: no status the
/// specification defines, so a device that never writes it shows as 255.
pub(super) const S_UNWRITTEN: u8 = 0xff;

pub(super) const SECTOR: u64 = 512;
pub(super) const ID_BYTES: u32 = 20;
/// Data descriptors per request at most, and the bytes of each: a 64 KiB
/// request is 16 descriptors placed a page apart, so a device that treats
/// a chain as one contiguous buffer puts data in the wrong place.
pub(super) const MAX_SEGS: usize = 16;
pub(super) const SEG_BYTES: u32 = 4096;
pub(super) const SEG_STRIDE: u64 = 2 * SEG_BYTES as u64;
/// Sectors read on each queue by the queue test.
pub(super) const QUEUE_SECTORS: u32 = 8;

/// Byte `offset` of the disk as `probe.blk.write` leaves it: the value
/// depends on the position on the disk alone, so a misplaced sector shows
/// wherever it lands (512 is no multiple of 251).
pub(super) fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// The data of one request.
#[derive(Clone, Copy)]
pub(super) enum Data {
    None,
    /// Device-readable bytes (OUT, DISCARD, WRITE_ZEROES).
    ToDevice(u32),
    /// Device-writable bytes (IN, GET_ID).
    FromDevice(u32),
}

/// Each queue's request memory: one request in flight per queue.
#[derive(Clone, Copy)]
struct Slot {
    header: u64,
    status: u64,
    data: u64,
}

/// One virtio-blk device, set up.
pub(super) struct Blk {
    pub(super) dev: Device,
    slots: [Option<Slot>; MAX_QUEUES],
    pub(super) queues: u16,
    /// Data descriptors per request (seg_max, at most MAX_SEGS).
    segs: usize,
    pub(super) capacity: u64,
    pub(super) ro: bool,
    pub(super) clock: Clock,
    pub(super) timeout_ms: u64,
    pub(super) requests: u32,
    /// The first outcome the specification rules out; the test fails with
    /// it after every record is out.
    pub(super) problem: Option<Failure>,
}

/// What the driver accepts when offered: what the tests use, DISCARD and
/// WRITE_ZEROES only when a range asks for them (so that without them
/// both VMMs are compared on the same features).
fn wanted_features(ctx: &Ctx) -> u64 {
    let mut wanted = F_SEG_MAX | F_RO | F_BLK_SIZE | F_FLUSH | F_MQ | ctx.args.virtio_features;
    if !ctx.args.blk_zero.is_empty() {
        wanted |= F_WRITE_ZEROES;
    }
    if !ctx.args.blk_discard.is_empty() {
        wanted |= F_DISCARD;
    }
    wanted
}

impl Blk {
    pub(super) fn bring_up(f: Function, slot: usize, ctx: &mut Ctx) -> Result<Blk, Failure> {
        let mut dev = Device::new(f, slot, ctx.args.virtio_mode)?;
        dev.negotiate(wanted_features(ctx), &ctx.clock)?;
        let features = dev.driver_features;
        let mut blk = Blk {
            dev,
            slots: [None; MAX_QUEUES],
            queues: 1,
            segs: 1,
            capacity: 0,
            ro: features & F_RO != 0,
            clock: Clock {
                tsc_hz: ctx.clock.tsc_hz,
            },
            timeout_ms: ctx.args.blk_timeout_ms,
            requests: 0,
            problem: None,
        };
        blk.capacity = blk.config_u64(0)?;
        if features & F_MQ != 0 {
            blk.queues = blk.config_u16(34)?;
        }
        if blk.queues == 0 || blk.queues > blk.dev.num_queues {
            bail!(
                "{} config num_queues is {} but the transport has {} queues",
                f.bdf,
                blk.queues,
                blk.dev.num_queues
            );
        }
        blk.queues = blk.queues.min(MAX_QUEUES as u16);
        // Without SEG_MAX nothing says how many segments a request may
        // have; one is always allowed.
        if features & F_SEG_MAX != 0 {
            blk.segs = (blk.config_u32(12)? as usize).clamp(1, MAX_SEGS);
        }
        for q in 0..blk.queues {
            blk.dev.setup_queue(q, 0, &mut ctx.dma)?;
            let size = blk.dev.queues[usize::from(q)]
                .as_ref()
                .map_or(0, |queue| usize::from(queue.size));
            // Header and status take two descriptors of the chain.
            blk.segs = blk.segs.min(size.saturating_sub(2)).max(1);
            blk.slots[usize::from(q)] = Some(Slot {
                header: ctx.dma.alloc(16, 16)?,
                status: ctx.dma.alloc(1, 1)?,
                data: ctx.dma.alloc(SEG_STRIDE * MAX_SEGS as u64, 4096)?,
            });
        }
        let Some(bus) = ctx.pci.as_ref() else {
            bail!("PCI not enumerated")
        };
        blk.dev.driver_ok(bus)?;
        Ok(blk)
    }

    pub(super) fn config_u16(&self, offset: u32) -> Result<u16, Failure> {
        let mut b = [0u8; 2];
        self.dev.read_config(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    pub(super) fn config_u32(&self, offset: u32) -> Result<u32, Failure> {
        let mut b = [0u8; 4];
        self.dev.read_config(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn config_u64(&self, offset: u32) -> Result<u64, Failure> {
        let mut b = [0u8; 8];
        self.dev.read_config(offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub(super) fn has(&self, feature: u64) -> bool {
        self.dev.driver_features & feature != 0
    }

    pub(super) fn bdf(&self) -> crate::pci::Bdf {
        self.dev.f.bdf
    }

    fn slot(&self, q: u16) -> Result<Slot, Failure> {
        match self.slots.get(usize::from(q)).copied().flatten() {
            Some(s) => Ok(s),
            None => bail!("{} queue {q} is not set up", self.bdf()),
        }
    }

    /// The address of data segment `i` of queue `q`'s request memory.
    fn segment(slot: Slot, i: usize) -> u64 {
        slot.data + i as u64 * SEG_STRIDE
    }

    /// Visits the first `len` data bytes of queue `q`'s request memory,
    /// segment by segment, with their offset in the request.
    pub(super) fn with_data(
        &self,
        q: u16,
        len: u32,
        mut f: impl FnMut(u64, &mut [u8]),
    ) -> Result<(), Failure> {
        let slot = self.slot(q)?;
        let mut done = 0u32;
        let mut i = 0;
        while done < len {
            let n = (len - done).min(SEG_BYTES);
            // SAFETY: segment i is SEG_BYTES of our DMA memory, identity
            // mapped, and the device has finished with it (no request of
            // this queue is in flight).
            let bytes = unsafe {
                core::slice::from_raw_parts_mut(Self::segment(slot, i) as *mut u8, n as usize)
            };
            f(u64::from(done), bytes);
            done += n;
            i += 1;
        }
        Ok(())
    }

    /// Puts a request on queue `q`: header, data descriptors, status.
    pub(super) fn post(
        &mut self,
        q: u16,
        kind: u32,
        sector: u64,
        data: Data,
    ) -> Result<(), Failure> {
        let slot = self.slot(q)?;
        // SAFETY: header and status are our DMA memory; the device reads
        // them only after the notify below.
        unsafe {
            core::ptr::write_volatile(slot.header as *mut u32, kind);
            core::ptr::write_volatile((slot.header + 4) as *mut u32, 0);
            core::ptr::write_volatile((slot.header + 8) as *mut u64, sector);
            core::ptr::write_volatile(slot.status as *mut u8, S_UNWRITTEN);
        }
        let mut chain = [(0u64, 0u32, false); MAX_SEGS + 2];
        chain[0] = (slot.header, 16, false);
        let mut n = 1;
        let (len, writable) = match data {
            Data::None => (0, false),
            Data::ToDevice(len) => (len, false),
            Data::FromDevice(len) => (len, true),
        };
        let mut done = 0u32;
        while done < len {
            if n > self.segs {
                bail!(
                    "{}: {len} bytes need more than {} segments",
                    self.bdf(),
                    self.segs
                );
            }
            let piece = (len - done).min(SEG_BYTES);
            chain[n] = (Self::segment(slot, n - 1), piece, writable);
            n += 1;
            done += piece;
        }
        chain[n] = (slot.status, 1, true);
        self.dev.submit(q, &chain[..n + 1])
    }

    /// Waits for queue `q`'s request; returns the status the device wrote.
    pub(super) fn complete(&mut self, q: u16) -> Result<u8, Failure> {
        let slot = self.slot(q)?;
        self.dev.wait_used(q, &self.clock, self.timeout_ms)?;
        self.requests += 1;
        // SAFETY: the status byte is our DMA memory; the device is done.
        Ok(unsafe { core::ptr::read_volatile(slot.status as *const u8) })
    }

    pub(super) fn request(
        &mut self,
        q: u16,
        kind: u32,
        sector: u64,
        data: Data,
    ) -> Result<u8, Failure> {
        self.post(q, kind, sector, data)?;
        self.complete(q)
    }

    /// Sectors per read or write request.
    fn chunk_sectors(&self) -> u32 {
        (self.segs as u32 * SEG_BYTES / SECTOR as u32).max(1)
    }

    /// Reads `count` sectors from `start` on queue 0 into `hash`; returns
    /// the first status that is not OK, else OK.
    fn read_range(&mut self, start: u64, count: u32, hash: &mut Sha256) -> Result<u8, Failure> {
        let mut done = 0u32;
        while done < count {
            let n = (count - done).min(self.chunk_sectors());
            let len = n * SECTOR as u32;
            self.with_data(0, len, |_, bytes| bytes.fill(0))?;
            let status = self.request(0, T_IN, start + u64::from(done), Data::FromDevice(len))?;
            if status != S_OK {
                return Ok(status);
            }
            self.with_data(0, len, |_, bytes| hash.update(bytes))?;
            done += n;
        }
        Ok(S_OK)
    }

    /// The sha256 of a range, or the status that stopped the read.
    pub(super) fn range_sha(
        &mut self,
        start: u64,
        count: u32,
    ) -> Result<Result<[u8; 32], u8>, Failure> {
        let mut hash = Sha256::new();
        let status = self.read_range(start, count, &mut hash)?;
        Ok(if status == S_OK {
            Ok(hash.finish())
        } else {
            Err(status)
        })
    }

    /// Writes the pattern to `count` sectors from `start`; returns the
    /// first status that is not OK, else OK.
    pub(super) fn write_range(&mut self, start: u64, count: u32) -> Result<u8, Failure> {
        let mut done = 0u32;
        while done < count {
            let n = (count - done).min(self.chunk_sectors());
            let len = n * SECTOR as u32;
            let base = (start + u64::from(done)) * SECTOR;
            self.with_data(0, len, |offset, bytes| {
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = pattern(base + offset + i as u64);
                }
            })?;
            let status = self.request(0, T_OUT, start + u64::from(done), Data::ToDevice(len))?;
            if status != S_OK {
                return Ok(status);
            }
            done += n;
        }
        Ok(S_OK)
    }

    pub(super) fn in_range(&self, start: u64, count: u32) -> bool {
        start
            .checked_add(u64::from(count))
            .is_some_and(|end| end <= self.capacity)
    }

    /// The 16-byte segment DISCARD and WRITE_ZEROES take (5.2.6):
    /// sector, num_sectors, flags (unmap clear).
    pub(super) fn post_segment_request(
        &mut self,
        kind: u32,
        start: u64,
        count: u32,
    ) -> Result<u8, Failure> {
        self.with_data(0, 16, |_, bytes| {
            bytes[..8].copy_from_slice(&start.to_le_bytes());
            bytes[8..12].copy_from_slice(&count.to_le_bytes());
            bytes[12..16].fill(0);
        })?;
        self.request(0, kind, 0, Data::ToDevice(16))
    }
}
