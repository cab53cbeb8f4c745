//! Small helpers any room may use: a lock that survives a poisoned mutex,
//! and an error with its causes as one line.

use std::error::Error;
use std::sync::{Mutex, MutexGuard};

/// A device whose lock was poisoned by a panicking thread is still the best
/// state we have; the VM keeps running rather than panicking every vCPU.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// "outer: cause: root cause", the way the error's sources nest. A cause
/// whose text only repeats the level above (libraries that print their
/// source in their own message) is left out. Control characters (from a
/// path or a value the user gave) are escaped: the chain stays one line
/// and cannot drive the terminal.
pub fn error_chain(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut last = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let part = cause.to_string();
        if !last.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        last = part;
        source = cause.source();
    }
    escape_controls(&text, false)
}

/// `text` with its control characters as Rust escapes (`\u{1b}`, `\t`),
/// line breaks too unless `keep_newlines`.
pub fn escape_controls(text: &str, keep_newlines: bool) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && !(keep_newlines && c == '\n') {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// Bytes from pairs of hex digits (either case); `None` for an odd count
/// or anything else.
pub fn parse_hex(value: &str) -> Option<Vec<u8>> {
    fn nibble(digit: u8) -> Option<u8> {
        char::from(digit)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let pairs = value.as_bytes().chunks_exact(2);
    if !pairs.remainder().is_empty() {
        return None;
    }
    pairs
        .map(|pair| match pair {
            [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
            _ => None,
        })
        .collect()
}

/// Lower-case hex, two digits a byte: what `parse_hex` reads back.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes in a snapshot's JSON as one hex string, not an array of numbers
/// (`#[serde(with = "crate::util::hex_bytes")]`).
pub mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&super::to_hex(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_hex(&text)
            .ok_or_else(|| serde::de::Error::custom("not an even number of hex digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{text}")]
    struct Layer {
        text: &'static str,
        #[source]
        source: Option<Box<Layer>>,
    }

    fn chain(texts: &[&'static str]) -> Layer {
        texts
            .iter()
            .rev()
            .fold(None, |source, &text| {
                Some(Layer {
                    text,
                    source: source.map(Box::new),
                })
            })
            .unwrap()
    }

    #[test]
    fn causes_follow_in_order() {
        let e = chain(&["Failed to open /k", "No such file or directory"]);
        assert_eq!(
            error_chain(&e),
            "Failed to open /k: No such file or directory"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        let e = chain(&["Failed to open /tmp/\u{1b}[31mred\nx", "No such file"]);
        assert_eq!(
            error_chain(&e),
            "Failed to open /tmp/\\u{1b}[31mred\\nx: No such file"
        );
        assert_eq!(escape_controls("a\tb\nc\u{7f}", true), "a\\tb\nc\\u{7f}");
    }

    #[test]
    fn a_cause_repeating_its_parent_is_left_out() {
        let e = chain(&[
            "Bad header: Invalid magic",
            "Invalid magic",
            "Invalid magic",
        ]);
        assert_eq!(error_chain(&e), "Bad header: Invalid magic");
    }
}
