//! How far one registry goes on this machine (issue 5). In one run it
//! measures, and prints as a table and as JSON:
//! - the ceiling: raw JetStream publish rate (acked, pipelined) into a stream
//!   like `NODE_EVENTS`;
//! - the ingest ceiling: how fast a registry works off a backlog of
//!   heartbeats (events/s), and its ratio to the ceiling;
//! - per fleet size (`nodes@interval`): events/s published, consumer lag
//!   (age of the oldest unprocessed event, sampled every second, p50/p99 in
//!   seconds), registry CPU (% of one core) and RSS (bytes per node), KV
//!   writes per heartbeat, detection latency of injected crashes beyond
//!   `degraded_after`, false transitions, and cold start (a restarted
//!   registry's time to answer with every node in KV); and, printed only,
//!   whether every node has a record at the end (the simulator's failed
//!   publishes, the registry's loss warnings and `reannounce`s).
//!
//! It also draws lag and CPU against fleet size into `scale.png`.
//!
//!     cargo bench -p fleet-tests --bench scale
//!
//! Knobs: `SCALE_RUNS` = comma-separated `nodes@interval` (default
//! `10000@30s,100000@30s,1000000@30s`), `SCALE_SECONDS` = measured length of
//! each run (default 60), `SCALE_ENCODING` = `json` (default) or
//! `protobuf`, `SCALE_INGEST_NODES` (default 100000, 0 to skip),
//! `SCALE_STORM_NODES` (default 100000, 0 to skip: that many nodes at 30 s
//! register again within 3 s), `SCALE_OUT` = folder for `scale.json` and `scale.png` (default
//! `target/scale`; a run spec ending in `+metrics` runs the registry with
//! `--metrics-addr` and scrapes it every 15 s), `SCALE_MERGE` = comma-separated `scale.json` files of
//! earlier runs to draw in the same plot, `SCALE_SETTLE_MAX` = seconds to
//! wait for the registration backlog (default 600), `SCALE_PERF=<folder>`
//! to record `perf` profiles of the registry and nats-server
//! (`SCALE_PERF_GRAPH=dwarf` for whole stacks of the registry).

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, consumer::PullConsumer};
use fleet_sim::{SimConfig, Simulator};
use fleet_tests::procfs::{clock_ticks, cpu_ticks, percentile, rss_kib};
use fleet_tests::{release_bin, AlertLog, NatsServer, Proc};
use schemas::codec::{encode, Encoding, HEADER_CONTENT_TYPE};
use serde::Serialize;

#[path = "scale/storm.rs"]
mod storm;
use storm::{storm, Storm};

/// Raw JetStream publish rate (acked, pipelined) into a fresh stream.
async fn ceiling(server: &NatsServer, events: usize) -> f64 {
    let js = jetstream::new(server.client().await);
    js.create_stream(jetstream::stream::Config {
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
    let messages = (0..events).map(|i| (format!("ceiling.{}", i % 1000), None, payload.clone()));
    publish_pipelined(&js, messages).await;
    events as f64 / start.elapsed().as_secs_f64()
}

/// Publishes every message with up to 2 000 acks awaited together.
async fn publish_pipelined(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = (String, Option<async_nats::HeaderMap>, bytes::Bytes)>,
) {
    let mut acks = Vec::with_capacity(2000);
    for (subject, headers, payload) in messages {
        let ack = match headers {
            Some(headers) => js.publish_with_headers(subject, headers, payload).await,
            None => js.publish(subject, payload).await,
        };
        acks.push(ack.expect("publish"));
        if acks.len() >= 2000 {
            for ack in acks.drain(..) {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.expect("ack");
    }
}

/// The release registry, built once: a restart's timing must not include
/// cargo checking that it is up to date (0.4 s on an idle machine, more
/// with the fleet running; every cold start measured before the image
/// snapshot included it).
fn registry_bin() -> &'static std::path::Path {
    static BIN: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| release_bin("node-registry", "node-registry"))
}

/// The registry under test, as a release process.
fn spawn_registry(
    server: &NatsServer,
    name: &str,
    degraded_after: Duration,
    metrics: Option<u16>,
) -> Proc {
    let mut args = vec![
        "--nats-url".to_owned(),
        server.url(),
        "--degraded-after".to_owned(),
        format!("{}ms", degraded_after.as_millis()),
        "--offline-after".to_owned(),
        format!("{}ms", (degraded_after * 6).as_millis()),
    ];
    if let Some(port) = metrics {
        args.push("--metrics-addr".to_owned());
        args.push(format!("127.0.0.1:{port}"));
    }
    Proc::spawn(
        name,
        registry_bin(),
        &args,
        // The warnings, and the registry's own steps at info: its start,
        // leadership, the read index (snapshots written and read) and the
        // event stream's growths; not the worker's line per alert.
        &[(
            "RUST_LOG",
            "warn,node_registry=info,node_registry::worker=warn,node_registry::worker::stream_keeper=info"
                .to_owned(),
        )],
        server.temp_path(&format!("{name}.log")),
    )
}

/// A fresh nats-server with a release registry on it, answering.
async fn start(
    degraded_after: Duration,
    metrics: Option<u16>,
) -> (NatsServer, Proc, fleet_client::Client) {
    let server = NatsServer::start().await;
    let registry = spawn_registry(&server, "registry", degraded_after, metrics);
    let client = fleet_tests::registry_client(&server)
        .await
        .with_timeout(Duration::from_secs(30));
    fleet_tests::wait_registry(&client).await;
    (server, registry, client)
}

async fn registry_consumer(js: &jetstream::Context) -> PullConsumer {
    js.get_stream(subjects::STREAM_NODE_EVENTS)
        .await
        .expect("events stream")
        .get_consumer(subjects::CONSUMER_REGISTRY)
        .await
        .expect("registry consumer")
}

/// One lag sample: events not yet processed, and the age in seconds of the
/// oldest of them (0 when there are none).
async fn lag(js: &jetstream::Context, consumer: &mut PullConsumer) -> Option<(u64, f64)> {
    let info = consumer.info().await.ok()?;
    let waiting = info.num_pending + info.num_ack_pending as u64;
    if waiting == 0 {
        return Some((0, 0.0));
    }
    let oldest = info.ack_floor.stream_sequence + 1;
    let stream = js.get_stream(subjects::STREAM_NODE_EVENTS).await.ok()?;
    let message = stream.get_raw_message(oldest).await.ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let age = (now - message.time.timestamp_millis()).max(0) as f64 / 1e3;
    Some((waiting, age))
}

/// Waits until the registry has worked off its backlog; returns how long
/// that took.
async fn settle(js: &jetstream::Context, consumer: &mut PullConsumer, limit: Duration) -> f64 {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some((_, age)) = lag(js, consumer).await {
            if age < 1.0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    start.elapsed().as_secs_f64()
}

/// With `SCALE_PERF=<folder>`, records a CPU profile of `pid` for
/// `seconds` into `<folder>/<name>.data` (read it with `perf report -i`).
/// The registry's call graphs are read from frame pointers unless
/// `SCALE_PERF_GRAPH` names another `perf record --call-graph` mode
/// (`dwarf`: whole stacks from a release build without frame pointers).
fn profile(pid: u32, name: &str, seconds: u64) -> Option<std::process::Child> {
    let dir = std::env::var("SCALE_PERF").ok()?;
    let _ = std::fs::create_dir_all(&dir);
    let graph = match std::env::var("SCALE_PERF_GRAPH") {
        Ok(mode) if name.starts_with("registry") => mode,
        _ => "fp".to_owned(),
    };
    std::process::Command::new("perf")
        .args([
            "record",
            "-F",
            "499",
            "--call-graph",
            &graph,
            "-p",
            &pid.to_string(),
            "-o",
        ])
        .arg(format!("{dir}/{name}.data"))
        .args(["--", "sleep", &seconds.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| eprintln!("perf: {e}"))
        .ok()
}

fn encoding() -> Encoding {
    match std::env::var("SCALE_ENCODING").as_deref() {
        Ok("protobuf") => Encoding::Protobuf,
        _ => Encoding::Json,
    }
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct Run {
    nodes: u64,
    /// Whether the registry exported metrics (scraped every 15 s).
    #[serde(default)]
    metrics: bool,
    interval_s: f64,
    encoding: String,
    /// Time for the registry to work off the registration backlog.
    settle_s: f64,
    events_per_sec: f64,
    lag_p50_s: f64,
    lag_p99_s: f64,
    lag_max_s: f64,
    pending_p99: u64,
    cpu_pct: f64,
    /// nats-server's CPU over the same window (% of one core).
    server_cpu_pct: f64,
    /// This bench's own CPU over the same window (% of one core): the
    /// simulated fleet publishing, and the measuring. It shares the two
    /// cores with the registry and nats-server.
    #[serde(default)]
    generator_cpu_pct: f64,
    rss_bytes: u64,
    rss_bytes_per_node: f64,
    kv_writes_per_heartbeat: f64,
    /// Crashes of the measured window that were detected (those of the
    /// registration wave are printed apart).
    crashes: usize,
    detection_p50_ms: i64,
    detection_p99_ms: i64,
    false_transitions: usize,
    cold_start_s: f64,
    /// The measured window second by second: where the backlog's spikes
    /// fall against the processes' CPU and the registry's KV writes.
    #[serde(default)]
    timeline: Vec<Sample>,
}

/// One second of a run's window.
#[derive(Debug, Serialize, serde::Deserialize)]
struct Sample {
    /// Seconds since the window began.
    t_s: f64,
    /// Events not yet processed.
    pending: u64,
    /// Age of the oldest of them.
    lag_s: f64,
    /// The registry's CPU over the second before (% of one core).
    registry_cpu_pct: f64,
    /// nats-server's CPU over the second before (% of one core).
    server_cpu_pct: f64,
    /// Records written to `nodes` in the second before.
    kv_writes: u64,
}

async fn run(nodes: u64, interval: Duration, seconds: u64, metrics: bool) -> Run {
    // Three missed heartbeats, as in production (90 s at 30 s), at least 5 s.
    let degraded_after = (interval * 3).max(Duration::from_secs(5));
    let metrics_port = metrics.then(fleet_tests::free_port);
    let (server, registry, client) = start(degraded_after, metrics_port).await;
    // Read all the time: the registration wave's million `node.registered`
    // would overflow a subscription read only at the end.
    let alerts = AlertLog::start(&server.url(), &["node.degraded", "node.offline"]).await;
    let js = jetstream::new(server.client().await);
    let mut nodes_stream = js
        .get_stream(subjects::kv_stream(subjects::BUCKET_NODES))
        .await
        .expect("nodes bucket stream");
    let mut consumer = registry_consumer(&js).await;

    // Register the fleet (over one interval), let the registry work off the
    // registrations and the first metrics, then measure a steady run with
    // crashes injected at 1 per 10 s.
    let settle_limit = Duration::from_secs(
        std::env::var("SCALE_SETTLE_MAX")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(600),
    );
    let config = SimConfig {
        nodes,
        heartbeat_interval: interval,
        crashes_per_sec: 0.1,
        encoding: encoding(),
        // The wave, the settling, the window, and the judging of its last crashes.
        duration: interval * 2
            + settle_limit
            + Duration::from_secs(seconds)
            + degraded_after
            + Duration::from_secs(30)
            // The cold start, with the fleet running.
            + Duration::from_secs(600),
        seed: 5,
        ..SimConfig::default()
    };
    let sim_js = jetstream::new(server.client().await);
    // The registry's log lines below carry times: this is the wave's start.
    println!("  the simulated fleet starts at {}", chrono::Utc::now());
    let simulator = std::sync::Arc::new(Simulator::new(config, sim_js));
    let sim = {
        let simulator = simulator.clone();
        tokio::spawn(async move { simulator.run().await })
    };
    tokio::time::sleep(interval * 2).await;
    let settle_s = settle(&js, &mut consumer, settle_limit).await + (interval * 2).as_secs_f64();
    println!("  {nodes} nodes registered and worked off in {settle_s:.0} s; measuring {seconds} s");
    // Crashes before this were judged during the registration wave, while
    // the registry was behind by design: they are not the steady run's.
    let measured_from = chrono::Utc::now();

    let sequence = |info: &jetstream::stream::Info| info.state.last_sequence;
    let writes_before = nodes_stream.info().await.map(sequence).unwrap_or(0);
    let published_before = simulator.published();
    let pid = registry.pid().expect("running");
    let ticks_before = cpu_ticks(pid);
    let server_pid = server.pid().expect("server running");
    let server_ticks_before = cpu_ticks(server_pid);
    let generator_ticks_before = cpu_ticks(std::process::id());
    let profiles = [
        profile(pid, &format!("registry-{nodes}"), seconds.min(30)),
        profile(server_pid, &format!("nats-server-{nodes}"), seconds.min(30)),
    ];
    // With metrics: scraped every 15 s, as Prometheus would, during the
    // measured window (the collection's cost is part of what is measured).
    let scrapes = metrics_port.map(|port| {
        let url = format!("http://127.0.0.1:{port}/metrics");
        tokio::spawn(async move {
            let mut sizes = Vec::new();
            loop {
                let url = url.clone();
                let started = Instant::now();
                let size = tokio::task::spawn_blocking(move || {
                    ureq::get(&url)
                        .call()
                        .ok()
                        .and_then(|mut r| r.body_mut().read_to_string().ok())
                        .map_or(0, |b| b.len())
                })
                .await
                .unwrap_or(0);
                sizes.push((size, started.elapsed()));
                tokio::time::sleep(Duration::from_secs(15)).await;
                if sizes.len() > 1000 {
                    break sizes;
                }
            }
        })
    });
    let started = Instant::now();
    let window_wall = chrono::Utc::now();
    let mut ages = Vec::new();
    let mut pending = Vec::new();
    let mut rss_max = 0;
    let mut timeline = Vec::new();
    let mut last = (
        Instant::now(),
        ticks_before,
        server_ticks_before,
        writes_before,
    );
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if let Some((waiting, age)) = lag(&js, &mut consumer).await {
            pending.push(waiting);
            ages.push((age * 1000.0) as u64);
            let now = (
                Instant::now(),
                cpu_ticks(pid),
                cpu_ticks(server_pid),
                nodes_stream.info().await.map(sequence).unwrap_or(last.3),
            );
            let pct =
                |ticks: u64| ticks as f64 / clock_ticks() / (now.0 - last.0).as_secs_f64() * 100.0;
            timeline.push(Sample {
                t_s: started.elapsed().as_secs_f64(),
                pending: waiting,
                lag_s: age,
                registry_cpu_pct: pct(now.1.saturating_sub(last.1)),
                server_cpu_pct: pct(now.2.saturating_sub(last.2)),
                kv_writes: now.3.saturating_sub(last.3),
            });
            last = now;
        }
        rss_max = rss_max.max(rss_kib(pid) * 1024);
    }
    let ticks_after = cpu_ticks(pid);
    if let Some(scrapes) = scrapes {
        scrapes.abort();
        println!("  metrics on: /metrics scraped every 15 s during the window");
    }
    let server_ticks = cpu_ticks(server_pid) - server_ticks_before;
    let generator_ticks = cpu_ticks(std::process::id()) - generator_ticks_before;
    let wall = started.elapsed().as_secs_f64();
    let published = simulator.published() - published_before;
    let heartbeats = published.heartbeats.max(1);
    let writes = nodes_stream
        .info()
        .await
        .map(sequence)
        .unwrap_or(0)
        .saturating_sub(writes_before);
    // The alerts of the window's last crashes are still to come. The fleet
    // runs on while they are judged, and through the cold start below:
    // stopped, all of it would go degraded a little later, and a cold start
    // then would be measured against a million transitions being written.
    let window = degraded_after + Duration::from_secs(5);
    tokio::time::sleep(window).await;
    let seen = alerts.kept();
    let sim_end = chrono::Utc::now();
    println!(
        "  alerts read: {} ({} degraded or offline); slow-consumer reports on the alert subscription: {}",
        alerts.read(),
        seen.len(),
        alerts.slow_consumer_reports()
    );
    ages.sort();
    pending.sort();
    println!(
        "  measured: {:.0} events/s, lag p50 {:.2} s p99 {:.2} s, pending p99 {}, registry CPU {:.1} %, nats-server CPU {:.1} %, generator CPU {:.1} %, RSS {} B/node, KV writes/heartbeat {:.3}",
        published.total() as f64 / wall,
        percentile(&ages, 0.5) as f64 / 1000.0,
        percentile(&ages, 0.99) as f64 / 1000.0,
        percentile(&pending, 0.99),
        (ticks_after - ticks_before) as f64 / clock_ticks() / wall * 100.0,
        server_ticks as f64 / clock_ticks() / wall * 100.0,
        generator_ticks as f64 / clock_ticks() / wall * 100.0,
        rss_max / nodes.max(1),
        writes as f64 / heartbeats as f64
    );

    // Cold start: a fresh registry on the same KV, ready to answer with
    // every record there (a lagging registry may not have written them all).
    // Asked until answered (a busy registry may let a request time out).
    let mut listed = None;
    for _ in 0..10 {
        let reply = client
            .list(&schemas::DiscoverRequest {
                status: Some("any".into()),
                limit: Some(1),
                ..schemas::DiscoverRequest::default()
            })
            .await;
        if let Ok(reply) = reply {
            listed = Some(reply.total);
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let in_kv = listed.unwrap_or(nodes);
    let written = registry.log();
    // Whether every node has a record, and if not, what the registry and
    // the stream say about it: events the stream discarded unread (the
    // registry's loss warnings, summed; the stream's front), whether the
    // stream grew to its history budget, and the simulator's failed
    // publishes (it does not answer a `reannounce`).
    let losses: Vec<&str> = written
        .lines()
        .filter(|l| l.contains("events discarded by the event stream"))
        .collect();
    let lost: u64 = losses
        .iter()
        .filter_map(|l| l.split("lost=").nth(1))
        .filter_map(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum();
    let events = async {
        let mut stream = js.get_stream(subjects::STREAM_NODE_EVENTS).await.ok()?;
        stream.info().await.ok().cloned()
    }
    .await;
    println!(
        "  records in the bucket at the end: {} of {nodes} nodes; registry: {} loss warnings, {lost} events lost, {} warnings on the stream's growth or history; event stream: first sequence {}, last {}, max_bytes {}",
        listed.map_or_else(|| "unknown (the registry did not answer)".to_owned(), |n| n.to_string()),
        losses.len(),
        written
            .lines()
            .filter(|l| l.contains("growing the event stream") || l.contains("event stream history"))
            .count(),
        events.as_ref().map_or(0, |i| i.state.first_sequence),
        events.as_ref().map_or(0, |i| i.state.last_sequence),
        events.as_ref().map_or(0, |i| i.config.max_bytes),
    );
    // When the stream grew, and how full it was then (the registry's
    // lines, with their times).
    let growths: Vec<&str> = written
        .lines()
        .filter(|l| l.contains("grew the event stream"))
        .collect();
    println!("  event stream grown {} times", growths.len());
    for line in growths.iter().take(3) {
        println!("    {line}");
    }
    // Every kind of warning the registry logged, with how often (the
    // fields left out).
    let mut warnings: std::collections::BTreeMap<String, usize> = Default::default();
    for line in written.lines().filter(|l| l.contains(" WARN ")) {
        let text = line.split(" WARN ").nth(1).unwrap_or(line);
        let kind: Vec<&str> = text
            .split_whitespace()
            .filter(|w| !w.contains('=') && !w.ends_with('}'))
            .collect();
        *warnings.entry(kind.join(" ")).or_default() += 1;
    }
    for (kind, count) in &warnings {
        println!("  registry warning x{count}: {kind}");
    }
    if let (Some(first), Some(last)) = (losses.first(), losses.last()) {
        println!("  first loss warning: {first}\n  last loss warning: {last}");
    }
    drop(registry);
    let restarted_at = Instant::now();
    let second = spawn_registry(&server, "registry-2", degraded_after, None);
    fleet_tests::wait_total(&client, in_kv, Duration::from_secs(600)).await;
    let cold_start_s = restarted_at.elapsed().as_secs_f64();
    // What the cold start started from: the last index snapshot the
    // leader wrote, and how far behind the bucket it was.
    let steps = |log: &str, step: &str| -> Vec<String> {
        log.lines()
            .filter(|l| l.contains(step))
            .filter_map(|l| l.split(step).nth(1))
            .map(|rest| rest.trim().to_owned())
            .collect()
    };
    let snapshots = steps(&written, "index snapshot written");
    println!(
        "  index snapshots written during the run: {}; last: {}",
        snapshots.len(),
        snapshots.last().map_or("none", String::as_str)
    );
    let started = second.log();
    // A slow cold start: where its time went, step by step.
    if cold_start_s > 10.0 {
        println!("  cold start took {cold_start_s:.1} s; the restarted registry's first lines:");
        for line in started.lines().take(25) {
            println!("    {line}");
        }
    }
    for step in [
        "index snapshot read",
        "index snapshot not used",
        "read index loaded",
    ] {
        for line in steps(&started, step) {
            println!("  cold start, {step}: {line}");
        }
    }

    // The fleet ran on through the restart, as it would in production.
    simulator.stop();
    for mut p in profiles.into_iter().flatten() {
        let _ = p.wait();
    }
    let report = sim.await.expect("join").expect("simulation");
    // It does not answer a `reannounce`: a register it did not store
    // stays missing.
    println!(
        "  simulator publishes failed: {} (registers sent again: {}, reannounces answered: {})",
        report.failed, report.registers_retried, report.reannounces_answered,
    );

    // Detection latency (of the crashes in the measured window) and false
    // transitions (over the whole run, the wave included).
    let crash_at: std::collections::HashMap<&str, chrono::DateTime<chrono::Utc>> = report
        .crashes
        .iter()
        .map(|c| (c.node_id.as_str(), c.crashed_at))
        .collect();
    let mut in_wave: Vec<i64> = Vec::new();
    let mut latencies: Vec<i64> = Vec::new();
    // The window's detections with each one's deadline, to set the
    // slowest against the lag of their second.
    let mut slowest: Vec<(i64, chrono::DateTime<chrono::Utc>)> = Vec::new();
    let mut false_transitions = 0;
    let mut false_seen = Vec::new();
    for (alert, received) in &seen {
        if alert.r#type != "node.degraded" && alert.r#type != "node.offline" {
            continue;
        }
        let at = schemas::time::parse(&alert.at).unwrap_or_else(chrono::Utc::now);
        match alert.node_id.as_deref().and_then(|id| crash_at.get(id)) {
            // Beyond degraded_after, from the last heartbeat the registry saw
            // (the crash itself falls up to one interval after it) to the
            // alert's arrival here (the same host's clock as the server's).
            Some(crashed_at) if alert.r#type == "node.degraded" => {
                let last = alert
                    .last_heartbeat
                    .as_deref()
                    .and_then(schemas::time::parse)
                    .unwrap_or(at);
                let late =
                    (*received - last).num_milliseconds() - degraded_after.as_millis() as i64;
                if *crashed_at >= measured_from {
                    latencies.push(late);
                    slowest.push((
                        late,
                        last + chrono::Duration::from_std(degraded_after).unwrap_or_default(),
                    ));
                } else {
                    in_wave.push(late);
                }
            }
            Some(_) => {}
            None if at < sim_end => {
                false_transitions += 1;
                false_seen.push((alert, *received));
            }
            None => {}
        }
    }
    latencies.sort();
    in_wave.sort();
    println!(
        "  crashes detected: {} in the measured window (p50 {} ms, p99 {} ms beyond degraded_after, to the alert's arrival), {} during the registration wave (p50 {} ms, p99 {} ms; judging waits while the registry is behind)",
        latencies.len(),
        latencies.get(latencies.len() / 2).copied().unwrap_or(-1),
        percentile_i64(&latencies, 0.99),
        in_wave.len(),
        in_wave.get(in_wave.len() / 2).copied().unwrap_or(-1),
        percentile_i64(&in_wave, 0.99),
    );
    // What a false transition looked like, and whether it fell in the wave.
    let in_wave_false = false_seen
        .iter()
        .filter(|(_, received)| *received < measured_from)
        .count();
    if !false_seen.is_empty() {
        println!(
            "  false transitions: {} during the registration wave, {} after it; the first ones:",
            in_wave_false,
            false_seen.len() - in_wave_false
        );
        for (alert, received) in false_seen.iter().take(8) {
            println!(
                "    {} {} at {} (received {}), last heartbeat {}: {}",
                alert.r#type,
                alert.node_id.as_deref().unwrap_or("-"),
                alert.at,
                schemas::time::format(*received),
                alert.last_heartbeat.as_deref().unwrap_or("-"),
                alert.message.as_deref().unwrap_or("-")
            );
        }
    }
    slowest.sort_by_key(|s| std::cmp::Reverse(s.0));
    for (late, deadline) in slowest.iter().take(3) {
        let t_s = (*deadline - window_wall).num_milliseconds() as f64 / 1000.0;
        let lag_then = timeline
            .iter()
            .filter(|s| s.t_s >= t_s)
            .take(3)
            .map(|s| format!("{:.1}", s.lag_s))
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "    a slow detection: {late} ms late, deadline {t_s:.0} s into the window; lag in the seconds after it: {lag_then} s"
        );
    }

    let ms = |v: u64| v as f64 / 1000.0;
    Run {
        nodes,
        metrics,
        interval_s: interval.as_secs_f64(),
        encoding: format!("{:?}", encoding()).to_lowercase(),
        settle_s,
        events_per_sec: published.total() as f64 / wall,
        lag_p50_s: ms(percentile(&ages, 0.5)),
        lag_p99_s: ms(percentile(&ages, 0.99)),
        lag_max_s: ms(ages.last().copied().unwrap_or(0)),
        pending_p99: percentile(&pending, 0.99),
        cpu_pct: (ticks_after - ticks_before) as f64 / clock_ticks() / wall * 100.0,
        server_cpu_pct: server_ticks as f64 / clock_ticks() / wall * 100.0,
        generator_cpu_pct: generator_ticks as f64 / clock_ticks() / wall * 100.0,
        rss_bytes: rss_max,
        rss_bytes_per_node: rss_max as f64 / nodes as f64,
        kv_writes_per_heartbeat: writes as f64 / heartbeats as f64,
        crashes: latencies.len(),
        detection_p50_ms: latencies.get(latencies.len() / 2).copied().unwrap_or(-1),
        detection_p99_ms: percentile_i64(&latencies, 0.99),
        false_transitions,
        cold_start_s,
        timeline,
    }
}

fn percentile_i64(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return -1;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct Ingest {
    nodes: u64,
    backlog: u64,
    /// How fast the backlog was published (acked), events/s.
    published_per_sec: f64,
    /// How fast the registry worked it off, events/s.
    ingest_per_sec: f64,
    registry_cpu_pct: f64,
    server_cpu_pct: f64,
}

/// The registry's ingest ceiling: with `nodes` registered, a backlog of
/// heartbeats (`per_node` each) is published while the registry is down;
/// a fresh registry then works it off as fast as it can.
async fn ingest_ceiling(nodes: u64, per_node: u64) -> Ingest {
    let degraded_after = Duration::from_secs(600);
    let (server, registry, client) = start(degraded_after, None).await;
    let js = jetstream::new(server.client().await);
    let mut consumer = registry_consumer(&js).await;
    let encoding = encoding();
    let publish_all = |events: Vec<(String, bytes::Bytes)>| {
        let js = js.clone();
        async move {
            let with_headers = events.into_iter().map(|(subject, payload)| {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(HEADER_CONTENT_TYPE, encoding.content_type());
                (subject, Some(headers), payload)
            });
            publish_pipelined(&js, with_headers).await;
        }
    };
    let subject = |n: u64| format!("node.sim-{n}.events");
    let registers: Vec<(String, bytes::Bytes)> = (0..nodes)
        .map(|n| {
            let event = fleet_sim::generate::register(&format!("sim-{n}"), n, 1, 5);
            (subject(n), encode(&event, encoding).into())
        })
        .collect();
    publish_all(registers).await;
    fleet_tests::wait_total(&client, nodes, Duration::from_secs(600)).await;
    settle(&js, &mut consumer, Duration::from_secs(600)).await;
    // A clean stop releases the leader lease: the next registry leads at
    // once instead of after a lease TTL.
    let mut registry = registry;
    registry.terminate(Duration::from_secs(30)).await;

    let mut rng = fleet_sim::generate::Rng::new(11);
    let mut beats = Vec::with_capacity((nodes * per_node) as usize);
    for round in 0..per_node {
        for n in 0..nodes {
            let event = fleet_sim::generate::heartbeat(&format!("sim-{n}"), 2 + round, &mut rng);
            beats.push((subject(n), encode(&event, encoding).into()));
        }
    }
    let backlog = beats.len() as u64;
    let start = Instant::now();
    publish_all(beats).await;
    let published_per_sec = backlog as f64 / start.elapsed().as_secs_f64();

    let registry = spawn_registry(&server, "registry-2", degraded_after, None);
    fleet_tests::wait_registry(&client).await;
    let pid = registry.pid().expect("running");
    let ticks_before = cpu_ticks(pid);
    let server_pid = server.pid().expect("server running");
    let server_ticks_before = cpu_ticks(server_pid);
    let profiles = [
        profile(pid, "registry-ingest", 10),
        profile(server_pid, "nats-server-ingest", 10),
    ];
    let start = Instant::now();
    loop {
        if let Ok(info) = consumer.info().await {
            if info.num_pending == 0 && info.num_ack_pending == 0 {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let wall = start.elapsed().as_secs_f64();
    for mut p in profiles.into_iter().flatten() {
        let _ = p.wait();
    }
    Ingest {
        nodes,
        backlog,
        published_per_sec,
        ingest_per_sec: backlog as f64 / wall,
        registry_cpu_pct: (cpu_ticks(pid) - ticks_before) as f64 / clock_ticks() / wall * 100.0,
        server_cpu_pct: (cpu_ticks(server_pid) - server_ticks_before) as f64 / clock_ticks() / wall
            * 100.0,
    }
}

#[derive(Debug, Serialize, serde::Deserialize)]
struct Report {
    machine: String,
    ceiling_events_per_sec: f64,
    ingest: Option<Ingest>,
    ingest_ratio_to_ceiling: Option<f64>,
    #[serde(default)]
    storm: Option<Storm>,
    runs: Vec<Run>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {cpu}")
}

/// The allocator: the simulated fleet in this process allocates per event;
/// under glibc's malloc a third of its profile was the allocator, CPU taken
/// from the registry and nats-server on the same two cores.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs = std::env::var("SCALE_RUNS")
        .unwrap_or_else(|_| "10000@30s,100000@30s,1000000@30s".to_owned());
    let seconds: u64 = std::env::var("SCALE_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let ingest_nodes: u64 = std::env::var("SCALE_INGEST_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let out =
        PathBuf::from(std::env::var("SCALE_OUT").unwrap_or_else(|_| {
            concat!(env!("CARGO_MANIFEST_DIR"), "/../target/scale").to_owned()
        }));
    let server = NatsServer::start().await;
    let ceiling = ceiling(&server, 200_000).await;
    drop(server);
    println!(
        "raw JetStream publish ceiling: {ceiling:.0} events/s (acked, pipelined, same machine)"
    );
    let ingest = if ingest_nodes > 0 {
        let ingest = ingest_ceiling(ingest_nodes, 10).await;
        println!(
            "ingest ceiling: {} heartbeats of {} nodes worked off at {:.0} events/s ({:.0} % of the ceiling; registry {:.0} %, nats-server {:.0} % of a core); published at {:.0}/s",
            ingest.backlog,
            ingest.nodes,
            ingest.ingest_per_sec,
            ingest.ingest_per_sec / ceiling * 100.0,
            ingest.registry_cpu_pct,
            ingest.server_cpu_pct,
            ingest.published_per_sec
        );
        Some(ingest)
    } else {
        None
    };
    let storm_nodes: u64 = std::env::var("SCALE_STORM_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let storm = if storm_nodes > 0 {
        Some(storm(storm_nodes).await.said())
    } else {
        None
    };
    let mut results = Vec::new();
    for spec in runs.split(',') {
        // `nodes@interval`, or `nodes@interval+metrics` (the registry
        // exports metrics and is scraped every 15 s).
        let (spec, metrics) = match spec.strip_suffix("+metrics") {
            Some(spec) => (spec, true),
            None => (spec, false),
        };
        let Some((nodes, interval)) = spec.split_once('@') else {
            continue;
        };
        let (Ok(nodes), Ok(interval)) = (nodes.parse::<u64>(), humantime::parse_duration(interval))
        else {
            eprintln!("skipping {spec:?}: expected nodes@interval");
            continue;
        };
        results.push(run(nodes, interval, seconds, metrics).await);
    }
    println!(
        "\n{:>8} {:>8} {:>9} {:>9} {:>8} {:>8} {:>8} {:>7} {:>7} {:>10} {:>8} {:>9} {:>9} {:>6} {:>7} {:>7}",
        "nodes",
        "interval",
        "events/s",
        "ceiling%",
        "lag p50",
        "lag p99",
        "settle",
        "CPU %",
        "server%",
        "RSS B/node",
        "KV w/hb",
        "detect50",
        "detect99",
        "false",
        "cold s",
        "crashes"
    );
    for r in &results {
        println!(
            "{:>8} {:>7}s {:>9.0} {:>9.1} {:>7.2}s {:>7.2}s {:>7.0}s {:>7.1} {:>7.1} {:>10.0} {:>8.3} {:>7}ms {:>7}ms {:>6} {:>7.1} {:>7}",
            if r.metrics { format!("{}+m", r.nodes) } else { r.nodes.to_string() },
            r.interval_s,
            r.events_per_sec,
            r.events_per_sec / ceiling * 100.0,
            r.lag_p50_s,
            r.lag_p99_s,
            r.settle_s,
            r.cpu_pct,
            r.server_cpu_pct,
            r.rss_bytes_per_node,
            r.kv_writes_per_heartbeat,
            r.detection_p50_ms,
            r.detection_p99_ms,
            r.false_transitions,
            r.cold_start_s,
            r.crashes
        );
    }
    println!("\n(lag: age of the oldest unprocessed event, sampled each second; detection beyond degraded_after = 3 intervals, from the last heartbeat; crashes injected at 1 per 10 s, counted from the measured window)");
    let report = Report {
        machine: machine(),
        ceiling_events_per_sec: ceiling,
        ingest_ratio_to_ceiling: ingest.as_ref().map(|i| i.ingest_per_sec / ceiling),
        ingest,
        storm,
        runs: results,
    };
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    // The timelines go to the file only: a second each is too long to read here.
    let mut shown = serde_json::to_value(&report).unwrap_or_default();
    if let Some(runs) = shown.get_mut("runs").and_then(|r| r.as_array_mut()) {
        for run in runs.iter_mut().filter_map(|r| r.as_object_mut()) {
            run.remove("timeline");
        }
    }
    println!(
        "\n{}",
        serde_json::to_string_pretty(&shown).unwrap_or_default()
    );
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("creating {}: {e}", out.display());
        return;
    }
    let _ = std::fs::write(out.join("scale.json"), &json);
    // Runs saved by earlier invocations join the plot (long runs are made
    // one at a time).
    let mut plotted = report.runs;
    for file in std::env::var("SCALE_MERGE").unwrap_or_default().split(',') {
        if file.is_empty() {
            continue;
        }
        match std::fs::read(file).map(|b| serde_json::from_slice::<Report>(&b)) {
            Ok(Ok(earlier)) => plotted.extend(earlier.runs),
            Ok(Err(e)) => eprintln!("{file}: {e}"),
            Err(e) => eprintln!("{file}: {e}"),
        }
    }
    plotted.sort_by_key(|r| r.nodes);
    plotted.dedup_by_key(|r| r.nodes);
    match plot::draw(&plotted, &out.join("scale.png")) {
        Ok(()) => println!("plot: {}", out.join("scale.png").display()),
        Err(e) => eprintln!("no plot: {e}"),
    }
}

mod plot {
    //! Lag and CPU against fleet size, as a PNG.

    use super::Run;
    use plotters::prelude::*;

    const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

    /// The measured line (blue, labelled "registry" on the CPU chart) and
    /// the target (red).
    fn draw_series<'a, Y>(
        chart: &mut ChartContext<
            'a,
            BitMapBackend<'a>,
            Cartesian2d<plotters::coord::combinators::LogCoord<f64>, Y>,
        >,
        data: &[(f64, f64)],
        target: f64,
        (min_nodes, max_nodes): (f64, f64),
    ) -> Result<(), String>
    where
        Y: Ranged<ValueType = f64>,
    {
        chart
            .draw_series(LineSeries::new(data.to_vec(), BLUE.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label("registry")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(data.iter().map(|p| Circle::new(*p, 4, BLUE.filled())))
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(LineSeries::new(
                [(min_nodes, target), (max_nodes, target)],
                RED.stroke_width(1),
            ))
            .map_err(|e| e.to_string())?
            .label("target")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    pub fn draw(runs: &[Run], path: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
        if runs.is_empty() {
            return Err("no runs".into());
        }
        // ab_glyph needs a font with a static lifetime; one per process.
        let font = std::fs::read(FONT).map_err(|e| format!("{FONT}: {e}"))?;
        plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into()))
            .map_err(|_| "font does not load")?;
        let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(600);
        let max_nodes = runs.iter().map(|r| r.nodes).max().unwrap_or(1) as f64 * 2.0;
        let min_nodes = runs.iter().map(|r| r.nodes).min().unwrap_or(1) as f64 / 2.0;
        let series = |f: fn(&Run) -> f64| -> Vec<(f64, f64)> {
            runs.iter().map(|r| (r.nodes as f64, f(r))).collect()
        };
        // Lag spans milliseconds to minutes: a log axis (zero drawn as 1 ms).
        let lag: Vec<(f64, f64)> = series(|r| r.lag_p99_s.max(0.001));
        let top = lag.iter().map(|p| p.1).fold(1.0, f64::max) * 3.0;
        let mut chart = ChartBuilder::on(&left)
            .caption("Consumer lag p99 (s, log)", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((min_nodes..max_nodes).log_scale(), (0.001..top).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("nodes (30 s heartbeat interval)")
            .y_desc("seconds")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .y_label_formatter(&|v| format!("{v}"))
            .draw()?;
        draw_series(&mut chart, &lag, 1.0, (min_nodes, max_nodes))?;
        let cpu = series(|r| r.cpu_pct);
        let server = series(|r| r.server_cpu_pct);
        let top = cpu.iter().chain(&server).map(|p| p.1).fold(15.0, f64::max) * 1.2;
        let mut chart = ChartBuilder::on(&right)
            .caption("CPU (% of one core)", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(60)
            .build_cartesian_2d((min_nodes..max_nodes).log_scale(), 0.0..top)?;
        chart
            .configure_mesh()
            .x_desc("nodes (30 s heartbeat interval)")
            .y_desc("% of a core")
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()?;
        chart
            .draw_series(LineSeries::new(server.clone(), GREEN.stroke_width(2)))?
            .label("nats-server")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], GREEN));
        chart.draw_series(server.iter().map(|p| Circle::new(*p, 4, GREEN.filled())))?;
        draw_series(&mut chart, &cpu, 15.0, (min_nodes, max_nodes))?;
        root.present()?;
        Ok(())
    }
}
