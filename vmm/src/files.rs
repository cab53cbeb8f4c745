//! Opening the files a user names, without ever waiting in `open()`. An
//! input (the kernel, the initramfs) must be a regular file: a FIFO would
//! block the open until some writer came, a device would be read without
//! end. An output (a serial file, the log) may be a FIFO, which is how a
//! user pipes it somewhere, but only one that is already being read: a
//! FIFO without a reader is refused at once rather than waited for.
//!
//! An output never destroys what the VM uses: it is opened without
//! truncation, and refused when it is one of the VM's inputs or outputs
//! (by device and inode, whatever path, link or `/proc/self/fd` names it)
//! or a file another process holds locked (a disk image of another VM);
//! only then is it truncated.

use std::fs::{File, FileType, Metadata, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("it is a {0}: expected a regular file")]
    NotRegular(&'static str),
    #[error("it is a FIFO that nothing reads: start the reader before vmm")]
    FifoWithoutReader,
    #[error("it is {0} too: an output never overwrites a file the VM uses")]
    InUse(String),
    #[error("it is locked by {0} (a disk image in use): an output never overwrites it")]
    LockedByOther(String),
    #[error("it is {0} too: a file the guest writes serves one disk and nothing else (readonly=on disks may share one)")]
    WrittenTwice(String),
    #[error("the descriptor is open for reading only: expected one open for writing")]
    ReadOnly,
}

/// Where an endpoint of the VMM is (`--api-socket`, `--event-monitor`):
/// a path, or a descriptor the caller opened and handed down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathOrFd {
    Path(std::path::PathBuf),
    Fd(std::os::fd::RawFd),
}

/// A file by what it is, not by the path that names it: a link, another
/// path or `/proc/self/fd/N` give the same identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    fn of(meta: &Metadata) -> FileId {
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// The files one VM reads and writes, each with the option that names it,
/// so that no output is opened over one of them. A VM booted again starts
/// from a copy of what was known before its first boot.
#[derive(Debug, Default, Clone)]
pub struct FilesInUse {
    files: Vec<InUse>,
}

#[derive(Debug, Clone)]
struct InUse {
    id: FileId,
    what: String,
    written: bool,
    /// An input of the VM's configuration, forgotten with it.
    input: bool,
}

impl FilesInUse {
    /// Notes an input, named for messages by `what` (`--disk path=a.img`),
    /// that the guest writes if `written`; such a file may be nothing else
    /// of this VM, or two disks would overwrite each other's data. One that
    /// cannot be looked up is left out: its own open reports why.
    pub fn add_input(
        &mut self,
        path: &Path,
        what: impl Into<String>,
        written: bool,
    ) -> Result<(), FileError> {
        let Ok(meta) = std::fs::metadata(path) else {
            return Ok(());
        };
        if !holds_data(meta.file_type()) {
            return Ok(());
        }
        let id = FileId::of(&meta);
        if let Some(other) = self.files.iter().find(|f| f.id == id) {
            if written || other.written {
                return Err(FileError::WrittenTwice(other.what.clone()));
            }
        }
        self.files.push(InUse {
            id,
            what: what.into(),
            written,
            input: true,
        });
        Ok(())
    }

    /// Forgets the inputs of a VM deleted (`vm.delete`); the outputs stay
    /// open, and in use, for the next one.
    pub fn forget_inputs(&mut self) {
        self.files.retain(|f| !f.input);
    }

    fn user_of(&self, id: FileId) -> Option<&str> {
        self.files
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.what.as_str())
    }
}

/// Files whose bytes an output would destroy; a terminal, `/dev/null` or
/// a FIFO may serve several outputs.
fn holds_data(file_type: FileType) -> bool {
    file_type.is_file() || file_type.is_block_device()
}

/// Opens a regular file for reading.
pub fn open_input(path: &Path) -> Result<File, FileError> {
    // O_NONBLOCK makes opening a FIFO return at once instead of waiting
    // for a writer; it means nothing for a regular file.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let file_type = file.metadata()?.file_type();
    if !file_type.is_file() {
        return Err(FileError::NotRegular(type_name(file_type)));
    }
    Ok(file)
}

/// Opens the output `what` names (`--serial file=s.log`) for writing,
/// creating it if needed, appended to or truncated, unless it is a file in
/// `in_use` or locked by another process; then it is in use too. Writes to
/// it block as usual.
pub fn open_output(
    path: &Path,
    append: bool,
    in_use: &mut FilesInUse,
    what: impl Into<String>,
) -> Result<File, FileError> {
    let mut options = OpenOptions::new();
    // No O_TRUNC: nothing is lost before the checks below.
    options
        .write(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK);
    if append {
        options.append(true);
    }
    // Opening a FIFO for writing without a reader fails with ENXIO when
    // O_NONBLOCK is set (and waits for one without it).
    let file = match options.open(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) && is_fifo(path) => {
            return Err(FileError::FifoWithoutReader)
        }
        opened => opened?,
    };
    let meta = file.metadata()?;
    if holds_data(meta.file_type()) {
        let id = FileId::of(&meta);
        if let Some(user) = in_use.user_of(id) {
            return Err(FileError::InUse(user.to_string()));
        }
        if locked_by_another(&file)? {
            return Err(FileError::LockedByOther(lock_holder(
                meta.dev(),
                meta.ino(),
            )));
        }
        in_use.files.push(InUse {
            id,
            what: what.into(),
            written: true,
            input: false,
        });
        if !append && meta.file_type().is_file() {
            file.set_len(0)?;
        }
    }
    set_blocking(&file)?;
    Ok(file)
}

/// Takes the descriptor `fd` the caller opened for vmm (`fd=N`) as an
/// output, written as it is.
pub fn adopt_output(fd: std::os::fd::RawFd) -> Result<File, FileError> {
    // SAFETY: F_GETFL only reads the descriptor's flags; a closed one
    // fails with EBADF, checked.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(FileError::Io(io::Error::last_os_error()));
    }
    if flags & libc::O_ACCMODE == libc::O_RDONLY {
        return Err(FileError::ReadOnly);
    }
    Ok(File::from(take_handed_down(fd)?))
}

/// Owns the descriptor `fd=N` handed down to vmm, once the caller checked
/// what it is: closed on exec from here, so no program vmm starts (a
/// backend's helper) inherits it.
pub fn take_handed_down(fd: std::os::fd::RawFd) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: F_SETFD changes only this descriptor's flags; a closed one
    // fails with EBADF, checked.
    if unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the caller handed this descriptor to vmm (`fd=`) and it is
    // open; from here the OwnedFd owns it and nothing else uses it.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Whether any other open file holds a lock on `file` (the OFD or POSIX
/// lock a VMM keeps on its disk images).
fn locked_by_another(file: &File) -> io::Result<bool> {
    // SAFETY: flock is a plain C struct; zero is a valid value for each field.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: F_OFD_GETLK reads and writes the struct we pass, which
    // outlives the call; the result is checked.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut lock) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

/// Who holds a lock on the file `dev`/`ino`: the kernel lists each open
/// file's locks in /proc/PID/fdinfo/FD (OFD locks carry no owner pid of
/// their own).
pub fn lock_holder(dev: u64, ino: u64) -> String {
    let id = format!("{:02x}:{:02x}:{ino} ", libc::major(dev), libc::minor(dev));
    let me = std::process::id().to_string();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return "another process".into();
    };
    for proc in procs.flatten() {
        let pid = proc.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(proc.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            if info
                .lines()
                .any(|l| l.starts_with("lock:") && l.contains(&id))
            {
                let comm = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
                return format!("process {pid} ({})", comm.trim());
            }
        }
    }
    "another process".into()
}

fn is_fifo(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.file_type().is_fifo())
}

/// Clears the O_NONBLOCK the open needed, so that a full FIFO makes the
/// writer wait rather than lose output.
fn set_blocking(file: &File) -> io::Result<()> {
    let fd = file.as_raw_fd();
    // SAFETY: F_GETFL and F_SETFL on a descriptor we own; no memory is passed.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// What kind of file this is, for messages.
pub fn type_name(file_type: FileType) -> &'static str {
    if file_type.is_file() {
        "regular file"
    } else if file_type.is_dir() {
        "directory"
    } else if file_type.is_fifo() {
        "FIFO"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else if file_type.is_socket() {
        "socket"
    } else {
        "special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::io::{Read, Write};
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;
    use std::sync::mpsc;
    use std::time::Duration;

    fn mkfifo(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    /// Runs `f` on a thread and fails the test, instead of hanging it,
    /// when `f` blocks.
    fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(f()));
        rx.recv_timeout(Duration::from_secs(5))
            .expect("blocked for 5 s")
    }

    #[test]
    fn an_input_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("kernel");
        mkfifo(&fifo);
        let err = within_5s(move || open_input(&fifo).map(|_| ())).unwrap_err();
        assert_eq!(err.to_string(), "it is a FIFO: expected a regular file");
    }

    #[test]
    fn an_input_must_be_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = open_input(dir.path()).unwrap_err();
        assert!(matches!(err, FileError::NotRegular("directory")), "{err}");
        let err = open_input(Path::new("/dev/zero")).unwrap_err();
        assert!(
            matches!(err, FileError::NotRegular("character device")),
            "{err}"
        );
        let file = dir.path().join("k");
        std::fs::write(&file, b"abc").unwrap();
        let mut text = String::new();
        open_input(&file)
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "abc");
    }

    #[test]
    fn an_output_fifo_without_a_reader_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("serial");
        mkfifo(&fifo);
        for append in [false, true] {
            let fifo = fifo.clone();
            let err = within_5s(move || {
                open_output(&fifo, append, &mut FilesInUse::default(), "out").map(|_| ())
            })
            .unwrap_err();
            assert!(matches!(err, FileError::FifoWithoutReader), "{err}");
        }
    }

    #[test]
    fn an_output_fifo_with_a_reader_is_written_to() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("serial");
        mkfifo(&fifo);
        let mut reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let mut writer = open_output(&fifo, false, &mut FilesInUse::default(), "out").unwrap();
        writer.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn an_output_file_is_created_truncated_or_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let open = |append| open_output(&path, append, &mut FilesInUse::default(), "out");
        open(true).unwrap().write_all(b"a").unwrap();
        open(true).unwrap().write_all(b"b").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
        open(false).unwrap().write_all(b"c").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"c");
        let mut in_use = FilesInUse::default();
        for _ in 0..2 {
            open_output(Path::new("/dev/null"), false, &mut in_use, "out").unwrap();
        }
    }

    /// Issue 21, finding 1: `--console file=img.raw --disk path=img.raw`
    /// left the image at 0 bytes, through any name the file had.
    #[test]
    fn an_output_that_is_an_input_is_refused_and_left_whole() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.raw");
        std::fs::write(&image, b"precious").unwrap();
        let link = dir.path().join("link.raw");
        std::os::unix::fs::symlink(&image, &link).unwrap();
        let held = File::open(&image).unwrap();
        let by_fd = PathBuf::from(format!("/proc/self/fd/{}", held.as_raw_fd()));
        let mut in_use = FilesInUse::default();
        in_use
            .add_input(&image, "--disk path=img.raw", true)
            .unwrap();
        for path in [&image, &link, &by_fd] {
            for append in [false, true] {
                let err = open_output(path, append, &mut in_use, "--serial file=x").unwrap_err();
                assert_eq!(
                    err.to_string(),
                    "it is --disk path=img.raw too: an output never overwrites a file the VM uses"
                );
            }
        }
        assert_eq!(std::fs::read(&image).unwrap(), b"precious");
    }

    /// Issue 21, finding 14: the same image given twice as writable
    /// disks was refused as "locked by another process", naming no one.
    #[test]
    fn a_file_the_guest_writes_serves_one_use() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("img.raw");
        std::fs::write(&image, b"disk").unwrap();
        let link = dir.path().join("link.raw");
        std::os::unix::fs::symlink(&image, &link).unwrap();
        let writable = |first: bool, second: bool| {
            let mut in_use = FilesInUse::default();
            in_use.add_input(&image, "--disk path=img.raw", first)?;
            in_use.add_input(&link, "--disk path=link.raw", second)
        };
        for (first, second) in [(true, true), (true, false), (false, true)] {
            let err = writable(first, second).unwrap_err();
            assert_eq!(
                err.to_string(),
                "it is --disk path=img.raw too: a file the guest writes serves one disk \
                 and nothing else (readonly=on disks may share one)"
            );
        }
        writable(false, false).expect("read-only disks share a file");
    }

    #[test]
    fn two_outputs_are_never_one_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut in_use = FilesInUse::default();
        let mut serial = open_output(&path, false, &mut in_use, "--serial file=out").unwrap();
        serial.write_all(b"serial").unwrap();
        let err = open_output(&path, false, &mut in_use, "--console file=out").unwrap_err();
        assert!(
            matches!(&err, FileError::InUse(w) if w == "--serial file=out"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"serial");
    }

    /// Finding 1 across processes: a second VMM's output over the first
    /// one's locked disk image truncated it before the lock was tried.
    #[test]
    fn an_output_locked_by_another_open_file_is_refused_and_left_whole() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("vm1.raw");
        std::fs::write(&image, b"running vm").unwrap();
        let holder = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&image)
            .unwrap();
        // SAFETY: flock is a plain C struct; zero is valid for each field.
        let mut lock: libc::flock = unsafe { std::mem::zeroed() };
        lock.l_type = libc::F_RDLCK as libc::c_short;
        lock.l_whence = libc::SEEK_SET as libc::c_short;
        // SAFETY: F_OFD_SETLK reads the struct, which outlives the call.
        let rc = unsafe { libc::fcntl(holder.as_raw_fd(), libc::F_OFD_SETLK, &lock) };
        assert_eq!(rc, 0);
        let err = open_output(
            &image,
            false,
            &mut FilesInUse::default(),
            "--serial file=vm1.raw",
        )
        .unwrap_err();
        assert!(matches!(err, FileError::LockedByOther(_)), "{err}");
        assert_eq!(std::fs::read(&image).unwrap(), b"running vm");
        drop(holder);
        open_output(
            &image,
            false,
            &mut FilesInUse::default(),
            "--serial file=vm1.raw",
        )
        .unwrap();
        assert_eq!(std::fs::read(&image).unwrap(), b"");
    }
}
