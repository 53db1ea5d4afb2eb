//! Serde helpers for the JSON forms the contract allows.

use serde::{Deserialize, Deserializer};

/// Accepts a JSON string or a list of strings (discovery's `capability`).
pub fn one_or_many<'de, D>(deserializer: D) -> Result<Vec<String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    match Option::<OneOrMany>::deserialize(deserializer)? {
        None => Ok(Vec::new()),
        Some(OneOrMany::One(one)) => Ok(vec![one]),
        Some(OneOrMany::Many(many)) => Ok(many),
    }
}

/// Reads a JSON value from bytes, borrowing its plain strings: the bytes
/// are checked as UTF-8 once, then read as text (serde_json reading bytes
/// checks each string apart: a fifth slower on a node record, which has
/// about eighty). Bytes that are not UTF-8 are read as bytes, for the error
/// that says where.
pub fn from_bytes<'a, T: Deserialize<'a>>(value: &'a [u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(value) {
        Ok(text) => serde_json::from_str(text),
        Err(_) => serde_json::from_slice(value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_text_read_as_bytes_do() {
        let value = "{\"node_id\":\"a\",\"labels\":{\"k\":\"v\\\"ä\"}}".as_bytes();
        let text: crate::NodeRecord = from_bytes(value).expect("valid");
        let bytes: crate::NodeRecord = serde_json::from_slice(value).expect("valid");
        assert_eq!(text, bytes);
        let broken = b"{\"node_id\":\"\xff\"}";
        let error = from_bytes::<crate::NodeRecord>(broken).expect_err("not UTF-8");
        assert_eq!(
            error.to_string(),
            serde_json::from_slice::<crate::NodeRecord>(broken)
                .expect_err("not UTF-8")
                .to_string()
        );
    }
}
