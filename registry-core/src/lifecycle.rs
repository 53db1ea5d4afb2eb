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
#[path = "tests/lifecycle.rs"]
mod tests;
