//! The fleet's effects carried out: alerts stored first (a crash never loses
//! one), then one CAS write per node, then tasks; what a write's outcome
//! means for the fleet; and the rule that holds transitions while KV
//! writes keep failing.

use std::sync::Arc;

use futures::StreamExt;
use registry_core::lifecycle::{Effects, OwnFault, Write};
use registry_kv::alerts::AlertSink;
use registry_kv::{EncodedRecord, RecordStore, StoreError};
use schemas::status::TaskType;
use schemas::Alert;
use subjects::NodeId;
use tracing::{info, info_span, instrument, warn, Instrument, Span};

use super::Worker;
use crate::counters::Counters;
use crate::tasks::TaskSender;

/// Most alerts or writes in flight at once.
const MAX_IN_FLIGHT: usize = 256;
/// Most alerts kept for a retry while `ALERTS` cannot be reached.
const MAX_PENDING_ALERTS: usize = 10_000;
/// Rounds of writes in a row with failures and no success before the
/// registry holds transitions for its own KV trouble.
pub(super) const FAILING_WRITE_ROUNDS: u32 = 2;

/// A write, the bytes it stored (for a put), and how it went.
type WriteOutcome = (
    Write,
    Option<EncodedRecord>,
    Result<Option<u64>, StoreError>,
);

/// The spans of the events in a batch that carry a trace, by node: their
/// alerts and KV writes become steps of those traces.
#[derive(Debug, Default)]
pub(super) struct Traced(std::collections::HashMap<String, Span>);

impl Traced {
    /// Follows `node_id`'s effects in `span` (the last traced event of a
    /// node in a batch carries its effects: one write per node).
    pub(super) fn follow(&mut self, node_id: &str, span: Span) {
        self.0.insert(node_id.to_owned(), span);
    }

    /// A step named by `make` under `node_id`'s traced event, if it has one.
    fn step(&self, node_id: Option<&str>, make: impl FnOnce(&Span) -> Span) -> Span {
        if self.0.is_empty() {
            return Span::none();
        }
        node_id
            .and_then(|id| self.0.get(id))
            .map_or_else(Span::none, make)
    }
}

impl<S: RecordStore, A: AlertSink, T: TaskSender> Worker<S, A, T> {
    /// [`Self::execute_traced`] with no trace to follow.
    pub(super) async fn execute(&mut self, effects: Effects) -> bool {
        self.execute_traced(effects, &Traced::default()).await
    }

    /// Executes effects in order: alerts (all stored before any write, so a
    /// crash never loses one), writes (one per node: the last decision wins;
    /// different nodes in flight together), reannounces. Returns whether
    /// everything succeeded; what failed is retried later.
    pub(super) async fn execute_traced(&mut self, effects: Effects, traced: &Traced) -> bool {
        let mut ok = true;
        // Each traced node's alert is a step of its trace for as long as
        // the batch's alerts take to store.
        let alert_steps: Vec<Span> = effects
            .alerts
            .iter()
            .filter(|_| !traced.0.is_empty())
            .map(|alert| {
                traced.step(
                    alert.node_id.as_deref(),
                    |event| info_span!(parent: event, "alert", r#type = %alert.r#type),
                )
            })
            .collect();
        let stored = self.alerts.publish_all(&effects.alerts).await;
        drop(alert_steps);
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
            .map(|write| {
                let step = traced.step(
                    Some(write.node_id()),
                    |event| info_span!(parent: event, "kv.write", node_id = write.node_id()),
                );
                async move {
                    let (encoded, result) = match &write {
                        Write::Put { record, revision } => {
                            let encoded = EncodedRecord::of(record);
                            if let Some(index) = index {
                                index.expect_write(Arc::clone(record), encoded.value.clone());
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
                }
                .instrument(step)
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
            self.counters.count_alert(&alert.r#type);
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

    /// Copies applied registrations and deregistrations to the lifecycle
    /// stream (`registry.audit.<id>`, the original bytes, the server's
    /// receive time in `Fleet-Received`, deduplicated by the event's stream
    /// sequence). A copy that fails is logged and counted: the event itself
    /// is applied either way.
    pub(super) async fn copy_lifecycle(
        &mut self,
        js: &async_nats::jetstream::Context,
        stream: &str,
        applied: &[&super::Delivery<'_>],
    ) {
        let mut copies = Vec::with_capacity(applied.len());
        for delivery in applied {
            let (Ok(meta), Ok((id, _))) = (
                &delivery.meta,
                subjects::parse_stored_node_events(delivery.subject),
            ) else {
                continue;
            };
            let mut headers = async_nats::HeaderMap::new();
            if let Some(kind) = delivery
                .headers
                .and_then(|h| h.get(schemas::codec::HEADER_CONTENT_TYPE))
            {
                headers.insert(schemas::codec::HEADER_CONTENT_TYPE, kind.as_str());
            }
            headers.insert(
                async_nats::header::NATS_MESSAGE_ID,
                format!("{stream}-{}", meta.stream_seq).as_str(),
            );
            headers.insert(
                subjects::HEADER_RECEIVED,
                schemas::time::format(meta.received).as_str(),
            );
            copies.push((
                subjects::node_lifecycle(&id),
                headers,
                bytes::Bytes::copy_from_slice(delivery.payload),
            ));
        }
        let failed = registry_kv::publish::publish_acked(js, copies)
            .await
            .iter()
            .filter(|stored| stored.is_err())
            .count() as u64;
        if failed > 0 {
            self.counters
                .lifecycle_copies_failed
                .fetch_add(failed, std::sync::atomic::Ordering::Relaxed);
            warn!(failed, "registrations not copied to the lifecycle stream (they are applied; the long audit lacks them)");
        }
    }

    /// Says the events lost since the last time, when it is time to.
    pub(super) async fn say_losses(&mut self) {
        if let Some(alert) = self.losses.alert_due(self.clock.now()) {
            warn!(
                message = alert.message.as_deref().unwrap_or_default(),
                "events lost"
            );
            self.raise(alert).await;
        }
    }

    /// Publishes one alert of the registry's own; one not stored is kept
    /// for a retry.
    pub(super) async fn raise(&mut self, alert: Alert) {
        let stored = self.alerts.publish(&alert).await.is_ok();
        self.record_alert(alert, stored);
    }

    /// Stores the alerts kept for a retry, in order, until one fails.
    pub(super) async fn retry_alerts(&mut self) {
        while let Some(alert) = self.pending_alerts.pop_front() {
            // Same id, so a duplicate of one that did get through is dropped.
            if self.alerts.publish(&alert).await.is_err() {
                self.pending_alerts.push_front(alert);
                return;
            }
            self.counters.count_alert(&alert.r#type);
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
                Counters::bump(&self.counters.kv_conflicts);
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

    /// Asks a node the registry does not know to register again.
    async fn reannounce(&self, id: &NodeId) {
        match self.tasks.send(id, TaskType::Reannounce).await {
            Ok(()) => {
                Counters::bump(&self.counters.reannounces_sent);
                info!(node_id = %id, "heartbeat from an unknown node; asked it to reannounce");
            }
            Err(e) => warn!(error = %e, "sending reannounce"),
        }
    }
}
