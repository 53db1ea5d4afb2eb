//! The values of the `registry_meta` bucket besides the lease: join-token
//! records (`token.<id>`) and joined nodes' public keys (`nodekey.<id>`).
//! The registry and nodectl both read and write them.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A token's record in `registry_meta`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// SHA-256 of the token's secret (`fleet_auth::token::secret_digest`):
    /// the secret itself is never stored.
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
    fn a_tokens_state_and_when_its_record_can_go() {
        let now = Utc::now();
        let at = |offset: i64| (now + chrono::Duration::seconds(offset)).to_rfc3339();
        let record = TokenRecord {
            secret_sha256: "digest of s".into(),
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
