//! End to end: agents → NATS → registry → KV → discovery and alerts, against
//! a real nats-server and the real binaries.

use std::time::Duration;

use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use fleet_client::Client;
use fleet_tests::{
    agent_node_id, eventually, registry_client, spawn_agent, spawn_registry, wait_registry,
    AlertTap, FakeOllama, NatsServer, Proc,
};
use schemas::codec::{Encoding, HEADER_CONTENT_TYPE};
use schemas::{DiscoverRequest, NodeEvent, NodeRecord};

const DEGRADED_AFTER: Duration = Duration::from_secs(2);
const OFFLINE_AFTER: Duration = Duration::from_secs(4);
/// Generous bound for anything that should happen "soon": a slow CI machine
/// must not fail a test, only a broken behaviour.
const SOON: Duration = Duration::from_secs(20);

fn registry(server: &NatsServer, name: &str) -> Proc {
    spawn_registry(
        server,
        name,
        &["--degraded-after", "2s", "--offline-after", "4s"],
        &[
            ("NODE_REGISTRY_SWEEP_INTERVAL", "100ms"),
            ("NODE_REGISTRY_CHECKPOINT_INTERVAL", "1s"),
        ],
    )
}

fn agent(server: &NatsServer, state: &str, extra: &[&str]) -> Proc {
    fleet_tests::spawn_quick_agent(server, state, extra)
}

fn time(text: &str) -> DateTime<Utc> {
    fleet_tests::rfc3339(text)
}

async fn discover(client: &Client, json: &str) -> Vec<String> {
    fleet_tests::discover_ids(client, json).await
}

/// Waits until discovery (`{}`) sees `n` online nodes.
async fn wait_online(client: &Client, n: usize) {
    eventually(&format!("{n} online nodes"), SOON, || async {
        match client.discover(&DiscoverRequest::default()).await {
            Ok(reply) if reply.nodes.len() == n => Some(()),
            _ => None,
        }
    })
    .await;
}

async fn publish_raw(
    js: &async_nats::jetstream::Context,
    subject: &str,
    content_type: Option<&str>,
    payload: Vec<u8>,
) {
    let mut headers = HeaderMap::new();
    if let Some(ct) = content_type {
        headers.insert(HEADER_CONTENT_TYPE, ct);
    }
    js.publish_with_headers(subject.to_owned(), headers, payload.into())
        .await
        .expect("publish")
        .await
        .expect("stored by NODE_EVENTS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_join_and_are_found_by_capability_label_and_model() {
    let server = NatsServer::start().await;
    let ollama = FakeOllama::start(&["qwen3:8b", "mistral:7b"]).await;
    let _registry = registry(&server, "registry");
    let _gpu = spawn_agent(
        &server,
        "gpu",
        &[
            "--heartbeat-interval",
            "300ms",
            "--labels",
            "gpu,region=eu",
            "--role",
            "inference",
            "--ollama-url",
            &ollama.url,
        ],
    );
    let _eu = agent(&server, "eu", &["--labels", "region=eu,gpu=false"]);
    let _us = agent(
        &server,
        "us",
        &["--labels", "region=us", "--node-name", "laptop"],
    );
    let gpu_id = agent_node_id(&server, "gpu").await;
    let eu_id = agent_node_id(&server, "eu").await;
    let us_id = agent_node_id(&server, "us").await;
    let client = registry_client(&server).await;
    wait_online(&client, 3).await;

    assert_eq!(
        discover(&client, r#"{"capability":"gpu"}"#).await,
        vec![gpu_id.clone()]
    );
    assert_eq!(
        discover(&client, r#"{"capability":"ollama"}"#).await,
        vec![gpu_id.clone()]
    );
    assert_eq!(
        discover(&client, r#"{"model":"qwen3:8b"}"#).await,
        vec![gpu_id.clone()]
    );
    assert!(discover(&client, r#"{"model":"llama3:70b"}"#)
        .await
        .is_empty());
    let mut eu = discover(&client, r#"{"labels":{"region":"eu"},"sort":"node_id"}"#).await;
    let mut expected = vec![gpu_id.clone(), eu_id.clone()];
    expected.sort();
    eu.sort();
    assert_eq!(eu, expected);
    assert_eq!(
        discover(&client, r#"{"labels":{"region":"us"},"role":"worker"}"#).await,
        vec![us_id.clone()]
    );
    assert_eq!(
        discover(&client, r#"{"role":"inference"}"#).await,
        vec![gpu_id.clone()]
    );
    assert_eq!(discover(&client, r#"{"limit":1}"#).await.len(), 1);

    // The record has the contract's shape: in KV too, as plain JSON.
    let record = client
        .get(&us_id)
        .await
        .expect("get answers")
        .expect("known node");
    assert_eq!(record.status, "online");
    assert_eq!(record.node_name.as_deref(), Some("laptop"));
    assert_eq!(record.labels.get("region").map(String::as_str), Some("us"));
    assert!(time(&record.registered_at) <= time(&record.last_heartbeat));
    let js = async_nats::jetstream::new(server.client().await);
    let kv = js
        .get_key_value(subjects::BUCKET_NODES)
        .await
        .expect("nodes bucket");
    let raw = kv
        .get(&gpu_id)
        .await
        .expect("kv get")
        .expect("gpu record in KV");
    let value: serde_json::Value = serde_json::from_slice(&raw).expect("KV value is JSON");
    assert_eq!(value["status"], "online");
    assert_eq!(
        value["capabilities"]["models"],
        serde_json::json!(["mistral:7b", "qwen3:8b"])
    );
    assert!(
        value["capabilities"]["cpu_cores"].is_u64(),
        "counts are JSON numbers"
    );
    assert!(value["capabilities"]["tags"]
        .as_array()
        .is_some_and(|t| t.contains(&"ollama".into())));
    assert!(value["last_heartbeat"]
        .as_str()
        .is_some_and(|t| t.ends_with('Z')));

    // A model pulled into Ollama shows up after the agent is asked to reannounce.
    ollama.set_models(&["qwen3:8b", "mistral:7b", "llama3:8b"]);
    let id = subjects::NodeId::parse(&gpu_id).expect("valid id");
    let reply = client
        .nats()
        .request(subjects::node_tasks(&id), r#"{"type":"reannounce"}"#.into())
        .await
        .expect("agent answers tasks");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&reply.payload).ok(),
        Some(serde_json::json!({"ok":true}))
    );
    let found = eventually("llama3:8b to be discoverable", SOON, || async {
        let ids = discover(&client, r#"{"model":"llama3:8b"}"#).await;
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(found, vec![gpu_id]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_goes_degraded_then_offline_and_recovers_with_its_id() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "registry");
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let mut node = agent(&server, "a", &["--labels", "region=eu"]);
    let id = agent_node_id(&server, "a").await;
    alerts
        .expect("node.registered", SOON, |a| {
            a.r#type == "node.registered" && a.node_id.as_deref() == Some(&id)
        })
        .await;
    let _other = agent(&server, "b", &[]);
    wait_online(&client, 2).await;

    node.kill9();
    let degraded = alerts
        .expect("node.degraded", SOON, |a| {
            a.r#type == "node.degraded" && a.node_id.as_deref() == Some(&id)
        })
        .await;
    let silence =
        time(&degraded.at) - time(degraded.last_heartbeat.as_deref().expect("last_heartbeat"));
    assert!(
        silence >= chrono::Duration::from_std(DEGRADED_AFTER).expect("duration"),
        "degraded after only {silence}"
    );
    assert!(
        silence < chrono::Duration::seconds(10),
        "degraded only after {silence}"
    );
    assert_eq!(degraded.previous_status.as_deref(), Some("online"));
    assert_eq!(degraded.status.as_deref(), Some("degraded"));

    let offline = alerts
        .expect("node.offline", SOON, |a| {
            a.r#type == "node.offline" && a.node_id.as_deref() == Some(&id)
        })
        .await;
    let silence =
        time(&offline.at) - time(offline.last_heartbeat.as_deref().expect("last_heartbeat"));
    assert!(
        silence >= chrono::Duration::from_std(OFFLINE_AFTER).expect("duration"),
        "offline after only {silence}"
    );
    assert_eq!(offline.previous_status.as_deref(), Some("degraded"));
    assert!(
        !discover(&client, "{}").await.contains(&id),
        "offline nodes are not discovered by default"
    );
    assert_eq!(
        discover(&client, r#"{"status":"offline"}"#).await,
        vec![id.clone()]
    );

    // Same state dir: same id, back online, no second registration.
    let _node = agent(&server, "a", &["--labels", "region=eu"]);
    let online = alerts
        .expect("node.online", SOON, |a| {
            a.r#type == "node.online" && a.node_id.as_deref() == Some(&id)
        })
        .await;
    assert_eq!(online.previous_status.as_deref(), Some("offline"));
    assert_eq!(agent_node_id(&server, "a").await, id);
    let registrations = alerts
        .seen
        .iter()
        .filter(|a| a.r#type == "node.registered" && a.node_id.as_deref() == Some(&id))
        .count();
    assert_eq!(registrations, 1);
    wait_online(&client, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_deregisters_and_exits_cleanly() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "registry");
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let mut node = agent(&server, "a", &[]);
    let id = agent_node_id(&server, "a").await;
    wait_online(&client, 1).await;

    let (status, took) = node
        .terminate(Duration::from_secs(10))
        .await
        .expect("agent exits after SIGTERM");
    assert!(status.success(), "exit status {status}");
    // The agent bounds its goodbye to 1.5 s; allow for a loaded machine.
    assert!(took < Duration::from_secs(4), "took {took:?} to exit");
    let gone = alerts
        .expect("node.deregistered", SOON, |a| {
            a.r#type == "node.deregistered"
        })
        .await;
    assert_eq!(gone.node_id.as_deref(), Some(id.as_str()));
    eventually("the record to be deleted", SOON, || async {
        matches!(client.get(&id).await, Ok(None)).then_some(())
    })
    .await;
    assert!(!node.log().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_killed_and_restarted_raises_no_false_alarms() {
    let server = NatsServer::start().await;
    let mut first = registry(&server, "registry-1");
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let _steady = agent(&server, "steady", &[]);
    let mut doomed = agent(&server, "doomed", &[]);
    let steady_id = agent_node_id(&server, "steady").await;
    let doomed_id = agent_node_id(&server, "doomed").await;
    wait_online(&client, 2).await;

    first.kill9();
    // While the registry is down for longer than degraded_after, the steady
    // node keeps beating into the stream and the doomed one dies.
    doomed.kill9();
    tokio::time::sleep(DEGRADED_AFTER * 2).await;
    let _second = registry(&server, "registry-2");

    // The doomed node is judged after the grace window: degraded, not before.
    let degraded = alerts
        .expect("the dead node degraded", SOON, |a| {
            a.r#type == "node.degraded"
        })
        .await;
    assert_eq!(degraded.node_id.as_deref(), Some(doomed_id.as_str()));
    // Observe a further two windows: nothing about the steady node, and no
    // registration repeated for nodes the registry already knew.
    let more = alerts.collect_for(DEGRADED_AFTER * 2).await;
    for alert in alerts.seen.iter().chain(more.iter()) {
        assert!(
            alert.node_id.as_deref() != Some(steady_id.as_str())
                || alert.r#type == "node.registered",
            "false alarm: {alert:?}"
        );
    }
    let registrations = alerts
        .seen
        .iter()
        .filter(|a| a.r#type == "node.registered")
        .count();
    assert_eq!(registrations, 2, "one node.registered per node, ever");
    let steady = client.get(&steady_id).await.expect("get").expect("known");
    assert_eq!(steady.status, "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_events_are_rejected_and_the_registry_keeps_serving() {
    let server = NatsServer::start().await;
    let registry = registry(&server, "registry");
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let js = async_nats::jetstream::new(server.client().await);
    eventually("the registry to provision NODE_EVENTS", SOON, || async {
        js.get_stream(subjects::STREAM_NODE_EVENTS)
            .await
            .ok()
            .map(|_| ())
    })
    .await;

    let victim = r#"{"type":"register","node_id":"victim","labels":{"owner":"me"}}"#;
    publish_raw(&js, "node.victim.events", None, victim.into()).await;
    alerts
        .expect("victim registered", SOON, |a| {
            a.node_id.as_deref() == Some("victim")
        })
        .await;

    // Malformed JSON, wrong types, unknown event type, bad id, oversized,
    // spoofed id, unsupported content type, garbage protobuf.
    publish_raw(&js, "node.evil.events", None, b"{not json".to_vec()).await;
    publish_raw(
        &js,
        "node.evil.events",
        None,
        br#"{"type":"register","node_id":7}"#.to_vec(),
    )
    .await;
    publish_raw(
        &js,
        "node.evil.events",
        None,
        br#"{"type":"reboot","node_id":"evil"}"#.to_vec(),
    )
    .await;
    let huge = format!(
        r#"{{"type":"register","node_id":"evil","node_name":"{}"}}"#,
        "x".repeat(70 * 1024)
    );
    publish_raw(&js, "node.evil.events", None, huge.into_bytes()).await;
    let spoof = r#"{"type":"deregister","node_id":"victim","reason":"spoofed"}"#;
    publish_raw(&js, "node.evil.events", None, spoof.into()).await;
    let spoof = r#"{"type":"register","node_id":"victim","labels":{"owner":"evil"}}"#;
    publish_raw(&js, "node.evil.events", None, spoof.into()).await;
    publish_raw(
        &js,
        "node.evil.events",
        Some("text/yaml"),
        br#"{"type":"register","node_id":"evil"}"#.to_vec(),
    )
    .await;
    publish_raw(
        &js,
        "node.evil.events",
        Some("application/protobuf"),
        vec![0xff, 0xff, 0xff, 0xff, 0x0f],
    )
    .await;

    // Then a good event, in protobuf: it is applied, so every bad one before
    // it was consumed without stopping the worker.
    let good = NodeEvent {
        r#type: "register".into(),
        node_id: "good".into(),
        labels: [("enc".to_owned(), "protobuf".to_owned())].into(),
        ..NodeEvent::default()
    };
    let bytes = schemas::codec::encode(&good, Encoding::Protobuf);
    publish_raw(&js, "node.good.events", Some("application/protobuf"), bytes).await;
    alerts
        .expect("good registered", SOON, |a| {
            a.node_id.as_deref() == Some("good")
        })
        .await;

    let bad: Vec<_> = alerts
        .seen
        .iter()
        .filter(|a| a.node_id.as_deref() == Some("evil") || a.r#type == "node.deregistered")
        .collect();
    assert!(bad.is_empty(), "bad events raised alerts: {bad:?}");
    let victim = client
        .get("victim")
        .await
        .expect("get")
        .expect("victim still registered");
    assert_eq!(
        victim.labels.get("owner").map(String::as_str),
        Some("me"),
        "spoofed event changed another node"
    );
    assert!(client.get("evil").await.expect("get").is_none());
    let good = client.get("good").await.expect("get").expect("good known");
    assert_eq!(good.labels.get("enc").map(String::as_str), Some("protobuf"));
    let rejected = registry.log().matches("event rejected").count();
    assert_eq!(rejected, 8, "each bad event is logged with its reason");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_coded_errors_and_the_service_is_discoverable() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "registry");
    let client = registry_client(&server).await;
    wait_registry(&client).await;

    let cases = [
        (
            subjects::REGISTRY_DISCOVER,
            r#"{"capabilty":"gpu"}"#,
            400,
            "unknown field `capabilty`",
        ),
        (
            subjects::REGISTRY_DISCOVER,
            r#"{"status":"up"}"#,
            400,
            "status",
        ),
        (
            subjects::REGISTRY_DISCOVER,
            r#"{"limit":100000}"#,
            400,
            "limit",
        ),
        (subjects::REGISTRY_DISCOVER, "[1,2", 400, "invalid JSON"),
        (
            subjects::REGISTRY_LIST,
            r#"{"sort":"fastest"}"#,
            400,
            "sort",
        ),
        (
            subjects::REGISTRY_GET,
            r#"{"node_id":"Bad.Id"}"#,
            400,
            "node_id",
        ),
        (
            subjects::REGISTRY_GET,
            r#"{"node_id":"nobody"}"#,
            404,
            "no node nobody",
        ),
        (
            subjects::REGISTRY_GET,
            r#"{"id":"x"}"#,
            400,
            "unknown field `id`",
        ),
    ];
    for (subject, body, code, needle) in cases {
        let reply = client
            .request_raw(subject, body.into())
            .await
            .expect("a reply");
        let headers = reply.headers.as_ref().expect("error headers");
        let got: u16 = headers
            .get("Nats-Service-Error-Code")
            .map(|v| v.as_str().parse().expect("numeric code"))
            .expect("error code header");
        assert_eq!(got, code, "{subject} {body}");
        assert!(headers.get("Nats-Service-Error").is_some());
        let value: serde_json::Value =
            serde_json::from_slice(&reply.payload).expect("JSON error body");
        assert_eq!(value["error"]["code"], code);
        let message = value["error"]["message"].as_str().expect("message");
        assert!(message.contains(needle), "{subject} {body}: {message}");
    }

    // An empty list and a list with everything are both fine.
    let reply = client
        .request_raw(subjects::REGISTRY_LIST, "".into())
        .await
        .expect("reply");
    let value: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON");
    assert_eq!(
        value,
        serde_json::json!({"nodes": [], "total": 0, "revision": 0})
    );

    // NATS micro service discovery.
    let ping = client
        .nats()
        .request("$SRV.PING.registry", "".into())
        .await
        .expect("service answers $SRV.PING");
    let info: serde_json::Value = serde_json::from_slice(&ping.payload).expect("JSON");
    assert_eq!(info["name"], "registry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_from_an_unknown_node_brings_a_reannounce() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    // Bring up the streams with a registry, then stop it.
    let mut first = registry(&server, "registry-1");
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    first.kill9();

    // The agent registers while no registry runs; then its registration is
    // lost (purged), as if the registry's state were gone.
    let _node = agent(&server, "a", &[]);
    let id = agent_node_id(&server, "a").await;
    let stream = js
        .get_stream(subjects::STREAM_NODE_EVENTS)
        .await
        .expect("stream");
    eventually("the register event to be stored", SOON, || {
        let mut stream = stream.clone();
        async move {
            stream
                .info()
                .await
                .ok()
                .filter(|i| i.state.messages > 0)
                .map(|_| ())
        }
    })
    .await;
    stream.purge().await.expect("purge");
    let tasks = client
        .nats()
        .subscribe(format!("node.{id}.tasks"))
        .await
        .expect("tap tasks");
    // The alert tap waits until the server has both subscriptions.
    let mut alerts = AlertTap::new(client.nats()).await;

    let _second = registry(&server, "registry-2");
    let mut tasks = tasks;
    let task = tokio::time::timeout(SOON, futures::StreamExt::next(&mut tasks))
        .await
        .expect("a task in time")
        .expect("a task");
    let body: serde_json::Value = serde_json::from_slice(&task.payload).expect("JSON task");
    assert_eq!(body, serde_json::json!({"type":"reannounce"}));
    alerts
        .expect("the node registered again", SOON, |a| {
            a.r#type == "node.registered" && a.node_id.as_deref() == Some(&id)
        })
        .await;
    // Alerts are published before the record is written (so none is ever
    // lost); the record follows.
    let record: NodeRecord = eventually("the record to be written", SOON, || async {
        client.get(&id).await.ok().flatten()
    })
    .await;
    assert_eq!(record.status, "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_tasks_answer_ping_and_detect_and_refuse_the_unknown() {
    let server = NatsServer::start().await;
    let ollama = FakeOllama::start(&["qwen3:8b"]).await;
    let _node = spawn_agent(
        &server,
        "a",
        &["--heartbeat-interval", "300ms", "--ollama-url", &ollama.url],
    );
    let id = agent_node_id(&server, "a").await;
    let nats = server.client().await;
    let subject = format!("node.{id}.tasks");
    let ask = |body: &'static str| {
        let nats = nats.clone();
        let subject = subject.clone();
        async move {
            eventually("the agent to answer", SOON, || {
                let nats = nats.clone();
                let subject = subject.clone();
                async move { nats.request(subject, body.into()).await.ok() }
            })
            .await
        }
    };
    let ping: serde_json::Value =
        serde_json::from_slice(&ask(r#"{"type":"ping"}"#).await.payload).expect("JSON");
    assert_eq!(ping["node_id"], id.as_str());
    assert!(ping["uptime_s"].is_u64());
    assert!(ping["agent_version"].is_string());
    let detect: serde_json::Value =
        serde_json::from_slice(&ask(r#"{"type":"detect"}"#).await.payload).expect("JSON");
    assert_eq!(
        detect["capabilities"]["models"],
        serde_json::json!(["qwen3:8b"])
    );
    let unknown = ask(r#"{"type":"reboot"}"#).await;
    let code = unknown
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(code.as_deref(), Some("404"));
    let typo = ask(r#"{"typ":"ping"}"#).await;
    let code = typo
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Service-Error-Code"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(code.as_deref(), Some("400"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_merges_a_nodes_events_and_alerts_in_time_order() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "registry");
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let mut node = agent(&server, "a", &[]);
    let _other = agent(&server, "b", &[]);
    let id = agent_node_id(&server, "a").await;
    wait_online(&client, 2).await;
    eventually("a heartbeat's metrics in the record", SOON, || async {
        client.get(&id).await.ok().flatten().and_then(|r| r.metrics)
    })
    .await;
    node.kill9();
    alerts
        .expect("node.degraded", SOON, |a| {
            a.r#type == "node.degraded" && a.node_id.as_deref() == Some(&id)
        })
        .await;

    let query = fleet_client::AuditQuery {
        node_id: Some(id.clone()),
        since: Some(Utc::now() - chrono::Duration::minutes(5)),
        ..fleet_client::AuditQuery::default()
    };
    let entries = client.audit(&query).await.expect("audit");
    assert!(entries.iter().all(|e| e.node_id == id), "only this node");
    assert!(entries.windows(2).all(|w| w[0].at <= w[1].at), "time order");
    let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
    let pos = |k: &str| {
        kinds
            .iter()
            .position(|x| *x == k)
            .unwrap_or_else(|| panic!("{k} missing in {kinds:?}"))
    };
    assert!(pos("register") < pos("node.registered"));
    assert!(pos("node.registered") < pos("heartbeat"));
    assert!(kinds.iter().rposition(|k| *k == "heartbeat") < Some(pos("node.degraded")));

    let only = fleet_client::AuditQuery {
        types: vec!["node.degraded".into()],
        ..query
    };
    let entries = client.audit(&only).await.expect("audit");
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].source, fleet_client::AuditSource::Alert);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_server_restart_loses_nothing_and_raises_no_alarm() {
    let mut server = NatsServer::start().await;
    let registry = registry(&server, "registry");
    let a = agent(&server, "a", &["--labels", "region=eu"]);
    let b = agent(&server, "b", &[]);
    let a_id = agent_node_id(&server, "a").await;
    {
        let client = registry_client(&server).await;
        wait_online(&client, 2).await;
    }

    server.restart().await;
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    // Agents and registry reconnect on their own; the agents register again.
    eventually("discovery to answer with both nodes", SOON, || async {
        client
            .discover(&DiscoverRequest::default())
            .await
            .ok()
            .filter(|r| r.nodes.len() == 2)
            .map(|_| ())
    })
    .await;
    eventually(
        "a second register from the agent after reconnecting",
        SOON,
        || async {
            let query = fleet_client::AuditQuery {
                node_id: Some(a_id.clone()),
                since: Some(Utc::now() - chrono::Duration::minutes(5)),
                types: vec!["register".into()],
                ..fleet_client::AuditQuery::default()
            };
            client
                .audit(&query)
                .await
                .ok()
                .filter(|e| e.len() >= 2)
                .map(|_| ())
        },
    )
    .await;
    let record = client
        .get(&a_id)
        .await
        .expect("get")
        .expect("record survived");
    assert_eq!(record.labels.get("region").map(String::as_str), Some("eu"));
    let noise: Vec<_> = alerts
        .collect_for(DEGRADED_AFTER * 2)
        .await
        .into_iter()
        .filter(|a| a.r#type.starts_with("node."))
        .collect();
    assert!(
        noise.is_empty(),
        "node alerts after a server restart: {noise:?}"
    );
    // The registry said why it judged nobody meanwhile: its link was down.
    let since = Utc::now() - chrono::Duration::minutes(5);
    eventually(
        "self-preservation for the lost link, entered and left",
        SOON,
        || async {
            let stored = client.alerts(since, None).await.ok()?;
            let link: Vec<&str> = stored
                .iter()
                .filter(|a| {
                    a.figures
                        .as_ref()
                        .is_some_and(|f| f.reason == "nats_link" && f.scope == "registry")
                })
                .filter_map(|a| a.status.as_deref())
                .collect();
            (link == ["entered", "left"]).then_some(())
        },
    )
    .await;
    // The registry still consumes and judges after the restart.
    let b_id = agent_node_id(&server, "b").await;
    let mut b = b;
    b.kill9();
    alerts
        .expect("node.degraded after the restart", SOON, |a| {
            a.r#type == "node.degraded" && a.node_id.as_deref() == Some(b_id.as_str())
        })
        .await;
    drop((a, registry));
}

#[tokio::test]
async fn an_operator_cordons_uncordons_and_deregisters_a_node() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "registry");
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let mut node = agent(&server, "a", &[]);
    let id = agent_node_id(&server, "a").await;
    wait_online(&client, 1).await;

    // Cordoned: in maintenance, not discovered as online, never judged
    // (even when it dies).
    let answer = fleet_tests::admin_json(&client, "cordon", &id, None)
        .await
        .expect("cordon");
    assert_eq!(answer["status"], "maintenance", "{answer}");
    let alert = alerts
        .expect("node.maintenance", SOON, |a| {
            a.r#type == "node.maintenance" && a.node_id.as_deref() == Some(id.as_str())
        })
        .await;
    assert_eq!(alert.previous_status.as_deref(), Some("online"));
    assert!(discover(&client, "{}").await.is_empty());
    assert_eq!(
        discover(&client, r#"{"status":"maintenance"}"#).await,
        vec![id.clone()]
    );
    node.kill9();
    let quiet = alerts.collect_for(DEGRADED_AFTER * 2).await;
    assert!(
        !quiet.iter().any(|a| a.r#type == "node.degraded"),
        "a cordoned node was judged: {quiet:?}"
    );

    // Uncordoned: online (`node.resumed`: `node.online` is a return from
    // silence), judged again after a fresh window (it is dead: degraded then).
    let answer = fleet_tests::admin_json(&client, "uncordon", &id, None)
        .await
        .expect("uncordon");
    assert_eq!(answer["status"], "online", "{answer}");
    let back = alerts
        .expect("node.resumed", SOON, |a| {
            a.r#type == "node.resumed" && a.node_id.as_deref() == Some(id.as_str())
        })
        .await;
    assert_eq!(back.previous_status.as_deref(), Some("maintenance"));
    assert_eq!(back.status.as_deref(), Some("online"));
    let degraded = alerts
        .expect("node.degraded after the fresh window", SOON, |a| {
            a.r#type == "node.degraded" && a.node_id.as_deref() == Some(id.as_str())
        })
        .await;
    assert!(
        time(&degraded.at) - time(&back.at)
            >= chrono::Duration::from_std(DEGRADED_AFTER).expect("d")
    );

    // Deregistered by the operator: the record is gone, with an alert.
    let answer = fleet_tests::admin_json(&client, "deregister", &id, Some("decommissioned"))
        .await
        .expect("deregister");
    assert_eq!(answer["ok"], true, "{answer}");
    assert!(answer.get("note").is_none(), "{answer}");
    let gone = alerts
        .expect("node.deregistered", SOON, |a| {
            a.r#type == "node.deregistered" && a.node_id.as_deref() == Some(id.as_str())
        })
        .await;
    assert!(gone.message.unwrap_or_default().contains("decommissioned"));
    eventually("the record to be deleted", SOON, || async {
        client.get(&id).await.ok()?.is_none().then_some(())
    })
    .await;

    // A live node deregistered: the answer says its agent will register
    // again, and it does.
    let _live = agent(&server, "b", &[]);
    let live = agent_node_id(&server, "b").await;
    wait_online(&client, 1).await;
    let answer = fleet_tests::admin_json(&client, "deregister", &live, None)
        .await
        .expect("deregister");
    let note = answer["note"].as_str().unwrap_or_default();
    assert!(note.contains("registers again"), "{answer}");
    alerts
        .expect("node.deregistered", SOON, |a| {
            a.r#type == "node.deregistered" && a.node_id.as_deref() == Some(live.as_str())
        })
        .await;
    alerts
        .expect("the live node back", SOON, |a| {
            a.r#type == "node.registered" && a.node_id.as_deref() == Some(live.as_str())
        })
        .await;

    // Bad requests get coded errors.
    let unknown = fleet_tests::admin_json(&client, "cordon", "node-nobody", None).await;
    assert!(
        matches!(&unknown, Err(fleet_client::ClientError::Service(e)) if e.code == 404),
        "{unknown:?}"
    );
    let bad = fleet_tests::admin_json(&client, "reboot", &id, None).await;
    assert!(
        matches!(&bad, Err(fleet_client::ClientError::Service(e)) if e.code == 400),
        "{bad:?}"
    );
}

/// A server, a registry and one agent, online: (server, the processes,
/// a client, the agent's node id).
async fn one_agent_fleet() -> (NatsServer, [Proc; 2], Client, String) {
    let server = NatsServer::start().await;
    let registry = registry(&server, "registry");
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    let a = agent(&server, "a", &[]);
    let id = agent_node_id(&server, "a").await;
    wait_online(&client, 1).await;
    (server, [registry, a], client, id)
}

/// NATS does not check the reply subject a requester names, so a request
/// whose reply subject is a node's KV key (or an alert or event subject)
/// would have the registry or an agent publish into it: a record
/// overwritten, an alert or event forged. Both refuse such replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_never_go_to_a_fleet_subject() {
    let (server, _fleet, client, id) = one_agent_fleet().await;
    let nats = server.client().await;
    let js = async_nats::jetstream::new(nats.clone());
    let kv = js.get_key_value("nodes").await.expect("nodes bucket");
    let mut tap = AlertTap::new(&nats).await;
    let mut events = nats
        .subscribe(format!("node.{id}.events"))
        .await
        .expect("subscribe");
    // Discovery, get, admin and a task, each asking for its answer on a
    // fleet subject.
    let kv_subject = format!("$KV.nodes.{id}");
    let attempts: Vec<(String, String, &str)> = vec![
        (
            subjects::REGISTRY_DISCOVER.to_owned(),
            kv_subject.clone(),
            "{}",
        ),
        (
            subjects::REGISTRY_GET.to_owned(),
            subjects::SYSTEM_BROADCAST.to_owned(),
            "{}",
        ),
        (
            subjects::REGISTRY_ADMIN.to_owned(),
            kv_subject.clone(),
            "{}",
        ),
        (
            format!("node.{id}.tasks"),
            format!("node.{id}.events"),
            r#"{"type":"ping"}"#,
        ),
    ];
    for (subject, reply, body) in &attempts {
        nats.publish_with_reply(subject.clone(), reply.clone(), body.to_string().into())
            .await
            .expect("publish");
    }
    nats.flush().await.expect("flush");
    // A well-formed request still gets its answer (the services are up),
    // and by then the bad ones were handled before it.
    let reply = client
        .discover(&DiscoverRequest::default())
        .await
        .expect("discovery answers");
    assert_eq!(reply.nodes.len(), 1);
    let ping = nats
        .request(format!("node.{id}.tasks"), r#"{"type":"ping"}"#.into())
        .await
        .expect("the agent answers a ping to an inbox");
    assert!(!ping.payload.is_empty());
    let after = kv.entry(&id).await.expect("read").expect("a record");
    let record: NodeRecord = serde_json::from_slice(&after.value).expect("still a node record");
    assert_eq!(record.node_id, id, "the record was overwritten");
    let alerts = tap.collect_for(Duration::from_millis(500)).await;
    assert!(
        alerts.is_empty(),
        "nothing was published on system.broadcast: {alerts:?}"
    );
    // Only the agent's own heartbeats on its events subject: nothing that
    // is not an event.
    while let Ok(Some(message)) = tokio::time::timeout(
        Duration::from_millis(200),
        futures::StreamExt::next(&mut events),
    )
    .await
    {
        let event: NodeEvent =
            serde_json::from_slice(&message.payload).expect("only events on node.<id>.events");
        assert_eq!(event.node_id, id);
    }
}

/// A record overwritten behind the registry's back with something that is
/// not a record (what a JetStream API answer sent to `$KV.nodes.<id>` by a
/// client with JetStream rights would leave, docs/SECURITY.md) is put
/// right by the registry's next write for that node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_overwritten_behind_the_registrys_back_is_put_right() {
    let (server, _fleet, client, id) = one_agent_fleet().await;
    let js = async_nats::jetstream::new(server.client().await);
    let kv = js.get_key_value("nodes").await.expect("nodes bucket");
    kv.put(
        &id,
        r#"{"type":"io.nats.jetstream.api.v1.stream_info_response","total":0}"#.into(),
    )
    .await
    .expect("overwrite");
    let record = eventually("the record to be put right", SOON, || async {
        let entry = kv.entry(&id).await.ok()??;
        serde_json::from_slice::<NodeRecord>(&entry.value)
            .ok()
            .filter(|r| r.node_id == id)
    })
    .await;
    assert_eq!(record.status, "online");
    let reply = client
        .discover(&DiscoverRequest::default())
        .await
        .expect("discovery");
    assert_eq!(reply.nodes.len(), 1);
    assert_eq!(reply.nodes[0].node_id, id);
}
