//! Metrics as an operator's monitoring reads them: a real Prometheus
//! (Debian's, installed by scripts/prometheus.sh) scrapes a registry run
//! with `--metrics-addr`, and its HTTP API answers `fleet_nodes{status=
//! "online"}` with the number of running agents and a counter that rises.
//! The ops bundle (deploy/prometheus) passes promtool's checks and rule
//! unit tests, and the exposition passes `promtool check metrics`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use fleet_tests::{
    agent_node_id, eventually, free_port, spawn_agent, spawn_registry, wait_listening,
    workspace_root, NatsServer, Proc,
};
use serde_json::Value;

const SOON: Duration = Duration::from_secs(60);

fn tool(name: &str) -> PathBuf {
    let path = PathBuf::from(format!("/usr/bin/{name}"));
    assert!(
        path.is_file(),
        "{} not found: run scripts/prometheus.sh (installs Debian's prometheus)",
        path.display()
    );
    path
}

fn get(url: &str) -> Option<String> {
    let mut response = ureq::get(url).call().ok()?;
    response.body_mut().read_to_string().ok()
}

/// The value of a one-series instant query, if Prometheus has it.
async fn query(prometheus: &str, expr: &str) -> Option<f64> {
    let url = format!(
        "{prometheus}/api/v1/query?query={}",
        expr.replace('{', "%7B")
            .replace('}', "%7D")
            .replace('"', "%22")
            .replace('=', "%3D")
    );
    let body = tokio::task::spawn_blocking(move || get(&url))
        .await
        .ok()??;
    let answer: Value = serde_json::from_str(&body).ok()?;
    answer["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_fleet() {
    let server = NatsServer::start().await;
    let metrics_port = free_port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    let _registry = spawn_registry(
        &server,
        "registry",
        &["--metrics-addr", &metrics_addr],
        &[("NODE_REGISTRY_CHECKPOINT_INTERVAL", "1s")],
    );
    let agent_args = [
        "--heartbeat-interval",
        "300ms",
        "--labels",
        "gpu,region=eu",
        "--ollama-url",
        "http://127.0.0.1:9",
    ];
    let _a = spawn_agent(&server, "a", &agent_args);
    let _b = spawn_agent(&server, "b", &agent_args);
    let a = agent_node_id(&server, "a").await;
    agent_node_id(&server, "b").await;
    wait_listening("the registry's /metrics", metrics_port, SOON).await;

    // The exposition itself: the contract's name, per-node series, and
    // promtool's lint.
    let url = format!("http://{metrics_addr}/metrics");
    // Registration makes a node online; its per-node series come with the
    // first heartbeat that carries metrics, a beat later: wait for both.
    let node_series = format!("fleet_node_cpu_utilization_ratio{{node_id=\"{a}\"");
    let exposition = eventually("two online nodes and a's series in /metrics", SOON, || {
        let url = url.clone();
        let node_series = node_series.clone();
        async move {
            let text = tokio::task::spawn_blocking(move || get(&url))
                .await
                .ok()??;
            (text.contains("fleet_nodes{status=\"online\"} 2") && text.contains(&node_series))
                .then_some(text)
        }
    })
    .await;
    assert!(
        exposition.contains("registry_discover_duration_seconds")
            || exposition.contains("registry_events_total")
    );
    let mut lint = Command::new(tool("promtool"))
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write as _;
        let mut stdin = lint.stdin.take().expect("stdin");
        stdin
            .write_all(exposition.as_bytes())
            .expect("feed promtool");
    }
    let lint = lint.wait_with_output().expect("promtool ran");
    assert!(
        lint.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&lint.stdout),
        String::from_utf8_lossy(&lint.stderr)
    );

    // A real Prometheus scraping it every second.
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fleet-registry\n    static_configs:\n      - targets: [\"{metrics_addr}\"]\n"
        ),
    )
    .expect("write prometheus.yml");
    let web_port = free_port();
    let _prometheus = Proc::spawn(
        "prometheus",
        &tool("prometheus"),
        &[
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.path().join("data").display()),
            format!("--web.listen-address=127.0.0.1:{web_port}"),
        ],
        &[],
        dir.path().join("prometheus.log"),
    );
    let prometheus = format!("http://127.0.0.1:{web_port}");
    eventually("Prometheus to see two online nodes", SOON, || async {
        (query(&prometheus, "fleet_nodes{status=\"online\"}").await == Some(2.0)).then_some(())
    })
    .await;
    let heartbeats = "registry_events_total{type=\"heartbeat\"}";
    let first = eventually("a heartbeat count", SOON, || query(&prometheus, heartbeats)).await;
    eventually("the heartbeat count to rise", SOON, || async {
        query(&prometheus, heartbeats).await.filter(|v| *v > first)
    })
    .await;
    assert_eq!(query(&prometheus, "registry_leader").await, Some(1.0));
}

#[test]
fn the_ops_bundle_passes_promtool() {
    let root = workspace_root().join("deploy/prometheus");
    for args in [
        vec!["check", "config", "prometheus.yml"],
        vec!["check", "rules", "rules/fleet.rules.yml"],
        vec!["test", "rules", "tests/fleet.rules.test.yml"],
    ] {
        let out = Command::new(tool("promtool"))
            .args(&args)
            .current_dir(&root)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The Grafana dashboard's queries parse as PromQL (promtool checks them as
/// recording rules) and use only metrics docs/OPERATIONS.md lists.
#[test]
fn the_grafana_dashboard_queries_documented_metrics() {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("deploy/grafana/fleet.json")).expect("fleet.json");
    let dashboard: Value = serde_json::from_str(&text).expect("fleet.json is JSON");
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() >= 10, "{exprs:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let rules: String = exprs
        .iter()
        .enumerate()
        .map(|(i, e)| {
            format!(
                "      - record: grafana:panel_{i}\n        expr: {}\n",
                serde_json::to_string(e).expect("quoted")
            )
        })
        .collect();
    let file = dir.path().join("panels.yml");
    std::fs::write(
        &file,
        format!("groups:\n  - name: grafana\n    rules:\n{rules}"),
    )
    .expect("write");
    let out = Command::new(tool("promtool"))
        .args(["check", "rules"])
        .arg(&file)
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let operations =
        std::fs::read_to_string(root.join("docs/OPERATIONS.md")).expect("OPERATIONS.md");
    for expr in &exprs {
        for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if !(word.starts_with("fleet_") || word.starts_with("registry_")) {
                continue;
            }
            let base = word.strip_suffix("_bucket").unwrap_or(word);
            assert!(
                operations.contains(&format!("`{base}")),
                "{base} (in {expr}) is not in docs/OPERATIONS.md"
            );
        }
    }
}
