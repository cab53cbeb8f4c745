//! Real virtiofsd as a test fixture: one per VM (it exits when its client
//! disconnects), with its own shared directory and socket inside the test's
//! temporary directory, killed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::paths;
use crate::process::{Child, Output};

/// How long virtiofsd may take to create its socket.
const SOCKET_DEADLINE: Duration = Duration::from_secs(60);

/// `VIRTIOFSD`, else virtiofsd on PATH or in ~/.cargo/bin, else installed
/// from crates.io into `paths::tools_root()` (it pins an older vm-memory than ours:
/// a separate binary, never a dependency).
pub fn virtiofsd_binary() -> Result<PathBuf, String> {
    paths::find_or_install("VIRTIOFSD", "virtiofsd", "virtiofsd")
}

pub struct Virtiofsd {
    child: Option<Child>,
    socket: PathBuf,
    shared_dir: PathBuf,
    tag: String,
}

impl Virtiofsd {
    /// Starts virtiofsd sharing `dir/share-TAG` (created empty if missing)
    /// on `dir/TAG.sock`, and waits until the socket exists.
    pub fn start(dir: &Path, tag: &str) -> Result<Virtiofsd, String> {
        let shared_dir = dir.join(format!("share-{tag}"));
        std::fs::create_dir_all(&shared_dir)
            .map_err(|e| format!("creating {}: {e}", shared_dir.display()))?;
        Self::start_sharing(dir, tag, &shared_dir)
    }

    /// Starts virtiofsd sharing an existing directory.
    pub fn start_sharing(dir: &Path, tag: &str, shared_dir: &Path) -> Result<Virtiofsd, String> {
        Self::start_with(dir, tag, shared_dir, &[])
    }

    /// As `start_sharing`, with `--migration-mode=find-paths`: it saves
    /// and loads its state (the guest's open files, by path) through
    /// vhost-user's DEVICE_STATE, for snapshots.
    pub fn start_migratable(dir: &Path, tag: &str, shared_dir: &Path) -> Result<Virtiofsd, String> {
        Self::start_with(dir, tag, shared_dir, &["--migration-mode=find-paths"])
    }

    fn start_with(
        dir: &Path,
        tag: &str,
        shared_dir: &Path,
        extra: &[&str],
    ) -> Result<Virtiofsd, String> {
        let socket = dir.join(format!("{tag}.sock"));
        // A stale socket from an earlier run would make virtiofsd fail.
        let _ = std::fs::remove_file(&socket);
        let mut command = Command::new(virtiofsd_binary()?);
        command
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", shared_dir.display()))
            .arg(format!("--tag={tag}"))
            .args(["--sandbox=none", "--cache=never", "--log-level=info"])
            .args(extra);
        let mut child =
            Child::spawn(&format!("virtiofsd-{tag}"), command, dir).map_err(|e| e.to_string())?;
        if !child.wait_until(SOCKET_DEADLINE, |_| socket.exists()) {
            return Err(format!(
                "virtiofsd did not create {} within {SOCKET_DEADLINE:?}\n{}",
                socket.display(),
                child.stderr_so_far()
            ));
        }
        Ok(Virtiofsd {
            child: Some(child),
            socket,
            shared_dir: shared_dir.to_path_buf(),
            tag: tag.to_string(),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn shared_dir(&self) -> &Path {
        &self.shared_dir
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The log so far, for failure messages.
    pub fn log(&self) -> String {
        self.child
            .as_ref()
            .map(Child::stderr_so_far)
            .unwrap_or_default()
    }

    /// Waits for virtiofsd to exit (it does when its VMM disconnects) and
    /// returns its output; killed after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Option<Output> {
        self.child.take().and_then(|c| c.wait(timeout).ok())
    }
}
