//! A short run of the fleet simulator against a real registry: every node
//! registers, crashes are detected within bounds, and no node that kept
//! beating is ever judged (the smoke version of the scale benchmarks).

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_tests::{
    registry_client, spawn_registry, wait_registry, workspace_bin, AlertTap, NatsServer,
};
use schemas::DiscoverRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_fleet_with_crashes_is_judged_right() {
    let server = NatsServer::start().await;
    let _registry = spawn_registry(
        &server,
        "registry",
        &["--degraded-after", "2s", "--offline-after", "20s"],
        &[("NODE_REGISTRY_SWEEP_INTERVAL", "100ms")],
    );
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    let mut alerts = AlertTap::new(client.nats()).await;

    let url = server.url();
    let sim_started = Utc::now();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(workspace_bin("fleet-sim"))
            .args([
                "--nats-url",
                &url,
                "--nodes",
                "200",
                "--heartbeat-interval",
                "500ms",
            ])
            .args([
                "--crashes-per-sec",
                "2",
                "--duration",
                "8s",
                "--encoding",
                "protobuf",
                "--connections",
                "2",
            ])
            .env("RUST_LOG", "warn")
            .output()
            .expect("fleet-sim runs")
    })
    .await
    .expect("join");
    let sim_ended = Utc::now();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a JSON report");
    assert_eq!(report["registers"], 200);
    assert_eq!(report["failed"], 0);
    let crashes: Vec<(String, DateTime<Utc>)> = report["crashes"]
        .as_array()
        .expect("crashes")
        .iter()
        .map(|c| {
            let id = c["node_id"].as_str().expect("id").to_owned();
            let at =
                schemas::time::parse(c["crashed_at"].as_str().expect("time")).expect("RFC 3339");
            (id, at)
        })
        .collect();
    assert!(crashes.len() >= 10, "{} crashes", crashes.len());

    let request = DiscoverRequest {
        status: Some("any".into()),
        limit: Some(1000),
        ..DiscoverRequest::default()
    };
    let all = client.list_all(&request).await.expect("list");
    assert_eq!(all.len(), 200, "every simulated node is known");

    // Crashes early enough to be judged before the fleet stopped are
    // detected, never sooner than degraded_after.
    let judged: Vec<&(String, DateTime<Utc>)> = crashes
        .iter()
        .filter(|(_, at)| *at + chrono::Duration::seconds(4) < sim_ended)
        .collect();
    let mut waiting: HashSet<&str> = judged.iter().map(|(id, _)| id.as_str()).collect();
    while !waiting.is_empty() {
        let alert = alerts
            .expect("the crashed nodes degraded", Duration::from_secs(30), |a| {
                a.r#type == "node.degraded"
                    && a.node_id.as_deref().is_some_and(|id| waiting.contains(id))
            })
            .await;
        let id = alert.node_id.clone().unwrap_or_default();
        let crashed_at = crashes
            .iter()
            .find(|(c, _)| *c == id)
            .map(|(_, at)| *at)
            .expect("a crash");
        let at = schemas::time::parse(&alert.at).expect("time");
        assert!(
            at - crashed_at >= chrono::Duration::milliseconds(1500),
            "{id} judged {} after its crash",
            at - crashed_at
        );
        waiting.remove(id.as_str());
    }
    // No false alarm while the fleet was running: every degraded alert
    // before the end is about a node that crashed.
    let crashed: HashSet<&str> = crashes.iter().map(|(id, _)| id.as_str()).collect();
    for alert in &alerts.seen {
        let at = schemas::time::parse(&alert.at).expect("time");
        if alert.r#type == "node.degraded" && at < sim_ended && at > sim_started {
            let id = alert.node_id.as_deref().unwrap_or("");
            assert!(crashed.contains(id), "false alarm for {id}");
        }
    }
}

/// Runs `fleet-sim` against `url` with `args` (nodes, interval, duration)
/// and returns its JSON report, once it ended well.
async fn simulate(url: String, args: &'static [&'static str]) -> serde_json::Value {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(workspace_bin("fleet-sim"))
            .args(["--nats-url", &url])
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("fleet-sim runs")
    })
    .await
    .expect("join");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON report")
}

/// A register that is not acked is sent again at the node's next beat, as an
/// agent retries it: with no stream to take them, every beat of every node
/// is a register, and none is a heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_register_not_acked_is_sent_again() {
    let server = NatsServer::start().await;
    const ARGS: &[&str] = &[
        "--nodes",
        "5",
        "--heartbeat-interval",
        "500ms",
        "--duration",
        "3s",
    ];
    let report = simulate(server.url(), ARGS).await;
    let count = |key: &str| report[key].as_u64().unwrap_or_default();
    assert_eq!(count("heartbeats"), 0, "{report}");
    assert!(count("registers_retried") >= 5, "{report}");
    assert!(count("registers") >= 10, "{report}");
    assert!(count("failed") >= count("registers_retried"), "{report}");
}

/// A `reannounce` task to a simulated node is answered as an agent answers
/// it: with a register at the node's next beat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reannounce_is_answered_with_a_register() {
    let server = NatsServer::start().await;
    let _registry = spawn_registry(&server, "registry", &[], &[]);
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    const ARGS: &[&str] = &[
        "--nodes",
        "3",
        "--heartbeat-interval",
        "300ms",
        "--duration",
        "4s",
    ];
    let sim = tokio::spawn(simulate(server.url(), ARGS));
    // Asked again and again while the simulator runs (it may not listen yet
    // at the first); a task to a node of another fleet is not answered.
    let nats = server.client().await;
    let task = serde_json::json!({ "type": "reannounce" }).to_string();
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        for node in ["sim-1", "other-1"] {
            let id = subjects::NodeId::parse(node).expect("a node id");
            nats.publish(subjects::node_tasks(&id), task.clone().into())
                .await
                .expect("publish");
        }
    }
    let report = sim.await.expect("join");
    let count = |key: &str| report[key].as_u64().unwrap_or_default();
    assert_eq!(count("failed"), 0, "{report}");
    assert!(count("reannounces_answered") >= 5, "{report}");
    assert!(count("registers_retried") >= 1, "{report}");
    assert_eq!(
        count("registers"),
        3 + count("registers_retried"),
        "{report}"
    );
}

/// A site of thousands of nodes going quiet at once is judged in one sweep,
/// every node alerted, and the registry goes on: a sweep raising more
/// alerts than async-nats lets wait for their acks at once (5 000) once
/// stopped it for good, publishing the 5 001st.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_nodes_going_quiet_in_one_sweep_are_all_alerted_and_the_registry_goes_on() {
    let server = NatsServer::start().await;
    // One sweep after they all went quiet; self-preservation left out of
    // it (a fleet of only the quiet ones would hold them all).
    let _registry = spawn_registry(
        &server,
        "registry",
        &["--degraded-after", "2s", "--offline-after", "600s"],
        &[
            ("NODE_REGISTRY_SWEEP_INTERVAL", "12s"),
            ("NODE_REGISTRY_SELF_PRESERVATION_MIN_FLEET", "1000000"),
        ],
    );
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    const QUIET: &[&str] = &[
        "--nodes",
        "6000",
        "--silent",
        "6000",
        "--heartbeat-interval",
        "1s",
        "--duration",
        "2s",
        "--id-prefix",
        "quiet",
    ];
    let report = simulate(server.url(), QUIET).await;
    assert_eq!(report["registers"], 6000, "{report}");
    let mut degraded = HashSet::new();
    while degraded.len() < 6000 {
        let alert = alerts
            .expect("every quiet node degraded", Duration::from_secs(60), |a| {
                a.r#type == "node.degraded"
            })
            .await;
        degraded.insert(alert.node_id.clone().unwrap_or_default());
    }
    // It goes on: a node registering after them is known.
    const LATE: &[&str] = &[
        "--nodes",
        "1",
        "--heartbeat-interval",
        "500ms",
        "--duration",
        "1s",
        "--id-prefix",
        "late",
    ];
    let report = simulate(server.url(), LATE).await;
    assert_eq!(report["registers"], 1, "{report}");
    let late = alerts
        .expect("the late node registered", Duration::from_secs(30), |a| {
            a.r#type == "node.registered"
                && a.node_id
                    .as_deref()
                    .is_some_and(|id| id.starts_with("late"))
        })
        .await;
    let id = late.node_id.unwrap_or_default();
    fleet_tests::eventually("the late node is found", Duration::from_secs(30), || {
        let (client, id) = (&client, id.clone());
        async move { client.get(&id).await.ok().flatten() }
    })
    .await;
}
