//! Linux tier: the seed's command line unchanged (paths filled in,
//! `--initramfs` added) boots Debian's kernel with its root on /dev/vda1
//! of a partitioned raw image and its console on hvc0, mounts `myfs` as
//! the seed does, and what it writes is on the host afterwards: in the
//! virtio-fs directory, and in the image (clean for `e2fsck -n`). An ISO
//! given as `--disk path=x.iso` mounts too (with `image_type=raw`, as
//! Cloud Hypervisor's users write it: an ISO is raw media).

use test_infra::digest::sha256_hex;
use test_infra::disk_image;
use test_infra::linux::GuestInit;
use test_infra::{seed, Scenario};

const ROOT_SIZE: u64 = 64 << 20;

/// What `/sbin/init` on the root disk does: report where it runs, use
/// `myfs` as the seed does, write a file onto its own root, sync.
const ROOT_SCRIPT: &str = r#"report root line=\"$(grep ' / ' /proc/mounts | grep -v rootfs)\"
report console active=$(cat /sys/class/tty/console/active)
report disk sectors=$(cat /sys/block/vda/size) serial=$(cat /sys/block/vda/serial 2>/dev/null)
mount -t virtiofs -- myfs mount_dir/ && report mounted tag=myfs
report guest-read hello.bin sha=$(sha256sum mount_dir/hello.bin | cut -d' ' -f1)
head -c 1000000 /dev/urandom > /tmp/w
cp /tmp/w mount_dir/from-guest.bin
report guest-wrote from-guest.bin sha=$(sha256sum /tmp/w | cut -d' ' -f1)
umount mount_dir && report unmounted
mkdir -p /data
head -c 3000000 /dev/urandom > /data/on-root.bin
report guest-wrote on-root.bin sha=$(sha256sum /data/on-root.bin | cut -d' ' -f1)
sync
report synced"#;

#[test]
fn the_seed_command_line_boots_from_vda1_on_hvc0_and_uses_myfs() {
    let mut s = Scenario::new("seed-disk").expect("scenario");
    let tree = s.scratch_dir("root-tree").expect("scratch");
    seed::root_tree(&tree, ROOT_SCRIPT).expect("root tree");
    let disk = s.scratch_dir("disk").expect("scratch").join("root.img");
    seed::root_disk(&disk, ROOT_SIZE, &tree).expect("root disk");
    let image = std::fs::read(&disk).expect("image");
    s.input("root.img", &image).expect("input");
    s.guest("initrd.cpio", &seed::initramfs())
        .expect("initramfs");
    let args = seed::command_line(
        "\"$VMLINUX\"",
        "$WORK/root.img",
        "$WORK/myfs.sock",
        "\"$IN/initrd.cpio\"",
    );
    s.script(&format!(
        "mkdir -p $WORK/share\n\
         head -c 2000000 /dev/urandom > $WORK/share/hello.bin\n\
         record host-file hello.bin sha=$(sha $WORK/share/hello.bin)\n\
         cp $IN/root.img $WORK/root.img\n\
         start_virtiofsd myfs $WORK/share\n\
         run_vmm_as_given seed 300 {args}\n\
         record host-read from-guest.bin sha=$(sha $WORK/share/from-guest.bin)\n\
         cp $WORK/root.img $OUT/root.img"
    ));
    let run = s.run_completed();
    let guest = run.guest("seed");
    let why = run.describe();

    let console = guest.first("console").expect(&why);
    assert_eq!(console.get("active"), Some("hvc0"), "{why}");
    let initramfs = guest.first("initramfs").expect(&why);
    assert_eq!(initramfs.get("console"), Some("hvc0"), "{why}");
    let root = guest.first("root").and_then(|r| r.get("line")).expect(&why);
    assert!(root.starts_with("/dev/vda1 / ext4 rw"), "{root}\n{why}");
    let disk_sectors = guest.first("disk").and_then(|r| r.number("sectors"));
    assert_eq!(disk_sectors, Some(ROOT_SIZE / 512), "{why}");

    assert!(guest.first("mounted").is_some(), "{why}");
    let host_sha = run
        .records
        .first_at("host-file", "hello.bin")
        .and_then(|r| r.get("sha"));
    let guest_sha = guest
        .first_at("guest-read", "hello.bin")
        .and_then(|r| r.get("sha"));
    assert!(host_sha.is_some(), "{why}");
    assert_eq!(guest_sha, host_sha, "{why}");
    let wrote = guest
        .first_at("guest-wrote", "from-guest.bin")
        .and_then(|r| r.get("sha"));
    let arrived = run
        .records
        .first_at("host-read", "from-guest.bin")
        .and_then(|r| r.get("sha"));
    assert!(wrote.is_some(), "{why}");
    assert_eq!(arrived, wrote, "{why}");
    assert!(guest.first("synced").is_some(), "{why}");
    assert_eq!(run.vmm_exit("seed"), Some(0), "{why}");

    // What the guest wrote to /dev/vda1 is in the image, and the file
    // system is clean.
    let out = run.out_dir();
    let part = disk_image::first_partition(&out.join("root.img"), &out.join("root.part"))
        .expect("partition");
    let fsck = disk_image::e2fsck_clean(&part);
    assert!(fsck.is_ok(), "{fsck:?}");
    let on_root = disk_image::ext4_read(&part, "/data/on-root.bin", &out).expect("file on root");
    let reported = guest
        .first_at("guest-wrote", "on-root.bin")
        .and_then(|r| r.get("sha"));
    let on_root = sha256_hex(&on_root).expect("sha256");
    assert_eq!(Some(on_root.as_str()), reported, "{why}");
}

#[test]
fn an_iso_given_as_a_disk_mounts() {
    let mut s = Scenario::new("iso-disk").expect("scenario");
    let src = s.scratch_dir("iso-src").expect("scratch");
    let body: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(src.join("data.bin"), &body).expect("iso file");
    let iso = s.scratch_dir("iso").expect("scratch").join("x.iso");
    disk_image::iso_image(&iso, &src, "SEEDISO").expect("iso");
    s.input("x.iso", &std::fs::read(&iso).expect("iso"))
        .expect("input");
    let guest = GuestInit::new(
        r#"n=0; while [ ! -b /dev/vda ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
mount -t iso9660 -o ro /dev/vda /mnt && report mounted line=\"$(grep /mnt /proc/mounts)\"
report read data.bin sha=$(sha256sum /mnt/data.bin | cut -d' ' -f1) ro=$(cat /sys/block/vda/ro)
umount /mnt"#,
    )
    .modules(&["virtio_pci", "virtio_blk", "isofs"]);
    s.guest("guest.cpio", &guest).expect("initramfs").script(
        "run_vmm iso 240 --memory size=512M --kernel \"$VMLINUX\" --initramfs \"$IN/guest.cpio\" \
         --cmdline 'console=ttyS0 quiet panic=-1' --console off --disk path=$IN/x.iso,readonly=on,image_type=raw",
    );
    let run = s.run_completed();
    let guest = run.guest("iso");
    let why = run.describe();
    let mounted = guest
        .first("mounted")
        .and_then(|r| r.get("line"))
        .expect(&why);
    assert!(
        mounted.starts_with("/dev/vda /mnt iso9660 ro"),
        "{mounted}\n{why}"
    );
    let read = guest.first_at("read", "data.bin").expect(&why);
    let expected = sha256_hex(&body).expect("sha256");
    assert_eq!(read.get("sha"), Some(expected.as_str()), "{why}");
    assert_eq!(read.get("ro"), Some("1"), "{why}");
    assert_eq!(run.vmm_exit("iso"), Some(0), "{why}");
}
