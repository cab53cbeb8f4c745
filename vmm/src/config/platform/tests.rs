//! The platform's limits on whole configurations.

use super::super::*;
use super::*;

fn config() -> VmConfig {
    VmConfig {
        cpus: CpusConfig { boot: 1 },
        memory: MemoryConfig {
            size: 512 << 20,
            shared: true,
            hugepages: false,
            thp: true,
        },
        payload: PayloadConfig {
            kernel: "/k".into(),
            initramfs: None,
            cmdline: String::new(),
        },
        serial: ConsoleOutput::Null,
        console: ConsoleOutput::Off,
        generic_vhost_user: Vec::new(),
        disks: Vec::new(),
    }
}

fn generic(index: usize, queues: usize) -> GenericVhostUserConfig {
    GenericVhostUserConfig {
        id: format!("_generic_vhost_user{index}"),
        socket: format!("/run/backend{index}.sock").into(),
        device_type: VirtioDeviceType::new(60).unwrap(),
        queue_sizes: vec![256; queues],
        config_size: None,
        config: None,
    }
}

fn vhost_user_disk(id: &str, socket: &str) -> DiskConfig {
    DiskConfig {
        id: id.into(),
        num_queues: 1,
        queue_size: 128,
        backend: DiskBackend::VhostUser {
            socket: socket.into(),
        },
    }
}

fn with_generic(count: usize, queues: usize) -> VmConfig {
    let mut config = config();
    config.generic_vhost_user = (0..count).map(|i| generic(i, queues)).collect();
    config
}

#[test]
fn thirty_one_devices_fit_thirty_two_do_not() {
    with_generic(MAX_PCI_DEVICES, 2)
        .validate_platform()
        .unwrap();
    let err = with_generic(MAX_PCI_DEVICES + 1, 2)
        .validate_platform()
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "32 virtio-pci devices (32 from --generic-vhost-user): expected at most 31, the free slots of PCI bus 0"
    );
}

#[test]
fn the_console_and_disks_take_slots_too() {
    let mut config = with_generic(29, 2);
    config.console = ConsoleOutput::Null;
    config.disks = vec![vhost_user_disk("_disk0", "/run/disk0.sock")];
    config.validate_platform().unwrap();
    config
        .disks
        .push(vhost_user_disk("_disk1", "/run/disk1.sock"));
    let err = config.validate_platform().unwrap_err();
    assert!(
        err.to_string().contains(
            "32 virtio-pci devices (29 from --generic-vhost-user, 2 from --disk, 1 from --console)"
        ),
        "{err}"
    );
}

#[test]
fn msi_vectors_are_counted_per_queue_and_device() {
    // 15 devices of 64 queues: 15 * 65 = 975 vectors; 16 need 1040.
    with_generic(15, 64).validate_platform().unwrap();
    let err = with_generic(16, 64).validate_platform().unwrap_err();
    assert!(
        matches!(err, PlatformError::TooManyVectors { count: 1040 }),
        "{err}"
    );
    assert!(err.to_string().contains("expected at most 1000"), "{err}");
}

#[test]
fn socket_paths_must_fit_sun_path() {
    let mut config = with_generic(1, 2);
    let fits = format!("/{}", "s".repeat(MAX_SOCKET_PATH_LEN - 1));
    config.generic_vhost_user[0].socket = fits.into();
    config.validate_platform().unwrap();
    let long = format!("/{}", "s".repeat(MAX_SOCKET_PATH_LEN));
    config.generic_vhost_user[0].socket = long.into();
    let err = config.validate_platform().unwrap_err();
    assert!(
        matches!(err, PlatformError::SocketPathTooLong { len: 108, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("expected at most 107"), "{err}");
}

#[test]
fn two_devices_on_one_socket_are_refused() {
    let mut config = with_generic(2, 2);
    config.generic_vhost_user[1].socket = config.generic_vhost_user[0].socket.clone();
    let err = config.validate_platform().unwrap_err();
    assert_eq!(
        err.to_string(),
        "device \"_generic_vhost_user1\" uses socket \"/run/backend0.sock\", as device \"_generic_vhost_user0\" does: expected one device per backend socket"
    );
    // Across options too, and however the path is spelled.
    let mut config = with_generic(1, 2);
    config.disks = vec![vhost_user_disk("root", "/run//backend0.sock")];
    let err = config.validate_platform().unwrap_err();
    assert!(
        matches!(
            err,
            PlatformError::DuplicateSocket {
                kind: DeviceKind::Disk,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn the_command_line_must_fit_and_be_printable_ascii() {
    let mut config = config();
    config.payload.cmdline = format!("  {}\n", "a".repeat(MAX_CMDLINE_LEN));
    config.validate_platform().unwrap();
    config.payload.cmdline = "a".repeat(MAX_CMDLINE_LEN + 1);
    let err = config.validate_platform().unwrap_err();
    assert_eq!(
        err.to_string(),
        "2048 bytes long: expected at most 2047 (Linux's COMMAND_LINE_SIZE less the NUL)"
    );
    for (cmdline, offset, character) in [
        ("console=ttyS0\tquiet", 13, '\t'),
        ("a=\u{e9}", 2, '\u{e9}'),
        ("x\u{1b}[31m", 1, '\u{1b}'),
    ] {
        config.payload.cmdline = cmdline.into();
        let err = config.validate_platform().unwrap_err();
        assert!(
            matches!(err, PlatformError::CmdlineNotAscii { character: c, offset: o } if c == character && o == offset),
            "{cmdline:?}: {err}"
        );
    }
    // The escape byte is shown escaped, never raw.
    assert!(!err_text("x\u{1b}[31m").contains('\u{1b}'));
}

fn err_text(cmdline: &str) -> String {
    let mut config = config();
    config.payload.cmdline = cmdline.into();
    config.validate_platform().unwrap_err().to_string()
}
