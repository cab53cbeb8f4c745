//! The MC146818 real-time clock and its CMOS RAM at ports 0x70 (index)
//! and 0x71 (data), the way PC firmware leaves it: 24-hour BCD, the
//! 32.768 kHz divider, and the ACPI century byte at 0x32.
//!
//! The clock is the host's UTC clock plus an offset the guest moves by
//! setting the time; its registers are computed when read, so nothing
//! ticks while no one looks. The three interrupt flags are worked out
//! the same way, from the time that passed since they were last worked
//! out. An interrupt is an edge on IRQ 8 when the chip's IRQF goes from
//! 0 to 1, so one timer thread suffices: it sleeps until the next event
//! an enabled interrupt waits for, and not at all while IRQF is already
//! set (the guest must read register C first).
//!
//! Not modelled, as in QEMU: daylight-saving updates (`DSE` is kept but
//! does nothing), the square-wave pin, and the NMI mask bit of the index
//! port (the VM has no NMI source to mask).

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Datelike, NaiveDate, Timelike};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::util::lock;

/// Nanoseconds since the Unix epoch, on the host's clock or the guest's.
type Nanos = i128;
const NANOS_PER_SEC: Nanos = 1_000_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// The divider's input: periodic rates are powers of two of it.
const OSCILLATOR_HZ: Nanos = 32_768;
/// UIP rises this long (8 oscillator cycles, 244 µs) before each update.
const UIP_LEAD: Nanos = 8 * NANOS_PER_SEC / OSCILLATOR_HZ;

/// Register indices.
const SECONDS: usize = 0x00;
const SECONDS_ALARM: usize = 0x01;
const MINUTES: usize = 0x02;
const MINUTES_ALARM: usize = 0x03;
const HOURS: usize = 0x04;
const HOURS_ALARM: usize = 0x05;
const WEEKDAY: usize = 0x06;
const DAY: usize = 0x07;
const MONTH: usize = 0x08;
const YEAR: usize = 0x09;
const REG_A: usize = 0x0a;
const REG_B: usize = 0x0b;
const REG_C: usize = 0x0c;
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
const B_PIE: u8 = 0x40;
const B_AIE: u8 = 0x20;
const B_UIE: u8 = 0x10;
const B_BINARY: u8 = 0x04;
const B_24_HOUR: u8 = 0x02;
const C_IRQF: u8 = 0x80;
const C_PF: u8 = 0x40;
const C_AF: u8 = 0x20;
const C_UF: u8 = 0x10;
const D_VRT: u8 = 0x80;
/// An alarm byte with both top bits set matches any value.
const ALARM_DONT_CARE: u8 = 0xc0;

/// Offsets from port 0x70.
const INDEX_PORT: u64 = 0;
const DATA_PORT: u64 = 1;
const NMI_DISABLE: u8 = 0x80;

/// The chip's state; every method takes the host's time, so tests drive
/// it with a clock of their own.
pub struct Rtc {
    /// CMOS RAM, the alarm and control registers, and the time registers
    /// while the clock is stopped (`SET`, or the divider held).
    ram: [u8; 128],
    index: usize,
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
    fn advance(&mut self, now: Nanos) -> bool {
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

/// The host's UTC clock.
fn host_now() -> Nanos {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => since.as_nanos() as Nanos,
        Err(before) => -(before.duration().as_nanos() as Nanos),
    }
}

/// A backward step of the host's clock can move an event later than the
/// timer thought; it looks again at least this often.
const LONGEST_SLEEP: Duration = Duration::from_secs(1);

struct Shared {
    rtc: Mutex<Rtc>,
    /// Wakes the timer when the guest changed what it waits for.
    changed: Condvar,
    irq: EventFd,
}

impl Shared {
    fn raise(&self) {
        if let Err(e) = self.irq.write(1) {
            log::warn!("RTC: failed to raise IRQ 8: {e}");
        }
    }
}

/// The RTC on the I/O bus, with the thread that raises its interrupts,
/// started when the guest first enables one (most guests never do: a
/// VM's start-up spends nothing on it).
pub struct Cmos {
    shared: Arc<Shared>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    timer: Option<JoinHandle<()>>,
    /// Starting the timer failed once: said once, not tried again.
    timer_failed: bool,
}

impl Cmos {
    /// The chip showing the host's time; `irq` is IRQ 8's irqfd.
    pub fn new(irq: EventFd) -> Self {
        Self {
            shared: Arc::new(Shared {
                rtc: Mutex::new(Rtc::new(host_now())),
                changed: Condvar::new(),
                irq,
            }),
            stop: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            timer: None,
            timer_failed: false,
        }
    }

    fn start_timer(&mut self) {
        let (shared, stop) = (self.shared.clone(), self.stop.clone());
        match std::thread::Builder::new()
            .name("rtc".into())
            .spawn(move || timer(&shared, &stop))
        {
            Ok(handle) => self.timer = Some(handle),
            Err(e) => {
                self.timer_failed = true;
                log::error!(
                    "RTC: cannot start its timer thread ({e}): its interrupts will not come"
                );
            }
        }
    }
}

fn timer(shared: &Shared, stop: &std::sync::atomic::AtomicBool) {
    let mut rtc = lock(&shared.rtc);
    while !stop.load(std::sync::atomic::Ordering::Acquire) {
        let now = host_now();
        if rtc.advance(now) {
            shared.raise();
        }
        rtc = match rtc.next_event(now) {
            Some(at) => {
                let wait = Duration::from_nanos(u64::try_from(at - now).unwrap_or(0));
                shared
                    .changed
                    .wait_timeout(rtc, wait.min(LONGEST_SLEEP))
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => shared.changed.wait(rtc).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

impl Drop for Cmos {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        // Under the lock, so the timer is either waiting or will see `stop`.
        drop(lock(&self.shared.rtc));
        self.shared.changed.notify_all();
        if let Some(timer) = self.timer.take() {
            let _ = timer.join();
        }
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut rtc = lock(&self.shared.rtc);
        let now = host_now();
        let mut cleared = false;
        // A word access reaches the index and the data port in turn.
        for (port, byte) in (offset..).zip(data.iter_mut()) {
            cleared |= port == DATA_PORT && rtc.index == REG_C;
            *byte = rtc.read(port, now);
        }
        drop(rtc);
        // Reading register C lowers IRQF: the timer has events to wait for.
        if cleared {
            self.shared.changed.notify_all();
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let mut rtc = lock(&self.shared.rtc);
        let now = host_now();
        let (mut rose, mut reprogrammed) = (false, false);
        for (port, &byte) in (offset..).zip(data) {
            reprogrammed |= port == DATA_PORT;
            rose |= rtc.write(port, byte, now);
        }
        let wants_timer = rtc.ram[REG_B] & (B_PIE | B_AIE | B_UIE) != 0;
        drop(rtc);
        if wants_timer && self.timer.is_none() && !self.timer_failed {
            self.start_timer();
        }
        if rose {
            self.shared.raise();
        }
        if reprogrammed {
            self.shared.changed.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-12-07 19:45:30 UTC, on the host's clock.
    fn t0() -> Nanos {
        let secs = NaiveDate::from_ymd_opt(2026, 12, 7)
            .and_then(|d| d.and_hms_opt(19, 45, 30))
            .unwrap()
            .and_utc()
            .timestamp();
        Nanos::from(secs) * NANOS_PER_SEC
    }

    const MS: Nanos = 1_000_000;

    fn get(rtc: &mut Rtc, index: usize, now: Nanos) -> u8 {
        rtc.write(INDEX_PORT, index as u8, now);
        rtc.read(DATA_PORT, now)
    }

    fn set(rtc: &mut Rtc, index: usize, value: u8, now: Nanos) -> bool {
        rtc.write(INDEX_PORT, index as u8, now);
        rtc.write(DATA_PORT, value, now)
    }

    /// Seconds, minutes, hours, weekday, day, month, year, century.
    fn clock(rtc: &mut Rtc, now: Nanos) -> [u8; 8] {
        TIME_REGISTERS.map(|i| get(rtc, i, now))
    }

    #[test]
    fn reads_the_host_time_as_firmware_leaves_the_chip() {
        let mut rtc = Rtc::new(t0());
        let now = t0() + 250 * MS;
        assert_eq!(
            clock(&mut rtc, now),
            [0x30, 0x45, 0x19, 0x02, 0x07, 0x12, 0x26, 0x20]
        );
        assert_eq!(get(&mut rtc, REG_A, now), 0x26);
        assert_eq!(get(&mut rtc, REG_B, now), 0x02);
        // The periodic flag rises at firmware's 1024 Hz, interrupt or not.
        assert_eq!(get(&mut rtc, REG_C, now), C_PF);
        assert_eq!(get(&mut rtc, REG_D, now), 0x80);
        // 61 s on, across a minute.
        let later = now + 61 * NANOS_PER_SEC;
        assert_eq!(clock(&mut rtc, later)[..3], [0x31, 0x46, 0x19]);
        // The index port is write-only.
        assert_eq!(rtc.read(INDEX_PORT, now), 0xff);
    }

    #[test]
    fn update_in_progress_shows_only_just_before_each_second() {
        let mut rtc = Rtc::new(t0());
        let uip = |rtc: &mut Rtc, at: Nanos| get(rtc, REG_A, at) & A_UIP != 0;
        assert!(!uip(&mut rtc, t0() + 500 * MS));
        assert!(!uip(&mut rtc, t0() + NANOS_PER_SEC - 300_000));
        assert!(uip(&mut rtc, t0() + NANOS_PER_SEC - 100_000));
        assert!(!uip(&mut rtc, t0() + NANOS_PER_SEC));
        // SET stops the updates, and with them UIP.
        set(&mut rtc, REG_B, B_SET | B_24_HOUR, t0());
        assert!(!uip(&mut rtc, t0() + NANOS_PER_SEC - 100_000));
    }

    #[test]
    fn binary_and_12_hour_modes_show_the_same_time() {
        let mut rtc = Rtc::new(t0());
        set(&mut rtc, REG_B, B_BINARY, t0());
        let now = t0() + 250 * MS;
        assert_eq!(clock(&mut rtc, now), [30, 45, 0x87, 2, 7, 12, 26, 20]);
        set(&mut rtc, REG_B, 0, t0());
        assert_eq!(get(&mut rtc, HOURS, now), 0x87, "BCD 7 PM");
    }

    /// Linux's `mc146818_set_time` on Intel: SET, the divider held in
    /// reset, the time, then both back; the first update comes half a
    /// second after the divider starts.
    #[test]
    fn linux_sets_the_time_with_the_divider_held() {
        let mut rtc = Rtc::new(t0());
        let now = t0() + 250 * MS;
        set(&mut rtc, REG_B, B_SET | B_24_HOUR, now);
        set(&mut rtc, REG_A, 0x76, now);
        for (i, v) in [
            (YEAR, 0x30),
            (MONTH, 0x01),
            (DAY, 0x02),
            (HOURS, 0x03),
            (MINUTES, 0x04),
            (SECONDS, 0x05),
        ] {
            set(&mut rtc, i, v, now);
        }
        set(&mut rtc, REG_B, B_24_HOUR, now + 10 * MS);
        let later = now + 3 * NANOS_PER_SEC;
        assert_eq!(get(&mut rtc, SECONDS, later), 0x05, "still held in reset");
        let start = now + 5 * NANOS_PER_SEC;
        set(&mut rtc, REG_A, 0x26, start);
        assert_eq!(
            clock(&mut rtc, start + 499 * MS),
            // Linux leaves the weekday alone, and it counts on its own:
            // still Monday, although 2030-01-02 is a Wednesday.
            [0x05, 0x04, 0x03, 0x02, 0x02, 0x01, 0x30, 0x20]
        );
        assert_eq!(get(&mut rtc, SECONDS, start + 500 * MS), 0x06);
    }

    /// On AMD, Linux leaves the divider alone: the updates go on at the
    /// divider's phase.
    #[test]
    fn set_alone_keeps_the_divider_phase() {
        let mut rtc = Rtc::new(t0());
        let now = t0() + 250 * MS;
        set(&mut rtc, REG_B, B_SET | B_24_HOUR, now);
        set(&mut rtc, MINUTES, 0x00, now);
        assert_eq!(get(&mut rtc, MINUTES, now + 2 * NANOS_PER_SEC), 0x00);
        assert_eq!(get(&mut rtc, SECONDS, now + 2 * NANOS_PER_SEC), 0x30);
        set(&mut rtc, REG_B, B_24_HOUR, now + 2 * NANOS_PER_SEC);
        assert_eq!(clock(&mut rtc, t0() + 2999 * MS)[..2], [0x30, 0x00]);
        assert_eq!(clock(&mut rtc, t0() + 3 * NANOS_PER_SEC)[..2], [0x31, 0x00]);
    }

    #[test]
    fn a_time_register_written_while_running_counts_on_from_the_value() {
        let mut rtc = Rtc::new(t0());
        set(&mut rtc, HOURS, 0x05, t0() + 250 * MS);
        assert_eq!(clock(&mut rtc, t0() + 1250 * MS)[..3], [0x31, 0x45, 0x05]);
    }

    #[test]
    fn an_invalid_date_leaves_the_clock_running_where_it_was() {
        let mut rtc = Rtc::new(t0());
        let now = t0() + 250 * MS;
        set(&mut rtc, REG_B, B_SET | B_24_HOUR, now);
        set(&mut rtc, MONTH, 0x13, now);
        set(&mut rtc, REG_B, B_24_HOUR, now);
        assert_eq!(
            clock(&mut rtc, now + NANOS_PER_SEC),
            [0x31, 0x45, 0x19, 0x02, 0x07, 0x12, 0x26, 0x20]
        );
        // So does a digit BCD has not.
        set(&mut rtc, SECONDS, 0x3a, now);
        assert_eq!(get(&mut rtc, SECONDS, now), 0x30);
    }

    #[test]
    fn the_weekday_counts_from_what_the_guest_set() {
        let mut rtc = Rtc::new(t0());
        let now = t0() + 250 * MS;
        // Friday instead of Monday, then past midnight to Saturday.
        set(&mut rtc, WEEKDAY, 6, now);
        assert_eq!(get(&mut rtc, WEEKDAY, now), 6);
        let tomorrow = now + 5 * 3600 * NANOS_PER_SEC;
        assert_eq!(clock(&mut rtc, tomorrow)[3..5], [7, 0x08]);
        assert_eq!(get(&mut rtc, WEEKDAY, tomorrow + 86_400 * NANOS_PER_SEC), 1);
    }

    #[test]
    fn an_alarm_raises_irq_once_until_register_c_is_read() {
        let mut rtc = Rtc::new(t0());
        let now = t0() + 250 * MS;
        set(&mut rtc, SECONDS_ALARM, 0x32, now);
        set(&mut rtc, MINUTES_ALARM, 0x45, now);
        set(&mut rtc, HOURS_ALARM, 0x19, now);
        assert!(!set(&mut rtc, REG_B, B_AIE | B_24_HOUR, now));
        assert_eq!(rtc.next_event(now), Some(t0() + 2 * NANOS_PER_SEC));
        assert!(!rtc.advance(t0() + 1999 * MS));
        assert!(rtc.advance(t0() + 2 * NANOS_PER_SEC), "the edge");
        assert_eq!(rtc.next_event(t0() + 2 * NANOS_PER_SEC), None, "IRQF is up");
        assert!(!rtc.advance(t0() + 3 * NANOS_PER_SEC), "no second edge");
        // Updates and periodic ticks were flagged too, but only the alarm
        // interrupts.
        assert_eq!(
            get(&mut rtc, REG_C, t0() + 3 * NANOS_PER_SEC),
            C_IRQF | C_PF | C_AF | C_UF
        );
        assert_eq!(get(&mut rtc, REG_C, t0() + 3 * NANOS_PER_SEC), 0);
        let next_day = t0() + (2 + 86_400) * NANOS_PER_SEC;
        assert_eq!(rtc.next_event(t0() + 3 * NANOS_PER_SEC), Some(next_day));
    }

    #[test]
    fn an_alarm_that_matches_any_time_fires_every_second() {
        let mut rtc = Rtc::new(t0());
        let now = t0() + 250 * MS;
        for i in [SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM] {
            set(&mut rtc, i, 0xff, now);
        }
        set(&mut rtc, REG_B, B_AIE | B_24_HOUR, now);
        for k in 1..4 {
            let at = t0() + k * NANOS_PER_SEC;
            assert_eq!(rtc.next_event(at - MS), Some(at));
            assert!(rtc.advance(at));
            assert_eq!(get(&mut rtc, REG_C, at) & (C_IRQF | C_AF), C_IRQF | C_AF);
        }
    }

    #[test]
    fn a_flag_already_set_raises_the_line_when_its_interrupt_is_enabled() {
        let mut rtc = Rtc::new(t0());
        rtc.advance(t0() + 1500 * MS);
        assert!(set(&mut rtc, REG_B, B_UIE | B_24_HOUR, t0() + 1500 * MS));
        assert_eq!(get(&mut rtc, REG_C, t0() + 1500 * MS), C_IRQF | C_PF | C_UF);
    }

    #[test]
    fn periodic_interrupts_follow_the_rate() {
        let mut rtc = Rtc::new(t0());
        let now = t0() + 250 * MS;
        // Rate 15 is 2 Hz.
        set(&mut rtc, REG_A, A_DIVIDER_32K | 15, now);
        assert_eq!(get(&mut rtc, REG_C, now), C_PF, "ticks at 1024 Hz so far");
        set(&mut rtc, REG_B, B_PIE | B_24_HOUR, now);
        assert_eq!(rtc.next_event(now), Some(t0() + 500 * MS));
        assert!(rtc.advance(t0() + 500 * MS));
        assert_eq!(get(&mut rtc, REG_C, t0() + 600 * MS), C_IRQF | C_PF);
        // Rate 6 is 1024 Hz: 976,562.5 ns, rounded up.
        set(&mut rtc, REG_A, A_DIVIDER_32K | 6, t0() + 600 * MS);
        let next = rtc.next_event(t0() + 600 * MS).unwrap() - t0();
        assert_eq!(next, 615 * 976_562 + 615 / 2 + 1);
        // Rate 0 stops them.
        set(&mut rtc, REG_A, A_DIVIDER_32K, t0() + 600 * MS);
        assert_eq!(rtc.next_event(t0() + 600 * MS), None);
    }

    #[test]
    fn setting_set_clears_the_update_interrupt() {
        let mut rtc = Rtc::new(t0());
        set(&mut rtc, REG_B, B_SET | B_UIE | B_24_HOUR, t0());
        assert_eq!(get(&mut rtc, REG_B, t0()), B_SET | B_24_HOUR);
        assert_eq!(rtc.next_event(t0()), None);
    }

    #[test]
    fn cmos_ram_keeps_what_is_written_and_status_registers_are_read_only() {
        let mut rtc = Rtc::new(t0());
        set(&mut rtc, 0x0e, 0x5a, t0());
        set(&mut rtc, 0x7f, 0xa5, t0());
        assert_eq!(get(&mut rtc, 0x0e, t0()), 0x5a);
        assert_eq!(get(&mut rtc, 0x7f, t0()), 0xa5);
        // The NMI-mask bit is not part of the index.
        rtc.write(INDEX_PORT, NMI_DISABLE | 0x0e, t0());
        assert_eq!(rtc.read(DATA_PORT, t0()), 0x5a);
        set(&mut rtc, REG_C, 0xff, t0());
        set(&mut rtc, REG_D, 0x00, t0());
        assert_eq!(get(&mut rtc, REG_C, t0()), 0);
        assert_eq!(get(&mut rtc, REG_D, t0()), D_VRT);
    }

    proptest::proptest! {
        /// Whatever a guest writes, and however time passes: no panic, a
        /// read of register C clears it, and a running clock in BCD shows
        /// BCD digits.
        #[test]
        fn any_guest_access_keeps_the_chip_sane(
            ops in proptest::collection::vec(
                (0u64..2, proptest::prelude::any::<u8>(), proptest::prelude::any::<bool>(), 0i64..100_000_000_000),
                1..200,
            )
        ) {
            let mut rtc = Rtc::new(t0());
            let mut now = t0();
            for (port, value, write, step) in ops {
                now += Nanos::from(step);
                if write {
                    rtc.write(port, value, now);
                } else {
                    rtc.read(port, now);
                }
                let _ = rtc.next_event(now);
                rtc.write(INDEX_PORT, REG_C as u8, now);
                rtc.read(DATA_PORT, now);
                proptest::prop_assert_eq!(rtc.read(DATA_PORT, now), 0);
                if rtc.running() && !rtc.binary() {
                    for i in TIME_REGISTERS {
                        rtc.write(INDEX_PORT, i as u8, now);
                        let byte = rtc.read(DATA_PORT, now) & 0x7f;
                        proptest::prop_assert!(decode(byte, false).is_some(), "{i:#x}: {byte:#x}");
                    }
                }
            }
        }
    }

    fn irq_within(irq: &EventFd, timeout_ms: i32) -> bool {
        let mut fds = [libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(irq),
            events: libc::POLLIN,
            revents: 0,
        }];
        // SAFETY: one valid pollfd for the call's duration.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout_ms) };
        ready == 1 && irq.read().is_ok()
    }

    /// The device on the bus, with its timer and the host's clock: a word
    /// access reaches both ports, and an every-second alarm interrupts.
    #[test]
    fn the_timer_raises_irq_8_for_the_alarm() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut cmos = Cmos::new(irq.try_clone().unwrap());
        assert!(
            cmos.timer.is_none(),
            "no timer before an interrupt is enabled"
        );
        cmos.write(0, &[0x0e, 0x5a]);
        let mut byte = [0];
        cmos.write(0, &[0x0e]);
        cmos.read(1, &mut byte);
        assert_eq!(byte, [0x5a]);
        for i in [SECONDS_ALARM, MINUTES_ALARM, HOURS_ALARM] {
            cmos.write(0, &[i as u8, 0xc0]);
        }
        cmos.write(0, &[REG_B as u8, B_AIE | B_24_HOUR]);
        assert!(cmos.timer.is_some());
        // Hang detectors: the alarm is due within a second each time.
        for _ in 0..2 {
            assert!(irq_within(&irq, 5000), "no alarm interrupt");
            cmos.write(0, &[REG_C as u8]);
            cmos.read(1, &mut byte);
            assert_eq!(byte[0] & (C_IRQF | C_AF), C_IRQF | C_AF);
        }
        drop(cmos);
    }
}
