use std::os::unix::fs::MetadataExt;

use vm_memory::{Bytes, GuestAddress};

use super::*;
use crate::config::MemoryConfig;
use crate::vstate::memory::create_guest_memory;

fn ram(size: u64, shared: bool) -> GuestMemory {
    create_guest_memory(&MemoryConfig {
        size,
        shared,
        hugepages: false,
        thp: false,
    })
    .unwrap()
}

/// A guest that wrote a few pages here and there, across both regions
/// when there are two.
fn touched(size: u64, shared: bool) -> GuestMemory {
    let memory = ram(size, shared);
    for (gpa, byte) in [(0x1000u64, 0xa1u8), (0x10_0003, 0xb2), (size / 2, 0xc3)] {
        memory.write_slice(&[byte; 100], GuestAddress(gpa)).unwrap();
    }
    memory
}

fn write_snapshot(dir: &Path, memory: &GuestMemory) -> PathBuf {
    let mut writer = SnapshotWriter::create(dir).unwrap();
    writer
        .write_json(CONFIG_FILE, &serde_json::json!({"memory": {"size": 1}}))
        .unwrap();
    writer.write_memory(memory).unwrap();
    writer
        .finish(serde_json::json!({"devices": {"_rtc": {"offset": 5}}}))
        .unwrap()
}

#[rstest::rstest]
#[case(64 << 20, false)]
#[case(64 << 20, true)]
fn a_snapshot_comes_back_as_it_was_and_takes_only_the_touched_pages(
    #[case] size: u64,
    #[case] shared: bool,
) {
    let parent = tempfile::tempdir().unwrap();
    let dir = write_snapshot(&parent.path().join("snap"), &touched(size, shared));
    let mut names: Vec<String> = fs::read_dir(parent.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["snap"], "no partial directory left beside it");
    let memory_file = fs::metadata(dir.join(MEMORY_FILE)).unwrap();
    assert_eq!(memory_file.len(), size);
    // Three touched pages (one straddles two): a few blocks, not 64 MiB.
    assert!(
        memory_file.blocks() * 512 <= 64 * 1024,
        "{}",
        memory_file.blocks()
    );

    let snapshot = Snapshot::open(&dir).unwrap();
    assert_eq!(snapshot.state()["devices"]["_rtc"]["offset"], 5);
    let config: serde_json::Value = snapshot.read_json(CONFIG_FILE).unwrap();
    assert_eq!(config["memory"]["size"], 1);
    let restored = ram(size, shared);
    snapshot.load_memory(&restored).unwrap();
    let original = touched(size, shared);
    let mut a = vec![0u8; size as usize];
    let mut b = vec![0u8; size as usize];
    original.read_slice(&mut a, GuestAddress(0)).unwrap();
    restored.read_slice(&mut b, GuestAddress(0)).unwrap();
    assert!(a == b, "restored memory differs");
}

#[test]
fn memory_above_4g_is_saved_after_the_low_region() {
    let parent = tempfile::tempdir().unwrap();
    let memory = ram(4 << 30, true);
    memory.write_slice(b"high", GuestAddress(1 << 32)).unwrap();
    let dir = write_snapshot(&parent.path().join("snap"), &memory);
    let restored = ram(4 << 30, true);
    Snapshot::open(&dir)
        .unwrap()
        .load_memory(&restored)
        .unwrap();
    let mut word = [0u8; 4];
    restored
        .read_slice(&mut word, GuestAddress(1 << 32))
        .unwrap();
    assert_eq!(&word, b"high");
}

#[test]
fn an_existing_snapshot_is_never_written_over() {
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("snap");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("keep"), b"mine").unwrap();
    let err = SnapshotWriter::create(&dir).map(|_| ()).unwrap_err();
    assert!(matches!(err, SnapshotError::Exists(_)), "{err}");
    assert_eq!(fs::read(dir.join("keep")).unwrap(), b"mine");
}

#[test]
fn a_snapshot_given_up_leaves_nothing() {
    let parent = tempfile::tempdir().unwrap();
    let mut writer = SnapshotWriter::create(&parent.path().join("snap")).unwrap();
    writer.write_json(CONFIG_FILE, &1).unwrap();
    drop(writer);
    assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 0);
}

/// Every kind of damage is refused naming the file, and the snapshot is
/// left as it was.
#[rstest::rstest]
#[case::state_truncated(STATE_FILE, "truncate", "state.json: not valid JSON")]
#[case::state_edited(STATE_FILE, "offset", "state.json: checksum")]
#[case::config_damaged(CONFIG_FILE, "flip", "config.json: checksum")]
#[case::memory_short(
    MEMORY_FILE,
    "shorten",
    "memory-ranges: 67104768 bytes, the snapshot says 67108864"
)]
#[case::memory_damaged(MEMORY_FILE, "flip-page", "memory-ranges: checksum")]
#[case::version(STATE_FILE, "version", "format version 9, this vmm reads version 1")]
fn damage_is_found_before_anything_is_read(
    #[case] file: &str,
    #[case] damage: &str,
    #[case] message: &str,
) {
    let parent = tempfile::tempdir().unwrap();
    let dir = write_snapshot(&parent.path().join("snap"), &touched(64 << 20, false));
    let path = dir.join(file);
    let mut bytes = fs::read(&path).unwrap();
    match damage {
        "truncate" => bytes.truncate(bytes.len() / 2),
        "offset" => {
            let text = String::from_utf8(bytes).unwrap();
            bytes = text.replace("\"offset\": 5", "\"offset\": 6").into_bytes();
        }
        "flip" => bytes[2] ^= 0x20,
        "shorten" => bytes.truncate(bytes.len() - 4096),
        "flip-page" => bytes[0x1000] ^= 1,
        "version" => {
            let text = String::from_utf8(bytes).unwrap();
            bytes = text
                .replace("\"version\": 1", "\"version\": 9")
                .into_bytes();
        }
        other => panic!("{other}"),
    }
    fs::write(&path, &bytes).unwrap();
    let err = Snapshot::open(&dir).unwrap_err().to_string();
    assert!(err.contains(message), "{err}");
    assert_eq!(fs::read(&path).unwrap(), bytes, "the snapshot was modified");
}

#[test]
fn memory_of_another_size_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let dir = write_snapshot(&parent.path().join("snap"), &touched(64 << 20, false));
    let err = Snapshot::open(&dir)
        .unwrap()
        .load_memory(&ram(128 << 20, false))
        .unwrap_err();
    assert!(
        matches!(err, SnapshotError::MemorySize { saved, present, .. }
            if saved == 64 << 20 && present == 128 << 20),
        "{err}"
    );
}
