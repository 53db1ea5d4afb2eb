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
