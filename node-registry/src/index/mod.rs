//! The read index: every node record, in memory, fed by a watch of `nodes`.
//!
//! A reflector (kube-runtime's pattern): one task writes, from a KV watch;
//! discovery reads cheap snapshots. The initial replay is buffered and
//! swapped in at once, and only then is the index ready: a query never sees a
//! half-loaded fleet. If the watch fails it is reopened and the index rebuilt
//! the same way, still serving the old view meanwhile; a watch that stalls
//! without failing (seen when a cluster server is lost) is noticed by
//! comparing the index's revision with the bucket's, and reopened too.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use registry_kv::watch::{
    bucket_info, keep_watching, watch_raw, RawChange, WatchError, WatchFrom, ALL_KEYS,
};
use runtime_support::CancellationToken;
use schemas::NodeRecord;
use tokio::sync::watch;

use registry_core::catalog::{Catalog, Indexable, RecordView};

use crate::counters::Counters;
use tracing::{info, instrument, warn};

pub mod snapshot;
pub mod snapshot_format;

/// Writes announced by this process, by key: the bytes and the record.
type Expected = HashMap<String, (bytes::Bytes, Arc<NodeRecord>)>;

/// A shared, read-mostly view of the `nodes` bucket.
#[derive(Debug, Clone)]
pub struct ReadIndex {
    state: Arc<RwLock<Catalog>>,
    expected: Arc<Mutex<Expected>>,
    ready: watch::Receiver<bool>,
    revision: watch::Receiver<u64>,
    /// When the bucket the index holds was created: a bucket created
    /// later is a new one (deleted and made again), to load anew.
    born: Arc<Mutex<Option<DateTime<Utc>>>>,
}

impl ReadIndex {
    /// Whether the initial replay has been loaded.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the index is ready.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        // An Err means the reflector is gone; then nothing will change.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Runs `f` over the current catalog.
    pub fn read<T>(&self, f: impl FnOnce(&Catalog) -> T) -> T {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&state)
    }

    /// Announces a record this process is about to write: when the watch
    /// delivers exactly these bytes for its key, the index takes `record` as
    /// it is and keeps `encoded` (shared with the writer) instead of
    /// decoding and copying the delivery.
    pub fn expect_write(&self, record: Arc<NodeRecord>, encoded: bytes::Bytes) {
        let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        expected.insert(record.node_id.clone(), (encoded, record));
    }

    /// Withdraws an announced write that did not happen.
    pub fn forget_write(&self, node_id: &str) {
        let mut expected = self.expected.lock().unwrap_or_else(|p| p.into_inner());
        expected.remove(node_id);
    }

    /// The catalog's image, with the revision and bucket it was read at
    /// (for a snapshot); `None` until the index is loaded. The records'
    /// bytes are shared, not copied.
    pub fn take_snapshot(&self) -> Option<snapshot::Taken> {
        if !self.is_ready() {
            return None;
        }
        let created = (*self.born.lock().unwrap_or_else(|p| p.into_inner()))?;
        let (image, nodes) = {
            let catalog = self.state.read().unwrap_or_else(|p| p.into_inner());
            (catalog.image(), catalog.len() as u64)
        };
        Some(snapshot::Taken {
            header: snapshot_format::Header::new(
                snapshot::created_ns(created),
                image.revision,
                image.slots.len() as u64,
            ),
            nodes,
            image,
        })
    }

    /// The last KV revision the index holds.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Waits up to `limit` for the index to reach KV revision `revision`;
    /// returns whether it did.
    pub async fn wait_revision(&self, revision: u64, limit: std::time::Duration) -> bool {
        let mut seen = self.revision.clone();
        let reached = tokio::time::timeout(limit, seen.wait_for(|r| *r >= revision)).await;
        matches!(reached, Ok(Ok(_)))
    }
}

/// Starts the reflector on `store`; it runs until `cancel`. With
/// `snapshots`, a first load starts from the bucket's snapshot there, if
/// one fits, and catches up from its revision.
pub fn spawn_reflector(
    store: kv::Store,
    snapshots: Option<snapshot::Source>,
    cancel: CancellationToken,
) -> ReadIndex {
    let state = Arc::new(RwLock::new(Catalog::new()));
    let expected = Arc::new(Mutex::new(Expected::new()));
    let (ready_tx, ready_rx) = watch::channel(false);
    let (revision_tx, revision_rx) = watch::channel(0);
    let born = Arc::new(Mutex::new(None));
    let index = ReadIndex {
        state: state.clone(),
        expected: expected.clone(),
        ready: ready_rx,
        revision: revision_rx,
        born: born.clone(),
    };
    tokio::spawn(async move {
        let sources = Sources {
            store,
            snapshots,
            state,
            expected,
            ready: ready_tx,
            revision: revision_tx,
            born,
        };
        keep_watching("read index", &cancel, || reflect(&sources)).await;
    });
    index
}

/// What the reflector reads from and writes to.
struct Sources {
    store: kv::Store,
    snapshots: Option<snapshot::Source>,
    state: Arc<RwLock<Catalog>>,
    expected: Arc<Mutex<Expected>>,
    ready: watch::Sender<bool>,
    revision: watch::Sender<u64>,
    born: Arc<Mutex<Option<DateTime<Utc>>>>,
}

#[instrument(skip_all, fields(bucket = %sources.store.name))]
async fn reflect(sources: &Sources) -> Result<(), WatchError> {
    let Sources {
        store,
        snapshots,
        state,
        expected,
        ready,
        revision,
        born,
    } = sources;
    // Once loaded, a reopened watch resumes after what the index holds,
    // unless the bucket is not the one loaded (deleted and created again):
    // then it loads everything anew. NOTE: told by the bucket's creation
    // time, not its last sequence: a stream answering during a leader
    // election has reported a last sequence of 0, which emptied the index.
    // A bucket that does not answer is no answer: retry, still serving the
    // old view.
    let info = bucket_info(store).await?;
    let created = info.created;
    let mut resume = ready
        .borrow()
        .then(|| state.read().unwrap_or_else(|p| p.into_inner()).revision);
    let known = *born.lock().unwrap_or_else(|p| p.into_inner());
    if let (Some(revision), Some(known)) = (resume, known) {
        if known != created {
            warn!(
                revision,
                "the nodes bucket was recreated; reloading the index"
            );
            resume = None;
        }
    }
    // The initial replay is decoded and indexed in chunks on a blocking
    // thread (the other core), one chunk after the other into the same
    // catalog, while this task keeps receiving (and answering discovery
    // from the old view, if any). A first load starts from the bucket's
    // snapshot where one fits, and replays only what came after it
    // (received while the snapshot is read).
    let caught = match (resume, snapshots) {
        (None, Some(source)) => load_snapshot(store, source, &info).await?,
        _ => None,
    };
    let from_snapshot = caught.is_some();
    let (mut loading, kept, mut changes) = match caught {
        Some(Caught {
            loading,
            kept,
            changes,
        }) => (loading, kept, changes),
        None => {
            let (from, loading) = match resume {
                Some(held) => (WatchFrom::After(held), Loading::for_keys(0)),
                None => (
                    WatchFrom::Start,
                    Loading::for_keys(info.state.subjects_count),
                ),
            };
            let changes: Changes = Box::pin(watch_raw(store, ALL_KEYS, from).await?);
            (loading, Vec::new(), changes)
        }
    };
    // What the watch delivered while the snapshot was read, copied out
    // already.
    let received_while_reading = kept.len();
    let mut kept = kept.into_iter();
    let mut live = resume.is_some();
    let mut chunk: Vec<RawChange> = Vec::with_capacity(LOAD_CHUNK);
    // A watch is not lossless: one that stalls (its consumer lost with a
    // server and not recreated) says nothing. While live, the bucket's last
    // sequence is compared with the index's revision now and then; behind
    // and not moving for two checks in a row, the watch is reopened.
    let mut check = tokio::time::interval(STALL_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut behind_at: Option<u64> = None;
    loop {
        let (change, copied) = match kept.next() {
            Some(change) => (change, true),
            None => (
                tokio::select! {
                    change = changes.next() => match change {
                        Some(change) => change?,
                        None => break,
                    },
                    _ = check.tick(), if live => {
                        let held = state.read().unwrap_or_else(|p| p.into_inner()).revision;
                        let Ok(info) = bucket_info(store).await else {
                            // The bucket does not answer: nothing to compare with.
                            behind_at = None;
                            continue;
                        };
                        let last = info.state.last_sequence;
                        if last > held && behind_at == Some(held) {
                            warn!(held, last, "the nodes watch stalled behind the bucket; reopening it");
                            return Ok(());
                        }
                        behind_at = (last > held).then_some(held);
                        continue;
                    }
                },
                false,
            ),
        };
        if live {
            let now = apply_live(state, expected, change);
            revision.send_replace(now);
            continue;
        }
        if !matches!(change, RawChange::Current) {
            chunk.push(if copied { change } else { detached(change) });
            if chunk.len() >= LOAD_CHUNK {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(LOAD_CHUNK));
                loading.add(full, &store.name).await?;
            }
            continue;
        }
        loading.add(std::mem::take(&mut chunk), &store.name).await?;
        let (buffer, busy, waited) = std::mem::take(&mut loading).finish(&store.name).await?;
        info!(
            nodes = buffer.len(),
            revision = buffer.revision,
            indexing_ms = busy.as_millis(),
            waited_for_indexing_ms = waited.as_millis(),
            from_snapshot,
            received_while_reading,
            "read index loaded"
        );
        let now = buffer.revision;
        *state.write().unwrap_or_else(|p| p.into_inner()) = buffer;
        *born.lock().unwrap_or_else(|p| p.into_inner()) = Some(created);
        live = true;
        revision.send_replace(now);
        ready.send_replace(true);
    }
    Ok(())
}

/// The changes of a bucket as a watch delivers them.
type Changes = std::pin::Pin<Box<dyn futures::Stream<Item = Result<RawChange, WatchError>> + Send>>;

/// A snapshot loaded, with the watch of the changes made after it.
struct Caught {
    /// The load, to go on from the snapshot's revision.
    loading: Loading,
    /// What the watch delivered while the snapshot was read (copied out).
    kept: Vec<RawChange>,
    /// The watch, to read on from there.
    changes: Changes,
}

/// Most bytes of changes kept while a snapshot is read; past them the
/// watch waits (nats-server holds the rest until it is read on).
const OVERLAP_BYTES: usize = 256 << 20;

/// Loads the bucket's snapshot, if one fits (one that does not is counted
/// and logged: then `None`, and the bucket is read whole). As soon as its
/// header is read, a watch of the changes made after it opens, and what
/// it delivers is kept while the rest of the snapshot is read: nats-server
/// sends the catch-up while the registry reads, not after.
async fn load_snapshot(
    store: &kv::Store,
    source: &snapshot::Source,
    info: &async_nats::jetstream::stream::Info,
) -> Result<Option<Caught>, WatchError> {
    let through = info.state.last_sequence;
    let (header_read, mut header) = tokio::sync::oneshot::channel::<u64>();
    let reading = snapshot::load(&source.snapshots, &store.name, info, move |revision| {
        let _ = header_read.send(revision);
    });
    tokio::pin!(reading);
    let mut waiting_header = true;
    let mut early: Option<Changes> = None;
    let mut kept: Vec<RawChange> = Vec::new();
    let mut kept_bytes = 0usize;
    let loaded = loop {
        let watching = early.is_some() && kept_bytes < OVERLAP_BYTES;
        tokio::select! {
            loaded = &mut reading => break loaded,
            after = &mut header, if waiting_header => {
                waiting_header = false;
                if let Ok(after) = after {
                    let from = WatchFrom::CatchUp { after, through };
                    early = Some(Box::pin(watch_raw(store, ALL_KEYS, from).await?));
                }
            }
            change = next_change(&mut early), if watching => match change {
                Some(change) => {
                    let change = detached(change?);
                    kept_bytes += match &change {
                        RawChange::Put { key, value, .. } => key.len() + value.len(),
                        RawChange::Delete { key, .. } => key.len(),
                        RawChange::Current => 0,
                    };
                    kept.push(change);
                }
                // Ended: read on from it gives nothing more; the loop after
                // the load reopens it.
                None => early = Some(Box::pin(futures::stream::empty())),
            },
        }
    };
    match loaded {
        Ok(Some((loading, header))) => {
            Counters::bump(&source.counters.index_snapshot_loads);
            let changes = match early {
                Some(changes) => changes,
                None => {
                    let from = WatchFrom::CatchUp {
                        after: header.revision,
                        through,
                    };
                    Box::pin(watch_raw(store, ALL_KEYS, from).await?)
                }
            };
            Ok(Some(Caught {
                loading,
                kept,
                changes,
            }))
        }
        Ok(None) => Ok(None),
        Err(e) => {
            Counters::bump(&source.counters.index_snapshots_refused);
            warn!(error = %e, "index snapshot not used: reading the nodes bucket whole");
            Ok(None)
        }
    }
}

/// The next change of `watch`; never, without one.
async fn next_change(watch: &mut Option<Changes>) -> Option<Result<RawChange, WatchError>> {
    match watch.as_mut() {
        Some(changes) => changes.next().await,
        None => std::future::pending().await,
    }
}

/// How often a live index compares its revision with the bucket's.
const STALL_CHECK: Duration = Duration::from_secs(5);

/// Changes of the initial replay indexed per chunk.
const LOAD_CHUNK: usize = 4096;

/// The initial replay being indexed, in a pipeline of chunks: while this
/// task receives chunk k + 1, a blocking thread reads chunk k's records
/// straight into the catalog (one chunk after the other).
#[derive(Default)]
struct Loading {
    /// The revision held before the first chunk (a snapshot's).
    floor: u64,
    idle: Option<Catalog>,
    indexing: Option<tokio::task::JoinHandle<(Catalog, Duration)>>,
    /// Time the blocking thread spent reading and indexing chunks.
    indexing_busy: Duration,
    /// Time the receiving task waited for it (the pipeline's stall).
    waited: Duration,
}

fn failed(bucket: &str, e: &tokio::task::JoinError) -> WatchError {
    WatchError {
        bucket: bucket.to_owned(),
        source: format!("indexing the initial replay: {e}").into(),
    }
}

/// Most keys a catalog is sized for before its first record (a bound on a
/// figure read from the bucket, not a limit on the fleet).
const MAX_PRESIZE: u64 = 20_000_000;

impl Loading {
    /// A load into a catalog sized for a bucket of `keys` keys.
    fn for_keys(keys: u64) -> Self {
        let keys = usize::try_from(keys.min(MAX_PRESIZE)).unwrap_or_default();
        Self {
            floor: 0,
            idle: Some(Catalog::with_capacity(keys)),
            indexing: None,
            indexing_busy: Duration::ZERO,
            waited: Duration::ZERO,
        }
    }

    /// A load that goes on from `catalog`, which holds everything up to
    /// revision `floor` (a snapshot's), indexed in `busy`.
    fn resuming(catalog: Catalog, floor: u64, busy: Duration) -> Self {
        Self {
            floor,
            idle: Some(catalog),
            indexing: None,
            indexing_busy: busy,
            waited: Duration::ZERO,
        }
    }

    /// The catalog, once the chunk being indexed is in.
    async fn catalog(&mut self, bucket: &str) -> Result<Catalog, WatchError> {
        match self.indexing.take() {
            Some(task) => {
                let asked = std::time::Instant::now();
                let (catalog, busy) = task.await.map_err(|e| failed(bucket, &e))?;
                self.waited += asked.elapsed();
                self.indexing_busy += busy;
                Ok(catalog)
            }
            None => Ok(self.idle.take().unwrap_or_default()),
        }
    }

    /// Starts indexing `chunk`, after what came before.
    async fn add(&mut self, chunk: Vec<RawChange>, bucket: &str) -> Result<(), WatchError> {
        let mut catalog = self.catalog(bucket).await?;
        self.indexing = Some(tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            for change in chunk {
                load(&mut catalog, change);
            }
            (catalog, started.elapsed())
        }));
        Ok(())
    }

    /// The whole replay, indexed, with the time the indexing thread was
    /// busy and the time the receiver waited for it.
    async fn finish(mut self, bucket: &str) -> Result<(Catalog, Duration, Duration), WatchError> {
        let mut catalog = self.catalog(bucket).await?;
        catalog.revision = catalog.revision.max(self.floor);
        Ok((catalog, self.indexing_busy, self.waited))
    }
}

/// Reads a put the catalog does not hold yet, for indexing, borrowing from
/// `value`; `None` for one it holds (or newer), and for a value that is not
/// the record of `key` (logged and skipped).
fn view_put<'v>(
    catalog: &Catalog,
    key: &str,
    value: &'v [u8],
    revision: u64,
) -> Option<RecordView<'v>> {
    if catalog
        .revision_of(key)
        .is_some_and(|held| held >= revision)
    {
        return None;
    }
    match RecordView::of(value) {
        Ok(record) if record.node_id() == key => Some(record),
        Ok(record) => {
            warn!(%key, node_id = %record.node_id(), "skipping a record stored under another node's key");
            None
        }
        Err(e) => {
            warn!(%key, error = %e, "skipping a value that is not a node record");
            None
        }
    }
}

/// A change whose value no longer shares the connection's receive buffer:
/// copied out as soon as it arrives, so the client reuses its buffers
/// instead of taking fresh memory for each (which costs a page fault per
/// 4 KiB, and a cold start receives a gigabyte).
fn detached(change: RawChange) -> RawChange {
    match change {
        RawChange::Put {
            key,
            value,
            revision,
        } => RawChange::Put {
            key,
            value: bytes::Bytes::copy_from_slice(&value),
            revision,
        },
        other => other,
    }
}

/// Applies one change of the initial replay (its value [`detached`]).
fn load(catalog: &mut Catalog, change: RawChange) {
    match change {
        RawChange::Put {
            key,
            value,
            revision,
        } => {
            let record = view_put(catalog, &key, &value, revision);
            put(
                catalog,
                &key,
                revision,
                record.as_ref().map(|r| (r, value.clone())),
            );
        }
        RawChange::Delete { key, revision } => delete(catalog, &key, revision),
        RawChange::Current => {}
    }
}

/// Applies one live change: a write this process announced is taken as it
/// is; anything else is read outside the lock, so readers are held only for
/// the insert.
fn apply_live(state: &RwLock<Catalog>, expected: &Mutex<Expected>, change: RawChange) -> u64 {
    let (key, value, revision) = match change {
        RawChange::Put {
            key,
            value,
            revision,
        } => (key, value, revision),
        RawChange::Delete { key, revision } => {
            let mut catalog = state.write().unwrap_or_else(|p| p.into_inner());
            delete(&mut catalog, &key, revision);
            return catalog.revision;
        }
        RawChange::Current => return state.read().unwrap_or_else(|p| p.into_inner()).revision,
    };
    let announced = {
        let mut expected = expected.lock().unwrap_or_else(|p| p.into_inner());
        match expected.remove(&key) {
            Some((bytes, record)) if bytes == value => Some((record, bytes)),
            Some(other) => {
                // Not (yet) ours: keep waiting for it.
                expected.insert(key.clone(), other);
                None
            }
            None => None,
        }
    };
    if let Some((record, bytes)) = announced {
        let mut catalog = state.write().unwrap_or_else(|p| p.into_inner());
        put(&mut catalog, &key, revision, Some((&*record, bytes)));
        return catalog.revision;
    }
    let record = {
        let catalog = state.read().unwrap_or_else(|p| p.into_inner());
        view_put(&catalog, &key, &value, revision)
    };
    let record = record
        .as_ref()
        .map(|r| (r, bytes::Bytes::copy_from_slice(&value)));
    let mut catalog = state.write().unwrap_or_else(|p| p.into_inner());
    put(&mut catalog, &key, revision, record);
    catalog.revision
}

/// Applies a put of `key` at `revision`: `record`, kept as the bytes given
/// with it, replaces what the catalog holds unless that is as new.
fn put(
    catalog: &mut Catalog,
    key: &str,
    revision: u64,
    record: Option<(&impl Indexable, bytes::Bytes)>,
) {
    catalog.revision = catalog.revision.max(revision);
    let newer = catalog.revision_of(key).is_none_or(|held| held < revision);
    if let (Some((record, kept)), true) = (record, newer) {
        catalog.insert(record, kept, revision);
    }
}

/// Applies a delete of `key` at `revision`.
fn delete(catalog: &mut Catalog, key: &str, revision: u64) {
    catalog.revision = catalog.revision.max(revision);
    if catalog.revision_of(key).is_none_or(|held| held < revision) {
        catalog.remove(key);
    }
}
