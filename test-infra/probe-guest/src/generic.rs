//! Tests for devices the probe knows nothing about beyond virtio itself:
//! the echo round trip (what goes out on queue 0 comes back reversed on
//! queue 1, as the vhost-user-mock backend does) and the config window as
//! the guest sees it, faults included.

use crate::rt::{Failure, Hex, Quoted};
use crate::tests::{bring_up, virtio_devices};
use crate::virtio::{self, Device};
use crate::{bail, io, record, Ctx};

const FS_ID: u32 = 26;
/// Enough for every config layout the specification defines.
const CONFIG_MAX: usize = 128;
/// Resets tried, 100 ms apart, before a device counts as gone for good.
const RECOVER_ATTEMPTS: u32 = 50;

/// Byte `i` of round `round`'s message: changes with both, so a stale or
/// misplaced buffer shows.
fn pattern(round: u32, i: usize) -> u8 {
    (round as usize * 31 + i * 7 + 1) as u8
}

struct Buffers {
    out: u64,
    back: u64,
    len: u32,
}

impl Buffers {
    fn out(&mut self) -> &mut [u8] {
        // SAFETY: `out` is `len` bytes of our DMA memory, identity-mapped;
        // nothing else borrows it while a round runs.
        unsafe { core::slice::from_raw_parts_mut(self.out as *mut u8, self.len as usize) }
    }
    fn back(&mut self) -> &mut [u8] {
        // SAFETY: as above, for `back`.
        unsafe { core::slice::from_raw_parts_mut(self.back as *mut u8, self.len as usize) }
    }
}

/// One round trip; returns its time in TSC cycles.
fn round(dev: &mut Device, bufs: &mut Buffers, round: u32, ctx: &Ctx) -> Result<u64, Failure> {
    for (i, b) in bufs.out().iter_mut().enumerate() {
        *b = pattern(round, i);
    }
    bufs.back().fill(0);
    let timeout = ctx.args.echo_timeout_ms;
    let start = io::rdtsc();
    dev.submit(1, &[(bufs.back, bufs.len, true)])?;
    dev.submit(0, &[(bufs.out, bufs.len, false)])?;
    let written = dev.wait_used(1, &ctx.clock, timeout)?;
    let cycles = io::rdtsc() - start;
    dev.wait_used(0, &ctx.clock, timeout)?;
    if written != bufs.len {
        bail!(
            "{} round {round}: {written} bytes came back, {} went out",
            dev.f.bdf,
            bufs.len
        );
    }
    let n = bufs.len as usize;
    let back = bufs.back();
    if let Some(i) = (0..n).find(|&i| back[i] != pattern(round, n - 1 - i)) {
        bail!(
            "{} round {round}: byte {i} came back 0x{:02x}, not 0x{:02x}",
            dev.f.bdf,
            back[i],
            pattern(round, n - 1 - i)
        );
    }
    Ok(cycles)
}

/// Resets and sets the device up again until it works or `attempts` run
/// out; a backend coming back needs a moment, so attempts are spaced.
fn recover(dev: &mut Device, ctx: &mut Ctx, attempts: u32) -> Result<u32, Failure> {
    let mut tried = 0;
    loop {
        tried += 1;
        let outcome = dev.reset(&ctx.clock).and_then(|()| bring_up(dev, ctx));
        match outcome {
            Ok(()) => return Ok(tried),
            Err(e) if tried >= attempts => return Err(e),
            Err(_) => ctx.clock.delay_us(100_000),
        }
    }
}

/// Every echo device in turn; a device that fails is reported and the
/// others still run, so a test sees that one failure stays contained.
pub fn echo_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let (functions, _) = virtio_devices(ctx)?;
    let wanted = ctx.args.echo_id;
    let mut found = 0;
    let mut failed = None;
    for (slot, f) in functions.iter().flatten().enumerate() {
        let id = f.virtio_id();
        if wanted.map_or(id == FS_ID, |w| w != id) {
            continue;
        }
        found += 1;
        if let Err(e) = echo_device(*f, slot, ctx) {
            record!(
                "echo {} id={} failed reason={}",
                f.bdf,
                id,
                Quoted(e.as_str().as_bytes())
            );
            failed.get_or_insert(e);
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    if found == 0 {
        bail!("no virtio device to echo with");
    }
    Ok(())
}

pub fn echo_device(f: crate::pci::Function, slot: usize, ctx: &mut Ctx) -> Result<(), Failure> {
    let mut dev = Device::new(f, slot, ctx.args.virtio_mode)?;
    let mut recoveries = 0u32;
    if let Err(e) = bring_up(&mut dev, ctx) {
        if ctx.args.echo_recover == 0 {
            return Err(e);
        }
        recoveries += 1;
        record!(
            "echo {} recover round=setup status=0x{:02x} reason={}",
            f.bdf,
            dev.status(),
            Quoted(e.as_str().as_bytes())
        );
        let attempts = recover(&mut dev, ctx, RECOVER_ATTEMPTS)?;
        record!("echo {} recovered attempts={}", f.bdf, attempts);
    }
    if dev.num_queues < 2 {
        bail!("{} has {} queues; echo needs 2", f.bdf, dev.num_queues);
    }
    let len = ctx.args.echo_bytes;
    let mut bufs = Buffers {
        out: ctx.dma.alloc(u64::from(len), 64)?,
        back: ctx.dma.alloc(u64::from(len), 64)?,
        len,
    };
    let rounds = ctx.args.echo_rounds;
    let (mut min, mut max, mut total) = (u64::MAX, 0u64, 0u64);
    let mut r = 0;
    while r < rounds {
        match round(&mut dev, &mut bufs, r, ctx) {
            Ok(cycles) => {
                min = min.min(cycles);
                max = max.max(cycles);
                total += cycles;
                r += 1;
            }
            Err(e) if recoveries < ctx.args.echo_recover => {
                recoveries += 1;
                record!(
                    "echo {} recover round={} status=0x{:02x} config_irqs={} reason={}",
                    f.bdf,
                    r,
                    dev.status(),
                    dev.config_irqs(),
                    Quoted(e.as_str().as_bytes())
                );
                let attempts = recover(&mut dev, ctx, RECOVER_ATTEMPTS)?;
                record!("echo {} recovered attempts={}", f.bdf, attempts);
            }
            Err(e) => return Err(e),
        }
    }
    let ns = |cycles: u64| {
        (u128::from(cycles) * 1_000_000_000 / u128::from(ctx.clock.tsc_hz.max(1))) as u64
    };
    let avg = total.checked_div(u64::from(rounds)).unwrap_or(0);
    record!(
        "echo {} id={} rounds={} bytes={} checked={} recoveries={} queue_irqs={} rtt_ns_min={} rtt_ns_avg={} rtt_ns_max={}",
        f.bdf,
        f.virtio_id(),
        rounds,
        len,
        u64::from(rounds) * u64::from(len),
        recoveries,
        dev.queue_irqs(1),
        if rounds > 0 { ns(min) } else { 0 },
        ns(avg),
        ns(max)
    );
    dev.reset(&ctx.clock)
}

/// `OFFSET:HEX` from `probe.config.write`.
fn parse_write(spec: &str, out: &mut [u8]) -> Option<(u32, usize)> {
    let (offset, hex) = spec.split_once(':')?;
    let offset = offset.parse().ok()?;
    if hex.len() % 2 != 0 || hex.len() / 2 > out.len() {
        return None;
    }
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let s = core::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some((offset, hex.len() / 2))
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

/// Reads the window (and 4 bytes past it), reporting what came back and
/// whether the device asked for a reset; writes if asked; and after a
/// reset request, resets and reads once more.
pub fn config_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let (functions, n) = virtio_devices(ctx)?;
    if n == 0 {
        bail!("no virtio PCI function found");
    }
    for (slot, f) in functions.iter().flatten().enumerate() {
        let mut dev = Device::new(*f, slot, ctx.args.virtio_mode)?;
        bring_up(&mut dev, ctx)?;
        let mut config = [0u8; CONFIG_MAX];
        let len = (dev.config_len() as usize).min(CONFIG_MAX);
        dev.read_config(0, &mut config[..len])?;
        // Past the window, where a device must not be asked (there is
        // nothing to read without a window at all).
        let mut beyond = [0u8; 4];
        let beyond_len = if dev.config_len() > 0 { 4 } else { 0 };
        dev.read_config(dev.config_len(), &mut beyond[..beyond_len])?;
        let status = dev.status();
        record!(
            "config {} id={} len={} bytes={} beyond={} status=0x{:02x} needs_reset={} config_irqs={}",
            f.bdf,
            f.virtio_id(),
            dev.config_len(),
            Hex(&config[..len]),
            Hex(&beyond[..beyond_len]),
            status,
            yes(status & virtio::STATUS_NEEDS_RESET != 0),
            dev.config_irqs()
        );
        if let Some(spec) = ctx.args.config_write {
            let mut bytes = [0u8; CONFIG_MAX];
            let Some((offset, n)) = parse_write(spec, &mut bytes) else {
                bail!(
                    "probe.config.write wants OFFSET:HEX, got {}",
                    Quoted(spec.as_bytes())
                );
            };
            let generation = dev.config_generation();
            dev.write_config(offset, &bytes[..n])?;
            let mut back = [0u8; CONFIG_MAX];
            dev.read_config(offset, &mut back[..n])?;
            let status = dev.status();
            record!(
                "config {} write offset={} bytes={} readback={} generation_changed={} status=0x{:02x} needs_reset={}",
                f.bdf,
                offset,
                Hex(&bytes[..n]),
                Hex(&back[..n]),
                yes(dev.config_generation() != generation),
                status,
                yes(status & virtio::STATUS_NEEDS_RESET != 0)
            );
        }
        if dev.status() & virtio::STATUS_NEEDS_RESET != 0 {
            dev.reset(&ctx.clock)?;
            bring_up(&mut dev, ctx)?;
            dev.read_config(0, &mut config[..len])?;
            let status = dev.status();
            record!(
                "config {} after_reset bytes={} status=0x{:02x} needs_reset={}",
                f.bdf,
                Hex(&config[..len]),
                status,
                yes(status & virtio::STATUS_NEEDS_RESET != 0)
            );
        }
        dev.reset(&ctx.clock)?;
    }
    Ok(())
}

const RNG_ID: u32 = 4;
const RNG_ROUNDS: u32 = 16;
const RNG_BYTES: u32 = 64;

/// For every virtio-rng device: 16 device-writable buffers of 64 bytes;
/// reports how many bytes came back and how many distinct byte values
/// they held (random bytes use most of them; a stuck device few).
pub fn rng_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let (functions, _) = virtio_devices(ctx)?;
    let mut found = false;
    for (slot, f) in functions.iter().flatten().enumerate() {
        if f.virtio_id() != RNG_ID {
            continue;
        }
        found = true;
        let mut dev = Device::new(*f, slot, ctx.args.virtio_mode)?;
        bring_up(&mut dev, ctx)?;
        let buf = ctx.dma.alloc(u64::from(RNG_BYTES), 64)?;
        let mut seen = [false; 256];
        let mut total = 0u64;
        for _ in 0..RNG_ROUNDS {
            // SAFETY: `buf` is RNG_BYTES bytes of our DMA memory.
            unsafe { core::ptr::write_bytes(buf as *mut u8, 0, RNG_BYTES as usize) };
            dev.submit(0, &[(buf, RNG_BYTES, true)])?;
            let n = dev.wait_used(0, &ctx.clock, ctx.args.echo_timeout_ms)?;
            if n > RNG_BYTES {
                bail!("{} wrote {n} bytes into a {RNG_BYTES}-byte buffer", f.bdf);
            }
            // SAFETY: as above; the device has finished with the buffer.
            let bytes = unsafe { core::slice::from_raw_parts(buf as *const u8, n as usize) };
            for &b in bytes {
                seen[usize::from(b)] = true;
            }
            total += u64::from(n);
        }
        let distinct = seen.iter().filter(|&&s| s).count();
        record!(
            "rng {} requests={} bytes={} distinct={}",
            f.bdf,
            RNG_ROUNDS,
            total,
            distinct
        );
        dev.reset(&ctx.clock)?;
        if total == 0 {
            bail!("{} returned no random bytes", f.bdf);
        }
    }
    if !found {
        bail!("no virtio-rng device");
    }
    Ok(())
}

/// For every virtio device: bring-up, `probe: reconnect BDF ready`, then
/// wait for the device to ask for a reset, as it must when the host stops
/// its backend; then reset it and bring it up again, as a driver does,
/// until the VMM has reconnected to the backend started in its place.
const RECONNECT_ATTEMPTS: u32 = 10;

pub fn reconnect_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let (functions, n) = virtio_devices(ctx)?;
    if n == 0 {
        bail!("no virtio device");
    }
    for (slot, f) in functions.iter().flatten().enumerate() {
        let mut dev = Device::new(*f, slot, ctx.args.virtio_mode)?;
        bring_up(&mut dev, ctx)?;
        record!("reconnect {} ready", f.bdf);
        let start = ctx.clock.now_us();
        let timeout = ctx.args.reconnect_timeout_ms;
        let deadline = ctx.clock.deadline_ms(timeout);
        // One status read per watchdog tick (10 ms) or interrupt.
        while dev.status() & virtio::STATUS_NEEDS_RESET == 0 {
            if ctx.clock.expired(deadline) {
                bail!("{}: no DEVICE_NEEDS_RESET within {timeout} ms", f.bdf);
            }
            io::hlt();
        }
        let waited_ms = (ctx.clock.now_us() - start) / 1000;
        // Each try can cost the VMM's wait for the socket (5 s for vmm).
        let attempts = recover(&mut dev, ctx, RECONNECT_ATTEMPTS)?;
        record!(
            "reconnect {} needs_reset=yes waited_ms={} attempts={} status=0x{:02x}",
            f.bdf,
            waited_ms,
            attempts,
            dev.status()
        );
        dev.reset(&ctx.clock)?;
    }
    Ok(())
}
