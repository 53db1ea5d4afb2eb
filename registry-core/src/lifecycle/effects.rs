//! What the fleet asks the service to do, and what it hears back: the
//! [`Effects`] of a decision, write confirmations and failures, and the
//! derived ids every alert carries (a standby re-derives the id of an alert
//! its dead leader sent, so the stream's duplicate window drops it).

use super::*;

/// Namespace of the registry's deterministic alert ids (UUID v5).
pub(super) const ALERT_NAMESPACE: Uuid = Uuid::from_u128(0x6d1f_5e2a_8c1b_4f4e_9a57_0e3c_2b1d_7a90);

/// A record write the worker must make (compare-and-swap).
#[derive(Debug, Clone, PartialEq)]
pub enum Write {
    /// Create (`revision` = None) or update the record at `revision`.
    Put {
        /// The full record to store, shared with the fleet's pending state
        /// (and the read index's expectation) instead of copied for each.
        record: Arc<NodeRecord>,
        /// The revision the key is expected at.
        revision: Option<u64>,
    },
    /// Delete the record at `revision`.
    Delete {
        /// The node it concerns.
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

    /// Adds `other`'s effects after these (one batch of several events).
    pub fn extend(&mut self, other: Effects) {
        self.alerts.extend(other.alerts);
        self.writes.extend(other.writes);
        self.reannounce.extend(other.reannounce);
    }
}

/// The id of an alert of `kind` about `node` (or the registry), derived
/// from what caused it (an event's stream sequence, a sweep's deadline, an
/// operator's request): the same cause always gives the same id, so the
/// `ALERTS` stream drops a repeat and a standby re-derives its dead
/// leader's ids.
pub fn alert_id(node: Option<&NodeId>, kind: AlertType, cause: &str) -> String {
    let node = node.map(NodeId::as_str).unwrap_or("-");
    Uuid::new_v5(
        &ALERT_NAMESPACE,
        format!("{node}/{kind}/{cause}").as_bytes(),
    )
    .to_string()
}

impl Fleet {
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
        let Some(slot) = self.slot_of_id(id) else {
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

    /// Hands `record` to the worker as the node's next write.
    pub(super) fn write(
        &mut self,
        slot: u32,
        record: NodeRecord,
        at: DateTime<Utc>,
        effects: &mut Effects,
    ) {
        let Some(node) = self.slot_mut(slot) else {
            return;
        };
        node.usage = usage_digest(
            record.models_loaded.iter().map(String::as_str),
            record.services.iter().map(String::as_str),
        );
        node.has_metrics = record.metrics.is_some();
        node.gpu_digest = gpus::kept_digest(record.gpu_health.as_ref());
        node.gpu_quarantine = gpus::any_quarantined(record.gpu_health.as_ref());
        node.last_written = at;
        node.needs_write = false;
        let record = Arc::new(record);
        effects.writes.push(Write::Put {
            record: Arc::clone(&record),
            revision: node.revision,
        });
        node.record = RecordState::Pending(record);
    }

    pub(super) fn alert(
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
            ..Alert::default()
        }
    }
}
