//! The console's worker: one thread serving both queues, the input
//! source and terminal resizes (see the parent for the device).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestMemory, GuestMemoryMmap, Permissions};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::worker::{Control, EventHandler, Source};
use crate::virtio::{place_of, pop_chain, PlaceSlot, VirtioInterrupt};

/// Where input comes from. A regular file (or /dev/null) cannot be
/// waited on: it is read whenever there is room instead.
pub(super) struct Input {
    pub(super) file: Arc<File>,
    pub(super) source: Source,
    pub(super) polled: bool,
}

pub(super) struct ConsoleHandler {
    pub(super) id: String,
    pub(super) mem: GuestMemoryMmap,
    pub(super) rx: Queue,
    pub(super) rx_kick: EventFd,
    pub(super) rx_call: EventFd,
    pub(super) tx: Queue,
    pub(super) tx_kick: EventFd,
    pub(super) tx_call: EventFd,
    pub(super) sink: Sink,
    /// None once the input ended.
    pub(super) input: Option<Input>,
    pub(super) input_paused: bool,
    pub(super) pending: Arc<Mutex<VecDeque<u8>>>,
    pub(super) window: Option<Arc<WindowSize>>,
    pub(super) size: Size,
    /// The size still has to be announced once the guest's port exists:
    /// Linux takes cols and rows only from a config change (for port 0
    /// without MULTIPORT), never at probe, and its port 0 exists only
    /// after DRIVER_OK; its first output shows that it does.
    pub(super) announce_size: bool,
    pub(super) interrupt: VirtioInterrupt,
    pub(super) control: Option<Control>,
    pub(super) failed: bool,
    /// Where the receive and transmit queues stand each time the worker
    /// pauses.
    pub(super) places: [PlaceSlot; 2],
}

impl ConsoleHandler {
    /// Guest output: every readable byte of every chain, in order, passed
    /// on in pieces of at most `OUTPUT_CHUNK` bytes. A descriptor that
    /// does not lie wholly in guest memory ends its chain's output.
    fn transmit(&mut self) -> Result<(), virtio_queue::Error> {
        let mem = &self.mem;
        let mut out = Vec::with_capacity(OUTPUT_CHUNK);
        while let Some(chain) = pop_chain(&mut self.tx, mem)? {
            let head = chain.head_index();
            'chain: for desc in chain.readable() {
                let len = desc.len() as usize;
                if !mem.check_range(desc.addr(), len, Permissions::Read) {
                    log::warn!("{}: an output buffer lies outside guest memory", self.id);
                    break;
                }
                let mut done = 0;
                while done < len {
                    let start = out.len();
                    let n = (len - done).min(OUTPUT_CHUNK - start);
                    out.resize(start + n, 0);
                    let read = desc
                        .addr()
                        .checked_add(done as u64)
                        .map(|addr| mem.read_slice(&mut out[start..], addr));
                    if !matches!(read, Some(Ok(()))) {
                        out.truncate(start);
                        break 'chain;
                    }
                    done += n;
                    if out.len() == OUTPUT_CHUNK {
                        self.output(&mut out);
                    }
                }
            }
            self.tx.add_used(mem, head, 0)?;
        }
        self.output(&mut out);
        if self.tx.needs_notification(mem)? {
            lock(&self.sink).queue_interrupts += 1;
            let _ = self.tx_call.write(1);
        }
        Ok(())
    }

    /// Hands `out` to the sink and empties it.
    fn output(&self, out: &mut Vec<u8>) {
        if out.is_empty() {
            return;
        }
        lock(&self.sink).write(&self.id, out);
        out.clear();
    }

    /// Pending input into the guest's receive buffers.
    fn receive(&mut self) -> Result<(), virtio_queue::Error> {
        self.read_unpolled_input();
        let mem = &self.mem;
        let mut pending = lock(&self.pending);
        let mut used = false;
        while !pending.is_empty() {
            let Some(chain) = pop_chain(&mut self.rx, mem)? else {
                break;
            };
            let head = chain.head_index();
            let mut written = 0u32;
            for desc in chain.writable() {
                let n = (desc.len() as usize).min(pending.len());
                let bytes: Vec<u8> = pending.iter().take(n).copied().collect();
                if mem.write_slice(&bytes, desc.addr()).is_err() {
                    log::warn!("{}: an input buffer lies outside guest memory", self.id);
                    break;
                }
                pending.drain(..n);
                written += n as u32;
                if pending.is_empty() {
                    break;
                }
            }
            self.rx.add_used(mem, head, written)?;
            lock(&self.sink).rx_bytes += u64::from(written);
            used = true;
        }
        let full = pending.len() >= INPUT_BUFFER;
        drop(pending);
        if used && self.rx.needs_notification(mem)? {
            lock(&self.sink).queue_interrupts += 1;
            let _ = self.rx_call.write(1);
        }
        self.pause_input(full);
        Ok(())
    }

    /// Stop reading input while the guest holds `INPUT_BUFFER` bytes
    /// unread, and start again once it has taken some.
    fn pause_input(&mut self, pause: bool) {
        if pause == self.input_paused {
            return;
        }
        let (Some(input), Some(control)) = (&self.input, &self.control) else {
            return;
        };
        if !input.polled {
            return;
        }
        let result = if pause {
            control.pause(input.source.fd, input.source.token)
        } else {
            control.resume(&input.source)
        };
        match result {
            Ok(()) => self.input_paused = pause,
            Err(e) => log::error!("{}: cannot pause or resume input: {e}", self.id),
        }
    }

    fn read_input(&mut self) {
        let Some(input) = &self.input else {
            return;
        };
        let room = INPUT_BUFFER.saturating_sub(lock(&self.pending).len());
        if room == 0 {
            return;
        }
        let mut buf = vec![0u8; room.min(4096)];
        match (&*input.file).read(&mut buf) {
            Ok(0) => self.end_input("end of input"),
            Ok(n) => lock(&self.pending).extend(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => self.end_input(&e.to_string()),
        }
    }

    /// A file that cannot be waited on: read while there is room.
    fn read_unpolled_input(&mut self) {
        while self.input.as_ref().is_some_and(|i| !i.polled) {
            let before = lock(&self.pending).len();
            if before >= INPUT_BUFFER {
                break;
            }
            self.read_input();
            if lock(&self.pending).len() == before {
                // End of input (which dropped it) or nothing to read now.
                break;
            }
        }
    }

    fn end_input(&mut self, why: &str) {
        if let (Some(input), Some(control)) = (self.input.take(), &self.control) {
            if input.polled {
                let _ = control.remove(input.file.as_raw_fd());
            }
        }
        log::info!("{}: input closed: {why}", self.id);
    }

    /// The user resized the terminal: tell the driver if the size moved.
    fn resized(&self) {
        let Some(window) = &self.window else {
            return;
        };
        if !window.take_resized() {
            return;
        }
        if let Some(now) = window.get() {
            if self.size.set(now) {
                log::debug!("{}: resized to {}x{}", self.id, now.0, now.1);
                self.interrupt.config_changed();
            }
        }
    }

    fn serve(&mut self, token: u64) -> Result<(), virtio_queue::Error> {
        match token {
            TOKEN_RESIZE => {
                self.resized();
                Ok(())
            }
            TOKEN_TX_KICK => {
                let _ = self.tx_kick.read();
                if std::mem::take(&mut self.announce_size) {
                    self.interrupt.config_changed();
                }
                self.transmit()
            }
            TOKEN_RX_KICK => {
                let _ = self.rx_kick.read();
                self.receive()
            }
            _ => {
                self.read_input();
                self.receive()
            }
        }
    }
}

impl EventHandler for ConsoleHandler {
    /// Everything is done in `ready`: only the queues' places to leave.
    fn pause(&mut self) {
        *lock(&self.places[0]) = Some(place_of(super::RECEIVEQ, &self.rx));
        *lock(&self.places[1]) = Some(place_of(super::TRANSMITQ, &self.tx));
    }

    fn start(&mut self, control: Control) {
        self.control = Some(control);
        if self.announce_size {
            // Soon after DRIVER_OK: usually the port exists by the time
            // the driver's work reads the config. The first output makes
            // sure.
            self.interrupt.config_changed();
        }
        // Input typed before the driver was ready.
        if let Err(e) = self.receive() {
            log::error!("{}: receive queue unusable: {e}", self.id);
        }
    }

    fn ready(&mut self, token: u64, _events: EventSet) {
        if self.failed {
            // Drain kicks so a broken ring does not spin us.
            let _ = self.rx_kick.read();
            let _ = self.tx_kick.read();
            return;
        }
        if let Err(e) = self.serve(token) {
            log::error!("{}: a queue is unusable ({e}); device needs reset", self.id);
            self.failed = true;
            self.pause_input(true);
            self.interrupt.set_needs_reset();
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl ConsoleHandler {
    /// A handler of its own, with no thread, no input and no terminal:
    /// the unit tests and fuzz targets call it directly.
    pub(super) fn detached(
        id: &str,
        mem: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        output: Box<dyn Write + Send>,
        interrupt: VirtioInterrupt,
    ) -> io::Result<ConsoleHandler> {
        let eventfd = || EventFd::new(libc::EFD_NONBLOCK);
        Ok(ConsoleHandler {
            id: id.to_owned(),
            mem,
            rx,
            rx_kick: eventfd()?,
            rx_call: eventfd()?,
            tx,
            tx_kick: eventfd()?,
            tx_call: eventfd()?,
            sink: Arc::new(Mutex::new(GuestOutput::new(output))),
            input: None,
            input_paused: false,
            pending: Arc::new(Mutex::new(VecDeque::new())),
            window: None,
            size: Size::default(),
            announce_size: false,
            interrupt,
            control: None,
            failed: false,
            places: Default::default(),
        })
    }
}
