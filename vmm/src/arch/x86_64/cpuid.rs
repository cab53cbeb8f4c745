//! CPUID as the guest sees it: what KVM supports, with the topology fields
//! made to describe our vCPUs (one package, `n` cores, one thread each).

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_PMU: u32 = 0xa;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_TOPOLOGY_V2: u32 = 0x1f;

const ECX_HYPERVISOR: u32 = 1 << 31;
const EDX_HTT: u32 = 1 << 28;

/// Topology level types in leaves 0xb and 0x1f.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Adjusts `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`.
pub fn fix_up(cpuid: &mut CpuId, id: u8, count: u8) {
    let apic_id = u32::from(id);
    let count = u32::from(count);
    // Bits needed to number `count` cores: the APIC ID shift for the core level.
    let core_shift = u32::BITS - count.saturating_sub(1).leading_zeros();
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            LEAF_FEATURES => {
                entry.ebx = (entry.ebx & 0x0000_ffff) | (apic_id << 24) | ((count & 0xff) << 16);
                entry.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    entry.edx |= EDX_HTT;
                } else {
                    entry.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // Cores per package minus one in bits 31..26; caches are per core.
                entry.eax = (entry.eax & 0x03ff_c3ff) | ((count - 1) << 26);
            }
            // No virtual PMU: guests must not program counters we do not save.
            LEAF_PMU => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 => {
                entry.edx = apic_id;
                match entry.index {
                    0 => {
                        entry.eax = 0;
                        entry.ebx = 1;
                        entry.ecx = (LEVEL_SMT << 8) | entry.index;
                    }
                    1 => {
                        entry.eax = core_shift;
                        entry.ebx = count;
                        entry.ecx = (LEVEL_CORE << 8) | entry.index;
                    }
                    _ => {
                        entry.eax = 0;
                        entry.ebx = 0;
                        entry.ecx = entry.index;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0xdead_0800,
            ..Default::default()
        }
    }

    #[test]
    fn apic_ids_and_counts() {
        let mut cpuid = CpuId::from_entries(&[
            entry(1, 0),
            entry(4, 0),
            entry(0xb, 0),
            entry(0xb, 1),
            entry(0xb, 2),
        ])
        .unwrap();
        fix_up(&mut cpuid, 3, 4);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[0].ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!(e[1].eax >> 26, 3);
        assert_eq!((e[3].eax, e[3].ebx, e[3].edx), (2, 4, 3));
        assert_eq!(e[4].ecx, 2, "invalid level ends the list");
    }

    #[test]
    fn single_cpu_has_no_htt() {
        let mut first = entry(1, 0);
        first.edx = EDX_HTT;
        let mut cpuid = CpuId::from_entries(&[first]).unwrap();
        fix_up(&mut cpuid, 0, 1);
        assert_eq!(cpuid.as_slice()[0].edx & EDX_HTT, 0);
    }
}
