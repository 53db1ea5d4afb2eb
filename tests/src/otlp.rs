//! A stand-in OpenTelemetry collector: it takes OTLP/HTTP protobuf posts on
//! `/v1/metrics` and `/v1/traces`, decodes them with the protocol's own
//! types (`opentelemetry-proto`), and keeps them for a test to look at.
//! A body that does not decode is refused with 400 and counted, so a test
//! sees a broken exporter.

use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message as _;

/// One span as received, flattened with its service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// The span's name.
    pub name: String,
    /// Trace id, lowercase hex.
    pub trace_id: String,
    /// Span id, lowercase hex.
    pub span_id: String,
    /// Parent span id, lowercase hex; empty for a root.
    pub parent_span_id: String,
}

/// One metric data point as received, flattened with its service.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedPoint {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// The instrument's name (OTel form, `fleet.nodes`).
    pub metric: String,
    /// The point's attributes, as strings.
    pub attributes: Vec<(String, String)>,
    /// Its value: the number, or a histogram's count.
    pub value: f64,
}

#[derive(Debug, Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    points: Vec<ReceivedPoint>,
    refused: usize,
}

/// The running stand-in collector (stops when dropped).
#[derive(Debug)]
pub struct OtlpCollector {
    addr: std::net::SocketAddr,
    received: Arc<Mutex<Received>>,
    task: tokio::task::JoinHandle<()>,
}

impl OtlpCollector {
    /// Listens on a free loopback port.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the OTLP collector");
        let addr = listener.local_addr().expect("its address");
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .route("/v1/metrics", post(metrics))
            .with_state(received.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            received,
            task,
        }
    }

    /// The base URL to give as `--otlp-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.lock().spans.clone()
    }

    /// The metric points received so far.
    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.lock().points.clone()
    }

    /// How many posts did not decode.
    pub fn refused(&self) -> usize {
        self.lock().refused
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Shared = State<Arc<Mutex<Received>>>;

async fn traces(State(received): Shared, body: Bytes) -> StatusCode {
    let mut received = received.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        received.refused += 1;
        return StatusCode::BAD_REQUEST;
    };
    for resource in request.resource_spans {
        let service = service_name(resource.resource.as_ref().map(|r| &r.attributes[..]));
        for scope in resource.scope_spans {
            for span in scope.spans {
                received.spans.push(ReceivedSpan {
                    service: service.clone(),
                    name: span.name,
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                });
            }
        }
    }
    StatusCode::OK
}

async fn metrics(State(received): Shared, body: Bytes) -> StatusCode {
    let mut received = received.lock().unwrap_or_else(|p| p.into_inner());
    let Ok(request) = ExportMetricsServiceRequest::decode(body) else {
        received.refused += 1;
        return StatusCode::BAD_REQUEST;
    };
    for resource in request.resource_metrics {
        let service = service_name(resource.resource.as_ref().map(|r| &r.attributes[..]));
        for scope in resource.scope_metrics {
            for m in scope.metrics {
                let mut point = |attributes: &[KeyValue], value: f64| {
                    received.points.push(ReceivedPoint {
                        service: service.clone(),
                        metric: m.name.clone(),
                        attributes: attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), value_text(kv)))
                            .collect(),
                        value,
                    });
                };
                match &m.data {
                    Some(metric::Data::Gauge(g)) => {
                        for p in &g.data_points {
                            point(&p.attributes, number(p.value));
                        }
                    }
                    Some(metric::Data::Sum(s)) => {
                        for p in &s.data_points {
                            point(&p.attributes, number(p.value));
                        }
                    }
                    Some(metric::Data::Histogram(h)) => {
                        for p in &h.data_points {
                            point(&p.attributes, p.count as f64);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    StatusCode::OK
}

fn number(value: Option<number_data_point::Value>) -> f64 {
    match value {
        Some(number_data_point::Value::AsDouble(v)) => v,
        Some(number_data_point::Value::AsInt(v)) => v as f64,
        None => f64::NAN,
    }
}

fn value_text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn service_name(attributes: Option<&[KeyValue]>) -> String {
    attributes
        .unwrap_or_default()
        .iter()
        .find(|kv| kv.key == "service.name")
        .map(value_text)
        .unwrap_or_default()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
