//! Operators' requests on `registry.admin` (cordon, uncordon, deregister):
//! the leader alone answers, since only it changes records.

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
        let applied = match request.op {
            AdminOp::Cordon => self.fleet.cordon(&request.node_id, now, &cause),
            AdminOp::Uncordon => self.fleet.uncordon(&request.node_id, now, &cause),
            AdminOp::Deregister => self.fleet.remove(
                &request.node_id,
                now,
                &cause,
                request.reason.as_deref().unwrap_or("no reason given"),
            ),
        };
        let Some(effects) = applied else {
            return Err(ServiceError::new(
                ErrorCode::NotFound,
                format!("no node {}", request.node_id),
            ));
        };
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
        let answer = AdminReply {
            ok: true,
            node_id: request.node_id.to_string(),
            status,
            stored,
            note,
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
