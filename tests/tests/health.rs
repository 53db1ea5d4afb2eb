//! `registry.health` and the health commands against a real nats-server:
//! a leader and a standby each answer, self-preservation makes the leader
//! degraded, and with NATS down `node-registry health` exits 1; the agent's
//! `node-agent health` follows whether its heartbeats are acked.

use std::process::Command;
use std::time::Duration;

use fleet_tests::{
    agent_node_id, eventually, registry_client, spawn_agent, spawn_registry, workspace_bin,
    NatsServer, Proc,
};
use schemas::health::HealthReply;
use schemas::status::HealthStatus;

const SOON: Duration = Duration::from_secs(20);

fn registry(server: &NatsServer, instance: &str) -> Proc {
    spawn_registry(
        server,
        instance,
        &["--degraded-after", "3s", "--offline-after", "60s"],
        &[
            ("NODE_REGISTRY_INSTANCE", instance),
            ("NODE_REGISTRY_SWEEP_INTERVAL", "100ms"),
            ("NODE_REGISTRY_CHECKPOINT_INTERVAL", "500ms"),
            ("NODE_REGISTRY_DISCONNECT_GRACE", "0s"),
        ],
    )
}

/// An agent heartbeating every 300 ms, state in `agent`.
fn agent(server: &NatsServer) -> Proc {
    spawn_agent(
        server,
        "agent",
        &[
            "--heartbeat-interval",
            "300ms",
            "--ollama-url",
            "http://127.0.0.1:9",
        ],
    )
}

/// `node-registry health` as instance `instance` would run it: exit code
/// and what it printed.
fn registry_health(url: &str, instance: &str) -> (i32, String) {
    let out = Command::new(workspace_bin("node-registry"))
        .args(["--nats-url", url, "health"])
        .env("NODE_REGISTRY_INSTANCE", instance)
        .env_remove("NATS_URL")
        .output()
        .expect("run node-registry health");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

fn nodectl_health(url: &str) -> (i32, String) {
    let out = Command::new(workspace_bin("nodectl"))
        .args(["--nats-url", url, "health"])
        .env_remove("NATS_URL")
        .output()
        .expect("run nodectl health");
    (
        out.status.code().unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn instances(client: &fleet_client::Client, n: usize) -> Vec<HealthReply> {
    eventually(
        &format!("{n} healthy instances, one leading"),
        SOON,
        || async {
            let replies = client.health().await.ok()?;
            (replies.len() == n
                && replies.iter().all(|r| r.status == HealthStatus::Healthy)
                && replies.iter().filter(|r| r.leader).count() == 1)
                .then_some(replies)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_answers_and_the_commands_say_so() {
    let mut server = NatsServer::start().await;
    let _a = registry(&server, "reg-a");
    let _b = registry(&server, "reg-b");
    let client = registry_client(&server).await;
    let _agent = agent(&server);
    agent_node_id(&server, "agent").await;

    let replies = instances(&client, 2).await;
    let leader = replies.iter().find(|r| r.leader).expect("a leader");
    let standby = replies.iter().find(|r| !r.leader).expect("a standby");
    assert_eq!(leader.service, "node-registry");
    for r in &replies {
        for dep in ["jetstream", "kv", "event_stream"] {
            assert_eq!(
                r.dependencies.get(dep).map(String::as_str),
                Some("ok"),
                "{r:?}"
            );
        }
        assert_eq!(
            r.dependencies.get("nats").map(String::as_str),
            Some("connected")
        );
        assert!(r.self_preservation.is_none());
    }
    // The leader reads its consumer's backlog; a standby has none.
    let leader_name = leader.instance.clone();
    eventually("the leader's backlog figure", SOON, || async {
        let replies = client.health().await.ok()?;
        replies
            .iter()
            .find(|r| r.instance == leader_name)
            .and_then(|r| r.backlog)
    })
    .await;
    assert_eq!(standby.backlog, None);

    // The commands: nodectl's table, each instance's own check.
    let (code, out) = nodectl_health(&server.url());
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("reg-a") && out.contains("reg-b") && out.contains("leader"),
        "{out}"
    );
    for name in ["reg-a", "reg-b"] {
        let (code, out) = registry_health(&server.url(), name);
        assert_eq!(code, 0, "{out}");
        let reply: HealthReply = serde_json::from_str(out.trim()).expect("health JSON");
        assert_eq!(reply.instance, name);
    }
    // An instance nobody runs: no answer, exit 1.
    assert_eq!(registry_health(&server.url(), "reg-z").0, 1);

    // NATS down: nothing answers; the command exits 1, and so does nodectl.
    server.kill();
    let (code, out) = registry_health(&server.url(), "reg-a");
    assert_eq!(code, 1, "{out}");
    assert_ne!(nodectl_health(&server.url()).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_in_self_preservation_is_degraded_and_says_why() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "reg-a");
    let client = registry_client(&server).await;
    let _agent = agent(&server);
    agent_node_id(&server, "agent").await;
    instances(&client, 1).await;
    // The nodes bucket stops taking writes (full at its size): the leader
    // suspects itself and holds every transition.
    let js = async_nats::jetstream::new(server.client().await);
    let mut stream = js
        .get_stream(subjects::kv_stream(subjects::BUCKET_NODES))
        .await
        .expect("KV stream");
    let info = stream.info().await.expect("info").clone();
    let mut full = info.config.clone();
    full.max_bytes = i64::try_from(info.state.bytes).expect("size");
    js.update_stream(&full).await.expect("limit the KV stream");
    let degraded = eventually("the leader to report self-preservation", SOON, || async {
        let replies = client.health().await.ok()?;
        replies
            .into_iter()
            .find(|r| r.status == HealthStatus::Degraded && r.self_preservation.is_some())
    })
    .await;
    let held = degraded.self_preservation.expect("why");
    assert_eq!(held["scope"], "fleet", "{held}");
    assert!(
        held["reasons"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x == "kv_writes")),
        "{held}"
    );
    // Degraded still passes a container health check: it holds back on purpose.
    assert_eq!(registry_health(&server.url(), "reg-a").0, 0);
    // No instance is healthy: nodectl says so with its exit code.
    let (code, out) = nodectl_health(&server.url());
    assert_ne!(code, 0, "{out}");
    assert!(out.contains("degraded"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agent_health_follows_its_heartbeats() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "reg-a");
    let state = server.temp_path("agent");
    let mut agent = agent(&server);
    agent_node_id(&server, "agent").await;
    let health = |state: &std::path::Path| {
        let out = Command::new(workspace_bin("node-agent"))
            .arg("--state-dir")
            .arg(state)
            .arg("health")
            .output()
            .expect("run node-agent health");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let state_for = state.clone();
    eventually("node-agent health to pass", SOON, || {
        let state = state_for.clone();
        async move { (health(&state).0 == 0).then_some(()) }
    })
    .await;
    let (_, out) = health(&state);
    let reply: serde_json::Value = serde_json::from_str(out.trim()).expect("health JSON");
    assert_eq!(reply["status"], "healthy");
    assert_eq!(reply["dependencies"]["nats"], "connected");
    agent.kill9();
    let (code, out) = health(&state);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not running"), "{out}");
}
