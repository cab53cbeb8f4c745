//! The virtio-pci transport driven by a hostile driver: accesses of any
//! width and offset to common config, ISR, device config, notify and the
//! MSI-X table and PBA, and to configuration space (the PCI_CFG window,
//! the MSI-X control word, the BAR), mixed with a device that fails and
//! backends that signal. Checked after every step: the kicks are
//! registered exactly at the decoded BAR's notify addresses, the identity
//! and num_queues never change, and the device is asked only what the
//! transport promises (config inside its window, features it offered,
//! queues it has), and paused only between activation and reset, resumed
//! only when paused. While the VM is paused the driver is silent (its
//! vCPUs are parked); the device's own threads and backends are not.

#![no_main]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::fuzzing::{
    msix_vectors, ActivateContext, FakeIoEvents, FakeMsiGroup, ManagedDevice, MsiInterruptGroup,
    PciDevice, QueuePlace, VirtioDevice, VirtioInterrupt, VirtioPciDevice, BAR_SIZE,
};
use vmm_fuzz::{le, Width};

const BAR_ADDR: u64 = 0xc000_0000;

#[derive(Debug)]
struct Failed;

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the fuzzed device failed")
    }
}

impl std::error::Error for Failed {}

struct FuzzDevice {
    device_type: u32,
    queues: Vec<u16>,
    features: u64,
    config: Vec<u8>,
    fail: Arc<AtomicBool>,
    interrupt: Arc<Mutex<Option<VirtioInterrupt>>>,
    /// Activated (successfully or not) since the last reset.
    activated: bool,
    paused: bool,
    /// The queues of its last activation (or of a restore).
    running: Vec<usize>,
}

impl VirtioDevice for FuzzDevice {
    type Error = Failed;

    fn id(&self) -> &str {
        "fuzz"
    }
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_sizes(&self) -> &[u16] {
        &self.queues
    }
    fn features(&self) -> u64 {
        self.features
    }
    fn config_len(&self) -> u32 {
        self.config.len() as u32
    }
    fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), Failed> {
        let start = offset as usize;
        let bytes = self
            .config
            .get(start..start + data.len())
            .expect("config read outside the window");
        if self.fail.load(Ordering::Relaxed) {
            return Err(Failed);
        }
        data.copy_from_slice(bytes);
        Ok(())
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), Failed> {
        let start = offset as usize;
        let window = self
            .config
            .get_mut(start..start + data.len())
            .expect("config write outside the window");
        if self.fail.load(Ordering::Relaxed) {
            return Err(Failed);
        }
        window.copy_from_slice(data);
        Ok(())
    }
    fn attach(&mut self, interrupt: VirtioInterrupt) {
        *self.interrupt.lock().expect("interrupt lock") = Some(interrupt);
    }
    fn activate(&mut self, context: ActivateContext) -> Result<(), Failed> {
        assert_eq!(
            context.features & !self.features,
            0,
            "features never offered were acked"
        );
        let mut last = None;
        for q in &context.queues {
            assert!(last < Some(q.index), "queues out of order or twice");
            last = Some(q.index);
            let max = self.queues[q.index];
            let size = virtio_queue::QueueT::size(&q.queue);
            assert!(size <= max && size.is_power_of_two(), "queue size {size}");
        }
        assert!(!self.paused, "activated while paused");
        self.activated = true;
        self.running = context.queues.iter().map(|q| q.index).collect();
        if self.fail.load(Ordering::Relaxed) {
            return Err(Failed);
        }
        Ok(())
    }
    fn reset(&mut self) -> Result<(), Failed> {
        self.activated = false;
        self.paused = false;
        if self.fail.load(Ordering::Relaxed) {
            return Err(Failed);
        }
        Ok(())
    }
    fn pause(&mut self) -> Result<(), Failed> {
        assert!(self.activated, "paused before activation");
        assert!(!self.paused, "paused twice");
        self.paused = true;
        if self.fail.load(Ordering::Relaxed) {
            return Err(Failed);
        }
        Ok(())
    }
    fn resume(&mut self) -> Result<(), Failed> {
        assert!(self.paused, "resumed without a pause");
        self.paused = false;
        if self.fail.load(Ordering::Relaxed) {
            return Err(Failed);
        }
        Ok(())
    }
    /// Every queue it runs, somewhere along its ring.
    fn queue_places(&self) -> Result<Vec<QueuePlace>, Failed> {
        assert!(
            self.paused,
            "asked for queue places while running (or never run)"
        );
        Ok(self
            .running
            .iter()
            .map(|&index| QueuePlace {
                index,
                next_avail: index as u16 * 3,
                next_used: index as u16,
            })
            .collect())
    }
    fn save_state(&mut self) -> Result<serde_json::Value, Failed> {
        assert!(self.paused || !self.activated, "saved while running");
        if self.fail.load(Ordering::Relaxed) {
            return Err(Failed);
        }
        Ok(serde_json::json!({ "running": self.running }))
    }
    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), Failed> {
        assert!(!self.activated, "restored into a running device");
        self.running = serde_json::from_value(state["running"].clone()).map_err(|_| Failed)?;
        Ok(())
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Region {
    Common,
    Isr,
    DeviceConfig,
    Notify,
    MsixTable,
    MsixPba,
    Anywhere,
}

#[derive(Arbitrary, Debug)]
enum Op {
    BarRead {
        region: Region,
        offset: u16,
        width: Width,
    },
    BarWrite {
        region: Region,
        offset: u16,
        width: Width,
        value: u64,
    },
    /// A BAR the device does not have.
    OtherBar {
        bar: u8,
        offset: u16,
        width: Width,
    },
    ConfigRead {
        offset: u16,
        width: Width,
    },
    ConfigWrite {
        offset: u16,
        width: Width,
        value: u64,
    },
    /// From now on the device's config accesses, activation and reset fail.
    DeviceFails(bool),
    /// The device's own thread asks for a reset, or signals a config change.
    NeedsReset,
    ConfigChanged,
    /// A backend signals a vector's eventfd.
    Signal {
        vector: u8,
    },
    /// The VM pauses or resumes.
    Pause,
    Resume,
    /// A snapshot of the paused transport, restored into a new one built
    /// the same way, which saves the same again.
    Snapshot,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// VIRTIO device ID 1 to 63.
    device_type: u8,
    /// Each a power of two; 1 to 8 queues.
    queue_log2: Vec<u8>,
    features: u64,
    /// Up to 64 bytes of config window.
    config: Vec<u8>,
    placed: bool,
    ops: Vec<Op>,
}

fn region(region: Region, offset: u16, queues: u64, config: u64, vectors: u64) -> u64 {
    let offset = u64::from(offset);
    let (base, len) = match region {
        Region::Common => (0, 0x38),
        Region::Isr => (0x1000, 4),
        Region::DeviceConfig => (0x2000, config),
        Region::Notify => (0x3000, 4 * queues),
        Region::MsixTable => (0x4000, 16 * vectors),
        Region::MsixPba => (0x6000, 8),
        Region::Anywhere => (0, BAR_SIZE),
    };
    // A little past each region too.
    base + offset % (len + 16)
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("1 MiB of memory")
}

fuzz_target!(|input: Input| {
    let queues: Vec<u16> = input
        .queue_log2
        .iter()
        .take(8)
        .map(|l| 1u16 << (l % 16))
        .collect();
    if queues.is_empty() {
        return;
    }
    let device_type = u32::from(input.device_type % 63) + 1;
    let config: Vec<u8> = input.config.iter().copied().take(64).collect();
    let fail = Arc::new(AtomicBool::new(false));
    let interrupt = Arc::new(Mutex::new(None));
    let vectors = usize::from(msix_vectors(queues.len()));
    let msi = FakeMsiGroup::new(vectors);
    let ioevents = FakeIoEvents::default();
    let device = FuzzDevice {
        device_type,
        queues: queues.clone(),
        features: input.features | 1 << 32,
        config: config.clone(),
        fail: fail.clone(),
        interrupt: interrupt.clone(),
        activated: false,
        paused: false,
        running: Vec::new(),
    };
    let Ok(mut dev) = VirtioPciDevice::new(
        device,
        memory(),
        Arc::new(msi.clone()),
        Box::new(ioevents.clone()),
    ) else {
        return;
    };
    if input.placed {
        dev.place_bar(BAR_ADDR);
    }
    let identity = 0x1af4 | (0x1040 + device_type) << 16;
    let (nq, ncfg, nvec) = (queues.len() as u64, config.len() as u64, vectors as u64);
    let mut paused = false;
    for op in input.ops.iter().take(512) {
        let from_the_driver = !matches!(
            op,
            Op::DeviceFails(_)
                | Op::NeedsReset
                | Op::ConfigChanged
                | Op::Signal { .. }
                | Op::Pause
                | Op::Resume
                | Op::Snapshot
        );
        if paused && from_the_driver {
            continue;
        }
        match *op {
            Op::BarRead {
                region: r,
                offset,
                width,
            } => {
                let mut data = vec![0u8; width.len()];
                dev.bar_read(0, region(r, offset, nq, ncfg, nvec), &mut data);
            }
            Op::BarWrite {
                region: r,
                offset,
                width,
                value,
            } => dev.bar_write(0, region(r, offset, nq, ncfg, nvec), &width.bytes(value)),
            Op::OtherBar { bar, offset, width } => {
                let bar = bar % 6 + 1;
                let mut data = vec![0u8; width.len()];
                dev.bar_read(bar, u64::from(offset), &mut data);
                assert!(data.iter().all(|&b| b == 0xff), "BAR {bar} does not exist");
                dev.bar_write(bar, u64::from(offset), &data);
            }
            Op::ConfigRead { offset, width } => {
                let mut data = vec![0u8; width.len()];
                dev.config_read(offset % 0x1010, &mut data);
            }
            Op::ConfigWrite {
                offset,
                width,
                value,
            } => {
                // Mostly the header and capabilities, where the registers are.
                let offset = if offset & 0x8000 != 0 {
                    offset % 0x1010
                } else {
                    offset % 0x100
                };
                let _ = dev.config_write(offset, &width.bytes(value));
            }
            Op::DeviceFails(on) => fail.store(on, Ordering::Relaxed),
            Op::NeedsReset => {
                if let Some(i) = interrupt.lock().expect("interrupt lock").as_ref() {
                    i.set_needs_reset();
                }
            }
            Op::ConfigChanged => {
                if let Some(i) = interrupt.lock().expect("interrupt lock").as_ref() {
                    i.trigger_config();
                }
            }
            Op::Signal { vector } => {
                if let Some(fd) = msi.notifier(usize::from(vector) % vectors) {
                    let _ = fd.write(1);
                }
                msi.poll();
            }
            Op::Pause => {
                dev.pause();
                paused = true;
            }
            Op::Resume => {
                dev.resume();
                paused = false;
            }
            Op::Snapshot => {
                if !paused {
                    continue;
                }
                let Ok(saved) = ManagedDevice::save(&mut dev) else {
                    assert!(fail.load(Ordering::Relaxed), "a healthy device not saved");
                    continue;
                };
                let twin = FuzzDevice {
                    device_type,
                    queues: queues.clone(),
                    features: input.features | 1 << 32,
                    config: config.clone(),
                    fail: Arc::new(AtomicBool::new(false)),
                    interrupt: Arc::new(Mutex::new(None)),
                    activated: false,
                    paused: false,
                    running: Vec::new(),
                };
                let mut twin = VirtioPciDevice::new(
                    twin,
                    memory(),
                    Arc::new(FakeMsiGroup::new(vectors)),
                    Box::new(FakeIoEvents::default()),
                )
                .expect("built once already");
                ManagedDevice::restore(&mut twin, &saved).expect("its own snapshot restores");
                let again = ManagedDevice::save(&mut twin).expect("a restored device saves");
                assert_eq!(again, saved, "a restored transport saves what it was given");
            }
        }

        // The kicks are where the decoded BAR's notify addresses are.
        let expected: Vec<u64> = match dev.mapped_bars().first() {
            Some(bar) => (0..nq).map(|q| bar.addr + 0x3000 + 4 * q).collect(),
            None => Vec::new(),
        };
        assert_eq!(ioevents.addrs(), expected, "ioeventfds");
        let mut id = [0u8; 4];
        dev.config_read(0, &mut id);
        assert_eq!(le(&id), u64::from(identity), "vendor and device ID");
        let mut num_queues = [0u8; 2];
        dev.bar_read(0, 0x12, &mut num_queues);
        assert_eq!(le(&num_queues), nq, "num_queues");
    }
});
