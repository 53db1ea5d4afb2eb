//! Snapshots of the read index in an object store: the leader of partition
//! 0 writes one now and then; a first load reads it instead of the whole
//! `nodes` bucket and catches up from the revision it was taken at. Reading
//! a million records through a KV watch costs nats-server a delivery per
//! record; a snapshot is a few hundred large chunks. It holds the catalog's
//! image (what the catalog derived from each record, and its posting
//! lists), so a load copies the records in instead of reading and indexing
//! each one's JSON again; a snapshot of the earlier records-only format is
//! still read, and indexed.
//!
//! A snapshot is used only when it is of this bucket (same creation time),
//! not ahead of it, and not older than the oldest revision the bucket
//! keeps (what came after it must all still be there to replay). Anything
//! else, or bytes that do not read, is logged and the load reads the bucket
//! whole: a snapshot only ever saves time.

use std::time::{Duration, Instant};

use async_nats::jetstream::stream;
use bytes::{Buf, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use registry_kv::snapshots::{SnapshotError, SnapshotStore};
use tokio::io::AsyncReadExt;
use tracing::{info, warn};

use registry_core::catalog::{Catalog, Image, ImageError, ImageLoader, Indexable, RecordView};

use super::snapshot_format::{Decoder, FormatError, Header, Piece, VERSION_RECORDS_ONLY};
use super::{put, Loading, LOAD_CHUNK};

mod write;
pub use write::{keep_writing, Writer};

/// Where a first load looks for a snapshot, and what it counts there.
#[derive(Debug, Clone)]
pub struct Source {
    /// The object store of snapshots.
    pub snapshots: SnapshotStore,
    /// Loads from a snapshot and snapshots refused are counted here.
    pub counters: std::sync::Arc<crate::counters::Counters>,
}

/// What a snapshot is written from: every record held, at one revision.
#[derive(Debug)]
pub struct Taken {
    /// The bucket and revision, and the count of slots.
    pub header: Header,
    /// How many of the slots hold a record.
    pub nodes: u64,
    /// The catalog's image: each slot's record as stored, with its
    /// revision and what the catalog derived from it; the posting lists.
    pub image: Image,
}

/// Why a snapshot was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The object store did not answer.
    #[error(transparent)]
    Store(#[from] SnapshotError),
    /// Reading its bytes failed (their digest included).
    #[error("reading the snapshot: {0}")]
    Read(#[source] std::io::Error),
    /// Its bytes are not a snapshot this build reads.
    #[error("the snapshot does not read: {0}")]
    Format(#[from] FormatError),
    /// Its catalog image does not load.
    #[error("the snapshot's catalog image does not load: {0}")]
    Image(#[from] ImageError),
    /// It was taken from another bucket of the same name (deleted and
    /// made again since).
    #[error("the snapshot is of a bucket created at {snapshot} ns, this one at {bucket} ns")]
    OtherBucket {
        /// The snapshot's bucket's creation time (unix ns).
        snapshot: i64,
        /// This bucket's.
        bucket: i64,
    },
    /// It holds revisions the bucket does not have.
    #[error("the snapshot is at revision {snapshot}, ahead of the bucket's last {last}")]
    Ahead {
        /// The snapshot's revision.
        snapshot: u64,
        /// The bucket's last revision.
        last: u64,
    },
    /// Changes made after it are no longer all in the bucket.
    #[error(
        "the snapshot is at revision {snapshot}, before the oldest the bucket keeps ({first})"
    )]
    TooOld {
        /// The snapshot's revision.
        snapshot: u64,
        /// The bucket's first kept revision.
        first: u64,
    },
    /// The thread indexing its records stopped before the end.
    #[error("the snapshot's indexing thread stopped")]
    IndexerStopped,
}

/// The bucket's creation time as a snapshot records it (unix ns).
pub fn created_ns(created: DateTime<Utc>) -> i64 {
    created.timestamp_nanos_opt().unwrap_or_default()
}

/// Bytes asked of the object store per read (at least one chunk, so a
/// chunk is never split into the reader's own queue).
const READ_BUFFER: usize = 2 << 20;

/// How a zstd frame begins: a snapshot stored compressed (every one this
/// build writes) starts with it; one written before compression starts
/// with the format's own magic and is read as it is.
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// A stored snapshot's bytes as the format reads them: decompressed when
/// they are a zstd stream, else as stored. Every frame is read, up to
/// the object's end, so trailing bytes are an error and the store's digest
/// check (at the end of the object) always runs.
async fn opened<R>(stored: R) -> std::io::Result<Box<dyn tokio::io::AsyncRead + Unpin + Send>>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::with_capacity(READ_BUFFER, stored);
    let compressed = reader.fill_buf().await?.starts_with(&ZSTD_MAGIC);
    if compressed {
        let mut decoder = async_compression::tokio::bufread::ZstdDecoder::new(reader);
        decoder.multiple_members(true);
        Ok(Box::new(decoder))
    } else {
        Ok(Box::new(reader))
    }
}

/// Loads the snapshot of bucket `bucket` (whose state is `info`), if
/// there is one that fits: the load, to go on from its revision, with the
/// snapshot's header. `fitted` is told the snapshot's revision as soon as
/// its header is read and fits, before the rest is read.
pub(super) async fn load(
    snapshots: &SnapshotStore,
    bucket: &str,
    info: &stream::Info,
    fitted: impl FnOnce(u64),
) -> Result<Option<(Loading, Header)>, LoadError> {
    let started = Instant::now();
    let Some(stored) = snapshots.get(bucket).await? else {
        return Ok(None);
    };
    let size = stored.size;
    let keys = info.state.subjects_count;
    let accept = |header: &Header| {
        fits(header, info)?;
        fitted(header.revision);
        Ok(())
    };
    let read = read(stored.reader, accept, keys).await?;
    info!(
        records = read.catalog.len(),
        slots = read.header.records,
        version = read.header.version,
        revision = read.header.revision,
        bytes = size,
        behind = info
            .state
            .last_sequence
            .saturating_sub(read.header.revision),
        read_ms = started.elapsed().as_millis(),
        indexing_ms = read.busy.as_millis(),
        "index snapshot read"
    );
    Ok(Some((
        Loading::resuming(read.catalog, read.header.revision, read.busy),
        read.header,
    )))
}

/// A snapshot read into a catalog.
#[derive(Debug)]
pub struct Read {
    /// What it said it holds.
    pub header: Header,
    /// Its catalog.
    pub catalog: Catalog,
    /// The time spent building the catalog (indexing records, or loading
    /// the image), besides reading the bytes.
    pub busy: Duration,
}

/// Reads a snapshot from `stored` (compressed or not) into a catalog sized
/// for at least `keys` nodes, if `fits` accepts its header. A version 2
/// snapshot is the catalog's image: this task reads and decompresses its
/// bytes while a thread of its own decodes them and loads the image. A
/// version 1 snapshot's records are read here and indexed on threads of
/// their own.
pub async fn read<R>(
    stored: R,
    fits: impl FnOnce(&Header) -> Result<(), LoadError>,
    keys: u64,
) -> Result<Read, LoadError>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
{
    let mut source = opened(stored).await.map_err(LoadError::Read)?;
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::with_capacity(READ_BUFFER);
    let mut fits = Some(fits);
    let mut into = Target::Nothing;
    let mut chunk: Chunk = Vec::with_capacity(LOAD_CHUNK);
    loop {
        // Room for at least half a read; a piece larger than the buffer
        // (the posting lists) doubles it.
        let wanted = (READ_BUFFER / 2).max(buf.len());
        if buf.capacity() - buf.len() < wanted {
            buf.reserve(wanted.max(READ_BUFFER));
        }
        let read = source.read_buf(&mut buf).await.map_err(LoadError::Read)?;
        if let Target::Image(image) = &into {
            // Handed over in pieces of half a buffer or more: the thread
            // frees each after use, and the allocator gives it back here.
            let hand_over = buf.len() >= READ_BUFFER / 2 || read == 0;
            let stopped = hand_over && !image.add(buf.split()).await;
            if stopped || read == 0 {
                break;
            }
            continue;
        }
        let mut at = 0;
        while let Some((piece, used)) = decoder.next(&buf[at..])? {
            at += used;
            match (piece, &mut into) {
                (Piece::Header(header), _) => {
                    if let Some(fits) = fits.take() {
                        fits(&header)?;
                    }
                    let keys = header.records.max(keys);
                    if header.version == VERSION_RECORDS_ONLY {
                        into = Target::Records(Indexer::start(keys));
                    } else {
                        // The rest goes to the image's thread as it is.
                        let image = ImageThread::start(header, keys);
                        // (One that stopped already says why at its end.)
                        image.add(buf.split_off(at)).await;
                        into = Target::Image(image);
                        break;
                    }
                }
                (
                    Piece::Record {
                        revision, value, ..
                    },
                    Target::Records(indexer),
                ) => {
                    chunk.push((Bytes::copy_from_slice(value), revision));
                    if chunk.len() >= LOAD_CHUNK {
                        let full = std::mem::replace(&mut chunk, Vec::with_capacity(LOAD_CHUNK));
                        indexer.add(full).await?;
                    }
                }
                (Piece::Record { .. } | Piece::Postings(_) | Piece::End, _) => {}
            }
        }
        if matches!(into, Target::Image(_)) {
            // What followed the header went to the image's thread.
            buf.clear();
        } else {
            buf.advance(at);
        }
        if read == 0 {
            break;
        }
    }
    let (header, catalog, busy) = match into {
        Target::Image(image) => image.finish().await?,
        Target::Records(indexer) => {
            indexer.add(chunk).await?;
            let header = decoder.finish()?;
            let (catalog, busy) = indexer.finish().await?;
            (header, catalog, busy)
        }
        Target::Nothing => (decoder.finish()?, Catalog::new(), Duration::ZERO),
    };
    Ok(Read {
        header,
        catalog,
        busy,
    })
}

/// Where a snapshot's pieces go, by its version.
enum Target {
    /// No header read yet.
    Nothing,
    /// Version 1: records, indexed from their JSON.
    Records(Indexer),
    /// Version 2: the catalog's image, its bytes to its thread.
    Image(ImageThread),
}

/// Loads a catalog's image on a thread of its own, from the snapshot's
/// bytes after its header, handed over as they are read.
struct ImageThread {
    bytes: tokio::sync::mpsc::Sender<BytesMut>,
    done: tokio::task::JoinHandle<Result<(Header, Catalog, Duration), LoadError>>,
}

impl ImageThread {
    /// A thread loading the image under `header` into a catalog sized for
    /// `keys` nodes.
    fn start(header: Header, keys: u64) -> Self {
        let slots = usize::try_from(keys.min(super::MAX_PRESIZE)).unwrap_or_default();
        let (bytes, received) = tokio::sync::mpsc::channel(4);
        let done = tokio::task::spawn_blocking(move || load_image(header, slots, received));
        Self { bytes, done }
    }

    /// Hands it the next bytes (waits while four are queued); whether it
    /// took them. A thread that stopped (on bytes that do not load) takes
    /// no more; `finish` says why.
    async fn add(&self, bytes: BytesMut) -> bool {
        self.bytes.send(bytes).await.is_ok()
    }

    /// The header, the catalog and the time the thread was busy.
    async fn finish(self) -> Result<(Header, Catalog, Duration), LoadError> {
        drop(self.bytes);
        self.done.await.map_err(|_| LoadError::IndexerStopped)?
    }
}

/// The image thread: decodes the slots and the posting lists from the
/// bytes `received`, loading each as it is decoded.
fn load_image(
    header: Header,
    slots: usize,
    mut received: tokio::sync::mpsc::Receiver<BytesMut>,
) -> Result<(Header, Catalog, Duration), LoadError> {
    let mut decoder = Decoder::after(header);
    let mut loader = Some(ImageLoader::with_capacity(slots));
    let mut catalog = None;
    let mut pending = BytesMut::new();
    let mut busy = Duration::ZERO;
    while let Some(bytes) = received.blocking_recv() {
        let started = Instant::now();
        if pending.is_empty() {
            pending = bytes;
        } else {
            pending.extend_from_slice(&bytes);
        }
        let mut at = 0;
        while let Some((piece, used)) = decoder.next(&pending[at..])? {
            at += used;
            match piece {
                Piece::Record {
                    revision,
                    value,
                    meta,
                } => {
                    let slot = (!value.is_empty())
                        // In memory of its own: the index keeps it.
                        .then(|| (Bytes::copy_from_slice(value), revision, meta));
                    if let Some(loader) = loader.as_mut() {
                        loader.push(slot)?;
                    }
                }
                Piece::Postings(postings) => {
                    if let Some(loader) = loader.take() {
                        catalog = Some(loader.finish(header.revision, postings)?);
                    }
                }
                Piece::Header(_) | Piece::End => {}
            }
        }
        pending.advance(at);
        busy += started.elapsed();
    }
    let header = decoder.finish()?;
    Ok((header, catalog.unwrap_or_default(), busy))
}

/// Snapshot records, a chunk of them: each value with its revision.
type Chunk = Vec<(Bytes, u64)>;

/// Indexes the chunks of a snapshot as they come, on a thread of its own:
/// while it indexes chunk k, a second thread reads the records of chunk
/// k + 1 (nats-server has little to do while a snapshot is read, so the
/// two cores are the registry's).
struct Indexer {
    chunks: tokio::sync::mpsc::Sender<Chunk>,
    done: tokio::task::JoinHandle<(Catalog, Duration)>,
}

impl Indexer {
    /// An indexer into a catalog sized for `keys` records.
    fn start(keys: u64) -> Self {
        let keys = usize::try_from(keys.min(super::MAX_PRESIZE)).unwrap_or_default();
        let (chunks, received) = tokio::sync::mpsc::channel(2);
        let done = tokio::task::spawn_blocking(move || {
            index_chunks(Catalog::with_capacity(keys), received)
        });
        Self { chunks, done }
    }

    /// Hands it the next chunk (waits while two are queued).
    async fn add(&self, chunk: Chunk) -> Result<(), LoadError> {
        self.chunks
            .send(chunk)
            .await
            .map_err(|_| LoadError::IndexerStopped)
    }

    /// The catalog with every chunk in, and the time its thread was busy.
    async fn finish(self) -> Result<(Catalog, Duration), LoadError> {
        drop(self.chunks);
        self.done.await.map_err(|_| LoadError::IndexerStopped)
    }
}

/// The records of `chunk`, read from their values; a value that is not a
/// record is logged and skipped.
fn views(chunk: &[(Bytes, u64)]) -> Vec<Option<RecordView<'_>>> {
    chunk
        .iter()
        .map(|(value, _)| {
            RecordView::of(value)
                .map_err(
                    |e| warn!(error = %e, "skipping a snapshot value that is not a node record"),
                )
                .ok()
        })
        .collect()
}

/// Indexes `chunk`, whose records `views` has read.
fn insert(catalog: &mut Catalog, chunk: &[(Bytes, u64)], views: Vec<Option<RecordView<'_>>>) {
    for ((value, revision), view) in chunk.iter().zip(views) {
        if let Some(record) = view {
            put(
                catalog,
                record.node_id(),
                *revision,
                Some((&record, value.clone())),
            );
        }
    }
}

/// Reads the records of `next` on a second thread while this one indexes
/// `current`; returns `next`'s records.
fn overlapped<'n>(
    catalog: &mut Catalog,
    current: &[(Bytes, u64)],
    current_views: Vec<Option<RecordView<'_>>>,
    next: &'n [(Bytes, u64)],
) -> Vec<Option<RecordView<'n>>> {
    std::thread::scope(|scope| {
        let reading = scope.spawn(|| views(next));
        insert(catalog, current, current_views);
        // A reader that could not finish: read them here.
        reading.join().unwrap_or_else(|_| views(next))
    })
}

/// The indexing thread: chunk k indexed while chunk k + 1 is read, the two
/// chunks taking turns in `a` and `b` (a chunk stays where it was
/// received while its records, which borrow from it, are alive).
fn index_chunks(
    mut catalog: Catalog,
    mut received: tokio::sync::mpsc::Receiver<Chunk>,
) -> (Catalog, Duration) {
    let started = Instant::now();
    let mut waited = Duration::ZERO;
    let mut receive = |received: &mut tokio::sync::mpsc::Receiver<Chunk>| {
        let asked = Instant::now();
        let chunk = received.blocking_recv();
        waited += asked.elapsed();
        chunk
    };
    let Some(mut a) = receive(&mut received) else {
        return (catalog, Duration::ZERO);
    };
    let mut b: Chunk;
    let mut a_views = views(&a);
    loop {
        b = match receive(&mut received) {
            Some(chunk) => chunk,
            None => {
                insert(&mut catalog, &a, a_views);
                break;
            }
        };
        let b_views = overlapped(&mut catalog, &a, a_views, &b);
        a = match receive(&mut received) {
            Some(chunk) => chunk,
            None => {
                insert(&mut catalog, &b, b_views);
                break;
            }
        };
        a_views = overlapped(&mut catalog, &b, b_views, &a);
    }
    (catalog, started.elapsed().saturating_sub(waited))
}

/// Whether a snapshot under `header` can start a load of the bucket in
/// state `info`.
fn fits(header: &Header, info: &stream::Info) -> Result<(), LoadError> {
    let bucket = created_ns(info.created);
    if header.bucket_created_ns != bucket {
        return Err(LoadError::OtherBucket {
            snapshot: header.bucket_created_ns,
            bucket,
        });
    }
    let (first, last) = (info.state.first_sequence, info.state.last_sequence);
    if header.revision > last {
        return Err(LoadError::Ahead {
            snapshot: header.revision,
            last,
        });
    }
    if header.revision.saturating_add(1) < first {
        return Err(LoadError::TooOld {
            snapshot: header.revision,
            first,
        });
    }
    Ok(())
}
