//! `chaos`: the probe as a hostile driver. Random reads and writes of
//! random widths (1, 2, 4 or 8 bytes; 1, 2 or 4 through ports) and
//! alignments over every memory BAR of the targeted functions (virtio
//! common config, notify, ISR, device config, MSI-X table and PBA among
//! them), their PCI configuration space through ECAM and through ports
//! 0xcf8/0xcfc, and the configuration space of every other slot and
//! function. Afterwards the bus is enumerated and its BARs assigned as at
//! boot, every virtio device is reset, and the ones the probe can talk to
//! must work again: echo round trips, and FUSE INIT and GETATTR.
//!
//! Now and then chaos acts like a driver that goes wrong rather than a
//! random one: a bring-up with random features, queue sizes, vectors and
//! ring addresses up to DRIVER_OK, so that devices are started, kicked and
//! reset under it; and it puts the BARs back where they were assigned,
//! since a BAR moved away takes every later BAR access with it.
//!
//! The VMM gets everything; the probe keeps only its own life, so that
//! the checks afterwards mean something. Ring addresses written into
//! common config point into an arena of plausible descriptors, so a device
//! that chaos happens to start reads and writes there and nowhere else;
//! MSI-X entries only ever hold fixed-delivery messages to vectors
//! 0xe0..=0xef (counted and acknowledged like any other); and
//! pci_cfg_data is read but never written, since that write would reach
//! the BAR where no sanitising can follow it.
//!
//! What a backend finds in those rings is its own business, not the
//! VMM's, which only passes their addresses on. With
//! `probe.chaos.rings=empty` the arena is zeros: the rings chaos starts
//! announce no requests. That is for backends that do not survive garbage
//! (virtiofsd 1.14 spins for ever on an available index past the queue
//! size once EVENT_IDX is on, and then answers no request), whose checks
//! afterwards would only report that.

use crate::io::{self, mmio};
use crate::pci::{self, Bdf, ConfigAccess, Function};
use crate::rt::{Failure, FixedString, Quoted};
use crate::tests::{bring_up, ensure_pci, virtio_devices};
use crate::virtio::Device;
use crate::{bail, fuse, record, Ctx};

/// Guest memory the rings chaos writes point into, filled with
/// descriptors that point back into it.
const ARENA: u64 = 512 << 10;
/// Rings and buffers start in the arena's first half; the largest ring of
/// 32768 entries (512 KiB of descriptors) could still run past its end,
/// but no device here offers queues that large.
const ARENA_SPAN: u64 = 256 << 10;
/// How often the arena is filled afresh: devices write used elements and
/// data over its descriptors.
const REFILL_EVERY: u64 = 4096;
/// The vectors chaos may program into MSI-X entries.
const CHAOS_VECTORS: u8 = 0xe0;
const COMMAND: u16 = 0x04;
/// Common config: queue_desc, queue_driver and queue_device.
const QUEUE_ADDRESSES: core::ops::Range<u64> = 32..56;
const CMD_MEMORY_MASTER: u16 = (1 << 1) | (1 << 2) | (1 << 10);
/// One op in this many puts the targets' BARs back.
const RESTORE_EVERY: u64 = 64;
const CFG_PCI: usize = 5;
const PCI_CFG_DATA: u16 = 16;
const FS_ID: u32 = 26;

/// splitmix64: small, and the same sequence for the same seed everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn percent(&mut self) -> u64 {
        self.below(100)
    }

    fn pick(&mut self, widths: &[u8]) -> u8 {
        widths[self.below(widths.len() as u64) as usize]
    }
}

#[derive(Default)]
struct Stats {
    bar_reads: u64,
    bar_writes: u64,
    config_reads: u64,
    config_writes: u64,
    port_accesses: u64,
    kicks: u64,
    /// Writes changed to keep the probe alive (ring addresses).
    steered: u64,
    /// Bring-ups to DRIVER_OK, and the accesses they made.
    bring_ups: u64,
    bring_up_accesses: u64,
    /// Times the BARs were put back.
    restores: u64,
}

struct Chaos<'a> {
    rng: Rng,
    access: ConfigAccess,
    targets: &'a [Function],
    /// Present functions chaos does not target: read, never written.
    spared: u32,
    arena: u64,
    stats: Stats,
}

/// Fills the arena with descriptors pointing into its first half, with
/// lengths that stay inside it and any flags and next index; or with
/// zeros (`empty`): rings that announce nothing.
fn fill_arena(arena: u64, rng: &mut Rng, empty: bool) {
    if empty {
        // SAFETY: arena..arena+ARENA is our DMA memory.
        unsafe { core::ptr::write_bytes(arena as *mut u8, 0, ARENA as usize) };
        return;
    }
    let mut at = 0;
    while at < ARENA {
        let addr = (arena + rng.below(ARENA_SPAN)) & !15;
        let len = rng.below(4096) as u32;
        let rest = rng.next();
        // SAFETY: arena..arena+ARENA is our DMA memory; 16-byte slots.
        unsafe {
            core::ptr::write_volatile((arena + at) as *mut u64, addr);
            core::ptr::write_volatile((arena + at + 8) as *mut u32, len);
            core::ptr::write_volatile((arena + at + 12) as *mut u32, rest as u32);
        }
        at += 16;
    }
}

/// Byte `p` (0..16) of an MSI-X entry chaos may write: to the local APIC
/// (any destination, mode and hint), fixed delivery, vector
/// 0xe0..=0xef, either mask; reserved control bits anything.
fn msix_byte(p: u64, rng: &mut Rng) -> u8 {
    let r = rng.next() as u8;
    match p {
        0 => r & 0x0c,
        1 => r & 0xf0,
        2 => 0xe0 | (r & 0x0f),
        3 => 0xfe,
        8 => CHAOS_VECTORS | (r & 0x0f),
        12 => r & 1,
        13..=15 => r,
        _ => 0,
    }
}

impl Chaos<'_> {
    /// One access (or, now and then, a bring-up or a restore); returns
    /// how many accesses it made.
    fn op(&mut self) -> u64 {
        let f = self.targets[self.rng.below(self.targets.len() as u64) as usize];
        if self.rng.below(RESTORE_EVERY) == 0 {
            self.restore_bars();
        }
        match self.rng.below(1000) {
            0..=439 => self.bar_access(&f),
            440..=689 => self.config_access(f.bdf, Some(&f), false),
            690..=789 => self.config_access(f.bdf, Some(&f), true),
            790..=909 => self.other_config_access(),
            910..=989 => self.kick(&f),
            _ => return self.bring_up(&f),
        }
        1
    }

    /// The targets' BARs back at their assigned addresses, decoding on.
    fn restore_bars(&mut self) {
        for f in self.targets {
            for (i, bar) in f.bars.iter().enumerate() {
                if bar.io || bar.size == 0 {
                    continue;
                }
                let reg = 0x10 + 4 * i as u16;
                self.access.write32(f.bdf, reg, bar.addr as u32);
                if bar.is64 {
                    self.access.write32(f.bdf, reg + 4, (bar.addr >> 32) as u32);
                }
            }
            self.access.write16(f.bdf, COMMAND, CMD_MEMORY_MASTER);
        }
        self.stats.restores += 1;
    }

    /// A driver that goes wrong: reset (or not), ACKNOWLEDGE, DRIVER, a
    /// random subset of the offered features, FEATURES_OK, then for each
    /// queue (or some) a random size no larger than offered, rings in the
    /// arena, a random vector, enable; DRIVER_OK; a few kicks. Returns the
    /// accesses made.
    fn bring_up(&mut self, f: &Function) -> u64 {
        let Some(common) = f.virtio[1] else {
            self.bar_access(f);
            return 1;
        };
        let base = f.bar_addr(common.bar);
        if base == 0 {
            return 0;
        }
        let c = base + u64::from(common.offset);
        let mut n = 0u64;
        let mut w = |at: u64, width: u8, value: u64| {
            mmio::write(c + at, width, value);
            n += 1;
        };
        if self.rng.percent() < 70 {
            w(20, 1, 0);
        }
        w(20, 1, 1);
        w(20, 1, 3);
        for word in 0..2u64 {
            w(0, 4, word);
            let offered = mmio::read32(c + 4);
            let mut keep = self.rng.next() as u32;
            if word == 1 && self.rng.percent() < 90 {
                keep |= 1; // VERSION_1
            }
            w(8, 4, word);
            w(12, 4, u64::from(offered & keep));
        }
        w(20, 1, 0x0b);
        let queues = mmio::read16(c + 18).min(16);
        for q in 0..queues {
            if self.rng.percent() < 20 {
                continue;
            }
            w(22, 2, u64::from(q));
            let max = mmio::read16(c + 24);
            if max == 0 {
                continue;
            }
            let size = 1u64 << self.rng.below(u64::from(max.ilog2()) + 1);
            w(24, 2, size);
            for field in [32, 40, 48] {
                let ring = (self.arena + self.rng.below(ARENA_SPAN)) & !15;
                w(field, 4, ring & 0xffff_ffff);
                w(field + 4, 4, ring >> 32);
            }
            let vector = match self.rng.below(4) {
                0 => 0xffff,
                _ => self.rng.below(u64::from(queues) + 2),
            };
            w(26, 2, vector);
            w(28, 2, 1);
        }
        w(20, 1, 0x0f);
        self.stats.bring_ups += 1;
        self.stats.bring_up_accesses += n;
        for _ in 0..self.rng.below(4) {
            self.kick(f);
            n += 1;
        }
        n
    }

    /// Somewhere in a memory BAR: mostly a virtio structure or the MSI-X
    /// table, else anywhere.
    fn bar_access(&mut self, f: &Function) {
        let region = match self.rng.below(7) {
            kind @ 0..=4 => f.virtio[kind as usize + 1]
                .map(|c| (c.bar, u64::from(c.offset), u64::from(c.length).max(4) + 8)),
            5 => f.msix.map(|m| {
                (
                    m.table_bar,
                    u64::from(m.table_offset),
                    u64::from(m.table_size) * 16,
                )
            }),
            _ => None,
        };
        let (bar, start, len) = match region {
            Some(r) => r,
            None => {
                let bars: [u8; 6] = [0, 1, 2, 3, 4, 5];
                let i = self.rng.pick(&bars);
                (i, 0, f.bars[usize::from(i)].size)
            }
        };
        let Some(b) = f
            .bars
            .get(usize::from(bar))
            .filter(|b| !b.io && b.size >= 8)
        else {
            return self.config_access(f.bdf, Some(f), false);
        };
        let width = self.rng.pick(&[1, 2, 4, 8]);
        let mut offset = start + self.rng.below(len);
        if self.rng.percent() < 70 {
            offset &= !(u64::from(width) - 1);
        }
        let offset = offset.min(b.size - u64::from(width));
        let addr = b.addr + offset;
        if self.rng.percent() < 40 {
            mmio::read(addr, width);
            self.stats.bar_reads += 1;
            return;
        }
        self.stats.bar_writes += 1;
        // A ring address: into the arena, as one whole field.
        if let Some(common) = f.virtio[1].filter(|c| c.bar == bar) {
            let base = u64::from(common.offset);
            let (lo, hi) = (base + QUEUE_ADDRESSES.start, base + QUEUE_ADDRESSES.end);
            if offset < hi && offset + u64::from(width) > lo {
                let field = lo + (offset.max(lo) - lo) / 8 * 8;
                let target = (self.arena + self.rng.below(ARENA_SPAN)) & !15;
                mmio::write32(b.addr + field, target as u32);
                mmio::write32(b.addr + field + 4, (target >> 32) as u32);
                self.stats.steered += 1;
                return;
            }
        }
        let mut value = self.rng.next().to_le_bytes();
        if let Some(m) = f.msix.filter(|m| m.table_bar == bar) {
            let table =
                u64::from(m.table_offset)..u64::from(m.table_offset) + u64::from(m.table_size) * 16;
            for (i, byte) in value.iter_mut().enumerate().take(usize::from(width)) {
                let at = offset + i as u64;
                if table.contains(&at) {
                    *byte = msix_byte((at - table.start) % 16, &mut self.rng);
                }
            }
        }
        mmio::write(addr, width, u64::from_le_bytes(value));
    }

    /// Whether writing `width` bytes at `offset` of `f`'s configuration
    /// space would touch pci_cfg_data.
    fn touches_pci_cfg_data(f: Option<&Function>, offset: u16, width: u16) -> bool {
        let Some(cap) = f.and_then(|f| f.virtio[CFG_PCI]) else {
            return false;
        };
        let data = cap.at + PCI_CFG_DATA;
        offset < data + 4 && offset + width > data
    }

    /// One access to `bdf`'s configuration space, through ECAM (or ports
    /// 0xcf8/0xcfc if `ports` or there is no ECAM). `f`: the function
    /// there, if chaos may write it.
    fn config_access(&mut self, bdf: Bdf, f: Option<&Function>, ports: bool) {
        let mut offset = if self.rng.percent() < 75 {
            self.rng.below(0x100)
        } else {
            self.rng.below(0x1000)
        } as u16;
        let ecam = match self.access {
            ConfigAccess::Ecam(base) if !ports => Some(base),
            _ => None,
        };
        let width = match ecam {
            Some(_) if self.rng.percent() < 5 => 8,
            _ => self.rng.pick(&[1, 2, 4]),
        };
        if self.rng.percent() < 70 {
            offset &= !(u16::from(width) - 1);
        }
        let offset = offset.min(0x1000 - u16::from(width));
        let write = self.rng.percent() < 55
            && !Self::touches_pci_cfg_data(f, offset, u16::from(width))
            && (f.is_some() || !self.is_spared(bdf));
        let value = self.rng.next();
        match ecam {
            Some(base) => {
                let addr = base
                    + (u64::from(bdf.bus) << 20)
                    + (u64::from(bdf.dev) << 15)
                    + (u64::from(bdf.func) << 12)
                    + u64::from(offset);
                if write {
                    mmio::write(addr, width, value);
                } else {
                    mmio::read(addr, width);
                }
            }
            None => {
                // Now and then a latch no well-behaved driver writes:
                // reserved bits, or disabled.
                let mut latch = 0x8000_0000
                    | (u32::from(bdf.bus) << 16)
                    | (u32::from(bdf.dev) << 11)
                    | (u32::from(bdf.func) << 8)
                    | u32::from(offset & 0xfc);
                if self.rng.percent() < 3 {
                    latch ^= (self.rng.next() as u32) & 0x7f00_0003;
                }
                io::outl(0xcf8, latch);
                let port = 0xcfc + (offset & 3);
                match (write, width) {
                    (true, 1) => io::outb(port, value as u8),
                    (true, 2) => io::outw(port, value as u16),
                    (true, _) => io::outl(port, value as u32),
                    (false, 1) => {
                        io::inb(port);
                    }
                    (false, 2) => {
                        io::inw(port);
                    }
                    (false, _) => {
                        io::inl(port);
                    }
                }
                self.stats.port_accesses += 2;
            }
        }
        if write {
            self.stats.config_writes += 1;
        } else {
            self.stats.config_reads += 1;
        }
    }

    fn is_spared(&self, bdf: Bdf) -> bool {
        bdf.bus == 0 && self.spared & (1 << bdf.dev) != 0
    }

    /// Any slot and function of bus 0, now and then bus 1: the host
    /// bridge, empty slots, absent functions, and (read only) the
    /// functions chaos spares.
    fn other_config_access(&mut self) {
        let bdf = Bdf {
            bus: if self.rng.percent() < 90 { 0 } else { 1 },
            dev: self.rng.below(32) as u8,
            func: if self.rng.percent() < 80 {
                0
            } else {
                self.rng.below(8) as u8
            },
        };
        let ports = self.rng.percent() < 30;
        let target = self.targets.iter().find(|f| f.bdf == bdf).copied();
        self.config_access(bdf, target.as_ref(), ports);
    }

    /// A notification for some queue, real or not.
    fn kick(&mut self, f: &Function) {
        let Some(notify) = f.virtio[2] else {
            return self.bar_access(f);
        };
        let queue = self.rng.below(18);
        let base = f.bar_addr(notify.bar);
        if base == 0 {
            return;
        }
        let at = u64::from(notify.offset) + queue * u64::from(notify.notify_multiplier);
        let size = f.bars[usize::from(notify.bar)].size;
        if at + 2 <= size {
            mmio::write16(base + at, queue as u16);
            self.stats.kicks += 1;
        }
    }
}

fn bdf_list(functions: &[Function]) -> FixedString<256> {
    let mut list = FixedString::<256>::new();
    for (i, f) in functions.iter().enumerate() {
        let sep = if i == 0 { "" } else { "," };
        let _ = core::fmt::Write::write_fmt(&mut list, format_args!("{sep}{}", f.bdf));
    }
    list
}

pub fn chaos_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let seed = ctx.args.chaos_seed;
    let ops = ctx.args.chaos_ops;
    let wanted = ctx.args.chaos_devices;
    let empty_rings = ctx.args.chaos_empty_rings;
    let bus = ensure_pci(ctx)?;
    let access = bus.access;
    let mut targets = [dummy(); pci::MAX_FUNCTIONS];
    let mut count = 0;
    let mut spared = 0u32;
    for f in bus.functions.iter().flatten() {
        if wanted == 0 || wanted & (1 << f.bdf.dev) != 0 {
            targets[count] = *f;
            count += 1;
        } else {
            spared |= 1 << f.bdf.dev;
        }
    }
    if count == 0 {
        bail!("probe.chaos.devices names no function on bus 0");
    }
    let targets = &targets[..count];
    let arena = ctx.dma.alloc(ARENA, 4096)?;
    let mut chaos = Chaos {
        rng: Rng(seed),
        access,
        targets,
        spared,
        arena,
        stats: Stats::default(),
    };
    let start = ctx.clock.now_us();
    let mut done = 0;
    let mut refill = 0;
    while done < ops {
        if done >= refill {
            fill_arena(arena, &mut chaos.rng, empty_rings);
            refill = done + REFILL_EVERY;
        }
        done += chaos.op();
    }
    let ms = (ctx.clock.now_us() - start) / 1000;
    let s = &chaos.stats;
    record!(
        "chaos ops={} seed={} targets={} rings={} ms={} bar_reads={} bar_writes={} config_reads={} config_writes={} port_accesses={} kicks={} steered={} bring_ups={} restores={}",
        done,
        seed,
        bdf_list(targets),
        if empty_rings { "empty" } else { "garbage" },
        ms,
        s.bar_reads,
        s.bar_writes,
        s.config_reads,
        s.config_writes,
        s.port_accesses,
        s.kicks,
        s.steered,
        s.bring_ups,
        s.restores
    );
    check_after(ctx)
}

/// A placeholder for the unused part of the target array.
fn dummy() -> Function {
    Function {
        bdf: Bdf {
            bus: 0,
            dev: 0,
            func: 0,
        },
        vendor: 0xffff,
        device: 0xffff,
        class: 0,
        bars: [pci::Bar::default(); 6],
        msix: None,
        virtio: [None; 6],
    }
}

/// The bus as at boot, every virtio device reset, and each one the probe
/// can talk to working.
fn check_after(ctx: &mut Ctx) -> Result<(), Failure> {
    // Decoding off everywhere first, so that assigning one function's
    // BARs never meets another's left where chaos put it.
    if let Some(bus) = ctx.pci.take() {
        for f in bus.functions.iter().flatten() {
            bus.access.write16(f.bdf, COMMAND, 0);
        }
    }
    let (functions, _) = virtio_devices(ctx)?;
    let mut failed: Option<Failure> = None;
    let mut checked = 0;
    for (slot, f) in functions.iter().flatten().enumerate() {
        let id = f.virtio_id();
        let mut dev = Device::new(*f, slot, ctx.args.virtio_mode)?;
        let outcome = dev.reset(&ctx.clock).and_then(|()| match id {
            FS_ID => fs_check(&mut dev, ctx),
            // Block and console devices: a reset is all this test asks.
            2 | 3 => Ok(()),
            _ => crate::generic::echo_device(*f, slot, ctx),
        });
        checked += 1;
        match outcome {
            Ok(()) => record!("chaos check {} id={} result=ok", f.bdf, id),
            Err(e) => {
                record!(
                    "chaos check {} id={} result=failed reason={}",
                    f.bdf,
                    id,
                    Quoted(e.as_str().as_bytes())
                );
                failed.get_or_insert(e);
            }
        }
    }
    record!(
        "chaos done checked={} failed={}",
        checked,
        u32::from(failed.is_some())
    );
    match failed {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// FUSE INIT and GETATTR of the root, in a session of their own.
fn fs_check(dev: &mut Device, ctx: &mut Ctx) -> Result<(), Failure> {
    bring_up(dev, ctx)?;
    let clock = &ctx.clock;
    let mut fs = fuse::Fuse::new(dev, 1, clock, &mut ctx.dma)?;
    fs.init()?;
    let root = fs.getattr(fuse::ROOT_ID)?;
    fs.destroy()?;
    record!(
        "chaos fs fuse={}.{} root_size={}",
        fs.major,
        fs.minor,
        root.size
    );
    dev.reset(&ctx.clock)
}
