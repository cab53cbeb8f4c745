//! x86_64: layout, boot protocols (PVH and the Linux boot protocol), initial
//! register state, CPUID fix-ups and ACPI tables.

pub mod acpi;
pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod image;
pub mod layout;
pub mod regs;
