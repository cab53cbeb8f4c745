//! Kernel and initramfs loading: any bytes as the kernel file (ELF, PVH
//! notes, bzImage headers, or neither), an initramfs of any size and any
//! command line, into small guest memory. Loading may refuse, with an
//! error; it must never panic. (Whether what loads fits the memory map is
//! checked by `vmm`'s own tests.)

#![no_main]

use std::ffi::CString;
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::fuzzing::{load_payload, Payload};

/// Guest RAM sizes to load into: the smallest `--memory` allows, a little
/// more, and enough for an initramfs above the kernel.
const SIZES: [u64; 4] = [2 << 20, 3 << 20, 18 << 20, 64 << 20];
/// Where `vmm` puts the RSDP.
const RSDP: u64 = 0xe0000;

/// One memory file per input file, reused run after run.
struct Scratch {
    kernel: File,
    initramfs: File,
    memory: Vec<GuestMemoryMmap>,
}

fn memfd(name: &str) -> File {
    let name = CString::new(name).expect("no NUL in the name");
    // SAFETY: a valid C string; the result is checked.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor that nothing else owns.
    unsafe { File::from_raw_fd(fd) }
}

fn path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

fn rewrite(mut file: &File, bytes: &[u8]) {
    file.set_len(0).expect("truncate a memfd");
    file.seek(SeekFrom::Start(0)).expect("seek a memfd");
    file.write_all(bytes).expect("write a memfd");
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| Scratch {
        kernel: memfd("fuzz-kernel"),
        initramfs: memfd("fuzz-initramfs"),
        memory: SIZES
            .iter()
            .map(|&size| {
                GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)])
                    .expect("anonymous guest memory")
            })
            .collect(),
    })
}

// The input: one byte choosing the memory size (low two bits) and
// whether there is an initramfs (bit 2); two bytes of initramfs size in
// 4 KiB pages; one byte of command line length and that many bytes; the
// rest is the kernel file.
fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((pages, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let Some((&cmdline_len, rest)) = rest.split_first() else {
        return;
    };
    let (cmdline, kernel) = rest.split_at(usize::from(cmdline_len).min(rest.len()));
    let s = scratch();
    let index = usize::from(flags & 3);
    let mem = &s.memory[index];
    let mem_size = SIZES[index];
    rewrite(&s.kernel, kernel);
    let initramfs = (flags & 4 != 0).then(|| {
        let size = u64::from(u16::from_le_bytes(*pages)) * 4096;
        s.initramfs.set_len(0).expect("truncate a memfd");
        s.initramfs.set_len(size).expect("size a memfd");
        path(&s.initramfs)
    });
    let kernel_path = path(&s.kernel);
    let cmdline = String::from_utf8_lossy(cmdline);
    let payload = Payload {
        kernel: &kernel_path,
        initramfs: initramfs.as_deref(),
        cmdline: &cmdline,
    };
    let _ = load_payload(mem, mem_size, &payload, RSDP);
});
