//! Cloud Hypervisor's option value syntax: `key=value,...` with quoting
//! and bracketed lists, split into pairs and checked against the keys an
//! option has. What the keys mean is the caller's business.

use std::num::ParseIntError;

use super::parse::OptionError;

/// What `split_options` and the error messages need to know of an option.
pub(super) struct OptionForm {
    pub name: &'static str,
    pub keys: &'static [&'static str],
    pub form: &'static str,
}

impl OptionForm {
    /// `problem` with the option's name and expected form around it.
    pub fn error(&self, problem: impl Into<String>) -> OptionError {
        OptionError::Syntax {
            option: self.name,
            problem: problem.into(),
            form: self.form,
        }
    }
}

impl OptionForm {
    /// Key `what`'s `value` is not what it should be: `expected`.
    pub fn invalid(
        &self,
        what: &'static str,
        value: &str,
        expected: &'static str,
        source: Option<ParseIntError>,
    ) -> OptionError {
        OptionError::InvalidValue {
            option: self.name,
            what,
            value: value.to_owned(),
            expected,
            source,
        }
    }
}

fn unbalanced_quote(form: &OptionForm, value: &str) -> OptionError {
    OptionError::Syntax {
        option: form.name,
        problem: format!("unbalanced quote in {value:?}"),
        form: "key=\"...\" with \"\" for a literal quote",
    }
}

fn unbalanced_bracket(form: &OptionForm, value: &str) -> OptionError {
    OptionError::Syntax {
        option: form.name,
        problem: format!("unbalanced bracket in {value:?}"),
        form: "a list such as key=[1,2]",
    }
}

/// One option's pairs, each key known and given once.
pub(super) struct Options<'a> {
    form: &'a OptionForm,
    pairs: Vec<(String, String)>,
}

impl<'a> Options<'a> {
    pub fn parse(form: &'a OptionForm, value: &str) -> Result<Self, OptionError> {
        let pairs = split_options(form, value)?;
        for (i, (key, _)) in pairs.iter().enumerate() {
            if !form.keys.contains(&key.as_str()) {
                return Err(form.error(format!("unknown key {key:?}")));
            }
            if pairs.iter().take(i).any(|(earlier, _)| earlier == key) {
                return Err(form.error(format!("{key}= is given twice")));
            }
        }
        Ok(Self { form, pairs })
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn require(&self, key: &'static str) -> Result<&str, OptionError> {
        self.get(key).ok_or_else(|| self.missing(key))
    }

    pub fn missing(&self, key: &'static str) -> OptionError {
        self.form.error(format!("missing {key}="))
    }

    /// What Cloud Hypervisor's toggles take: `on`, `off`, `true`, `false`
    /// in any case (an empty value, which it takes for off, is refused
    /// with every other empty value).
    pub fn toggle(&self, key: &'static str) -> Result<Option<bool>, OptionError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        match value.to_ascii_lowercase().as_str() {
            "on" | "true" => Ok(Some(true)),
            "off" | "false" => Ok(Some(false)),
            _ => Err(self
                .form
                .invalid(key, value, "on, off, true or false", None)),
        }
    }
}

/// Splits Cloud Hypervisor option syntax into `(key, value)` pairs, in order.
///
/// Pairs are separated by commas. A value may be double-quoted, wholly or
/// in part, to hold commas, `=` or spaces; inside quotes `""` is one literal
/// quote. Brackets group a list whose commas stay in the value
/// (`queue_sizes=[1,2]` gives the value `[1,2]`). Keys are ASCII letters,
/// digits, `_` and `-`. Empty values, empty items and unbalanced quotes or
/// brackets are errors; which keys are allowed is the caller's business.
pub(super) fn split_options(
    form: &OptionForm,
    value: &str,
) -> Result<Vec<(String, String)>, OptionError> {
    if value.is_empty() {
        return Err(form.error("empty value"));
    }
    let mut pairs = Vec::new();
    let mut item_start = 0;
    let mut key = String::new();
    // `None` until the item's first `=`.
    let mut val: Option<String> = None;
    let mut quoted = false;
    let mut depth = 0usize;
    let mut chars = value.char_indices().peekable();
    loop {
        let next = chars.next();
        let (end, c) = match next {
            Some((_, c)) if c != ',' || quoted || depth > 0 => (None, c),
            Some((i, _)) => (Some(i), ','),
            None if quoted => return Err(unbalanced_quote(form, value)),
            None if depth > 0 => return Err(unbalanced_bracket(form, value)),
            None => (Some(value.len()), ','),
        };
        if let Some(end) = end {
            // A top-level comma or the end of the value ends an item.
            let item = value.get(item_start..end).unwrap_or_default();
            pairs.push(finish_item(form, value, item, &mut key, val.take())?);
            if next.is_none() {
                return Ok(pairs);
            }
            item_start = end + 1;
            continue;
        }
        let Some(val) = val.as_mut() else {
            if c == '=' {
                val = Some(String::new());
            } else {
                key.push(c);
            }
            continue;
        };
        if quoted {
            if c != '"' {
                val.push(c);
            } else if chars.next_if(|&(_, c)| c == '"').is_some() {
                val.push('"');
            } else {
                quoted = false;
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '[' => {
                depth += 1;
                val.push(c);
            }
            ']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| unbalanced_bracket(form, value))?;
                val.push(c);
            }
            _ => val.push(c),
        }
    }
}

fn finish_item(
    form: &OptionForm,
    value: &str,
    item: &str,
    key: &mut String,
    val: Option<String>,
) -> Result<(String, String), OptionError> {
    let key = std::mem::take(key);
    if item.is_empty() {
        return Err(form.error(format!("empty item (a stray comma) in {value:?}")));
    }
    let valid_key = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let Some(val) = val.filter(|_| valid_key) else {
        return Err(form.error(format!("{item:?} is not key=value")));
    };
    if val.is_empty() {
        return Err(form.error(format!("{key}= has an empty value")));
    }
    Ok((key, val))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const FORM: OptionForm = OptionForm {
        name: "--test",
        keys: &["a", "b", "b_c", "d-e"],
        form: "a=...",
    };

    fn split(value: &str) -> Result<Vec<(String, String)>, OptionError> {
        split_options(&FORM, value)
    }

    #[rstest]
    #[case("a=1", &[("a", "1")])]
    #[case("a=1,b_c=2,d-e=3", &[("a", "1"), ("b_c", "2"), ("d-e", "3")])]
    #[case("a=\"x,y\",b=[1,2]", &[("a", "x,y"), ("b", "[1,2]")])]
    #[case("a=[1,[2,3]],b=4", &[("a", "[1,[2,3]]"), ("b", "4")])]
    #[case("a=\"[\",b=\"]\"", &[("a", "["), ("b", "]")])]
    #[case("a=b=c", &[("a", "b=c")])]
    #[case("a=\"\"\"\"", &[("a", "\"")])]
    #[case("a=x\"\"y", &[("a", "xy")])]
    #[case("a=\" \"", &[("a", " ")])]
    #[case("a=1,a=2", &[("a", "1"), ("a", "2")])]
    fn splits(#[case] value: &str, #[case] pairs: &[(&str, &str)]) {
        let expected: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(split(value).expect("splits"), expected);
    }

    #[rstest]
    #[case("", "empty value")]
    #[case(",a=1", "empty item")]
    #[case("a=1,,b=2", "empty item")]
    #[case("a=1,", "empty item")]
    #[case("a", "\"a\" is not key=value")]
    #[case("=1", "\"=1\" is not key=value")]
    #[case("a b=1", "\"a b=1\" is not key=value")]
    #[case("\"a\"=1", "is not key=value")]
    #[case("a=", "a= has an empty value")]
    #[case("a=\"\"", "a= has an empty value")]
    #[case("a=]", "unbalanced bracket")]
    #[case("a=[", "unbalanced bracket")]
    #[case("a=[1,b=2", "unbalanced bracket")]
    #[case("a=\"", "unbalanced quote")]
    #[case("a=\"x\"\"", "unbalanced quote")]
    fn split_refuses(#[case] value: &str, #[case] message: &str) {
        let err = split(value).expect_err("refused");
        assert!(err.to_string().contains(message), "{err}");
    }
}
