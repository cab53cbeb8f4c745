//! MSI-X: the capability's control word, the vector table and the pending
//! bit array, with per-vector and function masking, delivered through the
//! KVM routes and irqfds of `vstate::interrupts`.

use crate::vstate::interrupts::{InterruptError, MsiRouter, MsiVector};
use std::sync::Arc;

pub const ENTRY_SIZE: u64 = 16;
const CONTROL_ENABLE: u16 = 1 << 15;
const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Default)]
struct Entry {
    addr_lo: u32,
    addr_hi: u32,
    data: u32,
    control: u32,
}

pub struct Msix {
    entries: Vec<Entry>,
    vectors: Vec<MsiVector>,
    enabled: bool,
    function_masked: bool,
}

impl Msix {
    pub fn new(router: &Arc<MsiRouter>, count: u16) -> Result<Msix, InterruptError> {
        let vectors = (0..count)
            .map(|_| router.allocate())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Msix {
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
        })
    }

    pub fn count(&self) -> u16 {
        self.entries.len() as u16
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
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
        for i in 0..self.entries.len() {
            self.apply(i);
        }
    }

    fn masked(&self, i: usize) -> bool {
        !self.enabled || self.function_masked || self.entries[i].control & VECTOR_MASKED != 0
    }

    fn apply(&mut self, i: usize) {
        let masked = self.masked(i);
        let e = self.entries[i];
        let address = (u64::from(e.addr_hi) << 32) | u64::from(e.addr_lo);
        if let Err(err) = self.vectors[i].update(address, e.data, masked) {
            log::error!("MSI-X vector {i}: {err}");
        }
    }

    pub fn table_read(&self, offset: u64, data: &mut [u8]) {
        let index = (offset / ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get(index) else {
            data.fill(0);
            return;
        };
        let words = [e.addr_lo, e.addr_hi, e.data, e.control];
        let mut bytes = [0u8; 16];
        for (i, w) in words.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = (offset % ENTRY_SIZE) as usize;
        let end = (start + data.len()).min(16);
        data.fill(0);
        data[..end - start].copy_from_slice(&bytes[start..end]);
    }

    pub fn table_write(&mut self, offset: u64, data: &[u8]) {
        let index = (offset / ENTRY_SIZE) as usize;
        let Some(e) = self.entries.get_mut(index) else {
            return;
        };
        let mut bytes = [0u8; 16];
        for (i, w) in [e.addr_lo, e.addr_hi, e.data, e.control].iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&w.to_le_bytes());
        }
        let start = (offset % ENTRY_SIZE) as usize;
        let end = (start + data.len()).min(16);
        bytes[start..end].copy_from_slice(&data[..end - start]);
        let word = |i: usize| {
            u32::from_le_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ])
        };
        *e = Entry {
            addr_lo: word(0),
            addr_hi: word(1),
            data: word(2),
            control: word(3) & VECTOR_MASKED,
        };
        self.apply(index);
    }

    pub fn pba_read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        for (i, byte) in data.iter_mut().enumerate() {
            for bit in 0..8 {
                let vector = (offset as usize + i) * 8 + bit;
                if self.vectors.get(vector).is_some_and(MsiVector::pending) {
                    *byte |= 1 << bit;
                }
            }
        }
    }

    /// The eventfd a backend signals for `vector` (None: no such vector).
    pub fn irqfd(&self, vector: u16) -> Option<&vmm_sys_util::eventfd::EventFd> {
        self.vectors.get(usize::from(vector)).map(|v| &v.irqfd)
    }

    /// Raises `vector` from the VMM (config change interrupts).
    pub fn trigger(&self, vector: u16) {
        if let Some(v) = self.vectors.get(usize::from(vector)) {
            v.trigger();
        }
    }
}
