//! Join tokens: one string an admin hands to a new machine. It carries the
//! bootstrap user's credentials (which can do nothing but ask to join) and
//! a one-time secret; the registry keeps only the secret's digest, with the
//! role, labels and expiry the token grants, in `registry_meta`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;

use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

use crate::AuthError;

/// What every join token starts with (the format's version).
pub const TOKEN_PREFIX: &str = "fjt1_";
/// Longest join request or token accepted.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// A join token as handed out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinToken {
    /// Its id (the key of its record).
    pub id: String,
    /// The one-time secret.
    pub secret: String,
    /// The bootstrap user's `.creds` text.
    pub creds: String,
}

fn random(bytes: usize) -> Result<Vec<u8>, AuthError> {
    let mut out = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| AuthError::Key("no randomness".into()))?;
    Ok(out)
}

impl JoinToken {
    /// A fresh token carrying the bootstrap `creds`.
    pub fn new(creds: String) -> Result<Self, AuthError> {
        let id: String = random(8)?.iter().map(|b| format!("{b:02x}")).collect();
        Ok(Self {
            id,
            secret: URL_SAFE_NO_PAD.encode(random(32)?),
            creds,
        })
    }

    /// The string form.
    pub fn encode(&self) -> Result<String, AuthError> {
        let json = serde_json::to_vec(self).map_err(|e| AuthError::Encode(e.to_string()))?;
        Ok(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(json)))
    }

    /// Reads the string form.
    pub fn decode(text: &str) -> Result<Self, AuthError> {
        let bad = |why: &str| AuthError::Token(why.to_owned());
        let text = text.trim();
        if text.len() > MAX_TOKEN_BYTES {
            return Err(bad("too long"));
        }
        let body = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| bad("not a join token (it starts with fjt1_)"))?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|_| bad("damaged (not base64url); copy it whole"))?;
        serde_json::from_slice(&json).map_err(|_| bad("damaged (not a token); copy it whole"))
    }
}

/// The digest of a token secret, as kept in its record.
pub fn secret_digest(secret: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, secret.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `secret` matches `digest` (compared in constant time).
pub fn secret_matches(secret: &str, digest: &str) -> bool {
    let computed = secret_digest(secret);
    computed.len() == digest.len()
        && computed
            .bytes()
            .zip(digest.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_damage_is_named() {
        let token = JoinToken::new("creds text".into()).expect("token");
        let text = token.encode().expect("encode");
        assert!(text.starts_with(TOKEN_PREFIX));
        assert_eq!(
            JoinToken::decode(&format!(" {text}\n")).expect("decode"),
            token
        );
        assert!(JoinToken::decode("hello").is_err());
        assert!(JoinToken::decode(&text[..text.len() - 5]).is_err());
        let digest = secret_digest(&token.secret);
        assert!(secret_matches(&token.secret, &digest));
        assert!(!secret_matches("guess", &digest));
        assert_ne!(
            JoinToken::new(String::new()).expect("token").secret,
            token.secret
        );
    }
}
