//! A built VM and its run loop: one named thread per vCPU, the main thread
//! waiting on the exit event, SIGINT/SIGTERM (blocked by `main`, see
//! `signals`) and terminal input, and a teardown that stops and joins every
//! vCPU thread.

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::builder::Terminals;
use crate::devices::serial::Serial;
use crate::signals::TerminationSignals;
use crate::terminal;
use crate::util::lock;
use crate::vm_exit::{ExitReason, VmExit};
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::{kick_handler, Buses, Vcpu};
use crate::vstate::vm::Vm;

const EVENT_EXIT: u64 = 0;
const EVENT_SIGNAL: u64 = 1;
const EVENT_SERIAL_INPUT: u64 = 2;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("Failed to set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("Failed to set up the event loop")]
    Epoll(#[source] std::io::Error),
    #[error("Failed to start a vCPU thread")]
    SpawnVcpu(#[source] std::io::Error),
}

pub struct Vmm {
    // Field order is drop order: vCPUs (already joined) go before the VM and
    // the memory KVM maps.
    vcpus: Vec<Vcpu>,
    buses: Buses,
    exit: Arc<VmExit>,
    serial: Option<Arc<Mutex<Serial>>>,
    /// What the guest types into the UART: stdin or a pty.
    serial_input: Option<File>,
    _vm: Vm,
    _memory: GuestMemory,
    /// Last: the terminal goes back to how it was once all else is gone.
    _terminals: Terminals,
}

impl Vmm {
    pub fn new(
        vm: Vm,
        memory: GuestMemory,
        vcpus: Vec<Vcpu>,
        buses: Buses,
        exit: Arc<VmExit>,
        serial: Option<(Arc<Mutex<Serial>>, Option<File>)>,
        terminals: Terminals,
    ) -> Self {
        let (serial, serial_input) = match serial {
            Some((serial, input)) => (Some(serial), input),
            None => (None, None),
        };
        Self {
            vcpus,
            buses,
            exit,
            serial,
            serial_input,
            _vm: vm,
            _memory: memory,
            _terminals: terminals,
        }
    }

    /// Runs the guest to the end and says why it ended. `signals` are the
    /// SIGINT and SIGTERM that `main` blocked before any thread started.
    pub fn run(mut self, signals: &TerminationSignals) -> Result<ExitReason, RunError> {
        // One that came during start-up stops the VM before it runs.
        if let Some(signo) = signals.read() {
            return Ok(ExitReason::Signal(signo));
        }
        register_signal_handler(SIGRTMIN(), kick_handler)
            .map_err(|e| RunError::Signals(std::io::Error::from_raw_os_error(e.errno())))?;

        let epoll = Epoll::new().map_err(RunError::Epoll)?;
        let add = |fd, data| {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, data),
                )
                .map_err(RunError::Epoll)
        };
        add(self.exit.event().as_raw_fd(), EVENT_EXIT)?;
        add(signals.as_raw_fd(), EVENT_SIGNAL)?;
        if let Some(input) = &self.serial_input {
            if terminal::pollable(input.as_raw_fd()) {
                add(input.as_raw_fd(), EVENT_SERIAL_INPUT)?;
            } else {
                log::info!(
                    "Serial input is not a terminal, pipe or socket: the UART gets no input"
                );
            }
        }

        let mut threads = Vec::with_capacity(self.vcpus.len());
        let vcpus = std::mem::take(&mut self.vcpus);
        for mut vcpu in vcpus {
            let buses = self.buses.clone();
            let exit = self.exit.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id()))
                .spawn(move || {
                    vcpu.run(&buses, &exit);
                    vcpu
                });
            match handle {
                Ok(h) => threads.push(h),
                Err(e) => {
                    self.exit.request(ExitReason::VcpuError {
                        vcpu: 0,
                        message: "failed to start vCPU threads".into(),
                    });
                    self.vcpus.extend(stop_vcpus(threads));
                    return Err(RunError::SpawnVcpu(e));
                }
            }
        }

        let mut events = vec![EpollEvent::default(); 4];
        while !self.exit.is_requested() {
            let n = match epoll.wait(-1, &mut events) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    self.exit.request(ExitReason::VcpuError {
                        vcpu: 0,
                        message: format!("event loop failed: {e}"),
                    });
                    break;
                }
            };
            for event in &events[..n] {
                match event.data() {
                    EVENT_SIGNAL => {
                        if let Some(signo) = signals.read() {
                            self.exit.request(ExitReason::Signal(signo));
                        }
                    }
                    // EOF or error: stop watching the input, keep running.
                    EVENT_SERIAL_INPUT if !self.forward_serial_input() => {
                        if let Some(input) = self.serial_input.take() {
                            let _ = epoll.ctl(
                                ControlOperation::Delete,
                                input.as_raw_fd(),
                                EpollEvent::default(),
                            );
                        }
                    }
                    _ => {}
                }
            }
        }

        self.vcpus.extend(stop_vcpus(threads));
        Ok(self.exit.reason().unwrap_or(ExitReason::VcpuError {
            vcpu: 0,
            message: "stopped without a reason".into(),
        }))
    }

    /// Called when the input is readable, so a blocking stdin never blocks.
    fn forward_serial_input(&self) -> bool {
        let Some(mut input) = self.serial_input.as_ref() else {
            return false;
        };
        let mut buf = [0u8; 64];
        match input.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
            Ok(0) | Err(_) => false,
            Ok(n) => {
                if let Some(serial) = &self.serial {
                    lock(serial).enqueue_input(&buf[..n]);
                }
                true
            }
        }
    }
}

/// Kicks every vCPU thread out of KVM_RUN, then joins it. One kick is
/// enough: the stop is requested before it, and the kick sets the vCPU's
/// `immediate_exit`, so a thread it reaches just before KVM_RUN returns
/// from it at once and sees the stop.
fn stop_vcpus(threads: Vec<JoinHandle<Vcpu>>) -> Vec<Vcpu> {
    for thread in &threads {
        if !thread.is_finished() {
            if let Err(e) = thread.kill(SIGRTMIN()) {
                log::debug!("Kick failed: {e}");
            }
        }
    }
    let mut vcpus = Vec::with_capacity(threads.len());
    for thread in threads {
        match thread.join() {
            Ok(vcpu) => vcpus.push(vcpu),
            Err(_) => log::error!("A vCPU thread panicked"),
        }
    }
    vcpus
}
