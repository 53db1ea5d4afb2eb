//! Watches the node's role's key in the `profiles` bucket and sends each
//! change to the agent's loop: an ordered push consumer on that one key,
//! its filter named in the API subject, which is all a node's credentials
//! let it read (`fleet_auth::Role::Node`).

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use subjects::NodeId;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::Update;

/// Longest pause between two attempts to (re)open the watch.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The KV operation header and the values that mean a removal.
const KV_OPERATION: &str = "KV-Operation";

/// Watches `role`'s profile until `updates` is closed, reopening the watch
/// (with backoff) when the bucket is missing, the server refuses, or the
/// connection drops.
pub async fn run(
    client: async_nats::Client,
    node_id: NodeId,
    role: String,
    updates: mpsc::Sender<Update>,
) {
    if !subjects::is_role_name(&role) {
        warn!(%role, "the role cannot name a profile (a-z 0-9 - _): no profile is applied");
        return;
    }
    let js = jetstream::new(client.clone());
    let mut backoff =
        runtime_support::Backoff::new(Duration::from_secs(1), MAX_BACKOFF).with_jitter();
    let mut said = false;
    loop {
        match watch_once(&js, &client, &node_id, &role, &updates).await {
            Ok(()) if updates.is_closed() => return,
            Ok(()) => {
                debug!("profile watch ended; reopening");
                backoff = runtime_support::Backoff::new(Duration::from_secs(1), MAX_BACKOFF)
                    .with_jitter();
            }
            Err(e) => {
                // Said once at warn level; the retries at debug.
                if said {
                    debug!(%role, error = %e, "profile watch not open; retrying");
                } else {
                    warn!(%role, error = %e, "cannot watch the role's profile (is the registry up, and do the node's credentials name its role?); retrying");
                    said = true;
                }
            }
        }
        if updates.is_closed() {
            return;
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

async fn watch_once(
    js: &jetstream::Context,
    client: &async_nats::Client,
    node_id: &NodeId,
    role: &str,
    updates: &mpsc::Sender<Update>,
) -> Result<(), String> {
    let stream = js
        .get_stream_no_info(subjects::kv_stream(subjects::BUCKET_PROFILES))
        .await
        .map_err(|e| e.to_string())?;
    let consumer = stream
        .create_consumer(consumer::push::OrderedConfig {
            // Named, so the API subject carries the filter the node's
            // credentials allow; random, so a restart never meets its
            // predecessor's consumer.
            name: Some(format!("profile_{node_id}_{:08x}", rand::random::<u32>())),
            deliver_subject: client.new_inbox(),
            description: Some(format!("profile watch of {node_id}")),
            filter_subject: subjects::profile_subject(role),
            deliver_policy: consumer::DeliverPolicy::LastPerSubject,
            replay_policy: consumer::ReplayPolicy::Instant,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    info!(%role, "watching the role's profile");
    while let Some(message) = messages.next().await {
        let message = message.map_err(|e| e.to_string())?;
        let Ok(revision) = message.info().map(|i| i.stream_sequence) else {
            continue;
        };
        let removed = message
            .headers
            .as_ref()
            .and_then(|h| h.get(KV_OPERATION))
            .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
        let update = if removed {
            Update::Removed { revision }
        } else {
            Update::Put {
                revision,
                value: message.payload.clone(),
            }
        };
        if updates.send(update).await.is_err() {
            return Ok(());
        }
    }
    Ok(())
}
