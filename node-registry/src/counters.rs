//! What the registry counts: reported in the micro service's `$SRV.STATS`
//! data and, read by `metrics`, as OpenTelemetry counters. Every part that
//! counts holds the one shared [`Counters`]; counting is an atomic add, so
//! the hot path pays nothing more when metrics are exported.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use schemas::status::EventType;

/// Counters of the registry, reported in the service's `$SRV.STATS` data.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events applied.
    pub events_applied: AtomicU64,
    /// Events rejected (malformed, oversized, spoofed, invalid).
    pub events_rejected: AtomicU64,
    /// Alerts published.
    pub alerts_published: AtomicU64,
    /// KV writes made.
    pub kv_writes: AtomicU64,
    /// KV writes that failed (conflict or backend).
    pub kv_write_failures: AtomicU64,
    /// `reannounce` tasks sent.
    pub reannounces_sent: AtomicU64,
    /// Connection events (opened/closed) of known nodes taken in.
    pub connection_events: AtomicU64,
    /// Connection events that could not be read (logged and dropped).
    pub connection_events_rejected: AtomicU64,
    /// Events refused for a missing or wrong signature.
    pub events_forged: AtomicU64,
    /// Events refused as replays (seq not above the last accepted).
    pub events_replayed: AtomicU64,
    /// Nodes joined with a token.
    pub joins: AtomicU64,
    /// Join requests refused (bad, unknown, used or expired token).
    pub joins_refused: AtomicU64,
    /// Events applied, by type (register, heartbeat, deregister).
    pub events_by_type: [AtomicU64; 3],
    /// Events refused as malformed or invalid (not for size, id or key).
    pub events_bad: AtomicU64,
    /// Events refused for their size.
    pub events_oversized: AtomicU64,
    /// Events refused for a payload id other than the subject's.
    pub events_spoofed: AtomicU64,
    /// KV writes refused for a changed revision (someone else wrote).
    pub kv_conflicts: AtomicU64,
    /// Events the stream discarded before the registry read them.
    pub events_lost: AtomicU64,
    /// Registrations and deregistrations not copied to the lifecycle stream.
    pub lifecycle_copies_failed: AtomicU64,
    /// Index snapshots written.
    pub index_snapshots_written: AtomicU64,
    /// Index snapshots that could not be written.
    pub index_snapshot_failures: AtomicU64,
    /// Loads of the read index started from a snapshot.
    pub index_snapshot_loads: AtomicU64,
    /// Snapshots found but not used (another bucket, too old or ahead, bytes
    /// that do not read).
    pub index_snapshots_refused: AtomicU64,
    /// Alerts published, by type (rare: a lock is fine).
    pub alerts_by_type: Mutex<BTreeMap<String, u64>>,
}

/// The event types, in the order of [`Counters::events_by_type`].
pub const EVENT_TYPES: [EventType; 3] = [
    EventType::Register,
    EventType::Heartbeat,
    EventType::Deregister,
];

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an applied event of `kind`.
    pub fn count_event(&self, kind: EventType) {
        if let Some(i) = EVENT_TYPES.iter().position(|k| *k == kind) {
            Self::bump(&self.events_by_type[i]);
        }
    }

    /// Counts a published alert of type `kind`.
    pub fn count_alert(&self, kind: &str) {
        Self::bump(&self.alerts_published);
        if let Ok(mut by_type) = self.alerts_by_type.lock() {
            *by_type.entry(kind.to_owned()).or_default() += 1;
        }
    }

    /// A counter's value.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Every counter by name, as `$SRV.STATS` reports them.
    pub fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "events_applied": get(&self.events_applied),
            "events_rejected": get(&self.events_rejected),
            "alerts_published": get(&self.alerts_published),
            "kv_writes": get(&self.kv_writes),
            "kv_write_failures": get(&self.kv_write_failures),
            "reannounces_sent": get(&self.reannounces_sent),
            "connection_events": get(&self.connection_events),
            "connection_events_rejected": get(&self.connection_events_rejected),
            "events_forged": get(&self.events_forged),
            "events_replayed": get(&self.events_replayed),
            "joins": get(&self.joins),
            "joins_refused": get(&self.joins_refused),
        })
    }
}
