//! The host's own sha256, from coreutils: independent of the probe's
//! implementation, which is what the guest's hashes are checked against.

use std::io::Write;
use std::process::{Command, Stdio};

/// The sha256 of `bytes` as lowercase hex, from `sha256sum`.
pub fn sha256_hex(bytes: &[u8]) -> Result<String, String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running sha256sum: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("sha256sum has no stdin")?;
    // Written from a thread: sha256sum's output is one line, so only our
    // write could block, and then only until it reads.
    let input = bytes.to_vec();
    let writer = std::thread::Builder::new()
        .name("sha256sum-input".into())
        .spawn(move || stdin.write_all(&input))
        .map_err(|e| format!("starting the sha256sum writer: {e}"))?;
    let output = child
        .wait_with_output()
        .map_err(|e| format!("waiting for sha256sum: {e}"))?;
    writer
        .join()
        .map_err(|_| "the sha256sum writer panicked".to_string())?
        .map_err(|e| format!("writing to sha256sum: {e}"))?;
    if !output.status.success() {
        return Err(format!("sha256sum failed: {}", output.status));
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "sha256sum printed nothing".to_string())
}

/// The sha256 of the file at `path`, from `sha256sum`.
pub fn sha256_file(path: &std::path::Path) -> Result<String, String> {
    let output = Command::new("sha256sum")
        .arg(path)
        .output()
        .map_err(|e| format!("running sha256sum: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "sha256sum {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .map(str::to_string)
        .ok_or_else(|| "sha256sum printed nothing".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_digests() {
        assert_eq!(
            sha256_hex(b"").unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
