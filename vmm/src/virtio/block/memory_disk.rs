//! A disk in memory for the unit tests and fuzz targets: the request code
//! against bytes it can be checked on. Any access past its end is a bug
//! in that code, so it panics rather than answering an error.

use std::io;
use std::sync::Mutex;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::disk::Disk;
use crate::util::lock;

pub struct MemoryDisk {
    bytes: Mutex<Vec<u8>>,
    touched: Mutex<Vec<(u64, u64)>>,
    flushes: Mutex<u32>,
}

impl MemoryDisk {
    pub fn new(bytes: Vec<u8>) -> MemoryDisk {
        MemoryDisk {
            bytes: Mutex::new(bytes),
            touched: Mutex::new(Vec::new()),
            flushes: Mutex::new(0),
        }
    }

    /// What the disk holds now.
    pub fn bytes(&self) -> Vec<u8> {
        lock(&self.bytes).clone()
    }

    /// Every (offset, length) a request read, wrote or zeroed, in order.
    pub fn touched(&self) -> Vec<(u64, u64)> {
        lock(&self.touched).clone()
    }

    pub fn flushes(&self) -> u32 {
        *lock(&self.flushes)
    }

    fn range(&self, offset: u64, len: u64) -> std::ops::Range<usize> {
        lock(&self.touched).push((offset, len));
        let size = lock(&self.bytes).len() as u64;
        let end = offset.checked_add(len);
        assert!(
            end.is_some_and(|end| end <= size),
            "touched {offset}+{len} of a {size}-byte disk"
        );
        offset as usize..(offset + len) as usize
    }
}

impl Disk for MemoryDisk {
    fn read_at<B: BitmapSlice>(&self, bufs: &[VolatileSlice<B>], offset: u64) -> io::Result<()> {
        let len = bufs.iter().map(|b| b.len() as u64).sum();
        let range = self.range(offset, len);
        let bytes = lock(&self.bytes);
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
        let mut bytes = lock(&self.bytes);
        let mut at = range.start;
        for b in bufs {
            b.copy_to(&mut bytes[at..at + b.len()]);
            at += b.len();
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        *lock(&self.flushes) += 1;
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _unmap: bool) -> io::Result<()> {
        let range = self.range(offset, len);
        lock(&self.bytes)[range].fill(0);
        Ok(())
    }
}
