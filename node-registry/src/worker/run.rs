//! One leadership term over NATS: the select loop that feeds the worker
//! events, connection advisories, admin requests and stream leader
//! elections, and sweeps on a tick while connected and caught up (DESIGN
//! principle 4).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use futures::{FutureExt, StreamExt};
use registry_core::lifecycle::OwnFault;
use registry_kv::alerts::AlertSink;
use registry_kv::RecordStore;
use runtime_support::CancellationToken;
use schemas::admin::AdminRequest;
use schemas::codec::Encoding;
use schemas::error::{ErrorCode, ServiceError};
use tokio::sync::watch;
use tracing::{debug, info, info_span, warn, Instrument};

use super::caught_up::CaughtUp;
use super::{position, Delivery, DeliveryMeta, Verdict, Worker};
use crate::tasks::TaskSender;

/// Most events handled as one batch.
const MAX_BATCH: usize = 1000;
/// A batch smaller than this waits [`COALESCE`] once for more events: at
/// a steady trickle (3 300 events/s at 100 000 nodes) that is one wakeup
/// and one ack per batch of dozens instead of per event or two.
const COALESCE_BELOW: usize = 64;
/// How long a small batch waits for more events; what it adds to an
/// event's handling is nothing to judging by deadlines of seconds.
const COALESCE: Duration = Duration::from_millis(20);
/// How long a batch taken from a backlog of a batch or more waits to fill:
/// fewer, larger rounds of writes and acks work a backlog off faster (a
/// registration storm: batches of about 130 events without it, the loop
/// idle half the time between them).
const FILL_WAIT: Duration = Duration::from_millis(10);
/// How long the event stream may take to answer the probe of each sweep.
const STREAM_PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a retried event waits before it is delivered again.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// How often a caught-up leader still reads its consumer's backlog (for
/// health and metrics).
const BACKLOG_EVERY: Duration = Duration::from_secs(5);

/// Why transitions are held, for health: none when they are not.
fn held_transitions(fleet: &registry_core::lifecycle::Fleet) -> Option<serde_json::Value> {
    let regions = fleet.silent_regions();
    if !fleet.in_self_preservation() && regions.is_empty() {
        return None;
    }
    let mut reasons: Vec<&str> = fleet.faults().map(OwnFault::reason).collect();
    if fleet.mass_silence() {
        reasons.push("mass_silence");
    }
    let scope = if fleet.in_self_preservation() {
        "fleet"
    } else {
        "regions"
    };
    Some(serde_json::json!({"scope": scope, "reasons": reasons, "regions": regions}))
}

/// How long the leader of another partition has to answer a handed-on
/// admin request (the operator's own timeout is longer).
const HAND_ON_TIMEOUT: Duration = Duration::from_secs(4);

/// Hands an operator's request to the leader of partition `owner` and
/// relays its answer (or a coded error when it has no leader now).
async fn hand_on(
    client: async_nats::Client,
    owner: super::Partition,
    payload: bytes::Bytes,
    reply: async_nats::Subject,
) {
    let subject = subjects::registry_admin_partition(owner.index);
    let answer = tokio::time::timeout(HAND_ON_TIMEOUT, client.request(subject, payload)).await;
    let (headers, body) = match answer {
        Ok(Ok(answer)) => (answer.headers.unwrap_or_default(), answer.payload),
        failed => {
            let why = match failed {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer in time".to_owned(),
            };
            warn!(partition = owner.index, error = %why, "handing an admin request on");
            schemas::nats::reply_parts(
                Err(ServiceError::new(
                    ErrorCode::NotReady,
                    format!(
                        "partition {} of {} has no leader answering now ({why}); retry",
                        owner.index, owner.count
                    ),
                )),
                Encoding::Json,
            )
        }
    };
    if let Err(e) = client.publish_with_headers(reply, headers, body).await {
        warn!(error = %e, "relaying a handed-on admin answer");
    }
}

/// What one term runs against.
#[derive(Debug)]
pub struct Term {
    /// The durable consumer of `NODE_EVENTS`.
    pub consumer: PullConsumer,
    /// The connection (subscriptions, replies).
    pub client: async_nats::Client,
    /// For probing the event stream (can nodes store events?).
    pub js: jetstream::Context,
    /// How often silence is judged.
    pub sweep_interval: Duration,
    /// Whether the connection to NATS is up.
    pub connected: watch::Receiver<crate::link::Link>,
    /// Whether this instance leads; any change ends the term.
    pub leading: watch::Receiver<bool>,
    /// The registry is stopping.
    pub cancel: CancellationToken,
    /// Counts losses of the `nodes` bucket (every record is written again).
    pub bucket_lost: watch::Receiver<u32>,
    /// Where the backlog and self-preservation are told (health, metrics).
    pub state: Arc<crate::state::RegistryState>,
    /// The event stream's history: the minimum, the budget, the cap.
    pub history: super::HistorySettings,
}

impl Delivery<'_> {
    /// A delivery borrowed from a JetStream message.
    fn of(message: &jetstream::Message) -> Delivery<'_> {
        Delivery {
            subject: message.subject.as_str(),
            headers: message.headers.as_ref(),
            payload: &message.payload,
            meta: message
                .info()
                .map(|i| DeliveryMeta {
                    stream_seq: i.stream_sequence,
                    pending: i.pending,
                    received: i.published,
                    delivered: i.delivered,
                })
                .map_err(|e| e.to_string()),
        }
    }
}

impl<S: RecordStore, A: AlertSink, T: TaskSender> Worker<S, A, T> {
    /// Runs until `term.cancel` or a change of `term.leading` (the lease
    /// lost, or lost and taken again: a new term starts from the bucket).
    pub async fn run(mut self, term: Term) {
        let Term {
            mut consumer,
            client,
            js,
            sweep_interval,
            mut connected,
            mut leading,
            cancel,
            mut bucket_lost,
            state,
            history,
        } = term;
        // This term is for the leadership as it is now: any later change
        // of it ends the term.
        if !*leading.borrow_and_update() {
            return;
        }
        let mut tick = tokio::time::interval(sweep_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut caught_up = CaughtUp::new(std::time::Instant::now());
        // The server time the last sweep judged at.
        let mut swept_to: Option<chrono::DateTime<chrono::Utc>> = None;
        let mut backlog_seen = std::time::Instant::now() - BACKLOG_EVERY;
        let mut was_connected = connected.borrow().up;
        let mut drops_seen = connected.borrow().drops;
        let mut messages = None;
        let mut links = self.connection_events(&client).await;
        let mut elections = match client
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
        // The stream is one for all partitions: partition 0's leader sizes
        // it and warns about its history, on a task of its own that ends
        // with the term (the JoinSet aborts it when dropped).
        let mut keeper = tokio::task::JoinSet::new();
        let (history_alerts_tx, mut history_alerts) = tokio::sync::mpsc::channel(4);
        if self.partition.index == 0 {
            let look = super::stream_keeper::StreamKeeper {
                js: js.clone(),
                stream: events_stream.clone(),
                settings: history,
                state: state.clone(),
                partition: self.partition.index,
                alerts: history_alerts_tx,
            };
            keeper.spawn(look.run().in_current_span());
        } else {
            drop(history_alerts_tx);
        }
        let lifecycle_stream = self.lifecycle_stream.clone();
        // Ack per batch (an older consumer is recreated to), from the ack
        // floor: see `position`.
        consumer = position::ack_all(&js, consumer).await;
        let acking = position::Acking::of(&consumer);
        // Set when the pull is dropped with events it was handed and this
        // term did not apply: the next pull starts after the ack floor.
        let mut rewind_due = false;
        // Where this term's consumer stands, to see events the stream
        // discards before they are read.
        let high = match consumer.info().await {
            Ok(info) if info.delivered.stream_sequence > info.ack_floor.stream_sequence => {
                let floor = self.rewind(&mut consumer).await;
                rewind_due = floor.is_none();
                floor
            }
            Ok(info) => js
                .get_stream(&events_stream)
                .await
                .ok()
                .map(|s| position::read_up_to(info, s.cached_info())),
            // Not knowing whether an earlier term's pull was handed events
            // it never applied (they would wait out the ack wait before
            // coming again, while later ones are applied and the term
            // believes itself caught up): rewind before the first pull.
            Err(e) => {
                warn!(error = %e, "reading the event consumer at the start of a term; rewinding it before pulling");
                rewind_due = true;
                None
            }
        };
        self.losses_after(high);
        // After a batch that could not be stored: not before then.
        let mut pull_after = tokio::time::Instant::now();
        // Admin requests are the leader's: only it changes records. With
        // partitions, each leader also takes those another handed on.
        let mut admin = self.admin_requests(&client).await;
        loop {
            if messages.is_none() && rewind_due && tokio::time::Instant::now() >= pull_after {
                // Only once the server has rewound: otherwise a later ack
                // would cover what the dropped pull was handed.
                rewind_due = self.rewind(&mut consumer).await.is_none() && connected.borrow().up;
            }
            if messages.is_none() && !rewind_due && tokio::time::Instant::now() >= pull_after {
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
                    Ok(stream) => {
                        messages = Some(stream);
                        caught_up.pulled_afresh();
                    }
                    Err(e) => warn!(error = %e, "opening the event consumer; retrying"),
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
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
                        let received = std::time::Instant::now();
                        // Behind by a batch or more: fill the batch, so
                        // each round of writes and acks carries more events.
                        let fill_until = (message.info().map_or(0, |i| i.pending) >= MAX_BATCH as u64)
                            .then(|| tokio::time::Instant::now() + FILL_WAIT);
                        // Take what else is ready now, up to a batch: its
                        // writes go out together, one per node.
                        let mut batch = vec![message];
                        let mut waited = false;
                        while batch.len() < MAX_BATCH {
                            let Some(stream) = messages.as_mut() else { break };
                            let next = match stream.next().now_or_never() {
                                Some(next) => Some(next),
                                None if !waited && fill_until.is_none() && batch.len() < COALESCE_BELOW => {
                                    // A trickle: let more arrive before
                                    // handling it, without polling meanwhile
                                    // (each poll that waits is a wakeup).
                                    waited = true;
                                    tokio::time::sleep(COALESCE).await;
                                    continue;
                                }
                                None => match fill_until {
                                    Some(until) => tokio::time::timeout_at(until, stream.next()).await.ok(),
                                    None => None,
                                },
                            };
                            match next {
                                Some(Some(Ok(more))) => batch.push(more),
                                Some(Some(Err(e))) => {
                                    if pull_is_lost(&e) {
                                        messages = None;
                                        rewind_due = true;
                                        break;
                                    }
                                }
                                Some(None) => {
                                    messages = None;
                                    rewind_due = true;
                                    break;
                                }
                                None => break,
                            }
                        }
                        let (done, applied, through) = self.on_messages(batch, &js, &lifecycle_stream, acking).await;
                        // A dropped pull may have been handed events this
                        // term has not seen: not caught up until rewound.
                        caught_up.after_batch(done && !rewind_due, received, through.filter(|_| !rewind_due));
                        if !applied {
                            // Nothing after the failed events may be acked
                            // before they are applied: read them again.
                            messages = None;
                            rewind_due = true;
                            caught_up.no();
                            pull_after = tokio::time::Instant::now() + RETRY_DELAY;
                        }
                    }
                    Some(Err(e)) => if pull_is_lost(&e) {
                        messages = None;
                        rewind_due = true;
                        caught_up.no();
                    },
                    None => {
                        messages = None;
                        rewind_due = true;
                        caught_up.no();
                    }
                },
                Some(message) = async {
                    match links.as_mut() {
                        Some(links) => links.next().await,
                        None => std::future::pending().await,
                    }
                } => self.on_connection_advisory(message.subject.as_str(), &message.payload),
                Some(message) = async {
                    match admin.as_mut() {
                        Some(admin) => admin.next().await,
                        None => std::future::pending().await,
                    }
                } => self.on_admin(&client, message).instrument(info_span!("admin")).await,
                Some(message) = async {
                    match elections.as_mut() {
                        Some(elections) => elections.next().await,
                        None => std::future::pending().await,
                    }
                } => {
                    if message.subject.as_str().rsplit('.').next() == Some(events_stream.as_str()) {
                        // While the event stream had no leader, nodes could
                        // not store heartbeats: their silence was NATS's.
                        info!(stream = %events_stream, "the event stream elected a new leader; granting every node a fresh grace window and pulling afresh");
                        self.fleet.grant_grace(self.clock.now());
                        // A pull open across the election may stay alive
                        // (its heartbeats come) yet deliver nothing more:
                        // seen in the cluster tests, no event applied for
                        // 16 s after the new leader answered. Read again
                        // from the ack floor, as after a dropped pull.
                        messages = None;
                        rewind_due = true;
                        caught_up.no();
                    }
                }
                Some(alert) = history_alerts.recv() => self.raise(alert).await,
                Ok(()) = bucket_lost.changed() => {
                    bucket_lost.borrow_and_update();
                    warn!(nodes = self.fleet.len(), "nodes bucket lost: writing every record again");
                    self.fleet.rewrite_all();
                }
                Ok(()) = connected.changed() => {
                    let link = *connected.borrow_and_update();
                    let is_connected = link.up;
                    // A drop and its reconnect may both have come since
                    // the last look (a server restarts in milliseconds):
                    // the pull and replies in flight died all the same.
                    let dropped = link.drops > drops_seen;
                    drops_seen = link.drops;
                    if (dropped || !is_connected) && was_connected {
                        // Nothing can be heard now: hold every transition.
                        // The alert goes out once the link is back.
                        warn!("lost the NATS link; holding transitions");
                        let effects = self.fleet.fault(OwnFault::NatsLink, self.clock.now(), 0);
                        self.pending_alerts.extend(effects.alerts);
                        was_connected = false;
                    }
                    if is_connected && !was_connected {
                        // Whatever happened while we were away is not the
                        // nodes' fault: judge again after a fresh window.
                        // The pull in flight died with the old connection.
                        info!("reconnected to NATS; granting every node a fresh grace window");
                        self.retry_alerts().await;
                        let effects = self.fleet.fault_cleared(OwnFault::NatsLink, self.clock.now());
                        self.execute(effects).await;
                        caught_up.no();
                        messages = None;
                        rewind_due = true;
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
                    let probed = probe_event_stream(&js, &events_stream).await;
                    if probed.is_some() {
                        if self.fleet.faults().any(|f| f == OwnFault::EventStream) {
                            info!(stream = %events_stream, "the event stream answers again");
                            self.retry_alerts().await;
                            let effects = self.fleet.fault_cleared(OwnFault::EventStream, self.clock.now());
                            self.execute(effects).await;
                            caught_up.no();
                        }
                    } else {
                        if !self.fleet.faults().any(|f| f == OwnFault::EventStream) {
                            warn!(stream = %events_stream, "the event stream does not answer; holding transitions");
                            let effects = self.fleet.fault(OwnFault::EventStream, self.clock.now(), 0);
                            self.pending_alerts.extend(effects.alerts);
                        }
                        caught_up.no();
                        continue;
                    }
                    // The consumer's figures: to know when it caught up, and
                    // every few seconds for health and metrics.
                    // Judging needs fresh evidence that no event waits: a
                    // batch whose writes stalled (a stream's failover) let
                    // heartbeats queue up behind it unseen.
                    let check = caught_up.needs_reading(std::time::Instant::now());
                    if check || backlog_seen.elapsed() >= BACKLOG_EVERY {
                        let asked = std::time::Instant::now();
                        // Only a live pull can be caught up: events handed
                        // to a dropped one come again after the rewind.
                        let live = messages.is_some() && !rewind_due;
                        match consumer.info().await {
                            Ok(info) => {
                                backlog_seen = std::time::Instant::now();
                                state.set_backlog(self.partition.index, info.num_pending + info.num_ack_pending as u64);
                                if let Some(front) = probed.as_ref().map(|s| s.state.first_sequence) {
                                    self.count_discarded(front, info.num_pending);
                                }
                                if check {
                                    // Nothing waiting, and nothing handed
                                    // out and not yet applied.
                                    caught_up.read(live && info.num_pending == 0 && info.num_ack_pending == 0, asked);
                                }
                                if live && caught_up.pull_is_stuck(info.num_pending, info.delivered.stream_sequence, asked) {
                                    // Seen after a stream's leader changed:
                                    // the pull stayed open, delivering
                                    // nothing. Read again from the ack floor.
                                    warn!(pending = info.num_pending, quiet_s = super::caught_up::PULL_QUIET.as_secs(), "the event pull delivers nothing while events wait; pulling afresh");
                                    messages = None;
                                    rewind_due = true;
                                    caught_up.no();
                                }
                            }
                            Err(e) => {
                                debug!(error = %e, "reading consumer info");
                                if check {
                                    caught_up.no();
                                }
                            }
                        }
                    }
                    state.set_self_preservation(self.partition.index, held_transitions(&self.fleet));
                    self.retry_alerts().await;
                    self.say_losses().await;
                    // As of now when nothing waits, else as of the last
                    // event applied; never twice as of the same moment or
                    // back in time (a sweep as of now, then one as of an
                    // event before it).
                    if let Some(at) = caught_up.judge_at(self.clock.now(), chrono::Utc::now()).filter(|at| swept_to.is_none_or(|s| *at > s)) {
                        swept_to = Some(at);
                        let effects = self.fleet.sweep(at);
                        if !effects.is_empty() {
                            self.execute(effects).instrument(info_span!("sweep")).await;
                        }
                    }
                }
            }
        }
        keeper.abort_all();
        info!(nodes = self.fleet.len(), "worker stopped");
    }

    /// Ingests a batch of messages and tells the stream what was done;
    /// returns whether the consumer is caught up, whether every event
    /// was applied (or rejected for good), and if so the server's receive
    /// time of the last.
    async fn on_messages(
        &mut self,
        batch: Vec<jetstream::Message>,
        js: &jetstream::Context,
        lifecycle_stream: &str,
        acking: position::Acking,
    ) -> (bool, bool, Option<chrono::DateTime<chrono::Utc>>) {
        let started = std::time::Instant::now();
        crate::metrics::batch_size().record(batch.len() as u64, &[]);
        let deliveries: Vec<Delivery<'_>> = batch.iter().map(Delivery::of).collect();
        let ingested = self.ingest(&deliveries).await;
        // Registrations and deregistrations are copied to the lifecycle
        // stream before they are acked, so they outlive NODE_EVENTS.
        let applied: Vec<&Delivery<'_>> = ingested
            .lifecycle
            .iter()
            .filter(|i| ingested.verdicts.get(**i) == Some(&Verdict::Ack))
            .filter_map(|i| deliveries.get(*i))
            .collect();
        if !applied.is_empty() {
            self.copy_lifecycle(js, lifecycle_stream, &applied).await;
        }
        drop(applied);
        drop(deliveries);
        let all_done = !ingested.verdicts.contains(&Verdict::Retry);
        match acking {
            // A rejected event is done too (counted and logged): the last
            // ack covers it.
            position::Acking::PerBatch => {
                if let Some(last) = batch.last().filter(|_| all_done) {
                    if let Err(e) = last.ack().await {
                        warn!(error = %e, "acknowledging a batch of events");
                    }
                }
            }
            position::Acking::PerEvent => {
                for (message, verdict) in batch.iter().zip(&ingested.verdicts) {
                    let kind = match verdict {
                        Verdict::Ack => AckKind::Ack,
                        Verdict::Retry => AckKind::Nak(Some(RETRY_DELAY)),
                        Verdict::Terminate => AckKind::Term,
                    };
                    if let Err(e) = message.ack_with(kind).await {
                        warn!(error = %e, ?verdict, "acknowledging an event");
                    }
                }
            }
        }
        crate::metrics::batch_duration().record(started.elapsed().as_secs_f64(), &[]);
        // Per event, a retried event comes back by itself.
        let applied = all_done || acking == position::Acking::PerEvent;
        (
            ingested.caught_up,
            applied,
            ingested.last_received.filter(|_| all_done),
        )
    }

    /// Rewinds the consumer to its ack floor (see `position`); returns the
    /// floor, which this term has read up to.
    async fn rewind(&mut self, consumer: &mut PullConsumer) -> Option<u64> {
        let rewound = position::rewind(consumer).await?;
        info!(
            floor = rewound.floor,
            delivered = rewound.delivered_before,
            "event consumer rewound to its ack floor"
        );
        self.rewound(rewound.floor, rewound.delivered_before);
        Some(rewound.floor)
    }

    /// Subscribes to operators' requests: `registry.admin` (one leader of
    /// the queue group takes each) and, with partitions, this partition's
    /// own subject.
    async fn admin_requests(
        &self,
        client: &async_nats::Client,
    ) -> Option<futures::stream::SelectAll<async_nats::Subscriber>> {
        let mut all = Vec::new();
        match client
            .queue_subscribe(
                subjects::REGISTRY_ADMIN,
                subjects::SERVICE_QUEUE_GROUP.into(),
            )
            .await
        {
            Ok(admin) => all.push(admin),
            Err(e) => {
                warn!(error = %e, "not serving admin requests");
                return None;
            }
        }
        if self.partition.count > 1 {
            let subject = subjects::registry_admin_partition(self.partition.index);
            match client.subscribe(subject).await {
                Ok(own) => all.push(own),
                Err(e) => {
                    warn!(error = %e, "not taking admin requests handed on by other partitions")
                }
            }
        }
        Some(futures::stream::select_all(all))
    }

    /// Answers one admin request, or hands it to the leader of the
    /// partition that owns its node.
    async fn on_admin(&mut self, client: &async_nats::Client, message: async_nats::Message) {
        let Some(reply) = message.reply.clone() else {
            return;
        };
        if !subjects::is_safe_reply(&reply) {
            warn!(reply = %reply, "admin request with a reply subject that is not an inbox; ignored");
            return;
        }
        if let Some(owner) = AdminRequest::decode(&message.payload)
            .ok()
            .map(|r| self.partition.of(&r.node_id))
            .filter(|owner| *owner != self.partition)
        {
            tokio::spawn(
                hand_on(client.clone(), owner, message.payload, reply)
                    .instrument(info_span!("admin_handed_on", partition = owner.index)),
            );
            return;
        }
        let result = self.answer_admin(&message.payload, reply.as_str()).await;
        let (headers, body) = schemas::nats::reply_parts(result, Encoding::Json);
        if let Err(e) = client.publish_with_headers(reply, headers, body).await {
            warn!(error = %e, "answering an admin request");
        }
    }

    /// Subscribes to the server's connection advisories (when configured
    /// and exported to this account; without them silence alone is judged).
    async fn connection_events(
        &self,
        client: &async_nats::Client,
    ) -> Option<futures::stream::SelectAll<async_nats::Subscriber>> {
        if self.fleet.settings().disconnect_grace.is_zero() {
            return None;
        }
        let mut all = futures::stream::SelectAll::new();
        for subject in [
            subjects::ACCOUNT_CONNECT_EVENTS,
            subjects::ACCOUNT_DISCONNECT_EVENTS,
        ] {
            match client.subscribe(subject).await {
                Ok(subscriber) => all.push(subscriber),
                Err(e) => {
                    warn!(subject, error = %e, "no connection events; judging silence alone");
                    return None;
                }
            }
        }
        Some(all)
    }
}

/// Whether a pull stream's error means its pull is gone for good. A pull
/// whose idle heartbeats stopped died with its server, or was sent while the
/// stream had no leader: the client still counts its messages as pending and
/// would never ask again, so nothing more would arrive (seen in the cluster
/// tests after a stream leader was killed: events sat unread until the test
/// gave up). Other errors pass.
fn pull_is_lost(error: &async_nats::jetstream::consumer::pull::MessagesError) -> bool {
    use async_nats::jetstream::consumer::pull::MessagesErrorKind;
    let lost = error.kind() == MessagesErrorKind::MissingHeartbeat;
    if lost {
        warn!(error = %error, "the event pull lost its heartbeats; pulling afresh");
    } else {
        debug!(error = %error, "event consumer hiccup");
    }
    lost
}

/// The event stream's info, if it answers in time and has a leader (nodes
/// can store events); `None` otherwise.
async fn probe_event_stream(
    js: &jetstream::Context,
    stream: &str,
) -> Option<jetstream::stream::Info> {
    match tokio::time::timeout(STREAM_PROBE_TIMEOUT, js.get_stream(stream)).await {
        // A replicated stream may answer from its assignment while it has
        // no leader: that one stores nothing either.
        Ok(Ok(handle)) => Some(handle.cached_info().clone())
            .filter(|info| info.cluster.as_ref().is_none_or(|c| c.leader.is_some())),
        Ok(Err(e)) => {
            debug!(stream, error = %e, "event stream probe");
            None
        }
        Err(_) => {
            debug!(stream, "event stream probe timed out");
            None
        }
    }
}
