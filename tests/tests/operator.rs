//! Operator control end to end, with the real binaries on a real
//! nats-server: a drain with a reason and a deadline that resumes by itself
//! across a registry killed with SIGKILL, `nodectl nodes --reasons`, a
//! per-GPU cordon in discovery and fit, and role profiles applied live by
//! the agents of their role only.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use fleet_client::Client;
use fleet_tests::{
    agent_node_id, eventually, registry_client, run_bin, spawn_registry, wait_registry, AlertTap,
    NatsServer, Proc,
};
use schemas::{Capabilities, DiscoverRequest, Gpu, Metrics, NodeEvent, NodeRecord};
use subjects::alert_types::*;

/// Generous bound for anything that should happen "soon": a slow CI
/// machine must not fail a test, only a broken behaviour.
const SOON: Duration = Duration::from_secs(30);

fn registry(server: &NatsServer, instance: &str) -> Proc {
    spawn_registry(
        server,
        &format!("registry-{instance}"),
        &["--degraded-after", "3s", "--offline-after", "60s"],
        &[
            ("NODE_REGISTRY_SWEEP_INTERVAL", "100ms"),
            ("NODE_REGISTRY_CHECKPOINT_INTERVAL", "1s"),
            ("NODE_REGISTRY_LEASE_TTL", "2s"),
            ("NODE_REGISTRY_INSTANCE", instance),
        ],
    )
}

fn agent(server: &NatsServer, state: &str, extra: &[&str]) -> Proc {
    fleet_tests::spawn_quick_agent(server, state, extra)
}

fn nodectl(server: &NatsServer, args: &[&str]) -> (bool, String, String) {
    let url = server.url();
    let mut all = vec!["--nats-url", url.as_str()];
    all.extend_from_slice(args);
    run_bin("nodectl", &all)
}

fn nodectl_ok(server: &NatsServer, args: &[&str]) -> String {
    let (ok, out, err) = nodectl(server, args);
    assert!(ok, "nodectl {args:?}: {err}");
    out
}

fn time(text: &str) -> DateTime<Utc> {
    fleet_tests::rfc3339(text)
}

async fn discover(client: &Client, json: &str) -> Vec<String> {
    fleet_tests::discover_ids(client, json).await
}

async fn record(client: &Client, id: &str) -> NodeRecord {
    client
        .get(id)
        .await
        .expect("get answers")
        .unwrap_or_else(|| panic!("no record of {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_for_3s_resumes_by_itself_across_a_registry_killed_in_between() {
    let server = NatsServer::start().await;
    let mut first = registry(&server, "a");
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let _node = agent(&server, "drained", &[]);
    let id = agent_node_id(&server, "drained").await;
    eventually("the node online", SOON, || async {
        (discover(&client, "{}").await == vec![id.clone()]).then_some(())
    })
    .await;

    let out = nodectl_ok(
        &server,
        &["drain", &id, "--reason", "PSU swap", "--for", "3s"],
    );
    let answer: serde_json::Value = serde_json::from_str(&out).expect("JSON answer");
    assert_eq!(answer["status"], "maintenance", "{answer}");
    let resume_at = time(
        answer["maintenance"]["resume_at"]
            .as_str()
            .expect("a deadline"),
    );
    let entered = alerts
        .expect("node.maintenance", SOON, |a| {
            a.r#type == NODE_MAINTENANCE && a.node_id.as_deref() == Some(id.as_str())
        })
        .await;
    assert_eq!(entered.reason.as_deref(), Some("PSU swap"));
    assert!(
        discover(&client, "{}").await.is_empty(),
        "drained: not discovered"
    );
    assert_eq!(
        discover(&client, r#"{"status":"maintenance"}"#).await,
        vec![id.clone()]
    );
    let reasons = nodectl_ok(&server, &["nodes", "--reasons"]);
    let line = reasons
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{id} not in\n{reasons}"));
    assert!(
        line.starts_with("PSU swap") && line.contains("maintenance"),
        "{reasons}"
    );
    assert!(
        line.contains(&schemas::time::format(resume_at)),
        "{reasons}"
    );

    // The leader dies mid-drain; another instance takes over and still
    // resumes the node at its deadline (or at once, if it has passed).
    first.kill9();
    let _second = registry(&server, "b");
    let resumed = alerts
        .expect("node.resumed", SOON, |a| {
            a.r#type == NODE_RESUMED && a.node_id.as_deref() == Some(id.as_str())
        })
        .await;
    assert!(
        time(&resumed.at) >= resume_at,
        "resumed before its deadline"
    );
    assert_eq!(resumed.status.as_deref(), Some("online"));
    assert_eq!(resumed.reason.as_deref(), Some("PSU swap"));
    eventually("the node discovered again", SOON, || async {
        (discover(&client, "{}").await == vec![id.clone()]).then_some(())
    })
    .await;
    assert!(record(&client, &id).await.maintenance.is_none());
    let later = alerts.collect_for(Duration::from_secs(2)).await;
    assert!(
        !later.iter().any(|a| a.r#type == NODE_RESUMED),
        "resumed twice: {later:?}"
    );
    assert!(
        nodectl_ok(&server, &["nodes", "--reasons"])
            .lines()
            .all(|l| !l.contains(&id)),
        "a resumed node has no reason"
    );
}

const GPU_NODE: &str = "gpu-box-9";

async fn publish(js: &jetstream::Context, event: &NodeEvent) {
    fleet_tests::publish_event(js, GPU_NODE, event).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cordoned_gpu_leaves_discovery_and_fit_while_the_node_stays_in_service() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "a");
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let js = jetstream::new(client.nats().clone());
    // A two-GPU box on the wire contract (this machine has no GPU).
    let gpu = |index: u32| Gpu {
        vendor: "nvidia".into(),
        model: "NVIDIA H100 80GB HBM3".into(),
        vram_gb: 80.0,
        index: Some(index),
        uuid: Some(format!("GPU-{index}")),
        ..Gpu::default()
    };
    publish(
        &js,
        &NodeEvent {
            r#type: "register".into(),
            node_id: GPU_NODE.into(),
            role: Some("inference".into()),
            capabilities: Some(Capabilities {
                gpus: vec![gpu(0), gpu(1)],
                ..Capabilities::default()
            }),
            seq: Some(1),
            ..NodeEvent::default()
        },
    )
    .await;
    publish(
        &js,
        &NodeEvent {
            r#type: "heartbeat".into(),
            node_id: GPU_NODE.into(),
            seq: Some(2),
            metrics: Some(Metrics {
                cpu_pct: Some(1.0),
                ..Metrics::default()
            }),
            ..NodeEvent::default()
        },
    )
    .await;
    eventually("both GPUs counted", SOON, || async {
        (discover(&client, r#"{"min_gpus":2}"#).await == vec![GPU_NODE.to_owned()]).then_some(())
    })
    .await;

    let (ok, _, err) = nodectl(
        &server,
        &["cordon", GPU_NODE, "--gpu", "5", "--reason", "typo"],
    );
    assert!(!ok && err.contains("no GPU 5"), "{err}");
    let (ok, _, err) = nodectl(&server, &["cordon", GPU_NODE, "--gpu", "1"]);
    assert!(
        !ok && err.contains("--reason"),
        "a GPU cordon needs a reason: {err}"
    );
    nodectl_ok(
        &server,
        &["cordon", GPU_NODE, "--gpu", "1", "--reason", "fan noise"],
    );
    let cordoned = alerts
        .expect("gpu.cordoned", SOON, |a| a.r#type == GPU_CORDONED)
        .await;
    assert_eq!(
        (cordoned.gpu_index, cordoned.gpu_uuid.as_deref()),
        (Some(1), Some("GPU-1"))
    );
    eventually("GPU 1 out of the figures", SOON, || async {
        discover(&client, r#"{"min_gpus":2}"#)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    // The node stays in service, with one GPU.
    assert_eq!(
        discover(&client, r#"{"min_gpus":1}"#).await,
        vec![GPU_NODE.to_owned()]
    );
    assert_eq!(
        discover(&client, r#"{"min_total_gpu_vram_gb":160}"#).await,
        Vec::<String>::new()
    );
    assert_eq!(
        discover(&client, r#"{"min_gpus":2,"gpu_health":"any"}"#).await,
        vec![GPU_NODE.to_owned()]
    );
    // Fit places on GPU 0 only, and two cards no longer fit.
    let fit: DiscoverRequest = serde_json::from_str(r#"{"fit":{"vram_gb":60}}"#).expect("request");
    let reply = client.discover(&fit).await.expect("fit answers");
    assert_eq!(reply.placements.len(), 1);
    assert_eq!(reply.placements[0].gpus, vec![0]);
    assert!(discover(&client, r#"{"fit":{"vram_gb":100,"gpus":2}}"#)
        .await
        .is_empty());
    // `nodectl get` and `nodes --reasons` show it.
    let got: NodeRecord =
        serde_json::from_str(&nodectl_ok(&server, &["get", GPU_NODE])).expect("record JSON");
    assert_eq!(got.status, "online");
    assert_eq!(got.gpu_cordons.len(), 1);
    assert_eq!(got.gpu_cordons[0].reason, "fan noise");
    let reasons = nodectl_ok(&server, &["nodes", "--reasons", "-o", "json"]);
    let rows: Vec<serde_json::Value> = reasons
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(rows.len(), 1, "{reasons}");
    assert_eq!(rows[0]["node_id"], GPU_NODE);
    assert_eq!(rows[0]["gpu"], 1);
    assert_eq!(rows[0]["reason"], "fan noise");

    nodectl_ok(&server, &["uncordon", GPU_NODE, "--gpu", "1"]);
    alerts
        .expect("gpu.uncordoned", SOON, |a| a.r#type == GPU_UNCORDONED)
        .await;
    eventually("GPU 1 back in the figures", SOON, || async {
        (discover(&client, r#"{"min_gpus":2}"#).await == vec![GPU_NODE.to_owned()]).then_some(())
    })
    .await;
}

/// Writes a profile file in the server's temp dir and returns its path.
fn profile_file(server: &NatsServer, name: &str, text: &str) -> String {
    let path = server.temp_path(name);
    std::fs::write(&path, text).expect("write profile");
    path.display().to_string()
}

/// The revision `nodectl profile set` reports.
fn set_profile(server: &NatsServer, role: &str, path: &str) -> u64 {
    let out = nodectl_ok(server, &["profile", "set", role, path]);
    out.rsplit(' ')
        .next()
        .and_then(|r| r.trim().parse().ok())
        .unwrap_or_else(|| panic!("no revision in {out:?}"))
}

/// Waits until every node of `ids` holds a record `check` accepts.
async fn wait_records(
    client: &Client,
    ids: &[String],
    what: &str,
    check: impl Fn(&NodeRecord) -> bool,
) {
    eventually(what, SOON, || async {
        for id in ids {
            match client.get(id).await {
                Ok(Some(record)) if check(&record) => {}
                _ => return None,
            }
        }
        Some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_reaches_the_agents_of_its_role_live_and_no_other() {
    let server = NatsServer::start().await;
    let _registry = registry(&server, "a");
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let _g1 = agent(
        &server,
        "gpu-1",
        &["--role", "gpu", "--labels", "region=eu"],
    );
    let _g2 = agent(&server, "gpu-2", &["--role", "gpu"]);
    let _c1 = agent(&server, "cpu-1", &["--role", "cpu"]);
    let gpus = vec![
        agent_node_id(&server, "gpu-1").await,
        agent_node_id(&server, "gpu-2").await,
    ];
    let cpu = agent_node_id(&server, "cpu-1").await;
    wait_records(
        &client,
        &[gpus.clone(), vec![cpu.clone()]].concat(),
        "registered",
        |_| true,
    )
    .await;

    // A typo is refused before anything is written.
    let typo = profile_file(&server, "typo.toml", "heartbeat = \"1s\"\n");
    let (ok, _, err) = nodectl(&server, &["profile", "set", "gpu", &typo]);
    assert!(!ok && err.contains("unknown field `heartbeat`"), "{err}");
    let (ok, _, _) = nodectl(&server, &["profile", "get", "gpu"]);
    assert!(!ok, "nothing was written");

    let first = profile_file(
        &server,
        "gpu.toml",
        r#"
heartbeat_interval = "1s"
expected_models = ["qwen3:32b"]
[labels]
tier = "pool-a"
region = "us"
[config.llm]
max_tokens = 4096
"#,
    );
    let set_at = Instant::now();
    let revision = set_profile(&server, "gpu", &first);
    wait_records(&client, &gpus, "both gpu nodes on the profile", |r| {
        r.profile_revision == Some(revision)
            && r.labels.get("tier").map(String::as_str) == Some("pool-a")
    })
    .await;
    let applied_in = set_at.elapsed();
    let g1 = record(&client, &gpus[0]).await;
    assert_eq!(g1.labels["region"], "eu", "the node's own label wins");
    assert_eq!(g1.profile_mismatch, vec!["qwen3:32b".to_owned()]);
    let g2 = record(&client, &gpus[1]).await;
    assert_eq!(
        g2.labels["region"], "us",
        "the profile's label where the node has none"
    );
    let c1 = record(&client, &cpu).await;
    assert_eq!(c1.profile_revision, None, "another role's profile");
    assert!(!c1.labels.contains_key("tier"));
    for (state, id) in [("gpu-1", &gpus[0]), ("gpu-2", &gpus[1])] {
        let file = server.temp_path(state).join("profile.json");
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).expect("profile.json")).expect("JSON");
        assert_eq!(written["revision"], revision);
        assert_eq!(written["config"]["llm"]["max_tokens"], 4096);
        // The profile task answers the same.
        let subject = subjects::node_tasks(&subjects::NodeId::parse(id).expect("id"));
        let reply = client
            .nats()
            .request(subject, r#"{"type":"profile"}"#.into())
            .await
            .expect("the agent answers");
        let answer: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON");
        assert_eq!(answer["role"], "gpu");
        assert_eq!(answer["config"], written["config"]);
    }
    // One mismatch alert each (in whichever order they come).
    for _ in &gpus {
        alerts
            .expect("node.profile_mismatch", SOON, |a| {
                a.r#type == NODE_PROFILE_MISMATCH
            })
            .await;
    }
    for id in &gpus {
        let n = alerts
            .seen
            .iter()
            .filter(|a| {
                a.r#type == NODE_PROFILE_MISMATCH && a.node_id.as_deref() == Some(id.as_str())
            })
            .count();
        assert_eq!(n, 1, "one node.profile_mismatch for {id}");
    }
    assert!(!server.temp_path("cpu-1").join("profile.json").exists());

    // A change reaches both again.
    let second = profile_file(&server, "gpu2.toml", "[labels]\ntier = \"pool-b\"\n");
    let revision = set_profile(&server, "gpu", &second);
    wait_records(&client, &gpus, "both gpu nodes on the new profile", |r| {
        r.profile_revision == Some(revision)
            && r.labels.get("tier").map(String::as_str) == Some("pool-b")
            && r.profile_mismatch.is_empty()
    })
    .await;

    // A value nodectl would refuse, written behind its back (a newer
    // nodectl's key): each node keeps the last good one and says why, once.
    let kv = jetstream::new(client.nats().clone())
        .get_key_value(subjects::BUCKET_PROFILES)
        .await
        .expect("profiles bucket");
    let bad = kv
        .put(
            "gpu",
            r#"{"labels":{"tier":"pool-c"},"gpu_fan":"max"}"#.into(),
        )
        .await
        .expect("put");
    wait_records(&client, &gpus, "both nodes say why", |r| {
        r.profile_error
            .as_deref()
            .is_some_and(|e| e.contains(&format!("revision {bad}")) && e.contains("gpu_fan"))
    })
    .await;
    for id in &gpus {
        let kept = record(&client, id).await;
        assert_eq!(kept.profile_revision, Some(revision), "the last good one");
        assert_eq!(kept.labels["tier"], "pool-b");
    }
    let failed = alerts.collect_for(Duration::from_secs(2)).await;
    for id in &gpus {
        let n = alerts
            .seen
            .iter()
            .filter(|a| {
                a.r#type == NODE_PROFILE_FAILED && a.node_id.as_deref() == Some(id.as_str())
            })
            .count();
        assert_eq!(n, 1, "one node.profile_failed for {id}: {failed:?}");
    }

    // History and list; removal takes the nodes back to their own settings.
    let history = nodectl_ok(&server, &["profile", "history", "gpu", "-o", "json"]);
    assert_eq!(history.lines().count(), 3, "{history}");
    let listed = nodectl_ok(&server, &["profile", "list"]);
    assert!(listed.lines().any(|l| l.starts_with("gpu ")), "{listed}");
    nodectl_ok(&server, &["profile", "rm", "gpu"]);
    wait_records(&client, &gpus, "both nodes without a profile", |r| {
        r.profile_revision.is_none() && !r.labels.contains_key("tier") && r.profile_error.is_none()
    })
    .await;
    assert!(!server.temp_path("gpu-1").join("profile.json").exists());
    println!("a profile set once reached both nodes of its role in {applied_in:?}");
}
