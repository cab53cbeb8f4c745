//! Where the project's artifacts are: the workspace root, `vmm`, the probe
//! guest. Environment variables override each, for other projects' CI.

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The newest modification time of the files under `dir`, but `ignored`.
fn newest_mtime(dir: &Path, ignored: &[PathBuf]) -> Option<std::time::SystemTime> {
    let mut newest = None;
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let mtime = if ignored.contains(&path) {
            None
        } else if path.is_dir() {
            newest_mtime(&path, ignored)
        } else {
            entry.metadata().ok()?.modified().ok()
        };
        newest = newest.max(mtime);
    }
    newest
}

/// An artifact built from `sources` (less `ignored`: files under them that
/// it is not built from), or an explanation of why it cannot be used.
pub(crate) fn built_artifact(
    env_var: &str,
    default: PathBuf,
    sources: &[&str],
    ignored: &[&str],
    build: &str,
) -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(path));
    }
    let built = std::fs::metadata(&default)
        .and_then(|m| m.modified())
        .map_err(|_| {
            format!(
                "{} is missing: run `{build}` (or set {env_var})",
                default.display()
            )
        })?;
    let root = workspace_root();
    let ignored: Vec<PathBuf> = ignored.iter().map(|i| root.join(i)).collect();
    for source in sources {
        if newest_mtime(&root.join(source), &ignored).is_some_and(|m| m > built) {
            return Err(format!(
                "{} is older than {source}: run `{build}` (or set {env_var})",
                default.display()
            ));
        }
    }
    Ok(default)
}

/// The `vmm` binary under test (`VMM_BIN` overrides).
pub fn vmm_binary() -> Result<PathBuf, String> {
    built_artifact(
        "VMM_BIN",
        workspace_root().join("target/release/vmm"),
        &["vmm/src", "vmm/Cargo.toml"],
        &[],
        "cargo build --release -p vmm",
    )
}

/// The probe guest ELF (`PROBE_GUEST` overrides).
pub fn probe_guest() -> Result<PathBuf, String> {
    built_artifact(
        "PROBE_GUEST",
        workspace_root().join("target/probe-guest.elf"),
        &["test-infra/probe-guest/src"],
        &[],
        "ci/build-probe-guest",
    )
}

/// The conformance runner (`VHOST_USER_CONFORMANCE` overrides).
pub fn conformance_binary() -> Result<PathBuf, String> {
    built_artifact(
        "VHOST_USER_CONFORMANCE",
        workspace_root().join("target/release/vhost-user-conformance"),
        &["test-infra/src"],
        // cargo does not relink the runner when only the bench changed.
        &["test-infra/src/bin/bench.rs"],
        "cargo build --release -p test-infra",
    )
}

/// A program on PATH or in ~/.cargo/bin.
pub fn find_program(name: &str) -> Option<PathBuf> {
    let cargo_bin = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin"));
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain(cargo_bin)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}
