//! The signals whose default action ends the process (SIGINT, SIGTERM,
//! SIGHUP, SIGQUIT, ...: [`TERMINATING`]), and SIGWINCH. `main` blocks
//! them before anything else happens, so every thread vmm starts inherits
//! the mask and the default action (death without teardown, the user's
//! terminal left raw) never runs: the signals wait until vmm looks for
//! them, through a signalfd in the run loop, or with `pending()` in the
//! start-up steps that wait (a backend's socket), and each ends vmm as
//! SIGTERM does.
//! SIGWINCH, whose default is to be discarded, is kept for the console on
//! the user's terminal, which reads it through a signalfd of its own.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Every signal that would end vmm by its default action and that a
/// process can block (SIGKILL and SIGSTOP cannot be; SIGPIPE is ignored by
/// Rust's runtime; faults such as SIGSEGV are the panic hook's business).
pub const TERMINATING: &[i32] = &[
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSTKFLT,
];

#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    #[error("Failed to block the terminating signals and SIGWINCH")]
    Block(#[source] io::Error),
}

/// The blocked signals and a descriptor that reads them.
pub struct TerminationSignals {
    fd: OwnedFd,
}

impl TerminationSignals {
    /// Blocks [`TERMINATING`] and SIGWINCH in the calling thread and opens
    /// a signalfd for the first. Call it before any other thread starts:
    /// threads started earlier keep the default action.
    pub fn block() -> Result<Self, SignalError> {
        let mut blocked = TERMINATING.to_vec();
        blocked.push(libc::SIGWINCH);
        let set = signal_set(&blocked);
        // SAFETY: `set` is an initialised sigset_t that outlives the call.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(SignalError::Block(io::Error::from_raw_os_error(rc)));
        }
        let fd = signalfd(TERMINATING).map_err(SignalError::Block)?;
        Ok(Self { fd })
    }

    /// Takes the next waiting signal, if any (never blocks).
    pub fn read(&self) -> Option<i32> {
        read_signal(self.fd.as_raw_fd())
    }
}

/// A non-blocking signalfd for `signals`, which the caller has blocked.
pub fn signalfd(signals: &[i32]) -> io::Result<OwnedFd> {
    let set = signal_set(signals);
    // SAFETY: `set` is an initialised sigset_t that outlives the call; the
    // result is checked before use.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes the next signal waiting on the signalfd `fd`, if any.
pub fn read_signal(fd: RawFd) -> Option<i32> {
    let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::uninit();
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: `info` is a buffer of exactly `size` bytes; we read it only
    // when the kernel filled all of it.
    let n = unsafe { libc::read(fd, info.as_mut_ptr().cast(), size) };
    if usize::try_from(n).ok() != Some(size) {
        return None;
    }
    // SAFETY: the kernel wrote a whole signalfd_siginfo above.
    let info = unsafe { info.assume_init() };
    i32::try_from(info.ssi_signo).ok()
}

impl AsRawFd for TerminationSignals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// A blocked terminating signal waiting for the process, left waiting (the
/// run loop or `main` takes it).
pub fn pending() -> Option<i32> {
    // SAFETY: `set` is written by sigpending before it is read, and every
    // call only reads or writes that local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        if libc::sigpending(&mut set) != 0 {
            return None;
        }
        TERMINATING
            .iter()
            .copied()
            .find(|&signo| libc::sigismember(&set, signo) == 1)
    }
}

fn signal_set(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set before sigaddset
    // changes it; both only touch the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signo in signals {
            libc::sigaddset(&mut set, signo);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mask is per thread, so the test blocks the signals on a thread
    /// of its own and sends SIGTERM to that thread only.
    #[test]
    fn a_blocked_signal_waits_until_it_is_read() {
        std::thread::spawn(|| {
            let signals = TerminationSignals::block().unwrap();
            assert_eq!(pending(), None);
            assert_eq!(signals.read(), None);
            // SAFETY: signals this thread, which blocks SIGTERM.
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
            assert_eq!(rc, 0);
            assert_eq!(pending(), Some(libc::SIGTERM));
            assert_eq!(signals.read(), Some(libc::SIGTERM));
            assert_eq!(pending(), None);
            // SIGWINCH waits too, for its own signalfd, not this one.
            let resize = signalfd(&[libc::SIGWINCH]).unwrap();
            // SAFETY: as above.
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGWINCH) };
            assert_eq!(rc, 0);
            assert_eq!(signals.read(), None);
            assert_eq!(read_signal(resize.as_raw_fd()), Some(libc::SIGWINCH));
        })
        .join()
        .unwrap();
    }

    /// Threads started after `block` inherit the mask.
    #[test]
    fn threads_started_after_block_inherit_the_mask() {
        std::thread::spawn(|| {
            let _signals = TerminationSignals::block().unwrap();
            std::thread::spawn(|| {
                // SAFETY: reads this thread's mask into a local set.
                let blocked = unsafe {
                    let mut set: libc::sigset_t = std::mem::zeroed();
                    libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut set);
                    libc::sigismember(&set, libc::SIGTERM) == 1
                        && libc::sigismember(&set, libc::SIGINT) == 1
                        && libc::sigismember(&set, libc::SIGWINCH) == 1
                };
                assert!(blocked);
            })
            .join()
            .unwrap();
        })
        .join()
        .unwrap();
    }
}
