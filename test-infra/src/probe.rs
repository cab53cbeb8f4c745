//! The probe guest's serial records (`probe: KIND [POSITIONAL] key=value
//! key="quoted value" ...`) as typed values.

use std::collections::BTreeMap;

pub const PREFIX: &str = "probe: ";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The first word: `boot`, `pci`, `virtio`, `fs.read`, `result`, ...
    pub kind: String,
    /// Words without `=`, in order (e.g. the PCI address).
    pub positional: Vec<String>,
    pub fields: BTreeMap<String, String>,
}

impl Record {
    /// Parses one serial line; None if it is not a probe record.
    pub fn parse(line: &str) -> Option<Record> {
        Record::parse_prefixed(PREFIX, line)
    }

    /// Parses a line in the probe's record syntax behind another prefix
    /// (`linux: `, `scenario: `): the Linux tier reports the same way.
    pub fn parse_prefixed(prefix: &str, line: &str) -> Option<Record> {
        let rest = line.trim_end_matches(['\r', '\n']).strip_prefix(prefix)?;
        let mut words = split_words(rest).into_iter();
        let first = words.next()?;
        // `result=pass` is a record whose kind carries a value.
        let (kind, mut fields) = match first.split_once('=') {
            Some((k, v)) => (
                k.to_string(),
                BTreeMap::from([(k.to_string(), v.to_string())]),
            ),
            None => (first, BTreeMap::new()),
        };
        let mut positional = Vec::new();
        for word in words {
            match word.split_once('=') {
                Some((k, v)) => {
                    fields.insert(k.to_string(), v.to_string());
                }
                None => positional.push(word),
            }
        }
        Some(Record {
            kind,
            positional,
            fields,
        })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields.get(key).map(String::as_str)
    }

    /// A numeric field, decimal or 0x-prefixed hex.
    pub fn number(&self, key: &str) -> Option<u64> {
        let v = self.get(key)?;
        match v.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => v.parse().ok(),
        }
    }
}

/// Splits on spaces outside double quotes; quotes are removed and `\"`,
/// `\\` unescaped.
fn split_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_quotes = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => in_quotes = !in_quotes,
            '\\' if in_quotes => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
            }
            ' ' if !in_quotes => {
                if !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        words.push(word);
    }
    words
}

/// Everything one guest run printed.
#[derive(Debug, Clone, Default)]
pub struct ProbeReport {
    pub records: Vec<Record>,
}

impl ProbeReport {
    pub fn parse(serial: &str) -> ProbeReport {
        ProbeReport::parse_prefixed(PREFIX, serial)
    }

    /// The records behind `prefix` (see [`Record::parse_prefixed`]).
    pub fn parse_prefixed(prefix: &str, serial: &str) -> ProbeReport {
        ProbeReport {
            records: serial
                .lines()
                .filter_map(|line| Record::parse_prefixed(prefix, line))
                .collect(),
        }
    }

    pub fn all<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(move |r| r.kind == kind)
    }

    pub fn first(&self, kind: &str) -> Option<&Record> {
        self.records.iter().find(|r| r.kind == kind)
    }

    /// The first record of `kind` whose first positional word is `word`:
    /// a device's (`pci 00:01.0 ...`) or a sub-record (`fs read ...`).
    pub fn first_at(&self, kind: &str, word: &str) -> Option<&Record> {
        self.records
            .iter()
            .find(|r| r.kind == kind && r.positional.first().map(String::as_str) == Some(word))
    }

    /// `Some(Ok(()))` for `result=pass`, `Some(Err(reason))` for a failure,
    /// None if the guest never reported a result.
    pub fn result(&self) -> Option<Result<(), String>> {
        let r = self.records.iter().rev().find(|r| r.kind == "result")?;
        Some(match r.get("result") {
            Some("pass") => Ok(()),
            _ => Err(r.get("reason").unwrap_or("no reason given").to_string()),
        })
    }

    pub fn passed(&self) -> bool {
        matches!(self.result(), Some(Ok(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_boot_record_with_quoted_cmdline() {
        let r = Record::parse(
            r#"probe: boot cmdline="probe.run=boot x=\"y z\"" mem_bytes=536870912 cpus=2 ecam=0xe0000000"#,
        )
        .unwrap();
        assert_eq!(r.kind, "boot");
        assert_eq!(r.get("cmdline"), Some(r#"probe.run=boot x="y z""#));
        assert_eq!(r.number("mem_bytes"), Some(536870912));
        assert_eq!(r.number("ecam"), Some(0xe000_0000));
    }

    #[test]
    fn parses_positional_pci_address() {
        let r = Record::parse("probe: pci 00:02.0 vendor=1af4 device=105a class=0x018000 msix=3")
            .unwrap();
        assert_eq!(r.positional, vec!["00:02.0"]);
        assert_eq!(r.get("vendor"), Some("1af4"));
    }

    #[test]
    fn result_pass_and_fail() {
        let report = ProbeReport::parse("noise\nprobe: result=pass\n");
        assert!(report.passed());
        let report = ProbeReport::parse("probe: result=fail reason=\"no host bridge\"\r\n");
        assert_eq!(report.result(), Some(Err("no host bridge".into())));
        assert_eq!(ProbeReport::parse("probe: boot\n").result(), None);
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(Record::parse("[    0.000000] Linux version"), None);
        assert_eq!(Record::parse("probe: "), None);
    }
}
