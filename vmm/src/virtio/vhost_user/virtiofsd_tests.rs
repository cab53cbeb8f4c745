//! The device against the real virtiofsd: negotiation, the config window,
//! activation with rings in guest memory, reset, and reconnection to a
//! restarted virtiofsd. Skipped, loudly, where virtiofsd is not installed.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use super::tests::{guest_memory, Rings};
use super::*;

fn find_virtiofsd() -> Option<PathBuf> {
    let mut candidates: Vec<PathBuf> = std::env::var_os("VIRTIOFSD")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(Path::new(&home).join(".cargo/bin/virtiofsd"));
    }
    candidates.extend(
        [
            "/usr/libexec/virtiofsd",
            "/usr/lib/qemu/virtiofsd",
            "/usr/bin/virtiofsd",
        ]
        .map(PathBuf::from),
    );
    candidates.into_iter().find(|p| p.is_file())
}

/// One virtiofsd, killed (by its pid) and reaped on drop; its log is
/// printed if the test failed.
struct Virtiofsd {
    child: Child,
    log: PathBuf,
}

impl Virtiofsd {
    fn start(binary: &Path, dir: &Path, socket: &Path, n: usize) -> Virtiofsd {
        let _ = std::fs::remove_file(socket);
        let shared = dir.join("share");
        std::fs::create_dir_all(&shared).unwrap();
        let log = dir.join(format!("virtiofsd{n}.log"));
        let child = Command::new(binary)
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", shared.display()))
            .args(["--tag=myfs", "--sandbox=none"])
            .stdout(Stdio::null())
            .stderr(File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Virtiofsd { child, log }
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- virtiofsd log ---\n{log}--- end ---");
        }
    }
}

#[test]
fn real_virtiofsd_negotiates_serves_its_tag_and_survives_a_restart() {
    let Some(binary) = find_virtiofsd() else {
        eprintln!(
            "\n*** SKIPPED real_virtiofsd_negotiates_serves_its_tag_and_survives_a_restart: \
             virtiofsd not found (set VIRTIOFSD, or `cargo install virtiofsd`) ***\n"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("fs.sock");
    let mut backend = Virtiofsd::start(&binary, dir.path(), &socket, 0);

    let memory = guest_memory(64 << 20, true);
    let params = VhostUserParams {
        id: "fs0".into(),
        socket: socket.clone(),
        device_type: "fs".parse().unwrap(),
        queue_sizes: vec![256, 256],
        config_len: 40,
        config_len_by_features: false,
        config: None,
    };
    let mut dev = GenericVhostUser::new(params, &memory).unwrap();
    assert!(
        dev.negotiated
            .protocol
            .contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ),
        "{:?}",
        dev.negotiated.protocol
    );
    let features = dev.features();
    assert_ne!(features & VIRTIO_F_VERSION_1, 0);
    assert_eq!(features & VHOST_USER_F_PROTOCOL_FEATURES, 0);

    let read_window = |dev: &mut GenericVhostUser| {
        let mut window = vec![0u8; dev.config_len() as usize];
        for (i, chunk) in window.chunks_mut(4).enumerate() {
            dev.read_config(4 * i as u32, chunk).unwrap();
        }
        window
    };
    let window = read_window(&mut dev);
    assert_eq!(window.len(), 40);
    assert!(window.starts_with(b"myfs\0"), "{window:?}");
    assert_eq!(&window[36..40], &1u32.to_le_bytes(), "one request queue");

    let rings = Rings::with_size(2, 256);
    dev.activate(rings.context(&dev, features, 2)).unwrap();
    dev.reset().unwrap();
    dev.activate(rings.context(&dev, features, 2)).unwrap();
    dev.reset().unwrap();

    // virtiofsd restarted behind our back: reset reconnects to the new one.
    drop(backend);
    backend = Virtiofsd::start(&binary, dir.path(), &socket, 1);
    dev.reset().unwrap();
    assert!(read_window(&mut dev).starts_with(b"myfs\0"));
    dev.activate(rings.context(&dev, features, 2)).unwrap();
    drop(dev);
    drop(backend);
}
