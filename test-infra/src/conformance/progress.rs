//! Progress lines for long runs: each stage as it starts and each check
//! as it is decided, with the time since the run began. They go to
//! stderr, so `--json` on stdout stays a single document.

use std::io::Write;
use std::time::Instant;

use super::Check;

pub struct Progress<W: Write> {
    start: Instant,
    out: Option<W>,
}

impl<W: Write> Progress<W> {
    /// `None` for `--quiet`.
    pub fn new(out: Option<W>) -> Progress<W> {
        Progress {
            start: Instant::now(),
            out,
        }
    }

    fn line(&mut self, text: &str) {
        let elapsed = self.start.elapsed().as_secs_f64();
        if let Some(out) = &mut self.out {
            // Progress is best effort: a closed stderr must not stop a run.
            let _ = writeln!(out, "[{elapsed:>7.1}s] {text}");
        }
    }

    /// What starts now, e.g. "generic: booting the probe (pci,virtio,config)".
    pub fn stage(&mut self, what: &str) {
        self.line(what);
    }

    /// A check as it is decided.
    pub fn check(&mut self, c: &Check) {
        self.line(&format!(
            "{:<4} {}/{}: {}",
            c.status.as_str(),
            c.tier,
            c.name,
            c.detail
        ));
    }

    pub fn checks(&mut self, checks: &[Check]) {
        for c in checks {
            self.check(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::Status;

    #[test]
    fn lines_carry_the_time_and_the_verdict() {
        let mut p = Progress::new(Some(Vec::new()));
        p.stage("generic: booting");
        p.check(&Check::new("generic", "features", Status::Pass, "0x1"));
        let text = String::from_utf8(p.out.take().expect("writer")).expect("UTF-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].starts_with("[    0.0s] generic: booting"),
            "{text}"
        );
        assert!(lines[1].ends_with("] pass generic/features: 0x1"), "{text}");

        let mut quiet: Progress<Vec<u8>> = Progress::new(None);
        quiet.stage("nothing");
        assert!(quiet.out.is_none());
    }
}
