//! Publishes alerts on `system.broadcast`.

use async_nats::jetstream;
use async_nats::HeaderMap;
use schemas::codec::{Encoding, CONTENT_TYPE_JSON, HEADER_CONTENT_TYPE};
use schemas::Alert;
use tracing::instrument;

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

    /// Publishes alerts in order on one connection (so `ALERTS` stores them
    /// in that order), then waits for all their acks together; one result
    /// per alert.
    pub async fn publish_all(&self, alerts: &[Alert]) -> Vec<Result<(), AlertError>> {
        let fail = |alert: &Alert, source: async_nats::Error| AlertError {
            id: alert.id.clone(),
            kind: alert.r#type.clone(),
            source,
        };
        let mut sent = Vec::with_capacity(alerts.len());
        for alert in alerts {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
            headers.insert(async_nats::header::NATS_MESSAGE_ID, alert.id.as_str());
            let payload = schemas::codec::encode(alert, Encoding::Json);
            sent.push(
                self.js
                    .publish_with_headers(subjects::SYSTEM_BROADCAST, headers, payload.into())
                    .await,
            );
        }
        let mut results = Vec::with_capacity(alerts.len());
        for (alert, sent) in alerts.iter().zip(sent) {
            let result = match sent {
                Err(e) => Err(fail(alert, e.into())),
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| fail(alert, e.into())),
            };
            results.push(result);
        }
        results
    }

    /// Publishes one alert (JSON, `Nats-Msg-Id` = its id) and waits for the ack.
    #[instrument(skip_all, fields(alert = %alert.r#type, node_id = alert.node_id.as_deref().unwrap_or("")))]
    pub async fn publish(&self, alert: &Alert) -> Result<(), AlertError> {
        self.publish_all(std::slice::from_ref(alert))
            .await
            .pop()
            .unwrap_or(Ok(()))
    }
}
