//! Discovery at 100 000 nodes: latency of a selective query, a broad query
//! and `get`, against plain NATS echo request-reply over the same client in
//! the same run; and the memory the index takes per node.
//!
//!     cargo bench -p fleet-tests --bench discovery
//!
//! `BENCH_NODES` (default 100000) and `BENCH_REQUESTS` (default 5000 per
//! kind) change the size. Targets: selective p99 ≤ 2 × echo p99; broad p99
//! ≤ 5 ms; index memory ≤ 2 KiB per node.

use std::time::{Duration, Instant};

use fleet_sim::generate::Rng;
use fleet_tests::procfs::{clock_ticks, cpu_ticks, percentile, rss_kib};
use fleet_tests::{release_bin, NatsServer, Proc};
use futures::StreamExt;
use registry_core::catalog::{Catalog, RecordView};
use registry_core::discovery::Query;
use schemas::codec::{encode, Encoding};
use schemas::status::{SortOrder, StatusFilter};
use schemas::NodeRecord;

#[path = "discovery/record.rs"]
mod record;
use record::{record, SEED};

#[derive(Debug, Clone)]
struct Latency {
    name: String,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    reply_bytes: usize,
    matches: Option<u64>,
}

async fn measure(
    name: &str,
    nats: &async_nats::Client,
    subject: &str,
    body: &str,
    n: usize,
) -> Latency {
    let mut times = Vec::with_capacity(n);
    let mut bytes = 0;
    let mut matches = None;
    for i in 0..n + 200 {
        let start = Instant::now();
        let reply = nats
            .request(subject.to_owned(), body.to_owned().into())
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let took = start.elapsed();
        assert!(
            reply
                .headers
                .as_ref()
                .and_then(|h| h.get("Nats-Service-Error-Code"))
                .is_none(),
            "{name}: error reply {}",
            String::from_utf8_lossy(&reply.payload)
        );
        if i >= 200 {
            times.push(took);
        }
        bytes = reply.payload.len();
        if matches.is_none() {
            matches = serde_json::from_slice::<serde_json::Value>(&reply.payload)
                .ok()
                .and_then(|v| v.get("total").and_then(|t| t.as_u64()));
        }
    }
    times.sort();
    Latency {
        name: name.to_owned(),
        p50: percentile(&times, 0.50),
        p99: percentile(&times, 0.99),
        p999: percentile(&times, 0.999),
        reply_bytes: bytes,
        matches,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A release registry started on `server`'s bucket of `nodes` records,
/// writing index snapshots every `snapshot_interval` (`0s`: none),
/// logging to `log`, once it answers over all of them: the process, how
/// long that took, and the CPU seconds it and nats-server spent meanwhile.
async fn cold_start(
    server: &NatsServer,
    registry_bin: &std::path::Path,
    nodes: u64,
    snapshot_interval: &str,
    log: std::path::PathBuf,
) -> (Proc, Duration, f64, f64) {
    let server_ticks = server.pid().map(cpu_ticks).unwrap_or(0);
    let started = Instant::now();
    let registry = Proc::spawn(
        "registry",
        registry_bin,
        &["--nats-url".to_owned(), server.url()],
        &[
            ("RUST_LOG", "info".to_owned()),
            (
                "NODE_REGISTRY_INDEX_SNAPSHOT_INTERVAL",
                snapshot_interval.to_owned(),
            ),
        ],
        log,
    );
    let client = fleet_tests::registry_client(server)
        .await
        .with_timeout(Duration::from_secs(30));
    fleet_tests::wait_total(&client, nodes, Duration::from_secs(300)).await;
    let ready_after = started.elapsed();
    let hz = clock_ticks();
    let registry_cpu = registry.pid().map(cpu_ticks).unwrap_or(0) as f64 / hz;
    let server_cpu = server
        .pid()
        .map(cpu_ticks)
        .unwrap_or(0)
        .saturating_sub(server_ticks) as f64
        / hz;
    (registry, ready_after, registry_cpu, server_cpu)
}

/// Waits (up to two minutes) until the log at `path` holds `step`.
async fn wait_logged(path: &std::path::Path, step: &str) {
    let waited = Instant::now();
    while waited.elapsed() < Duration::from_secs(120)
        && !std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(step)
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One sampled cold start (its registry killed once it answers, with no
/// snapshots written): how long it took, and a line saying so.
async fn sampled_start(
    server: &NatsServer,
    registry_bin: &std::path::Path,
    nodes: u64,
    name: &str,
) -> (Duration, String) {
    let log = server.temp_path(&format!("registry-{name}.log"));
    let (mut sample, ready_after, registry_cpu, server_cpu) =
        cold_start(server, registry_bin, nodes, "0s", log.clone()).await;
    sample.kill9();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let after = |step: &str| {
        text.lines()
            .find(|l| l.contains(step))
            .and_then(|l| l.split(step).nth(1))
            .unwrap_or_default()
            .trim()
            .to_owned()
    };
    let line = format!(
        "ready in {:.1} s; CPU registry {registry_cpu:.1} s, nats-server {server_cpu:.1} s; snapshot read: {}; index loaded: {}",
        ready_after.as_secs_f64(),
        after("index snapshot read"),
        after("read index loaded"),
    );
    (ready_after, line)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let nodes: u64 = std::env::var("BENCH_NODES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let requests: usize = std::env::var("BENCH_REQUESTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);

    // 1. The index alone, in this process: RSS before and after building it
    //    from records generated one by one.
    let self_pid = std::process::id();
    let before = rss_kib(self_pid);
    let mut rng = Rng::new(SEED);
    let mut catalog = Catalog::new();
    let mut json_bytes = 0usize;
    let build = Instant::now();
    for i in 0..nodes {
        let r = record(i, &mut rng);
        json_bytes += encode(&r, Encoding::Json).len();
        catalog.upsert(r);
    }
    let build_time = build.elapsed();
    // The index's own share of that: records made and encoded first, then
    // inserted into a fresh catalog (a sample).
    let sample: Vec<(NodeRecord, bytes::Bytes)> = (0..nodes.min(50_000))
        .map(|i| {
            let r = record(i, &mut rng);
            let json = bytes::Bytes::from(encode(&r, Encoding::Json));
            (r, json)
        })
        .collect();
    let sampled = sample.len();
    let mut fresh = Catalog::new();
    let insert = Instant::now();
    for (revision, (r, json)) in (1..).zip(sample) {
        fresh.insert(&r, json, revision);
    }
    let insert_per_record = insert.elapsed() / sampled.max(1) as u32;
    drop(fresh);
    println!(
        "index insert alone: {:.1} µs per record",
        insert_per_record.as_secs_f64() * 1e6
    );
    let catalog_kib = rss_kib(self_pid).saturating_sub(before);
    let per_node_index = catalog_kib as f64 * 1024.0 / nodes as f64;
    // In-process query cost, without NATS.
    let selective_q = Query::from_request(
        serde_json::from_str(r#"{"selector":"rack=r42","limit":10}"#).expect("json"),
        StatusFilter::Online,
        SortOrder::LeastLoaded,
    )
    .expect("query");
    // Median of repeated runs: the registry's own work, without NATS.
    let median = |q: &Query| {
        let mut times: Vec<Duration> = (0..101)
            .map(|_| {
                let t = Instant::now();
                let _ = q.answer(&catalog);
                t.elapsed()
            })
            .collect();
        times.sort();
        times[50]
    };
    let sel = selective_q.answer(&catalog);
    let in_process_selective = median(&selective_q);
    let broad_q = Query::from_request(
        serde_json::from_str(r#"{"selector":"gpu","limit":100}"#).expect("json"),
        StatusFilter::Online,
        SortOrder::LeastLoaded,
    )
    .expect("query");
    let broad = broad_q.answer(&catalog);
    let in_process_broad = median(&broad_q);
    println!(
        "built the index of {nodes} nodes in {:.2} s; in-process answer, median of 101: selective {:.3} ms ({} matches), broad {:.3} ms ({} matches)",
        build_time.as_secs_f64(),
        ms(in_process_selective),
        sel.total,
        ms(in_process_broad),
        broad.total
    );
    drop(catalog);

    // 2. Fill a real nodes bucket, then start the release registry on it.
    let server = NatsServer::start().await;
    let nats = server.client().await;
    let js = async_nats::jetstream::new(nats.clone());
    let provisioned = registry_kv::provision(
        &js,
        &subjects::Names::default(),
        &registry_kv::StreamSettings::default(),
    )
    .await
    .expect("provision");
    let fill = Instant::now();
    let mut rng = Rng::new(SEED);
    let mut acks = Vec::with_capacity(2000);
    for i in 0..nodes {
        let r = record(i, &mut rng);
        let subject = subjects::kv_key_subject(&provisioned.nodes.name, &r.node_id);
        acks.push(
            js.publish(subject, encode(&r, Encoding::Json).into())
                .await
                .expect("publish"),
        );
        if acks.len() >= 2000 {
            for ack in acks.drain(..) {
                ack.await.expect("stored");
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.expect("stored");
    }
    println!(
        "filled the nodes bucket in {:.1} s",
        fill.elapsed().as_secs_f64()
    );

    // Where a cold start's time goes: the bucket delivered by the watch the
    // read index uses, with nothing done to the records; and their JSON
    // decoded, with no NATS.
    let raw = Instant::now();
    let mut watch = provisioned
        .nodes
        .watch_with_history(">")
        .await
        .expect("watch");
    let mut seen = 0u64;
    let mut values = Vec::new();
    while seen < nodes {
        let entry = watch.next().await.expect("entry").expect("entry");
        if values.len() < 10_000 {
            values.push(entry.value);
        }
        seen += 1;
    }
    drop(watch);
    let raw_delivery = raw.elapsed();
    let decode = Instant::now();
    for value in &values {
        let _: NodeRecord =
            schemas::codec::decode(value, Encoding::Json, 1 << 20).expect("a record");
    }
    let decode_per_record = decode.elapsed() / values.len().max(1) as u32;
    // What a cold start does per record: read as a borrowed view, copied
    // out of the receive buffer and indexed.
    let mut viewed = Catalog::new();
    let view_insert = Instant::now();
    for (revision, value) in (1..).zip(&values) {
        let view = RecordView::of(value).expect("a record");
        viewed.insert(&view, bytes::Bytes::copy_from_slice(value), revision);
    }
    let view_insert_per_record = view_insert.elapsed() / values.len().max(1) as u32;
    drop(viewed);
    println!(
        "cold start parts: the bucket delivered raw by a KV watch in {:.1} s; JSON decode {:.1} µs per record; index insert {:.1} µs per record; read as a view and indexed (what a cold start does) {:.1} µs per record",
        raw_delivery.as_secs_f64(),
        decode_per_record.as_secs_f64() * 1e6,
        insert_per_record.as_secs_f64() * 1e6,
        view_insert_per_record.as_secs_f64() * 1e6,
    );

    let registry_bin = release_bin("node-registry", "node-registry");
    // Cold starts, each a fresh registry killed once it answers over the
    // whole fleet: first reading the bucket whole (no snapshot yet), then
    // from an index snapshot. With `BENCH_COLD_STARTS=<n>`, n of each
    // (the last from a snapshot is the measured one): samples of the same
    // start on a host whose speed varies.
    let starts: usize = std::env::var("BENCH_COLD_STARTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1usize)
        .max(1);
    let mut whole = Vec::new();
    for attempt in 1..=starts {
        let (ready, text) =
            sampled_start(&server, &registry_bin, nodes, &format!("whole-{attempt}")).await;
        println!("cold start reading the bucket whole, {attempt}: {text}");
        whole.push(ready);
    }
    // A snapshot, written by a leader (the lease is free once the last
    // sample's has expired).
    let log = server.temp_path("registry-snapshot-writer.log");
    let (mut writer, _, _, _) = cold_start(&server, &registry_bin, nodes, "1s", log.clone()).await;
    let server_ticks = server.pid().map(cpu_ticks).unwrap_or(0);
    wait_logged(&log, "index snapshot written").await;
    if let Some(line) = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("index snapshot written"))
    {
        println!(
            "snapshot: {}; nats-server CPU from the writer's start to the end of the write (its lease wait included): {:.1} s",
            line.split("written").nth(1).unwrap_or_default().trim(),
            server
                .pid()
                .map(cpu_ticks)
                .unwrap_or(0)
                .saturating_sub(server_ticks) as f64
                / clock_ticks()
        );
    }
    let _ = writer.terminate(Duration::from_secs(30)).await;
    for attempt in 1..starts {
        let (_, text) = sampled_start(
            &server,
            &registry_bin,
            nodes,
            &format!("snapshot-{attempt}"),
        )
        .await;
        println!("cold start from the snapshot, {attempt}: {text}");
    }
    // With `BENCH_PERF=<folder>`, the whole machine's CPU profile of the
    // start (read it with `perf report -i <folder>/cold-start.data`).
    let perf = std::env::var("BENCH_PERF").ok().and_then(|dir| {
        let _ = std::fs::create_dir_all(&dir);
        std::process::Command::new("perf")
            .args(["record", "-a", "-F", "499", "-g", "-o"])
            .arg(format!("{dir}/cold-start.data"))
            .args(["--", "sleep", "12"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("perf: {e}"))
            .ok()
    });
    let (registry, ready_after, registry_cpu, server_cpu) = cold_start(
        &server,
        &registry_bin,
        nodes,
        "0s",
        server.temp_path("registry.log"),
    )
    .await;
    println!(
        "cold start from the snapshot (measured): CPU until ready: registry {registry_cpu:.1} s, nats-server {server_cpu:.1} s, in {:.1} s; reading the bucket whole in the same run: {}",
        ready_after.as_secs_f64(),
        whole
            .iter()
            .map(|d| format!("{:.1} s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(mut perf) = perf {
        let _ = perf.wait();
    }
    // The start's steps, as the registry logged them. The leader restores
    // its fleet on another thread once the index is loaded, while it
    // already answers: wait for it, so latencies are measured without it.
    let log_path = server.temp_path("registry.log");
    wait_logged(&log_path, "fleet restored").await;
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    for step in [
        "connected to NATS",
        "index snapshot read",
        "read index loaded",
        "fleet restored",
    ] {
        if let Some(line) = log.lines().find(|l| l.contains(step)) {
            println!("registry log: {}", &line[..line.len().min(160)]);
        }
    }
    let registry_rss = registry.pid().map(rss_kib).unwrap_or(0);

    // 3. Latency, all over the same client connection.
    let echo = server.client().await;
    let mut echo_sub = echo.subscribe("bench.echo").await.expect("subscribe");
    let responder = echo.clone();
    tokio::spawn(async move {
        while let Some(m) = echo_sub.next().await {
            if let Some(reply) = m.reply {
                let _ = responder.publish(reply, m.payload).await;
            }
        }
    });
    echo.flush().await.expect("flush");
    fleet_tests::eventually("the echo responder", Duration::from_secs(10), || async {
        nats.request("bench.echo", "ping".into())
            .await
            .ok()
            .map(|_| ())
    })
    .await;
    let get_body = format!(r#"{{"node_id":"node-{:07}"}}"#, nodes / 2);
    let results = vec![
        measure(
            "plain NATS echo (baseline)",
            &nats,
            "bench.echo",
            r#"{"selector":"rack=r42","limit":10}"#,
            requests,
        )
        .await,
        measure(
            "selective: rack=r42, limit 10",
            &nats,
            subjects::REGISTRY_DISCOVER,
            r#"{"selector":"rack=r42","limit":10}"#,
            requests,
        )
        .await,
        measure(
            "broad: gpu, limit 100",
            &nats,
            subjects::REGISTRY_DISCOVER,
            r#"{"selector":"gpu","limit":100}"#,
            requests,
        )
        .await,
        measure(
            "broad, fields node_id+metrics",
            &nats,
            subjects::REGISTRY_DISCOVER,
            r#"{"selector":"gpu","limit":100,"fields":["metrics"]}"#,
            requests,
        )
        .await,
        measure("get", &nats, subjects::REGISTRY_GET, &get_body, requests).await,
    ];
    let echo_p99 = results[0].p99;

    println!(
        "\ndiscovery at {nodes} nodes ({} cores; {requests} requests each, after 200 warm-up)\n",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>10} {:>9} {:>11}",
        "request", "p50 ms", "p99 ms", "p99.9 ms", "p99/echo", "matches", "reply B"
    );
    for r in &results {
        println!(
            "{:<34} {:>9.3} {:>9.3} {:>9.3} {:>10.2} {:>9} {:>11}",
            r.name,
            ms(r.p50),
            ms(r.p99),
            ms(r.p999),
            r.p99.as_secs_f64() / echo_p99.as_secs_f64(),
            r.matches.map_or("-".to_owned(), |m| m.to_string()),
            r.reply_bytes
        );
    }
    let selective = &results[1];
    let broad = &results[2];
    println!(
        "\nindex memory: {:.0} B per node (catalog built in-process; records average {:.0} B as JSON)",
        per_node_index,
        json_bytes as f64 / nodes as f64
    );
    println!(
        "registry process: ready {:.1} s after start with {nodes} nodes in KV; RSS {:.0} MiB = {:.0} B per node (fleet state + index)",
        ready_after.as_secs_f64(),
        registry_rss as f64 / 1024.0,
        registry_rss as f64 * 1024.0 / nodes as f64
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: selective p99 <= 2 x echo p99: {} ({:.2}x); broad p99 <= 5 ms: {} ({:.3} ms); index <= 2 KiB/node: {} ({:.0} B)",
        verdict(selective.p99 <= echo_p99 * 2),
        selective.p99.as_secs_f64() / echo_p99.as_secs_f64(),
        verdict(broad.p99 <= Duration::from_millis(5)),
        ms(broad.p99),
        verdict(per_node_index <= 2048.0),
        per_node_index
    );
    let json: Vec<serde_json::Value> = results
        .iter()
        .map(|r| serde_json::json!({"request": r.name, "p50_ms": ms(r.p50), "p99_ms": ms(r.p99), "p999_ms": ms(r.p999), "matches": r.matches, "reply_bytes": r.reply_bytes}))
        .collect();
    println!(
        "\n{}",
        serde_json::json!({
            "nodes": nodes,
            "latency": json,
            "index_bytes_per_node": per_node_index,
            "registry_rss_bytes_per_node": registry_rss as f64 * 1024.0 / nodes as f64,
            "registry_ready_s": ready_after.as_secs_f64(),
            "registry_ready_reading_whole_bucket_s": whole.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        })
    );
    drop(registry);
}
