//! `registry.health`: every instance answers (no queue group), in the shape
//! of the seed's health standard, after checking what it depends on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use runtime_support::CancellationToken;
use schemas::codec::Encoding;
use schemas::health::HealthReply;
use tokio::sync::watch;
use tracing::{info_span, warn, Instrument};

use crate::state::RegistryState;

/// How long each dependency check may take.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// A backlog this large (events) makes the instance degraded.
pub const BACKLOG_LIMIT: u64 = 100_000;

/// What a health check looks at.
#[derive(Debug, Clone)]
pub struct HealthSources {
    /// JetStream, for the dependency checks.
    pub js: async_nats::jetstream::Context,
    /// The names of the streams it depends on.
    pub names: subjects::Names,
    /// Whether the connection to NATS is up.
    pub connected: watch::Receiver<crate::link::Link>,
    /// The instance's own state.
    pub state: Arc<RegistryState>,
    /// The read index (loaded: discovery can answer).
    pub index: crate::index::ReadIndex,
    /// A global view's regions (it has no event stream of its own).
    pub regions: Option<Arc<crate::view::Regions>>,
}

/// How one stream answers: `ok`, or why not.
async fn stream_check(js: &async_nats::jetstream::Context, stream: &str) -> String {
    match tokio::time::timeout(CHECK_TIMEOUT, js.get_stream(stream)).await {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(e)) => format!("unavailable: {e}"),
        Err(_) => "unavailable: no answer in 2s".to_owned(),
    }
}

/// This instance's health now.
pub async fn check(sources: &HealthSources) -> HealthReply {
    let mut dependencies = BTreeMap::new();
    let connected = sources.connected.borrow().up;
    dependencies.insert(
        "nats".to_owned(),
        if connected {
            "connected"
        } else {
            "disconnected"
        }
        .to_owned(),
    );
    let jetstream = match tokio::time::timeout(CHECK_TIMEOUT, sources.js.query_account()).await {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(e)) => format!("unavailable: {e}"),
        Err(_) => "unavailable: no answer in 2s".to_owned(),
    };
    dependencies.insert("jetstream".to_owned(), jetstream);
    let kv_stream = subjects::kv_stream(&sources.names.nodes_bucket);
    if sources.regions.is_some() {
        dependencies.insert("kv".to_owned(), stream_check(&sources.js, &kv_stream).await);
    } else {
        let (kv, events) = tokio::join!(
            stream_check(&sources.js, &kv_stream),
            stream_check(&sources.js, &sources.names.events_stream)
        );
        dependencies.insert("kv".to_owned(), kv);
        dependencies.insert("event_stream".to_owned(), events);
    }
    let state = &sources.state;
    let mut reply = HealthReply {
        status: schemas::status::HealthStatus::Healthy,
        service: "node-registry".to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_s: state.uptime_s(),
        instance: state.instance.clone(),
        leader: state.is_leader(),
        backlog: state.backlog(),
        dependencies,
        self_preservation: state.self_preservation(),
        event_history_s: state.event_history().0.map(|h| h.as_secs()),
        event_history_short: state.event_history().1,
        partitions: (state.partition_count() > 1).then(|| state.led_partitions()),
        partition_count: Some(state.partition_count()).filter(|c| *c > 1),
        regions: sources.regions.as_ref().map(|r| r.report()),
    };
    reply.status = reply.judge(BACKLOG_LIMIT);
    if reply.status == schemas::status::HealthStatus::Healthy && !sources.index.is_ready() {
        reply.status = schemas::status::HealthStatus::Degraded;
    }
    reply
}

/// Most health checks answered at once; more are dropped (the asker times
/// out), so a flood of health requests cannot pile up JetStream calls.
const MAX_IN_FLIGHT: usize = 16;

/// Answers `registry.health` until `cancel`.
pub async fn serve(client: async_nats::Client, sources: HealthSources, cancel: CancellationToken) {
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut requests = match client.subscribe(subjects::REGISTRY_HEALTH).await {
        Ok(requests) => requests,
        Err(e) => {
            warn!(error = %e, "not answering registry.health");
            return;
        }
    };
    loop {
        let message = tokio::select! {
            () = cancel.cancelled() => break,
            next = requests.next() => match next {
                Some(message) => message,
                None => break,
            },
        };
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        if !subjects::is_safe_reply(&reply) {
            warn!(reply = %reply, "health request with a reply subject that is not an inbox; ignored");
            continue;
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            warn!("too many health requests at once; one dropped");
            continue;
        };
        let (client, sources) = (client.clone(), sources.clone());
        // Checks wait on JetStream: answered beside the loop.
        tokio::spawn(
            async move {
                let _permit = permit;
                let health = check(&sources).await;
                let body = serde_json::to_vec(&health).map_err(|e| {
                    schemas::error::ServiceError::new(
                        schemas::error::ErrorCode::Internal,
                        e.to_string(),
                    )
                });
                let (headers, body) = schemas::nats::reply_parts(body, Encoding::Json);
                if let Err(e) = client.publish_with_headers(reply, headers, body).await {
                    warn!(error = %e, "answering a health request");
                }
            }
            .instrument(info_span!("health")),
        );
    }
}
