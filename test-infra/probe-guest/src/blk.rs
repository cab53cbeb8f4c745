//! virtio-blk (VIRTIO 1.3 5.2) as a driver sees it: the config fields of
//! the features negotiated, GET_ID, reads hashed, a deterministic write
//! read back, WRITE_ZEROES and DISCARD when asked, FLUSH, the errors the
//! specification defines (a write to a read-only disk, a range past the
//! end, an undefined request type), and one request on every queue at
//! once. Every status is reported as the byte the device wrote.

use crate::cmdline::{parse_range, List};
use crate::pci::Function;
use crate::rt::{Failure, Hex, Quoted};
use crate::sha256::Sha256;
use crate::tests::virtio_devices;
use crate::virtio::{Device, MAX_QUEUES};
use crate::{bail, failure, record, Clock, Ctx};

const BLK_ID: u32 = 2;

// Feature bits (5.2.3).
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_MQ: u64 = 1 << 12;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;

// Request types (5.2.6).
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
/// A type the specification does not define: the device must answer
/// VIRTIO_BLK_S_UNSUPP.
const T_UNDEFINED: u32 = 0x20;

const S_OK: u8 = 0;
/// What the status byte holds until the device writes it: no status the
/// specification defines, so a device that never writes it shows as 255.
const S_UNWRITTEN: u8 = 0xff;

const SECTOR: u64 = 512;
const ID_BYTES: u32 = 20;
/// Data descriptors per request at most, and the bytes of each: a 64 KiB
/// request is 16 descriptors placed a page apart, so a device that treats
/// a chain as one contiguous buffer puts data in the wrong place.
const MAX_SEGS: usize = 16;
const SEG_BYTES: u32 = 4096;
const SEG_STRIDE: u64 = 2 * SEG_BYTES as u64;
/// Sectors read on each queue by the queue test.
const QUEUE_SECTORS: u32 = 8;

/// Byte `offset` of the disk as `probe.blk.write` leaves it: the value
/// depends on the position on the disk alone, so a misplaced sector shows
/// wherever it lands (512 is no multiple of 251).
fn pattern(offset: u64) -> u8 {
    (offset % 251) as u8
}

/// The data of one request.
#[derive(Clone, Copy)]
enum Data {
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

struct Blk {
    dev: Device,
    slots: [Option<Slot>; MAX_QUEUES],
    queues: u16,
    /// Data descriptors per request (seg_max, at most MAX_SEGS).
    segs: usize,
    capacity: u64,
    ro: bool,
    clock: Clock,
    timeout_ms: u64,
    requests: u32,
    /// The first outcome the specification rules out; the test fails with
    /// it after every record is out.
    problem: Option<Failure>,
}

/// Every virtio-blk device in turn.
pub fn blk_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let (functions, _) = virtio_devices(ctx)?;
    let mut found = false;
    for (slot, f) in functions.iter().flatten().enumerate() {
        if f.virtio_id() != BLK_ID {
            continue;
        }
        found = true;
        blk_device(*f, slot, ctx)?;
    }
    if !found {
        bail!("no virtio-blk device");
    }
    Ok(())
}

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

fn blk_device(f: Function, slot: usize, ctx: &mut Ctx) -> Result<(), Failure> {
    let mut blk = Blk::bring_up(f, slot, ctx)?;
    blk.report_config()?;
    blk.get_id()?;
    let args = &ctx.args;
    for range in args.blk_sha.iter() {
        let (start, count) = range_of("probe.blk.sha", range)?;
        blk.read_test(start, count)?;
    }
    for range in args.blk_write.iter() {
        let (start, count) = range_of("probe.blk.write", range)?;
        blk.write_test(start, count)?;
    }
    ranges_with(&mut blk, &args.blk_zero, "probe.blk.zero", Blk::zero_test)?;
    ranges_with(
        &mut blk,
        &args.blk_discard,
        "probe.blk.discard",
        Blk::discard_test,
    )?;
    blk.flush_test()?;
    blk.errors_test()?;
    blk.queues_test()?;
    record!(
        "blk done {} requests={} irqs={}",
        f.bdf,
        blk.requests,
        blk.dev.queue_irqs(0)
    );
    blk.dev.reset(&ctx.clock)?;
    match blk.problem {
        Some(p) => Err(p),
        None => Ok(()),
    }
}

fn range_of(key: &str, range: &str) -> Result<(u64, u32), Failure> {
    match parse_range(range) {
        Some(r) => Ok(r),
        None => bail!("{key} wants START:COUNT, got {}", Quoted(range.as_bytes())),
    }
}

fn ranges_with(
    blk: &mut Blk,
    list: &List,
    key: &str,
    test: fn(&mut Blk, u64, u32) -> Result<(), Failure>,
) -> Result<(), Failure> {
    for range in list.iter() {
        let (start, count) = range_of(key, range)?;
        test(blk, start, count)?;
    }
    Ok(())
}

impl Blk {
    fn bring_up(f: Function, slot: usize, ctx: &mut Ctx) -> Result<Blk, Failure> {
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

    fn config_u16(&self, offset: u32) -> Result<u16, Failure> {
        let mut b = [0u8; 2];
        self.dev.read_config(offset, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }

    fn config_u32(&self, offset: u32) -> Result<u32, Failure> {
        let mut b = [0u8; 4];
        self.dev.read_config(offset, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn config_u64(&self, offset: u32) -> Result<u64, Failure> {
        let mut b = [0u8; 8];
        self.dev.read_config(offset, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn has(&self, feature: u64) -> bool {
        self.dev.driver_features & feature != 0
    }

    fn bdf(&self) -> crate::pci::Bdf {
        self.dev.f.bdf
    }

    /// Remembers the first outcome the specification rules out.
    fn problem(&mut self, p: Failure) {
        self.problem.get_or_insert(p);
    }

    /// `blk config`: one field per negotiated feature, nothing else.
    fn report_config(&self) -> Result<(), Failure> {
        let mut fields = crate::rt::FixedString::<512>::new();
        let mut add = |name: &str, value: u64| {
            let _ = core::fmt::Write::write_fmt(&mut fields, format_args!(" {name}={value}"));
        };
        if self.has(F_SEG_MAX) {
            add("seg_max", u64::from(self.config_u32(12)?));
        }
        if self.has(F_BLK_SIZE) {
            add("blk_size", u64::from(self.config_u32(20)?));
        }
        if self.has(F_MQ) {
            add("queues", u64::from(self.config_u16(34)?));
        }
        if self.has(F_DISCARD) {
            add("max_discard_sectors", u64::from(self.config_u32(36)?));
            add("max_discard_seg", u64::from(self.config_u32(40)?));
            add("discard_sector_alignment", u64::from(self.config_u32(44)?));
        }
        if self.has(F_WRITE_ZEROES) {
            add("max_write_zeroes_sectors", u64::from(self.config_u32(48)?));
            add("max_write_zeroes_seg", u64::from(self.config_u32(52)?));
            let mut unmap = [0u8; 1];
            self.dev.read_config(56, &mut unmap)?;
            add("write_zeroes_may_unmap", u64::from(unmap[0]));
        }
        record!(
            "blk config {} offered=0x{:x} features=0x{:x} vqs={} qsize={} capacity={} ro={} flush={}{}",
            self.bdf(),
            self.dev.device_features,
            self.dev.driver_features,
            self.dev.num_queues,
            self.dev.sizes(),
            self.capacity,
            u8::from(self.ro),
            u8::from(self.has(F_FLUSH)),
            fields
        );
        Ok(())
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
    fn with_data(
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
    fn post(&mut self, q: u16, kind: u32, sector: u64, data: Data) -> Result<(), Failure> {
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
    fn complete(&mut self, q: u16) -> Result<u8, Failure> {
        let slot = self.slot(q)?;
        self.dev.wait_used(q, &self.clock, self.timeout_ms)?;
        self.requests += 1;
        // SAFETY: the status byte is our DMA memory; the device is done.
        Ok(unsafe { core::ptr::read_volatile(slot.status as *const u8) })
    }

    fn request(&mut self, q: u16, kind: u32, sector: u64, data: Data) -> Result<u8, Failure> {
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
    fn range_sha(&mut self, start: u64, count: u32) -> Result<Result<[u8; 32], u8>, Failure> {
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
    fn write_range(&mut self, start: u64, count: u32) -> Result<u8, Failure> {
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

    fn in_range(&self, start: u64, count: u32) -> bool {
        start
            .checked_add(u64::from(count))
            .is_some_and(|end| end <= self.capacity)
    }

    /// `blk id`: VIRTIO_BLK_T_GET_ID into a 20-byte buffer.
    fn get_id(&mut self) -> Result<(), Failure> {
        self.with_data(0, ID_BYTES, |_, bytes| bytes.fill(0))?;
        let status = self.request(0, T_GET_ID, 0, Data::FromDevice(ID_BYTES))?;
        let mut id = [0u8; ID_BYTES as usize];
        self.with_data(0, ID_BYTES, |_, bytes| id.copy_from_slice(bytes))?;
        // NUL-padded, not NUL-terminated when all 20 bytes are used.
        let len = id.iter().position(|&b| b == 0).unwrap_or(id.len());
        record!(
            "blk id {} status={} serial={}",
            self.bdf(),
            status,
            Quoted(&id[..len])
        );
        if status != S_OK {
            self.problem(failure!("{}: GET_ID status {status}", self.bdf()));
        }
        Ok(())
    }

    /// `blk read`: the sha256 of a range.
    fn read_test(&mut self, start: u64, count: u32) -> Result<(), Failure> {
        let bdf = self.bdf();
        match self.range_sha(start, count)? {
            Ok(digest) => record!(
                "blk read {bdf} start={start} count={count} status=0 sha256={}",
                Hex(&digest)
            ),
            Err(status) => {
                record!("blk read {bdf} start={start} count={count} status={status}");
                if self.in_range(start, count) {
                    self.problem(failure!("{bdf}: read of {start}:{count}, status {status}"));
                }
            }
        }
        Ok(())
    }

    /// `blk write`: the pattern written and read back; on a read-only
    /// device the status of the refused write and whether the range
    /// stayed as it was.
    fn write_test(&mut self, start: u64, count: u32) -> Result<(), Failure> {
        let bdf = self.bdf();
        let mut expected = Sha256::new();
        let mut sector = [0u8; SECTOR as usize];
        for s in start..start + u64::from(count) {
            for (i, b) in sector.iter_mut().enumerate() {
                *b = pattern(s * SECTOR + i as u64);
            }
            expected.update(&sector);
        }
        let expected = expected.finish();
        if self.ro {
            let before = self.range_sha(start, count)?;
            let status = self.write_range(start, count)?;
            let after = self.range_sha(start, count)?;
            let unchanged = match (before, after) {
                (Ok(b), Ok(a)) if a == b => "yes",
                (Ok(_), Ok(_)) => "no",
                _ => "unknown",
            };
            record!("blk write {bdf} start={start} count={count} status={status} ro=1 unchanged={unchanged}");
            // "unknown" is a range the device cannot read (past the end):
            // the status alone then says the write was refused.
            if status == S_OK || unchanged == "no" {
                self.problem(failure!(
                    "{bdf}: write to a read-only device: status {status}, unchanged {unchanged}"
                ));
            }
            return Ok(());
        }
        let status = self.write_range(start, count)?;
        let readback = if status == S_OK {
            match self.range_sha(start, count)? {
                Ok(d) if d == expected => "ok",
                Ok(_) => "mismatch",
                Err(_) => "error",
            }
        } else {
            "none"
        };
        record!(
            "blk write {bdf} start={start} count={count} status={status} ro=0 sha256={} readback={readback}",
            Hex(&expected)
        );
        if self.in_range(start, count) && (status != S_OK || readback != "ok") {
            self.problem(failure!(
                "{bdf}: write of {start}:{count}, status {status}, readback {readback}"
            ));
        }
        Ok(())
    }

    /// The 16-byte segment DISCARD and WRITE_ZEROES take (5.2.6):
    /// sector, num_sectors, flags (unmap clear).
    fn post_segment_request(&mut self, kind: u32, start: u64, count: u32) -> Result<u8, Failure> {
        self.with_data(0, 16, |_, bytes| {
            bytes[..8].copy_from_slice(&start.to_le_bytes());
            bytes[8..12].copy_from_slice(&count.to_le_bytes());
            bytes[12..16].fill(0);
        })?;
        self.request(0, kind, 0, Data::ToDevice(16))
    }

    /// `blk zero`: WRITE_ZEROES, then whether the range reads as zeros.
    fn zero_test(&mut self, start: u64, count: u32) -> Result<(), Failure> {
        let bdf = self.bdf();
        if !self.has(F_WRITE_ZEROES) {
            record!("blk zero {bdf} start={start} count={count} negotiated=0");
            self.problem(failure!("{bdf}: WRITE_ZEROES is not offered"));
            return Ok(());
        }
        let status = self.post_segment_request(T_WRITE_ZEROES, start, count)?;
        let mut zeros = Sha256::new();
        for _ in 0..u64::from(count) * SECTOR / 64 {
            zeros.update(&[0u8; 64]);
        }
        let zeros = zeros.finish();
        let readback = match self.range_sha(start, count)? {
            Ok(d) if d == zeros => "zero",
            Ok(_) => "nonzero",
            Err(_) => "error",
        };
        record!("blk zero {bdf} start={start} count={count} status={status} readback={readback}");
        // On a read-only disk only the refusal counts: the range may have
        // been zeros before.
        let fine = if self.ro {
            status != S_OK
        } else {
            status == S_OK && readback == "zero"
        };
        if !fine {
            self.problem(failure!(
                "{bdf}: WRITE_ZEROES of {start}:{count} (ro {}), status {status}, readback {readback}",
                u8::from(self.ro)
            ));
        }
        Ok(())
    }

    /// `blk discard`: the status only (what a discarded range reads as
    /// is the device's choice).
    fn discard_test(&mut self, start: u64, count: u32) -> Result<(), Failure> {
        let bdf = self.bdf();
        if !self.has(F_DISCARD) {
            record!("blk discard {bdf} start={start} count={count} negotiated=0");
            self.problem(failure!("{bdf}: DISCARD is not offered"));
            return Ok(());
        }
        let status = self.post_segment_request(T_DISCARD, start, count)?;
        record!("blk discard {bdf} start={start} count={count} status={status}");
        if (status == S_OK) == self.ro {
            self.problem(failure!(
                "{bdf}: DISCARD of {start}:{count} (ro {}), status {status}",
                u8::from(self.ro)
            ));
        }
        Ok(())
    }

    /// `blk flush`, when FLUSH is negotiated.
    fn flush_test(&mut self) -> Result<(), Failure> {
        if !self.has(F_FLUSH) {
            return Ok(());
        }
        let status = self.request(0, T_FLUSH, 0, Data::None)?;
        record!("blk flush {} status={status}", self.bdf());
        if status != S_OK && !self.ro {
            self.problem(failure!("{}: FLUSH status {status}", self.bdf()));
        }
        Ok(())
    }

    /// `blk errors`: reads at the end and across it, and a request type
    /// the specification does not define.
    fn errors_test(&mut self) -> Result<(), Failure> {
        let bdf = self.bdf();
        let len = QUEUE_SECTORS * SECTOR as u32;
        let at_end = self.request(0, T_IN, self.capacity, Data::FromDevice(len))?;
        let across = self.request(
            0,
            T_IN,
            self.capacity.saturating_sub(1),
            Data::FromDevice(2 * SECTOR as u32),
        )?;
        let undefined = self.request(0, T_UNDEFINED, 0, Data::None)?;
        record!(
            "blk errors {bdf} capacity={} read_at_end={at_end} read_across_end={across} type={T_UNDEFINED} undefined_type={undefined}",
            self.capacity
        );
        if at_end == S_OK || across == S_OK || undefined == S_OK {
            self.problem(failure!(
                "{bdf}: a request that must fail did not (at end {at_end}, across {across}, type {T_UNDEFINED} {undefined})"
            ));
        }
        Ok(())
    }

    /// `blk queue`: 8 sectors read on every queue, all in flight at once;
    /// queue q reads from sector 8q (wrapping at the capacity).
    fn queues_test(&mut self) -> Result<(), Failure> {
        let bdf = self.bdf();
        let len = QUEUE_SECTORS * SECTOR as u32;
        let span = self.capacity / u64::from(QUEUE_SECTORS);
        if span == 0 {
            bail!(
                "{bdf}: capacity {} is too small for the queue test",
                self.capacity
            );
        }
        let sector = |q: u16| (u64::from(q) % span) * u64::from(QUEUE_SECTORS);
        for q in 0..self.queues {
            self.with_data(q, len, |_, bytes| bytes.fill(0))?;
            self.post(q, T_IN, sector(q), Data::FromDevice(len))?;
        }
        for q in 0..self.queues {
            let status = self.complete(q)?;
            let mut hash = Sha256::new();
            self.with_data(q, len, |_, bytes| hash.update(bytes))?;
            record!(
                "blk queue {bdf} q={q} start={} count={QUEUE_SECTORS} status={status} sha256={} irqs={}",
                sector(q),
                Hex(&hash.finish()),
                self.dev.queue_irqs(q)
            );
            if status != S_OK {
                self.problem(failure!("{bdf}: read on queue {q}, status {status}"));
            }
        }
        Ok(())
    }
}
