//! The seed's command line with a real Linux guest, exactly as Cloud
//! Hypervisor's generic vhost-user documentation gives it (paths filled
//! in, `--initramfs` added): Debian's kernel with its root on /dev/vda1 of
//! a raw image and its console on hvc0, virtio-fs against virtiofsd
//! mounted with `mount -t virtiofs -- myfs mount_dir/`. Nested in an L1
//! under QEMU TCG where this host has no hardware virtualization. Prints
//! the guest's console facts and checksums beside the host's; exits 0 when
//! every one matches and the root file system is clean.

use std::time::Duration;

use clap::Parser;
use test_infra::digest::sha256_hex;
use test_infra::{disk_image, reaper, seed, LinuxTier, Scenario};

/// Boots the seed's command line (Cloud Hypervisor's generic vhost-user
/// example, paths filled in) with Debian's kernel under vmm: root on
/// /dev/vda1, console on hvc0, virtio-fs against virtiofsd mounted as
/// `myfs`. Nested in an L1 under QEMU TCG (2 GiB) where this host has no
/// hardware virtualization: a minute or two. Prints the guest's facts and
/// checksums beside the host's; exit status 0 when every one matches and
/// the root file system is clean. Stopped by a signal, it ends QEMU,
/// virtiofsd and vmm and removes its temporary directory.
#[derive(Parser, Debug)]
#[command(name = "linux-demo", version)]
struct Args {}

const FILES: [&str; 2] = ["hello.txt", "random.bin"];

/// `/sbin/init` on the root disk.
const ROOT_SCRIPT: &str = r#"report root line=\"$(grep ' / ' /proc/mounts | grep -v rootfs)\"
report console active=$(cat /sys/class/tty/console/active)
mount -t virtiofs -- myfs mount_dir/ && report mount line=\"$(grep virtiofs /proc/mounts)\"
for f in hello.txt random.bin; do report read $f sha=$(sha256sum mount_dir/$f | cut -d' ' -f1); done
report list docs=\"$(ls mount_dir/docs | tr '\n' ' ')\"
head -c 1000000 /dev/urandom > /tmp/w; cp /tmp/w mount_dir/written.bin
report read written.bin sha=$(sha256sum /tmp/w | cut -d' ' -f1)
umount mount_dir
head -c 1000000 /dev/urandom > /on-root.bin
report read on-root.bin sha=$(sha256sum /on-root.bin | cut -d' ' -f1)
sync"#;

fn main() {
    // First, before any thread: a signal ends everything the demo started.
    if let Err(e) = reaper::install(|signo| {
        eprintln!("linux-demo: stopped by signal {signo}; ending QEMU, virtiofsd and vmm")
    }) {
        eprintln!("linux-demo: cannot watch over the processes it starts: {e}");
        std::process::exit(2);
    }
    Args::parse();
    let code = match run() {
        Ok(true) => 0,
        Ok(false) => 1,
        Err(e) => {
            eprintln!("linux-demo: {e}");
            1
        }
    };
    reaper::exit(code);
}

fn run() -> Result<bool, String> {
    LinuxTier::detect();
    let mut s = Scenario::new("demo")?;
    let tree = seed::root_tree(&s.scratch_dir("root")?, ROOT_SCRIPT)?;
    let disk = seed::root_disk(&s.scratch_dir("disk")?.join("root.img"), 64 << 20, &tree)?;
    let image = std::fs::read(&disk).map_err(|e| format!("{}: {e}", disk.display()))?;
    s.input("root.img", &image)?;
    s.guest("initrd.cpio", &seed::initramfs())?;
    let args = seed::command_line(
        "\"$VMLINUX\"",
        "$WORK/root.img",
        "$WORK/myfs.sock",
        "\"$IN/initrd.cpio\"",
    );
    println!(
        "vmm {}",
        args.replace("$WORK/", "")
            .replace("\"$IN/", "\"")
            .replace("$VMLINUX", "vmlinux")
    );
    s.script(&format!(
        "mkdir -p $WORK/share/docs; cd $WORK/share\n\
         printf 'Hello from the host, read through virtio-fs.\\n' > hello.txt\n\
         head -c 3000000 /dev/urandom > random.bin\n\
         for n in a b c; do echo $n > docs/$n.txt; done\n\
         cd $WORK\n\
         for f in hello.txt random.bin; do record host $f sha=$(sha $WORK/share/$f); done\n\
         cp $IN/root.img $WORK/root.img\n\
         start_virtiofsd myfs $WORK/share\n\
         run_vmm_as_given guest 300 {args}\n\
         record host written.bin sha=$(sha $WORK/share/written.bin)\n\
         cp $WORK/root.img $OUT/root.img"
    ))
    .timeout(Duration::from_secs(480));
    println!("booting (this takes 15-60 s under emulation)...");
    let run = s.run()?;
    let report = run.guest("guest");
    let fact = |kind: &str, key: &str| {
        report
            .first(kind)
            .and_then(|r| r.get(key))
            .unwrap_or("(none)")
            .to_string()
    };
    println!("\nguest's console: {}", fact("console", "active"));
    println!("guest's root:    {}", fact("root", "line"));
    println!("guest's mount:   {}", fact("mount", "line"));
    println!("guest's ls docs: {}", fact("list", "docs"));

    // What the guest wrote on its root, read back from the image.
    let out = run.out_dir();
    let part = disk_image::first_partition(&out.join("root.img"), &out.join("root.part"))?;
    let fsck = disk_image::e2fsck_clean(&part);
    println!(
        "root image after power-off: e2fsck -fn {}",
        if fsck.is_ok() { "clean" } else { "NOT clean" }
    );
    let on_root = sha256_hex(&disk_image::ext4_read(&part, "/on-root.bin", &out)?)?;

    println!(
        "\n{:<12} {:<64}  {:<64}  same",
        "file", "guest sha256", "host sha256"
    );
    let mut all_match = fsck.is_ok();
    for name in FILES.iter().chain(["written.bin", "on-root.bin"].iter()) {
        let guest = report
            .first_at("read", name)
            .and_then(|r| r.get("sha"))
            .unwrap_or("-");
        let host = match *name {
            "on-root.bin" => on_root.as_str(),
            _ => run
                .records
                .first_at("host", name)
                .and_then(|r| r.get("sha"))
                .unwrap_or("-"),
        };
        let same = guest == host && guest != "-";
        all_match &= same;
        println!(
            "{name:<12} {guest:<64}  {host:<64}  {}",
            if same { "yes" } else { "NO" }
        );
    }
    let status = run.vmm_exit("guest");
    println!(
        "\nvmm exit status: {status:?} (scenario took {:.1} s)",
        run.elapsed.as_secs_f64()
    );
    let ok = all_match && status == Some(0) && fact("console", "active") == "hvc0";
    if !ok {
        eprintln!("{}", run.describe());
    }
    Ok(ok)
}
