//! The node agent as a fleet owner installs it: capabilities kept current,
//! services, configuration reloads, `status`, the join script and the unit.

use std::process::Command;
use std::time::Duration;

use fleet_client::Client;
use fleet_tests::{
    agent_node_id, eventually, fake_systemctl, registry_client, spawn_agent, spawn_registry,
    wait_registry, workspace_bin, workspace_root, AlertTap, FakeOllama, KillOnDrop, NatsServer,
    Proc,
};
use schemas::{DiscoverRequest, NodeRecord};

const SOON: Duration = Duration::from_secs(20);

fn registry(server: &NatsServer) -> Proc {
    spawn_registry(
        server,
        "registry",
        &["--degraded-after", "5s", "--offline-after", "10s"],
        &[("NODE_REGISTRY_SWEEP_INTERVAL", "100ms")],
    )
}

async fn record_where(
    client: &Client,
    id: &str,
    what: &str,
    pred: impl Fn(&NodeRecord) -> bool,
) -> NodeRecord {
    eventually(what, SOON, || async {
        client.get(id).await.ok().flatten().filter(|r| pred(r))
    })
    .await
}

async fn discover(client: &Client, json: &str) -> Vec<String> {
    let request: DiscoverRequest = serde_json::from_str(json).expect("request JSON");
    match client.discover(&request).await {
        Ok(reply) => reply.nodes.into_iter().map(|n| n.node_id).collect(),
        Err(_) => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_pulled_into_ollama_is_discoverable_without_a_restart() {
    let server = NatsServer::start().await;
    let ollama = FakeOllama::start(&["qwen3:8b"]).await;
    let _registry = registry(&server);
    let _node = spawn_agent(
        &server,
        "a",
        &[
            "--heartbeat-interval",
            "300ms",
            "--detect-interval",
            "300ms",
            "--ollama-url",
            &ollama.url,
        ],
    );
    let id = agent_node_id(&server, "a").await;
    let client = registry_client(&server).await;
    let record = record_where(&client, &id, "the node with its models", |r| {
        r.capabilities
            .as_ref()
            .is_some_and(|c| c.models == ["qwen3:8b"])
    })
    .await;
    let caps = record.capabilities.expect("capabilities");
    assert!(caps.tags.contains(&"ollama".to_owned()));
    let details = caps.ollama.expect("ollama details");
    assert_eq!(details.version, "0.6.2");
    assert_eq!(details.models[0].size_bytes, 5_000_000_000);
    assert!(record.caps_hash.is_some());

    ollama.set_models(&["qwen3:8b", "llama3:8b"]);
    let found = eventually("llama3:8b in discovery", SOON, || async {
        let ids = discover(&client, r#"{"model":"llama3:8b"}"#).await;
        (!ids.is_empty()).then_some(ids)
    })
    .await;
    assert_eq!(found, vec![id.clone()]);

    // Loading a model shows in the record's models_loaded via heartbeats.
    ollama.set_loaded(&["llama3:8b"]);
    record_where(&client, &id, "models_loaded", |r| {
        r.models_loaded == ["llama3:8b"]
    })
    .await;

    // A model removed disappears too.
    ollama.set_models(&["llama3:8b"]);
    eventually("qwen3:8b gone from discovery", SOON, || async {
        discover(&client, r#"{"model":"qwen3:8b"}"#)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rereads_the_config_file_and_registers_the_change() {
    let server = NatsServer::start().await;
    let _registry = registry(&server);
    let config = server.temp_path("agent.toml");
    let up = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("addr");
    let write = |labels: &str| {
        let text = format!(
            "labels = \"{labels}\"\nheartbeat_interval = \"300ms\"\nollama_url = \"http://127.0.0.1:9\"\n\
             [[services]]\nname = \"vllm\"\naddress = \"{}\"\n\
             [[services]]\nname = \"comfyui\"\naddress = \"{}\"\n",
            up.local_addr().expect("addr"),
            down
        );
        std::fs::write(&config, text).expect("write config");
    };
    write("region=eu");
    let node = spawn_agent(
        &server,
        "a",
        &["--config", config.to_str().expect("utf-8 path")],
    );
    let id = agent_node_id(&server, "a").await;
    let client = registry_client(&server).await;
    let record = record_where(&client, &id, "services reported", |r| {
        !r.services.is_empty()
    })
    .await;
    assert_eq!(record.services, vec!["vllm"], "only the service that is up");
    assert_eq!(record.labels.get("region").map(String::as_str), Some("eu"));

    write("region=us,tier=edge");
    node.signal("HUP");
    let record = record_where(&client, &id, "the new labels", |r| {
        r.labels.get("region").map(String::as_str) == Some("us")
    })
    .await;
    assert_eq!(record.labels.get("tier").map(String::as_str), Some("edge"));
    assert_eq!(
        discover(&client, r#"{"labels":{"region":"us"}}"#).await,
        vec![id]
    );

    // A broken file is refused and the agent keeps running as it was.
    std::fs::write(&config, "labels = [1, 2").expect("write");
    node.signal("HUP");
    let client2 = client.clone();
    let nats = client2.nats().clone();
    let subject = format!("node.{}.tasks", agent_node_id(&server, "a").await);
    let pong = eventually("the agent to still answer", SOON, || {
        let nats = nats.clone();
        let subject = subject.clone();
        async move {
            nats.request(subject, r#"{"type":"ping"}"#.into())
                .await
                .ok()
        }
    })
    .await;
    assert!(String::from_utf8_lossy(&pong.payload).contains("uptime_s"));
    assert!(node.log().contains("configuration not reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heartbeat_carrying_another_caps_hash_brings_a_reannounce() {
    let server = NatsServer::start().await;
    let _registry = registry(&server);
    let nats = server.client().await;
    let js = async_nats::jetstream::new(nats.clone());
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    let mut tasks = nats.subscribe("node.hashy.tasks").await.expect("tap tasks");
    nats.flush().await.expect("flush");
    let register = r#"{"type":"register","node_id":"hashy","caps_hash":"00000000000000aa"}"#;
    js.publish("node.hashy.events", register.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    record_where(&client, "hashy", "the record", |r| {
        r.caps_hash.as_deref() == Some("00000000000000aa")
    })
    .await;
    let beat = r#"{"type":"heartbeat","node_id":"hashy","caps_hash":"00000000000000bb"}"#;
    js.publish("node.hashy.events", beat.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let task = tokio::time::timeout(SOON, futures::StreamExt::next(&mut tasks))
        .await
        .expect("a task in time")
        .expect("a task");
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&task.payload).ok(),
        Some(serde_json::json!({"type":"reannounce"}))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protobuf_agent_is_a_full_member() {
    let server = NatsServer::start().await;
    let _registry = registry(&server);
    let _node = spawn_agent(
        &server,
        "a",
        &[
            "--encoding",
            "protobuf",
            "--heartbeat-interval",
            "300ms",
            "--labels",
            "enc=pb",
            "--ollama-url",
            "http://127.0.0.1:9",
        ],
    );
    let id = agent_node_id(&server, "a").await;
    let client = registry_client(&server).await;
    let record = record_where(&client, &id, "metrics from protobuf heartbeats", |r| {
        r.metrics.is_some()
    })
    .await;
    assert_eq!(record.labels.get("enc").map(String::as_str), Some("pb"));
    let query = fleet_client::AuditQuery {
        node_id: Some(id),
        since: Some(chrono::Utc::now() - chrono::Duration::minutes(5)),
        types: vec!["heartbeat".into()],
        ..fleet_client::AuditQuery::default()
    };
    let beats = client
        .audit(&query)
        .await
        .expect("audit decodes protobuf events");
    assert!(!beats.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agent_status_says_how_the_registry_sees_the_node() {
    let server = NatsServer::start().await;
    let state = server.temp_path("a");
    let status = || {
        Command::new(workspace_bin("node-agent"))
            .args([
                "status",
                "--nats-url",
                &server.url(),
                "--state-dir",
                state.to_str().expect("utf-8"),
            ])
            .env_remove("NATS_URL")
            .output()
            .expect("node-agent status runs")
    };
    let before = status();
    assert_eq!(before.status.code(), Some(1), "no id yet");
    assert!(String::from_utf8_lossy(&before.stderr).contains("no id yet"));

    let _registry = registry(&server);
    let _node = spawn_agent(
        &server,
        "a",
        &[
            "--heartbeat-interval",
            "300ms",
            "--ollama-url",
            "http://127.0.0.1:9",
        ],
    );
    let id = agent_node_id(&server, "a").await;
    let online = eventually("status to say online", SOON, || async {
        let out = status();
        (out.status.code() == Some(0)).then_some(out)
    })
    .await;
    let record: NodeRecord =
        serde_json::from_slice(&online.stdout).expect("status prints the record");
    assert_eq!(record.node_id, id);
    assert_eq!(record.status, "online");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_script_installs_starts_and_waits_until_online() {
    let server = NatsServer::start().await;
    let _registry = registry(&server);
    let client = registry_client(&server).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("root");
    let log = dir.path().join("systemctl.log");
    let pidfile = dir.path().join("agent.pid");
    let systemctl = fake_systemctl(dir.path(), &log, &pidfile);
    let _cleanup = KillOnDrop(pidfile.clone());

    let script = workspace_root().join("deploy/join-network.sh");
    let url = server.url();
    let binary = workspace_bin("node-agent");
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(script)
            .args([
                "--nats-url",
                &url,
                "--role",
                "inference",
                "--labels",
                "gpu,region=eu",
                "--node-name",
                "joined",
            ])
            .args(["--binary", binary.to_str().expect("utf-8")])
            .args(["--prefix", root.to_str().expect("utf-8")])
            .args([
                "--systemctl",
                systemctl.to_str().expect("utf-8"),
                "--timeout",
                "30",
            ])
            .env_remove("NATS_URL")
            .output()
            .expect("join script runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "join failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout
        .lines()
        .last()
        .expect("the id is the last line")
        .trim()
        .to_owned();
    assert!(subjects::NodeId::parse(&id).is_ok(), "{id:?}");
    assert!(stdout.contains(&format!("joined: node {id} is online")));

    let root = dir.path().join("root");
    let config =
        std::fs::read_to_string(root.join("etc/node-agent/config.toml")).expect("config written");
    assert!(config.contains(&format!("nats_url = \"{}\"", server.url())));
    assert!(config.contains("labels = \"gpu,region=eu\""));
    let unit =
        std::fs::read_to_string(root.join("etc/systemd/system/node-agent.service")).expect("unit");
    assert!(unit.contains(&format!(
        "ExecStart={}/usr/local/bin/node-agent --config",
        root.display()
    )));
    let calls = std::fs::read_to_string(&log).expect("systemctl called");
    assert_eq!(
        calls.lines().collect::<Vec<_>>(),
        vec!["daemon-reload", "enable --now node-agent.service"]
    );

    let record = client.get(&id).await.expect("get").expect("known");
    assert_eq!(record.role.as_deref(), Some("inference"));
    assert_eq!(record.node_name.as_deref(), Some("joined"));
    assert_eq!(record.labels.get("gpu").map(String::as_str), Some("true"));
    alerts
        .expect("node.registered", SOON, |a| {
            a.r#type == "node.registered" && a.node_id.as_deref() == Some(id.as_str())
        })
        .await;
}

#[test]
fn the_join_script_refuses_bad_input_and_dry_run_changes_nothing() {
    let script = workspace_root().join("deploy/join-network.sh");
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("root");
    let run = |args: &[&str]| {
        Command::new("bash")
            .arg(&script)
            .args(args)
            .args([
                "--binary",
                workspace_bin("node-agent").to_str().expect("utf-8"),
            ])
            .args(["--prefix", root.to_str().expect("utf-8")])
            .output()
            .expect("join script runs")
    };
    let missing = run(&[]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("--nats-url is required"));
    let quote = run(&["--nats-url", "nats://x:4222", "--labels", "a=\"b\""]);
    assert!(!quote.status.success());
    assert!(String::from_utf8_lossy(&quote.stderr).contains("--labels"));
    let dry = run(&["--nats-url", "nats://x:4222", "--dry-run"]);
    assert!(dry.status.success());
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(text.contains("would run: systemctl enable --now node-agent.service"));
    assert!(!root.exists(), "a dry run writes nothing");
}

#[test]
fn the_systemd_units_pass_systemd_analyze_verify() {
    let dir = tempfile::tempdir().expect("tmp");
    for (unit, binary) in [
        ("node-agent.service", "node-agent"),
        ("node-registry.service", "node-registry"),
    ] {
        let text = std::fs::read_to_string(workspace_root().join("deploy/systemd").join(unit))
            .expect("unit");
        // verify checks that ExecStart exists: point it at the built binary.
        let text = text.replace(
            &format!("/usr/local/bin/{binary}"),
            workspace_bin(binary).to_str().expect("utf-8"),
        );
        let path = dir.path().join(unit);
        std::fs::write(&path, &text).expect("write");
        let out = Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
            .expect("systemd-analyze is installed (Debian package systemd)");
        let stderr = String::from_utf8_lossy(&out.stderr);
        let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains(unit)).collect();
        assert!(
            out.status.success() && warnings.is_empty(),
            "{unit}: {stderr}"
        );
        assert!(text.contains("DynamicUser=yes") && text.contains("ProtectSystem=strict"));
        assert!(text.contains("Restart=on-failure"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_started_before_nats_joins_once_the_server_is_up() {
    let port = fleet_tests::free_port();
    let state = tempfile::tempdir().expect("tmp");
    let mut node = Proc::spawn(
        "early-agent",
        &workspace_bin("node-agent"),
        &[
            "--nats-url".to_owned(),
            format!("nats://127.0.0.1:{port}"),
            "--state-dir".to_owned(),
            state.path().display().to_string(),
            "--heartbeat-interval".to_owned(),
            "300ms".to_owned(),
            "--ollama-url".to_owned(),
            "http://127.0.0.1:9".to_owned(),
        ],
        &[],
        state.path().join("agent.log"),
    );
    // Nothing listens yet; the agent retries without a busy loop.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let server = NatsServer::start_on(port, "").await;
    let _registry = registry(&server);
    let client = registry_client(&server).await;
    let id = eventually("the agent's id", SOON, || async {
        std::fs::read_to_string(state.path().join("node_id"))
            .ok()
            .map(|s| s.trim().to_owned())
    })
    .await;
    record_where(&client, &id, "the early agent online", |r| {
        r.status == "online"
    })
    .await;
    let (status, _) = node
        .terminate(Duration::from_secs(10))
        .await
        .expect("exits");
    assert!(status.success());
}
