//! Seeing a file's creation however briefly it exists: a backend that
//! serves one connection creates its socket, is connected to at once (a
//! `vmm` waiting to reconnect), and removes the socket as it exits, all
//! possibly between two polls of a loaded machine. An inotify watch on
//! the directory, made before the backend starts, keeps the creation in
//! its queue.

use std::cell::Cell;
use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

pub struct CreationWatch {
    inotify: File,
    name: OsString,
    seen: Cell<bool>,
}

impl CreationWatch {
    /// Watches for `path` to be created (or moved into place).
    pub fn new(path: &Path) -> io::Result<CreationWatch> {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} has no directory and name", path.display()),
            ));
        };
        // SAFETY: no pointers; the descriptor is checked and then owned.
        let fd = unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and is owned by nobody else.
        let inotify = unsafe { File::from_raw_fd(fd) };
        let dir = std::ffi::CString::new(dir.as_os_str().as_bytes().to_vec())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: `dir` is a NUL-terminated path that outlives the call.
        let wd = unsafe {
            libc::inotify_add_watch(fd, dir.as_ptr(), libc::IN_CREATE | libc::IN_MOVED_TO)
        };
        if wd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(CreationWatch {
            inotify,
            name: name.to_owned(),
            seen: Cell::new(false),
        })
    }

    /// Whether the file has been created since the watch began.
    pub fn seen(&self) -> bool {
        if self.seen.get() {
            return true;
        }
        let mut buf = [0u8; 4096];
        // Events are whole in each read; a non-blocking read with none
        // pending fails with EAGAIN.
        while let Ok(n) = (&self.inotify).read(&mut buf) {
            let mut at = 0;
            // struct inotify_event: wd, mask, cookie, len, then the name
            // padded with NULs to `len` bytes.
            while at + 16 <= n {
                let len =
                    u32::from_ne_bytes([buf[at + 12], buf[at + 13], buf[at + 14], buf[at + 15]])
                        as usize;
                let name_bytes = &buf[at + 16..(at + 16 + len).min(n)];
                let end = name_bytes
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(name_bytes.len());
                if OsString::from_vec(name_bytes[..end].to_vec()) == self.name {
                    self.seen.set(true);
                }
                at += 16 + len;
            }
        }
        self.seen.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file created and removed before anyone looked is still seen;
    /// another name is not.
    #[test]
    fn a_creation_is_seen_after_the_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("backend.sock");
        let watch = CreationWatch::new(&path).unwrap();
        std::fs::write(dir.path().join("other"), b"").unwrap();
        assert!(!watch.seen());
        std::fs::write(&path, b"").unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(!path.exists());
        assert!(watch.seen());
    }
}
