//! The read index: every node record, in memory, fed by a watch of `nodes`.
//!
//! A reflector (kube-runtime's pattern): one task writes, from a KV watch;
//! discovery reads cheap snapshots. The initial replay is buffered and
//! swapped in at once, and only then is the index ready: a query never sees a
//! half-loaded fleet. If the watch fails it is reopened and the index rebuilt
//! the same way, still serving the old view meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use registry_kv::watch::{watch_nodes, NodeChange};
use schemas::NodeRecord;
use tokio::sync::watch;
use tracing::{info, instrument, warn};

/// What the index holds.
#[derive(Debug, Default)]
pub struct IndexState {
    /// Records by node id.
    pub nodes: HashMap<String, NodeRecord>,
    /// The highest KV revision applied.
    pub revision: u64,
}

/// A shared, read-mostly view of the `nodes` bucket.
#[derive(Debug, Clone)]
pub struct ReadIndex {
    state: Arc<RwLock<IndexState>>,
    ready: watch::Receiver<bool>,
}

impl ReadIndex {
    /// Whether the initial replay has been loaded.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Waits until the index is ready.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        // An Err means the reflector is gone; then nothing will change.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// Runs `f` over the current state.
    pub fn read<T>(&self, f: impl FnOnce(&IndexState) -> T) -> T {
        let state = self.state.read().unwrap_or_else(|p| p.into_inner());
        f(&state)
    }
}

/// Starts the reflector on `store`; it runs until `shutdown` flips to true.
pub fn spawn_reflector(store: kv::Store, mut shutdown: watch::Receiver<bool>) -> ReadIndex {
    let state = Arc::new(RwLock::new(IndexState::default()));
    let (ready_tx, ready_rx) = watch::channel(false);
    let index = ReadIndex {
        state: state.clone(),
        ready: ready_rx,
    };
    tokio::spawn(async move {
        let mut backoff = Duration::from_millis(200);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                result = reflect(&store, &state, &ready_tx) => {
                    match result {
                        Ok(()) => warn!("nodes watch ended; reopening"),
                        Err(e) => warn!(error = %e, "nodes watch failed; reopening"),
                    }
                }
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    });
    index
}

#[instrument(skip_all, fields(bucket = %store.name))]
async fn reflect(
    store: &kv::Store,
    state: &Arc<RwLock<IndexState>>,
    ready: &watch::Sender<bool>,
) -> Result<(), registry_kv::watch::WatchError> {
    let mut changes = Box::pin(watch_nodes(store).await?);
    let mut buffer = IndexState::default();
    let mut live = false;
    while let Some(change) = changes.next().await {
        let change = change?;
        if live {
            let mut guard = state.write().unwrap_or_else(|p| p.into_inner());
            apply(&mut guard, change);
            continue;
        }
        match change {
            NodeChange::Current => {
                info!(
                    nodes = buffer.nodes.len(),
                    revision = buffer.revision,
                    "read index loaded"
                );
                *state.write().unwrap_or_else(|p| p.into_inner()) = std::mem::take(&mut buffer);
                live = true;
                ready.send_replace(true);
            }
            other => apply(&mut buffer, other),
        }
    }
    Ok(())
}

fn apply(state: &mut IndexState, change: NodeChange) {
    match change {
        NodeChange::Put(v) => {
            state.revision = state.revision.max(v.revision);
            state.nodes.insert(v.value.node_id.clone(), v.value);
        }
        NodeChange::Delete { key, revision } => {
            state.revision = state.revision.max(revision);
            state.nodes.remove(&key);
        }
        NodeChange::Current => {}
    }
}
