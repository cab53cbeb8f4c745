//! A built VM and its run loop: one named thread per vCPU, the main thread
//! waiting on the exit event, SIGINT/SIGTERM (blocked by `main`, see
//! `signals`), terminal input and API requests, and a teardown that stops
//! and joins every vCPU thread.
//!
//! The main thread is the VMM thread: it owns the devices after boot and
//! is the only one that pauses and resumes. A pause parks every vCPU
//! outside KVM_RUN first (so no guest access is half done), then pauses
//! the devices; a resume goes the other way.

mod persist;

use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use vmm_sys_util::signal::{Killable, SIGRTMIN};

use crate::api::{Answer, ApiEndpoint, ApiReply, ApiRequest};
use crate::config::schema::VmConfigJson;
use crate::config::VmConfig;
use crate::device_manager::Devices;
use crate::devices::serial::Serial;
use crate::event_loop::EventLoop;
use crate::events;
use crate::signals::TerminationSignals;
use crate::terminal;
use crate::util::{error_chain, lock};
use crate::vm_exit::{ExitReason, VmExit};
use crate::vstate::memory::GuestMemory;
use crate::vstate::vcpu::{install_kick_handler, ExitCounts, Vcpu};
use crate::vstate::vcpu_control::VcpuControl;
use crate::vstate::vm::Vm;

/// What the run loop waits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Exit,
    Signal,
    SerialInput,
    Api,
}

/// Cloud Hypervisor's names for the states `vm.info` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmState {
    Running,
    Paused,
}

impl VmState {
    fn name(self) -> &'static str {
        match self {
            VmState::Running => "Running",
            VmState::Paused => "Paused",
        }
    }
}

/// A request the VM's state does not allow (409, where Cloud Hypervisor
/// answers 500).
#[derive(Debug, thiserror::Error)]
#[error("the VM is {}: cannot {action}", state.name())]
pub struct InvalidState {
    state: VmState,
    action: &'static str,
}

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
    // Field order is drop order: vCPUs (already joined) go before the
    // devices, the VM and the memory KVM maps.
    vcpus: Vec<Vcpu>,
    /// The running vCPUs' threads, each handing its vCPU back when joined.
    threads: Vec<JoinHandle<Vcpu>>,
    control: Arc<VcpuControl>,
    /// Exits to vmm by kind, for `vm.counters`.
    exits: Arc<ExitCounts>,
    state: VmState,
    restored: bool,
    devices: Devices,
    config: VmConfig,
    exit: Arc<VmExit>,
    serial: Option<Arc<Mutex<Serial>>>,
    /// What the guest types into the UART: stdin or a pty.
    serial_input: Option<File>,
    vm: Vm,
    memory: GuestMemory,
}

/// What `Vmm::new` takes beside the VM: the parts the builder made.
pub struct VmParts {
    pub vm: Vm,
    pub memory: GuestMemory,
    pub vcpus: Vec<Vcpu>,
    pub devices: Devices,
    pub exit: Arc<VmExit>,
    pub serial: Option<(Arc<Mutex<Serial>>, Option<File>)>,
    pub config: VmConfig,
    /// Built from a snapshot rather than booted.
    pub restored: bool,
    /// A restored VM that waits for vm.resume: its vCPUs park before
    /// they first run.
    pub paused: bool,
}

impl Vmm {
    pub fn new(parts: VmParts) -> Self {
        let (serial, serial_input) = match parts.serial {
            Some((serial, input)) => (Some(serial), input),
            None => (None, None),
        };
        let control = Arc::new(VcpuControl::default());
        if parts.paused {
            control.request_pause();
        }
        Self {
            vcpus: parts.vcpus,
            threads: Vec::new(),
            control,
            exits: Arc::default(),
            state: if parts.paused {
                VmState::Paused
            } else {
                VmState::Running
            },
            restored: parts.restored,
            devices: parts.devices,
            config: parts.config,
            exit: parts.exit,
            serial,
            serial_input,
            vm: parts.vm,
            memory: parts.memory,
        }
    }

    /// Runs the guest to the end and says why it ended. `signals` are the
    /// SIGINT and SIGTERM that `main` blocked before any thread started.
    /// `api`, if given, is served for as long as the VM runs. Returns why
    /// the VM ended and, when a request ended it, where the answer to that
    /// request goes: it is given once the VM is gone (or booted again).
    pub fn run(
        mut self,
        signals: &TerminationSignals,
        api: Option<&ApiEndpoint>,
    ) -> Result<(ExitReason, Option<Answer>), RunError> {
        // One that came during start-up stops the VM before it runs.
        if let Some(signo) = signals.read() {
            return Ok((ExitReason::Signal(signo), None));
        }
        install_kick_handler().map_err(RunError::Signals)?;

        let mut sources = EventLoop::new().map_err(RunError::Epoll)?;
        sources
            .add(self.exit.event().as_raw_fd(), Source::Exit)
            .map_err(RunError::Epoll)?;
        sources
            .add(signals.as_raw_fd(), Source::Signal)
            .map_err(RunError::Epoll)?;
        if let Some(input) = &self.serial_input {
            if terminal::pollable(input.as_raw_fd()) {
                sources
                    .add(input.as_raw_fd(), Source::SerialInput)
                    .map_err(RunError::Epoll)?;
            } else {
                log::info!(
                    "Serial input is not a terminal, pipe or socket: the UART gets no input"
                );
            }
        }
        if let Some(api) = api {
            sources
                .add(api.as_raw_fd(), Source::Api)
                .map_err(RunError::Epoll)?;
        }

        events::emit(
            "vm",
            if self.restored {
                "restoring"
            } else {
                "booting"
            },
            &[],
        );
        // A restored VM's running devices wait paused, as saved; one that
        // runs at once starts them before its vCPUs.
        if self.restored && self.state == VmState::Running {
            self.devices.resume();
        }
        let vcpus = std::mem::take(&mut self.vcpus);
        for mut vcpu in vcpus {
            let buses = self.devices.buses.clone();
            let exit = self.exit.clone();
            let control = self.control.clone();
            let counts = self.exits.clone();
            let handle = std::thread::Builder::new()
                .name(format!("vcpu{}", vcpu.id()))
                .spawn(move || {
                    vcpu.run(&buses, &exit, &control, &counts);
                    control.ended();
                    vcpu
                });
            match handle {
                Ok(h) => self.threads.push(h),
                Err(e) => {
                    self.exit.request(ExitReason::VcpuError {
                        vcpu: 0,
                        message: "failed to start vCPU threads".into(),
                    });
                    self.stop_vcpus();
                    return Err(RunError::SpawnVcpu(e));
                }
            }
        }

        events::emit("vm", if self.restored { "restored" } else { "booted" }, &[]);
        if self.state == VmState::Paused {
            self.control.wait_parked(self.threads.len());
            events::emit("vm", "paused", &[]);
        }
        let mut deferred = None;
        while !self.exit.is_requested() {
            let ready = match sources.wait() {
                Ok(ready) => ready,
                Err(e) => {
                    self.exit.request(ExitReason::VcpuError {
                        vcpu: 0,
                        message: format!("event loop failed: {e}"),
                    });
                    break;
                }
            };
            for source in ready {
                match source {
                    // The loop's condition reads it.
                    Source::Exit => {}
                    Source::Signal => {
                        if let Some(signo) = signals.read() {
                            self.exit.request(ExitReason::Signal(signo));
                        }
                    }
                    // EOF or error: stop watching the input, keep running.
                    Source::SerialInput if !self.forward_serial_input() => {
                        let _ = sources.remove(Source::SerialInput);
                        self.serial_input = None;
                    }
                    Source::SerialInput => {}
                    Source::Api => {
                        for (request, answer) in api.map(ApiEndpoint::take).unwrap_or_default() {
                            match self.serve(request) {
                                Some(reply) => answer.send(reply),
                                // Answered when the VM is gone.
                                None => deferred = Some(answer),
                            }
                        }
                    }
                }
            }
        }

        self.stop_vcpus();
        // What vm.counters would have said, for runs without the API.
        log::info!(
            "Exits to vmm: {}",
            serde_json::Value::from(self.exit_counters())
        );
        let reason = self.exit.reason().unwrap_or(ExitReason::VcpuError {
            vcpu: 0,
            message: "stopped without a reason".into(),
        });
        events::emit("vm", "shutdown", &[("reason", &reason.to_string())]);
        Ok((reason, deferred))
    }

    /// One API request, on the VMM thread. None: a request that ends the
    /// VM, answered once it is gone.
    fn serve(&mut self, request: ApiRequest) -> Option<ApiReply> {
        let done = match request {
            ApiRequest::VmmPing => return Some(ApiReply::json(&ping())),
            ApiRequest::VmInfo => return Some(ApiReply::json(&self.info())),
            ApiRequest::VmCounters => return Some(ApiReply::json(&self.counters())),
            ApiRequest::VmPause => self.pause(),
            ApiRequest::VmResume => self.resume(),
            ApiRequest::VmPowerButton => return Some(self.power_button()),
            ApiRequest::VmSnapshot { destination_url } => {
                return Some(match self.snapshot(&destination_url) {
                    Ok(()) => ApiReply::no_content(),
                    Err(e) => {
                        log::error!("vm.snapshot: {}", error_chain(&e));
                        ApiReply::error(e.status(), &[error_chain(&e)])
                    }
                })
            }
            ApiRequest::VmBoot => Err(InvalidState {
                state: self.state,
                action: "boot",
            }),
            ApiRequest::VmCreate(_) => Err(InvalidState {
                state: self.state,
                action: "create another VM (vm.delete first)",
            }),
            ApiRequest::VmRestore(_) => Err(InvalidState {
                state: self.state,
                action: "restore another VM (vm.delete first)",
            }),
            ApiRequest::VmmShutdown
            | ApiRequest::VmShutdown
            | ApiRequest::VmReboot
            | ApiRequest::VmDelete => {
                self.exit.request(match request {
                    ApiRequest::VmShutdown => ExitReason::ApiVmShutdown,
                    ApiRequest::VmReboot => ExitReason::ApiVmReboot,
                    ApiRequest::VmDelete => ExitReason::ApiVmDelete,
                    _ => ExitReason::ApiShutdown,
                });
                return None;
            }
        };
        Some(match done {
            Ok(()) => ApiReply::no_content(),
            Err(e) => ApiReply::error(409, &[e.to_string()]),
        })
    }

    /// Presses the ACPI power button; what follows is the guest's
    /// business. A paused VM takes no interrupt, so it is refused then.
    fn power_button(&mut self) -> ApiReply {
        if self.state != VmState::Running {
            let refused = InvalidState {
                state: self.state,
                action: "press the power button",
            };
            return ApiReply::error(409, &[refused.to_string()]);
        }
        match self.devices.acpi_events.power_button() {
            Ok(()) => {
                events::emit("vm", "power-button", &[]);
                ApiReply::no_content()
            }
            Err(e) => ApiReply::error(
                500,
                &[
                    "cannot raise the ACPI event interrupt".into(),
                    e.to_string(),
                ],
            ),
        }
    }

    /// Parks every vCPU outside KVM_RUN, then pauses every device.
    pub fn pause(&mut self) -> Result<(), InvalidState> {
        if self.state != VmState::Running {
            return Err(InvalidState {
                state: self.state,
                action: "pause",
            });
        }
        events::emit("vm", "pausing", &[]);
        self.control.request_pause();
        self.kick_vcpus();
        self.control.wait_parked(self.threads.len());
        self.devices.pause();
        self.state = VmState::Paused;
        events::emit("vm", "paused", &[]);
        Ok(())
    }

    /// Resumes every device, then lets the vCPUs go.
    pub fn resume(&mut self) -> Result<(), InvalidState> {
        if self.state != VmState::Paused {
            return Err(InvalidState {
                state: self.state,
                action: "resume",
            });
        }
        events::emit("vm", "resuming", &[]);
        self.devices.resume();
        self.control.resume();
        self.state = VmState::Running;
        events::emit("vm", "resumed", &[]);
        Ok(())
    }

    /// Cloud Hypervisor's `VmInfo`: the configuration, the state, the
    /// memory and the devices by id with their PCI addresses.
    fn info(&self) -> serde_json::Value {
        let device_tree: serde_json::Map<String, serde_json::Value> = self
            .devices
            .iter()
            .map(|node| {
                let bdf = format!("0000:{}", node.bdf);
                (
                    node.id.clone(),
                    serde_json::json!({
                        "id": node.id,
                        "resources": [],
                        "children": [],
                        "pci_bdf": bdf,
                    }),
                )
            })
            .collect();
        vm_info(
            &self.config,
            self.state.name(),
            self.config.memory.size,
            device_tree,
        )
    }

    /// Cloud Hypervisor's `vm.counters`: each device's counters by id,
    /// and the event monitor's under `event-monitor`.
    fn counters(&self) -> serde_json::Value {
        let mut devices: serde_json::Map<String, serde_json::Value> = self
            .devices
            .counters()
            .into_iter()
            .map(|(id, counters)| {
                let counters: serde_json::Map<String, serde_json::Value> = counters
                    .into_iter()
                    .map(|(name, value)| (name.to_owned(), value.into()))
                    .collect();
                (id, counters.into())
            })
            .collect();
        devices.insert("vcpu-exits".into(), self.exit_counters().into());
        if let Some((sent, dropped)) = events::counts() {
            devices.insert(
                "event-monitor".into(),
                serde_json::json!({ "events": sent, "dropped": dropped }),
            );
        }
        devices.into()
    }

    /// Exits to vmm by kind, then by the bus range they reached
    /// (`io 0x3f8+0x8`), and those nothing answered (`io unassigned`): what
    /// profiles a boot.
    fn exit_counters(&self) -> serde_json::Map<String, serde_json::Value> {
        let load = |count: &AtomicU64| count.load(Ordering::Relaxed);
        let mut counters = serde_json::Map::new();
        counters.insert("io".into(), load(&self.exits.io).into());
        counters.insert("mmio".into(), load(&self.exits.mmio).into());
        counters.insert("other".into(), load(&self.exits.other).into());
        let buses = &self.devices.buses;
        for (space, bus) in [("io", &buses.io), ("mmio", &buses.mmio)] {
            let (reached, unassigned) = bus.accesses();
            for range in reached {
                let name = format!("{space} {:#x}+{:#x}", range.base, range.len);
                counters.insert(name, range.count.into());
            }
            if unassigned > 0 {
                counters.insert(format!("{space} unassigned"), unassigned.into());
            }
        }
        counters
    }

    /// Interrupts every vCPU's KVM_RUN: the thread then sees what the VMM
    /// wants (a pause, or the end).
    fn kick_vcpus(&self) {
        for thread in &self.threads {
            if !thread.is_finished() {
                if let Err(e) = thread.kill(SIGRTMIN()) {
                    log::debug!("Kick failed: {e}");
                }
            }
        }
    }

    /// Kicks every vCPU thread out of KVM_RUN (or its park), then joins
    /// it. One kick is enough: the stop is requested before it, and the
    /// kick sets the vCPU's `immediate_exit`, so a thread it reaches just
    /// before KVM_RUN returns from it at once and sees the stop.
    fn stop_vcpus(&mut self) {
        self.control.stop();
        self.kick_vcpus();
        for thread in std::mem::take(&mut self.threads) {
            match thread.join() {
                Ok(vcpu) => self.vcpus.push(vcpu),
                Err(_) => log::error!("A vCPU thread panicked"),
            }
        }
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

/// Cloud Hypervisor's `VmInfo`, for a VM in `state` (or one only
/// created: no memory, no devices).
pub fn vm_info(
    config: &VmConfig,
    state: &str,
    memory_actual_size: u64,
    device_tree: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    serde_json::json!({
        "config": VmConfigJson::from(config),
        "state": state,
        "memory_actual_size": memory_actual_size,
        "device_tree": device_tree,
    })
}

/// Cloud Hypervisor's `VmmPingResponse`.
pub fn ping() -> serde_json::Value {
    serde_json::json!({
        "build_version": env!("CARGO_PKG_VERSION"),
        "version": env!("CARGO_PKG_VERSION"),
        "pid": std::process::id(),
        "features": ["kvm"],
    })
}
