//! Identity material of the fleet, the NATS way.
//!
//! NATS decentralised auth: an **operator** key signs **account** JWTs; the
//! fleet's account has a **signing key** that signs **user** JWTs, each for
//! one role ([`Role`]) and one user nkey. A user proves itself with a
//! `.creds` file (its JWT and its nkey seed); the server checks the chain
//! and enforces the JWT's permissions. Revoking a user is a line in the
//! account JWT, pushed to the servers.
//!
//! [`AuthDir`] keeps all of it in one directory (seeds and creds 0600), for
//! `nodectl auth`; [`UserIssuer`] is the part the registry needs to issue a
//! joining node's credentials.
#![deny(missing_docs)]

mod creds;
mod dir;
pub mod jwt;
mod roles;
pub mod token;

pub use creds::{creds_file, read_creds_jwt, read_creds_seed, write_secret};
pub use dir::{AuthDir, IssuedUser};
pub use roles::{node_inbox_prefix, Role};

use std::time::Duration;

use nkeys::KeyPair;
use serde_json::json;

/// Why identity material could not be made, read or used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file that could not be used.
        path: String,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// A key was malformed or of the wrong kind.
    #[error("bad key: {0}")]
    Key(String),
    /// A JWT was malformed or its signature did not verify.
    #[error("bad JWT: {0}")]
    Jwt(String),
    /// Claims could not be encoded.
    #[error("encoding claims: {0}")]
    Encode(String),
    /// The directory already holds material (init refuses to overwrite it).
    #[error("{0} already holds auth material; remove it or pick another directory")]
    Exists(String),
    /// No such user.
    #[error("no issued user {0}")]
    UnknownUser(String),
    /// A join token could not be read.
    #[error("join token: {0}")]
    Token(String),
}

/// Issues user JWTs for the fleet's account with its signing key: what the
/// registry holds to turn a join token into a node's credentials.
#[derive(Debug)]
pub struct UserIssuer {
    signing_key: KeyPair,
    account: String,
}

impl UserIssuer {
    /// An issuer from the account's signing-key seed and the account's
    /// public key.
    pub fn new(signing_seed: &str, account: &str) -> Result<Self, AuthError> {
        let signing_key =
            KeyPair::from_seed(signing_seed.trim()).map_err(|e| AuthError::Key(e.to_string()))?;
        if !account.starts_with('A') {
            return Err(AuthError::Key(format!("{account} is not an account key")));
        }
        Ok(Self {
            signing_key,
            account: account.to_owned(),
        })
    }

    /// The account users are issued in.
    pub fn account(&self) -> &str {
        &self.account
    }

    /// A user JWT for `user_key` (a public user nkey) in `role`, valid for
    /// `ttl` (forever when `None`).
    pub fn issue(
        &self,
        role: &Role,
        name: &str,
        user_key: &str,
        ttl: Option<Duration>,
    ) -> Result<String, AuthError> {
        let public =
            KeyPair::from_public_key(user_key).map_err(|e| AuthError::Key(e.to_string()))?;
        if public.key_pair_type() != nkeys::KeyPairType::User {
            return Err(AuthError::Key(format!("{user_key} is not a user key")));
        }
        let mut nats = role.permissions();
        if let Some(object) = nats.as_object_mut() {
            object.insert("type".into(), json!("user"));
            object.insert("version".into(), json!(2));
            object.insert("issuer_account".into(), json!(self.account));
            object.insert("subs".into(), json!(-1));
            object.insert("data".into(), json!(-1));
            object.insert("payload".into(), json!(-1));
            object.insert("tags".into(), json!([format!("role:{}", role.name())]));
        }
        let mut claims = jwt::Claims::new(name, user_key, nats);
        if let Some(ttl) = ttl {
            let secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2);
            claims.exp = Some(claims.iat.saturating_add(secs));
        }
        jwt::encode(claims, &self.signing_key)
    }
}

/// The header carrying a node's signature over an event's payload bytes
/// (base64url of the ed25519 signature by the node's user nkey).
pub const SIGNATURE_HEADER: &str = "Fleet-Signature";

/// Signs an event's payload with the node's key.
pub fn sign_event(key: &KeyPair, payload: &[u8]) -> Result<String, AuthError> {
    use base64::Engine;
    let signature = key
        .sign(payload)
        .map_err(|e| AuthError::Key(e.to_string()))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature))
}

/// Whether `signature` (as [`sign_event`] writes it) is `public_key`'s over
/// `payload`.
pub fn verify_event(public_key: &str, payload: &[u8], signature: &str) -> bool {
    use base64::Engine;
    let Ok(key) = KeyPair::from_public_key(public_key) else {
        return false;
    };
    let Ok(signature) = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    key.verify(payload, &signature).is_ok()
}

/// The node key in a `.creds` file (for signing its events).
pub fn creds_key(text: &str) -> Result<KeyPair, AuthError> {
    let seed =
        read_creds_seed(text).ok_or_else(|| AuthError::Key("no seed in the creds".into()))?;
    KeyPair::from_seed(seed).map_err(|e| AuthError::Key(e.to_string()))
}

#[cfg(test)]
mod signature_tests {
    use super::*;

    #[test]
    fn an_event_signature_verifies_only_for_its_key_and_bytes() {
        let key = KeyPair::new_user();
        let other = KeyPair::new_user();
        let payload = br#"{"type":"heartbeat","node_id":"n1","seq":7}"#;
        let signature = sign_event(&key, payload).expect("sign");
        assert!(verify_event(&key.public_key(), payload, &signature));
        assert!(!verify_event(&other.public_key(), payload, &signature));
        assert!(!verify_event(&key.public_key(), b"{}", &signature));
        assert!(!verify_event(&key.public_key(), payload, "not base64!"));
        assert!(!verify_event("nonsense", payload, &signature));
    }
}

/// A node's public key, parsed once, for checking many event signatures.
#[derive(Debug)]
pub struct EventKey(Option<KeyPair>);

impl EventKey {
    /// Parses a public user nkey.
    pub fn parse(public_key: &str) -> Result<Self, AuthError> {
        KeyPair::from_public_key(public_key)
            .map(|k| Self(Some(k)))
            .map_err(|e| AuthError::Key(e.to_string()))
    }

    /// A key that verifies nothing (one on record that does not parse: the
    /// node's events must not pass unchecked).
    pub fn unusable() -> Self {
        Self(None)
    }

    /// Whether `signature` (as [`sign_event`] writes it) is this key's over
    /// `payload`.
    pub fn verify(&self, payload: &[u8], signature: &str) -> bool {
        use base64::Engine;
        let Some(key) = &self.0 else {
            return false;
        };
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .is_ok_and(|signature| key.verify(payload, &signature).is_ok())
    }
}
