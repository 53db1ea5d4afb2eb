//! The registry worker: consumes `NODE_EVENTS`, runs the lifecycle, and
//! executes its decisions (alerts, CAS writes, reannounce requests).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use registry_kv::alerts::AlertPublisher;
use registry_kv::{EncodedRecord, RecordStore, StoreError};
use schemas::admin::{AdminReply, AdminRequest};
use schemas::codec::{self, Encoding, HEADER_CONTENT_TYPE, MAX_EVENT_BYTES};
use schemas::error::{ErrorCode, ServiceError};
use schemas::status::{AdminOp, NodeStatus, TaskType};
use schemas::validate::{validate_event, ValidEvent};
use schemas::{Alert, NodeEvent, TaskRequest};
use subjects::NodeId;
use tokio::sync::watch;
use tracing::{debug, info, info_span, instrument, warn, Instrument};

use crate::index::ReadIndex;
use crate::service::Counters;
use registry_core::lifecycle::{Effects, Fleet, OwnFault, Write};

/// Most events handled as one batch.
const MAX_BATCH: usize = 1000;
/// Most alerts or writes in flight at once.
const MAX_IN_FLIGHT: usize = 256;
/// Most alerts kept for a retry while `ALERTS` cannot be reached.
const MAX_PENDING_ALERTS: usize = 10_000;
/// How long one window of the server-clock estimate lasts.
const CLOCK_WINDOW: Duration = Duration::from_secs(60);
/// Largest connection advisory read (the server's are about 1 KiB).
const MAX_CONNECTION_EVENT_BYTES: usize = 64 * 1024;
/// The reason a server gives for the connections it closes as it stops.
const SERVER_SHUTDOWN: &str = "Server Shutdown";
/// Rounds of writes in a row with failures and no success before the
/// registry holds transitions for its own KV trouble.
const FAILING_WRITE_ROUNDS: u32 = 2;

/// An estimate of the NATS server's clock, from the receive timestamps of the
/// events consumed: the smallest `local now − server receive time` seen over
/// the last one to two windows. Lag only makes the estimate later, never
/// earlier, so an error delays judgement; it never hastens it.
#[derive(Debug)]
pub struct ServerClock {
    current: Option<chrono::Duration>,
    previous: Option<chrono::Duration>,
    window_start: Instant,
}

impl Default for ServerClock {
    fn default() -> Self {
        Self {
            current: None,
            previous: None,
            window_start: Instant::now(),
        }
    }
}

impl ServerClock {
    /// Takes in one event's server receive time.
    pub fn observe(&mut self, received: DateTime<Utc>) {
        if self.window_start.elapsed() >= CLOCK_WINDOW {
            self.previous = self.current.take();
            self.window_start = Instant::now();
        }
        let sample = Utc::now().signed_duration_since(received);
        self.current = Some(self.current.map_or(sample, |c| c.min(sample)));
    }

    /// The server's time now, as well as it is known.
    pub fn now(&self) -> DateTime<Utc> {
        let offset = match (self.current, self.previous) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => chrono::Duration::zero(),
        };
        Utc::now() - offset
    }
}

/// A write, the bytes it stored (for a put), and how it went.
type WriteOutcome = (
    Write,
    Option<EncodedRecord>,
    Result<Option<u64>, StoreError>,
);

/// Why an event was rejected.
#[derive(Debug, thiserror::Error)]
enum Rejection {
    #[error("no JetStream metadata: {0}")]
    Metadata(String),
    #[error("{0}")]
    Subject(#[from] subjects::SubjectError),
    #[error("{0}")]
    Codec(#[from] codec::CodecError),
    #[error("{0}")]
    Invalid(#[from] schemas::validate::ValidationError),
    #[error("forged: {0}")]
    Forged(&'static str),
    #[error("replayed: seq {seq} is not above {last}")]
    Replayed { seq: u64, last: u64 },
    #[error("unsigned, and this node has no key (require_signatures is on)")]
    Unsigned,
}

/// Consumes events and judges liveness; the one writer of `nodes`.
#[derive(Debug)]
pub struct Worker<S> {
    fleet: Fleet,
    store: S,
    client: async_nats::Client,
    alerts: AlertPublisher,
    counters: Arc<Counters>,
    clock: ServerClock,
    /// For probing the event stream (can nodes store events?).
    js: jetstream::Context,
    pending_alerts: VecDeque<Alert>,
    index: Option<ReadIndex>,
    /// Rounds of writes in a row that failed (not conflicts) with none
    /// succeeding, and the failures counted over them.
    failing_rounds: u32,
    failed_writes: u64,
    /// Joined nodes' keys: their events must be signed, with rising seq.
    keys: Option<crate::keys::NodeKeys>,
    /// Whether events of nodes without a key are refused.
    require_signatures: bool,
    /// The highest event seq accepted per signing node.
    last_seq: std::collections::HashMap<NodeId, u64>,
}

impl<S: RecordStore> Worker<S> {
    /// A worker over a restored fleet.
    pub fn new(
        fleet: Fleet,
        store: S,
        client: async_nats::Client,
        js: jetstream::Context,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            fleet,
            store,
            client,
            alerts: AlertPublisher::new(js.clone()),
            js,
            counters,
            clock: ServerClock::default(),
            pending_alerts: VecDeque::new(),
            index: None,
            failing_rounds: 0,
            failed_writes: 0,
            keys: None,
            require_signatures: false,
            last_seq: std::collections::HashMap::new(),
        }
    }

    /// Announces every record this worker writes to `index`, which then
    /// takes the record as it is from the watch (the bytes shared with the
    /// fleet) instead of decoding it again.
    pub fn with_index(mut self, index: ReadIndex) -> Self {
        self.index = Some(index);
        self
    }

    /// Checks events against the nodes' keys: a node with a key must sign
    /// its events, with a seq above the last one accepted; with
    /// `require_signatures`, a node without a key is refused.
    pub fn with_keys(mut self, keys: crate::keys::NodeKeys, require_signatures: bool) -> Self {
        self.keys = Some(keys);
        self.require_signatures = require_signatures;
        self
    }

    /// Whether an event comes from its node (signature) and is new (seq).
    /// `Ok(false)`: a redelivery of one already taken; skip it quietly.
    fn authenticate(
        &mut self,
        message: &jetstream::Message,
        event: &ValidEvent,
        delivered: i64,
    ) -> Result<bool, Rejection> {
        let Some(keys) = &self.keys else {
            return Ok(true);
        };
        let id = &event.node_id;
        let Some(public) = keys.get(id.as_str()) else {
            return if self.require_signatures {
                Err(Rejection::Unsigned)
            } else {
                Ok(true)
            };
        };
        let signature = message
            .headers
            .as_ref()
            .and_then(|h| h.get(fleet_auth::SIGNATURE_HEADER))
            .map(|v| v.as_str().to_owned())
            .ok_or(Rejection::Forged("no signature"))?;
        if !public.verify(&message.payload, &signature) {
            return Err(Rejection::Forged("the signature is not the node's"));
        }
        let seq = event.event.seq.ok_or(Rejection::Forged("no seq"))?;
        let fleet = &self.fleet;
        let last = self
            .last_seq
            .entry(id.clone())
            .or_insert_with(|| fleet.get(id).and_then(|n| n.record().seq).unwrap_or(0));
        if seq <= *last {
            if delivered > 1 {
                return Ok(false);
            }
            return Err(Rejection::Replayed { seq, last: *last });
        }
        *last = seq;
        Ok(true)
    }

    /// Runs until `shutdown` flips to true or `leading` changes (the lease
    /// lost, or lost and taken again: a new term starts from the bucket). Sweeps
    /// only while connected and caught up with the stream (DESIGN
    /// principle 4).
    pub async fn run(
        mut self,
        mut consumer: PullConsumer,
        sweep_interval: Duration,
        mut connected: watch::Receiver<bool>,
        mut leading: watch::Receiver<bool>,
        mut shutdown: watch::Receiver<bool>,
        mut bucket_lost: watch::Receiver<u32>,
    ) {
        // This term is for the leadership as it is now: any later change
        // of it ends the term.
        if !*leading.borrow_and_update() {
            return;
        }
        let mut tick = tokio::time::interval(sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut caught_up = false;
        let mut was_connected = *connected.borrow();
        let mut messages = None;
        let mut links = self.connection_events().await;
        let mut elections = match self
            .client
            .subscribe(subjects::STREAM_LEADER_ELECTED_ADVISORIES)
            .await
        {
            Ok(elections) => Some(elections),
            Err(e) => {
                warn!(error = %e, "not following stream leader elections");
                None
            }
        };
        let events_stream = consumer.cached_info().stream_name.clone();
        // Admin requests are the leader's: only it changes records.
        let mut admin = match self
            .client
            .queue_subscribe(
                subjects::REGISTRY_ADMIN,
                subjects::SERVICE_QUEUE_GROUP.into(),
            )
            .await
        {
            Ok(admin) => Some(admin),
            Err(e) => {
                warn!(error = %e, "not serving admin requests");
                None
            }
        };
        loop {
            if messages.is_none() {
                // Short pulls with idle heartbeats: a pull lost with a server
                // restart is noticed in seconds, not after the 30 s default.
                let stream = consumer
                    .stream()
                    .max_messages_per_batch(1000)
                    .expires(Duration::from_secs(5))
                    .heartbeat(Duration::from_secs(2))
                    .messages()
                    .await;
                match stream {
                    Ok(stream) => messages = Some(stream),
                    Err(e) => warn!(error = %e, "opening the event consumer; retrying"),
                }
            }
            tokio::select! {
                _ = shutdown.wait_for(|s| *s) => break,
                _ = leading.changed() => {
                    warn!(leading = *leading.borrow(), "leadership changed: this term ends (no more consuming or writing in it)");
                    break;
                }
                next = async {
                    match messages.as_mut() {
                        Some(stream) => stream.next().await,
                        None => {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            None
                        }
                    }
                } => match next {
                    Some(Ok(message)) => {
                        // Take what else is ready now, up to a batch: its
                        // writes go out together, one per node.
                        let mut batch = vec![message];
                        while batch.len() < MAX_BATCH {
                            let Some(stream) = messages.as_mut() else { break };
                            match stream.next().now_or_never() {
                                Some(Some(Ok(more))) => batch.push(more),
                                Some(Some(Err(e))) => debug!(error = %e, "event consumer hiccup"),
                                Some(None) => {
                                    messages = None;
                                    break;
                                }
                                None => break,
                            }
                        }
                        caught_up = self.on_batch(batch).await;
                    }
                    Some(Err(e)) => debug!(error = %e, "event consumer hiccup"),
                    None => messages = None,
                },
                Some(message) = async {
                    match links.as_mut() {
                        Some(links) => links.next().await,
                        None => std::future::pending().await,
                    }
                } => self.on_connection_event(&message),
                Some(message) = async {
                    match admin.as_mut() {
                        Some(admin) => admin.next().await,
                        None => std::future::pending().await,
                    }
                } => self.on_admin(message).instrument(info_span!("admin")).await,
                Some(message) = async {
                    match elections.as_mut() {
                        Some(elections) => elections.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if message.subject.as_str().rsplit('.').next() == Some(events_stream.as_str()) {
                        // While the event stream had no leader, nodes could
                        // not store heartbeats: their silence was NATS's.
                        info!(stream = %events_stream, "the event stream elected a new leader; granting every node a fresh grace window");
                        self.fleet.grant_grace(self.clock.now());
                    }
                }
                Ok(()) = bucket_lost.changed() => {
                    bucket_lost.borrow_and_update();
                    warn!(nodes = self.fleet.len(), "nodes bucket lost: writing every record again");
                    self.fleet.rewrite_all();
                }
                Ok(()) = connected.changed() => {
                    let is_connected = *connected.borrow_and_update();
                    if !is_connected && was_connected {
                        // Nothing can be heard now: hold every transition.
                        // The alert goes out once the link is back.
                        warn!("lost the NATS link; holding transitions");
                        let effects = self.fleet.fault(OwnFault::NatsLink, self.clock.now(), 0);
                        self.pending_alerts.extend(effects.alerts);
                    }
                    if is_connected && !was_connected {
                        // Whatever happened while we were away is not the
                        // nodes' fault: judge again after a fresh window.
                        // The pull in flight died with the old connection.
                        info!("reconnected to NATS; granting every node a fresh grace window");
                        self.retry_alerts().await;
                        let effects = self.fleet.fault_cleared(OwnFault::NatsLink, self.clock.now());
                        self.execute(effects).await;
                        caught_up = false;
                        messages = None;
                    }
                    was_connected = is_connected;
                }
                _ = tick.tick() => {
                    // A term that ended while this task was busy judges
                    // nothing more (the select may pick the tick first).
                    if leading.has_changed().unwrap_or(true) {
                        warn!("leadership changed: this term ends (no more consuming or writing in it)");
                        break;
                    }
                    if !was_connected {
                        continue;
                    }
                    // A stream without a leader (or JetStream down) takes no
                    // heartbeats: the silence is NATS's, so judge nothing,
                    // and grant a fresh window once it answers again.
                    if self.probe_event_stream(&events_stream).await {
                        if self.fleet.faults().any(|f| f == OwnFault::EventStream) {
                            info!(stream = %events_stream, "the event stream answers again");
                            self.retry_alerts().await;
                            let effects = self.fleet.fault_cleared(OwnFault::EventStream, self.clock.now());
                            self.execute(effects).await;
                            caught_up = false;
                        }
                    } else {
                        if !self.fleet.faults().any(|f| f == OwnFault::EventStream) {
                            warn!(stream = %events_stream, "the event stream does not answer; holding transitions");
                            let effects = self.fleet.fault(OwnFault::EventStream, self.clock.now(), 0);
                            self.pending_alerts.extend(effects.alerts);
                        }
                        caught_up = false;
                        continue;
                    }
                    if !caught_up {
                        caught_up = match consumer.info().await {
                            Ok(info) => info.num_pending == 0,
                            Err(e) => {
                                debug!(error = %e, "reading consumer info");
                                false
                            }
                        };
                    }
                    self.retry_alerts().await;
                    if caught_up {
                        let effects = self.fleet.sweep(self.clock.now());
                        if !effects.is_empty() {
                            self.execute(effects).instrument(info_span!("sweep")).await;
                        }
                    }
                }
            }
        }
        info!(nodes = self.fleet.len(), "worker stopped");
    }

    /// Whether the event stream answers its info request in time (it has a
    /// leader: nodes can store events).
    async fn probe_event_stream(&self, stream: &str) -> bool {
        match tokio::time::timeout(STREAM_PROBE_TIMEOUT, self.js.get_stream(stream)).await {
            // A replicated stream may answer from its assignment while it
            // has no leader: that one stores nothing either.
            Ok(Ok(handle)) => handle
                .cached_info()
                .cluster
                .as_ref()
                .is_none_or(|c| c.leader.is_some()),
            Ok(Err(e)) => {
                debug!(stream, error = %e, "event stream probe");
                false
            }
            Err(_) => {
                debug!(stream, "event stream probe timed out");
                false
            }
        }
    }

    /// Subscribes to the server's connection advisories (when configured
    /// and exported to this account; without them silence alone is judged).
    async fn connection_events(
        &self,
    ) -> Option<futures::stream::SelectAll<async_nats::Subscriber>> {
        if self.fleet.settings().disconnect_grace.is_zero() {
            return None;
        }
        let mut all = futures::stream::SelectAll::new();
        for subject in [
            subjects::ACCOUNT_CONNECT_EVENTS,
            subjects::ACCOUNT_DISCONNECT_EVENTS,
        ] {
            match self.client.subscribe(subject).await {
                Ok(subscriber) => all.push(subscriber),
                Err(e) => {
                    warn!(subject, error = %e, "no connection events; judging silence alone");
                    return None;
                }
            }
        }
        Some(all)
    }

    /// Takes in one connection advisory about a known node.
    fn on_connection_event(&mut self, message: &async_nats::Message) {
        let event = match ConnectionEvent::decode(&message.payload) {
            Ok(event) => event,
            Err(e) => {
                Counters::bump(&self.counters.connection_events_rejected);
                warn!(subject = %message.subject, error = %e, "connection event dropped");
                return;
            }
        };
        // Connections of other programs (the registry itself, nodectl) and
        // of unknown nodes are none of our business.
        let Ok(id) = NodeId::parse(&event.name) else {
            return;
        };
        if self.fleet.get(&id).is_none() {
            return;
        }
        Counters::bump(&self.counters.connection_events);
        match event.closed {
            None => {
                debug!(node_id = %id, "connection opened");
                self.fleet.connection_opened(&id, event.opened);
            }
            // The server going away is not the node going away: it will
            // reconnect to another (or the same, restarted) server.
            Some(_) if event.reason == SERVER_SHUTDOWN => {
                debug!(node_id = %id, "connection closed by a server shutdown");
            }
            Some(closed) => {
                if self.fleet.connection_closed(&id, event.opened, closed) {
                    info!(node_id = %id, reason = %event.reason, "connection closed; degraded unless it is heard from within the grace");
                }
            }
        }
    }

    /// Applies one admin request (cordon, uncordon, deregister) and answers.
    async fn on_admin(&mut self, message: async_nats::Message) {
        let Some(reply) = message.reply.clone() else {
            return;
        };
        let result = match AdminRequest::decode(&message.payload) {
            Err(e) => Err(ServiceError::new(ErrorCode::BadRequest, e.to_string())),
            Ok(request) => {
                let now = self.clock.now();
                // One id per request: a retried request is a new decision.
                let cause = format!("admin/{}", uuid::Uuid::new_v4());
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
                match applied {
                    None => Err(ServiceError::new(
                        ErrorCode::NotFound,
                        format!("no node {}", request.node_id),
                    )),
                    Some(effects) => {
                        let done = self.execute(effects).await;
                        let status = self
                            .fleet
                            .get(&request.node_id)
                            .map(|n| n.status.to_string());
                        info!(op = ?request.op, node_id = %request.node_id, ?status, "admin request applied");
                        // Like a kubelet after `kubectl delete node`: a
                        // running agent registers again.
                        let note = (request.op == AdminOp::Deregister
                            && was == Some(NodeStatus::Online))
                        .then(|| {
                            format!(
                                "{} was online when removed: its agent registers again at its next heartbeat unless it is stopped or its credentials are revoked (nodectl auth revoke {})",
                                request.node_id, request.node_id
                            )
                        });
                        let answer = AdminReply {
                            ok: true,
                            node_id: request.node_id.to_string(),
                            status,
                            stored: done,
                            note,
                        };
                        serde_json::to_vec(&answer)
                            .map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))
                    }
                }
            }
        };
        let (headers, body) = schemas::nats::reply_parts(result, Encoding::Json);
        if let Err(e) = self.client.publish_with_headers(reply, headers, body).await {
            warn!(error = %e, "answering an admin request");
        }
    }

    /// Handles a batch of deliveries in stream order; returns whether the
    /// consumer is caught up. Events are acked once the effects of the whole
    /// batch are durable.
    async fn on_batch(&mut self, batch: Vec<jetstream::Message>) -> bool {
        let mut effects = Effects::default();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut caught_up = false;
        for message in batch {
            let meta = message
                .info()
                .map(|i| (i.stream_sequence, i.pending, i.published, i.delivered))
                .map_err(|e| Rejection::Metadata(e.to_string()));
            let (seq, pending, received, delivered) = match meta {
                Ok(meta) => meta,
                Err(reason) => {
                    self.reject(&message, &reason).await;
                    continue;
                }
            };
            caught_up = pending == 0;
            self.clock.observe(received);
            let decoded = decode(&message).and_then(|event| {
                Ok(self
                    .authenticate(&message, &event, delivered)?
                    .then_some(event))
            });
            match decoded {
                Err(reason) => self.reject(&message, &reason).await,
                Ok(None) => accepted.push(message),
                Ok(Some(event)) => {
                    debug!(seq, node_id = %event.node_id, kind = %event.kind, "event");
                    Counters::bump(&self.counters.events_applied);
                    let applied = self.fleet.apply(&event, received, seq);
                    effects.alerts.extend(applied.alerts);
                    effects.writes.extend(applied.writes);
                    effects.reannounce.extend(applied.reannounce);
                    accepted.push(message);
                }
            }
        }
        let span = info_span!("events", count = accepted.len());
        let ack = if self.execute(effects).instrument(span).await {
            AckKind::Ack
        } else {
            // The fleet retries the failed parts; redelivery covers a crash
            // before it does.
            AckKind::Nak(Some(Duration::from_secs(1)))
        };
        for message in &accepted {
            if let Err(e) = message.ack_with(ack).await {
                warn!(error = %e, "acking an event");
            }
        }
        caught_up
    }

    async fn reject(&self, message: &jetstream::Message, reason: &Rejection) {
        Counters::bump(&self.counters.events_rejected);
        match reason {
            Rejection::Forged(_) | Rejection::Unsigned => {
                Counters::bump(&self.counters.events_forged);
            }
            Rejection::Replayed { .. } => Counters::bump(&self.counters.events_replayed),
            _ => {}
        }
        warn!(subject = %message.subject, size = message.payload.len(), %reason, "event rejected");
        // Terminate: a bad message is never redelivered.
        if let Err(e) = message.ack_with(AckKind::Term).await {
            warn!(error = %e, "terminating a rejected event");
        }
    }

    /// Executes effects in order: alerts (all stored before any write, so a
    /// crash never loses one), writes (one per node: the last decision wins;
    /// different nodes in flight together), reannounces. Returns whether
    /// everything succeeded; what failed is retried later.
    async fn execute(&mut self, effects: Effects) -> bool {
        let mut ok = true;
        let stored = self.alerts.publish_all(&effects.alerts).await;
        let published: Vec<(Alert, bool)> = effects
            .alerts
            .into_iter()
            .zip(stored)
            .map(|(alert, result)| {
                if let Err(e) = &result {
                    warn!(error = %e, "alert not stored; will retry");
                }
                (alert, result.is_ok())
            })
            .collect();
        for (alert, stored) in published {
            ok &= self.record_alert(alert, stored);
        }
        // One write per node: a later decision carries the whole record.
        let mut latest: Vec<Write> = Vec::new();
        let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for write in effects.writes {
            match index.get(write.node_id()) {
                Some(&i) => latest[i] = write,
                None => {
                    index.insert(write.node_id().to_owned(), latest.len());
                    latest.push(write);
                }
            }
        }
        // A node created and deregistered within the batch has no record to write.
        latest.retain(|w| match w {
            Write::Put { record, .. } => NodeId::parse(&record.node_id)
                .ok()
                .is_some_and(|id| self.fleet.get(&id).is_some()),
            Write::Delete { .. } => true,
        });
        let store = &self.store;
        let index = self.index.as_ref();
        let results: Vec<WriteOutcome> = futures::stream::iter(latest)
            .map(|write| async move {
                let (encoded, result) = match &write {
                    Write::Put { record, revision } => {
                        let encoded = EncodedRecord::of(record);
                        if let Some(index) = index {
                            index.expect_write(record.clone(), encoded.value.clone());
                        }
                        let result = match revision {
                            None => store.create(&encoded).await,
                            Some(rev) => store.update(&encoded, *rev).await,
                        };
                        (Some(encoded), result.map(Some))
                    }
                    Write::Delete { node_id, revision } => (
                        None,
                        store
                            .delete(node_id.as_str(), *revision)
                            .await
                            .map(|()| None),
                    ),
                };
                (write, encoded, result)
            })
            .buffer_unordered(MAX_IN_FLIGHT)
            .collect()
            .await;
        let (mut failed, mut succeeded) = (0u64, 0u64);
        for (write, encoded, result) in results {
            match &result {
                Ok(_) => succeeded += 1,
                Err(StoreError::Conflict { .. }) => {}
                Err(_) => failed += 1,
            }
            ok &= self.record_write(write, encoded, result).await;
        }
        self.note_write_health(failed, succeeded).await;
        for id in effects.reannounce {
            self.reannounce(&id).await;
        }
        ok
    }

    /// Holds transitions while record writes keep failing (KV trouble is the
    /// registry's, not the nodes'), and resumes when they succeed again.
    async fn note_write_health(&mut self, failed: u64, succeeded: u64) {
        let now = self.clock.now();
        let effects = if succeeded > 0 && failed == 0 {
            self.failing_rounds = 0;
            self.failed_writes = 0;
            self.fleet.fault_cleared(OwnFault::KvWrites, now)
        } else if failed > 0 && succeeded == 0 {
            self.failing_rounds += 1;
            self.failed_writes += failed;
            if self.failing_rounds < FAILING_WRITE_ROUNDS {
                return;
            }
            self.fleet
                .fault(OwnFault::KvWrites, now, self.failed_writes)
        } else {
            return;
        };
        if effects.alerts.is_empty() {
            return;
        }
        let stored = self.alerts.publish_all(&effects.alerts).await;
        for (alert, result) in effects.alerts.into_iter().zip(stored) {
            self.record_alert(alert, result.is_ok());
        }
    }

    /// Counts a stored alert, or keeps it for a retry.
    fn record_alert(&mut self, alert: Alert, stored: bool) -> bool {
        if stored {
            Counters::bump(&self.counters.alerts_published);
            info!(
                alert = %alert.r#type,
                node_id = alert.node_id.as_deref().unwrap_or(""),
                message = alert.message.as_deref().unwrap_or(""),
                "alert"
            );
            return true;
        }
        if self.pending_alerts.len() >= MAX_PENDING_ALERTS {
            warn!("alert retry queue full; dropping the oldest");
            self.pending_alerts.pop_front();
        }
        self.pending_alerts.push_back(alert);
        false
    }

    async fn retry_alerts(&mut self) {
        while let Some(alert) = self.pending_alerts.pop_front() {
            // Same id, so a duplicate of one that did get through is dropped.
            if self.alerts.publish(&alert).await.is_err() {
                self.pending_alerts.push_front(alert);
                return;
            }
            Counters::bump(&self.counters.alerts_published);
        }
    }

    /// Takes in the outcome of one write: the new revision, or a conflict
    /// (re-read, re-decide on the next sweep), or a failure (retried).
    #[instrument(skip_all, fields(node_id = write.node_id()))]
    async fn record_write(
        &mut self,
        write: Write,
        encoded: Option<EncodedRecord>,
        result: Result<Option<u64>, StoreError>,
    ) -> bool {
        let id = NodeId::parse(write.node_id()).ok();
        if let (Err(_), Some(index)) = (&result, &self.index) {
            index.forget_write(write.node_id());
        }
        match (result, id) {
            (Ok(revision), Some(id)) => {
                Counters::bump(&self.counters.kv_writes);
                if let (Some(revision), Some(encoded)) = (revision, encoded) {
                    self.fleet.confirm_write(&id, revision, encoded.value);
                }
                true
            }
            (Ok(_), None) => true,
            (Err(StoreError::Conflict { key }), id) => {
                Counters::bump(&self.counters.kv_write_failures);
                // Someone else wrote this key. Re-read its revision; the
                // fleet, which has seen every event, re-decides and writes
                // on the next sweep.
                let current = match self.store.get(&key).await {
                    Ok(found) => Some(found.map(|v| v.revision)),
                    Err(e) => {
                        warn!(error = %e, "re-reading after a conflict");
                        None
                    }
                };
                warn!(key, "revision conflict on a node record; re-deciding");
                if let (Some(id), Write::Put { .. }) = (id, &write) {
                    self.fleet.write_failed(&id, current);
                }
                false
            }
            (Err(e), id) => {
                Counters::bump(&self.counters.kv_write_failures);
                warn!(error = %e, "record write failed; will retry");
                if let (Some(id), Write::Put { .. }) = (id, &write) {
                    self.fleet.write_failed(&id, None);
                }
                false
            }
        }
    }

    async fn reannounce(&self, id: &NodeId) {
        let task = TaskRequest {
            r#type: TaskType::Reannounce.to_string(),
        };
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_CONTENT_TYPE, Encoding::Json.content_type());
        let payload = codec::encode(&task, Encoding::Json);
        match self
            .client
            .publish_with_headers(subjects::node_tasks(id), headers, payload.into())
            .await
        {
            Ok(()) => {
                Counters::bump(&self.counters.reannounces_sent);
                info!(node_id = %id, "heartbeat from an unknown node; asked it to reannounce");
            }
            Err(e) => warn!(node_id = %id, error = %e, "sending reannounce"),
        }
    }
}

/// Reads a connection advisory as the worker does: the connection's name,
/// or why it would be dropped (for the fuzz targets).
pub fn read_connection_advisory(payload: &[u8]) -> Result<String, String> {
    ConnectionEvent::decode(payload)
        .map(|event| event.name)
        .map_err(|e| e.to_string())
}

/// Reads an admin request as the worker does: the node it names, or why
/// it would be refused (for the fuzz targets).
pub fn read_admin_request(payload: &[u8]) -> Result<String, String> {
    AdminRequest::decode(payload)
        .map(|request| request.node_id.to_string())
        .map_err(|e| e.to_string())
}

/// How long the event stream may take to answer the probe of each sweep.
const STREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A server advisory of a client connection opening or closing: the fields
/// the registry uses.
#[derive(Debug, PartialEq)]
struct ConnectionEvent {
    /// The connection's name (an agent's is its node id).
    name: String,
    opened: DateTime<Utc>,
    /// When it closed (a disconnect advisory).
    closed: Option<DateTime<Utc>>,
    reason: String,
}

/// Why a connection advisory was dropped.
#[derive(Debug, thiserror::Error)]
enum ConnectionEventError {
    #[error("{0} bytes, more than {MAX_CONNECTION_EVENT_BYTES}")]
    TooLarge(usize),
    #[error("not a connection advisory: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown advisory type {0:?}")]
    Type(String),
    #[error("bad time {0:?}")]
    Time(String),
}

impl ConnectionEvent {
    const CONNECT: &'static str = "io.nats.server.advisory.v1.client_connect";
    const DISCONNECT: &'static str = "io.nats.server.advisory.v1.client_disconnect";

    fn decode(payload: &[u8]) -> Result<Self, ConnectionEventError> {
        #[derive(serde::Deserialize)]
        struct Advisory {
            r#type: String,
            client: Client,
            #[serde(default)]
            reason: String,
        }
        #[derive(serde::Deserialize)]
        struct Client {
            #[serde(default)]
            name: String,
            start: String,
            #[serde(default)]
            stop: Option<String>,
        }
        if payload.len() > MAX_CONNECTION_EVENT_BYTES {
            return Err(ConnectionEventError::TooLarge(payload.len()));
        }
        // Server advisories gain fields over versions: unknown ones are
        // ignored here (unlike requests, these are not typed by people).
        let advisory: Advisory = serde_json::from_slice(payload)?;
        let time = |s: &str| {
            schemas::time::parse(s).ok_or_else(|| ConnectionEventError::Time(s.to_owned()))
        };
        let opened = time(&advisory.client.start)?;
        let closed = match advisory.r#type.as_str() {
            Self::CONNECT => None,
            Self::DISCONNECT => Some(match &advisory.client.stop {
                Some(stop) => time(stop)?,
                None => opened,
            }),
            other => return Err(ConnectionEventError::Type(other.to_owned())),
        };
        Ok(Self {
            name: advisory.client.name,
            opened,
            closed,
            reason: advisory.reason,
        })
    }
}

/// Decodes and validates one delivery: subject id, encoding, size, fields,
/// and the payload id against the subject id.
fn decode(message: &jetstream::Message) -> Result<ValidEvent, Rejection> {
    let subject_id = subjects::parse_node_events(&message.subject)?;
    let encoding = schemas::nats::encoding_of(message.headers.as_ref())?;
    let event: NodeEvent = codec::decode(&message.payload, encoding, MAX_EVENT_BYTES)?;
    Ok(validate_event(event, &subject_id)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As nats-server 2.15 sends them (shortened server block).
    const DISCONNECT: &str = r#"{"type":"io.nats.server.advisory.v1.client_disconnect","id":"7dpw","timestamp":"2026-11-22T09:57:23.17518402Z","server":{"name":"N","ver":"2.15.1","seq":17},"client":{"start":"2026-11-22T09:57:22.673891295Z","host":"127.0.0.1","id":7,"acc":"FLEET","user":"fleet","name":"node-abc","rtt":327000,"stop":"2026-11-22T09:57:23.17518402Z","kind":"Client","client_type":"nats"},"sent":{"msgs":0,"bytes":0},"received":{"msgs":0,"bytes":0},"reason":"Client Closed"}"#;

    #[test]
    fn connection_advisories_are_read_and_bad_ones_rejected() {
        let event = ConnectionEvent::decode(DISCONNECT.as_bytes()).expect("a disconnect");
        assert_eq!(event.name, "node-abc");
        assert_eq!(event.reason, "Client Closed");
        let closed = event.closed.expect("closed");
        assert_eq!((closed - event.opened).num_milliseconds(), 501);
        let connect = DISCONNECT.replace("client_disconnect", "client_connect");
        assert!(ConnectionEvent::decode(connect.as_bytes())
            .expect("a connect")
            .closed
            .is_none());
        for bad in [
            "",
            "{}",
            "[1]",
            &DISCONNECT.replace("client_disconnect", "account_connections"),
            &DISCONNECT.replace("2026-11-22T09:57:22.673891295Z", "yesterday"),
        ] {
            assert!(ConnectionEvent::decode(bad.as_bytes()).is_err(), "{bad}");
        }
        let huge = vec![b' '; MAX_CONNECTION_EVENT_BYTES + 1];
        assert!(matches!(
            ConnectionEvent::decode(&huge),
            Err(ConnectionEventError::TooLarge(_))
        ));
    }

    #[test]
    fn server_clock_follows_the_smallest_delay() {
        let mut clock = ServerClock::default();
        let skew = chrono::Duration::seconds(30);
        // The server runs 30 s ahead; events arrive with 0 to 2 s of delay.
        for delay in [2, 1, 0, 2] {
            clock.observe(Utc::now() + skew - chrono::Duration::seconds(delay));
        }
        let error = (clock.now() - (Utc::now() + skew)).num_milliseconds().abs();
        assert!(error < 500, "estimate off by {error} ms");
        // Lag (a backlog) never moves the estimate later than it was.
        clock.observe(Utc::now() + skew - chrono::Duration::seconds(120));
        let error = (clock.now() - (Utc::now() + skew)).num_milliseconds().abs();
        assert!(
            error < 500,
            "estimate off by {error} ms after lagging events"
        );
    }
}
