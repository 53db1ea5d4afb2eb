//! An operator's word on a node: drain (cordon) with a reason and a
//! deadline, resume (uncordon), one GPU cordoned or back, remove.

use super::*;
use schemas::{GpuCordon, Maintenance};

/// An operator's drain of a whole node: why, who, and when it ends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Drain {
    /// Why ("" for a reason-less cordon).
    pub reason: String,
    /// Who asked, as their client said.
    pub by: Option<String>,
    /// When the leader resumes the node by itself (none: only an operator does).
    pub resume_at: Option<DateTime<Utc>>,
}

/// An operator's cordon of one GPU.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuCordonRequest {
    /// The GPU's index.
    pub index: u32,
    /// Why.
    pub reason: String,
    /// Who asked.
    pub by: Option<String>,
}

/// Why an operator's request cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OperatorError {
    /// The registry does not know the node.
    #[error("no node {0}")]
    UnknownNode(NodeId),
    /// The node reports no GPU of that index.
    #[error("node {node} has no GPU {index} (it reports {count})")]
    NoSuchGpu {
        /// The node.
        node: NodeId,
        /// The index asked for.
        index: u32,
        /// How many GPUs it reports.
        count: usize,
    },
}

/// The GPU of `index` among a node's capabilities: its reported index, or
/// its position where the agent reports none.
fn gpu_at(record: &NodeRecord, index: u32) -> Option<&schemas::Gpu> {
    let gpus = record.capabilities.as_ref()?.gpus.as_slice();
    gpus.iter()
        .enumerate()
        .find(|(position, gpu)| gpu.index.unwrap_or(*position as u32) == index)
        .map(|(_, gpu)| gpu)
}

/// The refusal of a GPU index `record`'s node does not report.
fn no_such_gpu(id: &NodeId, index: u32, record: &NodeRecord) -> OperatorError {
    OperatorError::NoSuchGpu {
        node: id.clone(),
        index,
        count: record.capabilities.as_ref().map_or(0, |c| c.gpus.len()),
    }
}

impl Fleet {
    /// An alert about one GPU of `node`: `when` is the time and the cause,
    /// `gpu` the index and uuid.
    fn gpu_alert(
        &self,
        kind: AlertType,
        node: &Tracked,
        (at, cause): (DateTime<Utc>, &str),
        (index, uuid): (u32, Option<String>),
        message: String,
    ) -> Alert {
        let mut alert = self.alert(kind, node, None, at, cause, message);
        alert.gpu_index = Some(index);
        alert.gpu_uuid = uuid;
        alert
    }

    fn slot_of(&self, id: &NodeId) -> Result<u32, OperatorError> {
        self.slot_of_id(id)
            .ok_or_else(|| OperatorError::UnknownNode(id.clone()))
    }

    /// A known node and its slot.
    fn known(&self, id: &NodeId) -> Result<(u32, &Tracked), OperatorError> {
        let slot = self.slot_of(id)?;
        let node = self
            .slot(slot)
            .ok_or_else(|| OperatorError::UnknownNode(id.clone()))?;
        Ok((slot, node))
    }

    /// Puts a node in maintenance (an operator's cordon, without a reason):
    /// it is no longer judged, nor discovered as online, until uncordoned.
    /// A node already in maintenance keeps its drain as it is.
    pub fn cordon(
        &mut self,
        id: &NodeId,
        at: DateTime<Utc>,
        cause: &str,
    ) -> Result<Effects, OperatorError> {
        if self.known(id)?.1.status == NodeStatus::Maintenance {
            return Ok(Effects::default());
        }
        self.drain(id, at, cause, Drain::default())
    }

    /// Drains a node: maintenance with a reason, who asked, and maybe a
    /// deadline at which the leader resumes it by itself. Entering raises
    /// one `node.maintenance` alert; draining a node already in maintenance
    /// updates its reason and deadline (no new alert).
    pub fn drain(
        &mut self,
        id: &NodeId,
        at: DateTime<Utc>,
        cause: &str,
        drain: Drain,
    ) -> Result<Effects, OperatorError> {
        let (slot, node) = self.known(id)?;
        let mut effects = Effects::default();
        let previous = node.status;
        let mut record = node.record();
        let since = match (&record.maintenance, previous) {
            (Some(kept), NodeStatus::Maintenance) => kept.since.clone(),
            _ => schemas::time::format(at),
        };
        let maintenance = Maintenance {
            reason: drain.reason.clone(),
            by: drain.by.clone(),
            since,
            resume_at: drain.resume_at.map(schemas::time::format),
        };
        if previous == NodeStatus::Maintenance && record.maintenance.as_ref() == Some(&maintenance)
        {
            return Ok(effects);
        }
        if previous != NodeStatus::Maintenance {
            self.set_status(slot, NodeStatus::Maintenance, at);
            let Some(node) = self.slot(slot) else {
                return Ok(effects);
            };
            let how = if drain.reason.is_empty() {
                "cordoned".to_owned()
            } else {
                format!("drained: {}", drain.reason)
            };
            let until = drain
                .resume_at
                .map(|t| format!(" until {}", schemas::time::format(t)))
                .unwrap_or_default();
            let mut alert = self.alert(
                AlertType::Maintenance,
                node,
                Some(previous),
                at,
                cause,
                format!("node {id} {how}{until} (was {previous})"),
            );
            alert.reason = (!drain.reason.is_empty()).then(|| drain.reason.clone());
            alert.resume_at = maintenance.resume_at.clone();
            effects.alerts.push(alert);
            record.status = NodeStatus::Maintenance.to_string();
            record.updated_at = schemas::time::format(at);
        }
        record.maintenance = Some(maintenance);
        if let Some(node) = self.slot_mut(slot) {
            node.resume_at = drain.resume_at;
        }
        self.write(slot, record, at, &mut effects);
        self.schedule(slot);
        Ok(effects)
    }

    /// Takes a node out of maintenance (`nodectl resume`, `uncordon`, or its
    /// drain's deadline): online, judged again after a fresh
    /// `degraded_after` window, with one `node.resumed` alert. A node not in
    /// maintenance is left as it is.
    pub fn resume(
        &mut self,
        id: &NodeId,
        at: DateTime<Utc>,
        cause: &str,
    ) -> Result<Effects, OperatorError> {
        let slot = self.slot_of(id)?;
        Ok(self.resume_slot(slot, at, cause, "by an operator"))
    }

    /// Uncordon: the reason-less name of [`Fleet::resume`].
    pub fn uncordon(
        &mut self,
        id: &NodeId,
        at: DateTime<Utc>,
        cause: &str,
    ) -> Result<Effects, OperatorError> {
        self.resume(id, at, cause)
    }

    pub(super) fn resume_slot(
        &mut self,
        slot: u32,
        at: DateTime<Utc>,
        cause: &str,
        how: &str,
    ) -> Effects {
        let mut effects = Effects::default();
        let Some(node) = self.slot(slot) else {
            return effects;
        };
        if node.status != NodeStatus::Maintenance {
            return effects;
        }
        let mut record = node.record();
        self.set_status(slot, NodeStatus::Online, at);
        if let Some(node) = self.slot_mut(slot) {
            node.judged_from = node.judged_from.max(at);
            node.resume_at = None;
        }
        let Some(node) = self.slot(slot) else {
            return effects;
        };
        let reason = record
            .maintenance
            .as_ref()
            .map(|m| m.reason.clone())
            .filter(|r| !r.is_empty());
        let mut alert = self.alert(
            AlertType::Resumed,
            node,
            Some(NodeStatus::Maintenance),
            at,
            cause,
            format!("node {} resumed {how}", node.id),
        );
        alert.reason = reason;
        effects.alerts.push(alert);
        record.status = NodeStatus::Online.to_string();
        record.maintenance = None;
        record.updated_at = schemas::time::format(at);
        self.write(slot, record, at, &mut effects);
        self.schedule(slot);
        effects
    }

    /// Takes one GPU of a node out of service while the node stays in
    /// service: discovery's GPU figures and fit leave it out. Raises one
    /// `gpu.cordoned` alert; cordoning it again updates the reason.
    pub fn cordon_gpu(
        &mut self,
        id: &NodeId,
        at: DateTime<Utc>,
        cause: &str,
        request: GpuCordonRequest,
    ) -> Result<Effects, OperatorError> {
        let (slot, node) = self.known(id)?;
        let mut record = node.record();
        let Some(gpu) = gpu_at(&record, request.index) else {
            return Err(no_such_gpu(id, request.index, &record));
        };
        let uuid = gpu.uuid.clone();
        let mut effects = Effects::default();
        match record
            .gpu_cordons
            .iter_mut()
            .find(|c| c.index == request.index)
        {
            Some(kept) if kept.reason == request.reason && kept.by == request.by => {
                return Ok(effects)
            }
            Some(kept) => {
                kept.reason = request.reason.clone();
                kept.by = request.by.clone();
            }
            None => {
                record.gpu_cordons.push(GpuCordon {
                    index: request.index,
                    uuid: uuid.clone(),
                    reason: request.reason.clone(),
                    by: request.by.clone(),
                    since: schemas::time::format(at),
                });
                record.gpu_cordons.sort_by_key(|c| c.index);
                let mut alert = self.gpu_alert(
                    AlertType::GpuCordoned,
                    node,
                    (at, cause),
                    (request.index, uuid),
                    format!(
                        "GPU {} of node {id} cordoned: {}",
                        request.index, request.reason
                    ),
                );
                alert.reason = Some(request.reason.clone()).filter(|r| !r.is_empty());
                effects.alerts.push(alert);
            }
        }
        record.updated_at = schemas::time::format(at);
        self.write(slot, record, at, &mut effects);
        Ok(effects)
    }

    /// Puts a cordoned GPU back in service, with one `gpu.uncordoned` alert.
    /// A GPU not cordoned is left as it is.
    pub fn uncordon_gpu(
        &mut self,
        id: &NodeId,
        at: DateTime<Utc>,
        cause: &str,
        index: u32,
    ) -> Result<Effects, OperatorError> {
        let (slot, node) = self.known(id)?;
        let mut record = node.record();
        let mut effects = Effects::default();
        let Some(position) = record.gpu_cordons.iter().position(|c| c.index == index) else {
            if gpu_at(&record, index).is_none() {
                return Err(no_such_gpu(id, index, &record));
            }
            return Ok(effects);
        };
        let cordon = record.gpu_cordons.remove(position);
        effects.alerts.push(self.gpu_alert(
            AlertType::GpuUncordoned,
            node,
            (at, cause),
            (index, cordon.uuid),
            format!("GPU {index} of node {id} back in service"),
        ));
        record.updated_at = schemas::time::format(at);
        self.write(slot, record, at, &mut effects);
        Ok(effects)
    }

    /// Removes a node on an operator's word (as if it had deregistered).
    pub fn remove(
        &mut self,
        id: &NodeId,
        at: DateTime<Utc>,
        cause: &str,
        reason: &str,
    ) -> Result<Effects, OperatorError> {
        let node = self
            .take(id)
            .ok_or_else(|| OperatorError::UnknownNode(id.clone()))?;
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
        Ok(effects)
    }
}
