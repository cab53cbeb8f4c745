//! virtio-console (VIRTIO 1.3 5.3), port 0 only: MULTIPORT is never
//! negotiated, so receiveq0 is queue 0 and transmitq0 queue 1. Reports the
//! config fields the negotiated features define, writes through `emerg_wr`
//! when asked, transmits text and a deterministic pattern in chains of
//! several descriptors, then waits for the input the host sends.

use crate::pci::Function;
use crate::rt::{Failure, Hex};
use crate::sha256::Sha256;
use crate::tests::virtio_devices;
use crate::virtio::Device;
use crate::{bail, record, Ctx};

const CONSOLE_ID: u32 = 3;

// Feature bits (5.3.3).
const F_SIZE: u64 = 1 << 0;
const F_MULTIPORT: u64 = 1 << 1;
const F_EMERG_WRITE: u64 = 1 << 2;

const RECEIVEQ: u16 = 0;
const TRANSMITQ: u16 = 1;
/// `emerg_wr` in the config (5.3.4).
const EMERG_WR: u32 = 8;

/// A transmit chain is up to TX_DESCS descriptors of TX_SEG bytes: no
/// power of two, so a dropped or repeated piece shows in the output.
const TX_SEG: u32 = 500;
const TX_DESCS: usize = 4;
/// A receive chain is two device-writable descriptors of unequal size.
const RX_SEGS: [u32; 2] = [64, 192];
/// Buffers sit this far apart, so a chain is never one contiguous range.
const STRIDE: u64 = 1024;
/// The longest line the terminator check looks at.
const MAX_LINE: usize = 128;

/// Byte `i` of the transmitted pattern: lines of 63 printable characters
/// and a newline, each line shifted, so it survives any text channel and
/// a misplaced piece shows.
fn pattern(i: u64) -> u8 {
    if i % 64 == 63 {
        b'\n'
    } else {
        b'!' + ((i % 64 + 3 * (i / 64)) % 94) as u8
    }
}

pub fn console_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let (functions, _) = virtio_devices(ctx)?;
    let Some((slot, f)) = functions
        .iter()
        .flatten()
        .enumerate()
        .find(|(_, f)| f.virtio_id() == CONSOLE_ID)
    else {
        bail!("no virtio-console device");
    };
    let mut dev = bring_up(*f, slot, ctx)?;
    report_config(&dev)?;
    if ctx.args.console_resize {
        wait_for_resize(&dev, ctx)?;
    }
    if let Some(text) = ctx.args.console_emerg {
        emergency_write(&dev, text.as_bytes())?;
    }
    transmit(&mut dev, ctx)?;
    let received = if ctx.args.console_rx_bytes > 0 || ctx.args.console_rx_end.is_some() {
        receive(&mut dev, ctx)
    } else {
        Ok(())
    };
    dev.reset(&ctx.clock)?;
    received
}

fn bring_up(f: Function, slot: usize, ctx: &mut Ctx) -> Result<Device, Failure> {
    let mut dev = Device::new(f, slot, ctx.args.virtio_mode)?;
    // Port 0 alone: with MULTIPORT the driver would owe the device the
    // control-queue handshake before any data flows.
    let wanted = (F_SIZE | F_EMERG_WRITE | ctx.args.virtio_features) & !F_MULTIPORT;
    dev.negotiate(wanted, &ctx.clock)?;
    if dev.num_queues < 2 {
        bail!(
            "{} has {} queues; port 0 needs receiveq0 and transmitq0",
            f.bdf,
            dev.num_queues
        );
    }
    // Only port 0's queues: the others belong to MULTIPORT.
    dev.setup_queue(RECEIVEQ, 0, &mut ctx.dma)?;
    dev.setup_queue(TRANSMITQ, 0, &mut ctx.dma)?;
    let Some(bus) = ctx.pci.as_ref() else {
        bail!("PCI not enumerated")
    };
    dev.driver_ok(bus)?;
    Ok(dev)
}

/// `console config`: which of SIZE, MULTIPORT and EMERG_WRITE the device
/// offers, what was negotiated, and cols/rows only under SIZE.
fn report_config(dev: &Device) -> Result<(), Failure> {
    let offered = |bit: u64| u8::from(dev.device_features & bit != 0);
    let mut size = crate::rt::FixedString::<32>::new();
    if dev.driver_features & F_SIZE != 0 {
        let mut b = [0u8; 4];
        dev.read_config(0, &mut b)?;
        let _ = core::fmt::Write::write_fmt(
            &mut size,
            format_args!(
                " cols={} rows={}",
                u16::from_le_bytes([b[0], b[1]]),
                u16::from_le_bytes([b[2], b[3]])
            ),
        );
    }
    record!(
        "console config {} offered=0x{:x} features=0x{:x} vqs={} f_size={} f_multiport={} f_emerg_write={}{}",
        dev.f.bdf,
        dev.device_features,
        dev.driver_features,
        dev.num_queues,
        offered(F_SIZE),
        offered(F_MULTIPORT),
        offered(F_EMERG_WRITE),
        size
    );
    Ok(())
}

/// `console resize-wait`, then `console resize` once the device announces
/// a config change (a config interrupt, config_generation moved) that
/// brings a new size: the new cols and rows, and what announced it. An
/// announcement of the size it already had (vmm makes one after
/// DRIVER_OK, for Linux) is waited past.
fn wait_for_resize(dev: &Device, ctx: &Ctx) -> Result<(), Failure> {
    let bdf = dev.f.bdf;
    let size = || -> Result<(u16, u16), Failure> {
        let mut b = [0u8; 4];
        dev.read_config(0, &mut b)?;
        Ok((
            u16::from_le_bytes([b[0], b[1]]),
            u16::from_le_bytes([b[2], b[3]]),
        ))
    };
    let old = size()?;
    let generation = dev.config_generation();
    let irqs = dev.config_irqs();
    record!("console resize-wait {bdf} generation={generation} config_irqs={irqs}");
    let deadline = ctx.clock.deadline_ms(ctx.args.console_timeout_ms);
    let (mut seen_generation, mut seen_irqs) = (generation, irqs);
    // The generation is an MMIO read (an exit); the interrupt count is
    // memory: look at the generation once a millisecond.
    let mut next_look = 0;
    let new = loop {
        let mut changed = dev.config_irqs() != seen_irqs;
        if !changed && ctx.clock.expired(next_look) {
            changed = dev.config_generation() != seen_generation;
            next_look = ctx.clock.deadline_ms(1);
        }
        if changed {
            seen_irqs = dev.config_irqs();
            seen_generation = dev.config_generation();
            let now = size()?;
            if now != old {
                break now;
            }
        }
        if ctx.clock.expired(deadline) {
            bail!(
                "{bdf}: no new size within {} ms",
                ctx.args.console_timeout_ms
            );
        }
        crate::io::pause();
    };
    record!(
        "console resize {bdf} cols={} rows={} generation_moved={} config_irqs={}",
        new.0,
        new.1,
        u8::from(dev.config_generation() != generation),
        dev.config_irqs() - irqs
    );
    Ok(())
}

/// `console emerg`: `text` and a newline through `emerg_wr`, one 32-bit
/// write per byte.
fn emergency_write(dev: &Device, text: &[u8]) -> Result<(), Failure> {
    if dev.driver_features & F_EMERG_WRITE == 0 {
        record!("console emerg {} negotiated=0", dev.f.bdf);
        bail!("{}: EMERG_WRITE is not offered", dev.f.bdf);
    }
    for &b in text.iter().chain(b"\n") {
        dev.write_config32(EMERG_WR, u32::from(b))?;
    }
    record!("console emerg {} bytes={}", dev.f.bdf, text.len() + 1);
    Ok(())
}

/// `console tx`: the text from `probe.console.tx` and a newline, then
/// `probe.console.tx_bytes` of the pattern, in chains of up to TX_DESCS
/// descriptors, one chain in flight.
fn transmit(dev: &mut Device, ctx: &mut Ctx) -> Result<(), Failure> {
    let text = ctx.args.console_tx.map(str::as_bytes);
    let text_len = text.map_or(0, |t| t.len() as u64 + 1);
    let total = text_len + u64::from(ctx.args.console_tx_bytes);
    let byte = |k: u64| match text {
        Some(t) if k < text_len => t.get(k as usize).copied().unwrap_or(b'\n'),
        _ => pattern(k - text_len),
    };
    let buffers = ctx.dma.alloc(STRIDE * TX_DESCS as u64, 4096)?;
    let mut hash = Sha256::new();
    let (mut sent, mut chains, mut descriptors, mut used_len) = (0u64, 0u32, 0u32, 0u64);
    while sent < total {
        let mut chain = [(0u64, 0u32, false); TX_DESCS];
        let mut n = 0;
        while n < TX_DESCS && sent < total {
            let len = (total - sent).min(u64::from(TX_SEG)) as u32;
            let addr = buffers + n as u64 * STRIDE;
            // SAFETY: `addr` is TX_SEG bytes of our DMA memory, which the
            // device does not hold (no chain of this queue is in flight).
            let piece = unsafe { core::slice::from_raw_parts_mut(addr as *mut u8, len as usize) };
            for (i, b) in piece.iter_mut().enumerate() {
                *b = byte(sent + i as u64);
            }
            hash.update(piece);
            chain[n] = (addr, len, false);
            sent += u64::from(len);
            n += 1;
        }
        dev.submit(TRANSMITQ, &chain[..n])?;
        used_len += u64::from(dev.wait_used(TRANSMITQ, &ctx.clock, ctx.args.console_timeout_ms)?);
        chains += 1;
        descriptors += n as u32;
    }
    record!(
        "console tx {} bytes={} chains={} descriptors={} used_len={} sha256={}",
        dev.f.bdf,
        total,
        chains,
        descriptors,
        used_len,
        Hex(&hash.finish())
    );
    Ok(())
}

/// The line being received, for the terminator check.
struct Line {
    bytes: [u8; MAX_LINE],
    len: usize,
    too_long: bool,
}

impl Line {
    /// Takes one byte; true when it ends a line that is just `end`.
    fn push(&mut self, b: u8, end: &[u8]) -> bool {
        if b != b'\n' {
            if self.len < MAX_LINE {
                self.bytes[self.len] = b;
                self.len += 1;
            } else {
                self.too_long = true;
            }
            return false;
        }
        let line = &self.bytes[..self.len];
        // A terminal may have turned the newline into CR LF.
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let matched = !self.too_long && line == end;
        self.len = 0;
        self.too_long = false;
        matched
    }
}

/// `console ready` once a receive chain is posted, then input until
/// `probe.console.rx_bytes` bytes or a line holding `probe.console.rx_end`
/// arrived, or `probe.console.timeout_ms` passed: `console rx`.
fn receive(dev: &mut Device, ctx: &mut Ctx) -> Result<(), Failure> {
    let bdf = dev.f.bdf;
    let want = u64::from(ctx.args.console_rx_bytes);
    let end = ctx.args.console_rx_end.map(str::as_bytes);
    let buffers = ctx.dma.alloc(STRIDE * RX_SEGS.len() as u64, 4096)?;
    let chain = [
        (buffers, RX_SEGS[0], true),
        (buffers + STRIDE, RX_SEGS[1], true),
    ];
    let mut hash = Sha256::new();
    let mut line = Line {
        bytes: [0; MAX_LINE],
        len: 0,
        too_long: false,
    };
    let (mut received, mut chains) = (0u64, 0u32);
    dev.submit(RECEIVEQ, &chain)?;
    record!("console ready {bdf}");
    let deadline = ctx.clock.deadline_ms(ctx.args.console_timeout_ms);
    let outcome = loop {
        let Some(written) = dev.wait_used_until(RECEIVEQ, &ctx.clock, deadline)? else {
            break "timeout";
        };
        chains += 1;
        let mut left = written;
        let mut matched = false;
        for &(addr, len, _) in &chain {
            let n = left.min(len);
            // SAFETY: the device has used the chain, so these `n` bytes of
            // our DMA memory are its input and no longer its to write.
            let bytes = unsafe { core::slice::from_raw_parts(addr as *const u8, n as usize) };
            hash.update(bytes);
            for &b in bytes {
                matched |= end.is_some_and(|e| line.push(b, e));
            }
            left -= n;
        }
        received += u64::from(written - left);
        if matched {
            break "line";
        }
        if want > 0 && received >= want {
            break "bytes";
        }
        dev.submit(RECEIVEQ, &chain)?;
    };
    record!(
        "console rx {bdf} bytes={received} chains={chains} end={outcome} sha256={}",
        Hex(&hash.finish())
    );
    if outcome == "timeout" {
        bail!(
            "{bdf}: {received} bytes of input within {} ms",
            ctx.args.console_timeout_ms
        );
    }
    Ok(())
}
