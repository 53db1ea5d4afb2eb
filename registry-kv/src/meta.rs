//! Housekeeping of a bucket whose keys come and go (join tokens in
//! `registry_meta`): list the keys under a prefix from the stream's subject
//! index, and forget a key for good.

use async_nats::jetstream::kv;
use futures::TryStreamExt;

/// Why a listing or a purge failed.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The stream's subject listing failed.
    #[error("listing {bucket}: {reason}")]
    List {
        /// The bucket the operation was on.
        bucket: String,
        /// What the server or client said.
        reason: String,
    },
    /// The purge of a key failed.
    #[error("forgetting {key} in {bucket}: {reason}")]
    Forget {
        /// The bucket the operation was on.
        bucket: String,
        /// The key the operation was on.
        key: String,
        /// What the server or client said.
        reason: String,
    },
}

/// The keys of `store` that start with `prefix` (a whole token such as
/// `"token."`), sorted. Keys whose last entry is a delete marker are listed
/// too: read each entry to tell.
pub async fn keys_under(store: &kv::Store, prefix: &str) -> Result<Vec<String>, MetaError> {
    let list_error = |reason: String| MetaError::List {
        bucket: store.name.clone(),
        reason,
    };
    let filter = format!("{}{prefix}>", store.prefix);
    let mut subjects = store
        .stream
        .info_with_subjects(&filter)
        .await
        .map_err(|e| list_error(e.to_string()))?;
    let mut keys = Vec::new();
    while let Some((subject, _messages)) = subjects
        .try_next()
        .await
        .map_err(|e| list_error(e.to_string()))?
    {
        if let Some(key) = subject.strip_prefix(store.prefix.as_str()) {
            keys.push(key.to_owned());
        }
    }
    keys.sort_unstable();
    Ok(keys)
}

/// Removes every message of `key` from the bucket's stream: unlike a KV
/// purge, which keeps a marker per key forever, nothing is left. Returns how
/// many messages went.
pub async fn forget(store: &kv::Store, key: &str) -> Result<u64, MetaError> {
    let response = store
        .stream
        .purge()
        .filter(format!("{}{key}", store.prefix))
        .await
        .map_err(|e| MetaError::Forget {
            bucket: store.name.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(response.purged)
}
