//! `vhost-user-mock`: a vhost-user backend for testing VMMs. A working
//! echo device (queue 0 comes back reversed on queue 1) with a config space
//! of the test's choosing, and faults scripted from the command line. See
//! `--help` and test-backends/README.md.

mod block;
mod device;
mod fault;
mod logger;
mod relay;

use std::ops::Range;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::Parser;
use vhost_user_backend::VhostUserDaemon;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

use device::{ConfigSpace, EchoDevice};
use fault::{Fault, Faults};
use relay::Relay;

const AFTER_HELP: &str = "\
FAULTS
  --fault WHEN:WHAT, repeatable; the first fault that matches an event applies.
  WHEN  any | buffer | a request name (GET_CONFIG, SET_VRING_KICK, ...; any case,
        VHOST_USER_ prefix optional), optionally #N: only the Nth occurrence,
        counted from 1 over the life of the process (across reconnects).
        `buffer` is a buffer the echo device finished.
  WHAT  error        answer with the protocol's failure: GET_CONFIG with size 0,
                     SET_* with a failing REPLY_ACK (only for those requests)
        short        reply payload cut in half (GET_CONFIG: consistent sizes)
        long         reply payload with 8 bytes 0xaa more
        delay=MS     reply MS milliseconds late
        drop         never reply (the connection stays open)
        close        close the connection when the request arrives
        close-after  close it after the reply
        crash        exit with status 3 when the request arrives
        crash-after  exit with status 3 after the reply
        wrong-code   reply with the next request code
        bad-size     reply header says 4 bytes more than are sent
        truncate     send half the reply, then close
        extra-fd     attach an unexpected file descriptor to the reply
        extra-fd=N   attach N of them (1 to 253; past 32 a frontend
                     built on the vhost crate loses the reply)
        garbage      64 random bytes instead of the reply
  Every fault that fires logs `fault: SPEC fired on REQUEST #N`.

EXAMPLES
  vhost-user-mock --socket /tmp/m.sock --config 6d796673 --writable 2..4
  vhost-user-mock --socket /tmp/m.sock --fault GET_CONFIG#2:error --relisten
  vhost-user-mock --socket /tmp/m.sock --fault buffer#3:close --relisten
  vhost-user-mock --socket /tmp/m.sock --config 0102030405060708 --config-ignores-offset

EXIT STATUS
  0 when the (last) connection ended, 1 on errors, 2 for a bad command line,
  3 for a crash fault.";

/// A vhost-user backend for testing VMMs: an echo device (what the driver
/// puts on queue 0 comes back reversed on queue 1) with a config space of
/// your choosing, and scripted faults.
#[derive(Parser, Debug)]
#[command(name = "vhost-user-mock", version, after_help = AFTER_HELP)]
struct Args {
    /// Listen on this Unix socket. A stale socket file (one that refuses a
    /// connection) is replaced; a live socket or any other file there is an
    /// error, and never deleted.
    #[arg(long, value_name = "PATH")]
    socket: PathBuf,
    /// Queues the device has (GET_QUEUE_NUM); rings past them are refused.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..))]
    queues: u16,
    /// Largest queue size the device accepts.
    #[arg(long, default_value_t = 1024, value_parser = clap::value_parser!(u16).range(1..))]
    queue_max: u16,
    /// Extra virtio feature bits to offer (hex), besides VERSION_1 and
    /// VHOST_USER_F_PROTOCOL_FEATURES.
    #[arg(long, value_name = "HEX", value_parser = parse_hex_u64, default_value = "0")]
    features: u64,
    /// The device config space, as hex bytes (default: empty).
    #[arg(long, value_name = "HEX", value_parser = parse_hex_bytes, default_value = "")]
    config: HexBytes,
    /// Config bytes [A,B) the driver may write (repeatable); SET_CONFIG
    /// elsewhere is refused.
    #[arg(long, value_name = "A..B", value_parser = parse_range)]
    writable: Vec<Range<u32>>,
    /// Answer GET_CONFIG from offset 0 whatever offset is asked, as
    /// backends on QEMU's libvhost-user do (qemu-storage-daemon).
    #[arg(long)]
    config_ignores_offset: bool,
    /// Serve queue 0 as a virtio-blk request queue from this file (IN,
    /// OUT, FLUSH, GET_ID) instead of echoing; the capacity the guest sees
    /// is whatever --config says, so it may disagree with the file.
    #[arg(long, value_name = "FILE")]
    block: Option<PathBuf>,
    /// Do not offer VHOST_USER_PROTOCOL_F_MQ.
    #[arg(long)]
    no_mq: bool,
    /// Do not offer VHOST_USER_PROTOCOL_F_CONFIG.
    #[arg(long)]
    no_config: bool,
    /// Do not offer VHOST_USER_PROTOCOL_F_REPLY_ACK.
    #[arg(long)]
    no_reply_ack: bool,
    /// Do not offer VHOST_USER_PROTOCOL_F_DEVICE_STATE (by default the
    /// device saves and loads how many buffers it echoed, the message it
    /// holds for queue 1 and its config space).
    #[arg(long)]
    no_device_state: bool,
    /// Fail CHECK_DEVICE_STATE after a state is loaded, as a backend does
    /// whose state it cannot take.
    #[arg(long)]
    refuse_state_load: bool,
    /// A fault to inject (repeatable); see FAULTS below.
    #[arg(long, value_name = "WHEN:WHAT")]
    fault: Vec<Fault>,
    /// After a connection ends, accept the next (a restarted backend).
    #[arg(long)]
    relisten: bool,
    /// Once listening, write the socket path here.
    #[arg(long, value_name = "PATH")]
    ready_file: Option<PathBuf>,
    /// Log here instead of stderr.
    #[arg(long, value_name = "PATH")]
    log_file: Option<PathBuf>,
    /// More log: -v debug, -vv trace.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[derive(Debug, Clone)]
struct HexBytes(Vec<u8>);

fn parse_hex_u64(s: &str) -> Result<u64, String> {
    u64::from_str_radix(s.trim_start_matches("0x"), 16)
        .map_err(|e| format!("expected hex bits like 0x1000: {e}"))
}

fn parse_hex_bytes(s: &str) -> Result<HexBytes, String> {
    if !s.len().is_multiple_of(2) {
        return Err("expected an even number of hex digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            s.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
                .ok_or_else(|| format!("{:?} is not a hex byte", s.get(i..i + 2).unwrap_or(s)))
        })
        .collect::<Result<Vec<_>, _>>()
        .map(HexBytes)
}

fn parse_range(s: &str) -> Result<Range<u32>, String> {
    let (a, b) = s
        .split_once("..")
        .ok_or("expected A..B, e.g. 4..8".to_string())?;
    let a: u32 = a.parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b: u32 = b.parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a >= b {
        return Err(format!("empty range {a}..{b}"));
    }
    Ok(a..b)
}

#[derive(Debug, thiserror::Error)]
enum MockError {
    #[error("cannot open log file {0}")]
    Log(PathBuf, #[source] std::io::Error),
    #[error("cannot listen on {0}")]
    Listen(PathBuf, #[source] std::io::Error),
    #[error("{0} is a {1}, not a socket: not replacing it")]
    InTheWay(PathBuf, &'static str),
    #[error("something already listens on {0}")]
    InUse(PathBuf),
    #[error("cannot write ready file {0}")]
    Ready(PathBuf, #[source] std::io::Error),
    #[error("accepting a connection")]
    Accept(#[source] std::io::Error),
    #[error("connecting the device to the relay")]
    Inner(#[source] std::io::Error),
    #[error("starting the device: {0}")]
    Daemon(vhost_user_backend::Error),
    #[error("cannot open the --block file {0}")]
    Block(PathBuf, #[source] std::io::Error),
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(&args) {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            text.push_str(&format!(": {s}"));
            source = s.source();
        }
        log::error!("{text}");
        eprintln!("vhost-user-mock: {text}");
        std::process::exit(1);
    }
}

fn run(args: &Args) -> Result<(), MockError> {
    // Before listening: a --block file that cannot be served is said at
    // once, not at the first connection.
    if let Some(path) = &args.block {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| MockError::Block(path.clone(), e))?;
    }
    let level = match args.verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    logger::init(args.log_file.as_deref(), level)
        .map_err(|e| MockError::Log(args.log_file.clone().unwrap_or_default(), e))?;

    remove_stale_socket(&args.socket)?;
    let listener =
        UnixListener::bind(&args.socket).map_err(|e| MockError::Listen(args.socket.clone(), e))?;
    if let Some(ready) = &args.ready_file {
        std::fs::write(ready, args.socket.to_string_lossy().as_bytes())
            .map_err(|e| MockError::Ready(ready.clone(), e))?;
    }
    log::info!(
        "listening on {} ({} queues of up to {}, {} config bytes, faults {:?})",
        args.socket.display(),
        args.queues,
        args.queue_max,
        args.config.0.len(),
        args.fault
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
    );

    let faults = Arc::new(Faults::new(args.fault.clone()));
    let config = Arc::new(Mutex::new(ConfigSpace {
        bytes: args.config.0.clone(),
        writable: args.writable.clone(),
        ignores_offset: args.config_ignores_offset,
    }));
    let mut hidden = vhost::vhost_user::message::VhostUserProtocolFeatures::empty();
    for (withheld, feature) in [
        (
            args.no_mq,
            vhost::vhost_user::message::VhostUserProtocolFeatures::MQ,
        ),
        (
            args.no_config,
            vhost::vhost_user::message::VhostUserProtocolFeatures::CONFIG,
        ),
        (
            args.no_reply_ack,
            vhost::vhost_user::message::VhostUserProtocolFeatures::REPLY_ACK,
        ),
    ] {
        if withheld {
            hidden |= feature;
        }
    }
    let relay = Relay {
        faults: faults.clone(),
        writable: args.writable.clone(),
        hidden_protocol: hidden.bits(),
    };
    for n in 1u64.. {
        let (frontend, _) = listener.accept().map_err(MockError::Accept)?;
        log::info!("connection {n}");
        serve(args, &relay, &faults, &config, frontend)?;
        log::info!("connection {n} ended");
        if !args.relisten {
            break;
        }
    }
    Ok(())
}

/// Makes way for our socket: only a socket that nothing listens on (left
/// by an earlier run) is removed. A file or a live backend in the way is
/// the user's mistake, and deleting it would lose their data or steal
/// another backend's clients.
fn remove_stale_socket(path: &Path) -> Result<(), MockError> {
    let listen_error = |e| MockError::Listen(path.to_owned(), e);
    let file_type = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata.file_type(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(listen_error(e)),
    };
    if !file_type.is_socket() {
        let kind = if file_type.is_file() {
            "regular file"
        } else if file_type.is_dir() {
            "directory"
        } else if file_type.is_symlink() {
            "symbolic link"
        } else {
            "special file"
        };
        return Err(MockError::InTheWay(path.to_owned(), kind));
    }
    match UnixStream::connect(path) {
        Ok(_) => Err(MockError::InUse(path.to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            std::fs::remove_file(path).map_err(listen_error)
        }
        Err(e) => Err(listen_error(e)),
    }
}

/// One connection: a fresh device behind the relay.
fn serve(
    args: &Args,
    relay: &Relay,
    faults: &Arc<Faults>,
    config: &Arc<Mutex<ConfigSpace>>,
    frontend: UnixStream,
) -> Result<(), MockError> {
    let connection = Arc::new(Mutex::new(Some(
        frontend.try_clone().map_err(MockError::Accept)?,
    )));
    let mut device = EchoDevice::new(
        usize::from(args.queues),
        usize::from(args.queue_max),
        args.features,
        config.clone(),
        faults.clone(),
        connection,
    );
    device.device_state = !args.no_device_state;
    device.refuse_state_load = args.refuse_state_load;
    if let Some(path) = &args.block {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| MockError::Block(path.clone(), e))?;
        device.block = Some(file);
    }
    let memory = GuestMemoryAtomic::new(GuestMemoryMmap::new());
    let mut daemon = VhostUserDaemon::new(
        "vhost-user-mock".into(),
        Arc::new(Mutex::new(device)),
        memory,
    )
    .map_err(MockError::Daemon)?;
    let backend = connect_daemon(&mut daemon, &args.socket)?;
    if let Err(e) = relay.run(&frontend, &backend) {
        log::info!("connection ended: {e}");
    }
    drop(backend);
    if let Err(e) = daemon.wait() {
        log::info!("device stopped: {e:?}");
    }
    Ok(())
}

/// The daemon only connects to or listens on a path: give it a private
/// one next to ours for as long as it takes to connect.
fn connect_daemon(
    daemon: &mut VhostUserDaemon<Arc<Mutex<EchoDevice>>>,
    socket: &Path,
) -> Result<UnixStream, MockError> {
    let mut inner = socket.as_os_str().to_owned();
    inner.push(format!(".inner-{}", std::process::id()));
    let inner = PathBuf::from(inner);
    let _ = std::fs::remove_file(&inner);
    let listener = UnixListener::bind(&inner).map_err(MockError::Inner)?;
    let started = daemon.start_client(&inner.to_string_lossy());
    let accepted = started
        .map_err(MockError::Daemon)
        .and_then(|()| listener.accept().map_err(MockError::Inner));
    let _ = std::fs::remove_file(&inner);
    Ok(accepted?.0)
}
