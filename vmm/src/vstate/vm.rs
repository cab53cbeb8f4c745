//! The KVM VM: in-kernel interrupt controllers and PIT, guest memory slots,
//! irqfds that turn eventfd writes into guest interrupts.

use std::sync::Arc;

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::EventFd;

use super::memory::GuestMemory;

/// KVM needs three pages for the real-mode TSS and one for the identity map
/// just below the BIOS area at the top of 4 GiB; nothing else lives there.
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
const KVM_IDENTITY_MAP_ADDRESS: u64 = 0xfffb_c000;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("Failed to open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    #[error("KVM API version {0} is not the supported version 12")]
    KvmApiVersion(i32),
    #[error("Failed to create the KVM VM")]
    CreateVm(#[source] kvm_ioctls::Error),
    #[error("Failed to set the TSS address")]
    SetTssAddress(#[source] kvm_ioctls::Error),
    #[error("Failed to set the identity map address")]
    SetIdentityMap(#[source] kvm_ioctls::Error),
    #[error("Failed to create the in-kernel interrupt controllers")]
    CreateIrqChip(#[source] kvm_ioctls::Error),
    #[error("Failed to create the in-kernel PIT")]
    CreatePit(#[source] kvm_ioctls::Error),
    #[error("Failed to read KVM's MSR index list")]
    MsrIndexList(#[source] kvm_ioctls::Error),
    #[error("Failed to register guest memory at {addr:#x}")]
    SetMemoryRegion {
        addr: u64,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Failed to register an irqfd for GSI {gsi}")]
    RegisterIrqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

pub struct Vm {
    kvm: Kvm,
    /// The MSRs KVM says it saves and restores, for the vCPUs' snapshots.
    msr_index_list: Vec<u32>,
    /// Shared with devices that register ioeventfds, irqfds and MSI routes
    /// while the guest runs (BAR moves, MSI-X programming).
    fd: Arc<VmFd>,
}

impl Vm {
    /// A VM with `memory` registered and the in-kernel devices created.
    pub fn new(memory: &GuestMemory) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let version = kvm.get_api_version();
        if version != kvm_bindings::KVM_API_VERSION as i32 {
            return Err(VmError::KvmApiVersion(version));
        }
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        // Memory first: measured on PVM, registering the first memory slot
        // after the in-kernel irqchip exists costs about 4 ms more than
        // before it. (RAM above 4 GiB costs about 0.45 ms per GiB there,
        // for the shadow MMU's reverse maps; registering it on a thread
        // while the rest is built gained nothing: creating the irqchip and
        // the ioeventfds waits for the same KVM lock.)
        register_memory(&fd, &slots(memory))?;
        fd.set_tss_address(KVM_TSS_ADDRESS)
            .map_err(VmError::SetTssAddress)?;
        fd.set_identity_map_address(KVM_IDENTITY_MAP_ADDRESS)
            .map_err(VmError::SetIdentityMap)?;
        fd.create_irq_chip().map_err(VmError::CreateIrqChip)?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        fd.create_pit2(pit).map_err(VmError::CreatePit)?;
        let msr_index_list = kvm
            .get_msr_index_list()
            .map_err(VmError::MsrIndexList)?
            .as_slice()
            .to_vec();
        Ok(Self {
            kvm,
            msr_index_list,
            fd: Arc::new(fd),
        })
    }

    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    pub fn msr_index_list(&self) -> &[u32] {
        &self.msr_index_list
    }

    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    pub fn shared_fd(&self) -> Arc<VmFd> {
        self.fd.clone()
    }

    /// Writes to `event` raise IOAPIC pin (or routed GSI) `gsi`.
    pub fn register_irqfd(&self, event: &EventFd, gsi: u32) -> Result<(), VmError> {
        self.fd
            .register_irqfd(event, gsi)
            .map_err(|source| VmError::RegisterIrqfd { gsi, source })
    }
}

/// One KVM slot per memory region, as plain values a thread can own.
fn slots(memory: &GuestMemory) -> Vec<kvm_userspace_memory_region> {
    memory
        .iter()
        .enumerate()
        .map(|(slot, region)| kvm_userspace_memory_region {
            slot: slot as u32,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        })
        .collect()
}

fn register_memory(fd: &VmFd, slots: &[kvm_userspace_memory_region]) -> Result<(), VmError> {
    for &slot in slots {
        // SAFETY: the mapping behind each slot stays alive as long as the
        // VM: `GuestMemory` is owned by the `Vmm` that also owns this `Vm`
        // (or, while building, outlives it) and is dropped after it.
        unsafe { fd.set_user_memory_region(slot) }.map_err(|source| VmError::SetMemoryRegion {
            addr: slot.guest_phys_addr,
            source,
        })?;
    }
    Ok(())
}

/// A small VM for tests that need KVM; where /dev/kvm is unusable they
/// say so loudly and pass.
#[cfg(test)]
pub(crate) fn test_vm_or_skip(test: &str) -> Option<Vm> {
    let memory = crate::vstate::memory::create_guest_memory(&crate::config::MemoryConfig {
        size: 2 << 20,
        shared: false,
        hugepages: false,
        thp: false,
    })
    .ok()?;
    match Vm::new(&memory) {
        Ok(vm) => Some(vm),
        Err(e) => {
            eprintln!("SKIPPED {test}: no usable KVM here: {e}");
            None
        }
    }
}
