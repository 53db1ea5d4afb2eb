//! Publishes alerts on `system.broadcast`: the [`AlertSink`] the worker
//! stores its alerts through, with the JetStream one ([`AlertPublisher`])
//! and an in-memory twin for unit tests ([`MemoryAlerts`]).

use std::future::Future;
use std::sync::{Arc, Mutex};

use async_nats::jetstream;
use async_nats::HeaderMap;
use schemas::codec::{Encoding, CONTENT_TYPE_JSON, HEADER_CONTENT_TYPE};
use schemas::Alert;

/// Why an alert could not be published durably.
#[derive(Debug, thiserror::Error)]
#[error("publishing alert {id} ({kind}): {source}")]
pub struct AlertError {
    /// The alert's id.
    pub id: String,
    /// The alert's type.
    pub kind: String,
    /// What failed.
    pub source: async_nats::Error,
}

/// Where the worker's alerts go: stored durably, in order, each with its
/// id as `Nats-Msg-Id` (a repeat within the duplicate window is dropped).
pub trait AlertSink: Send + Sync {
    /// Stores `alerts` in order; one result per alert.
    fn publish_all(
        &self,
        alerts: &[Alert],
    ) -> impl Future<Output = Vec<Result<(), AlertError>>> + Send;

    /// Stores one alert.
    fn publish(&self, alert: &Alert) -> impl Future<Output = Result<(), AlertError>> + Send {
        async move {
            self.publish_all(std::slice::from_ref(alert))
                .await
                .pop()
                .unwrap_or(Ok(()))
        }
    }
}

/// Publishes alerts and waits for the `ALERTS` stream to store them.
#[derive(Debug, Clone)]
pub struct AlertPublisher {
    js: jetstream::Context,
}

impl AlertPublisher {
    /// A publisher over a JetStream context.
    pub fn new(js: jetstream::Context) -> Self {
        Self { js }
    }
}

impl AlertSink for AlertPublisher {
    /// Publishes alerts in order on one connection (so `ALERTS` stores them
    /// in that order), waiting for their acks a window at a time; one
    /// result per alert.
    async fn publish_all(&self, alerts: &[Alert]) -> Vec<Result<(), AlertError>> {
        let messages: Vec<crate::publish::Outgoing> = alerts
            .iter()
            .map(|alert| {
                let mut headers = HeaderMap::new();
                headers.insert(HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
                headers.insert(async_nats::header::NATS_MESSAGE_ID, alert.id.as_str());
                let payload = schemas::codec::encode(alert, Encoding::Json);
                (
                    subjects::SYSTEM_BROADCAST.to_owned(),
                    headers,
                    payload.into(),
                )
            })
            .collect();
        crate::publish::publish_acked(&self.js, messages)
            .await
            .into_iter()
            .zip(alerts)
            .map(|(result, alert)| {
                result.map_err(|source| AlertError {
                    id: alert.id.clone(),
                    kind: alert.r#type.clone(),
                    source,
                })
            })
            .collect()
    }
}

/// Alerts kept in memory, deduplicated by id as the `ALERTS` stream does
/// within its window; can be told to fail, for unit tests.
#[derive(Debug, Clone, Default)]
pub struct MemoryAlerts {
    inner: Arc<Mutex<MemoryAlertsInner>>,
}

#[derive(Debug, Default)]
struct MemoryAlertsInner {
    stored: Vec<Alert>,
    failing: bool,
}

impl MemoryAlerts {
    /// An empty sink that stores.
    pub fn new() -> Self {
        Self::default()
    }

    /// From now on, every publish fails (`true`) or stores (`false`).
    pub fn set_failing(&self, failing: bool) {
        self.lock().failing = failing;
    }

    /// The alerts stored, in order.
    pub fn stored(&self) -> Vec<Alert> {
        self.lock().stored.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryAlertsInner> {
        // A panic while holding this lock leaves plain data; keep going.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl AlertSink for MemoryAlerts {
    async fn publish_all(&self, alerts: &[Alert]) -> Vec<Result<(), AlertError>> {
        let mut inner = self.lock();
        alerts
            .iter()
            .map(|alert| {
                if inner.failing {
                    return Err(AlertError {
                        id: alert.id.clone(),
                        kind: alert.r#type.clone(),
                        source: "the memory sink is failing".into(),
                    });
                }
                if !inner.stored.iter().any(|a| a.id == alert.id) {
                    inner.stored.push(alert.clone());
                }
                Ok(())
            })
            .collect()
    }
}
