//! The console's queue processing without its thread, for the fuzz
//! targets: a hostile driver's chains on both queues, input as bytes.

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

use super::*;
use crate::virtio::worker::EventHandler;
use crate::virtio::VirtioInterrupt;

pub struct ConsoleQueues {
    handler: ConsoleHandler,
}

impl ConsoleQueues {
    /// `rx` and `tx` as the driver set them up; what the guest
    /// transmits goes to `output`.
    pub fn new(
        mem: GuestMemoryMmap,
        rx: Queue,
        tx: Queue,
        output: Box<dyn Write + Send>,
        interrupt: VirtioInterrupt,
    ) -> io::Result<ConsoleQueues> {
        Ok(ConsoleQueues {
            handler: ConsoleHandler::detached("fuzz-console", mem, rx, tx, output, interrupt)?,
        })
    }

    /// Input typed by the user, waiting for receive buffers.
    pub fn input(&mut self, bytes: &[u8]) {
        lock(&self.handler.pending).extend(bytes);
        self.handler.ready(TOKEN_INPUT, EventSet::IN);
    }

    pub fn kick_receive(&mut self) {
        self.handler.ready(TOKEN_RX_KICK, EventSet::IN);
    }

    pub fn kick_transmit(&mut self) {
        self.handler.ready(TOKEN_TX_KICK, EventSet::IN);
    }

    /// Input not yet delivered.
    pub fn pending(&self) -> usize {
        lock(&self.handler.pending).len()
    }

    /// A queue turned out unusable: the device waits for a reset.
    pub fn failed(&self) -> bool {
        self.handler.failed
    }
}
