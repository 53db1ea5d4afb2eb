//! Events from the nodes: register, heartbeat and deregister as consumed
//! from the stream, and the server's word on their connections.

use super::*;

impl Fleet {
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
        let Some(slot) = self.slot_of_id(id) else {
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

    pub(super) fn on_register(
        &mut self,
        event: &ValidEvent,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Effects {
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
            profile_revision: e.profile_revision,
            profile_error: e.profile_error.clone(),
            profile_mismatch: e.profile_mismatch.clone(),
            nats: e.nats.clone(),
            ..NodeRecord::default()
        };
        let mut kept = None;
        let slot = match self.slot_of_id(id) {
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
                    gpu_digest: 0,
                    gpu_quarantine: false,
                    record: RecordState::Pending(Arc::default()),
                    status: NodeStatus::Online,
                    last_seen: at,
                    judged_from: at,
                    status_since: at,
                    last_written: at,
                    revision: None,
                    needs_write: false,
                    phased: false,
                    queued: None,
                    region: self
                        .region_number(e.labels.get(REGION_LABEL).map_or("", String::as_str)),
                    link: None,
                    resume_at: None,
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
                // A GPU out of service stays out across a restart of its agent.
                record.gpu_health = gpus::carried(
                    previous.gpu_health,
                    record
                        .capabilities
                        .as_ref()
                        .map(|c| c.gpus.as_slice())
                        .unwrap_or_default(),
                );
                // An operator's word outlives a restart of the agent.
                record.maintenance = previous.maintenance.clone();
                record.gpu_cordons = previous.gpu_cordons.clone();
                kept = Some((previous.profile_error, previous.profile_mismatch));
                old.last_seen = old.last_seen.max(at);
                old.caps_hash = caps_digest(record.caps_hash.as_deref());
                record.status = old.status.to_string();
                record.last_heartbeat = schemas::time::format(old.last_seen);
                record.updated_at = schemas::time::format(at);
                slot
            }
        };
        self.profile_alerts(slot, kept, &record, at, seq, &mut effects);
        self.write(slot, record, at, &mut effects);
        self.schedule(slot);
        effects
    }

    /// One `node.profile_failed` alert when a register reports a profile
    /// error it did not before, and one `node.profile_mismatch` when the
    /// models it lacks changed (and it lacks some).
    fn profile_alerts(
        &self,
        slot: u32,
        before: Option<(Option<String>, Vec<String>)>,
        record: &NodeRecord,
        at: DateTime<Utc>,
        seq: u64,
        effects: &mut Effects,
    ) {
        let Some(node) = self.slot(slot) else {
            return;
        };
        let (error_before, missing_before) = before.unwrap_or_default();
        let role = record.role.as_deref().unwrap_or("-");
        if let Some(error) = &record.profile_error {
            if error_before.as_ref() != Some(error) {
                let mut alert = self.alert(
                    AlertType::ProfileFailed,
                    node,
                    None,
                    at,
                    &seq.to_string(),
                    format!(
                        "node {} cannot apply the profile of role {role} (it keeps its last good one): {error}",
                        node.id
                    ),
                );
                alert.reason = Some(error.clone());
                effects.alerts.push(alert);
            }
        }
        if !record.profile_mismatch.is_empty() && record.profile_mismatch != missing_before {
            let mut alert = self.alert(
                AlertType::ProfileMismatch,
                node,
                None,
                at,
                &seq.to_string(),
                format!(
                    "node {} lacks models the profile of role {role} expects: {}",
                    node.id,
                    record.profile_mismatch.join(", ")
                ),
            );
            alert.reason = Some(record.profile_mismatch.join(","));
            effects.alerts.push(alert);
        }
    }

    /// Moves a node to another region (its labels changed).
    pub(super) fn move_region(&mut self, slot: u32, region: u16) {
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

    pub(super) fn on_heartbeat(
        &mut self,
        event: &ValidEvent,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Effects {
        let id = &event.node_id;
        let e = &event.event;
        let mut effects = Effects::default();
        let Some(slot) = self.slot_of_id(id) else {
            // A heartbeat from a node we don't know (its record was lost, or
            // it registered before this registry existed): ask it to register.
            if self.reannounce_due(id, at) {
                effects.reannounce.push(id.clone());
            }
            return effects;
        };
        let came_back = self.come_back(slot, at, seq, &mut effects);
        let gpu_health = self.gpu_verdicts(slot, e.metrics.as_ref(), at, seq, &mut effects);
        let checkpoint = chrono_duration(self.checkpoint_interval());
        let backlogged = self.backlogged;
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
        let checkpoint_due =
            pacing::checkpoint_due(id.as_str(), node.last_written, node.phased, at, checkpoint);
        // The first metrics after a registration are worth a write: until
        // then discovery cannot rank the node by load. They take what the
        // write budget leaves, and otherwise wait for the node's
        // checkpoint (as they do under a backlog: see `set_backlogged`).
        let first_metrics = !node.has_metrics && e.metrics.is_some() && !backlogged;
        let must = came_back
            || checkpoint_due
            || usage_changed
            || gpu_health.is_some()
            || node.needs_write;
        // A write that must be made spends the budget too, so first
        // metrics never add to a fleet's checkpoints beyond it.
        let write = match (must, first_metrics) {
            (true, _) => {
                self.freshening.take(at);
                true
            }
            (false, true) => self.freshening.take(at),
            (false, false) => false,
        };
        if write {
            let Some(node) = self.slot_mut(slot) else {
                return effects;
            };
            node.phased |= checkpoint_due;
            let mut record = node.record();
            if gpu_health.is_some() {
                record.gpu_health = gpu_health;
            }
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
    pub(super) fn reannounce_due(&mut self, id: &NodeId, at: DateTime<Utc>) -> bool {
        let due = self.reannounced.get(id).is_none_or(|last| {
            at.signed_duration_since(*last) >= chrono_duration(self.settings.reannounce_interval)
        });
        if due {
            self.reannounced.insert(id.clone(), at);
        }
        due
    }

    pub(super) fn on_deregister(
        &mut self,
        event: &ValidEvent,
        at: DateTime<Utc>,
        seq: u64,
    ) -> Effects {
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

    /// A degraded or offline node that was heard from is online again.
    pub(super) fn come_back(
        &mut self,
        slot: u32,
        at: DateTime<Utc>,
        seq: u64,
        effects: &mut Effects,
    ) -> bool {
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
}
