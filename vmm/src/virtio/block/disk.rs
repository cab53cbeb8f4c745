//! A disk image: opened and locked the way the user asked, its size, and
//! positional vectored I/O straight between the file and guest memory.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::VolatileSlice;

use super::direct::DirectAlign;
use crate::files::lock_holder;

pub const SECTOR_SIZE: u64 = 512;
/// Our own buffers' alignment: enough for any disk's memory alignment.
const BOUNCE_ALIGN: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("Cannot open disk image {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Disk image {path} is not a regular file or a block device")]
    NotAFile { path: PathBuf },
    #[error("Disk image {path} is locked by {holder}: expected no other VMM writing it (readonly=on images may be shared)")]
    Locked { path: PathBuf, holder: String },
    #[error("Cannot lock disk image {path}")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Cannot read the size of disk image {path}")]
    Size {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("direct=on: the file system of {path} does not support O_DIRECT")]
    DirectUnsupported { path: PathBuf },
    #[error("direct=on: cannot tell the block size O_DIRECT needs on {path}")]
    DirectAlignment {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("direct=on: {path} is {size} bytes, not whole {block}-byte blocks of its disk: O_DIRECT cannot reach its end (use direct=off, or pad the image)")]
    DirectPartialBlock {
        path: PathBuf,
        size: u64,
        block: u32,
    },
    #[error("Cannot read disk image {path} to tell its format")]
    Probe {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("Disk image {path} is a {format} image ({evidence}): vmm serves raw images only; convert it (qemu-img convert -O raw), or give image_type=raw to serve its bytes as they are")]
    NotRaw {
        path: PathBuf,
        format: &'static str,
        evidence: &'static str,
    },
}

/// What the device does with an image: the request code sees only this,
/// so it can be tested against memory.
pub trait Disk: Send + Sync {
    /// Fills `bufs` from `offset`; all or an error.
    fn read_at<B: BitmapSlice>(&self, bufs: &[VolatileSlice<B>], offset: u64) -> io::Result<()>;
    /// Writes all of `bufs` at `offset`.
    fn write_at<B: BitmapSlice>(&self, bufs: &[VolatileSlice<B>], offset: u64) -> io::Result<()>;
    fn flush(&self) -> io::Result<()>;
    /// Frees the range; reads of it then return zeros.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;
    /// Zeros the range, freeing it when `unmap` allows.
    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
}

/// An open, locked image file.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    /// Bytes; the guest sees whole sectors of it.
    size: u64,
    direct: bool,
    /// What O_DIRECT needs (`DirectAlign::BUFFERED` without it).
    align: DirectAlign,
}

impl DiskFile {
    /// Opens `path` (read-only or read-write), takes the lock and reads
    /// the size. Never blocks: a FIFO is refused, not waited on.
    pub fn open(path: &Path, readonly: bool, direct: bool) -> Result<DiskFile, DiskError> {
        let open_error = |source| DiskError::Open {
            path: path.to_path_buf(),
            source,
        };
        let mut flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
        if direct {
            flags |= libc::O_DIRECT;
        }
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EINVAL) if direct => DiskError::DirectUnsupported {
                    path: path.to_path_buf(),
                },
                _ => open_error(e),
            })?;
        let meta = file.metadata().map_err(open_error)?;
        if !meta.file_type().is_file() && !meta.file_type().is_block_device() {
            return Err(DiskError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        lock(&file, readonly).map_err(|source| match source.raw_os_error() {
            Some(libc::EAGAIN | libc::EACCES) => DiskError::Locked {
                path: path.to_path_buf(),
                holder: lock_holder(meta.dev(), meta.ino()),
            },
            _ => DiskError::Lock {
                path: path.to_path_buf(),
                source,
            },
        })?;
        let size = file_size(&file).map_err(|source| DiskError::Size {
            path: path.to_path_buf(),
            source,
        })?;
        let align = if direct {
            DirectAlign::of(&file, meta.file_type().is_block_device()).map_err(|source| {
                DiskError::DirectAlignment {
                    path: path.to_path_buf(),
                    source,
                }
            })?
        } else {
            DirectAlign::BUFFERED
        };
        if !size.is_multiple_of(u64::from(align.block)) {
            return Err(DiskError::DirectPartialBlock {
                path: path.to_path_buf(),
                size,
                block: align.block,
            });
        }
        Ok(DiskFile {
            file,
            path: path.to_path_buf(),
            size,
            direct,
            align,
        })
    }

    /// The logical block the driver is told of: the disk's own with
    /// O_DIRECT (4096 on a 4Kn disk), else a sector.
    pub fn block_size(&self) -> u32 {
        self.align.block
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Opened O_DIRECT: every request waits for the disk.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// Whether O_DIRECT can take the guest's buffers as they are.
    fn direct_fits<B: BitmapSlice>(&self, bufs: &[VolatileSlice<B>], offset: u64) -> bool {
        let len: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        self.align.fits(offset, len)
            && bufs.iter().all(|b| {
                (b.ptr_guard().as_ptr() as usize).is_multiple_of(self.align.memory)
                    && (b.len() as u64).is_multiple_of(u64::from(self.align.block))
            })
    }

    /// O_DIRECT with what the disk cannot take as it is (buffers the guest
    /// did not align, or less than whole blocks): through an aligned buffer
    /// of our own spanning the whole blocks around the request. A write of
    /// part of a block reads the block first; that is not atomic against
    /// another queue writing the same block at once, which a driver told
    /// the block size (Linux) never does.
    fn bounce<B: BitmapSlice>(
        &self,
        bufs: &[VolatileSlice<B>],
        offset: u64,
        direction: Direction,
    ) -> io::Result<()> {
        let len: usize = bufs.iter().map(|b| b.len()).sum();
        let (start, end) = self.align.around(offset, len as u64);
        let too_large = || io::Error::from_raw_os_error(libc::EINVAL);
        let span = usize::try_from(end - start).map_err(|_| too_large())?;
        let at = usize::try_from(offset - start).map_err(|_| too_large())?;
        let mut bounce = AlignedBuf::new(span)?;
        let iov = [libc::iovec {
            iov_base: bounce.as_mut_ptr().cast(),
            iov_len: span,
        }];
        let partial = (start, end) != (offset, offset + len as u64);
        if direction == Direction::Read || partial {
            transfer(&self.file, &iov, start, Direction::Read)?;
        }
        let mut from = at;
        for buf in bufs {
            let window = from..from + buf.len();
            match direction {
                Direction::Read => buf.copy_from(&bounce.as_slice()[window]),
                Direction::Write => {
                    buf.copy_to(&mut bounce.as_mut_slice()[window]);
                }
            }
            from += buf.len();
        }
        if direction == Direction::Write {
            transfer(&self.file, &iov, start, Direction::Write)?;
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: fallocate only acts on our descriptor; the result is checked.
        let rc = unsafe { libc::fallocate(self.file.as_raw_fd(), mode, offset, len) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl DiskFile {
    /// Straight between the file and guest memory; with O_DIRECT,
    /// through an aligned buffer when the guest's buffers do not suit the
    /// disk (unaligned, or refused with EINVAL).
    fn move_data<B: BitmapSlice>(
        &self,
        bufs: &[VolatileSlice<B>],
        offset: u64,
        direction: Direction,
    ) -> io::Result<()> {
        if self.direct && !self.direct_fits(bufs, offset) {
            return self.bounce(bufs, offset, direction);
        }
        match transfer(&self.file, &iovecs(bufs), offset, direction) {
            Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                self.bounce(bufs, offset, direction)
            }
            other => other,
        }
    }
}

impl Disk for DiskFile {
    fn read_at<B: BitmapSlice>(&self, bufs: &[VolatileSlice<B>], offset: u64) -> io::Result<()> {
        self.move_data(bufs, offset, Direction::Read)
    }

    fn write_at<B: BitmapSlice>(&self, bufs: &[VolatileSlice<B>], offset: u64) -> io::Result<()> {
        self.move_data(bufs, offset, Direction::Write)
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        self.fallocate(
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
    }

    fn write_zeroes(&self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        let mode = if unmap {
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
        } else {
            libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
        };
        match self.fallocate(mode, offset, len) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.write_zeroes_slow(offset, len)
            }
            other => other,
        }
    }
}

impl DiskFile {
    /// For file systems without hole punching or zero ranges.
    fn write_zeroes_slow(&self, mut offset: u64, len: u64) -> io::Result<()> {
        const CHUNK: usize = 1 << 20;
        let mut zeros = AlignedBuf::new(CHUNK)?;
        let end = offset + len;
        while offset < end {
            let n = usize::try_from(end - offset).map_or(CHUNK, |left| left.min(CHUNK));
            let iov = [libc::iovec {
                iov_base: zeros.as_mut_ptr().cast(),
                iov_len: n,
            }];
            transfer(&self.file, &iov, offset, Direction::Write)?;
            offset += n as u64;
        }
        Ok(())
    }
}

fn iovecs<B: BitmapSlice>(bufs: &[VolatileSlice<B>]) -> Vec<libc::iovec> {
    bufs.iter()
        .map(|b| libc::iovec {
            iov_base: b.ptr_guard_mut().as_ptr().cast(),
            iov_len: b.len(),
        })
        .collect()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Read,
    Write,
}

/// preadv/pwritev until every byte of `iov` moved, IOV_MAX at a time;
/// end of file before that is an error.
fn transfer(
    file: &File,
    iov: &[libc::iovec],
    mut offset: u64,
    direction: Direction,
) -> io::Result<()> {
    const IOV_MAX: usize = 1024;
    let mut iov = iov.to_vec();
    let mut start = 0;
    while start < iov.len() {
        let batch = &iov[start..iov.len().min(start + IOV_MAX)];
        let count = batch.len() as libc::c_int;
        let Ok(at) = i64::try_from(offset) else {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        };
        // SAFETY: every iovec points into guest memory or a buffer of ours
        // that outlives the call, with its length; the kernel checks them.
        let n = unsafe {
            match direction {
                Direction::Read => libc::preadv(file.as_raw_fd(), batch.as_ptr(), count, at),
                Direction::Write => libc::pwritev(file.as_raw_fd(), batch.as_ptr(), count, at),
            }
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the image ended before the request",
            ));
        }
        let mut done = n as usize;
        offset += done as u64;
        // Skip what was moved; a partly moved iovec keeps its rest.
        while done > 0 && start < iov.len() {
            let len = iov[start].iov_len;
            if done >= len {
                done -= len;
                start += 1;
            } else {
                // SAFETY: `done` < the iovec's length, so the new base stays
                // inside the same buffer.
                iov[start].iov_base = unsafe { iov[start].iov_base.cast::<u8>().add(done).cast() };
                iov[start].iov_len = len - done;
                done = 0;
            }
        }
        while start < iov.len() && iov[start].iov_len == 0 {
            start += 1;
        }
    }
    Ok(())
}

/// A zeroed heap buffer aligned for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> io::Result<Self> {
        let layout = std::alloc::Layout::from_size_align(len.max(1), BOUNCE_ALIGN)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        Ok(Self { ptr, layout })
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` holds `layout.size()` initialised (zeroed) bytes.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as above, and `&mut self` makes the borrow unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// An OFD lock over the whole file, as Cloud Hypervisor takes: shared for
/// read-only images, exclusive otherwise. It lives as long as the file.
fn lock(file: &File, readonly: bool) -> io::Result<()> {
    // SAFETY: flock is a plain C struct; zero is a valid value for each field.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = if readonly {
        libc::F_RDLCK
    } else {
        libc::F_WRLCK
    } as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_SETLK reads the struct we pass; the result is checked.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn file_size(file: &File) -> io::Result<u64> {
    // SAFETY: lseek only moves our descriptor's offset, which positional
    // I/O never uses; the result is checked.
    let end = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
    u64::try_from(end).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn image(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn reads_and_writes_scatter_gather() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let f = image(&data);
        let disk = DiskFile::open(f.path(), false, false).unwrap();
        assert_eq!(disk.size(), 4096);
        let mem = memory();
        let a = mem.get_slice(GuestAddress(0x1000), 100).unwrap();
        let b = mem.get_slice(GuestAddress(0x9000), 412).unwrap();
        disk.read_at(&[a, b], 512).unwrap();
        let mut got = vec![0; 512];
        mem.read_slice(&mut got[..100], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut got[100..], GuestAddress(0x9000))
            .unwrap();
        assert_eq!(got, data[512..1024]);

        mem.write_slice(&[0xee; 512], GuestAddress(0x2000)).unwrap();
        disk.write_at(&[mem.get_slice(GuestAddress(0x2000), 512).unwrap()], 0)
            .unwrap();
        disk.flush().unwrap();
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(on_disk[..512], [0xee; 512]);
        assert_eq!(on_disk[512..], data[512..]);
    }

    /// Issue 21, finding 3: a disk with 4 KiB logical blocks under
    /// O_DIRECT, as the device sees it: less than a block, or across two,
    /// is served through the whole blocks around it, and nothing else of
    /// them changes.
    #[test]
    fn less_than_a_block_goes_through_the_whole_blocks_around_it() {
        let data: Vec<u8> = (0..16384u32).map(|i| (i * 13 % 251) as u8).collect();
        let f = image(&data);
        let mut disk = DiskFile::open(f.path(), false, false).unwrap();
        disk.direct = true;
        disk.align = DirectAlign {
            block: 4096,
            memory: 512,
        };
        let mem = memory();
        let a = mem.get_slice(GuestAddress(0x1000), 300).unwrap();
        let b = mem.get_slice(GuestAddress(0x9003), 700).unwrap();
        disk.read_at(&[a, b], 3584).unwrap();
        let mut got = vec![0; 1000];
        mem.read_slice(&mut got[..300], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut got[300..], GuestAddress(0x9003))
            .unwrap();
        assert!(got == data[3584..4584], "read across a block boundary");

        let pattern = vec![0x5a; 1000];
        mem.write_slice(&pattern, GuestAddress(0x2000)).unwrap();
        let w = mem.get_slice(GuestAddress(0x2000), 1000).unwrap();
        disk.write_at(&[w], 4000).unwrap();
        let mut expected = data.clone();
        expected[4000..5000].copy_from_slice(&pattern);
        assert!(
            std::fs::read(f.path()).unwrap() == expected,
            "write across a block boundary"
        );
        // A whole block at a whole offset goes straight through.
        assert!(disk.align.fits(8192, 4096));
    }

    #[test]
    fn reading_past_the_end_fails() {
        let f = image(&[1; 1024]);
        let disk = DiskFile::open(f.path(), true, false).unwrap();
        let mem = memory();
        let err = disk
            .read_at(&[mem.get_slice(GuestAddress(0), 1024).unwrap()], 512)
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn discard_and_write_zeroes_zero_the_range() {
        let f = image(&[0xab; 3 * 4096]);
        let disk = DiskFile::open(f.path(), false, false).unwrap();
        disk.discard(4096, 4096).unwrap();
        disk.write_zeroes(0, 512, false).unwrap();
        let on_disk = std::fs::read(f.path()).unwrap();
        assert_eq!(on_disk.len(), 3 * 4096);
        assert!(on_disk[..512].iter().all(|&b| b == 0));
        assert!(on_disk[512..4096].iter().all(|&b| b == 0xab));
        assert!(on_disk[4096..8192].iter().all(|&b| b == 0));
        assert!(on_disk[8192..].iter().all(|&b| b == 0xab));
    }

    #[test]
    fn a_writer_excludes_everyone_and_readers_share() {
        let f = image(&[0; 512]);
        let writer = DiskFile::open(f.path(), false, false).unwrap();
        for readonly in [false, true] {
            let err = DiskFile::open(f.path(), readonly, false).unwrap_err();
            assert!(matches!(err, DiskError::Locked { .. }), "{err}");
        }
        drop(writer);
        let r1 = DiskFile::open(f.path(), true, false).unwrap();
        let _r2 = DiskFile::open(f.path(), true, false).unwrap();
        assert!(matches!(
            DiskFile::open(f.path(), false, false),
            Err(DiskError::Locked { .. })
        ));
        drop(r1);
    }

    #[test]
    fn fifos_and_directories_are_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string; the result is checked.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            DiskFile::open(&fifo, true, false),
            Err(DiskError::NotAFile { .. })
        ));
        assert!(matches!(
            DiskFile::open(dir.path(), true, false),
            Err(DiskError::Open { .. } | DiskError::NotAFile { .. })
        ));
        assert!(matches!(
            DiskFile::open(&dir.path().join("missing"), true, false),
            Err(DiskError::Open { .. })
        ));
    }

    #[test]
    fn direct_io_with_unaligned_guest_buffers_goes_through_a_bounce_buffer() {
        // tmpfs refuses O_DIRECT; the target directory is on a disk.
        let target = concat!(env!("CARGO_MANIFEST_DIR"), "/../target");
        let dir = tempfile::tempdir_in(target).unwrap();
        let path = dir.path().join("img");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let disk = DiskFile::open(&path, false, true).unwrap();
        let mem = memory();
        let unaligned = mem.get_slice(GuestAddress(0x1003), 512).unwrap();
        disk.read_at(&[unaligned], 512).unwrap();
        let mut got = [0u8; 512];
        mem.read_slice(&mut got, GuestAddress(0x1003)).unwrap();
        assert_eq!(got, [0x5a; 512]);
        mem.write_slice(&[7; 512], GuestAddress(0x3001)).unwrap();
        disk.write_at(&[mem.get_slice(GuestAddress(0x3001), 512).unwrap()], 0)
            .unwrap();
        assert_eq!(std::fs::read(&path).unwrap()[..512], [7; 512]);
    }
}
