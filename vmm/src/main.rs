//! `vmm`: command line -> configuration -> VM -> run -> exit status.

use std::process::ExitCode;

use vmm::control::{self, Control, ControlError};
use vmm::files::FilesInUse;
use vmm::util::{error_chain, escape_controls};
use vmm::{api, cli, config, events, logger, signals, vm_exit};

/// Exit status for start-up failures (bad configuration is 2, from the CLI).
const EXIT_START_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    // First, while this is the only thread: every thread started later
    // inherits the mask, so SIGINT and SIGTERM never kill vmm by their
    // default action, at start-up or in the run.
    let signals = match signals::TerminationSignals::block() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("vmm: error: {}", error_chain(&e));
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    let args = match cli::Args::try_parse_noting(std::env::args_os()) {
        Ok(args) => args,
        // --help and --version.
        Err(e) if !e.use_stderr() => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        // clap repeats what it did not like, control characters and all.
        Err(e) => {
            eprint!("{}", escape_controls(&e.render().to_string(), true));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let (config, restore) = match (args.vm_config(), args.restore()) {
        (Ok(config), Ok(None)) => (config, None),
        // Checked whole, and its configuration read, before anything
        // else is opened.
        (Ok(_), Ok(Some(restore))) => match control::open_restore(&restore) {
            Ok((config, restore)) => (Some(config), Some(restore)),
            Err(e) => {
                eprintln!("vmm: error: {}", error_chain(&e));
                return ExitCode::from(EXIT_START_FAILED);
            }
        },
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("vmm: error: {}", error_chain(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let api_socket = match args.api_socket() {
        Ok(socket) => socket,
        Err(e) => {
            eprintln!("vmm: error: {}", error_chain(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let event_monitor = match args.event_monitor() {
        Ok(monitor) => monitor,
        Err(e) => {
            eprintln!("vmm: error: {}", error_chain(&e));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // Every input is known before any output is opened, so that no output
    // (the log, the serial or console file) overwrites one.
    let mut in_use = FilesInUse::default();
    for input in config.iter().flat_map(config::VmConfig::input_files) {
        if let Err(e) = in_use.add_input(&input.path, &input.what, input.written) {
            eprintln!("vmm: error: {}: {}", input.what, error_chain(&e));
            return ExitCode::from(EXIT_START_FAILED);
        }
    }
    if let Err(e) = logger::init(args.log_level(), args.log_file.as_deref(), &mut in_use) {
        eprintln!("vmm: error: {}", error_chain(&e));
        return ExitCode::from(EXIT_USAGE);
    }
    if let Some(monitor) = &event_monitor {
        if let Err(e) = start_event_monitor(monitor, &mut in_use) {
            eprintln!("vmm: error: --event-monitor: {}", error_chain(&*e));
            return ExitCode::from(EXIT_START_FAILED);
        }
        events::emit("vmm", "starting", &[("version", env!("CARGO_PKG_VERSION"))]);
    }
    // Before the VM is built, so that a client can connect at once; it
    // waits for answers until the VM runs.
    let api = match api_socket.as_ref().map(api::start).transpose() {
        Ok(api) => api,
        Err(e) => {
            eprintln!("vmm: error: {}", error_chain(&e));
            return ExitCode::from(EXIT_START_FAILED);
        }
    };
    let ran = Control::new(config, in_use, &signals, api, restore).run();
    events::flush(std::time::Duration::from_secs(2));
    match ran {
        Ok(reason) => {
            let status = reason.exit_status();
            if status != 0 && !matches!(reason, vm_exit::ExitReason::DebugExit(_)) {
                eprintln!("vmm: error: {reason}");
            }
            ExitCode::from(status as u8)
        }
        Err(ControlError::Build(e)) => {
            // Start-up steps that wait give up when a signal comes; whatever
            // failed then, the signal is why vmm stops.
            if let Some(signo) = signals.read() {
                log::debug!("Start-up interrupted: {}", error_chain(&e));
                let reason = vm_exit::ExitReason::Signal(signo);
                eprintln!("vmm: error: {reason} during start-up");
                return ExitCode::from(reason.exit_status() as u8);
            }
            // Once, on stderr: the logger writes there too by default.
            eprintln!("vmm: error: {}", error_chain(&e));
            ExitCode::from(EXIT_START_FAILED)
        }
        Err(e) => {
            eprintln!("vmm: error: {}", error_chain(&e));
            ExitCode::from(EXIT_START_FAILED)
        }
    }
}

/// Opens where events go (a path as any output: never over a file the VM
/// uses) and starts the monitor's writer.
fn start_event_monitor(
    monitor: &cli::PathOrFd,
    in_use: &mut FilesInUse,
) -> Result<(), Box<dyn std::error::Error>> {
    let file = match monitor {
        cli::PathOrFd::Path(path) => vmm::files::open_output(
            path,
            false,
            in_use,
            format!("--event-monitor path={}", path.display()),
        )?,
        cli::PathOrFd::Fd(fd) => vmm::files::adopt_output(*fd)?,
    };
    events::start(file)?;
    Ok(())
}
