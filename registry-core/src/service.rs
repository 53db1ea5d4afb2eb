//! `registry.discover`, `registry.get` and `registry.list` as the NATS micro
//! service `registry` (queue group `registry`: any instance answers).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_nats::service::{self, ServiceExt};
use futures::StreamExt;
use schemas::codec::{self, CodecError, Encoding, MAX_REQUEST_BYTES};
use schemas::error::{ErrorCode, ServiceError};
use schemas::status::StatusFilter;
use schemas::{DiscoverReply, DiscoverRequest, GetRequest};
use tokio::sync::watch;
use tracing::{debug, info_span, warn, Instrument};

use crate::discovery::Query;
use crate::index::ReadIndex;

/// Counters of the registry, reported in the service's `$SRV.STATS` data.
#[derive(Debug, Default)]
pub struct Counters {
    /// Events applied.
    pub events_applied: AtomicU64,
    /// Events rejected (malformed, oversized, spoofed, invalid).
    pub events_rejected: AtomicU64,
    /// Alerts published.
    pub alerts_published: AtomicU64,
    /// KV writes made.
    pub kv_writes: AtomicU64,
    /// KV writes that failed (conflict or backend).
    pub kv_write_failures: AtomicU64,
    /// `reannounce` tasks sent.
    pub reannounces_sent: AtomicU64,
}

impl Counters {
    /// Adds one to a counter.
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn to_json(&self) -> serde_json::Value {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        serde_json::json!({
            "events_applied": get(&self.events_applied),
            "events_rejected": get(&self.events_rejected),
            "alerts_published": get(&self.alerts_published),
            "kv_writes": get(&self.kv_writes),
            "kv_write_failures": get(&self.kv_write_failures),
            "reannounces_sent": get(&self.reannounces_sent),
        })
    }
}

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[error("starting the registry service: {0}")]
pub struct ServiceStartError(#[source] async_nats::Error);

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Discover,
    Get,
    List,
}

/// Runs the service until `shutdown` flips to true.
pub async fn serve(
    client: async_nats::Client,
    index: ReadIndex,
    counters: Arc<Counters>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), ServiceStartError> {
    let stats_counters = counters.clone();
    let service = client
        .service_builder()
        .description("Fleet node registry: discovery of nodes by what they can do")
        .queue_group(subjects::SERVICE_QUEUE_GROUP)
        .stats_handler(move |_endpoint, _stats| stats_counters.to_json())
        .start(subjects::SERVICE_NAME, env!("CARGO_PKG_VERSION"))
        .await
        .map_err(ServiceStartError)?;
    let mut tasks = tokio::task::JoinSet::new();
    for (name, subject, endpoint) in [
        (
            subjects::ENDPOINT_DISCOVER,
            subjects::REGISTRY_DISCOVER,
            Endpoint::Discover,
        ),
        (
            subjects::ENDPOINT_GET,
            subjects::REGISTRY_GET,
            Endpoint::Get,
        ),
        (
            subjects::ENDPOINT_LIST,
            subjects::REGISTRY_LIST,
            Endpoint::List,
        ),
    ] {
        let mut requests = service
            .endpoint_builder()
            .name(name)
            .add(subject)
            .await
            .map_err(ServiceStartError)?;
        let index = index.clone();
        let client = client.clone();
        // NOTE: one task per endpoint answers its requests in turn: answers
        // come from memory in microseconds, so this bounds concurrency
        // without a pool.
        tasks.spawn(async move {
            while let Some(request) = requests.next().await {
                let span = info_span!("request", endpoint = ?endpoint);
                handle(&client, &index, endpoint, request)
                    .instrument(span)
                    .await;
            }
        });
    }
    let _ = shutdown.wait_for(|s| *s).await;
    if let Err(e) = service.stop().await {
        warn!(error = %e, "stopping the registry service");
    }
    tasks.abort_all();
    Ok(())
}

async fn handle(
    client: &async_nats::Client,
    index: &ReadIndex,
    endpoint: Endpoint,
    request: service::Request,
) {
    let message = &request.message;
    let Some(reply) = message.reply.clone() else {
        debug!("request without a reply subject; ignored");
        return;
    };
    let (encoding, result) = match schemas::nats::encoding_of(message.headers.as_ref()) {
        Err(e) => (Encoding::Json, Err(bad_request(e))),
        Ok(encoding) => (
            encoding,
            answer(index, endpoint, &message.payload, encoding),
        ),
    };
    let max_payload = client.server_info().max_payload;
    let result = result.and_then(|body| {
        if body.len() > max_payload {
            Err(ServiceError::new(
                ErrorCode::BadRequest,
                format!(
                    "reply would be {} bytes, over the server's max payload of {max_payload}: ask for a lower limit",
                    body.len()
                ),
            ))
        } else {
            Ok(body)
        }
    });
    if let Err(error) = &result {
        debug!(code = error.code, message = %error.message, "request refused");
    }
    let (headers, body) = schemas::nats::reply_parts(result, encoding);
    // NOTE: replies are published directly rather than through
    // Request::respond, whose error form has an empty body; the contract's
    // errors carry a JSON body as well as the headers.
    if let Err(e) = client.publish_with_headers(reply, headers, body).await {
        warn!(error = %e, "sending a reply");
    }
}

fn bad_request(e: CodecError) -> ServiceError {
    ServiceError::new(ErrorCode::BadRequest, e.to_string())
}

fn answer(
    index: &ReadIndex,
    endpoint: Endpoint,
    payload: &[u8],
    encoding: Encoding,
) -> Result<Vec<u8>, ServiceError> {
    match endpoint {
        Endpoint::Discover | Endpoint::List => {
            let request: DiscoverRequest =
                codec::decode(payload, encoding, MAX_REQUEST_BYTES).map_err(bad_request)?;
            let default_status = if endpoint == Endpoint::Discover {
                StatusFilter::Online
            } else {
                StatusFilter::Any
            };
            let query = Query::from_request(request, default_status)
                .map_err(|e| ServiceError::new(ErrorCode::BadRequest, e.to_string()))?;
            let reply: DiscoverReply =
                ready(index)?.read(|state| query.answer(state.nodes.values()));
            Ok(codec::encode(&reply, encoding))
        }
        Endpoint::Get => {
            let request: GetRequest =
                codec::decode(payload, encoding, MAX_REQUEST_BYTES).map_err(bad_request)?;
            let id = subjects::NodeId::parse(&request.node_id).map_err(|e| {
                ServiceError::new(ErrorCode::BadRequest, format!("field node_id: {e}"))
            })?;
            let record = ready(index)?.read(|state| state.nodes.get(id.as_str()).cloned());
            match record {
                Some(record) => Ok(codec::encode(&record, encoding)),
                None => Err(ServiceError::new(
                    ErrorCode::NotFound,
                    format!("no node {id}"),
                )),
            }
        }
    }
}

fn ready(index: &ReadIndex) -> Result<&ReadIndex, ServiceError> {
    if index.is_ready() {
        Ok(index)
    } else {
        Err(ServiceError::new(
            ErrorCode::NotReady,
            "the registry's index is still loading; retry shortly",
        ))
    }
}
