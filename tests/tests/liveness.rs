//! Fast and careful liveness against a real nats-server: a crashed agent is
//! degraded when the server reports its connection closed (not after the
//! silence window), a reconnect rides that out, and the registry holds
//! transitions while its own KV writes fail.

use std::time::Duration;

use chrono::{DateTime, Utc};
use fleet_tests::{
    agent_node_id, eventually, registry_client, spawn_agent, spawn_registry, AlertTap, NatsServer,
    Proc,
};
use schemas::{Alert, DiscoverRequest};

/// Long enough that silence alone never degrades a node within a test.
const DEGRADED_AFTER: &str = "60s";
/// Generous bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(20);

fn registry(server: &NatsServer, grace: &str) -> Proc {
    spawn_registry(
        server,
        "registry",
        &[
            "--degraded-after",
            DEGRADED_AFTER,
            "--offline-after",
            "120s",
        ],
        &[
            ("NODE_REGISTRY_SWEEP_INTERVAL", "100ms"),
            ("NODE_REGISTRY_CHECKPOINT_INTERVAL", "1s"),
            ("NODE_REGISTRY_DISCONNECT_GRACE", grace),
        ],
    )
}

fn agent(server: &NatsServer, state: &str) -> Proc {
    spawn_agent(
        server,
        state,
        &[
            "--heartbeat-interval",
            "500ms",
            "--ollama-url",
            "http://127.0.0.1:9",
        ],
    )
}

fn time(text: &str) -> DateTime<Utc> {
    schemas::time::parse(text).unwrap_or_else(|| panic!("{text:?} is not an RFC 3339 time"))
}

async fn wait_online(client: &fleet_client::Client, n: usize) {
    eventually(&format!("{n} online nodes"), SOON, || async {
        let reply = client.discover(&DiscoverRequest::default()).await.ok()?;
        (reply.nodes.len() == n).then_some(())
    })
    .await;
}

/// The registry's counters, from its service stats.
async fn counters(client: &async_nats::Client) -> serde_json::Value {
    let reply = client
        .request(format!("$SRV.STATS.{}", subjects::SERVICE_NAME), "".into())
        .await
        .expect("service stats");
    let stats: serde_json::Value = serde_json::from_slice(&reply.payload).expect("stats JSON");
    stats["endpoints"][0]["data"].clone()
}

fn is_for(alert: &Alert, kind: &str, id: &str) -> bool {
    alert.r#type == kind && alert.node_id.as_deref() == Some(id)
}

#[tokio::test]
async fn a_crashed_agent_is_degraded_by_its_closed_connection_long_before_the_silence_window() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "1s");
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let mut crashing = agent(&server, "crashing");
    let _steady = agent(&server, "steady");
    let id = agent_node_id(&server, "crashing").await;
    let steady_id = agent_node_id(&server, "steady").await;
    wait_online(&client, 2).await;

    crashing.kill9();
    let degraded = alerts
        .expect("node.degraded for the crashed agent", SOON, |a| {
            is_for(a, "node.degraded", &id)
        })
        .await;
    let silence = time(&degraded.at) - time(degraded.last_heartbeat.as_deref().unwrap_or(""));
    assert!(
        silence < chrono::Duration::seconds(15),
        "degraded after {silence} of silence: the connection event was not used"
    );
    let message = degraded.message.unwrap_or_default();
    assert!(message.contains("connection closed"), "{message}");
    assert!(
        !alerts
            .seen
            .iter()
            .any(|a| is_for(a, "node.degraded", &steady_id)),
        "the steady agent was judged too"
    );
    let counted = counters(client.nats()).await;
    assert!(
        counted["connection_events"].as_u64().unwrap_or(0) >= 1,
        "{counted}"
    );
}

#[tokio::test]
async fn a_connection_kicked_by_the_server_reconnects_and_is_not_degraded() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "3s");
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let _agent = agent(&server, "a");
    let id = agent_node_id(&server, "a").await;
    wait_online(&client, 1).await;

    // Kick the agent's connection as the system account would (an operator,
    // or a server dropping a slow consumer): its process lives on and
    // reconnects at once.
    let system = async_nats::ConnectOptions::with_user_and_password("sys".into(), "sys".into())
        .connect(server.url())
        .await
        .expect("system account connection");
    let server_id = system.server_info().server_id;
    let connz = system
        .request(subjects::SYS_SERVER_PING_CONNZ, "{}".into())
        .await
        .expect("CONNZ");
    let connz: serde_json::Value = serde_json::from_slice(&connz.payload).expect("CONNZ JSON");
    let cid = connz["data"]["connections"]
        .as_array()
        .and_then(|conns| {
            conns
                .iter()
                .find(|c| c["name"].as_str() == Some(id.as_str()))
        })
        .and_then(|c| c["cid"].as_u64())
        .unwrap_or_else(|| panic!("the agent's connection in {connz}"));
    let kicked = system
        .request(
            subjects::sys_server_kick(&server_id),
            serde_json::json!({ "cid": cid }).to_string().into(),
        )
        .await
        .expect("KICK");
    let kicked: serde_json::Value = serde_json::from_slice(&kicked.payload).expect("KICK JSON");
    assert!(kicked.get("error").is_none(), "{kicked}");

    // Both advisories reach the registry; the grace (3 s) and then some pass
    // without a judgement.
    eventually("the close and the reopen to be taken in", SOON, || async {
        let counted = counters(client.nats()).await;
        (counted["connection_events"].as_u64().unwrap_or(0) >= 2).then_some(())
    })
    .await;
    let noise = alerts.collect_for(Duration::from_secs(5)).await;
    assert!(
        !noise.iter().any(|a| is_for(a, "node.degraded", &id)),
        "{noise:?}"
    );
    let record = client.get(&id).await.expect("get").expect("record");
    assert_eq!(record.status, "online");
}

#[tokio::test]
async fn failing_kv_writes_hold_transitions_until_they_succeed_again() {
    let server = NatsServer::start().await;
    let _registry = spawn_registry(
        &server,
        "registry",
        &["--degraded-after", "3s", "--offline-after", "60s"],
        &[
            ("NODE_REGISTRY_SWEEP_INTERVAL", "100ms"),
            ("NODE_REGISTRY_CHECKPOINT_INTERVAL", "500ms"),
            ("NODE_REGISTRY_DISCONNECT_GRACE", "0s"),
        ],
    );
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let mut doomed = agent(&server, "doomed");
    let _steady = agent(&server, "steady");
    let id = agent_node_id(&server, "doomed").await;
    wait_online(&client, 2).await;

    // The nodes bucket's stream stops taking writes: full at its current
    // size (it rejects, it does not trim, as a KV stream discards new).
    let js = async_nats::jetstream::new(server.client().await);
    let stream_name = subjects::kv_stream(subjects::BUCKET_NODES);
    let mut stream = js.get_stream(&stream_name).await.expect("KV stream");
    let info = stream.info().await.expect("KV stream info").clone();
    let mut full = info.config.clone();
    full.max_bytes = i64::try_from(info.state.bytes).expect("size");
    js.update_stream(&full).await.expect("limit the KV stream");

    let entered = alerts
        .expect("self-preservation for failing writes", SOON, |a| {
            a.r#type == "registry.self_preservation"
                && a.status.as_deref() == Some("entered")
                && a.figures.as_ref().is_some_and(|f| f.reason == "kv_writes")
        })
        .await;
    let figures = entered.figures.unwrap_or_default();
    assert_eq!(figures.scope, "registry");
    assert!(figures.failures.unwrap_or(0) >= 1, "{figures:?}");

    // A node dying now is not judged (3 s of silence pass, and more).
    doomed.kill9();
    let held = alerts.collect_for(Duration::from_secs(6)).await;
    assert!(
        !held.iter().any(|a| is_for(a, "node.degraded", &id)),
        "judged while writes fail: {held:?}"
    );

    // Writes work again: the registry says so and judges after a fresh window.
    let mut open = info.config.clone();
    open.max_bytes = -1;
    js.update_stream(&open).await.expect("lift the limit");
    let left = alerts
        .expect("self-preservation left", SOON, |a| {
            a.r#type == "registry.self_preservation"
                && a.status.as_deref() == Some("left")
                && a.figures.as_ref().is_some_and(|f| f.reason == "kv_writes")
        })
        .await;
    let degraded = alerts
        .expect("node.degraded after the fresh window", SOON, |a| {
            is_for(a, "node.degraded", &id)
        })
        .await;
    let after = time(&degraded.at) - time(&left.at);
    assert!(
        after >= chrono::Duration::seconds(3),
        "judged {after} after leaving: no fresh window"
    );
    stream.info().await.expect("KV stream still there");
}
