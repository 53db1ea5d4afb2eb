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

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use schemas::status::{AlertType, EventType, NodeStatus};
use schemas::validate::ValidEvent;
use schemas::{Alert, NodeRecord, SelfPreservationFigures};
use subjects::NodeId;
use tracing::warn;
use uuid::Uuid;

/// Namespace of the registry's deterministic alert ids (UUID v5).
const ALERT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_5e2a_8c1b_4f4e_9a57_0e3c_2b1d_7a90);

/// Width of one deadline-wheel bucket, in milliseconds.
const GRAIN_MS: i64 = 100;

/// The label whose value groups nodes for self-preservation per region.
pub const REGION_LABEL: &str = "region";

/// The knobs of the lifecycle.
#[derive(Debug, Clone, PartialEq)]
pub struct LifecycleSettings {
    /// Silence after which an online node becomes degraded.
    pub degraded_after: Duration,
    /// Silence after which a node becomes offline.
    pub offline_after: Duration,
    /// Least time between two KV checkpoints of one node's heartbeat.
    pub checkpoint_interval: Duration,
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
}

impl Default for LifecycleSettings {
    fn default() -> Self {
        Self {
            degraded_after: Duration::from_secs(90),
            offline_after: Duration::from_secs(300),
            checkpoint_interval: Duration::from_secs(60),
            reannounce_interval: Duration::from_secs(10),
            self_preservation_threshold: 0.5,
            self_preservation_min_fleet: 10,
            disconnect_grace: Duration::from_secs(10),
        }
    }
}

/// A record write the worker must make (compare-and-swap).
// NOTE: Put is large and Delete small, but writes live for one round of the
// worker loop; boxing every Put would cost an allocation per write for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create (`revision` = None) or update the record at `revision`.
    Put {
        /// The full record to store.
        record: NodeRecord,
        /// The revision the key is expected at.
        revision: Option<u64>,
    },
    /// Delete the record at `revision`.
    Delete {
        /// The node.
        node_id: NodeId,
        /// The revision the key is expected at.
        revision: u64,
    },
}

impl Write {
    /// The node this write is about.
    pub fn node_id(&self) -> &str {
        match self {
            Self::Put { record, .. } => &record.node_id,
            Self::Delete { node_id, .. } => node_id.as_str(),
        }
    }
}

/// What the worker must do after an event or a sweep, in this order:
/// publish the alerts, make the writes, send the reannounce requests.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Effects {
    /// Alerts to publish on `system.broadcast`.
    pub alerts: Vec<Alert>,
    /// Record writes.
    pub writes: Vec<Write>,
    /// Nodes to send a `reannounce` task.
    pub reannounce: Vec<NodeId>,
}

impl Effects {
    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.writes.is_empty() && self.reannounce.is_empty()
    }

    fn extend(&mut self, other: Effects) {
        self.alerts.extend(other.alerts);
        self.writes.extend(other.writes);
        self.reannounce.extend(other.reannounce);
    }
}

/// A node's record: the bytes last written to KV, or a newer decision that
/// is not written yet.
#[derive(Debug, Clone, PartialEq)]
enum RecordState {
    /// As stored in KV (the JSON value); shared with the read index.
    Written(Bytes),
    /// Decided, handed to the worker, not yet confirmed (or failed).
    Pending(Box<NodeRecord>),
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
    /// Digest of the `caps_hash` of the register held (0: none).
    caps_hash: u64,
    /// Digest of the loaded models and the services up, as last written.
    usage: u64,
    /// Whether the record holds metrics yet.
    has_metrics: bool,
    /// The deadline-wheel bucket of this node's one entry, if queued.
    queued: Option<i64>,
    /// Its `region` label, interned (0: none).
    region: u16,
    /// What the server last said about its connection.
    link: Option<Link>,
}

/// What the server last said about a node's NATS connection.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Link {
    /// When the connection opened (the server's clock).
    opened: DateTime<Utc>,
    /// When it closed, if it did.
    closed: Option<DateTime<Utc>>,
}

/// A fault of the registry's own that makes it distrust what it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnFault {
    /// Its NATS connection is down: it hears nothing.
    NatsLink,
    /// Its record writes are failing.
    KvWrites,
    /// The event stream does not answer (no leader, or JetStream itself
    /// is down): nodes cannot store their heartbeats, so silence means
    /// nothing.
    EventStream,
}

impl OwnFault {
    /// What fails, for the alert's message.
    fn subject(self) -> &'static str {
        match self {
            Self::NatsLink => "NATS link is",
            Self::KvWrites => "record writes are",
            Self::EventStream => "event stream is",
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::NatsLink => "nats_link",
            Self::KvWrites => "kv_writes",
            Self::EventStream => "event_stream",
        }
    }
}

impl Tracked {
    /// The node's record as the registry would write it now.
    pub fn record(&self) -> NodeRecord {
        match &self.record {
            RecordState::Pending(record) => (**record).clone(),
            RecordState::Written(bytes) => match serde_json::from_slice(bytes) {
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

/// Every known node, and the registry's own judgement state.
#[derive(Debug, Clone)]
pub struct Fleet {
    settings: LifecycleSettings,
    ids: HashMap<NodeId, u32>,
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
}

/// How much benefit of the doubt restored nodes get before their silence is
/// judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    /// A full `degraded_after` window from the restore (a registry start:
    /// what KV says may be arbitrarily old).
    Full,
    /// From the last checkpointed heartbeat plus one checkpoint interval (a
    /// takeover from a leader that was running: it checkpointed every node
    /// it heard at least that often, so no node was heard later than that).
    SinceCheckpoint,
}

/// A summary of the fleet for self-preservation and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SilenceCensus {
    /// Nodes watched for liveness: online, plus degraded within one window.
    pub watched: usize,
    /// Of those, the ones silent for `degraded_after` or more.
    pub silent: usize,
}

/// The fields of a stored record that liveness needs, read without
/// decoding (or allocating) the rest.
#[derive(Debug, serde::Deserialize)]
struct Liveness<'a> {
    #[serde(borrow)]
    node_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    last_heartbeat: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    updated_at: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    caps_hash: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    models_loaded: Vec<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    services: Vec<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    metrics: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    labels: Option<RegionLabel<'a>>,
}

/// The one label liveness needs.
#[derive(Debug, serde::Deserialize)]
struct RegionLabel<'a> {
    #[serde(borrow, default)]
    region: Option<std::borrow::Cow<'a, str>>,
}

fn chrono_duration(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

fn alert_id(node: Option<&NodeId>, kind: AlertType, cause: &str) -> String {
    let node = node.map(NodeId::as_str).unwrap_or("-");
    Uuid::new_v5(
        &ALERT_NAMESPACE,
        format!("{node}/{kind}/{cause}").as_bytes(),
    )
    .to_string()
}

/// The figures of all regions together.
fn total(by_region: &[SilenceCensus]) -> SilenceCensus {
    by_region
        .iter()
        .fold(SilenceCensus::default(), |a, c| SilenceCensus {
            watched: a.watched + c.watched,
            silent: a.silent + c.silent,
        })
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

/// The wheel bucket at or after `at`: a node queued there is never looked at
/// before its deadline.
fn bucket_of(at: DateTime<Utc>) -> i64 {
    let ms = at.timestamp_millis();
    ms.div_euclid(GRAIN_MS) + i64::from(ms.rem_euclid(GRAIN_MS) != 0)
}

impl Fleet {
    /// An empty fleet.
    pub fn new(settings: LifecycleSettings) -> Self {
        Self {
            settings,
            ids: HashMap::new(),
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
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &LifecycleSettings {
        &self.settings
    }

    /// Loads the records found in KV at start, as stored (JSON) with their
    /// revisions. Every node gets one full `degraded_after` window from
    /// `now` before its silence is judged, so a restarted registry raises no
    /// false alarm on stale knowledge. Returns what was skipped as
    /// unreadable (the node id when it could be read).
    pub fn restore(
        &mut self,
        records: impl IntoIterator<Item = (Bytes, u64)>,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        self.restore_with(records, now, Grace::Full)
    }

    /// Like [`Fleet::restore`], with the given grace.
    pub fn restore_with(
        &mut self,
        records: impl IntoIterator<Item = (Bytes, u64)>,
        now: DateTime<Utc>,
        grace: Grace,
    ) -> Vec<String> {
        let checkpoint = chrono_duration(self.settings.checkpoint_interval);
        let mut skipped = Vec::new();
        for (bytes, revision) in records {
            let Ok(live) = serde_json::from_slice::<Liveness<'_>>(&bytes) else {
                skipped.push(String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned());
                continue;
            };
            let (Ok(id), Ok(status)) = (
                NodeId::parse(&live.node_id),
                live.status.parse::<NodeStatus>(),
            ) else {
                skipped.push(live.node_id.into_owned());
                continue;
            };
            let last_seen = schemas::time::parse(&live.last_heartbeat).unwrap_or(now);
            let updated = schemas::time::parse(&live.updated_at).unwrap_or(now);
            let region = self.region_number(
                live.labels
                    .as_ref()
                    .and_then(|l| l.region.as_deref())
                    .unwrap_or(""),
            );
            let tracked = Tracked {
                caps_hash: caps_digest(live.caps_hash.as_deref()),
                usage: usage_digest(
                    live.models_loaded.iter().map(|m| &**m),
                    live.services.iter().map(|s| &**s),
                ),
                has_metrics: live.metrics.is_some(),
                id: id.clone(),
                record: RecordState::Written(bytes.clone()),
                status,
                last_seen,
                judged_from: match grace {
                    Grace::Full => now,
                    Grace::SinceCheckpoint => (last_seen + checkpoint).min(now),
                },
                status_since: updated,
                last_written: updated,
                revision: Some(revision),
                needs_write: false,
                queued: None,
                region,
                link: None,
            };
            self.take(&id);
            self.put(tracked);
        }
        skipped
    }

    /// Grants every node a fresh `degraded_after` window from `now` (after the
    /// registry lost its NATS link, or left self-preservation).
    pub fn grant_grace(&mut self, now: DateTime<Utc>) {
        self.grant_grace_to(now, None);
    }

    /// Grants a fresh window to the nodes of `region` (all when `None`).
    fn grant_grace_to(&mut self, now: DateTime<Utc>, region: Option<u16>) {
        for node in self.slots.iter_mut().flatten() {
            if region.is_none_or(|r| node.region == r) {
                node.judged_from = node.judged_from.max(now);
            }
        }
        // Deadlines only moved later: queued entries find that out lazily.
        // Held nodes have none; queue them again unless still held.
        for slot in std::mem::take(&mut self.held) {
            let still_held = self
                .slots
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|n| region.is_some_and(|r| n.region != r) && self.holds(n.region));
            if still_held {
                self.held.push(slot);
            } else {
                self.schedule(slot);
            }
        }
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

    /// Whether transitions of nodes in `region` are held.
    fn holds(&self, region: u16) -> bool {
        self.in_self_preservation() || (region != 0 && self.silent_regions.contains(&region))
    }

    /// The server says a connection named after `id` opened at `opened`.
    pub fn connection_opened(&mut self, id: &NodeId, opened: DateTime<Utc>) {
        if let Some(node) = self.node_mut(id) {
            if node.link.is_none_or(|l| opened >= l.opened) {
                node.link = Some(Link {
                    opened,
                    closed: None,
                });
            }
        }
    }

    /// The server says a connection named after `id`, opened at `opened`,
    /// closed at `closed`. Returns whether it counts: a connection older
    /// than the newest one known (the node already reconnected) does not.
    pub fn connection_closed(
        &mut self,
        id: &NodeId,
        opened: DateTime<Utc>,
        closed: DateTime<Utc>,
    ) -> bool {
        if self.settings.disconnect_grace.is_zero() {
            return false;
        }
        let Some(&slot) = self.ids.get(id) else {
            return false;
        };
        let Some(node) = self.slot_mut(slot) else {
            return false;
        };
        if node.link.is_some_and(|l| l.opened > opened) {
            return false;
        }
        node.link = Some(Link {
            opened,
            closed: Some(closed),
        });
        let online = node.status == NodeStatus::Online;
        if online {
            // Its deadline may now be earlier than its queued entry.
            self.schedule(slot);
        }
        online
    }

    /// Notes a fault of the registry's own (at `now`): every transition is
    /// held until it clears. Returns the `registry.self_preservation` alert
    /// when this starts a hold.
    pub fn fault(&mut self, fault: OwnFault, now: DateTime<Utc>, failures: u64) -> Effects {
        let mut effects = Effects::default();
        if self.faults.contains_key(&fault) {
            return effects;
        }
        self.faults.insert(fault, now);
        effects.alerts.push(self.preservation_alert(
            "entered",
            now,
            SelfPreservationFigures {
                scope: "registry".to_owned(),
                reason: fault.reason().to_owned(),
                since: Some(schemas::time::format(now)),
                failures: (failures > 0).then_some(failures),
                ..SelfPreservationFigures::default()
            },
            format!(
                "the registry's {} failing: holding degraded/offline transitions",
                fault.subject()
            ),
        ));
        effects
    }

    /// Notes that a fault of the registry's own cleared at `now`: when none
    /// is left, every node gets a fresh grace window and judging resumes.
    pub fn fault_cleared(&mut self, fault: OwnFault, now: DateTime<Utc>) -> Effects {
        let mut effects = Effects::default();
        let Some(since) = self.faults.remove(&fault) else {
            return effects;
        };
        self.grant_grace(now);
        effects.alerts.push(self.preservation_alert(
            "left",
            now,
            SelfPreservationFigures {
                scope: "registry".to_owned(),
                reason: fault.reason().to_owned(),
                since: Some(schemas::time::format(since)),
                ..SelfPreservationFigures::default()
            },
            format!(
                "the registry's {} working again after {}s: judging again after a fresh {}s grace window",
                fault.subject(),
                seconds(now.signed_duration_since(since)),
                self.settings.degraded_after.as_secs()
            ),
        ));
        effects
    }

    /// The faults of its own the registry holds transitions for.
    pub fn faults(&self) -> impl Iterator<Item = OwnFault> + '_ {
        self.faults.keys().copied()
    }

    /// The regions whose transitions are held (mass silence in the region).
    pub fn silent_regions(&self) -> Vec<&str> {
        self.silent_regions
            .iter()
            .filter_map(|r| self.regions.get(usize::from(*r)).map(String::as_str))
            .collect()
    }

    /// The `nodes` bucket was lost: every record is to be created again
    /// from what the fleet holds (by the next sweep).
    pub fn rewrite_all(&mut self) {
        for (slot, node) in self.slots.iter_mut().enumerate() {
            if let Some(node) = node {
                node.revision = None;
                node.needs_write = true;
                self.owed.push(u32::try_from(slot).unwrap_or(u32::MAX));
            }
        }
    }

    /// A known node.
    pub fn get(&self, id: &NodeId) -> Option<&Tracked> {
        let slot = *self.ids.get(id)?;
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

    /// Whether every transition is held because the registry suspects
    /// itself (mass silence across the fleet, or a fault of its own).
    pub fn in_self_preservation(&self) -> bool {
        self.mass_silence || !self.faults.is_empty()
    }

    /// Records that a write succeeded at `revision`; `stored` is the value
    /// written (kept as the node's record).
    pub fn confirm_write(&mut self, id: &NodeId, revision: u64, stored: Bytes) {
        if let Some(node) = self.node_mut(id) {
            node.revision = Some(revision);
            node.needs_write = false;
            node.record = RecordState::Written(stored);
        }
    }

    /// Records that a write failed; `current` is the revision the key is at
    /// now, when known (after a conflict). The next sweep writes it again.
    pub fn write_failed(&mut self, id: &NodeId, current: Option<Option<u64>>) {
        let Some(&slot) = self.ids.get(id) else {
            return;
        };
        if let Some(node) = self.slot_mut(slot) {
            if let Some(revision) = current {
                node.revision = revision;
            }
            node.needs_write = true;
            self.owed.push(slot);
        }
    }

    fn slot_mut(&mut self, slot: u32) -> Option<&mut Tracked> {
        self.slots.get_mut(slot as usize)?.as_mut()
    }

    fn node_mut(&mut self, id: &NodeId) -> Option<&mut Tracked> {
        let slot = *self.ids.get(id)?;
        self.slot_mut(slot)
    }

    /// Removes a node, keeping the counts right.
    fn take(&mut self, id: &NodeId) -> Option<Tracked> {
        let slot = self.ids.remove(id)?;
        let node = self.slots.get_mut(slot as usize)?.take()?;
        self.count(node.status, node.region, -1);
        self.free.push(slot);
        Some(node)
    }

    /// Adds a node (not present), queues it and returns its slot.
    fn put(&mut self, node: Tracked) -> u32 {
        self.count(node.status, node.region, 1);
        let id = node.id.clone();
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
        self.ids.insert(id, slot);
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

    /// When a node whose connection closed is to be degraded, if it was not
    /// heard from since.
    fn link_deadline(&self, node: &Tracked) -> Option<DateTime<Utc>> {
        let closed = node.link?.closed?;
        if self.settings.disconnect_grace.is_zero() || node.last_seen > closed {
            return None;
        }
        Some(closed.max(node.judged_from) + chrono_duration(self.settings.disconnect_grace))
    }

    /// When a node's silence is next to be judged, if ever.
    fn deadline(&self, node: &Tracked) -> Option<DateTime<Utc>> {
        let from = node.last_seen.max(node.judged_from);
        match node.status {
            NodeStatus::Online => {
                let silent = from + chrono_duration(self.settings.degraded_after);
                Some(self.link_deadline(node).map_or(silent, |d| d.min(silent)))
            }
            NodeStatus::Degraded => Some(from + chrono_duration(self.settings.offline_after)),
            NodeStatus::Offline | NodeStatus::Maintenance => None,
        }
    }

    /// Queues a node at its deadline unless it already has an entry as
    /// early (an early entry is moved when it comes up).
    fn schedule(&mut self, slot: u32) {
        let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return;
        };
        let Some(deadline) = self.deadline(node) else {
            return;
        };
        let bucket = bucket_of(deadline);
        if node.queued.is_some_and(|q| q <= bucket) {
            return;
        }
        if let Some(node) = self.slot_mut(slot) {
            node.queued = Some(bucket);
        }
        self.wheel.entry(bucket).or_default().push(slot);
    }

    /// Applies one validated event received by the server at `at`; `seq` is
    /// its stream sequence (it makes alert ids deterministic, so a redelivered
    /// event's alert is deduplicated).
    pub fn apply(&mut self, event: &ValidEvent, at: DateTime<Utc>, seq: u64) -> Effects {
        match event.kind {
            EventType::Register => self.on_register(event, at, seq),
            EventType::Heartbeat => self.on_heartbeat(event, at, seq),
            EventType::Deregister => self.on_deregister(event, at, seq),
        }
    }

    fn on_register(&mut self, event: &ValidEvent, at: DateTime<Utc>, seq: u64) -> Effects {
        let id = &event.node_id;
        let e = &event.event;
        let mut effects = Effects::default();
        self.reannounced.remove(id);
        let mut record = NodeRecord {
            node_id: id.to_string(),
            node_name: e.node_name.clone(),
            role: e.role.clone(),
            labels: e.labels.clone(),
            hostname: e.hostname.clone(),
            ip_address: e.ip_address.clone(),
            local_ip: e.local_ip.clone(),
            capabilities: e.capabilities.clone(),
            agent_version: e.agent_version.clone(),
            seq: e.seq,
            caps_hash: e.caps_hash.clone(),
            ..NodeRecord::default()
        };
        let slot = match self.ids.get(id).copied() {
            None => {
                record.status = NodeStatus::Online.to_string();
                record.registered_at = schemas::time::format(at);
                record.last_heartbeat = schemas::time::format(at);
                record.updated_at = schemas::time::format(at);
                let tracked = Tracked {
                    id: id.clone(),
                    caps_hash: caps_digest(record.caps_hash.as_deref()),
                    usage: usage_digest([], []),
                    has_metrics: false,
                    record: RecordState::Pending(Box::default()),
                    status: NodeStatus::Online,
                    last_seen: at,
                    judged_from: at,
                    status_since: at,
                    last_written: at,
                    revision: None,
                    needs_write: false,
                    queued: None,
                    region: self
                        .region_number(e.labels.get(REGION_LABEL).map_or("", String::as_str)),
                    link: None,
                };
                effects.alerts.push(self.alert(
                    AlertType::Registered,
                    &tracked,
                    None,
                    at,
                    &seq.to_string(),
                    format!("node {id} registered"),
                ));
                self.put(tracked)
            }
            Some(slot) => {
                self.come_back(slot, at, seq, &mut effects);
                let region =
                    self.region_number(e.labels.get(REGION_LABEL).map_or("", String::as_str));
                self.move_region(slot, region);
                let Some(old) = self.slot_mut(slot) else {
                    return effects;
                };
                // Keep what a register does not carry.
                let previous = old.record();
                record.registered_at = previous.registered_at;
                record.metrics = previous.metrics;
                record.models_loaded = previous.models_loaded;
                record.services = previous.services;
                old.last_seen = old.last_seen.max(at);
                old.caps_hash = caps_digest(record.caps_hash.as_deref());
                record.status = old.status.to_string();
                record.last_heartbeat = schemas::time::format(old.last_seen);
                record.updated_at = schemas::time::format(at);
                slot
            }
        };
        self.write(slot, record, at, &mut effects);
        self.schedule(slot);
        effects
    }

    /// Moves a node to another region (its labels changed).
    fn move_region(&mut self, slot: u32, region: u16) {
        let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return;
        };
        if node.region == region {
            return;
        }
        let (status, from) = (node.status, node.region);
        self.count(status, from, -1);
        self.count(status, region, 1);
        if let Some(node) = self.slot_mut(slot) {
            node.region = region;
        }
    }

    /// Hands `record` to the worker as the node's next write.
    fn write(&mut self, slot: u32, record: NodeRecord, at: DateTime<Utc>, effects: &mut Effects) {
        let Some(node) = self.slot_mut(slot) else {
            return;
        };
        node.usage = usage_digest(
            record.models_loaded.iter().map(String::as_str),
            record.services.iter().map(String::as_str),
        );
        node.has_metrics = record.metrics.is_some();
        node.last_written = at;
        node.needs_write = false;
        effects.writes.push(Write::Put {
            record: record.clone(),
            revision: node.revision,
        });
        node.record = RecordState::Pending(Box::new(record));
    }

    fn on_heartbeat(&mut self, event: &ValidEvent, at: DateTime<Utc>, seq: u64) -> Effects {
        let id = &event.node_id;
        let e = &event.event;
        let mut effects = Effects::default();
        let Some(slot) = self.ids.get(id).copied() else {
            // A heartbeat from a node we don't know (its record was lost, or
            // it registered before this registry existed): ask it to register.
            if self.reannounce_due(id, at) {
                effects.reannounce.push(id.clone());
            }
            return effects;
        };
        let came_back = self.come_back(slot, at, seq, &mut effects);
        let checkpoint = chrono_duration(self.settings.checkpoint_interval);
        let Some(node) = self.slot_mut(slot) else {
            return effects;
        };
        // The node's capabilities changed since the register we hold (a
        // register lost or rejected): ask for a fresh one.
        let stale_caps = e
            .caps_hash
            .as_deref()
            .is_some_and(|hash| node.caps_hash != caps_digest(Some(hash)));
        node.last_seen = node.last_seen.max(at);
        let unqueued = node.queued.is_none();
        // Which models are loaded and which services are up change rarely
        // and matter to whoever picks a node: write them at once.
        let usage = usage_digest(
            e.models_loaded.iter().map(String::as_str),
            e.services.iter().map(String::as_str),
        );
        let usage_changed = usage != node.usage;
        let checkpoint_due = at.signed_duration_since(node.last_written) >= checkpoint;
        // The first metrics after a registration are worth a write: until
        // then discovery cannot rank the node by load.
        let first_metrics = !node.has_metrics && e.metrics.is_some();
        if came_back || checkpoint_due || first_metrics || usage_changed || node.needs_write {
            let mut record = node.record();
            if e.metrics.is_some() {
                record.metrics = e.metrics.clone();
            }
            record.models_loaded = e.models_loaded.clone();
            record.services = e.services.clone();
            if e.seq.is_some() {
                record.seq = e.seq;
            }
            record.status = node.status.to_string();
            record.last_heartbeat = schemas::time::format(node.last_seen);
            if came_back {
                record.updated_at = schemas::time::format(at);
            }
            self.write(slot, record, at, &mut effects);
        }
        if stale_caps && self.reannounce_due(id, at) {
            effects.reannounce.push(id.clone());
        }
        if unqueued {
            self.schedule(slot);
        }
        effects
    }

    /// Whether a `reannounce` may be sent to `id` now (at most one per
    /// `reannounce_interval`); records it if so.
    fn reannounce_due(&mut self, id: &NodeId, at: DateTime<Utc>) -> bool {
        let due = self.reannounced.get(id).is_none_or(|last| {
            at.signed_duration_since(*last) >= chrono_duration(self.settings.reannounce_interval)
        });
        if due {
            self.reannounced.insert(id.clone(), at);
        }
        due
    }

    fn on_deregister(&mut self, event: &ValidEvent, at: DateTime<Utc>, seq: u64) -> Effects {
        let id = &event.node_id;
        let mut effects = Effects::default();
        self.reannounced.remove(id);
        let Some(node) = self.take(id) else {
            return effects;
        };
        let reason = event.event.reason.as_deref().unwrap_or("deregistered");
        effects.alerts.push(self.alert(
            AlertType::Deregistered,
            &node,
            Some(node.status),
            at,
            &seq.to_string(),
            format!("node {id} deregistered: {reason}"),
        ));
        if let Some(revision) = node.revision {
            effects.writes.push(Write::Delete {
                node_id: id.clone(),
                revision,
            });
        }
        effects
    }

    /// Puts a node in maintenance (an operator's cordon): it is no longer
    /// judged, nor discovered as online, until uncordoned. `None`: unknown.
    pub fn cordon(&mut self, id: &NodeId, at: DateTime<Utc>, cause: &str) -> Option<Effects> {
        let slot = *self.ids.get(id)?;
        let node = self.slots.get(slot as usize)?.as_ref()?;
        let mut effects = Effects::default();
        if node.status == NodeStatus::Maintenance {
            return Some(effects);
        }
        let previous = node.status;
        let mut record = node.record();
        self.set_status(slot, NodeStatus::Maintenance, at);
        let node = self.slots.get(slot as usize)?.as_ref()?;
        effects.alerts.push(self.alert(
            AlertType::Maintenance,
            node,
            Some(previous),
            at,
            cause,
            format!("node {id} cordoned (was {previous})"),
        ));
        record.status = NodeStatus::Maintenance.to_string();
        record.updated_at = schemas::time::format(at);
        self.write(slot, record, at, &mut effects);
        Some(effects)
    }

    /// Takes a node out of maintenance: online, judged again after a fresh
    /// `degraded_after` window. `None`: unknown.
    pub fn uncordon(&mut self, id: &NodeId, at: DateTime<Utc>, cause: &str) -> Option<Effects> {
        let slot = *self.ids.get(id)?;
        let node = self.slots.get(slot as usize)?.as_ref()?;
        let mut effects = Effects::default();
        if node.status != NodeStatus::Maintenance {
            return Some(effects);
        }
        let mut record = node.record();
        self.set_status(slot, NodeStatus::Online, at);
        if let Some(node) = self.slot_mut(slot) {
            node.judged_from = node.judged_from.max(at);
        }
        let node = self.slots.get(slot as usize)?.as_ref()?;
        effects.alerts.push(self.alert(
            AlertType::Online,
            node,
            Some(NodeStatus::Maintenance),
            at,
            cause,
            format!("node {id} uncordoned"),
        ));
        record.status = NodeStatus::Online.to_string();
        record.updated_at = schemas::time::format(at);
        self.write(slot, record, at, &mut effects);
        self.schedule(slot);
        Some(effects)
    }

    /// Removes a node on an operator's word (as if it had deregistered).
    /// `None`: unknown.
    pub fn remove(
        &mut self,
        id: &NodeId,
        at: DateTime<Utc>,
        cause: &str,
        reason: &str,
    ) -> Option<Effects> {
        let node = self.take(id)?;
        self.reannounced.remove(id);
        let mut effects = Effects::default();
        effects.alerts.push(self.alert(
            AlertType::Deregistered,
            &node,
            Some(node.status),
            at,
            cause,
            format!("node {id} deregistered by an operator: {reason}"),
        ));
        if let Some(revision) = node.revision {
            effects.writes.push(Write::Delete {
                node_id: id.clone(),
                revision,
            });
        }
        Some(effects)
    }

    /// A degraded or offline node that was heard from is online again.
    fn come_back(&mut self, slot: u32, at: DateTime<Utc>, seq: u64, effects: &mut Effects) -> bool {
        let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return false;
        };
        if !matches!(node.status, NodeStatus::Degraded | NodeStatus::Offline) {
            return false;
        }
        let previous = node.status;
        self.set_status(slot, NodeStatus::Online, at);
        let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return false;
        };
        effects.alerts.push(self.alert(
            AlertType::Online,
            node,
            Some(previous),
            at,
            &seq.to_string(),
            format!("node {} is back (was {previous})", node.id),
        ));
        // Its deadline may now be earlier than its queued entry.
        if let Some(node) = self.slot_mut(slot) {
            node.last_seen = node.last_seen.max(at);
        }
        self.schedule(slot);
        true
    }

    /// Counts the nodes watched for liveness and the silent ones among them:
    /// the nodes degraded within the last window, and the online nodes whose
    /// silence is being held. Nodes due at this moment but not yet swept are
    /// counted by the sweep itself.
    pub fn census(&mut self, now: DateTime<Utc>) -> SilenceCensus {
        total(&self.census_by_region(now))
    }

    /// [`Fleet::census`] per region (indexed by region number; 0: none).
    fn census_by_region(&mut self, now: DateTime<Utc>) -> Vec<SilenceCensus> {
        let mut by_region: Vec<SilenceCensus> = self
            .online_in
            .iter()
            .map(|&online| SilenceCensus {
                watched: online,
                silent: 0,
            })
            .collect();
        let window = chrono_duration(self.settings.degraded_after);
        while self
            .degradations
            .front()
            .is_some_and(|(at, _)| now.signed_duration_since(*at) >= window)
        {
            self.degradations.pop_front();
        }
        for (at, slot) in &self.degradations {
            let Some(node) = self.slots.get(*slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            if node.status == NodeStatus::Degraded && node.status_since == *at {
                if let Some(c) = by_region.get_mut(usize::from(node.region)) {
                    c.watched += 1;
                    c.silent += 1;
                }
            }
        }
        // A held node leaves the list when it is queued again (it was heard
        // from) or gone; the degraded ones wait for their offline judgement.
        let mut held = std::mem::take(&mut self.held);
        held.retain(|slot| {
            self.slots
                .get(*slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|n| {
                    n.queued.is_none()
                        && matches!(n.status, NodeStatus::Online | NodeStatus::Degraded)
                })
        });
        for slot in &held {
            let Some(node) = self.slots.get(*slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            if node.status == NodeStatus::Online && self.is_silent(node, now) {
                if let Some(c) = by_region.get_mut(usize::from(node.region)) {
                    c.silent += 1;
                }
            }
        }
        self.held = held;
        by_region
    }

    /// Whether an online node is due to be degraded at `now`: silent for
    /// `degraded_after`, or its connection closed a grace ago and nothing
    /// was heard since.
    fn is_silent(&self, node: &Tracked, now: DateTime<Utc>) -> bool {
        self.silence(node, now) >= chrono_duration(self.settings.degraded_after)
            || self.link_deadline(node).is_some_and(|d| d <= now)
    }

    /// How long a node has been silent, for judgement: measured from its last
    /// heartbeat or from the start of its grace window, whichever is later.
    fn silence(&self, node: &Tracked, now: DateTime<Utc>) -> chrono::Duration {
        now.signed_duration_since(node.last_seen.max(node.judged_from))
    }

    /// Takes the nodes whose deadline has come off the wheel (moving the ones
    /// found early to their real deadline).
    fn due(&mut self, now: DateTime<Utc>) -> Vec<u32> {
        let mut due = Vec::new();
        let now_bucket = now.timestamp_millis().div_euclid(GRAIN_MS);
        while let Some(entry) = self.wheel.first_entry() {
            if *entry.key() > now_bucket {
                break;
            }
            let bucket = *entry.key();
            for slot in entry.remove() {
                let Some(node) = self.slot_mut(slot) else {
                    continue;
                };
                if node.queued != Some(bucket) {
                    continue; // a stale entry: the node moved or left
                }
                node.queued = None;
                let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                    continue;
                };
                match self.deadline(node) {
                    Some(deadline) if deadline <= now => due.push(slot),
                    Some(_) => self.schedule(slot),
                    None => {}
                }
            }
        }
        due
    }

    /// Judges silence at `now`: online → degraded → offline, unless the
    /// registry is in self-preservation. Also re-issues writes that failed.
    ///
    /// Call it only while the registry is caught up with the event stream and
    /// connected; otherwise silence may be the registry's, not the node's.
    pub fn sweep(&mut self, now: DateTime<Utc>) -> Effects {
        let due = self.due(now);
        let mut by_region = self.census_by_region(now);
        for slot in &due {
            let Some(node) = self.slots.get(*slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            if node.status == NodeStatus::Online {
                if let Some(c) = by_region.get_mut(usize::from(node.region)) {
                    c.silent += 1;
                }
            }
        }
        let mut effects = self.self_preservation_check(&by_region, now);
        let (held, judged): (Vec<u32>, Vec<u32>) = due.into_iter().partition(|slot| {
            self.slots
                .get(*slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|n| self.holds(n.region))
        });
        self.held.extend(held);
        if !judged.is_empty() {
            effects.extend(self.judge(judged, now));
        }
        for slot in std::mem::take(&mut self.owed) {
            let Some(node) = self.slot_mut(slot) else {
                continue;
            };
            if node.needs_write {
                let record = node.record();
                self.write(slot, record, now, &mut effects);
            }
        }
        effects
    }

    /// Enters or leaves self-preservation for the fleet and for each region
    /// on this sweep's figures.
    fn self_preservation_check(
        &mut self,
        by_region: &[SilenceCensus],
        now: DateTime<Utc>,
    ) -> Effects {
        let mut effects = Effects::default();
        let fleet = total(by_region);
        if self.suspicious(fleet) != self.mass_silence {
            self.mass_silence = !self.mass_silence;
            effects
                .alerts
                .push(self.mass_silence_alert(None, fleet, self.mass_silence, now));
        }
        for (region, census) in by_region.iter().enumerate().skip(1) {
            let Ok(region) = u16::try_from(region) else {
                break;
            };
            let suspicious = self.suspicious(*census);
            if suspicious == self.silent_regions.contains(&region) {
                continue;
            }
            if suspicious {
                self.silent_regions.insert(region);
            } else {
                self.silent_regions.remove(&region);
                self.grant_grace_to(now, Some(region));
            }
            effects
                .alerts
                .push(self.mass_silence_alert(Some(region), *census, suspicious, now));
        }
        effects
    }

    /// Whether these figures are an implausible share of silence.
    fn suspicious(&self, census: SilenceCensus) -> bool {
        census.watched >= self.settings.self_preservation_min_fleet
            && census.silent as f64
                > self.settings.self_preservation_threshold * census.watched as f64
    }

    /// The alert for entering (`entered`) or leaving mass silence in
    /// `region` (the fleet when `None`); leaving the fleet's grants grace.
    fn mass_silence_alert(
        &mut self,
        region: Option<u16>,
        census: SilenceCensus,
        entered: bool,
        now: DateTime<Utc>,
    ) -> Alert {
        let scope = match region {
            None => "fleet".to_owned(),
            Some(r) => format!(
                "{REGION_LABEL}={}",
                self.regions.get(usize::from(r)).map_or("", String::as_str)
            ),
        };
        let threshold = self.settings.self_preservation_threshold;
        let message = if entered {
            format!(
                "{} of {} watched nodes ({scope}) went silent within one window (threshold {:.0} %): holding their degraded/offline transitions",
                census.silent,
                census.watched,
                threshold * 100.0
            )
        } else {
            if region.is_none() {
                self.grant_grace(now);
            }
            format!(
                "{} of {} watched nodes ({scope}) silent: judging again after a fresh {}s grace window",
                census.silent,
                census.watched,
                self.settings.degraded_after.as_secs()
            )
        };
        let figures = SelfPreservationFigures {
            scope,
            reason: "mass_silence".to_owned(),
            watched: Some(census.watched as u64),
            silent: Some(census.silent as u64),
            threshold: Some(threshold),
            ..SelfPreservationFigures::default()
        };
        self.preservation_alert(
            if entered { "entered" } else { "left" },
            now,
            figures,
            message,
        )
    }

    /// A `registry.self_preservation` alert.
    fn preservation_alert(
        &self,
        state: &str,
        now: DateTime<Utc>,
        figures: SelfPreservationFigures,
        message: String,
    ) -> Alert {
        Alert {
            id: alert_id(
                None,
                AlertType::SelfPreservation,
                &format!(
                    "{}/{}/{state}/{}",
                    figures.scope,
                    figures.reason,
                    now.timestamp_millis()
                ),
            ),
            r#type: AlertType::SelfPreservation.to_string(),
            status: Some(state.to_owned()),
            at: schemas::time::format(now),
            message: Some(message),
            figures: Some(figures),
            ..Alert::default()
        }
    }

    fn judge(&mut self, mut due: Vec<u32>, now: DateTime<Utc>) -> Effects {
        let degraded_after = chrono_duration(self.settings.degraded_after);
        let offline_after = chrono_duration(self.settings.offline_after);
        // In id order, so a sweep's alerts come out the same on every run.
        due.sort_by(|a, b| {
            let id = |slot: &u32| {
                self.slots
                    .get(*slot as usize)
                    .and_then(Option::as_ref)
                    .map(|n| n.id.as_str())
            };
            id(a).cmp(&id(b))
        });
        let mut effects = Effects::default();
        for slot in due {
            let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            let silence = self.silence(node, now);
            let closed = self
                .link_deadline(node)
                .filter(|d| *d <= now)
                .and(node.link.and_then(|l| l.closed));
            let target = match node.status {
                NodeStatus::Online | NodeStatus::Degraded if silence >= offline_after => {
                    NodeStatus::Offline
                }
                NodeStatus::Online if silence >= degraded_after || closed.is_some() => {
                    NodeStatus::Degraded
                }
                _ => {
                    self.schedule(slot);
                    continue;
                }
            };
            let previous = node.status;
            let last_seen = node.last_seen;
            let silent_for = seconds(now.signed_duration_since(last_seen));
            let mut record = node.record();
            self.set_status(slot, target, now);
            let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            record.status = target.to_string();
            record.last_heartbeat = schemas::time::format(last_seen);
            record.updated_at = schemas::time::format(now);
            let kind = if target == NodeStatus::Offline {
                AlertType::Offline
            } else {
                AlertType::Degraded
            };
            // The cause is the record version judged (every return to online
            // writes a new one), so a registry that crashed after publishing,
            // or the standby that took over from it, derives the same id
            // from what KV holds.
            let cause = format!("r{}", node.revision.unwrap_or(0));
            let message = match closed {
                Some(closed) if kind == AlertType::Degraded && silence < degraded_after => format!(
                    "connection closed {}s ago and nothing heard since (no heartbeat for {silent_for}s)",
                    seconds(now.signed_duration_since(closed))
                ),
                _ => format!("no heartbeat for {silent_for}s"),
            };
            effects
                .alerts
                .push(self.alert(kind, node, Some(previous), now, &cause, message));
            self.write(slot, record, now, &mut effects);
            self.schedule(slot);
        }
        effects
    }

    fn alert(
        &self,
        kind: AlertType,
        node: &Tracked,
        previous: Option<NodeStatus>,
        at: DateTime<Utc>,
        cause: &str,
        message: String,
    ) -> Alert {
        let status = match kind {
            AlertType::Deregistered => None,
            _ => Some(node.status.to_string()),
        };
        Alert {
            id: alert_id(Some(&node.id), kind, cause),
            r#type: kind.to_string(),
            node_id: Some(node.id.to_string()),
            status,
            previous_status: previous.map(|s| s.to_string()),
            at: schemas::time::format(at),
            last_heartbeat: Some(schemas::time::format(node.last_seen)),
            message: Some(message),
            figures: None,
        }
    }
}

#[cfg(test)]
#[path = "tests/lifecycle.rs"]
mod tests;
