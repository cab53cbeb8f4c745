//! Linux tier: Debian's virtio_console on the user's terminal. `vmm`
//! runs on a pseudo-terminal as under a terminal emulator (its own
//! session, the terminal its controlling one); hvc0 in the guest has the
//! terminal's size, and when the terminal is resized (SIGWINCH to vmm),
//! Linux's hvc0 takes the new size from the config-change interrupt.

use test_infra::linux::GuestInit;
use test_infra::{static_c, Scenario};

/// What the guest prints on hvc0 when it is ready to be resized; the
/// terminal resizes itself when it sees it.
const CUE: &str = "resize-me-7f3a";

#[test]
fn hvc0_follows_the_terminal_s_size() {
    let mut s = Scenario::new("console-resize").expect("scenario");
    let tools = s.scratch_dir("tools").expect("scratch");
    let pty_run = static_c::build("pty-run", static_c::PTY_RUN, &tools).expect("pty-run");
    s.input("pty-run", &pty_run).expect("input");
    // hvc0 stays open on fd 3 throughout, so a resize reaches an open tty.
    let init = GuestInit::new(&format!(
        r#"n=0; while [ ! -c /dev/hvc0 ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n + 1)); done
exec 3<>/dev/hvc0
before=$(stty size <&3)
report size before=\"$before\"
echo {CUE} >&3
n=0; while [ "$(stty size <&3)" = "$before" ] && [ $n -lt 300 ]; do sleep 0.1; n=$((n + 1)); done
report size after=\"$(stty size <&3)\""#
    ))
    .modules(&["virtio_pci", "virtio_console"]);
    s.guest("guest.cpio", &init).expect("initramfs");
    s.script(&format!(
        "chmod +x $IN/pty-run\n\
         timeout -s KILL 150 $IN/pty-run 100 30 $OUT/terminal.out {CUE} 132 43 -- \
         \"$VMM\" --memory size=512M --kernel \"$VMLINUX\" --initramfs \"$IN/guest.cpio\" \
         --cmdline 'console=ttyS0 quiet panic=-1' --serial file=$OUT/resize.serial \
         2>$OUT/resize.vmm.log\n\
         record pty-run exit=$?"
    ));
    let run = s.run_completed();
    let why = run.describe();
    assert_eq!(
        run.records.first("pty-run").and_then(|r| r.number("exit")),
        Some(0),
        "vmm under the terminal\n{why}"
    );
    let guest = run.guest("resize");
    let size = |when: &str| {
        guest
            .all("size")
            .find_map(|r| r.get(when).map(str::to_string))
    };
    // `stty size` prints rows, then columns.
    assert_eq!(size("before").as_deref(), Some("30 100"), "{why}");
    assert_eq!(size("after").as_deref(), Some("43 132"), "{why}");
    assert!(run.out_file("terminal.out").contains(CUE), "{why}");
}
