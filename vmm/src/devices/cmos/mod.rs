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

mod rtc;

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use vmm_sys_util::eventfd::EventFd;

use self::rtc::{Nanos, Rtc, B_AIE, B_PIE, B_UIE, DATA_PORT, REG_B, REG_C};
pub use self::rtc::{RtcSnapshot, CENTURY};
use crate::bus::BusDevice;
use crate::util::lock;

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

#[derive(Debug, thiserror::Error)]
pub enum CmosError {
    #[error("The saved RTC state has not 128 bytes of RAM or its index is beyond them")]
    Restore,
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

    pub fn save(&self) -> RtcSnapshot {
        lock(&self.shared.rtc).save(host_now())
    }

    /// The saved chip in place of this one; the timer starts if the
    /// guest had an interrupt enabled.
    pub fn restore(&mut self, saved: &RtcSnapshot) -> Result<(), CmosError> {
        let rtc = Rtc::restore(saved, host_now()).ok_or(CmosError::Restore)?;
        let wants_timer = rtc.ram[REG_B] & (B_PIE | B_AIE | B_UIE) != 0;
        *lock(&self.shared.rtc) = rtc;
        self.shared.changed.notify_all();
        if wants_timer && self.timer.is_none() && !self.timer_failed {
            self.start_timer();
        }
        Ok(())
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
    use super::rtc::{B_24_HOUR, C_AF, C_IRQF, HOURS_ALARM, MINUTES_ALARM, SECONDS_ALARM};
    use super::*;

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
