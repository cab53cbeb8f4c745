//! virtio-blk requests from a hostile driver: whatever descriptor table,
//! available ring and request bytes it leaves in memory, the queue's
//! worker loop serves its kicks against a disk in memory that fails the
//! run if it is touched past its end. A kick must return (it once spun
//! forever), complete no more chains than the queue holds, and leave a
//! read-only disk as it was.

#![no_main]

use std::io;
use std::sync::Mutex;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm::fuzzing::{
    BlockQueue, Disk, DiskInfo, FakeMsiGroup, VirtioInterrupt, ID_BYTES, SECTOR_SIZE,
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

/// A disk in memory; any access outside it is a bug in the request code.
struct MemDisk {
    bytes: Mutex<Vec<u8>>,
}

impl MemDisk {
    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        let size = self.bytes.lock().expect("disk lock").len() as u64;
        let end = offset.checked_add(len).expect("range wraps around");
        assert!(end <= size, "touched {offset}+{len} of a {size}-byte disk");
        offset as usize..end as usize
    }
}

impl Disk for MemDisk {
    fn read_at<B: BitmapSlice>(&self, bufs: &[VolatileSlice<B>], offset: u64) -> io::Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        let range = self.range(offset, len);
        let bytes = self.bytes.lock().expect("disk lock");
        let mut at = range.start;
        for b in bufs {
            b.copy_from(&bytes[at..at + b.len()]);
            at += b.len();
        }
        Ok(())
    }

    fn write_at<B: BitmapSlice>(&self, bufs: &[VolatileSlice<B>], offset: u64) -> io::Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        let range = self.range(offset, len);
        let mut bytes = self.bytes.lock().expect("disk lock");
        let mut at = range.start;
        for b in bufs {
            b.copy_to(&mut bytes[at..at + b.len()]);
            at += b.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        let range = self.range(offset, len);
        self.bytes.lock().expect("disk lock")[range].fill(0);
        Ok(())
    }
}

fuzz_target!(|input: Input| {
    let mem = guest_memory();
    fill_data(&mem, &input.data);
    let size = input.ring.size();
    let Some(queue) = input.ring.install(&mem, 0) else {
        return;
    };
    let sectors = u64::from(input.sectors);
    let disk = Arc::new(MemDisk {
        bytes: Mutex::new(vec![0x5a; (sectors * SECTOR_SIZE) as usize]),
    });
    let info = DiskInfo {
        capacity: sectors,
        readonly: input.readonly,
        id: [b'f'; ID_BYTES],
        discard: input.discard,
    };
    let before = disk.bytes.lock().expect("disk lock").clone();
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
        assert!(
            *disk.bytes.lock().expect("disk lock") == before,
            "a read-only disk changed"
        );
    }
});
