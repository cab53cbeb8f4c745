//! virtio-console (VIRTIO 1.3 §5.3), port 0 only (no MULTIPORT): the
//! guest's hvc0. Output from transmitq0 goes to a sink; input read from a
//! source fills receiveq0's buffers. Both queues are served on one worker
//! thread, which stops reading the source while the guest has no room.
//! On a terminal the guest is told its size, and told again when the
//! user resizes it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use vmm_sys_util::epoll::EventSet;

use super::worker::{Source, Worker};
use serde::Deserialize;

use super::{
    ActivateContext, ActiveQueue, PlaceSlot, QueuePlace, VirtioDevice, VIRTIO_F_VERSION_1,
};
use crate::terminal::{self, WindowSize};
use crate::util::lock;

pub const DEVICE_TYPE: u32 = 3;
/// cols, rows, max_nr_ports, emerg_wr.
const CONFIG_LEN: usize = 12;
const VIRTIO_CONSOLE_F_SIZE: u64 = 1 << 0;
const VIRTIO_CONSOLE_F_EMERG_WRITE: u64 = 1 << 2;
const QUEUE_SIZE: u16 = 256;
const RECEIVEQ: usize = 0;
const TRANSMITQ: usize = 1;
/// Input held for a guest that is not reading, before we stop reading.
const INPUT_BUFFER: usize = 64 << 10;
/// Output is passed on in pieces of at most this much: a descriptor may
/// claim 4 GiB.
const OUTPUT_CHUNK: usize = 64 << 10;

const TOKEN_RX_KICK: u64 = 0;
const TOKEN_TX_KICK: u64 = 1;
const TOKEN_INPUT: u64 = 2;
const TOKEN_RESIZE: u64 = 3;

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("Failed to start the console's worker thread")]
    Worker(#[source] io::Error),
    #[error("Failed to pause the console's worker thread")]
    Pause(#[source] io::Error),
    #[error("The driver did not enable both of the console's queues")]
    Queues,
    #[error("the console's worker has ended: where its queues stand is not known")]
    NoPlace,
    #[error("the saved console state is not its input as hex: {0}")]
    State(String),
}

/// What a snapshot keeps of the console beyond its queues: the input read
/// from the host that the guest has not taken yet.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleState {
    #[serde(with = "crate::util::hex_bytes")]
    pending_input: Vec<u8>,
}

/// Where the guest's output goes, shared by the worker and emergency
/// writes (which come on a vCPU thread).
pub type Sink = Arc<Mutex<GuestOutput>>;

/// The guest's output, whether a failure to write it was said yet, and
/// what passed (for `vm.counters`).
pub struct GuestOutput {
    writer: Box<dyn Write + Send>,
    said: bool,
    /// Bytes the guest sent, written or not.
    tx_bytes: u64,
    /// Bytes it received as input, and notifications `vmm` sent it.
    rx_bytes: u64,
    queue_interrupts: u64,
}

impl GuestOutput {
    pub fn new(writer: Box<dyn Write + Send>) -> GuestOutput {
        GuestOutput {
            writer,
            said: false,
            tx_bytes: 0,
            rx_bytes: 0,
            queue_interrupts: 0,
        }
    }

    /// Writes all of `bytes`, never stalling the guest: a failure (a full
    /// disk under `--console file=`) is said once at the default level, as
    /// the UART does; a full pty that nobody reads is its normal state and
    /// only logged at debug level.
    fn write(&mut self, id: &str, bytes: &[u8]) {
        self.tx_bytes += bytes.len() as u64;
        let Err(e) = self
            .writer
            .write_all(bytes)
            .and_then(|()| self.writer.flush())
        else {
            return;
        };
        if e.kind() == std::io::ErrorKind::WouldBlock || self.said {
            log::debug!("{id}: {} bytes of output lost: {e}", bytes.len());
        } else {
            self.said = true;
            log::warn!("{id}: cannot write the guest's console output: {e}; output from here on may be lost");
        }
    }
}

/// What the builder hands the device.
pub struct ConsoleParams {
    pub id: String,
    pub output: Box<dyn Write + Send>,
    /// Read only when the epoll says there is something to read, so a
    /// blocking descriptor (the user's stdin) never blocks the worker.
    pub input: Option<File>,
    /// The terminal the console is on, for its size.
    pub window: Option<WindowSize>,
}

/// Columns and rows, as the config's first four bytes hold them, shared
/// by the worker (which learns of resizes) and config reads.
#[derive(Clone, Default)]
struct Size(Arc<AtomicU32>);

impl Size {
    fn set(&self, (cols, rows): (u16, u16)) -> bool {
        let packed = u32::from(cols) | u32::from(rows) << 16;
        self.0.swap(packed, Ordering::SeqCst) != packed
    }

    fn bytes(&self) -> [u8; 4] {
        self.0.load(Ordering::SeqCst).to_le_bytes()
    }
}

pub struct Console {
    id: String,
    sink: Sink,
    input: Option<Arc<File>>,
    /// Input read but not delivered when the device was reset: kept for the
    /// next driver.
    pending: Arc<Mutex<VecDeque<u8>>>,
    features: u64,
    window: Option<Arc<WindowSize>>,
    size: Size,
    queue_sizes: [u16; 2],
    worker: Option<Worker>,
    places: [PlaceSlot; 2],
}

impl Console {
    pub fn new(params: ConsoleParams) -> Console {
        let mut features = VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_EMERG_WRITE;
        let size = Size::default();
        // On a terminal the driver follows its size, even one that is 0x0
        // at start and gets a size later.
        if let Some(window) = &params.window {
            features |= VIRTIO_CONSOLE_F_SIZE;
            if let Some(now) = window.get() {
                size.set(now);
            }
        }
        Console {
            id: params.id,
            sink: Arc::new(Mutex::new(GuestOutput::new(params.output))),
            input: params.input.map(Arc::new),
            pending: Arc::new(Mutex::new(VecDeque::new())),
            features,
            window: params.window.map(Arc::new),
            size,
            queue_sizes: [QUEUE_SIZE; 2],
            worker: None,
            places: Default::default(),
        }
    }
}

impl VirtioDevice for Console {
    type Error = ConsoleError;

    fn id(&self) -> &str {
        &self.id
    }

    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn queue_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn config_len(&self) -> u32 {
        CONFIG_LEN as u32
    }

    fn read_config(&mut self, offset: u32, data: &mut [u8]) -> Result<(), ConsoleError> {
        let mut config = [0u8; CONFIG_LEN];
        if self.features & VIRTIO_CONSOLE_F_SIZE != 0 {
            config[0..4].copy_from_slice(&self.size.bytes());
        }
        // max_nr_ports: 1; emerg_wr reads as 0.
        config[4..8].copy_from_slice(&1u32.to_le_bytes());
        super::read_config_bytes(&config, offset, data);
        Ok(())
    }

    fn write_config(&mut self, offset: u32, data: &[u8]) -> Result<(), ConsoleError> {
        // emerg_wr: one character, written at once, even before DRIVER_OK.
        if offset == 8 && !data.is_empty() {
            lock(&self.sink).write(&self.id, &data[..1]);
        }
        Ok(())
    }

    fn activate(&mut self, context: ActivateContext) -> Result<(), ConsoleError> {
        self.worker = None;
        let mut queues: Vec<Option<ActiveQueue>> = context.queues.into_iter().map(Some).collect();
        let mut take = |index: usize| {
            queues
                .iter_mut()
                .find(|q| q.as_ref().is_some_and(|q| q.index == index))
                .and_then(Option::take)
                .ok_or(ConsoleError::Queues)
        };
        let rx = take(RECEIVEQ)?;
        let tx = take(TRANSMITQ)?;
        let mut sources = vec![
            Source {
                fd: rx.kick.as_raw_fd(),
                token: TOKEN_RX_KICK,
                events: EventSet::IN,
            },
            Source {
                fd: tx.kick.as_raw_fd(),
                token: TOKEN_TX_KICK,
                events: EventSet::IN,
            },
        ];
        let input = self.input.clone().map(|file| {
            let source = Source {
                fd: file.as_raw_fd(),
                token: TOKEN_INPUT,
                events: EventSet::IN,
            };
            let polled = terminal::pollable(file.as_raw_fd());
            if polled {
                sources.push(source);
            }
            Input {
                file,
                source,
                polled,
            }
        });
        let window = self
            .window
            .clone()
            .filter(|_| context.features & VIRTIO_CONSOLE_F_SIZE != 0);
        if let Some(window) = &window {
            // Resized while no driver was listening: the new one reads it.
            window.take_resized();
            if let Some(now) = window.get() {
                self.size.set(now);
            }
            sources.push(Source {
                fd: window.resized_fd(),
                token: TOKEN_RESIZE,
                events: EventSet::IN,
            });
        }
        let handler = ConsoleHandler {
            id: self.id.clone(),
            mem: context.mem,
            rx: rx.queue,
            rx_kick: rx.kick,
            rx_call: rx.call,
            tx: tx.queue,
            tx_kick: tx.kick,
            tx_call: tx.call,
            sink: self.sink.clone(),
            input,
            input_paused: false,
            pending: self.pending.clone(),
            announce_size: window.is_some(),
            window,
            size: self.size.clone(),
            interrupt: context.interrupt,
            control: None,
            failed: false,
            places: self.places.clone(),
        };
        self.worker = Some(
            Worker::spawn(&format!("{}-io", self.id), &sources, handler)
                .map_err(ConsoleError::Worker)?,
        );
        Ok(())
    }

    fn reset(&mut self) -> Result<(), ConsoleError> {
        self.worker = None;
        Ok(())
    }

    /// Output and input wait in their rings and the terminal while the
    /// worker is parked.
    fn pause(&mut self) -> Result<(), ConsoleError> {
        for place in &self.places {
            *lock(place) = None;
        }
        match &self.worker {
            Some(worker) => worker.pause().map_err(ConsoleError::Pause),
            None => Ok(()),
        }
    }

    fn resume(&mut self) -> Result<(), ConsoleError> {
        if let Some(worker) = &self.worker {
            worker.resume();
        }
        Ok(())
    }

    fn queue_places(&self) -> Result<Vec<QueuePlace>, ConsoleError> {
        self.places
            .iter()
            .map(|slot| (*lock(slot)).ok_or(ConsoleError::NoPlace))
            .collect()
    }

    fn save_state(&mut self) -> Result<serde_json::Value, ConsoleError> {
        let state = ConsoleState {
            pending_input: lock(&self.pending).iter().copied().collect(),
        };
        serde_json::to_value(state).map_err(|e| ConsoleError::State(e.to_string()))
    }

    /// The input the guest had not taken, delivered first when the
    /// worker starts.
    fn restore_state(&mut self, state: &serde_json::Value) -> Result<(), ConsoleError> {
        let state =
            ConsoleState::deserialize(state).map_err(|e| ConsoleError::State(e.to_string()))?;
        *lock(&self.pending) = state.pending_input.into();
        Ok(())
    }

    fn counters(&self) -> Vec<crate::lifecycle::Counter> {
        let sink = lock(&self.sink);
        vec![
            ("tx_bytes", sink.tx_bytes),
            ("rx_bytes", sink.rx_bytes),
            ("queue_interrupts", sink.queue_interrupts),
        ]
    }
}

mod handler;
use self::handler::{ConsoleHandler, Input};

/// The console's queue processing without its thread, for the fuzz
/// targets.
#[cfg(feature = "fuzzing")]
pub mod fuzzing;

#[cfg(test)]
mod tests;
