//! The command line: option names, help text and defaults, in Cloud
//! Hypervisor's style, and the only room that knows option syntax: the
//! `key=value` splitter (`options`) and what each option's keys mean
//! (`parse`, which builds the validated `config::VmConfig`).

mod options;
mod parse;

pub use crate::files::PathOrFd;
#[cfg(feature = "fuzzing")]
pub use parse::every_key;

use std::ffi::OsStr;
use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::error::ErrorKind;
use clap::{ArgAction, Parser};

const AFTER_HELP: &str = "\
Option values follow Cloud Hypervisor: comma-separated key=value pairs. A value
may be double-quoted to hold commas, '=' or spaces, with \"\" inside quotes for a
literal quote (socket=\"a,\"\"b\"\"\" is the path a,\"b\"). Brackets group a list
whose commas do not split pairs: queue_sizes=[256,256].

Limits:
  At most 31 virtio-pci devices in all (--generic-vhost-user, --disk and
  --console): PCI bus 0 has 32 slots and the host bridge takes one. Their
  MSI-X vectors, one per queue plus one per device, come to 1000 at most
  (KVM's GSIs above the IOAPIC's 24). A backend socket path has at most 107
  bytes (sun_path) and serves one device. Limits like these are checked
  before anything starts, as bad command lines (status 2).

Files:
  --kernel and --initramfs must be regular files. An output (--serial
  file=, --console file=, --log-file) may be a FIFO, but only one that is
  already being read: vmm never waits in open().

Guest exit device:
  A guest write of the value V to I/O port 0xf4 makes vmm exit with status
  (V << 1) | 1, V taken modulo 128, like QEMU's isa-debug-exit (iobase=0xf4,
  iosize=4). ACPI power-off and reset make vmm exit with status 0.

Exit status:
  0              the guest powered off or reset, or vmm.shutdown came
                 through the API
  1              vmm could not start, or the guest or a vCPU failed
  2              bad command line (or --log-file cannot be opened)
  (V << 1) | 1   the guest wrote V to the exit device
  128 + N        stopped by signal N (SIGINT, SIGTERM), also during start-up";

#[derive(Debug, Parser)]
#[command(
    name = "vmm",
    version,
    about = "A KVM virtual machine monitor for generic vhost-user devices",
    after_help = AFTER_HELP,
    next_line_help = true
)]
pub struct Args {
    /// vCPUs: boot=N, N from 1 to 254
    #[arg(long, value_name = "boot=N", default_value = "boot=1", value_parser = Utf8)]
    pub cpus: String,

    /// Guest RAM: SIZE in bytes with an optional K, M, G or T suffix
    ///
    /// SIZE (binary multiples: 1K = 1024) must be a multiple of 4K from 2M to
    /// 1T, and of 2M with hugepages=on; it defaults to 512M. shared=on backs
    /// the RAM with a memfd that vhost-user backends map, as
    /// --generic-vhost-user needs. hugepages=on backs it with huge pages.
    /// Both default to off. thp=on (the default) asks the host for
    /// transparent huge pages (fewer TLB misses and nested page faults, at
    /// up to 2M of host memory for each 2M the guest touches); thp=off
    /// refuses them.
    #[arg(
        long,
        value_name = "size=SIZE[,shared=on|off][,hugepages=on|off][,thp=on|off]",
        default_value = "size=512M",
        value_parser = Utf8,
        verbatim_doc_comment
    )]
    pub memory: String,

    /// The kernel: a PVH ELF (vmlinux) or a bzImage
    ///
    /// Needed unless --api-socket is given: then vmm may start without a
    /// VM, and vm.create brings its whole configuration as JSON.
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,

    /// An initramfs loaded next to the kernel
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,

    /// The kernel command line: printable ASCII, at most 2047 bytes
    #[arg(
        long,
        value_name = "STR",
        default_value = "",
        allow_hyphen_values = true,
        value_parser = Utf8
    )]
    pub cmdline: String,

    /// The COM1 UART (8250): off (no UART), null, tty, pty or file=PATH
    ///
    /// tty writes the guest's output to stdout and reads its input from
    /// stdin (in raw mode on a terminal); pty creates a pseudo-terminal and
    /// logs its path; file=PATH writes the output to PATH.
    #[arg(
        long,
        value_name = "off|null|tty|pty|file=PATH",
        default_value = "null",
        value_parser = Utf8
    )]
    pub serial: String,

    /// The virtio console (port 0, hvc0 in Linux): off, null, tty, pty or file=PATH
    ///
    /// Same forms as --serial; off means no device. At most one of --serial
    /// and --console may be tty. On a terminal the guest gets its size, and
    /// the new size whenever the terminal is resized.
    #[arg(
        long,
        value_name = "off|null|tty|pty|file=PATH",
        default_value = "tty",
        value_parser = Utf8
    )]
    pub console: String,

    /// A virtio-pci device served by a vhost-user backend (repeatable)
    ///
    /// socket=PATH       the backend's Unix socket: at most 107 bytes, and
    ///                   one device per socket
    /// virtio_id=ID      the VIRTIO device ID, 1 to 63 (what virtio-pci can
    ///                   carry: PCI device IDs 0x1041 to 0x107f): a number,
    ///                   or a name from the spec's list (net, block,
    ///                   console, rng, fs, vsock, sound, gpio, i2c, scmi,
    ///                   ...); device_type=ID is a synonym
    /// queue_sizes=[N,N,...]
    ///                   one size per queue, each a power of two from 1 to
    ///                   32768, 64 queues at most and at least as many as the
    ///                   type needs (fs: hiprio and a request queue); a single
    ///                   number is one queue
    /// id=NAME           unique name, default _generic_vhost_user<I> with I
    ///                   counting these options from 0
    /// config_size=N     length of the device config window, 0 to 4096;
    ///                   default: the spec's layout for the type, as far as
    ///                   the features the backend offers reach, or the
    ///                   length of config= if longer, or 0 for types whose
    ///                   config the spec does not define
    /// config=HEX        the device config bytes (an even number of hex
    ///                   digits) for backends without the CONFIG protocol
    ///                   feature
    ///
    /// Needs --memory shared=on.
    #[arg(
        long = "generic-vhost-user",
        value_name = "socket=PATH,virtio_id=ID,queue_sizes=[N,N,...][,id=NAME][,config_size=N][,config=HEX]",
        action = ArgAction::Append,
        value_parser = Utf8,
        verbatim_doc_comment
    )]
    pub generic_vhost_user: Vec<String>,

    /// A virtio-blk disk (repeatable)
    ///
    /// path=PATH         a raw image; an ISO file is raw media too
    /// readonly=on|off   the guest cannot write (default off)
    /// direct=on|off     O_DIRECT: bypass the host page cache (default off)
    /// num_queues=N      request queues, 1 to 64 (default 1)
    /// queue_size=N      a power of two from 2 to 32768 (default 128)
    /// serial=STR        what the guest reads as the disk's serial (GET_ID,
    ///                   20 bytes at most reach the guest)
    /// id=NAME           unique name, default _disk<I> with I counting these
    ///                   options from 0
    /// image_type=raw    the image's format, as Cloud Hypervisor takes it:
    ///                   raw is the one vmm serves (qcow2, vhd, vhdx refused).
    ///                   Without it, an image that is a known other format
    ///                   (qcow2, qed, vhd, vhdx, vmdk, vdi, parallels) is
    ///                   refused before the guest can write over its header
    /// vhost_user=on,socket=PATH
    ///                   a vhost-user-blk backend instead of path=: served by
    ///                   the generic vhost-user device (virtio_id=block), so
    ///                   it needs --memory shared=on
    ///
    /// The image is locked (an advisory OFD lock, as Cloud Hypervisor and QEMU
    /// take): shared with readonly=on, exclusive otherwise.
    #[arg(
        long,
        value_name = "path=PATH[,readonly=on|off][,direct=on|off][,num_queues=N][,queue_size=N][,serial=STR][,id=NAME][,image_type=raw]",
        action = ArgAction::Append,
        value_parser = Utf8,
        verbatim_doc_comment
    )]
    pub disk: Vec<String>,

    /// Serve Cloud Hypervisor's HTTP API on a Unix socket: path=PATH or fd=N
    ///
    /// With it, ch-remote and curl --unix-socket drive the running VM
    /// (/api/v1/vmm.ping, vm.info, vm.counters, vm.pause, vm.resume,
    /// vm.shutdown, vm.boot, vm.reboot, vm.power-button, vm.create, vm.delete,
    /// vm.snapshot, vm.restore, vmm.shutdown). Given without --kernel, vmm starts without a VM:
    /// vm.create brings its configuration as Cloud Hypervisor's VmConfig
    /// JSON, and vm.boot starts it.
    /// path=PATH creates the socket, readable and writable by its owner
    /// alone; a stale socket there is replaced, a live one (another VMM's)
    /// or any other file refused. fd=N takes a Unix socket already
    /// listening. Only clients of vmm's own uid are served.
    #[arg(long, value_name = "path=PATH|fd=N", value_parser = Utf8, verbatim_doc_comment)]
    pub api_socket: Option<String>,

    /// Restore a VM from a snapshot instead of booting one
    ///
    /// source_url=file:///DIR  the snapshot directory (vm.snapshot's
    ///                         destination_url): its configuration, memory
    ///                         and every device's state
    /// resume=on|off           run at once (default off: the VM waits
    ///                         paused for vm.resume)
    /// prefault=on|off         allocate all of guest memory before the
    ///                         guest runs (default off: as it touches it)
    /// vhost_user_sockets=[ID@PATH,...]
    ///                         the vhost-user backends of these devices
    ///                         listen at new sockets
    ///
    /// The snapshot is checked whole (version, each file's size and
    /// checksum) before anything runs, and never modified. The VM options
    /// (--kernel, --cpus, --disk, ...) come from the snapshot and may not
    /// be given.
    #[arg(
        long,
        value_name = "source_url=file:///DIR[,resume=on|off][,prefault=on|off][,vhost_user_sockets=[ID@PATH,...]]",
        value_parser = Utf8,
        verbatim_doc_comment
    )]
    pub restore: Option<String>,

    /// Write what happens as JSON lines: path=PATH or fd=N
    ///
    /// One object per line in Cloud Hypervisor's event shape: timestamp
    /// (secs and nanos since vmm started), source, event, properties. The
    /// VM's created, booting, booted, pausing, paused, resuming, resumed,
    /// snapshotting, snapshotted, restoring, restored, power-button,
    /// shutdown, rebooting and deleted; each device's activated, reset and needs-reset, and a
    /// vhost-user backend's disconnected and reconnected, with its id. A
    /// reader that falls behind never slows the VM: events beyond 4096
    /// waiting are dropped, counted in vm.counters, and said in an
    /// events-dropped event once the reader catches up. path=PATH is
    /// created or truncated; fd=N is written as it is.
    #[arg(long, value_name = "path=PATH|fd=N", value_parser = Utf8, verbatim_doc_comment)]
    pub event_monitor: Option<String>,

    /// Log more: warnings by default, -v info, -vv debug, -vvv trace
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,

    /// Write the log to this file (appending) instead of stderr
    ///
    /// If the file cannot be written (a full disk), vmm says so once on
    /// stderr and carries on; the exit status stays the guest's.
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,

    /// The options describing the VM that the command line gave (not
    /// defaults), as `--disk`: without --kernel, none may be given.
    #[arg(skip)]
    pub vm_options_given: Vec<String>,
}

/// The options that describe the VM rather than vmm itself.
const VM_OPTIONS: [&str; 8] = [
    "cpus",
    "memory",
    "initramfs",
    "cmdline",
    "serial",
    "console",
    "generic_vhost_user",
    "disk",
];

/// The value parser of every option that takes text: clap's own reports a
/// value that is not UTF-8 in five lines without naming the option.
#[derive(Clone)]
struct Utf8;

impl TypedValueParser for Utf8 {
    type Value = String;

    fn parse_ref(
        &self,
        _: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<String, clap::Error> {
        value.to_str().map(str::to_owned).ok_or_else(|| {
            let option = arg
                .and_then(clap::Arg::get_long)
                .map_or_else(|| "an option".to_owned(), |long| format!("--{long}"));
            clap::Error::raw(
                ErrorKind::InvalidUtf8,
                format!("{option}: {value:?} is not valid UTF-8\n"),
            )
        })
    }
}

impl Args {
    /// `argv` as clap reads it, noting which VM options it gave.
    pub fn try_parse_noting<I, T>(argv: I) -> Result<Args, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::{CommandFactory, FromArgMatches};
        let mut matches = Args::command().try_get_matches_from(argv)?;
        let given = VM_OPTIONS
            .iter()
            .filter(|id| matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        let mut args = Args::from_arg_matches_mut(&mut matches)?;
        args.vm_options_given = given;
        Ok(args)
    }

    /// The log level that `-v` asks for.
    pub fn log_level(&self) -> log::LevelFilter {
        match self.verbose {
            0 => log::LevelFilter::Warn,
            1 => log::LevelFilter::Info,
            2 => log::LevelFilter::Debug,
            _ => log::LevelFilter::Trace,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;
    use clap::CommandFactory;
    use rstest::rstest;

    fn parse(extra: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(["vmm", "--kernel", "/boot/vmlinux"].iter().chain(extra))
    }

    #[test]
    fn command_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn defaults() {
        let args = parse(&[]).expect("defaults parse");
        assert_eq!(args.cpus, "boot=1");
        assert_eq!(args.memory, "size=512M");
        assert_eq!(args.kernel, Some(PathBuf::from("/boot/vmlinux")));
        assert_eq!(args.initramfs, None);
        assert_eq!(args.cmdline, "");
        assert_eq!(args.serial, "null");
        assert_eq!(args.console, "tty");
        assert!(args.generic_vhost_user.is_empty());
        assert!(args.disk.is_empty());
        assert_eq!(args.log_level(), log::LevelFilter::Warn);
        assert_eq!(args.log_file, None);
    }

    #[test]
    fn values_are_kept_raw() {
        let args = parse(&[
            "--cpus=boot=2",
            "--memory",
            "size=1G,shared=on",
            "--initramfs",
            "/i",
            "--cmdline",
            "-console=ttyS0 quiet",
            "--serial",
            "file=\"a b\"",
            "--generic-vhost-user",
            "socket=/a,virtio_id=fs,queue_sizes=[1,1]",
            "--generic-vhost-user=socket=/b,virtio_id=26,queue_sizes=[1,1]",
            "--disk",
            "path=/d",
            "--log-file",
            "/tmp/log",
        ])
        .expect("parses");
        assert_eq!(args.cpus, "boot=2");
        assert_eq!(args.memory, "size=1G,shared=on");
        assert_eq!(args.initramfs, Some(PathBuf::from("/i")));
        assert_eq!(args.cmdline, "-console=ttyS0 quiet");
        assert_eq!(args.serial, "file=\"a b\"");
        assert_eq!(
            args.generic_vhost_user,
            [
                "socket=/a,virtio_id=fs,queue_sizes=[1,1]",
                "socket=/b,virtio_id=26,queue_sizes=[1,1]"
            ]
        );
        assert_eq!(args.disk, ["path=/d"]);
        assert_eq!(args.log_file, Some(PathBuf::from("/tmp/log")));
    }

    #[rstest]
    #[case(&[], log::LevelFilter::Warn)]
    #[case(&["-v"], log::LevelFilter::Info)]
    #[case(&["-vv"], log::LevelFilter::Debug)]
    #[case(&["-v", "--verbose"], log::LevelFilter::Debug)]
    #[case(&["-vvv"], log::LevelFilter::Trace)]
    #[case(&["-vvvvvvv"], log::LevelFilter::Trace)]
    fn verbosity(#[case] flags: &[&str], #[case] level: log::LevelFilter) {
        assert_eq!(parse(flags).expect("parses").log_level(), level);
    }

    #[rstest]
    #[case(&["--cpus", "boot=1", "--cpus", "boot=2"], ErrorKind::ArgumentConflict)]
    #[case(&["--bogus"], ErrorKind::UnknownArgument)]
    #[case(&["--cpus"], ErrorKind::InvalidValue)]
    #[case(&["--kernel", "/other"], ErrorKind::ArgumentConflict)]
    fn clap_refuses(#[case] extra: &[&str], #[case] kind: ErrorKind) {
        assert_eq!(parse(extra).map(|_| ()).map_err(|e| e.kind()), Err(kind));
    }

    #[test]
    fn the_vm_options_given_are_noted_and_defaults_are_not() {
        let args = Args::try_parse_noting(["vmm", "--api-socket", "/s"]).unwrap();
        assert!(
            args.vm_options_given.is_empty(),
            "{:?}",
            args.vm_options_given
        );
        let args = Args::try_parse_noting([
            "vmm",
            "--api-socket",
            "/s",
            "--cpus",
            "boot=1",
            "--generic-vhost-user",
            "socket=/x",
            "-v",
        ])
        .unwrap();
        assert_eq!(args.vm_options_given, ["--cpus", "--generic-vhost-user"]);
    }

    #[test]
    fn help_documents_syntax_defaults_and_exit_device() {
        let help = Args::command().render_long_help().to_string();
        for needle in [
            "A KVM virtual machine monitor for generic vhost-user devices",
            "boot=N",
            "[default: boot=1]",
            "size=SIZE[,shared=on|off][,hugepages=on|off][,thp=on|off]",
            "[default: size=512M]",
            "off|null|tty|pty|file=PATH",
            "[default: null]",
            "[default: tty]",
            "num_queues=N",
            "vhost_user=on,socket=PATH",
            "queue_sizes=[N,N,...]",
            "device_type=ID",
            "_generic_vhost_user<I>",
            "path=PATH[,readonly=on|off][,direct=on|off]",
            "0xf4",
            "(V << 1) | 1",
            "isa-debug-exit",
            "ACPI power-off and reset",
        ] {
            assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
        }
    }

    #[test]
    fn help_documents_the_limits_checked_at_parse_time() {
        let help = Args::command().render_long_help().to_string();
        for needle in [
            "the VIRTIO device ID, 1 to 63",
            "At most 31 virtio-pci devices",
            "come to 1000 at most",
            "at most 107",
            "one device per socket",
            "printable ASCII, at most 2047 bytes",
            "vmm never waits in open()",
            "also during start-up",
        ] {
            assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
        }
    }

    /// Any option that takes text: one line naming it, with the bytes
    /// escaped, where clap said only that some argument was not UTF-8.
    #[rstest]
    #[case("--memory")]
    #[case("--cmdline")]
    #[case("--generic-vhost-user")]
    #[case("--disk")]
    #[case("--serial")]
    fn a_value_that_is_not_utf8_is_one_line_naming_the_option(#[case] option: &str) {
        use std::ffi::OsString;
        use std::os::unix::ffi::OsStringExt;
        let argv = [
            OsString::from("vmm"),
            "--kernel".into(),
            "/k".into(),
            option.into(),
            OsString::from_vec(b"size=\xff\x1b".to_vec()),
        ];
        let err = Args::try_parse_from(argv).expect_err("not UTF-8");
        assert_eq!(err.kind(), ErrorKind::InvalidUtf8);
        let text = err.render().to_string();
        assert_eq!(
            text,
            format!("error: {option}: \"size=\\xFF\\u{{1b}}\" is not valid UTF-8\n")
        );
    }

    /// `--api-socket` and `--event-monitor` take Cloud Hypervisor's forms:
    /// path=, fd= or a bare path; anything else is a usage error naming
    /// the option.
    #[test]
    fn endpoints_take_a_path_or_a_descriptor() {
        let api = |value: &str| parse(&["--api-socket", value]).unwrap().api_socket();
        assert_eq!(api("path=/a").unwrap(), Some(PathOrFd::Path("/a".into())));
        assert_eq!(api("/b").unwrap(), Some(PathOrFd::Path("/b".into())));
        assert_eq!(api("fd=7").unwrap(), Some(PathOrFd::Fd(7)));
        for bad in ["fd=2", "fd=x", "path=/a,fd=7", "size=1", "path="] {
            let err = api(bad).unwrap_err().to_string();
            assert!(err.starts_with("--api-socket"), "{bad}: {err}");
        }
        let events = |value: &str| parse(&["--event-monitor", value]).unwrap().event_monitor();
        assert_eq!(events("fd=9").unwrap(), Some(PathOrFd::Fd(9)));
        assert!(events("fd=1")
            .unwrap_err()
            .to_string()
            .starts_with("--event-monitor"));
        assert_eq!(parse(&[]).unwrap().event_monitor().unwrap(), None);
    }
}
