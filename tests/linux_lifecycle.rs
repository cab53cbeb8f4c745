//! Linux tier: Debian driven through the API socket as Cloud Hypervisor's
//! users drive theirs. One VM, three acts: paused and resumed 20 times
//! while it writes files over virtio-fs (every file arrives with the
//! guest's sha256), rebooted (Linux boots again under the same vmm), and
//! powered off by the ACPI power button, which the guest's own handler
//! (busybox acpid) turns into a power-off. The L1 has no curl: the
//! scenario asks with a small static client (`api-request`). virtiofsd
//! serves one connection and exits when it closes, so the reboot gets a
//! new one on the same socket.

use test_infra::linux::GuestInit;
use test_infra::{static_c, Scenario};

const PAUSES: usize = 20;

/// The first boot writes 1 MiB files until the host says stop; the second
/// starts acpid and waits for the button.
const GUEST: &str = r#"mkdir -p /mount_dir
mount -t virtiofs -- myfs /mount_dir && report mounted tag=myfs
cd /mount_dir
if [ ! -e boot1 ]; then
  : > boot1
  report boot n=1
  i=0
  while [ ! -e stop ]; do
    head -c 1048576 /dev/urandom > /tmp/x
    cp /tmp/x f$i
    report guest-wrote f$i sha=$(sha256sum /tmp/x | cut -d' ' -f1)
    i=$((i + 1))
  done
  sync
  report writes-done count=$i
else
  report boot n=2 buttons=$(grep -l 'Power Button' /sys/class/input/input*/name | wc -l)
  report ged irq=\"$(grep -i ged /proc/interrupts | tr -s ' ')\" events=$(ls /dev/input | grep -c event)
  acpid -d -c /etc/acpi &
  sleep 1
  report acpid-ready
fi
while :; do sleep 1; done"#;

/// What busybox acpid runs for KEY_POWER (`PWRF/00000080`).
const POWER_BUTTON_HANDLER: &str = "#!/bin/sh\necho \"linux: power-button\"\npoweroff -f\n";

#[test]
fn paused_20_times_during_virtio_fs_writes_rebooted_and_powered_off_by_the_button() {
    let mut s = Scenario::new("lifecycle").expect("scenario");
    let tools = s.scratch_dir("tools").expect("scratch");
    let client =
        static_c::build("api-request", static_c::API_REQUEST, &tools).expect("api-request");
    s.input("api-request", &client).expect("input");
    let init = GuestInit::new(GUEST)
        .modules(&["virtio_pci", "virtiofs", "button", "evdev"])
        .file(
            "etc/acpi/PWRF/00000080",
            POWER_BUTTON_HANDLER.as_bytes().to_vec(),
        );
    s.guest("guest.cpio", &init).expect("initramfs");
    s.script(&format!(
        r#"chmod +x $IN/api-request
API=$WORK/api.sock
# api METHOD NAME: the status code
api() {{ $IN/api-request "$API" "$1" "$2" | cut -d' ' -f1; }}
mkdir -p $WORK/share
start_virtiofsd myfs $WORK/share
start_vmm guest 900 --cpus boot=1 --memory size=1G,shared=on --kernel "$VMLINUX" \
  --initramfs "$IN/guest.cpio" --cmdline 'console=ttyS0 quiet panic=-1' --console off \
  --generic-vhost-user "socket=$WORK/myfs.sock,virtio_id=fs,queue_sizes=[512,512]" \
  --api-socket path=$API
wait_file $WORK/share/f1 300 || record error what="the guest wrote no file within 300s"
n=0
while [ $n -lt {PAUSES} ]; do
  paused=$(api PUT vm.pause)
  state=$($IN/api-request "$API" GET vm.info | sed 's/.*"state":"\([A-Za-z]*\)".*/\1/')
  sleep 0.3
  resumed=$(api PUT vm.resume)
  record cycle n=$n pause=$paused state=$state resume=$resumed
  sleep 0.3
  n=$((n + 1))
done
: > $WORK/share/stop
wait_line $OUT/guest.serial "writes-done" 300 || record error what="the writes did not end within 300s"
for f in $WORK/share/f*; do record host-read $(basename $f) sha=$(sha $f); done
# virtiofsd serves one connection and ends with it: the rebooted VM
# connects to a new one on the same socket.
kill_virtiofsd myfs
start_virtiofsd myfs $WORK/share
record reboot status=$(api PUT vm.reboot)
wait_line $OUT/guest.serial "acpid-ready" 300 || record error what="no second boot within 300s"
record power-button status=$(api PUT vm.power-button)
wait_vmm guest 300"#
    ));
    let run = s.run_completed();
    let why = run.describe();
    assert!(run.records.first("error").is_none(), "{why}");

    let cycles: Vec<_> = run.records.all("cycle").collect();
    assert_eq!(cycles.len(), PAUSES, "{why}");
    for cycle in &cycles {
        assert_eq!(cycle.get("pause"), Some("204"), "{why}");
        assert_eq!(cycle.get("state"), Some("Paused"), "{why}");
        assert_eq!(cycle.get("resume"), Some("204"), "{why}");
    }

    let guest = run.guest("guest");
    let shas = |records: &test_infra::ProbeReport, kind: &str| -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = records
            .all(kind)
            .filter_map(|r| Some((r.positional.first()?.clone(), r.get("sha")?.to_string())))
            .collect();
        all.sort();
        all
    };
    let wrote = shas(&guest, "guest-wrote");
    assert!(
        wrote.len() >= 2,
        "the guest wrote {} files\n{why}",
        wrote.len()
    );
    assert_eq!(shas(&run.records, "host-read"), wrote, "{why}");
    let done = guest.first("writes-done").expect("writes-done");
    assert_eq!(done.number("count"), Some(wrote.len() as u64), "{why}");

    assert_eq!(
        run.records.first("reboot").and_then(|r| r.get("status")),
        Some("204"),
        "{why}"
    );
    let boots: Vec<u64> = guest.all("boot").filter_map(|r| r.number("n")).collect();
    assert_eq!(boots, [1, 2], "{why}");
    let second = guest.all("boot").nth(1).expect("second boot");
    assert_eq!(
        second.number("buttons"),
        Some(1),
        "no power button device\n{why}"
    );
    // Linux's GED driver took GSI 5 (it refuses a _CRS with anything but
    // interrupts), and evdev made the button an event device for acpid.
    let ged = guest.first("ged").expect("ged record");
    assert!(
        ged.get("irq")
            .is_some_and(|irq| irq.contains("5-edge ACPI:Ged")),
        "{why}"
    );
    assert!(ged.number("events").is_some_and(|n| n >= 1), "{why}");

    assert_eq!(
        run.records
            .first("power-button")
            .and_then(|r| r.get("status")),
        Some("204"),
        "{why}"
    );
    assert!(
        guest.first("power-button").is_some(),
        "acpid ran no handler\n{why}"
    );
    assert_eq!(run.vmm_exit("guest"), Some(0), "{why}");
}
