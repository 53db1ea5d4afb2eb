//! `node-agent`: thin binary over the `node_agent` library. Parses the
//! configuration, sets up tracing, runs until SIGTERM or SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use node_agent::config::{AgentConfig, Overrides};

/// The fleet node agent: registers this machine, reports what it can do,
/// heartbeats, answers control tasks.
#[derive(Debug, Parser)]
#[command(name = "node-agent", version)]
struct Cli {
    /// NATS server URL.
    #[arg(long, env = "NATS_URL", global = true)]
    nats_url: Option<String>,
    /// Node id (default: derived once and kept in the state directory).
    #[arg(long, global = true)]
    node_id: Option<String>,
    /// Human name of the node (default: the hostname).
    #[arg(long, global = true)]
    node_name: Option<String>,
    /// Role of the node (default: worker).
    #[arg(long, global = true)]
    role: Option<String>,
    /// Labels: k[=v],... (a bare key means "true").
    #[arg(long, global = true)]
    labels: Option<String>,
    /// Time between heartbeats (e.g. 30s), jittered by ±10 %.
    #[arg(long, value_parser = humantime::parse_duration, global = true)]
    heartbeat_interval: Option<Duration>,
    /// Where the node id is kept.
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    /// Ollama's HTTP address.
    #[arg(long, global = true)]
    ollama_url: Option<String>,
    /// How often capabilities are detected again (e.g. 5m).
    #[arg(long, value_parser = humantime::parse_duration, global = true)]
    detect_interval: Option<Duration>,
    /// Encoding of published events: json or protobuf.
    #[arg(long, global = true)]
    encoding: Option<String>,
    /// Push metrics and registration traces over OTLP/HTTP to this
    /// collector (e.g. http://127.0.0.1:4318). Off by default.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    otlp_endpoint: Option<String>,
    #[command(flatten)]
    auth: runtime_support::AuthFlags,
    /// TOML configuration file (default /etc/node-agent/config.toml if present).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Print the effective configuration and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the detected capabilities as JSON and exit.
    Detect,
    /// Exchange a one-time join token (from `nodectl token create`) for this
    /// node's own credentials, store them in the state directory, and run.
    Join {
        /// The join token, as `nodectl token create` printed it.
        #[arg(long, env = "NODE_AGENT_JOIN_TOKEN")]
        token: String,
        /// Store the credentials and exit instead of running.
        #[arg(long)]
        no_run: bool,
    },
    /// Ask the registry how it sees this node, print the record and exit
    /// (exit 1 when it does not know the node, 3 when it is not online).
    Status,
    /// Whether the agent running with this state directory is alive and
    /// its heartbeats are acked (from <state-dir>/health.json); prints the
    /// health JSON; exit 0 if healthy, 1 if not (HEALTHCHECK, systemd).
    Health,
}

// NOTE: one thread is plenty for a daemon that wakes every few seconds, and
// keeps the agent's footprint small; blocking detection runs on tokio's
// blocking pool.
#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        nats_url: cli.nats_url,
        node_id: cli.node_id,
        node_name: cli.node_name,
        role: cli.role,
        labels: cli.labels,
        heartbeat_interval: cli.heartbeat_interval,
        state_dir: cli.state_dir,
        ollama_url: cli.ollama_url,
        detect_interval: cli.detect_interval,
        encoding: cli.encoding,
        otlp_endpoint: cli.otlp_endpoint,
        auth: cli.auth,
    };
    let mut config = match AgentConfig::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("node-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        return print_json(&config);
    }
    match cli.command {
        Some(Command::Detect) => {
            let probe = config.clone();
            let caps = tokio::task::spawn_blocking(move || {
                node_agent::detect::Detector::new(&probe).capabilities()
            })
            .await
            .unwrap_or_default();
            return print_json(&caps);
        }
        Some(Command::Status) => return status(&config).await,
        Some(Command::Health) => {
            let (status, reply) = node_agent::health::check(&config.state_dir, chrono::Utc::now());
            println!("{reply}");
            return if status == schemas::status::HealthStatus::Healthy {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            };
        }
        Some(Command::Join { token, no_run }) => {
            match node_agent::join::join(&config, &token).await {
                Ok(joined) => {
                    eprintln!(
                        "node-agent: joined as {} (role {}); credentials in {}",
                        joined.node_id,
                        joined.role,
                        config
                            .state_dir
                            .join(node_agent::config::CREDS_FILE)
                            .display()
                    );
                    if no_run {
                        return ExitCode::SUCCESS;
                    }
                }
                Err(e) => {
                    eprintln!("node-agent: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        None => {}
    }
    node_agent::join::apply_joined(&mut config);
    // Registration traces (a traceparent on every register, continued by
    // the registry) and, with --otlp-endpoint, metrics and spans pushed.
    let stop_telemetry = runtime_support::CancellationToken::new();
    let telemetry = fleet_telemetry::Telemetry::start(
        fleet_telemetry::TelemetryConfig {
            otlp_endpoint: config.otlp_endpoint.clone(),
            otlp_interval: config.otlp_interval,
            trace_without_export: true,
            ..fleet_telemetry::TelemetryConfig::new(
                "node-agent",
                config
                    .node_name
                    .clone()
                    .or_else(|| config.node_id.clone())
                    .unwrap_or_default(),
            )
        },
        stop_telemetry.clone(),
    )
    .await;
    let telemetry = match telemetry {
        Ok(telemetry) => telemetry,
        Err(e) => {
            eprintln!("node-agent: {e}");
            return ExitCode::from(2);
        }
    };
    runtime_support::init_tracing_with(&config.log_format, telemetry.tracing_layer());
    telemetry.announce();
    let file = cli.config.clone();
    let reload: node_agent::agent::Reload = Box::new(move || {
        AgentConfig::load(file.as_deref(), &overrides).map(|mut config| {
            node_agent::join::apply_joined(&mut config);
            config
        })
    });
    let result = node_agent::agent::run_with_reload(
        config,
        Some(reload),
        runtime_support::shutdown_signal(),
    )
    .await;
    stop_telemetry.cancel();
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node-agent failed");
            ExitCode::FAILURE
        }
    }
}

/// `node-agent status`: the registry's record of this node.
async fn status(config: &AgentConfig) -> ExitCode {
    let path = config.state_dir.join(node_agent::identity::NODE_ID_FILE);
    let id = match config.node_id.clone() {
        Some(id) => id,
        None => match std::fs::read_to_string(&path) {
            Ok(id) => id.trim().to_owned(),
            Err(e) => {
                eprintln!(
                    "node-agent: this node has no id yet ({}: {e}); has the agent run?",
                    path.display()
                );
                return ExitCode::FAILURE;
            }
        },
    };
    let auth = runtime_support::NatsAuth {
        inbox_prefix: subjects::NodeId::parse(&id)
            .ok()
            .map(|id| fleet_auth::node_inbox_prefix(&id)),
        ..config.nats_auth()
    };
    let client = match fleet_client::Client::connect_with(&config.nats_url, &auth).await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("node-agent: {e}");
            return ExitCode::FAILURE;
        }
    };
    match client.get(&id).await {
        Ok(Some(record)) => {
            let online = record.status == "online";
            let code = print_json(&record);
            if code != ExitCode::SUCCESS {
                return code;
            }
            if online {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            }
        }
        Ok(None) => {
            eprintln!("node-agent: the registry does not know node {id} (yet)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("node-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(value: &impl serde::Serialize) -> ExitCode {
    match serde_json::to_string_pretty(value) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("node-agent: {e}");
            ExitCode::FAILURE
        }
    }
}
