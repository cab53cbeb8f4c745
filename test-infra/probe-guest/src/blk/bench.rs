//! `probe.blk.bench`: what a disk sustains, timed by the TSC. 4 KiB reads
//! and writes at pseudo-random 4 KiB-aligned offsets over the whole disk
//! and 1 MiB sequential ones, `depth` requests kept in flight on queue 0;
//! then the latency of a FLUSH after a 4 KiB write. Every request's status
//! is checked: one that fails ends the test, so no figure hides an error.

use crate::cmdline::Args;
use crate::io;
use crate::rt::Failure;
use crate::{bail, record, Dma};

use super::request::{pattern, Blk, F_FLUSH, SECTOR, S_OK, S_UNWRITTEN, T_FLUSH, T_IN, T_OUT};

/// The queue the bench drives.
const QUEUE: u16 = 0;
const SMALL: u32 = 4096;
const LARGE: u32 = 1 << 20;
/// Descriptors per request: header, one data buffer, status. Slot i owns
/// descriptors `DESCS * i ..`, so the head a device returns names the slot.
const DESCS: u16 = 3;

#[derive(Clone, Copy)]
enum Op {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
    Flush,
}

impl Op {
    fn parse(name: &str) -> Option<Op> {
        Some(match name {
            "randread" => Op::RandRead,
            "randwrite" => Op::RandWrite,
            "seqread" => Op::SeqRead,
            "seqwrite" => Op::SeqWrite,
            "flush" => Op::Flush,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Op::RandRead => "randread",
            Op::RandWrite => "randwrite",
            Op::SeqRead => "seqread",
            Op::SeqWrite => "seqwrite",
            Op::Flush => "flush",
        }
    }

    fn kind(self) -> u32 {
        match self {
            Op::RandRead | Op::SeqRead => T_IN,
            Op::RandWrite | Op::SeqWrite => T_OUT,
            Op::Flush => T_FLUSH,
        }
    }

    fn bytes(self) -> u32 {
        match self {
            Op::RandRead | Op::RandWrite => SMALL,
            Op::SeqRead | Op::SeqWrite => LARGE,
            Op::Flush => 0,
        }
    }
}

/// Knuth's MMIX LCG: the same offsets for the same seed under every VMM.
struct Lcg(u64);

impl Lcg {
    /// Uniform in `0..n` (n < 2^32).
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        ((self.0 >> 32) * n) >> 32
    }
}

/// The bench's request memory and what is in flight.
struct Bench<'a> {
    blk: &'a mut Blk,
    depth: u16,
    /// 16-byte headers, one per slot.
    headers: u64,
    /// Status bytes, one per slot.
    statuses: u64,
    /// 1 MiB data buffers, one per slot.
    data: u64,
    /// The sector of each slot's request in flight, None when idle.
    in_flight: [Option<u64>; crate::cmdline::MAX_BENCH_DEPTH as usize],
    lcg: Lcg,
    /// Where the next sequential request starts.
    next_seq: u64,
    timeout_ms: u64,
}

/// Runs the `probe.blk.bench` measurements on `blk`, one record each.
pub(super) fn run(blk: &mut Blk, args: &Args, dma: &mut Dma) -> Result<(), Failure> {
    if args.blk_bench.is_empty() {
        return Ok(());
    }
    let bdf = blk.bdf();
    let qsize = blk.dev.queues[usize::from(QUEUE)]
        .as_ref()
        .map_or(0, |q| q.size);
    let depth = args.blk_bench_depth.min(qsize / DESCS);
    if depth == 0 {
        bail!("{bdf}: bench: queue {QUEUE} of {qsize} entries holds no request");
    }
    if blk.capacity < u64::from(LARGE) / SECTOR {
        bail!(
            "{bdf}: bench: {} sectors are less than one 1 MiB request",
            blk.capacity
        );
    }
    let slots = u64::from(depth);
    let data = dma.alloc(u64::from(LARGE) * slots, 4096)?;
    // Written data is not all zeros, so no layer can shortcut it.
    for offset in 0..u64::from(LARGE) * slots {
        // SAFETY: inside the buffer just allocated; no request uses it yet.
        unsafe { core::ptr::write_volatile((data + offset) as *mut u8, pattern(offset)) };
    }
    let mut bench = Bench {
        headers: dma.alloc(16 * slots, 16)?,
        statuses: dma.alloc(slots, 1)?,
        data,
        depth,
        in_flight: [None; crate::cmdline::MAX_BENCH_DEPTH as usize],
        lcg: Lcg(args.blk_bench_seed),
        next_seq: 0,
        timeout_ms: blk.timeout_ms,
        blk,
    };
    for name in args.blk_bench.iter() {
        let Some(op) = Op::parse(name) else {
            bail!("{bdf}: bench: unknown measurement {name}");
        };
        match op {
            Op::Flush => bench.flush_latency(args.blk_bench_flushes, dma)?,
            _ => bench.throughput(op, args.blk_bench_ms)?,
        }
    }
    Ok(())
}

impl Bench<'_> {
    /// `blk bench BDF op=...`: requests of `op` kept `depth` deep for
    /// `ms`, then drained; the time runs from the first submission to the
    /// last completion.
    fn throughput(&mut self, op: Op, ms: u64) -> Result<(), Failure> {
        let hz = self.blk.clock.tsc_hz.max(1);
        let irqs = self.blk.dev.queue_irqs(QUEUE);
        let notifies = self.blk.dev.notifies(QUEUE);
        let start = io::rdtsc();
        let stop = start + hz / 1000 * ms;
        for slot in 0..self.depth {
            self.post(slot, op)?;
        }
        self.blk.dev.notify(QUEUE)?;
        let mut waiting = u32::from(self.depth);
        let mut ops = 0u64;
        while waiting > 0 {
            self.wait(op, waiting)?;
            while let Some((id, _)) = self.blk.dev.pop_used(QUEUE)? {
                let slot = self.complete(op, id)?;
                ops += 1;
                waiting -= 1;
                if io::rdtsc() < stop {
                    self.post(slot, op)?;
                    waiting += 1;
                }
            }
            self.blk.dev.notify(QUEUE)?;
        }
        let ticks = u128::from((io::rdtsc() - start).max(1));
        let per_s = |n: u128| n * u128::from(hz) / ticks;
        record!(
            "blk bench {} op={} bytes={} depth={} ops={ops} ms={} iops={} mib_s={} notifies={} irqs={}",
            self.blk.bdf(),
            op.name(),
            op.bytes(),
            self.depth,
            ticks * 1000 / u128::from(hz),
            per_s(u128::from(ops)),
            per_s(u128::from(ops) * u128::from(op.bytes())) >> 20,
            self.blk.dev.notifies(QUEUE) - notifies,
            self.blk.dev.queue_irqs(QUEUE) - irqs,
        );
        Ok(())
    }

    /// `blk bench BDF op=flush`: `n` times a random 4 KiB write, then a
    /// FLUSH alone in flight, timed from its submission to its completion.
    /// A first FLUSH, untimed, writes back what earlier measurements left
    /// dirty, so that it is not counted as one flush's latency.
    fn flush_latency(&mut self, n: u32, dma: &mut Dma) -> Result<(), Failure> {
        let bdf = self.blk.bdf();
        if !self.blk.has(F_FLUSH) {
            record!("blk bench {bdf} op=flush negotiated=0");
            bail!("{bdf}: bench: FLUSH is not offered");
        }
        let hz = self.blk.clock.tsc_hz.max(1);
        let times = dma.alloc(8 * u64::from(n), 8)?;
        // SAFETY: n u64s of our DMA memory, just allocated, only used here.
        let times = unsafe { core::slice::from_raw_parts_mut(times as *mut u64, n as usize) };
        self.one(0, Op::Flush)?;
        for t in times.iter_mut() {
            self.one(0, Op::RandWrite)?;
            let start = io::rdtsc();
            self.one(0, Op::Flush)?;
            *t = io::rdtsc() - start;
        }
        times.sort_unstable();
        let us = |ticks: u64| u128::from(ticks) * 1_000_000 / u128::from(hz);
        let p99 = (times.len() * 99).div_ceil(100).max(1) - 1;
        record!(
            "blk bench {bdf} op=flush n={n} median_us={} p99_us={} min_us={} max_us={}",
            us(times[times.len() / 2]),
            us(times[p99]),
            us(times[0]),
            us(times[times.len() - 1]),
        );
        Ok(())
    }

    /// One request of `op` in `slot`, alone in flight.
    fn one(&mut self, slot: u16, op: Op) -> Result<(), Failure> {
        self.post(slot, op)?;
        self.blk.dev.notify(QUEUE)?;
        self.wait(op, 1)?;
        match self.blk.dev.pop_used(QUEUE)? {
            Some((id, _)) => self.complete(op, id).map(|_| ()),
            None => bail!("{}: bench: a used element vanished", self.blk.bdf()),
        }
    }

    /// The sector of the next request of `op`.
    fn sector(&mut self, op: Op) -> u64 {
        let capacity = self.blk.capacity;
        match op {
            Op::RandRead | Op::RandWrite => {
                let per_block = u64::from(SMALL) / SECTOR;
                self.lcg.below(capacity / per_block) * per_block
            }
            Op::SeqRead | Op::SeqWrite => {
                let len = u64::from(LARGE) / SECTOR;
                if self.next_seq + len > capacity {
                    self.next_seq = 0;
                }
                let sector = self.next_seq;
                self.next_seq += len;
                sector
            }
            Op::Flush => 0,
        }
    }

    /// Makes a request of `op` available in `slot` (no notification).
    fn post(&mut self, slot: u16, op: Op) -> Result<(), Failure> {
        let sector = self.sector(op);
        let i = u64::from(slot);
        let (header, status) = (self.headers + 16 * i, self.statuses + i);
        // SAFETY: the slot's header and status are our DMA memory, and the
        // slot is idle: the device has none of it.
        unsafe {
            core::ptr::write_volatile(header as *mut u32, op.kind());
            core::ptr::write_volatile((header + 4) as *mut u32, 0);
            core::ptr::write_volatile((header + 8) as *mut u64, sector);
            core::ptr::write_volatile(status as *mut u8, S_UNWRITTEN);
        }
        let data = (
            self.data + u64::from(LARGE) * i,
            op.bytes(),
            op.kind() == T_IN,
        );
        let head = slot * DESCS;
        if op.bytes() == 0 {
            self.blk
                .dev
                .add_chain(QUEUE, head, &[(header, 16, false), (status, 1, true)])?;
        } else {
            self.blk
                .dev
                .add_chain(QUEUE, head, &[(header, 16, false), data, (status, 1, true)])?;
        }
        self.in_flight[usize::from(slot)] = Some(sector);
        Ok(())
    }

    /// Waits for a completion; no completion within the request timeout
    /// fails the test.
    fn wait(&mut self, op: Op, waiting: u32) -> Result<(), Failure> {
        let blk = &mut *self.blk;
        let deadline = blk.clock.deadline_ms(self.timeout_ms);
        if !blk.dev.wait_for_used(QUEUE, &blk.clock, deadline)? {
            bail!(
                "{}: bench {}: no completion within {} ms with {waiting} request(s) in flight (status 0x{:02x})",
                self.blk.bdf(),
                op.name(),
                self.timeout_ms,
                self.blk.dev.status()
            );
        }
        Ok(())
    }

    /// Takes the request headed by descriptor `id` off the slot it was in;
    /// fails unless the device used a request in flight and wrote OK.
    fn complete(&mut self, op: Op, id: u32) -> Result<u16, Failure> {
        let bdf = self.blk.bdf();
        let slot = id / u32::from(DESCS);
        let sector = if id.is_multiple_of(u32::from(DESCS)) && slot < u32::from(self.depth) {
            self.in_flight[slot as usize].take()
        } else {
            None
        };
        let Some(sector) = sector else {
            bail!("{bdf}: bench {}: the device used descriptor {id}, which heads no request in flight", op.name());
        };
        // SAFETY: the slot's status byte is our DMA memory; the device is
        // done with the request.
        let status =
            unsafe { core::ptr::read_volatile((self.statuses + u64::from(slot)) as *const u8) };
        self.blk.requests += 1;
        if status != S_OK {
            bail!(
                "{bdf}: bench {}: request type {} at sector {sector} completed with status {status}",
                op.name(),
                op.kind()
            );
        }
        Ok(slot as u16)
    }
}
