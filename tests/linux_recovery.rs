//! Linux tier: device reset by the real driver, and a backend that dies
//! under a mounted virtio-fs: what Linux sees, what `vmm` does, and the way
//! back once the backend is restarted.

use test_infra::linux::GuestInit;
use test_infra::{ProbeReport, Scenario, ScenarioRun};

/// The virtio-fs function of the first generic device.
const FIRST: &str = "0000:00:01.0";

/// virtiofsd for `myfs` ($WORK/a) and `other` ($WORK/b), `vmm` with both
/// as generic devices, and a wait for the guest's `ready` record.
const TWO_SHARES_UNTIL_READY: &str = "start_virtiofsd myfs $WORK/a; start_virtiofsd other $WORK/b
start_vmm guest 240 --memory size=512M,shared=on --kernel \"$VMLINUX\" \\
  --initramfs \"$IN/guest.cpio\" --cmdline 'console=ttyS0 quiet panic=-1' --console off \\
  --generic-vhost-user \"socket=$WORK/myfs.sock,virtio_id=26,queue_sizes=[512,512]\" \\
  --generic-vhost-user \"socket=$WORK/other.sock,virtio_id=26,queue_sizes=[512,512]\"
wait_line $OUT/guest.serial 'linux: ready' 200 || record error what='guest not ready'
";

/// Kills `myfs`'s virtiofsd and records `vmm-noticed` once `vmm` logs it.
const KILL_MYFS: &str = "kill_virtiofsd myfs; record killed
wait_line $OUT/guest.vmm.log 'the backend went away' 120 && record vmm-noticed
";

/// Asserts that `vmm` logged the first backend's death and that Linux
/// shows VIRTIO_CONFIG_S_NEEDS_RESET (0x40) in the device's status.
fn assert_flagged_for_reset(run: &ScenarioRun, guest: &ProbeReport) {
    let d = run.describe();
    let status = guest
        .first("dead-device")
        .and_then(|r| r.number("status"))
        .unwrap_or_else(|| panic!("no status after the kill\n{d}"));
    assert_ne!(
        status & 0x40,
        0,
        "status {status:#x} without NEEDS_RESET\n{d}"
    );
    assert!(
        run.records.first("vmm-noticed").is_some(),
        "vmm logged nothing\n{d}"
    );
}

/// Mount, read, unmount, unbind the device from virtio-pci (the driver
/// resets it), bind it again, mount again: the same virtiofsd serves the
/// new mount.
#[test]
fn driver_unbind_and_bind_reset_the_device_and_it_works_again() {
    let guest = GuestInit::new(&format!(
        "mkdir -p /m\n\
         mount -t virtiofs myfs /m && report first-mount text=\"$(cat /m/which)\"\n\
         umount /m && report unmounted\n\
         echo {FIRST} > /sys/bus/pci/drivers/virtio-pci/unbind && report unbound\n\
         report after-unbind driver=$(basename \"$(readlink /sys/bus/pci/devices/{FIRST}/driver)\")\n\
         echo {FIRST} > /sys/bus/pci/drivers/virtio-pci/bind && report bound\n\
         mount -t virtiofs myfs /m && report second-mount text=\"$(cat /m/which)\"\n\
         echo after-rebind > /m/written && umount /m && report done"
    ))
    .modules(&["virtio_pci", "virtiofs"]);
    let mut s = Scenario::new("rebind").expect("scenario");
    s.guest("guest.cpio", &guest).expect("initramfs").script(
        "mkdir -p $WORK/share; echo served > $WORK/share/which\n\
             start_virtiofsd myfs $WORK/share\n\
             run_vmm guest 240 --memory size=512M,shared=on --kernel \"$VMLINUX\" \
             --initramfs \"$IN/guest.cpio\" --cmdline 'console=ttyS0 quiet panic=-1' --console off \
             --generic-vhost-user \"socket=$WORK/myfs.sock,virtio_id=26,queue_sizes=[512,512]\"\n\
             record host written=\"$(cat $WORK/share/written)\"",
    );
    let run = s.run_completed();
    let g = run.guest("guest");
    let text = |kind: &str| g.first(kind).and_then(|r| r.get("text"));
    assert_eq!(text("first-mount"), Some("served"), "{}", run.describe());
    assert_eq!(
        g.first("after-unbind").and_then(|r| r.get("driver")),
        Some(""),
        "the device was still bound\n{}",
        run.describe()
    );
    assert_eq!(text("second-mount"), Some("served"), "{}", run.describe());
    assert!(g.first("done").is_some(), "{}", run.describe());
    assert_eq!(
        run.records.first("host").and_then(|r| r.get("written")),
        Some("after-rebind"),
        "{}",
        run.describe()
    );
    assert_eq!(run.vmm_exit("guest"), Some(0), "{}", run.describe());
}

/// virtiofsd is killed while its share is mounted (and idle). `vmm` keeps
/// running, says what happened and flags the device DEVICE_NEEDS_RESET,
/// which Linux shows in the device's status; a second device keeps
/// working. Once virtiofsd is back, Linux recovers the first device the
/// one way it can. Linux 6.1's virtiofs has no FUSE control connection
/// and refuses forced unmounts, so a request sent to the dead device waits
/// for ever, and unmounting sends one (DESTROY). Unbinding the device
/// first fails its queues fast: the driver resets the device (and `vmm`
/// connects to the new backend), the unmount then returns, and a bind and
/// a mount bring the share back.
#[test]
fn a_backend_killed_while_mounted_recovers_after_restart() {
    let wait = |marker: &str| {
        format!(
            "n=900; while [ ! -e /other/{marker} ] && [ $n -gt 0 ]; do sleep 0.1; n=$((n-1)); done\n\
             report waited for={marker} seen=$([ -e /other/{marker} ] && echo yes || echo no)"
        )
    };
    let guest = GuestInit::new(&format!(
        "mkdir -p /m /other\n\
         mount -t virtiofs myfs /m && mount -t virtiofs other /other && report mounted\n\
         report before text=\"$(cat /m/which)\" status=$(cat /sys/bus/virtio/devices/virtio0/status)\n\
         report ready\n\
         {killed}\n\
         report dead-device status=$(cat /sys/bus/virtio/devices/virtio0/status)\n\
         report other text=\"$(timeout -s KILL 60 cat /other/which)\"\n\
         timeout -s KILL 60 sh -c 'echo still-working > /other/after-crash' && report other-write rc=0\n\
         report want-restart\n\
         {restarted}\n\
         timeout -s KILL 60 sh -c 'echo {FIRST} > /sys/bus/pci/drivers/virtio-pci/unbind' && report unbound && \
         timeout -s KILL 60 umount /m && report unmounted && \
         timeout -s KILL 60 sh -c 'echo {FIRST} > /sys/bus/pci/drivers/virtio-pci/bind' && report bound && \
         timeout -s KILL 60 mount -t virtiofs myfs /m && \
         report remounted text=\"$(timeout -s KILL 60 cat /m/which)\" && \
         echo recovered > /m/written && report recovered-write && umount /m\n\
         umount /other",
        killed = wait("killed"),
        restarted = wait("restarted"),
    ))
    .modules(&["virtio_pci", "virtiofs"]);
    let mut s = Scenario::new("crash").expect("scenario");
    s.guest("guest.cpio", &guest)
        .expect("initramfs")
        .script(
            &format!(
                "mkdir -p $WORK/a $WORK/b; echo first-backend > $WORK/a/which; echo other > $WORK/b/which\n\
                 {TWO_SHARES_UNTIL_READY}{KILL_MYFS}\
                 : > $WORK/b/killed\n\
             wait_line $OUT/guest.serial 'linux: want-restart' 120 || record error what='guest stuck after the kill'\n\
             echo second-backend > $WORK/a/which; start_virtiofsd myfs $WORK/a; record restarted\n\
             : > $WORK/b/restarted\n\
             wait_vmm guest 250\n\
             record host after-crash=\"$(cat $WORK/b/after-crash)\" written=\"$(cat $WORK/a/written)\""
            ),
        );
    let run = s.run_completed();
    let g = run.guest("guest");
    let d = run.describe();
    let field = |kind: &str, key: &str| g.first(kind).and_then(|r| r.get(key)).map(str::to_string);
    assert_eq!(
        field("before", "text").as_deref(),
        Some("first-backend"),
        "{d}"
    );
    assert_flagged_for_reset(&run, &g);
    assert_eq!(field("other", "text").as_deref(), Some("other"), "{d}");
    assert!(g.first("other-write").is_some(), "{d}");
    for step in ["unbound", "unmounted", "bound"] {
        assert!(g.first(step).is_some(), "recovery step {step} failed\n{d}");
    }
    assert_eq!(
        field("remounted", "text").as_deref(),
        Some("second-backend"),
        "{d}"
    );
    let host = run.records.first("host").expect("host record");
    assert_eq!(host.get("after-crash"), Some("still-working"), "{d}");
    assert_eq!(host.get("written"), Some("recovered"), "{d}");
    assert_eq!(run.vmm_exit("guest"), Some(0), "{d}");
}

/// virtiofsd is killed while a guest read is waiting on it. The script
/// stops virtiofsd (SIGSTOP) and tells the guest through the other share;
/// the guest reads a file of the stopped share and reports `in-flight` once
/// the reader sleeps in FUSE; only then is virtiofsd killed. (A FIFO does
/// not do it: Linux serves a FIFO on virtio-fs itself, the read never
/// reaches virtiofsd.) What Linux does: the request never completes, the
/// reader stays blocked even through SIGKILL, and the mount cannot be
/// recovered (a drain of the dead queue would wait for ever, so the test
/// does not unbind). What `vmm` does: it keeps running, flags the device,
/// and the second device keeps serving; the guest powers off without
/// syncing the dead mount.
#[test]
fn a_backend_killed_under_a_waiting_read_leaves_the_vm_and_the_other_device_working() {
    let guest = GuestInit::new(
        r#"mkdir -p /m /other
mount -t virtiofs myfs /m && mount -t virtiofs other /other && report mounted
report ready
n=0; while [ ! -e /other/go ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n + 1)); done
cat /m/which > /tmp/read 2>&1 &
reader=$!
# The reader sleeps in FUSE, waiting for virtiofsd's answer.
waiting() {
  for p in /proc/[0-9]*; do
    read -r c < $p/comm 2>/dev/null; [ "$c" = cat ] || continue
    read -r w < $p/wchan 2>/dev/null
    case "$w" in *fuse*|*request_wait*) return 0 ;; esac
    set -- $(cat $p/stat); [ "$3" = D ] && return 0
  done
  return 1
}
n=0; until waiting || [ $n -ge 600 ]; do sleep 0.1; n=$((n + 1)); done
waiting && report in-flight
status=$(cat /sys/bus/virtio/devices/virtio0/status)
n=0; while [ $(( status & 0x40 )) -eq 0 ] && [ $n -lt 1200 ]; do sleep 0.1; n=$((n + 1)); status=$(cat /sys/bus/virtio/devices/virtio0/status); done
report dead-device status=$status
# A request the device took is never given up: even SIGKILL leaves the
# reader waiting (5 s for it to go, which it must not).
kill -9 $reader
n=0; while [ -d /proc/$reader ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
alive=0; [ -d /proc/$reader ] && alive=1
report dead-read bytes=$(wc -c < /tmp/read) alive=$alive
report other text="$(timeout -s KILL 60 cat /other/which)"
umount /other
poweroff -f -n"#,
    )
    .modules(&["virtio_pci", "virtiofs"]);
    let mut s = Scenario::new("crash-in-flight").expect("scenario");
    s.guest("guest.cpio", &guest).expect("initramfs").script(&format!(
        "mkdir -p $WORK/a $WORK/b; echo mine > $WORK/a/which; echo other > $WORK/b/which\n\
         {TWO_SHARES_UNTIL_READY}\
         kill -STOP \"$(cat $WORK/virtiofsd-myfs.pid)\" && record stopped\n\
         : > $WORK/b/go\n\
         wait_line $OUT/guest.serial 'linux: in-flight' 120 || record error what='the read never went out'\n\
         {KILL_MYFS}wait_vmm guest 250"
    ));
    let run = s.run_completed();
    let g = run.guest("guest");
    let d = run.describe();
    let dead = g
        .first("dead-read")
        .unwrap_or_else(|| panic!("the reader never came back\n{d}"));
    assert!(
        g.first("in-flight").is_some(),
        "the read never went out\n{d}"
    );
    assert!(run.records.first("vmm-noticed").is_some(), "{d}");
    // Never answered, and not even SIGKILL ends the wait.
    assert_eq!(dead.get("bytes"), Some("0"), "{d}");
    assert_eq!(dead.get("alive"), Some("1"), "{d}");
    assert_flagged_for_reset(&run, &g);
    assert_eq!(
        g.first("other").and_then(|r| r.get("text")),
        Some("other"),
        "{d}"
    );
    assert_eq!(run.vmm_exit("guest"), Some(0), "{d}");
}
