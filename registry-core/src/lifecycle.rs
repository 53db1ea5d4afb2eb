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

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, Utc};
use schemas::status::{AlertType, EventType, NodeStatus};
use schemas::validate::ValidEvent;
use schemas::{Alert, NodeRecord};
use subjects::NodeId;
use uuid::Uuid;

/// Namespace of the registry's deterministic alert ids (UUID v5).
const ALERT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_5e2a_8c1b_4f4e_9a57_0e3c_2b1d_7a90);

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
    /// Fewest watched nodes for self-preservation to apply at all.
    pub self_preservation_min_fleet: usize,
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

/// What the registry knows of one node.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracked {
    /// The record as it should be in KV (more current than KV between
    /// checkpoints).
    pub record: NodeRecord,
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
}

/// Every known node, and the registry's own judgement state.
#[derive(Debug, Clone)]
pub struct Fleet {
    settings: LifecycleSettings,
    nodes: HashMap<NodeId, Tracked>,
    reannounced: HashMap<NodeId, DateTime<Utc>>,
    self_preservation: bool,
}

/// A summary of the fleet for self-preservation and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SilenceCensus {
    /// Nodes watched for liveness: online, plus degraded within one window.
    pub watched: usize,
    /// Of those, the ones silent for `degraded_after` or more.
    pub silent: usize,
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

fn seconds(d: chrono::Duration) -> i64 {
    d.num_seconds().max(0)
}

impl Fleet {
    /// An empty fleet.
    pub fn new(settings: LifecycleSettings) -> Self {
        Self {
            settings,
            nodes: HashMap::new(),
            reannounced: HashMap::new(),
            self_preservation: false,
        }
    }

    /// The settings in force.
    pub fn settings(&self) -> &LifecycleSettings {
        &self.settings
    }

    /// Loads the records found in KV at start. Every node gets one full
    /// `degraded_after` window from `now` before its silence is judged, so a
    /// restarted registry raises no false alarm on stale knowledge. Records
    /// that do not parse are returned as the ids that were skipped.
    pub fn restore(
        &mut self,
        records: impl IntoIterator<Item = (NodeRecord, u64)>,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        let mut skipped = Vec::new();
        for (record, revision) in records {
            let Ok(id) = NodeId::parse(&record.node_id) else {
                skipped.push(record.node_id.clone());
                continue;
            };
            let Ok(status) = record.status.parse::<NodeStatus>() else {
                skipped.push(record.node_id.clone());
                continue;
            };
            let last_seen = schemas::time::parse(&record.last_heartbeat).unwrap_or(now);
            let updated = schemas::time::parse(&record.updated_at).unwrap_or(now);
            self.nodes.insert(
                id,
                Tracked {
                    record,
                    status,
                    last_seen,
                    judged_from: now,
                    status_since: updated,
                    last_written: updated,
                    revision: Some(revision),
                    needs_write: false,
                },
            );
        }
        skipped
    }

    /// Grants every node a fresh `degraded_after` window from `now` (after the
    /// registry lost its NATS link, or left self-preservation).
    pub fn grant_grace(&mut self, now: DateTime<Utc>) {
        for node in self.nodes.values_mut() {
            node.judged_from = node.judged_from.max(now);
        }
    }

    /// A known node.
    pub fn get(&self, id: &NodeId) -> Option<&Tracked> {
        self.nodes.get(id)
    }

    /// How many nodes are known.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Whether transitions are held because the registry suspects itself.
    pub fn in_self_preservation(&self) -> bool {
        self.self_preservation
    }

    /// Records that a write succeeded at `revision`.
    pub fn confirm_write(&mut self, id: &NodeId, revision: u64) {
        if let Some(node) = self.nodes.get_mut(id) {
            node.revision = Some(revision);
            node.needs_write = false;
        }
    }

    /// Records that a write failed; `current` is the revision the key is at
    /// now, when known (after a conflict). The next sweep writes it again.
    pub fn write_failed(&mut self, id: &NodeId, current: Option<Option<u64>>) {
        if let Some(node) = self.nodes.get_mut(id) {
            if let Some(revision) = current {
                node.revision = revision;
            }
            node.needs_write = true;
        }
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
        let previous = self.nodes.remove(id);
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
        let tracked = match previous {
            None => {
                record.status = NodeStatus::Online.to_string();
                record.registered_at = schemas::time::format(at);
                record.last_heartbeat = schemas::time::format(at);
                record.updated_at = schemas::time::format(at);
                let tracked = Tracked {
                    record,
                    status: NodeStatus::Online,
                    last_seen: at,
                    judged_from: at,
                    status_since: at,
                    last_written: at,
                    revision: None,
                    needs_write: false,
                };
                effects.alerts.push(self.alert(
                    AlertType::Registered,
                    &tracked,
                    None,
                    at,
                    &seq.to_string(),
                    format!("node {id} registered"),
                ));
                tracked
            }
            Some(mut old) => {
                // Keep what a register does not carry.
                record.registered_at = old.record.registered_at.clone();
                record.metrics = old.record.metrics.take();
                record.models_loaded = std::mem::take(&mut old.record.models_loaded);
                record.services = std::mem::take(&mut old.record.services);
                old.record = record;
                old.last_seen = old.last_seen.max(at);
                self.come_back(&mut old, at, seq, &mut effects);
                old.record.status = old.status.to_string();
                old.record.last_heartbeat = schemas::time::format(old.last_seen);
                old.record.updated_at = schemas::time::format(at);
                old
            }
        };
        effects.writes.push(Write::Put {
            record: tracked.record.clone(),
            revision: tracked.revision,
        });
        let mut tracked = tracked;
        tracked.last_written = at;
        self.nodes.insert(id.clone(), tracked);
        effects
    }

    fn on_heartbeat(&mut self, event: &ValidEvent, at: DateTime<Utc>, seq: u64) -> Effects {
        let id = &event.node_id;
        let e = &event.event;
        let mut effects = Effects::default();
        let Some(mut node) = self.nodes.remove(id) else {
            // A heartbeat from a node we don't know (its record was lost, or
            // it registered before this registry existed): ask it to register.
            if self.reannounce_due(id, at) {
                effects.reannounce.push(id.clone());
            }
            return effects;
        };
        // The node's capabilities changed since the register we hold (a
        // register lost or rejected): ask for a fresh one.
        if let Some(hash) = &e.caps_hash {
            if node.record.caps_hash.as_ref() != Some(hash) && self.reannounce_due(id, at) {
                effects.reannounce.push(id.clone());
            }
        }
        node.last_seen = node.last_seen.max(at);
        // The first metrics after a registration are worth a write: until
        // then discovery cannot rank the node by load.
        let first_metrics = node.record.metrics.is_none() && e.metrics.is_some();
        if e.metrics.is_some() {
            node.record.metrics = e.metrics.clone();
        }
        // Which models are loaded and which services are up change rarely
        // and matter to whoever picks a node: write them at once.
        let usage_changed =
            node.record.models_loaded != e.models_loaded || node.record.services != e.services;
        node.record.models_loaded = e.models_loaded.clone();
        node.record.services = e.services.clone();
        if e.seq.is_some() {
            node.record.seq = e.seq;
        }
        let came_back = self.come_back(&mut node, at, seq, &mut effects);
        let checkpoint_due = at.signed_duration_since(node.last_written)
            >= chrono_duration(self.settings.checkpoint_interval);
        if came_back || checkpoint_due || first_metrics || usage_changed || node.needs_write {
            node.record.status = node.status.to_string();
            node.record.last_heartbeat = schemas::time::format(node.last_seen);
            if came_back {
                node.record.updated_at = schemas::time::format(at);
            }
            node.last_written = at;
            effects.writes.push(Write::Put {
                record: node.record.clone(),
                revision: node.revision,
            });
        }
        self.nodes.insert(id.clone(), node);
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
        let Some(node) = self.nodes.remove(id) else {
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

    /// A degraded or offline node that was heard from is online again.
    fn come_back(
        &self,
        node: &mut Tracked,
        at: DateTime<Utc>,
        seq: u64,
        effects: &mut Effects,
    ) -> bool {
        if !matches!(node.status, NodeStatus::Degraded | NodeStatus::Offline) {
            return false;
        }
        let previous = node.status;
        node.status = NodeStatus::Online;
        node.status_since = at;
        node.record.status = NodeStatus::Online.to_string();
        effects.alerts.push(self.alert(
            AlertType::Online,
            node,
            Some(previous),
            at,
            &seq.to_string(),
            format!("node {} is back (was {previous})", node.record.node_id),
        ));
        true
    }

    /// Counts the nodes watched for liveness and the silent ones among them.
    pub fn census(&self, now: DateTime<Utc>) -> SilenceCensus {
        let degraded_after = chrono_duration(self.settings.degraded_after);
        let mut census = SilenceCensus::default();
        for node in self.nodes.values() {
            let recently_degraded = node.status == NodeStatus::Degraded
                && now.signed_duration_since(node.status_since) < degraded_after;
            if node.status != NodeStatus::Online && !recently_degraded {
                continue;
            }
            census.watched += 1;
            if recently_degraded || self.silence(node, now) >= degraded_after {
                census.silent += 1;
            }
        }
        census
    }

    /// How long a node has been silent, for judgement: measured from its last
    /// heartbeat or from the start of its grace window, whichever is later.
    fn silence(&self, node: &Tracked, now: DateTime<Utc>) -> chrono::Duration {
        now.signed_duration_since(node.last_seen.max(node.judged_from))
    }

    /// Judges silence at `now`: online → degraded → offline, unless the
    /// registry is in self-preservation. Also re-issues writes that failed.
    ///
    /// Call it only while the registry is caught up with the event stream and
    /// connected; otherwise silence may be the registry's, not the node's.
    pub fn sweep(&mut self, now: DateTime<Utc>) -> Effects {
        let mut effects = self.self_preservation_check(now);
        if !self.self_preservation {
            effects.extend(self.judge(now));
        }
        for node in self.nodes.values_mut() {
            if node.needs_write {
                node.needs_write = false;
                node.last_written = now;
                effects.writes.push(Write::Put {
                    record: node.record.clone(),
                    revision: node.revision,
                });
            }
        }
        effects
    }

    fn self_preservation_check(&mut self, now: DateTime<Utc>) -> Effects {
        let census = self.census(now);
        let suspicious = census.watched >= self.settings.self_preservation_min_fleet
            && census.silent as f64
                > self.settings.self_preservation_threshold * census.watched as f64;
        let mut effects = Effects::default();
        if suspicious == self.self_preservation {
            return effects;
        }
        self.self_preservation = suspicious;
        let (state, message) = if suspicious {
            (
                "entered",
                format!(
                    "{} of {} watched nodes went silent within one window (threshold {:.0} %): holding degraded/offline transitions",
                    census.silent,
                    census.watched,
                    self.settings.self_preservation_threshold * 100.0
                ),
            )
        } else {
            self.grant_grace(now);
            (
                "left",
                format!(
                    "{} of {} watched nodes silent: judging again after a fresh {}s grace window",
                    census.silent,
                    census.watched,
                    self.settings.degraded_after.as_secs()
                ),
            )
        };
        effects.alerts.push(Alert {
            id: alert_id(
                None,
                AlertType::SelfPreservation,
                &format!("{state}/{}", now.timestamp_millis()),
            ),
            r#type: AlertType::SelfPreservation.to_string(),
            status: Some(state.to_owned()),
            at: schemas::time::format(now),
            message: Some(message),
            ..Alert::default()
        });
        effects
    }

    fn judge(&mut self, now: DateTime<Utc>) -> Effects {
        let degraded_after = chrono_duration(self.settings.degraded_after);
        let offline_after = chrono_duration(self.settings.offline_after);
        let mut due: BTreeMap<NodeId, NodeStatus> = BTreeMap::new();
        for (id, node) in &self.nodes {
            let silence = self.silence(node, now);
            let target = match node.status {
                NodeStatus::Online | NodeStatus::Degraded if silence >= offline_after => {
                    NodeStatus::Offline
                }
                NodeStatus::Online if silence >= degraded_after => NodeStatus::Degraded,
                _ => continue,
            };
            due.insert(id.clone(), target);
        }
        let mut effects = Effects::default();
        for (id, target) in due {
            let Some(mut node) = self.nodes.remove(&id) else {
                continue;
            };
            let previous = node.status;
            let silent_for = seconds(now.signed_duration_since(node.last_seen));
            node.status = target;
            node.status_since = now;
            node.record.status = target.to_string();
            node.record.last_heartbeat = schemas::time::format(node.last_seen);
            node.record.updated_at = schemas::time::format(now);
            let kind = if target == NodeStatus::Offline {
                AlertType::Offline
            } else {
                AlertType::Degraded
            };
            // The cause is the silence itself (its start), so a registry that
            // crashed after publishing re-derives the same id.
            let cause = node.last_seen.timestamp_millis().to_string();
            effects.alerts.push(self.alert(
                kind,
                &node,
                Some(previous),
                now,
                &cause,
                format!("no heartbeat for {silent_for}s"),
            ));
            node.last_written = now;
            node.needs_write = false;
            effects.writes.push(Write::Put {
                record: node.record.clone(),
                revision: node.revision,
            });
            self.nodes.insert(id, node);
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
        let id = NodeId::parse(&node.record.node_id).ok();
        let status = match kind {
            AlertType::Deregistered => None,
            _ => Some(node.status.to_string()),
        };
        Alert {
            id: alert_id(id.as_ref(), kind, cause),
            r#type: kind.to_string(),
            node_id: Some(node.record.node_id.clone()),
            status,
            previous_status: previous.map(|s| s.to_string()),
            at: schemas::time::format(at),
            last_heartbeat: Some(schemas::time::format(node.last_seen)),
            message: Some(message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Metrics, NodeEvent};
    use subjects::alert_types::*;

    fn t0() -> DateTime<Utc> {
        schemas::time::parse("2026-11-22T00:00:00Z").expect("valid time")
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    fn settings() -> LifecycleSettings {
        LifecycleSettings {
            degraded_after: Duration::from_secs(90),
            offline_after: Duration::from_secs(300),
            checkpoint_interval: Duration::from_secs(60),
            reannounce_interval: Duration::from_secs(10),
            self_preservation_threshold: 0.5,
            self_preservation_min_fleet: 10,
        }
    }

    fn event(kind: EventType, id: &str) -> ValidEvent {
        ValidEvent {
            kind,
            node_id: NodeId::parse(id).expect("valid id"),
            event: NodeEvent {
                r#type: kind.to_string(),
                node_id: id.to_owned(),
                node_name: Some(id.to_owned()),
                metrics: (kind == EventType::Heartbeat).then(|| Metrics {
                    cpu_pct: Some(5.0),
                    ..Metrics::default()
                }),
                ..NodeEvent::default()
            },
        }
    }

    /// Applies effects as a perfect worker would: every write succeeds.
    struct Sim {
        fleet: Fleet,
        seq: u64,
        revision: u64,
        alerts: Vec<Alert>,
        writes: usize,
    }

    impl Sim {
        fn new() -> Self {
            Self {
                fleet: Fleet::new(settings()),
                seq: 0,
                revision: 0,
                alerts: Vec::new(),
                writes: 0,
            }
        }

        fn run(&mut self, effects: Effects) {
            self.alerts.extend(effects.alerts);
            for write in effects.writes {
                self.writes += 1;
                self.revision += 1;
                if let Write::Put { record, .. } = write {
                    let id = NodeId::parse(&record.node_id).expect("valid id");
                    self.fleet.confirm_write(&id, self.revision);
                }
            }
        }

        fn send(&mut self, kind: EventType, id: &str, at: DateTime<Utc>) -> Effects {
            self.seq += 1;
            let effects = self.fleet.apply(&event(kind, id), at, self.seq);
            self.run(effects.clone());
            effects
        }

        fn sweep(&mut self, at: DateTime<Utc>) -> Effects {
            let effects = self.fleet.sweep(at);
            self.run(effects.clone());
            effects
        }

        fn status(&self, id: &str) -> Option<NodeStatus> {
            self.fleet
                .get(&NodeId::parse(id).expect("valid id"))
                .map(|n| n.status)
        }

        fn alert_types(&self) -> Vec<String> {
            self.alerts.iter().map(|a| a.r#type.clone()).collect()
        }
    }

    #[test]
    fn a_day_of_steady_heartbeats_raises_nothing_and_checkpoints_sparingly() {
        let mut sim = Sim::new();
        sim.send(EventType::Register, "n1", t0());
        let writes_after_register = sim.writes;
        // 24 h of heartbeats every 30 s, sweeping every second.
        let mut now = t0();
        for beat in 1..=2880 {
            let at = t0() + secs(30 * beat);
            while now < at {
                now += secs(1);
                sim.sweep(now);
            }
            sim.send(EventType::Heartbeat, "n1", at);
        }
        assert_eq!(sim.alert_types(), vec![NODE_REGISTERED]);
        assert_eq!(sim.status("n1"), Some(NodeStatus::Online));
        // One checkpoint per 60 s at most: 24 h → at most 1440 writes.
        let checkpoints = sim.writes - writes_after_register;
        assert!(
            (1400..=1440).contains(&checkpoints),
            "{checkpoints} checkpoints"
        );
    }

    #[test]
    fn silence_degrades_then_offlines_then_a_heartbeat_recovers() {
        let mut sim = Sim::new();
        sim.send(EventType::Register, "n1", t0());
        sim.sweep(t0() + secs(89));
        assert_eq!(sim.status("n1"), Some(NodeStatus::Online));
        let e = sim.sweep(t0() + secs(90));
        assert_eq!(sim.status("n1"), Some(NodeStatus::Degraded));
        assert_eq!(e.alerts[0].message.as_deref(), Some("no heartbeat for 90s"));
        assert_eq!(e.alerts[0].previous_status.as_deref(), Some("online"));
        sim.sweep(t0() + secs(299));
        assert_eq!(sim.status("n1"), Some(NodeStatus::Degraded));
        sim.sweep(t0() + secs(300));
        assert_eq!(sim.status("n1"), Some(NodeStatus::Offline));
        // Hours later nothing more happens while it stays silent.
        for h in 1..=5 {
            assert!(sim.sweep(t0() + secs(3600 * h)).alerts.is_empty());
        }
        let e = sim.send(EventType::Heartbeat, "n1", t0() + secs(6 * 3600));
        assert_eq!(sim.status("n1"), Some(NodeStatus::Online));
        assert_eq!(e.alerts[0].previous_status.as_deref(), Some("offline"));
        assert_eq!(
            sim.alert_types(),
            vec![NODE_REGISTERED, NODE_DEGRADED, NODE_OFFLINE, NODE_ONLINE]
        );
    }

    #[test]
    fn a_long_sweep_gap_goes_straight_to_offline_once() {
        let mut sim = Sim::new();
        sim.send(EventType::Register, "n1", t0());
        let e = sim.sweep(t0() + secs(1000));
        assert_eq!(e.alerts.len(), 1);
        assert_eq!(e.alerts[0].r#type, NODE_OFFLINE);
        assert_eq!(e.alerts[0].previous_status.as_deref(), Some("online"));
    }

    #[test]
    fn deregister_deletes_and_alerts_once() {
        let mut sim = Sim::new();
        sim.send(EventType::Register, "n1", t0());
        let e = sim.send(EventType::Deregister, "n1", t0() + secs(5));
        assert!(matches!(
            e.writes.as_slice(),
            [Write::Delete { revision: 1, .. }]
        ));
        assert_eq!(sim.status("n1"), None);
        // A redelivered deregister changes nothing.
        assert!(sim
            .send(EventType::Deregister, "n1", t0() + secs(6))
            .is_empty());
        assert!(sim.sweep(t0() + secs(1000)).is_empty());
        assert_eq!(sim.alert_types(), vec![NODE_REGISTERED, NODE_DEREGISTERED]);
    }

    #[test]
    fn re_register_of_a_known_node_is_not_a_new_registration() {
        let mut sim = Sim::new();
        sim.send(EventType::Register, "n1", t0());
        let registered_at = sim
            .fleet
            .get(&NodeId::parse("n1").expect("id"))
            .map(|n| n.record.registered_at.clone());
        let e = sim.send(EventType::Register, "n1", t0() + secs(10));
        assert!(e.alerts.is_empty());
        assert!(matches!(
            e.writes.as_slice(),
            [Write::Put {
                revision: Some(1),
                ..
            }]
        ));
        let node = sim.fleet.get(&NodeId::parse("n1").expect("id")).cloned();
        assert_eq!(node.map(|n| n.record.registered_at), registered_at);
    }

    #[test]
    fn unknown_heartbeats_ask_for_reannounce_at_a_bounded_rate() {
        let mut sim = Sim::new();
        let mut asked = 0;
        for s in 0..60 {
            asked += sim
                .send(EventType::Heartbeat, "ghost", t0() + secs(s))
                .reannounce
                .len();
        }
        assert_eq!(asked, 6, "once per 10 s over 60 s");
        assert_eq!(sim.status("ghost"), None);
        assert!(sim.alerts.is_empty());
    }

    #[test]
    fn a_heartbeat_with_another_caps_hash_asks_for_a_reannounce() {
        let mut sim = Sim::new();
        let mut register = event(EventType::Register, "n1");
        register.event.caps_hash = Some("aaaa".into());
        sim.fleet.apply(&register, t0(), 1);
        let mut beat = event(EventType::Heartbeat, "n1");
        beat.event.caps_hash = Some("aaaa".into());
        assert!(sim
            .fleet
            .apply(&beat, t0() + secs(1), 2)
            .reannounce
            .is_empty());
        beat.event.caps_hash = Some("bbbb".into());
        let asked: usize = (0..30)
            .map(|s| {
                sim.fleet
                    .apply(&beat, t0() + secs(2 + s), 3 + s as u64)
                    .reannounce
                    .len()
            })
            .sum();
        assert_eq!(asked, 3, "once per 10 s over 30 s");
        // The fresh register brings the hash in line.
        register.event.caps_hash = Some("bbbb".into());
        sim.fleet.apply(&register, t0() + secs(40), 50);
        assert!(sim
            .fleet
            .apply(&beat, t0() + secs(41), 51)
            .reannounce
            .is_empty());
    }

    #[test]
    fn a_change_of_loaded_models_or_services_is_written_at_once() {
        let mut sim = Sim::new();
        sim.send(EventType::Register, "n1", t0());
        sim.send(EventType::Heartbeat, "n1", t0() + secs(1));
        let mut beat = event(EventType::Heartbeat, "n1");
        assert!(sim.fleet.apply(&beat, t0() + secs(2), 10).writes.is_empty());
        beat.event.services = vec!["ollama".into()];
        let e = sim.fleet.apply(&beat, t0() + secs(3), 11);
        assert!(
            matches!(e.writes.as_slice(), [Write::Put { record, .. }] if record.services == ["ollama"])
        );
    }

    #[test]
    fn restart_grants_a_full_window_and_raises_no_registration() {
        let mut sim = Sim::new();
        sim.send(EventType::Register, "n1", t0());
        let record = sim
            .fleet
            .get(&NodeId::parse("n1").expect("id"))
            .map(|n| n.record.clone());
        let mut restarted = Fleet::new(settings());
        let start = t0() + secs(80);
        let skipped = restarted.restore(record.map(|r| (r, 1)), start);
        assert!(skipped.is_empty());
        // Without the grace it would be degraded at t0+90; with it, not before start+90.
        assert!(restarted.sweep(start + secs(89)).alerts.is_empty());
        let e = restarted.apply(&event(EventType::Register, "n1"), start + secs(1), 7);
        assert!(e.alerts.is_empty(), "no repeated node.registered");
        assert!(restarted.sweep(start + secs(90)).alerts.is_empty());
        let e = restarted.sweep(start + secs(91));
        assert_eq!(e.alerts.len(), 1);
        assert_eq!(e.alerts[0].r#type, NODE_DEGRADED);
    }

    #[test]
    fn mass_silence_enters_self_preservation_and_holds_transitions() {
        let mut sim = Sim::new();
        let ids: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
        for id in &ids {
            sim.send(EventType::Register, id, t0());
        }
        // 12 of 20 go silent; 8 keep beating.
        let mut now = t0();
        for s in 1..=600 {
            now = t0() + secs(s);
            if s % 30 == 0 {
                for id in &ids[12..] {
                    sim.send(EventType::Heartbeat, id, now);
                }
            }
            sim.sweep(now);
        }
        assert!(sim.fleet.in_self_preservation());
        assert_eq!(sim.status("n0"), Some(NodeStatus::Online), "held");
        assert_eq!(
            sim.alert_types()
                .iter()
                .filter(|t| *t == REGISTRY_SELF_PRESERVATION)
                .count(),
            1
        );
        // The silent ones come back: the registry leaves and judges again.
        for id in &ids[..12] {
            sim.send(EventType::Heartbeat, id, now);
        }
        let e = sim.sweep(now + secs(1));
        assert_eq!(e.alerts.len(), 1);
        assert_eq!(e.alerts[0].status.as_deref(), Some("left"));
        assert!(!sim.fleet.in_self_preservation());
        assert!(!sim.alert_types().iter().any(|t| t == NODE_DEGRADED));
    }

    #[test]
    fn a_minority_going_silent_is_judged_normally() {
        let mut sim = Sim::new();
        for i in 0..20 {
            sim.send(EventType::Register, &format!("n{i}"), t0());
        }
        for s in 1..=200 {
            let now = t0() + secs(s);
            if s % 30 == 0 {
                for i in 3..20 {
                    sim.send(EventType::Heartbeat, &format!("n{i}"), now);
                }
            }
            sim.sweep(now);
        }
        assert!(!sim.fleet.in_self_preservation());
        let degraded = sim
            .alert_types()
            .iter()
            .filter(|t| *t == NODE_DEGRADED)
            .count();
        assert_eq!(degraded, 3);
    }

    #[test]
    fn alert_ids_are_deterministic_per_cause() {
        let mut a = Fleet::new(settings());
        let mut b = Fleet::new(settings());
        let ea = a.apply(&event(EventType::Register, "n1"), t0(), 5);
        let eb = b.apply(&event(EventType::Register, "n1"), t0(), 5);
        assert_eq!(ea.alerts[0].id, eb.alerts[0].id);
        let ec = b.apply(&event(EventType::Deregister, "n1"), t0(), 6);
        assert_ne!(ea.alerts[0].id, ec.alerts[0].id);
    }

    #[test]
    fn failed_writes_are_retried_by_the_next_sweep() {
        let mut fleet = Fleet::new(settings());
        let e = fleet.apply(&event(EventType::Register, "n1"), t0(), 1);
        assert_eq!(e.writes.len(), 1);
        let id = NodeId::parse("n1").expect("id");
        fleet.write_failed(&id, None);
        let e = fleet.sweep(t0() + secs(1));
        assert!(matches!(
            e.writes.as_slice(),
            [Write::Put { revision: None, .. }]
        ));
        fleet.confirm_write(&id, 3);
        assert!(fleet.sweep(t0() + secs(2)).writes.is_empty());
    }
}
