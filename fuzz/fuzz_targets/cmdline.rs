//! The whole command line, down to `VmConfig`: clap's parsing, the
//! `key=value` splitter with its quotes and brackets, every option's keys,
//! and the rules across options. A configuration that comes out must keep
//! every limit `config` documents.

#![no_main]

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::sync::LazyLock;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm::cli::{every_key, Args};
use vmm::config::*;

const OPTIONS: &[&str] = &[
    "--cpus",
    "--memory",
    "--kernel",
    "--initramfs",
    "--cmdline",
    "--serial",
    "--console",
    "--generic-vhost-user",
    "--disk",
    "--log-file",
    "-v",
    "-vvv",
    "--help",
    "--version",
    "--bogus",
    "--",
];

/// Every key an option takes, from the parser itself.
static KEYS: LazyLock<Vec<&'static str>> = LazyLock::new(every_key);

const VALUES: &[&str] = &[
    "0",
    "1",
    "2",
    "64",
    "254",
    "255",
    "4096",
    "32768",
    "65536",
    "18446744073709551616",
    "2M",
    "512M",
    "1G",
    "1T",
    "4K",
    "on",
    "off",
    "fs",
    "net",
    "block",
    "26",
    "63",
    "[256,256]",
    "[1,2,4]",
    "[]",
    "[",
    "\"a,b\"",
    "\"\"\"\"",
    "0a0b",
    "tty",
    "null",
    "pty",
    "/tmp/x",
];

#[derive(Arbitrary, Debug)]
enum Word {
    Known(u8),
    Text(String),
    Bytes(Vec<u8>),
}

impl Word {
    fn text(&self, list: &[&str]) -> String {
        match self {
            Word::Known(i) => list[usize::from(*i) % list.len()].to_owned(),
            Word::Text(s) => s.clone(),
            Word::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Value {
    /// key=value pairs joined by commas.
    Pairs(Vec<(Word, Word)>),
    Word(Word),
    /// Not UTF-8 at all.
    Raw(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Arg {
    option: Word,
    value: Option<Value>,
    joined: bool,
}

fn check(config: &VmConfig) {
    assert!((1..=MAX_VCPUS).contains(&config.cpus.boot));
    let m = config.memory;
    assert!((MIN_MEMORY_SIZE..=MAX_MEMORY_SIZE).contains(&m.size));
    assert_eq!(m.size % PAGE_SIZE, 0);
    if m.hugepages {
        assert_eq!(m.size % HUGE_PAGE_SIZE, 0);
    }
    assert!(!config.payload.kernel.as_os_str().is_empty());
    assert!(config.serial != ConsoleOutput::Tty || config.console != ConsoleOutput::Tty);
    for device in &config.generic_vhost_user {
        assert!(m.shared, "vhost-user without shared memory");
        let count = device.queue_sizes.len();
        assert!(count >= device.device_type.min_queues() && count <= MAX_QUEUES);
        for &size in &device.queue_sizes {
            assert!(size.is_power_of_two() && size <= MAX_QUEUE_SIZE);
        }
        let window = device.config_window_len();
        assert!(window <= MAX_CONFIG_SIZE);
        let given = device.config.as_ref().map_or(0, Vec::len);
        assert!(given <= window as usize);
        device.validate().expect("a device that came out validates");
    }
    for disk in &config.disks {
        assert!((1..=MAX_QUEUES as u16).contains(&disk.num_queues));
        assert!(disk.queue_size.is_power_of_two());
        assert!((2..=MAX_DISK_QUEUE_SIZE).contains(&disk.queue_size));
        if matches!(disk.backend, DiskBackend::VhostUser { .. }) {
            assert!(m.shared);
        }
    }
    let mut ids: Vec<&str> = config
        .generic_vhost_user
        .iter()
        .map(|d| d.id.as_str())
        .collect();
    ids.extend(config.disks.iter().map(|d| d.id.as_str()));
    let count = ids.len();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), count, "ids are unique");
    config
        .validate()
        .expect("a configuration that came out validates");
}

fuzz_target!(|args: Vec<Arg>| {
    let mut argv: Vec<OsString> = vec!["vmm".into()];
    for arg in args.iter().take(24) {
        let option = arg.option.text(OPTIONS);
        let value = match &arg.value {
            None => None,
            Some(Value::Word(w)) => Some(w.text(VALUES).into_bytes()),
            Some(Value::Pairs(pairs)) => Some(
                pairs
                    .iter()
                    .take(8)
                    .map(|(k, v)| format!("{}={}", k.text(&KEYS), v.text(VALUES)))
                    .collect::<Vec<_>>()
                    .join(",")
                    .into_bytes(),
            ),
            Some(Value::Raw(bytes)) => Some(bytes.clone()),
        };
        match value {
            Some(value) if arg.joined => {
                let mut joined = option.into_bytes();
                joined.push(b'=');
                joined.extend(value);
                argv.push(OsString::from_vec(joined));
            }
            Some(value) => {
                argv.push(option.into());
                argv.push(OsString::from_vec(value));
            }
            None => argv.push(option.into()),
        }
    }
    let Ok(args) = <Args as clap::Parser>::try_parse_from(argv) else {
        return;
    };
    let _ = args.log_level();
    if let Ok(config) = VmConfig::try_from(&args) {
        check(&config);
    }
});
