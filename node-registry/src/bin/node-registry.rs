//! `node-registry`: the registry worker. Thin: parse config, set up tracing,
//! run until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use node_registry::config::{Overrides, RegistryConfig};

/// The fleet node registry: consumes node events, keeps node state in
/// JetStream KV, raises liveness alerts and answers discovery.
#[derive(Debug, Parser)]
#[command(name = "node-registry", version)]
struct Cli {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL")]
    nats_url: Option<String>,
    /// Silence after which an online node is degraded (e.g. 90s).
    #[arg(long, value_parser = humantime::parse_duration)]
    degraded_after: Option<Duration>,
    /// Silence after which a node is offline (e.g. 5m).
    #[arg(long, value_parser = humantime::parse_duration)]
    offline_after: Option<Duration>,
    /// Replicas of the streams and buckets it creates (3 on a 3-server
    /// cluster; see nats-config/cluster/).
    #[arg(long)]
    replicas: Option<usize>,
    /// Split the event stream into this many shares by node id, each led
    /// by one instance under its own lease (1 to 64; default 1). Fixed
    /// when the stream is created: see docs/SCALING.md.
    #[arg(long)]
    partitions: Option<u32>,
    /// Run as the hub's global view over these regions' JetStream domains
    /// (e.g. eu,us): their `nodes` buckets sourced into this domain's,
    /// discovery across them, nothing judged here (see
    /// nats-config/leaf/ and docs/SCALING.md).
    #[arg(long, value_delimiter = ',')]
    global_view: Option<Vec<String>>,
    /// Serve Prometheus metrics on this address's /metrics (e.g.
    /// 127.0.0.1:9464). Off by default.
    #[arg(long)]
    metrics_addr: Option<std::net::SocketAddr>,
    /// Push metrics and traces over OTLP/HTTP to this collector (e.g.
    /// http://127.0.0.1:4318). Off by default.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,
    #[command(flatten)]
    auth: runtime_support::AuthFlags,
    /// TOML configuration file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML-like JSON and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

/// What to do instead of running the registry.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Ask the running instance (this host's, or the configured `instance`)
    /// for its health over NATS; print it; exit 0 if healthy or degraded,
    /// 1 if unhealthy or silent (for HEALTHCHECK and systemd).
    Health,
}

/// The allocator: the registry's work is millions of small, short-lived
/// allocations (decoded events, records, replies); under glibc's malloc half
/// of the ingest profile was the allocator itself (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// One thread: the work is a pipeline of small steps on NATS messages, and on
// a small machine hopping between threads cost more than it gave (measured
// with the scale bench: see docs/BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        nats_url: cli.nats_url,
        degraded_after: cli.degraded_after,
        offline_after: cli.offline_after,
        replicas: cli.replicas,
        partitions: cli.partitions,
        global_view: cli.global_view,
        metrics_addr: cli.metrics_addr,
        otlp_endpoint: cli.otlp_endpoint,
        auth: cli.auth,
    };
    let config = match RegistryConfig::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("node-registry: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        match serde_json::to_string_pretty(&config) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("node-registry: {e}"),
        }
        return ExitCode::SUCCESS;
    }
    if let Some(Command::Health) = cli.command {
        return match node_registry::probe::probe(&config).await {
            Ok(health) => {
                println!("{}", serde_json::to_string(&health).unwrap_or_default());
                if node_registry::probe::passes(health.status) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("node-registry health: {e}");
                ExitCode::FAILURE
            }
        };
    }
    // The OpenTelemetry SDK, /metrics and OTLP, when asked for: the
    // library's instruments and spans report through it.
    let stop_telemetry = runtime_support::CancellationToken::new();
    let telemetry = fleet_telemetry::Telemetry::start(
        fleet_telemetry::TelemetryConfig {
            metrics_addr: config.metrics_addr,
            otlp_endpoint: config.otlp_endpoint.clone(),
            otlp_interval: config.otlp_interval,
            cardinality_limits: node_registry::metrics::cardinality_limits(
                config.metrics_per_node_limit,
                config.metrics_per_gpu_limit,
            ),
            ..fleet_telemetry::TelemetryConfig::new("node-registry", config.instance_name())
        },
        stop_telemetry.clone(),
    )
    .await;
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("node-registry: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime_support::init_tracing_with(&config.log_format, telemetry.tracing_layer());
    telemetry.announce();
    let result = node_registry::run(config, runtime_support::shutdown_signal()).await;
    stop_telemetry.cancel();
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node-registry failed");
            ExitCode::FAILURE
        }
    }
}
