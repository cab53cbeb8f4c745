//! A virtio 1.x modern PCI driver: status handshake, features, split
//! virtqueues, MSI-X or polled completions, config space with the
//! generation counter.

use core::sync::atomic::{fence, AtomicU64, Ordering};

use crate::io::{self, mmio};
use crate::pci::{self, Function, VirtioCap};
use crate::rt::Failure;
use crate::{bail, boot, record, Clock, Dma};

/// `probe.rekick_ms`: how long a queue may complete nothing before it is
/// notified again (0: never). Set once at start-up.
pub static REKICK_MS: AtomicU64 = AtomicU64::new(0);

pub const STATUS_ACKNOWLEDGE: u8 = 1;
pub const STATUS_DRIVER: u8 = 2;
pub const STATUS_DRIVER_OK: u8 = 4;
pub const STATUS_FEATURES_OK: u8 = 8;
pub const STATUS_NEEDS_RESET: u8 = 0x40;
pub const STATUS_FAILED: u8 = 0x80;
pub const F_VERSION_1: u64 = 1 << 32;
/// VIRTIO_F_EVENT_IDX: notifications and interrupts suppressed through
/// the rings' event indices (2.7.7, 2.7.10).
pub const F_EVENT_IDX: u64 = 1 << 29;
pub const MAX_QUEUES: usize = 16;
/// Where device interrupts start: config is `VECTOR_BASE`, queue i is
/// `VECTOR_BASE + 1 + i`, per device slot.
const VECTOR_BASE: u8 = 0x40;
const VECTORS_PER_DEVICE: u8 = 0x12;

// Common configuration registers.
const DEVICE_FEATURE_SELECT: u64 = 0;
const DEVICE_FEATURE: u64 = 4;
const DRIVER_FEATURE_SELECT: u64 = 8;
const DRIVER_FEATURE: u64 = 12;
const CONFIG_MSIX_VECTOR: u64 = 16;
pub const NUM_QUEUES: u64 = 18;
const DEVICE_STATUS: u64 = 20;
const CONFIG_GENERATION: u64 = 21;
const QUEUE_SELECT: u64 = 22;
const QUEUE_SIZE: u64 = 24;
const QUEUE_MSIX_VECTOR: u64 = 26;
const QUEUE_ENABLE: u64 = 28;
const QUEUE_NOTIFY_OFF: u64 = 30;
const QUEUE_DESC: u64 = 32;
const QUEUE_DRIVER: u64 = 40;
const QUEUE_DEVICE: u64 = 48;

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
/// VIRTQ_USED_F_NO_NOTIFY: the device asks not to be notified.
const USED_F_NO_NOTIFY: u16 = 1;
const NO_VECTOR: u16 = 0xffff;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Interrupt,
    Poll,
}

pub struct Queue {
    pub size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    notify: u64,
    pub vector: Option<u8>,
    next_avail: u16,
    last_used: u16,
    /// EVENT_IDX was negotiated: `used_event` and `avail_event` count.
    event_idx: bool,
    /// The available index when the device was last notified (or when a
    /// notification was last found unneeded).
    notified_avail: u16,
    /// Completions seen.
    pub completions: u32,
    /// Notifications written to the device.
    pub notifies: u32,
}

pub struct Device {
    pub f: Function,
    common: u64,
    device_cfg: Option<VirtioCap>,
    device_cfg_base: u64,
    notify_base: u64,
    notify_multiplier: u32,
    pub isr: u64,
    pub device_features: u64,
    pub driver_features: u64,
    pub num_queues: u16,
    pub max_sizes: [u16; MAX_QUEUES],
    pub queues: [Option<Queue>; MAX_QUEUES],
    pub mode: Mode,
    pub config_vector: Option<u8>,
    vector_base: u8,
    /// Config interrupts seen when the status was last looked at: one that
    /// arrives between two waits must still be looked at.
    config_irqs_looked: u32,
}

fn cap_addr(f: &Function, cap: Option<VirtioCap>) -> Option<u64> {
    let cap = cap?;
    let base = f.bar_addr(cap.bar);
    (base != 0).then_some(base + u64::from(cap.offset))
}

impl Device {
    /// `slot` spreads interrupt vectors so several devices never share one.
    pub fn new(f: Function, slot: usize, mode: Mode) -> Result<Device, Failure> {
        let Some(common) = cap_addr(&f, f.virtio[1]) else {
            bail!("{} has no virtio common config capability", f.bdf)
        };
        let Some(notify_base) = cap_addr(&f, f.virtio[2]) else {
            bail!("{} has no virtio notify capability", f.bdf)
        };
        let isr = cap_addr(&f, f.virtio[3]).unwrap_or(0);
        let device_cfg_base = cap_addr(&f, f.virtio[4]).unwrap_or(0);
        let mode = if f.msix.is_none() { Mode::Poll } else { mode };
        let vector_base = VECTOR_BASE + VECTORS_PER_DEVICE * (slot as u8 % 8);
        Ok(Device {
            notify_multiplier: f.virtio[2].map_or(0, |c| c.notify_multiplier),
            device_cfg: f.virtio[4],
            f,
            common,
            device_cfg_base,
            notify_base,
            isr,
            device_features: 0,
            driver_features: 0,
            num_queues: 0,
            max_sizes: [0; MAX_QUEUES],
            queues: [const { None }; MAX_QUEUES],
            mode,
            config_vector: None,
            vector_base,
            config_irqs_looked: 0,
        })
    }

    pub fn status(&self) -> u8 {
        mmio::read8(self.common + DEVICE_STATUS)
    }

    fn set_status(&self, status: u8) {
        mmio::write8(self.common + DEVICE_STATUS, status);
    }

    /// Writes 0 and waits for the device to read back 0.
    pub fn reset(&mut self, clock: &Clock) -> Result<(), Failure> {
        self.set_status(0);
        let deadline = clock.deadline_ms(1000);
        while self.status() != 0 {
            if clock.expired(deadline) {
                bail!(
                    "{} did not complete reset (status 0x{:02x})",
                    self.f.bdf,
                    self.status()
                );
            }
            io::pause();
        }
        self.queues = [const { None }; MAX_QUEUES];
        Ok(())
    }

    /// Reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK. Accepts the
    /// device's features that are in `wanted`, and always VERSION_1.
    pub fn negotiate(&mut self, wanted: u64, clock: &Clock) -> Result<(), Failure> {
        self.reset(clock)?;
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        let mut features = 0u64;
        for word in 0..2u32 {
            mmio::write32(self.common + DEVICE_FEATURE_SELECT, word);
            features |= u64::from(mmio::read32(self.common + DEVICE_FEATURE)) << (32 * word);
        }
        self.device_features = features;
        if features & F_VERSION_1 == 0 {
            self.set_status(STATUS_FAILED);
            bail!(
                "{} does not offer VIRTIO_F_VERSION_1 (features 0x{features:x})",
                self.f.bdf
            );
        }
        self.driver_features = features & (wanted | F_VERSION_1);
        for word in 0..2u32 {
            mmio::write32(self.common + DRIVER_FEATURE_SELECT, word);
            mmio::write32(
                self.common + DRIVER_FEATURE,
                (self.driver_features >> (32 * word)) as u32,
            );
        }
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        if self.status() & STATUS_FEATURES_OK == 0 {
            self.set_status(STATUS_FAILED);
            bail!(
                "{} refused features 0x{:x} (FEATURES_OK not kept)",
                self.f.bdf,
                self.driver_features
            );
        }
        self.num_queues = mmio::read16(self.common + NUM_QUEUES);
        for q in 0..usize::from(self.num_queues).min(MAX_QUEUES) {
            mmio::write16(self.common + QUEUE_SELECT, q as u16);
            self.max_sizes[q] = mmio::read16(self.common + QUEUE_SIZE);
        }
        if self.mode == Mode::Interrupt {
            let vector = self.vector_base;
            pci::msix_set_vector(&self.f, 0, vector);
            mmio::write16(self.common + CONFIG_MSIX_VECTOR, 0);
            self.config_vector =
                (mmio::read16(self.common + CONFIG_MSIX_VECTOR) != NO_VECTOR).then_some(vector);
        } else {
            mmio::write16(self.common + CONFIG_MSIX_VECTOR, NO_VECTOR);
        }
        Ok(())
    }

    /// Sets up queue `index` with `size` entries (0: the device's maximum).
    pub fn setup_queue(&mut self, index: u16, size: u16, dma: &mut Dma) -> Result<(), Failure> {
        let q = usize::from(index);
        if q >= MAX_QUEUES || index >= self.num_queues {
            bail!(
                "{} has no queue {index} (num_queues {})",
                self.f.bdf,
                self.num_queues
            );
        }
        let max = self.max_sizes[q];
        let size = if size == 0 || size > max { max } else { size };
        if size == 0 {
            bail!("{} queue {index} is not available (size 0)", self.f.bdf);
        }
        let n = u64::from(size);
        let desc = dma.alloc(16 * n, 16)?;
        let avail = dma.alloc(6 + 2 * n, 2)?;
        let used = dma.alloc(6 + 8 * n, 4)?;
        mmio::write16(self.common + QUEUE_SELECT, index);
        mmio::write16(self.common + QUEUE_SIZE, size);
        mmio::write64(self.common + QUEUE_DESC, desc);
        mmio::write64(self.common + QUEUE_DRIVER, avail);
        mmio::write64(self.common + QUEUE_DEVICE, used);
        let mut vector = None;
        if self.mode == Mode::Interrupt {
            let entry = index + 1;
            let v = self.vector_base + 1 + index as u8;
            pci::msix_set_vector(&self.f, entry, v);
            mmio::write16(self.common + QUEUE_MSIX_VECTOR, entry);
            if mmio::read16(self.common + QUEUE_MSIX_VECTOR) == entry {
                vector = Some(v);
            }
        } else {
            mmio::write16(self.common + QUEUE_MSIX_VECTOR, NO_VECTOR);
        }
        let notify_off = mmio::read16(self.common + QUEUE_NOTIFY_OFF);
        mmio::write16(self.common + QUEUE_ENABLE, 1);
        self.queues[q] = Some(Queue {
            size,
            desc,
            avail,
            used,
            notify: self.notify_base + u64::from(notify_off) * u64::from(self.notify_multiplier),
            vector,
            next_avail: 0,
            last_used: 0,
            event_idx: self.driver_features & F_EVENT_IDX != 0,
            notified_avail: 0,
            completions: 0,
            notifies: 0,
        });
        Ok(())
    }

    pub fn driver_ok(&mut self, bus: &pci::Bus) -> Result<(), Failure> {
        if self.mode == Mode::Interrupt {
            pci::msix_enable(bus, &self.f, true);
        }
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        let status = self.status();
        if status & STATUS_NEEDS_RESET != 0 {
            bail!(
                "{} set DEVICE_NEEDS_RESET at DRIVER_OK (status 0x{status:02x})",
                self.f.bdf
            );
        }
        if status & STATUS_DRIVER_OK == 0 {
            bail!(
                "{} did not keep DRIVER_OK (status 0x{status:02x})",
                self.f.bdf
            );
        }
        Ok(())
    }

    pub fn config_len(&self) -> u32 {
        self.device_cfg.map_or(0, |c| c.length)
    }

    pub fn config_generation(&self) -> u8 {
        mmio::read8(self.common + CONFIG_GENERATION)
    }

    /// Reads `out.len()` bytes of device config from `offset`, retrying
    /// until the generation counter is stable. Aligned dwords where
    /// possible, as drivers do.
    pub fn read_config(&self, offset: u32, out: &mut [u8]) -> Result<(), Failure> {
        if out.is_empty() {
            return Ok(());
        }
        if self.device_cfg_base == 0 {
            bail!("{} has no device config capability", self.f.bdf);
        }
        for _ in 0..16 {
            let before = self.config_generation();
            let mut i = 0usize;
            while i < out.len() {
                let addr = self.device_cfg_base + u64::from(offset) + i as u64;
                if addr.is_multiple_of(4) && out.len() - i >= 4 {
                    out[i..i + 4].copy_from_slice(&mmio::read32(addr).to_le_bytes());
                    i += 4;
                } else {
                    out[i] = mmio::read8(addr);
                    i += 1;
                }
            }
            if self.config_generation() == before {
                return Ok(());
            }
        }
        bail!("{} config generation never settled", self.f.bdf)
    }

    /// Writes device config bytes one by one (any width is valid; bytes
    /// reach every offset).
    pub fn write_config(&self, offset: u32, bytes: &[u8]) -> Result<(), Failure> {
        if self.device_cfg_base == 0 {
            bail!("{} has no device config capability", self.f.bdf);
        }
        for (i, &b) in bytes.iter().enumerate() {
            mmio::write8(self.device_cfg_base + u64::from(offset) + i as u64, b);
        }
        Ok(())
    }

    /// Writes a 32-bit config field with one aligned 32-bit access, as
    /// VIRTIO 1.3 4.1.3.1 requires for 32-bit fields (`emerg_wr`).
    pub fn write_config32(&self, offset: u32, value: u32) -> Result<(), Failure> {
        if self.device_cfg_base == 0 {
            bail!("{} has no device config capability", self.f.bdf);
        }
        if !offset.is_multiple_of(4) || offset + 4 > self.config_len() {
            bail!(
                "{}: config offset {offset} is not an aligned field in a window of {} bytes",
                self.f.bdf,
                self.config_len()
            );
        }
        mmio::write32(self.device_cfg_base + u64::from(offset), value);
        Ok(())
    }

    /// Puts a descriptor chain on queue `index` and notifies the device,
    /// whatever it asked. `bufs` are (address, length, device-writable).
    /// One request in flight per queue: the chain always starts at
    /// descriptor 0, which keeps the callers simple and exact.
    pub fn submit(&mut self, index: u16, bufs: &[(u64, u32, bool)]) -> Result<(), Failure> {
        self.add_chain(index, 0, bufs)?;
        let q = self.queue_mut(index)?;
        q.notified_avail = q.next_avail;
        q.notifies += 1;
        mmio::write16(q.notify, index);
        Ok(())
    }

    fn queue_mut(&mut self, index: u16) -> Result<&mut Queue, Failure> {
        let bdf = self.f.bdf;
        match self
            .queues
            .get_mut(usize::from(index))
            .and_then(Option::as_mut)
        {
            Some(q) => Ok(q),
            None => bail!("{bdf} queue {index} is not set up"),
        }
    }

    /// Writes a chain into descriptors `head..head + bufs.len()` and makes
    /// it available, without notifying: several requests in flight on one
    /// queue, each caller owning its range of descriptors. `bufs` are
    /// (address, length, device-writable).
    pub fn add_chain(
        &mut self,
        index: u16,
        head: u16,
        bufs: &[(u64, u32, bool)],
    ) -> Result<(), Failure> {
        let bdf = self.f.bdf;
        let q = self.queue_mut(index)?;
        if bufs.is_empty() || usize::from(head) + bufs.len() > usize::from(q.size) {
            bail!(
                "{bdf} queue {index}: chain of {} buffers at descriptor {head} does not fit",
                bufs.len()
            );
        }
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let at = u64::from(head) + i as u64;
            let d = q.desc + 16 * at;
            let mut flags = if write { DESC_F_WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= DESC_F_NEXT;
            }
            // SAFETY: the descriptor table is our DMA memory.
            unsafe {
                core::ptr::write_volatile(d as *mut u64, addr);
                core::ptr::write_volatile((d + 8) as *mut u32, len);
                core::ptr::write_volatile((d + 12) as *mut u16, flags);
                core::ptr::write_volatile((d + 14) as *mut u16, (at + 1) as u16);
            }
        }
        let slot = q.avail + 4 + 2 * u64::from(q.next_avail % q.size);
        // SAFETY: the available ring is our DMA memory.
        unsafe { core::ptr::write_volatile(slot as *mut u16, head) };
        q.next_avail = q.next_avail.wrapping_add(1);
        fence(Ordering::SeqCst);
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile((q.avail + 2) as *mut u16, q.next_avail) };
        Ok(())
    }

    /// Notifies the device of the chains made available since the last
    /// notification, unless it asked not to be: VIRTQ_USED_F_NO_NOTIFY, or
    /// with EVENT_IDX an `avail_event` those chains did not pass (2.7.10).
    /// Returns whether it notified.
    pub fn notify(&mut self, index: u16) -> Result<bool, Failure> {
        let q = self.queue_mut(index)?;
        let (old, new) = (q.notified_avail, q.next_avail);
        if old == new {
            return Ok(false);
        }
        q.notified_avail = new;
        // The new available index must be visible before we read what the
        // device asked, or both sides can skip the notification.
        fence(Ordering::SeqCst);
        let needed = if q.event_idx {
            let at = q.used + 4 + 8 * u64::from(q.size);
            // SAFETY: avail_event, the used ring's last field, is our DMA
            // memory written by the device.
            let avail_event = unsafe { core::ptr::read_volatile(at as *const u16) };
            need_event(avail_event, new, old)
        } else {
            // SAFETY: the used ring's flags, as above.
            let flags = unsafe { core::ptr::read_volatile(q.used as *const u16) };
            flags & USED_F_NO_NOTIFY == 0
        };
        if needed {
            q.notifies += 1;
            mmio::write16(q.notify, index);
        }
        Ok(needed)
    }

    /// Notifications written to queue `index` so far.
    pub fn notifies(&self, index: u16) -> u32 {
        self.queues[usize::from(index)]
            .as_ref()
            .map_or(0, |q| q.notifies)
    }

    /// Waits for the device to use the submitted chain; returns the number
    /// of bytes it wrote.
    pub fn wait_used(
        &mut self,
        index: u16,
        clock: &Clock,
        timeout_ms: u64,
    ) -> Result<u32, Failure> {
        let deadline = clock.deadline_ms(timeout_ms);
        let rekick_ms = REKICK_MS.load(Ordering::Relaxed);
        let mut waited_ms = 0;
        while rekick_ms > 0 && waited_ms + rekick_ms < timeout_ms {
            if let Some(written) =
                self.wait_used_until(index, clock, clock.deadline_ms(rekick_ms))?
            {
                return Ok(written);
            }
            // A spurious notification is allowed (VIRTIO 1.3, 2.7.13);
            // said, so a run that needed one shows it.
            waited_ms += rekick_ms;
            record!(
                "warn rekick {} queue={index} after_ms={waited_ms}",
                self.f.bdf
            );
            let q = self.queue_mut(index)?;
            mmio::write16(q.notify, index);
        }
        match self.wait_used_until(index, clock, deadline)? {
            Some(written) => Ok(written),
            None => bail!(
                "{} queue {index}: no completion within {timeout_ms} ms (status 0x{:02x})",
                self.f.bdf,
                self.status()
            ),
        }
    }

    /// As `wait_used`, but None at `deadline` (a TSC value) instead of a
    /// failure: for queues where no completion is an answer (input that
    /// has not arrived yet).
    pub fn wait_used_until(
        &mut self,
        index: u16,
        clock: &Clock,
        deadline: u64,
    ) -> Result<Option<u32>, Failure> {
        if !self.wait_for_used(index, clock, deadline)? {
            return Ok(None);
        }
        Ok(self.pop_used(index)?.map(|(_, written)| written))
    }

    /// Waits until the used ring holds an element not yet popped: true, or
    /// false at `deadline` (a TSC value). Sleeps until an interrupt where
    /// the queue has a vector, else spins.
    pub fn wait_for_used(
        &mut self,
        index: u16,
        clock: &Clock,
        deadline: u64,
    ) -> Result<bool, Failure> {
        let bdf = self.f.bdf;
        let mode = self.mode;
        let Some(q) = self.queues[usize::from(index)].as_mut() else {
            bail!("{bdf} queue {index} is not set up")
        };
        let used_idx = |q: &Queue| {
            // SAFETY: the used ring is our DMA memory, written by the device.
            unsafe { core::ptr::read_volatile((q.used + 2) as *const u16) }
        };
        if q.event_idx {
            // used_event: interrupt us for the next element. Written before
            // the used index is read below, so none can be missed.
            let at = q.avail + 4 + 2 * u64::from(q.size);
            // SAFETY: used_event, the available ring's last field, is our
            // DMA memory.
            unsafe { core::ptr::write_volatile(at as *mut u16, q.last_used) };
            fence(Ordering::SeqCst);
        }
        let status_addr = self.common + DEVICE_STATUS;
        let config_vector = self.config_vector;
        let config_irqs = || config_vector.map_or(0, boot::irq_count);
        let mut seen_config_irqs = self.config_irqs_looked;
        let mut spins = 0u32;
        loop {
            if used_idx(q) != q.last_used {
                return Ok(true);
            }
            if clock.expired(deadline) {
                return Ok(false);
            }
            // A device that asked for a reset will not complete anything.
            // It says so with a config interrupt, so look at the status
            // after one (each look is an exit); without a config vector,
            // now and then.
            let look = match config_vector {
                Some(_) => config_irqs() != seen_config_irqs,
                None => spins % 4096 == 4095,
            };
            if look {
                seen_config_irqs = config_irqs();
                self.config_irqs_looked = seen_config_irqs;
                let status = mmio::read8(status_addr);
                if status & STATUS_NEEDS_RESET != 0 && used_idx(q) == q.last_used {
                    bail!("{bdf} queue {index}: device needs reset (status 0x{status:02x})");
                }
            }
            spins = spins.wrapping_add(1);
            match (mode, q.vector) {
                (Mode::Interrupt, Some(_)) => {
                    // Check again with interrupts off, then sleep: the
                    // completion interrupt (or the watchdog tick) wakes us.
                    io::cli();
                    if used_idx(q) == q.last_used && config_irqs() == seen_config_irqs {
                        io::hlt();
                    } else {
                        io::sti();
                    }
                }
                _ => io::pause(),
            }
        }
    }

    /// The next used element, `(id, len)`: the head of the chain the
    /// device says it used (unchecked: the caller knows which heads it
    /// made available) and the bytes it wrote; None if there is none yet.
    pub fn pop_used(&mut self, index: u16) -> Result<Option<(u32, u32)>, Failure> {
        let q = self.queue_mut(index)?;
        // SAFETY: the used ring is our DMA memory, written by the device.
        let used_idx = unsafe { core::ptr::read_volatile((q.used + 2) as *const u16) };
        if used_idx == q.last_used {
            return Ok(None);
        }
        // The element is read only after the index that published it.
        fence(Ordering::SeqCst);
        let elem = q.used + 4 + 8 * u64::from(q.last_used % q.size);
        // SAFETY: as above.
        let element = unsafe {
            (
                core::ptr::read_volatile(elem as *const u32),
                core::ptr::read_volatile((elem + 4) as *const u32),
            )
        };
        q.last_used = q.last_used.wrapping_add(1);
        q.completions += 1;
        Ok(Some(element))
    }

    /// Interrupts delivered on a queue's vector so far.
    pub fn queue_irqs(&self, index: u16) -> u32 {
        self.queues[usize::from(index)]
            .as_ref()
            .and_then(|q| q.vector)
            .map_or(0, boot::irq_count)
    }

    pub fn config_irqs(&self) -> u32 {
        self.config_vector.map_or(0, boot::irq_count)
    }

    /// Sizes of the queues that are set up, as `N,N,...`.
    pub fn sizes(&self) -> QueueSizes<'_> {
        QueueSizes(self)
    }
}

/// Whether a ring index moving from `old` to `new` passed `event`: the
/// rule both sides of EVENT_IDX apply (`vring_need_event`).
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

pub struct QueueSizes<'a>(&'a Device);

impl core::fmt::Display for QueueSizes<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for q in 0..usize::from(self.0.num_queues).min(MAX_QUEUES) {
            if q > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", self.0.max_sizes[q])?;
        }
        Ok(())
    }
}
