//! The tests `probe.run=` chooses from. Each prints its records and
//! returns an error that becomes `result=fail reason=...`.

use crate::fuse::{self, Fuse};
use crate::pci::{self, Bars, ConfigAccess};
use crate::rt::{Failure, Hex, Quoted};
use crate::sha256::Sha256;
use crate::virtio::{self, Device};
use crate::{apic, bail, boot, io, record, Ctx};

pub fn run(name: &str, ctx: &mut Ctx) -> Result<(), Failure> {
    match name {
        "boot" => boot_test(ctx),
        "pci" => pci_test(ctx),
        "irq" => irq_test(ctx),
        "virtio" => virtio_test(ctx),
        "fs" => fs_test(ctx),
        "echo" => crate::generic::echo_test(ctx),
        "config" => crate::generic::config_test(ctx),
        "rng" => crate::generic::rng_test(ctx),
        "reconnect" => crate::generic::reconnect_test(ctx),
        "blk" => crate::blk::blk_test(ctx),
        "console" => crate::console::console_test(ctx),
        "chaos" => crate::chaos::chaos_test(ctx),
        "fail" => bail!("requested"),
        "spin" => {
            record!("spin");
            loop {
                io::pause();
            }
        }
        "tick" => tick_test(ctx),
        "rtc" => crate::rtc::rtc_test(ctx),
        other => bail!("unknown test {}", Quoted(other.as_bytes())),
    }
}

/// Where the ACPI event device's interrupt arrives.
const ACPI_EVENT_VECTOR: u8 = 0x30;
/// The status bit the DSDT's `_EVT` turns into a power-button press.
const ACPI_EVENT_POWER_BUTTON: u8 = 1;

/// Forever: a paused VM shows as ticks that stop, then go on. As an ACPI
/// event interrupt comes, the guest does what `_EVT` would: reads the
/// status byte and, for the power button, powers off as a guest's own
/// handler does.
fn tick_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let ged = ctx.platform.ged;
    if let Some(ged) = ged {
        apic::route_ioapic_pin(ged.gsi, ACPI_EVENT_VECTOR);
        record!("acpi-ged port=0x{:x} gsi={}", ged.port, ged.gsi);
    }
    let mut seen = boot::irq_count(ACPI_EVENT_VECTOR);
    let mut n: u64 = 0;
    loop {
        record!("tick {}", n);
        n += 1;
        ctx.clock.delay_us(ctx.args.tick_ms.saturating_mul(1000));
        let Some(ged) = ged else { continue };
        let count = boot::irq_count(ACPI_EVENT_VECTOR);
        if count == seen {
            continue;
        }
        seen = count;
        let status = io::inb(ged.port);
        record!("acpi-event status=0x{:x} interrupts={}", status, count);
        if status & ACPI_EVENT_POWER_BUTTON != 0 {
            record!("power-button");
            crate::platform::power_off(ctx.platform.sleep, &ctx.clock);
        }
    }
}

fn boot_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let p = &ctx.platform;
    let started = apic::start_aps(p.cpus - 1, &ctx.clock);
    let mut ecam = crate::rt::FixedString::<24>::new();
    match p.ecam {
        Some(e) => {
            let _ = core::fmt::Write::write_fmt(&mut ecam, format_args!("0x{e:x}"));
        }
        None => {
            let _ = core::fmt::Write::write_str(&mut ecam, "none");
        }
    }
    record!(
        "boot cmdline={} mem_bytes={} cpus={} cpus_started={} ecam={} rsdp=0x{:x} tsc_mhz={} poweroff={:?}",
        Quoted(p.cmdline.as_str().as_bytes()),
        p.mem_bytes,
        p.cpus,
        started,
        ecam,
        p.rsdp,
        ctx.clock.tsc_hz / 1_000_000,
        p.sleep
    );
    if started != p.cpus {
        bail!("{} of {} CPUs started", started, p.cpus);
    }
    Ok(())
}

pub fn ensure_pci(ctx: &mut Ctx) -> Result<&pci::Bus, Failure> {
    if ctx.pci.is_none() {
        let access = ctx
            .platform
            .ecam
            .map_or(ConfigAccess::Legacy, ConfigAccess::Ecam);
        let bus = pci::enumerate(access, ctx.args.pci_window, ctx.args.pci_keep_bars)?;
        for f in bus.functions.iter().flatten() {
            for bar in f.bars.iter().filter(|b| !b.io && b.size > 0) {
                if bar.addr.saturating_add(bar.size) > boot::MAPPED_END {
                    boot::map_mmio(bar.addr, bar.size, &mut ctx.dma)?;
                }
            }
        }
        ctx.pci = Some(bus);
    }
    match ctx.pci.as_ref() {
        Some(bus) => Ok(bus),
        None => bail!("PCI enumeration failed"),
    }
}

fn pci_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let bus = ensure_pci(ctx)?;
    let mut host_bridge = false;
    for f in bus.functions.iter().flatten() {
        host_bridge |= f.class >> 8 == 0x0600;
        let msix = f.msix.map_or(0, |m| m.table_size);
        record!(
            "pci {} vendor={:04x} device={:04x} class=0x{:06x} msix={} bars={}",
            f.bdf,
            f.vendor,
            f.device,
            f.class,
            msix,
            Bars(&f.bars)
        );
    }
    if !host_bridge {
        bail!("no PCI host bridge");
    }
    Ok(())
}

fn irq_test(ctx: &mut Ctx) -> Result<(), Failure> {
    const PERIOD_US: u32 = 1000;
    const WINDOW_MS: u64 = 50;
    let before = boot::irq_count(apic::TIMER_VECTOR);
    apic::start_periodic_timer(PERIOD_US);
    let start = ctx.clock.now_us();
    let deadline = ctx.clock.deadline_ms(WINDOW_MS);
    while !ctx.clock.expired(deadline) {
        io::hlt();
    }
    let elapsed_us = ctx.clock.now_us() - start;
    let count = boot::irq_count(apic::TIMER_VECTOR) - before;
    apic::start_periodic_timer(crate::WATCHDOG_PERIOD_US);
    let expected = elapsed_us / u64::from(PERIOD_US);
    let ok = count > 0 && u64::from(count) * 2 >= expected;
    record!(
        "irq lapic_timer={} count={} expected={}",
        if ok { "ok" } else { "bad" },
        count,
        expected
    );
    if !ok {
        bail!("LAPIC timer delivered {count} interrupts in {elapsed_us} us");
    }
    Ok(())
}

pub fn virtio_devices(
    ctx: &mut Ctx,
) -> Result<([Option<pci::Function>; pci::MAX_FUNCTIONS], usize), Failure> {
    let bus = ensure_pci(ctx)?;
    let mut out = [None; pci::MAX_FUNCTIONS];
    let mut n = 0;
    for f in bus.functions.iter().flatten().filter(|f| f.is_virtio()) {
        out[n] = Some(*f);
        n += 1;
    }
    Ok((out, n))
}

/// Negotiates, sets up every queue at its maximum size, DRIVER_OK.
pub fn bring_up(dev: &mut Device, ctx: &mut Ctx) -> Result<(), Failure> {
    dev.negotiate(ctx.args.virtio_features, &ctx.clock)?;
    let queues = usize::from(dev.num_queues).min(virtio::MAX_QUEUES) as u16;
    for q in 0..queues {
        dev.setup_queue(q, 0, &mut ctx.dma)?;
    }
    let Some(bus) = ctx.pci.as_ref() else {
        bail!("PCI not enumerated")
    };
    dev.driver_ok(bus)
}

fn virtio_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let (functions, n) = virtio_devices(ctx)?;
    if n == 0 {
        bail!("no virtio PCI function found");
    }
    for (slot, f) in functions.iter().flatten().enumerate() {
        let mut dev = Device::new(*f, slot, ctx.args.virtio_mode)?;
        bring_up(&mut dev, ctx)?;
        // Enough for every config layout the specification defines; QEMU's
        // window is a whole page, mostly reading as ones.
        let mut config = [0u8; 128];
        let len = (dev.config_len() as usize).min(config.len());
        dev.read_config(0, &mut config[..len])?;
        let status = dev.status();
        let features = dev.device_features;
        let pci_cfg = pci_cfg_check(ctx, f, dev.num_queues)?;
        dev.reset(&ctx.clock)?;
        bring_up(&mut dev, ctx)?;
        dev.reset(&ctx.clock)?;
        record!(
            "virtio {} id={} features=0x{:x} queues={} qsize={} config_len={} config={} status=0x{:02x} mode={} isr={} config_irqs={} pci_cfg={} reinit=ok",
            f.bdf,
            f.virtio_id(),
            features,
            dev.num_queues,
            dev.sizes(),
            dev.config_len(),
            Hex(&config[..len]),
            status,
            if dev.mode == virtio::Mode::Interrupt { "irq" } else { "poll" },
            if dev.isr != 0 { "yes" } else { "no" },
            dev.config_irqs(),
            if pci_cfg { "yes" } else { "no" }
        );
        if status & virtio::STATUS_NEEDS_RESET != 0 {
            bail!("{} needs reset after DRIVER_OK", f.bdf);
        }
    }
    Ok(())
}

/// Reads num_queues again through the VIRTIO_PCI_CAP_PCI_CFG window,
/// which every device must have; it must match what the BAR said. (Only
/// the common config: a config read here would be one more GET_CONFIG for
/// the backend, and fault schedules count those.) Returns whether the
/// device has the window.
fn pci_cfg_check(ctx: &Ctx, f: &pci::Function, num_queues: u16) -> Result<bool, Failure> {
    let (Some(window), Some(common), Some(bus)) = (f.virtio[5], f.virtio[1], ctx.pci.as_ref())
    else {
        return Ok(false);
    };
    let queues = pci::pci_cfg_read(
        bus.access,
        f.bdf,
        window.at,
        common.bar,
        common.offset + virtio::NUM_QUEUES as u32,
        2,
    );
    if queues != u32::from(num_queues) {
        bail!(
            "{}: num_queues is {num_queues} in the BAR but {queues} through PCI_CFG",
            f.bdf
        );
    }
    Ok(true)
}

const FS_ID: u32 = 26;
const TAG_LEN: usize = 36;

fn fs_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let (functions, _) = virtio_devices(ctx)?;
    let mut found = false;
    for (slot, f) in functions
        .iter()
        .flatten()
        .enumerate()
        .filter(|(_, f)| f.virtio_id() == FS_ID)
    {
        let mut dev = Device::new(*f, slot, ctx.args.virtio_mode)?;
        bring_up(&mut dev, ctx)?;
        let mut tag = [0u8; TAG_LEN];
        dev.read_config(0, &mut tag)?;
        let tag_len = tag.iter().position(|&b| b == 0).unwrap_or(TAG_LEN);
        let tag = &tag[..tag_len];
        if let Some(wanted) = ctx.args.fs_tag {
            if wanted.as_bytes() != tag {
                dev.reset(&ctx.clock)?;
                continue;
            }
        }
        found = true;
        fs_session(&mut dev, tag, ctx)?;
        dev.reset(&ctx.clock)?;
        if ctx.args.fs_tag.is_none() {
            break;
        }
    }
    if !found {
        match ctx.args.fs_tag {
            Some(t) => bail!("no virtio-fs device with tag {}", Quoted(t.as_bytes())),
            None => bail!("no virtio-fs device"),
        }
    }
    Ok(())
}

fn fs_session(dev: &mut Device, tag: &[u8], ctx: &mut Ctx) -> Result<(), Failure> {
    if dev.num_queues < 2 {
        bail!(
            "virtio-fs {} has {} queues; needs hiprio and a request queue",
            dev.f.bdf,
            dev.num_queues
        );
    }
    let bdf = dev.f.bdf;
    let args = &ctx.args;
    let clock = &ctx.clock;
    let mut fs = Fuse::new(dev, 1, clock, &mut ctx.dma)?;
    fs.init()?;
    let st = fs.statfs()?;
    record!(
        "fs {} tag={} fuse={}.{} max_read={} max_write={} bsize={} namelen={} blocks={} bfree={}",
        bdf,
        Quoted(tag),
        fs.major,
        fs.minor,
        fs.max_read,
        fs.max_write,
        st.bsize,
        st.namelen,
        st.blocks,
        st.bfree
    );
    for path in args.fs_read.iter() {
        fs_read(&mut fs, path)?;
    }
    for spec in args.fs_write.iter() {
        let Some((path, bytes)) = spec.rsplit_once(':') else {
            bail!(
                "probe.fs.write wants PATH:BYTES, got {}",
                Quoted(spec.as_bytes())
            )
        };
        let Ok(bytes) = bytes.parse::<u64>() else {
            bail!(
                "probe.fs.write: bad byte count in {}",
                Quoted(spec.as_bytes())
            )
        };
        fs_write(&mut fs, path, bytes)?;
    }
    for dir in args.fs_list.iter() {
        fs_list(&mut fs, dir)?;
    }
    if args.fs_ops {
        fs_ops(&mut fs)?;
    }
    if args.fs_bench {
        fs_bench(&mut fs, clock)?;
    }
    for path in args.fs_remove.iter() {
        let (parent, name) = split_parent(path);
        let dir = fs.resolve(parent.as_bytes())?;
        fs.unlink(dir.nodeid, name.as_bytes())?;
        let gone = fs.lookup(dir.nodeid, name.as_bytes())?.is_none();
        record!(
            "fs remove path={} gone={}",
            Quoted(path.as_bytes()),
            u8::from(gone)
        );
    }
    fs.destroy()?;
    let requests = fs.requests;
    record!(
        "fs {} done requests={} completions={} irqs={}",
        bdf,
        requests,
        dev.queues[1].as_ref().map_or(0, |q| q.completions),
        dev.queue_irqs(1)
    );
    Ok(())
}

fn split_parent(path: &str) -> (&str, &str) {
    let path = path.trim_end_matches('/');
    match path.rsplit_once('/') {
        Some((parent, name)) => (parent, name),
        None => ("", path),
    }
}

fn fs_read(fs: &mut Fuse<'_>, path: &str) -> Result<(), Failure> {
    let entry = fs.resolve(path.as_bytes())?;
    let fh = fs.open(entry.nodeid, fuse::O_RDONLY)?;
    let (size, digest) = read_all(fs, entry.nodeid, fh)?;
    fs.release(entry.nodeid, fh)?;
    record!(
        "fs read path={} size={} sha256={}",
        Quoted(path.as_bytes()),
        size,
        Hex(&digest)
    );
    if size != entry.attr.size {
        bail!(
            "read {size} bytes of {}, whose size is {}",
            Quoted(path.as_bytes()),
            entry.attr.size
        );
    }
    Ok(())
}

fn read_all(fs: &mut Fuse<'_>, nodeid: u64, fh: u64) -> Result<(u64, [u8; 32]), Failure> {
    let mut hash = Sha256::new();
    let mut offset = 0u64;
    loop {
        let n = fs.read(nodeid, fh, offset, fs.max_read)?;
        if n == 0 {
            break;
        }
        hash.update(fs.data_mut(n));
        offset += u64::from(n);
    }
    Ok((offset, hash.finish()))
}

/// Byte i of a written file is i % 251: a pattern that never lines up
/// with block sizes, so misplaced chunks show in the hash.
fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = ((offset + i as u64) % 251) as u8;
    }
}

fn fs_write(fs: &mut Fuse<'_>, path: &str, bytes: u64) -> Result<(), Failure> {
    let (parent, name) = split_parent(path);
    let dir = fs.resolve(parent.as_bytes())?;
    let (entry, fh) = fs.create(
        dir.nodeid,
        name.as_bytes(),
        fuse::O_WRONLY | fuse::O_CREAT | fuse::O_TRUNC,
        0o644,
    )?;
    let mut hash = Sha256::new();
    let mut offset = 0u64;
    while offset < bytes {
        let chunk = (bytes - offset).min(u64::from(fs.max_write)) as u32;
        let buf = fs.data_mut(chunk);
        fill_pattern(buf, offset);
        hash.update(buf);
        let written = fs.write(entry.nodeid, fh, offset, chunk)?;
        if written != chunk {
            bail!(
                "short write to {}: {written} of {chunk} bytes",
                Quoted(path.as_bytes())
            );
        }
        offset += u64::from(chunk);
    }
    let digest = hash.finish();
    fs.flush(entry.nodeid, fh)?;
    fs.fsync(entry.nodeid, fh)?;
    fs.release(entry.nodeid, fh)?;
    let size = fs.getattr(entry.nodeid)?.size;
    let fh = fs.open(entry.nodeid, fuse::O_RDONLY)?;
    let (read_back, read_digest) = read_all(fs, entry.nodeid, fh)?;
    fs.release(entry.nodeid, fh)?;
    let readback = if read_back == bytes && read_digest == digest {
        "ok"
    } else {
        "mismatch"
    };
    record!(
        "fs write path={} bytes={} sha256={} size={} readback={}",
        Quoted(path.as_bytes()),
        bytes,
        Hex(&digest),
        size,
        readback
    );
    if size != bytes || readback != "ok" {
        bail!(
            "{} reads back {read_back} bytes (size {size}), wrote {bytes}",
            Quoted(path.as_bytes())
        );
    }
    Ok(())
}

fn fs_list(fs: &mut Fuse<'_>, dir: &str) -> Result<(), Failure> {
    let entry = fs.resolve(dir.as_bytes())?;
    let fh = fs.opendir(entry.nodeid)?;
    let mut names = crate::rt::FixedString::<8192>::new();
    let mut count = 0u32;
    let mut offset = 0u64;
    loop {
        let n = fs.readdir(entry.nodeid, fh, offset, 65536)?;
        if n == 0 {
            break;
        }
        let mut last = offset;
        fuse::dirents(fs.data_mut(n), |name, next| {
            last = next;
            if name == b"." || name == b".." {
                return;
            }
            if count > 0 {
                let _ = core::fmt::Write::write_str(&mut names, "/");
            }
            count += 1;
            let _ =
                core::fmt::Write::write_str(&mut names, core::str::from_utf8(name).unwrap_or("?"));
        });
        if last == offset {
            break;
        }
        offset = last;
    }
    fs.releasedir(entry.nodeid, fh)?;
    record!(
        "fs list dir={} entries={} names={}",
        Quoted(dir.as_bytes()),
        count,
        Quoted(names.as_str().as_bytes())
    );
    Ok(())
}

/// The namespace operations, in a scratch directory that is gone again at
/// the end.
fn fs_ops(fs: &mut Fuse<'_>) -> Result<(), Failure> {
    const DIR: &[u8] = b".probe-scratch";
    if fs.lookup(fuse::ROOT_ID, DIR)?.is_some() {
        // Left over from an interrupted run.
        for name in [&b"a"[..], b"b"] {
            if let Some(d) = fs.lookup(fuse::ROOT_ID, DIR)? {
                let _ = fs.unlink(d.nodeid, name);
            }
        }
        fs.rmdir(fuse::ROOT_ID, DIR)?;
    }
    let dir = fs.mkdir(fuse::ROOT_ID, DIR, 0o755)?;
    let (file, fh) = fs.create(dir.nodeid, b"a", fuse::O_WRONLY | fuse::O_CREAT, 0o644)?;
    fs.data_mut(5).copy_from_slice(b"probe");
    if fs.write(file.nodeid, fh, 0, 5)? != 5 {
        bail!("short write in the scratch directory");
    }
    fs.release(file.nodeid, fh)?;
    fs.rename(dir.nodeid, b"a", dir.nodeid, b"b")?;
    let renamed = fs.lookup(dir.nodeid, b"b")?.map(|e| e.attr.size);
    let old_gone = fs.lookup(dir.nodeid, b"a")?.is_none();
    if renamed != Some(5) || !old_gone {
        bail!("rename a -> b: new size {renamed:?}, old gone {old_gone}");
    }
    fs.unlink(dir.nodeid, b"b")?;
    if fs.lookup(dir.nodeid, b"b")?.is_some() {
        bail!("unlink left the file behind");
    }
    fs.rmdir(fuse::ROOT_ID, DIR)?;
    record!("fs ops mkdir=ok create=ok write=ok rename=ok unlink=ok rmdir=ok");
    Ok(())
}

/// Times FUSE operations by the TSC, in a scratch directory that is gone
/// again at the end: GETATTR latency, file creation rate, and READ and
/// WRITE throughput with 4 KiB and 1 MiB requests (1 MiB capped by the
/// negotiated max_read/max_write).
fn fs_bench(fs: &mut Fuse<'_>, clock: &crate::Clock) -> Result<(), Failure> {
    const DIR: &[u8] = b".probe-bench";
    const GETATTRS: u64 = 2000;
    const CREATES: u32 = 200;
    const SMALL: u32 = 4096;
    const SMALL_OPS: u64 = 1024;
    const LARGE_TOTAL: u64 = 32 << 20;
    let ns = |cycles: u64| cycles as u128 * 1_000_000_000 / u128::from(clock.tsc_hz.max(1));
    // MB/s = bytes / 1e6 / (ns / 1e9) = bytes * 1000 / ns
    let mbps = |bytes: u64, cycles: u64| (u128::from(bytes) * 1000 / ns(cycles).max(1)) as u64;
    if let Some(old) = fs.lookup(fuse::ROOT_ID, DIR)? {
        for i in 0..CREATES {
            let _ = fs.unlink(old.nodeid, bench_name(i).as_str().as_bytes());
        }
        let _ = fs.unlink(old.nodeid, b"data");
        fs.rmdir(fuse::ROOT_ID, DIR)?;
    }
    let dir = fs.mkdir(fuse::ROOT_ID, DIR, 0o755)?;

    let start = io::rdtsc();
    for _ in 0..GETATTRS {
        fs.getattr(dir.nodeid)?;
    }
    let getattr_ns = ns(io::rdtsc() - start) / u128::from(GETATTRS);

    let start = io::rdtsc();
    for i in 0..CREATES {
        let (e, fh) = fs.create(
            dir.nodeid,
            bench_name(i).as_str().as_bytes(),
            fuse::O_WRONLY | fuse::O_CREAT,
            0o644,
        )?;
        fs.release(e.nodeid, fh)?;
    }
    let create_ns = ns(io::rdtsc() - start);
    let creates_per_s = u128::from(CREATES) * 1_000_000_000 / create_ns.max(1);

    let large = fs.max_write.min(fs.max_read).min(1 << 20);
    let (file, fh) = fs.create(dir.nodeid, b"data", fuse::O_RDWR | fuse::O_CREAT, 0o644)?;
    let timed_writes = |fs: &mut Fuse<'_>, size: u32, count: u64| -> Result<u64, Failure> {
        fill_pattern(fs.data_mut(size), 0);
        let start = io::rdtsc();
        for i in 0..count {
            if fs.write(file.nodeid, fh, i * u64::from(size), size)? != size {
                bail!("short write in the benchmark");
            }
        }
        Ok(io::rdtsc() - start)
    };
    let timed_reads = |fs: &mut Fuse<'_>, size: u32, count: u64| -> Result<u64, Failure> {
        let start = io::rdtsc();
        for i in 0..count {
            if fs.read(file.nodeid, fh, i * u64::from(size), size)? != size {
                bail!("short read in the benchmark");
            }
        }
        Ok(io::rdtsc() - start)
    };
    let large_ops = LARGE_TOTAL / u64::from(large);
    let w_small = timed_writes(fs, SMALL, SMALL_OPS)?;
    let w_large = timed_writes(fs, large, large_ops)?;
    let r_small = timed_reads(fs, SMALL, SMALL_OPS)?;
    let r_large = timed_reads(fs, large, large_ops)?;
    fs.release(file.nodeid, fh)?;

    fs.unlink(dir.nodeid, b"data")?;
    for i in 0..CREATES {
        fs.unlink(dir.nodeid, bench_name(i).as_str().as_bytes())?;
    }
    fs.rmdir(fuse::ROOT_ID, DIR)?;
    record!(
        "fs bench getattr_ns={} creates_per_s={} write_4k_mbps={} write_large_mbps={} read_4k_mbps={} read_large_mbps={} large_bytes={}",
        getattr_ns,
        creates_per_s,
        mbps(SMALL_OPS * u64::from(SMALL), w_small),
        mbps(large_ops * u64::from(large), w_large),
        mbps(SMALL_OPS * u64::from(SMALL), r_small),
        mbps(large_ops * u64::from(large), r_large),
        large
    );
    Ok(())
}

fn bench_name(i: u32) -> crate::rt::FixedString<16> {
    let mut name = crate::rt::FixedString::<16>::new();
    let _ = core::fmt::Write::write_fmt(&mut name, format_args!("f{i}"));
    name
}
