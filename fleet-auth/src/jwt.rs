//! NATS JWTs (v2): claims signed with an nkey (`alg: ed25519-nkey`), the
//! form nats-server verifies in operator mode.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use nkeys::KeyPair;
use serde::{Deserialize, Serialize};

use crate::AuthError;

/// The header every NATS JWT carries.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// The claims of a NATS JWT; `nats` holds the type-specific part.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Id of these claims (a digest of them).
    pub jti: String,
    /// Issued at (Unix seconds).
    pub iat: i64,
    /// The public key of the signer.
    pub iss: String,
    /// A name for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The public key the claims are about.
    pub sub: String,
    /// Expiry (Unix seconds), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// The operator, account or user part.
    pub nats: serde_json::Value,
}

impl Claims {
    /// Claims about `sub`, issued now, with no id yet.
    pub fn new(name: &str, sub: &str, nats: serde_json::Value) -> Self {
        Self {
            jti: String::new(),
            iat: chrono::Utc::now().timestamp(),
            iss: String::new(),
            name: name.to_owned(),
            sub: sub.to_owned(),
            exp: None,
            nats,
        }
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `claims` with `signer` (which becomes `iss`) and encodes the JWT.
pub fn encode(mut claims: Claims, signer: &KeyPair) -> Result<String, AuthError> {
    claims.iss = signer.public_key();
    claims.jti = String::new();
    let unsigned = serde_json::to_vec(&claims).map_err(|e| AuthError::Encode(e.to_string()))?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &unsigned);
    claims.jti = b64(digest.as_ref());
    let body = serde_json::to_vec(&claims).map_err(|e| AuthError::Encode(e.to_string()))?;
    let signing_input = format!("{}.{}", b64(HEADER.as_bytes()), b64(&body));
    let signature = signer
        .sign(signing_input.as_bytes())
        .map_err(|e| AuthError::Key(e.to_string()))?;
    Ok(format!("{signing_input}.{}", b64(&signature)))
}

/// Decodes a JWT and checks its signature against its own `iss` (not who
/// `iss` is allowed to be: the caller checks that).
pub fn decode(jwt: &str) -> Result<Claims, AuthError> {
    let bad = |why: &str| AuthError::Jwt(why.to_owned());
    let mut parts = jwt.trim().split('.');
    let (Some(header), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad("not three dot-separated parts"));
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| bad("header is not base64url"))?;
    let header_value: serde_json::Value =
        serde_json::from_slice(&header_json).map_err(|_| bad("header is not JSON"))?;
    if header_value["alg"] != "ed25519-nkey" {
        return Err(bad("alg is not ed25519-nkey"));
    }
    let body_json = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|_| bad("claims are not base64url"))?;
    let claims: Claims =
        serde_json::from_slice(&body_json).map_err(|e| AuthError::Jwt(format!("claims: {e}")))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| bad("signature is not base64url"))?;
    let issuer =
        KeyPair::from_public_key(&claims.iss).map_err(|e| AuthError::Key(e.to_string()))?;
    issuer
        .verify(format!("{header}.{body}").as_bytes(), &signature)
        .map_err(|_| bad("signature does not verify"))?;
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_jwt_decodes_and_a_tampered_one_does_not() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let claims = Claims::new(
            "n1",
            &user.public_key(),
            serde_json::json!({"type": "user", "version": 2}),
        );
        let jwt = encode(claims, &account).expect("encode");
        let decoded = decode(&jwt).expect("decode");
        assert_eq!(decoded.iss, account.public_key());
        assert_eq!(decoded.sub, user.public_key());
        assert!(!decoded.jti.is_empty());
        let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
        let mut tampered: Claims = decoded.clone();
        tampered.name = "n2".into();
        parts[1] = b64(&serde_json::to_vec(&tampered).expect("json"));
        assert!(decode(&parts.join(".")).is_err());
        assert!(decode("a.b").is_err());
        assert!(decode("").is_err());
    }
}
