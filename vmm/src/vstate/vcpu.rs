//! A vCPU: its initial state, its run loop, and the translation of KVM exits
//! into bus accesses or a reason to stop. `handle_exit` is a plain function
//! so that it can be tested with synthetic exits, without KVM.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvm_bindings::{kvm_cpuid_entry2, kvm_run, CpuId, Msrs};
use kvm_ioctls::{VcpuExit, VcpuFd};

use super::saved::{saved_msr_indices, StateError, VcpuState};
use super::vcpu_control::VcpuControl;
use super::vm::Vm;
use crate::arch::x86_64::{cpuid, regs};
use crate::bus::Bus;
use crate::vm_exit::{ExitReason, VmExit};

/// KVM_SYSTEM_EVENT_* types.
const SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const SYSTEM_EVENT_RESET: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("Failed to create vCPU {id}")]
    Create {
        id: u8,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Failed to set {what} of vCPU {id}")]
    Configure {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Failed to build the MSR list")]
    Msrs(#[source] vmm_sys_util::fam::Error),
}

thread_local! {
    /// The `kvm_run` area of the vCPU this thread runs, for `kick_handler`.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The handler of the signal that kicks a vCPU thread (SIGRTMIN): it makes
/// the thread's current KVM_RUN return, and also the next one, if the
/// signal lands just before the thread enters it.
pub extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: `run` is this thread's vCPU `kvm_run` mapping, set by
        // `Vcpu::run` and cleared before the vCPU (and the mapping) can go
        // away; the kernel reads `immediate_exit` at KVM_RUN entry, so a
        // volatile byte write is all it takes.
        unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs `kick_handler` for SIGRTMIN. SA_RESTART: a kick that lands
/// while the vCPU thread is blocked in a device access (a vhost-user
/// GET_CONFIG reading its reply) must not fail that access; KVM_RUN
/// itself returns EINTR whatever the flags say, which is what the kick is
/// for.
pub fn install_kick_handler() -> std::io::Result<()> {
    // SAFETY: sigaction is plain data; zero is valid (empty mask, no flags).
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = kick_handler as *const () as usize;
    action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `action` is fully set up and outlives the call; the handler
    // only writes one byte of this thread's own kvm_run, which is
    // async-signal-safe.
    let rc = unsafe {
        libc::sigaction(
            vmm_sys_util::signal::SIGRTMIN(),
            &action,
            std::ptr::null_mut(),
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The VM's exits to vmm by kind, summed over its vCPUs, for `vm.counters`.
#[derive(Debug, Default)]
pub struct ExitCounts {
    pub io: AtomicU64,
    pub mmio: AtomicU64,
    pub other: AtomicU64,
}

/// The buses a vCPU exit can reach.
#[derive(Clone)]
pub struct Buses {
    pub io: Bus,
    pub mmio: Bus,
}

/// What the run loop does after an exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Stop(ExitReason),
}

/// Serves one KVM exit. Accesses to addresses nobody owns read all ones and
/// drop writes, like an unpopulated bus.
pub fn handle_exit(exit: VcpuExit, buses: &Buses, id: u8) -> Action {
    match exit {
        VcpuExit::IoIn(port, data) => {
            if !buses.io.read(u64::from(port), data) {
                data.fill(0xff);
            }
            Action::Continue
        }
        VcpuExit::IoOut(port, data) => {
            if !buses.io.write(u64::from(port), data) {
                log::trace!("vCPU {id}: write to unassigned port {port:#x}");
            }
            Action::Continue
        }
        VcpuExit::MmioRead(addr, data) => {
            if !buses.mmio.read(addr, data) {
                data.fill(0xff);
            }
            Action::Continue
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !buses.mmio.write(addr, data) {
                log::trace!("vCPU {id}: write to unassigned MMIO {addr:#x}");
            }
            Action::Continue
        }
        // With the in-kernel LAPIC, HLT is handled by KVM; an exit here is
        // spurious and the next KVM_RUN blocks as it should.
        VcpuExit::Hlt | VcpuExit::IrqWindowOpen | VcpuExit::Intr => Action::Continue,
        VcpuExit::Shutdown => Action::Stop(ExitReason::TripleFault { vcpu: id }),
        VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, _) => Action::Stop(ExitReason::PowerOff),
        VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, _) => Action::Stop(ExitReason::Reset),
        VcpuExit::SystemEvent(kind, _) => Action::Stop(ExitReason::VcpuError {
            vcpu: id,
            message: format!("unexpected system event {kind}"),
        }),
        VcpuExit::FailEntry(reason, cpu) => Action::Stop(ExitReason::VcpuError {
            vcpu: id,
            message: format!("KVM entry failed on host CPU {cpu}, reason {reason:#x}"),
        }),
        VcpuExit::InternalError => Action::Stop(ExitReason::VcpuError {
            vcpu: id,
            message: "KVM internal error (often an instruction KVM cannot emulate)".into(),
        }),
        other => Action::Stop(ExitReason::VcpuError {
            vcpu: id,
            message: format!("unhandled KVM exit {other:?}"),
        }),
    }
}

pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    /// The VM's MSR index list, and those of them this vCPU reads back
    /// (found at its first save).
    msr_candidates: Vec<u32>,
    msr_indices: Option<Vec<u32>>,
    /// What `configure` (or a restore) gave the vCPU, for its snapshot.
    cpuid: Vec<kvm_cpuid_entry2>,
}

impl Vcpu {
    pub fn new(vm: &Vm, id: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .fd()
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Self {
            id,
            fd,
            msr_candidates: vm.msr_index_list().to_vec(),
            msr_indices: None,
            cpuid: Vec::new(),
        })
    }

    /// Everything KVM keeps of this vCPU; only while it is out of KVM_RUN
    /// with nothing pending (parked, or not started).
    pub fn save_state(&mut self) -> Result<VcpuState, StateError> {
        let indices = self
            .msr_indices
            .get_or_insert_with(|| saved_msr_indices(&self.msr_candidates, &self.fd));
        VcpuState::save(&self.fd, self.id, indices, &self.cpuid)
    }

    /// Into this vCPU, before it first runs (in place of `configure`'s
    /// boot state).
    pub fn restore_state(&mut self, state: &VcpuState) -> Result<(), StateError> {
        state.restore(&self.fd, self.id)?;
        self.cpuid = state.cpuid.clone();
        Ok(())
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// Sets CPUID, MSRs, FPU and LAPIC; the boot vCPU also gets its entry
    /// state. Application processors wait in KVM for the guest's INIT/SIPI.
    pub fn configure(
        &mut self,
        supported_cpuid: &CpuId,
        count: u8,
        boot: Option<regs::BootEntry>,
    ) -> Result<(), VcpuError> {
        let id = self.id;
        let err = |what| move |source| VcpuError::Configure { id, what, source };
        let mut cpuid = supported_cpuid.clone();
        cpuid::fix_up(&mut cpuid, id, count);
        self.fd.set_cpuid2(&cpuid).map_err(err("CPUID"))?;
        self.cpuid = cpuid.as_slice().to_vec();

        let entries = regs::boot_msrs();
        let msrs = Msrs::from_entries(&entries).map_err(VcpuError::Msrs)?;
        let written = self.fd.set_msrs(&msrs).map_err(err("MSRs"))?;
        if written != entries.len() {
            // KVM stops at the first MSR it refuses; the rest keep reset values.
            log::warn!(
                "vCPU {id}: KVM accepted {written} of {} boot MSRs (refused {:#x})",
                entries.len(),
                entries.get(written).map_or(0, |e| e.index)
            );
        }
        self.fd.set_fpu(&regs::boot_fpu()).map_err(err("FPU"))?;
        let mut lapic = self.fd.get_lapic().map_err(err("LAPIC"))?;
        regs::set_lint(&mut lapic);
        self.fd.set_lapic(&lapic).map_err(err("LAPIC"))?;

        if let Some(entry) = boot {
            let sregs = self.fd.get_sregs().map_err(err("segment registers"))?;
            self.fd
                .set_sregs(&regs::boot_sregs(entry, sregs))
                .map_err(err("segment registers"))?;
            self.fd
                .set_regs(&regs::boot_regs(entry))
                .map_err(err("registers"))?;
        }
        Ok(())
    }

    /// Runs the guest until the VM is asked to stop (by this vCPU, a device
    /// or the main thread, which then kicks us out of KVM_RUN with a signal),
    /// parking whenever `control` wants a pause.
    pub fn run(
        &mut self,
        buses: &Buses,
        exit: &Arc<VmExit>,
        control: &VcpuControl,
        counts: &ExitCounts,
    ) {
        let id = self.id;
        // Exits that reached us, by kind: the data path should add none
        // (kicks are ioeventfds, completions irqfds); benchmarks read this.
        let (mut io, mut mmio, mut other) = (0u64, 0u64, 0u64);
        let run: *mut kvm_run = self.fd.get_kvm_run();
        KVM_RUN.with(|cell| cell.set(run));
        // No exit served here waits for KVM to complete it: KVM finishes a
        // port or MMIO read (the value we put in kvm_run) only at the next
        // KVM_RUN, so a vCPU parks only after a KVM_RUN that returned at
        // entry, having completed it.
        let mut settled = true;
        while !exit.is_requested() {
            if control.pause_wanted() {
                if settled {
                    control.park(id, &mut || self.save_state());
                    continue;
                }
                // Enter once to complete the exit; KVM returns at once.
                self.fd.set_kvm_immediate_exit(1);
            }
            let action = match self.fd.run() {
                Ok(vcpu_exit) => {
                    settled = false;
                    let (local, shared) = match vcpu_exit {
                        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => (&mut io, &counts.io),
                        VcpuExit::MmioRead(..) | VcpuExit::MmioWrite(..) => {
                            (&mut mmio, &counts.mmio)
                        }
                        _ => (&mut other, &counts.other),
                    };
                    *local += 1;
                    shared.fetch_add(1, Ordering::Relaxed);
                    handle_exit(vcpu_exit, buses, id)
                }
                Err(e) if e.errno() == libc::EINTR => {
                    // A kick: the loop's checks see whether it was a stop
                    // or a pause.
                    self.fd.set_kvm_immediate_exit(0);
                    settled = true;
                    Action::Continue
                }
                Err(e) if e.errno() == libc::EAGAIN => Action::Continue,
                Err(e) => Action::Stop(ExitReason::VcpuError {
                    vcpu: id,
                    message: format!("KVM_RUN failed: {e}"),
                }),
            };
            if let Action::Stop(reason) = action {
                if matches!(
                    reason,
                    ExitReason::TripleFault { .. } | ExitReason::VcpuError { .. }
                ) {
                    self.log_state();
                }
                exit.request(reason);
            }
        }
        KVM_RUN.with(|cell| cell.set(std::ptr::null_mut()));
        log::info!(
            "vCPU {id} stopped after {} exits to vmm ({io} port I/O, {mmio} MMIO, {other} other)",
            io + mmio + other
        );
    }

    /// Where the guest was when it failed: the first thing anyone debugging asks.
    fn log_state(&self) {
        match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => log::error!(
                "vCPU {}: rip={:#x} rsp={:#x} rflags={:#x} cr0={:#x} cr2={:#x} cr3={:#x} cr4={:#x} efer={:#x} cs={:#x}",
                self.id, r.rip, r.rsp, r.rflags, s.cr0, s.cr2, s.cr3, s.cr4, s.efer, s.cs.selector
            ),
            _ => log::error!("vCPU {}: registers unavailable", self.id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;
    use std::sync::Mutex;

    struct Reg(u8);
    impl BusDevice for Reg {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(self.0);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    fn buses() -> Buses {
        let io = Bus::new();
        io.insert(Arc::new(Mutex::new(Reg(7))), 0x3f8, 8).unwrap();
        let mmio = Bus::new();
        mmio.insert(Arc::new(Mutex::new(Reg(9))), 0xe000_0000, 0x1000)
            .unwrap();
        Buses { io, mmio }
    }

    #[test]
    fn port_io_reaches_devices_and_unassigned_reads_all_ones() {
        let b = buses();
        assert_eq!(
            handle_exit(VcpuExit::IoOut(0x3f8, &[5]), &b, 0),
            Action::Continue
        );
        let mut data = [0u8; 1];
        handle_exit(VcpuExit::IoIn(0x3f9, &mut data), &b, 0);
        assert_eq!(data, [5]);
        let mut data = [0u8; 2];
        handle_exit(VcpuExit::IoIn(0x80, &mut data), &b, 0);
        assert_eq!(data, [0xff, 0xff]);
    }

    #[test]
    fn mmio_reaches_devices_and_unassigned_reads_all_ones() {
        let b = buses();
        let mut data = [0u8; 4];
        handle_exit(VcpuExit::MmioRead(0xe000_0ffc, &mut data), &b, 0);
        assert_eq!(data, [9; 4]);
        handle_exit(VcpuExit::MmioRead(0xd000_0000, &mut data), &b, 0);
        assert_eq!(data, [0xff; 4]);
        assert_eq!(
            handle_exit(VcpuExit::MmioWrite(0xd000_0000, &[1]), &b, 0),
            Action::Continue
        );
    }

    #[test]
    fn stops_with_the_right_reason() {
        let b = buses();
        assert_eq!(
            handle_exit(VcpuExit::Shutdown, &b, 2),
            Action::Stop(ExitReason::TripleFault { vcpu: 2 })
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(SYSTEM_EVENT_SHUTDOWN, &[]), &b, 0),
            Action::Stop(ExitReason::PowerOff)
        );
        assert_eq!(
            handle_exit(VcpuExit::SystemEvent(SYSTEM_EVENT_RESET, &[]), &b, 0),
            Action::Stop(ExitReason::Reset)
        );
        assert!(matches!(
            handle_exit(VcpuExit::InternalError, &b, 1),
            Action::Stop(ExitReason::VcpuError { vcpu: 1, .. })
        ));
        assert_eq!(handle_exit(VcpuExit::Hlt, &b, 0), Action::Continue);
    }
}
