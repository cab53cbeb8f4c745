//! virtio-blk requests from a hostile driver: whatever descriptor table,
//! available ring and request bytes it leaves in memory, each chain is
//! popped and carried out as the queue's worker does, against a disk in
//! memory that fails the run if it is touched past its end.

#![no_main]

use std::io;
use std::sync::Mutex;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use virtio_queue::QueueT;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;
use vmm::fuzzing::{process_blk_request, Disk, DiskInfo, ID_BYTES, SECTOR_SIZE};
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
    let Some(mut queue) = input.ring.install(&mem, 0) else {
        return;
    };
    let sectors = u64::from(input.sectors);
    let disk = MemDisk {
        bytes: Mutex::new(vec![0x5a; (sectors * SECTOR_SIZE) as usize]),
    };
    let info = DiskInfo {
        capacity: sectors,
        readonly: input.readonly,
        id: [b'f'; ID_BYTES],
        discard: input.discard,
    };
    let before = disk.bytes.lock().expect("disk lock").clone();
    // The worker's loop (virtio::block::QueueHandler::process): a broken
    // ring ends it with an error, which makes the device need a reset.
    for _ in 0..=input.kicks % 4 {
        let served: Result<(), virtio_queue::Error> = (|| {
            loop {
                queue.disable_notification(&mem)?;
                while let Some(chain) = queue.pop_descriptor_chain(&mem) {
                    let head = chain.head_index();
                    let writable: u64 = chain
                        .clone()
                        .filter(|d| d.is_write_only())
                        .map(|d| u64::from(d.len()))
                        .sum();
                    let done = process_blk_request(&mem, chain, &disk, &info);
                    assert!(
                        u64::from(done.used_len) <= writable,
                        "used_len {} but only {writable} writable bytes",
                        done.used_len
                    );
                    queue.add_used(&mem, head, done.used_len)?;
                }
                if !queue.enable_notification(&mem)? {
                    break;
                }
            }
            queue.needs_notification(&mem)?;
            Ok(())
        })();
        if served.is_err() {
            break;
        }
    }
    if input.readonly {
        assert!(
            *disk.bytes.lock().expect("disk lock") == before,
            "a read-only disk changed"
        );
    }
});
