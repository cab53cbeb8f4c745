//! Scripted faults: the `--fault WHEN:WHAT` grammar, and the counters that
//! decide when one fires.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::Duration;

/// vhost-user request codes and names (the frontend's requests).
pub const REQUESTS: &[(u32, &str)] = &[
    (1, "GET_FEATURES"),
    (2, "SET_FEATURES"),
    (3, "SET_OWNER"),
    (4, "RESET_OWNER"),
    (5, "SET_MEM_TABLE"),
    (6, "SET_LOG_BASE"),
    (7, "SET_LOG_FD"),
    (8, "SET_VRING_NUM"),
    (9, "SET_VRING_ADDR"),
    (10, "SET_VRING_BASE"),
    (11, "GET_VRING_BASE"),
    (12, "SET_VRING_KICK"),
    (13, "SET_VRING_CALL"),
    (14, "SET_VRING_ERR"),
    (15, "GET_PROTOCOL_FEATURES"),
    (16, "SET_PROTOCOL_FEATURES"),
    (17, "GET_QUEUE_NUM"),
    (18, "SET_VRING_ENABLE"),
    (19, "SEND_RARP"),
    (20, "NET_SET_MTU"),
    (21, "SET_BACKEND_REQ_FD"),
    (22, "IOTLB_MSG"),
    (23, "SET_VRING_ENDIAN"),
    (24, "GET_CONFIG"),
    (25, "SET_CONFIG"),
    (26, "CREATE_CRYPTO_SESSION"),
    (27, "CLOSE_CRYPTO_SESSION"),
    (28, "POSTCOPY_ADVISE"),
    (29, "POSTCOPY_LISTEN"),
    (30, "POSTCOPY_END"),
    (31, "GET_INFLIGHT_FD"),
    (32, "SET_INFLIGHT_FD"),
    (33, "GPU_SET_SOCKET"),
    (34, "RESET_DEVICE"),
    (35, "VRING_KICK"),
    (36, "GET_MAX_MEM_SLOTS"),
    (37, "ADD_MEM_REG"),
    (38, "REM_MEM_REG"),
    (39, "SET_STATUS"),
    (40, "GET_STATUS"),
    (41, "GET_SHARED_OBJECT"),
    (42, "SET_DEVICE_STATE_FD"),
    (43, "CHECK_DEVICE_STATE"),
];

pub const GET_CONFIG: u32 = 24;
pub const SET_CONFIG: u32 = 25;

pub fn request_name(code: u32) -> Option<&'static str> {
    REQUESTS.iter().find(|(c, _)| *c == code).map(|(_, n)| *n)
}

fn request_code(name: &str) -> Option<u32> {
    let name = name.to_ascii_uppercase();
    let name = name.strip_prefix("VHOST_USER_").unwrap_or(&name);
    REQUESTS.iter().find(|(_, n)| *n == name).map(|(c, _)| *c)
}

/// Requests whose reply is theirs whatever the flags say.
pub fn always_replies(code: u32) -> bool {
    matches!(
        code,
        1 | 11 | 15 | 17 | 24 | 26 | 28 | 31 | 36 | 40 | 41 | 42 | 43
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum When {
    Any,
    Request(u32),
    /// A buffer the echo device finished.
    Buffer,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum What {
    Error,
    Short,
    Long,
    Delay(Duration),
    Drop,
    Close,
    CloseAfter,
    Crash,
    CrashAfter,
    WrongCode,
    BadSize,
    Truncate,
    /// Attach this many unexpected file descriptors to the reply (1 to
    /// [`MAX_EXTRA_FDS`]): past 32 the vhost crate's frontend loses the
    /// reply's bytes along with the descriptors.
    ExtraFd(usize),
    Garbage,
}

/// The kernel's limit on descriptors in one message (SCM_MAX_FD).
pub const MAX_EXTRA_FDS: usize = 253;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub when: When,
    /// Only the Nth occurrence (from 1); every one without.
    pub nth: Option<u64>,
    pub what: What,
    spec: String,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.spec)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    #[error("fault {0:?}: expected WHEN:WHAT, e.g. GET_CONFIG#2:error")]
    Form(String),
    #[error(
        "fault {0:?}: WHEN must be `any`, `buffer` or a vhost-user request name such as GET_CONFIG"
    )]
    When(String),
    #[error("fault {0:?}: #N must be a number from 1")]
    Nth(String),
    #[error("fault {0:?}: WHAT must be one of error, short, long, delay=MS, drop, close, close-after, crash, crash-after, wrong-code, bad-size, truncate, extra-fd[=N], garbage")]
    What(String),
    #[error("fault {0:?}: extra-fd=N takes 1 to 253 descriptors (the most one message carries)")]
    ExtraFds(String),
    #[error("fault {0:?}: `error` needs a request with a failure reply: GET_CONFIG, or a SET_* request (answered with a failing REPLY_ACK)")]
    NoErrorForm(String),
    #[error("fault {0:?}: a buffer can only `close` or `crash` the connection, or `delay=MS` it")]
    Buffer(String),
}

impl FromStr for Fault {
    type Err = FaultError;

    fn from_str(spec: &str) -> Result<Fault, FaultError> {
        let bad = |f: fn(String) -> FaultError| f(spec.to_string());
        let (when, what) = spec.split_once(':').ok_or_else(|| bad(FaultError::Form))?;
        let (when, nth) = match when.split_once('#') {
            Some((w, n)) => {
                let n: u64 = n.parse().map_err(|_| bad(FaultError::Nth))?;
                if n == 0 {
                    return Err(bad(FaultError::Nth));
                }
                (w, Some(n))
            }
            None => (when, None),
        };
        let when = match when.to_ascii_lowercase().as_str() {
            "any" => When::Any,
            "buffer" => When::Buffer,
            _ => When::Request(request_code(when).ok_or_else(|| bad(FaultError::When))?),
        };
        let what = match what {
            "error" => What::Error,
            "short" => What::Short,
            "long" => What::Long,
            "drop" => What::Drop,
            "close" => What::Close,
            "close-after" => What::CloseAfter,
            "crash" => What::Crash,
            "crash-after" => What::CrashAfter,
            "wrong-code" => What::WrongCode,
            "bad-size" => What::BadSize,
            "truncate" => What::Truncate,
            "extra-fd" => What::ExtraFd(1),
            "garbage" => What::Garbage,
            other => {
                if let Some(n) = other.strip_prefix("extra-fd=") {
                    match n.parse::<usize>() {
                        Ok(n) if (1..=MAX_EXTRA_FDS).contains(&n) => What::ExtraFd(n),
                        _ => return Err(bad(FaultError::ExtraFds)),
                    }
                } else {
                    match other.strip_prefix("delay=").map(str::parse::<u64>) {
                        Some(Ok(ms)) => What::Delay(Duration::from_millis(ms)),
                        _ => return Err(bad(FaultError::What)),
                    }
                }
            }
        };
        if what == What::Error {
            let has_error_form = match when {
                When::Request(code) => {
                    code == GET_CONFIG || request_name(code).is_some_and(|n| n.starts_with("SET_"))
                }
                _ => false,
            };
            if !has_error_form {
                return Err(bad(FaultError::NoErrorForm));
            }
        }
        if when == When::Buffer
            && !matches!(
                what,
                What::Close | What::CloseAfter | What::Crash | What::CrashAfter | What::Delay(_)
            )
        {
            return Err(bad(FaultError::Buffer));
        }
        Ok(Fault {
            when,
            nth,
            what,
            spec: spec.to_string(),
        })
    }
}

/// The faults and how often each kind of event has happened, over the
/// whole life of the process (across reconnects).
#[derive(Debug, Default)]
pub struct Faults {
    faults: Vec<Fault>,
    counts: Mutex<HashMap<When, u64>>,
}

impl Faults {
    pub fn new(faults: Vec<Fault>) -> Faults {
        Faults {
            faults,
            counts: Mutex::new(HashMap::new()),
        }
    }

    fn bump(&self, when: When) -> u64 {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let n = counts.entry(when).or_insert(0);
        *n += 1;
        *n
    }

    /// Counts the event and returns the first fault that fires on it.
    fn fire(&self, event: When, any: Option<u64>) -> Option<&Fault> {
        let n = self.bump(event);
        let fault = self.faults.iter().find(|f| {
            let count = match f.when {
                When::Any => any,
                w if w == event => Some(n),
                _ => None,
            };
            count.is_some_and(|c| f.nth.is_none_or(|nth| nth == c))
        })?;
        let name = match event {
            When::Request(code) => request_name(code).unwrap_or("UNKNOWN"),
            When::Buffer => "buffer",
            When::Any => "any",
        };
        log::info!("fault: {fault} fired on {name} #{n}");
        Some(fault)
    }

    /// A request arrived.
    pub fn on_request(&self, code: u32) -> Option<&Fault> {
        let any = self.bump(When::Any);
        self.fire(When::Request(code), Some(any))
    }

    /// The echo device finished a buffer.
    pub fn on_buffer(&self) -> Option<&Fault> {
        self.fire(When::Buffer, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        let f: Fault = "GET_CONFIG#2:error".parse().unwrap();
        assert_eq!(f.when, When::Request(GET_CONFIG));
        assert_eq!(f.nth, Some(2));
        assert_eq!(f.what, What::Error);
        let f: Fault = "any#20:close".parse().unwrap();
        assert_eq!((f.when, f.nth, f.what), (When::Any, Some(20), What::Close));
        let f: Fault = "get_features:delay=5000".parse().unwrap();
        assert_eq!(f.what, What::Delay(Duration::from_secs(5)));
        let f: Fault = "buffer#3:crash".parse().unwrap();
        assert_eq!(f.when, When::Buffer);
        let f: Fault = "VHOST_USER_SET_VRING_KICK:close-after".parse().unwrap();
        assert_eq!(f.when, When::Request(12));
    }

    #[test]
    fn refuses_what_cannot_be_done() {
        for spec in [
            "GET_CONFIG",
            "NOPE:error",
            "GET_CONFIG#0:error",
            "GET_CONFIG#x:error",
            "GET_CONFIG:explode",
            "GET_FEATURES:error",
            "any:error",
            "buffer:short",
            "GET_CONFIG:delay=soon",
        ] {
            assert!(spec.parse::<Fault>().is_err(), "{spec}");
        }
    }

    #[test]
    fn the_nth_occurrence_fires_once_and_any_counts_everything() {
        let faults = Faults::new(vec![
            "GET_CONFIG#2:error".parse().unwrap(),
            "any#5:close".parse().unwrap(),
        ]);
        assert!(faults.on_request(GET_CONFIG).is_none()); // any 1, GET_CONFIG 1
        assert_eq!(
            faults.on_request(GET_CONFIG).map(|f| f.what),
            Some(What::Error)
        ); // any 2
        assert!(faults.on_request(GET_CONFIG).is_none()); // any 3
        assert!(faults.on_request(1).is_none()); // any 4
        assert_eq!(faults.on_request(1).map(|f| f.what), Some(What::Close)); // any 5
        assert!(faults.on_request(1).is_none());
    }

    #[test]
    fn without_nth_every_occurrence_fires() {
        let faults = Faults::new(vec!["buffer:close".parse().unwrap()]);
        assert!(faults.on_buffer().is_some());
        assert!(faults.on_buffer().is_some());
        assert!(faults.on_request(GET_CONFIG).is_none());
    }

    proptest! {
        #[test]
        fn random_specs_never_panic(spec in ".{0,40}") {
            let _ = spec.parse::<Fault>();
        }

        #[test]
        fn random_well_formed_specs_parse_or_explain(
            when in "(any|buffer|GET_CONFIG|SET_CONFIG|GET_FEATURES|set_vring_kick|BOGUS)",
            nth in proptest::option::of(0u64..5),
            what in "(error|short|long|delay=[0-9]{1,4}|drop|close|close-after|crash|crash-after|wrong-code|bad-size|truncate|extra-fd|extra-fd=[0-9]{1,3}|garbage|nonsense)",
        ) {
            let spec = match nth {
                Some(n) => format!("{when}#{n}:{what}"),
                None => format!("{when}:{what}"),
            };
            match spec.parse::<Fault>() {
                Ok(f) => prop_assert_eq!(f.to_string(), spec),
                Err(e) => prop_assert!(e.to_string().contains(&spec)),
            }
        }
    }
}
