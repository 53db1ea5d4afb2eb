//! The public keys of joined nodes (`nodekey.<id>` in `registry_meta`),
//! kept current by a watch: the worker checks each event's signature
//! against its node's key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use fleet_auth::EventKey;
use futures::StreamExt;
use registry_kv::watch::{keep_watching, watch_raw, RawChange, WatchError, WatchFrom};
use runtime_support::CancellationToken;
use schemas::meta::NodeKeyRecord;
use subjects::meta_keys;
use tracing::{debug, warn};

/// Node id → public key (parsed once) of every joined node.
#[derive(Debug, Clone, Default)]
pub struct NodeKeys {
    keys: Arc<RwLock<HashMap<String, Arc<EventKey>>>>,
}

impl NodeKeys {
    /// The key of `node_id`, if it joined.
    pub fn get(&self, node_id: &str) -> Option<Arc<EventKey>> {
        self.keys.read().ok()?.get(node_id).cloned()
    }

    /// Sets (or with `None` forgets) a node's key; a key that does not
    /// parse is forgotten (its events then fail their check).
    pub fn set(&self, node_id: &str, key: Option<String>) {
        let parsed = key.map(|k| (EventKey::parse(&k), k));
        if let Ok(mut keys) = self.keys.write() {
            match parsed {
                Some((Ok(key), _)) => {
                    keys.insert(node_id.to_owned(), Arc::new(key));
                }
                Some((Err(e), text)) => {
                    warn!(node_id, key = %text, error = %e, "unusable node key");
                    keys.insert(node_id.to_owned(), Arc::new(EventKey::unusable()));
                }
                None => {
                    keys.remove(node_id);
                }
            }
        }
    }

    /// How many nodes have a key.
    pub fn len(&self) -> usize {
        self.keys.read().map_or(0, |k| k.len())
    }

    /// Whether no node has a key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Follows `meta`'s node keys until `cancel`.
pub fn spawn_watcher(meta: kv::Store, cancel: CancellationToken) -> NodeKeys {
    let keys = NodeKeys::default();
    let shared = keys.clone();
    tokio::spawn(async move {
        let filter = format!("{}>", meta_keys::NODE_KEY_PREFIX);
        keep_watching("node keys", &cancel, || follow(&meta, &filter, &shared)).await;
    });
    keys
}

/// One watch session: every node key, then live changes, into `keys`.
async fn follow(meta: &kv::Store, filter: &str, keys: &NodeKeys) -> Result<(), WatchError> {
    let mut changes = Box::pin(watch_raw(meta, filter, WatchFrom::Start).await?);
    while let Some(change) = changes.next().await {
        let (key, value) = match change? {
            RawChange::Put { key, value, .. } => (key, Some(value)),
            RawChange::Delete { key, .. } => (key, None),
            RawChange::Current => continue,
        };
        let Some(node) = meta_keys::parse_node_key(&key) else {
            continue;
        };
        let public = value
            .and_then(|v| serde_json::from_slice::<NodeKeyRecord>(&v).ok())
            .map(|r| r.public_key);
        debug!(node_id = node, known = public.is_some(), "node key");
        keys.set(node, public);
    }
    Ok(())
}
