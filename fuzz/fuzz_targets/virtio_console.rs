//! virtio-console's queues from a hostile driver: receive and transmit
//! rings as it left them in memory, kicks and user input in any order,
//! served as the console's worker serves them.

#![no_main]

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use vmm::fuzzing::{ConsoleQueues, FakeMsiGroup, VirtioInterrupt};
use vmm_fuzz::{fill_data, guest_memory, Ring};

#[derive(Arbitrary, Debug)]
enum Op {
    KickReceive,
    KickTransmit,
    Input(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    rx: Ring,
    tx: Ring,
    data: Vec<u8>,
    ops: Vec<Op>,
}

/// Counts what the guest transmitted.
struct Counter(Arc<AtomicU64>);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fuzz_target!(|input: Input| {
    let mem = guest_memory();
    fill_data(&mem, &input.data);
    let (Some(rx), Some(tx)) = (input.rx.install(&mem, 0), input.tx.install(&mem, 1)) else {
        return;
    };
    let transmitted = Arc::new(AtomicU64::new(0));
    let interrupt = VirtioInterrupt::new(Arc::new(FakeMsiGroup::new(3)));
    let Ok(mut console) = ConsoleQueues::new(
        mem,
        rx,
        tx,
        Box::new(Counter(transmitted.clone())),
        interrupt,
    ) else {
        return;
    };
    let mut typed = 0u64;
    for op in input.ops.iter().take(32) {
        match op {
            Op::KickReceive => console.kick_receive(),
            Op::KickTransmit => console.kick_transmit(),
            Op::Input(bytes) => {
                typed += bytes.len() as u64;
                console.input(bytes);
            }
        }
        assert!(console.pending() as u64 <= typed, "input grew by itself");
    }
});
