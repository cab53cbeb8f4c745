//! MSI delivery through KVM: one GSI and irqfd per MSI-X vector, routed with
//! `KVM_SET_GSI_ROUTING`. Masking detaches the irqfd; KVM delivers a signal
//! that arrived while masked when it is attached again (the eventfd keeps
//! its count), which is exactly the pending-bit semantics MSI-X asks for.
//! Also the MMIO ioeventfds that carry virtqueue kicks. These implement the
//! traits of `crate::interrupt`, through which devices see them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use crate::interrupt::{
    InterruptError, IoEventError, IoEventRegistry, MsiInterruptGroup, MsiMessage,
};
use crate::util::lock;

/// GSIs 0-23 belong to the IOAPIC (and 0-15 to the PICs).
const FIRST_MSI_GSI: u32 = 24;
const MAX_GSI: u32 = 1023;
/// How many MSI vectors all devices together can have: one GSI each.
pub const MSI_GSI_COUNT: usize = (MAX_GSI - FIRST_MSI_GSI + 1) as usize;

#[derive(Debug, thiserror::Error)]
pub enum KvmInterruptError {
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

/// Routes are keyed by (GSI, kind, chip) so that one GSI can reach both the
/// PIC and the IOAPIC, as KVM's defaults do.
type RouteKey = (u32, u32, u32);
const KIND_IRQCHIP: u32 = 0;
const KIND_MSI: u32 = 1;

/// KVM's default routes, which `KVM_SET_GSI_ROUTING` would otherwise drop:
/// PIC pins for GSI 0-15 (except the cascade), IOAPIC pins for 0-23. The
/// serial port's irqfd on GSI 4 depends on them.
fn default_routes() -> BTreeMap<RouteKey, kvm_irq_routing_entry> {
    let mut routes = BTreeMap::new();
    for gsi in 0..FIRST_MSI_GSI {
        if gsi < 16 && gsi != 2 {
            let (chip, pin) = if gsi < 8 {
                (KVM_IRQCHIP_PIC_MASTER, gsi)
            } else {
                (KVM_IRQCHIP_PIC_SLAVE, gsi - 8)
            };
            routes.insert((gsi, KIND_IRQCHIP, chip), irqchip_route(gsi, chip, pin));
        }
        routes.insert(
            (gsi, KIND_IRQCHIP, KVM_IRQCHIP_IOAPIC),
            irqchip_route(gsi, KVM_IRQCHIP_IOAPIC, gsi),
        );
    }
    routes
}

fn msi_route(gsi: u32, address: u64, data: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry {
        gsi,
        type_: KVM_IRQ_ROUTING_MSI,
        ..Default::default()
    };
    e.u.msi.address_lo = address as u32;
    e.u.msi.address_hi = (address >> 32) as u32;
    e.u.msi.data = data;
    e
}

impl MsiRouter {
    pub fn new(fd: Arc<VmFd>) -> Arc<MsiRouter> {
        Arc::new(MsiRouter {
            fd,
            routes: Mutex::new(default_routes()),
            next_gsi: Mutex::new(FIRST_MSI_GSI),
        })
    }

    /// A new vector, masked (no route, irqfd detached).
    pub fn allocate(self: &Arc<Self>) -> Result<MsiVector, KvmInterruptError> {
        let gsi = {
            let mut next = lock(&self.next_gsi);
            if *next > MAX_GSI {
                return Err(KvmInterruptError::OutOfGsis);
            }
            *next += 1;
            *next - 1
        };
        Ok(MsiVector {
            router: self.clone(),
            gsi,
            irqfd: EventFd::new(libc::EFD_NONBLOCK).map_err(KvmInterruptError::EventFd)?,
            attached: false,
        })
    }

    fn commit(
        &self,
        routes: &BTreeMap<(u32, u32, u32), kvm_irq_routing_entry>,
    ) -> Result<(), KvmInterruptError> {
        let entries: Vec<kvm_irq_routing_entry> = routes.values().copied().collect();
        let table = KvmIrqRouting::from_entries(&entries).map_err(KvmInterruptError::Routing)?;
        self.fd
            .set_gsi_routing(&table)
            .map_err(KvmInterruptError::SetRouting)
    }

    fn set_msi(&self, gsi: u32, address: u64, data: u32) -> Result<(), KvmInterruptError> {
        let mut routes = lock(&self.routes);
        let route = msi_route(gsi, address, data);
        let key = (gsi, KIND_MSI, 0);
        if routes.get(&key).is_some_and(|old| same_msi(old, &route)) {
            return Ok(());
        }
        routes.insert(key, route);
        self.commit(&routes)
    }
}

fn same_msi(a: &kvm_irq_routing_entry, b: &kvm_irq_routing_entry) -> bool {
    // SAFETY: both entries were built by `msi_route`, so `u.msi` is the
    // initialised member of the union.
    let (a, b) = unsafe { (a.u.msi, b.u.msi) };
    (a.address_lo, a.address_hi, a.data) == (b.address_lo, b.address_hi, b.data)
}

impl MsiVector {
    /// Routes the vector to `address`/`data` and attaches or detaches the
    /// irqfd according to `masked`.
    pub fn update(
        &mut self,
        address: u64,
        data: u32,
        masked: bool,
    ) -> Result<(), KvmInterruptError> {
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
            result.map_err(|source| KvmInterruptError::Irqfd { gsi, source })?;
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
}

/// A device's MSI-X vectors as KVM GSIs with irqfds. The irqfds stay put
/// (backends hold them); only the routes and attachment change, under a lock
/// of their own so that triggering never waits for it.
pub struct KvmMsiGroup {
    irqfds: Vec<EventFd>,
    vectors: Vec<Mutex<MsiVector>>,
}

impl KvmMsiGroup {
    pub fn new(router: &Arc<MsiRouter>, count: u16) -> Result<Self, KvmInterruptError> {
        let vectors = (0..count)
            .map(|_| router.allocate())
            .collect::<Result<Vec<_>, _>>()?;
        let irqfds = vectors
            .iter()
            .map(|v| v.irqfd.try_clone())
            .collect::<Result<Vec<_>, _>>()
            .map_err(KvmInterruptError::EventFd)?;
        Ok(KvmMsiGroup {
            irqfds,
            vectors: vectors.into_iter().map(Mutex::new).collect(),
        })
    }
}

impl MsiInterruptGroup for KvmMsiGroup {
    fn update(
        &self,
        vector: usize,
        message: MsiMessage,
        masked: bool,
    ) -> Result<(), InterruptError> {
        let v = self
            .vectors
            .get(vector)
            .ok_or(InterruptError::NoVector(vector))?;
        lock(v)
            .update(message.address, message.data, masked)
            .map_err(|e| InterruptError::Update {
                vector,
                source: Box::new(e),
            })
    }

    fn pending(&self, vector: usize) -> bool {
        self.vectors.get(vector).is_some_and(|v| lock(v).pending())
    }

    fn notifier(&self, vector: usize) -> Option<&EventFd> {
        self.irqfds.get(vector)
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
pub struct KvmIoEvents {
    fd: Arc<VmFd>,
}

impl KvmIoEvents {
    pub fn new(fd: Arc<VmFd>) -> Self {
        KvmIoEvents { fd }
    }
}

impl IoEventRegistry for KvmIoEvents {
    /// Any write width matches (no datamatch, length 0).
    fn register(&self, event: &EventFd, addr: u64) -> Result<(), IoEventError> {
        self.fd
            .register_ioevent(
                event,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(|e| IoEventError::Register {
                addr,
                source: Box::new(e),
            })
    }

    fn unregister(&self, event: &EventFd, addr: u64) -> Result<(), IoEventError> {
        self.fd
            .unregister_ioevent(
                event,
                &kvm_ioctls::IoEventAddress::Mmio(addr),
                kvm_ioctls::NoDatamatch,
            )
            .map_err(|e| IoEventError::Unregister {
                addr,
                source: Box::new(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::vm::Vm;
    use kvm_bindings::{kvm_irqchip, kvm_lapic_state};
    use std::time::{Duration, Instant};

    fn vm_or_skip(test: &str) -> Option<Vm> {
        crate::vstate::vm::test_vm_or_skip(test)
    }

    fn wait_for(mut done: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            if done() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        done()
    }

    #[test]
    fn default_routes_are_kvms() {
        let routes = default_routes();
        // 15 PIC pins (no cascade) + 24 IOAPIC pins.
        assert_eq!(routes.len(), 15 + 24);
        let com1: Vec<_> = routes.values().filter(|r| r.gsi == 4).collect();
        assert_eq!(com1.len(), 2, "GSI 4 reaches both PIC and IOAPIC");
        for r in com1 {
            assert_eq!(r.type_, KVM_IRQ_ROUTING_IRQCHIP);
            // SAFETY: irqchip routes carry the irqchip member.
            let chip = unsafe { r.u.irqchip };
            assert_eq!(chip.pin, 4);
        }
        assert!(routes.values().all(|r| r.gsi < FIRST_MSI_GSI));
    }

    fn pic_master_irr(vm: &Vm) -> u8 {
        let mut chip = kvm_irqchip {
            chip_id: KVM_IRQCHIP_PIC_MASTER,
            ..Default::default()
        };
        vm.fd().get_irqchip(&mut chip).unwrap();
        // SAFETY: KVM filled the PIC member for a PIC chip id.
        unsafe { chip.chip.pic.irr }
    }

    fn com1_pulse_reaches_pic(vm: &Vm, irq: &EventFd) -> bool {
        irq.write(1).unwrap();
        wait_for(|| pic_master_irr(vm) & (1 << 4) != 0)
    }

    /// Setting the routing table replaces KVM's defaults: the legacy serial
    /// IRQ still works only because the table carries them along.
    #[test]
    fn legacy_irq_survives_msi_routing() {
        let Some(vm) = vm_or_skip("legacy_irq_survives_msi_routing") else {
            return;
        };
        let com1 = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        vm.register_irqfd(&com1, 4).unwrap();
        let router = MsiRouter::new(vm.shared_fd());
        let mut vector = router.allocate().unwrap();
        vector.update(0xfee0_0000, 0x40, false).unwrap();
        assert!(com1_pulse_reaches_pic(&vm, &com1));

        // The control: a table with the MSI route alone cuts GSI 4 off.
        let Some(bare) = vm_or_skip("legacy_irq_survives_msi_routing") else {
            return;
        };
        let com1 = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        bare.register_irqfd(&com1, 4).unwrap();
        let table = KvmIrqRouting::from_entries(&[msi_route(24, 0xfee0_0000, 0x40)]).unwrap();
        bare.fd().set_gsi_routing(&table).unwrap();
        com1.write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(pic_master_irr(&bare) & (1 << 4), 0);
    }

    fn lapic_irr(vcpu: &kvm_ioctls::VcpuFd, vector: u8) -> bool {
        let lapic = vcpu.get_lapic().unwrap();
        let reg = 0x200 + usize::from(vector / 32) * 0x10;
        let word = u32::from_le_bytes([
            lapic.regs[reg] as u8,
            lapic.regs[reg + 1] as u8,
            lapic.regs[reg + 2] as u8,
            lapic.regs[reg + 3] as u8,
        ]);
        word & (1 << (vector % 32)) != 0
    }

    /// An irqfd write becomes the programmed vector in the LAPIC's IRR; a
    /// masked vector keeps it pending and delivers it on unmask.
    #[test]
    fn msi_vectors_deliver_and_hold_while_masked() {
        let Some(vm) = vm_or_skip("msi_vectors_deliver_and_hold_while_masked") else {
            return;
        };
        let vcpu = vm.fd().create_vcpu(0).unwrap();
        let mut lapic: kvm_lapic_state = vcpu.get_lapic().unwrap();
        // Software-enable the LAPIC (SVR), or it drops fixed interrupts.
        lapic.regs[0xf0] = 0xff_u8 as _;
        lapic.regs[0xf1] = 0x01;
        vcpu.set_lapic(&lapic).unwrap();

        let router = MsiRouter::new(vm.shared_fd());
        let vectors = KvmMsiGroup::new(&router, 2).unwrap();
        let msg = |data| MsiMessage {
            address: 0xfee0_0000,
            data,
        };
        vectors.update(0, msg(0x45), false).unwrap();
        vectors.notifier(0).unwrap().write(1).unwrap();
        assert!(
            wait_for(|| lapic_irr(&vcpu, 0x45)),
            "unmasked vector delivered"
        );

        vectors.update(1, msg(0x46), true).unwrap();
        vectors.notifier(1).unwrap().write(1).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        assert!(!lapic_irr(&vcpu, 0x46), "masked vector not delivered");
        assert!(vectors.pending(1), "masked vector pending");
        assert!(vectors.pending(1), "reading the pending bit keeps it");
        vectors.update(1, msg(0x46), false).unwrap();
        assert!(wait_for(|| lapic_irr(&vcpu, 0x46)), "delivered on unmask");
        assert!(!vectors.pending(1));
    }

    /// The notify path: a registered address swallows writes of any width
    /// into the eventfd; unregistering (a BAR move) gives the address back.
    #[test]
    fn ioeventfds_register_move_and_unregister() {
        let Some(vm) = vm_or_skip("ioeventfds_register_move_and_unregister") else {
            return;
        };
        let io = KvmIoEvents::new(vm.shared_fd());
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        io.register(&kick, 0xc000_3000).unwrap();
        assert!(io.register(&kick, 0xc000_3000).is_err(), "twice is refused");
        io.register(&kick, 0xd000_3000).unwrap();
        io.unregister(&kick, 0xc000_3000).unwrap();
        assert!(io.unregister(&kick, 0xc000_3000).is_err(), "already gone");
        io.unregister(&kick, 0xd000_3000).unwrap();
    }
}
