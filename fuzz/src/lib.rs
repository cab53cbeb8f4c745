//! What the fuzz targets share: access widths, and virtqueues laid out in
//! guest memory by a driver that need not follow the rules.

use arbitrary::Arbitrary;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// The width of one guest access: 1, 2, 4 or 8 bytes, and the odd
/// widths KVM hands over when it splits an access that crosses a page
/// (3, 5, 6, 7). Never 0 and never more than 8: no exit carries those.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Width {
    W1,
    W2,
    W4,
    W8,
    Odd(u8),
}

impl Width {
    /// Bytes, 1 to 8.
    pub fn len(self) -> usize {
        match self {
            Width::W1 => 1,
            Width::W2 => 2,
            Width::W4 => 4,
            Width::W8 => 8,
            Width::Odd(n) => usize::from(n % 8) + 1,
        }
    }

    pub fn is_empty(self) -> bool {
        false
    }

    /// The low `len()` bytes of `value`, little-endian (zeros past 8).
    pub fn bytes(self, value: u64) -> Vec<u8> {
        let mut bytes = value.to_le_bytes().to_vec();
        bytes.resize(self.len(), 0);
        bytes
    }
}

/// Little-endian value of up to 8 bytes.
pub fn le(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(b)
}

/// Guest memory for queue fuzzing: rings at fixed places, then a data
/// area the descriptors mostly point into.
pub const MEM_SIZE: u64 = 1 << 20;
pub const DATA_START: u64 = 0x10000;
/// Each queue's rings: descriptors, then the available ring 4 KiB on,
/// then the used ring, in a 16 KiB slot.
const RING_SLOT: u64 = 0x4000;

pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
        .expect("1 MiB of anonymous memory")
}

/// Where a descriptor points: mostly into the data area, sometimes
/// anywhere in the first 4 GiB, sometimes anywhere at all.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum DescAddr {
    Data(u16),
    Low(u32),
    Any(u64),
}

impl DescAddr {
    fn resolve(self) -> u64 {
        match self {
            DescAddr::Data(off) => DATA_START + u64::from(off) * 4,
            DescAddr::Low(addr) => u64::from(addr),
            DescAddr::Any(addr) => addr,
        }
    }
}

/// A descriptor's length: mostly plausible, sometimes anything.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum DescLen {
    Small(u16),
    Any(u32),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct Desc {
    pub addr: DescAddr,
    pub len: DescLen,
    /// NEXT, WRITE and INDIRECT are bits 0-2; the rest are reserved.
    pub flags: u16,
    pub next: u16,
}

/// A split virtqueue exactly as a driver left it in memory.
#[derive(Arbitrary, Debug)]
pub struct Ring {
    /// The queue size is 1 << (size_log2 % 9): 1 to 256.
    pub size_log2: u8,
    pub descs: Vec<Desc>,
    pub avail_flags: u16,
    /// Heads the driver made available.
    pub avail: Vec<u16>,
    /// Added to the number of heads to make avail.idx: a driver may lie.
    pub idx_skew: i8,
    pub used_event: u16,
    pub event_idx: bool,
}

impl Ring {
    pub fn size(&self) -> u16 {
        1 << (self.size_log2 % 9)
    }

    /// Writes the rings of queue `slot` into `mem` and returns the queue
    /// the device sees; None if virtio-queue refuses the layout.
    pub fn install(&self, mem: &GuestMemoryMmap, slot: u64) -> Option<Queue> {
        let size = self.size();
        let desc = slot * RING_SLOT;
        let avail = desc + 0x1000;
        let used = desc + 0x2000;
        for (i, d) in self.descs.iter().take(usize::from(size)).enumerate() {
            let at = GuestAddress(desc + 16 * i as u64);
            let len = match d.len {
                DescLen::Small(n) => u32::from(n),
                DescLen::Any(n) => n,
            };
            let mut raw = [0u8; 16];
            raw[0..8].copy_from_slice(&d.addr.resolve().to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&d.flags.to_le_bytes());
            raw[14..16].copy_from_slice(&d.next.to_le_bytes());
            mem.write_slice(&raw, at).ok()?;
        }
        let heads = self.avail.iter().take(usize::from(size));
        let count = heads.len() as u16;
        let idx = count.wrapping_add_signed(i16::from(self.idx_skew));
        mem.write_obj(self.avail_flags, GuestAddress(avail)).ok()?;
        mem.write_obj(idx, GuestAddress(avail + 2)).ok()?;
        for (i, head) in heads.enumerate() {
            mem.write_obj(*head, GuestAddress(avail + 4 + 2 * i as u64))
                .ok()?;
        }
        mem.write_obj(
            self.used_event,
            GuestAddress(avail + 4 + 2 * u64::from(size)),
        )
        .ok()?;
        let mut queue = Queue::new(size).ok()?;
        queue.try_set_size(size).ok()?;
        queue.try_set_desc_table_address(GuestAddress(desc)).ok()?;
        queue.try_set_avail_ring_address(GuestAddress(avail)).ok()?;
        queue.try_set_used_ring_address(GuestAddress(used)).ok()?;
        queue.set_event_idx(self.event_idx);
        queue.set_ready(true);
        Some(queue)
    }
}

/// Fills the data area with the input's bytes, repeated (by doubling
/// copies: a byte-wise loop would cost the fuzzer most of its speed).
pub fn fill_data(mem: &GuestMemoryMmap, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let len = (MEM_SIZE - DATA_START) as usize;
    let mut data = Vec::with_capacity(len);
    data.extend_from_slice(&bytes[..bytes.len().min(len)]);
    while data.len() < len {
        let n = data.len().min(len - data.len());
        data.extend_from_within(..n);
    }
    let _ = mem.write_slice(&data, GuestAddress(DATA_START));
}

/// A virtio device with nothing behind it: for targets about the
/// transport and PCI, where only its shape matters.
pub struct NullDevice {
    pub device_type: u32,
    pub queues: Vec<u16>,
    pub config: Vec<u8>,
}

#[derive(Debug)]
pub struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unreachable")
    }
}

impl std::error::Error for Never {}

impl vmm::fuzzing::VirtioDevice for NullDevice {
    type Error = Never;

    fn id(&self) -> &str {
        "null"
    }
    fn device_type(&self) -> u32 {
        self.device_type
    }
    fn queue_sizes(&self) -> &[u16] {
        &self.queues
    }
    fn features(&self) -> u64 {
        1 << 32
    }
    fn config_len(&self) -> u32 {
        self.config.len() as u32
    }
    fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), Never> {
        let start = offset as usize;
        data.copy_from_slice(&self.config[start..start + data.len()]);
        Ok(())
    }
    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), Never> {
        let start = offset as usize;
        self.config[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
    fn activate(&mut self, _context: vmm::fuzzing::ActivateContext) -> Result<(), Never> {
        Ok(())
    }
    fn reset(&mut self) -> Result<(), Never> {
        Ok(())
    }
    fn pause(&mut self) -> Result<(), Never> {
        Ok(())
    }
    fn resume(&mut self) -> Result<(), Never> {
        Ok(())
    }
    fn queue_places(&self) -> Result<Vec<vmm::fuzzing::QueuePlace>, Never> {
        Ok(Vec::new())
    }
    fn save_state(&mut self) -> Result<serde_json::Value, Never> {
        Ok(serde_json::Value::Null)
    }
    fn restore_state(&mut self, _state: &serde_json::Value) -> Result<(), Never> {
        Ok(())
    }
}

/// A virtio-pci function with `NullDevice` behind it, fake vectors and
/// ioeventfds, its BAR placed at `bar` as firmware would.
pub fn null_virtio_pci(
    device_type: u32,
    queues: usize,
    bar: u64,
) -> vmm::fuzzing::VirtioPciDevice<NullDevice> {
    let vectors = usize::from(vmm::fuzzing::msix_vectors(queues));
    let device = NullDevice {
        device_type,
        queues: vec![64; queues],
        config: b"0123456789abcdef".to_vec(),
    };
    let mut dev = vmm::fuzzing::VirtioPciDevice::new(
        device,
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 16)]).expect("64 KiB of memory"),
        std::sync::Arc::new(vmm::fuzzing::FakeMsiGroup::new(vectors)),
        Box::new(vmm::fuzzing::FakeIoEvents::default()),
    )
    .expect("a valid virtio-pci device");
    dev.place_bar(bar);
    dev
}
