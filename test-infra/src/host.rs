//! What kind of KVM this host has, decided once per test run and reported,
//! so that every test says plainly what it ran and what it skipped.

use std::sync::OnceLock;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Hardware virtualization (vmx/svm): real Linux guests boot.
    Hardware,
    /// KVM without hardware virtualization (kvm_pvm): guest ring 0 is
    /// emulated, so only the probe guest runs to completion.
    Pvm,
    /// No usable /dev/kvm.
    NoKvm,
}

#[derive(Debug, Clone, Copy)]
pub struct KvmHost {
    pub kind: HostKind,
}

impl KvmHost {
    pub fn detect() -> KvmHost {
        static HOST: OnceLock<KvmHost> = OnceLock::new();
        *HOST.get_or_init(|| {
            let kind = detect_kind();
            eprintln!("test-infra: host KVM: {}", describe(kind));
            KvmHost { kind }
        })
    }

    pub fn has_kvm(&self) -> bool {
        self.kind != HostKind::NoKvm
    }
}

fn describe(kind: HostKind) -> &'static str {
    match kind {
        HostKind::Hardware => "hardware virtualization (full Linux guests run)",
        HostKind::Pvm => {
            "PVM, no hardware virtualization (guest ring 0 is emulated: the probe guest runs, \
             Linux guests only reach early boot)"
        }
        HostKind::NoKvm => "none (/dev/kvm missing or not accessible)",
    }
}

fn detect_kind() -> HostKind {
    let kvm_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm_ok {
        return HostKind::NoKvm;
    }
    if std::path::Path::new("/sys/module/kvm_pvm").exists() {
        return HostKind::Pvm;
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = cpuinfo
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    if hw {
        HostKind::Hardware
    } else {
        HostKind::Pvm
    }
}

/// The fixture of every test that needs KVM (`#[rstest] fn t(kvm:
/// Option<KvmHost>)`, then `let Some(_kvm) = kvm else { return };`): the
/// host's KVM, or `None` after a loud SKIPPED naming the test when the host
/// has none, unless `CI=true`, where a missing KVM fails the test.
#[rstest::fixture]
pub fn kvm() -> Option<KvmHost> {
    require_kvm().then(KvmHost::detect)
}

/// Whether the running test may use KVM (see [`kvm`]), for tests that are
/// no rstest functions (proptest's); the test is named by its thread, as
/// the test harness names it.
pub fn require_kvm() -> bool {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("this test");
    let host = KvmHost::detect();
    if host.has_kvm() {
        return true;
    }
    let in_ci = std::env::var("CI").is_ok_and(|v| v == "true");
    assert!(
        !in_ci,
        "{test}: /dev/kvm is not usable and CI=true: KVM tests must run on this machine"
    );
    eprintln!("test-infra: SKIPPED {test}: /dev/kvm is not usable on this host");
    false
}
