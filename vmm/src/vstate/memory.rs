//! Guest RAM: one mapping per contiguous range, backed by a memfd when the
//! memory must be shared with vhost-user backends, anonymous otherwise,
//! each placed at a 2 MiB-aligned host address where it can be (see
//! `AlignedPlacement`). Nothing here touches the pages, so start-up time
//! does not grow with size, except that huge pages are allocated up front
//! (see `reserve_huge_pages`).

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};

use vm_memory::mmap::MmapRegion;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, GuestMemoryMmap, GuestRegionMmap};

use crate::arch::x86_64::layout::ram_ranges;
use crate::config::{MemoryConfig, HUGE_PAGE_SIZE};

/// The host's pool of free 2 MiB huge pages.
const FREE_HUGE_PAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

pub type GuestMemory = GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("Failed to prefault guest memory at {addr:#x} (MADV_POPULATE_WRITE needs Linux 5.14)")]
    Prefault {
        addr: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to create the memfd backing guest memory")]
    CreateMemfd(#[source] std::io::Error),
    #[error("Failed to size the memfd backing guest memory to {size:#x} bytes")]
    SizeMemfd {
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to map guest memory")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    #[error("Guest memory ranges overlap or wrap")]
    Layout(#[source] vm_memory::GuestRegionCollectionError),
    #[error("Guest memory size {0:#x} does not fit this host's address space")]
    TooLarge(u64),
    #[error("--memory hugepages=on needs {needed} free 2M huge pages; the host has {free} (see /proc/sys/vm/nr_hugepages)")]
    HugePages {
        needed: u64,
        /// What `FREE_HUGE_PAGES` said, or why it could not be read.
        free: String,
        #[source]
        source: std::io::Error,
    },
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
        let mapping = map_aligned(len_usize, backing)?;
        log::debug!(
            "Guest RAM {:#x}+{len:#x} at host {:p}",
            start.0,
            mapping.as_ptr()
        );
        regions.push(GuestRegionMmap::new(mapping, start).ok_or(MemoryError::TooLarge(len))?);
        file_offset += len;
    }
    let memory = GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Layout)?;
    if !config.hugepages {
        advise_huge_pages(&memory, config.thp);
    }
    Ok(memory)
}

/// Tries this often: a miss means another thread mapped memory between
/// the probe and the mapping.
const PLACEMENT_TRIES: usize = 4;

/// `len` bytes of RAM (of `backing`, else anonymous), 2 MiB aligned unless
/// every try missed (then as the kernel placed it, which is only slower).
fn map_aligned(len: usize, backing: Option<FileOffset>) -> Result<MmapRegion, MemoryError> {
    let mut tries = 0;
    loop {
        let mut builder =
            MmapRegionBuilder::new(len).with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE);
        builder = match backing.clone() {
            Some(f) => builder
                .with_file_offset(f)
                .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_SHARED),
            None => builder
                .with_mmap_flags(libc::MAP_NORESERVE | libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
        };
        let placement = AlignedPlacement::prepare(len);
        let mapping = builder.build().map_err(MemoryError::Map)?;
        drop(placement);
        tries += 1;
        if (mapping.as_ptr() as u64).is_multiple_of(HUGE_PAGE_SIZE) || tries == PLACEMENT_TRIES {
            return Ok(mapping);
        }
    }
}

/// Makes the next mapping of `len` bytes start 2 MiB aligned. KVM maps
/// a guest's 2 MiB page with one huge page-table entry only where guest
/// and host addresses share their offset within 2 MiB; guest RAM starts
/// at a 2 MiB boundary, so its host mapping must too, or every 4 KiB page
/// the guest touches costs a nested page fault (18,000 in one Debian boot,
/// against 600 aligned). vm-memory maps where the kernel chooses, which
/// is top-down, at the top of the highest gap that fits: a probe of
/// `len + 2 MiB` finds that gap, and a spacer at its top leaves exactly an
/// aligned start below it. Another thread mapping in between only costs
/// the alignment, never correctness.
struct AlignedPlacement {
    spacer: Option<(*mut libc::c_void, usize)>,
}

/// A fresh PROT_NONE mapping of `len` bytes where the kernel places it.
fn reserve(len: usize) -> Option<*mut libc::c_void> {
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    // SAFETY: a new mapping at an address the kernel chooses; it aliases
    // nothing, and only the caller refers to it.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_NONE, flags, -1, 0) };
    (addr != libc::MAP_FAILED).then_some(addr)
}

impl AlignedPlacement {
    fn prepare(len: usize) -> Self {
        let huge = HUGE_PAGE_SIZE as usize;
        let Some(probe_len) = len.checked_add(huge) else {
            return Self { spacer: None };
        };
        let Some(probe) = reserve(probe_len) else {
            return Self { spacer: None };
        };
        // SAFETY: exactly the mapping `reserve` made; nothing refers to it.
        unsafe { libc::munmap(probe, probe_len) };
        // The probe ended at the gap's top; the spacer takes the top
        // `probe % 2 MiB` bytes, so `len` below it starts aligned.
        let spacer_len = probe as usize % huge;
        Self {
            spacer: (spacer_len != 0)
                .then(|| reserve(spacer_len))
                .flatten()
                .map(|spacer| (spacer, spacer_len)),
        }
    }
}

impl Drop for AlignedPlacement {
    fn drop(&mut self) {
        if let Some((addr, len)) = self.spacer {
            // SAFETY: the spacer mapped in `prepare`, used by nothing.
            unsafe { libc::munmap(addr, len) };
        }
    }
}

/// Transparent huge pages for guest RAM, as Cloud Hypervisor's `thp=on`
/// and QEMU ask: fewer TLB misses and nested page faults for the guest,
/// and a device's O_DIRECT into guest memory pins one page per 2 MiB
/// instead of 512; or, with `thp=off`, none, even where the host gives
/// them unasked (THP "always"), for a guest that touches little of its
/// memory and should cost the host no more. Advice only: a host without
/// THP ignores it, and shared memory gets it only where the host's shmem
/// THP policy allows.
fn advise_huge_pages(memory: &GuestMemory, thp: bool) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    let advice = if thp {
        libc::MADV_HUGEPAGE
    } else {
        libc::MADV_NOHUGEPAGE
    };
    for region in memory.iter() {
        let Ok(len) = usize::try_from(region.len()) else {
            continue;
        };
        // SAFETY: the range is exactly one region's own mapping, alive as
        // long as `memory`; the advice changes no contents.
        let rc = unsafe { libc::madvise(region.as_ptr().cast(), len, advice) };
        if rc < 0 {
            log::debug!(
                "madvise({}) on guest RAM: {}",
                if thp {
                    "MADV_HUGEPAGE"
                } else {
                    "MADV_NOHUGEPAGE"
                },
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Every page of guest memory allocated and writable now, not at the
/// guest's first touch (a restore's `prefault=on`, as Cloud Hypervisor's).
pub fn prefault(memory: &GuestMemory) -> Result<(), MemoryError> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for region in memory.iter() {
        let Ok(len) = usize::try_from(region.len()) else {
            return Err(MemoryError::TooLarge(region.len()));
        };
        // SAFETY: the range is exactly one region's own mapping, alive as
        // long as `memory`; populating it changes no contents.
        let rc = unsafe { libc::madvise(region.as_ptr().cast(), len, libc::MADV_POPULATE_WRITE) };
        if rc < 0 {
            return Err(MemoryError::Prefault {
                addr: region.start_addr().0,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

fn create_memfd(size: u64, hugepages: bool) -> Result<std::sync::Arc<File>, MemoryError> {
    let name = CString::new("vmm-guest-ram").map_err(|e| {
        MemoryError::CreateMemfd(std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    })?;
    let mut flags = libc::MFD_CLOEXEC;
    if hugepages {
        // The size the configuration's granularity is checked against,
        // whatever the host's default huge page size.
        flags |= libc::MFD_HUGETLB | libc::MFD_HUGE_2MB;
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
    if hugepages {
        reserve_huge_pages(&file, size)?;
    }
    Ok(std::sync::Arc::new(file))
}

/// A huge page is taken from the host's pool when it is first touched, and
/// the mapping does not reserve it (vm-memory maps with MAP_NORESERVE): with
/// too few in the pool, the first write from us or the guest would die of
/// SIGBUS. Allocating every page now turns a shortage into an error.
fn reserve_huge_pages(file: &File, size: u64) -> Result<(), MemoryError> {
    let len = libc::off_t::try_from(size).map_err(|_| MemoryError::TooLarge(size))?;
    // Read first: a failed fallocate holds the pages it got until the file
    // is closed.
    let free = std::fs::read_to_string(FREE_HUGE_PAGES);
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
        return Ok(());
    }
    let source = std::io::Error::last_os_error();
    let free = match free {
        Ok(text) => text.trim().to_owned(),
        Err(e) => format!("an unknown number ({FREE_HUGE_PAGES}: {e})"),
    };
    Err(MemoryError::HugePages {
        needed: size / HUGE_PAGE_SIZE,
        free,
        source,
    })
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
            thp: true,
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

    fn free_huge_pages() -> u64 {
        std::fs::read_to_string(FREE_HUGE_PAGES).map_or(0, |text| text.trim().parse().unwrap())
    }

    /// One page more than the host has free: an error naming the option,
    /// where the pages used to be left to fault in (SIGBUS on first touch).
    #[test]
    fn too_few_free_huge_pages_is_an_error_not_a_sigbus() {
        let pages = free_huge_pages() + 1;
        let err = create_guest_memory(&MemoryConfig {
            size: pages * HUGE_PAGE_SIZE,
            shared: false,
            hugepages: true,
            thp: true,
        })
        .expect_err("more huge pages than the host has free");
        assert!(
            matches!(&err, MemoryError::HugePages { needed, .. } if *needed == pages),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("--memory hugepages=on needs "),
            "{err}"
        );
    }

    /// What KVM needs to map the guest's 2 MiB pages whole.
    #[test]
    fn guest_ram_starts_2m_aligned_on_the_host() {
        for shared in [false, true] {
            let mem = create_guest_memory(&MemoryConfig {
                size: 4 << 30,
                shared,
                hugepages: false,
                thp: true,
            })
            .unwrap();
            for region in mem.iter() {
                let host = region.as_ptr() as u64;
                assert_eq!(host % HUGE_PAGE_SIZE, 0, "shared={shared}: {host:#x}");
            }
        }
    }

    /// The mapping's VmFlags in /proc/self/smaps: `hg` for MADV_HUGEPAGE,
    /// `nh` for MADV_NOHUGEPAGE.
    fn vm_flags(addr: u64) -> String {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let start = format!("{addr:x}-");
        smaps
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with(&start))
            .find_map(|l| l.strip_prefix("VmFlags:"))
            .unwrap_or_else(|| panic!("no mapping at {addr:#x}"))
            .to_owned()
    }

    #[rstest::rstest]
    #[case(true, "hg")]
    #[case(false, "nh")]
    fn thp_asks_for_or_refuses_huge_pages(#[case] thp: bool, #[case] flag: &str) {
        let mem = create_guest_memory(&MemoryConfig {
            size: 64 << 20,
            shared: false,
            hugepages: false,
            thp,
        })
        .unwrap();
        let flags = vm_flags(mem.iter().next().unwrap().as_ptr() as u64);
        assert!(flags.split_whitespace().any(|f| f == flag), "{flags}");
    }

    #[test]
    fn private_memory_has_no_file() {
        let mem = create_guest_memory(&MemoryConfig {
            size: 64 << 20,
            shared: false,
            hugepages: false,
            thp: true,
        })
        .unwrap();
        assert!(mem.iter().all(|r| r.file_offset().is_none()));
    }
}
