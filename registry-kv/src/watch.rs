//! A typed watch of the `nodes` bucket.

use async_nats::jetstream::kv;
use futures::{Stream, StreamExt};
use schemas::NodeRecord;
use tracing::warn;

use crate::records::{decode_record, Versioned};

/// One change seen by a watch of the `nodes` bucket.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeChange {
    /// A record was written.
    Put(Box<Versioned<NodeRecord>>),
    /// A record was deleted or purged.
    Delete {
        /// The key.
        key: String,
        /// The revision of the delete marker.
        revision: u64,
    },
    /// Every value that existed when the watch opened has been delivered;
    /// what follows are live changes. Sent exactly once.
    Current,
}

/// Why a watch failed.
#[derive(Debug, thiserror::Error)]
#[error("watching bucket {bucket}: {source}")]
pub struct WatchError {
    /// The bucket.
    pub bucket: String,
    /// What failed.
    pub source: async_nats::Error,
}

/// Watches every key of `store`: the latest value of each key first, then
/// [`NodeChange::Current`], then live changes. Values that are not node
/// records are logged and skipped.
pub async fn watch_nodes(
    store: &kv::Store,
) -> Result<impl Stream<Item = Result<NodeChange, WatchError>> + Send + 'static, WatchError> {
    let bucket = store.name.clone();
    let fail = |source: async_nats::Error| WatchError {
        bucket: bucket.clone(),
        source,
    };
    // A watch of an empty bucket yields nothing until the first write, so
    // "current" must come from the bucket's state, not from the watch.
    let status = store.status().await.map_err(|e| fail(e.into()))?;
    let empty = status.info.state.messages == 0;
    let watch = store
        .watch_with_history(">")
        .await
        .map_err(|e| fail(e.into()))?;
    let mut current_sent = empty;
    let prelude = futures::stream::iter(empty.then_some(Ok(NodeChange::Current)));
    let bucket_for_stream = bucket.clone();
    let changes = watch.flat_map(move |entry| {
        let mut out: Vec<Result<NodeChange, WatchError>> = Vec::with_capacity(2);
        match entry {
            Err(e) => out.push(Err(WatchError {
                bucket: bucket_for_stream.clone(),
                source: e.into(),
            })),
            Ok(entry) => {
                match entry.operation {
                    kv::Operation::Put => match decode_record(&entry.key, &entry.value) {
                        Ok(value) if value.node_id != entry.key => warn!(
                            key = %entry.key,
                            node_id = %value.node_id,
                            "skipping a record stored under another node's key"
                        ),
                        Ok(value) => out.push(Ok(NodeChange::Put(Box::new(Versioned {
                            value,
                            revision: entry.revision,
                        })))),
                        Err(e) => warn!(error = %e, "skipping a value that is not a node record"),
                    },
                    kv::Operation::Delete | kv::Operation::Purge => {
                        out.push(Ok(NodeChange::Delete {
                            key: entry.key.clone(),
                            revision: entry.revision,
                        }))
                    }
                }
                if !current_sent && entry.delta == 0 {
                    current_sent = true;
                    out.push(Ok(NodeChange::Current));
                }
            }
        }
        futures::stream::iter(out)
    });
    Ok(prelude.chain(changes))
}
