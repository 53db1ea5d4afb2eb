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

/// One change of the `nodes` bucket, not yet decoded: a reader that already
/// holds a revision can skip it without decoding.
#[derive(Debug, Clone, PartialEq)]
pub enum RawChange {
    /// A value was written.
    Put {
        /// The key.
        key: String,
        /// The value as stored (it may share a larger buffer: copy what you
        /// keep).
        value: bytes::Bytes,
        /// Its revision.
        revision: u64,
    },
    /// A key was deleted or purged.
    Delete {
        /// The key.
        key: String,
        /// The revision of the delete marker.
        revision: u64,
    },
    /// Every value that existed when the watch opened has been delivered.
    Current,
}

impl RawChange {
    /// Decodes a put into a [`NodeChange`]; `None` (logged) for a value that
    /// is not a node record or is stored under another node's key.
    pub fn decode(self) -> Option<NodeChange> {
        match self {
            Self::Put {
                key,
                value,
                revision,
            } => match decode_record(&key, &value) {
                Ok(value) if value.node_id != key => {
                    warn!(%key, node_id = %value.node_id, "skipping a record stored under another node's key");
                    None
                }
                Ok(value) => Some(NodeChange::Put(Box::new(Versioned { value, revision }))),
                Err(e) => {
                    warn!(error = %e, "skipping a value that is not a node record");
                    None
                }
            },
            Self::Delete { key, revision } => Some(NodeChange::Delete { key, revision }),
            Self::Current => Some(NodeChange::Current),
        }
    }
}

/// Watches every key of `store` without decoding: the latest value of each
/// key first, then [`RawChange::Current`], then live changes. With
/// `after_revision`, only changes after that revision, and `Current` first.
pub async fn watch_raw(
    store: &kv::Store,
    after_revision: Option<u64>,
) -> Result<impl Stream<Item = Result<RawChange, WatchError>> + Send + 'static, WatchError> {
    let bucket = store.name.clone();
    let fail = |source: async_nats::Error| WatchError {
        bucket: bucket.clone(),
        source,
    };
    let (watch, mut current_sent) = match after_revision {
        Some(revision) => (
            store
                .watch_all_from_revision(revision + 1)
                .await
                .map_err(|e| fail(e.into()))?,
            true,
        ),
        None => {
            // A watch of an empty bucket yields nothing until the first
            // write, so "current" must come from the bucket's state.
            let status = store.status().await.map_err(|e| fail(e.into()))?;
            let empty = status.info.state.messages == 0;
            (
                store
                    .watch_with_history(">")
                    .await
                    .map_err(|e| fail(e.into()))?,
                empty,
            )
        }
    };
    let prelude = futures::stream::iter(current_sent.then_some(Ok(RawChange::Current)));
    let bucket_for_stream = bucket.clone();
    let changes = watch.flat_map(move |entry| {
        let mut out: Vec<Result<RawChange, WatchError>> = Vec::with_capacity(2);
        match entry {
            Err(e) => out.push(Err(WatchError {
                bucket: bucket_for_stream.clone(),
                source: e.into(),
            })),
            Ok(entry) => {
                let last = entry.delta == 0;
                out.push(Ok(match entry.operation {
                    kv::Operation::Put => RawChange::Put {
                        key: entry.key,
                        value: entry.value,
                        revision: entry.revision,
                    },
                    kv::Operation::Delete | kv::Operation::Purge => RawChange::Delete {
                        key: entry.key,
                        revision: entry.revision,
                    },
                }));
                if !current_sent && last {
                    current_sent = true;
                    out.push(Ok(RawChange::Current));
                }
            }
        }
        futures::stream::iter(out)
    });
    Ok(prelude.chain(changes))
}

/// Watches every key of `store`: the latest value of each key first, then
/// [`NodeChange::Current`], then live changes. Values that are not node
/// records are logged and skipped.
pub async fn watch_nodes(
    store: &kv::Store,
) -> Result<impl Stream<Item = Result<NodeChange, WatchError>> + Send + 'static, WatchError> {
    let raw = watch_raw(store, None).await?;
    Ok(raw.filter_map(|change| {
        futures::future::ready(match change {
            Ok(change) => change.decode().map(Ok),
            Err(e) => Some(Err(e)),
        })
    }))
}
