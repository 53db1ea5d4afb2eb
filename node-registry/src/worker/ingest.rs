//! A batch of deliveries from `NODE_EVENTS`: each decoded, checked and
//! applied to the fleet, the batch's effects carried out together, and a
//! verdict for each delivery. Nothing is acked before its effect is durable
//! (DESIGN principle 9); a bad delivery is terminated, never redelivered.

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use registry_core::lifecycle::Effects;
use registry_kv::alerts::AlertSink;
use registry_kv::RecordStore;
use schemas::codec::{self, MAX_EVENT_BYTES};
use schemas::status::EventType;
use schemas::validate::{validate_event, ValidEvent};
use schemas::NodeEvent;
use tracing::{debug, info_span, warn, Instrument, Span};

use super::execute::Traced;
use super::Worker;
use crate::counters::Counters;
use crate::tasks::TaskSender;

/// Where a delivery stands in the stream (its JetStream metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryMeta {
    /// Its stream sequence (alert ids are derived from it).
    pub stream_seq: u64,
    /// Messages left for the consumer after this one.
    pub pending: u64,
    /// The server's receive time: what liveness is judged on.
    pub received: DateTime<Utc>,
    /// How many times it was delivered (1: the first).
    pub delivered: i64,
}

/// Events waiting behind a batch from which the fleet defers first-metrics
/// writes (a backlog is being worked off).
const BACKLOG_DEFERS_WRITES: u64 = 1000;

/// One delivery of an event, borrowed from the message that carried it.
#[derive(Debug, Clone)]
pub struct Delivery<'a> {
    /// The subject it was published on (`node.<id>.events`).
    pub subject: &'a str,
    /// Its headers (encoding, signature).
    pub headers: Option<&'a HeaderMap>,
    /// The event as sent.
    pub payload: &'a [u8],
    /// Its metadata, or why it has none.
    pub meta: Result<DeliveryMeta, String>,
}

/// What to tell the stream about one delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Done: its effect is durable.
    Ack,
    /// Its effect failed: deliver it again later (the fleet retries too).
    Retry,
    /// Bad: never deliver it again.
    Terminate,
}

/// The outcome of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ingested {
    /// One verdict per delivery, in order.
    pub verdicts: Vec<Verdict>,
    /// Whether the consumer had nothing left after the batch.
    pub caught_up: bool,
    /// The server's receive time of the batch's last event.
    pub last_received: Option<DateTime<Utc>>,
    /// The deliveries whose copy goes to the lifecycle stream: the
    /// registrations and deregistrations applied (not redeliveries).
    pub lifecycle: Vec<usize>,
}

/// Why an event was rejected.
#[derive(Debug, thiserror::Error)]
pub(super) enum Rejection {
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

impl<S: RecordStore, A: AlertSink, T: TaskSender> Worker<S, A, T> {
    /// Handles a batch of deliveries in stream order. Accepted events are
    /// acked once the effects of the whole batch are durable, or retried
    /// when they are not; rejected ones are terminated.
    pub async fn ingest(&mut self, deliveries: &[Delivery<'_>]) -> Ingested {
        let mut effects = Effects::default();
        let mut verdicts = vec![Verdict::Terminate; deliveries.len()];
        let mut accepted = Vec::with_capacity(deliveries.len());
        let mut traced = Traced::default();
        let mut caught_up = false;
        let mut last_received = None;
        let mut lifecycle = Vec::new();
        // A full batch with more waiting: the fleet defers what only
        // freshens records until it has caught up.
        let waiting = deliveries
            .first()
            .and_then(|d| d.meta.as_ref().ok())
            .map_or(0, |m| m.pending);
        self.fleet.set_backlogged(waiting >= BACKLOG_DEFERS_WRITES);
        for (i, delivery) in deliveries.iter().enumerate() {
            let meta = match &delivery.meta {
                Ok(meta) => *meta,
                Err(reason) => {
                    self.reject(delivery, &Rejection::Metadata(reason.clone()));
                    continue;
                }
            };
            caught_up = meta.pending == 0;
            last_received = Some(meta.received);
            self.clock.observe(meta.received);
            let lost = self.losses.observe(meta.stream_seq, meta.received);
            self.count_lost(lost, meta.stream_seq);
            // An event that carries a trace (the agent's `register`) is
            // followed through decode, lifecycle, KV write and alert.
            let span = event_span(delivery, meta.stream_seq);
            let _entered = span.enter();
            let decoded = step(&span, || info_span!("decode")).in_scope(|| {
                decode(delivery).and_then(|event| {
                    Ok(self
                        .authenticate(
                            delivery,
                            &event,
                            meta.delivered > 1 || meta.stream_seq <= self.redelivered_up_to,
                        )?
                        .then_some(event))
                })
            });
            match decoded {
                Err(reason) => self.reject(delivery, &reason),
                // A redelivery of one already taken: done, quietly.
                Ok(None) => accepted.push(i),
                Ok(Some(event)) => {
                    debug!(seq = meta.stream_seq, node_id = %event.node_id, kind = %event.kind, "event");
                    Counters::bump(&self.counters.events_applied);
                    self.counters.count_event(event.kind);
                    let applied = step(&span, || info_span!("lifecycle"))
                        .in_scope(|| self.fleet.apply(&event, meta.received, meta.stream_seq));
                    effects.extend(applied);
                    if event.kind != EventType::Heartbeat {
                        lifecycle.push(i);
                    }
                    if !span.is_none() {
                        span.record("node_id", event.node_id.as_str());
                        span.record("kind", event.kind.to_string());
                        traced.follow(event.node_id.as_str(), span.clone());
                    }
                    accepted.push(i);
                }
            }
        }
        let span = info_span!("events", count = accepted.len());
        // The fleet retries what failed; redelivery covers a crash before
        // it does.
        let verdict = if self.execute_traced(effects, &traced).instrument(span).await {
            Verdict::Ack
        } else {
            Verdict::Retry
        };
        for i in accepted {
            verdicts[i] = verdict;
        }
        Ingested {
            verdicts,
            caught_up,
            last_received,
            lifecycle,
        }
    }

    /// Whether an event comes from its node (signature) and is new (seq).
    /// `Ok(false)`: a redelivery of one already taken; skip it quietly.
    fn authenticate(
        &mut self,
        delivery: &Delivery<'_>,
        event: &ValidEvent,
        redelivered: bool,
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
        let signature = delivery
            .headers
            .and_then(|h| h.get(fleet_auth::SIGNATURE_HEADER))
            .map(|v| v.as_str().to_owned())
            .ok_or(Rejection::Forged("no signature"))?;
        if !public.verify(delivery.payload, &signature) {
            return Err(Rejection::Forged("the signature is not the node's"));
        }
        let seq = event.event.seq.ok_or(Rejection::Forged("no seq"))?;
        let fleet = &self.fleet;
        let last = self
            .last_seq
            .entry(id.clone())
            .or_insert_with(|| fleet.get(id).and_then(|n| n.record().seq).unwrap_or(0));
        if seq <= *last {
            if redelivered {
                return Ok(false);
            }
            return Err(Rejection::Replayed { seq, last: *last });
        }
        *last = seq;
        Ok(true)
    }

    /// Counts and logs a rejected delivery (its verdict is `Terminate`).
    fn reject(&self, delivery: &Delivery<'_>, reason: &Rejection) {
        Counters::bump(&self.counters.events_rejected);
        match reason {
            Rejection::Forged(_) | Rejection::Unsigned => {
                Counters::bump(&self.counters.events_forged);
            }
            Rejection::Replayed { .. } => Counters::bump(&self.counters.events_replayed),
            Rejection::Codec(codec::CodecError::TooLarge { .. }) => {
                Counters::bump(&self.counters.events_oversized);
            }
            Rejection::Invalid(schemas::validate::ValidationError::SpoofedId { .. }) => {
                Counters::bump(&self.counters.events_spoofed);
            }
            _ => Counters::bump(&self.counters.events_bad),
        }
        warn!(subject = %delivery.subject, size = delivery.payload.len(), %reason, "event rejected");
    }
}

/// The span of one event that carries a W3C `traceparent`, continuing that
/// trace; `Span::none()` for the rest (heartbeats carry none).
fn event_span(delivery: &Delivery<'_>, seq: u64) -> Span {
    let Some(headers) = delivery.headers else {
        return Span::none();
    };
    if headers
        .get(runtime_support::trace_context::TRACEPARENT)
        .is_none()
    {
        return Span::none();
    }
    let span = info_span!(
        "event",
        seq,
        trace_id = tracing::field::Empty,
        node_id = tracing::field::Empty,
        kind = tracing::field::Empty
    );
    if let Some(trace_id) = runtime_support::trace_context::continue_trace(&span, Some(headers)) {
        span.record("trace_id", trace_id);
    }
    span
}

/// A step of a traced event (`make`'s span), or nothing for one not traced
/// (the steps of every heartbeat would cost more than they tell).
fn step(event: &Span, make: impl FnOnce() -> Span) -> Span {
    if event.is_none() {
        Span::none()
    } else {
        make()
    }
}

/// Decodes and validates one delivery: subject id, encoding, size, fields,
/// and the payload id against the subject id.
fn decode(delivery: &Delivery<'_>) -> Result<ValidEvent, Rejection> {
    let (subject_id, _) = subjects::parse_stored_node_events(delivery.subject)?;
    let encoding = schemas::nats::encoding_of(delivery.headers)?;
    let event: NodeEvent = codec::decode(delivery.payload, encoding, MAX_EVENT_BYTES)?;
    Ok(validate_event(event, &subject_id)?)
}
