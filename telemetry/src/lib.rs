//! Telemetry for the binaries: the OpenTelemetry meter provider with a
//! Prometheus exporter, installed as the global provider, and the opt-in
//! `/metrics` endpoint that serves it in Prometheus's text format.
//!
//! Libraries create their instruments from `opentelemetry::global::meter`;
//! without [`Telemetry::start`] those are no-ops and cost nothing.
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use opentelemetry_sdk::metrics::{Instrument, SdkMeterProvider, Stream};
use prometheus::{Encoder, TextEncoder};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The exporter could not be built.
    #[error("the Prometheus exporter: {0}")]
    Exporter(String),
    /// The metrics address could not be bound.
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// The installed provider and its `/metrics` server.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkMeterProvider,
    addr: SocketAddr,
}

impl Telemetry {
    /// Installs the global meter provider with a Prometheus exporter and
    /// serves `/metrics` on `addr` until `cancel`. `limits` gives, by
    /// instrument name prefix, how many attribute sets (series) an
    /// instrument may carry before the SDK folds the rest into one
    /// overflow series (the SDK's default is 2 000). The SDK reserves room
    /// for that many up front: ask for what is needed, not more.
    pub async fn start(
        addr: SocketAddr,
        limits: Vec<(&'static str, usize)>,
        cancel: CancellationToken,
    ) -> Result<Self, TelemetryError> {
        let registry = prometheus::Registry::new();
        let exporter = opentelemetry_prometheus::exporter()
            .with_registry(registry.clone())
            .scope_info_enabled(false)
            .without_target_info()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let provider = SdkMeterProvider::builder()
            .with_reader(exporter)
            .with_view(move |i: &Instrument| {
                let (_, limit) = limits
                    .iter()
                    .find(|(prefix, _)| i.name().starts_with(prefix))?;
                Stream::builder()
                    .with_cardinality_limit((*limit).max(1))
                    .build()
                    .ok()
            })
            .build();
        opentelemetry::global::set_meter_provider(provider.clone());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| TelemetryError::Listen { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let registry = Arc::new(registry);
        let app = Router::new().route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move { exposition(&registry) }
            }),
        );
        tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(e) = served {
                warn!(error = %e, "the /metrics endpoint stopped");
            }
        });
        info!(%addr, "serving /metrics");
        Ok(Self { provider, addr })
    }

    /// Where `/metrics` is served.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Flushes and shuts the provider down.
    pub fn shutdown(self) {
        if let Err(e) = self.provider.shutdown() {
            warn!(error = %e, "shutting the meter provider down");
        }
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
