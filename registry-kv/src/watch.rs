//! Watches of a bucket, and the one loop that keeps a cache fed from one:
//! [`watch_raw`] delivers the latest value of each key, says when that
//! replay is complete, then follows live changes; [`keep_watching`] runs a
//! watch session again, with backoff, whenever it ends or fails (the read
//! index and the node keys both live on it).

use std::future::Future;
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use futures::{Stream, StreamExt};
use runtime_support::{Backoff, CancellationToken};
use tracing::warn;

/// Why a watch failed.
#[derive(Debug, thiserror::Error)]
#[error("watching bucket {bucket}: {source}")]
pub struct WatchError {
    /// The bucket the operation was on.
    pub bucket: String,
    /// What failed.
    pub source: async_nats::Error,
}

/// One change of a bucket, not yet decoded: a reader that already holds a
/// revision can skip it without decoding.
#[derive(Debug, Clone, PartialEq)]
pub enum RawChange {
    /// A value was written.
    Put {
        /// The key the operation was on.
        key: String,
        /// The value as stored (it may share a larger buffer: copy what you
        /// keep).
        value: bytes::Bytes,
        /// The revision it was stored at.
        revision: u64,
    },
    /// A key was deleted or purged.
    Delete {
        /// The key the operation was on.
        key: String,
        /// The revision of the delete marker.
        revision: u64,
    },
    /// Every value that existed when the watch opened has been delivered.
    Current,
}

/// The key filter of a whole bucket.
pub const ALL_KEYS: &str = ">";

/// Where a watch starts, and when it says [`RawChange::Current`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchFrom {
    /// The latest value of each key, then `Current`, then live changes.
    Start,
    /// Only changes after this revision, with `Current` first: a reader
    /// that holds everything up to it resumes live.
    After(u64),
    /// Every change after revision `after`, then `Current` once the
    /// bucket's last revision when the watch opened (`through`) is
    /// delivered: a reader that loaded a snapshot taken at `after` catches
    /// up before it answers.
    CatchUp {
        /// The revision the reader holds everything up to.
        after: u64,
        /// The bucket's last revision, read just before the watch opens.
        through: u64,
    },
}

/// The bucket's stream info as the server holds it now.
///
/// NOTE: async-nats's `kv::Store::status` returns the info cached when the
/// bucket was opened (its last sequence and creation time never move), so
/// anything that compares with the bucket's state now asks through here.
pub async fn bucket_info(
    store: &kv::Store,
) -> Result<async_nats::jetstream::stream::Info, WatchError> {
    let mut stream = store.stream.clone();
    stream.info().await.cloned().map_err(|e| WatchError {
        bucket: store.name.clone(),
        source: e.into(),
    })
}

/// Watches the keys of `store` matching `keys` (a subject-style filter,
/// [`ALL_KEYS`] for all) without decoding, from where `from` says.
///
/// NOTE: `Current` is certain for [`ALL_KEYS`] only. A narrower filter that
/// matches nothing yields nothing (the server sends no "end of replay"), so
/// `Current` then comes with the first change; callers of such watches must
/// not wait for it.
pub async fn watch_raw(
    store: &kv::Store,
    keys: &str,
    from: WatchFrom,
) -> Result<impl Stream<Item = Result<RawChange, WatchError>> + Send + 'static, WatchError> {
    let bucket = store.name.clone();
    let fail = |source: async_nats::Error| WatchError {
        bucket: bucket.clone(),
        source,
    };
    let (watch, mut current_sent) = match from {
        WatchFrom::After(revision) => (
            store
                .watch_from_revision(keys, revision + 1)
                .await
                .map_err(|e| fail(e.into()))?,
            true,
        ),
        // Nothing after the snapshot: caught up already (a watch with
        // nothing to deliver says nothing until the next write).
        WatchFrom::CatchUp { after, through } => (
            store
                .watch_from_revision(keys, after + 1)
                .await
                .map_err(|e| fail(e.into()))?,
            after >= through,
        ),
        WatchFrom::Start => {
            // A watch of an empty bucket yields nothing until the first
            // write, so "current" must come from the bucket's state.
            let empty = keys == ALL_KEYS && { bucket_info(store).await?.state.messages == 0 };
            (
                store
                    .watch_with_history(keys)
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
                // Caught up: the last pending change, or (catching up) the
                // last revision there was when the watch opened.
                let last = entry.delta == 0
                    || matches!(from, WatchFrom::CatchUp { through, .. } if entry.revision >= through);
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

/// A session that ran this long was healthy: the next failure starts the
/// backoff from its first delay again.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);

/// Keeps a cache fed from a watch: runs `session` (open a watch, apply its
/// changes until it ends) again whenever it ends or fails, waiting through
/// a backoff, until `cancel`. `what` names the cache in the logs.
pub async fn keep_watching<F, Fut>(what: &str, cancel: &CancellationToken, mut session: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), WatchError>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let started = Instant::now();
        let ended = tokio::select! {
            () = cancel.cancelled() => return,
            ended = session() => ended,
        };
        match ended {
            Ok(()) => warn!(what, "watch ended; reopening"),
            Err(e) => warn!(what, error = %e, "watch failed; reopening"),
        }
        if started.elapsed() >= HEALTHY_SESSION {
            backoff.reset();
        }
        if !backoff.wait(cancel).await {
            return;
        }
    }
}
