//! Nothing a program of the harness started outlives it. [`install`], the
//! first line of such a program's `main`, makes it the subreaper of every
//! process started later (so a backend that daemonizes, or a backend's own
//! child whose parent died, is reparented to it and still found) and moves
//! SIGINT, SIGTERM, SIGHUP and SIGQUIT to a thread that, like the normal
//! end ([`end`]), kills every process left under it and removes the
//! scratch directories registered with [`remove_at_end`].

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The signals that end the program, with everything it started.
const ENDING: &[i32] = &[libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT];

static SCRATCH: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// A signal came: the reaper thread ends the program, no one else.
static STOPPING: AtomicBool = AtomicBool::new(false);

/// Call before any other thread starts (threads started earlier would
/// keep the signals' default action). `on_signal` runs on the signal's
/// thread before the cleanup (a progress line, say).
pub fn install(on_signal: fn(i32)) -> io::Result<()> {
    // SAFETY: prctl with PR_SET_CHILD_SUBREAPER takes an integer flag and
    // touches no memory of ours; the result is checked.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let set = signal_set();
    // SAFETY: `set` is an initialised sigset_t that outlives the call.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || {
            let mut signo: libc::c_int = 0;
            // SAFETY: sigwait reads the set and writes one int, both ours
            // and alive for the call.
            if unsafe { libc::sigwait(&set, &mut signo) } != 0 {
                return;
            }
            STOPPING.store(true, Ordering::SeqCst);
            on_signal(signo);
            end();
            // SAFETY: _exit ends the process at once, without the exit
            // handlers that could race the other threads still running.
            unsafe { libc::_exit(128 + signo) }
        })?;
    Ok(())
}

/// Removes `path` (a directory of ours) when the program ends by a signal
/// or calls [`end`]; its usual owner may remove it first.
pub fn remove_at_end(path: &Path) {
    if let Ok(mut scratch) = SCRATCH.lock() {
        scratch.push(path.to_path_buf());
    }
}

/// Ends the program with `code` after [`end`]; when a signal is already
/// ending it, waits for that instead, so that the status says the signal
/// (a child killed by the cleanup must not read as the run's failure).
pub fn exit(code: i32) -> ! {
    if !STOPPING.load(Ordering::SeqCst) {
        end();
        if !STOPPING.load(Ordering::SeqCst) {
            std::process::exit(code);
        }
    }
    loop {
        std::thread::park();
    }
}

/// Whether a signal is ending the program: its output is no report.
pub fn stopping() -> bool {
    STOPPING.load(Ordering::SeqCst)
}

/// Kills every process still under this one (children, their process
/// groups, and whatever was reparented here) and removes the registered
/// directories. Safe to call more than once.
pub fn end() {
    kill_descendants();
    let dirs = SCRATCH
        .lock()
        .map(|mut s| std::mem::take(&mut *s))
        .unwrap_or_default();
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Until none is left (a killed child's orphans come back to us as the
/// subreaper), three looks in a row: SIGKILL to each child and its
/// process group, then reap. (A spawn already under way when a signal
/// came ends within the looks; `Child::spawn` starts none after it.)
fn kill_descendants() {
    let me = std::process::id();
    let mut quiet = 0;
    for _ in 0..300 {
        let children = children_of(me);
        if children.is_empty() {
            quiet += 1;
            if quiet == 3 {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        quiet = 0;
        for pid in children {
            // SAFETY: kill() addresses a process (and the group it leads)
            // that is our child; it touches no memory.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        // SAFETY: waitpid with WNOHANG reaps any exited child of ours
        // without blocking; the status pointer may be null.
        while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The processes whose parent is `parent`, from /proc.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// The parent pid in /proc/PID/stat ("pid (comm) state ppid ...", where
/// comm may hold spaces and parentheses).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset initialises the zeroed set before sigaddset
    // changes it; both only touch the local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &signo in ENDING {
            libc::sigaddset(&mut set, signo);
        }
        set
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_parent_is_read_past_any_command_name() {
        let me = std::process::id();
        // sleep itself (not under a shell, whose own child would outlive
        // the kill below and hold the test's output open).
        let child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert_eq!(parent_of(child.id()), Some(me));
        assert!(children_of(me).contains(&child.id()));
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(parent_of(std::process::id()), Some(our_parent()));
    }

    fn our_parent() -> u32 {
        // SAFETY: getppid has no preconditions and touches no memory.
        (unsafe { libc::getppid() }) as u32
    }
}
