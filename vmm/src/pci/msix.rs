//! MSI-X: the capability's control word, the vector table and the pending
//! bit array, with per-vector and function masking. Delivery is behind
//! `interrupt::MsiInterruptGroup` (KVM routes and irqfds), so this is a
//! plain state machine: offsets and bytes in, vector updates out.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::{MsiInterruptGroup, MsiMessage};
use crate::util::error_chain;

pub const CAPABILITY_ID: u8 = 0x11;
pub const ENTRY_SIZE: u64 = 16;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;
/// The control word's offset inside the capability.
const CONTROL_OFFSET: usize = 2;

#[derive(Clone, Copy, Default, Debug, PartialEq, Eq)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

impl Entry {
    fn to_bytes(self) -> [u8; ENTRY_SIZE as usize] {
        let mut bytes = [0u8; ENTRY_SIZE as usize];
        for (i, word) in [self.addr_lo, self.addr_hi, self.data, self.control]
            .iter()
            .enumerate()
        {
            bytes[4 * i..4 * i + 4].copy_from_slice(&word.to_le_bytes());
        }
        bytes
    }

    fn from_bytes(bytes: &[u8; ENTRY_SIZE as usize]) -> Entry {
        let word = |i: usize| {
            u32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ])
        };
        Entry {
            addr_lo: word(0),
            addr_hi: word(1),
            data: word(2),
            // Only the mask bit of Vector Control is defined.
            control: word(3) & VECTOR_MASKED,
        }
    }
}

/// What a snapshot keeps of MSI-X: every vector's entry (address low and
/// high, data, control), the control word's two bits, and the vectors
/// with a signal pending behind their mask.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MsixSnapshot {
    pub entries: Vec<[u32; 4]>,
    pub enabled: bool,
    pub function_masked: bool,
    pub pending: Vec<u16>,
}

#[derive(Debug, thiserror::Error)]
#[error("{saved} MSI-X vectors saved, the device has {built}")]
pub struct MsixRestoreError {
    saved: usize,
    built: usize,
}

pub struct Msix {
    entries: Vec<Entry>,
    vectors: Arc<dyn MsiInterruptGroup>,
    enabled: bool,
    function_masked: bool,
}

impl Msix {
    /// `count` vectors, all masked, MSI-X disabled: the reset state.
    pub fn new(vectors: Arc<dyn MsiInterruptGroup>, count: u16) -> Msix {
        Msix {
            entries: vec![
                Entry {
                    control: VECTOR_MASKED,
                    ..Default::default()
                };
                usize::from(count)
            ],
            vectors,
            enabled: false,
            function_masked: false,
        }
    }

    pub fn save(&self) -> MsixSnapshot {
        MsixSnapshot {
            entries: self
                .entries
                .iter()
                .map(|e| [e.addr_lo, e.addr_hi, e.data, e.control])
                .collect(),
            enabled: self.enabled,
            function_masked: self.function_masked,
            pending: (0..self.entries.len())
                .filter(|&i| self.masked(i) && self.vectors.pending(i))
                .map(|i| i as u16)
                .collect(),
        }
    }

    /// Routes every vector as saved, and raises the pending ones again
    /// (they stay pending: they are masked).
    pub fn restore(&mut self, saved: &MsixSnapshot) -> Result<(), MsixRestoreError> {
        if saved.entries.len() != self.entries.len() {
            return Err(MsixRestoreError {
                saved: saved.entries.len(),
                built: self.entries.len(),
            });
        }
        for (entry, &[addr_lo, addr_hi, data, control]) in
            self.entries.iter_mut().zip(&saved.entries)
        {
            *entry = Entry {
                addr_lo,
                addr_hi,
                data,
                control,
            };
        }
        self.enabled = saved.enabled;
        self.function_masked = saved.function_masked;
        for i in 0..self.entries.len() {
            self.apply(i);
        }
        for &vector in &saved.pending {
            if usize::from(vector) < self.entries.len() && self.masked(usize::from(vector)) {
                if let Err(e) = self.vectors.trigger(usize::from(vector)) {
                    log::error!("MSI-X: {}", error_chain(&e));
                }
            }
        }
        Ok(())
    }

    pub fn count(&self) -> u16 {
        self.entries.len() as u16
    }

    /// Bytes of the vector table in its BAR.
    pub fn table_len(&self) -> u64 {
        u64::from(self.count()) * ENTRY_SIZE
    }

    /// Bytes of the pending bit array: whole qwords.
    pub fn pba_len(&self) -> u64 {
        u64::from(self.count()).div_ceil(64) * 8
    }

    /// The capability's body after ID and next pointer: control word, then
    /// table and PBA as BAR index plus offset (offsets 8-byte aligned).
    pub fn capability_body(&self, bar: u8, table_offset: u32, pba_offset: u32) -> [u8; 10] {
        let mut body = [0u8; 10];
        body[0..2].copy_from_slice(&self.control().to_le_bytes());
        body[2..6].copy_from_slice(&((table_offset & !7) | u32::from(bar & 7)).to_le_bytes());
        body[6..10].copy_from_slice(&((pba_offset & !7) | u32::from(bar & 7)).to_le_bytes());
        body
    }

    /// The capability's message-control word (table size N-1, enable, mask).
    pub fn control(&self) -> u16 {
        let mut c = self.count().saturating_sub(1);
        if self.enabled {
            c |= CONTROL_ENABLE;
        }
        if self.function_masked {
            c |= CONTROL_FUNCTION_MASK;
        }
        c
    }

    pub fn set_control(&mut self, control: u16) {
        let enabled = control & CONTROL_ENABLE != 0;
        let function_masked = control & CONTROL_FUNCTION_MASK != 0;
        if (enabled, function_masked) == (self.enabled, self.function_masked) {
            return;
        }
        self.enabled = enabled;
        self.function_masked = function_masked;
        for i in 0..self.entries.len() {
            self.apply(i);
        }
    }

    /// Serves the control word of the capability at `cap` from our state;
    /// the rest of `data` comes from the configuration space.
    pub fn config_read(&self, cap: usize, offset: u16, data: &mut [u8]) {
        let control = self.control().to_le_bytes();
        for (i, byte) in data.iter_mut().enumerate() {
            let at = usize::from(offset) + i;
            if let Some(b) = at
                .checked_sub(cap + CONTROL_OFFSET)
                .and_then(|k| control.get(k))
            {
                *byte = *b;
            }
        }
    }

    /// Takes the bytes of a configuration write that land on the control
    /// word of the capability at `cap`.
    pub fn config_write(&mut self, cap: usize, offset: u16, data: &[u8]) {
        let mut control = self.control().to_le_bytes();
        let mut touched = false;
        for (i, &byte) in data.iter().enumerate() {
            let at = usize::from(offset) + i;
            if let Some(b) = at
                .checked_sub(cap + CONTROL_OFFSET)
                .and_then(|k| control.get_mut(k))
            {
                *b = byte;
                touched = true;
            }
        }
        if touched {
            self.set_control(u16::from_le_bytes(control));
        }
    }

    fn masked(&self, i: usize) -> bool {
        !self.enabled || self.function_masked || self.entries[i].control & VECTOR_MASKED != 0
    }

    fn apply(&mut self, i: usize) {
        let masked = self.masked(i);
        let e = self.entries[i];
        let address = (u64::from(e.addr_hi) << 32) | u64::from(e.addr_lo);
        let message = MsiMessage {
            address,
            data: e.data,
        };
        if let Err(err) = self.vectors.update(i, message, masked) {
            log::error!("MSI-X: {}", error_chain(&err));
        }
    }

    /// Reads of any width inside one entry; outside the table read zero.
    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Some(e) = self.entries.get((offset / ENTRY_SIZE) as usize) else {
            return;
        };
        let bytes = e.to_bytes();
        let start = (offset % ENTRY_SIZE) as usize;
        let end = (start + data.len()).min(bytes.len());
        data[..end - start].copy_from_slice(&bytes[start..end]);
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let index = (offset / ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get_mut(index) else {
            return;
        };
        let mut bytes = e.to_bytes();
        let start = (offset % ENTRY_SIZE) as usize;
        let end = (start + data.len()).min(bytes.len());
        bytes[start..end].copy_from_slice(&data[..end - start]);
        let new = Entry::from_bytes(&bytes);
        if new != *e {
            *e = new;
            self.apply(index);
        }
    }

    /// Pending bits; the PBA is read-only.
    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (i, byte) in data.iter_mut().enumerate() {
            for bit in 0..8 {
                let vector = (offset as usize + i) * 8 + bit;
                if vector < self.entries.len()
                    && self.masked(vector)
                    && self.vectors.pending(vector)
                {
                    *byte |= 1 << bit;
                }
            }
        }
    }

    /// The eventfd a backend signals for `vector` (None: no such vector).
    pub fn irqfd(&self, vector: u16) -> Option<&EventFd> {
        self.vectors.notifier(usize::from(vector))
    }

    /// Raises `vector` from the VMM itself (config change interrupts); if
    /// the vector is masked it stays pending.
    #[cfg(test)]
    pub fn trigger(&self, vector: u16) {
        if let Err(e) = self.vectors.trigger(usize::from(vector)) {
            log::error!("MSI-X: {}", error_chain(&e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::fake::FakeMsiGroup;

    fn fake(count: usize) -> (Arc<FakeMsiGroup>, FakeMsiGroup) {
        let group = FakeMsiGroup::new(count);
        (Arc::new(group.clone()), group)
    }

    fn program(msix: &mut Msix, vector: u64, addr: u64, data: u32) {
        let base = vector * ENTRY_SIZE;
        msix.table_write(base, &(addr as u32).to_le_bytes());
        msix.table_write(base + 4, &((addr >> 32) as u32).to_le_bytes());
        msix.table_write(base + 8, &data.to_le_bytes());
    }

    fn unmask(msix: &mut Msix, vector: u64) {
        msix.table_write(vector * ENTRY_SIZE + 12, &0u32.to_le_bytes());
    }

    fn pba(msix: &Msix) -> u64 {
        let mut b = [0u8; 8];
        msix.pba_read(0, &mut b);
        u64::from_le_bytes(b)
    }

    #[test]
    fn reset_state_and_capability_layout() {
        let (vectors, _) = fake(3);
        let msix = Msix::new(vectors, 3);
        assert_eq!(msix.control(), 2, "table size N-1, disabled, unmasked");
        assert_eq!(msix.table_len(), 48);
        assert_eq!(msix.pba_len(), 8);
        let body = msix.capability_body(0, 0x4000, 0x6000);
        assert_eq!(body, [2, 0, 0, 0x40, 0, 0, 0, 0x60, 0, 0]);
        let mut entry = [0u8; 16];
        msix.table_read(16, &mut entry);
        assert_eq!(entry[12], 1, "vectors start masked");
        let mut beyond = [0xaau8; 4];
        msix.table_read(48, &mut beyond);
        assert_eq!(beyond, [0; 4]);
    }

    #[test]
    fn control_word_through_configuration_space() {
        let (vectors, irq) = fake(2);
        let mut msix = Msix::new(vectors, 2);
        program(&mut msix, 1, 0xfee0_0000, 0x41);
        unmask(&mut msix, 1);
        assert!(!irq.armed(1), "MSI-X still disabled");
        // A dword write at the capability start carries the control word
        // in its upper half.
        msix.config_write(0x50, 0x50, &[0x11, 0x00, 0x01, 0x80]);
        assert_eq!(msix.control(), 0x8001);
        assert!(irq.armed(1));
        assert!(!irq.armed(0), "vector 0 is still masked");
        let mut data = [0x11, 0x60, 0, 0];
        msix.config_read(0x50, 0x50, &mut data);
        assert_eq!(data, [0x11, 0x60, 0x01, 0x80]);
        // Function mask disarms every vector without touching the entries.
        msix.config_write(0x50, 0x53, &[0xc0]);
        assert!(!irq.armed(1));
        msix.config_write(0x50, 0x53, &[0x80]);
        assert!(irq.armed(1));
        // Writes elsewhere leave it alone.
        msix.config_write(0x50, 0x54, &[0; 4]);
        assert_eq!(msix.control(), 0x8001);
    }

    #[test]
    fn masked_vectors_keep_signals_pending_until_unmasked() {
        let (vectors, irq) = fake(2);
        let mut msix = Msix::new(vectors, 2);
        msix.set_control(CONTROL_ENABLE);
        program(&mut msix, 0, 0xfee0_0000, 0x30);
        msix.trigger(0);
        assert_eq!(pba(&msix), 1, "masked: pending bit set");
        assert!(irq.log.lock().unwrap().delivered.is_empty());
        unmask(&mut msix, 0);
        assert_eq!(irq.delivered(), vec![(0, 0xfee0_0000, 0x30)]);
        assert_eq!(pba(&msix), 0, "delivered on unmask");
        // While unmasked there is no pending state to show.
        msix.trigger(0);
        assert_eq!(pba(&msix), 0);
    }

    #[test]
    fn entries_accept_any_access_width_and_route_on_change() {
        let (vectors, irq) = fake(1);
        let mut msix = Msix::new(vectors, 1);
        msix.set_control(CONTROL_ENABLE);
        let mut entry = Entry {
            addr_lo: 0xfee0_1000,
            addr_hi: 0,
            data: 0x4051,
            control: 0,
        }
        .to_bytes();
        entry[12] = 0xfe; // reserved control bits are dropped, mask bit clear
        msix.table_write(0, &entry[..8]);
        msix.table_write(8, &entry[8..]);
        let mut back = [0u8; 16];
        msix.table_read(0, &mut back);
        assert_eq!(&back[..12], &entry[..12]);
        assert_eq!(
            u32::from_le_bytes([back[12], back[13], back[14], back[15]]),
            0
        );
        assert_eq!(irq.route(0), Some((0xfee0_1000, 0x4051)));
        let mut byte = [0u8; 1];
        msix.table_read(8, &mut byte);
        assert_eq!(byte, [0x51]);
        // A write crossing the end of the entry is cut at the entry.
        msix.table_write(14, &[0xff; 8]);
        assert_eq!(msix.count(), 1);
    }
}
