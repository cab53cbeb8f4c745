//! `probe.run=rtc`: the CMOS real-time clock the DSDT names, as a guest's
//! driver uses it. The records hold the time it shows (the host checks it
//! against its own clock) and what the chip did: an update cycle with its
//! UIP bit, the alarm and periodic interrupts through the IOAPIC, CMOS
//! RAM, and setting the time the way Linux does. Takes about two seconds
//! of the RTC's own time.

use crate::platform::RtcDevice;
use crate::rt::Failure;
use crate::{apic, bail, boot, io, record, Ctx};

/// Where the RTC's interrupt arrives.
const RTC_VECTOR: u8 = 0x31;

const SECONDS: u8 = 0x00;
const SECONDS_ALARM: u8 = 0x01;
const MINUTES_ALARM: u8 = 0x03;
const HOURS_ALARM: u8 = 0x05;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const A_UIP: u8 = 0x80;
/// The divider chain held in reset.
const A_DIVIDER_RESET: u8 = 0x70;
const B_SET: u8 = 0x80;
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_BINARY: u8 = 0x04;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
/// Free CMOS RAM on a PC (after the 14 clock bytes, before the century).
const NVRAM_TEST: core::ops::Range<u8> = 0x40..0x50;

struct Chip {
    port: u16,
    century: u8,
}

/// A date and time as the registers hold it.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Time {
    year: u16,
    month: u8,
    day: u8,
    hour: u8,
    minute: u8,
    second: u8,
}

impl core::fmt::Display for Time {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )
    }
}

impl Chip {
    fn get(&self, index: u8) -> u8 {
        io::outb(self.port, index);
        io::inb(self.port + 1)
    }

    fn set(&self, index: u8, value: u8) {
        io::outb(self.port, index);
        io::outb(self.port + 1, value);
    }

    fn decode(&self, byte: u8) -> u8 {
        if self.get(REG_B) & B_BINARY != 0 {
            byte
        } else {
            (byte >> 4) * 10 + (byte & 0xf)
        }
    }

    fn encode(&self, value: u8) -> u8 {
        if self.get(REG_B) & B_BINARY != 0 {
            value
        } else {
            ((value / 10) << 4) | (value % 10)
        }
    }

    /// The registers, read outside an update cycle (24-hour mode, which
    /// firmware and this test leave set).
    fn time(&self, ctx: &Ctx) -> Result<Time, Failure> {
        let deadline = ctx.clock.deadline_ms(100);
        while !ctx.clock.expired(deadline) {
            if self.get(REG_A) & A_UIP != 0 {
                continue;
            }
            let second = self.get(SECONDS);
            let century = if self.century != 0 {
                self.decode(self.get(self.century))
            } else {
                20
            };
            let t = Time {
                year: u16::from(century) * 100 + u16::from(self.decode(self.get(0x09))),
                month: self.decode(self.get(0x08)),
                day: self.decode(self.get(0x07)),
                hour: self.decode(self.get(0x04)),
                minute: self.decode(self.get(0x02)),
                second: self.decode(second),
            };
            if self.get(REG_A) & A_UIP == 0 && self.get(SECONDS) == second {
                return Ok(t);
            }
        }
        bail!("the RTC stayed in its update cycle for 100 ms")
    }

    /// Waits up to `ms` for an interrupt past `seen`; how many came.
    fn interrupts_after(&self, seen: u32, ms: u64, ctx: &Ctx) -> u32 {
        let deadline = ctx.clock.deadline_ms(ms);
        while boot::irq_count(RTC_VECTOR) == seen && !ctx.clock.expired(deadline) {
            io::pause();
        }
        boot::irq_count(RTC_VECTOR) - seen
    }
}

pub fn rtc_test(ctx: &mut Ctx) -> Result<(), Failure> {
    let (RtcDevice { port, irq }, source) = match ctx.platform.rtc {
        Some(rtc) => (rtc, "dsdt"),
        // Where a PC has it, as Linux assumes unless the FADT says there
        // is none (QEMU's microvm lists it nowhere).
        None if !ctx.platform.no_cmos_rtc => (RtcDevice { port: 0x70, irq: 8 }, "legacy"),
        None => bail!("no real-time clock: none in the DSDT, and the FADT says there is none"),
    };
    let chip = Chip {
        port,
        century: ctx.platform.rtc_century,
    };
    record!(
        "rtc device port=0x{:x} irq={} century=0x{:x} found={}",
        port,
        irq,
        chip.century,
        source
    );
    apic::route_ioapic_pin(irq, RTC_VECTOR);
    let (a, b) = (chip.get(REG_A) & !A_UIP, chip.get(REG_B));
    let time = chip.time(ctx)?;
    record!(
        "rtc clock time={} a=0x{:02x} b=0x{:02x} d=0x{:02x}",
        time,
        a,
        b,
        chip.get(REG_D)
    );

    // One update cycle: the second moves, UIP is clear right after it (an
    // update in progress ends), and an alarm that matches any time
    // interrupts. Whether the poll caught UIP's 244 us is reported, not
    // judged: a vCPU descheduled at that moment misses it.
    chip.get(REG_C);
    for alarm in [SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM] {
        chip.set(alarm, 0xc0);
    }
    let seen = boot::irq_count(RTC_VECTOR);
    let second = chip.get(SECONDS);
    chip.set(REG_B, b | B_AIE);
    let (mut uip_seen, mut advanced) = (false, false);
    // Deadlines here detect a hang: an update comes every second.
    let deadline = ctx.clock.deadline_ms(5000);
    while !advanced && !ctx.clock.expired(deadline) {
        uip_seen |= chip.get(REG_A) & A_UIP != 0;
        advanced = chip.get(SECONDS) != second;
    }
    let uip_after_update = chip.get(REG_A) & A_UIP != 0;
    let interrupts = chip.interrupts_after(seen, 5000, ctx);
    let c = chip.get(REG_C);
    chip.set(REG_B, b);
    record!(
        "rtc update second_advanced={} uip_after_update={} interrupts={} c=0x{:02x} uip_seen={}",
        advanced,
        uip_after_update,
        interrupts.min(1),
        // The periodic flag rises with or without its interrupt on the
        // chip, but not in QEMU.
        c & (C_IRQF | C_AF | C_UF),
        uip_seen
    );

    // The periodic interrupt at 2 Hz (rate 15).
    chip.get(REG_C);
    chip.set(REG_A, (a & !0x0f) | 0x0f);
    let seen = boot::irq_count(RTC_VECTOR);
    chip.set(REG_B, b | B_PIE);
    let interrupts = chip.interrupts_after(seen, 5000, ctx);
    let c = chip.get(REG_C);
    chip.set(REG_B, b);
    chip.set(REG_A, a);
    record!(
        "rtc periodic hz=2 interrupts={} c=0x{:02x}",
        interrupts.min(1),
        c & (C_IRQF | C_PF)
    );

    for i in NVRAM_TEST {
        chip.set(i, i ^ 0x5a);
    }
    let kept = NVRAM_TEST.filter(|&i| chip.get(i) == i ^ 0x5a).count();
    record!("rtc nvram written={} kept={}", NVRAM_TEST.len(), kept);

    // Linux's mc146818_set_time: SET, the divider held, the time, then
    // both back; the first update comes half a second after the divider
    // starts.
    chip.set(REG_B, b | B_SET);
    chip.set(REG_A, a | A_DIVIDER_RESET);
    for (index, value) in [
        (0x09, 30),
        (0x08, 1),
        (0x07, 2),
        (0x04, 3),
        (0x02, 4),
        (SECONDS, 5),
    ] {
        chip.set(index, chip.encode(value));
    }
    if chip.century != 0 {
        chip.set(chip.century, chip.encode(20));
    }
    chip.set(REG_B, b);
    let released = ctx.clock.now_us();
    let five = chip.encode(5);
    chip.set(REG_A, a);
    io::outb(port, SECONDS);
    let deadline = ctx.clock.deadline_ms(5000);
    while io::inb(port + 1) == five && !ctx.clock.expired(deadline) {}
    let first_update_ms = (ctx.clock.now_us() - released) / 1000;
    let set = chip.time(ctx)?;
    record!(
        "rtc set time={} first_update={}",
        set,
        // Half a second, not a whole one: a descheduled probe only sees
        // it later, and 400 ms of that is needed to be wrong.
        if (450..=900).contains(&first_update_ms) {
            "half-second"
        } else {
            "other"
        }
    );
    record!("rtc timing first_update_ms={}", first_update_ms);
    Ok(())
}
