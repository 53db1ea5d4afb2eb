//! The public keys the registry checks node events against
//! (`nodekey.<id>` in `registry_meta`).

use async_nats::jetstream::kv;
use chrono::Utc;
use schemas::meta::NodeKeyRecord;
use subjects::meta_keys;

use crate::meta::live_entry;
use crate::Error;

/// Tells the registry a node's key (for credentials issued by hand rather
/// than by a join): created, or replaced at the revision read.
pub async fn remember(kv: &kv::Store, node_id: &str, public_key: &str) -> Result<(), Error> {
    let key = meta_keys::node_key(node_id);
    let record = NodeKeyRecord {
        public_key: public_key.to_owned(),
        joined_at: schemas::time::format(Utc::now()),
        token_id: "issued".to_owned(),
    };
    let value = serde_json::to_vec(&record)?;
    let what = format!("storing {node_id}'s key");
    match live_entry(kv, &key).await? {
        None => kv
            .create(&key, value.into())
            .await
            .map_err(|e| match e.kind() {
                kv::CreateErrorKind::AlreadyExists => Error::Changed(format!("{node_id}'s key")),
                _ => Error::nats(what)(e.to_string()),
            })?,
        Some(entry) => kv
            .update(&key, value.into(), entry.revision)
            .await
            .map_err(|e| match e.kind() {
                kv::UpdateErrorKind::WrongLastRevision => {
                    Error::Changed(format!("{node_id}'s key"))
                }
                _ => Error::nats(what)(e.to_string()),
            })?,
    };
    Ok(())
}

/// Takes a joined node's key out of `registry_meta` (at the revision read)
/// and returns it: what `auth revoke` needs for a node it did not issue.
/// The node id may then join again with a fresh token.
pub async fn take(kv: &kv::Store, node_id: &str) -> Result<String, Error> {
    let key = meta_keys::node_key(node_id);
    let entry = live_entry(kv, &key).await?.ok_or_else(|| {
        Error::NotFound(format!(
            "no credentials issued to {node_id} here or by a join"
        ))
    })?;
    let record: NodeKeyRecord =
        serde_json::from_slice(&entry.value).map_err(|e| Error::Corrupt {
            what: key.clone(),
            reason: e.to_string(),
        })?;
    kv.delete_expect_revision(&key, Some(entry.revision))
        .await
        .map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => Error::Changed(format!("{node_id}'s key")),
            _ => Error::nats(format!("removing {key}"))(e.to_string()),
        })?;
    Ok(record.public_key)
}
