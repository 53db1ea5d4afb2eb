//! Operators' requests on `registry.admin` (drain and resume, cordon and
//! uncordon of a node or one GPU, deregister): the leader alone answers,
//! since only it changes records.

use registry_core::lifecycle::{Drain, GpuCordonRequest, OperatorError};
use registry_kv::alerts::AlertSink;
use registry_kv::RecordStore;
use schemas::admin::{AdminReply, AdminRequest};
use schemas::error::{ErrorCode, ServiceError};
use schemas::status::{AdminOp, NodeStatus};
use tracing::info;

use super::Worker;
use crate::tasks::TaskSender;

impl<S: RecordStore, A: AlertSink, T: TaskSender> Worker<S, A, T> {
    /// Applies one admin request and returns the answer's JSON. `cause`
    /// names the request (its reply subject): the ids of the alerts it
    /// raises are derived from it, so each request is its own decision.
    pub async fn answer_admin(
        &mut self,
        payload: &[u8],
        cause: &str,
    ) -> Result<Vec<u8>, ServiceError> {
        let request = AdminRequest::decode(payload)
            .map_err(|e| ServiceError::new(ErrorCode::BadRequest, e.to_string()))?;
        let now = self.clock.now();
        let cause = format!("admin/{cause}");
        let was = self.fleet.get(&request.node_id).map(|n| n.status);
        let id = &request.node_id;
        let reason = request.reason.clone().unwrap_or_default();
        let by = request.by.clone();
        let applied = match (request.op, request.gpu) {
            (AdminOp::Cordon, Some(index)) => {
                self.fleet
                    .cordon_gpu(id, now, &cause, GpuCordonRequest { index, reason, by })
            }
            (AdminOp::Uncordon, Some(index)) => self.fleet.uncordon_gpu(id, now, &cause, index),
            (AdminOp::Cordon, None) if request.reason.is_none() => {
                self.fleet.cordon(id, now, &cause)
            }
            (AdminOp::Cordon | AdminOp::Drain, None) => {
                let resume_at = request
                    .resume_at(now)
                    .map_err(|e| ServiceError::new(ErrorCode::BadRequest, e.to_string()))?;
                self.fleet.drain(
                    id,
                    now,
                    &cause,
                    Drain {
                        reason,
                        by,
                        resume_at,
                    },
                )
            }
            (AdminOp::Uncordon | AdminOp::Resume, None) => self.fleet.resume(id, now, &cause),
            (AdminOp::Deregister, _) => self.fleet.remove(
                id,
                now,
                &cause,
                request.reason.as_deref().unwrap_or("no reason given"),
            ),
            // AdminRequest::decode allows gpu with cordon and uncordon only.
            (op, Some(_)) => {
                return Err(ServiceError::new(
                    ErrorCode::BadRequest,
                    format!("gpu does not go with op {op}"),
                ))
            }
        };
        let effects = applied.map_err(|e| match e {
            OperatorError::UnknownNode(_) | OperatorError::NoSuchGpu { .. } => {
                ServiceError::new(ErrorCode::NotFound, e.to_string())
            }
        })?;
        let stored = self.execute(effects).await;
        let status = self
            .fleet
            .get(&request.node_id)
            .map(|n| n.status.to_string());
        info!(op = %request.op, node_id = %request.node_id, ?status, "admin request applied");
        // Like a kubelet after `kubectl delete node`: a running agent
        // registers again.
        let note = (request.op == AdminOp::Deregister && was == Some(NodeStatus::Online)).then(|| {
            format!(
                "{} was online when removed: its agent registers again at its next heartbeat unless it is stopped or its credentials are revoked (nodectl auth revoke {})",
                request.node_id, request.node_id
            )
        });
        let record = self.fleet.get(&request.node_id).map(|n| n.record());
        let answer = AdminReply {
            ok: true,
            node_id: request.node_id.to_string(),
            status,
            stored,
            note,
            maintenance: record.as_ref().and_then(|r| r.maintenance.clone()),
            gpu_cordons: record.map(|r| r.gpu_cordons).unwrap_or_default(),
        };
        serde_json::to_vec(&answer)
            .map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))
    }
}

/// Reads an admin request as the worker does: the node it names, or why
/// it would be refused (for the fuzz targets).
pub fn read_admin_request(payload: &[u8]) -> Result<String, String> {
    AdminRequest::decode(payload)
        .map(|request| request.node_id.to_string())
        .map_err(|e| e.to_string())
}
