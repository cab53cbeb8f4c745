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

/// A chip the guest set an hour ahead, with CMOS RAM written and an
/// alarm flag unread, saved and restored five seconds later: an hour
/// ahead still (five seconds on), the RAM and the flag as they were.
#[test]
fn a_saved_chip_restores_with_the_guest_s_time_and_ram() {
    let mut rtc = Rtc::new(t0());
    set(&mut rtc, REG_B, B_SET | B_24_HOUR, t0());
    set(&mut rtc, 4, 0x20, t0());
    set(&mut rtc, REG_B, B_24_HOUR, t0());
    set(&mut rtc, 0x40, 0xab, t0());
    set(&mut rtc, SECONDS_ALARM, 0xc0, t0());
    set(&mut rtc, MINUTES_ALARM, 0xc0, t0());
    set(&mut rtc, HOURS_ALARM, 0xc0, t0());
    let at = t0() + 2 * NANOS_PER_SEC;
    let saved = rtc.save(at);
    assert_ne!(saved.flags & C_AF, 0, "the alarm flag is saved unread");
    let saved: RtcSnapshot = serde_json::from_str(&serde_json::to_string(&saved).unwrap()).unwrap();

    let later = at + 5 * NANOS_PER_SEC;
    let mut back = Rtc::restore(&saved, later).unwrap();
    assert_eq!(clock(&mut back, later), clock(&mut rtc, later));
    assert_eq!(get(&mut back, 4, later), 0x20);
    assert_eq!(get(&mut back, 0x40, later), 0xab);
    assert_ne!(get(&mut back, REG_C, later) & C_AF, 0);

    let mut short = saved.clone();
    short.ram.pop();
    assert!(Rtc::restore(&short, later).is_none());
    let mut beyond = saved;
    beyond.index = 128;
    assert!(Rtc::restore(&beyond, later).is_none());
}
