//! The `vmm` binary's command line as a user meets it: bad values give one
//! clear line naming the option and exit status 2, never a panic; good
//! values get past parsing.

use proptest::prelude::*;
use rstest::rstest;
use test_infra::vmm::VmmCommand;

fn run(args: &[&str]) -> test_infra::Output {
    let dir = test_infra::tempdir();
    let mut cmd = VmmCommand::bare();
    cmd.args(args).timeout(std::time::Duration::from_secs(20));
    cmd.spawn(dir.path())
        .expect("vmm starts")
        .wait(std::time::Duration::from_secs(20))
        .expect("vmm exits")
}

fn assert_usage_error(args: &[&str], option: &str) {
    let out = run(args);
    assert_eq!(out.code(), Some(2), "{args:?}\n{}", out.describe());
    assert!(
        out.stderr.contains(option),
        "error does not name {option}: {}",
        out.stderr
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
    let lines: Vec<_> = out
        .stderr
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    // One error line (clap lists missing arguments on the next line), then
    // at most the usage line and the --help hint.
    assert!(
        lines.len() <= 5 && lines[0].contains("error"),
        "expected a short error, got:\n{}",
        out.stderr
    );
}

const KERNEL: &[&str] = &["--kernel", "/nonexistent/kernel"];

#[rstest]
#[case(&["--cpus", "boot=0"], "--cpus")]
#[case(&["--cpus", "boot=255"], "--cpus")]
#[case(&["--cpus", "two"], "--cpus")]
#[case(&["--memory", "size=12Q"], "--memory")]
#[case(&["--memory", "size=1.5G"], "--memory")]
#[case(&["--memory", "size=512M,shared=maybe"], "--memory")]
#[case(&["--memory", "size=99999999999999T"], "--memory")]
#[case(&["--serial", "socket=/tmp/x"], "--serial")]
#[case(&["--console", "file="], "--console")]
#[case(&["--generic-vhost-user", "virtio_id=26,queue_sizes=[512,512]"], "--generic-vhost-user")]
#[case(&["--generic-vhost-user", "socket=/tmp/s,virtio_id=nosuchtype,queue_sizes=[8]"], "--generic-vhost-user")]
#[case(&["--memory", "size=512M,shared=on", "--generic-vhost-user", "socket=/tmp/s,virtio_id=26,queue_sizes=[3,512]"], "--generic-vhost-user")]
#[case(&["--memory", "size=512M,shared=on", "--generic-vhost-user", "socket=/tmp/s,virtio_id=fs,queue_sizes=[512]"], "--generic-vhost-user")]
#[case(&["--generic-vhost-user", "socket=/tmp/s,virtio_id=26,queue_sizes=[512,512]"], "shared=on")]
#[case(&["--disk", "readonly=on"], "--disk")]
#[case(&["--disk", "path=/tmp/d,num_queues=0"], "--disk")]
#[case(&["--disk", "path=/tmp/d,queue_size=100"], "--disk")]
#[case(&["--disk", "path=/tmp/d,cache=none"], "--disk")]
#[case(&["--disk", "vhost_user=on,socket=/tmp/s"], "shared=on")]
#[case(&["--console", "ptty"], "--console")]
#[case(&["--serial", "tty"], "--console")]
fn bad_values_are_one_clear_line_and_status_2(#[case] args: &[&str], #[case] names: &str) {
    let mut all = KERNEL.to_vec();
    all.extend_from_slice(args);
    assert_usage_error(&all, names);
}

#[test]
fn missing_kernel_is_a_usage_error() {
    assert_usage_error(&["--cpus", "boot=1"], "--kernel");
}

#[test]
fn help_documents_options_and_exit_statuses() {
    let out = run(&["--help"]);
    assert_eq!(out.code(), Some(0), "{}", out.describe());
    for needle in [
        "--cpus",
        "--memory",
        "--kernel",
        "--generic-vhost-user",
        "--serial",
        "0xf4",
    ] {
        assert!(out.stdout.contains(needle), "--help lacks {needle}");
    }
}

#[test]
fn missing_kernel_file_fails_at_start_up_naming_the_path() {
    let out = run(&["--kernel", "/nonexistent/kernel", "--serial", "null"]);
    assert_eq!(out.code(), Some(1), "{}", out.describe());
    assert!(out.stderr.contains("/nonexistent/kernel"), "{}", out.stderr);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Whatever the option value, the binary answers with a status, not a panic.
    #[test]
    fn random_option_values_never_panic(
        option in prop::sample::select(vec!["--cpus", "--memory", "--serial", "--console", "--generic-vhost-user", "--disk"]),
        value in "[a-z_=,\\[\\]\"0-9A-Z ./]{0,40}",
    ) {
        let out = run(&["--kernel", "/nonexistent/kernel", "--serial", "null", option, &value]);
        prop_assert!(!out.stderr.contains("panicked"), "{}", out.describe());
        prop_assert!(matches!(out.code(), Some(1) | Some(2)), "{}", out.describe());
    }
}
