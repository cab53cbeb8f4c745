//! `--block FILE`: queue 0 is a virtio-blk request queue served from FILE
//! (IN, OUT, FLUSH, GET_ID), whatever capacity `--config` announces, so a
//! test can build a block backend whose config disagrees with its data: a
//! request past the file's end gets IOERR, as a real disk's would.

use std::fs::File;
use std::os::unix::fs::FileExt;

use vhost_user_backend::{VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{
    Bytes, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap,
};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const ID: &[u8] = b"vhost-user-mock";

type Memory = GuestMemoryLoadGuard<GuestMemoryMmap>;

/// Serves every request waiting on `vring` from `file`.
pub fn serve(
    file: &File,
    memory: &GuestMemoryAtomic<GuestMemoryMmap>,
    vring: &VringRwLock,
) -> std::io::Result<()> {
    let memory = memory.memory();
    let mut used = false;
    loop {
        let chain = vring
            .get_mut()
            .get_queue_mut()
            .pop_descriptor_chain(memory.clone());
        let Some(chain) = chain else { break };
        let head = chain.head_index();
        let descs: Vec<_> = chain.collect();
        let len = request(file, &memory, &descs);
        vring
            .add_used(head, len)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        used = true;
    }
    if used {
        vring.signal_used_queue()?;
    }
    Ok(())
}

/// One request; returns the bytes written into the chain. A chain
/// without a header and a status byte is returned with nothing written.
fn request(file: &File, memory: &Memory, descs: &[virtio_queue::desc::split::Descriptor]) -> u32 {
    let (Some(header), Some(status)) = (descs.first(), descs.last()) else {
        return 0;
    };
    let mut h = [0u8; 16];
    if descs.len() < 2 || header.len() < 16 || memory.read_slice(&mut h, header.addr()).is_err() {
        return 0;
    }
    let kind = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    let sector = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    let data = &descs[1..descs.len() - 1];
    let mut offset = sector * 512;
    let mut written = 0u32;
    let mut code = S_OK;
    for d in data {
        let mut buf = vec![0u8; d.len() as usize];
        let ok = match kind {
            T_IN => {
                file.read_exact_at(&mut buf, offset).is_ok()
                    && memory.write_slice(&buf, d.addr()).is_ok()
            }
            T_OUT => {
                memory.read_slice(&mut buf, d.addr()).is_ok()
                    && file.write_all_at(&buf, offset).is_ok()
            }
            T_GET_ID => {
                let n = buf.len().min(ID.len());
                buf[..n].copy_from_slice(&ID[..n]);
                memory.write_slice(&buf, d.addr()).is_ok()
            }
            T_FLUSH => true,
            _ => {
                code = S_UNSUPP;
                true
            }
        };
        if !ok {
            code = S_IOERR;
            break;
        }
        if kind == T_IN || kind == T_GET_ID {
            written += d.len();
        }
        offset += u64::from(d.len());
    }
    if kind == T_FLUSH && file.sync_data().is_err() {
        code = S_IOERR;
    }
    if !matches!(kind, T_IN | T_OUT | T_FLUSH | T_GET_ID) {
        code = S_UNSUPP;
    }
    let _ = memory.write_obj(code, status.addr());
    written + 1
}
