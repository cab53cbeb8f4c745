//! Opening the files a user names, without ever waiting in `open()`. An
//! input (the kernel, the initramfs) must be a regular file: a FIFO would
//! block the open until some writer came, a device would be read without
//! end. An output (a serial file, the log) may be a FIFO, which is how a
//! user pipes it somewhere, but only one that is already being read: a
//! FIFO without a reader is refused at once rather than waited for.

use std::fs::{File, FileType, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("it is a {0}: expected a regular file")]
    NotRegular(&'static str),
    #[error("it is a FIFO that nothing reads: start the reader before vmm")]
    FifoWithoutReader,
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

/// Opens a file for writing, creating it if needed, appended to or
/// truncated. Writes to it block as usual.
pub fn open_output(path: &Path, append: bool) -> Result<File, FileError> {
    let mut options = OpenOptions::new();
    options
        .write(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK);
    if append {
        options.append(true);
    } else {
        options.truncate(true);
    }
    // Opening a FIFO for writing without a reader fails with ENXIO when
    // O_NONBLOCK is set (and waits for one without it).
    let file = match options.open(path) {
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) && is_fifo(path) => {
            return Err(FileError::FifoWithoutReader)
        }
        opened => opened?,
    };
    set_blocking(&file)?;
    Ok(file)
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
            let err = within_5s(move || open_output(&fifo, append).map(|_| ())).unwrap_err();
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
        let mut writer = open_output(&fifo, false).unwrap();
        writer.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        reader.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn an_output_file_is_created_truncated_or_appended() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        open_output(&path, true).unwrap().write_all(b"a").unwrap();
        open_output(&path, true).unwrap().write_all(b"b").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ab");
        open_output(&path, false).unwrap().write_all(b"c").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"c");
        open_output(Path::new("/dev/null"), false).unwrap();
    }
}
