//! The transport driven the way a guest driver drives it, against a fake
//! device, fake MSI vectors and fake ioeventfds: no KVM, no backend.

use std::sync::{Arc, Mutex};

use super::common::{
    STATUS_ACKNOWLEDGE, STATUS_DRIVER, STATUS_DRIVER_OK, STATUS_FEATURES_OK, STATUS_NEEDS_RESET,
};
use super::*;
use crate::interrupt::fake::{FakeIoEvents, FakeMsiGroup};
use crate::pci::config::BAR0;
use crate::virtio::interrupt::ISR_CONFIG;

#[derive(Debug, thiserror::Error)]
#[error("backend gone")]
struct Gone;

/// (index, size, desc, avail, used) of a started queue.
type StartedQueue = (usize, u16, u64, u64, u64);

#[derive(Default)]
struct Calls {
    config_reads: Vec<(u32, usize)>,
    config_writes: Vec<(u32, Vec<u8>)>,
    activations: Vec<(u64, Vec<StartedQueue>)>,
    resets: usize,
    /// "pause" and "resume", in the order they came.
    lifecycle: Vec<&'static str>,
    fail_config: bool,
    /// Each activation's queues' (index, next avail, next used).
    places: Vec<Vec<(usize, u16, u16)>>,
    /// What `restore_state` was given.
    restored: Vec<serde_json::Value>,
    /// The last activation's kicks, calls and interrupt handle.
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    interrupt: Option<VirtioInterrupt>,
}

struct FakeDevice {
    queues: Vec<u16>,
    config_len: u32,
    calls: Arc<Mutex<Calls>>,
}

impl VirtioDevice for FakeDevice {
    type Error = Gone;
    fn id(&self) -> &str {
        "fake"
    }
    fn device_type(&self) -> u32 {
        26
    }
    fn queue_sizes(&self) -> &[u16] {
        &self.queues
    }
    fn features(&self) -> u64 {
        (1 << 32) | (1 << 29)
    }
    fn config_len(&self) -> u32 {
        self.config_len
    }
    fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), Gone> {
        let mut calls = self.calls.lock().unwrap();
        calls.config_reads.push((offset, data.len()));
        if calls.fail_config {
            return Err(Gone);
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = b"myfs".get(offset as usize + i).copied().unwrap_or(0);
        }
        Ok(())
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), Gone> {
        let mut calls = self.calls.lock().unwrap();
        calls.config_writes.push((offset, data.to_vec()));
        if calls.fail_config {
            return Err(Gone);
        }
        Ok(())
    }
    fn activate(&mut self, context: ActivateContext) -> Result<(), Gone> {
        let started = context
            .queues
            .iter()
            .map(|q| {
                (
                    q.index,
                    q.queue.size(),
                    q.queue.desc_table(),
                    q.queue.avail_ring(),
                    q.queue.used_ring(),
                )
            })
            .collect();
        let mut calls = self.calls.lock().unwrap();
        calls.activations.push((context.features, started));
        let places = context
            .queues
            .iter()
            .map(|q| (q.index, q.queue.next_avail(), q.queue.next_used()))
            .collect();
        calls.places.push(places);
        let (kicks, irqfds) = context.queues.into_iter().map(|q| (q.kick, q.call)).unzip();
        calls.kicks = kicks;
        calls.calls = irqfds;
        calls.interrupt = Some(context.interrupt);
        Ok(())
    }
    fn reset(&mut self) -> Result<(), Gone> {
        self.calls.lock().unwrap().resets += 1;
        Ok(())
    }
    fn pause(&mut self) -> Result<(), Gone> {
        self.calls.lock().unwrap().lifecycle.push("pause");
        Ok(())
    }
    fn resume(&mut self) -> Result<(), Gone> {
        self.calls.lock().unwrap().lifecycle.push("resume");
        Ok(())
    }
    /// Each running queue 7 in and 5 out, as if it had served some.
    fn queue_places(&self) -> Result<Vec<QueuePlace>, Gone> {
        let calls = self.calls.lock().unwrap();
        let last = calls.places.last().cloned().unwrap_or_default();
        Ok(last
            .iter()
            .map(|&(index, _, _)| QueuePlace {
                index,
                next_avail: 7,
                next_used: 5,
            })
            .collect())
    }
    fn save_state(&mut self) -> Result<serde_json::Value, Gone> {
        Ok(serde_json::json!({ "held": "bytes" }))
    }
    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), Gone> {
        self.calls.lock().unwrap().restored.push(state.clone());
        Ok(())
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
}

struct Rig {
    dev: VirtioPciDevice<FakeDevice>,
    calls: Arc<Mutex<Calls>>,
    irq: FakeMsiGroup,
    ioevents: FakeIoEvents,
}

fn rig(queues: &[u16], config_len: u32) -> Rig {
    let calls = Arc::new(Mutex::new(Calls::default()));
    let irq = FakeMsiGroup::new(queues.len() + 1);
    let vectors = Arc::new(irq.clone());
    let ioevents = FakeIoEvents::default();
    let dev = VirtioPciDevice::new(
        FakeDevice {
            queues: queues.to_vec(),
            config_len,
            calls: calls.clone(),
        },
        memory(),
        vectors,
        Box::new(ioevents.clone()),
    )
    .unwrap();
    Rig {
        dev,
        calls,
        irq,
        ioevents,
    }
}

impl Rig {
    fn cfg32(&mut self, offset: usize) -> u32 {
        let mut b = [0u8; 4];
        self.dev.config_read(offset as u16, &mut b);
        u32::from_le_bytes(b)
    }
    fn cfg8(&mut self, offset: usize) -> u8 {
        let mut b = [0u8; 1];
        self.dev.config_read(offset as u16, &mut b);
        b[0]
    }
    fn set_cfg32(&mut self, offset: usize, v: u32) -> Vec<BarReprogram> {
        self.dev.config_write(offset as u16, &v.to_le_bytes())
    }
    fn bar32(&mut self, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        self.dev.bar_read(0, offset, &mut b);
        u32::from_le_bytes(b)
    }
    fn bar8(&mut self, offset: u64) -> u8 {
        let mut b = [0u8; 1];
        self.dev.bar_read(0, offset, &mut b);
        b[0]
    }
    fn set_bar32(&mut self, offset: u64, v: u32) {
        self.dev.bar_write(0, offset, &v.to_le_bytes());
    }
    fn set_bar16(&mut self, offset: u64, v: u16) {
        self.dev.bar_write(0, offset, &v.to_le_bytes());
    }
    fn set_status(&mut self, v: u8) {
        self.dev.bar_write(0, 20, &[v]);
    }
    fn status(&mut self) -> u8 {
        self.bar8(20)
    }

    /// The capability chain as (id, offset).
    fn caps(&mut self) -> Vec<(u8, usize)> {
        let mut caps = Vec::new();
        let mut at = usize::from(self.cfg8(0x34));
        while at != 0 && caps.len() < 16 {
            caps.push((self.cfg8(at), at));
            at = usize::from(self.cfg8(at + 1));
        }
        caps
    }

    /// What a Linux-like driver does up to DRIVER_OK, with every queue
    /// enabled on vector `queue + 1` and config changes on vector 0.
    fn bring_up(&mut self, features: u64) {
        self.set_status(0);
        self.set_status(STATUS_ACKNOWLEDGE);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        self.set_bar32(8, 0);
        self.set_bar32(12, features as u32);
        self.set_bar32(8, 1);
        self.set_bar32(12, (features >> 32) as u32);
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
        self.set_bar16(16, 0);
        let n = self.bar32(16) >> 16;
        for q in 0..n as u16 {
            self.set_bar16(22, q);
            self.set_bar16(24, 128);
            let base = 0x10_0000 * (u64::from(q) + 1);
            self.dev.bar_write(0, 32, &base.to_le_bytes());
            self.dev.bar_write(0, 40, &(base + 0x1000).to_le_bytes());
            self.dev.bar_write(0, 48, &(base + 0x2000).to_le_bytes());
            self.set_bar16(26, q + 1);
            self.set_bar16(28, 1);
        }
        self.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
    }

    fn enable_msix_vector(&mut self, vector: u64) {
        let (_, cap) = *self
            .caps()
            .iter()
            .find(|(id, _)| *id == msix::CAPABILITY_ID)
            .unwrap();
        self.dev
            .config_write(cap as u16 + 2, &0x8000u16.to_le_bytes());
        let entry = MSIX_TABLE_OFFSET + vector * 16;
        self.set_bar32(entry, 0xfee0_0000);
        self.set_bar32(entry + 8, 0x40 + vector as u32);
        self.set_bar32(entry + 12, 0);
    }
}

#[test]
fn identity_and_capabilities_look_like_qemus_vhost_user_fs_pci() {
    let mut r = rig(&[1024, 1024], 40);
    assert_eq!(r.cfg32(0), 0x105a_1af4, "vendor 0x1af4, device 0x1040 + 26");
    assert_eq!(r.cfg32(8), 0x0180_0001, "class 0x018000, revision 1");
    assert_eq!(r.cfg32(0x2c), 0x0040_1af4);
    assert_ne!(r.cfg32(4) >> 16 & (1 << 4), 0, "capability list");
    let caps = r.caps();
    let ids: Vec<u8> = caps.iter().map(|c| c.0).collect();
    assert_eq!(ids, vec![9, 9, 9, 9, 9, 0x11]);
    // (cfg_type, bar, offset, length) of each virtio capability.
    let mut virtio = Vec::new();
    for &(_, at) in &caps[..5] {
        let cfg_type = r.cfg8(at + 3);
        virtio.push((cfg_type, r.cfg8(at + 4), r.cfg32(at + 8), r.cfg32(at + 12)));
        match cfg_type {
            2 => {
                assert_eq!(r.cfg8(at + 2), 20);
                assert_eq!(r.cfg32(at + 16), 4, "notify_off_multiplier");
            }
            5 => assert_eq!(r.cfg8(at + 2), 20, "virtio_pci_cfg_cap"),
            _ => assert_eq!(r.cfg8(at + 2), 16),
        }
    }
    assert_eq!(
        virtio,
        vec![
            (1, 0, 0, 0x38),
            (2, 0, 0x3000, 8),
            (3, 0, 0x1000, 4),
            (4, 0, 0x2000, 40),
            (5, 0, 0, 0)
        ]
    );
    let msix_at = caps[5].1;
    assert_eq!(r.cfg32(msix_at) >> 16, 2, "3 vectors, disabled");
    assert_eq!(r.cfg32(msix_at + 4), 0x4000, "table in BAR 0");
    assert_eq!(r.cfg32(msix_at + 8), 0x6000, "PBA in BAR 0");
}

#[test]
fn no_device_cap_without_a_window_and_bad_ids_refused() {
    let mut r = rig(&[64], 0);
    let ids: Vec<u8> = r.caps().iter().map(|c| r.cfg8(c.1 + 3)).collect();
    assert_eq!(
        ids,
        vec![1, 2, 3, 5, 0],
        "no device cfg (the 0 is MSI-X's byte)"
    );

    let vectors = Arc::new(FakeMsiGroup::new(2));
    let huge = FakeDevice {
        queues: vec![64],
        config_len: 0,
        calls: Arc::new(Mutex::new(Calls::default())),
    };
    // 0x1040 + 0xefc0 overflows a 16-bit device ID.
    struct Id(FakeDevice);
    impl VirtioDevice for Id {
        type Error = Gone;
        fn id(&self) -> &str {
            "big"
        }
        fn device_type(&self) -> u32 {
            0xefc0
        }
        fn queue_sizes(&self) -> &[u16] {
            self.0.queue_sizes()
        }
        fn features(&self) -> u64 {
            0
        }
        fn config_len(&self) -> u32 {
            0
        }
        fn read_config(&mut self, _: u32, _: &mut [u8]) -> Result<(), Gone> {
            Ok(())
        }
        fn write_config(&mut self, _: u32, _: &[u8]) -> Result<(), Gone> {
            Ok(())
        }
        fn activate(&mut self, _: ActivateContext) -> Result<(), Gone> {
            Ok(())
        }
        fn reset(&mut self) -> Result<(), Gone> {
            Ok(())
        }
        fn pause(&mut self) -> Result<(), Gone> {
            Ok(())
        }
        fn resume(&mut self) -> Result<(), Gone> {
            Ok(())
        }
        fn queue_places(&self) -> Result<Vec<QueuePlace>, Gone> {
            self.0.queue_places()
        }
        fn save_state(&mut self) -> Result<serde_json::Value, Gone> {
            self.0.save_state()
        }
        fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), Gone> {
            self.0.restore_state(state)
        }
    }
    let err = VirtioPciDevice::new(
        Id(huge),
        memory(),
        vectors,
        Box::new(FakeIoEvents::default()),
    );
    assert!(matches!(err, Err(TransportError::DeviceId { id: 0xefc0 })));
}

#[test]
fn kicks_follow_the_bar() {
    let mut r = rig(&[256, 256], 40);
    assert!(r.ioevents.addrs().is_empty());
    r.dev.place_bar(0xc000_0000);
    assert_eq!(r.ioevents.addrs(), vec![0xc000_3000, 0xc000_3004]);
    assert_eq!(
        r.dev.mapped_bars(),
        vec![BarMapping {
            bar: 0,
            addr: 0xc000_0000,
            len: BAR_SIZE
        }]
    );

    // The guest sizes and moves the BAR with decoding off, then turns it on.
    r.dev.config_write(COMMAND as u16, &[0, 0]);
    assert!(r.ioevents.addrs().is_empty());
    r.set_cfg32(BAR0, u32::MAX);
    r.set_cfg32(BAR0 + 4, u32::MAX);
    assert_eq!(r.cfg32(BAR0), 0xffff_8004, "size 0x8000, 64-bit");
    r.set_cfg32(BAR0, 0xd000_0000);
    r.set_cfg32(BAR0 + 4, 0);
    let changes = r
        .dev
        .config_write(COMMAND as u16, &COMMAND_MEMORY.to_le_bytes());
    assert_eq!(changes[0].new, Some(0xd000_0000));
    assert_eq!(r.ioevents.addrs(), vec![0xd000_3000, 0xd000_3004]);

    // Moved while decoding: one step from old to new.
    let changes = r.set_cfg32(BAR0 + 4, 1);
    assert_eq!(changes[0].old, Some(0xd000_0000));
    assert_eq!(r.ioevents.addrs(), vec![0x1_d000_3000, 0x1_d000_3004]);
}

#[test]
fn driver_ok_hands_the_rings_kicks_and_msix_irqfds_to_the_device() {
    let mut r = rig(&[1024, 512], 40);
    r.dev.place_bar(0xc000_0000);
    r.enable_msix_vector(2);
    let features = (1 << 32) | (1 << 29);
    r.bring_up(features);
    assert!(r.dev.common.driver_ok());
    let calls = r.calls.lock().unwrap();
    assert_eq!(calls.activations.len(), 1);
    let (acked, queues) = &calls.activations[0];
    assert_eq!(*acked, features);
    assert_eq!(queues.len(), 2);
    assert_eq!(
        r.ioevents.addrs(),
        vec![0xc000_3000, 0xc000_3004],
        "kicks at the notify addresses"
    );
    for (q, &(index, size, desc, avail, used)) in queues.iter().enumerate() {
        let base = 0x10_0000 * (q as u64 + 1);
        assert_eq!(
            (index, size, desc, avail, used),
            (q, 128, base, base + 0x1000, base + 0x2000)
        );
        // The device's kick is the registered ioeventfd: a guest write
        // there reaches it.
        r.dev.kicks[q].write(1).unwrap();
        assert_eq!(calls.kicks[q].read().unwrap(), 1, "kick of queue {q}");
        calls.calls[q].write(1).unwrap();
        let vector_fd = r.dev.msix.irqfd(q as u16 + 1).unwrap();
        assert_eq!(
            vector_fd.read().unwrap(),
            1,
            "call is the queue's MSI-X irqfd"
        );
    }
    drop(calls);
    // The queue on vector 2 interrupts when the backend signals its call fd.
    r.dev.msix.irqfd(2).unwrap().write(1).unwrap();
    assert_eq!(r.irq.delivered(), vec![(2, 0xfee0_0000, 0x42)]);
}

#[test]
fn unregistered_notify_still_reaches_the_kick() {
    let mut r = rig(&[64], 0);
    r.set_bar16(NOTIFY_OFFSET, 0);
    assert_eq!(r.dev.kicks[0].read().unwrap(), 1);
}

#[test]
fn config_window_forwards_inside_and_reads_zero_beyond() {
    let mut r = rig(&[64, 64], 40);
    assert_eq!(r.bar32(DEVICE_CFG_OFFSET), u32::from_le_bytes(*b"myfs"));
    // Straddling the end: only the part inside is forwarded.
    assert_eq!(r.bar32(DEVICE_CFG_OFFSET + 38), 0);
    assert_eq!(r.bar32(DEVICE_CFG_OFFSET + 40), 0);
    assert_eq!(r.bar32(DEVICE_CFG_OFFSET + 0x800), 0);
    r.set_bar32(DEVICE_CFG_OFFSET + 36, 7);
    r.set_bar32(DEVICE_CFG_OFFSET + 40, 7);
    let calls = r.calls.lock().unwrap();
    assert_eq!(calls.config_reads, vec![(0, 4), (38, 2)]);
    assert_eq!(calls.config_writes, vec![(36, 7u32.to_le_bytes().to_vec())]);
}

/// VIRTIO_PCI_CAP_PCI_CFG: pick BAR, offset and length in the capability,
/// then pci_cfg_data is that access to the BAR, reads and writes alike.
#[test]
fn the_pci_cfg_capability_reaches_the_bar() {
    let mut r = rig(&[64, 256], 40);
    let at = r
        .caps()
        .iter()
        .map(|&(_, at)| at)
        .find(|&at| r.cfg8(at) == 9 && r.cfg8(at + 3) == 5)
        .expect("a PCI_CFG capability");
    let select = |r: &mut Rig, offset: u32, len: u32| {
        r.dev.config_write(at as u16 + 4, &[0]);
        r.set_cfg32(at + 8, offset);
        r.set_cfg32(at + 12, len);
    };
    // num_queues (common config 0x12, 2 bytes).
    select(&mut r, 0x12, 2);
    assert_eq!(r.cfg32(at + 16) & 0xffff, 2);
    // queue_select = 1 by a write, then queue_size reads queue 1's.
    select(&mut r, 0x16, 2);
    r.set_cfg32(at + 16, 1);
    select(&mut r, 0x18, 2);
    assert_eq!(r.cfg32(at + 16) & 0xffff, 256);
    assert_eq!(r.bar32(0x16) & 0xffff, 1, "the same register as by MMIO");
    // The device config window, 4 bytes; a byte read of pci_cfg_data
    // makes the same access and returns its first byte.
    select(&mut r, DEVICE_CFG_OFFSET as u32, 4);
    assert_eq!(r.cfg32(at + 16), u32::from_le_bytes(*b"myfs"));
    assert_eq!(r.cfg8(at + 16), b'm');
    // Accesses the spec rules out read zero and reach nothing.
    for (offset, len) in [(0x13, 2), (0x12, 3), (0, 0), (BAR_SIZE as u32, 4)] {
        select(&mut r, offset, len);
        assert_eq!(r.cfg32(at + 16), 0, "offset {offset:#x} length {len}");
    }
    select(&mut r, DEVICE_CFG_OFFSET as u32, 4);
    r.dev.config_write(at as u16 + 4, &[3]);
    assert_eq!(r.cfg32(at + 16), 0, "a BAR the device does not have");
    r.set_cfg32(at + 16, 7);
    let calls = r.calls.lock().unwrap();
    assert_eq!(calls.config_reads, vec![(0, 4), (0, 4)]);
    assert!(calls.config_writes.is_empty(), "{:?}", calls.config_writes);
}

#[test]
fn failed_config_access_reads_ones_and_asks_for_reset() {
    let mut r = rig(&[64, 64], 40);
    r.dev.place_bar(0xc000_0000);
    r.enable_msix_vector(0);
    r.set_bar16(16, 0); // config changes on vector 0
    r.calls.lock().unwrap().fail_config = true;
    assert_eq!(r.bar32(DEVICE_CFG_OFFSET), u32::MAX);
    assert_eq!(r.bar32(DEVICE_CFG_OFFSET + 4), u32::MAX);
    r.set_bar32(DEVICE_CFG_OFFSET, 1);
    assert_ne!(r.status() & STATUS_NEEDS_RESET, 0);
    assert_eq!(
        r.irq.delivered(),
        vec![(0, 0xfee0_0000, 0x40)],
        "one config interrupt"
    );
    assert_eq!(r.bar8(ISR_OFFSET), ISR_CONFIG);
    assert_eq!(r.bar8(ISR_OFFSET), 0, "read clears the ISR");
    // Reset clears NEEDS_RESET and the device is asked to reset.
    r.calls.lock().unwrap().fail_config = false;
    r.set_status(0);
    assert_eq!(r.status(), 0);
    assert_eq!(r.calls.lock().unwrap().resets, 1);
    assert_eq!(r.bar32(DEVICE_CFG_OFFSET), u32::from_le_bytes(*b"myfs"));
}

#[test]
fn reset_returns_to_a_renegotiable_state() {
    let mut r = rig(&[64, 64], 40);
    r.dev.place_bar(0xc000_0000);
    r.bring_up(1 << 32);
    r.dev.kicks[0].write(1).unwrap();
    r.set_status(0);
    assert_eq!(r.status(), 0);
    assert!(!r.dev.common.driver_ok());
    assert!(r.dev.kicks[0].read().is_err(), "stale kick drained");
    r.bring_up((1 << 32) | (1 << 29));
    let calls = r.calls.lock().unwrap();
    assert_eq!(calls.resets, 3, "bring_up resets first, twice, and ours");
    assert_eq!(calls.activations.len(), 2);
    assert_eq!(calls.activations[1].0, (1 << 32) | (1 << 29));
}

#[test]
fn guest_cannot_panic_the_transport() {
    let mut r = rig(&[64, 64], 40);
    r.dev.place_bar(0xc000_0000);
    for offset in (0..BAR_SIZE + 16).step_by(3) {
        for len in [1usize, 2, 4, 8] {
            let mut buf = vec![0u8; len];
            r.dev.bar_read(0, offset, &mut buf);
            r.dev.bar_write(0, offset, &vec![0xff; len]);
            r.dev.bar_read(1, offset, &mut buf);
        }
    }
    for offset in (0..4096u16).step_by(1) {
        let mut buf = [0u8; 4];
        r.dev.config_read(offset, &mut buf);
        r.dev.config_write(offset, &[0xff]);
    }
}

#[test]
fn a_device_failing_on_its_own_asks_for_reset_once() {
    let mut r = rig(&[64, 64], 40);
    r.dev.place_bar(0xc000_0000);
    r.enable_msix_vector(0);
    r.bring_up(1 << 32);
    let delivered_before = r.irq.delivered().len();
    let Rig {
        dev, calls, irq, ..
    } = r;
    let shared = Arc::new(Mutex::new(dev));
    let interrupt = calls.lock().unwrap().interrupt.clone().unwrap();
    {
        // A device thread never waits for the transport: a vCPU may hold
        // it, waiting for that thread to stop.
        let _busy = shared.lock().unwrap();
        assert!(interrupt.set_needs_reset());
    }
    assert!(!interrupt.set_needs_reset(), "a second failure is harmless");
    let mut dev = shared.lock().unwrap();
    let mut status = [0u8];
    dev.bar_read(0, 20, &mut status);
    assert_ne!(status[0] & STATUS_NEEDS_RESET, 0);
    assert_ne!(status[0] & STATUS_DRIVER_OK, 0, "the driver's bits stay");
    let config_irqs: Vec<_> = irq.delivered()[delivered_before..].to_vec();
    assert_eq!(
        config_irqs,
        vec![(0, 0xfee0_0000, 0x40)],
        "one config interrupt"
    );
    drop(dev);
    drop(shared);
    interrupt.set_needs_reset();
    interrupt.trigger_config();
    // After the VM is gone the handle is harmless.
}

#[test]
fn a_config_change_from_the_device_moves_the_generation_and_interrupts() {
    let mut r = rig(&[64, 64], 40);
    r.dev.place_bar(0xc000_0000);
    r.enable_msix_vector(0);
    r.bring_up(1 << 32);
    let generation = |dev: &mut VirtioPciDevice<FakeDevice>| {
        let mut g = [0u8];
        dev.bar_read(0, 21, &mut g);
        g[0]
    };
    let before = generation(&mut r.dev);
    let delivered_before = r.irq.delivered().len();
    let interrupt = r.calls.lock().unwrap().interrupt.clone().unwrap();
    interrupt.config_changed();
    assert_eq!(generation(&mut r.dev), before.wrapping_add(1));
    assert_eq!(generation(&mut r.dev), before.wrapping_add(1), "once");
    assert_eq!(
        r.irq.delivered()[delivered_before..].to_vec(),
        vec![(0, 0xfee0_0000, 0x40)],
        "one config interrupt"
    );
    let mut status = [0u8];
    r.dev.bar_read(0, 20, &mut status);
    assert_eq!(status[0] & STATUS_NEEDS_RESET, 0, "a change is no failure");
}

/// Only a running device has anything to pause; a pause or resume asked
/// twice reaches the device once, and a reset ends a pause.
#[test]
fn a_pause_reaches_a_running_device_once() {
    use crate::lifecycle::ManagedDevice;
    let mut r = rig(&[64, 64], 40);
    r.dev.place_bar(0xc000_0000);
    r.dev.pause();
    r.dev.resume();
    assert!(r.calls.lock().unwrap().lifecycle.is_empty(), "not running");
    r.bring_up(1 << 32);
    r.dev.pause();
    r.dev.pause();
    r.dev.resume();
    r.dev.resume();
    assert_eq!(r.calls.lock().unwrap().lifecycle, ["pause", "resume"]);
    r.dev.pause();
    r.set_status(0);
    r.dev.resume();
    assert_eq!(
        r.calls.lock().unwrap().lifecycle,
        ["pause", "resume", "pause"],
        "a reset ended the pause"
    );
}

/// A transport the driver left half set up (features acked, queues laid
/// out, a vector programmed with a signal pending behind its mask, the
/// BAR moved) saves, and a transport built the same way restored from it
/// shows the guest the same registers, with its kicks where the BAR is.
#[test]
fn a_saved_transport_restores_into_a_new_one() {
    let mut a = rig(&[256, 256], 40);
    a.dev.place_bar(0xc000_0000);
    a.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    a.set_bar32(8, 1);
    a.set_bar32(12, 1);
    a.set_status(STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    a.set_bar16(22, 1);
    a.set_bar16(24, 64);
    a.dev.bar_write(0, 32, &0x12_3000u64.to_le_bytes());
    a.set_bar16(26, 2);
    a.enable_msix_vector(2);
    // Masked again, then signalled: pending.
    a.set_bar32(MSIX_TABLE_OFFSET + 2 * 16 + 12, 1);
    a.dev.msix.trigger(2);
    a.set_cfg32(BAR0 + 4, 1);
    let saved = a.dev.save_transport().unwrap();
    let json = serde_json::to_value(&saved).unwrap();
    let saved: persist::TransportSnapshot = serde_json::from_value(json).unwrap();

    let mut b = rig(&[256, 256], 40);
    b.dev.restore_transport(&saved).unwrap();
    assert!(
        b.dev.save_transport().unwrap() == saved,
        "saved again as it came"
    );
    assert_eq!(b.ioevents.addrs(), vec![0x1_c000_3000, 0x1_c000_3004]);
    assert_eq!(b.status(), a.status());
    for offset in [BAR0, BAR0 + 4, COMMAND] {
        assert_eq!(b.cfg32(offset), a.cfg32(offset), "config {offset:#x}");
    }
    b.set_bar16(22, 1);
    assert_eq!(b.bar32(24) & 0xffff, 64, "queue 1's size");
    assert_eq!(b.bar32(32), 0x12_3000, "queue 1's descriptors");
    assert_eq!(b.bar32(24) >> 16, 2, "queue 1's vector");
    assert_eq!(
        b.bar32(MSIX_PBA_OFFSET) & 0b100,
        0b100,
        "vector 2 still pending"
    );
    // Unmasked, the pending signal reaches the guest where it was routed.
    b.set_bar32(MSIX_TABLE_OFFSET + 2 * 16 + 12, 0);
    assert_eq!(b.irq.delivered(), vec![(2, 0xfee0_0000, 0x42)]);
}

/// What does not fit is refused, and a running device is not saved
/// without its queues.
#[test]
fn a_transport_refuses_what_it_cannot_save_or_restore() {
    let mut a = rig(&[256, 256], 40);
    let saved = a.dev.save_transport().unwrap();
    let mut fewer = rig(&[256], 40);
    assert!(fewer.dev.restore_transport(&saved).is_err());
    // A feature offered then and acked, which the device does not offer
    // now, is refused; bits the driver wrote that were never offered mean
    // nothing.
    let mut other = saved.clone();
    other.common.features_offered |= 1 << 40;
    other.common.driver_features = 1 << 40;
    assert!(rig(&[256, 256], 40).dev.restore_transport(&other).is_err());
    let mut unoffered = saved.clone();
    unoffered.common.driver_features = 1 << 41;
    assert!(rig(&[256, 256], 40)
        .dev
        .restore_transport(&unoffered)
        .is_ok());
    // DRIVER_OK written without FEATURES_OK activated nothing: restored
    // as it was, not running.
    let mut not_running = saved.clone();
    not_running.common.status = STATUS_DRIVER_OK;
    assert!(rig(&[256, 256], 40)
        .dev
        .restore_transport(&not_running)
        .is_ok());
    let mut other = saved.clone();
    other.config_space.regs[2] ^= 1;
    let err = rig(&[256, 256], 40)
        .dev
        .restore_transport(&other)
        .unwrap_err();
    assert!(
        crate::util::error_chain(&err).contains("not the same device"),
        "{err}"
    );
    a.bring_up((1 << 32) | (1 << 29));
    assert!(a.dev.save_transport().is_err(), "a running device saved");
}

/// A running device saved while paused comes back paused, with its own
/// state given back; its resume is its activation at the saved places,
/// with each queue kicked once for what waited.
#[test]
fn a_running_device_restores_paused_and_resumes_where_it_stood() {
    use crate::lifecycle::ManagedDevice;
    let mut a = rig(&[256, 256], 40);
    a.dev.place_bar(0xc000_0000);
    a.bring_up((1 << 32) | (1 << 29));
    ManagedDevice::pause(&mut a.dev);
    let saved = a.dev.save_transport().unwrap();
    let running = saved.running.clone().expect("saved running");
    assert_eq!(running.queues.len(), 2);
    assert_eq!(running.device, serde_json::json!({ "held": "bytes" }));

    let mut b = rig(&[256, 256], 40);
    b.dev.restore_transport(&saved).unwrap();
    assert_eq!(
        b.calls.lock().unwrap().restored,
        vec![running.device.clone()]
    );
    assert!(
        b.calls.lock().unwrap().activations.is_empty(),
        "activated paused"
    );
    let again = b.dev.save_transport().unwrap();
    assert_eq!(again.running, saved.running, "saved again as it came");
    assert!(again == saved, "saved again as it came");
    ManagedDevice::resume(&mut b.dev);
    let calls = b.calls.lock().unwrap();
    assert_eq!(calls.places, vec![vec![(0, 7, 5), (1, 7, 5)]]);
    assert_eq!(calls.activations[0].0, (1 << 32) | (1 << 29));
    for kick in &calls.kicks {
        assert_eq!(kick.read().unwrap(), 1, "each queue kicked once");
    }
}
