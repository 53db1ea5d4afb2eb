//! The node agent's footprint: RSS and CPU of a release agent over a few
//! minutes at a 1 s and at the default 30 s heartbeat interval, against an
//! idle NATS client of the same workspace (`nodectl alerts`) measured in the
//! same run, and the size of a heartbeat in both encodings.
//!
//!     cargo bench -p fleet-tests --bench agent_footprint
//!
//! `FOOTPRINT_SECONDS` sets the length of each run (default 150).
//! Targets: ≤ 15 MiB RSS, ≤ 0.1 % of a core at 30 s, heartbeat ≤ 300 bytes
//! as protobuf.

use std::path::Path;
use std::time::{Duration, Instant};

use fleet_tests::procfs::{clock_ticks, cpu_ticks, rss_kib};
use fleet_tests::{eventually, release_bin, spawn_registry, NatsServer, Proc};
use schemas::codec::{decode, encode, Encoding, MAX_EVENT_BYTES};
use schemas::{GpuUsage, Metrics, NodeEvent};

#[derive(Debug)]
struct Footprint {
    label: String,
    rss_max_kib: u64,
    rss_mean_kib: f64,
    cpu_pct: f64,
    seconds: f64,
}

/// Samples a running process every second for `seconds`.
async fn measure(label: &str, proc: &Proc, seconds: u64) -> Footprint {
    let pid = proc.pid().expect("running");
    let ticks = clock_ticks();
    let start_ticks = cpu_ticks(pid);
    let start = Instant::now();
    let mut rss = Vec::new();
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(rss_kib(pid));
    }
    let wall = start.elapsed().as_secs_f64();
    let used = (cpu_ticks(pid) - start_ticks) as f64 / ticks;
    Footprint {
        label: label.to_owned(),
        rss_max_kib: rss.iter().copied().max().unwrap_or(0),
        rss_mean_kib: rss.iter().sum::<u64>() as f64 / rss.len().max(1) as f64,
        cpu_pct: used / wall * 100.0,
        seconds: wall,
    }
}

fn agent(server: &NatsServer, bin: &Path, state: &str, interval: &str) -> Proc {
    let args: Vec<String> = [
        "--nats-url",
        &server.url(),
        "--state-dir",
        server.temp_path(state).to_str().expect("utf-8"),
        "--heartbeat-interval",
        interval,
        "--ollama-url",
        "http://127.0.0.1:9",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    Proc::spawn(
        state,
        bin,
        &args,
        &[("RUST_LOG", "warn".to_owned())],
        server.temp_path(&format!("{state}.log")),
    )
}

/// A heartbeat as a GPU box with a loaded model sends it.
fn gpu_box_heartbeat() -> NodeEvent {
    NodeEvent {
        r#type: "heartbeat".into(),
        node_id: "node-gpu-box-01-3f2a9c1d".into(),
        seq: Some(123_456),
        metrics: Some(Metrics {
            cpu_pct: Some(12.5),
            ram_pct: Some(40.1),
            gpu_pct: Some(63.0),
            disk_pct: Some(71.0),
            load_1m: Some(0.42),
            // Every figure an NVIDIA GPU reports since issue 15.
            gpus: vec![GpuUsage {
                index: 0,
                util_pct: Some(63.0),
                vram_used_gb: Some(9.8),
                temperature_c: Some(64.0),
                power_w: Some(212.5),
                power_limit_w: Some(300.0),
                ecc_corrected: Some(0),
                ecc_uncorrected: Some(0),
                throttle: vec!["sw_power_cap".into()],
                health: Some(schemas::GpuHealth {
                    state: "healthy".into(),
                    reasons: Vec::new(),
                }),
                ..GpuUsage::default()
            }],
        }),
        models_loaded: vec!["qwen3:8b".into()],
        services: vec!["ollama".into()],
        caps_hash: Some("3f2a9c1d5e6b7a80".into()),
        ..NodeEvent::default()
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seconds: u64 = std::env::var("FOOTPRINT_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    let agent_bin = release_bin("node-agent", "node-agent");
    let nodectl_bin = release_bin("nodectl", "nodectl");
    let server = NatsServer::start().await;
    let _registry = spawn_registry(&server, "registry", &[], &[]);
    let client = fleet_client::Client::new(server.client().await, subjects::Names::default());

    let mut results = Vec::new();
    // Baseline: an idle async-nats client of this workspace.
    let baseline = Proc::spawn(
        "nodectl",
        &nodectl_bin,
        &["--nats-url".to_owned(), server.url(), "alerts".to_owned()],
        &[],
        server.temp_path("nodectl.log"),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    results.push(
        measure(
            "baseline: idle NATS client (nodectl alerts)",
            &baseline,
            seconds.min(60),
        )
        .await,
    );
    drop(baseline);

    for (interval, state) in [("1s", "agent-1s"), ("30s", "agent-30s")] {
        let proc = agent(&server, &agent_bin, state, interval);
        let id = fleet_tests::agent_node_id(&server, state).await;
        eventually("the agent online", Duration::from_secs(30), || async {
            client
                .get(&id)
                .await
                .ok()
                .flatten()
                .filter(|r| r.status == "online")
                .map(|_| ())
        })
        .await;
        // Let start-up allocations settle before measuring.
        tokio::time::sleep(Duration::from_secs(5)).await;
        results.push(
            measure(
                &format!("node-agent, heartbeat every {interval}"),
                &proc,
                seconds,
            )
            .await,
        );
    }

    // A real heartbeat from the stream, and the same in protobuf.
    let query = fleet_client::AuditQuery {
        since: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
        types: vec!["heartbeat".into()],
        ..fleet_client::AuditQuery::default()
    };
    let beats = client.audit(&query).await.expect("audit");
    let real: NodeEvent = beats
        .last()
        .map(|e| serde_json::from_value(e.detail.clone()).expect("a heartbeat"))
        .expect("at least one heartbeat");
    let sizes = |e: &NodeEvent| {
        (
            encode(e, Encoding::Json).len(),
            encode(e, Encoding::Protobuf).len(),
        )
    };
    let (real_json, real_pb) = sizes(&real);
    let gpu = gpu_box_heartbeat();
    let (gpu_json, gpu_pb) = sizes(&gpu);
    let back: NodeEvent = decode(
        &encode(&gpu, Encoding::Protobuf),
        Encoding::Protobuf,
        MAX_EVENT_BYTES,
    )
    .expect("decode");
    assert_eq!(back, gpu);

    let machine = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    println!(
        "\nnode-agent footprint ({} cores, {machine}; {seconds} s per run)\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:<48} {:>12} {:>13} {:>12}",
        "process", "RSS max MiB", "RSS mean MiB", "CPU % core"
    );
    for r in &results {
        println!(
            "{:<48} {:>12.2} {:>13.2} {:>12.3}",
            r.label,
            r.rss_max_kib as f64 / 1024.0,
            r.rss_mean_kib / 1024.0,
            r.cpu_pct
        );
    }
    println!("\nheartbeat size             JSON bytes  protobuf bytes");
    println!("this machine (no GPU)      {real_json:>10}  {real_pb:>14}");
    println!("GPU box, 1 GPU, 1 model    {gpu_json:>10}  {gpu_pb:>14}");
    let agent_30 = results.iter().find(|r| r.label.ends_with("30s"));
    let agent_max_rss = results
        .iter()
        .filter(|r| r.label.starts_with("node-agent"))
        .map(|r| r.rss_max_kib)
        .max()
        .unwrap_or(0);
    println!("\ntargets: RSS <= 15 MiB: {} ({:.2} MiB); CPU at 30 s <= 0.1 %: {} ({:.3} %); protobuf heartbeat <= 300 B: {} ({gpu_pb} B)",
        if agent_max_rss <= 15 * 1024 { "met" } else { "MISSED" },
        agent_max_rss as f64 / 1024.0,
        if agent_30.is_some_and(|r| r.cpu_pct <= 0.1) { "met" } else { "MISSED" },
        agent_30.map_or(f64::NAN, |r| r.cpu_pct),
        if gpu_pb <= 300 { "met" } else { "MISSED" },
    );
    let json: Vec<serde_json::Value> = results
        .iter()
        .map(|r| serde_json::json!({"process": r.label, "rss_max_kib": r.rss_max_kib, "rss_mean_kib": r.rss_mean_kib, "cpu_pct_of_core": r.cpu_pct, "seconds": r.seconds}))
        .collect();
    println!(
        "\n{}",
        serde_json::json!({"runs": json, "heartbeat_bytes": {"this_machine": {"json": real_json, "protobuf": real_pb}, "gpu_box": {"json": gpu_json, "protobuf": gpu_pb}}})
    );
}
