//! The typed client of the fleet registry: what `nodectl`, `node-agent
//! status` and the tests talk to the registry through (as kube-client is to
//! kubectl).
//!
//! [`Client`] asks the registry (`discover`, `list`, `get`), sends operators'
//! requests to the leader ([`Client::admin`]), follows and replays alerts,
//! watches the `nodes` bucket, and answers "what happened to this node" by
//! merging its events from `NODE_EVENTS` with its alerts from `ALERTS` in
//! time order ([`Client::audit`]).
#![deny(missing_docs)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use schemas::admin::{AdminReply, AdminRequest};
use schemas::codec::{self, Encoding, HEADER_CONTENT_TYPE, MAX_EVENT_BYTES};
use schemas::error::ServiceError;
use schemas::selector::Selector;
use schemas::{Alert, DiscoverReply, DiscoverRequest, GetRequest, NodeEvent, NodeRecord};
use serde::Serialize;
use subjects::Names;
use tracing::Instrument as _;

/// Default time a request waits for the registry.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest batch fetched at once when replaying a stream.
const REPLAY_BATCH: usize = 500;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Could not connect to NATS.
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        /// The server URL that was tried.
        url: String,
        /// The underlying reason, as reported.
        source: async_nats::ConnectError,
    },
    /// The credentials or TLS files could not be used.
    #[error("NATS auth: {0}")]
    Auth(String),
    /// No registry is listening.
    #[error("no registry answers on {0}: is node-registry running?")]
    NoRegistry(String),
    /// The registry did not answer in time.
    #[error("the registry did not answer on {0} in time")]
    Timeout(String),
    /// The registry answered with a coded error.
    #[error("registry error {}: {}", .0.code, .0.message)]
    Service(ServiceError),
    /// The answer could not be decoded.
    #[error("decoding the answer: {0}")]
    Decode(#[from] codec::CodecError),
    /// A NATS or JetStream operation failed.
    #[error("{what}: {source}")]
    Nats {
        /// What was attempted.
        what: String,
        /// Why it failed.
        source: async_nats::Error,
    },
}

fn nats_error(what: impl Into<String>) -> impl FnOnce(async_nats::Error) -> ClientError {
    let what = what.into();
    move |source| ClientError::Nats { what, source }
}

/// Where an audit entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuditSource {
    /// An event the node published (`NODE_EVENTS`).
    Event,
    /// An alert the registry raised (`ALERTS`).
    Alert,
}

/// One line of a node's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// The server's receive time.
    pub at: DateTime<Utc>,
    /// Event or alert.
    pub source: AuditSource,
    /// The event type (`heartbeat`) or alert type (`node.degraded`).
    #[serde(rename = "type")]
    pub kind: String,
    /// The node it concerns.
    pub node_id: String,
    /// The event or alert itself, as JSON.
    pub detail: serde_json::Value,
}

/// What an audit replays.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this node (default: every node).
    pub node_id: Option<String>,
    /// From this time on.
    pub since: Option<DateTime<Utc>>,
    /// Up to this time.
    pub until: Option<DateTime<Utc>>,
    /// Only these event or alert types (`heartbeat`, `node.offline`, ...).
    pub types: Vec<String>,
}

/// A raw message replayed from a stream.
#[derive(Debug)]
struct Replayed {
    at: DateTime<Utc>,
    headers: Option<HeaderMap>,
    payload: bytes::Bytes,
}

/// A connection to the registry and its streams.
#[derive(Debug, Clone)]
pub struct Client {
    nats: async_nats::Client,
    js: jetstream::Context,
    names: Names,
    timeout: Duration,
    /// Last answers by (subject, request), when stale fallback is on.
    stale_cache: Option<Arc<Mutex<StaleCache>>>,
}

/// Last answers by (subject, encoded request).
type StaleCache = HashMap<(String, Vec<u8>), DiscoverReply>;

/// Most answers kept for stale fallback.
const STALE_CACHE_ENTRIES: usize = 1024;

/// A change seen by [`Client::watch_selector`].
#[derive(Debug, Clone, PartialEq)]
pub enum SelectorChange {
    /// A node now matches (new, or changed so that it matches).
    Added(Box<NodeRecord>),
    /// A matching node's record changed and it still matches.
    Changed(Box<NodeRecord>),
    /// A node no longer matches (deleted, or changed so that it does not).
    Removed(String),
}

impl Client {
    /// Connects to NATS at `url` (or several, comma-separated).
    pub async fn connect(url: &str) -> Result<Self, ClientError> {
        Self::connect_with(url, &runtime_support::NatsAuth::default()).await
    }

    /// Connects to NATS at `url` with credentials and TLS settings.
    pub async fn connect_with(
        url: &str,
        auth: &runtime_support::NatsAuth,
    ) -> Result<Self, ClientError> {
        let options = auth
            .apply(async_nats::ConnectOptions::new().name("nodectl"))
            .await
            .map_err(|e| ClientError::Auth(e.to_string()))?;
        let nats = options
            .connect(runtime_support::server_list(url))
            .await
            .map_err(|source| ClientError::Connect {
                url: url.to_owned(),
                source,
            })?;
        Ok(Self::new(nats, Names::default()))
    }

    /// A client over an existing connection, with the given names.
    pub fn new(nats: async_nats::Client, names: Names) -> Self {
        let js = jetstream::new(nats.clone());
        Self {
            nats,
            js,
            names,
            timeout: DEFAULT_TIMEOUT,
            stale_cache: None,
        }
    }

    /// Opt in to graceful degradation: when no registry answers a discover
    /// or list (none listening, or a timeout), answer with the last reply
    /// to the same request, marked `stale: true`, instead of an error.
    pub fn with_stale_fallback(mut self) -> Self {
        self.stale_cache = Some(Arc::new(Mutex::new(HashMap::new())));
        self
    }

    /// Sets how long requests wait for the registry.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The underlying connection.
    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    /// Online nodes matching `request` (or the status it names).
    pub async fn discover(&self, request: &DiscoverRequest) -> Result<DiscoverReply, ClientError> {
        self.query(subjects::REGISTRY_DISCOVER, request).await
    }

    /// One page of nodes of any status matching `request` (or the status it
    /// names); `next_cursor` leads to the next page.
    pub async fn list(&self, request: &DiscoverRequest) -> Result<DiscoverReply, ClientError> {
        self.query(subjects::REGISTRY_LIST, request).await
    }

    /// Every node matching `request`, following the pages (sorted by id).
    pub async fn list_all(
        &self,
        request: &DiscoverRequest,
    ) -> Result<Vec<NodeRecord>, ClientError> {
        let mut request = DiscoverRequest {
            sort: Some("node_id".to_owned()),
            cursor: None,
            ..request.clone()
        };
        let mut nodes = Vec::new();
        loop {
            let page = self.list(&request).await?;
            nodes.extend(page.nodes);
            match page.next_cursor {
                Some(cursor) if page.stale != Some(true) => request.cursor = Some(cursor),
                _ => return Ok(nodes),
            }
        }
    }

    /// Where this client is attached to NATS, as `near: "me"` needs it in
    /// a query's `requester` (its connection's INFO; no round trip); `None`
    /// before it has connected.
    pub fn requester(&self) -> Option<schemas::NatsLink> {
        schemas::nats::link_of(&self.nats.server_info(), None)
    }

    async fn query(
        &self,
        subject: &str,
        request: &DiscoverRequest,
    ) -> Result<DiscoverReply, ClientError> {
        // `near: "me"` is this client's own server.
        let filled;
        let request = if request.near.as_deref() == Some("me") && request.requester.is_none() {
            filled = DiscoverRequest {
                requester: self.requester(),
                ..request.clone()
            };
            &filled
        } else {
            request
        };
        let Some(cache) = &self.stale_cache else {
            return self.request(subject, request).await;
        };
        let key = (subject.to_owned(), prost::Message::encode_to_vec(request));
        match self.request::<_, DiscoverReply>(subject, request).await {
            Ok(reply) => {
                let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= STALE_CACHE_ENTRIES {
                    cache.clear();
                }
                cache.insert(key, reply.clone());
                Ok(reply)
            }
            Err(e @ (ClientError::NoRegistry(_) | ClientError::Timeout(_))) => {
                let cached = cache
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&key)
                    .cloned();
                match cached {
                    Some(reply) => Ok(DiscoverReply {
                        stale: Some(true),
                        ..reply
                    }),
                    None => Err(e),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// One node, or `None` when the registry does not know it.
    pub async fn get(&self, node_id: &str) -> Result<Option<NodeRecord>, ClientError> {
        let request = GetRequest {
            node_id: node_id.to_owned(),
        };
        match self.request(subjects::REGISTRY_GET, &request).await {
            Ok(record) => Ok(Some(record)),
            Err(ClientError::Service(e)) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every registry instance's health: the instances are counted with
    /// `$SRV.PING.registry`, then `registry.health` gathers their answers
    /// (within the client's timeout, or as soon as all have answered).
    pub async fn health(&self) -> Result<Vec<schemas::health::HealthReply>, ClientError> {
        let failed = |what: &str| {
            let what = what.to_owned();
            move |source| ClientError::Nats { what, source }
        };
        let wait = self.timeout.min(Duration::from_secs(2));
        let pings = runtime_support::gather(
            &self.nats,
            format!("$SRV.PING.{}", subjects::SERVICE_NAME),
            bytes::Bytes::new(),
            wait.min(Duration::from_millis(500)),
            usize::MAX,
        )
        .await
        .map_err(failed("pinging the registry instances"))?;
        let expected = if pings.is_empty() {
            usize::MAX
        } else {
            pings.len()
        };
        let answers = runtime_support::gather(
            &self.nats,
            subjects::REGISTRY_HEALTH.to_owned(),
            bytes::Bytes::new(),
            wait,
            expected,
        )
        .await
        .map_err(failed("asking registry.health"))?;
        let mut replies: Vec<schemas::health::HealthReply> = answers
            .iter()
            .filter_map(|m| serde_json::from_slice(&m.payload).ok())
            .collect();
        replies.sort_by(|a, b| a.instance.cmp(&b.instance));
        Ok(replies)
    }

    /// Asks the leader to cordon, uncordon or deregister a node (the admin
    /// role); returns its answer, or its coded refusal as
    /// [`ClientError::Service`].
    pub async fn admin(&self, request: &AdminRequest) -> Result<AdminReply, ClientError> {
        let reply = self
            .request_raw(subjects::REGISTRY_ADMIN, request.encode().into())
            .await?;
        if let Some(error) = service_error(&reply) {
            return Err(ClientError::Service(error));
        }
        serde_json::from_slice(&reply.payload).map_err(|e| {
            ClientError::Service(schemas::error::ServiceError::new(
                schemas::error::ErrorCode::Internal,
                format!("the leader's answer: {e}"),
            ))
        })
    }

    /// Sends a raw JSON request and returns the raw reply: for tools and tests
    /// that check the wire itself.
    pub async fn request_raw(
        &self,
        subject: &str,
        payload: bytes::Bytes,
    ) -> Result<async_nats::Message, ClientError> {
        let span = tracing::info_span!("request", subject);
        let reply = async {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_CONTENT_TYPE, Encoding::Json.content_type());
            // The caller's trace goes on in the registry.
            runtime_support::trace_context::inject(&mut headers);
            tokio::time::timeout(
                self.timeout,
                self.nats
                    .request_with_headers(subject.to_owned(), headers, payload),
            )
            .await
        }
        .instrument(span)
        .await
        .map_err(|_| ClientError::Timeout(subject.to_owned()))?;
        match reply {
            Ok(message) => Ok(message),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                Err(ClientError::NoRegistry(subject.to_owned()))
            }
            Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {
                Err(ClientError::Timeout(subject.to_owned()))
            }
            Err(e) => Err(nats_error(format!("request on {subject}"))(e.into())),
        }
    }

    async fn request<Q, R>(&self, subject: &str, request: &Q) -> Result<R, ClientError>
    where
        Q: prost::Message + Serialize,
        R: prost::Message + serde::de::DeserializeOwned + Default,
    {
        let payload = codec::encode(request, Encoding::Json);
        let reply = self.request_raw(subject, payload.into()).await?;
        if let Some(error) = service_error(&reply) {
            return Err(ClientError::Service(error));
        }
        let encoding = schemas::nats::encoding_of(reply.headers.as_ref())?;
        Ok(codec::decode(&reply.payload, encoding, usize::MAX)?)
    }

    /// Live alerts from `system.broadcast`.
    pub async fn follow_alerts(
        &self,
    ) -> Result<impl Stream<Item = Alert> + Send + 'static, ClientError> {
        let subscription = self
            .nats
            .subscribe(subjects::SYSTEM_BROADCAST)
            .await
            .map_err(|e| nats_error("subscribing to alerts")(e.into()))?;
        Ok(subscription
            .filter_map(|m| async move { serde_json::from_slice::<Alert>(&m.payload).ok() }))
    }

    /// Alerts stored in `ALERTS` from `since` to `until` (or now), oldest first.
    pub async fn alerts(
        &self,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<Alert>, ClientError> {
        let replayed = self
            .replay(
                &self.names.alerts_stream,
                vec![subjects::SYSTEM_BROADCAST.to_owned()],
                since,
                until,
            )
            .await?;
        Ok(replayed
            .into_iter()
            .filter_map(|r| serde_json::from_slice::<Alert>(&r.payload).ok())
            .collect())
    }

    /// A node's (or every node's) events merged with its alerts, oldest first.
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, ClientError> {
        let since = query
            .since
            .unwrap_or_else(|| Utc::now() - chrono::Duration::hours(1));
        let filter = match &query.node_id {
            Some(id) => {
                let id = subjects::NodeId::parse(id).map_err(|e| {
                    ClientError::Service(ServiceError::new(
                        schemas::error::ErrorCode::BadRequest,
                        e.to_string(),
                    ))
                })?;
                subjects::stored_events_filters(Some(&id))
            }
            // Stored as sent, or with a partition token (`--partitions`).
            None => subjects::stored_events_filters(None),
        };
        let mut entries = Vec::new();
        for r in self
            .replay(&self.names.events_stream, filter, since, query.until)
            .await?
        {
            let Ok(encoding) = schemas::nats::encoding_of(r.headers.as_ref()) else {
                continue;
            };
            let Ok(event) = codec::decode::<NodeEvent>(&r.payload, encoding, MAX_EVENT_BYTES)
            else {
                continue;
            };
            entries.push(AuditEntry {
                at: r.at,
                source: AuditSource::Event,
                kind: event.r#type.clone(),
                node_id: event.node_id.clone(),
                detail: serde_json::to_value(&event).unwrap_or_default(),
            });
        }
        // Registrations and deregistrations outlive NODE_EVENTS in the
        // registry's lifecycle stream: its copies fill in what the events
        // stream no longer holds (one entry per event, at its first receipt).
        let lifecycle_filter = match &query.node_id {
            Some(id) => subjects::node_lifecycle(&subjects::NodeId::parse(id).map_err(|e| {
                ClientError::Service(ServiceError::new(
                    schemas::error::ErrorCode::BadRequest,
                    e.to_string(),
                ))
            })?),
            None => subjects::NODE_LIFECYCLE_FILTER.to_owned(),
        };
        // A registry older than the lifecycle stream has none: nothing to add.
        let copies = self
            .replay(
                &self.names.lifecycle_stream,
                vec![lifecycle_filter],
                since,
                query.until,
            )
            .await
            .unwrap_or_default();
        let held: std::collections::HashSet<(String, String, String)> = entries
            .iter()
            .map(|e| {
                (
                    e.node_id.clone(),
                    e.kind.clone(),
                    schemas::time::format(e.at),
                )
            })
            .collect();
        for r in copies {
            let Ok(encoding) = schemas::nats::encoding_of(r.headers.as_ref()) else {
                continue;
            };
            let Ok(event) = codec::decode::<NodeEvent>(&r.payload, encoding, MAX_EVENT_BYTES)
            else {
                continue;
            };
            let at = r
                .headers
                .as_ref()
                .and_then(|h| h.get(subjects::HEADER_RECEIVED))
                .and_then(|v| schemas::time::parse(v.as_str()))
                .unwrap_or(r.at);
            let key = (
                event.node_id.clone(),
                event.r#type.clone(),
                schemas::time::format(at),
            );
            if held.contains(&key) {
                continue;
            }
            entries.push(AuditEntry {
                at,
                source: AuditSource::Event,
                kind: event.r#type.clone(),
                node_id: event.node_id.clone(),
                detail: serde_json::to_value(&event).unwrap_or_default(),
            });
        }
        for r in self
            .replay(
                &self.names.alerts_stream,
                vec![subjects::SYSTEM_BROADCAST.to_owned()],
                since,
                query.until,
            )
            .await?
        {
            let Ok(alert) = serde_json::from_slice::<Alert>(&r.payload) else {
                continue;
            };
            let node_id = alert.node_id.clone().unwrap_or_default();
            if query.node_id.as_ref().is_some_and(|id| *id != node_id) {
                continue;
            }
            entries.push(AuditEntry {
                at: r.at,
                source: AuditSource::Alert,
                kind: alert.r#type.clone(),
                node_id,
                detail: serde_json::to_value(&alert).unwrap_or_default(),
            });
        }
        if !query.types.is_empty() {
            entries.retain(|e| query.types.contains(&e.kind));
        }
        entries.sort_by_key(|e| e.at);
        Ok(entries)
    }

    /// Live changes of the `nodes` bucket, after the current records.
    pub async fn watch(
        &self,
    ) -> Result<impl Stream<Item = Result<WatchChange, ClientError>> + Send + 'static, ClientError>
    {
        let store = self
            .js
            .get_key_value(&self.names.nodes_bucket)
            .await
            .map_err(|e| {
                nats_error(format!("opening bucket {}", self.names.nodes_bucket))(e.into())
            })?;
        let watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| nats_error("watching nodes")(e.into()))?;
        Ok(watch.map(|entry| {
            let entry = entry.map_err(|e| nats_error("watching nodes")(e.into()))?;
            Ok(match entry.operation {
                jetstream::kv::Operation::Put => match serde_json::from_slice(&entry.value) {
                    Ok(record) => WatchChange::Put(Box::new(record)),
                    Err(_) => WatchChange::Unreadable(entry.key),
                },
                _ => WatchChange::Removed(entry.key),
            })
        }))
    }

    /// Nodes entering, changing within and leaving a selector's match set,
    /// from a watch of the `nodes` bucket: first every current match as
    /// `Added`, then live changes.
    pub async fn watch_selector(
        &self,
        selector: &str,
    ) -> Result<impl Stream<Item = Result<SelectorChange, ClientError>> + Send + 'static, ClientError>
    {
        let selector = Selector::parse(selector).map_err(|e| {
            ClientError::Service(ServiceError::new(
                schemas::error::ErrorCode::BadRequest,
                e.to_string(),
            ))
        })?;
        let changes = self.watch().await?;
        let mut matching: HashSet<String> = HashSet::new();
        Ok(changes.filter_map(move |change| {
            let out = match change {
                Err(e) => Some(Err(e)),
                Ok(WatchChange::Put(record)) => {
                    let tags = record
                        .capabilities
                        .as_ref()
                        .map(|c| c.tags.clone())
                        .unwrap_or_default();
                    let now = selector.matches(&record.labels, &tags);
                    let before = matching.contains(&record.node_id);
                    match (before, now) {
                        (false, true) => {
                            matching.insert(record.node_id.clone());
                            Some(Ok(SelectorChange::Added(record)))
                        }
                        (true, true) => Some(Ok(SelectorChange::Changed(record))),
                        (true, false) => {
                            matching.remove(&record.node_id);
                            Some(Ok(SelectorChange::Removed(record.node_id.clone())))
                        }
                        (false, false) => None,
                    }
                }
                Ok(WatchChange::Removed(key) | WatchChange::Unreadable(key)) => matching
                    .remove(&key)
                    .then_some(Ok(SelectorChange::Removed(key))),
            };
            futures::future::ready(out)
        }))
    }

    /// Messages of `stream` on `filter` received from `since` to `until`
    /// (or everything there is now), through a short-lived consumer.
    async fn replay(
        &self,
        stream: &str,
        mut filters: Vec<String>,
        since: DateTime<Utc>,
        until: Option<DateTime<Utc>>,
    ) -> Result<Vec<Replayed>, ClientError> {
        let stream = self
            .js
            .get_stream(stream)
            .await
            .map_err(|e| nats_error(format!("opening stream {stream}"))(e.into()))?;
        let mut consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                deliver_policy: consumer::DeliverPolicy::ByStartTime { start_time: since },
                filter_subject: if filters.len() == 1 {
                    filters.pop().unwrap_or_default()
                } else {
                    String::new()
                },
                filter_subjects: filters,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: Duration::from_secs(30),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_error("creating a replay consumer")(e.into()))?;
        let pending = consumer
            .info()
            .await
            .map_err(|e| nats_error("reading the replay consumer")(e.into()))?
            .num_pending as usize;
        let mut out = Vec::with_capacity(pending.min(100_000));
        let mut seen = 0;
        'fetch: while seen < pending {
            let mut batch = consumer
                .fetch()
                .max_messages(REPLAY_BATCH.min(pending - seen))
                .expires(Duration::from_secs(2))
                .messages()
                .await
                .map_err(|e| nats_error("replaying")(e.into()))?;
            let mut got = 0;
            while let Some(message) = batch.next().await {
                let message = message.map_err(|e| nats_error("replaying")(e))?;
                got += 1;
                seen += 1;
                let Ok(info) = message.info() else { continue };
                let at = info.published;
                if until.is_some_and(|u| at > u) {
                    break 'fetch;
                }
                out.push(Replayed {
                    at,
                    headers: message.message.headers.clone(),
                    payload: message.message.payload.clone(),
                });
            }
            if got == 0 {
                break;
            }
        }
        let name = consumer.cached_info().name.clone();
        // The consumer expires on its own; deleting it now is only tidier.
        let _ = stream.delete_consumer(&name).await;
        Ok(out)
    }
}

/// One change seen by [`Client::watch`].
#[derive(Debug, Clone, PartialEq)]
pub enum WatchChange {
    /// A record was written.
    Put(Box<NodeRecord>),
    /// A record was deleted.
    Removed(String),
    /// A value under this key is not a node record.
    Unreadable(String),
}

/// The coded error carried by a reply, if it is one.
pub fn service_error(reply: &async_nats::Message) -> Option<ServiceError> {
    schemas::nats::error_of(reply.headers.as_ref(), &reply.payload)
}

/// Parses `1h`-style durations (meaning that long ago) or RFC 3339 times.
pub fn parse_time_arg(text: &str) -> Result<DateTime<Utc>, String> {
    if let Some(t) = schemas::time::parse(text) {
        return Ok(t);
    }
    let ago = humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is neither a duration like 1h nor an RFC 3339 time: {e}"))?;
    let ago = chrono::Duration::from_std(ago).map_err(|e| e.to_string())?;
    Ok(Utc::now() - ago)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_args_are_durations_or_times() {
        let t = parse_time_arg("2026-11-22T10:00:00Z").expect("time");
        assert_eq!(schemas::time::format(t), "2026-11-22T10:00:00.000Z");
        let ago = parse_time_arg("1h").expect("duration");
        let delta = Utc::now() - ago;
        assert!(delta >= chrono::Duration::minutes(59) && delta <= chrono::Duration::minutes(61));
        assert!(parse_time_arg("last tuesday").is_err());
    }
}
