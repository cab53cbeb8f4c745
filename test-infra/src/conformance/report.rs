//! The report of a run, in the three forms the runner writes: a table for
//! people, JSON (serde) for scripts, JUnit XML (quick-junit) for CI.

use std::fmt::Write as _;

use quick_junit::{NonSuccessKind, Property, Report, TestCase, TestCaseStatus, TestSuite};
use serde::Serialize;

use super::{Check, Status};

/// How many checks ended each way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub checks: usize,
    pub passed: usize,
    pub warned: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Summary {
    pub fn of(checks: &[Check]) -> Summary {
        let count = |s: Status| checks.iter().filter(|c| c.status == s).count();
        Summary {
            checks: checks.len(),
            passed: count(Status::Pass),
            warned: count(Status::Warn),
            failed: count(Status::Fail),
            skipped: count(Status::Skip),
        }
    }
}

/// The JSON document: `passed` first, so that a script can look at the
/// first bytes, then every check in the order they ran, then the counts.
#[derive(Serialize)]
struct Document<'a> {
    passed: bool,
    checks: &'a [Check],
    summary: Summary,
}

fn ms(c: &Check) -> f64 {
    (c.elapsed.as_secs_f64() * 10_000.0).round() / 10.0
}

pub fn table(checks: &[Check]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<8} {:<24} {:<5} {:>9}  detail",
        "tier", "check", "", "ms"
    );
    for c in checks {
        let _ = writeln!(
            out,
            "{:<8} {:<24} {:<5} {:>9.1}  {}",
            c.tier,
            c.name,
            c.status.as_str(),
            ms(c),
            c.detail
        );
        // The evidence of what went wrong; JSON and JUnit carry all of it.
        if matches!(c.status, Status::Warn | Status::Fail) {
            for (key, value) in c.evidence.iter() {
                let _ = writeln!(out, "{:<50}{key}: {value}", "");
            }
        }
    }
    let s = Summary::of(checks);
    let _ = writeln!(
        out,
        "{} checks: {} passed, {} warned, {} failed, {} skipped",
        s.checks, s.passed, s.warned, s.failed, s.skipped
    );
    out
}

pub fn json(checks: &[Check]) -> String {
    let document = Document {
        passed: super::all_passed(checks),
        checks,
        summary: Summary::of(checks),
    };
    // Plain data with string keys: serialising it cannot fail.
    let mut out = serde_json::to_string(&document)
        .unwrap_or_else(|e| format!("{{\"passed\":false,\"error\":{:?}}}", e.to_string()));
    out.push('\n');
    out
}

/// One test case per check, the tier as its class. A warning is a test
/// case that passed, with the deviation in its system-out and its
/// evidence (and `status=warn`) as properties; JUnit has no status for it.
pub fn junit(checks: &[Check]) -> Result<String, quick_junit::SerializeError> {
    let mut suite = TestSuite::new("vhost-user-conformance");
    for c in checks {
        let status = match c.status {
            Status::Pass | Status::Warn => TestCaseStatus::success(),
            Status::Fail => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(c.detail.as_str());
                s
            }
            Status::Skip => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(c.detail.as_str());
                s
            }
        };
        let mut case = TestCase::new(c.name, status);
        case.set_classname(c.tier).set_time(c.elapsed);
        if c.status == Status::Warn {
            case.set_system_out(format!("warn: {}", c.detail));
            case.add_property(Property::new("status", "warn"));
        }
        for (key, value) in c.evidence.iter() {
            case.add_property(Property::new(key, value));
        }
        suite.add_test_case(case);
    }
    let skipped = Summary::of(checks).skipped;
    suite
        .extra
        .insert("skipped".into(), skipped.to_string().into());
    let mut report = Report::new("vhost-user-conformance");
    report.add_test_suite(suite);
    report.to_string()
}
