//! Telemetry for the binaries: the OpenTelemetry SDK, installed as the
//! global meter and tracer providers, with up to two ways out:
//!
//! - the opt-in `/metrics` endpoint, Prometheus's text format (the only
//!   HTTP the services serve);
//! - OTLP over HTTP (protobuf) to a collector: metrics every
//!   `interval`, and the `tracing` spans as traces (through
//!   [`Telemetry::tracing_layer`]).
//!
//! It also installs the W3C trace-context propagator, through which
//! libraries put `traceparent` on the messages they send and continue the
//! traces of those they receive (`runtime_support::trace_context`).
//! Libraries create their instruments from `opentelemetry::global::meter`;
//! without a meter provider those are no-ops and cost nothing.
#![deny(missing_docs)]

mod prometheus_endpoint;

use std::net::SocketAddr;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::metrics::{Instrument, PeriodicReader, SdkMeterProvider, Stream};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use tracing_subscriber::Registry;

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// An exporter could not be built.
    #[error("the {which} exporter: {reason}")]
    Exporter {
        /// Which exporter (Prometheus, OTLP metrics, OTLP traces).
        which: &'static str,
        /// Why.
        reason: String,
    },
    /// The OTLP endpoint is not an `http://` or `https://` URL.
    #[error("otlp_endpoint {0:?} is not an http:// or https:// URL (the collector's OTLP/HTTP base, e.g. http://127.0.0.1:4318)")]
    Endpoint(String),
    /// The metrics address could not be bound.
    #[error("cannot listen on {addr} for /metrics: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// What a binary asks of telemetry.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    /// `service.name` of the resource (`node-registry`, `node-agent`, `nodectl`).
    pub service: &'static str,
    /// `service.instance.id`: which one of them.
    pub instance: String,
    /// Serve `/metrics` here (Prometheus); `None`: off.
    pub metrics_addr: Option<SocketAddr>,
    /// The collector's OTLP/HTTP base URL (`/v1/metrics` and `/v1/traces`
    /// are appended); `None`: no OTLP.
    pub otlp_endpoint: Option<String>,
    /// How often metrics are pushed, and the longest a finished span waits
    /// before it is sent.
    pub otlp_interval: Duration,
    /// Give spans trace ids even when none are exported, so that what this
    /// program sends carries a `traceparent` a collector-connected peer
    /// continues (the agent and nodectl: a few spans, no cost to speak of).
    pub trace_without_export: bool,
    /// By instrument name prefix, how many attribute sets (series) an
    /// instrument may carry before the SDK folds the rest into one
    /// overflow series (the SDK's default is 2 000). The SDK reserves room
    /// for that many up front: ask for what is needed, not more.
    pub cardinality_limits: Vec<(&'static str, usize)>,
}

impl TelemetryConfig {
    /// Nothing exported, nothing served, for `service`.
    pub fn new(service: &'static str, instance: impl Into<String>) -> Self {
        Self {
            service,
            instance: instance.into(),
            metrics_addr: None,
            otlp_endpoint: None,
            otlp_interval: DEFAULT_OTLP_INTERVAL,
            trace_without_export: false,
            cardinality_limits: Vec::new(),
        }
    }
}

/// The default of [`TelemetryConfig::otlp_interval`].
pub const DEFAULT_OTLP_INTERVAL: Duration = Duration::from_secs(10);

/// A `tracing` layer that turns spans into OpenTelemetry spans.
pub type TracingLayer = Box<dyn tracing_subscriber::Layer<Registry> + Send + Sync>;

/// The installed providers and the `/metrics` server.
#[derive(Debug)]
pub struct Telemetry {
    meters: Option<SdkMeterProvider>,
    tracer: Option<SdkTracerProvider>,
    metrics_addr: Option<SocketAddr>,
    otlp: Option<(String, Duration)>,
}

impl Telemetry {
    /// Installs what `config` asks for (nothing but the propagator when it
    /// asks for nothing) and serves `/metrics` until `cancel`.
    pub async fn start(
        config: TelemetryConfig,
        cancel: CancellationToken,
    ) -> Result<Self, TelemetryError> {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let endpoint = config.otlp_endpoint.as_deref().map(otlp_base).transpose()?;
        let resource = Resource::builder()
            .with_service_name(config.service)
            .with_attribute(KeyValue::new(
                "service.instance.id",
                config.instance.clone(),
            ))
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();

        let mut meters = None;
        let mut metrics_addr = None;
        if config.metrics_addr.is_some() || endpoint.is_some() {
            let limits = config.cardinality_limits.clone();
            let mut builder = SdkMeterProvider::builder()
                .with_resource(resource.clone())
                .with_view(move |i: &Instrument| {
                    let (_, limit) = limits
                        .iter()
                        .find(|(prefix, _)| i.name().starts_with(prefix))?;
                    Stream::builder()
                        .with_cardinality_limit((*limit).max(1))
                        .build()
                        .ok()
                });
            let mut served = None;
            if let Some(addr) = config.metrics_addr {
                let (reader, endpoint) =
                    prometheus_endpoint::PrometheusEndpoint::bind(addr).await?;
                builder = builder.with_reader(reader);
                served = Some(endpoint);
            }
            if let Some(base) = &endpoint {
                let exporter = opentelemetry_otlp::MetricExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{base}/v1/metrics"))
                    .with_timeout(config.otlp_interval.max(Duration::from_secs(1)))
                    .build()
                    .map_err(exporter_error("OTLP metrics"))?;
                builder = builder.with_reader(
                    PeriodicReader::builder(exporter)
                        .with_interval(config.otlp_interval)
                        .build(),
                );
            }
            let provider = builder.build();
            opentelemetry::global::set_meter_provider(provider.clone());
            if let Some(endpoint) = served {
                metrics_addr = Some(endpoint.serve(cancel));
            }
            meters = Some(provider);
        }

        let mut tracer = None;
        if endpoint.is_some() || config.trace_without_export {
            let mut builder = SdkTracerProvider::builder().with_resource(resource);
            if let Some(base) = &endpoint {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_http()
                    .with_endpoint(format!("{base}/v1/traces"))
                    .with_timeout(config.otlp_interval.max(Duration::from_secs(1)))
                    .build()
                    .map_err(exporter_error("OTLP traces"))?;
                builder = builder.with_span_processor(
                    BatchSpanProcessor::builder(exporter)
                        .with_batch_config(
                            BatchConfigBuilder::default()
                                .with_scheduled_delay(config.otlp_interval)
                                .build(),
                        )
                        .build(),
                );
            }
            tracer = Some(builder.build());
        }
        Ok(Self {
            meters,
            tracer,
            metrics_addr,
            otlp: endpoint.map(|base| (base, config.otlp_interval)),
        })
    }

    /// The layer that makes this program's `tracing` spans OpenTelemetry
    /// spans (for `runtime_support::init_tracing_with`); `None` when no
    /// traces were asked for.
    pub fn tracing_layer(&self) -> Option<TracingLayer> {
        use opentelemetry::trace::TracerProvider as _;
        let tracer = self.tracer.as_ref()?.tracer("fleet");
        Some(Box::new(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_threads(false)
                .with_location(false),
        ))
    }

    /// Logs what is served and pushed (once the subscriber is installed).
    pub fn announce(&self) {
        if let Some(addr) = self.metrics_addr {
            info!(%addr, "serving /metrics");
        }
        if let Some((endpoint, interval)) = &self.otlp {
            info!(%endpoint, ?interval, "pushing OTLP metrics and traces");
        }
    }

    /// Where `/metrics` is served, when it is.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// Sends what is buffered and shuts the providers down.
    pub fn shutdown(self) {
        if let Some(tracer) = self.tracer {
            if let Err(e) = tracer.shutdown() {
                warn!(error = %e, "shutting the tracer provider down");
            }
        }
        if let Some(meters) = self.meters {
            if let Err(e) = meters.shutdown() {
                warn!(error = %e, "shutting the meter provider down");
            }
        }
    }
}

/// Turns an exporter's build error into ours, naming the exporter.
fn exporter_error(
    which: &'static str,
) -> impl FnOnce(opentelemetry_otlp::ExporterBuildError) -> TelemetryError {
    move |e| TelemetryError::Exporter {
        which,
        reason: e.to_string(),
    }
}

/// The collector's base URL, checked, without a trailing slash.
fn otlp_base(endpoint: &str) -> Result<String, TelemetryError> {
    let trimmed = endpoint.trim().trim_end_matches('/');
    let rest = trimmed
        .strip_prefix("http://")
        .or_else(|| trimmed.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => {
            Ok(trimmed.to_owned())
        }
        _ => Err(TelemetryError::Endpoint(endpoint.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn otlp_endpoints_are_http_base_urls() {
        assert_eq!(
            otlp_base("http://127.0.0.1:4318/").ok().as_deref(),
            Some("http://127.0.0.1:4318")
        );
        assert!(otlp_base("https://otel.example:4318").is_ok());
        for bad in [
            "127.0.0.1:4318",
            "grpc://x:4317",
            "http://",
            "http://a b",
            "",
        ] {
            assert!(
                matches!(otlp_base(bad), Err(TelemetryError::Endpoint(_))),
                "{bad}"
            );
        }
    }
}
