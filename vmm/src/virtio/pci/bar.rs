//! The guest's accesses to the transport: its BAR (common config, ISR,
//! the device's config window, notify, the MSI-X table and PBA) and its
//! PCI configuration space, with the VIRTIO_PCI_CAP_PCI_CFG window that
//! reaches the BAR through configuration space.

use super::common::Action;
use super::*;

impl<D: VirtioDevice> VirtioPciDevice<D> {
    fn region_read(&mut self, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < ISR_OFFSET => {
                self.sync_device_state();
                self.common.read(o - COMMON_OFFSET, data)
            }
            o if o < ISR_OFFSET + ISR_LEN => {
                data.fill(0);
                // Reading the ISR acknowledges it (an empty read reads
                // nothing, and acknowledges nothing).
                if let (ISR_OFFSET, Some(first)) = (o, data.first_mut()) {
                    *first = self.interrupt.take_isr();
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_MAX).contains(&o) => {
                self.device_config_read(o - DEVICE_CFG_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix.table_read(o - MSIX_TABLE_OFFSET, data)
            }
            o if (MSIX_PBA_OFFSET..BAR_SIZE).contains(&o) => {
                self.msix.pba_read(o - MSIX_PBA_OFFSET, data)
            }
            _ => data.fill(0),
        }
    }

    fn region_write(&mut self, offset: u64, data: &[u8]) {
        match offset {
            o if o < ISR_OFFSET => {
                self.sync_device_state();
                let action = self.common.write(o - COMMON_OFFSET, data);
                self.interrupt.set_config_vector(self.common.msix_config);
                match action {
                    Action::None => {}
                    Action::Reset => self.reset(),
                    Action::Activate => self.activate(&[]),
                }
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_MAX).contains(&o) => {
                self.device_config_write(o - DEVICE_CFG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // Only reached when the ioeventfd could not be registered.
                let queue = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(kick) = self.kicks.get(queue) {
                    if let Err(e) = kick.write(1) {
                        log::error!("{}: kick of queue {queue} lost: {e}", self.id());
                    }
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix.table_write(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }

    /// How many bytes of an access at `offset` fall inside the window: the
    /// window has a defined length, and beyond it the guest reads zeros and
    /// nothing reaches the device.
    fn in_window(&self, offset: u64, len: usize) -> usize {
        let window = u64::from(self.device.config_len());
        window.saturating_sub(offset).min(len as u64) as usize
    }

    fn device_config_read(&mut self, offset: u64, data: &mut [u8]) {
        let n = self.in_window(offset, data.len());
        data.fill(0);
        if n == 0 {
            return;
        }
        self.counts.config_reads += 1;
        match self.device.read_config(offset as u32, &mut data[..n]) {
            Ok(()) => self.config_failing = false,
            Err(e) => {
                data.fill(0xff);
                self.config_failed("read", offset, &e);
            }
        }
    }

    fn device_config_write(&mut self, offset: u64, data: &[u8]) {
        let n = self.in_window(offset, data.len());
        if n == 0 {
            return;
        }
        self.counts.config_writes += 1;
        match self.device.write_config(offset as u32, &data[..n]) {
            Ok(()) => {
                self.config_failing = false;
                self.common.generation = self.common.generation.wrapping_add(1);
            }
            Err(e) => self.config_failed("write", offset, &e),
        }
    }

    /// A failed config access never stops the VM: the device asks for a
    /// reset (DEVICE_NEEDS_RESET) and tells the guest by a config interrupt.
    fn config_failed(&mut self, what: &str, offset: u64, e: &D::Error) {
        self.counts.config_failures += 1;
        if !self.config_failing {
            log::error!(
                "{}: config {what} at offset {offset:#x} failed; device needs reset: {}",
                self.id(),
                error_chain(e)
            );
            self.config_failing = true;
        }
        self.needs_reset();
    }

    /// Whether an access to configuration space touches pci_cfg_data.
    fn touches_pci_cfg_data(&self, offset: u16, len: usize) -> bool {
        let data_at = self.pci_cfg_cap + PCI_CFG_DATA;
        usize::from(offset) < data_at + 4 && data_at < usize::from(offset) + len
    }

    /// The BAR access the PCI_CFG capability selects, if it is one the
    /// spec allows: our BAR, 1, 2 or 4 bytes, aligned to its length.
    fn pci_cfg_access(&self) -> Option<(u8, u64, usize)> {
        let at = self.pci_cfg_cap;
        let bar = (self.config.u16_at(at + PCI_CFG_BAR) & 0xff) as u8;
        let offset = u64::from(self.config.u32_at(at + PCI_CFG_OFFSET));
        let len = self.config.u32_at(at + PCI_CFG_LENGTH);
        let valid = bar == BAR
            && matches!(len, 1 | 2 | 4)
            && offset % u64::from(len) == 0
            && offset + u64::from(len) <= BAR_SIZE;
        valid.then_some((bar, offset, len as usize))
    }
}

impl<D: VirtioDevice> PciDevice for VirtioPciDevice<D> {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        if self.touches_pci_cfg_data(offset, data.len()) {
            // The BAR is read into pci_cfg_data, which is then read.
            let mut value = [0u8; 4];
            if let Some((bar, at, len)) = self.pci_cfg_access() {
                self.bar_read(bar, at, &mut value[..len]);
            } else {
                log::debug!(
                    "{}: PCI_CFG read with a bad BAR, offset or length",
                    self.id()
                );
            }
            let data_at = self.pci_cfg_cap + PCI_CFG_DATA;
            self.config.set_u32(data_at, u32::from_le_bytes(value));
        }
        self.config.read(offset, data);
        // The MSI-X control word lives in `Msix`.
        self.msix.config_read(self.msix_cap, offset, data);
    }

    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
        self.msix.config_write(self.msix_cap, offset, data);
        let changes = self.config.write(offset, data);
        if let Some(change) = changes.iter().find(|c| c.bar == BAR) {
            self.move_notify(change.new);
        }
        if self.touches_pci_cfg_data(offset, data.len()) {
            let value = self
                .config
                .u32_at(self.pci_cfg_cap + PCI_CFG_DATA)
                .to_le_bytes();
            match self.pci_cfg_access() {
                Some((bar, at, len)) => self.bar_write(bar, at, &value[..len]),
                None => log::debug!(
                    "{}: PCI_CFG write with a bad BAR, offset or length dropped",
                    self.id()
                ),
            }
        }
        changes
    }

    fn mapped_bars(&self) -> Vec<BarMapping> {
        self.config.mapped_bars()
    }

    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar == BAR {
            self.region_read(offset, data);
        } else {
            data.fill(0xff);
        }
    }

    fn bar_write(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar == BAR {
            self.region_write(offset, data);
        }
    }
}
