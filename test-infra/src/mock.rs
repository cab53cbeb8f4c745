//! The in-tree mock backend (`vhost-user-mock`, crate test-backends) as a
//! test fixture: its socket and log inside the test's directory, started
//! with the options a test chooses, killed on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::guest::quote;
use crate::paths;
use crate::process::{Child, Output};

/// How long the mock may take to listen.
const READY_DEADLINE: Duration = Duration::from_secs(60);

/// The mock binary (`VHOST_USER_MOCK` overrides).
pub fn mock_binary() -> Result<PathBuf, String> {
    paths::built_artifact(
        "VHOST_USER_MOCK",
        paths::workspace_root().join("target/release/vhost-user-mock"),
        &["test-backends/src", "test-backends/Cargo.toml"],
        &[],
        "cargo build --release -p test-backends",
    )
}

/// What the mock is started with; see `vhost-user-mock --help`.
#[derive(Debug, Clone)]
pub struct MockOptions {
    name: String,
    args: Vec<String>,
}

impl MockOptions {
    /// `name` names the socket and log files, unique within a test.
    pub fn new(name: &str) -> MockOptions {
        MockOptions {
            name: name.to_string(),
            args: Vec::new(),
        }
    }

    fn flag(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push(flag.to_string());
        self.args.push(value.to_string());
        self
    }

    pub fn queues(self, n: u32) -> Self {
        self.flag("--queues", n)
    }

    pub fn queue_max(self, n: u32) -> Self {
        self.flag("--queue-max", n)
    }

    pub fn features(self, bits: u64) -> Self {
        self.flag("--features", format!("{bits:#x}"))
    }

    pub fn config(self, bytes: &[u8]) -> Self {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        self.flag("--config", hex)
    }

    pub fn writable(self, start: u32, end: u32) -> Self {
        self.flag("--writable", format!("{start}..{end}"))
    }

    /// `WHEN:WHAT`, e.g. `GET_CONFIG#2:error` or `buffer#3:close`.
    pub fn fault(self, spec: &str) -> Self {
        self.flag("--fault", spec)
    }

    pub fn no_mq(mut self) -> Self {
        self.args.push("--no-mq".into());
        self
    }

    pub fn no_config(mut self) -> Self {
        self.args.push("--no-config".into());
        self
    }

    /// Answer GET_CONFIG from offset 0 whatever offset is asked, as
    /// QEMU's libvhost-user does.
    pub fn config_ignores_offset(mut self) -> Self {
        self.args.push("--config-ignores-offset".into());
        self
    }

    /// Withholds VHOST_USER_PROTOCOL_F_DEVICE_STATE: the backend's own
    /// state cannot be saved.
    pub fn no_device_state(mut self) -> Self {
        self.args.push("--no-device-state".into());
        self
    }

    /// Fails CHECK_DEVICE_STATE after loading a state.
    pub fn refuse_state_load(mut self) -> Self {
        self.args.push("--refuse-state-load".into());
        self
    }

    pub fn no_reply_ack(mut self) -> Self {
        self.args.push("--no-reply-ack".into());
        self
    }

    /// Listen again after a connection ends, as a restarted backend would.
    pub fn relisten(mut self) -> Self {
        self.args.push("--relisten".into());
        self
    }

    /// Starts the mock in `dir` and waits until it listens.
    pub fn start(&self, dir: &Path) -> Result<MockBackend, String> {
        let socket = dir.join(format!("{}.sock", self.name));
        let ready = dir.join(format!("{}.ready", self.name));
        let log = dir.join(format!("{}.log", self.name));
        let _ = std::fs::remove_file(&ready);
        let mut command = Command::new(mock_binary()?);
        command
            .arg("--socket")
            .arg(&socket)
            .arg("--ready-file")
            .arg(&ready)
            .arg("--log-file")
            .arg(&log)
            .arg("-v")
            .args(&self.args);
        let mut child = Child::spawn(&format!("mock-{}", self.name), command, dir)
            .map_err(|e| e.to_string())?;
        if !child.wait_until(READY_DEADLINE, |_| ready.exists()) {
            return Err(format!(
                "vhost-user-mock {} did not listen within {READY_DEADLINE:?}\n{}\n{}",
                self.name,
                child.stderr_so_far(),
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
        Ok(MockBackend {
            child: Some(child),
            socket,
            log,
        })
    }
}

pub struct MockBackend {
    child: Option<Child>,
    socket: PathBuf,
    log: PathBuf,
}

impl MockBackend {
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The `--generic-vhost-user` value for this backend.
    pub fn device(&self, virtio_id: &str, queue_sizes: &[u32]) -> String {
        let sizes: Vec<String> = queue_sizes.iter().map(u32::to_string).collect();
        format!(
            "socket={},virtio_id={virtio_id},queue_sizes=[{}]",
            quote(&self.socket.to_string_lossy()),
            sizes.join(",")
        )
    }

    /// The mock's log so far (its log file and anything on stderr).
    pub fn log(&self) -> String {
        let mut log = std::fs::read_to_string(&self.log).unwrap_or_default();
        if let Some(child) = &self.child {
            log.push_str(&child.stderr_so_far());
        }
        log
    }

    /// The faults that fired, as logged (`fault: SPEC fired on REQ #N`).
    pub fn faults_fired(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter_map(|l| l.find("fault:").map(|i| l[i..].to_string()))
            .collect()
    }

    /// Waits for the mock to exit (it does when its only connection ends)
    /// and returns its output; killed after `timeout`.
    pub fn finish(mut self, timeout: Duration) -> Option<Output> {
        self.child.take().and_then(|c| c.wait(timeout).ok())
    }
}
