//! virtio-blk requests from a hostile driver: whatever descriptor table,
//! available ring and request bytes it leaves in memory, the queue's
//! worker loop serves its kicks against a disk in memory that fails the
//! run if it is touched past its end. A kick must return (it once spun
//! forever), complete no more chains than the queue holds, and leave a
//! read-only disk as it was.

#![no_main]

use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;

use vmm::fuzzing::{
    BlockQueue, DiskInfo, FakeMsiGroup, MemoryDisk, VirtioInterrupt, ID_BYTES, SECTOR_SIZE,
};
use vmm_fuzz::{fill_data, guest_memory, Ring};

#[derive(Arbitrary, Debug)]
struct Input {
    ring: Ring,
    /// Request headers, data and discard segments, repeated over the
    /// data area.
    data: Vec<u8>,
    /// Disk size in sectors: 0 to 255.
    sectors: u8,
    readonly: bool,
    discard: bool,
    /// How many times the driver kicks.
    kicks: u8,
}

fuzz_target!(|input: Input| {
    let mem = guest_memory();
    fill_data(&mem, &input.data);
    let size = input.ring.size();
    let Some(queue) = input.ring.install(&mem, 0) else {
        return;
    };
    let sectors = u64::from(input.sectors);
    let disk = Arc::new(MemoryDisk::new(vec![
        0x5a;
        (sectors * SECTOR_SIZE) as usize
    ]));
    let info = DiskInfo {
        capacity: sectors,
        readonly: input.readonly,
        id: [b'f'; ID_BYTES],
        discard: input.discard,
    };
    let before = disk.bytes();
    let interrupt = VirtioInterrupt::new(Arc::new(FakeMsiGroup::new(2)));
    let Ok(mut worker) = BlockQueue::new(mem, queue, disk.clone(), info, interrupt.clone()) else {
        return;
    };
    for _ in 0..=input.kicks % 4 {
        let used = worker.next_used();
        worker.kick();
        let completed = worker.next_used().wrapping_sub(used);
        assert!(
            completed <= size,
            "{completed} completions from a queue of {size}"
        );
        assert_eq!(
            worker.failed(),
            interrupt.needs_reset(),
            "a broken ring asks for a reset"
        );
    }
    if input.readonly {
        assert!(disk.bytes() == before, "a read-only disk changed");
    }
});
