//! Every guest-physical address and size the VMM places something at.
//!
//! The map mirrors QEMU's `microvm` machine with `pcie=on` where that costs
//! nothing (32-bit PCI window at 3 GiB, ECAM at 0xe000_0000), so that one
//! probe guest sees the same platform under both VMMs.

use vm_memory::GuestAddress;

/// The GDT used for the PVH entry (flat 32-bit segments).
pub const BOOT_GDT_START: u64 = 0x500;
/// `hvm_start_info` for PVH boots.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH module list (the initramfs), right after `hvm_start_info`.
pub const MODLIST_START: u64 = 0x6040;
/// PVH memory map table.
pub const MEMMAP_START: u64 = 0x7000;
/// Linux `boot_params` ("zero page") for bzImage boots.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Long-mode page tables for bzImage boots (PML4, PDPT, PD: identity map of 1 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Initial stack pointer for bzImage boots.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Longest command line we accept (Linux's x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area: RAM below this is usable low memory.
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables live in the legacy BIOS area, where a guest that scans for
/// the RSDP (bzImage boots without `acpi_rsdp_addr`) also finds it.
pub const RSDP_START: u64 = 0xe0000;
pub const ACPI_TABLES_END: u64 = RESET_VECTOR;
/// Where a CPU starts after reset (F000:FFF0), the last 16 bytes of the
/// BIOS area: Linux jumps here to reboot when ACPI is hardware-reduced.
pub const RESET_VECTOR: u64 = 0xffff0;
/// Kernels and the probe guest are loaded at 1 MiB.
pub const HIGH_RAM_START: u64 = 0x100000;

/// RAM below 4 GiB stops here; above are the PCI window, ECAM and APICs.
pub const MEM_32BIT_GAP_START: u64 = 0xc000_0000;
/// 32-bit PCI memory window for BARs (guest-assigned or VMM-assigned).
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI Express enhanced configuration space (ECAM) for segment 0.
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// We describe one bus: 32 devices x 8 functions x 4 KiB.
pub const PCI_ECAM_SIZE: u64 = 0x10_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// RAM that does not fit below the gap continues at 4 GiB.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// 64-bit PCI memory window, above the most RAM we give a guest (1 TiB
/// from 4 GiB): where 64-bit BARs go once the 32-bit window is full.
pub const PCI_MMIO64_START: u64 = 0x200_0000_0000;
pub const PCI_MMIO64_SIZE: u64 = 0x100_0000_0000;

/// I/O ports.
pub const PORT_I8042_DATA: u16 = 0x60;
pub const PORT_I8042_COMMAND: u16 = 0x64;
/// The CMOS real-time clock: index, then data (see `devices::cmos`).
pub const PORT_CMOS: u16 = 0x70;
pub const PORT_CMOS_LEN: u16 = 2;
pub const PORT_COM1: u16 = 0x3f8;
pub const PORT_COM1_LEN: u16 = 8;
/// Guest exit device, compatible with QEMU's `isa-debug-exit,iobase=0xf4,iosize=4`.
pub const PORT_DEBUG_EXIT: u16 = 0xf4;
pub const PORT_DEBUG_EXIT_LEN: u16 = 4;
/// ACPI hardware-reduced sleep control and reset registers (see `devices::acpi_power`).
pub const PORT_ACPI_POWER: u16 = 0x600;
pub const PORT_ACPI_POWER_LEN: u16 = 3;
/// The ACPI Generic Event Device's status byte (see `devices::acpi_ged`).
pub const PORT_ACPI_GED: u16 = 0x610;
pub const PORT_ACPI_GED_LEN: u16 = 1;
/// Legacy PCI configuration mechanism #1.
pub const PORT_PCI_CONFIG_ADDRESS: u16 = 0xcf8;
pub const PORT_PCI_CONFIG_LEN: u16 = 8;

/// Legacy IRQ of COM1 (IOAPIC pin 4).
pub const COM1_IRQ: u32 = 4;
/// The real-time clock's ISA IRQ (IOAPIC pin 8, edge, active high).
pub const RTC_IRQ: u32 = 8;
/// The ACPI Generic Event Device's interrupt (IOAPIC pin 5, edge, active
/// high), which no ISA device of ours uses.
pub const GED_IRQ: u32 = 5;

/// The guest-physical RAM ranges for `size` bytes: up to the 32-bit gap,
/// then the rest from 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MEM_32BIT_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MEM_32BIT_GAP_START),
            (GuestAddress(RAM_64BIT_START), size - MEM_32BIT_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_split_at_the_32bit_gap() {
        assert_eq!(ram_ranges(512 << 20), vec![(GuestAddress(0), 512 << 20)]);
        assert_eq!(
            ram_ranges(16 << 30),
            vec![
                (GuestAddress(0), 3 << 30),
                (GuestAddress(4 << 30), 13 << 30)
            ]
        );
        assert_eq!(ram_ranges(3 << 30).len(), 1);
    }
}
