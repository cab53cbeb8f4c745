//! Terminals: raw mode for the one the guest's console takes over
//! (restored on every way out, a panic included), the window size the
//! guest is told, and new pseudo-terminals.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::Mutex;

/// The settings to put back, shared with the panic hook.
static SAVED: Mutex<Option<(RawFd, libc::termios)>> = Mutex::new(None);

pub fn is_terminal(fd: RawFd) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(fd) == 1 }
}

/// Whether epoll can wait on `fd`: a terminal, pipe or socket. Regular
/// files and /dev/null are always "ready" and epoll refuses them.
pub fn pollable(fd: RawFd) -> bool {
    // SAFETY: stat is plain data that fstat fills; the result is checked.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } < 0 {
        return false;
    }
    let kind = st.st_mode & libc::S_IFMT;
    kind == libc::S_IFIFO || kind == libc::S_IFSOCK || is_terminal(fd)
}

/// A terminal in raw mode until this is dropped: keys go to the guest as
/// they are typed, Ctrl-C included, and nothing is echoed twice.
pub struct RawMode {
    /// Our own descriptor for the terminal: whoever else reads it may
    /// close theirs first (a device dropped before us on an error path).
    terminal: File,
}

impl RawMode {
    /// None when `fd` is not a terminal: nothing to change.
    pub fn enable(fd: RawFd) -> io::Result<Option<RawMode>> {
        if !is_terminal(fd) {
            return Ok(None);
        }
        // SAFETY: `fd` is open for the duration of this call; the borrow
        // only lives to make an owned duplicate.
        let terminal = File::from(unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?);
        let original = get_attrs(terminal.as_raw_fd())?;
        let mut raw = original;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing, so the guest's "\n" still returns
        // the carriage on our side as it did before.
        raw.c_oflag |= libc::OPOST;
        if let Ok(mut saved) = SAVED.lock() {
            *saved = Some((terminal.as_raw_fd(), original));
        }
        install_panic_hook();
        set_attrs(terminal.as_raw_fd(), &raw)?;
        Ok(Some(RawMode { terminal }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore(Some(self.terminal.as_raw_fd()));
    }
}

/// Puts the saved settings of `fd` (any, from the panic hook) back, once.
fn restore(only: Option<RawFd>) {
    let mut saved = match SAVED.lock() {
        Ok(saved) => saved,
        Err(poisoned) => poisoned.into_inner(),
    };
    if only.is_some_and(|fd| saved.as_ref().is_some_and(|(s, _)| *s != fd)) {
        return;
    }
    if let Some((fd, attrs)) = saved.take() {
        if let Err(e) = set_attrs(fd, &attrs) {
            eprintln!("vmm: cannot restore the terminal's settings: {e}");
        }
    }
}

fn install_panic_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore(None);
            previous(info);
        }));
    });
}

fn get_attrs(fd: RawFd) -> io::Result<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it and is checked.
    let mut attrs: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::tcgetattr(fd, &mut attrs) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(attrs)
}

fn set_attrs(fd: RawFd, attrs: &libc::termios) -> io::Result<()> {
    // SAFETY: tcsetattr reads the struct; the result is checked.
    if unsafe { libc::tcsetattr(fd, libc::TCSANOW, attrs) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The size of the user's terminal, and word when it changes (SIGWINCH,
/// which `main` blocked for us to read here).
pub struct WindowSize {
    terminal: File,
    resized: OwnedFd,
}

impl WindowSize {
    /// None when `fd` is not a terminal. A terminal whose size is 0x0 yet
    /// (a new pty) is watched too: its size comes with the first resize.
    pub fn watch(fd: RawFd) -> io::Result<Option<WindowSize>> {
        if !is_terminal(fd) {
            return Ok(None);
        }
        // SAFETY: `fd` is open for the duration of this call; the borrow
        // only lives to make an owned duplicate.
        let terminal = File::from(unsafe { BorrowedFd::borrow_raw(fd) }.try_clone_to_owned()?);
        let resized = crate::signals::signalfd(&[libc::SIGWINCH])?;
        Ok(Some(WindowSize { terminal, resized }))
    }

    /// Columns and rows now.
    pub fn get(&self) -> Option<(u16, u16)> {
        window_size(self.terminal.as_raw_fd())
    }

    /// Takes the resize signals waiting: true if there was one.
    pub fn take_resized(&self) -> bool {
        let mut any = false;
        while crate::signals::read_signal(self.resized.as_raw_fd()).is_some() {
            any = true;
        }
        any
    }

    /// Readable when the terminal was resized.
    pub fn resized_fd(&self) -> RawFd {
        self.resized.as_raw_fd()
    }
}

/// Columns and rows of the terminal on `fd`, if it is one.
pub fn window_size(fd: RawFd) -> Option<(u16, u16)> {
    // SAFETY: winsize is plain data that TIOCGWINSZ fills; checked.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (rc == 0 && ws.ws_col > 0).then_some((ws.ws_col, ws.ws_row))
}

/// A new pseudo-terminal: we keep the controller side and an open handle
/// on the other, so that the controller never sees a hang-up while no
/// one has the terminal open.
pub struct Pty {
    pub controller: File,
    pub path: PathBuf,
    /// To be kept open for as long as the controller is used.
    pub peer: File,
}

impl Pty {
    pub fn open() -> io::Result<Pty> {
        // SAFETY: posix_openpt returns a new descriptor or -1, checked.
        let fd = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        let controller = unsafe { File::from_raw_fd(fd) };
        // SAFETY: grantpt/unlockpt act on our descriptor; checked.
        if unsafe { libc::grantpt(fd) } < 0 || unsafe { libc::unlockpt(fd) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        // SAFETY: ptsname_r writes at most `name.len()` bytes; checked.
        let rc = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: ptsname_r wrote a NUL-terminated string into `name`.
        let path = unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned();
        let peer = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
            .open(&path)?;
        // The guest's bytes go through unchanged, both ways.
        let mut raw = get_attrs(peer.as_raw_fd())?;
        // SAFETY: cfmakeraw only edits the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        set_attrs(peer.as_raw_fd(), &raw)?;
        set_nonblocking(controller.as_raw_fd())?;
        Ok(Pty {
            controller,
            path: path.into(),
            peer,
        })
    }
}

/// O_NONBLOCK on a descriptor we own alone.
pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFL/F_SETFL on our own descriptor; checked.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    #[test]
    fn a_pty_carries_bytes_both_ways_unchanged() {
        let pty = Pty::open().unwrap();
        assert!(pty.path.starts_with("/dev/pts"));
        let mut user = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pty.path)
            .unwrap();
        user.write_all(b"a\r\nb").unwrap();
        let mut controller = &pty.controller;
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while got.len() < 4 && std::time::Instant::now() < deadline {
            let mut buf = [0u8; 16];
            match controller.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(std::time::Duration::from_millis(5))
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(got, b"a\r\nb");
    }

    #[test]
    fn pipes_and_terminals_are_pollable_files_and_dev_null_are_not() {
        let (r, _w) = std::io::pipe().unwrap();
        assert!(pollable(r.as_raw_fd()));
        let pty = Pty::open().unwrap();
        assert!(pollable(pty.controller.as_raw_fd()));
        let f = tempfile::tempfile().unwrap();
        assert!(!pollable(f.as_raw_fd()));
        let null = std::fs::File::open("/dev/null").unwrap();
        assert!(!pollable(null.as_raw_fd()));
    }

    #[test]
    fn raw_mode_is_nothing_off_a_terminal() {
        let f = tempfile::tempfile().unwrap();
        assert!(RawMode::enable(f.as_raw_fd()).unwrap().is_none());
        assert_eq!(window_size(f.as_raw_fd()), None);
    }

    /// A new pty and the end a user's program would open.
    fn pty_and_user_end() -> (Pty, File) {
        let pty = Pty::open().unwrap();
        let user = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&pty.path)
            .unwrap();
        (pty, user)
    }

    #[test]
    fn a_window_size_follows_the_terminal() {
        let (pty, user) = pty_and_user_end();
        let set = |cols: u16, rows: u16| {
            let ws = libc::winsize {
                ws_row: rows,
                ws_col: cols,
                ws_xpixel: 0,
                ws_ypixel: 0,
            };
            // SAFETY: TIOCSWINSZ reads the winsize we pass; checked.
            let rc = unsafe { libc::ioctl(pty.controller.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
            assert_eq!(rc, 0);
        };
        // A terminal of 0x0 is watched all the same: its size comes later.
        set(0, 0);
        let size = WindowSize::watch(user.as_raw_fd())
            .unwrap()
            .expect("a terminal");
        assert_eq!(size.get(), None, "no size yet");
        set(100, 30);
        assert_eq!(size.get(), Some((100, 30)));
        set(132, 43);
        assert_eq!(size.get(), Some((132, 43)));
        let null = File::open("/dev/null").unwrap();
        assert!(WindowSize::watch(null.as_raw_fd()).unwrap().is_none());
    }

    #[test]
    fn raw_mode_is_restored_on_drop() {
        let (_pty, user) = pty_and_user_end();
        let mut cooked = get_attrs(user.as_raw_fd()).unwrap();
        cooked.c_lflag |= libc::ICANON | libc::ECHO;
        set_attrs(user.as_raw_fd(), &cooked).unwrap();
        let raw = RawMode::enable(user.as_raw_fd())
            .unwrap()
            .expect("a terminal");
        assert_eq!(
            get_attrs(user.as_raw_fd()).unwrap().c_lflag & libc::ICANON,
            0
        );
        drop(raw);
        let back = get_attrs(user.as_raw_fd()).unwrap();
        assert_ne!(back.c_lflag & libc::ICANON, 0);
        assert_ne!(back.c_lflag & libc::ECHO, 0);
    }
}
