//! Guest RAM in `memory-ranges`: the regions one after the other, as
//! large as the RAM, with holes where pages hold only zeros, so that the
//! file takes on disk what the guest touched. A memfd-backed region is
//! read only where the memfd has data (SEEK_DATA): reading a memfd's hole
//! through its mapping would allocate the page. An anonymous region is
//! read only where /proc/self/pagemap shows a page present or swapped:
//! a page the guest never touched has no data and is not read at all.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::Path;

use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use super::{io_error, FileDigest, SnapshotError};
use crate::vstate::memory::GuestMemory;

const PAGE: usize = 4096;
/// Copied through a buffer this large: guest memory is read through
/// vm-memory's volatile accessors, never as a Rust slice.
const CHUNK: usize = 1 << 20;

/// The `[start, end)` ranges of `fd` between `start` and `end` that hold
/// data, by SEEK_DATA and SEEK_HOLE.
fn data_ranges(fd: RawFd, start: u64, end: u64) -> io::Result<Vec<(u64, u64)>> {
    let seek = |offset: u64, whence: i32| -> io::Result<Option<u64>> {
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
        // SAFETY: lseek on a descriptor the caller owns; no memory passed.
        let at = unsafe { libc::lseek(fd, offset, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let e = io::Error::last_os_error();
        // ENXIO: no data at or after the offset.
        if e.raw_os_error() == Some(libc::ENXIO) {
            Ok(None)
        } else {
            Err(e)
        }
    };
    let mut ranges = Vec::new();
    let mut at = start;
    while at < end {
        let Some(data) = seek(at, libc::SEEK_DATA)?.filter(|&d| d < end) else {
            break;
        };
        let hole = seek(data, libc::SEEK_HOLE)?.unwrap_or(end).min(end);
        ranges.push((data, hole));
        at = hole;
    }
    Ok(ranges)
}

/// PM_PRESENT and PM_SWAP of a /proc/self/pagemap entry.
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;

/// The `[start, end)` offsets into the mapping at `host` of `len` bytes
/// whose pages are present or swapped out (the others were never touched
/// and read as zeros); None where the kernel's pagemap cannot be read.
fn touched_ranges(host: *const u8, len: u64) -> Option<Vec<(u64, u64)>> {
    let pagemap = File::open("/proc/self/pagemap").ok()?;
    let first = host as u64 / PAGE as u64;
    let pages = len.div_ceil(PAGE as u64);
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    let mut entries = vec![0u8; 8 * 65536];
    let mut page = 0u64;
    while page < pages {
        let n = (pages - page).min(65536) as usize;
        let bytes = &mut entries[..8 * n];
        pagemap.read_exact_at(bytes, (first + page) * 8).ok()?;
        for (i, entry) in bytes.chunks_exact(8).enumerate() {
            let mut word = [0u8; 8];
            word.copy_from_slice(entry);
            if u64::from_le_bytes(word) & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) == 0 {
                continue;
            }
            let start = (page + i as u64) * PAGE as u64;
            let end = (start + PAGE as u64).min(len);
            match ranges.last_mut() {
                Some(last) if last.1 == start => last.1 = end,
                _ => ranges.push((start, end)),
            }
        }
        page += n as u64;
    }
    Some(ranges)
}

/// Feeds the pages of `bytes` (at file offset `offset`, page aligned)
/// that are not all zeros to `each`, with their page numbers.
fn nonzero_pages(offset: u64, bytes: &[u8], mut each: impl FnMut(u64, &[u8])) {
    for (i, page) in bytes.chunks(PAGE).enumerate() {
        if page.iter().any(|&b| b != 0) {
            each(offset / PAGE as u64 + i as u64, page);
        }
    }
}

fn hash_page(hasher: &mut crc32fast::Hasher, number: u64, page: &[u8]) {
    hasher.update(&number.to_le_bytes());
    hasher.update(page);
}

/// Each region's guest address, length and offset in the file.
fn layout(memory: &GuestMemory) -> (Vec<(GuestAddress, u64, u64)>, u64) {
    let mut offset = 0;
    let regions = memory
        .iter()
        .map(|r| {
            let entry = (r.start_addr(), r.len(), offset);
            offset += r.len();
            entry
        })
        .collect();
    (regions, offset)
}

pub(super) fn save(memory: &GuestMemory, path: &Path) -> Result<FileDigest, SnapshotError> {
    let file = File::create(path).map_err(io_error(path))?;
    let (regions, total) = layout(memory);
    file.set_len(total).map_err(io_error(path))?;
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    for ((gpa, len, file_offset), region) in regions.into_iter().zip(memory.iter()) {
        // A memfd region: only where it holds data; else all of it.
        let ranges = match region.file_offset() {
            Some(backing) => {
                let base = backing.start();
                data_ranges(backing.file().as_raw_fd(), base, base + len)
                    .map_err(io_error(path))?
                    .into_iter()
                    .map(|(a, b)| (a - base, b - base))
                    .collect()
            }
            None => touched_ranges(region.as_ptr(), len).unwrap_or_else(|| {
                log::debug!("/proc/self/pagemap unreadable: every page of guest memory is read");
                vec![(0, len)]
            }),
        };
        for (start, end) in ranges {
            let mut at = start;
            while at < end {
                let n = (end - at).min(CHUNK as u64) as usize;
                let chunk = &mut buf[..n];
                memory
                    .read_slice(chunk, gpa.unchecked_add(at))
                    .map_err(|_| SnapshotError::GuestMemory { gpa: gpa.0 + at })?;
                let mut result = Ok(());
                nonzero_pages(file_offset + at, chunk, |number, page| {
                    hash_page(&mut hasher, number, page);
                    if result.is_ok() {
                        result = file.write_all_at(page, number * PAGE as u64);
                    }
                });
                result.map_err(io_error(path))?;
                at += n as u64;
            }
        }
    }
    file.sync_all().map_err(io_error(path))?;
    Ok(FileDigest {
        size: total,
        crc32: hasher.finalize(),
    })
}

/// The file's size and the checksum `save` computed, from what is on
/// disk.
pub(super) fn digest(path: &Path) -> Result<FileDigest, SnapshotError> {
    let file = File::open(path).map_err(io_error(path))?;
    let size = file.metadata().map_err(io_error(path))?.len();
    let mut hasher = crc32fast::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    for_each_chunk(&file, size, &mut buf, path, |offset, chunk| {
        nonzero_pages(offset, chunk, |number, page| {
            hash_page(&mut hasher, number, page)
        });
        Ok(())
    })?;
    Ok(FileDigest {
        size,
        crc32: hasher.finalize(),
    })
}

/// Reads the file's data ranges a chunk at a time (page aligned).
fn for_each_chunk(
    file: &File,
    size: u64,
    buf: &mut [u8],
    path: &Path,
    mut each: impl FnMut(u64, &[u8]) -> Result<(), SnapshotError>,
) -> Result<(), SnapshotError> {
    let page = PAGE as u64;
    // Up to here every page was read: file systems report data by their
    // blocks, and two ranges may share a page.
    let mut done = 0;
    for (start, end) in data_ranges(file.as_raw_fd(), 0, size).map_err(io_error(path))? {
        let mut at = (start - start % page).max(done);
        let end = end.div_ceil(page).saturating_mul(page).min(size);
        done = end;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            let chunk = &mut buf[..n];
            file.read_exact_at(chunk, at).map_err(io_error(path))?;
            each(at, chunk)?;
            at += n as u64;
        }
    }
    Ok(())
}

/// Writes the saved pages into `memory`, a new VM's (all zeros): holes
/// and pages of zeros are not written, so the VM touches no more than
/// the snapshot's guest did.
pub(super) fn load(memory: &GuestMemory, path: &Path, saved: u64) -> Result<(), SnapshotError> {
    let (regions, total) = layout(memory);
    if saved != total {
        return Err(SnapshotError::MemorySize {
            path: path.to_owned(),
            saved,
            present: total,
        });
    }
    let file = File::open(path).map_err(io_error(path))?;
    let mut buf = vec![0u8; CHUNK];
    for_each_chunk(&file, total, &mut buf, path, |offset, chunk| {
        let mut result = Ok(());
        nonzero_pages(offset, chunk, |number, page| {
            let at = number * PAGE as u64;
            let Some(&(gpa, _, base)) = regions
                .iter()
                .find(|&&(_, len, base)| (base..base + len).contains(&at))
            else {
                return;
            };
            let gpa = gpa.unchecked_add(at - base);
            if result.is_ok() && memory.write_slice(page, gpa).is_err() {
                result = Err(SnapshotError::GuestMemory { gpa: gpa.0 });
            }
        });
        result
    })
}
