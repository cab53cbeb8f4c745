//! The chip's registers and flags as values: what a read or a write of
//! port 0x70 or 0x71 does at a given host time. `Cmos` (the module
//! above) puts it on the bus and runs its timer.

use chrono::{DateTime, Datelike, NaiveDate, Timelike};

/// Nanoseconds since the Unix epoch, on the host's clock or the guest's.
pub(super) type Nanos = i128;
pub(super) const NANOS_PER_SEC: Nanos = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// The divider's input: periodic rates are powers of two of it.
const OSCILLATOR_HZ: Nanos = 32_768;
/// UIP rises this long (8 oscillator cycles, 244 µs) before each update.
const UIP_LEAD: Nanos = 8 * NANOS_PER_SEC / OSCILLATOR_HZ;

/// Register indices.
const SECONDS: usize = 0x00;
pub(super) const SECONDS_ALARM: usize = 0x01;
const MINUTES: usize = 0x02;
pub(super) const MINUTES_ALARM: usize = 0x03;
const HOURS: usize = 0x04;
pub(super) const HOURS_ALARM: usize = 0x05;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
pub(super) const REG_B: usize = 0x0b;
pub(super) const REG_C: usize = 0x0c;
const REG_D: usize = 0x0d;
/// Where the FADT's `CENTURY` field points the guest.
pub const CENTURY: u8 = 0x32;
const TIME_REGISTERS: [usize; 8] = [
    SECONDS,
    MINUTES,
    HOURS,
    WEEKDAY,
    DAY,
    MONTH,
    YEAR,
    CENTURY as usize,
];

const A_UIP: u8 = 0x80;
const A_DIVIDER: u8 = 0x70;
/// Dividers at or below 32.768 kHz (010) run the clock; 11x hold the
/// chain in reset, and the rest are test modes (stopped), as in QEMU.
const A_DIVIDER_32K: u8 = 0x20;
const A_RATE: u8 = 0x0f;
const B_SET: u8 = 0x80;
pub(super) const B_PIE: u8 = 0x40;
pub(super) const B_AIE: u8 = 0x20;
pub(super) const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
pub(super) const B_24_HOUR: u8 = 0x02;
pub(super) const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
pub(super) const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const D_VRT: u8 = 0x80;
/// An alarm byte with both top bits set matches any value.
const ALARM_DONT_CARE: u8 = 0xc0;

/// Offsets from port 0x70.
const INDEX_PORT: u64 = 0;
pub(super) const DATA_PORT: u64 = 1;
const NMI_DISABLE: u8 = 0x80;

/// What a snapshot keeps of the chip: the RAM and registers, where the
/// guest set its clock from the host's, and the events not yet read. The
/// clock goes on from the host's time at restore, as a powered-off PC's
/// does; the periodic and update events of the gap are not owed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtcSnapshot {
    pub ram: Vec<u8>,
    pub index: u8,
    /// Guest time minus host time, in nanoseconds.
    pub offset: i128,
    pub weekday_shift: u8,
    pub flags: u8,
}

/// The chip's state; every method takes the host's time, so tests drive
/// it with a clock of their own.
pub struct Rtc {
    /// CMOS RAM, the alarm and control registers, and the time registers
    /// while the clock is stopped (`SET`, or the divider held).
    pub(super) ram: [u8; 128],
    pub(super) index: usize,
    /// Guest time minus host time. Its fraction of a second is the
    /// divider's phase, which runs on while `SET` stops the updates.
    offset: Nanos,
    /// The weekday register counts on its own; this is how far the
    /// guest set it from the date's real weekday.
    weekday_shift: u8,
    /// Register C's event flags, without IRQF (computed).
    flags: u8,
    /// Host time up to which events are in `flags`.
    accounted: Nanos,
}

impl Rtc {
    /// The chip as firmware leaves it, showing the host's time.
    pub fn new(now: Nanos) -> Self {
        let mut ram = [0; 128];
        ram[REG_A] = A_DIVIDER_32K | 0x06;
        ram[REG_B] = B_24_HOUR;
        ram[REG_D] = D_VRT;
        Self {
            ram,
            index: 0,
            offset: 0,
            weekday_shift: 0,
            flags: 0,
            accounted: now,
        }
    }

    /// The events up to `now` are accounted first, so none is lost.
    pub fn save(&mut self, now: Nanos) -> RtcSnapshot {
        self.advance(now);
        RtcSnapshot {
            ram: self.ram.to_vec(),
            index: self.index as u8,
            offset: self.offset,
            weekday_shift: self.weekday_shift,
            flags: self.flags,
        }
    }

    /// None: the saved RAM is not the chip's 128 bytes, or the index is
    /// beyond it.
    pub fn restore(saved: &RtcSnapshot, now: Nanos) -> Option<Self> {
        let ram: [u8; 128] = saved.ram.as_slice().try_into().ok()?;
        let index = usize::from(saved.index);
        if index >= ram.len() {
            return None;
        }
        Some(Self {
            ram,
            index,
            offset: saved.offset,
            weekday_shift: saved.weekday_shift,
            flags: saved.flags,
            accounted: now,
        })
    }

    fn divider_runs(a: u8) -> bool {
        a & A_DIVIDER <= A_DIVIDER_32K
    }

    /// Whether the time registers update.
    fn running(&self) -> bool {
        self.ram[REG_B] & B_SET == 0 && Self::divider_runs(self.ram[REG_A])
    }

    fn binary(&self) -> bool {
        self.ram[REG_B] & B_BINARY != 0
    }

    fn irqf(&self) -> bool {
        self.flags & self.ram[REG_B] & (C_PF | C_AF | C_UF) != 0
    }

    fn guest_time(&self, now: Nanos) -> Nanos {
        now + self.offset
    }

    /// The guest's second, which the registers show. Seconds of i64 span
    /// every year the registers can hold.
    fn guest_second(&self, now: Nanos) -> i64 {
        self.guest_time(now).div_euclid(NANOS_PER_SEC) as i64
    }

    /// The port at `offset` read; a read of register C clears its flags.
    pub fn read(&mut self, offset: u64, now: Nanos) -> u8 {
        if offset == INDEX_PORT {
            // Write-only on the chip; QEMU reads all ones.
            return 0xff;
        }
        match self.index {
            REG_A => {
                let uip = self.running()
                    && self.guest_time(now).rem_euclid(NANOS_PER_SEC) >= NANOS_PER_SEC - UIP_LEAD;
                self.ram[REG_A] | if uip { A_UIP } else { 0 }
            }
            REG_C => {
                self.advance(now);
                let value = self.flags | if self.irqf() { C_IRQF } else { 0 };
                self.flags = 0;
                value
            }
            i if self.running() && TIME_REGISTERS.contains(&i) => {
                self.time_registers(self.guest_second(now))[i]
            }
            i => self.ram[i],
        }
    }

    /// The port at `offset` written; true when IRQF rose (an edge is due).
    pub fn write(&mut self, offset: u64, value: u8, now: Nanos) -> bool {
        if offset == INDEX_PORT {
            // Bit 7 masks NMIs on a PC; the VM has none to mask.
            self.index = usize::from(value & !NMI_DISABLE);
            return false;
        }
        let was_raised = self.irqf();
        self.advance(now);
        match self.index {
            REG_A => {
                let was_running = self.running();
                let was_dividing = Self::divider_runs(self.ram[REG_A]);
                if was_running && !Self::divider_runs(value) {
                    self.freeze(now);
                }
                self.ram[REG_A] = value & !A_UIP;
                if !was_dividing && Self::divider_runs(value) {
                    // Out of reset, the first update comes half a second on.
                    self.resume(now, NANOS_PER_SEC / 2);
                }
            }
            REG_B => {
                let was_running = self.running();
                // Setting SET clears UIE on the chip.
                let value = if value & B_SET != 0 {
                    value & !B_UIE
                } else {
                    value
                };
                if was_running && value & B_SET != 0 {
                    self.freeze(now);
                }
                self.ram[REG_B] = value;
                if !was_running && self.running() {
                    let phase = self.guest_time(now).rem_euclid(NANOS_PER_SEC);
                    self.resume(now, phase);
                }
            }
            REG_C | REG_D => log::debug!("Ignored write {value:#x} to read-only RTC register"),
            i if TIME_REGISTERS.contains(&i) => {
                if self.running() {
                    // The chip takes it and counts on from it at the next
                    // update, the divider's phase unchanged.
                    self.freeze(now);
                    self.ram[i] = value;
                    let phase = self.guest_time(now).rem_euclid(NANOS_PER_SEC);
                    self.resume(now, phase);
                } else {
                    self.ram[i] = value;
                }
            }
            i => self.ram[i] = value,
        }
        !was_raised && self.irqf()
    }

    /// The time registers for guest second `secs`, in the current mode,
    /// indexed like the RAM (other entries 0).
    fn time_registers(&self, secs: i64) -> [u8; 128] {
        let mut regs = [0; 128];
        let Some(t) = DateTime::from_timestamp(secs, 0) else {
            return regs;
        };
        let binary = self.binary();
        let encode = |v: u32| encode(v as u8, binary);
        regs[SECONDS] = encode(t.second());
        regs[MINUTES] = encode(t.minute());
        regs[HOURS] = self.encode_hours(t.hour() as u8);
        let weekday = (t.weekday().num_days_from_sunday() as u8 + self.weekday_shift) % 7;
        regs[WEEKDAY] = encode(u32::from(weekday) + 1);
        regs[DAY] = encode(t.day());
        regs[MONTH] = encode(t.month());
        let year = t.year().rem_euclid(10_000) as u32;
        regs[YEAR] = encode(year % 100);
        regs[usize::from(CENTURY)] = encode(year / 100);
        regs
    }

    fn encode_hours(&self, hour: u8) -> u8 {
        let binary = self.binary();
        if self.ram[REG_B] & B_24_HOUR != 0 {
            return encode(hour, binary);
        }
        let pm = if hour >= 12 { 0x80 } else { 0 };
        encode(
            if hour.is_multiple_of(12) {
                12
            } else {
                hour % 12
            },
            binary,
        ) | pm
    }

    fn decode_hours(&self, byte: u8) -> Option<u8> {
        let binary = self.binary();
        if self.ram[REG_B] & B_24_HOUR != 0 {
            return decode(byte, binary);
        }
        let hour = decode(byte & 0x7f, binary).filter(|h| (1..=12).contains(h))?;
        Some(hour % 12 + if byte & 0x80 != 0 { 12 } else { 0 })
    }

    /// Stops the registers at the guest's current second.
    fn freeze(&mut self, now: Nanos) {
        let regs = self.time_registers(self.guest_second(now));
        for i in TIME_REGISTERS {
            self.ram[i] = regs[i];
        }
    }

    /// Runs the clock on from what the registers hold, `phase` into the
    /// second. Registers that make no date leave the clock where it was.
    fn resume(&mut self, now: Nanos, phase: Nanos) {
        let Some((secs, weekday)) = self.registers_time() else {
            log::warn!(
                "RTC: the guest set an invalid date {:x?}; the clock keeps its time",
                TIME_REGISTERS.map(|i| self.ram[i])
            );
            return;
        };
        self.offset = Nanos::from(secs) * NANOS_PER_SEC + phase - now;
        self.weekday_shift = weekday;
    }

    /// The frozen registers as a second since the epoch, with how far
    /// their weekday is from the date's.
    fn registers_time(&self) -> Option<(i64, u8)> {
        let binary = self.binary();
        let field = |i: usize| decode(self.ram[i], binary).map(u32::from);
        let year = field(usize::from(CENTURY))? * 100 + field(YEAR)?;
        let date = NaiveDate::from_ymd_opt(i32::try_from(year).ok()?, field(MONTH)?, field(DAY)?)?;
        let time = date.and_hms_opt(
            u32::from(self.decode_hours(self.ram[HOURS])?),
            field(MINUTES)?,
            field(SECONDS)?,
        )?;
        let real = date.weekday().num_days_from_sunday() as u8;
        let shift = match field(WEEKDAY) {
            Some(w @ 1..=7) => (w as u8 - 1 + 7 - real) % 7,
            _ => 0,
        };
        Some((time.and_utc().timestamp(), shift))
    }

    /// Works out the events since the last time; true when IRQF rose.
    pub(super) fn advance(&mut self, now: Nanos) -> bool {
        let was_raised = self.irqf();
        let (from, to) = (self.guest_time(self.accounted), self.guest_time(now));
        self.accounted = now;
        if to <= from {
            return false;
        }
        if let Some(period) = self.period() {
            let tick = |t: Nanos| (t * OSCILLATOR_HZ).div_euclid(NANOS_PER_SEC * period);
            if tick(to) > tick(from) {
                self.flags |= C_PF;
            }
        }
        if self.running() {
            let (first, last) = (
                from.div_euclid(NANOS_PER_SEC) as i64,
                to.div_euclid(NANOS_PER_SEC) as i64,
            );
            if last > first {
                self.flags |= C_UF;
                if self.alarm_between(first, last) {
                    self.flags |= C_AF;
                }
            }
        }
        !was_raised && self.irqf()
    }

    /// The periodic interrupt's period in oscillator cycles, if it runs.
    fn period(&self) -> Option<Nanos> {
        let rate = self.ram[REG_A] & A_RATE;
        if rate == 0 || !Self::divider_runs(self.ram[REG_A]) {
            return None;
        }
        // Rates 1 and 2 are 256 and 128 Hz, the same as 8 and 9.
        let rate = if rate <= 2 { rate + 7 } else { rate };
        Some(1 << (rate - 1))
    }

    /// Whether the alarm registers match guest second `secs`'s time of day.
    fn alarm_matches(&self, secs: i64) -> bool {
        let day = secs.rem_euclid(SECS_PER_DAY);
        let binary = self.binary();
        let got = [
            encode((day % 60) as u8, binary),
            encode((day / 60 % 60) as u8, binary),
            self.encode_hours((day / 3600) as u8),
        ];
        let want = [SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM].map(|i| self.ram[i]);
        got.iter()
            .zip(want)
            .all(|(&got, want)| want & ALARM_DONT_CARE == ALARM_DONT_CARE || got == want)
    }

    /// Whether the alarm matched a second in `(first, last]` (a day's
    /// worth at most: every time of day is in it).
    fn alarm_between(&self, first: i64, last: i64) -> bool {
        (first + 1..=last.min(first + SECS_PER_DAY)).any(|s| self.alarm_matches(s))
    }

    /// The first guest second after `secs` the alarm matches.
    fn next_alarm(&self, secs: i64) -> Option<i64> {
        (secs + 1..=secs + SECS_PER_DAY).find(|&s| self.alarm_matches(s))
    }

    /// The host time of the next event an enabled interrupt waits for;
    /// none while IRQF is set (the guest has not read register C) or
    /// none is enabled.
    pub fn next_event(&self, now: Nanos) -> Option<Nanos> {
        if self.irqf() {
            return None;
        }
        let enabled = self.ram[REG_B];
        let guest = self.guest_time(now);
        let mut next: Option<Nanos> = None;
        let mut consider = |guest_time: Nanos| {
            let host = guest_time - self.offset;
            next = Some(next.map_or(host, |n| n.min(host)));
        };
        if let (true, Some(period)) = (enabled & B_PIE != 0, self.period()) {
            let tick = (guest * OSCILLATOR_HZ).div_euclid(NANOS_PER_SEC * period) + 1;
            // Rounded up, so that the tick has passed when it fires.
            consider((tick * period * NANOS_PER_SEC + OSCILLATOR_HZ - 1) / OSCILLATOR_HZ);
        }
        if self.running() {
            let second = self.guest_second(now);
            if enabled & B_UIE != 0 {
                consider(Nanos::from(second + 1) * NANOS_PER_SEC);
            }
            if enabled & B_AIE != 0 {
                if let Some(alarm) = self.next_alarm(second) {
                    consider(Nanos::from(alarm) * NANOS_PER_SEC);
                }
            }
        }
        next
    }
}

fn encode(value: u8, binary: bool) -> u8 {
    if binary {
        value
    } else {
        ((value / 10) << 4) | (value % 10)
    }
}

fn decode(byte: u8, binary: bool) -> Option<u8> {
    if binary {
        return Some(byte);
    }
    let (tens, ones) = (byte >> 4, byte & 0xf);
    (tens < 10 && ones < 10).then_some(tens * 10 + ones)
}

#[cfg(test)]
#[path = "rtc_tests.rs"]
mod tests;
