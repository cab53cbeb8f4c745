//! Child processes of a test: each in its own process group, its output
//! captured to files in the test's directory, waited for with a deadline,
//! and killed (only it and its group) when dropped.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Failed to create log file {path}")]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to start {name}")]
    Spawn {
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("Failed to wait for {name}")]
    Wait {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a finished (or timed-out) child left behind.
#[derive(Debug, Clone)]
pub struct Output {
    pub name: String,
    /// None when it was killed at the deadline.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Output {
    pub fn timed_out(&self) -> bool {
        self.status.is_none()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    /// Everything a person needs when a test fails.
    pub fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => format!("killed after {:?} (deadline)", self.elapsed),
        };
        format!(
            "--- {name}: {status}\n--- {name} stdout:\n{}\n--- {name} stderr:\n{}\n--- end of {name}",
            self.stdout,
            self.stderr,
            name = self.name
        )
    }
}

pub struct Child {
    name: String,
    child: std::process::Child,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    started: Instant,
}

impl Child {
    /// Starts `command` with stdout and stderr going to `dir/NAME.out` and
    /// `dir/NAME.err`, stdin from /dev/null.
    pub fn spawn(name: &str, command: Command, dir: &Path) -> Result<Child, RunError> {
        Child::spawn_with_stdin(name, command, dir, Stdio::null())
    }

    /// As `spawn`, with stdin a pipe the test writes through
    /// (`take_stdin`): a console whose input is the VMM's stdin.
    pub fn spawn_piped(name: &str, command: Command, dir: &Path) -> Result<Child, RunError> {
        Child::spawn_with_stdin(name, command, dir, Stdio::piped())
    }

    fn spawn_with_stdin(
        name: &str,
        mut command: Command,
        dir: &Path,
        stdin: Stdio,
    ) -> Result<Child, RunError> {
        let create = |suffix: &str| {
            let path = dir.join(format!("{name}.{suffix}"));
            File::create(&path)
                .map(|f| (f, path.clone()))
                .map_err(|source| RunError::Log { path, source })
        };
        if crate::reaper::stopping() {
            return Err(RunError::Spawn {
                name: name.to_string(),
                source: std::io::Error::other("the program is being stopped by a signal"),
            });
        }
        let (out, stdout_path) = create("out")?;
        let (err, stderr_path) = create("err")?;
        command
            .stdin(stdin)
            .stdout(out)
            .stderr(err)
            .process_group(0);
        let child = command.spawn().map_err(|source| RunError::Spawn {
            name: name.to_string(),
            source,
        })?;
        Ok(Child {
            name: name.to_string(),
            child,
            stdout_path,
            stderr_path,
            started: Instant::now(),
        })
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The write end of stdin, once, if it was spawned with `spawn_piped`;
    /// dropping it gives the child end-of-file.
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.stdin.take()
    }

    /// Whether the child has exited (without reaping it for good: `wait`
    /// still reports its status).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }

    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stderr_path).unwrap_or_default()).into_owned()
    }

    /// Polls until `ready` holds or the deadline passes; false on timeout
    /// or if the child exited first.
    pub fn wait_until(&mut self, timeout: Duration, mut ready: impl FnMut(&Child) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if ready(self) {
                return true;
            }
            if let Ok(Some(_)) = self.child.try_wait() {
                return ready(self);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// How the child ended, if it has (never waits).
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Signals the whole process group (the child and anything it started).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill() with a negative pid addresses the process group we
        // created for this child; it does not touch memory.
        unsafe {
            libc::kill(-(self.child.id() as i32), signal);
        }
    }

    /// Waits up to `timeout`; at the deadline the group is killed.
    pub fn wait(mut self, timeout: Duration) -> Result<Output, RunError> {
        let status = self
            .child
            .wait_timeout(timeout)
            .map_err(|source| RunError::Wait {
                name: self.name.clone(),
                source,
            })?;
        if status.is_none() {
            self.kill();
        }
        Ok(Output {
            name: self.name.clone(),
            status,
            stdout: self.stdout_so_far(),
            stderr: self.stderr_so_far(),
            elapsed: self.started.elapsed(),
        })
    }

    fn kill(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}
