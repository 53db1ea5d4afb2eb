//! OTLP export, as a collector receives it: a registry, an agent and
//! `nodectl` run with `--otlp-endpoint` pointed at a stand-in collector
//! that decodes every post with the OpenTelemetry protocol's own types.
//!
//! - One registration is one trace: the agent's `register` span, and the
//!   registry's `event` (decode, lifecycle), `kv.write` and `alert` under it.
//! - One `nodectl discover` is one trace: nodectl's spans, and the
//!   registry's `request` under its request.
//! - The registry's metrics (`fleet.nodes` by status) and the agent's
//!   (heartbeats sent, detection time) arrive as OTLP metrics.

use std::process::Command;
use std::time::Duration;

use fleet_tests::otlp::{OtlpCollector, ReceivedSpan};
use fleet_tests::{agent_node_id, eventually, spawn_registry, workspace_bin, NatsServer, Proc};

const SOON: Duration = Duration::from_secs(60);

/// The spans of `trace_id` from `service`.
fn of<'a>(spans: &'a [ReceivedSpan], service: &str, trace_id: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.trace_id == trace_id)
        .collect()
}

fn named<'a>(spans: &[&'a ReceivedSpan], name: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().copied().find(|s| s.name == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_and_a_discovery_are_one_trace_each() {
    let server = NatsServer::start().await;
    let collector = OtlpCollector::start().await;
    let endpoint = collector.endpoint();
    let _registry = spawn_registry(
        &server,
        "registry",
        &["--otlp-endpoint", &endpoint],
        &[("NODE_REGISTRY_OTLP_INTERVAL", "500ms")],
    );
    let state = server.temp_path("agent");
    let _agent = Proc::spawn(
        "agent",
        &workspace_bin("node-agent"),
        &[
            "--nats-url".to_owned(),
            server.url(),
            "--state-dir".to_owned(),
            state.display().to_string(),
            "--heartbeat-interval".to_owned(),
            "300ms".to_owned(),
            "--ollama-url".to_owned(),
            "http://127.0.0.1:9".to_owned(),
            "--otlp-endpoint".to_owned(),
            endpoint.clone(),
        ],
        &[("NODE_AGENT_OTLP_INTERVAL", "500ms".to_owned())],
        state.with_extension("log"),
    );
    let node = agent_node_id(&server, "agent").await;

    // The registration: the agent's root span, continued by the registry.
    let (register, registry_spans) = eventually("the registration's trace", SOON, || {
        let spans = collector.spans();
        async move {
            let register = spans
                .iter()
                .find(|s| s.service == "node-agent" && s.name == "register")?
                .clone();
            let registry: Vec<ReceivedSpan> = of(&spans, "node-registry", &register.trace_id)
                .into_iter()
                .cloned()
                .collect();
            let names: Vec<&str> = registry.iter().map(|s| s.name.as_str()).collect();
            ["event", "decode", "lifecycle", "kv.write", "alert"]
                .iter()
                .all(|n| names.contains(n))
                .then_some((register, registry))
        }
    })
    .await;
    assert!(
        register.parent_span_id.is_empty(),
        "a registration starts its own trace: {register:?}"
    );
    let spans: Vec<&ReceivedSpan> = registry_spans.iter().collect();
    let event = named(&spans, "event").expect("event span");
    assert_eq!(
        event.parent_span_id, register.span_id,
        "the registry's event is a child of the agent's register"
    );
    for step in ["decode", "lifecycle", "kv.write", "alert"] {
        let span = named(&spans, step).expect("step span");
        assert_eq!(
            span.parent_span_id, event.span_id,
            "{step} is a step of the event: {spans:?}"
        );
    }

    // A discovery: nodectl's trace, continued by the registry.
    let out = Command::new(workspace_bin("nodectl"))
        .args([
            "--nats-url",
            &server.url(),
            "--otlp-endpoint",
            &endpoint,
            "discover",
        ])
        .env_remove("NATS_URL")
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .output()
        .expect("run nodectl discover");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains(&node),
        "nodectl discover: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (request, served) = eventually("the discovery's trace", SOON, || {
        let spans = collector.spans();
        async move {
            let request = spans
                .iter()
                .find(|s| s.service == "nodectl" && s.name == "request")?
                .clone();
            let served = of(&spans, "node-registry", &request.trace_id)
                .into_iter()
                .find(|s| s.name == "request")?
                .clone();
            Some((request, served))
        }
    })
    .await;
    assert_eq!(
        served.parent_span_id, request.span_id,
        "the registry answers inside nodectl's request"
    );
    let root = collector
        .spans()
        .into_iter()
        .find(|s| s.span_id == request.parent_span_id)
        .expect("nodectl's command span");
    assert_eq!(
        (
            root.service.as_str(),
            root.name.as_str(),
            root.parent_span_id.as_str()
        ),
        ("nodectl", "nodectl", "")
    );

    // Metrics: the registry's fleet, the agent's own.
    eventually("OTLP metrics from both", SOON, || {
        let points = collector.points();
        async move {
            let online = points.iter().any(|p| {
                p.service == "node-registry"
                    && p.metric == "fleet.nodes"
                    && p.attributes
                        .contains(&("status".to_owned(), "online".to_owned()))
                    && p.value == 1.0
            });
            let heartbeats = points.iter().any(|p| {
                p.service == "node-agent" && p.metric == "agent.heartbeats.sent" && p.value >= 1.0
            });
            let detection = points.iter().any(|p| {
                p.service == "node-agent"
                    && p.metric == "agent.detection.duration"
                    && p.value >= 1.0
            });
            (online && heartbeats && detection).then_some(())
        }
    })
    .await;
    assert_eq!(collector.refused(), 0, "every post decoded");
}
