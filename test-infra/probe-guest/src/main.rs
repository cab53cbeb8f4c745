//! The probe guest: boots by PVH, does a tiny ring-0 bootstrap (boot.rs),
//! then runs every test in ring 3 and reports what it saw on COM1, one
//! `probe: ` record per line. See test-infra/README.md for the interface.

#![no_std]
#![no_main]
// A Failure carries its message inline (there is no allocator) and only
// ever ends a test, so its size costs nothing that matters.
#![allow(clippy::result_large_err)]

mod apic;
mod blk;
mod boot;
mod chaos;
mod cmdline;
mod console;
mod fuse;
mod generic;
mod io;
mod pci;
mod platform;
mod rt;
mod rtc;
mod sha256;
mod tests;
mod virtio;

use core::panic::PanicInfo;

use rt::{Failure, Quoted};

/// Time from the TSC, calibrated against the APIC timer.
pub struct Clock {
    pub tsc_hz: u64,
}

impl Clock {
    pub fn now_us(&self) -> u64 {
        (io::rdtsc() as u128 * 1_000_000 / u128::from(self.tsc_hz.max(1))) as u64
    }
    pub fn deadline_ms(&self, ms: u64) -> u64 {
        io::rdtsc() + self.tsc_hz / 1000 * ms
    }
    pub fn expired(&self, deadline: u64) -> bool {
        io::rdtsc() >= deadline
    }
    pub fn delay_us(&self, us: u64) {
        let end = io::rdtsc() + self.tsc_hz / 1_000_000 * us;
        while io::rdtsc() < end {
            io::pause();
        }
    }
}

/// Guest-physical memory for rings and buffers: identity-mapped, so the
/// addresses are also pointers. Never freed; a run is short.
pub struct Dma {
    next: u64,
    end: u64,
}

impl Dma {
    pub fn alloc(&mut self, size: u64, align: u64) -> Result<u64, Failure> {
        let addr = self.next.div_ceil(align) * align;
        if addr + size > self.end {
            bail!("out of guest memory for DMA buffers ({size} bytes wanted)");
        }
        self.next = addr + size;
        // SAFETY: [addr, addr+size) is free RAM that only we use.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, size as usize) };
        Ok(addr)
    }
}

/// What every test gets.
pub struct Ctx {
    pub platform: platform::Platform,
    pub args: cmdline::Args,
    pub clock: Clock,
    pub dma: Dma,
    pub pci: Option<pci::Bus>,
}

/// Watchdog tick while waiting for devices: a lost interrupt costs at most
/// this much before the deadline check runs.
const WATCHDOG_PERIOD_US: u32 = 10_000;

#[no_mangle]
extern "C" fn probe_main() -> ! {
    boot::install_idt();
    // First, before the 2 ms TSC calibration: the first serial byte then
    // says when the VMM started the guest, not how long the probe took.
    record!("start");
    apic::enable();
    match run() {
        Ok((sleep, clock)) => {
            record!("result=pass");
            platform::power_off(sleep, &clock)
        }
        Err(f) => fail(f.as_str()),
    }
}

fn fail(reason: &str) -> ! {
    record!("result=fail reason={}", Quoted(reason.as_bytes()));
    io::exit_failure()
}

fn run() -> Result<(Option<platform::SleepRegister>, Clock), Failure> {
    let platform = platform::discover(boot::image_end(), boot::start_info_paddr())?;
    let args = cmdline::Args::parse(platform.cmdline.as_str());
    for key in args.unknown() {
        record!("warn unknown key={}", Quoted(key.as_bytes()));
    }
    if !platform.warnings.as_str().is_empty() {
        record!("warn {}", Quoted(platform.warnings.as_str().as_bytes()));
    }
    virtio::REKICK_MS.store(args.rekick_ms, core::sync::atomic::Ordering::Relaxed);
    let clock = Clock {
        tsc_hz: apic::calibrate_tsc_hz(),
    };
    let dma = Dma {
        next: platform.free_ram.0.max(16 << 20),
        end: platform.free_ram.1,
    };
    let sleep = platform.sleep;
    let mut ctx = Ctx {
        platform,
        args,
        clock,
        dma,
        pci: None,
    };

    apic::start_periodic_timer(WATCHDOG_PERIOD_US);
    io::sti();

    let tests = ctx.args.run;
    let rounds = ctx.args.repeat;
    let mut round: u64 = 0;
    loop {
        for name in tests.iter() {
            tests::run(name, &mut ctx)?;
        }
        round += 1;
        if rounds != 1 {
            record!("round {}", round);
        }
        if rounds != 0 && round >= rounds {
            break;
        }
    }
    apic::stop_timer();
    Ok((sleep, ctx.clock))
}

/// Where ring 0 sends ring 3 after an unexpected exception.
#[no_mangle]
extern "C" fn fault_entry() -> ! {
    // SAFETY: FAULT_INFO was written by ring 0 just before it sent us here.
    let f = unsafe { &*core::ptr::addr_of!(boot::FAULT_INFO) };
    let reason = failure!(
        "exception vector={} error=0x{:x} rip=0x{:x} cr2=0x{:x} rsp=0x{:x}",
        f.vector,
        f.error,
        f.rip,
        f.cr2,
        f.rsp
    );
    fail(reason.as_str())
}

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let reason = failure!("panic: {}", info);
    fail(reason.as_str())
}
