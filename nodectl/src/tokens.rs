//! Join tokens: one-time tokens a new machine trades for its own credentials
//! on `registry.join`. Their records live in `registry_meta`
//! (`token.<id>`), holding only the secret's digest.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::Utc;
use fleet_auth::token::{secret_digest, JoinToken, TOKEN_PREFIX};
use schemas::meta::TokenRecord;
use subjects::meta_keys;

use crate::meta::live_entry;
use crate::Error;

/// Longest role a token may grant.
const MAX_ROLE_LEN: usize = 64;

/// What a new token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The role the joining node gets.
    pub role: String,
    /// Labels it gets: `k[=v],...` (a bare key means `"true"`).
    pub labels: String,
    /// How long the token can be used.
    pub ttl: Duration,
}

/// Makes a token carrying the bootstrap credentials of the auth directory
/// `dir`, stores its record (create: a clash of ids is refused, never
/// overwritten) and returns the token's text.
pub async fn create(kv: &kv::Store, dir: &Path, grant: &Grant) -> Result<String, Error> {
    let bootstrap = dir.join("creds").join("bootstrap.creds");
    let creds = std::fs::read_to_string(&bootstrap).map_err(|source| Error::Io {
        path: format!("{} (run `nodectl auth init` first?)", bootstrap.display()),
        source,
    })?;
    let mut labels = BTreeMap::new();
    for item in grant
        .labels
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let (key, value) = item.split_once('=').unwrap_or((item, "true"));
        schemas::validate::check_label_key(key).map_err(|e| Error::Invalid(e.to_string()))?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    if grant.role.is_empty() || grant.role.len() > MAX_ROLE_LEN {
        return Err(Error::Invalid(format!(
            "--role must be 1 to {MAX_ROLE_LEN} characters"
        )));
    }
    let ttl =
        chrono::Duration::from_std(grant.ttl).map_err(|e| Error::Invalid(format!("--ttl: {e}")))?;
    let token = JoinToken::new(creds)?;
    let now = Utc::now();
    let record = TokenRecord {
        secret_sha256: secret_digest(&token.secret),
        role: grant.role.clone(),
        labels,
        created_at: schemas::time::format(now),
        expires_at: schemas::time::format(now + ttl),
        used_at: None,
        node_id: None,
        revoked_at: None,
    };
    let value = serde_json::to_vec(&record)?;
    kv.create(meta_keys::token(&token.id), value.into())
        .await
        .map_err(|e| Error::nats("storing the token")(e.to_string()))?;
    Ok(token.encode()?)
}

/// A token record as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The token's id.
    pub id: String,
    /// Its record; `Err` with the reason when it does not decode.
    pub record: Result<TokenRecord, String>,
}

/// Every token record in `registry_meta`, by id (unreadable ones included,
/// with their reason, for an admin to look at).
pub async fn list(kv: &kv::Store) -> Result<Vec<Listed>, Error> {
    let keys = registry_kv::meta::keys_under(kv, meta_keys::TOKEN_PREFIX)
        .await
        .map_err(|e| Error::nats("listing join tokens")(e.to_string()))?;
    let mut listed = Vec::with_capacity(keys.len());
    for key in keys {
        let (Some(id), Some(entry)) = (meta_keys::parse_token(&key), live_entry(kv, &key).await?)
        else {
            continue;
        };
        listed.push(Listed {
            id: id.to_owned(),
            record: serde_json::from_slice(&entry.value).map_err(|e| e.to_string()),
        });
    }
    Ok(listed)
}

/// The id a token argument names: the id itself, or the whole token.
pub fn token_id(token: &str) -> Result<String, Error> {
    let token = token.trim();
    let id = if token.starts_with(TOKEN_PREFIX) {
        JoinToken::decode(token)?.id
    } else {
        token.to_owned()
    };
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!("{id:?} is not a token id")));
    }
    Ok(id)
}

/// Marks an unused token revoked (compare-and-swap, so a join in flight
/// either wins or is refused); returns its id. Revoking twice is fine.
pub async fn revoke(kv: &kv::Store, token: &str) -> Result<String, Error> {
    let id = token_id(token)?;
    let key = meta_keys::token(&id);
    let entry = live_entry(kv, &key)
        .await?
        .ok_or_else(|| Error::NotFound(format!("no join token {id}")))?;
    let mut record: TokenRecord =
        serde_json::from_slice(&entry.value).map_err(|e| Error::Corrupt {
            what: format!("token {id}"),
            reason: e.to_string(),
        })?;
    if let Some(used) = &record.used_at {
        return Err(Error::Invalid(format!(
            "join token {id} was used at {used} by {}: revoke that node's credentials instead (nodectl auth revoke {0})",
            record.node_id.as_deref().unwrap_or("?")
        )));
    }
    if record.revoked_at.is_some() {
        return Ok(id);
    }
    record.revoked_at = Some(schemas::time::format(Utc::now()));
    let value = serde_json::to_vec(&record)?;
    kv.update(&key, value.into(), entry.revision)
        .await
        .map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => {
                Error::Changed(format!("join token {id} (used?)"))
            }
            _ => Error::nats(format!("revoking join token {id}"))(e.to_string()),
        })?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_arguments_name_an_id() {
        assert_eq!(token_id(" 0a1b ").ok().as_deref(), Some("0a1b"));
        assert!(matches!(token_id("not hex"), Err(Error::Invalid(_))));
        assert!(matches!(token_id(""), Err(Error::Invalid(_))));
    }
}
