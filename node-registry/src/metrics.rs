//! The registry's metrics, through the OpenTelemetry API only (the binary
//! installs the SDK and its exporter; without it every instrument here is a
//! no-op). Names follow the OpenTelemetry conventions and come out in
//! Prometheus as `docs/OPERATIONS.md` lists them (`fleet.nodes` is
//! `fleet_nodes{status}`, part of the contract).
//!
//! Nearly everything is observed when collected, from what the registry
//! keeps anyway: the shared [`Counters`], the instance's
//! [`RegistryState`], and the read index (every instance's copy of the
//! `nodes` bucket, so every instance reports the same fleet). The hot path
//! pays an atomic add per event, as before, and two histogram records
//! (a discovery request, a batch).
//!
//! Fleet figures from heartbeats: one series per node (CPU, memory, disk,
//! load) and per GPU (utilisation, memory used and total) while the fleet
//! has at most `per_node_limit` nodes online or degraded; always, the same
//! figures per role and region, so a million-node fleet does not make a
//! million series unless asked. They are the records' figures: as fresh as
//! the registry's checkpoints (a minute by default).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use opentelemetry::metrics::{Histogram, Meter};
use opentelemetry::KeyValue;
use registry_core::catalog::{Catalog, GpusCounted};
use roaring::RoaringBitmap;
use schemas::status::NodeStatus;

use crate::counters::{Counters, EVENT_TYPES};
use crate::index::ReadIndex;
use crate::state::RegistryState;

/// The meter's name (the instrumentation scope).
pub const METER: &str = "node-registry";

/// Default of `metrics_per_gpu_limit`.
pub const DEFAULT_PER_GPU_LIMIT: usize = 10_000;

/// How many series (attribute sets) the per-node and per-GPU instruments
/// may carry, by name prefix, for the SDK's views; past it the SDK folds
/// the rest into one overflow series. The SDK reserves room for each limit
/// up front, whatever the fleet (about 150 B a series: at 200 000 per
/// instrument the reservation alone was 330 B per node at 100 000 nodes),
/// so these are what the series need and no more.
pub fn cardinality_limits(
    per_node_limit: usize,
    per_gpu_limit: usize,
) -> Vec<(&'static str, usize)> {
    vec![
        ("fleet.node.", per_node_limit + 1),
        ("fleet.gpu.", per_gpu_limit + 1),
    ]
}

/// Default of `metrics_per_node_limit`.
pub const DEFAULT_PER_NODE_LIMIT: usize = 5_000;

/// The snapshot of the index is computed at most this often (several
/// instruments read it in one collection).
const SNAPSHOT_AGE: Duration = Duration::from_secs(1);

const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn meter() -> Meter {
    opentelemetry::global::meter(METER)
}

/// Time to answer a discovery request, by endpoint (seconds).
pub fn discover_duration() -> &'static Histogram<f64> {
    static HISTOGRAM: OnceLock<Histogram<f64>> = OnceLock::new();
    HISTOGRAM.get_or_init(|| {
        meter()
            .f64_histogram("registry.discover.duration")
            .with_unit("s")
            .with_description("Time to answer registry.discover, get and list, by endpoint")
            .with_boundaries(vec![
                0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05,
                0.1, 0.25, 0.5, 1.0, 2.5,
            ])
            .build()
    })
}

/// Events in one batch taken from the consumer.
pub fn batch_size() -> &'static Histogram<u64> {
    static HISTOGRAM: OnceLock<Histogram<u64>> = OnceLock::new();
    HISTOGRAM.get_or_init(|| {
        meter()
            .u64_histogram("registry.batch.size")
            .with_unit("{event}")
            .with_description("Events per batch taken from the registry consumer")
            .with_boundaries(vec![1.0, 2.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0])
            .build()
    })
}

/// Time to process one batch: decode, decide, write, acknowledge (seconds).
pub fn batch_duration() -> &'static Histogram<f64> {
    static HISTOGRAM: OnceLock<Histogram<f64>> = OnceLock::new();
    HISTOGRAM.get_or_init(|| {
        meter()
            .f64_histogram("registry.batch.duration")
            .with_unit("s")
            .with_description("Time to process one batch of events, writes and acks included")
            .with_boundaries(vec![
                0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                2.5, 5.0,
            ])
            .build()
    })
}

/// What the metrics read.
#[derive(Debug, Clone)]
pub struct MetricSources {
    /// The read index (the fleet as every instance sees it).
    pub index: ReadIndex,
    /// The instance's own state (leader, backlog, self-preservation).
    pub state: Arc<RegistryState>,
    /// The registry's counters.
    pub counters: Arc<Counters>,
    /// Most nodes with series of their own (above it: per role and region).
    pub per_node_limit: usize,
}

/// One node's figures, for the per-node series.
#[derive(Debug, Clone)]
struct NodeSample {
    attributes: Vec<KeyValue>,
    cpu: Option<f64>,
    memory: Option<f64>,
    disk: Option<f64>,
    load: Option<f64>,
    /// Per GPU.
    gpus: Vec<GpuSample>,
}

/// The figures of one GPU.
#[derive(Debug, Clone, Copy)]
struct GpuSample {
    index: u32,
    /// Utilisation, 0 to 1.
    utilization: Option<f64>,
    /// Memory in use, bytes.
    used: Option<f64>,
    /// Memory, bytes.
    total: f64,
    /// °C.
    temperature: Option<f64>,
    /// W.
    power: Option<f64>,
    /// 1 in service, 0 failed or quarantined.
    in_service: f64,
}

/// Figures of one role × region group.
#[derive(Debug, Clone)]
struct Group {
    role: String,
    region: String,
    by_status: [u64; 4],
    cpu_mean: Option<f64>,
    gpu_mean: Option<f64>,
    vram_total_bytes: f64,
}

/// What one collection reads from the index.
#[derive(Debug, Default)]
struct Snapshot {
    by_status: [u64; 4],
    nodes: u64,
    revision: u64,
    groups: Vec<Group>,
    per_node: Vec<NodeSample>,
}

const STATUSES: [NodeStatus; 4] = [
    NodeStatus::Online,
    NodeStatus::Degraded,
    NodeStatus::Offline,
    NodeStatus::Maintenance,
];

/// Nodes with no role, or no `region` label, are grouped under this.
const NONE: &str = "none";

fn mean(values: impl Iterator<Item = f64>) -> Option<f64> {
    let (sum, n) = values.fold((0.0, 0u64), |(s, n), v| (s + v, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// Splits `all` by the postings given (and the rest, under [`NONE`]).
fn partition<'a>(
    all: &RoaringBitmap,
    postings: impl Iterator<Item = (&'a str, &'a RoaringBitmap)>,
) -> Vec<(String, RoaringBitmap)> {
    let mut rest = all.clone();
    let mut parts = Vec::new();
    for (name, slots) in postings {
        let part = slots & all;
        if !part.is_empty() {
            rest -= &part;
            parts.push((name.to_owned(), part));
        }
    }
    if !rest.is_empty() {
        parts.push((NONE.to_owned(), rest));
    }
    parts
}

fn snapshot(catalog: &Catalog, per_node_limit: usize) -> Snapshot {
    let statuses: Vec<RoaringBitmap> = STATUSES.iter().map(|s| catalog.with_status(*s)).collect();
    let mut by_status = [0u64; 4];
    for (count, slots) in by_status.iter_mut().zip(&statuses) {
        *count = slots.len();
    }
    let all = catalog.all();
    let mut groups = Vec::new();
    for (role, role_slots) in partition(&all, catalog.roles()) {
        for (region, slots) in partition(&role_slots, catalog.label_values("region")) {
            let mut counts = [0u64; 4];
            for (count, status) in counts.iter_mut().zip(&statuses) {
                *count = slots.intersection_len(status);
            }
            let facts: Vec<_> = slots.iter().filter_map(|s| catalog.facts(s)).collect();
            groups.push(Group {
                role: role.clone(),
                region,
                by_status: counts,
                cpu_mean: mean(
                    facts
                        .iter()
                        .map(|f| f.cpu_pct)
                        .filter(|v| v.is_finite())
                        .map(|v| v / 100.0),
                ),
                gpu_mean: mean(
                    facts
                        .iter()
                        .filter(|f| f.total_vram_gb > 0.0)
                        .map(|f| f.gpu_pct / 100.0),
                ),
                vram_total_bytes: facts.iter().fold(0.0, |sum, f| sum + f.total_vram_gb * GIB),
            });
        }
    }
    // Per node: the online and degraded ones (an offline node's last
    // figures are history, not state), while few enough.
    let live = &statuses[0] | &statuses[1];
    let per_node = if live.len() as usize <= per_node_limit {
        live.iter()
            .filter_map(|slot| catalog.record(slot))
            .map(|record| {
                let region = record.labels.get("region").cloned().unwrap_or_default();
                let attributes = vec![
                    KeyValue::new("node_id", record.node_id.clone()),
                    KeyValue::new("role", record.role.clone().unwrap_or_default()),
                    KeyValue::new("region", region),
                ];
                let m = record.metrics.as_ref();
                let ratio = |v: Option<f64>| v.filter(|v| v.is_finite()).map(|v| v / 100.0);
                let cards = record
                    .capabilities
                    .as_ref()
                    .map(|c| c.gpus.as_slice())
                    .unwrap_or_default();
                let usage = m.map(|m| m.gpus.as_slice()).unwrap_or_default();
                let gpus = cards
                    .iter()
                    .enumerate()
                    .map(|(i, card)| {
                        let used = usage.iter().find(|u| u.index as usize == i);
                        let finite = |v: Option<f64>| v.filter(|v| v.is_finite());
                        GpuSample {
                            index: i as u32,
                            utilization: used.and_then(|u| ratio(u.util_pct)),
                            used: used.and_then(|u| u.vram_used_gb).map(|g| g * GIB),
                            total: card.vram_gb * GIB,
                            temperature: finite(used.and_then(|u| u.temperature_c)),
                            power: finite(used.and_then(|u| u.power_w)),
                            in_service: if GpusCounted::InService.counts(&record, i) {
                                1.0
                            } else {
                                0.0
                            },
                        }
                    })
                    .collect();
                NodeSample {
                    attributes,
                    cpu: ratio(m.and_then(|m| m.cpu_pct)),
                    memory: ratio(m.and_then(|m| m.ram_pct)),
                    disk: ratio(m.and_then(|m| m.disk_pct)),
                    load: m.and_then(|m| m.load_1m).filter(|v| v.is_finite()),
                    gpus,
                }
            })
            .collect()
    } else {
        Vec::new()
    };
    Snapshot {
        by_status,
        nodes: catalog.len() as u64,
        revision: catalog.revision,
        groups,
        per_node,
    }
}

/// The snapshot of the index, at most [`SNAPSHOT_AGE`] old.
#[derive(Debug)]
struct Snapshots {
    index: ReadIndex,
    per_node_limit: usize,
    last: Mutex<Option<(Instant, Arc<Snapshot>)>>,
}

impl Snapshots {
    fn get(&self) -> Arc<Snapshot> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, snapshot)) = last.as_ref() {
            if at.elapsed() < SNAPSHOT_AGE {
                return snapshot.clone();
            }
        }
        let fresh = Arc::new(self.index.read(|c| snapshot(c, self.per_node_limit)));
        *last = Some((Instant::now(), fresh.clone()));
        fresh
    }
}

/// The registered observable instruments; dropping it stops nothing (the
/// provider owns the callbacks), keeping it documents their lifetime.
#[derive(Debug)]
pub struct RegistryMetrics {
    _instruments: Vec<Box<dyn std::fmt::Debug + Send + Sync>>,
}

/// An observed f64 gauge: its name, description and unit, and what it
/// observes at each collection.
fn f64_gauge(
    meter: &Meter,
    (name, description, unit): (&'static str, &'static str, &'static str),
    observe: impl Fn(&dyn opentelemetry::metrics::AsyncInstrument<f64>) + Send + Sync + 'static,
) -> Box<dyn std::fmt::Debug + Send + Sync> {
    Box::new(
        meter
            .f64_observable_gauge(name)
            .with_description(description)
            .with_unit(unit)
            .with_callback(observe)
            .build(),
    )
}

/// Registers every observed instrument.
pub fn register(sources: MetricSources) -> RegistryMetrics {
    let meter = meter();
    let snapshots = Arc::new(Snapshots {
        index: sources.index.clone(),
        per_node_limit: sources.per_node_limit,
        last: Mutex::new(None),
    });
    let mut kept: Vec<Box<dyn std::fmt::Debug + Send + Sync>> = Vec::new();

    let s = snapshots.clone();
    kept.push(Box::new(
        meter
            .u64_observable_gauge("fleet.nodes")
            .with_description("Nodes in the registry, by status")
            .with_callback(move |o| {
                let snap = s.get();
                for (status, count) in STATUSES.iter().zip(snap.by_status) {
                    o.observe(count, &[KeyValue::new("status", status.as_str())]);
                }
            })
            .build(),
    ));
    let s = snapshots.clone();
    kept.push(Box::new(
        meter
            .u64_observable_gauge("fleet.nodes.by_group")
            .with_description("Nodes by status, role and region label")
            .with_callback(move |o| {
                for g in &s.get().groups {
                    for (status, count) in STATUSES.iter().zip(g.by_status) {
                        o.observe(
                            count,
                            &[
                                KeyValue::new("status", status.as_str()),
                                KeyValue::new("role", g.role.clone()),
                                KeyValue::new("region", g.region.clone()),
                            ],
                        );
                    }
                }
            })
            .build(),
    ));
    let group = |g: &Group| {
        [
            KeyValue::new("role", g.role.clone()),
            KeyValue::new("region", g.region.clone()),
        ]
    };
    for (name, description, unit, pick) in [
        (
            "fleet.group.cpu.utilization",
            "Mean CPU use of a role and region's nodes",
            "1",
            (|g: &Group| g.cpu_mean) as fn(&Group) -> Option<f64>,
        ),
        (
            "fleet.group.gpu.utilization",
            "Mean GPU use of a role and region's GPU nodes",
            "1",
            |g: &Group| g.gpu_mean,
        ),
        (
            "fleet.group.gpu.memory.total",
            "VRAM of a role and region's GPUs",
            "By",
            |g: &Group| Some(g.vram_total_bytes),
        ),
    ] {
        let s = snapshots.clone();
        kept.push(f64_gauge(&meter, (name, description, unit), move |o| {
            for g in &s.get().groups {
                if let Some(v) = pick(g) {
                    o.observe(v, &group(g));
                }
            }
        }));
    }
    for (name, description, unit, pick) in [
        (
            "fleet.node.cpu.utilization",
            "A node's CPU use (latest checkpoint)",
            "1",
            (|n: &NodeSample| n.cpu) as fn(&NodeSample) -> Option<f64>,
        ),
        (
            "fleet.node.memory.utilization",
            "A node's RAM use",
            "1",
            |n: &NodeSample| n.memory,
        ),
        (
            "fleet.node.disk.utilization",
            "A node's disk use",
            "1",
            |n: &NodeSample| n.disk,
        ),
        (
            "fleet.node.load.1m",
            "A node's 1-minute load average",
            "",
            |n: &NodeSample| n.load,
        ),
    ] {
        let s = snapshots.clone();
        kept.push(f64_gauge(&meter, (name, description, unit), move |o| {
            for n in &s.get().per_node {
                if let Some(v) = pick(n) {
                    o.observe(v, &n.attributes);
                }
            }
        }));
    }
    for (name, description, unit, pick) in [
        (
            "fleet.gpu.utilization",
            "A GPU's use",
            "1",
            (|g: &GpuSample| g.utilization) as fn(&GpuSample) -> Option<f64>,
        ),
        (
            "fleet.gpu.memory.used",
            "A GPU's memory in use",
            "By",
            |g| g.used,
        ),
        ("fleet.gpu.memory.total", "A GPU's memory", "By", |g| {
            Some(g.total)
        }),
        ("fleet.gpu.temperature", "A GPU's temperature", "Cel", |g| {
            g.temperature
        }),
        ("fleet.gpu.power", "A GPU's power draw", "W", |g| g.power),
        (
            "fleet.gpu.in_service",
            "1 while a GPU is in service, 0 while failed or quarantined",
            "",
            |g| Some(g.in_service),
        ),
    ] {
        let s = snapshots.clone();
        kept.push(f64_gauge(&meter, (name, description, unit), move |o| {
            for n in &s.get().per_node {
                for gpu in &n.gpus {
                    if let Some(v) = pick(gpu) {
                        let mut attributes = n.attributes.clone();
                        attributes.push(KeyValue::new("gpu", i64::from(gpu.index)));
                        o.observe(v, &attributes);
                    }
                }
            }
        }));
    }
    let s = snapshots.clone();
    kept.push(Box::new(
        meter
            .u64_observable_gauge("registry.index.nodes")
            .with_description("Records in this instance's read index")
            .with_callback(move |o| o.observe(s.get().nodes, &[]))
            .build(),
    ));
    let s = snapshots;
    kept.push(Box::new(
        meter
            .u64_observable_gauge("registry.index.revision")
            .with_description("The nodes bucket's revision this instance's index has applied")
            .with_callback(move |o| o.observe(s.get().revision, &[]))
            .build(),
    ));

    let state = sources.state.clone();
    kept.push(Box::new(
        meter
            .u64_observable_gauge("registry.leader")
            .with_description("1 while this instance holds the leader lease")
            .with_callback(move |o| o.observe(u64::from(state.is_leader()), &[]))
            .build(),
    ));
    let state = sources.state.clone();
    kept.push(Box::new(
        meter
            .u64_observable_gauge("registry.consumer.pending")
            .with_description("Events not yet processed by the leader (pending + ack pending)")
            .with_unit("{event}")
            .with_callback(move |o| {
                if let Some(backlog) = state.backlog() {
                    o.observe(backlog, &[]);
                }
            })
            .build(),
    ));
    let state = sources.state.clone();
    kept.push(Box::new(
        meter
            .u64_observable_gauge("registry.self_preservation")
            .with_description("1 while transitions are held: scope fleet, or one region")
            .with_callback(move |o| {
                let held = state.self_preservation();
                let fleet = held.as_ref().is_some_and(|h| h["scope"] == "fleet");
                o.observe(u64::from(fleet), &[KeyValue::new("scope", "fleet")]);
                let regions = held
                    .as_ref()
                    .and_then(|h| h["regions"].as_array().cloned())
                    .unwrap_or_default();
                for region in regions.iter().filter_map(|r| r.as_str()) {
                    o.observe(
                        1,
                        &[
                            KeyValue::new("scope", "region"),
                            KeyValue::new("region", region.to_owned()),
                        ],
                    );
                }
            })
            .build(),
    ));

    let c = sources.counters.clone();
    kept.push(Box::new(
        meter
            .u64_observable_counter("registry.events")
            .with_description("Events consumed, by type")
            .with_callback(move |o| {
                for (kind, count) in EVENT_TYPES.iter().zip(&c.events_by_type) {
                    o.observe(
                        Counters::get(count),
                        &[KeyValue::new("type", kind.as_str())],
                    );
                }
            })
            .build(),
    ));
    let c = sources.counters.clone();
    kept.push(Box::new(
        meter
            .u64_observable_counter("registry.events.refused")
            .with_description("Events refused, by reason")
            .with_callback(move |o| {
                for (reason, count) in [
                    ("bad", &c.events_bad),
                    ("oversized", &c.events_oversized),
                    ("spoofed", &c.events_spoofed),
                    ("forged", &c.events_forged),
                    ("replayed", &c.events_replayed),
                ] {
                    o.observe(Counters::get(count), &[KeyValue::new("reason", reason)]);
                }
            })
            .build(),
    ));
    for (name, description, pick) in [
        (
            "registry.kv.writes",
            "Node record writes made",
            (|c: &Counters| Counters::get(&c.kv_writes)) as fn(&Counters) -> u64,
        ),
        (
            "registry.kv.conflicts",
            "Record writes refused for a changed revision",
            |c| Counters::get(&c.kv_conflicts),
        ),
        (
            "registry.kv.write_failures",
            "Record writes that failed (conflicts included)",
            |c| Counters::get(&c.kv_write_failures),
        ),
        (
            "registry.events.lost",
            "Events the event stream discarded before the registry read them",
            |c| Counters::get(&c.events_lost),
        ),
        ("registry.joins", "Nodes joined with a token", |c| {
            Counters::get(&c.joins)
        }),
        (
            "registry.index.snapshots",
            "Index snapshots written by this instance",
            |c| Counters::get(&c.index_snapshots_written),
        ),
        (
            "registry.index.snapshot.failures",
            "Index snapshots that could not be written",
            |c| Counters::get(&c.index_snapshot_failures),
        ),
        (
            "registry.index.snapshot.loads",
            "Loads of the read index started from a snapshot",
            |c| Counters::get(&c.index_snapshot_loads),
        ),
        (
            "registry.index.snapshot.refused",
            "Snapshots found at a load but not used (another bucket, too old or ahead, unreadable)",
            |c| Counters::get(&c.index_snapshots_refused),
        ),
        ("registry.joins.refused", "Join requests refused", |c| {
            Counters::get(&c.joins_refused)
        }),
    ] {
        let c = sources.counters.clone();
        kept.push(Box::new(
            meter
                .u64_observable_counter(name)
                .with_description(description)
                .with_callback(move |o| o.observe(pick(&c), &[]))
                .build(),
        ));
    }
    let c = sources.counters;
    kept.push(Box::new(
        meter
            .u64_observable_counter("registry.alerts")
            .with_description("Alerts published, by type")
            .with_callback(move |o| {
                let by_type = c
                    .alerts_by_type
                    .lock()
                    .map(|m| m.clone())
                    .unwrap_or_default();
                for (kind, count) in by_type {
                    o.observe(count, &[KeyValue::new("type", kind)]);
                }
            })
            .build(),
    ));
    RegistryMetrics { _instruments: kept }
}
