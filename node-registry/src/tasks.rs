//! Control tasks the registry sends to nodes on `node.<id>.tasks`: the
//! [`TaskSender`] the worker sends through, over NATS ([`NatsTasks`]) or
//! in memory for unit tests ([`MemoryTasks`]).

use std::future::Future;
use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use schemas::codec::{self, Encoding, HEADER_CONTENT_TYPE};
use schemas::status::TaskType;
use schemas::TaskRequest;
use subjects::NodeId;

/// Why a task could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("sending {task} to {node_id}: {reason}")]
pub struct TaskError {
    /// The node it concerns.
    pub node_id: String,
    /// The task.
    pub task: TaskType,
    /// The underlying reason, as reported.
    pub reason: String,
}

/// Where the worker's tasks go. Fire and forget: the registry does not wait
/// for the node's answer (a `reannounce` is answered by a fresh `register`).
pub trait TaskSender: Send + Sync {
    /// Sends `task` to `node`.
    fn send(
        &self,
        node: &NodeId,
        task: TaskType,
    ) -> impl Future<Output = Result<(), TaskError>> + Send;
}

/// Tasks published on NATS.
#[derive(Debug, Clone)]
pub struct NatsTasks {
    client: async_nats::Client,
}

impl NatsTasks {
    /// Tasks over `client`.
    pub fn new(client: async_nats::Client) -> Self {
        Self { client }
    }
}

impl TaskSender for NatsTasks {
    async fn send(&self, node: &NodeId, task: TaskType) -> Result<(), TaskError> {
        let request = TaskRequest {
            r#type: task.to_string(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_CONTENT_TYPE, Encoding::Json.content_type());
        let payload = codec::encode(&request, Encoding::Json);
        self.client
            .publish_with_headers(subjects::node_tasks(node), headers, payload.into())
            .await
            .map_err(|e| TaskError {
                node_id: node.to_string(),
                task,
                reason: e.to_string(),
            })
    }
}

/// Tasks kept in memory, in order sent, for unit tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryTasks {
    sent: Arc<Mutex<Vec<(NodeId, TaskType)>>>,
}

impl MemoryTasks {
    /// The tasks sent so far.
    pub fn sent(&self) -> Vec<(NodeId, TaskType)> {
        self.sent.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl TaskSender for MemoryTasks {
    async fn send(&self, node: &NodeId, task: TaskType) -> Result<(), TaskError> {
        self.sent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((node.clone(), task));
        Ok(())
    }
}
