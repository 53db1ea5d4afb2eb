//! GPU health end to end, on the wire contract: a node (events published as
//! an agent would, since this machine has no GPU) reports a GPU failed;
//! the registry quarantines it with one `gpu.unhealthy`, keeps the node
//! online, stops counting that GPU for discovery and fit, and puts it back
//! with `gpu.healthy` once it has been healthy for `gpu_recovery`.

use std::process::Command;
use std::time::Duration;

use async_nats::jetstream;
use fleet_tests::{
    registry_client, spawn_registry, wait_registry, workspace_bin, AlertTap, NatsServer,
};
use schemas::{Capabilities, Gpu, GpuHealth, GpuUsage, Metrics, NodeEvent};
use subjects::alert_types::{GPU_HEALTHY, GPU_UNHEALTHY};

const SOON: Duration = Duration::from_secs(30);
const NODE: &str = "gpu-box-1";

fn gpu(vram: f64, uuid: &str) -> Gpu {
    Gpu {
        vendor: "nvidia".into(),
        model: "NVIDIA H100 80GB HBM3".into(),
        vram_gb: vram,
        uuid: Some(uuid.into()),
        ..Gpu::default()
    }
}

fn heartbeat(seq: u64, second: &str) -> NodeEvent {
    let usage = |index: u32, state: &str, reasons: &[&str]| GpuUsage {
        index,
        vram_used_gb: Some(2.0),
        health: Some(GpuHealth {
            state: state.into(),
            reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
        }),
        ..GpuUsage::default()
    };
    let reasons: &[&str] = if second == "failed" { &["xid_79"] } else { &[] };
    NodeEvent {
        r#type: "heartbeat".into(),
        node_id: NODE.into(),
        seq: Some(seq),
        metrics: Some(Metrics {
            cpu_pct: Some(3.0),
            gpus: vec![usage(0, "healthy", &[]), usage(1, second, reasons)],
            ..Metrics::default()
        }),
        ..NodeEvent::default()
    }
}

async fn publish(js: &jetstream::Context, event: &NodeEvent) {
    fleet_tests::publish_event(js, NODE, event).await;
}

fn nodectl(url: &str, args: &[&str]) -> String {
    let out = Command::new(workspace_bin("nodectl"))
        .args(["--nats-url", url])
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .expect("run nodectl");
    assert!(
        out.status.success(),
        "nodectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_gpu_is_quarantined_then_returns_cleanly() {
    let server = NatsServer::start().await;
    let _registry = spawn_registry(
        &server,
        "registry",
        &[],
        &[("NODE_REGISTRY_GPU_RECOVERY", "3s")],
    );
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    let nats = async_nats::connect(server.url()).await.expect("connect");
    let js = jetstream::new(nats.clone());
    let mut alerts = AlertTap::new(&nats).await;

    publish(
        &js,
        &NodeEvent {
            r#type: "register".into(),
            node_id: NODE.into(),
            seq: Some(1),
            capabilities: Some(Capabilities {
                gpus: vec![gpu(80.0, "GPU-a"), gpu(80.0, "GPU-b")],
                tags: vec!["gpu".into(), "nvidia".into()],
                ..Capabilities::default()
            }),
            ..NodeEvent::default()
        },
    )
    .await;
    publish(&js, &heartbeat(2, "healthy")).await;
    publish(&js, &heartbeat(3, "failed")).await;
    let alert = alerts
        .expect("gpu.unhealthy", SOON, |a| a.r#type == GPU_UNHEALTHY)
        .await;
    assert_eq!(alert.node_id.as_deref(), Some(NODE));
    assert_eq!(alert.gpu_index, Some(1));
    assert_eq!(alert.gpu_uuid.as_deref(), Some("GPU-b"));
    assert_eq!(alert.reasons, vec!["xid_79"]);

    // Still failing: no second alert. The node stays online; discovery
    // counts one GPU, fit uses GPU 0 only.
    publish(&js, &heartbeat(4, "failed")).await;
    let url = server.url();
    fleet_tests::eventually("the quarantine in the index", SOON, || {
        let url = url.clone();
        async move {
            let out = nodectl(
                &url,
                &["fit", "--vram-gb", "60", "--gpus", "2", "-o", "json"],
            );
            out.contains("\"total\": 0").then_some(())
        }
    })
    .await;
    let out = nodectl(&url, &["fit", "--vram-gb", "60", "-o", "json"]);
    let reply: schemas::DiscoverReply = serde_json::from_str(&out).expect("reply JSON");
    assert_eq!(reply.placements.len(), 1);
    assert_eq!(reply.placements[0].gpus, vec![0]);
    let record = client.get(NODE).await.expect("get").expect("known");
    assert_eq!(record.status, "online");
    let health = record.gpu_health.expect("gpu health kept");
    assert_eq!(health.state, "warning");
    assert!(health.gpus[1].quarantined);
    let out = nodectl(&url, &["discover", "--min-gpus", "2", "-o", "json"]);
    assert!(!out.contains(NODE), "one GPU in service: {out}");
    let out = nodectl(
        &url,
        &[
            "discover",
            "--min-gpus",
            "2",
            "--gpu-health",
            "any",
            "-o",
            "json",
        ],
    );
    assert!(out.contains(NODE), "both, counting any: {out}");

    // Healthy again: back after the recovery time (heartbeats keep coming).
    let mut seq = 5;
    let back = loop {
        publish(&js, &heartbeat(seq, "healthy")).await;
        seq += 1;
        let seen = alerts.collect_for(Duration::from_millis(500)).await;
        if let Some(alert) = seen.iter().find(|a| a.r#type == GPU_HEALTHY) {
            break alert.clone();
        }
        assert!(seq < 60, "no gpu.healthy after {seq} heartbeats");
    };
    assert_eq!(back.gpu_index, Some(1));
    let unhealthy = alerts
        .seen
        .iter()
        .filter(|a| a.r#type == GPU_UNHEALTHY)
        .count();
    assert_eq!(unhealthy, 1, "one alert per transition");
    let out = nodectl(
        &url,
        &["fit", "--vram-gb", "120", "--gpus", "2", "-o", "json"],
    );
    let reply: schemas::DiscoverReply = serde_json::from_str(&out).expect("reply JSON");
    assert_eq!(
        reply.placements.first().map(|p| p.gpus.clone()),
        Some(vec![0, 1])
    );
}
