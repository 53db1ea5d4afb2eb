//! The fleet page at 1 000 and 10 000 nodes, in a real headless Chromium:
//! the time from navigation to the first complete render (every node's
//! record from the `nodes` bucket drawn), the JS heap after it, and how the
//! page holds up while every node's heartbeats stream in live (frames drawn,
//! long tasks, heap). Baseline, measured in the same run: the same page
//! with an empty fleet.
//!
//!     cargo bench -p fleet-tests --bench dashboard
//!
//! The fleet is fleet-sim's (in process), at a 10 s heartbeat interval, so
//! 10 000 nodes send the page 1 000 heartbeats a second.
//! `DASHBOARD_BENCH_SIZES` (default `1000,10000`) and
//! `DASHBOARD_BENCH_SECONDS` (default 20, the live phase) change the run.
//! The figures are printed, and written into docs/BENCHMARKS.md between the
//! `dashboard-bench` markers.

use std::time::Duration;

use async_nats::jetstream;
use fleet_sim::{SimConfig, Simulator};
use fleet_tests::browser::{serve_dashboard, websocket_config, Browser};
use fleet_tests::{free_port, release_bin, workspace_root, NatsServer, Proc};
use serde_json::Value;

#[derive(Debug)]
struct Figures {
    nodes: u64,
    shown: u64,
    first_render_ms: f64,
    heap_mib: f64,
    live_fps: f64,
    long_tasks: u64,
    longest_task_ms: f64,
    live_heap_mib: f64,
    dom_rows: u64,
    /// The page's own work in the live phase (ms a second): applying
    /// heartbeats and records, drawing the table and the summary.
    work_ms_per_s: f64,
}

fn number(v: &Value, key: &str) -> f64 {
    v.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

async fn measure(nodes: u64, live_seconds: u64) -> Figures {
    let ws = free_port();
    let server = NatsServer::start_with_config(&websocket_config(ws)).await;
    let registry = Proc::spawn(
        "registry",
        &release_bin("node-registry", "node-registry"),
        &["--nats-url".to_owned(), server.url()],
        &[("RUST_LOG", "warn".to_owned())],
        server.temp_path("registry.log"),
    );
    let client = fleet_tests::registry_client(&server).await;
    fleet_tests::wait_registry(&client).await;
    let interval = Duration::from_secs(10);
    let sim = if nodes > 0 {
        let config = SimConfig {
            nodes,
            heartbeat_interval: interval,
            duration: Duration::from_secs(3600),
            seed: 13,
            ..SimConfig::default()
        };
        let simulator = std::sync::Arc::new(Simulator::new(
            config,
            jetstream::new(server.client().await),
        ));
        let run = simulator.clone();
        tokio::spawn(async move { run.run().await });
        fleet_tests::wait_total(&client, nodes, Duration::from_secs(300)).await;
        Some(simulator)
    } else {
        None
    };
    let (_dashboard, url) = serve_dashboard(ws, None, server.temp_path("dashboard.log")).await;
    let browser = Browser::start().await;
    let query = std::env::var("DASHBOARD_BENCH_QUERY").unwrap_or_default();
    browser.goto(&format!("{url}{query}")).await;
    let probe = browser
        .wait_for(
            "the first complete render",
            Duration::from_secs(120),
            "const p = window.fleetDashboard; return p.ready ? {first: p.firstRenderMs, nodes: p.nodes} : null;",
        )
        .await;
    let heap = browser
        .eval("if (window.gc) window.gc(); return performance.memory.usedJSHeapSize;")
        .await;
    // The live phase: heartbeats stream in; count frames and long tasks.
    browser
        .eval(
            "window.__bench = {frames: 0, long: 0, longest: 0};
             const tick = () => { window.__bench.frames++; requestAnimationFrame(tick); };
             requestAnimationFrame(tick);
             new PerformanceObserver((l) => { for (const e of l.getEntries()) { window.__bench.long++; window.__bench.longest = Math.max(window.__bench.longest, e.duration); } }).observe({type: 'longtask'});
             window.__bench.start = performance.now();
             window.__bench.spent = {...window.fleetDashboard.spent}; return true;",
        )
        .await;
    tokio::time::sleep(Duration::from_secs(live_seconds)).await;
    let live = browser
        .eval(
            "const b = window.__bench; if (window.gc) window.gc();
             return {fps: b.frames * 1000 / (performance.now() - b.start), long: b.long, longest: b.longest,
                     heap: performance.memory.usedJSHeapSize, rows: document.querySelectorAll('[data-node-id]').length,
                     nodes: window.fleetDashboard.nodes,
                     spent: Object.fromEntries(Object.entries(window.fleetDashboard.spent).map(([k, v]) => [k, Math.round(v - (b.spent[k] || 0))]))};",
        )
        .await;
    println!(
        "  {nodes} nodes: ms of work in the live phase: {}",
        live["spent"]
    );
    browser
        .screenshot(&format!("dashboard-bench-{nodes}"))
        .await;
    if let Some(sim) = sim {
        sim.stop();
    }
    drop(registry);
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    Figures {
        nodes,
        shown: number(&live, "nodes") as u64,
        first_render_ms: number(&probe, "first"),
        heap_mib: mib(heap.as_f64().unwrap_or(f64::NAN)),
        live_fps: number(&live, "fps"),
        long_tasks: number(&live, "long") as u64,
        longest_task_ms: number(&live, "longest"),
        live_heap_mib: mib(number(&live, "heap")),
        dom_rows: number(&live, "rows") as u64,
        work_ms_per_s: live["spent"].as_object().map_or(f64::NAN, |o| {
            o.values().filter_map(Value::as_f64).sum::<f64>()
        }) / live_seconds as f64,
    }
}

fn table(all: &[Figures], live_seconds: u64) -> String {
    let mut out = String::from(
        "| nodes | shown | first complete render | JS heap after it | live phase: frames/s | page's own work | long tasks (> 50 ms) | longest task | JS heap after the live phase | rows in the DOM |\n|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for f in all {
        let label = if f.nodes == 0 {
            "0 (baseline: empty fleet)".to_owned()
        } else {
            f.nodes.to_string()
        };
        out.push_str(&format!(
            "| {label} | {} | {:.0} ms | {:.1} MiB | {:.0} | {:.0} ms/s | {} in {live_seconds} s | {:.0} ms | {:.1} MiB | {} |\n",
            f.shown, f.first_render_ms, f.heap_mib, f.live_fps, f.work_ms_per_s, f.long_tasks, f.longest_task_ms, f.live_heap_mib, f.dom_rows
        ));
    }
    out
}

/// Replaces the text between the dashboard-bench markers of BENCHMARKS.md.
fn write_benchmarks(section: &str) {
    let path = workspace_root().join("docs/BENCHMARKS.md");
    let Ok(text) = std::fs::read_to_string(&path) else {
        eprintln!("docs/BENCHMARKS.md not readable; figures printed only");
        return;
    };
    let (start, end) = (
        "<!-- dashboard-bench:start -->",
        "<!-- dashboard-bench:end -->",
    );
    let (Some(a), Some(b)) = (text.find(start), text.find(end)) else {
        eprintln!("docs/BENCHMARKS.md has no dashboard-bench markers; figures printed only");
        return;
    };
    let updated = format!("{}{start}\n{section}{}", &text[..a], &text[b..]);
    if std::fs::write(&path, updated).is_ok() {
        println!("written to docs/BENCHMARKS.md");
    }
}

#[tokio::main]
async fn main() {
    let sizes: Vec<u64> = std::env::var("DASHBOARD_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000".to_owned())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let live_seconds = std::env::var("DASHBOARD_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let mut all = vec![measure(0, live_seconds).await];
    for nodes in sizes {
        println!("measuring {nodes} nodes…");
        all.push(measure(nodes, live_seconds).await);
    }
    let chromium = std::process::Command::new("chromium")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let section = format!(
        "Measured {} with `cargo bench -p fleet-tests --bench dashboard` ({chromium}, headless, on this 2-core machine; fleet-sim at a 10 s heartbeat interval, so the page receives nodes/10 heartbeats a second in the live phase).\n\n{}\n",
        chrono::Utc::now().format("%Y-%m-%d"),
        table(&all, live_seconds)
    );
    println!("\n{section}");
    write_benchmarks(&section);
}
