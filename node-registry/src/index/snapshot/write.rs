//! Writing the read index's snapshot: the leader takes the catalog's
//! image now and then and streams it, encoded and compressed, to the
//! object store, paced so it never takes a core at once.

use std::time::{Duration, Instant};

use registry_kv::snapshots::{SnapshotError, SnapshotStore};
use runtime_support::CancellationToken;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use super::super::snapshot_format::Encoder;
use super::super::ReadIndex;
use super::Taken;
use crate::counters::Counters;

/// A reader that hands out `inner`'s bytes at most `bytes_per_s` (0: as
/// fast as asked): a snapshot's write (its encoding and compression here,
/// its storing in nats-server) spread over seconds costs the same, but
/// never all of a core at once.
struct Paced<R> {
    inner: R,
    bytes_per_s: u64,
    started: Option<Instant>,
    sent: u64,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Paced<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if this.bytes_per_s > 0 {
            let started = *this.started.get_or_insert_with(Instant::now);
            let due = started + Duration::from_secs_f64(this.sent as f64 / this.bytes_per_s as f64);
            if due > Instant::now() {
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(due.into())));
                if sleep.deadline() != due.into() {
                    sleep.as_mut().reset(due.into());
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
            }
        }
        let before = buf.filled().len();
        let read = std::pin::Pin::new(&mut this.inner).poll_read(cx, buf);
        if read.is_ready() {
            this.sent += (buf.filled().len() - before) as u64;
        }
        read
    }
}

/// Writes `taken` as the snapshot of bucket `bucket`, compressed (zstd),
/// in chunks of `chunk_size`, encoding at most `bytes_per_s` of records
/// a second (0: unpaced); returns the bytes stored.
async fn write(
    snapshots: &SnapshotStore,
    bucket: &str,
    taken: Taken,
    chunk_size: usize,
    bytes_per_s: u64,
) -> Result<u64, SnapshotError> {
    let header = taken.header;
    let metadata = [
        ("revision", header.revision.to_string()),
        ("records", taken.nodes.to_string()),
        ("slots", header.records.to_string()),
        ("format", header.version.to_string()),
        ("bucket_created_ns", header.bucket_created_ns.to_string()),
        ("encoding", "zstd".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let paced = Paced {
        inner: Encoder::new(header, taken.image.slots, taken.image.postings),
        bytes_per_s,
        started: None,
        sent: 0,
        sleep: None,
    };
    let mut compressed = compress(paced);
    snapshots
        .put(bucket, metadata, chunk_size, &mut compressed)
        .await
}

/// Bytes of records compressed at a time.
const COMPRESS_BUFFER: usize = 256 << 10;

/// `raw` compressed as a snapshot is stored. Records of one fleet repeat
/// most of their bytes (labels, models, GPU names): zstd's fastest level
/// stores a fraction of them for little CPU, and what a snapshot costs
/// nats-server follows the bytes it stores.
fn compress<R: tokio::io::AsyncRead + Unpin>(
    raw: R,
) -> async_compression::tokio::bufread::ZstdEncoder<tokio::io::BufReader<R>> {
    async_compression::tokio::bufread::ZstdEncoder::with_quality(
        tokio::io::BufReader::with_capacity(COMPRESS_BUFFER, raw),
        async_compression::Level::Fastest,
    )
}

/// Most events waiting for the registry with which a snapshot is still
/// written: further behind, it is catching up (a registration wave, a
/// storm), nats-server is the busiest part, and the snapshot would be
/// stale before it is read.
const MAX_BACKLOG: u64 = 50_000;

/// What writes a bucket's snapshots, and how often.
#[derive(Debug)]
pub struct Writer {
    /// The index written.
    pub index: ReadIndex,
    /// Where to.
    pub snapshots: SnapshotStore,
    /// The `nodes` bucket's name (the object's).
    pub bucket: String,
    /// How often (zero: never).
    pub every: Duration,
    /// Bytes per chunk of the object.
    pub chunk_size: usize,
    /// Most bytes a second a write sends (0: no limit).
    pub bytes_per_s: u64,
    /// Writes and failed writes are counted here.
    pub counters: std::sync::Arc<crate::counters::Counters>,
}

/// Keeps the snapshot of the writer's bucket fresh: every `every`, while
/// `leading` (the lease of partition 0), not behind on events (`state`'s
/// backlog), and the index has moved since the last one, writes the index
/// as it is. Runs until `cancel`.
pub async fn keep_writing(
    writer: Writer,
    leading: watch::Receiver<bool>,
    state: std::sync::Arc<crate::state::RegistryState>,
    cancel: CancellationToken,
) {
    let Writer {
        index,
        snapshots,
        bucket,
        every,
        chunk_size,
        bytes_per_s,
        counters,
    } = writer;
    if every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut written: Option<u64> = None;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !*leading.borrow() {
            // A term of another instance writes its own.
            written = None;
            continue;
        }
        if state.backlog().is_none_or(|waiting| waiting > MAX_BACKLOG) {
            continue;
        }
        let Some(taken) = index.take_snapshot() else {
            continue;
        };
        let revision = taken.header.revision;
        if written == Some(revision) {
            continue;
        }
        let records = taken.nodes;
        let started = Instant::now();
        let span = info_span!("index snapshot", bucket = %bucket, revision, records);
        match write(&snapshots, &bucket, taken, chunk_size, bytes_per_s)
            .instrument(span)
            .await
        {
            Ok(bytes) => {
                info!(
                    revision,
                    records,
                    bytes,
                    write_ms = started.elapsed().as_millis(),
                    "index snapshot written"
                );
                written = Some(revision);
                Counters::bump(&counters.index_snapshots_written);
            }
            Err(e) => {
                Counters::bump(&counters.index_snapshot_failures);
                warn!(error = %e, "index snapshot not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{opened, ZSTD_MAGIC};
    use super::*;
    use crate::index::snapshot_format::Header;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    async fn read_all(bytes_per_s: u64, data: &[u8]) -> (Vec<u8>, Duration) {
        let mut paced = Paced {
            inner: data,
            bytes_per_s,
            started: None,
            sent: 0,
            sleep: None,
        };
        let started = Instant::now();
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = paced.read(&mut buf).await.expect("in memory");
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        (out, started.elapsed())
    }

    fn encoded(records: u64) -> Encoder {
        let value = br#"{"node_id":"n","labels":{"region":"eu"},"status":"online"}"#;
        Encoder::new(
            Header::new(1, records, records),
            (1..=records)
                .map(|revision| {
                    Some(registry_core::catalog::ImageSlot {
                        value: Bytes::from_static(value),
                        revision,
                        meta: Bytes::from_static(b"n online"),
                    })
                })
                .collect(),
            Bytes::new(),
        )
    }

    async fn bytes_of(mut reader: impl tokio::io::AsyncRead + Unpin) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        reader.read_to_end(&mut out).await?;
        Ok(out)
    }

    #[tokio::test]
    async fn a_snapshot_reads_the_same_compressed_or_as_stored_before_compression() {
        let raw = bytes_of(encoded(2_000)).await.expect("in memory");
        let stored = bytes_of(compress(encoded(2_000))).await.expect("in memory");
        assert!(stored.starts_with(&ZSTD_MAGIC));
        assert!(
            stored.len() * 10 < raw.len(),
            "{} bytes stored for {}",
            stored.len(),
            raw.len()
        );
        let from_compressed = bytes_of(opened(std::io::Cursor::new(stored)).await.expect("opens"))
            .await
            .expect("decompresses");
        assert_eq!(from_compressed, raw);
        let from_raw = bytes_of(
            opened(std::io::Cursor::new(raw.clone()))
                .await
                .expect("opens"),
        )
        .await
        .expect("reads");
        assert_eq!(from_raw, raw);
    }

    #[tokio::test]
    async fn bytes_after_a_compressed_snapshot_or_a_cut_one_do_not_read() {
        let stored = bytes_of(compress(encoded(100))).await.expect("in memory");
        let mut trailing = stored.clone();
        trailing.extend_from_slice(b"not a zstd frame");
        let read = bytes_of(opened(std::io::Cursor::new(trailing)).await.expect("opens")).await;
        assert!(read.is_err(), "trailing bytes were read: {read:?}");
        let cut = stored[..stored.len() / 2].to_vec();
        let read = bytes_of(opened(std::io::Cursor::new(cut)).await.expect("opens")).await;
        assert!(read.is_err(), "a cut stream was read: {read:?}");
    }

    #[tokio::test]
    async fn a_paced_write_sends_every_byte_no_faster_than_its_rate() {
        let data: Vec<u8> = (0..256u32 << 10).map(|i| (i % 251) as u8).collect();
        // Four reads of 64 KiB at 1 MiB/s: the last one is due after the
        // first three's 192 KiB, 187.5 ms in.
        let (paced, took) = read_all(1 << 20, &data).await;
        assert_eq!(paced, data);
        assert!(took >= Duration::from_millis(180), "took {took:?}");
        let (unpaced, _) = read_all(0, &data).await;
        assert_eq!(unpaced, data);
    }
}
