//! A FUSE client over a virtio-fs device: each request is one descriptor
//! chain on a request queue (header and arguments readable by the device,
//! reply header and data writable), as the Linux virtiofs driver sends them.

use crate::rt::Failure;
use crate::virtio::Device;
use crate::{bail, Clock, Dma};

pub const ROOT_ID: u64 = 1;
/// The largest READ/WRITE payload the probe sends, whatever the server
/// allows.
pub const DATA_MAX: u32 = 1 << 20;
const REQ_MAX: u32 = 8192;
const REPLY_MAX: u32 = 8192;
const TIMEOUT_MS: u64 = 10_000;

const LOOKUP: u32 = 1;
const GETATTR: u32 = 3;
const MKDIR: u32 = 9;
const UNLINK: u32 = 10;
const RMDIR: u32 = 11;
const RENAME: u32 = 12;
const OPEN: u32 = 14;
const READ: u32 = 15;
const WRITE: u32 = 16;
const STATFS: u32 = 17;
const RELEASE: u32 = 18;
const FSYNC: u32 = 20;
const FLUSH: u32 = 25;
const INIT: u32 = 26;
const OPENDIR: u32 = 27;
const READDIR: u32 = 28;
const RELEASEDIR: u32 = 29;
const CREATE: u32 = 35;
const DESTROY: u32 = 38;

const FUSE_BIG_WRITES: u32 = 1 << 5;
const FUSE_MAX_PAGES: u32 = 1 << 22;

pub const O_RDONLY: u32 = 0;
pub const O_WRONLY: u32 = 1;
pub const O_RDWR: u32 = 2;
pub const O_CREAT: u32 = 0o100;
pub const O_TRUNC: u32 = 0o1000;
pub const ENOENT: i32 = 2;

#[derive(Clone, Copy, Default)]
pub struct Attr {
    pub size: u64,
}

#[derive(Clone, Copy)]
pub struct Entry {
    pub nodeid: u64,
    pub attr: Attr,
}

pub struct Statfs {
    pub blocks: u64,
    pub bfree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

pub struct Fuse<'a> {
    dev: &'a mut Device,
    clock: &'a Clock,
    queue: u16,
    unique: u64,
    req: u64,
    reply: u64,
    /// The payload buffer for READ, WRITE and READDIR.
    pub data: u64,
    pub major: u32,
    pub minor: u32,
    pub max_write: u32,
    pub max_read: u32,
    pub requests: u32,
}

/// A reply: the FUSE error (0 or a positive errno) and bytes after the
/// header.
struct Reply {
    error: i32,
    len: u32,
}

fn put(buf: &mut [u8], at: &mut usize, bytes: &[u8]) {
    buf[*at..*at + bytes.len()].copy_from_slice(bytes);
    *at += bytes.len();
}

fn u32_at(addr: u64) -> u32 {
    // SAFETY: reply buffers are our DMA memory, written by the device.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

fn u64_at(addr: u64) -> u64 {
    u64::from(u32_at(addr)) | (u64::from(u32_at(addr + 4)) << 32)
}

fn attr_at(addr: u64) -> Attr {
    Attr {
        size: u64_at(addr + 8),
    }
}

impl<'a> Fuse<'a> {
    pub fn new(
        dev: &'a mut Device,
        queue: u16,
        clock: &'a Clock,
        dma: &mut Dma,
    ) -> Result<Self, Failure> {
        Ok(Fuse {
            dev,
            clock,
            queue,
            unique: 0,
            req: dma.alloc(u64::from(REQ_MAX), 4096)?,
            reply: dma.alloc(u64::from(REPLY_MAX), 4096)?,
            data: dma.alloc(u64::from(DATA_MAX), 4096)?,
            major: 0,
            minor: 0,
            max_write: 4096,
            max_read: 4096,
            requests: 0,
        })
    }

    pub fn data_mut(&mut self, len: u32) -> &mut [u8] {
        // SAFETY: `data` is DATA_MAX bytes of our DMA memory, used only
        // while no request is in flight.
        unsafe { core::slice::from_raw_parts_mut(self.data as *mut u8, len.min(DATA_MAX) as usize) }
    }

    /// Sends one request. `args` follow the in-header; `data_in` bytes of
    /// the payload buffer follow them (WRITE); the reply header and
    /// `reply_len` argument bytes land in the reply buffer, then up to
    /// `data_out` bytes in the payload buffer (READ, READDIR).
    fn call(
        &mut self,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        data_in: u32,
        reply_len: u32,
        data_out: u32,
    ) -> Result<Reply, Failure> {
        self.unique += 1;
        let unique = self.unique;
        let args_len: usize = args.iter().map(|a| a.len()).sum();
        if 40 + args_len > REQ_MAX as usize || 16 + reply_len > REPLY_MAX {
            bail!("FUSE opcode {opcode}: arguments too large");
        }
        // SAFETY: `req` is REQ_MAX bytes of our DMA memory.
        let req = unsafe { core::slice::from_raw_parts_mut(self.req as *mut u8, REQ_MAX as usize) };
        let total = 40 + args_len as u32 + data_in;
        let mut at = 0;
        put(req, &mut at, &total.to_le_bytes());
        put(req, &mut at, &opcode.to_le_bytes());
        put(req, &mut at, &unique.to_le_bytes());
        put(req, &mut at, &nodeid.to_le_bytes());
        put(req, &mut at, &[0; 16]); // uid, gid, pid, total_extlen, padding
        for a in args {
            put(req, &mut at, a);
        }
        let mut bufs = [(0u64, 0u32, false); 4];
        let mut n = 0;
        bufs[n] = (self.req, at as u32, false);
        n += 1;
        if data_in > 0 {
            bufs[n] = (self.data, data_in, false);
            n += 1;
        }
        bufs[n] = (self.reply, 16 + reply_len, true);
        n += 1;
        if data_out > 0 {
            bufs[n] = (self.data, data_out, true);
            n += 1;
        }
        self.dev.submit(self.queue, &bufs[..n])?;
        let written = self.dev.wait_used(self.queue, self.clock, TIMEOUT_MS)?;
        self.requests += 1;
        if written == 0 && opcode == DESTROY {
            // virtiofsd completes DESTROY without writing a reply.
            return Ok(Reply { error: 0, len: 0 });
        }
        if written < 16 {
            bail!("FUSE opcode {opcode}: device wrote {written} bytes, less than a reply header");
        }
        let len = u32_at(self.reply);
        let error = u32_at(self.reply + 4) as i32;
        let reply_unique = u64_at(self.reply + 8);
        if reply_unique != unique {
            bail!("FUSE opcode {opcode}: reply for request {reply_unique}, expected {unique}");
        }
        if len < 16 || len > written.max(16) {
            bail!("FUSE opcode {opcode}: reply length {len} but device wrote {written}");
        }
        Ok(Reply {
            error: -error,
            len: len - 16,
        })
    }

    // The request's parts as `call` takes them, plus what to call it.
    #[allow(clippy::too_many_arguments)]
    fn ok(
        &mut self,
        what: &str,
        opcode: u32,
        nodeid: u64,
        args: &[&[u8]],
        data_in: u32,
        reply_len: u32,
        data_out: u32,
    ) -> Result<u32, Failure> {
        let r = self.call(opcode, nodeid, args, data_in, reply_len, data_out)?;
        if r.error != 0 {
            bail!("{what} failed: errno {}", r.error);
        }
        Ok(r.len)
    }

    pub fn init(&mut self) -> Result<(), Failure> {
        let mut args = [0u8; 16];
        args[0..4].copy_from_slice(&7u32.to_le_bytes());
        args[4..8].copy_from_slice(&31u32.to_le_bytes());
        args[12..16].copy_from_slice(&(FUSE_BIG_WRITES | FUSE_MAX_PAGES).to_le_bytes());
        let len = self.ok("FUSE_INIT", INIT, 0, &[&args], 0, 64, 0)?;
        if len < 24 {
            bail!("FUSE_INIT reply too short ({len} bytes)");
        }
        let r = self.reply + 16;
        self.major = u32_at(r);
        self.minor = u32_at(r + 4);
        let flags = u32_at(r + 12);
        self.max_write = u32_at(r + 20).clamp(4096, DATA_MAX);
        let max_pages = if flags & FUSE_MAX_PAGES != 0 && len >= 32 {
            u32_at(r + 28) & 0xffff
        } else {
            32
        };
        self.max_read = (max_pages.max(1) * 4096).min(DATA_MAX);
        if self.major != 7 {
            bail!("FUSE_INIT: server speaks major version {}", self.major);
        }
        Ok(())
    }

    pub fn destroy(&mut self) -> Result<(), Failure> {
        self.ok("FUSE_DESTROY", DESTROY, 0, &[], 0, 0, 0)
            .map(|_| ())
    }

    pub fn statfs(&mut self) -> Result<Statfs, Failure> {
        self.ok("FUSE_STATFS", STATFS, ROOT_ID, &[], 0, 80, 0)?;
        let r = self.reply + 16;
        Ok(Statfs {
            blocks: u64_at(r),
            bfree: u64_at(r + 8),
            bsize: u32_at(r + 40),
            namelen: u32_at(r + 44),
        })
    }

    /// LOOKUP; `Ok(None)` for ENOENT.
    pub fn lookup(&mut self, parent: u64, name: &[u8]) -> Result<Option<Entry>, Failure> {
        let r = self.call(LOOKUP, parent, &[name, &[0]], 0, 128, 0)?;
        match r.error {
            0 => Ok(Some(self.entry())),
            ENOENT => Ok(None),
            e => bail!("FUSE_LOOKUP {} failed: errno {e}", crate::rt::Quoted(name)),
        }
    }

    fn entry(&self) -> Entry {
        let r = self.reply + 16;
        Entry {
            nodeid: u64_at(r),
            attr: attr_at(r + 40),
        }
    }

    pub fn getattr(&mut self, nodeid: u64) -> Result<Attr, Failure> {
        self.ok("FUSE_GETATTR", GETATTR, nodeid, &[&[0; 16]], 0, 104, 0)?;
        Ok(attr_at(self.reply + 16 + 16))
    }

    /// Walks a slash-separated path from the root.
    pub fn resolve(&mut self, path: &[u8]) -> Result<Entry, Failure> {
        let mut entry = Entry {
            nodeid: ROOT_ID,
            attr: self.getattr(ROOT_ID)?,
        };
        for name in path.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            match self.lookup(entry.nodeid, name)? {
                Some(e) => entry = e,
                None => bail!("{} not found", crate::rt::Quoted(path)),
            }
        }
        Ok(entry)
    }

    fn open_common(&mut self, opcode: u32, nodeid: u64, flags: u32) -> Result<u64, Failure> {
        let mut args = [0u8; 8];
        args[0..4].copy_from_slice(&flags.to_le_bytes());
        self.ok(
            if opcode == OPEN {
                "FUSE_OPEN"
            } else {
                "FUSE_OPENDIR"
            },
            opcode,
            nodeid,
            &[&args],
            0,
            16,
            0,
        )?;
        Ok(u64_at(self.reply + 16))
    }

    pub fn open(&mut self, nodeid: u64, flags: u32) -> Result<u64, Failure> {
        self.open_common(OPEN, nodeid, flags)
    }

    pub fn opendir(&mut self, nodeid: u64) -> Result<u64, Failure> {
        self.open_common(OPENDIR, nodeid, 0)
    }

    fn release_common(&mut self, opcode: u32, nodeid: u64, fh: u64) -> Result<(), Failure> {
        let mut args = [0u8; 24];
        args[0..8].copy_from_slice(&fh.to_le_bytes());
        self.ok("FUSE_RELEASE", opcode, nodeid, &[&args], 0, 0, 0)
            .map(|_| ())
    }

    pub fn release(&mut self, nodeid: u64, fh: u64) -> Result<(), Failure> {
        self.release_common(RELEASE, nodeid, fh)
    }

    pub fn releasedir(&mut self, nodeid: u64, fh: u64) -> Result<(), Failure> {
        self.release_common(RELEASEDIR, nodeid, fh)
    }

    fn rw_args(fh: u64, offset: u64, size: u32) -> [u8; 40] {
        let mut args = [0u8; 40];
        args[0..8].copy_from_slice(&fh.to_le_bytes());
        args[8..16].copy_from_slice(&offset.to_le_bytes());
        args[16..20].copy_from_slice(&size.to_le_bytes());
        args
    }

    /// READ of at most `max_read` bytes into the payload buffer.
    pub fn read(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<u32, Failure> {
        let size = size.min(self.max_read);
        let n = self.ok(
            "FUSE_READ",
            READ,
            nodeid,
            &[&Self::rw_args(fh, offset, size)],
            0,
            0,
            size,
        )?;
        if n > size {
            bail!("FUSE_READ returned {n} bytes for {size} asked");
        }
        Ok(n)
    }

    pub fn readdir(
        &mut self,
        nodeid: u64,
        fh: u64,
        offset: u64,
        size: u32,
    ) -> Result<u32, Failure> {
        let size = size.min(self.max_read);
        self.ok(
            "FUSE_READDIR",
            READDIR,
            nodeid,
            &[&Self::rw_args(fh, offset, size)],
            0,
            0,
            size,
        )
    }

    /// WRITE of the first `size` bytes of the payload buffer.
    pub fn write(&mut self, nodeid: u64, fh: u64, offset: u64, size: u32) -> Result<u32, Failure> {
        if size > self.max_write {
            bail!(
                "FUSE_WRITE of {size} bytes exceeds max_write {}",
                self.max_write
            );
        }
        self.ok(
            "FUSE_WRITE",
            WRITE,
            nodeid,
            &[&Self::rw_args(fh, offset, size)],
            size,
            8,
            0,
        )?;
        Ok(u32_at(self.reply + 16))
    }

    pub fn flush(&mut self, nodeid: u64, fh: u64) -> Result<(), Failure> {
        let mut args = [0u8; 24];
        args[0..8].copy_from_slice(&fh.to_le_bytes());
        self.ok("FUSE_FLUSH", FLUSH, nodeid, &[&args], 0, 0, 0)
            .map(|_| ())
    }

    pub fn fsync(&mut self, nodeid: u64, fh: u64) -> Result<(), Failure> {
        let mut args = [0u8; 16];
        args[0..8].copy_from_slice(&fh.to_le_bytes());
        self.ok("FUSE_FSYNC", FSYNC, nodeid, &[&args], 0, 0, 0)
            .map(|_| ())
    }

    /// CREATE: returns the new entry and an open file handle.
    pub fn create(
        &mut self,
        parent: u64,
        name: &[u8],
        flags: u32,
        mode: u32,
    ) -> Result<(Entry, u64), Failure> {
        let mut args = [0u8; 16];
        args[0..4].copy_from_slice(&flags.to_le_bytes());
        args[4..8].copy_from_slice(&(0o100000 | mode).to_le_bytes());
        self.ok(
            "FUSE_CREATE",
            CREATE,
            parent,
            &[&args, name, &[0]],
            0,
            128 + 16,
            0,
        )?;
        Ok((self.entry(), u64_at(self.reply + 16 + 128)))
    }

    pub fn mkdir(&mut self, parent: u64, name: &[u8], mode: u32) -> Result<Entry, Failure> {
        let mut args = [0u8; 8];
        args[0..4].copy_from_slice(&(0o040000 | mode).to_le_bytes());
        self.ok("FUSE_MKDIR", MKDIR, parent, &[&args, name, &[0]], 0, 128, 0)?;
        Ok(self.entry())
    }

    pub fn unlink(&mut self, parent: u64, name: &[u8]) -> Result<(), Failure> {
        self.ok("FUSE_UNLINK", UNLINK, parent, &[name, &[0]], 0, 0, 0)
            .map(|_| ())
    }

    pub fn rmdir(&mut self, parent: u64, name: &[u8]) -> Result<(), Failure> {
        self.ok("FUSE_RMDIR", RMDIR, parent, &[name, &[0]], 0, 0, 0)
            .map(|_| ())
    }

    pub fn rename(
        &mut self,
        parent: u64,
        old: &[u8],
        new_parent: u64,
        new: &[u8],
    ) -> Result<(), Failure> {
        self.ok(
            "FUSE_RENAME",
            RENAME,
            parent,
            &[&new_parent.to_le_bytes(), old, &[0], new, &[0]],
            0,
            0,
            0,
        )
        .map(|_| ())
    }
}

/// Walks READDIR output: (name, next offset) for each entry.
pub fn dirents(buf: &[u8], mut f: impl FnMut(&[u8], u64)) {
    let mut at = 0usize;
    while at + 24 <= buf.len() {
        let off = u64::from_le_bytes(buf[at + 8..at + 16].try_into().unwrap_or([0; 8]));
        let namelen =
            u32::from_le_bytes(buf[at + 16..at + 20].try_into().unwrap_or([0; 4])) as usize;
        if at + 24 + namelen > buf.len() {
            break;
        }
        f(&buf[at + 24..at + 24 + namelen], off);
        at += (24 + namelen).div_ceil(8) * 8;
    }
}
