//! The backend tier: the pre-flight's answers judged, and what the runner
//! takes from them for the guests (the queue count, the config window).
//! Pure functions of what the backend said, so they test without one.

use std::fmt::Write as _;
use std::time::Duration;

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use virtio_types::VirtioDeviceType;

use super::preflight::{Answers, ConfigReads, ConfigReply};
use super::{Check, Evidence, Status};

const TIER: &str = "backend";
/// Each queue's size when the user gives none.
pub const DEFAULT_QUEUE_SIZE: u32 = 256;
/// The count for a type the table does not know, backend not asked.
const FALLBACK_QUEUES: usize = 2;

/// Why there are no answers to judge.
#[derive(Debug, Clone)]
pub enum NoAnswers {
    /// `--socket`: a backend the user runs, which may take one connection
    /// per guest; the runner does not spend one.
    UserSocket,
    /// The pre-flight failed; the reason.
    Failed(String),
}

/// What the guests get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub queue_sizes: Vec<u32>,
    /// For `config_size=`: the window the backend's features call for,
    /// when the user gave none and it is shorter than the whole layout.
    pub config_size: Option<u32>,
}

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct Asked<'a> {
    pub device_type: VirtioDeviceType,
    pub queue_sizes: Option<&'a [u32]>,
    pub config_size: Option<u32>,
}

impl Asked<'_> {
    /// The config window to read for a backend offering `features`.
    pub fn config_window(&self, features: u64) -> u32 {
        self.config_size
            .or_else(|| self.device_type.config_size_for(features))
            .unwrap_or(0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn protocol_names(p: VhostUserProtocolFeatures) -> String {
    let names: Vec<String> = p.iter_names().map(|(name, _)| name.to_string()).collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

/// The three backend checks and the plan for the guests.
pub fn judge(
    asked: &Asked,
    answers: Result<&Answers, &NoAnswers>,
    elapsed: Duration,
) -> (Vec<Check>, Plan) {
    let handshake = match answers {
        Ok(a) => handshake(a),
        Err(NoAnswers::UserSocket) => Check::new(
            TIER,
            "handshake",
            Status::Skip,
            "--socket: the runner did not start the backend, so it keeps its connections for the guests",
        ),
        Err(NoAnswers::Failed(why)) => Check::new(TIER, "handshake", Status::Fail, why.clone()),
    };
    let (queue_sizes, queue_count) = queue_count(asked, answers);
    let config_offset = config_offset(asked, answers);
    let whole = asked.device_type.spec_config_size();
    let config_size = match (answers, asked.config_size) {
        (Ok(a), None) => a
            .config
            .as_ref()
            .map(|c| c.window)
            .filter(|&w| Some(w) != whole && w > 0),
        _ => None,
    };
    let checks = [handshake, queue_count, config_offset]
        .into_iter()
        .map(|c| c.after(elapsed))
        .collect();
    (
        checks,
        Plan {
            queue_sizes,
            config_size,
        },
    )
}

fn handshake(a: &Answers) -> Check {
    let mut evidence = Evidence::new().with("features", format!("{:#x}", a.features));
    let mut detail = format!("features {:#x}", a.features);
    match a.protocol {
        Some(p) => {
            evidence = evidence.with("protocol_features", format!("{:#x}", p.bits()));
            let _ = write!(detail, ", protocol features {}", protocol_names(p));
        }
        None => detail.push_str(", no VHOST_USER_F_PROTOCOL_FEATURES"),
    }
    if let Some(n) = a.queue_num {
        evidence = evidence.with("queue_num", n.to_string());
        let _ = write!(detail, ", GET_QUEUE_NUM {n}");
    }
    Check::new(TIER, "handshake", Status::Pass, detail).with_evidence(evidence)
}

fn sizes_text(sizes: &[u32]) -> String {
    sizes
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The queues for the guests and the check that says why.
fn queue_count(asked: &Asked, answers: Result<&Answers, &NoAnswers>) -> (Vec<u32>, Check) {
    let t = asked.device_type;
    let name = t
        .name()
        .map_or_else(|| format!("device ID {}", t.id()), str::to_string);
    let queue_num = answers.ok().and_then(|a| a.queue_num);
    let not_asked = match answers {
        Ok(a)
            if a.protocol
                .is_some_and(|p| p.contains(VhostUserProtocolFeatures::MQ)) =>
        {
            None
        }
        Ok(_) => Some("the backend has no MQ, so GET_QUEUE_NUM was not asked".to_string()),
        Err(NoAnswers::UserSocket) => Some("GET_QUEUE_NUM not asked (--socket)".to_string()),
        Err(NoAnswers::Failed(_)) => {
            Some("GET_QUEUE_NUM not asked (the pre-flight failed)".to_string())
        }
    };
    // A backend never asked (--socket, or a failed pre-flight) gets no
    // verdict on its queues: the guests' queues are only the plan.
    let never_asked = answers.is_err();
    let check = |status, detail: String, sizes: &[u32]| {
        let status = if never_asked { Status::Skip } else { status };
        let mut evidence = Evidence::new()
            .with("queues", sizes.len().to_string())
            .with("queue_sizes", sizes_text(sizes));
        if let Some(n) = queue_num {
            evidence = evidence.with("queue_num", n.to_string());
        }
        Check::new(TIER, "queue-count", status, detail).with_evidence(evidence)
    };
    if let Some(sizes) = asked.queue_sizes {
        let given = format!("{} (--queue-sizes)", super::queues_text(sizes));
        let c = match (queue_num, &not_asked) {
            (Some(n), _) if sizes.len() as u64 > n => check(
                Status::Fail,
                format!("{given}, but GET_QUEUE_NUM says the backend has {n}"),
                sizes,
            ),
            (Some(n), _) => check(
                Status::Pass,
                format!("{given}; GET_QUEUE_NUM says {n}"),
                sizes,
            ),
            (None, why) => check(
                Status::Pass,
                format!("{given}; {}", why.as_deref().unwrap_or("")),
                sizes,
            ),
        };
        return (sizes.to_vec(), c);
    }
    let usual = t.usual_queues();
    let usual_text = match usual {
        Some(u) => format!("{name} usually has {u}"),
        None => format!("{name} is not in the VIRTIO table"),
    };
    let (mut count, mut why) = match (queue_num, usual) {
        (Some(n), Some(u)) => (
            (n as usize).min(u),
            format!("GET_QUEUE_NUM says {n}, {usual_text}"),
        ),
        (Some(n), None) => (n as usize, format!("GET_QUEUE_NUM says {n}, {usual_text}")),
        (None, u) => (
            u.unwrap_or(FALLBACK_QUEUES),
            format!("{usual_text}; {}", not_asked.as_deref().unwrap_or("")),
        ),
    };
    if count < t.min_queues() {
        count = t.min_queues();
        let _ = write!(why, "; {name} needs {} ({})", count, t.required_queues());
    }
    let sizes = vec![DEFAULT_QUEUE_SIZE; count];
    let status = match queue_num {
        Some(n) if count as u64 > n => Status::Fail,
        _ => Status::Pass,
    };
    let plural = if count == 1 { "" } else { "s" };
    let detail = format!("{count} queue{plural} of {DEFAULT_QUEUE_SIZE}: {why}");
    let c = check(status, detail, &sizes);
    (sizes, c)
}

fn config_offset(asked: &Asked, answers: Result<&Answers, &NoAnswers>) -> Check {
    let skip = |why: String| Check::new(TIER, "config-offset", Status::Skip, why);
    let a = match answers {
        Ok(a) => a,
        Err(NoAnswers::UserSocket) => {
            return skip(
                "--socket: the runner does not connect to a backend it did not start".into(),
            )
        }
        Err(NoAnswers::Failed(_)) => return skip("the pre-flight failed".into()),
    };
    let has_config = a
        .protocol
        .is_some_and(|p| p.contains(VhostUserProtocolFeatures::CONFIG));
    if !has_config {
        return skip("the backend does not offer VHOST_USER_PROTOCOL_F_CONFIG".into());
    }
    match &a.config {
        Some(reads) => judge_reads(asked, a.features, reads),
        None => skip(format!(
            "no config window for {} (--config-size gives one)",
            asked.device_type
        )),
    }
}

fn judge_reads(asked: &Asked, features: u64, r: &ConfigReads) -> Check {
    let k = r.offset;
    let whole = asked.device_type.spec_config_size();
    let window_text = match (asked.config_size, whole) {
        (Some(_), _) => format!("{}-byte window from --config-size", r.window),
        (None, Some(w)) if w != r.window => format!(
            "{}-byte window for features {features:#x}, of VIRTIO 1.3's {w}",
            r.window
        ),
        _ => format!("{}-byte window", r.window),
    };
    let refused = |at: u32, size: u32, reply: &ConfigReply| {
        let what = match reply {
            ConfigReply::Refused => "refused".to_string(),
            ConfigReply::Wrong { offset, size } => {
                format!("answered for {size} bytes at {offset}")
            }
            ConfigReply::Bytes(b) => format!("answered {} bytes", b.len()),
        };
        Check::new(
            TIER,
            "config-offset",
            Status::Fail,
            format!("GET_CONFIG of {size} bytes at offset {at} {what}; {window_text}"),
        )
        .with_evidence(Evidence::new().with("window", r.window.to_string()))
    };
    let at_zero = match &r.at_zero {
        ConfigReply::Bytes(b) => b,
        other => return refused(0, r.window, other),
    };
    let n = r.window - k;
    let at_offset = match &r.at_offset {
        Some(ConfigReply::Bytes(b)) => b,
        Some(other) => return refused(k, n, other),
        None => return refused(k, n, &ConfigReply::Refused),
    };
    let expected = &at_zero[k as usize..];
    let from_zero = &at_zero[..n as usize];
    let evidence = Evidence::new()
        .with("offset", k.to_string())
        .with("size", n.to_string())
        .with("expected", hex(expected))
        .with("returned", hex(at_offset))
        .with("at_offset_0", hex(from_zero));
    let (status, detail) = if at_offset.as_slice() == expected && expected != from_zero {
        (
            Status::Pass,
            format!("GET_CONFIG at offset {k} answers the bytes at {k}; {window_text}"),
        )
    } else if at_offset.as_slice() == expected {
        (
            Status::Skip,
            format!("cannot tell: the {window_text} reads the same at offsets 0 and {k}"),
        )
    } else if at_offset.as_slice() == from_zero {
        (
            Status::Warn,
            format!(
                "ignores GET_CONFIG's offset: asked for {n} bytes at offset {k}, it answered the bytes at offset 0 \
                 ({window_text}); QEMU and vmm read from offset 0 and slice, a frontend that asks at a field's offset reads wrong values"
            ),
        )
    } else {
        (
            Status::Warn,
            format!(
                "GET_CONFIG of {n} bytes at offset {k} answered bytes found neither at {k} nor at 0 in the window read just before"
            ),
        )
    };
    Check::new(TIER, "config-offset", status, detail).with_evidence(evidence)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answers(queue_num: Option<u64>, config: Option<ConfigReads>) -> Answers {
        let mut protocol = VhostUserProtocolFeatures::CONFIG;
        if queue_num.is_some() {
            protocol |= VhostUserProtocolFeatures::MQ;
        }
        Answers {
            features: 1 << 30 | 1 << 32,
            protocol: Some(protocol),
            queue_num,
            config,
        }
    }

    fn reads(window: &[u8], at_offset: &[u8]) -> ConfigReads {
        ConfigReads {
            window: window.len() as u32,
            at_zero: ConfigReply::Bytes(window.to_vec()),
            offset: super::super::preflight::second_offset(window.len() as u32),
            at_offset: Some(ConfigReply::Bytes(at_offset.to_vec())),
        }
    }

    fn asked(t: &str) -> Asked<'static> {
        Asked {
            device_type: t.parse().expect("type"),
            queue_sizes: None,
            config_size: None,
        }
    }

    fn find<'a>(checks: &'a [Check], name: &str) -> &'a Check {
        checks.iter().find(|c| c.name == name).expect("check")
    }

    const TAG: &[u8] = b"myfs\0\0\0\0";

    #[test]
    fn an_offset_honoured_passes_and_one_ignored_warns_with_the_bytes() {
        let fs = asked("fs");
        let honoured = answers(Some(2), Some(reads(TAG, &TAG[4..])));
        let (checks, _) = judge(&fs, Ok(&honoured), Duration::ZERO);
        let c = find(&checks, "config-offset");
        assert_eq!(c.status, Status::Pass, "{c:?}");

        let ignored = answers(Some(2), Some(reads(TAG, &TAG[..4])));
        let (checks, _) = judge(&fs, Ok(&ignored), Duration::ZERO);
        let c = find(&checks, "config-offset");
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert!(c.detail.contains("ignores GET_CONFIG's offset"), "{c:?}");
        assert_eq!(c.evidence.get("offset"), Some("4"));
        assert_eq!(c.evidence.get("expected"), Some("00000000"));
        assert_eq!(c.evidence.get("returned"), Some("6d796673"));

        // A short window is read again at offset 1.
        let short = answers(None, Some(reads(&[10, 11, 12, 13], &[10, 11, 12])));
        let (checks, _) = judge(&asked("60"), Ok(&short), Duration::ZERO);
        let c = find(&checks, "config-offset");
        assert_eq!(c.status, Status::Warn, "{c:?}");
        assert_eq!(c.evidence.get("expected"), Some("0b0c0d"));
        assert_eq!(c.evidence.get("returned"), Some("0a0b0c"));
    }

    #[test]
    fn what_cannot_be_told_or_was_refused_says_so() {
        let fs = asked("fs");
        let zeros = answers(None, Some(reads(&[0; 8], &[0; 4])));
        let (checks, _) = judge(&fs, Ok(&zeros), Duration::ZERO);
        assert_eq!(find(&checks, "config-offset").status, Status::Skip);

        let mut refused = reads(TAG, &[]);
        refused.at_zero = ConfigReply::Refused;
        let (checks, _) = judge(&fs, Ok(&answers(None, Some(refused))), Duration::ZERO);
        let c = find(&checks, "config-offset");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("at offset 0 refused"), "{c:?}");

        let (checks, plan) = judge(&fs, Err(&NoAnswers::UserSocket), Duration::ZERO);
        assert!(
            checks.iter().all(|c| c.status != Status::Fail),
            "{checks:?}"
        );
        assert_eq!(find(&checks, "config-offset").status, Status::Skip);
        // Issue 21, finding 12: never contacted, so no pass.
        assert_eq!(find(&checks, "queue-count").status, Status::Skip);
        assert_eq!(plan.queue_sizes, vec![256, 256]);
        assert_eq!(plan.config_size, None);

        let (checks, _) = judge(
            &fs,
            Err(&NoAnswers::Failed("no reply".into())),
            Duration::ZERO,
        );
        assert_eq!(find(&checks, "handshake").status, Status::Fail);
    }

    #[test]
    fn the_queue_count_comes_from_get_queue_num_capped_by_the_type() {
        // virtiofsd: 2 queues; a block backend offering 4 gets the usual 1.
        for (t, queue_num, count) in [
            ("fs", Some(2), 2),
            ("block", Some(4), 1),
            ("fs", Some(1), 2),
            ("vsock", None, 3),
            ("60", Some(2), 2),
            ("60", None, 2),
        ] {
            let (checks, plan) = judge(&asked(t), Ok(&answers(queue_num, None)), Duration::ZERO);
            assert_eq!(plan.queue_sizes.len(), count, "{t} {queue_num:?}");
            let c = find(&checks, "queue-count");
            assert!(c.detail.starts_with(&format!("{count} queue")), "{c:?}");
            assert!(c.detail.contains(" of 256: "), "{c:?}");
        }
        // Fewer than the type needs: the check says so and fails.
        let (checks, _) = judge(&asked("fs"), Ok(&answers(Some(1), None)), Duration::ZERO);
        let c = find(&checks, "queue-count");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(c.detail.contains("fs needs 2"), "{c:?}");
    }

    #[test]
    fn given_queue_sizes_are_checked_against_get_queue_num() {
        let sizes = [256, 256, 256];
        let mut a = asked("60");
        a.queue_sizes = Some(&sizes);
        let (checks, plan) = judge(&a, Ok(&answers(Some(2), None)), Duration::ZERO);
        assert_eq!(plan.queue_sizes, sizes);
        let c = find(&checks, "queue-count");
        assert_eq!(c.status, Status::Fail, "{c:?}");
        assert!(
            c.detail.contains("GET_QUEUE_NUM says the backend has 2"),
            "{c:?}"
        );
        let (checks, _) = judge(&a, Ok(&answers(Some(4), None)), Duration::ZERO);
        assert_eq!(find(&checks, "queue-count").status, Status::Pass);
    }

    #[test]
    fn the_window_follows_the_features_offered() {
        let blk = asked("block");
        // qemu-storage-daemon 7.2 offers DISCARD and WRITE_ZEROES only.
        let qsd = 0x1_7500_7e46;
        assert_eq!(blk.config_window(qsd), 60);
        let mut a = answers(Some(1), Some(reads(&[0; 60], &[0; 56])));
        a.features = qsd;
        let (_, plan) = judge(&blk, Ok(&a), Duration::ZERO);
        assert_eq!(plan.config_size, Some(60));
        let mut full = asked("block");
        full.config_size = Some(96);
        assert_eq!(full.config_window(qsd), 96);
        let (_, plan) = judge(&full, Ok(&a), Duration::ZERO);
        assert_eq!(plan.config_size, None, "the user's size stands");
    }
}
