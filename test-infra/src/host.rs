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

/// For tests that need KVM: returns false (after saying so loudly) when the
/// host has none, unless `CI=true`, where a missing KVM is a failure.
pub fn require_kvm(test: &str) -> bool {
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
