//! Architecture-specific pieces: the guest memory map, boot protocols,
//! initial vCPU state, CPUID and ACPI tables. Only x86_64 for now.

pub mod x86_64;
