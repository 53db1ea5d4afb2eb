//! `nodectl`: the operator's command line over [`nodectl::Client`].

use std::collections::BTreeMap;
use std::process::ExitCode;

use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use nodectl::{parse_time_arg, AuditQuery, AuditSource, Client, WatchChange};
use schemas::DiscoverRequest;

/// Operate the fleet registry: list, find and follow nodes.
#[derive(Debug, Parser)]
#[command(name = "nodectl", version)]
struct Cli {
    /// NATS server URL.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    nats_url: String,
    /// Seconds to wait for the registry.
    #[arg(long, default_value_t = 5, global = true)]
    timeout: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Every node the registry knows, of any status.
    Nodes {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// One node's record, as JSON.
    Get {
        /// The node id.
        id: String,
    },
    /// Nodes matching a query (online ones unless --status says otherwise).
    Discover(DiscoverArgs),
    /// Live changes of node records.
    Watch,
    /// Alerts: live, or replayed from the ALERTS stream with --since.
    Alerts {
        /// Replay alerts from this long ago (1h) or this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// After a replay, keep following live alerts.
        #[arg(long)]
        follow: bool,
        /// Output: one line per alert for people, or JSON lines.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// What happened to a node: its events merged with its alerts in time order.
    Audit {
        /// Only this node.
        #[arg(long)]
        node: Option<String>,
        /// From this long ago (1h, the default) or this time (RFC 3339).
        #[arg(long, default_value = "1h")]
        since: String,
        /// Up to this long ago or this time.
        #[arg(long)]
        until: Option<String>,
        /// Only these types (register, heartbeat, node.offline, ...); repeatable.
        #[arg(long = "type")]
        types: Vec<String>,
        /// Output: a timeline, or JSON lines.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Debug, Args)]
struct DiscoverArgs {
    /// A tag or a label key whose value is not "false"; repeatable.
    #[arg(long)]
    capability: Vec<String>,
    /// A label that must match: key=value, or key=* for any value; repeatable.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// An installed model (e.g. qwen3:8b).
    #[arg(long)]
    model: Option<String>,
    /// The node's role.
    #[arg(long)]
    role: Option<String>,
    /// online (default), degraded, offline, maintenance, any.
    #[arg(long)]
    status: Option<String>,
    /// Least RAM in GiB.
    #[arg(long)]
    min_ram_gb: Option<f64>,
    /// Least CPU cores.
    #[arg(long)]
    min_cpu_cores: Option<u32>,
    /// Least VRAM on one GPU, in GiB.
    #[arg(long)]
    min_gpu_vram_gb: Option<f64>,
    /// least_loaded (default) or node_id.
    #[arg(long)]
    sort: Option<String>,
    /// Most nodes to return (default 100).
    #[arg(long)]
    limit: Option<u32>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

impl DiscoverArgs {
    fn request(&self) -> Result<DiscoverRequest, String> {
        let mut labels = BTreeMap::new();
        for label in &self.labels {
            let (k, v) = label
                .split_once('=')
                .ok_or_else(|| format!("--label {label:?}: expected key=value"))?;
            labels.insert(k.to_owned(), v.to_owned());
        }
        Ok(DiscoverRequest {
            capability: self.capability.clone(),
            labels,
            model: self.model.clone(),
            role: self.role.clone(),
            status: self.status.clone(),
            min_ram_gb: self.min_ram_gb,
            min_cpu_cores: self.min_cpu_cores,
            min_gpu_vram_gb: self.min_gpu_vram_gb,
            sort: self.sort.clone(),
            limit: self.limit,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodectl: {e}");
            ExitCode::FAILURE
        }
    }
}

fn json_line(value: &impl serde::Serialize) -> Result<String, String> {
    serde_json::to_string(value).map_err(|e| e.to_string())
}

/// One alert as a line: JSON, or time, type, node, transition and message.
fn alert_line(alert: &schemas::Alert, output: Output) -> Result<String, String> {
    if output == Output::Json {
        return json_line(alert);
    }
    let transition = match (&alert.previous_status, &alert.status) {
        (Some(from), Some(to)) => format!("{from} -> {to}"),
        (None, Some(to)) => to.clone(),
        _ => String::new(),
    };
    Ok(format!(
        "{}  {:<26}  {:<24}  {:<22}  {}",
        alert.at,
        alert.r#type,
        alert.node_id.as_deref().unwrap_or("-"),
        transition,
        alert.message.as_deref().unwrap_or("")
    ))
}

fn json_pretty(value: &impl serde::Serialize) -> Result<String, String> {
    serde_json::to_string_pretty(value).map_err(|e| e.to_string())
}

async fn run(cli: Cli) -> Result<(), String> {
    let client = Client::connect(&cli.nats_url)
        .await
        .map_err(|e| e.to_string())?
        .with_timeout(std::time::Duration::from_secs(cli.timeout));
    match cli.command {
        Command::Nodes { output } => {
            let request = DiscoverRequest {
                status: Some("any".into()),
                sort: Some("node_id".into()),
                limit: Some(10_000),
                ..DiscoverRequest::default()
            };
            let reply = client.list(&request).await.map_err(|e| e.to_string())?;
            match output {
                Output::Json => println!("{}", json_pretty(&reply)?),
                Output::Table => {
                    print!("{}", nodectl::table::nodes(&reply.nodes, Utc::now()));
                    if reply.total as usize > reply.nodes.len() {
                        println!("({} of {} nodes shown)", reply.nodes.len(), reply.total);
                    }
                }
            }
        }
        Command::Get { id } => match client.get(&id).await.map_err(|e| e.to_string())? {
            Some(record) => println!("{}", json_pretty(&record)?),
            None => return Err(format!("no node {id}")),
        },
        Command::Discover(args) => {
            let reply = client
                .discover(&args.request()?)
                .await
                .map_err(|e| e.to_string())?;
            match args.output {
                Output::Json => println!("{}", json_pretty(&reply)?),
                Output::Table => {
                    print!("{}", nodectl::table::nodes(&reply.nodes, Utc::now()));
                    println!("({} shown, {} matched)", reply.nodes.len(), reply.total);
                }
            }
        }
        Command::Watch => {
            let mut changes = Box::pin(client.watch().await.map_err(|e| e.to_string())?);
            while let Some(change) = changes.next().await {
                match change.map_err(|e| e.to_string())? {
                    WatchChange::Put(r) => println!(
                        "{}  PUT      {}  {}  {}",
                        schemas::time::format(Utc::now()),
                        r.node_id,
                        r.status,
                        r.labels
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    WatchChange::Removed(key) => {
                        println!("{}  REMOVED  {key}", schemas::time::format(Utc::now()))
                    }
                    WatchChange::Unreadable(key) => {
                        println!("{}  UNREADABLE {key}", schemas::time::format(Utc::now()))
                    }
                }
            }
        }
        Command::Alerts {
            since,
            follow,
            output,
        } => {
            // Subscribe before replaying so nothing falls between the two.
            let live = if since.is_none() || follow {
                Some(client.follow_alerts().await.map_err(|e| e.to_string())?)
            } else {
                None
            };
            let mut seen = std::collections::HashSet::new();
            if let Some(since) = since {
                let since = parse_time_arg(&since)?;
                for alert in client
                    .alerts(since, None)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    seen.insert(alert.id.clone());
                    println!("{}", alert_line(&alert, output)?);
                }
            }
            if let Some(live) = live {
                let mut live = Box::pin(live);
                while let Some(alert) = live.next().await {
                    if seen.remove(&alert.id) {
                        continue;
                    }
                    println!("{}", alert_line(&alert, output)?);
                }
            }
        }
        Command::Audit {
            node,
            since,
            until,
            types,
            output,
        } => {
            let query = AuditQuery {
                node_id: node,
                since: Some(parse_time_arg(&since)?),
                until: until.as_deref().map(parse_time_arg).transpose()?,
                types,
            };
            let entries = client.audit(&query).await.map_err(|e| e.to_string())?;
            for entry in &entries {
                match output {
                    Output::Json => println!("{}", json_line(entry)?),
                    Output::Table => {
                        let source = match entry.source {
                            AuditSource::Event => "event",
                            AuditSource::Alert => "ALERT",
                        };
                        let note = entry
                            .detail
                            .get("message")
                            .or_else(|| entry.detail.get("reason"))
                            .and_then(|v| v.as_str())
                            .map(str::to_owned)
                            .or_else(|| {
                                entry
                                    .detail
                                    .get("metrics")
                                    .and_then(|m| m.get("cpu_pct"))
                                    .and_then(|v| v.as_f64())
                                    .map(|c| format!("cpu {c:.1}%"))
                            })
                            .unwrap_or_default();
                        println!(
                            "{}  {source:<5}  {:<20}  {:<28}  {note}",
                            schemas::time::format(entry.at),
                            entry.kind,
                            entry.node_id
                        );
                    }
                }
            }
            if output == Output::Table {
                println!("({} entries)", entries.len());
            }
        }
    }
    Ok(())
}
