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
}

#[tokio::main]
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
    };
    let config = match AgentConfig::load(cli.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("node-agent: {e}");
            return ExitCode::from(2);
        }
    };
    if cli.print_config {
        return print_json(&config);
    }
    if let Some(Command::Detect) = cli.command {
        let url = config.ollama_url.clone();
        let caps = tokio::task::spawn_blocking(move || {
            node_agent::detect::Detector::new(&url).capabilities()
        })
        .await
        .unwrap_or_default();
        return print_json(&caps);
    }
    runtime_support::init_tracing(&config.log_format);
    match node_agent::run(config, runtime_support::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node-agent failed");
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
