//! The local APIC through its MMIO page (x2APIC MSRs are out of reach from
//! ring 3): enabling, the timer, TSC calibration, starting APs.

use crate::io::{self, mmio};

const BASE: u64 = 0xfee0_0000;
const SVR: u64 = 0xf0;
const ICR_LOW: u64 = 0x300;
const ICR_HIGH: u64 = 0x310;
const LVT_TIMER: u64 = 0x320;
const TIMER_INITIAL: u64 = 0x380;
const TIMER_CURRENT: u64 = 0x390;
const TIMER_DIVIDE: u64 = 0x3e0;
const MASKED: u32 = 1 << 16;
const PERIODIC: u32 = 1 << 17;
/// KVM's APIC bus runs at 1 GHz: one timer tick per nanosecond at divide 1.
const BUS_HZ: u64 = 1_000_000_000;

pub const SPURIOUS_VECTOR: u8 = 0xff;
pub const TIMER_VECTOR: u8 = 0x20;

/// Where APs start in real mode: page 8 (SIPI vector 0x08).
const TRAMPOLINE: u64 = 0x8000;
const AP_COUNTER: u64 = TRAMPOLINE + 0x100;
/// cli; lock inc dword cs:[0x100]; 1: hlt; jmp 1b
const TRAMPOLINE_CODE: [u8; 11] = [
    0xfa, 0xf0, 0x2e, 0x66, 0xff, 0x06, 0x00, 0x01, 0xf4, 0xeb, 0xfd,
];

const IOAPIC_BASE: u64 = 0xfec0_0000;
const IOAPIC_WINDOW: u64 = IOAPIC_BASE + 0x10;

/// Routes IOAPIC pin `gsi` to `vector` on the boot CPU: fixed delivery,
/// physical destination 0, edge, active high, unmasked.
pub fn route_ioapic_pin(gsi: u32, vector: u8) {
    let write = |index: u32, value: u32| {
        mmio::write32(IOAPIC_BASE, index);
        mmio::write32(IOAPIC_WINDOW, value);
    };
    write(0x11 + 2 * gsi, 0);
    write(0x10 + 2 * gsi, u32::from(vector));
}

/// Enables the local APIC and masks both 8259s: KVM's default routing
/// sends GSIs below 16 to the PIC as well as the IOAPIC, and the PIC's
/// vectors (base 0 until programmed) would arrive as exceptions through
/// the BSP's LINT0, which KVM leaves in ExtINT mode.
pub fn enable() {
    io::outb(0x21, 0xff);
    io::outb(0xa1, 0xff);
    mmio::write32(BASE + SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
}

/// The APIC timer's count and the TSC at the same moment: of a few reads,
/// the one whose TSC reads on either side are closest. A vCPU descheduled
/// between reading the count and reading the TSC pairs the count with a
/// later time; over a 2 ms window, 4 ms of that made the probe's clock
/// run three times too fast on a loaded host (its half second measured
/// 167 ms).
fn timer_at_tsc() -> (u64, u32) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..8 {
        let before = io::rdtsc();
        let count = mmio::read32(BASE + TIMER_CURRENT);
        let after = io::rdtsc();
        let spread = after.saturating_sub(before);
        if spread < best.0 {
            best = (spread, before + spread / 2, count);
        }
    }
    (best.1, best.2)
}

/// Measures the TSC against the APIC timer over ~2 ms of APIC time.
pub fn calibrate_tsc_hz() -> u64 {
    mmio::write32(BASE + TIMER_DIVIDE, 0xb);
    mmio::write32(BASE + LVT_TIMER, MASKED);
    mmio::write32(BASE + TIMER_INITIAL, u32::MAX);
    let (t0, c0) = timer_at_tsc();
    while c0 - mmio::read32(BASE + TIMER_CURRENT) < 2_000_000 {}
    let (t1, c1) = timer_at_tsc();
    mmio::write32(BASE + TIMER_INITIAL, 0);
    ((t1 - t0) as u128 * BUS_HZ as u128 / u128::from(c0 - c1)) as u64
}

/// A periodic timer on `TIMER_VECTOR`: the probe's watchdog tick, so that a
/// `hlt` waiting for a device always wakes up to check its deadline.
pub fn start_periodic_timer(period_us: u32) {
    mmio::write32(BASE + TIMER_DIVIDE, 0xb);
    mmio::write32(BASE + LVT_TIMER, PERIODIC | u32::from(TIMER_VECTOR));
    mmio::write32(BASE + TIMER_INITIAL, period_us.saturating_mul(1000));
}

pub fn stop_timer() {
    mmio::write32(BASE + LVT_TIMER, MASKED);
    mmio::write32(BASE + TIMER_INITIAL, 0);
}

/// INIT-SIPI-SIPI to all other CPUs; each runs a real-mode trampoline that
/// counts itself and halts. Returns how many CPUs are running, BSP included.
pub fn start_aps(expected_aps: u32, clock: &crate::Clock) -> u32 {
    // SAFETY: 0x8000..0x8200 is free RAM (the VMMs put boot data below
    // 0x8000 and we copied what we needed); it is identity-mapped.
    unsafe {
        core::ptr::copy_nonoverlapping(
            TRAMPOLINE_CODE.as_ptr(),
            TRAMPOLINE as *mut u8,
            TRAMPOLINE_CODE.len(),
        );
        core::ptr::write_volatile(AP_COUNTER as *mut u32, 0);
    }
    if expected_aps == 0 {
        return 1;
    }
    // All-excluding-self shorthand, level assert.
    mmio::write32(BASE + ICR_HIGH, 0);
    mmio::write32(BASE + ICR_LOW, 0x000c_4500);
    clock.delay_us(10_000);
    for _ in 0..2 {
        mmio::write32(BASE + ICR_LOW, 0x000c_4600 | (TRAMPOLINE >> 12) as u32);
        clock.delay_us(200);
    }
    let deadline = clock.deadline_ms(2000);
    loop {
        let started = mmio::read32(AP_COUNTER);
        if started >= expected_aps || clock.expired(deadline) {
            return 1 + started;
        }
        io::pause();
    }
}
