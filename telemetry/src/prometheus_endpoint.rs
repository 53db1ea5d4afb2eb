//! The `/metrics` endpoint: a Prometheus registry the SDK's exporter fills,
//! served in Prometheus's text format and nothing else.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use opentelemetry_prometheus::PrometheusExporter;
use prometheus::{Encoder, TextEncoder};
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::TelemetryError;

/// A bound listener and the registry it will serve.
pub(crate) struct PrometheusEndpoint {
    listener: tokio::net::TcpListener,
    registry: prometheus::Registry,
}

impl PrometheusEndpoint {
    /// Binds `addr` and builds the exporter (a reader for the meter
    /// provider) that fills what it will serve.
    pub(crate) async fn bind(
        addr: SocketAddr,
    ) -> Result<(PrometheusExporter, Self), TelemetryError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .without_target_info()
            .build()
            .map_err(|e| TelemetryError::Exporter {
                which: "Prometheus",
                reason: e.to_string(),
            })?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Listen { addr, source })?;
        Ok((exporter, Self { listener, registry }))
    }

    /// Serves `/metrics` until `cancel`; returns the address bound.
    pub(crate) fn serve(self, cancel: CancellationToken) -> SocketAddr {
        let addr = self
            .listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
        let registry = Arc::new(self.registry);
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { exposition(&registry) }
            }),
        );
        let listener = self.listener;
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "the /metrics endpoint stopped");
            }
        });
        addr
    }
}

/// The registry's metrics in Prometheus's text format.
fn exposition(registry: &prometheus::Registry) -> Response {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&registry.gather(), &mut body) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                TextEncoder::new().format_type().to_owned(),
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
