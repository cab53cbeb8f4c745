//! Ring-3 access to the machine: port I/O (each instruction traps to the
//! ring-0 #GP emulator, ~30 us), MMIO (user mappings), the serial line,
//! interrupt-flag control and time.

use core::arch::asm;
use core::fmt::{self, Write};

use crate::rt::FixedString;

const COM1: u16 = 0x3f8;
/// QEMU's `isa-debug-exit` and `vmm`'s exit device.
const DEBUG_EXIT_PORT: u16 = 0xf4;

pub fn outb(port: u16, value: u8) {
    // SAFETY: traps to the #GP handler, which performs the access.
    unsafe { asm!("out dx, al", in("dx") port, in("al") value, options(nostack)) };
}

pub fn outw(port: u16, value: u16) {
    // SAFETY: as outb.
    unsafe { asm!("out dx, ax", in("dx") port, in("ax") value, options(nostack)) };
}

pub fn outl(port: u16, value: u32) {
    // SAFETY: as outb.
    unsafe { asm!("out dx, eax", in("dx") port, in("eax") value, options(nostack)) };
}

pub fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: as outb; the handler writes the result into the saved rax.
    unsafe { asm!("in al, dx", in("dx") port, out("al") value, options(nostack)) };
    value
}

pub fn inw(port: u16) -> u16 {
    let value: u16;
    // SAFETY: as inb.
    unsafe { asm!("in ax, dx", in("dx") port, out("ax") value, options(nostack)) };
    value
}

pub fn inl(port: u16) -> u32 {
    let value: u32;
    // SAFETY: as outb; the handler writes the result into the saved rax.
    unsafe { asm!("in eax, dx", in("dx") port, out("eax") value, options(nostack)) };
    value
}

/// Writes bytes to COM1 with one `rep outsb`, so a whole line costs a
/// single trap into ring 0.
pub fn serial_write(bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    // SAFETY: the #GP handler performs `rep outsb` on our buffer, which is
    // mapped and readable.
    unsafe {
        asm!("rep outsb", in("dx") COM1, inout("rsi") bytes.as_ptr() => _,
             inout("rcx") bytes.len() => _, options(nostack));
    }
}

/// Records can be long (directory listings, config dumps); one static
/// buffer because ring 3 is single-threaded.
static mut RECORD: FixedString<16384> = FixedString::new();

/// Prints one `probe: ...` line.
pub fn emit_record(args: fmt::Arguments<'_>) {
    // SAFETY: only the single ring-3 thread uses RECORD, and no interrupt
    // handler prints.
    let line = unsafe { &mut *core::ptr::addr_of_mut!(RECORD) };
    line.clear();
    let _ = line.write_str("probe: ");
    let _ = line.write_fmt(args);
    let _ = line.write_str("\n");
    serial_write(line.as_str().as_bytes());
}

#[macro_export]
macro_rules! record {
    ($($arg:tt)*) => { $crate::io::emit_record(format_args!($($arg)*)) };
}

/// Reports failure through the exit port: QEMU and `vmm` both exit with
/// status (1 << 1) | 1 = 3.
pub fn exit_failure() -> ! {
    outb(DEBUG_EXIT_PORT, 1);
    halt_forever()
}

pub fn halt_forever() -> ! {
    loop {
        cli();
        hlt();
    }
}

/// Clears IF (traps; the handler clears it in the return frame).
pub fn cli() {
    // SAFETY: emulated by the #GP handler.
    unsafe { asm!("cli", options(nostack)) };
}

/// Sets IF.
pub fn sti() {
    // SAFETY: emulated by the #GP handler.
    unsafe { asm!("sti", options(nostack)) };
}

/// Waits for the next interrupt: the handler does `sti; hlt` in ring 0 and
/// returns with IF set, so calling this with IF clear closes the race
/// between checking a condition and sleeping.
pub fn hlt() {
    // SAFETY: emulated by the #GP handler.
    unsafe { asm!("hlt", options(nostack)) };
}

pub fn rdtsc() -> u64 {
    let lo: u32;
    let hi: u32;
    // SAFETY: rdtsc is allowed in ring 3 (CR4.TSD is clear).
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nostack, nomem)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

pub fn pause() {
    core::hint::spin_loop();
}

/// Volatile MMIO through the identity map (user-accessible, uncached above
/// 3 GiB).
pub mod mmio {
    pub fn read8(addr: u64) -> u8 {
        // SAFETY: the caller passes a mapped device or RAM address.
        unsafe { core::ptr::read_volatile(addr as *const u8) }
    }
    pub fn read16(addr: u64) -> u16 {
        // SAFETY: as read8.
        unsafe { core::ptr::read_volatile(addr as *const u16) }
    }
    pub fn read32(addr: u64) -> u32 {
        // SAFETY: as read8.
        unsafe { core::ptr::read_volatile(addr as *const u32) }
    }
    pub fn write8(addr: u64, v: u8) {
        // SAFETY: as read8.
        unsafe { core::ptr::write_volatile(addr as *mut u8, v) }
    }
    pub fn write16(addr: u64, v: u16) {
        // SAFETY: as read8.
        unsafe { core::ptr::write_volatile(addr as *mut u16, v) }
    }
    pub fn write32(addr: u64, v: u32) {
        // SAFETY: as read8.
        unsafe { core::ptr::write_volatile(addr as *mut u32, v) }
    }
    /// 64-bit registers as two 32-bit halves, low first: the form every
    /// virtio-pci implementation accepts.
    pub fn write64(addr: u64, v: u64) {
        write32(addr, v as u32);
        write32(addr + 4, (v >> 32) as u32);
    }

    /// One read of `width` bytes (1, 2, 4, else 8) at any alignment, as a
    /// single instruction: the device sees exactly this access.
    pub fn read(addr: u64, width: u8) -> u64 {
        let value: u64;
        // SAFETY: the caller passes a mapped device or RAM address; a
        // plain `mov` has no alignment requirement.
        unsafe {
            match width {
                1 => {
                    core::arch::asm!("movzx {v:e}, byte ptr [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack))
                }
                2 => {
                    core::arch::asm!("movzx {v:e}, word ptr [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack))
                }
                4 => {
                    core::arch::asm!("mov {v:e}, dword ptr [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack))
                }
                _ => {
                    core::arch::asm!("mov {v}, qword ptr [{a}]", a = in(reg) addr, v = out(reg) value, options(nostack))
                }
            }
        }
        value
    }

    /// One write of the low `width` bytes (1, 2, 4, else 8) of `value` at
    /// any alignment, as a single instruction.
    pub fn write(addr: u64, width: u8, value: u64) {
        // SAFETY: as `read`.
        unsafe {
            match width {
                1 => {
                    core::arch::asm!("mov byte ptr [{a}], {v:l}", a = in(reg) addr, v = in(reg) value, options(nostack))
                }
                2 => {
                    core::arch::asm!("mov word ptr [{a}], {v:x}", a = in(reg) addr, v = in(reg) value, options(nostack))
                }
                4 => {
                    core::arch::asm!("mov dword ptr [{a}], {v:e}", a = in(reg) addr, v = in(reg) value, options(nostack))
                }
                _ => {
                    core::arch::asm!("mov qword ptr [{a}], {v}", a = in(reg) addr, v = in(reg) value, options(nostack))
                }
            }
        }
    }
}
