//! One virtio-blk request (VIRTIO 1.3 §5.2.6): a descriptor chain from a
//! driver we do not trust, checked and carried out against a `Disk`.
//!
//! The chain is read as two byte streams, whatever its layout: the
//! device-readable bytes (a 16-byte header, then data for writes, discard
//! and write-zeroes segments) and the device-writable ones (data for reads
//! and GET_ID, then the status byte, always last).

use virtio_bindings::virtio_blk::*;
use virtio_queue::desc::split::Descriptor;
use vm_memory::bitmap::BitmapSlice;
use vm_memory::{GuestMemory, VolatileSlice};

use super::disk::{Disk, SECTOR_SIZE};

/// The length of a GET_ID answer.
pub const ID_BYTES: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Segments per discard or write-zeroes request (`max_discard_seg`).
pub const MAX_DISCARD_SEGMENTS: u32 = 1;
/// Sectors per discard or write-zeroes segment.
pub const MAX_DISCARD_SECTORS: u32 = u32::MAX;
const HEADER_LEN: usize = 16;
const SEGMENT_LEN: usize = 16;

/// What the device knows that requests are checked against.
#[derive(Debug, Clone)]
pub struct DiskInfo {
    /// In sectors.
    pub capacity: u64,
    pub readonly: bool,
    /// GET_ID's answer, NUL-padded.
    pub id: [u8; ID_BYTES],
    /// DISCARD and WRITE_ZEROES were negotiated.
    pub discard: bool,
}

/// Why a request failed: what the log says, and the status the driver gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The chain itself is malformed: IOERR, and one log line.
    BadChain(&'static str),
    /// A well-formed request the device cannot carry out: IOERR.
    IoError(String),
    /// A type or flag the device does not implement: UNSUPP.
    Unsupported(u32),
}

/// The outcome the caller puts in the used ring.
#[derive(Debug, PartialEq, Eq)]
pub struct Completion {
    /// Bytes written into the chain's writable buffers.
    pub used_len: u32,
    /// Why the request failed, for the log; None when it succeeded or
    /// failed for the guest's own reason (e.g. writing a read-only disk).
    pub problem: Option<Refusal>,
    /// What a request that succeeded did to the disk, for the counters.
    pub moved: Moved,
}

/// What a request did to the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Moved {
    Read(u64),
    Written(u64),
    Flushed,
    /// Nothing counted: GET_ID, DISCARD, a failed request.
    #[default]
    Nothing,
}

/// Device-readable or device-writable bytes of a chain, as guest memory
/// slices in order.
struct Stream<'m, B> {
    slices: Vec<VolatileSlice<'m, B>>,
}

impl<'m, B: BitmapSlice> Stream<'m, B> {
    fn len(&self) -> u64 {
        self.slices.iter().map(|s| s.len() as u64).sum()
    }

    /// Takes the first `n` bytes off into a copy; None if there are fewer.
    fn take_front(&mut self, n: usize) -> Option<Vec<u8>> {
        if self.len() < n as u64 {
            return None;
        }
        let mut out = vec![0u8; n];
        let mut at = 0;
        while at < n {
            let first = self.slices.remove(0);
            let take = first.len().min(n - at);
            first.copy_to(&mut out[at..at + take]);
            at += take;
            if take < first.len() {
                self.slices.insert(0, first.offset(take).ok()?);
            }
        }
        Some(out)
    }

    /// Takes the last byte off, as a slice to write the status into.
    fn take_last_byte(&mut self) -> Option<VolatileSlice<'m, B>> {
        while let Some(last) = self.slices.pop() {
            match last.len() {
                0 => continue,
                1 => return Some(last),
                len => {
                    let status = last.subslice(len - 1, 1).ok()?;
                    self.slices.push(last.subslice(0, len - 1).ok()?);
                    return Some(status);
                }
            }
        }
        None
    }

    /// The first `n` bytes, leaving the rest.
    fn prefix(&self, n: usize) -> Vec<VolatileSlice<'m, B>> {
        let mut out = Vec::new();
        let mut left = n;
        for s in &self.slices {
            if left == 0 {
                break;
            }
            let take = s.len().min(left);
            if let Ok(part) = s.subslice(0, take) {
                out.push(part);
            }
            left -= take;
        }
        out
    }
}

/// Splits a chain into its readable and writable streams. Readable
/// descriptors after a writable one, or addresses outside guest memory,
/// make the chain malformed.
fn streams<'m, M, B>(
    mem: &'m M,
    chain: impl IntoIterator<Item = Descriptor>,
) -> Result<(Stream<'m, B>, Stream<'m, B>), &'static str>
where
    M: GuestMemory,
    M::Bitmap: vm_memory::bitmap::WithBitmapSlice<'m, S = B>,
    B: BitmapSlice,
{
    let mut readable = Stream { slices: Vec::new() };
    let mut writable = Stream { slices: Vec::new() };
    for desc in chain {
        let access = if desc.is_write_only() {
            vm_memory::Permissions::Write
        } else {
            if !writable.slices.is_empty() {
                return Err("a device-readable descriptor follows a device-writable one");
            }
            vm_memory::Permissions::Read
        };
        let slices = mem
            .get_slices(desc.addr(), desc.len() as usize, access)
            .map_err(|_| "a descriptor points outside guest memory")?;
        for slice in slices {
            let slice = slice.map_err(|_| "a descriptor points outside guest memory")?;
            if desc.is_write_only() {
                writable.slices.push(slice);
            } else {
                readable.slices.push(slice);
            }
        }
    }
    Ok((readable, writable))
}

/// Carries out the request in `chain` and writes its status. Never panics
/// and never touches the disk outside `info.capacity`.
pub fn process<M, D>(
    mem: &M,
    chain: impl IntoIterator<Item = Descriptor>,
    disk: &D,
    info: &DiskInfo,
) -> Completion
where
    M: GuestMemory,
    D: Disk,
{
    let (mut readable, mut writable) = match streams(mem, chain) {
        Ok(streams) => streams,
        Err(why) => {
            return Completion {
                used_len: 0,
                problem: Some(Refusal::BadChain(why)),
                moved: Moved::Nothing,
            }
        }
    };
    let Some(status) = writable.take_last_byte() else {
        return Completion {
            used_len: 0,
            problem: Some(Refusal::BadChain("no device-writable status byte")),
            moved: Moved::Nothing,
        };
    };
    let (result, data_written, moved) = match readable.take_front(HEADER_LEN) {
        None => (
            Err(Refusal::BadChain("the header is shorter than 16 bytes")),
            0,
            Moved::Nothing,
        ),
        Some(header) => execute(&header, &readable, &writable, disk, info),
    };
    let moved = if result.is_ok() {
        moved
    } else {
        Moved::Nothing
    };
    let (code, problem) = match result {
        Ok(()) => (VIRTIO_BLK_S_OK, None),
        Err(Refusal::Unsupported(t)) => (VIRTIO_BLK_S_UNSUPP, Some(Refusal::Unsupported(t))),
        Err(Refusal::IoError(why)) if why.is_empty() => (VIRTIO_BLK_S_IOERR, None),
        Err(other) => (VIRTIO_BLK_S_IOERR, Some(other)),
    };
    // One guest byte, checked when the chain was split.
    status.copy_from(&[code as u8]);
    Completion {
        used_len: data_written.saturating_add(1),
        problem,
        moved,
    }
}

/// The request the header names; returns the result, how many data bytes
/// it wrote into the chain, and what it did to the disk if it succeeds.
fn execute<B: BitmapSlice, D: Disk>(
    header: &[u8],
    readable: &Stream<'_, B>,
    writable: &Stream<'_, B>,
    disk: &D,
    info: &DiskInfo,
) -> (Result<(), Refusal>, u32, Moved) {
    let le32 = |at: usize| {
        u32::from_le_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let request_type = le32(0);
    let sector = u64::from(le32(8)) | u64::from(le32(12)) << 32;
    match request_type {
        VIRTIO_BLK_T_IN => {
            let len = writable.len();
            let result = check_range(info, sector, len).and_then(|offset| {
                disk.read_at(&writable.slices, offset).map_err(|e| {
                    Refusal::IoError(format!("read of {len} bytes at sector {sector}: {e}"))
                })
            });
            let written = if result.is_ok() {
                u32::try_from(len).unwrap_or(u32::MAX)
            } else {
                0
            };
            (result, written, Moved::Read(len))
        }
        VIRTIO_BLK_T_OUT => {
            if info.readonly {
                // The guest's own mistake: refused, not logged.
                return (Err(Refusal::IoError(String::new())), 0, Moved::Nothing);
            }
            let len = readable.len();
            let result = check_range(info, sector, len).and_then(|offset| {
                disk.write_at(&readable.slices, offset).map_err(|e| {
                    Refusal::IoError(format!("write of {len} bytes at sector {sector}: {e}"))
                })
            });
            (result, 0, Moved::Written(len))
        }
        VIRTIO_BLK_T_FLUSH => {
            let result = if info.readonly {
                Ok(())
            } else {
                disk.flush()
                    .map_err(|e| Refusal::IoError(format!("flush: {e}")))
            };
            (result, 0, Moved::Flushed)
        }
        VIRTIO_BLK_T_GET_ID => {
            let n = writable.len().min(ID_BYTES as u64) as usize;
            let mut at = 0;
            for slice in writable.prefix(n) {
                slice.copy_from(&info.id[at..at + slice.len()]);
                at += slice.len();
            }
            (Ok(()), n as u32, Moved::Nothing)
        }
        VIRTIO_BLK_T_DISCARD | VIRTIO_BLK_T_WRITE_ZEROES if info.discard => (
            discard(request_type, readable, disk, info),
            0,
            Moved::Nothing,
        ),
        other => (Err(Refusal::Unsupported(other)), 0, Moved::Nothing),
    }
}

/// A read or write of `len` bytes at `sector`: whole sectors inside the
/// disk. Returns the byte offset.
fn check_range(info: &DiskInfo, sector: u64, len: u64) -> Result<u64, Refusal> {
    if !len.is_multiple_of(SECTOR_SIZE) {
        return Err(Refusal::BadChain("data is not a whole number of sectors"));
    }
    let end = sector.checked_add(len / SECTOR_SIZE);
    if end.is_none_or(|end| end > info.capacity) {
        // Out of range is the guest's own error, as a real disk reports it.
        return Err(Refusal::IoError(String::new()));
    }
    Ok(sector * SECTOR_SIZE)
}

/// DISCARD or WRITE_ZEROES: `struct virtio_blk_discard_write_zeroes`
/// segments in the readable data.
fn discard<B: BitmapSlice, D: Disk>(
    request_type: u32,
    readable: &Stream<'_, B>,
    disk: &D,
    info: &DiskInfo,
) -> Result<(), Refusal> {
    if info.readonly {
        return Err(Refusal::IoError(String::new()));
    }
    let len = readable.len();
    if len == 0 || !len.is_multiple_of(SEGMENT_LEN as u64) {
        return Err(Refusal::BadChain(
            "discard data is not whole 16-byte segments",
        ));
    }
    if len / SEGMENT_LEN as u64 > u64::from(MAX_DISCARD_SEGMENTS) {
        return Err(Refusal::BadChain(
            "more discard segments than max_discard_seg",
        ));
    }
    let mut bytes = vec![0u8; len as usize];
    let mut at = 0;
    for slice in &readable.slices {
        slice.copy_to(&mut bytes[at..at + slice.len()]);
        at += slice.len();
    }
    for segment in bytes.chunks_exact(SEGMENT_LEN) {
        let sector = u64::from_le_bytes(segment[0..8].try_into().unwrap_or_default());
        let sectors = u32::from_le_bytes(segment[8..12].try_into().unwrap_or_default());
        let flags = u32::from_le_bytes(segment[12..16].try_into().unwrap_or_default());
        let unmap = flags & VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0;
        // The spec: discard with the unmap flag, or any reserved flag, is
        // unsupported.
        if flags & !VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP != 0
            || (request_type == VIRTIO_BLK_T_DISCARD && unmap)
        {
            return Err(Refusal::Unsupported(request_type));
        }
        let offset = check_range(info, sector, u64::from(sectors) * SECTOR_SIZE)?;
        let len = u64::from(sectors) * SECTOR_SIZE;
        let result = if request_type == VIRTIO_BLK_T_DISCARD {
            disk.discard(offset, len)
        } else {
            disk.write_zeroes(offset, len, unmap)
        };
        result.map_err(|e| {
            Refusal::IoError(format!(
                "discard or write zeroes of {sectors} sectors at {sector}: {e}"
            ))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
