//! Small C helpers for the Linux tier, built static with the installed C
//! compiler so that they run as they are in L1 and in a guest, where no
//! C library of the host is.

use std::path::Path;

/// The L1 and guest side of a vsock connection (the conformance runner).
pub const VSOCK_ECHO: &str = include_str!("c/vsock-echo.c");
/// A program on a pseudo-terminal that is resized on cue.
pub const PTY_RUN: &str = include_str!("c/pty-run.c");
/// A client of vmm's API socket, for an L1 without curl.
pub const API_REQUEST: &str = include_str!("c/api-request.c");
/// Runs a VMM and times its guest's output, with its peak RSS (bench).
pub const STAMP_RUN: &str = include_str!("c/stamp-run.c");
/// An alarm set through `/dev/rtc0`, waited for.
pub const RTC_ALARM: &str = include_str!("c/rtc-alarm.c");

/// `source` built as `dir/name`, once; its bytes.
pub fn build(name: &str, source: &str, dir: &Path) -> Result<Vec<u8>, String> {
    let src = dir.join(format!("{name}.c"));
    let bin = dir.join(name);
    if !bin.exists() {
        std::fs::write(&src, source).map_err(|e| format!("{}: {e}", src.display()))?;
        let out = std::process::Command::new("cc")
            .args(["-static", "-O2", "-o"])
            .arg(&bin)
            .arg(&src)
            .output()
            .map_err(|e| format!("cc: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "building {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    std::fs::read(&bin).map_err(|e| format!("{}: {e}", bin.display()))
}
