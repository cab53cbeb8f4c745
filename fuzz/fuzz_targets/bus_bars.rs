//! Address dispatch: the bus against a model of its ranges, and BARs that
//! a guest sizes, moves, stacks on one another and on ECAM, and switches
//! on and off through configuration space. Checked: the bus accepts
//! exactly the ranges that fit and routes every address to the range that
//! covers it with the right offset; an access that reaches a BAR reaches
//! one that its device decodes there, never a stale range; and a BAR that
//! overlaps nothing (no other BAR, not ECAM) is reached, whatever
//! overlapped it before.

#![no_main]

use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm::fuzzing::{
    BarMapping, BarReprogram, Bus, BusDevice, ConfigSpace, PciDevice, PciEcam, PciSegment,
    CLASS_HOST_BRIDGE, COMMAND, COMMAND_MEMORY,
};
use vmm_fuzz::{le, Width};

const ECAM: u64 = 0xe000_0000;
const ECAM_SIZE: u64 = 0x10_0000;
const DEVICES: usize = 4;

/// Answers every read with who it is: 0xb0 | id, the BAR, then the offset.
struct Signed {
    id: u8,
}

impl BusDevice for Signed {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let mut sig = [0u8; 8];
        sig[0] = 0xb0 | self.id;
        sig[2..8].copy_from_slice(&offset.to_le_bytes()[..6]);
        let n = data.len().min(8);
        data[..n].copy_from_slice(&sig[..n]);
    }
    fn write(&mut self, _offset: u64, _data: &[u8]) {}
}

/// A function with one or two 64-bit BARs whose reads say which BAR and
/// offset they reached.
struct BarDevice {
    id: u8,
    config: ConfigSpace,
}

impl PciDevice for BarDevice {
    fn config_read(&mut self, offset: u16, data: &mut [u8]) {
        self.config.read(offset, data);
    }
    fn config_write(&mut self, offset: u16, data: &[u8]) -> Vec<BarReprogram> {
        self.config.write(offset, data)
    }
    fn mapped_bars(&self) -> Vec<BarMapping> {
        self.config.mapped_bars()
    }
    fn bar_read(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        let mut sig = [0u8; 8];
        sig[0] = 0xc0 | self.id;
        sig[1] = bar;
        sig[2..8].copy_from_slice(&offset.to_le_bytes()[..6]);
        let n = data.len().min(8);
        data[..n].copy_from_slice(&sig[..n]);
    }
}

/// An address in a small space, so that ranges meet: near the 32-bit
/// window's start, around ECAM's start, or anywhere.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum Addr {
    Window(u16),
    Ecam(u16),
    Any(u64),
}

impl Addr {
    fn resolve(self) -> u64 {
        match self {
            Addr::Window(x) => 0xc000_0000 + (u64::from(x) << 4),
            Addr::Ecam(x) => ECAM - 0x8_0000 + (u64::from(x) << 4),
            Addr::Any(a) => a,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    // The bus alone, against a model.
    Insert {
        base: Addr,
        len: u32,
    },
    Remove {
        base: Addr,
    },
    Access {
        addr: Addr,
        width: Width,
    },
    // BARs through ECAM.
    /// A BAR register (0..6) of a slot: an address's low or high half,
    /// all ones (sizing), or any value.
    BarLow {
        slot: u8,
        reg: u8,
        addr: Addr,
    },
    BarHigh {
        slot: u8,
        reg: u8,
        value: u32,
    },
    BarRaw {
        slot: u8,
        reg: u8,
        value: u32,
    },
    Command {
        slot: u8,
        value: u16,
    },
    Read {
        addr: Addr,
        width: Width,
    },
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Per device: log2 of each BAR's size, and whether it has a second.
    sizes: [(u8, u8, bool); DEVICES],
    ops: Vec<Op>,
}

/// The model of the plain bus: (base, len, id) of each range.
#[derive(Default)]
struct Model(Vec<(u64, u64, u8)>);

impl Model {
    fn covering(&self, addr: u64) -> Option<(u64, u64, u8)> {
        self.0
            .iter()
            .copied()
            .find(|&(base, len, _)| addr >= base && addr - base < len)
    }
}

fuzz_target!(|input: Input| {
    // The plain bus and its model.
    let bus = Bus::new();
    let mut model = Model::default();
    let mut next_id = 0u8;

    // The segment: ECAM, and BAR devices.
    let mmio = Bus::new();
    let mut segment = PciSegment::new(mmio.clone());
    let mut devices = Vec::new();
    for (i, &(size, second, has_second)) in input.sizes.iter().enumerate() {
        let mut config = ConfigSpace::new(0x1af4, 0x10ff, CLASS_HOST_BRIDGE, 0);
        let size = 1u64 << (4 + size % 17);
        config.add_mem_bar64(0, size).expect("BAR 0");
        if has_second {
            config
                .add_mem_bar64(2, 1 << (4 + second % 17))
                .expect("BAR 2");
        }
        let dev = Arc::new(Mutex::new(BarDevice {
            id: i as u8,
            config,
        }));
        segment.add(dev.clone()).expect("a free slot");
        devices.push(dev);
    }
    let segment = Arc::new(segment);
    mmio.insert(Arc::new(Mutex::new(PciEcam::new(segment))), ECAM, ECAM_SIZE)
        .expect("ECAM on an empty bus");
    let ecam_write = |slot: u8, reg: u16, data: &[u8]| {
        let slot = u64::from(slot) % DEVICES as u64;
        mmio.write(ECAM + (slot << 15) + u64::from(reg), data);
    };
    let mut seen = vec![0xc000_0000u64];

    for op in input.ops.iter().take(256) {
        match *op {
            Op::Insert { base, len } => {
                let (base, len) = (base.resolve(), u64::from(len));
                let fits = len > 0
                    && base.checked_add(len).is_some()
                    && model
                        .0
                        .iter()
                        .all(|&(b, l, _)| base + len <= b || b + l <= base);
                let id = next_id;
                let result = bus.insert(Arc::new(Mutex::new(Signed { id: id & 0xf })), base, len);
                assert_eq!(result.is_ok(), fits, "insert {base:#x}+{len:#x}");
                if fits {
                    model.0.push((base, len, id & 0xf));
                    next_id = next_id.wrapping_add(1);
                }
            }
            Op::Remove { base } => {
                let base = base.resolve();
                let at = model.0.iter().position(|&(b, _, _)| b == base);
                assert_eq!(bus.remove(base), at.is_some(), "remove {base:#x}");
                if let Some(at) = at {
                    model.0.remove(at);
                }
            }
            Op::Access { addr, width } => {
                let addr = addr.resolve();
                let mut data = vec![0u8; width.len()];
                let hit = bus.read(addr, &mut data);
                match model.covering(addr) {
                    Some((base, _, id)) => {
                        assert!(hit, "{addr:#x} is covered");
                        let mut want = [0u8; 8];
                        Signed { id }.read(addr - base, &mut want);
                        let n = data.len().min(8);
                        assert_eq!(data[..n], want[..n], "{addr:#x}");
                    }
                    None => assert!(!hit, "{addr:#x} is not covered"),
                }
            }
            Op::BarLow { slot, reg, addr } => {
                let value = addr.resolve() as u32;
                ecam_write(slot, 0x10 + 4 * u16::from(reg % 6), &value.to_le_bytes());
                seen.push(addr.resolve() & 0xffff_ffff);
            }
            Op::BarHigh { slot, reg, value } => {
                ecam_write(slot, 0x10 + 4 * u16::from(reg % 6), &value.to_le_bytes());
            }
            Op::BarRaw { slot, reg, value } => {
                let reg = 0x10 + 4 * u16::from(reg % 6);
                ecam_write(slot, reg, &value.to_le_bytes()[..2]);
            }
            Op::Command { slot, value } => {
                let value = value & COMMAND_MEMORY | value & 0x0404;
                ecam_write(slot, COMMAND as u16, &value.to_le_bytes());
            }
            Op::Read { addr, width } => {
                let mut data = vec![0u8; width.len()];
                mmio.read(addr.resolve(), &mut data);
                seen.push(addr.resolve());
            }
        }

        // Every address of interest: what reaches a BAR reaches one its
        // device decodes there.
        let decoded: Vec<(usize, BarMapping)> = devices
            .iter()
            .enumerate()
            .flat_map(|(i, d)| {
                let bars = d.lock().expect("device lock").mapped_bars();
                bars.into_iter().map(move |m| (i, m))
            })
            .collect();
        for (i, m) in &decoded {
            let end = m.addr + m.len;
            let alone = decoded
                .iter()
                .filter(|(j, n)| (j, n.bar) != (i, m.bar))
                .all(|(_, n)| end <= n.addr || n.addr + n.len <= m.addr)
                && (end <= ECAM || ECAM + ECAM_SIZE <= m.addr);
            if alone {
                let mut sig = [0u8; 8];
                assert!(
                    mmio.read(m.addr, &mut sig),
                    "device {i} BAR {} at {:#x} overlaps nothing but is not decoded",
                    m.bar,
                    m.addr
                );
                assert_eq!(sig[..2], [0xc0 | *i as u8, m.bar], "{:#x}", m.addr);
            }
        }
        let mut probes: Vec<u64> = decoded
            .iter()
            .flat_map(|(_, m)| [m.addr, m.addr + m.len - 1, m.addr + m.len])
            .collect();
        probes.extend(seen.iter().rev().take(8));
        for addr in probes {
            if (ECAM..ECAM + ECAM_SIZE).contains(&addr) {
                continue;
            }
            let mut sig = [0u8; 8];
            if !mmio.read(addr, &mut sig) {
                continue;
            }
            assert_eq!(sig[0] & 0xf0, 0xc0, "{addr:#x} reached something else");
            let (id, bar, offset) = (usize::from(sig[0] & 0xf), sig[1], le(&sig[2..8]));
            let owner = decoded
                .iter()
                .find(|(i, m)| *i == id && m.bar == bar)
                .map(|(_, m)| *m);
            assert!(
                owner.is_some_and(|m| m.addr + offset == addr && offset < m.len),
                "{addr:#x} reached device {id} BAR {bar} at offset {offset:#x}, which decodes {owner:x?}"
            );
        }
    }
    // ECAM holds the segment, which holds the bus ECAM is on: take it
    // off, or every run leaks the whole segment.
    mmio.remove(ECAM);
});
