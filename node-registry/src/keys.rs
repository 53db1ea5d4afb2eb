//! The public keys of joined nodes (`nodekey.<id>` in `registry_meta`),
//! kept current by a watch: the worker checks each event's signature
//! against its node's key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use fleet_auth::token::NodeKeyRecord;
use fleet_auth::EventKey;
use futures::StreamExt;
use subjects::meta_keys;
use tokio::sync::watch;
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

/// Follows `meta`'s node keys until `shutdown`.
pub fn spawn_watcher(meta: kv::Store, mut shutdown: watch::Receiver<bool>) -> NodeKeys {
    let keys = NodeKeys::default();
    let shared = keys.clone();
    tokio::spawn(async move {
        loop {
            let watch = match meta
                .watch_with_history(format!("{}>", meta_keys::NODE_KEY_PREFIX))
                .await
            {
                Ok(watch) => watch,
                Err(e) => {
                    warn!(error = %e, "watching node keys; retrying");
                    tokio::select! {
                        _ = shutdown.wait_for(|s| *s) => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            let mut watch = watch;
            loop {
                let next = tokio::select! {
                    _ = shutdown.wait_for(|s| *s) => return,
                    next = watch.next() => next,
                };
                match next {
                    Some(Ok(entry)) => {
                        let Some(node) = meta_keys::parse_node_key(&entry.key) else {
                            continue;
                        };
                        let key = (entry.operation == kv::Operation::Put)
                            .then(|| serde_json::from_slice::<NodeKeyRecord>(&entry.value).ok())
                            .flatten()
                            .map(|r| r.public_key);
                        debug!(node_id = node, known = key.is_some(), "node key");
                        shared.set(node, key);
                    }
                    Some(Err(e)) => {
                        warn!(error = %e, "node key watch; restarting it");
                        break;
                    }
                    None => break,
                }
            }
        }
    });
    keys
}
