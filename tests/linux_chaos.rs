//! Linux tier: chaos from real Linux userspace. Random writes to the
//! generic device's `/sys/bus/pci/devices/*/config`, and random reads and
//! writes of its BAR (what a `resource0` mapping reaches; `devmem` at the
//! BAR's address is the same access), while a virtio-fs mount next to it
//! is in use. Then the function is removed and the bus rescanned. `vmm`
//! must neither panic nor hang, and the mount must still read its file
//! byte for byte.
//!
//! Kept out of the writes, so that the guest's kernel survives to check
//! anything: the MSI-X table (a message with INIT or NMI delivery would
//! stop the guest's own CPU) and the common config's ring addresses (a
//! backend would write into whatever RAM they name). The probe guest's
//! `chaos` test (tests/chaos.rs) covers those, keeping itself alive.

use std::time::Duration;

use test_infra::linux::GuestInit;
use test_infra::Scenario;

/// Random writes and reads (busybox ash has `$RANDOM`, seeded by
/// assigning it).
const CHAOS: &str = r#"dev=/sys/bus/pci/devices/0000:00:02.0
set -- $(head -1 $dev/resource)
bar=$(( $1 )); size=$(( $2 - $1 + 1 ))
report chaos start seed=$SEED ops=$OPS bar=$bar size=$size
RANDOM=$SEED
n=0; config=0; bar_w=0; bar_r=0
while [ $n -lt $OPS ]; do
  n=$(( n + 1 ))
  case $(( RANDOM % 4 )) in
  0)
    off=$(( RANDOM % 256 ))
    printf "\\$(printf %03o $(( RANDOM % 256 )))" |
      dd of=$dev/config bs=1 seek=$off conv=notrunc 2>/dev/null
    config=$(( config + 1 )) ;;
  1)
    dd if=$dev/config bs=4 skip=$(( RANDOM % 64 )) count=1 2>/dev/null >/dev/null
    config=$(( config + 1 )) ;;
  *)
    bits=$(( 8 << (RANDOM % 3) ))
    off=$(( (RANDOM * 32768 + RANDOM) % size ))
    off=$(( off - off % (bits / 8) ))
    # Not the ring addresses (common config 32..56), not the MSI-X table.
    if [ $off -ge 32 -a $off -lt 56 ] || [ $off -ge 16384 -a $off -lt 24576 ]; then continue; fi
    if [ $(( RANDOM % 2 )) = 0 ]; then
      devmem $(( bar + off )) $bits $(( RANDOM * 32768 + RANDOM )) 2>/dev/null
      bar_w=$(( bar_w + 1 ))
    else
      devmem $(( bar + off )) $bits >/dev/null 2>&1
      bar_r=$(( bar_r + 1 ))
    fi ;;
  esac
done
report chaos done ops=$n config=$config bar_writes=$bar_w bar_reads=$bar_r
echo 1 > $dev/remove
echo 1 > /sys/bus/pci/rescan
report chaos rescan present=$([ -e $dev ] && echo yes || echo no)"#;

#[test]
fn random_config_and_bar_writes_from_linux_userspace() {
    let seed: u32 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let ops: u32 = std::env::var("CHAOS_OPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    eprintln!("linux chaos seed={seed} ops={ops} (replay: CHAOS_SEED={seed})");
    let guest = GuestInit::new(&format!(
        "SEED={seed}; OPS={ops}\n\
         mkdir -p /m; mount -t virtiofs myfs /m && report mounted\n\
         report before sha=$(sha256sum /m/big | cut -d' ' -f1)\n\
         {CHAOS}\n\
         report after sha=$(sha256sum /m/big | cut -d' ' -f1)\n\
         umount /m && report unmounted"
    ))
    .modules(&["virtio_pci", "virtiofs"]);
    let mut s = Scenario::new("chaos").expect("scenario");
    s.guest("guest.cpio", &guest)
        .expect("initramfs")
        .script(
            "mkdir -p $WORK/share; head -c 2000000 /dev/urandom > $WORK/share/big\n\
             record share sha=$(sha $WORK/share/big)\n\
             start_virtiofsd myfs $WORK/share\n\
             start_mock custom --queues 2 --config 0011223344556677 --relisten\n\
             run_vmm guest 600 --memory size=512M,shared=on --kernel \"$VMLINUX\" \
             --initramfs \"$IN/guest.cpio\" --cmdline 'console=ttyS0 quiet panic=-1' --console off \
             --generic-vhost-user \"socket=$WORK/myfs.sock,virtio_id=26,queue_sizes=[512,512]\" \
             --generic-vhost-user \"socket=$WORK/custom.sock,virtio_id=60,queue_sizes=[64,64],config_size=8\"",
        )
        .timeout(Duration::from_secs(900));
    let run = s.run_completed();
    let context = run.describe();
    let vmm = run.vmm("guest").expect("a vmm record");
    assert_ne!(vmm.get("exit"), Some("hung"), "vmm hung\n{context}");
    assert_eq!(run.vmm_exit("guest"), Some(0), "{context}");
    let log = run.out_file("guest.vmm.log");
    assert!(!log.contains("panicked"), "vmm panicked\n{context}");
    let report = run.guest("guest");
    let done = report
        .first_at("chaos", "done")
        .expect("chaos ran to the end");
    assert_eq!(done.number("ops"), Some(u64::from(ops)), "{context}");
    assert_eq!(
        report
            .first_at("chaos", "rescan")
            .and_then(|r| r.get("present")),
        Some("yes"),
        "the function is found again\n{context}"
    );
    let share = run
        .records
        .first("share")
        .and_then(|r| r.get("sha"))
        .expect("the file's hash");
    for phase in ["before", "after"] {
        assert_eq!(
            report.first(phase).and_then(|r| r.get("sha")),
            Some(share),
            "the spared virtio-fs mount reads the file {phase} chaos\n{context}"
        );
    }
    assert!(report.first("unmounted").is_some(), "{context}");
}
