//! Label selectors in Kubernetes syntax, over a node's labels and tags.
//!
//! `gpu,region in (eu,us),tier!=edge,!spot` is four requirements, all of
//! which must hold. A node is seen as its labels plus, for every tag that is
//! not also a label key, that tag with the value `"true"`; a key "exists"
//! when it is there with a value other than `"false"` (so `gpu` matches the
//! tag `gpu`, the label `gpu=true`, but not `gpu=false`).
//!
//! | form | holds when |
//! |---|---|
//! | `k` | k exists |
//! | `!k` | k does not exist |
//! | `k=v`, `k==v` | k has value v |
//! | `k!=v` | k does not have value v (absent counts) |
//! | `k in (a,b)` | k has one of the values |
//! | `k notin (a,b)` | k has none of the values (absent counts) |
//! | `k>n`, `k<n` | k's value is an integer above (below) the integer n |
//!
//! It follows Kubernetes' label selectors (apimachinery `pkg/labels`, whose
//! parser test cases `selector/tests/kubernetes.rs` runs): values may be
//! empty (`x=`, `x in ()`, `x in (a,)`), are at most 63 characters, and
//! `>`/`<` compare integers like node affinity's `Gt`/`Lt`. Where it
//! differs, on purpose:
//! - values may hold `:` and `/` (model names: `model=qwen3:8b`) and may
//!   begin or end with `-`, `_` or `.` (whatever a node registered);
//! - a key is a label key as registration accepts it (1 to 63 of
//!   `A-Z a-z 0-9 . _ / -`, starting alphanumeric) or a Kubernetes qualified
//!   name (a DNS prefix of up to 253, `/`, a name of up to 63);
//! - a key exists only when its value is not `"false"`, and a tag counts as
//!   the label `<tag>=true` (see above).

use std::collections::BTreeMap;
use std::fmt;

/// Longest selector accepted, in bytes.
pub const MAX_SELECTOR_LEN: usize = 4096;
/// Longest value in a selector, as in Kubernetes.
pub const MAX_SELECTOR_VALUE_LEN: usize = 63;

/// One requirement of a selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    /// The key exists (and is not `"false"`).
    Exists(String),
    /// The key does not exist.
    NotExists(String),
    /// The key has this value.
    Equals(String, String),
    /// The key does not have this value.
    NotEquals(String, String),
    /// The key has one of these values.
    In(String, Vec<String>),
    /// The key has none of these values.
    NotIn(String, Vec<String>),
    /// The key's value is an integer above this one.
    GreaterThan(String, i64),
    /// The key's value is an integer below this one.
    LessThan(String, i64),
}

/// A parsed selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// The requirements, in the order written.
    pub requirements: Vec<Requirement>,
}

/// Why a selector does not parse: where, and what was expected there.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("selector: at position {position}: expected {expected}, found {found}")]
pub struct SelectorError {
    /// Byte offset of the problem, from 0.
    pub position: usize,
    /// What would have been valid there.
    pub expected: String,
    /// What was there instead.
    pub found: String,
}

/// The value a node has for `key` in selector terms: its label, else
/// `"true"` for a tag of that name.
pub fn lookup<'a>(
    labels: &'a BTreeMap<String, String>,
    tags: &[String],
    key: &str,
) -> Option<&'a str> {
    match labels.get(key) {
        Some(v) => Some(v.as_str()),
        None if tags.iter().any(|t| t == key) => Some("true"),
        None => None,
    }
}

impl Requirement {
    /// The key this requirement is about.
    pub fn key(&self) -> &str {
        match self {
            Self::Exists(k) | Self::NotExists(k) => k,
            Self::Equals(k, _) | Self::NotEquals(k, _) | Self::In(k, _) | Self::NotIn(k, _) => k,
            Self::GreaterThan(k, _) | Self::LessThan(k, _) => k,
        }
    }

    /// Whether a node with these labels and tags satisfies it.
    pub fn matches(&self, labels: &BTreeMap<String, String>, tags: &[String]) -> bool {
        let value = lookup(labels, tags, self.key());
        match self {
            Self::Exists(_) => value.is_some_and(|v| v != "false"),
            Self::NotExists(_) => value.is_none_or(|v| v == "false"),
            Self::Equals(_, want) => value == Some(want.as_str()),
            Self::NotEquals(_, want) => value != Some(want.as_str()),
            Self::In(_, set) => value.is_some_and(|v| set.iter().any(|s| s == v)),
            Self::NotIn(_, set) => value.is_none_or(|v| !set.iter().any(|s| s == v)),
            Self::GreaterThan(_, n) => value.and_then(integer).is_some_and(|v| v > *n),
            Self::LessThan(_, n) => value.and_then(integer).is_some_and(|v| v < *n),
        }
    }

    /// Whether a label value satisfies a numeric requirement (`>`, `<`);
    /// `None` for the other kinds. For an index over values.
    pub fn compares(&self, value: &str) -> Option<bool> {
        match self {
            Self::GreaterThan(_, n) => Some(integer(value).is_some_and(|v| v > *n)),
            Self::LessThan(_, n) => Some(integer(value).is_some_and(|v| v < *n)),
            _ => None,
        }
    }
}

/// A label value as an integer, as Kubernetes reads it for `Gt`/`Lt`.
pub fn integer(value: &str) -> Option<i64> {
    value.parse().ok()
}

impl Selector {
    /// Whether a node with these labels and tags satisfies every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>, tags: &[String]) -> bool {
        self.requirements.iter().all(|r| r.matches(labels, tags))
    }

    /// Parses the Kubernetes label-selector syntax. An empty (or blank)
    /// selector has no requirement and matches every node.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        if text.len() > MAX_SELECTOR_LEN {
            return Err(SelectorError {
                position: MAX_SELECTOR_LEN,
                expected: format!("at most {MAX_SELECTOR_LEN} bytes"),
                found: format!("{} bytes", text.len()),
            });
        }
        let mut parser = Parser { text, pos: 0 };
        let mut requirements = Vec::new();
        parser.skip_spaces();
        if parser.at_end() {
            return Ok(Self::default());
        }
        loop {
            requirements.push(parser.requirement()?);
            parser.skip_spaces();
            if parser.at_end() {
                break;
            }
            parser.expect_char(',', "',' between requirements or the end")?;
        }
        Ok(Self { requirements })
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::NotExists(k) => write!(f, "!{k}")?,
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::GreaterThan(k, n) => write!(f, "{k}>{n}")?,
                Requirement::LessThan(k, n) => write!(f, "{k}<{n}")?,
            }
        }
        Ok(())
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-')
}

fn is_value_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-' | ':')
}

impl<'a> Parser<'a> {
    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn found(&self) -> String {
        match self.peek() {
            None => "the end".to_owned(),
            Some(_) => {
                let word: String = self.rest().chars().take(12).collect();
                format!("{word:?}")
            }
        }
    }

    fn error(&self, expected: &str) -> SelectorError {
        SelectorError {
            position: self.pos,
            expected: expected.to_owned(),
            found: self.found(),
        }
    }

    fn skip_spaces(&mut self) {
        while let Some(c) = self.peek() {
            if !c.is_whitespace() {
                break;
            }
            self.pos += c.len_utf8();
        }
    }

    fn expect_char(&mut self, want: char, expected: &str) -> Result<(), SelectorError> {
        self.skip_spaces();
        if self.peek() == Some(want) {
            self.pos += want.len_utf8();
            Ok(())
        } else {
            Err(self.error(expected))
        }
    }

    fn word(&mut self, allowed: fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek() {
            if !allowed(c) {
                break;
            }
            self.pos += c.len_utf8();
        }
        &self.text[start..self.pos]
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        self.skip_spaces();
        let start = self.pos;
        let key = self.word(is_key_char).to_owned();
        if key.is_empty() || !key.starts_with(|c: char| c.is_ascii_alphanumeric()) {
            self.pos = start;
            return Err(self.error(
                "a label or tag key (letters, digits, . _ / -, starting with a letter or digit)",
            ));
        }
        if !crate::validate::is_label_key(&key) {
            self.pos = start;
            return Err(self.error(
                "a key of at most 63 characters, or a DNS prefix of at most 253, '/' and a name of at most 63",
            ));
        }
        Ok(key)
    }

    /// A value, possibly empty (`x=`, `x in (a,)`), as Kubernetes allows.
    fn value(&mut self) -> Result<String, SelectorError> {
        self.skip_spaces();
        let start = self.pos;
        let value = self.word(is_value_char).to_owned();
        if value.is_empty() && !matches!(self.peek(), None | Some(',' | ')')) {
            return Err(self.error("a value (letters, digits, . _ / - :)"));
        }
        if value.len() > MAX_SELECTOR_VALUE_LEN {
            self.pos = start;
            return Err(self.error("a value of at most 63 characters"));
        }
        Ok(value)
    }

    /// The integer after `>` or `<`.
    fn integer(&mut self) -> Result<i64, SelectorError> {
        self.skip_spaces();
        let start = self.pos;
        let word = self.word(is_value_char);
        match integer(word) {
            Some(n) => Ok(n),
            None => {
                self.pos = start;
                Err(self.error("an integer after '>' or '<'"))
            }
        }
    }

    /// `(` value {`,` value} `)`
    fn value_set(&mut self) -> Result<Vec<String>, SelectorError> {
        self.expect_char('(', "'(' opening the list of values")?;
        let mut values = vec![self.value()?];
        loop {
            self.skip_spaces();
            match self.peek() {
                Some(',') => {
                    self.pos += 1;
                    values.push(self.value()?);
                }
                Some(')') => {
                    self.pos += 1;
                    return Ok(values);
                }
                _ => return Err(self.error("',' or ')' in the list of values")),
            }
        }
    }

    /// Is the next word exactly `word` (followed by a non-key character)?
    fn keyword(&mut self, word: &str) -> bool {
        let rest = self.rest();
        let matches = rest.starts_with(word)
            && rest[word.len()..]
                .chars()
                .next()
                .is_none_or(|c| !is_key_char(c));
        if matches {
            self.pos += word.len();
        }
        matches
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        self.skip_spaces();
        if self.peek() == Some('!') {
            self.pos += 1;
            return Ok(Requirement::NotExists(self.key()?));
        }
        let key = self.key()?;
        self.skip_spaces();
        let rest = self.rest();
        if rest.starts_with("==") {
            self.pos += 2;
            Ok(Requirement::Equals(key, self.value()?))
        } else if rest.starts_with("!=") {
            self.pos += 2;
            Ok(Requirement::NotEquals(key, self.value()?))
        } else if rest.starts_with('=') {
            self.pos += 1;
            Ok(Requirement::Equals(key, self.value()?))
        } else if rest.starts_with('>') {
            self.pos += 1;
            Ok(Requirement::GreaterThan(key, self.integer()?))
        } else if rest.starts_with('<') {
            self.pos += 1;
            Ok(Requirement::LessThan(key, self.integer()?))
        } else if self.keyword("notin") {
            Ok(Requirement::NotIn(key, self.value_set()?))
        } else if self.keyword("in") {
            Ok(Requirement::In(key, self.value_set()?))
        } else if rest.is_empty() || rest.starts_with(',') {
            Ok(Requirement::Exists(key))
        } else {
            Err(self.error("'=', '==', '!=', '>', '<', 'in', 'notin', ',' or the end"))
        }
    }
}

#[cfg(test)]
mod tests;
