//! MSI-X from the guest's side: table and PBA accesses of any width at any
//! offset, the capability's control word through configuration space, and
//! signals from backends. Every few steps, and at the end, each vector is
//! armed exactly when MSI-X is on, the function unmasked and the entry
//! unmasked, routed where the entry says, and pending only while masked.

#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm::fuzzing::{FakeMsiGroup, MsiInterruptGroup, Msix, MSIX_ENTRY_SIZE};
use vmm_fuzz::{le, Width};

/// Where the capability sits in configuration space.
const CAP: usize = 0x70;

#[derive(Arbitrary, Debug)]
enum Op {
    TableRead {
        offset: u16,
        width: Width,
    },
    TableWrite {
        offset: u16,
        width: Width,
        value: u64,
    },
    PbaRead {
        offset: u8,
        width: Width,
    },
    /// Configuration space around the capability.
    ConfigRead {
        offset: u8,
        width: Width,
    },
    ConfigWrite {
        offset: u8,
        width: Width,
        value: u64,
    },
    /// A backend or the VMM signals a vector's eventfd.
    Signal {
        vector: u8,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// 1 to 72 vectors (the transport has up to 65).
    count: u8,
    ops: Vec<Op>,
}

fn entry(msix: &Msix, vector: u16) -> (u64, u32, bool) {
    let mut bytes = [0u8; MSIX_ENTRY_SIZE as usize];
    msix.table_read(u64::from(vector) * MSIX_ENTRY_SIZE, &mut bytes);
    let addr = le(&bytes[0..8]);
    let data = le(&bytes[8..12]) as u32;
    (addr, data, bytes[12] & 1 != 0)
}

fn check(msix: &Msix, fake: &FakeMsiGroup) {
    let control = msix.control();
    let enabled = control & (1 << 15) != 0;
    let function_masked = control & (1 << 14) != 0;
    assert_eq!(
        usize::from(control & 0x7ff) + 1,
        usize::from(msix.count()),
        "table size"
    );
    for vector in 0..msix.count() {
        let (addr, data, masked) = entry(msix, vector);
        let armed = enabled && !function_masked && !masked;
        let i = usize::from(vector);
        assert_eq!(fake.armed(i), armed, "vector {vector} armed");
        if armed {
            assert_eq!(fake.route(i), Some((addr, data)), "vector {vector} route");
        }
        let mut pba = [0u8; 1];
        msix.pba_read(u64::from(vector / 8), &mut pba);
        if pba[0] & (1 << (vector % 8)) != 0 {
            assert!(!armed, "vector {vector} pending while armed");
        }
    }
}

fuzz_target!(|input: Input| {
    let count = u16::from(input.count % 72) + 1;
    let fake = FakeMsiGroup::new(usize::from(count));
    let mut msix = Msix::new(Arc::new(fake.clone()), count);
    let table_len = msix.table_len();
    for (i, op) in input.ops.iter().take(256).enumerate() {
        match *op {
            Op::TableRead { offset, width } => {
                let mut data = vec![0xaa; width.len()];
                let offset = u64::from(offset) % (table_len + 32);
                msix.table_read(offset, &mut data);
                if offset >= table_len {
                    assert!(data.iter().all(|&b| b == 0), "past the table");
                }
            }
            Op::TableWrite {
                offset,
                width,
                value,
            } => {
                let offset = u64::from(offset) % (table_len + 32);
                msix.table_write(offset, &width.bytes(value));
            }
            Op::PbaRead { offset, width } => {
                let mut data = vec![0xaa; width.len()];
                msix.pba_read(u64::from(offset), &mut data);
            }
            Op::ConfigRead { offset, width } => {
                let mut data = vec![0u8; width.len()];
                msix.config_read(CAP, CAP as u16 - 8 + u16::from(offset % 24), &mut data);
            }
            Op::ConfigWrite {
                offset,
                width,
                value,
            } => {
                let at = CAP as u16 - 8 + u16::from(offset % 24);
                msix.config_write(CAP, at, &width.bytes(value));
            }
            Op::Signal { vector } => {
                if let Some(fd) = fake.notifier(usize::from(vector) % usize::from(count)) {
                    let _ = fd.write(1);
                }
                fake.poll();
            }
        }
        // Every vector's state costs two syscalls to read: not after
        // every step.
        if i % 8 == 7 {
            check(&msix, &fake);
        }
    }
    check(&msix, &fake);
});
