//! Initial vCPU state as plain data (registers, segments, FPU, MSRs, LAPIC
//! LINT pins); `vstate::vcpu` hands it to KVM.

use kvm_bindings::{kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_sregs};

use super::gdt::{gdt_entry, segment_from_gdt, CODE32, CODE64, DATA32, TSS32_BUSY};
use super::layout::{BOOT_GDT_START, BOOT_STACK_POINTER, PML4_START};

/// Where the vCPU starts and in which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootEntry {
    /// PVH: 32-bit protected mode, paging off, `ebx` = `hvm_start_info`.
    Pvh { entry: u64, start_info: u64 },
    /// Linux 64-bit boot protocol: long mode, `rsi` = `boot_params`.
    Linux64 { entry: u64, zero_page: u64 },
}

/// The GDT placed at `BOOT_GDT_START`: null, code, data, TSS.
pub fn boot_gdt(entry: BootEntry) -> [u64; 4] {
    let code = match entry {
        BootEntry::Pvh { .. } => CODE32,
        BootEntry::Linux64 { .. } => CODE64,
    };
    [
        0,
        gdt_entry(code, 0, 0xfffff),
        gdt_entry(DATA32, 0, 0xfffff),
        gdt_entry(TSS32_BUSY, 0, 0xfffff),
    ]
}

pub fn boot_regs(entry: BootEntry) -> kvm_regs {
    let mut regs = kvm_regs {
        // Bit 1 of RFLAGS is reserved and always set.
        rflags: 0x2,
        ..Default::default()
    };
    match entry {
        BootEntry::Pvh { entry, start_info } => {
            regs.rip = entry;
            regs.rbx = start_info;
        }
        BootEntry::Linux64 { entry, zero_page } => {
            regs.rip = entry;
            regs.rsi = zero_page;
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
        }
    }
    regs
}

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Segment and control registers on top of what KVM reports (`current`).
pub fn boot_sregs(entry: BootEntry, current: kvm_sregs) -> kvm_sregs {
    let gdt = boot_gdt(entry);
    let mut sregs = current;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&gdt) - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    let code = segment_from_gdt(gdt[1], 1);
    let data = segment_from_gdt(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(gdt[3], 3);
    match entry {
        BootEntry::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootEntry::Linux64 { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    sregs
}

pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        // x87 default control word and MXCSR after FINIT/reset.
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;

const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: guests see all RAM cacheable.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

pub fn boot_msrs() -> Vec<kvm_msr_entry> {
    [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn set_delivery_mode(reg: u32, mode: u32) -> u32 {
    (reg & !0x700) | (mode << 8)
}

fn lapic_reg(lapic: &kvm_lapic_state, offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (dst, src) in bytes.iter_mut().zip(&lapic.regs[offset..offset + 4]) {
        *dst = *src as u8;
    }
    u32::from_le_bytes(bytes)
}

fn set_lapic_reg(lapic: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (dst, src) in lapic.regs[offset..offset + 4]
        .iter_mut()
        .zip(value.to_le_bytes())
    {
        *dst = src as _;
    }
}

/// LINT0 as ExtINT (the PIC) and LINT1 as NMI, as firmware leaves them.
pub fn set_lint(lapic: &mut kvm_lapic_state) {
    let lvt0 = lapic_reg(lapic, APIC_LVT0);
    set_lapic_reg(lapic, APIC_LVT0, set_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = lapic_reg(lapic, APIC_LVT1);
    set_lapic_reg(lapic, APIC_LVT1, set_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvh_starts_in_flat_protected_mode() {
        let entry = BootEntry::Pvh {
            entry: 0x10_0040,
            start_info: 0x6000,
        };
        let regs = boot_regs(entry);
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x10_0040, 0x6000, 2));
        let sregs = boot_sregs(entry, kvm_sregs::default());
        assert_eq!(sregs.cr0, CR0_PE | CR0_ET);
        assert_eq!(sregs.efer, 0);
        assert_eq!((sregs.cs.db, sregs.cs.l, sregs.cs.selector), (1, 0, 8));
        assert_eq!(sregs.ss.selector, 0x10);
        assert_eq!(sregs.gdt.limit, 31);
    }

    #[test]
    fn linux64_starts_in_long_mode() {
        let entry = BootEntry::Linux64 {
            entry: 0x20_0200,
            zero_page: 0x7000,
        };
        let sregs = boot_sregs(entry, kvm_sregs::default());
        assert_eq!(sregs.efer, EFER_LME | EFER_LMA);
        assert_eq!(sregs.cr3, PML4_START);
        assert_eq!(sregs.cs.l, 1);
        assert_eq!(boot_regs(entry).rsi, 0x7000);
    }

    #[test]
    fn lint_pins_get_extint_and_nmi() {
        let mut lapic = kvm_lapic_state::default();
        set_lapic_reg(&mut lapic, APIC_LVT0, 0x1_0700);
        set_lint(&mut lapic);
        assert_eq!(lapic_reg(&lapic, APIC_LVT0), 0x1_0700);
        assert_eq!(lapic_reg(&lapic, APIC_LVT1), 0x400);
    }
}
