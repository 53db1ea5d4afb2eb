//! Follows the node's role's key in the `profiles` bucket and sends each
//! change to the agent's loop.
//!
//! No JetStream consumer: a fleet of a million agents must not cost the
//! server a million consumers (each with its idle heartbeats). A plain
//! subscription to the key's subject hears every put (a KV put is a publish
//! on `$KV.profiles.<role>`), and a direct get of the key's last message
//! reads the value with its revision: at start, after each change heard
//! (with a little jitter, so a fleet does not ask in one instant), after a
//! reconnect, and every [`RESYNC`] in case a change was missed. Both are
//! all a node's credentials let it do with the bucket
//! (`fleet_auth::Role::Node`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use futures::StreamExt;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, warn};

use super::Update;

/// Longest pause between two attempts to read the profile.
const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// A read in any case this often (a change missed while disconnected).
const RESYNC: Duration = Duration::from_secs(300);
/// Longest random delay before reading a change heard (spreads a fleet's
/// reads of one change over this window).
const JITTER_MS: u64 = 1000;
/// The KV operation header.
const KV_OPERATION: &str = "KV-Operation";

/// Follows `role`'s profile until `updates` is closed; `resync` asks for a
/// read now (the agent reconnected).
pub async fn run(
    client: async_nats::Client,
    role: String,
    updates: mpsc::Sender<Update>,
    resync: Arc<Notify>,
) {
    if !subjects::is_role_name(&role) {
        warn!(%role, "the role cannot name a profile (a-z 0-9 - _): no profile is applied");
        return;
    }
    let subject = subjects::profile_subject(&role);
    let js = jetstream::new(client.clone());
    let mut backoff = new_backoff();
    // The subscription first, so no change between the read and it is missed.
    let mut changes = loop {
        match client.subscribe(subject.clone()).await {
            Ok(changes) => break changes,
            Err(e) => {
                warn!(%role, error = %e, "cannot follow the role's profile; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    let stream = loop {
        match js
            .get_stream_no_info(subjects::kv_stream(subjects::BUCKET_PROFILES))
            .await
        {
            Ok(stream) => break stream,
            Err(e) => {
                warn!(%role, error = %e, "no profiles bucket; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    };
    info!(%role, "following the role's profile");
    let mut said = false;
    loop {
        let wait = match read(&stream, &subject).await {
            Ok(update) => {
                if updates.send(update).await.is_err() {
                    return;
                }
                said = false;
                backoff = new_backoff();
                RESYNC
            }
            Err(e) => {
                // Said once at warn level; the retries at debug.
                if said {
                    debug!(%role, error = %e, "profile not read; retrying");
                } else {
                    warn!(%role, error = %e, "cannot read the role's profile (is the registry up, and do the node's credentials name its role?); retrying");
                    said = true;
                }
                backoff.next_delay()
            }
        };
        tokio::select! {
            heard = changes.next() => {
                if heard.is_none() {
                    return;
                }
                let jitter = Duration::from_millis(rand::random::<u64>() % JITTER_MS);
                tokio::time::sleep(jitter).await;
            }
            () = resync.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
        if updates.is_closed() {
            return;
        }
    }
}

fn new_backoff() -> runtime_support::Backoff {
    runtime_support::Backoff::new(Duration::from_secs(1), MAX_BACKOFF).with_jitter()
}

/// The key's value now: its last message (a put, or a removal marker), or
/// no profile at all.
async fn read(stream: &stream::Stream<()>, subject: &str) -> Result<Update, String> {
    match stream.direct_get_last_for_subject(subject).await {
        Ok(message) => {
            let removed = message
                .headers
                .get(KV_OPERATION)
                .is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
            Ok(if removed {
                Update::Removed {
                    revision: message.sequence,
                }
            } else {
                Update::Put {
                    revision: message.sequence,
                    value: message.payload,
                }
            })
        }
        Err(e) if e.kind() == stream::DirectGetErrorKind::NotFound => {
            Ok(Update::Removed { revision: 0 })
        }
        Err(e) => Err(e.to_string()),
    }
}
