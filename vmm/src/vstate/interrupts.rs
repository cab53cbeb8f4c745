//! MSI delivery through KVM: one GSI and irqfd per MSI-X vector, routed with
//! `KVM_SET_GSI_ROUTING`. Masking detaches the irqfd; KVM delivers a signal
//! that arrived while masked when it is attached again (the eventfd keeps
//! its count), which is exactly the pending-bit semantics MSI-X asks for.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::bus::lock;

/// GSIs 0-23 belong to the IOAPIC (and 0-15 to the PICs).
const FIRST_MSI_GSI: u32 = 24;
const MAX_GSI: u32 = 1023;

#[derive(Debug, thiserror::Error)]
pub enum InterruptError {
    #[error("No free GSI for another MSI vector")]
    OutOfGsis,
    #[error("Failed to create an eventfd")]
    EventFd(#[source] std::io::Error),
    #[error("Failed to build the GSI routing table")]
    Routing(#[source] vmm_sys_util::fam::Error),
    #[error("KVM_SET_GSI_ROUTING failed")]
    SetRouting(#[source] kvm_ioctls::Error),
    #[error("Failed to attach or detach the irqfd of GSI {gsi}")]
    Irqfd {
        gsi: u32,
        #[source]
        source: kvm_ioctls::Error,
    },
}

/// The VM's routing table; KVM replaces the whole table on every update,
/// so the legacy irqchip routes are kept in it alongside the MSI ones.
pub struct MsiRouter {
    fd: Arc<VmFd>,
    routes: Mutex<BTreeMap<(u32, u32, u32), kvm_irq_routing_entry>>,
    next_gsi: Mutex<u32>,
}

/// One MSI vector: writing its eventfd interrupts the guest (when unmasked).
pub struct MsiVector {
    router: Arc<MsiRouter>,
    pub gsi: u32,
    pub irqfd: EventFd,
    attached: bool,
}

fn irqchip_route(gsi: u32, chip: u32, pin: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_IRQCHIP,
        ..Default::default()
    };
    e.u.irqchip.irqchip = chip;
    e.u.irqchip.pin = pin;
    e
}

impl MsiRouter {
    /// KVM's default routes: PIC pins for GSI 0-15 (except the cascade),
    /// IOAPIC pins for 0-23.
    pub fn new(fd: Arc<VmFd>) -> Arc<MsiRouter> {
        let mut routes = BTreeMap::new();
        for gsi in 0..24u32 {
            if gsi < 16 && gsi != 2 {
                let (chip, pin) = if gsi < 8 {
                    (KVM_IRQCHIP_PIC_MASTER, gsi)
                } else {
                    (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
                };
                routes.insert((gsi, 0, chip), irqchip_route(gsi, chip, pin));
            }
            routes.insert(
                (gsi, 0, KVM_IRQCHIP_IOAPIC),
                irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi),
            );
        }
        Arc::new(MsiRouter {
            fd,
            routes: Mutex::new(routes),
            next_gsi: Mutex::new(FIRST_MSI_GSI),
        })
    }

    /// A new vector, masked (no route, irqfd detached).
    pub fn allocate(self: &Arc<Self>) -> Result<MsiVector, InterruptError> {
        let gsi = {
            let mut next = lock(&self.next_gsi);
            if *next > MAX_GSI {
                return Err(InterruptError::OutOfGsis);
            }
            *next += 1;
            *next - 1
        };
        Ok(MsiVector {
            router: self.clone(),
            gsi,
            irqfd: EventFd::new(libc::EFD_NONBLOCK).map_err(InterruptError::EventFd)?,
            attached: false,
        })
    }

    fn commit(
        &self,
        routes: &BTreeMap<(u32, u32, u32), kvm_irq_routing_entry>,
    ) -> Result<(), InterruptError> {
        let entries: Vec<kvm_irq_routing_entry> = routes.values().copied().collect();
        let table = KvmIrqRouting::from_entries(&entries).map_err(InterruptError::Routing)?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(InterruptError::SetRouting)
    }

    fn set_msi(&self, gsi: u32, address: u64, data: u32) -> Result<(), InterruptError> {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = address as u32;
        e.u.msi.address_hi = (address >> 32) as u32;
        e.u.msi.data = data;
        let mut routes = lock(&self.routes);
        routes.insert((gsi, 1, 0), e);
        self.commit(&routes)
    }
}

impl MsiVector {
    /// Routes the vector to `address`/`data` and attaches or detaches the
    /// irqfd according to `masked`.
    pub fn update(&mut self, address: u64, data: u32, masked: bool) -> Result<(), InterruptError> {
        if !masked {
            self.router.set_msi(self.gsi, address, data)?;
        }
        if masked == self.attached {
            let gsi = self.gsi;
            let result = if masked {
                self.router.fd.unregister_irqfd(&self.irqfd, gsi)
            } else {
                self.router.fd.register_irqfd(&self.irqfd, gsi)
            };
            result.map_err(|source| InterruptError::Irqfd { gsi, source })?;
            self.attached = !masked;
        }
        Ok(())
    }

    /// Whether a signal is waiting (the PBA bit of a masked vector): reads
    /// the eventfd's count without consuming it is not possible, so this
    /// consumes it and writes it back.
    pub fn pending(&self) -> bool {
        if self.attached {
            return false;
        }
        match self.irqfd.read() {
            Ok(count) => {
                let _ = self.irqfd.write(count);
                true
            }
            Err(_) => false,
        }
    }

    /// Raises the interrupt from the VMM itself (config changes).
    pub fn trigger(&self) {
        if let Err(e) = self.irqfd.write(1) {
            log::error!("Failed to signal MSI GSI {}: {e}", self.gsi);
        }
    }
}

impl Drop for MsiVector {
    fn drop(&mut self) {
        if self.attached {
            let _ = self.router.fd.unregister_irqfd(&self.irqfd, self.gsi);
        }
    }
}

/// MMIO ioeventfds: a guest write to the address signals the eventfd inside
/// KVM, with no exit to the VMM.
pub struct IoEvents {
    fd: Arc<VmFd>,
}

impl IoEvents {
    pub fn new(fd: Arc<VmFd>) -> Self {
        IoEvents { fd }
    }

    pub fn register(&self, event: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        self.fd.register_ioevent(
            event,
            &kvm_ioctls::IoEventAddress::Mmio(addr),
            kvm_ioctls::NoDatamatch,
        )
    }

    pub fn unregister(&self, event: &EventFd, addr: u64) -> Result<(), kvm_ioctls::Error> {
        self.fd.unregister_ioevent(
            event,
            &kvm_ioctls::IoEventAddress::Mmio(addr),
            kvm_ioctls::NoDatamatch,
        )
    }
}
