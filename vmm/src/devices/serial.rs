//! The 8250 UART on COM1: `vm-superio`'s state machine behind our bus, its
//! interrupt an eventfd that KVM turns into IRQ 4.

use std::io::{self, Write};

use serde::{Deserialize, Serialize};
use vm_superio::{Serial as Uart, SerialState, Trigger};
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

/// The UART's registers and the input the guest has not read, as a
/// snapshot keeps them: vm-superio's `SerialState`, field for field
/// (vm-superio-ser, which would serialise it, pins an older vm-superio).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialSnapshot {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    #[error("The saved UART state does not fit the UART: {0}")]
    Restore(String),
}

impl Serial {
    pub fn new(interrupt: EventFd, out: Box<dyn Write + Send>) -> Self {
        Self {
            uart: Uart::new(IrqTrigger(interrupt), FlushingWriter(out)),
            failed_output: false,
        }
    }

    pub fn save(&self) -> SerialSnapshot {
        let s = self.uart.state();
        SerialSnapshot {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    /// The saved registers and input, on this UART's interrupt and output;
    /// an interrupt the state has pending is raised again.
    pub fn restore(&mut self, saved: &SerialSnapshot) -> Result<(), SerialError> {
        let state = SerialState {
            baud_divisor_low: saved.baud_divisor_low,
            baud_divisor_high: saved.baud_divisor_high,
            interrupt_enable: saved.interrupt_enable,
            interrupt_identification: saved.interrupt_identification,
            line_control: saved.line_control,
            line_status: saved.line_status,
            modem_control: saved.modem_control,
            modem_status: saved.modem_status,
            scratch: saved.scratch,
            in_buffer: saved.in_buffer.clone(),
        };
        // vm-superio's FIFO: checked before the output moves, so that a
        // refused state leaves this UART as it was.
        const FIFO_SIZE: usize = 64;
        if saved.in_buffer.len() > FIFO_SIZE {
            return Err(SerialError::Restore(format!(
                "{} bytes of input, the FIFO holds {FIFO_SIZE}",
                saved.in_buffer.len()
            )));
        }
        // vm-superio builds a UART from a state only with new parts: the
        // interrupt and output are ours, taken over from the one we had.
        let irq = self
            .uart
            .interrupt_evt()
            .0
            .try_clone()
            .map_err(|e| SerialError::Restore(e.to_string()))?;
        let out = std::mem::replace(self.uart.writer_mut(), FlushingWriter(Box::new(io::sink())));
        self.uart = Uart::from_state(&state, IrqTrigger(irq), vm_superio::serial::NoEvents, out)
            .map_err(|e| SerialError::Restore(format!("{e:?}")))?;
        Ok(())
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

    fn serial() -> (Serial, EventFd) {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        (
            Serial::new(irq.try_clone().unwrap(), Box::new(io::sink())),
            irq,
        )
    }

    /// Registers and unread input move to another UART, whose pending
    /// data interrupt is raised again; a FIFO fuller than vm-superio's is
    /// refused and leaves the UART as it was.
    #[test]
    fn a_uart_s_state_moves_to_another() {
        let (mut a, _) = serial();
        a.write(3, &[0x03]);
        a.write(7, &[0x5a]);
        a.write(1, &[0x01]);
        a.enqueue_input(b"hi");
        let saved = a.save();
        assert_eq!(saved.in_buffer, b"hi");
        let (mut b, irq) = serial();
        b.restore(&saved).unwrap();
        assert_eq!(b.save(), saved);
        assert!(irq.read().is_ok(), "the data interrupt is raised again");
        let mut byte = [0];
        b.read(0, &mut byte);
        assert_eq!(byte, [b'h']);

        let mut full = saved.clone();
        full.in_buffer = vec![0; 65];
        assert!(b.restore(&full).is_err());
        let mut byte = [0];
        b.read(0, &mut byte);
        assert_eq!(byte, [b'i'], "the refused state changed the UART");
    }
}
