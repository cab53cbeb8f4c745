//! The 8250 UART on COM1: `vm-superio`'s state machine behind our bus, its
//! interrupt an eventfd that KVM turns into IRQ 4.

use std::io::{self, Write};

use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;

/// Raises the UART's interrupt line through an irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where guest output goes; flushed on every write so that a reader sees
/// each byte as the guest sends it (tests wait on serial lines).
pub struct FlushingWriter(pub Box<dyn Write + Send>);

impl Write for FlushingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.0.write(buf)?;
        self.0.flush()?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

pub struct Serial {
    uart: Uart<IrqTrigger, vm_superio::serial::NoEvents, FlushingWriter>,
    failed_output: bool,
}

impl Serial {
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Uart::new(IrqTrigger(interrupt), FlushingWriter(out)),
            failed_output: false,
        }
    }

    /// Input for the guest (from the host terminal).
    pub fn enqueue_input(&mut self, bytes: &[u8]) {
        if let Err(e) = self.uart.enqueue_raw_bytes(bytes) {
            log::warn!("Serial input dropped: {e:?}");
        }
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are bytes; a wider access reads the same register.
        let value = self.uart.read(offset as u8);
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // A string write (`rep outsb`) arrives as one exit with several bytes,
        // all meant for the same register.
        for &byte in data {
            if let Err(e) = self.uart.write(offset as u8, byte) {
                // A closed pipe must not end the VM nor flood the log.
                if !self.failed_output {
                    log::warn!("Serial output failed, further errors not logged: {e:?}");
                    self.failed_output = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn string_writes_are_byte_writes_to_one_register() {
        let out = Shared::default();
        let mut serial = Serial::new(EventFd::new(0).unwrap(), Box::new(out.clone()));
        serial.write(0, b"probe: ok\n");
        assert_eq!(out.0.lock().unwrap().as_slice(), b"probe: ok\n");
    }

    #[test]
    fn input_is_readable_from_the_data_register() {
        let mut serial = Serial::new(EventFd::new(0).unwrap(), Box::new(io::sink()));
        serial.enqueue_input(b"x");
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut data = [0u8];
        serial.read(0, &mut data);
        assert_eq!(data[0], b'x');
    }
}
