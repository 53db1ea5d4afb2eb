//! `registry.discover`, `registry.get` and `registry.list` as the NATS micro
//! service `registry` (queue group `registry`: any instance answers).

use std::sync::Arc;

use async_nats::service::{self, ServiceExt};
use futures::StreamExt;
use runtime_support::CancellationToken;
use schemas::codec::{self, CodecError, Encoding, MAX_REQUEST_BYTES};
use schemas::error::{ErrorCode, ServiceError};
use schemas::status::{SortOrder, StatusFilter};
use schemas::{DiscoverReply, DiscoverRequest, GetRequest};
use tracing::{debug, info_span, warn, Instrument};

use crate::counters::Counters;
use crate::index::ReadIndex;
use registry_core::catalog::Catalog;
use registry_core::discovery::{Query, Selection};

/// Why the service could not start.
#[derive(Debug, thiserror::Error)]
#[error("starting the registry service: {0}")]
pub struct ServiceStartError(#[source] async_nats::Error);

/// Header of every successful reply: the index's KV revision it was read at.
pub const HEADER_REVISION: &str = "Registry-Revision";
/// How long a request with `min_revision` waits for the index to catch up.
pub const MIN_REVISION_WAIT: std::time::Duration = std::time::Duration::from_secs(2);
/// Most requests answered at once per endpoint.
const MAX_IN_FLIGHT: usize = 256;

/// Which endpoint a request came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Discover,
    Get,
    List,
}

impl Endpoint {
    /// Its name, as the micro service and the metrics say it.
    fn name(self) -> &'static str {
        match self {
            Self::Discover => subjects::ENDPOINT_DISCOVER,
            Self::Get => subjects::ENDPOINT_GET,
            Self::List => subjects::ENDPOINT_LIST,
        }
    }
}

/// Runs the service until `cancel`.
pub async fn serve(
    client: async_nats::Client,
    index: ReadIndex,
    counters: Arc<Counters>,
    regions: Option<Arc<crate::view::Regions>>,
    cancel: CancellationToken,
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
        let regions = regions.clone();
        // Requests are answered concurrently (one may wait for
        // min_revision), at most MAX_IN_FLIGHT at once per endpoint.
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
        let max_payload = client.server_info().max_payload;
        tasks.spawn(async move {
            while let Some(request) = requests.next().await {
                let span = info_span!(
                    "request",
                    endpoint = ?endpoint,
                    trace_id = tracing::field::Empty
                );
                // A caller's trace (nodectl sends one) goes on through here.
                if let Some(trace_id) = runtime_support::trace_context::continue_trace(
                    &span,
                    request.message.headers.as_ref(),
                ) {
                    span.record("trace_id", trace_id);
                }
                // NOTE: a request that may wait (min_revision, or protobuf,
                // which we do not peek into) gets its own task; every other
                // one is answered here, from memory, without a task switch.
                let may_wait = !is_plain_json(&request.message);
                // A global view lists the nodes of regions out of reach.
                let unreachable = regions
                    .as_ref()
                    .map(|r| r.unreachable())
                    .unwrap_or_default();
                let answer = {
                    let (client, index) = (client.clone(), index.clone());
                    async move {
                        handle(
                            &client,
                            &index,
                            endpoint,
                            request,
                            max_payload,
                            &unreachable,
                        )
                        .await;
                    }
                };
                if !may_wait {
                    answer.instrument(span).await;
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                tokio::spawn(
                    async move {
                        answer.await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
        });
    }
    cancel.cancelled().await;
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
    max_payload: usize,
    unreachable: &[String],
) {
    let message = &request.message;
    let Some(reply) = message.reply.clone() else {
        debug!("request without a reply subject; ignored");
        return;
    };
    if !subjects::is_safe_reply(&reply) {
        warn!(reply = %reply, "request with a reply subject that is not an inbox; ignored");
        return;
    }
    let started = std::time::Instant::now();
    let (encoding, result) = match schemas::nats::encoding_of(message.headers.as_ref()) {
        Err(e) => (Encoding::Json, Err(bad_request(e))),
        Ok(encoding) => (
            encoding,
            answer(
                index,
                endpoint,
                &message.payload,
                encoding,
                max_payload,
                unreachable,
            )
            .await,
        ),
    };
    if let Err(error) = &result {
        debug!(code = error.code, message = %error.message, "request refused");
    }
    let revision = result.as_ref().map(|(_, r)| *r).ok();
    let (mut headers, body) = schemas::nats::reply_parts(result.map(|(body, _)| body), encoding);
    if let Some(revision) = revision {
        headers.insert(HEADER_REVISION, revision.to_string().as_str());
    }
    // NOTE: replies are published directly rather than through
    // Request::respond, whose error form has an empty body; the contract's
    // errors carry a JSON body as well as the headers.
    if let Err(e) = client.publish_with_headers(reply, headers, body).await {
        warn!(error = %e, "sending a reply");
    }
    crate::metrics::discover_duration().record(
        started.elapsed().as_secs_f64(),
        &[opentelemetry::KeyValue::new("endpoint", endpoint.name())],
    );
}

/// A JSON request that cannot make us wait (no `min_revision` in it).
fn is_plain_json(message: &async_nats::Message) -> bool {
    let json = matches!(
        schemas::nats::encoding_of(message.headers.as_ref()),
        Ok(Encoding::Json)
    );
    json && !message
        .payload
        .windows(b"min_revision".len())
        .any(|w| w == b"min_revision")
}

fn bad_request(e: CodecError) -> ServiceError {
    ServiceError::new(ErrorCode::BadRequest, e.to_string())
}

/// The encoded answer and the index revision it was read at.
async fn answer(
    index: &ReadIndex,
    endpoint: Endpoint,
    payload: &[u8],
    encoding: Encoding,
    max_payload: usize,
    unreachable: &[String],
) -> Result<(Vec<u8>, u64), ServiceError> {
    match endpoint {
        Endpoint::Discover | Endpoint::List => {
            let request: DiscoverRequest =
                codec::decode(payload, encoding, MAX_REQUEST_BYTES).map_err(bad_request)?;
            let (status, sort) = if endpoint == Endpoint::Discover {
                (StatusFilter::Online, SortOrder::LeastLoaded)
            } else {
                (StatusFilter::Any, SortOrder::NodeId)
            };
            let query = Query::from_request(request, status, sort)
                .map_err(|e| ServiceError::new(ErrorCode::BadRequest, e.to_string()))?
                .with_seed(rand::random());
            if let Some(wanted) = query.min_revision {
                if !index.wait_revision(wanted, MIN_REVISION_WAIT).await {
                    let have = index.read(|c| c.revision);
                    return Err(ServiceError::new(
                        ErrorCode::NotReady,
                        format!("the index is at revision {have}, below min_revision {wanted}; retry shortly"),
                    ));
                }
            }
            let index = ready(index)?;
            if encoding == Encoding::Json && query.fit.is_none() {
                // The catalog keeps each record as its JSON: splice them
                // (a fit's reply carries placements: built below).
                return Ok(index.read(|catalog| {
                    let selection = query.select(catalog);
                    let revision = catalog.revision;
                    let cut_off = cut_off(catalog, unreachable);
                    (
                        splice_json(catalog, selection, &query, max_payload, &cut_off),
                        revision,
                    )
                }));
            }
            let mut reply: DiscoverReply = index.read(|catalog| query.answer(catalog));
            reply.unreachable = reply
                .nodes
                .iter()
                .filter(|n| {
                    n.nats
                        .as_ref()
                        .and_then(|l| l.domain.as_ref())
                        .is_some_and(|d| unreachable.contains(d))
                })
                .map(|n| n.node_id.clone())
                .collect();
            let revision = reply.revision;
            Ok((
                encode_within(reply, &query, encoding, max_payload),
                revision,
            ))
        }
        Endpoint::Get => {
            let request: GetRequest =
                codec::decode(payload, encoding, MAX_REQUEST_BYTES).map_err(bad_request)?;
            let id = subjects::NodeId::parse(&request.node_id).map_err(|e| {
                ServiceError::new(ErrorCode::BadRequest, format!("field node_id: {e}"))
            })?;
            let index = ready(index)?;
            let found = index.read(|c| {
                let body = match encoding {
                    Encoding::Json => c.json_of(id.as_str()).map(<[u8]>::to_vec),
                    Encoding::Protobuf => c.get(id.as_str()).map(|r| codec::encode(&r, encoding)),
                };
                (body, c.revision)
            });
            match found {
                (Some(body), revision) => Ok((body, revision)),
                (None, _) => Err(ServiceError::new(
                    ErrorCode::NotFound,
                    format!("no node {id}"),
                )),
            }
        }
    }
}

/// Encodes a reply (protobuf; JSON replies are spliced), cut to fit under the
/// server's max payload: a cut reply says `truncated` and, sorted by node
/// id, carries the cursor to continue from.
fn encode_within(
    mut reply: DiscoverReply,
    query: &Query,
    encoding: Encoding,
    max_payload: usize,
) -> Vec<u8> {
    let encode = |reply: &DiscoverReply| codec::encode(reply, encoding);
    // Leave room for the headers and the reply subject.
    let budget = max_payload.saturating_sub(4096).max(1024);
    let mut body = encode(&reply);
    while body.len() > budget && !reply.nodes.is_empty() {
        let fits = reply.nodes.len() * budget / body.len().max(1);
        reply.nodes.truncate(fits.min(reply.nodes.len() - 1));
        reply.placements.truncate(reply.nodes.len());
        reply.latency_ms.truncate(reply.nodes.len());
        reply.truncated = Some(true);
        if query.sort == SortOrder::NodeId {
            reply.next_cursor = reply.nodes.last().map(|n| n.node_id.clone());
        }
        body = encode(&reply);
    }
    body
}

/// The slots of the nodes attached to the regions (JetStream domains)
/// out of reach.
fn cut_off(catalog: &Catalog, unreachable: &[String]) -> roaring::RoaringBitmap {
    unreachable
        .iter()
        .map(|d| catalog.in_nats_domain(d))
        .fold(roaring::RoaringBitmap::new(), |all, d| all | d)
}

/// The JSON reply built from the records' stored JSON, cut to fit under the
/// server's max payload like [`encode_within`].
fn splice_json(
    catalog: &Catalog,
    selection: Selection,
    query: &Query,
    max_payload: usize,
    cut_off: &roaring::RoaringBitmap,
) -> Vec<u8> {
    let budget = max_payload.saturating_sub(4096).max(1024);
    let mut body = Vec::with_capacity(budget.min(256 * 1024));
    body.extend_from_slice(b"{\"nodes\":[");
    let mut truncated = false;
    let mut last: Option<u32> = None;
    let mut written = 0;
    let mut unreachable: Vec<&str> = Vec::new();
    for slot in &selection.slots {
        let Some(stored) = catalog.json(*slot) else {
            continue;
        };
        let projected;
        let json = match &query.fields {
            None => stored,
            Some(fields) => {
                projected = project_stored(stored, fields);
                &projected[..]
            }
        };
        // Room for this record, a comma and the tail (total, revision,
        // cursor, with near a latency per node, and the ids out of reach).
        let latencies = if selection.latency_ms.is_empty() {
            0
        } else {
            (written + 1) * 24
        } + if cut_off.is_empty() {
            0
        } else {
            (written + 1) * 66
        };
        if body.len() + json.len() + 256 + latencies > budget {
            truncated = true;
            break;
        }
        if last.is_some() {
            body.push(b',');
        }
        body.extend_from_slice(json);
        last = Some(*slot);
        written += 1;
        if cut_off.contains(*slot) {
            if let Some(id) = catalog.node_id(*slot) {
                unreachable.push(id);
            }
        }
    }
    let next_cursor = if truncated {
        (query.sort == SortOrder::NodeId)
            .then(|| {
                last.and_then(|slot| catalog.node_id(slot))
                    .map(str::to_owned)
            })
            .flatten()
    } else {
        selection.next_cursor
    };
    body.extend_from_slice(
        format!(
            "],\"total\":{},\"revision\":{}",
            selection.total, catalog.revision
        )
        .as_bytes(),
    );
    if let Some(cursor) = next_cursor {
        body.extend_from_slice(b",\"next_cursor\":");
        body.extend_from_slice(&serde_json::to_vec(&cursor).unwrap_or_default());
    }
    if truncated {
        body.extend_from_slice(b",\"truncated\":true");
    }
    if !selection.latency_ms.is_empty() {
        // One estimate per node written, in the same order.
        let latency: Vec<f64> = selection.latency_ms.into_iter().take(written).collect();
        body.extend_from_slice(b",\"latency_ms\":");
        body.extend_from_slice(&serde_json::to_vec(&latency).unwrap_or_else(|_| b"[]".to_vec()));
    }
    if !unreachable.is_empty() {
        body.extend_from_slice(b",\"unreachable\":");
        body.extend_from_slice(
            &serde_json::to_vec(&unreachable).unwrap_or_else(|_| b"[]".to_vec()),
        );
    }
    body.push(b'}');
    body
}

/// A stored record's JSON with only the requested top-level keys; values
/// are copied as they are, not parsed.
fn project_stored(stored: &[u8], fields: &std::collections::BTreeSet<String>) -> Vec<u8> {
    type Raw<'a> = std::collections::BTreeMap<&'a str, &'a serde_json::value::RawValue>;
    let Ok(object) = serde_json::from_slice::<Raw<'_>>(stored) else {
        return b"{}".to_vec();
    };
    let mut out = Vec::with_capacity(stored.len() / 2);
    out.push(b'{');
    for (key, value) in object.iter().filter(|(k, _)| fields.contains(**k)) {
        if out.len() > 1 {
            out.push(b',');
        }
        out.extend_from_slice(&serde_json::to_vec(key).unwrap_or_default());
        out.push(b':');
        out.extend_from_slice(value.get().as_bytes());
    }
    out.push(b'}');
    out
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
