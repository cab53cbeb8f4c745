//! What O_DIRECT asks of an image: offsets and lengths in whole logical
//! blocks of the device under it, buffers at its memory alignment. A disk
//! with 4 KiB logical blocks refuses a 512-byte request outright, so the
//! device tells the driver its block size (`blk_size`) and serves what a
//! driver sends smaller by reading and writing whole blocks around it.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use super::disk::SECTOR_SIZE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectAlign {
    /// Logical block: offsets and lengths are multiples of it.
    pub block: u32,
    /// Buffer addresses are multiples of it.
    pub memory: usize,
}

impl DirectAlign {
    /// Through the page cache any offset, length and buffer will do; the
    /// guest is told of 512-byte blocks.
    pub const BUFFERED: DirectAlign = DirectAlign {
        block: SECTOR_SIZE as u32,
        memory: 1,
    };

    /// What the kernel says O_DIRECT needs on `file` (statx's
    /// STATX_DIOALIGN), else a block device's logical block size
    /// (BLKSSZGET), else 512 bytes.
    pub fn of(file: &File, block_device: bool) -> io::Result<DirectAlign> {
        let fallback = DirectAlign {
            block: SECTOR_SIZE as u32,
            memory: SECTOR_SIZE as usize,
        };
        if let Some((block, memory)) = statx_dio_align(file)? {
            return Ok(DirectAlign {
                block: block.max(fallback.block),
                memory: memory.max(1) as usize,
            });
        }
        if block_device {
            let mut size: libc::c_int = 0;
            // SAFETY: BLKSSZGET writes one int to the pointer we pass, which
            // outlives the call; the result is checked.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut size) };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
            let block = u32::try_from(size).unwrap_or(fallback.block);
            return Ok(DirectAlign {
                block: block.max(fallback.block),
                memory: fallback.memory,
            });
        }
        Ok(fallback)
    }

    /// Whether a transfer of `len` bytes at `offset` needs no whole blocks
    /// around it.
    pub fn fits(&self, offset: u64, len: u64) -> bool {
        let block = u64::from(self.block);
        offset.is_multiple_of(block) && len.is_multiple_of(block)
    }

    /// The whole blocks `[start, end)` around `len` bytes at `offset`.
    pub fn around(&self, offset: u64, len: u64) -> (u64, u64) {
        let block = u64::from(self.block);
        let start = offset - offset % block;
        let end = (offset + len).div_ceil(block) * block;
        (start, end)
    }
}

/// `(offset alignment, memory alignment)` from statx, where the kernel and
/// the file system report them.
fn statx_dio_align(file: &File) -> io::Result<Option<(u32, u32)>> {
    // SAFETY: statx is a plain C struct; zero is a valid value for each field.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: an empty, NUL-terminated path with AT_EMPTY_PATH names the
    // descriptor itself; statx writes only the struct we pass, which
    // outlives the call; the result is checked.
    let rc = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_DIOALIGN,
            &mut stx,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        // Kernels before statx: no answer, not an error.
        return match e.raw_os_error() {
            Some(libc::ENOSYS) => Ok(None),
            _ => Err(e),
        };
    }
    if stx.stx_mask & libc::STATX_DIOALIGN == 0 || stx.stx_dio_offset_align == 0 {
        return Ok(None);
    }
    Ok(Some((stx.stx_dio_offset_align, stx.stx_dio_mem_align)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_blocks_around_a_request() {
        let a = DirectAlign {
            block: 4096,
            memory: 512,
        };
        assert!(a.fits(8192, 4096));
        assert!(!a.fits(512, 4096));
        assert!(!a.fits(4096, 512));
        assert_eq!(a.around(512, 512), (0, 4096));
        assert_eq!(a.around(4096 - 512, 1024), (0, 8192));
        assert_eq!(a.around(8192, 4096), (8192, 12288));
        assert!(DirectAlign::BUFFERED.fits(512, 512));
    }

    #[test]
    fn a_file_s_alignment_is_at_least_a_sector() {
        let file = tempfile::tempfile().unwrap();
        let a = DirectAlign::of(&file, false).unwrap();
        assert!(a.block >= 512 && a.block.is_power_of_two(), "{a:?}");
        assert!(a.memory >= 1, "{a:?}");
    }
}
