//! `fleet-sim`: runs a simulated fleet against a NATS server and prints a
//! JSON report (crashes included) on stdout.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use fleet_sim::{SimConfig, Simulator};
use schemas::Encoding;

/// Simulate a fleet of nodes: registrations, heartbeats, churn, crashes.
#[derive(Debug, Parser)]
#[command(name = "fleet-sim", version)]
struct Cli {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Nodes at the start.
    #[arg(long, default_value_t = 1000)]
    nodes: u64,
    /// Heartbeat interval (e.g. 30s).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    heartbeat_interval: Duration,
    /// Jitter of each interval, as a fraction.
    #[arg(long, default_value_t = 0.1)]
    jitter: f64,
    /// Event encoding: json or protobuf.
    #[arg(long, default_value = "json")]
    encoding: String,
    /// New nodes per second.
    #[arg(long, default_value_t = 0.0)]
    joins_per_sec: f64,
    /// Graceful leaves per second.
    #[arg(long, default_value_t = 0.0)]
    leaves_per_sec: f64,
    /// Crashes per second.
    #[arg(long, default_value_t = 0.0)]
    crashes_per_sec: f64,
    /// Initial nodes that register but never heartbeat.
    #[arg(long, default_value_t = 0)]
    silent: u64,
    /// How long to run (e.g. 2m).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Prefix of node ids.
    #[arg(long, default_value = "sim")]
    id_prefix: String,
    /// Connections to spread the fleet over.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// One heartbeat of a node in this many waits for JetStream's ack, as
    /// the agent does; 1 acks every heartbeat.
    #[arg(long, default_value_t = 4)]
    heartbeat_ack_every: u64,
    /// Seed of the deterministic generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Also write the report here.
    #[arg(long)]
    report: Option<PathBuf>,
}

/// The allocator: each event is a handful of small allocations; under
/// glibc's malloc they were a third of the simulator's profile.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    runtime_support::init_tracing("text");
    let encoding = match cli.encoding.as_str() {
        "json" => Encoding::Json,
        "protobuf" => Encoding::Protobuf,
        other => {
            eprintln!("fleet-sim: --encoding {other:?}: expected json or protobuf");
            return ExitCode::from(2);
        }
    };
    if !(0.0..1.0).contains(&cli.jitter) || cli.connections == 0 {
        eprintln!("fleet-sim: --jitter must be in [0, 1) and --connections at least 1");
        return ExitCode::from(2);
    }
    // Split the fleet over connections: each part is its own simulator with
    // its own ids and seed.
    let parts = cli.connections as u64;
    let mut runs = Vec::new();
    for part in 0..parts {
        let client = match async_nats::connect(runtime_support::server_list(&cli.nats_url)).await {
            Ok(client) => client,
            Err(e) => {
                eprintln!("fleet-sim: connecting to {}: {e}", cli.nats_url);
                return ExitCode::FAILURE;
            }
        };
        let share = |x: u64| x / parts + u64::from(part < x % parts);
        let config = SimConfig {
            nodes: share(cli.nodes),
            heartbeat_interval: cli.heartbeat_interval,
            jitter: cli.jitter,
            encoding,
            joins_per_sec: cli.joins_per_sec / parts as f64,
            leaves_per_sec: cli.leaves_per_sec / parts as f64,
            crashes_per_sec: cli.crashes_per_sec / parts as f64,
            silent: share(cli.silent),
            duration: cli.duration,
            id_prefix: if parts == 1 {
                cli.id_prefix.clone()
            } else {
                format!("{}-{part}", cli.id_prefix)
            },
            seed: cli.seed.wrapping_add(part),
            heartbeat_ack_every: cli.heartbeat_ack_every,
            ..SimConfig::default()
        };
        let js = async_nats::jetstream::new(client);
        runs.push(tokio::spawn(async move {
            Simulator::new(config, js).run().await
        }));
    }
    let mut total = fleet_sim::SimReport::default();
    for run in runs {
        match run.await {
            Ok(Ok(r)) => {
                total.published += r.published;
                total.failed += r.failed;
                total.registers += r.registers;
                total.registers_retried += r.registers_retried;
                total.reannounces_answered += r.reannounces_answered;
                total.heartbeats += r.heartbeats;
                total.deregisters += r.deregisters;
                total.crashes.extend(r.crashes);
                total.alive_at_end += r.alive_at_end;
                total.seconds = total.seconds.max(r.seconds);
            }
            Ok(Err(e)) => {
                eprintln!("fleet-sim: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("fleet-sim: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    total.events_per_sec = total.published as f64 / total.seconds.max(1e-9);
    let text = match serde_json::to_string_pretty(&total) {
        Ok(text) => text,
        Err(e) => {
            eprintln!("fleet-sim: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{text}");
    if let Some(path) = cli.report {
        if let Err(e) = std::fs::write(&path, &text) {
            eprintln!("fleet-sim: writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
