//! The seed's scenario with a real Linux guest: Debian's kernel under
//! `vmm` (nested in an L1 under QEMU TCG where this host has no hardware
//! virtualization) with `--generic-vhost-user` against virtiofsd, mounted
//! as Cloud Hypervisor's documentation does. Prints the guest's mount and
//! checksums beside the host's; exits 0 when every one matches.

use std::process::ExitCode;
use std::time::Duration;

use test_infra::linux::GuestInit;
use test_infra::{LinuxTier, Scenario};

const FILES: [&str; 2] = ["hello.txt", "random.bin"];

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("linux-demo: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, String> {
    LinuxTier::detect();
    let guest = GuestInit::new(
        "mkdir -p mount_dir\n\
         mount -t virtiofs -- myfs mount_dir/ && report mount line=\\\"$(grep virtiofs /proc/mounts)\\\"\n\
         for f in hello.txt random.bin; do report read $f sha=$(sha256sum mount_dir/$f | cut -d' ' -f1); done\n\
         report list docs=\\\"$(ls mount_dir/docs | tr '\\n' ' ')\\\"\n\
         head -c 1000000 /dev/urandom > /tmp/w; cp /tmp/w mount_dir/written.bin\n\
         report read written.bin sha=$(sha256sum /tmp/w | cut -d' ' -f1)\n\
         umount mount_dir",
    )
    .modules(&["virtio_pci", "virtiofs"]);
    let mut s = Scenario::new("demo")?;
    s.guest("guest.cpio", &guest)?
        .script(
            "mkdir -p $WORK/share/docs; cd $WORK/share\n\
             printf 'Hello from the host, read through virtio-fs.\\n' > hello.txt\n\
             head -c 3000000 /dev/urandom > random.bin\n\
             for n in a b c; do echo $n > docs/$n.txt; done\n\
             cd $WORK\n\
             for f in hello.txt random.bin; do record host $f sha=$(sha $WORK/share/$f); done\n\
             start_virtiofsd myfs $WORK/share\n\
             run_vmm guest 240 --cpus boot=1 --memory size=1G,shared=on --kernel \"$VMLINUX\" \
             --initramfs \"$IN/guest.cpio\" --cmdline 'console=ttyS0 quiet panic=-1' --console off \
             --generic-vhost-user \"socket=$WORK/myfs.sock,virtio_id=26,queue_sizes=[512,512]\"\n\
             record host written.bin sha=$(sha $WORK/share/written.bin)",
        )
        .timeout(Duration::from_secs(400));
    println!("booting (this takes 15-60 s under emulation)...");
    let run = s.run()?;
    let report = run.guest("guest");
    println!(
        "\nguest's mount:  {}",
        report
            .first("mount")
            .and_then(|r| r.get("line"))
            .unwrap_or("(none: the mount failed)")
    );
    println!(
        "guest's ls docs: {}",
        report
            .first("list")
            .and_then(|r| r.get("docs"))
            .unwrap_or("(none)")
    );
    println!(
        "\n{:<12} {:<64}  {:<64}  same",
        "file", "guest sha256", "host sha256"
    );
    let mut all_match = true;
    for name in FILES.iter().chain(["written.bin"].iter()) {
        let guest = report
            .first_at("read", name)
            .and_then(|r| r.get("sha"))
            .unwrap_or("-");
        let host = run
            .records
            .first_at("host", name)
            .and_then(|r| r.get("sha"))
            .unwrap_or("-");
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
    let ok = all_match && status == Some(0);
    if !ok {
        eprintln!("{}", run.describe());
    }
    Ok(ok)
}
