//! The host side of the probe's virtio console: where its output goes
//! under `vmm` and under QEMU, and how a test sends it input while the
//! guest runs. Either way the output ends up in `DIR/console.out`.

use std::fs::File;
use std::io::{self, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ChildStdin;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::process::Child;

/// Where the console's output is after a run, in the test's directory.
pub const OUTPUT_FILE: &str = "console.out";
/// Where the serial port (the probe's records) goes when `vmm`'s stdout
/// carries the console.
pub const SERIAL_FILE: &str = "serial.out";
/// The socket QEMU's chardev serves for an interactive console.
const SOCKET_FILE: &str = "console.sock";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// Output to `DIR/console.out`; no input.
    Output,
    /// Output to `DIR/console.out`, and input the test sends while the
    /// guest runs (`Guest::start`).
    Interactive,
}

impl Console {
    /// `vmm --console`: a file, or stdout and stdin (`tty`) for input.
    pub(crate) fn vmm_console(self) -> String {
        match self {
            Console::Output => format!("file={OUTPUT_FILE}"),
            Console::Interactive => "tty".into(),
        }
    }

    /// `vmm --serial`, when stdout is taken by the console.
    pub(crate) fn vmm_serial(self) -> Option<String> {
        match self {
            Console::Output => None,
            Console::Interactive => Some(format!("file={SERIAL_FILE}")),
        }
    }

    /// QEMU's virtio-serial with a console on port 0: a file chardev, or
    /// a socket chardev that waits for the test to connect before the
    /// guest starts, so that no output is lost and input has a sender.
    /// Modern only, and 3 MSI-X vectors so that port 0's two queues each
    /// have one (QEMU's default is 2 for its 64 queues).
    pub(crate) fn qemu_args(self) -> Vec<String> {
        let chardev = match self {
            Console::Output => format!("file,id=console0,path={OUTPUT_FILE}"),
            Console::Interactive => {
                format!("socket,id=console0,path={SOCKET_FILE},server=on,wait=on")
            }
        };
        vec![
            "-device".into(),
            "virtio-serial-pci,disable-legacy=on,vectors=3".into(),
            "-chardev".into(),
            chardev,
            "-device".into(),
            "virtconsole,chardev=console0".into(),
        ]
    }
}

/// The host end of an interactive console while the guest runs.
pub(crate) enum ConsoleLink {
    /// `vmm --console tty`: input through its stdin, output on its stdout.
    Stdin(Option<ChildStdin>),
    /// QEMU: the socket its chardev serves; a thread copies the guest's
    /// output to `console.out` until QEMU closes it.
    Socket {
        stream: UnixStream,
        reader: Option<JoinHandle<io::Result<u64>>>,
    },
}

impl ConsoleLink {
    /// Connects to QEMU's console socket in `dir` (QEMU does not start the
    /// guest before), polling until it exists or `timeout` passes.
    pub(crate) fn connect_qemu(
        dir: &Path,
        qemu: &mut Child,
        timeout: Duration,
    ) -> Result<ConsoleLink, String> {
        let path = dir.join(SOCKET_FILE);
        let deadline = Instant::now() + timeout;
        let stream = loop {
            match UnixStream::connect(&path) {
                Ok(stream) => break stream,
                Err(e) if qemu.exited() || Instant::now() >= deadline => {
                    return Err(format!(
                        "connecting to QEMU's console socket {}: {e}\n--- qemu stderr:\n{}",
                        path.display(),
                        qemu.stderr_so_far()
                    ));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        let out_path = dir.join(OUTPUT_FILE);
        let mut out =
            File::create(&out_path).map_err(|e| format!("creating {}: {e}", out_path.display()))?;
        let mut from_guest = stream
            .try_clone()
            .map_err(|e| format!("cloning the console socket: {e}"))?;
        let reader = std::thread::Builder::new()
            .name("console-output".into())
            .spawn(move || io::copy(&mut from_guest, &mut out))
            .map_err(|e| format!("starting the console reader: {e}"))?;
        Ok(ConsoleLink::Socket {
            stream,
            reader: Some(reader),
        })
    }

    pub(crate) fn send(&mut self, bytes: &[u8]) -> Result<(), String> {
        let result = match self {
            ConsoleLink::Stdin(Some(stdin)) => stdin.write_all(bytes).and_then(|()| stdin.flush()),
            ConsoleLink::Stdin(None) => return Err("the VMM's stdin is not a pipe".into()),
            ConsoleLink::Socket { stream, .. } => stream.write_all(bytes),
        };
        result.map_err(|e| format!("sending {} bytes to the console: {e}", bytes.len()))
    }

    /// After the VMM exited: completes `dir/console.out` (from the socket,
    /// or from `vmm`'s stdout log).
    pub(crate) fn finish(mut self, dir: &Path) -> Result<(), String> {
        match &mut self {
            ConsoleLink::Stdin(stdin) => {
                drop(stdin.take());
                let from = dir.join("vmm.out");
                std::fs::copy(&from, dir.join(OUTPUT_FILE))
                    .map(|_| ())
                    .map_err(|e| format!("copying {}: {e}", from.display()))
            }
            ConsoleLink::Socket { reader, .. } => match reader.take().map(JoinHandle::join) {
                Some(Ok(Ok(_))) | None => Ok(()),
                Some(Ok(Err(e))) => Err(format!("reading the console socket: {e}")),
                Some(Err(_)) => Err("the console reader panicked".into()),
            },
        }
    }
}

impl Drop for ConsoleLink {
    /// Ends the reader thread even if the VMM still holds the socket.
    fn drop(&mut self) {
        if let ConsoleLink::Socket { stream, reader } = self {
            let _ = stream.shutdown(Shutdown::Both);
            if let Some(reader) = reader.take() {
                let _ = reader.join();
            }
        }
    }
}

/// `dir/console.out`.
pub fn output_path(dir: &Path) -> PathBuf {
    dir.join(OUTPUT_FILE)
}
