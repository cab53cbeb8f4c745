//! Linux tier: the generic device's PCI function and MSI-X vectors as
//! Debian's kernel sees them in sysfs and /proc/interrupts.

use test_infra::linux::GuestInit;
use test_infra::Scenario;

/// Every PCI function, every virtio device and the virtio interrupts, as
/// Linux lists them.
const LIST: &str = r#"for d in /sys/bus/pci/devices/*; do
  set -- $(head -1 $d/resource)
  report pci ${d##*/} vendor=$(cat $d/vendor) device=$(cat $d/device) class=$(cat $d/class) \
    bar0_start=$1 bar0_end=$2 bar0_flags=$3 msix=$(ls $d/msi_irqs 2>/dev/null | wc -l) \
    driver=$(basename "$(readlink $d/driver)")
done
for v in /sys/bus/virtio/devices/*; do
  report virtio ${v##*/} device=$(cat $v/device) vendor=$(cat $v/vendor) status=$(cat $v/status)
done"#;

/// `report irq NAME count=N phase=PHASE` for each virtio MSI-X vector.
fn irqs(phase: &str) -> String {
    format!(
        "grep virtio /proc/interrupts | while read -r n count rest; do \
         report irq ${{rest##* }} count=$count phase={phase}; done"
    )
}

/// A virtio-fs device (virtio_id=26) and a device of a type Linux has no
/// driver for (virtio_id=60, the mock): both are virtio-pci functions with
/// vendor 0x1af4 and device 0x1040 + ID, bound by virtio-pci, with the
/// class codes QEMU gives them and a 64-bit memory BAR in the 32-bit PCI
/// window. The fs device has one MSI-X vector per queue plus the config
/// vector, and the request queue's counts as the guest reads.
#[test]
fn generic_devices_and_their_msix_vectors_as_linux_sees_them() {
    let guest = GuestInit::new(&format!(
        "{LIST}\n\
         mkdir -p /m; mount -t virtiofs myfs /m && report mounted\n\
         {before}\n\
         cat /m/big > /dev/null; ls -l /m > /dev/null\n\
         {after}\n\
         umount /m",
        before = irqs("before"),
        after = irqs("after"),
    ))
    .modules(&["virtio_pci", "virtiofs"]);
    let mut s = Scenario::new("pci").expect("scenario");
    s.guest("guest.cpio", &guest)
        .expect("initramfs")
        .script(
            "mkdir -p $WORK/share; head -c 2000000 /dev/urandom > $WORK/share/big\n\
             start_virtiofsd myfs $WORK/share\n\
             start_mock custom --queues 2 --config 0011223344556677\n\
             run_vmm guest 240 --memory size=512M,shared=on --kernel \"$VMLINUX\" \
             --initramfs \"$IN/guest.cpio\" --cmdline 'console=ttyS0 quiet panic=-1' --console off \
             --generic-vhost-user \"socket=$WORK/myfs.sock,virtio_id=26,queue_sizes=[512,512]\" \
             --generic-vhost-user \"socket=$WORK/custom.sock,virtio_id=60,queue_sizes=[64,64],config_size=8\"",
        );
    let run = s.run_completed();
    let report = run.guest("guest");
    let pci = |addr: &str| {
        report
            .first_at("pci", addr)
            .unwrap_or_else(|| panic!("Linux lists no {addr}\n{}", run.describe()))
    };
    let host_bridge = pci("0000:00:00.0");
    assert_eq!(host_bridge.get("class"), Some("0x060000"));
    for (addr, device, class) in [
        ("0000:00:01.0", "0x105a", "0x018000"),
        ("0000:00:02.0", "0x107c", "0xff0000"),
    ] {
        let f = pci(addr);
        let context = format!("{addr}\n{}", run.describe());
        assert_eq!(f.get("vendor"), Some("0x1af4"), "{context}");
        assert_eq!(f.get("device"), Some(device), "{context}");
        assert_eq!(f.get("class"), Some(class), "{context}");
        assert_eq!(f.get("driver"), Some("virtio-pci"), "{context}");
        let start = f.number("bar0_start").expect("BAR 0");
        let end = f.number("bar0_end").expect("BAR 0");
        let flags = f.number("bar0_flags").expect("BAR 0");
        assert_eq!(end - start + 1, 0x8000, "BAR 0 size: {context}");
        assert!(
            (0xc000_0000..0xe000_0000).contains(&start),
            "BAR 0 at {start:#x}: {context}"
        );
        const IORESOURCE_MEM: u64 = 0x200;
        const IORESOURCE_MEM_64: u64 = 0x0010_0000;
        assert_eq!(flags & IORESOURCE_MEM, IORESOURCE_MEM, "{context}");
        assert_eq!(flags & IORESOURCE_MEM_64, IORESOURCE_MEM_64, "{context}");
    }
    // The virtio core sees both, the custom type too, and no driver
    // claims it.
    let types: Vec<&str> = report
        .all("virtio")
        .filter_map(|r| r.get("device"))
        .collect();
    assert!(
        types.contains(&"0x001a") && types.contains(&"0x003c"),
        "virtio devices {types:?}\n{}",
        run.describe()
    );
    // config, hiprio, requests.0: one vector each, on the fs function.
    assert_eq!(
        pci("0000:00:01.0").number("msix"),
        Some(3),
        "{}",
        run.describe()
    );
    let count = |name: &str, phase: &str| {
        report
            .all("irq")
            .find(|r| {
                r.positional.first().is_some_and(|n| n.ends_with(name))
                    && r.get("phase") == Some(phase)
            })
            .and_then(|r| r.number("count"))
            .unwrap_or_else(|| panic!("no {name} vector {phase}\n{}", run.describe()))
    };
    for name in ["-config", "-hiprio", "-requests.0"] {
        count(name, "before");
    }
    assert!(
        count("-requests.0", "after") > count("-requests.0", "before"),
        "the request queue's vector did not count the reads\n{}",
        run.describe()
    );
    assert_eq!(run.vmm_exit("guest"), Some(0), "{}", run.describe());
}
