//! The registry's `registry_meta` bucket: the lease, join tokens, node keys.

use async_nats::jetstream::kv;
use fleet_client::Client;

use crate::Error;

/// Opens the bucket (the registry provisions it; nodectl never creates it).
pub async fn open(client: &Client) -> Result<kv::Store, Error> {
    async_nats::jetstream::new(client.nats().clone())
        .get_key_value(subjects::BUCKET_REGISTRY_META)
        .await
        .map_err(|e| Error::NoMetaBucket {
            bucket: subjects::BUCKET_REGISTRY_META,
            reason: e.to_string(),
        })
}

/// The live entry of `key` (a delete marker counts as none).
pub(crate) async fn live_entry(kv: &kv::Store, key: &str) -> Result<Option<kv::Entry>, Error> {
    Ok(kv
        .entry(key)
        .await
        .map_err(|e| Error::nats(format!("reading {key}"))(e.to_string()))?
        .filter(|e| e.operation == kv::Operation::Put))
}
