//! The ring-0 part of the guest, all of it: PVH entry, long mode, page
//! tables, GDT/TSS, and the interrupt and exception entry points.
//!
//! Ring 0 is emulated instruction by instruction on PVM hosts (~500 ns
//! each), so everything here is straight-line integer code and every table
//! that can be laid out by the assembler is. The IDT is the exception: its
//! entries split handler addresses into bit fields that no relocation can
//! express, so ring 3 fills it (the page is user-writable) before it
//! enables interrupts.

use core::arch::global_asm;

/// The ring-0 code selector of the GDT below.
pub const KERNEL_CS: u16 = 0x08;

/// Every stub below is 16-byte aligned so that ring 3 can compute its
/// address from the vector number.
pub const STUB_STRIDE: usize = 16;

extern "C" {
    static exception_stubs: u8;
    static irq_stubs: u8;
    static gp_handler: u8;
    static mut idt: [u64; 512];
}

/// What the last unexpected exception looked like; written by ring 0
/// before it sends ring 3 to `fault_entry`.
#[repr(C)]
pub struct FaultInfo {
    pub vector: u64,
    pub error: u64,
    pub rip: u64,
    pub cr2: u64,
    pub rsp: u64,
}

#[no_mangle]
pub static mut FAULT_INFO: FaultInfo = FaultInfo {
    vector: 0,
    error: 0,
    rip: 0,
    cr2: 0,
    rsp: 0,
};

/// Interrupt counts per vector, bumped by the ring-0 stubs.
#[no_mangle]
pub static mut IRQ_COUNTS: [u32; 256] = [0; 256];

/// Reads how many times `vector` was delivered.
pub fn irq_count(vector: u8) -> u32 {
    // SAFETY: a plain aligned read of a static that only the interrupt
    // stubs write; volatile because they write it behind the compiler's back.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(IRQ_COUNTS[vector as usize])) }
}

/// Fills the IDT from ring 3: #GP gets the port-I/O emulator, the other
/// exceptions the fault reporter, vectors 32..=255 the counting stubs.
pub fn install_idt() {
    for vector in 0..256usize {
        let handler = {
            if vector == 13 {
                core::ptr::addr_of!(gp_handler) as u64
            } else if vector < 32 {
                core::ptr::addr_of!(exception_stubs) as u64 + (vector * STUB_STRIDE) as u64
            } else {
                core::ptr::addr_of!(irq_stubs) as u64 + ((vector - 32) * STUB_STRIDE) as u64
            }
        };
        let low = (handler & 0xffff)
            | (u64::from(KERNEL_CS) << 16)
            | (0x8e << 40) // present, DPL 0, 64-bit interrupt gate
            | ((handler >> 16) & 0xffff) << 48;
        let high = handler >> 32;
        // SAFETY: the IDT is a static the CPU reads only on delivery;
        // interrupts are off while it is filled.
        unsafe {
            let p = core::ptr::addr_of_mut!(idt) as *mut u64;
            core::ptr::write_volatile(p.add(vector * 2), low);
            core::ptr::write_volatile(p.add(vector * 2 + 1), high);
        }
    }
}

global_asm!(
    r#"
    .section .note.Xen, "a", @note
    .balign 4
    .long 4
    .long 8
    .long 18
    .asciz "Xen"
    .quad pvh_start

    .section .text.boot, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    mov dword ptr [start_info_paddr], ebx
    lgdt [gdt_ptr]
    mov eax, cr4
    or eax, 0x620
    mov cr4, eax
    mov eax, offset pml4
    mov cr3, eax
    mov ecx, 0xc0000080
    xor edx, edx
    mov eax, 0x100
    wrmsr
    mov eax, cr0
    and eax, 0xfffffffb
    or eax, 0x80000023
    mov cr0, eax
    # ljmp 0x08:long_entry, encoded by hand (ptr16:32).
    .byte 0xea
    .long long_entry
    .word 0x08

    .code64
long_entry:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    xor eax, eax
    mov fs, ax
    mov gs, ax
    lea rsp, [rip + ring0_stack_top]
    lea rax, [rip + tss]
    lea rdi, [rip + gdt_tss]
    mov word ptr [rdi + 2], ax
    shr rax, 16
    mov byte ptr [rdi + 4], al
    mov byte ptr [rdi + 7], ah
    lea rax, [rip + ring0_stack_top]
    mov qword ptr [rip + tss + 4], rax
    mov ax, 0x28
    ltr ax
    lidt [rip + idt_ptr]
    push 0x23
    lea rax, [rip + user_stack_top]
    sub rax, 8
    push rax
    push 0x2
    push 0x1b
    lea rax, [rip + probe_main]
    push rax
    iretq

    .balign 16
    .global gp_handler
gp_handler:
    push rax
    push rbx
    mov rbx, qword ptr [rsp + 24]
    movzx eax, byte ptr [rbx]
    cmp al, 0xee
    je 10f
    cmp al, 0xec
    je 11f
    cmp al, 0xef
    je 12f
    cmp al, 0xed
    je 13f
    cmp al, 0xf3
    je 14f
    cmp al, 0x66
    je 15f
    cmp al, 0xf4
    je 16f
    cmp al, 0xfb
    je 17f
    cmp al, 0xfa
    je 18f
    jmp 19f
10: mov rax, qword ptr [rsp + 8]
    out dx, al
    mov ebx, 1
    jmp 20f
11: in al, dx
    mov byte ptr [rsp + 8], al
    mov ebx, 1
    jmp 20f
12: mov rax, qword ptr [rsp + 8]
    out dx, eax
    mov ebx, 1
    jmp 20f
13: in eax, dx
    mov dword ptr [rsp + 8], eax
    mov dword ptr [rsp + 12], 0
    mov ebx, 1
    jmp 20f
14: cmp byte ptr [rbx + 1], 0x6e
    jne 19f
    rep outsb
    mov ebx, 2
    jmp 20f
15: cmp byte ptr [rbx + 1], 0xef
    je 21f
    cmp byte ptr [rbx + 1], 0xed
    jne 19f
    in ax, dx
    mov word ptr [rsp + 8], ax
    mov ebx, 2
    jmp 20f
21: mov rax, qword ptr [rsp + 8]
    out dx, ax
    mov ebx, 2
    jmp 20f
16: sti
    hlt
    cli
    or qword ptr [rsp + 40], 0x200
    mov ebx, 1
    jmp 20f
17: or qword ptr [rsp + 40], 0x200
    mov ebx, 1
    jmp 20f
18: and qword ptr [rsp + 40], -513
    mov ebx, 1
20: add qword ptr [rsp + 24], rbx
    pop rbx
    pop rax
    add rsp, 8
    iretq
19: pop rbx
    pop rax
    push 13
    jmp exception_common

    .macro EXC_NOERR v
    .balign 16
    push 0
    push \v
    jmp exception_common
    .endm
    .macro EXC_ERR v
    .balign 16
    push \v
    jmp exception_common
    .endm

    .balign 16
    .global exception_stubs
exception_stubs:
    EXC_NOERR 0
    EXC_NOERR 1
    EXC_NOERR 2
    EXC_NOERR 3
    EXC_NOERR 4
    EXC_NOERR 5
    EXC_NOERR 6
    EXC_NOERR 7
    EXC_ERR 8
    EXC_NOERR 9
    EXC_ERR 10
    EXC_ERR 11
    EXC_ERR 12
    EXC_ERR 13
    EXC_ERR 14
    EXC_NOERR 15
    EXC_NOERR 16
    EXC_ERR 17
    EXC_NOERR 18
    EXC_NOERR 19
    EXC_NOERR 20
    EXC_ERR 21
    EXC_NOERR 22
    EXC_NOERR 23
    EXC_NOERR 24
    EXC_NOERR 25
    EXC_NOERR 26
    EXC_NOERR 27
    EXC_NOERR 28
    EXC_ERR 29
    EXC_ERR 30
    EXC_NOERR 31

exception_common:
    push rax
    mov rax, qword ptr [rsp + 8]
    mov qword ptr [rip + FAULT_INFO], rax
    mov rax, qword ptr [rsp + 16]
    mov qword ptr [rip + FAULT_INFO + 8], rax
    mov rax, qword ptr [rsp + 24]
    mov qword ptr [rip + FAULT_INFO + 16], rax
    mov rax, cr2
    mov qword ptr [rip + FAULT_INFO + 24], rax
    mov rax, qword ptr [rsp + 48]
    mov qword ptr [rip + FAULT_INFO + 32], rax
    pop rax
    add rsp, 16
    lea rax, [rip + fault_entry]
    mov qword ptr [rsp], rax
    mov qword ptr [rsp + 8], 0x1b
    mov qword ptr [rsp + 16], 0x2
    lea rax, [rip + fault_stack_top]
    sub rax, 8
    mov qword ptr [rsp + 24], rax
    mov qword ptr [rsp + 32], 0x23
    iretq

    .balign 16
    .global irq_stubs
irq_stubs:
    .set vec, 32
    .rept 224
    .balign 16
    push rax
    mov eax, vec
    jmp irq_common
    .set vec, vec + 1
    .endr

irq_common:
    push rbx
    lea rbx, [rip + IRQ_COUNTS]
    add dword ptr [rbx + rax * 4], 1
    mov rbx, 0xfee000b0
    mov dword ptr [rbx], 0
    pop rbx
    pop rax
    iretq

    .section .data.boot, "aw"
    .balign 8
    .global start_info_paddr
start_info_paddr:
    .quad 0
gdt:
    .quad 0
    .quad 0x00af9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00affa000000ffff
    .quad 0x00cff2000000ffff
gdt_tss:
    .word 103
    .word 0
    .byte 0
    .byte 0x89
    .byte 0
    .byte 0
    .quad 0
gdt_end:
    .balign 8
    .word 0
gdt_ptr:
    .word gdt_end - gdt - 1
    .quad gdt
    .balign 8
    .word 0
idt_ptr:
    .word 4095
    .quad idt
    .balign 16
tss:
    .fill 104, 1, 0

    .section .data.pagetables, "aw"
    .balign 4096
    .global pml4
pml4:
    .quad pdpt + 7
    .fill 511, 8, 0
pdpt:
    .quad pd + 7
    .quad pd + 0x1000 + 7
    .quad pd + 0x2000 + 7
    .quad pd + 0x3000 + 7
    .fill 508, 8, 0
pd:
    .set page, 0
    .rept 1536
    .quad page + 0x87
    .set page, page + 0x200000
    .endr
    .rept 512
    .quad page + 0x9f
    .set page, page + 0x200000
    .endr

    .section .bss.boot, "aw", @nobits
    .balign 4096
    .global idt
idt:
    .fill 4096, 1, 0
ring0_stack:
    .fill 16384, 1, 0
ring0_stack_top:
fault_stack:
    .fill 65536, 1, 0
fault_stack_top:
    .global user_stack_top
user_stack:
    .fill 2097152, 1, 0
user_stack_top:
"#
);

const TABLE_FLAGS: u64 = 0x7; // present, writable, user
const HUGE_UNCACHED: u64 = 0x9f; // present, writable, user, PWT, PCD, 2 MiB
const HUGE: u64 = 0x80;
const ENTRY_ADDR: u64 = 0x000f_ffff_ffff_f000;
const TWO_MIB: u64 = 2 << 20;
/// What the boot tables map: the first 4 GiB.
pub const MAPPED_END: u64 = 4 << 30;

/// The table an entry points to, made (zeroed, from `dma`) if absent.
fn next_table(entry: *mut u64, dma: &mut crate::Dma) -> Result<*mut u64, crate::rt::Failure> {
    // SAFETY: `entry` is an entry of one of our page tables, all of which
    // are identity-mapped RAM that ring 3 may write.
    let value = unsafe { core::ptr::read_volatile(entry) };
    if value & 1 != 0 {
        if value & HUGE != 0 {
            crate::bail!("a large page is already mapped where a table is needed");
        }
        return Ok((value & ENTRY_ADDR) as *mut u64);
    }
    let table = dma.alloc(4096, 4096)?;
    // SAFETY: as above; a new entry in a non-present slot needs no TLB
    // flush, since non-present entries are never cached.
    unsafe { core::ptr::write_volatile(entry, table | TABLE_FLAGS) };
    Ok(table as *mut u64)
}

/// Identity-maps `[addr, addr + size)` uncached for ring 3 in 2 MiB pages,
/// for BARs a VMM placed above the 4 GiB the boot tables cover. The new
/// page tables come from `dma` (identity-mapped RAM below 4 GiB).
pub fn map_mmio(addr: u64, size: u64, dma: &mut crate::Dma) -> Result<(), crate::rt::Failure> {
    extern "C" {
        static mut pml4: [u64; 512];
    }
    if addr.checked_add(size).is_none_or(|end| end > 1 << 47) {
        crate::bail!("MMIO at 0x{addr:x}+0x{size:x} is beyond 47-bit addresses");
    }
    let mut page = addr & !(TWO_MIB - 1);
    while page < addr + size {
        let index = |shift: u32| ((page >> shift) & 511) as usize;
        // SAFETY: the PML4 is a static; every table reached from it is one
        // of ours (see next_table).
        unsafe {
            let root = core::ptr::addr_of_mut!(pml4) as *mut u64;
            let pdpt = next_table(root.add(index(39)), dma)?;
            let pd = next_table(pdpt.add(index(30)), dma)?;
            core::ptr::write_volatile(pd.add(index(21)), page | HUGE_UNCACHED);
        }
        page += TWO_MIB;
    }
    Ok(())
}

/// The physical address of `hvm_start_info`, as PVH handed it over.
pub fn start_info_paddr() -> u64 {
    extern "C" {
        static start_info_paddr: u64;
    }
    // SAFETY: written once by the 32-bit entry before ring 3 started.
    unsafe { core::ptr::read_volatile(core::ptr::addr_of!(start_info_paddr)) & 0xffff_ffff }
}

/// The first free byte after the image (page-aligned), from the linker.
pub fn image_end() -> u64 {
    extern "C" {
        static __image_end: u8;
    }
    core::ptr::addr_of!(__image_end) as u64
}
