//! The console handler on queues in guest memory, without a worker
//! thread: what the guest sends, what it is given, and the bounds on both.

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::interrupt::fake::FakeMsiGroup;
use crate::virtio::worker::EventHandler;
use crate::virtio::VirtioInterrupt;

fn queue(mem: &GuestMemoryMmap, base: u64, avail_idx: u16) -> Queue {
    mem.write_obj(avail_idx, GuestAddress(base + 0x1002))
        .unwrap();
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue
        .try_set_desc_table_address(GuestAddress(base))
        .unwrap();
    queue
        .try_set_avail_ring_address(GuestAddress(base + 0x1000))
        .unwrap();
    queue
        .try_set_used_ring_address(GuestAddress(base + 0x2000))
        .unwrap();
    queue.set_ready(true);
    queue
}

fn handler(
    mem: GuestMemoryMmap,
    tx_avail_idx: u16,
    sink: Box<dyn Write + Send>,
) -> (ConsoleHandler, VirtioInterrupt) {
    let rx = queue(&mem, 0x10000, 0);
    let tx = queue(&mem, 0x20000, tx_avail_idx);
    let interrupt = VirtioInterrupt::new(Arc::new(FakeMsiGroup::new(3)));
    let handler =
        ConsoleHandler::detached("console", mem, rx, tx, sink, interrupt.clone()).unwrap();
    (handler, interrupt)
}

/// A transmit ring announcing more chains than it holds is broken:
/// the device asks for a reset instead of ignoring it for ever after.
#[test]
fn a_ring_announcing_more_than_it_holds_needs_a_reset() {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let (mut handler, interrupt) = handler(mem, QUEUE_SIZE + 1, Box::new(io::sink()));
    handler.ready(TOKEN_RX_KICK, EventSet::IN);
    assert!(!handler.failed, "an empty receive ring is fine");
    handler.ready(TOKEN_TX_KICK, EventSet::IN);
    assert!(handler.failed);
    assert!(interrupt.needs_reset());
}

/// Records the size of every write.
struct Writes(Arc<Mutex<Vec<usize>>>);

impl Write for Writes {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().push(buf.len());
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The guest's output reaches the sink in bounded pieces, however long
/// the descriptors: it was gathered whole first, so one descriptor
/// claiming 4 GiB made `vmm` allocate (and zero) 4 GiB, and a ring of
/// large ones exhausted the host's memory. Found by the virtio_console
/// fuzz target.
#[test]
fn output_goes_out_in_bounded_pieces() {
    const MEM: usize = 8 << 20;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM)]).unwrap();
    let descs: [(u64, u32, u16); 2] = [
        // 3 MiB of guest RAM, then a descriptor running past its end.
        (0x10_0000, 3 << 20, 1),
        (MEM as u64 - 0x1000, u32::MAX, 0),
    ];
    for (i, (addr, len, flags)) in descs.into_iter().enumerate() {
        let at = GuestAddress(0x20000 + 16 * i as u64);
        mem.write_obj(addr, at).unwrap();
        mem.write_obj(len, at.unchecked_add(8)).unwrap();
        mem.write_obj(flags, at.unchecked_add(12)).unwrap();
        mem.write_obj(1u16, at.unchecked_add(14)).unwrap();
    }
    mem.write_slice(&[b'x'; 3 << 20], GuestAddress(0x10_0000))
        .unwrap();
    let writes = Arc::new(Mutex::new(Vec::new()));
    let (mut handler, interrupt) = handler(mem, 1, Box::new(Writes(writes.clone())));
    handler.ready(TOKEN_TX_KICK, EventSet::IN);
    assert!(!interrupt.needs_reset());
    let writes = writes.lock().unwrap();
    assert_eq!(writes.iter().sum::<usize>(), 3 << 20, "the part in RAM");
    assert!(
        writes.iter().all(|&n| n <= OUTPUT_CHUNK),
        "{} writes, the largest {:?}",
        writes.len(),
        writes.iter().max()
    );
}
