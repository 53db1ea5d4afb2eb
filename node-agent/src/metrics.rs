//! The agent's own metrics, through the OpenTelemetry API: no-ops unless
//! the binary installed the SDK (`--otlp-endpoint`). The agent serves no
//! HTTP; a collector receives them.

use std::time::Duration;

use opentelemetry::metrics::{Counter, Histogram};
use opentelemetry::KeyValue;

/// The agent's instruments.
#[derive(Debug, Clone)]
pub(crate) struct AgentMetrics {
    heartbeats_sent: Counter<u64>,
    publish_failures: Counter<u64>,
    reconnects: Counter<u64>,
    detection: Histogram<f64>,
}

impl AgentMetrics {
    /// The instruments, from the global meter provider.
    pub(crate) fn new() -> Self {
        let meter = opentelemetry::global::meter("node-agent");
        Self {
            heartbeats_sent: meter
                .u64_counter("agent.heartbeats.sent")
                .with_unit("{heartbeat}")
                .with_description("Heartbeats JetStream acknowledged")
                .build(),
            publish_failures: meter
                .u64_counter("agent.publish.failures")
                .with_unit("{event}")
                .with_description("Events not acknowledged in time, by type")
                .build(),
            reconnects: meter
                .u64_counter("agent.reconnects")
                .with_unit("{reconnect}")
                .with_description("Reconnections to NATS after the first connection")
                .build(),
            detection: meter
                .f64_histogram("agent.detection.duration")
                .with_unit("s")
                .with_description("Time to detect the node's capabilities (CPU, GPUs, models)")
                .with_boundaries(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0])
                .build(),
        }
    }

    /// One event published: a heartbeat acked, or any event that was not.
    pub(crate) fn published(&self, kind: &str, ok: bool) {
        if !ok {
            self.publish_failures
                .add(1, &[KeyValue::new("type", kind.to_owned())]);
        } else if kind == "heartbeat" {
            self.heartbeats_sent.add(1, &[]);
        }
    }

    /// The connection came back after a loss.
    pub(crate) fn reconnected(&self) {
        self.reconnects.add(1, &[]);
    }

    /// A detection took `took`.
    pub(crate) fn detected(&self, took: Duration) {
        self.detection.record(took.as_secs_f64(), &[]);
    }
}
