//! A cold start's snapshot read at a million nodes, without NATS: the
//! index snapshot as this build writes it (the catalog's image) against
//! the records-only format of earlier builds, read from memory the way the
//! registry reads them from the object store, with decompressing the same
//! bytes alone as the baseline.
//!
//!     cargo bench -p fleet-tests --bench snapshot_load
//!
//! `BENCH_NODES` (default 1000000) sets the size. The records are the
//! simulator's registrations with metrics, as the discovery bench makes
//! them.

use std::time::{Duration, Instant};

use bytes::Bytes;
use fleet_sim::generate::Rng;
use node_registry::index::snapshot::{self, Read};
use node_registry::index::snapshot_format::{Encoder, Header, VERSION_RECORDS_ONLY};
use registry_core::catalog::{Catalog, RecordView};
use tokio::io::AsyncReadExt;

#[path = "discovery/record.rs"]
mod record;

/// The registry's allocator, so the figures are its.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A snapshot's bytes as stored: zstd at the level the registry writes.
async fn stored(encoder: Encoder) -> Vec<u8> {
    let mut raw = Vec::new();
    let mut compressed = async_compression::tokio::bufread::ZstdEncoder::with_quality(
        tokio::io::BufReader::with_capacity(1 << 20, encoder),
        async_compression::Level::Fastest,
    );
    compressed.read_to_end(&mut raw).await.expect("in memory");
    raw
}

/// Reads `bytes` as the registry does; the time it took and the catalog.
async fn timed_read(bytes: &[u8], nodes: u64) -> (Duration, Read) {
    let started = Instant::now();
    let read = snapshot::read(std::io::Cursor::new(bytes.to_vec()), |_| Ok(()), nodes)
        .await
        .expect("the snapshot reads");
    (started.elapsed(), read)
}

// One thread, as the registry runs (a v1 read indexes on blocking threads
// of its own).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let nodes: u64 = std::env::var("BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let mut rng = Rng::new(record::SEED);
    let mut catalog = Catalog::with_capacity(nodes as usize);
    let mut json = 0usize;
    for i in 0..nodes {
        let stored = schemas::record::encode_record(&record::record(i, &mut rng));
        json += stored.len();
        let view = RecordView::of(&stored).expect("a record");
        catalog.insert(&view, stored.clone(), i + 1);
    }
    catalog.revision = nodes;
    // What the leader does under the index's read lock; the second take
    // is timed (the first one's memory is fresh).
    drop(catalog.image());
    let taking = Instant::now();
    let image = catalog.image();
    let taken = taking.elapsed();
    drop(catalog);
    let v2 = stored(Encoder::new(
        Header::new(1, nodes, image.slots.len() as u64),
        image.slots.clone(),
        image.postings.clone(),
    ))
    .await;
    let v1 = stored(Encoder::new(
        Header {
            version: VERSION_RECORDS_ONLY,
            layout: 0,
            ..Header::new(1, nodes, image.slots.len() as u64)
        },
        image.slots.clone(),
        Bytes::new(),
    ))
    .await;
    let postings = image.postings.len();
    drop(image);
    println!(
        "taking the image (the leader, under the index's read lock): {:.0} ms",
        taken.as_secs_f64() * 1e3
    );
    println!(
        "{nodes} records, {} B of JSON each; stored: records only {:.1} MB, image {:.1} MB (posting lists {:.1} MB raw)",
        json as u64 / nodes.max(1),
        v1.len() as f64 / 1e6,
        v2.len() as f64 / 1e6,
        postings as f64 / 1e6
    );

    // Baseline: decompressing the image's bytes, nothing else.
    let started = Instant::now();
    let mut decompressed = async_compression::tokio::bufread::ZstdDecoder::new(&v2[..]);
    let mut sink = vec![0u8; 2 << 20];
    let mut raw = 0usize;
    loop {
        let n = decompressed.read(&mut sink).await.expect("in memory");
        if n == 0 {
            break;
        }
        raw += n;
    }
    let baseline = started.elapsed();
    println!(
        "baseline, decompressing the image alone: {:.2} s ({:.0} MB)",
        baseline.as_secs_f64(),
        raw as f64 / 1e6
    );
    for (name, bytes) in [("records only (v1)", &v1), ("image (v2)", &v2)] {
        if std::env::var("BENCH_SKIP").is_ok_and(|skip| name.contains(&skip)) {
            continue;
        }
        let (took, read) = timed_read(bytes, nodes).await;
        println!(
            "read {name}: {:.2} s, of which building the catalog {:.2} s; {} nodes, {} online",
            took.as_secs_f64(),
            read.busy.as_secs_f64(),
            read.catalog.len(),
            read.catalog
                .with_status(schemas::status::NodeStatus::Online)
                .len()
        );
    }
}
