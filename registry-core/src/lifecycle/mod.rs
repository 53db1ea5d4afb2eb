//! The lifecycle state machine and liveness sweeper: pure, time as an argument.
//!
//! [`Fleet`] holds what the registry knows of every node and turns events and
//! the passing of time into [`Effects`]: records to write, alerts to publish,
//! nodes to ask for a `reannounce`. It does no I/O, so tests drive hours of
//! node life in microseconds; the worker executes the effects and reports the
//! revisions back.
//!
//! ```text
//! register ──▶ online ──(degraded_after)──▶ degraded ──(offline_after)──▶ offline
//!                ▲            silence            │           silence          │
//!                └────────── heartbeat / register ┴─────────────────────────────┘
//! deregister: record deleted (from any status)
//! ```
//!
//! Cost at scale: a heartbeat touches one node and no queue; a sweep touches
//! only the nodes whose deadline has come (a deadline wheel, re-checked
//! lazily: a node's one entry moves when it is found early), so a million
//! quiet nodes cost nothing between their checkpoints. Each node keeps the
//! liveness figures and the bytes of its record as last written (shared with
//! the read index), not a decoded copy.
//!
//! One job a file:
//! - here: the settings, what is known of a node ([`Tracked`]) and the
//!   fleet's slots, counts and regions;
//! - [`effects`]: what the fleet asks the service to do ([`Effects`]) and
//!   what it hears back (written, failed, bucket lost); derived alert ids;
//! - `events`: register, heartbeat, deregister, connection open/close;
//! - `wheel`: the deadline wheel and the sweep that judges silence;
//! - `preservation`: self-preservation, for the registry's own faults and
//!   for mass silence in the fleet or a region;
//! - `restore`: the fleet rebuilt from KV at a start or takeover;
//! - `operator`: drain (cordon) and resume (uncordon), a GPU cordoned,
//!   remove;
//! - `gpus`: GPUs in and out of service (quarantine and recovery).

mod effects;
mod events;
mod gpus;
mod operator;
mod pacing;
mod preservation;
mod restore;
mod wheel;

pub use effects::{alert_id, Effects, Write};
pub use gpus::summary as gpu_summary;
pub use operator::{Drain, GpuCordonRequest, OperatorError};
pub use preservation::{OwnFault, SilenceCensus};
pub use restore::Grace;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use schemas::status::{AlertType, EventType, NodeStatus};
use schemas::validate::ValidEvent;
use schemas::{Alert, NodeRecord, SelfPreservationFigures};
use subjects::NodeId;
use tracing::warn;

use crate::slot_ids::SlotIds;
use uuid::Uuid;

/// The label whose value groups nodes for self-preservation per region.
pub const REGION_LABEL: &str = "region";

/// The knobs of the lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleSettings {
    /// Silence after which an online node becomes degraded.
    pub degraded_after: Duration,
    /// Silence after which a node becomes offline.
    pub offline_after: Duration,
    /// Least time between two KV checkpoints of one node's heartbeat (a
    /// large fleet spaces them further: see `checkpoint_writes_per_s`).
    pub checkpoint_interval: Duration,
    /// Most checkpoint writes per second the fleet as a whole should cost:
    /// a fleet larger than `checkpoint_interval` × this checkpoints each
    /// node every `nodes / checkpoint_writes_per_s` seconds instead.
    /// Zero: no limit.
    pub checkpoint_writes_per_s: u32,
    /// Least time between two `reannounce` requests to one unknown node.
    pub reannounce_interval: Duration,
    /// Share of watched nodes silent at once above which the registry
    /// suspects itself and holds transitions (0.5 = more than half).
    pub self_preservation_threshold: f64,
    /// Fewest watched nodes for self-preservation to apply at all (to the
    /// fleet, and to each region).
    pub self_preservation_min_fleet: usize,
    /// How long after the server reports a node's connection closed, with
    /// nothing heard from the node since, it is degraded (rides out a
    /// reconnect). Zero: connection events are ignored.
    pub disconnect_grace: Duration,
    /// How long a failed GPU must report healthy, without a break, before
    /// it returns to service.
    pub gpu_recovery: Duration,
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            degraded_after: Duration::from_secs(90),
            offline_after: Duration::from_secs(300),
            checkpoint_interval: Duration::from_secs(60),
            // At a million nodes a record write costs nats-server more
            // than a heartbeat; 2 000 rather than 5 000 a second took the
            // 10-minute backlog's median from 7.4 s to 0.04 s
            // (docs/BENCHMARKS.md, issue 17's tenth stop).
            checkpoint_writes_per_s: 2000,
            reannounce_interval: Duration::from_secs(10),
            self_preservation_threshold: 0.5,
            self_preservation_min_fleet: 10,
            disconnect_grace: Duration::from_secs(10),
            gpu_recovery: Duration::from_secs(600),
        }
    }
}

/// A node's record: the bytes last written to KV, or a newer decision that
/// is not written yet.
#[derive(Debug, Clone, PartialEq)]
enum RecordState {
    /// As stored in KV (the JSON value); shared with the read index.
    Written(Bytes),
    /// Decided, handed to the worker, not yet confirmed (or failed).
    Pending(Arc<NodeRecord>),
}

/// What the registry knows of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    id: NodeId,
    record: RecordState,
    /// Its status.
    pub status: NodeStatus,
    /// Server receive time of its latest register or heartbeat.
    pub last_seen: DateTime<Utc>,
    /// No judgement of silence before this time plus `degraded_after`
    /// (the grace after a registry start or a self-preservation episode).
    pub judged_from: DateTime<Utc>,
    /// When `status` was entered.
    pub status_since: DateTime<Utc>,
    /// When the record was last handed to the worker for writing.
    pub last_written: DateTime<Utc>,
    /// The KV revision of the record, once written.
    pub revision: Option<u64>,
    /// A write failed or a checkpoint is owed: write on the next sweep.
    pub needs_write: bool,
    /// Whether its checkpoints run on its phase yet (since its first one
    /// after a registration or a restore): see `pacing::checkpoint_due`.
    phased: bool,
    /// Digest of the `caps_hash` of the register held (0: none).
    caps_hash: u64,
    /// Digest of the loaded models and the services up, as last written.
    usage: u64,
    /// Whether the record holds metrics yet.
    has_metrics: bool,
    /// Digest of the GPU verdicts the record holds (0: none).
    gpu_digest: u32,
    /// Whether a GPU is out of service (its recovery clock runs).
    gpu_quarantine: bool,
    /// The deadline-wheel bucket of this node's one entry, if queued.
    queued: Option<i64>,
    /// Its `region` label, interned (0: none).
    region: u16,
    /// What the server last said about its connection.
    link: Option<Link>,
    /// In maintenance: when its drain ends by itself.
    resume_at: Option<DateTime<Utc>>,
}

/// What the server last said about a node's NATS connection.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Link {
    /// When the connection opened (the server's clock).
    opened: DateTime<Utc>,
    /// When it closed, if it did.
    closed: Option<DateTime<Utc>>,
}

impl Tracked {
    /// The node's record as the registry would write it now.
    pub fn record(&self) -> NodeRecord {
        match &self.record {
            RecordState::Pending(record) => (**record).clone(),
            RecordState::Written(bytes) => match schemas::json::from_bytes(bytes) {
                Ok(record) => record,
                Err(e) => {
                    // Only bytes that decoded once are kept; this is a bug.
                    warn!(node_id = %self.id, error = %e, "kept record does not decode");
                    NodeRecord {
                        node_id: self.id.to_string(),
                        ..NodeRecord::default()
                    }
                }
            },
        }
    }
}

/// The node id a slot holds.
fn id_in(slots: &[Option<Tracked>], slot: u32) -> Option<&str> {
    slots.get(slot as usize)?.as_ref().map(|t| t.id.as_str())
}

/// Every known node, and the registry's own judgement state.
#[derive(Debug, Clone)]
pub struct Fleet {
    settings: LifecycleSettings,
    ids: SlotIds,
    slots: Vec<Option<Tracked>>,
    free: Vec<u32>,
    /// Deadline wheel: bucket (`GRAIN_MS` wide) → slots to look at then.
    wheel: BTreeMap<i64, Vec<u32>>,
    /// Nodes by status: online, degraded, offline, maintenance.
    counts: [usize; 4],
    /// Degradations, in order, for the self-preservation census.
    degradations: VecDeque<(DateTime<Utc>, u32)>,
    /// Silent nodes whose judgement is held (self-preservation).
    held: Vec<u32>,
    /// Nodes with a write owed.
    owed: Vec<u32>,
    reannounced: HashMap<NodeId, DateTime<Utc>>,
    /// Region names by interned number (0: no region).
    regions: Vec<String>,
    region_numbers: HashMap<String, u16>,
    /// Online nodes per region.
    online_in: Vec<usize>,
    /// Mass silence across the fleet: every transition held.
    mass_silence: bool,
    /// Regions in mass silence: their nodes' transitions held.
    silent_regions: BTreeSet<u16>,
    /// The registry's own faults, with when each was first seen: every
    /// transition held.
    faults: BTreeMap<OwnFault, DateTime<Utc>>,
    /// The worker is working off a backlog: writes that only freshen a
    /// record wait for the node's next checkpoint.
    backlogged: bool,
    /// Writes a second left to first metrics, after checkpoints and
    /// material writes (`checkpoint_writes_per_s`).
    freshening: pacing::WriteBudget,
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn seconds(d: chrono::Duration) -> i64 {
    d.num_seconds().max(0)
}

/// A digest of a `caps_hash` (0 for none).
fn caps_digest(hash: Option<&str>) -> u64 {
    hash.map_or(0, |h| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        h.hash(&mut hasher);
        hasher.finish() | 1
    })
}

/// A digest of the loaded models and the services up.
fn usage_digest<'a>(
    models: impl IntoIterator<Item = &'a str>,
    services: impl IntoIterator<Item = &'a str>,
) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for model in models {
        model.hash(&mut hasher);
    }
    0xffu8.hash(&mut hasher);
    for service in services {
        service.hash(&mut hasher);
    }
    hasher.finish()
}

fn status_index(status: NodeStatus) -> usize {
    match status {
        NodeStatus::Online => 0,
        NodeStatus::Degraded => 1,
        NodeStatus::Offline => 2,
        NodeStatus::Maintenance => 3,
    }
}

impl Fleet {
    /// An empty fleet.
    pub fn new(settings: LifecycleSettings) -> Self {
        let freshening = pacing::WriteBudget::new(settings.checkpoint_writes_per_s);
        Self {
            settings,
            ids: SlotIds::default(),
            slots: Vec::new(),
            free: Vec::new(),
            wheel: BTreeMap::new(),
            counts: [0; 4],
            degradations: VecDeque::new(),
            held: Vec::new(),
            owed: Vec::new(),
            reannounced: HashMap::new(),
            regions: vec![String::new()],
            region_numbers: HashMap::new(),
            online_in: vec![0],
            mass_silence: false,
            silent_regions: BTreeSet::new(),
            faults: BTreeMap::new(),
            backlogged: false,
            freshening,
        }
    }

    /// How often each node's heartbeat is checkpointed at this fleet's
    /// size: `checkpoint_interval`, or longer where the fleet would
    /// otherwise cost more than `checkpoint_writes_per_s` writes a second.
    pub fn checkpoint_interval(&self) -> Duration {
        checkpoint_interval_for(&self.settings, self.ids.len())
    }

    /// Tells the fleet whether the events it is given are a backlog being
    /// worked off. Then a node's first metrics wait for its next checkpoint
    /// instead of costing a write each (after a registration storm or a
    /// registry restart, one write per node would slow the catching up that
    /// judging waits for); material changes are written at once as ever.
    pub fn set_backlogged(&mut self, backlogged: bool) {
        self.backlogged = backlogged;
    }

    /// The settings in force.
    pub fn settings(&self) -> &LifecycleSettings {
        &self.settings
    }

    /// The interned number of a region name (0: none).
    fn region_number(&mut self, name: &str) -> u16 {
        if name.is_empty() {
            return 0;
        }
        if let Some(&n) = self.region_numbers.get(name) {
            return n;
        }
        // Past 65 535 distinct regions, the rest share the last number: a
        // label that wild is not a region, and only self-preservation reads it.
        let n = u16::try_from(self.regions.len()).unwrap_or(u16::MAX);
        if usize::from(n) == self.regions.len() {
            self.regions.push(name.to_owned());
            self.online_in.push(0);
            self.region_numbers.insert(name.to_owned(), n);
        }
        n
    }

    /// The slot of a known node.
    fn slot_of_id(&self, id: &NodeId) -> Option<u32> {
        self.ids.get(id.as_str(), |s| id_in(&self.slots, s))
    }

    /// A known node.
    pub fn get(&self, id: &NodeId) -> Option<&Tracked> {
        let slot = self.slot_of_id(id)?;
        self.slots.get(slot as usize)?.as_ref()
    }

    /// How many nodes are known.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    fn slot(&self, slot: u32) -> Option<&Tracked> {
        self.slots.get(slot as usize)?.as_ref()
    }

    fn slot_mut(&mut self, slot: u32) -> Option<&mut Tracked> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    fn node_mut(&mut self, id: &NodeId) -> Option<&mut Tracked> {
        let slot = self.slot_of_id(id)?;
        self.slot_mut(slot)
    }

    /// Removes a node, keeping the counts right.
    fn take(&mut self, id: &NodeId) -> Option<Tracked> {
        let slots = &self.slots;
        let slot = self.ids.remove(id.as_str(), |s| id_in(slots, s))?;
        let node = self.slots.get_mut(slot as usize)?.take()?;
        self.count(node.status, node.region, -1);
        self.free.push(slot);
        Some(node)
    }

    /// Adds a node (not present), queues it and returns its slot.
    fn put(&mut self, node: Tracked) -> u32 {
        self.count(node.status, node.region, 1);
        let slot = match self.free.pop() {
            Some(slot) => {
                if let Some(entry) = self.slots.get_mut(slot as usize) {
                    *entry = Some(node);
                }
                slot
            }
            None => {
                self.slots.push(Some(node));
                u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
            }
        };
        let slots = &self.slots;
        if let Some(id) = id_in(slots, slot) {
            self.ids.insert(id, slot, |s| id_in(slots, s));
        }
        self.schedule(slot);
        slot
    }

    /// Moves a node to `status` at `at`, keeping the counts right.
    fn set_status(&mut self, slot: u32, status: NodeStatus, at: DateTime<Utc>) {
        let Some(node) = self.slots.get_mut(slot as usize).and_then(Option::as_mut) else {
            return;
        };
        let from = node.status;
        let region = usize::from(node.region);
        node.status = status;
        node.status_since = at;
        self.counts[status_index(from)] -= 1;
        self.counts[status_index(status)] += 1;
        if let Some(online) = self.online_in.get_mut(region) {
            if from == NodeStatus::Online {
                *online -= 1;
            }
            if status == NodeStatus::Online {
                *online += 1;
            }
        }
        if status == NodeStatus::Degraded {
            self.degradations.push_back((at, slot));
        }
    }

    /// Adds (`+1`) or removes (`-1`) a node of `status` in `region` from
    /// the counts.
    fn count(&mut self, status: NodeStatus, region: u16, sign: isize) {
        let by_status = &mut self.counts[status_index(status)];
        *by_status = by_status.saturating_add_signed(sign);
        if status == NodeStatus::Online {
            if let Some(online) = self.online_in.get_mut(usize::from(region)) {
                *online = online.saturating_add_signed(sign);
            }
        }
    }
}

#[cfg(test)]
mod tests;

/// The checkpoint interval `settings` give a fleet of `nodes`.
pub fn checkpoint_interval_for(settings: &LifecycleSettings, nodes: usize) -> Duration {
    let base = settings.checkpoint_interval;
    if settings.checkpoint_writes_per_s == 0 {
        return base;
    }
    let spread =
        Duration::from_secs_f64(nodes as f64 / f64::from(settings.checkpoint_writes_per_s));
    base.max(spread)
}
