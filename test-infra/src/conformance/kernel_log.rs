//! The Linux tier's kernel-log verdict: which of the guest kernel's
//! complaints the device under test (its backend, its driver) caused, and
//! which belong to the platform. Only the first fail the check; the others
//! are shown as a warning. A guest under an emulator on a loaded machine
//! complains of its clock and of stalls that no backend caused, and a
//! verdict that counts those fails at random.
//!
//! The input is `dmesg -r` lines: `<LEVEL>[  SECONDS] TEXT`.

/// Complaints that are the device's whatever they name: the kernel found
/// a bug or crashed.
const ALWAYS_THE_DEVICE_S: &[&str] = &[
    "BUG:",
    "WARNING:",
    "Oops",
    "Kernel panic",
    "general protection fault",
];

/// Complaints a slow machine causes by itself: the device's only when the
/// splat (its line and the trace after it) names the device.
const SLOWNESS: &[&str] = &[
    "soft lockup",
    "blocked for more than",
    "hung_task",
    "rcu_sched self-detected stall",
    "rcu_preempt self-detected stall",
    "rcu: INFO:",
];

/// Where a splat's trace ends at the latest.
const SPLAT_LINES: usize = 60;

/// The sorted complaints, each quoted as the kernel printed it (level and
/// time stripped).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct KernelLog {
    /// Complaints the device under test caused: they fail the check.
    pub device: Vec<String>,
    /// Other complaints (clock, emulator, platform): a warning.
    pub other: Vec<String>,
}

/// What names the device under test in a kernel line: its driver's
/// modules, "virtio", "vhost", its PCI address and the type's own device
/// names (`vda`, `hvc0`, ...). A term matches where a word starts, so
/// `fuse` does not match "refused".
pub fn device_terms(modules: &[&str], pci_address: Option<&str>, extra: &[&str]) -> Vec<String> {
    let mut terms: Vec<String> = ["virtio", "vhost"].iter().map(|t| t.to_string()).collect();
    for module in modules {
        terms.push(module.to_string());
        terms.push(module.replace('_', "-"));
    }
    if let Some(address) = pci_address.filter(|a| !a.is_empty()) {
        terms.push(address.to_string());
    }
    terms.extend(extra.iter().map(|t| t.to_string()));
    terms.sort();
    terms.dedup();
    terms
}

/// Splits `dmesg -r` lines into the device's complaints and the others.
pub fn classify<S: AsRef<str>>(lines: &[S], terms: &[String]) -> KernelLog {
    let entries: Vec<(Option<u8>, &str)> = lines.iter().map(|l| parse(l.as_ref())).collect();
    let mut log = KernelLog::default();
    let mut i = 0;
    while i < entries.len() {
        let (level, text) = entries[i];
        let slowness = SLOWNESS.iter().any(|p| text.contains(p));
        if slowness || ALWAYS_THE_DEVICE_S.iter().any(|p| text.contains(p)) {
            let end = splat_end(&entries, i);
            let named = entries[i..end]
                .iter()
                .find_map(|(_, t)| named_term(t, terms));
            match (slowness, named) {
                (true, None) => log.other.push(text.to_string()),
                (_, Some(term)) if !names(text, terms) => {
                    log.device.push(format!("{text} (its trace names {term})"))
                }
                _ => log.device.push(text.to_string()),
            }
            i = end;
            continue;
        }
        if level.is_some_and(|l| l <= 4) {
            if names(text, terms) {
                log.device.push(text.to_string());
            } else {
                log.other.push(text.to_string());
            }
        }
        i += 1;
    }
    log
}

/// `(level, text)` of one `dmesg -r` line; a line without the prefix
/// has no level.
fn parse(line: &str) -> (Option<u8>, &str) {
    let line = line.trim_end();
    let Some(rest) = line.strip_prefix('<') else {
        return (None, line.trim_start());
    };
    let Some((level, rest)) = rest.split_once('>') else {
        return (None, line.trim_start());
    };
    let Ok(level) = level.parse::<u8>() else {
        return (None, line.trim_start());
    };
    // The facility is in the upper bits (`<12>` is a user's warning).
    let level = level & 7;
    let text = match rest.trim_start().strip_prefix('[') {
        Some(stamped) => stamped.split_once(']').map_or(rest, |(_, t)| t),
        None => rest,
    };
    (Some(level), text.trim())
}

/// Where the splat that starts at `start` ends: at the next splat, after
/// its `---[ end trace` line, or `SPLAT_LINES` on.
fn splat_end(entries: &[(Option<u8>, &str)], start: usize) -> usize {
    let limit = entries.len().min(start + SPLAT_LINES);
    for (i, (_, text)) in entries.iter().enumerate().take(limit).skip(start + 1) {
        if text.starts_with("---[ end trace") {
            return i + 1;
        }
        let another = SLOWNESS
            .iter()
            .chain(ALWAYS_THE_DEVICE_S)
            .any(|p| text.contains(p));
        if another {
            return i;
        }
    }
    limit
}

fn names(text: &str, terms: &[String]) -> bool {
    named_term(text, terms).is_some()
}

/// The first term that `text` names where a word starts.
fn named_term<'a>(text: &str, terms: &'a [String]) -> Option<&'a str> {
    let lower = text.to_ascii_lowercase();
    terms.iter().map(String::as_str).find(|term| {
        let term = term.to_ascii_lowercase();
        lower.match_indices(&term).any(|(at, _)| {
            lower[..at]
                .chars()
                .next_back()
                .is_none_or(|c| !c.is_ascii_alphanumeric())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rng_terms() -> Vec<String> {
        device_terms(&["virtio_rng"], Some("0000:00:02.0"), &["hwrng"])
    }

    /// The line that failed CI on a loaded machine (issue 20).
    const CLOCKSOURCE: &str = "<4>[    7.891234] clocksource: Long readout interval, skipping watchdog check: cs_nsec: 1220581538 wd_nsec: 1220580702";

    #[test]
    fn the_emulator_s_clock_complaint_is_a_warning() {
        let log = classify(&[CLOCKSOURCE], &rng_terms());
        assert!(log.device.is_empty(), "{log:?}");
        assert_eq!(
            log.other,
            ["clocksource: Long readout interval, skipping watchdog check: cs_nsec: 1220581538 wd_nsec: 1220580702"]
        );
        let unstable = "<4>[   12.000001] clocksource: timekeeping watchdog on CPU0: Marking clocksource 'tsc' as unstable because the skew is too large:";
        let log = classify(&[unstable], &rng_terms());
        assert!(log.device.is_empty() && log.other.len() == 1, "{log:?}");
    }

    #[test]
    fn a_virtio_driver_error_fails() {
        let lines = [
            "<6>[    3.100000] virtio_rng virtio0: probing",
            "<3>[    3.120000] virtio_rng virtio0: input.0:id 0 is not a head!",
        ];
        let log = classify(&lines, &rng_terms());
        assert_eq!(
            log.device,
            ["virtio_rng virtio0: input.0:id 0 is not a head!"]
        );
        assert!(log.other.is_empty());
        // The transport's complaint names the device's PCI address.
        let transport = "<3>[    2.000000] virtio-pci 0000:00:02.0: virtio_pci: bad capability len 0 (>=16 expected)";
        assert_eq!(classify(&[transport], &rng_terms()).device.len(), 1);
        // A block device's I/O error names the disk, not the driver.
        let io = "<3>[    9.000000] I/O error, dev vda, sector 0 op 0x0:(READ) flags 0x80700 phys_seg 1 prio class 2";
        let terms = device_terms(&["virtio_blk"], None, &["vda"]);
        assert_eq!(classify(&[io], &terms).device.len(), 1);
        assert_eq!(classify(&[io], &rng_terms()).other.len(), 1);
    }

    #[test]
    fn bugs_warnings_and_oopses_fail_whatever_they_name() {
        for line in [
            "<4>[    5.000000] WARNING: CPU: 0 PID: 1 at kernel/time/timekeeping.c:123 foo+0x1/0x2",
            "<1>[    5.000000] BUG: kernel NULL pointer dereference, address: 0000000000000008",
            "<4>[    5.000000] Oops: 0000 [#1] PREEMPT SMP NOPTI",
            "<0>[    5.000000] Kernel panic - not syncing: Fatal exception",
        ] {
            let log = classify(&[line], &rng_terms());
            assert_eq!(log.device.len(), 1, "{line}: {log:?}");
        }
    }

    #[test]
    fn a_stall_fails_only_when_its_trace_names_the_device() {
        let load = [
            "<0>[   40.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [swapper/0:0]",
            "<4>[   40.000001] Call Trace:",
            "<4>[   40.000002]  <TASK>",
            "<4>[   40.000003]  default_idle+0x9/0x20",
            "<4>[   40.000004]  </TASK>",
        ];
        let log = classify(&load, &rng_terms());
        assert!(log.device.is_empty(), "{log:?}");
        assert_eq!(log.other.len(), 1, "one line for the whole splat: {log:?}");

        let hung = [
            "<3>[  245.000000] INFO: task cat:123 blocked for more than 120 seconds.",
            "<3>[  245.000001]       Not tainted 6.1.0-28-cloud-amd64 #1 Debian 6.1.119-1",
            "<6>[  245.000002] task:cat             state:D stack:0     pid:123   ppid:1",
            "<6>[  245.000003] Call Trace:",
            "<6>[  245.000004]  rng_dev_read+0x12c/0x2c0 [rng_core]",
            "<6>[  245.000005]  virtio_read+0x42/0x80 [virtio_rng]",
        ];
        let log = classify(&hung, &rng_terms());
        assert_eq!(
            log.device,
            ["INFO: task cat:123 blocked for more than 120 seconds. (its trace names virtio)"]
        );
        assert!(log.other.is_empty(), "{log:?}");
    }

    #[test]
    fn terms_match_where_a_word_starts() {
        let terms = device_terms(&["virtiofs"], None, &["fuse"]);
        let log = classify(&["<3>[ 1.0] nfs: server refused the mount"], &terms);
        assert!(log.device.is_empty() && log.other.len() == 1, "{log:?}");
        let log = classify(&["<3>[ 1.0] fuse: unknown opcode 99"], &terms);
        assert_eq!(log.device.len(), 1, "{log:?}");
    }

    #[test]
    fn information_is_not_a_complaint_and_odd_lines_do_not_panic() {
        let lines = [
            "<6>[    1.0] virtio_rng virtio0: registered",
            "",
            "<",
            "<x>[ 1.0] odd",
            "<4>[ unterminated",
            "no prefix at all",
        ];
        let log = classify(&lines, &rng_terms());
        assert!(log.device.is_empty(), "{log:?}");
        assert_eq!(log.other, ["[ unterminated"]);
    }
}
