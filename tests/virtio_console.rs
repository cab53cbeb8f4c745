//! virtio-console port 0 as the probe guest drives it (no MULTIPORT),
//! under `vmm --console` and under QEMU's virtio-serial with a
//! virtconsole: what the guest transmits arrives byte for byte, what the
//! test sends arrives in the guest, and both VMMs report the same facts.

use std::time::Duration;

use rstest::rstest;
use test_infra::console::output_path;
use test_infra::digest::sha256_hex;
use test_infra::host::{kvm, KvmHost};
use test_infra::tempdir;
use test_infra::{Console, Guest, Hypervisor, ProbeReport, Record};

/// VIRTIO_F_VERSION_1 | VIRTIO_CONSOLE_F_EMERG_WRITE: what the probe
/// negotiates from both VMMs (neither offers SIZE when the console is no
/// terminal, and MULTIPORT is never accepted).
const FEATURES: &str = "0x100000004";
const READY: &str = "probe: console ready";
const READY_TIMEOUT: Duration = Duration::from_secs(30);

fn sha(bytes: &[u8]) -> String {
    sha256_hex(bytes).expect("sha256sum")
}

/// Byte `i` of what `probe.console.tx_bytes` transmits.
fn pattern(i: u64) -> u8 {
    if i % 64 == 63 {
        b'\n'
    } else {
        b'!' + ((i % 64 + 3 * (i / 64)) % 94) as u8
    }
}

fn pattern_bytes(n: u64) -> Vec<u8> {
    (0..n).map(pattern).collect()
}

fn console_record<'a>(report: &'a ProbeReport, sub: &str) -> &'a Record {
    report
        .first_at("console", sub)
        .unwrap_or_else(|| panic!("no `console {sub}` record: {report:?}"))
}

fn assert_config(hv: Hypervisor, report: &ProbeReport) {
    let config = console_record(report, "config");
    assert_eq!(config.get("features"), Some(FEATURES), "{hv}: {config:?}");
    assert_eq!(config.get("f_emerg_write"), Some("1"), "{config:?}");
    assert_eq!(
        config.get("f_size"),
        Some("0"),
        "not a terminal: {config:?}"
    );
    assert_eq!(config.get("cols"), None, "{config:?}");
}

#[rstest]
fn transmits_text_and_pattern(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let run = Guest::probe(
        hv,
        "probe.run=console probe.console.emerg=early probe.console.tx=hello-from-the-probe \
         probe.console.tx_bytes=6000",
    )
    .console(Console::Output)
    .run(dir.path())
    .expect("guest runs");
    let report = run.assert_passed();
    assert_config(hv, report);
    let emerg = console_record(report, "emerg");
    assert_eq!(emerg.number("bytes"), Some(6), "{emerg:?}");

    let mut sent = b"hello-from-the-probe\n".to_vec();
    sent.extend(pattern_bytes(6000));
    let tx = console_record(report, "tx");
    assert_eq!(tx.number("bytes"), Some(sent.len() as u64), "{tx:?}");
    // 2000 bytes per chain of 4 descriptors.
    assert_eq!(tx.number("chains"), Some(4), "{tx:?}");
    assert_eq!(tx.number("descriptors"), Some(13), "{tx:?}");
    assert_eq!(
        tx.get("used_len"),
        Some("0"),
        "nothing is written into a transmit buffer: {tx:?}"
    );
    assert_eq!(tx.get("sha256"), Some(sha(&sent).as_str()), "{tx:?}");

    let output = std::fs::read(output_path(dir.path())).expect("console output");
    let mut expected = b"early\n".to_vec();
    expected.extend(&sent);
    assert!(
        output == expected,
        "{hv}: the console output differs ({} bytes, {} expected):\n{}",
        output.len(),
        expected.len(),
        String::from_utf8_lossy(&output)
    );
}

/// What the test sends: every byte value (the console is no terminal
/// line discipline), or text ending in the terminator line.
fn input(case: &str) -> (String, Vec<u8>) {
    match case {
        "count" => {
            let bytes: Vec<u8> = (0..5000u32).map(|i| (i * 7 + i / 256) as u8).collect();
            (format!("probe.console.rx_bytes={}", bytes.len()), bytes)
        }
        _ => {
            let mut text = String::new();
            for i in 0..40 {
                text.push_str(&format!("input line {i} for the probe\n"));
            }
            text.push_str("END\n");
            ("probe.console.rx_end=END".into(), text.into_bytes())
        }
    }
}

#[rstest]
fn receives_input_until_a_count_or_an_end_line(
    kvm: Option<KvmHost>,
    #[values(Hypervisor::Vmm, Hypervisor::Qemu)] hv: Hypervisor,
    #[values("count", "line")] case: &str,
) {
    let Some(_kvm) = kvm else { return };
    let dir = tempdir();
    let (key, bytes) = input(case);
    let mut guest = Guest::probe(
        hv,
        &format!("probe.run=console probe.console.tx_bytes=300 {key}"),
    )
    .console(Console::Interactive)
    .start(dir.path())
    .expect("guest starts");
    guest
        .wait_for_serial(READY, READY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{hv}: {e}"));
    guest.send_console(&bytes).expect("send input");
    let run = guest.finish().expect("guest ends");
    let report = run.assert_passed();
    assert_config(hv, report);

    let rx = console_record(report, "rx");
    assert_eq!(rx.number("bytes"), Some(bytes.len() as u64), "{hv}: {rx:?}");
    assert_eq!(rx.get("sha256"), Some(sha(&bytes).as_str()), "{hv}: {rx:?}");
    let end = if case == "count" { "bytes" } else { "line" };
    assert_eq!(rx.get("end"), Some(end), "{rx:?}");

    let output = std::fs::read(output_path(dir.path())).expect("console output");
    assert!(
        output == pattern_bytes(300),
        "{hv}: the console output differs:\n{}",
        String::from_utf8_lossy(&output)
    );
}

/// The console records without what describes an implementation: the
/// features offered (QEMU offers MULTIPORT), the transport's queue count
/// (QEMU has 64 for 31 ports) and how many chains the input took.
fn console_facts(report: &ProbeReport) -> Vec<Record> {
    report
        .all("console")
        .map(|r| {
            let mut r = r.clone();
            r.positional.truncate(1);
            r.fields
                .retain(|k, _| !["offered", "vqs", "f_multiport", "chains"].contains(&k.as_str()));
            r
        })
        .collect()
}

#[rstest]
fn same_console_facts_under_both_vmms(kvm: Option<KvmHost>) {
    let Some(_kvm) = kvm else { return };
    let (key, bytes) = input("line");
    let cmdline = format!("probe.run=console probe.console.emerg=! probe.console.tx=same {key}");
    let run = |hv: Hypervisor| {
        let dir = tempdir();
        let mut guest = Guest::probe(hv, &cmdline)
            .console(Console::Interactive)
            .start(dir.path())
            .expect("guest starts");
        guest
            .wait_for_serial(READY, READY_TIMEOUT)
            .unwrap_or_else(|e| panic!("{hv}: {e}"));
        guest.send_console(&bytes).expect("send input");
        let run = guest.finish().expect("guest ends");
        let facts = console_facts(run.assert_passed());
        let output = std::fs::read(output_path(dir.path())).expect("console output");
        (facts, output)
    };
    let (qemu, qemu_output) = run(Hypervisor::Qemu);
    let (vmm, vmm_output) = run(Hypervisor::Vmm);
    assert_eq!(vmm, qemu, "console facts differ (left: vmm, right: qemu)");
    assert!(
        vmm_output == qemu_output,
        "the console output differs between the VMMs"
    );
}
