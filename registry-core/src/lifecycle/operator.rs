//! An operator's word on a node: cordon, uncordon, remove.

use super::*;

impl Fleet {
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
}
