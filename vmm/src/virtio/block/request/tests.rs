//! Requests as a driver lays them out, and as a hostile one might: each
//! gets the status the spec asks for, and none reaches past the disk.

use proptest::prelude::*;
use rstest::rstest;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::virtio::block::memory_disk::MemoryDisk;

const SECTORS: u64 = 64;
const HEADER: u64 = 0x10000;
const DATA: u64 = 0x20000;
const STATUS: u64 = 0x30000;
const MEM_SIZE: usize = 1 << 20;

/// The disk every test starts from: sector contents that differ.
fn disk() -> MemoryDisk {
    MemoryDisk::new(
        (0..SECTORS * SECTOR_SIZE)
            .map(|i| (i % 251) as u8)
            .collect(),
    )
}

fn info(readonly: bool) -> DiskInfo {
    let mut id = [0u8; ID_BYTES];
    id[..6].copy_from_slice(b"SN-042");
    DiskInfo {
        capacity: SECTORS,
        readonly,
        id,
        discard: true,
    }
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

fn header(mem: &GuestMemoryMmap, request_type: u32, sector: u64) {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&request_type.to_le_bytes());
    h[8..16].copy_from_slice(&sector.to_le_bytes());
    mem.write_slice(&h, GuestAddress(HEADER)).unwrap();
}

fn desc(addr: u64, len: u32, flags: u32) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags as u16, 0))
}

/// Runs one chain of `descs` (linked in order) and returns the completion
/// and the status byte.
fn run(
    mem: &GuestMemoryMmap,
    disk: &MemoryDisk,
    info: &DiskInfo,
    descs: &[RawDescriptor],
) -> (Completion, u8) {
    mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    let vq = MockSplitQueue::new(mem, 16);
    let linked: Vec<RawDescriptor> = descs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let mut d = SplitDescriptor::from(*d);
            if i + 1 < descs.len() {
                d.set_flags(d.flags() | VRING_DESC_F_NEXT as u16);
                d.set_next(i as u16 + 1);
            }
            RawDescriptor::from(d)
        })
        .collect();
    vq.add_desc_chains(&linked, 0).unwrap();
    let mut queue: Queue = vq.create_queue().unwrap();
    let chain = queue.pop_descriptor_chain(mem).unwrap();
    let done = process(mem, chain, disk, info);
    (done, mem.read_obj(GuestAddress(STATUS)).unwrap())
}

fn status() -> RawDescriptor {
    desc(STATUS, 1, VRING_DESC_F_WRITE)
}

#[test]
fn read_fills_the_buffers_and_counts_them() {
    let (mem, disk) = (memory(), disk());
    header(&mem, VIRTIO_BLK_T_IN, 2);
    let descs = [
        desc(HEADER, 16, 0),
        desc(DATA, 512, VRING_DESC_F_WRITE),
        desc(DATA + 0x1000, 512, VRING_DESC_F_WRITE),
        status(),
    ];
    let (done, code) = run(&mem, &disk, &info(false), &descs);
    assert_eq!((done.used_len, code, done.problem), (1025, 0, None));
    let mut got = vec![0u8; 512];
    mem.read_slice(&mut got, GuestAddress(DATA + 0x1000))
        .unwrap();
    assert_eq!(got, disk.bytes()[3 * 512..4 * 512]);
}

#[test]
fn write_reaches_the_disk_and_flush_syncs() {
    let (mem, disk) = (memory(), disk());
    header(&mem, VIRTIO_BLK_T_OUT, 5);
    mem.write_slice(&[0xaa; 1024], GuestAddress(DATA)).unwrap();
    let descs = [desc(HEADER, 16, 0), desc(DATA, 1024, 0), status()];
    let (done, code) = run(&mem, &disk, &info(false), &descs);
    assert_eq!((done.used_len, code), (1, 0));
    assert!(disk.bytes()[5 * 512..7 * 512].iter().all(|&b| b == 0xaa));

    header(&mem, VIRTIO_BLK_T_FLUSH, 0);
    let (_, code) = run(&mem, &disk, &info(false), &[desc(HEADER, 16, 0), status()]);
    assert_eq!(code, 0);
    assert_eq!(disk.flushes(), 1);
}

#[test]
fn a_header_and_data_in_one_descriptor_work_too() {
    // ANY_LAYOUT: the split is by bytes, not by descriptors.
    let (mem, disk) = (memory(), disk());
    header(&mem, VIRTIO_BLK_T_OUT, 0);
    mem.write_slice(&[0x11; 512], GuestAddress(HEADER + 16))
        .unwrap();
    let descs = [desc(HEADER, 16 + 512, 0), status()];
    let (_, code) = run(&mem, &disk, &info(false), &descs);
    assert_eq!(code, 0);
    assert!(disk.bytes()[..512].iter().all(|&b| b == 0x11));
}

#[test]
fn get_id_answers_the_serial() {
    let (mem, disk) = (memory(), disk());
    header(&mem, VIRTIO_BLK_T_GET_ID, 0);
    mem.write_slice(&[0xff; 20], GuestAddress(DATA)).unwrap();
    let descs = [
        desc(HEADER, 16, 0),
        desc(DATA, 20, VRING_DESC_F_WRITE),
        status(),
    ];
    let (done, code) = run(&mem, &disk, &info(false), &descs);
    assert_eq!((done.used_len, code), (21, 0));
    let mut got = [0u8; 20];
    mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
    assert_eq!(&got[..7], b"SN-042\0");
}

#[rstest]
// Reads and writes that end past the last sector.
#[case(VIRTIO_BLK_T_IN, SECTORS, true, VIRTIO_BLK_S_IOERR)]
#[case(VIRTIO_BLK_T_IN, SECTORS - 1, true, VIRTIO_BLK_S_IOERR)]
#[case(VIRTIO_BLK_T_IN, u64::MAX, true, VIRTIO_BLK_S_IOERR)]
#[case(VIRTIO_BLK_T_OUT, SECTORS - 1, false, VIRTIO_BLK_S_IOERR)]
#[case(VIRTIO_BLK_T_OUT, u64::MAX / 512 + 1, false, VIRTIO_BLK_S_IOERR)]
// Types we do not implement.
#[case(2, 0, false, VIRTIO_BLK_S_UNSUPP)]
#[case(VIRTIO_BLK_T_SECURE_ERASE, 0, false, VIRTIO_BLK_S_UNSUPP)]
#[case(0xdead_beef, 0, true, VIRTIO_BLK_S_UNSUPP)]
fn bad_requests_get_the_status_the_spec_asks(
    #[case] request_type: u32,
    #[case] sector: u64,
    #[case] into_guest: bool,
    #[case] expected: u32,
) {
    let (mem, disk) = (memory(), disk());
    header(&mem, request_type, sector);
    let flags = if into_guest { VRING_DESC_F_WRITE } else { 0 };
    let descs = [desc(HEADER, 16, 0), desc(DATA, 1024, flags), status()];
    let (_, code) = run(&mem, &disk, &info(false), &descs);
    assert_eq!(u32::from(code), expected);
    assert!(disk.touched().is_empty());
}

#[test]
fn a_read_only_disk_refuses_writes_and_discards() {
    let (mem, disk) = (memory(), disk());
    let before = disk.bytes();
    for t in [
        VIRTIO_BLK_T_OUT,
        VIRTIO_BLK_T_DISCARD,
        VIRTIO_BLK_T_WRITE_ZEROES,
    ] {
        header(&mem, t, 0);
        let descs = [desc(HEADER, 16, 0), desc(DATA, 16, 0), status()];
        let (done, code) = run(&mem, &disk, &info(true), &descs);
        assert_eq!((u32::from(code), done.problem), (VIRTIO_BLK_S_IOERR, None));
    }
    assert_eq!(disk.bytes(), before);
}

fn segment(mem: &GuestMemoryMmap, sector: u64, sectors: u32, flags: u32) {
    let mut s = [0u8; 16];
    s[0..8].copy_from_slice(&sector.to_le_bytes());
    s[8..12].copy_from_slice(&sectors.to_le_bytes());
    s[12..16].copy_from_slice(&flags.to_le_bytes());
    mem.write_slice(&s, GuestAddress(DATA)).unwrap();
}

#[rstest]
#[case(VIRTIO_BLK_T_WRITE_ZEROES, 4, 2, 0, VIRTIO_BLK_S_OK)]
#[case(VIRTIO_BLK_T_WRITE_ZEROES, 4, 2, 1, VIRTIO_BLK_S_OK)]
#[case(VIRTIO_BLK_T_DISCARD, 4, 2, 0, VIRTIO_BLK_S_OK)]
#[case(VIRTIO_BLK_T_DISCARD, 4, 2, 1, VIRTIO_BLK_S_UNSUPP)]
#[case(VIRTIO_BLK_T_WRITE_ZEROES, 4, 2, 2, VIRTIO_BLK_S_UNSUPP)]
#[case(VIRTIO_BLK_T_WRITE_ZEROES, SECTORS - 1, 2, 0, VIRTIO_BLK_S_IOERR)]
#[case(VIRTIO_BLK_T_DISCARD, u64::MAX, u32::MAX, 0, VIRTIO_BLK_S_IOERR)]
fn discard_and_write_zeroes(
    #[case] request_type: u32,
    #[case] sector: u64,
    #[case] sectors: u32,
    #[case] flags: u32,
    #[case] expected: u32,
) {
    let (mem, disk) = (memory(), disk());
    header(&mem, request_type, 0);
    segment(&mem, sector, sectors, flags);
    let descs = [desc(HEADER, 16, 0), desc(DATA, 16, 0), status()];
    let (_, code) = run(&mem, &disk, &info(false), &descs);
    assert_eq!(u32::from(code), expected);
    let zeroed = disk.bytes()[4 * 512..6 * 512].iter().all(|&b| b == 0);
    assert_eq!(zeroed, expected == VIRTIO_BLK_S_OK);
}

#[test]
fn discard_is_unsupported_unless_negotiated() {
    let (mem, disk) = (memory(), disk());
    header(&mem, VIRTIO_BLK_T_DISCARD, 0);
    segment(&mem, 0, 1, 0);
    let info = DiskInfo {
        discard: false,
        ..info(false)
    };
    let descs = [desc(HEADER, 16, 0), desc(DATA, 16, 0), status()];
    let (_, code) = run(&mem, &disk, &info, &descs);
    assert_eq!(u32::from(code), VIRTIO_BLK_S_UNSUPP);
}

#[rstest]
#[case::no_status(&[desc(HEADER, 16, 0), desc(DATA, 512, 0)], None)]
#[case::short_header(&[desc(HEADER, 8, 0), status()], Some(VIRTIO_BLK_S_IOERR))]
#[case::readable_after_writable(
    &[desc(HEADER, 16, 0), status(), desc(DATA, 512, 0), status()], None)]
#[case::outside_memory(
    &[desc(HEADER, 16, 0), desc(MEM_SIZE as u64 - 256, 512, VRING_DESC_F_WRITE), status()], None)]
#[case::partial_sector(
    &[desc(HEADER, 16, 0), desc(DATA, 100, VRING_DESC_F_WRITE), status()], Some(VIRTIO_BLK_S_IOERR))]
fn malformed_chains_are_refused(#[case] descs: &[RawDescriptor], #[case] expected: Option<u32>) {
    let (mem, disk) = (memory(), disk());
    header(&mem, VIRTIO_BLK_T_IN, 0);
    let (done, code) = run(&mem, &disk, &info(false), descs);
    assert!(
        matches!(done.problem, Some(Refusal::BadChain(_))),
        "{:?}",
        done.problem
    );
    match expected {
        Some(status) => assert_eq!(u32::from(code), status),
        // No status byte could be trusted: none is written.
        None => assert_eq!((code, done.used_len), (0xff, 0)),
    }
    assert!(disk.touched().is_empty());
}

proptest! {
    /// Any chain a driver can build completes without a panic and never
    /// touches the disk past its end (MemoryDisk asserts that).
    #[test]
    fn any_chain_is_safe(
        request_type in prop_oneof![0u32..16, any::<u32>()],
        sector in prop_oneof![0..SECTORS + 4, any::<u64>()],
        descs in prop::collection::vec(
            (prop_oneof![0u64..0x40000, any::<u64>()], 0u32..4096, any::<bool>()), 1..6),
    ) {
        let (mem, disk) = (memory(), disk());
        header(&mem, request_type, sector);
        segment(&mem, sector, (sector % 7) as u32, 0);
        let mut chain = vec![desc(HEADER, 16, 0)];
        chain.extend(descs.iter().map(|&(addr, len, write)| {
            desc(addr, len, if write { VRING_DESC_F_WRITE } else { 0 })
        }));
        let (done, _) = run(&mem, &disk, &info(false), &chain);
        prop_assert!(done.used_len <= 4096 * 6 + 1);
    }
}
