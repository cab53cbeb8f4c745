//! PCI configuration space as a guest reaches it: ECAM on the MMIO bus and
//! mechanism #1 through ports 0xcf8/0xcfc, accesses of any width and
//! alignment, to the host bridge, two virtio-pci functions, empty slots,
//! other functions and other buses. Checked after every step: identities
//! and class codes stay, what does not exist reads all ones, accesses the
//! spec does not allow read all ones, and the address latch reads back.

#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm::fuzzing::{Bus, BusDevice, HostBridge, PciConfigIo, PciEcam, PciSegment};
use vmm_fuzz::{le, null_virtio_pci, Width};

const ECAM: u64 = 0xe000_0000;
const ECAM_SIZE: u64 = 0x10_0000;

/// A configuration register: mostly on bus 0, in the first slots.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Target {
    Slot { slot: u8, reg: u16 },
    Raw(u32),
}

impl Target {
    fn ecam_offset(self) -> u64 {
        match self {
            Target::Slot { slot, reg } => u64::from(slot % 5) << 15 | u64::from(reg % 4096),
            Target::Raw(offset) => u64::from(offset) % ECAM_SIZE,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    EcamRead {
        at: Target,
        width: Width,
    },
    EcamWrite {
        at: Target,
        width: Width,
        value: u64,
    },
    PortRead {
        port: u8,
        width: Width,
    },
    PortWrite {
        port: u8,
        width: Width,
        value: u64,
    },
    /// A well-formed 0xcf8 address: enable, bus, device, function, register.
    Select {
        enable: bool,
        bus: u8,
        slot: u8,
        function: u8,
        reg: u8,
    },
    /// The BARs, wherever the guest put them.
    Mmio {
        addr: u32,
        width: Width,
        write: Option<u64>,
    },
}

fn ecam_read(mmio: &Bus, offset: u64, len: usize) -> Vec<u8> {
    let mut data = vec![0u8; len];
    assert!(mmio.read(ECAM + offset, &mut data), "ECAM is always there");
    data
}

fuzz_target!(|ops: Vec<Op>| {
    let mmio = Bus::new();
    let mut segment = PciSegment::new(mmio.clone());
    let _ = segment.add(Arc::new(Mutex::new(HostBridge::new())));
    let ids = [(26u32, 2usize, 0xc000_0000u64), (60, 5, 0xc000_8000)];
    for &(device_type, queues, bar) in &ids {
        let dev = null_virtio_pci(device_type, queues, bar);
        segment
            .add(Arc::new(Mutex::new(dev)))
            .expect("a free slot and a free BAR range");
    }
    let segment = Arc::new(segment);
    mmio.insert(
        Arc::new(Mutex::new(PciEcam::new(segment.clone()))),
        ECAM,
        ECAM_SIZE,
    )
    .expect("ECAM on an empty bus");
    let mut ports = PciConfigIo::new(segment);
    let mut latch: u32 = 0;

    for op in ops.iter().take(512) {
        match *op {
            Op::EcamRead { at, width } => {
                let offset = at.ecam_offset();
                let data = ecam_read(&mmio, offset, width.len());
                let valid = matches!(width.len(), 1 | 2 | 4) && offset % width.len() as u64 == 0;
                let present = offset >> 15 < 3 && offset & 0x7000 == 0;
                if !valid || !present {
                    assert!(data.iter().all(|&b| b == 0xff), "{offset:#x}: {data:x?}");
                }
            }
            Op::EcamWrite { at, width, value } => {
                mmio.write(ECAM + at.ecam_offset(), &width.bytes(value));
            }
            Op::PortRead { port, width } => {
                let port = u64::from(port % 8);
                let mut data = vec![0u8; width.len()];
                ports.read(port, &mut data);
                if port == 0 && data.len() == 4 {
                    assert_eq!(le(&data) as u32, latch, "the address latch");
                }
            }
            Op::PortWrite { port, width, value } => {
                let port = u64::from(port % 8);
                let data = width.bytes(value);
                if port == 0 && data.len() == 4 {
                    latch = le(&data) as u32;
                }
                ports.write(port, &data);
            }
            Op::Select {
                enable,
                bus,
                slot,
                function,
                reg,
            } => {
                latch = u32::from(enable) << 31
                    | u32::from(bus % 2) << 16
                    | u32::from(slot % 5) << 11
                    | u32::from(function % 8) << 8
                    | u32::from(reg & 0xfc);
                ports.write(0, &latch.to_le_bytes());
            }
            Op::Mmio { addr, width, write } => {
                let addr = 0xc000_0000 + u64::from(addr % 0x2_0000);
                match write {
                    Some(value) => {
                        mmio.write(addr, &width.bytes(value));
                    }
                    None => {
                        let mut data = vec![0u8; width.len()];
                        mmio.read(addr, &mut data);
                    }
                }
            }
        }

        // Identity and class are read-only; slots 3.. and function 1 are empty.
        assert_eq!(le(&ecam_read(&mmio, 0, 4)), 0x0d57_8086, "host bridge ID");
        assert_eq!(
            le(&ecam_read(&mmio, 8, 4)) >> 8,
            0x06_0000,
            "host bridge class"
        );
        for (slot, &(device_type, _, _)) in ids.iter().enumerate() {
            let id = le(&ecam_read(&mmio, (slot as u64 + 1) << 15, 4));
            assert_eq!(id, 0x1af4 | (0x1040 + u64::from(device_type)) << 16);
        }
        assert_eq!(le(&ecam_read(&mmio, 3 << 15, 4)), 0xffff_ffff, "slot 3");
        assert_eq!(le(&ecam_read(&mmio, 1 << 12, 4)), 0xffff_ffff, "function 1");
    }
    // ECAM holds the segment, which holds the bus ECAM is on: take it
    // off, or every run leaks the whole segment.
    mmio.remove(ECAM);
});
