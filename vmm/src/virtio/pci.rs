//! The virtio-pci modern transport for a generic vhost-user device: PCI
//! configuration with virtio and MSI-X capabilities, and one 64-bit BAR
//! holding common config, ISR, device config, notify and the MSI-X table.
//!
//! The data path never comes here: kicks are KVM ioeventfds at the notify
//! addresses and completions are irqfds the backend signals. The VMM sees
//! only set-up, config space and reset.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use super::vhost_user::GenericVhostUser;
use super::QueueSetup;
use crate::pci::config::{ConfigSpace, PciClass, COMMAND};
use crate::pci::msix::Msix;
use crate::pci::PciDevice;
use crate::vstate::interrupts::{InterruptError, IoEvents, MsiRouter};

const VIRTIO_VENDOR: u16 = 0x1af4;
const VIRTIO_DEVICE_BASE: u16 = 0x1040;
const BAR0: usize = 0x10;
pub const BAR_SIZE: u64 = 0x8000;
const COMMON_OFFSET: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const DEVICE_CFG_MAX: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;
const CAP_START: usize = 0x40;
const NO_VECTOR: u16 = 0xffff;

const STATUS_FEATURES_OK: u8 = 8;
const STATUS_DRIVER_OK: u8 = 4;
const STATUS_NEEDS_RESET: u8 = 0x40;
const ISR_CONFIG: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("Failed to set up MSI-X vectors")]
    Msix(#[source] InterruptError),
    #[error("Failed to create a queue eventfd")]
    EventFd(#[source] std::io::Error),
}

#[derive(Clone, Copy)]
struct Queue {
    max: u16,
    size: u16,
    vector: u16,
    enabled: bool,
    desc: u64,
    avail: u64,
    used: u64,
}

impl Queue {
    fn new(max: u16) -> Queue {
        Queue {
            max,
            size: max,
            vector: NO_VECTOR,
            enabled: false,
            desc: 0,
            avail: 0,
            used: 0,
        }
    }
}

pub struct VirtioPciDevice {
    device: GenericVhostUser,
    config: ConfigSpace,
    msix: Msix,
    msix_cap: usize,
    ioevents: IoEvents,
    kicks: Vec<EventFd>,
    /// Calls of queues without an MSI-X vector: nobody listens, the guest
    /// polls.
    unrouted_calls: Vec<EventFd>,
    /// Where the notify ioeventfds are registered, if anywhere.
    registered_bar: Option<u64>,
    features_offered: u64,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    msix_config: u16,
    status: u8,
    generation: u8,
    queue_select: u16,
    queues: Vec<Queue>,
    isr: u8,
    /// One error line per burst of failed config accesses.
    config_failing: bool,
}

fn class_of(virtio_id: u32) -> PciClass {
    let (class, subclass) = match virtio_id {
        1 => (0x02, 0x00),  // net
        2 => (0x01, 0x00),  // block
        3 => (0x07, 0x80),  // console
        8 => (0x01, 0x00),  // scsi
        26 => (0x01, 0x80), // fs: "other storage", as QEMU reports it
        _ => (0xff, 0x00),
    };
    PciClass {
        class,
        subclass,
        prog_if: 0,
    }
}

impl VirtioPciDevice {
    pub fn new(
        device: GenericVhostUser,
        router: &Arc<MsiRouter>,
        ioevents: IoEvents,
    ) -> Result<Self, TransportError> {
        let queue_count = device.queue_sizes().len();
        let vectors = queue_count as u16 + 1;
        let msix = Msix::new(router, vectors).map_err(TransportError::Msix)?;
        let id = device.device_type();
        let mut config = ConfigSpace::new(
            VIRTIO_VENDOR,
            VIRTIO_DEVICE_BASE.wrapping_add(id as u16),
            class_of(id),
            1,
        );
        config.set_u16(0x2c, VIRTIO_VENDOR);
        config.set_u16(0x2e, 0x40);
        config.set_u16(0x06, 1 << 4);
        config.set_u8(0x34, CAP_START as u8);
        config.set_u32(BAR0, 0x4);
        config.set_write_mask_u32(BAR0, !(BAR_SIZE as u32 - 1) & !0xf);
        config.set_write_mask_u32(BAR0 + 4, u32::MAX);

        let cfg_len = u64::from(device.config_len()).min(DEVICE_CFG_MAX);
        let mut caps: Vec<(u8, u64, u64)> = vec![
            (1, COMMON_OFFSET, COMMON_LEN),
            (
                2,
                NOTIFY_OFFSET,
                u64::from(NOTIFY_MULTIPLIER) * queue_count as u64,
            ),
            (3, ISR_OFFSET, 4),
        ];
        if cfg_len > 0 {
            caps.push((4, DEVICE_CFG_OFFSET, cfg_len));
        }
        let mut at = CAP_START;
        for (cfg_type, offset, len) in caps {
            let cap_len = if cfg_type == 2 { 20 } else { 16 };
            let next = at + if cfg_type == 2 { 24 } else { 16 };
            config.set_u8(at, 0x09);
            config.set_u8(at + 1, next as u8);
            config.set_u8(at + 2, cap_len);
            config.set_u8(at + 3, cfg_type);
            config.set_u8(at + 4, 0);
            config.set_u32(at + 8, offset as u32);
            config.set_u32(at + 12, len as u32);
            if cfg_type == 2 {
                config.set_u32(at + 16, NOTIFY_MULTIPLIER);
            }
            at = next;
        }
        let msix_cap = at;
        config.set_u8(msix_cap, 0x11);
        config.set_u8(msix_cap + 1, 0);
        config.set_u16(msix_cap + 2, msix.control());
        config.set_u32(msix_cap + 4, MSIX_TABLE_OFFSET as u32);
        config.set_u32(msix_cap + 8, MSIX_PBA_OFFSET as u32);

        let make = |n: usize| {
            (0..n)
                .map(|_| EventFd::new(libc::EFD_NONBLOCK))
                .collect::<Result<Vec<_>, _>>()
                .map_err(TransportError::EventFd)
        };
        Ok(VirtioPciDevice {
            features_offered: device.features(),
            queues: device
                .queue_sizes()
                .iter()
                .map(|&s| Queue::new(s))
                .collect(),
            kicks: make(queue_count)?,
            unrouted_calls: make(queue_count)?,
            device,
            config,
            msix,
            msix_cap,
            ioevents,
            registered_bar: None,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            msix_config: NO_VECTOR,
            status: 0,
            generation: 0,
            queue_select: 0,
            isr: 0,
            config_failing: false,
        })
    }

    pub fn id(&self) -> &str {
        self.device.id()
    }

    /// Sets BAR 0 before the guest runs, as firmware would; decoding stays
    /// off until the guest enables it.
    pub fn place_bar(&mut self, addr: u64) {
        self.config.set_u32(BAR0, (addr as u32 & !0xf) | 0x4);
        self.config.set_u32(BAR0 + 4, (addr >> 32) as u32);
    }

    /// BAR 0's address while memory decoding is on.
    pub fn bar_address(&self) -> Option<u64> {
        let enabled = self.config.u16_at(COMMAND) & 0x2 != 0;
        let addr = (u64::from(self.config.u32_at(BAR0 + 4)) << 32)
            | u64::from(self.config.u32_at(BAR0) & !0xf);
        (enabled && addr != 0).then_some(addr)
    }

    /// Moves the notify ioeventfds along with the BAR.
    fn update_ioevents(&mut self) {
        let bar = self.bar_address();
        if bar == self.registered_bar {
            return;
        }
        if let Some(old) = self.registered_bar.take() {
            for (i, kick) in self.kicks.iter().enumerate() {
                let addr = old + NOTIFY_OFFSET + u64::from(NOTIFY_MULTIPLIER) * i as u64;
                if let Err(e) = self.ioevents.unregister(kick, addr) {
                    log::error!("{}: unregistering ioeventfd at {addr:#x}: {e}", self.id());
                }
            }
        }
        if let Some(new) = bar {
            for (i, kick) in self.kicks.iter().enumerate() {
                let addr = new + NOTIFY_OFFSET + u64::from(NOTIFY_MULTIPLIER) * i as u64;
                if let Err(e) = self.ioevents.register(kick, addr) {
                    log::error!("{}: registering ioeventfd at {addr:#x}: {e}", self.id());
                }
            }
            log::debug!("{}: BAR 0 at {new:#x}", self.id());
            self.registered_bar = Some(new);
        }
    }

    /// A guest access to BAR 0 at `offset`.
    pub fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => self.common_read(o, data),
            o if (ISR_OFFSET..ISR_OFFSET + 4).contains(&o) => {
                data.fill(0);
                if o == ISR_OFFSET {
                    data[0] = std::mem::take(&mut self.isr);
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_MAX).contains(&o) => {
                self.device_config_read(o - DEVICE_CFG_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix.table_read(o - MSIX_TABLE_OFFSET, data)
            }
            o if o >= MSIX_PBA_OFFSET => self.msix.pba_read(o - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    pub fn bar_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_OFFSET + COMMON_LEN => self.common_write(o, data),
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_MAX).contains(&o) => {
                self.device_config_write(o - DEVICE_CFG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // Only reached when the ioeventfd could not be registered.
                let queue = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(kick) = self.kicks.get(queue) {
                    let _ = kick.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix.table_write(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }

    /// The window has a defined length; beyond it the guest reads zeros and
    /// nothing reaches the backend.
    fn clamp_to_window(&self, offset: u64, len: usize) -> usize {
        let window = u64::from(self.device.config_len());
        window.saturating_sub(offset).min(len as u64) as usize
    }

    fn device_config_read(&mut self, offset: u64, data: &mut [u8]) {
        let n = self.clamp_to_window(offset, data.len());
        data.fill(0);
        if n == 0 {
            return;
        }
        match self.device.read_config(offset as u32, &mut data[..n]) {
            Ok(()) => self.config_failing = false,
            Err(e) => {
                data.fill(0xff);
                self.config_failed("read", offset, &e);
            }
        }
    }

    fn device_config_write(&mut self, offset: u64, data: &[u8]) {
        let n = self.clamp_to_window(offset, data.len());
        if n == 0 {
            return;
        }
        match self.device.write_config(offset as u32, &data[..n]) {
            Ok(()) => {
                self.config_failing = false;
                self.generation = self.generation.wrapping_add(1);
            }
            Err(e) => self.config_failed("write", offset, &e),
        }
    }

    /// A failed config access never stops the VM: the device asks for a
    /// reset (DEVICE_NEEDS_RESET) and tells the guest by a config interrupt.
    fn config_failed(&mut self, what: &str, offset: u64, e: &super::vhost_user::Error) {
        if !self.config_failing {
            log::error!(
                "{}: config {what} at offset {offset:#x} failed; device needs reset: {}",
                self.id(),
                crate::error_chain(e)
            );
            self.config_failing = true;
        }
        self.needs_reset();
    }

    fn needs_reset(&mut self) {
        if self.status & STATUS_NEEDS_RESET == 0 {
            self.status |= STATUS_NEEDS_RESET;
            self.isr |= ISR_CONFIG;
            if self.msix_config != NO_VECTOR {
                self.msix.trigger(self.msix_config);
            }
        }
    }

    fn common_image(&self) -> [u8; COMMON_LEN as usize] {
        let mut b = [0u8; COMMON_LEN as usize];
        let q = self.queues.get(usize::from(self.queue_select)).copied();
        let feature_word = match self.device_feature_select {
            0 => self.features_offered as u32,
            1 => (self.features_offered >> 32) as u32,
            _ => 0,
        };
        let driver_word = match self.driver_feature_select {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        };
        b[0..4].copy_from_slice(&self.device_feature_select.to_le_bytes());
        b[4..8].copy_from_slice(&feature_word.to_le_bytes());
        b[8..12].copy_from_slice(&self.driver_feature_select.to_le_bytes());
        b[12..16].copy_from_slice(&driver_word.to_le_bytes());
        b[16..18].copy_from_slice(&self.msix_config.to_le_bytes());
        b[18..20].copy_from_slice(&(self.queues.len() as u16).to_le_bytes());
        b[20] = self.status;
        b[21] = self.generation;
        b[22..24].copy_from_slice(&self.queue_select.to_le_bytes());
        if let Some(q) = q {
            b[24..26].copy_from_slice(&q.size.to_le_bytes());
            b[26..28].copy_from_slice(&q.vector.to_le_bytes());
            b[28..30].copy_from_slice(&u16::from(q.enabled).to_le_bytes());
            b[30..32].copy_from_slice(&self.queue_select.to_le_bytes());
            b[32..40].copy_from_slice(&q.desc.to_le_bytes());
            b[40..48].copy_from_slice(&q.avail.to_le_bytes());
            b[48..56].copy_from_slice(&q.used.to_le_bytes());
        }
        b
    }

    fn common_read(&self, offset: u64, data: &mut [u8]) {
        let image = self.common_image();
        let start = offset as usize;
        let end = (start + data.len()).min(image.len());
        data.fill(0);
        data[..end - start].copy_from_slice(&image[start..end]);
    }

    /// Writes are applied to a byte image of the registers and each field
    /// they touch is then set from it, so any access width works.
    fn common_write(&mut self, offset: u64, data: &[u8]) {
        let mut image = self.common_image();
        let start = offset as usize;
        let end = (start + data.len()).min(image.len());
        image[start..end].copy_from_slice(&data[..end - start]);
        let touches = |lo: usize, hi: usize| start < hi && end > lo;
        let u16_at = |i: usize| u16::from_le_bytes([image[i], image[i + 1]]);
        let u32_at =
            |i: usize| u32::from_le_bytes([image[i], image[i + 1], image[i + 2], image[i + 3]]);
        let u64_at = |i: usize| u64::from(u32_at(i)) | (u64::from(u32_at(i + 4)) << 32);

        if touches(0, 4) {
            self.device_feature_select = u32_at(0);
        }
        if touches(8, 12) {
            self.driver_feature_select = u32_at(8);
        }
        if touches(12, 16) && self.status & STATUS_FEATURES_OK == 0 {
            let word = u64::from(u32_at(12));
            match self.driver_feature_select {
                0 => self.driver_features = (self.driver_features & !0xffff_ffff) | word,
                1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (word << 32),
                _ => {}
            }
        }
        if touches(16, 18) {
            let v = u16_at(16);
            self.msix_config = if v < self.msix.count() { v } else { NO_VECTOR };
        }
        if touches(22, 24) {
            self.queue_select = u16_at(22);
        }
        let qi = usize::from(self.queue_select);
        let driver_ok = self.status & STATUS_DRIVER_OK != 0;
        if let Some(q) = self.queues.get_mut(qi).filter(|_| !driver_ok) {
            if touches(24, 26) {
                let size = u16_at(24);
                if size.is_power_of_two() && size <= q.max {
                    q.size = size;
                }
            }
            if touches(26, 28) {
                let v = u16_at(26);
                q.vector = if v < self.msix.count() { v } else { NO_VECTOR };
            }
            if touches(28, 30) && u16_at(28) == 1 {
                q.enabled = true;
            }
            if touches(32, 40) {
                q.desc = u64_at(32);
            }
            if touches(40, 48) {
                q.avail = u64_at(40);
            }
            if touches(48, 56) {
                q.used = u64_at(48);
            }
        }
        if touches(20, 21) {
            self.set_status(image[20]);
        }
    }

    fn set_status(&mut self, status: u8) {
        if status == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let mut new = status | (old & STATUS_NEEDS_RESET);
        if new & STATUS_FEATURES_OK != 0 && old & STATUS_FEATURES_OK == 0 {
            let unknown = self.driver_features & !self.features_offered;
            if unknown != 0 {
                log::warn!(
                    "{}: driver accepted features {unknown:#x} never offered",
                    self.id()
                );
                new &= !STATUS_FEATURES_OK;
            }
        }
        self.status = new;
        if new & STATUS_DRIVER_OK != 0 && old & STATUS_DRIVER_OK == 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let setups: Vec<QueueSetup<'_>> = self
            .queues
            .iter()
            .enumerate()
            .filter(|(_, q)| q.enabled)
            .map(|(index, q)| QueueSetup {
                index,
                size: q.size,
                desc: q.desc,
                avail: q.avail,
                used: q.used,
                kick: &self.kicks[index],
                call: self
                    .msix
                    .irqfd(q.vector)
                    .unwrap_or(&self.unrouted_calls[index]),
            })
            .collect();
        if let Err(e) = self.device.activate(self.driver_features, &setups) {
            log::error!(
                "{}: activation failed; device needs reset: {}",
                self.device.id(),
                crate::error_chain(&e)
            );
            self.needs_reset();
        }
    }

    fn reset(&mut self) {
        if let Err(e) = self.device.reset() {
            log::error!("{}: reset: {}", self.id(), crate::error_chain(&e));
        }
        self.status = 0;
        self.isr = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.msix_config = NO_VECTOR;
        self.queue_select = 0;
        self.config_failing = false;
        self.features_offered = self.device.features();
        for q in &mut self.queues {
            *q = Queue::new(q.max);
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
        // The MSI-X control word lives in `Msix`.
        let control_at = self.msix_cap + 2;
        let control = self.msix.control().to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::from(offset) + i;
            if at == control_at || at == control_at + 1 {
                *byte = control[at - control_at];
            }
        }
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<crate::pci::BarReprogram> {
        let control_at = self.msix_cap + 2;
        let start = usize::from(offset);
        if start <= control_at + 1 && start + data.len() > control_at {
            let mut control = self.msix.control().to_le_bytes();
            for (i, &byte) in data.iter().enumerate() {
                let at = start + i;
                if at == control_at || at == control_at + 1 {
                    control[at - control_at] = byte;
                }
            }
            self.msix.set_control(u16::from_le_bytes(control));
        }
        // BAR 0 is served through `PciWindow`, not moved on the bus.
        let _ = self.config.write(offset, data);
        self.update_ioevents();
        Vec::new()
    }
}

/// The 32-bit PCI window on the MMIO bus: accesses go to whichever device's
/// BAR 0 covers the address right now, so the guest can place BARs freely.
pub struct PciWindow {
    base: u64,
    devices: Vec<Arc<std::sync::Mutex<VirtioPciDevice>>>,
}

impl PciWindow {
    pub fn new(base: u64, devices: Vec<Arc<std::sync::Mutex<VirtioPciDevice>>>) -> Self {
        PciWindow { base, devices }
    }

    fn find(&self, addr: u64) -> Option<(std::sync::MutexGuard<'_, VirtioPciDevice>, u64)> {
        self.devices.iter().find_map(|d| {
            let guard = crate::bus::lock(d);
            let bar = guard.bar_address()?;
            (addr >= bar && addr < bar + BAR_SIZE).then_some((guard, addr - bar))
        })
    }
}

impl crate::bus::BusDevice for PciWindow {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match self.find(self.base + offset) {
            Some((mut device, at)) => device.bar_read(at, data),
            None => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some((mut device, at)) = self.find(self.base + offset) {
            device.bar_write(at, data);
        }
    }
}
