//! How far one registry goes on this machine: a first version of issue 5's
//! harness. It measures, in one run:
//! - the ceiling: raw JetStream publish rate into a stream like NODE_EVENTS;
//! - per fleet size: events/s the simulator published, the registry's
//!   consumer lag (pending events, sampled every second), registry CPU and
//!   RSS, KV writes per heartbeat, detection latency of injected crashes and
//!   false transitions;
//! - cold start: a restarted registry's time to answer with every node.
//!
//!     cargo bench -p fleet-tests --bench scale
//!
//! `SCALE_RUNS` = comma-separated `nodes@interval` (default
//! `10000@1s,100000@30s`), `SCALE_SECONDS` = length of each run (default 60).

use std::time::{Duration, Instant};

use fleet_sim::{SimConfig, Simulator};
use fleet_tests::procfs::{clock_ticks, cpu_ticks, percentile, rss_kib};
use fleet_tests::{release_bin, AlertTap, NatsServer, Proc};
use schemas::codec::{encode, Encoding};

/// Raw JetStream publish rate (acked, pipelined) into a fresh stream.
async fn ceiling(server: &NatsServer, events: usize) -> f64 {
    let js = async_nats::jetstream::new(server.client().await);
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "CEILING".into(),
        subjects: vec!["ceiling.>".into()],
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    })
    .await
    .expect("stream");
    let mut rng = fleet_sim::generate::Rng::new(9);
    let payload: bytes::Bytes = encode(
        &fleet_sim::generate::heartbeat("sim-1", 1, &mut rng),
        Encoding::Json,
    )
    .into();
    let start = Instant::now();
    let mut acks = Vec::with_capacity(2000);
    for i in 0..events {
        acks.push(
            js.publish(format!("ceiling.{}", i % 1000), payload.clone())
                .await
                .expect("publish"),
        );
        if acks.len() >= 2000 {
            for ack in acks.drain(..) {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.expect("ack");
    }
    events as f64 / start.elapsed().as_secs_f64()
}

#[derive(Debug)]
struct Run {
    nodes: u64,
    interval: Duration,
    published_per_sec: f64,
    lag_p50: u64,
    lag_p99: u64,
    cpu_pct: f64,
    rss_bytes: u64,
    kv_writes_per_heartbeat: f64,
    crashes: usize,
    detection_p50_ms: i64,
    detection_p99_ms: i64,
    false_transitions: usize,
    cold_start_s: f64,
}

async fn run(nodes: u64, interval: Duration, seconds: u64) -> Run {
    // Three missed heartbeats, as in production (90 s at 30 s), at least 5 s.
    let degraded_after = (interval * 3).max(Duration::from_secs(5));
    let server = NatsServer::start().await;
    let registry_bin = release_bin("registry-core", "node-registry");
    let spawn = |name: &str| {
        Proc::spawn(
            name,
            &registry_bin,
            &[
                "--nats-url".to_owned(),
                server.url(),
                "--degraded-after".to_owned(),
                format!("{}ms", degraded_after.as_millis()),
                "--offline-after".to_owned(),
                format!("{}ms", (degraded_after * 6).as_millis()),
            ],
            &[("RUST_LOG", "warn".to_owned())],
            server.temp_path(&format!("{name}.log")),
        )
    };
    let registry = spawn("registry");
    let client = fleet_tests::registry_client(&server)
        .await
        .with_timeout(Duration::from_secs(30));
    fleet_tests::wait_registry(&client).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let js = async_nats::jetstream::new(server.client().await);
    let mut nodes_stream = js
        .get_stream("KV_nodes")
        .await
        .expect("nodes bucket stream");
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_stream(subjects::STREAM_NODE_EVENTS)
        .await
        .expect("events stream")
        .get_consumer(subjects::CONSUMER_REGISTRY)
        .await
        .expect("registry consumer");

    // Register the fleet first (one interval), then measure a steady run
    // with crashes injected at 1 per 10 s.
    let config = SimConfig {
        nodes,
        heartbeat_interval: interval,
        crashes_per_sec: 0.1,
        duration: interval + Duration::from_secs(seconds),
        seed: 5,
        ..SimConfig::default()
    };
    let sim_js = async_nats::jetstream::new(server.client().await);
    let sim = tokio::spawn(async move { Simulator::new(config, sim_js).run().await });
    tokio::time::sleep(interval).await;
    let writes_before = nodes_stream
        .info()
        .await
        .map(|i| i.state.messages)
        .unwrap_or(0);
    let pid = registry.pid().expect("running");
    let ticks_before = cpu_ticks(pid);
    let started = Instant::now();
    let mut lag = Vec::new();
    let mut rss_max = 0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Ok(info) = consumer.info().await {
            lag.push(info.num_pending);
        }
        rss_max = rss_max.max(rss_kib(pid) * 1024);
    }
    let ticks_after = cpu_ticks(pid);
    let wall = started.elapsed().as_secs_f64();
    let report = sim.await.expect("join").expect("simulation");
    let writes = nodes_stream
        .info()
        .await
        .map(|i| i.state.messages)
        .unwrap_or(0)
        .saturating_sub(writes_before);
    lag.sort();

    // Detection latency and false transitions.
    let crash_at: std::collections::HashSet<&str> =
        report.crashes.iter().map(|c| c.node_id.as_str()).collect();
    let window = degraded_after + Duration::from_secs(5);
    let seen = alerts.collect_for(window).await;
    let mut latencies: Vec<i64> = Vec::new();
    let mut false_transitions = 0;
    let sim_end = chrono::Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
    for alert in &seen {
        if alert.r#type != "node.degraded" {
            continue;
        }
        let at = schemas::time::parse(&alert.at).unwrap_or_else(chrono::Utc::now);
        match alert.node_id.as_deref().filter(|id| crash_at.contains(id)) {
            // Beyond degraded_after, from the last heartbeat the registry saw
            // (the crash itself falls up to one interval after it).
            Some(_) => {
                let last = alert
                    .last_heartbeat
                    .as_deref()
                    .and_then(schemas::time::parse)
                    .unwrap_or(at);
                latencies.push((at - last).num_milliseconds() - degraded_after.as_millis() as i64);
            }
            None if at < sim_end => false_transitions += 1,
            None => {}
        }
    }
    latencies.sort();

    // Cold start: a fresh registry on the same KV.
    drop(registry);
    let restarted_at = Instant::now();
    let _second = spawn("registry-2");
    fleet_tests::wait_total(&client, nodes, Duration::from_secs(600)).await;
    let cold_start_s = restarted_at.elapsed().as_secs_f64();

    Run {
        nodes,
        interval,
        published_per_sec: report.events_per_sec,
        lag_p50: percentile(&lag, 0.5),
        lag_p99: percentile(&lag, 0.99),
        cpu_pct: (ticks_after - ticks_before) as f64 / clock_ticks() / wall * 100.0,
        rss_bytes: rss_max,
        kv_writes_per_heartbeat: writes as f64 / report.heartbeats.max(1) as f64,
        crashes: report.crashes.len(),
        detection_p50_ms: latencies.get(latencies.len() / 2).copied().unwrap_or(-1),
        detection_p99_ms: latencies.last().copied().unwrap_or(-1),
        false_transitions,
        cold_start_s,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = std::env::var("SCALE_RUNS").unwrap_or_else(|_| "10000@1s,100000@30s".to_owned());
    let seconds: u64 = std::env::var("SCALE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let server = NatsServer::start().await;
    let ceiling = ceiling(&server, 100_000).await;
    drop(server);
    println!(
        "raw JetStream publish ceiling: {ceiling:.0} events/s (acked, pipelined, same machine)"
    );
    let mut results = Vec::new();
    for spec in runs.split(',') {
        let Some((nodes, interval)) = spec.split_once('@') else {
            continue;
        };
        let (Ok(nodes), Ok(interval)) = (nodes.parse::<u64>(), humantime::parse_duration(interval))
        else {
            eprintln!("skipping {spec:?}: expected nodes@interval");
            continue;
        };
        results.push(run(nodes, interval, seconds).await);
    }
    println!(
        "\n{:>8} {:>8} {:>10} {:>9} {:>9} {:>7} {:>10} {:>9} {:>8} {:>9} {:>9} {:>6} {:>8}",
        "nodes",
        "interval",
        "events/s",
        "ceiling%",
        "lag p50",
        "lag p99",
        "CPU %",
        "RSS B/node",
        "KV w/hb",
        "detect50",
        "detect99",
        "false",
        "cold s"
    );
    for r in &results {
        println!(
            "{:>8} {:>8} {:>10.0} {:>9.1} {:>9} {:>7} {:>10.1} {:>9.0} {:>8.3} {:>9} {:>9} {:>6} {:>8.1}",
            r.nodes,
            humantime::format_duration(r.interval).to_string(),
            r.published_per_sec,
            r.published_per_sec / ceiling * 100.0,
            r.lag_p50,
            r.lag_p99,
            r.cpu_pct,
            r.rss_bytes as f64 / r.nodes as f64,
            r.kv_writes_per_heartbeat,
            r.detection_p50_ms,
            r.detection_p99_ms,
            r.false_transitions,
            r.cold_start_s
        );
    }
    println!("\n(lag in pending events; detection in ms beyond degraded_after (3 heartbeat intervals, at least 5 s), from the last heartbeat; {} crashes injected per run at 1 per 10 s)",
        results.first().map_or(0, |r| r.crashes));
}
