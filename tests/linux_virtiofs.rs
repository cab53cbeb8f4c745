//! Linux tier: virtio-fs through `--generic-vhost-user` against real
//! virtiofsd, mounted by Debian's own driver exactly as Cloud Hypervisor's
//! documentation does (`mount -t virtiofs -- myfs mount_dir/`). The guest
//! reports what it read and wrote; the scenario reports what the backend's
//! directory holds; the test holds one against the other.

use rstest::rstest;
use test_infra::linux::GuestInit;
use test_infra::Scenario;

/// A guest with Debian's virtio-pci and virtio-fs modules that mounts
/// `myfs` as the seed does, runs `script` in `mount_dir/`, and unmounts.
fn fs_guest(script: &str) -> GuestInit {
    GuestInit::new(&format!(
        "mkdir -p /mount_dir\n\
         mount -t virtiofs -- myfs mount_dir/ && report mounted tag=myfs\n\
         cd /mount_dir\n\
         {script}\n\
         cd /\n\
         umount /mount_dir && report unmounted"
    ))
    .modules(&["virtio_pci", "virtiofs"])
}

/// The seed's command line, paths filled in: one vCPU, 1G of shared memory,
/// the generic device for virtiofsd's socket with two 512-entry queues.
fn seed_vmm(name: &str, virtio_id: &str, extra: &str) -> String {
    format!(
        "run_vmm {name} 240 --cpus boot=1 --memory size=1G,shared=on --kernel \"$VMLINUX\" \
         --initramfs \"$IN/{name}.cpio\" --cmdline 'console=ttyS0 quiet panic=-1' --console off \
         --generic-vhost-user \"socket=$WORK/myfs.sock,virtio_id={virtio_id},queue_sizes=[512,512]\" {extra}"
    )
}

/// `(name, sha)` of every `KIND NAME sha=...` record of the guest or the
/// scenario.
fn shas(records: &test_infra::ProbeReport, kind: &str) -> Vec<(String, String)> {
    records
        .all(kind)
        .filter_map(|r| Some((r.positional.first()?.clone(), r.get("sha")?.to_string())))
        .collect()
}

const SIZES: [(&str, u64); 5] = [
    ("0b", 0),
    ("1b", 1),
    ("4k", 4096),
    ("1m1", (1 << 20) + 1),
    ("64m", 64 << 20),
];

/// Files of every size read with the host's sha256, and files the guest
/// writes arrive on the host with the guest's sha256; by number and by
/// name.
#[rstest]
#[case::virtio_id_26("26")]
#[case::virtio_id_fs("fs")]
fn files_of_every_size_cross_with_their_sha256(#[case] virtio_id: &str) {
    let mut guest = String::new();
    let mut host_prepare = String::new();
    let mut host_check = String::new();
    for (name, size) in SIZES {
        host_prepare.push_str(&format!(
            "head -c {size} /dev/urandom > $WORK/share/h-{name}; \
             record host-file h-{name} sha=$(sha $WORK/share/h-{name})\n"
        ));
        guest.push_str(&format!(
            "report guest-read h-{name} sha=$(sha256sum h-{name} | cut -d' ' -f1)\n\
             head -c {size} /dev/urandom > /tmp/g-{name}; cp /tmp/g-{name} g-{name}\n\
             report guest-wrote g-{name} sha=$(sha256sum /tmp/g-{name} | cut -d' ' -f1)\n"
        ));
        host_check.push_str(&format!(
            "record host-read g-{name} sha=$(sha $WORK/share/g-{name}) size=$(stat -c %s $WORK/share/g-{name})\n"
        ));
    }
    let mut s = Scenario::new(&format!("fs-sizes-{virtio_id}")).expect("scenario");
    s.guest("guest.cpio", &fs_guest(&format!("{guest}sync")))
        .expect("initramfs")
        .script(&format!(
            "mkdir -p $WORK/share\n{host_prepare}start_virtiofsd myfs $WORK/share\n{}\n{host_check}",
            seed_vmm("guest", virtio_id, "")
        ));
    let run = s.run_completed();
    let guest = run.guest("guest");
    assert!(guest.first("unmounted").is_some(), "{}", run.describe());
    let host_files = shas(&run.records, "host-file");
    let guest_read = shas(&guest, "guest-read");
    assert_eq!(host_files.len(), SIZES.len(), "{}", run.describe());
    assert_eq!(guest_read, host_files, "{}", run.describe());
    let guest_wrote = shas(&guest, "guest-wrote");
    let host_read = shas(&run.records, "host-read");
    assert_eq!(guest_wrote.len(), SIZES.len(), "{}", run.describe());
    assert_eq!(host_read, guest_wrote, "{}", run.describe());
    for (name, size) in SIZES {
        let r = run
            .records
            .first_at("host-read", &format!("g-{name}"))
            .expect("record");
        assert_eq!(r.number("size"), Some(size), "{}", run.describe());
    }
    assert_eq!(run.vmm_exit("guest"), Some(0), "{}", run.describe());
}

/// 1,000 entries each way: the guest lists the host's, the host lists the
/// guest's.
#[test]
fn a_directory_with_1000_entries_each_way() {
    let mut s = Scenario::new("fs-1000").expect("scenario");
    s.guest(
        "guest.cpio",
        &fs_guest(
            "report guest-list count=$(ls host-dir | wc -l) \
             first=$(ls host-dir | sort | head -1) last=$(ls host-dir | sort | tail -1)\n\
             mkdir guest-dir; i=0; while [ $i -lt 1000 ]; do : > guest-dir/g$i; i=$((i+1)); done\n\
             report guest-created count=$i",
        ),
    )
    .expect("initramfs")
    .script(&format!(
        "mkdir -p $WORK/share/host-dir\n\
         i=0; while [ $i -lt 1000 ]; do : > $WORK/share/host-dir/entry-$(printf %04d $i); i=$((i+1)); done\n\
         start_virtiofsd myfs $WORK/share\n{}\n\
         record host-list count=$(ls $WORK/share/guest-dir | wc -l)",
        seed_vmm("guest", "26", "")
    ));
    let run = s.run_completed();
    let guest = run.guest("guest");
    let list = guest
        .first("guest-list")
        .unwrap_or_else(|| panic!("no listing\n{}", run.describe()));
    assert_eq!(list.number("count"), Some(1000), "{}", run.describe());
    assert_eq!(list.get("first"), Some("entry-0000"));
    assert_eq!(list.get("last"), Some("entry-0999"));
    assert_eq!(
        run.records
            .first("host-list")
            .and_then(|r| r.number("count")),
        Some(1000),
        "{}",
        run.describe()
    );
}

/// mkdir, rename, unlink, symlink, chmod and truncate from the guest, each
/// checked on the backend's directory.
#[test]
fn namespace_operations_reach_the_host() {
    let mut s = Scenario::new("fs-namespace").expect("scenario");
    s.guest(
        "guest.cpio",
        &fs_guest(
            "mkdir made && report op mkdir rc=$?\n\
             mv before after && report op rename rc=$?\n\
             rm doomed && report op unlink rc=$?\n\
             ln -s after link && report op symlink rc=$?\n\
             chmod 0751 after && report op chmod rc=$?\n\
             truncate -s 12345 sized && report op truncate rc=$?",
        ),
    )
    .expect("initramfs")
    .script(&format!(
        "mkdir -p $WORK/share; cd $WORK/share\n\
         echo content > before; echo bye > doomed; head -c 100000 /dev/zero > sized\n\
         cd $WORK\n\
         start_virtiofsd myfs $WORK/share\n{}\n\
         cd $WORK/share\n\
         record host made=$([ -d made ] && echo dir) before=$([ -e before ] && echo present || echo gone) \
         after=\"$(cat after)\" doomed=$([ -e doomed ] && echo present || echo gone) \
         link=$(readlink link) mode=$(stat -c %a after) size=$(stat -c %s sized)",
        seed_vmm("guest", "26", "")
    ));
    let run = s.run_completed();
    let guest = run.guest("guest");
    for op in ["mkdir", "rename", "unlink", "symlink", "chmod", "truncate"] {
        assert!(
            guest
                .first_at("op", op)
                .is_some_and(|r| r.get("rc") == Some("0")),
            "{op} failed in the guest\n{}",
            run.describe()
        );
    }
    let host = run
        .records
        .first("host")
        .unwrap_or_else(|| panic!("no host record\n{}", run.describe()));
    for (key, want) in [
        ("made", "dir"),
        ("before", "gone"),
        ("after", "content"),
        ("doomed", "gone"),
        ("link", "after"),
        ("mode", "751"),
        ("size", "12345"),
    ] {
        assert_eq!(host.get(key), Some(want), "{key}\n{}", run.describe());
    }
}

/// Data the guest fsyncs is in the host's file while the guest still runs,
/// before any unmount could flush it.
#[test]
fn fsync_puts_the_data_on_the_host_while_mounted() {
    let mut s = Scenario::new("fs-fsync").expect("scenario");
    s.guest(
        "guest.cpio",
        &fs_guest(
            "head -c 300000 /dev/urandom > /tmp/data\n\
             dd if=/tmp/data of=synced bs=64k conv=fsync 2>/dev/null && \
             report fsynced sha=$(sha256sum /tmp/data | cut -d' ' -f1)\n\
             n=600; while [ ! -e host-checked ] && [ $n -gt 0 ]; do sleep 0.1; n=$((n-1)); done\n\
             report host-checked seen=$([ -e host-checked ] && echo yes || echo no)",
        ),
    )
    .expect("initramfs")
    .script(
        "mkdir -p $WORK/share; start_virtiofsd myfs $WORK/share\n\
         start_vmm guest 240 --cpus boot=1 --memory size=1G,shared=on --kernel \"$VMLINUX\" \
         --initramfs \"$IN/guest.cpio\" --cmdline 'console=ttyS0 quiet panic=-1' --console off \
         --generic-vhost-user \"socket=$WORK/myfs.sock,virtio_id=26,queue_sizes=[512,512]\"\n\
         wait_line $OUT/guest.serial 'linux: fsynced' 200 && \
         record host-while-mounted sha=$(sha $WORK/share/synced)\n\
         : > $WORK/share/host-checked\n\
         wait_vmm guest 240",
    );
    let run = s.run_completed();
    let guest = run.guest("guest");
    let fsynced = guest
        .first("fsynced")
        .and_then(|r| r.get("sha"))
        .unwrap_or_else(|| panic!("fsync failed\n{}", run.describe()));
    assert_eq!(
        run.records
            .first("host-while-mounted")
            .and_then(|r| r.get("sha")),
        Some(fsynced),
        "{}",
        run.describe()
    );
    assert_eq!(
        guest.first("host-checked").and_then(|r| r.get("seen")),
        Some("yes")
    );
}

/// A file the host rewrites after the guest has read it: the guest sees
/// the new contents.
#[test]
fn the_guest_sees_a_file_the_host_changes_after_the_mount() {
    let mut s = Scenario::new("fs-host-change").expect("scenario");
    s.guest(
        "guest.cpio",
        &fs_guest(
            "report before text=\"$(cat note)\"\n\
             n=600; while [ ! -e changed ] && [ $n -gt 0 ]; do sleep 0.1; n=$((n-1)); done\n\
             report after text=\"$(cat note)\"",
        ),
    )
    .expect("initramfs")
    .script(
        "mkdir -p $WORK/share; echo first-version > $WORK/share/note\n\
         start_virtiofsd myfs $WORK/share\n\
         start_vmm guest 240 --cpus boot=1 --memory size=1G,shared=on --kernel \"$VMLINUX\" \
         --initramfs \"$IN/guest.cpio\" --cmdline 'console=ttyS0 quiet panic=-1' --console off \
         --generic-vhost-user \"socket=$WORK/myfs.sock,virtio_id=26,queue_sizes=[512,512]\"\n\
         wait_line $OUT/guest.serial 'linux: before' 200\n\
         echo second-version-longer > $WORK/share/note; : > $WORK/share/changed\n\
         wait_vmm guest 240",
    );
    let run = s.run_completed();
    let guest = run.guest("guest");
    let text = |kind: &str| {
        guest
            .first(kind)
            .and_then(|r| r.get("text"))
            .map(str::to_string)
    };
    assert_eq!(
        text("before").as_deref(),
        Some("first-version"),
        "{}",
        run.describe()
    );
    assert_eq!(
        text("after").as_deref(),
        Some("second-version-longer"),
        "{}",
        run.describe()
    );
}

/// Two generic devices with their own virtiofsd and tag in one VM: each
/// mount shows its own host directory, and writes land in the right one.
#[test]
fn two_devices_with_different_tags() {
    let mut s = Scenario::new("fs-two").expect("scenario");
    s.guest(
        "guest.cpio",
        &fs_guest(
            "mkdir -p /other && mount -t virtiofs other /other && report mounted tag=other\n\
             report read myfs=\"$(cat which)\" other=\"$(cat /other/which)\"\n\
             echo from-guest-to-myfs > written; echo from-guest-to-other > /other/written\n\
             umount /other",
        ),
    )
    .expect("initramfs")
    .script(&format!(
        "mkdir -p $WORK/a $WORK/b; echo i-am-myfs > $WORK/a/which; echo i-am-other > $WORK/b/which\n\
         start_virtiofsd myfs $WORK/a; start_virtiofsd other $WORK/b\n{}\n\
         record host a=\"$(cat $WORK/a/written)\" b=\"$(cat $WORK/b/written)\"",
        seed_vmm(
            "guest",
            "26",
            "--generic-vhost-user \"socket=$WORK/other.sock,virtio_id=26,queue_sizes=[512,512]\""
        )
    ));
    let run = s.run_completed();
    let guest = run.guest("guest");
    let read = guest
        .first("read")
        .unwrap_or_else(|| panic!("no read record\n{}", run.describe()));
    assert_eq!(read.get("myfs"), Some("i-am-myfs"), "{}", run.describe());
    assert_eq!(read.get("other"), Some("i-am-other"), "{}", run.describe());
    let host = run.records.first("host").expect("host record");
    assert_eq!(
        host.get("a"),
        Some("from-guest-to-myfs"),
        "{}",
        run.describe()
    );
    assert_eq!(
        host.get("b"),
        Some("from-guest-to-other"),
        "{}",
        run.describe()
    );
}
