//! What runs in the guest for each device type, and in L1 beside it.

use super::LinuxTierSpec;

/// A marker each direction of I/O carries, unlikely in any log.
pub(super) const MARKER: &str = "conformance-7f3a";

/// The guest's script for the type: `report` records the runner judges.
pub(super) fn type_script(name: &str, spec: &LinuxTierSpec) -> String {
    match name {
        "fs" => format!(
            r#"tag={tag}
mkdir -p /mnt
if mount -t virtiofs "$tag" /mnt; then
  report fs mounted=1
  head -c 1048577 /dev/urandom > /tmp/w
  cp /tmp/w /mnt/.{MARKER}-file 2>/tmp/err || report fs error what=\"$(tail -n1 /tmp/err)\"
  sync
  echo 3 > /proc/sys/vm/drop_caches
  report fs io wrote=$(sha256sum /tmp/w | cut -d' ' -f1) read=$(sha256sum /mnt/.{MARKER}-file 2>/tmp/err | cut -d' ' -f1)
  [ -s /tmp/err ] && report fs error what=\"$(tail -n1 /tmp/err)\"
  ok=1
  mkdir /mnt/.{MARKER}-dir || ok=0
  mv /mnt/.{MARKER}-file /mnt/.{MARKER}-dir/renamed || ok=0
  ln -s renamed /mnt/.{MARKER}-dir/link || ok=0
  [ "$(readlink /mnt/.{MARKER}-dir/link)" = renamed ] || ok=0
  rm /mnt/.{MARKER}-dir/link /mnt/.{MARKER}-dir/renamed || ok=0
  rmdir /mnt/.{MARKER}-dir || ok=0
  [ ! -e /mnt/.{MARKER}-dir ] || ok=0
  report fs namespace ok=$ok
  umount /mnt && report fs unmounted=1
else
  report fs mounted=0
fi"#,
            tag = spec.fs_tag.as_deref().unwrap_or("myfs")
        ),
        "block" => r#"n=0; while [ ! -b /dev/vda ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
if [ -b /dev/vda ]; then
  sectors=$(cat /sys/block/vda/size)
  report block size sectors=$sectors ro=$(cat /sys/block/vda/ro)
  # The last MiB (or all of a smaller disk): saved, overwritten, read back
  # past the page cache, restored. Nothing is written unless all of it was
  # saved first: what cannot be put back is never overwritten.
  count=$(( sectors < 2048 ? sectors : 2048 ))
  skip=$(( sectors - count ))
  saved=0
  if dd if=/dev/vda of=/tmp/orig bs=512 skip=$skip count=$count 2>/tmp/dd.err \
      && [ "$(wc -c < /tmp/orig)" -eq $(( count * 512 )) ]; then
    saved=1
    report block read-end ok=1 sha=$(sha256sum /tmp/orig | cut -d' ' -f1)
  else
    report block read-end ok=0 error=\"$(tail -n1 /tmp/dd.err)\"
  fi
  if [ "$(cat /sys/block/vda/ro)" = 0 ] && [ $saved = 0 ]; then
    report block write skipped=1
  elif [ "$(cat /sys/block/vda/ro)" = 0 ]; then
    head -c $(( count * 512 )) /dev/urandom > /tmp/pat
    dd if=/tmp/pat of=/dev/vda bs=512 seek=$skip conv=fsync 2>/dev/null
    sync; echo 3 > /proc/sys/vm/drop_caches
    dd if=/dev/vda of=/tmp/back bs=512 skip=$skip count=$count 2>/dev/null
    report block write wrote=$(sha256sum /tmp/pat | cut -d' ' -f1) read=$(sha256sum /tmp/back | cut -d' ' -f1)
    dd if=/tmp/orig of=/dev/vda bs=512 seek=$skip conv=fsync 2>/dev/null && sync && report block restored=1
  fi
fi"#
        .to_string(),
        "rng" => r#"if [ -c /dev/hwrng ]; then
  report rng current=\"$(cat /sys/class/misc/hw_random/rng_current)\"
  report rng distinct=$(head -c 1024 /dev/hwrng | od -An -v -tx1 | tr -s ' ' '\n' | grep . | sort -u | wc -l)
else
  report rng hwrng=0
fi"#
        .to_string(),
        "console" => format!(
            r#"n=0; while [ ! -c /dev/hvc0 ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
if [ -c /dev/hvc0 ]; then
  report console port=hvc0
  echo "guest-says-{MARKER}" > /dev/hvc0
  report console wrote=1
  t0=$(cut -d' ' -f1 /proc/uptime)
  if read -t 30 line < /dev/hvc0; then
    report console read=\"$line\" from=$t0 to=$(cut -d' ' -f1 /proc/uptime)
  else
    report console read=none from=$t0 to=$(cut -d' ' -f1 /proc/uptime)
  fi
else
  report console port=none
fi"#
        ),
        "vsock" => r#"if [ -e /dev/vsock ]; then
  report vsock cid=$(/bin/vsock-echo cid)
  report vsock echo=\"$(/bin/vsock-echo connect 2 5000 conformance-7f3a-vsock)\"
else
  report vsock dev=none
fi"#
        .to_string(),
        "sound" => r#"n=0; while ! grep -q . /proc/asound/cards 2>/dev/null && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
report sound cards=\"$(grep -v '^ ' /proc/asound/cards | tr -s ' ' | head -n1)\"
report sound pcms=$(ls -d /proc/asound/card0/pcm* 2>/dev/null | wc -l)
report sound streams=$(cat /proc/asound/card0/pcm*/info 2>/dev/null | grep -c '^stream:')"#
            .to_string(),
        "scsi" => r#"n=0; while [ ! -b /dev/sda ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
if [ -b /dev/sda ]; then
  sectors=$(cat /sys/block/sda/size)
  report scsi disk=sda sectors=$sectors ro=$(cat /sys/block/sda/ro)
  count=$(( sectors < 2048 ? sectors : 2048 ))
  skip=$(( sectors - count ))
  if dd if=/dev/sda of=/tmp/orig bs=512 skip=$skip count=$count 2>/tmp/err; then
    report scsi read ok=1 sha=$(sha256sum /tmp/orig | cut -d' ' -f1)
  else
    report scsi read ok=0 error=\"$(tail -n1 /tmp/err)\"
  fi
  head -c $(( count * 512 )) /dev/urandom > /tmp/pat
  dd if=/tmp/pat of=/dev/sda bs=512 seek=$skip conv=fsync 2>/tmp/err || report scsi write-error what=\"$(tail -n1 /tmp/err)\"
  sync; echo 3 > /proc/sys/vm/drop_caches
  dd if=/dev/sda of=/tmp/back bs=512 skip=$skip count=$count 2>/dev/null
  report scsi write wrote=$(sha256sum /tmp/pat | cut -d' ' -f1) read=$(sha256sum /tmp/back | cut -d' ' -f1)
  dd if=/tmp/orig of=/dev/sda bs=512 seek=$skip conv=fsync 2>/dev/null && sync && report scsi restored=1
else
  report scsi disk=none
fi"#
        .to_string(),
        "net" => r#"for d in /sys/class/net/*; do
  [ "$(basename $d)" = lo ] && continue
  report net link=$(basename $d) mac=$(cat $d/address)
done"#
            .to_string(),
        _ => String::new(),
    }
}

/// While the guest runs: a backend that died leaves Linux's driver
/// waiting out its own timeouts (SCSI's are minutes), so 10 s after the
/// death the guest is stopped and the death recorded.
pub(super) const BACKEND_WATCH: &str = r#"gone=0
while [ ! -e "$WORK/vmm-guest.rc" ]; do
  if kill -0 "$(cat $WORK/backend.pid)" 2>/dev/null; then gone=0; else gone=$((gone + 1)); fi
  if [ $gone -ge 100 ]; then
    record backend-died
    pkill -f "socket=$socks/backend.sock" 
    break
  fi
  sleep 0.1
done"#;

/// Finds the device, says whether its driver bound, scans the kernel log
/// from `$mark` (lines seen before the driver loaded are not its own).
pub(super) const COMMON_TAIL: &str = r#"dev=
for d in /sys/bus/virtio/devices/*; do
  [ "$(cat $d/device)" = "$want" ] && dev=$d
done
if [ -n "$dev" ]; then
  report device path=$(basename $dev) driver=$(basename "$(readlink $dev/driver)" 2>/dev/null) status=$(cat $dev/status)
else
  report device path=none
fi
sleep 1
dmesg -r | tail -n +$((mark + 1)) > /tmp/klog
pci=; [ -n "$dev" ] && pci=$(basename "$(readlink -f $dev/..)")
report klog lines=$(wc -l < /tmp/klog) pci=$pci
head -n 300 /tmp/klog | while read -r line; do report klog-line text=\"$(echo "$line" | tr -d '"\\')\"; done"#;
