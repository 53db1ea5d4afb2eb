//! Where a node's bytes go: the registry's two per-node structures (the
//! read index's catalog and the leader's fleet) built in-process from the
//! simulator's register events and one heartbeat each, as the registry
//! builds them, with every allocation counted as requested (and the records
//! also as mimalloc's size classes round them). The scale bench measures the
//! process's RSS; this one says which structure the RSS is made of.
//!
//! `BENCH_NODES=100000 cargo bench -p fleet-tests --bench memory`

use chrono::Utc;
use registry_core::catalog::Catalog;
use registry_core::lifecycle::{Fleet, LifecycleSettings, Write};
use schemas::validate::validate_event;
use stats_alloc::{StatsAlloc, INSTRUMENTED_SYSTEM};
use subjects::NodeId;

/// Every allocation counted (the system allocator: the registry's
/// mimalloc rounds blocks up to its size classes, estimated below).
#[global_allocator]
static ALLOCATOR: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

/// The size of mimalloc's bin for a small block of `size` bytes: 8-byte
/// steps to 64, then four bins per doubling (its `mi_bin`).
fn size_class(size: usize) -> usize {
    let words = size.div_ceil(8).max(1);
    if words <= 8 {
        return words * 8;
    }
    let w = words - 1;
    let top = usize::BITS - 1 - w.leading_zeros();
    let shift = top - 2;
    (((w >> shift) + 1) << shift) * 8
}

/// Live bytes and blocks now.
fn live() -> (isize, isize) {
    let s = ALLOCATOR.stats();
    (
        s.bytes_allocated as isize - s.bytes_deallocated as isize,
        s.allocations as isize - s.deallocations as isize,
    )
}

fn per_node(label: &str, before: (isize, isize), after: (isize, isize), n: u64) {
    let n = n as f64;
    println!(
        "  {label:<44} {:>7.0} B/node  {:>5.2} blocks/node",
        (after.0 - before.0) as f64 / n,
        (after.1 - before.1) as f64 / n,
    );
}

fn main() {
    let nodes: u64 = std::env::var("BENCH_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    println!("memory per node, {nodes} nodes (simulator's register events, one heartbeat each)");
    let mut fleet = Fleet::new(LifecycleSettings::default());
    let mut catalog = Catalog::new();
    let mut rng = fleet_sim::generate::Rng::new(7);
    let mut record_bytes = 0usize;
    let mut record_rounded = 0usize;
    let start = live();
    let mut seq = 0;
    for n in 0..nodes {
        let Ok(id) = NodeId::parse(&format!("sim-node-{n}")) else {
            panic!("a valid node id");
        };
        let events = [
            fleet_sim::generate::register(id.as_str(), n, 1, 5),
            fleet_sim::generate::heartbeat(id.as_str(), 2, &mut rng),
        ];
        for event in events {
            seq += 1;
            let Ok(valid) = validate_event(event, &id) else {
                panic!("the simulator's event is valid");
            };
            // As the worker does: write, confirm to the fleet, and the read
            // index takes the same bytes.
            for write in fleet.apply(&valid, Utc::now(), seq).writes {
                if let Write::Put { record, .. } = write {
                    let encoded = schemas::record::encode_record(&record);
                    fleet.confirm_write(&id, seq, encoded.clone());
                    catalog.insert(&*record, encoded.clone(), seq);
                    if n == 1 && std::env::var("BENCH_SHOW").is_ok() {
                        println!("{}", String::from_utf8_lossy(&encoded));
                    }
                    if valid.kind == schemas::status::EventType::Heartbeat {
                        record_bytes += encoded.len();
                        record_rounded += size_class(encoded.len());
                    }
                }
            }
        }
    }
    let end = live();
    let n = nodes as f64;
    println!(
        "  record JSON: {:.0} B/node, {:.0} B/node in its size class",
        record_bytes as f64 / n,
        record_rounded as f64 / n
    );
    per_node("all (fleet + catalog + shared records)", start, end, nodes);
    let before_drop = live();
    drop(catalog);
    let after_catalog = live();
    per_node(
        "catalog, without the records",
        after_catalog,
        before_drop,
        nodes,
    );
    drop(fleet);
    let after_fleet = live();
    per_node("fleet with the records", after_fleet, after_catalog, nodes);
}
