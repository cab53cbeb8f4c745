//! Cloud Hypervisor's JSON in and out: defaults, round trips, and errors
//! that name the JSON path of what is wrong.

use rstest::rstest;

use super::*;

fn created(body: &str) -> VmConfig {
    VmConfig::from_json(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"))
}

fn refused(body: &str) -> String {
    match VmConfig::from_json(body.as_bytes()) {
        Ok(config) => panic!("{body} was taken: {config:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_payload_alone_gets_cloud_hypervisors_defaults() {
    let config = created(r#"{"payload":{"kernel":"/k"}}"#);
    assert_eq!(config.cpus.boot, 1);
    assert_eq!(config.memory.size, DEFAULT_MEMORY_SIZE);
    assert!(!config.memory.shared);
    assert_eq!(config.payload.kernel, PathBuf::from("/k"));
    assert_eq!(config.payload.cmdline, "");
    assert_eq!(config.serial, ConsoleOutput::Null);
    assert_eq!(config.console, ConsoleOutput::Tty);
    assert!(config.disks.is_empty() && config.generic_vhost_user.is_empty());
}

#[test]
fn devices_get_ids_and_defaults_as_on_the_command_line() {
    let config = created(
        r#"{"payload":{"kernel":"/k","cmdline":"console=hvc0"},
            "memory":{"size":1073741824,"shared":true},
            "cpus":{"boot_vcpus":2,"max_vcpus":2},
            "disks":[{"path":"/a.img"},{"vhost_user":true,"vhost_socket":"/b.sock","id":"b"}],
            "generic_vhost_user":[{"socket":"/fs.sock","device_type":26,"queue_sizes":[512,512]}],
            "serial":{"mode":"File","file":"/s.log"},"console":{"mode":"Off"}}"#,
    );
    assert_eq!(config.cpus.boot, 2);
    assert_eq!(config.disks[0].id, "_disk0");
    assert_eq!(config.disks[0].queue_size, DEFAULT_DISK_QUEUE_SIZE);
    assert_eq!(config.disks[0].num_queues, DEFAULT_DISK_QUEUES);
    assert_eq!(
        config.disks[1].backend,
        DiskBackend::VhostUser {
            socket: "/b.sock".into()
        }
    );
    let fs = &config.generic_vhost_user[0];
    assert_eq!(fs.id, "_generic_vhost_user0");
    assert_eq!(fs.device_type.id(), 26);
    assert_eq!(config.serial, ConsoleOutput::File("/s.log".into()));
    assert_eq!(config.console, ConsoleOutput::Off);
}

#[test]
fn what_vm_info_answers_vm_create_takes_back_unchanged() {
    let config = created(
        r#"{"payload":{"kernel":"/k","initramfs":"/i","cmdline":"quiet"},
            "memory":{"size":536870912,"shared":true,"hugepages":false},
            "disks":[{"path":"/a.img","readonly":true,"direct":true,"num_queues":2,
                      "queue_size":64,"serial":"s1","image_type":"Raw","id":"root"}],
            "generic_vhost_user":[{"socket":"/x.sock","virtio_id":60,"queue_sizes":[8],
                                   "config_size":8,"config":"0a0B"}],
            "serial":{"mode":"Pty"},"console":{"mode":"Null"}}"#,
    );
    assert_eq!(config.generic_vhost_user[0].config, Some(vec![0x0a, 0x0b]));
    let json = serde_json::to_string(&VmConfigJson::from(&config)).unwrap();
    assert_eq!(created(&json), config, "{json}");
}

#[rstest]
#[case::not_json("{", "the body is not a VmConfig: EOF")]
#[case::no_payload("{}", "the body is not a VmConfig: missing field `payload`")]
#[case::no_kernel(r#"{"payload":{}}"#, "payload.kernel: missing")]
#[case::firmware(
    r#"{"payload":{"firmware":"/f"}}"#,
    "payload.firmware: vmm boots a kernel"
)]
#[case::unknown_top(
    r#"{"payload":{"kernel":"/k"},"rng":{"src":"/dev/urandom"}}"#,
    "rng: unknown field `rng`, expected one of `cpus`"
)]
#[case::unknown_in_a_disk(
    r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/a"},{"path":"/b","sparse":true}]}"#,
    "disks[1].sparse: unknown field `sparse`"
)]
#[case::wrong_type(
    r#"{"payload":{"kernel":"/k"},"memory":{"size":"1G"}}"#,
    "memory.size: invalid type: string \"1G\""
)]
#[case::no_vcpus(
    r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":0}}"#,
    "cpus.boot_vcpus: 0: expected 1 to 254"
)]
#[case::hotplug(
    r#"{"payload":{"kernel":"/k"},"cpus":{"boot_vcpus":1,"max_vcpus":4}}"#,
    "cpus.max_vcpus: 4: expected 1"
)]
#[case::odd_memory(
    r#"{"payload":{"kernel":"/k"},"memory":{"size":1000}}"#,
    "memory.size: 1000: expected a multiple of 4096"
)]
#[case::disk_queue(
    r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/a","queue_size":3}]}"#,
    "disks[0].queue_size: 3: expected a power of two"
)]
#[case::disk_queues(
    r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/a","num_queues":0}]}"#,
    "disks[0].num_queues: 0"
)]
#[case::qcow2(
    r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/a","image_type":"Qcow2"}]}"#,
    "disks[0].image_type: Qcow2: vmm serves raw images only"
)]
#[case::no_disk_path(
    r#"{"payload":{"kernel":"/k"},"disks":[{"readonly":true}]}"#,
    "disks[0].path: missing"
)]
#[case::path_with_vhost_user(r#"{"payload":{"kernel":"/k"},"memory":{"size":536870912,"shared":true},"disks":[{"vhost_user":true,"vhost_socket":"/s","path":"/a"}]}"#, "disks[0].path: the backend's business")]
#[case::device_type_0(r#"{"payload":{"kernel":"/k"},"memory":{"size":536870912,"shared":true},"generic_vhost_user":[{"socket":"/s","device_type":0,"queue_sizes":[8]}]}"#, "generic_vhost_user[0].device_type: 0: expected 1 to 63")]
#[case::queue_size(r#"{"payload":{"kernel":"/k"},"memory":{"size":536870912,"shared":true},"generic_vhost_user":[{"socket":"/s","device_type":60,"queue_sizes":[8,12]}]}"#, "generic_vhost_user[0].queue_sizes: 12: expected a power of two")]
#[case::fs_one_queue(r#"{"payload":{"kernel":"/k"},"memory":{"size":536870912,"shared":true},"generic_vhost_user":[{"socket":"/s","device_type":60,"queue_sizes":[8]},{"socket":"/t","device_type":26,"queue_sizes":[8]}]}"#, "generic_vhost_user[1].queue_sizes: device \"_generic_vhost_user1\" of type fs")]
#[case::bad_hex(r#"{"payload":{"kernel":"/k"},"memory":{"size":536870912,"shared":true},"generic_vhost_user":[{"socket":"/s","device_type":60,"queue_sizes":[8],"config":"abc"}]}"#, "generic_vhost_user[0].config: \"abc\"")]
#[case::not_shared(r#"{"payload":{"kernel":"/k"},"generic_vhost_user":[{"socket":"/s","device_type":60,"queue_sizes":[8]}]}"#, "memory.shared: generic vhost-user device \"_generic_vhost_user0\" has a vhost-user backend, which maps guest memory")]
#[case::one_socket_twice(r#"{"payload":{"kernel":"/k"},"memory":{"size":536870912,"shared":true},"generic_vhost_user":[{"socket":"/s","device_type":60,"queue_sizes":[8]}],"disks":[{"vhost_user":true,"vhost_socket":"/s"}]}"#, "disks[0].vhost_socket: device \"_disk0\" uses socket \"/s\"")]
#[case::one_id_twice(
    r#"{"payload":{"kernel":"/k"},"disks":[{"path":"/a","id":"x"},{"path":"/b","id":"x"}]}"#,
    "disks[0].id: id \"x\" is given to more than one device"
)]
#[case::socket_console(
    r#"{"payload":{"kernel":"/k"},"console":{"mode":"Socket"}}"#,
    "console.mode: Socket"
)]
#[case::file_without_mode(
    r#"{"payload":{"kernel":"/k"},"serial":{"mode":"Tty","file":"/f"}}"#,
    "serial.file: given with mode Tty"
)]
#[case::two_ttys(
    r#"{"payload":{"kernel":"/k"},"serial":{"mode":"Tty"}}"#,
    "serial.mode and console.mode: both tty"
)]
#[case::cmdline(
    r#"{"payload":{"kernel":"/k","cmdline":"a\u0001"}}"#,
    "payload.cmdline: '\\u{1}' at byte 1"
)]
fn what_is_wrong_is_named_by_its_path(#[case] body: &str, #[case] want: &str) {
    let message = refused(body);
    assert!(
        message.starts_with(want),
        "{message:?} does not start with {want:?}"
    );
}
