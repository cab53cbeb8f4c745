//! What KVM holds of a VM and its vCPUs, as plain serialisable values: a
//! paused VM's state for a snapshot, and how to put it back into a new
//! VM. The device models keep their own.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("Failed to read the {what} of vCPU {id}")]
    VcpuGet {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Failed to restore the {what} of vCPU {id}")]
    VcpuSet {
        id: u8,
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Failed to read the VM's {what}")]
    VmGet {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("Failed to restore the VM's {what}")]
    VmSet {
        what: &'static str,
        #[source]
        source: kvm_ioctls::Error,
    },
    #[error("KVM took {written} of vCPU {id}'s {count} MSRs (not {index:#x})")]
    Msrs {
        id: u8,
        written: usize,
        count: usize,
        index: u32,
    },
    #[error("Too many MSRs for one KVM call")]
    MsrList(#[source] vmm_sys_util::fam::Error),
    #[error("Too many CPUID entries for one KVM call")]
    CpuidList(#[source] vmm_sys_util::fam::Error),
    #[error("vCPU {id} ran with CPU features this host's KVM does not offer: CPUID leaf {leaf:#x}.{subleaf} {register} bits {missing:#010x}")]
    CpuFeatures {
        id: u8,
        leaf: u32,
        subleaf: u32,
        register: &'static str,
        missing: u32,
    },
}

/// One vCPU, everything KVM keeps of it that a guest can see. Each of
/// KVM's structs is one hex string of its bytes (`kvm_hex`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    /// What the guest was told it runs on: a restore gives it the same.
    #[serde(with = "kvm_hex::each")]
    pub cpuid: Vec<kvm_cpuid_entry2>,
    #[serde(with = "kvm_hex")]
    pub regs: kvm_regs,
    #[serde(with = "kvm_hex")]
    pub sregs: kvm_sregs,
    #[serde(with = "kvm_hex")]
    pub xsave: kvm_xsave,
    #[serde(with = "kvm_hex")]
    pub xcrs: kvm_xcrs,
    #[serde(with = "kvm_hex")]
    pub lapic: kvm_lapic_state,
    #[serde(with = "kvm_hex::each")]
    pub msrs: Vec<kvm_msr_entry>,
    #[serde(with = "kvm_hex")]
    pub mp_state: kvm_mp_state,
    #[serde(with = "kvm_hex")]
    pub events: kvm_vcpu_events,
    #[serde(with = "kvm_hex")]
    pub debug_regs: kvm_debugregs,
}

/// The VM's in-kernel devices and clock.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    #[serde(with = "kvm_hex")]
    pub pic_master: kvm_irqchip,
    #[serde(with = "kvm_hex")]
    pub pic_slave: kvm_irqchip,
    #[serde(with = "kvm_hex")]
    pub ioapic: kvm_irqchip,
    #[serde(with = "kvm_hex")]
    pub pit: kvm_pit_state2,
    #[serde(with = "kvm_hex")]
    pub clock: kvm_clock_data,
}

/// KVM's structs in a snapshot as one hex string of their bytes each.
/// kvm-bindings serialises them as their bytes too, which JSON writes as an
/// array of numbers, three to four times the size; its own serialisation
/// is what is turned into hex and back, so its rules (a shorter struct of
/// an older kernel is zero-padded) still hold.
mod kvm_hex {
    use serde::de::{DeserializeOwned, Error as _};
    use serde::ser::Error as _;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use crate::util::{parse_hex, to_hex};

    fn to_text<T: Serialize>(value: &T) -> Result<String, String> {
        let bytes: Vec<u8> = serde_json::to_value(value)
            .ok()
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or("not a byte array")?;
        Ok(to_hex(&bytes))
    }

    fn from_text<T: DeserializeOwned>(text: &str) -> Result<T, String> {
        let bytes = parse_hex(text).ok_or("not an even number of hex digits")?;
        serde_json::from_value(serde_json::Value::from(bytes)).map_err(|e| e.to_string())
    }

    pub fn serialize<T: Serialize, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&to_text(value).map_err(S::Error::custom)?)
    }

    pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
        d: D,
    ) -> Result<T, D::Error> {
        from_text(&String::deserialize(d)?).map_err(D::Error::custom)
    }

    /// A list of them, as a list of hex strings.
    pub mod each {
        use super::*;

        pub fn serialize<T: Serialize, S: Serializer>(
            values: &[T],
            s: S,
        ) -> Result<S::Ok, S::Error> {
            let texts = values
                .iter()
                .map(to_text)
                .collect::<Result<Vec<_>, _>>()
                .map_err(S::Error::custom)?;
            texts.serialize(s)
        }

        pub fn deserialize<'de, T: DeserializeOwned, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Vec<T>, D::Error> {
            Vec::<String>::deserialize(d)?
                .iter()
                .map(|text| from_text(text))
                .collect::<Result<_, _>>()
                .map_err(D::Error::custom)
        }
    }
}

/// The CPUID leaves (and subleaves) that say which instructions a guest
/// may use.
const FEATURE_LEAVES: [(u32, u32); 5] = [(0x1, 0), (0x7, 0), (0x7, 1), (0xd, 1), (0x8000_0001, 0)];

/// Feature bits KVM keeps following the guest's own control registers
/// (OSXSAVE, OSPKE, the APIC's enable): what the guest did, not what the
/// CPU offers.
fn guest_controlled(leaf: u32, register: usize) -> u32 {
    match (leaf, register) {
        (0x1, 2) => 1 << 27,
        (0x1, 3) => 1 << 9,
        (0x7, 2) => 1 << 22,
        _ => 0,
    }
}

/// The first feature `saved` (a vCPU's CPUID in a snapshot) has that
/// `host` (what this host's KVM offers the same vCPU) lacks, as leaf,
/// subleaf, register name and the missing bits.
pub fn missing_cpu_features(
    saved: &[kvm_cpuid_entry2],
    host: &[kvm_cpuid_entry2],
) -> Option<(u32, u32, &'static str, u32)> {
    let find = |entries: &[kvm_cpuid_entry2], leaf: u32, subleaf: u32| {
        entries
            .iter()
            .find(|e| e.function == leaf && e.index == subleaf)
            .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
            .unwrap_or_default()
    };
    for (leaf, subleaf) in FEATURE_LEAVES {
        let (saved, host) = (find(saved, leaf, subleaf), find(host, leaf, subleaf));
        for (register, name) in ["EAX", "EBX", "ECX", "EDX"].into_iter().enumerate() {
            let missing = saved[register] & !host[register] & !guest_controlled(leaf, register);
            if missing != 0 {
                return Some((leaf, subleaf, name, missing));
            }
        }
    }
    None
}

/// The MSRs KVM can save for its guests on this host: those of its index
/// list (`Kvm::get_msr_index_list`) that a vCPU reads back one at a time
/// (some in the list are readable only under conditions a snapshot does
/// not meet).
pub fn saved_msr_indices(candidates: &[u32], vcpu: &VcpuFd) -> Vec<u32> {
    candidates
        .iter()
        .copied()
        .filter(|&index| {
            let entry = kvm_msr_entry {
                index,
                ..Default::default()
            };
            Msrs::from_entries(&[entry])
                .ok()
                .and_then(|mut one| vcpu.get_msrs(&mut one).ok())
                == Some(1)
        })
        .collect()
}

impl VcpuState {
    /// Reads vCPU `id`'s state; `msr_indices` from `saved_msr_indices`,
    /// `cpuid` what the VMM gave the vCPU (KVM_GET_CPUID2 is not that on
    /// every KVM: PVM's answers with the host's own).
    pub fn save(
        vcpu: &VcpuFd,
        id: u8,
        msr_indices: &[u32],
        cpuid: &[kvm_cpuid_entry2],
    ) -> Result<Self, StateError> {
        let get = |what| move |source| StateError::VcpuGet { id, what, source };
        let entries: Vec<kvm_msr_entry> = msr_indices
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(StateError::MsrList)?;
        let read = vcpu.get_msrs(&mut msrs).map_err(get("MSRs"))?;
        if read != entries.len() {
            return Err(StateError::Msrs {
                id,
                written: read,
                count: entries.len(),
                index: entries.get(read).map_or(0, |e| e.index),
            });
        }
        Ok(Self {
            cpuid: cpuid.to_vec(),
            // Events first: reading them settles what KVM was about to
            // inject, as QEMU and Firecracker order it.
            events: vcpu.get_vcpu_events().map_err(get("pending events"))?,
            mp_state: vcpu.get_mp_state().map_err(get("MP state"))?,
            regs: vcpu.get_regs().map_err(get("registers"))?,
            sregs: vcpu.get_sregs().map_err(get("segment registers"))?,
            xsave: vcpu.get_xsave().map_err(get("XSAVE area"))?,
            xcrs: vcpu.get_xcrs().map_err(get("XCRs"))?,
            lapic: vcpu.get_lapic().map_err(get("local APIC"))?,
            debug_regs: vcpu.get_debug_regs().map_err(get("debug registers"))?,
            msrs: msrs.as_slice().to_vec(),
        })
    }

    /// Refuses a state whose CPU offered what `host` (this host's CPUID
    /// for the same vCPU) does not: the guest would fault on the first
    /// instruction it chose by it.
    pub fn check_cpu(&self, host: &CpuId, id: u8) -> Result<(), StateError> {
        match missing_cpu_features(&self.cpuid, host.as_slice()) {
            None => Ok(()),
            Some((leaf, subleaf, register, missing)) => Err(StateError::CpuFeatures {
                id,
                leaf,
                subleaf,
                register,
                missing,
            }),
        }
    }

    /// Puts the state into a new vCPU of a new VM that has not run. The
    /// order matters to KVM: CPUID first (it decides which state is
    /// valid), segment registers (the mode) before registers, MSRs (the
    /// TSC, the APIC base) before the local APIC, the events and MP state
    /// last.
    pub fn restore(&self, vcpu: &VcpuFd, id: u8) -> Result<(), StateError> {
        let set = |what| move |source| StateError::VcpuSet { id, what, source };
        let cpuid = CpuId::from_entries(&self.cpuid).map_err(StateError::CpuidList)?;
        vcpu.set_cpuid2(&cpuid).map_err(set("CPUID"))?;
        vcpu.set_sregs(&self.sregs)
            .map_err(set("segment registers"))?;
        vcpu.set_regs(&self.regs).map_err(set("registers"))?;
        // SAFETY: a legacy-sized XSAVE area read from KVM by `save`, for a
        // vCPU with the same CPUID: KVM reads no more than it wrote.
        unsafe { vcpu.set_xsave(&self.xsave) }.map_err(set("XSAVE area"))?;
        vcpu.set_xcrs(&self.xcrs).map_err(set("XCRs"))?;
        let msrs = Msrs::from_entries(&self.msrs).map_err(StateError::MsrList)?;
        let written = vcpu.set_msrs(&msrs).map_err(set("MSRs"))?;
        if written != self.msrs.len() {
            return Err(StateError::Msrs {
                id,
                written,
                count: self.msrs.len(),
                index: self.msrs.get(written).map_or(0, |e| e.index),
            });
        }
        vcpu.set_lapic(&self.lapic).map_err(set("local APIC"))?;
        vcpu.set_debug_regs(&self.debug_regs)
            .map_err(set("debug registers"))?;
        vcpu.set_mp_state(self.mp_state).map_err(set("MP state"))?;
        vcpu.set_vcpu_events(&self.events)
            .map_err(set("pending events"))?;
        Ok(())
    }
}

impl VmState {
    pub fn save(vm: &VmFd) -> Result<Self, StateError> {
        let chip = |chip_id| {
            let mut chip = kvm_irqchip {
                chip_id,
                ..Default::default()
            };
            vm.get_irqchip(&mut chip)
                .map(|()| chip)
                .map_err(|source| StateError::VmGet {
                    what: "interrupt controllers",
                    source,
                })
        };
        Ok(Self {
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER)?,
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE)?,
            ioapic: chip(KVM_IRQCHIP_IOAPIC)?,
            pit: vm.get_pit2().map_err(|source| StateError::VmGet {
                what: "PIT",
                source,
            })?,
            clock: vm.get_clock().map_err(|source| StateError::VmGet {
                what: "clock",
                source,
            })?,
        })
    }

    /// Into a new VM with its irqchip and PIT created, before its vCPUs
    /// run.
    pub fn restore(&self, vm: &VmFd) -> Result<(), StateError> {
        let set = |what| move |source| StateError::VmSet { what, source };
        for chip in [&self.pic_master, &self.pic_slave, &self.ioapic] {
            vm.set_irqchip(chip).map_err(set("interrupt controllers"))?;
        }
        vm.set_pit2(&self.pit).map_err(set("PIT"))?;
        // KVM takes the clock value only; the flags it reported say how
        // it was read and are not for setting.
        let clock = kvm_clock_data {
            clock: self.clock.clock,
            ..Default::default()
        };
        vm.set_clock(&clock).map_err(set("clock"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vstate::vm::Vm;

    fn vm_or_skip(test: &str) -> Option<Vm> {
        crate::vstate::vm::test_vm_or_skip(test)
    }

    /// A vCPU given unusual values, saved, and put into a vCPU of another
    /// VM, reads back the same; and the state survives JSON.
    #[test]
    fn a_vcpu_s_state_moves_to_another_vm() {
        let (Some(first), Some(second)) = (
            vm_or_skip("a_vcpu_s_state_moves_to_another_vm"),
            vm_or_skip("a_vcpu_s_state_moves_to_another_vm"),
        ) else {
            return;
        };
        let cpuid = first
            .kvm()
            .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
            .unwrap();
        let source = first.fd().create_vcpu(0).unwrap();
        source.set_cpuid2(&cpuid).unwrap();
        let mut regs = source.get_regs().unwrap();
        regs.rax = 0x1234_5678_9abc_def0;
        regs.rip = 0xfff0;
        regs.rflags = 0x2;
        source.set_regs(&regs).unwrap();
        // IA32_SYSENTER_EIP, an MSR every x86 KVM saves.
        let sysenter = kvm_msr_entry {
            index: 0x176,
            data: 0xfeed_f00d,
            ..Default::default()
        };
        source
            .set_msrs(&Msrs::from_entries(&[sysenter]).unwrap())
            .unwrap();
        let candidates = first.kvm().get_msr_index_list().unwrap();
        let indices = saved_msr_indices(candidates.as_slice(), &source);
        assert!(indices.contains(&0x176), "{indices:x?}");
        let saved = VcpuState::save(&source, 0, &indices, cpuid.as_slice()).unwrap();
        let json = serde_json::to_string(&saved).unwrap();
        let saved: VcpuState = serde_json::from_str(&json).unwrap();

        let target = second.fd().create_vcpu(0).unwrap();
        target.set_cpuid2(&cpuid).unwrap();
        saved.restore(&target, 0).unwrap();
        let back = target.get_regs().unwrap();
        assert_eq!((back.rax, back.rip), (regs.rax, regs.rip));
        let mut msr = Msrs::from_entries(&[kvm_msr_entry {
            index: 0x176,
            ..Default::default()
        }])
        .unwrap();
        target.get_msrs(&mut msr).unwrap();
        assert_eq!(msr.as_slice()[0].data, 0xfeed_f00d);
    }

    fn leaf(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    /// A saved CPU with a feature the host lacks is named by leaf,
    /// register and bits; the bits the guest itself controls (OSXSAVE)
    /// and leaves that say nothing of features do not count.
    #[test]
    fn missing_cpu_features_are_found_by_leaf_and_register() {
        let host = [
            leaf(1, 0, [0, 0, 0x0000_00ff, 0]),
            leaf(7, 0, [0, 0x10, 0, 0]),
        ];
        let same = [
            leaf(1, 0, [0, 0, 0x0000_000f | 1 << 27, 0]),
            leaf(0xb, 0, [7; 4]),
        ];
        assert_eq!(missing_cpu_features(&same, &host), None);
        let more = [leaf(1, 0, [0, 0, 0x0f, 0]), leaf(7, 0, [0, 0x30, 0, 0])];
        assert_eq!(
            missing_cpu_features(&more, &host),
            Some((7, 0, "EBX", 0x20))
        );
    }

    /// The IOAPIC's routing and the clock move with the VM.
    #[test]
    fn a_vm_s_irqchip_and_clock_move_to_another_vm() {
        let (Some(first), Some(second)) = (
            vm_or_skip("a_vm_s_irqchip_and_clock_move_to_another_vm"),
            vm_or_skip("a_vm_s_irqchip_and_clock_move_to_another_vm"),
        ) else {
            return;
        };
        let mut ioapic = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        first.fd().get_irqchip(&mut ioapic).unwrap();
        // SAFETY: the IOAPIC's member of the union, for chip_id IOAPIC.
        unsafe { ioapic.chip.ioapic.redirtbl[5].bits = 0x31 };
        first.fd().set_irqchip(&ioapic).unwrap();
        let saved = VmState::save(first.fd()).unwrap();
        let json = serde_json::to_string(&saved).unwrap();
        let saved: VmState = serde_json::from_str(&json).unwrap();
        saved.restore(second.fd()).unwrap();
        let mut back = kvm_irqchip {
            chip_id: KVM_IRQCHIP_IOAPIC,
            ..Default::default()
        };
        second.fd().get_irqchip(&mut back).unwrap();
        // SAFETY: as above.
        assert_eq!(unsafe { back.chip.ioapic.redirtbl[5].bits } & 0xff, 0x31);
        let clock = second.fd().get_clock().unwrap().clock;
        assert!(
            clock >= saved.clock.clock,
            "{clock} < {}",
            saved.clock.clock
        );
    }
}
