//! Guest RAM: one mapping per contiguous range, backed by a memfd when the
//! memory must be shared with vhost-user backends, anonymous otherwise.
//! Nothing here touches the pages, so start-up time does not grow with size.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::FromRawFd;

use vm_memory::{FileOffset, GuestMemoryMmap};

use crate::arch::x86_64::layout::ram_ranges;
use crate::config::MemoryConfig;

pub type GuestMemory = GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("Failed to create the memfd backing guest memory")]
    CreateMemfd(#[source] std::io::Error),
    #[error("Failed to size the memfd backing guest memory to {size:#x} bytes")]
    SizeMemfd {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to map guest memory")]
    Map(#[source] vm_memory::mmap::FromRangesError),
    #[error("Guest memory size {0:#x} does not fit this host's address space")]
    TooLarge(u64),
}

pub fn create_guest_memory(config: &MemoryConfig) -> Result<GuestMemory, MemoryError> {
    let ranges = ram_ranges(config.size);
    let file = if config.shared || config.hugepages {
        Some(create_memfd(config.size, config.hugepages)?)
    } else {
        None
    };
    let mut file_offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for (start, len) in ranges {
        let len_usize = usize::try_from(len).map_err(|_| MemoryError::TooLarge(config.size))?;
        let backing = file
            .as_ref()
            .map(|f| FileOffset::from_arc(f.clone(), file_offset));
        regions.push((start, len_usize, backing));
        file_offset += len;
    }
    let memory = GuestMemoryMmap::from_ranges_with_files(regions).map_err(MemoryError::Map)?;
    if file.is_none() {
        advise_huge_pages(&memory);
    }
    Ok(memory)
}

/// Transparent huge pages for private guest RAM, as QEMU asks: fewer TLB
/// misses for the guest, and a device's O_DIRECT into guest memory pins
/// one page per 2 MiB instead of 512. Advice only: a host without THP
/// (or with it off) ignores it.
fn advise_huge_pages(memory: &GuestMemory) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for region in memory.iter() {
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        // SAFETY: the range is exactly one region's own mapping, alive as
        // long as `memory`; MADV_HUGEPAGE changes no contents.
        let rc = unsafe { libc::madvise(region.as_ptr().cast(), len, libc::MADV_HUGEPAGE) };
        if rc < 0 {
            log::debug!(
                "madvise(MADV_HUGEPAGE) on guest RAM: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

fn create_memfd(size: u64, hugepages: bool) -> Result<std::sync::Arc<File>, MemoryError> {
    let name = CString::new("vmm-guest-ram").map_err(|e| {
        MemoryError::CreateMemfd(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    })?;
    let mut flags = libc::MFD_CLOEXEC;
    if hugepages {
        flags |= libc::MFD_HUGETLB;
    }
    // SAFETY: `name` is a valid NUL-terminated string that outlives the call;
    // the return value is checked before use.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), flags) };
    if fd < 0 {
        return Err(MemoryError::CreateMemfd(std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size)
        .map_err(|source| MemoryError::SizeMemfd { size, source })?;
    Ok(std::sync::Arc::new(file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

    #[test]
    fn shared_memory_is_one_memfd_at_increasing_offsets() {
        let mem = create_guest_memory(&MemoryConfig {
            size: 4 << 30,
            shared: true,
            hugepages: false,
        })
        .unwrap();
        let offsets: Vec<u64> = mem
            .iter()
            .map(|r| r.file_offset().unwrap().start())
            .collect();
        assert_eq!(offsets, vec![0, 3 << 30]);
        mem.write_obj(0xabu8, GuestAddress(4 << 30)).unwrap();
        assert_eq!(mem.read_obj::<u8>(GuestAddress(4 << 30)).unwrap(), 0xab);
    }

    #[test]
    fn private_memory_has_no_file() {
        let mem = create_guest_memory(&MemoryConfig {
            size: 64 << 20,
            shared: false,
            hugepages: false,
        })
        .unwrap();
        assert!(mem.iter().all(|r| r.file_offset().is_none()));
    }
}
