//! Join tokens: one string an admin hands to a new machine. It carries the
//! bootstrap user's credentials (which can do nothing but ask to join) and
//! a one-time secret; the registry keeps only the secret's digest, with the
//! role, labels and expiry the token grants, in `registry_meta`.

use std::collections::BTreeMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
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

/// A token's record in `registry_meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Digest of the secret ([`secret_digest`]).
    pub secret_sha256: String,
    /// The role the node gets (its `role` field).
    pub role: String,
    /// The labels the node gets.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Expires (RFC 3339).
    pub expires_at: String,
    /// When it was used, if it was.
    #[serde(default)]
    pub used_at: Option<String>,
    /// The node that used it.
    #[serde(default)]
    pub node_id: Option<String>,
    /// When an admin revoked it, if one did (before it was used).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
}

/// Where a join token stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    /// It can still be exchanged.
    Usable,
    /// A node has exchanged it.
    Used,
    /// An admin revoked it before it was used.
    Revoked,
    /// Its time ran out unused.
    Expired,
}

impl std::fmt::Display for TokenState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Usable => "usable",
            Self::Used => "used",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        })
    }
}

impl TokenRecord {
    /// When it expires (`None` if the record's time does not parse).
    pub fn expires(&self) -> Option<DateTime<Utc>> {
        DateTime::parse_from_rfc3339(&self.expires_at)
            .ok()
            .map(|at| at.with_timezone(&Utc))
    }

    /// Where it stands at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> TokenState {
        if self.used_at.is_some() {
            TokenState::Used
        } else if self.revoked_at.is_some() {
            TokenState::Revoked
        } else if self.expires().is_none_or(|at| at <= now) {
            TokenState::Expired
        } else {
            TokenState::Usable
        }
    }

    /// Whether its record has been kept `retention` past its expiry (used
    /// or not), so it can go. A record whose expiry does not parse can.
    pub fn outlived(&self, now: DateTime<Utc>, retention: chrono::Duration) -> bool {
        self.expires().is_none_or(|at| {
            at.checked_add_signed(retention)
                .is_none_or(|end| end <= now)
        })
    }
}

/// A joined node's public key, as kept in `registry_meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKeyRecord {
    /// The node's public user nkey.
    pub public_key: String,
    /// When it joined (RFC 3339).
    pub joined_at: String,
    /// The token it used.
    pub token_id: String,
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

    #[test]
    fn a_tokens_state_and_when_its_record_can_go() {
        let now = Utc::now();
        let at = |offset: i64| (now + chrono::Duration::seconds(offset)).to_rfc3339();
        let record = TokenRecord {
            secret_sha256: secret_digest("s"),
            role: "worker".into(),
            labels: BTreeMap::new(),
            created_at: at(-60),
            expires_at: at(60),
            used_at: None,
            node_id: None,
            revoked_at: None,
        };
        assert_eq!(record.state(now), TokenState::Usable);
        assert_eq!(
            record.state(now + chrono::Duration::seconds(61)),
            TokenState::Expired
        );
        let used = TokenRecord {
            used_at: Some(at(-1)),
            node_id: Some("n1".into()),
            ..record.clone()
        };
        assert_eq!(
            used.state(now + chrono::Duration::days(9)),
            TokenState::Used
        );
        let revoked = TokenRecord {
            revoked_at: Some(at(-1)),
            ..record.clone()
        };
        assert_eq!(revoked.state(now), TokenState::Revoked);
        let day = chrono::Duration::days(1);
        assert!(!record.outlived(now, day));
        assert!(!used.outlived(now + day, day), "kept a day past expiry");
        assert!(used.outlived(now + day + chrono::Duration::seconds(61), day));
        assert!(record.outlived(
            now + chrono::Duration::seconds(60),
            chrono::Duration::zero()
        ));
        let junk = TokenRecord {
            expires_at: "soon".into(),
            ..record
        };
        assert_eq!(junk.state(now), TokenState::Expired);
        assert!(junk.outlived(now, day));
        // Old records (without revoked_at) still read.
        let old = serde_json::json!({"secret_sha256": "x", "role": "w", "created_at": at(0), "expires_at": at(1)});
        let old: TokenRecord = serde_json::from_value(old).expect("old record");
        assert_eq!(old.revoked_at, None);
    }
}
