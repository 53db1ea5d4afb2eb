//! The command line: every flag and subcommand of `nodectl`.

use std::collections::BTreeMap;

use clap::{Args, Parser, Subcommand, ValueEnum};
use nodectl::Error;
use schemas::DiscoverRequest;

/// Operate the fleet registry: list, find and follow nodes.
#[derive(Debug, Parser)]
#[command(name = "nodectl", version)]
pub struct Cli {
    /// NATS server URL.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,
    /// Seconds to wait for the registry.
    #[arg(long, default_value_t = 5, global = true)]
    pub timeout: u64,
    /// Send this command's trace over OTLP/HTTP to this collector (e.g.
    /// http://127.0.0.1:4318): the registry's part of the same request
    /// joins it.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
    /// How this invocation proves who it is to NATS.
    #[command(flatten)]
    pub auth: runtime_support::AuthFlags,
    #[command(subcommand)]
    pub command: Command,
}

/// How a command prints its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people: tables and timelines.
    Table,
    /// For programs: JSON (lines).
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every node the registry knows, of any status.
    Nodes {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
        /// Only what is out of service (drained or silent nodes, cordoned
        /// or quarantined GPUs) with why, by whom and since when, like
        /// Slurm's `sinfo -R`.
        #[arg(long)]
        reasons: bool,
    },
    /// One node's record, as JSON.
    Get {
        /// The node's id, as `nodectl nodes` lists it.
        id: String,
    },
    /// Nodes matching a query (online ones unless --status says otherwise).
    Discover(Box<DiscoverArgs>),
    /// Where a model (or an amount of VRAM) fits now, on GPUs in service,
    /// with the GPU indices it would use: `nodectl fit qwen3:32b`.
    Fit(Box<FitArgs>),
    /// A live table of the nodes matching a selector (all nodes without one);
    /// one line per change when the output is not a terminal.
    Watch {
        /// A label selector over labels and tags.
        selector: Option<String>,
    },
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
    /// Drain nodes: maintenance with a reason (not judged, not discovered
    /// as online), until resumed or until a deadline (admin). Survives
    /// registry restarts and failovers.
    Drain {
        /// The nodes' ids, as `nodectl nodes` lists them.
        #[arg(required = true)]
        ids: Vec<String>,
        /// Why (shown by `nodectl nodes --reasons` and in the alert).
        #[arg(long)]
        reason: String,
        /// Resume by itself after this long (e.g. 2h), on the registry's clock.
        #[arg(long = "for", conflicts_with = "until", value_parser = parse_for)]
        for_: Option<String>,
        /// Resume by itself at this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
    /// Take drained nodes out of maintenance now (admin).
    Resume {
        /// The nodes' ids, as `nodectl nodes` lists them.
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Put a node in maintenance without a reason (admin); with --gpu, take
    /// one GPU out of service instead (the node stays in service).
    Cordon {
        /// The node's id, as `nodectl nodes` lists it.
        id: String,
        /// Only this GPU (its index), out of discovery's GPU figures and fit.
        #[arg(long, requires = "reason")]
        gpu: Option<u32>,
        /// Why.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Take a node out of maintenance (admin); with --gpu, put that GPU
    /// back in service.
    Uncordon {
        /// The node's id, as `nodectl nodes` lists it.
        id: String,
        /// Only this GPU (its index).
        #[arg(long)]
        gpu: Option<u32>,
    },
    /// Role profiles: settings every node of a role applies live (admin to
    /// write).
    Profile {
        #[command(subcommand)]
        command: ProfileCommand,
    },
    /// Remove a node's record (admin); for nodes gone for good. A live node
    /// registers again: revoke its credentials first.
    Deregister {
        /// The node's id, as `nodectl nodes` lists it.
        id: String,
        /// Why (kept in the alert).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Join tokens: one-time tokens a new machine exchanges for its own
    /// credentials (`node-agent join --token ...`).
    Token {
        /// The auth directory (for the bootstrap credentials the token carries).
        #[arg(long, env = "FLEET_AUTH_DIR", default_value = "fleet-auth")]
        dir: std::path::PathBuf,
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Set up and manage credentials (auth mode): works on an auth directory.
    Auth {
        /// The auth directory (keys 0600; keep it off the nodes).
        #[arg(long, env = "FLEET_AUTH_DIR", default_value = "fleet-auth")]
        dir: std::path::PathBuf,
        #[command(subcommand)]
        command: AuthCommand,
    },
    /// Every registry instance's health (found with $SRV.PING, asked on
    /// registry.health); exits non-zero when none is healthy.
    Health {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Serve the fleet page (a live dashboard that talks to NATS over its
    /// WebSocket listener) on loopback; prints its URL. Files only, no API.
    /// With --creds, the page connects with those credentials (a reader's).
    Dashboard {
        /// Where to serve the page.
        #[arg(long, default_value = fleet_dashboard::DEFAULT_LISTEN)]
        listen: std::net::SocketAddr,
        /// nats-server's WebSocket URL, as the browser will dial it.
        #[arg(long, env = "NATS_WS_URL", default_value = fleet_dashboard::DEFAULT_WS_URL)]
        ws_url: String,
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

/// `nodectl profile ...`.
#[derive(Debug, Subcommand)]
pub enum ProfileCommand {
    /// Write a role's profile from a TOML or JSON file (checked first:
    /// unknown keys and bad values are refused).
    Set {
        /// The role.
        role: String,
        /// The profile file (.toml or .json).
        file: std::path::PathBuf,
    },
    /// A role's profile now, with its revision.
    Get {
        /// The role.
        role: String,
    },
    /// Every role's profile: role, revision, when written.
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Remove a role's profile (its history stays); nodes go back to their
    /// own configuration.
    Rm {
        /// The role.
        role: String,
    },
    /// Every revision of a role's profile the bucket keeps.
    History {
        /// The role.
        role: String,
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

/// A drain's length, checked here so a typo is named before any request.
fn parse_for(text: &str) -> Result<String, String> {
    humantime::parse_duration(text)
        .map(|_| text.to_owned())
        .map_err(|e| format!("{e} (e.g. 90m, 2h, 1d)"))
}

/// Admin commands over the auth directory (operator, accounts, issued
/// credentials).
#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Create the operator, the system and fleet accounts and the standard
    /// credentials (registry, admin, reader, bootstrap, sys) in --dir.
    Init,
    /// Issue credentials: a fresh user key and JWT, written 0600 to
    /// <dir>/creds/<name>.creds (or --out).
    Issue {
        /// node, reader, admin or registry.
        #[arg(long)]
        role: String,
        /// The user's name; for a node, its node id.
        #[arg(long)]
        name: String,
        /// For a node: its role, whose profile (only) it may read.
        #[arg(long)]
        node_role: Option<String>,
        /// How long they are valid (e.g. 30d); forever without.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
        /// Write them here instead.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Revoke every credential issued to a name (or a user public key), and
    /// push the account's new JWT to the servers at --nats-url.
    Revoke {
        /// The name or public key.
        name: String,
        /// Only update the files (push later, or restart the servers).
        #[arg(long)]
        no_push: bool,
    },
    /// List the credentials issued.
    List,
}

/// What `nodectl token` does.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a one-time join token and print it.
    Create {
        /// The role the joining node gets.
        #[arg(long, default_value = "worker")]
        role: String,
        /// Labels the joining node gets: k[=v],...
        #[arg(long, default_value = "")]
        labels: String,
        /// How long the token can be used (e.g. 1h).
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        ttl: std::time::Duration,
    },
    /// List the join tokens the registry keeps (usable, used, revoked,
    /// expired; records go `token_retention` after expiry).
    List {
        /// Output: a table, or JSON lines.
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
    /// Revoke a token that has not been used yet (its id, or the token).
    Revoke {
        /// The token's id (first column of `token list`) or the whole token.
        token: String,
    },
}

/// The filters of `nodectl discover`.
#[derive(Debug, Args)]
pub struct DiscoverArgs {
    /// A label selector over labels and tags: "gpu,region in (eu,us),tier!=edge,!spot".
    pub selector: Option<String>,
    /// A tag or a label key whose value is not "false"; repeatable.
    #[arg(long)]
    pub capability: Vec<String>,
    /// A label that must match: key=value, or key=* for any value; repeatable.
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// An installed model (e.g. qwen3:8b).
    #[arg(long)]
    pub model: Option<String>,
    /// The node's role.
    #[arg(long)]
    pub role: Option<String>,
    /// online (default), degraded, offline, maintenance, any.
    #[arg(long)]
    pub status: Option<String>,
    /// Least RAM in GiB.
    #[arg(long)]
    pub min_ram_gb: Option<f64>,
    /// Least CPU cores.
    #[arg(long)]
    pub min_cpu_cores: Option<u32>,
    /// Least VRAM on one GPU, in GiB.
    #[arg(long)]
    pub min_gpu_vram_gb: Option<f64>,
    /// Least VRAM of all GPUs together, in GiB.
    #[arg(long)]
    pub min_total_gpu_vram_gb: Option<f64>,
    /// Least VRAM free now on one GPU, in GiB.
    #[arg(long)]
    pub min_free_gpu_vram_gb: Option<f64>,
    /// At least this many GPUs (in service, unless --gpu-health any).
    #[arg(long)]
    pub min_gpus: Option<u32>,
    /// Which GPUs count for the GPU bounds: healthy (default: in service,
    /// neither failed nor quarantined) or any.
    #[arg(long)]
    pub gpu_health: Option<String>,
    /// Least disk, in GiB.
    #[arg(long)]
    pub min_disk_gb: Option<f64>,
    /// Every one of these models installed; repeatable.
    #[arg(long)]
    pub models_all: Vec<String>,
    /// At least one of these models installed; repeatable.
    #[arg(long)]
    pub models_any: Vec<String>,
    /// Rank nodes with this label first (key=value); repeatable.
    #[arg(long = "prefer")]
    pub prefer_labels: Vec<String>,
    /// least_loaded (default), most_free_vram, random, node_id.
    #[arg(long)]
    pub sort: Option<String>,
    /// Nearest first: "me" (this connection's NATS server) or a NATS
    /// server, cluster, domain or region name; adds an estimated round trip
    /// per node (LATENCY).
    #[arg(long)]
    pub near: Option<String>,
    /// Most nodes to return (default 100).
    #[arg(long)]
    pub limit: Option<u32>,
    /// Only these record fields, comma-separated (node_id always).
    #[arg(long, value_delimiter = ',')]
    pub fields: Vec<String>,
    /// Continue after this cursor (sort node_id).
    #[arg(long)]
    pub cursor: Option<String>,
    /// Answer only from an index at least at this KV revision.
    #[arg(long)]
    pub min_revision: Option<u64>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl DiscoverArgs {
    /// The discovery request these flags ask for.
    pub fn request(&self) -> Result<DiscoverRequest, Error> {
        let pairs = |flag: &str, items: &[String]| -> Result<BTreeMap<String, String>, Error> {
            items
                .iter()
                .map(|item| {
                    item.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| {
                            Error::Invalid(format!("--{flag} {item:?}: expected key=value"))
                        })
                })
                .collect()
        };
        Ok(DiscoverRequest {
            selector: self.selector.clone(),
            capability: self.capability.clone(),
            labels: pairs("label", &self.labels)?,
            model: self.model.clone(),
            models_all: self.models_all.clone(),
            models_any: self.models_any.clone(),
            role: self.role.clone(),
            status: self.status.clone(),
            min_ram_gb: self.min_ram_gb,
            min_cpu_cores: self.min_cpu_cores,
            min_gpu_vram_gb: self.min_gpu_vram_gb,
            min_total_gpu_vram_gb: self.min_total_gpu_vram_gb,
            min_free_gpu_vram_gb: self.min_free_gpu_vram_gb,
            min_disk_gb: self.min_disk_gb,
            prefer_labels: pairs("prefer", &self.prefer_labels)?,
            sort: self.sort.clone(),
            limit: self.limit,
            fields: self.fields.clone(),
            cursor: self.cursor.clone(),
            min_revision: self.min_revision,
            gpu_health: self.gpu_health.clone(),
            min_gpus: self.min_gpus,
            fit: None,
            strategy: None,
            near: self.near.clone(),
            requester: None,
        })
    }
}

/// `nodectl fit`.
#[derive(Debug, clap::Args)]
pub struct FitArgs {
    /// The model (its size from the nodes' Ollama listings).
    pub model: Option<String>,
    /// The VRAM it needs in GiB over all its GPUs (instead of a model's size).
    #[arg(long)]
    pub vram_gb: Option<f64>,
    /// Over this many GPUs of one node (default 1: one card).
    #[arg(long)]
    pub gpus: Option<u32>,
    /// binpack (default: least free VRAM left, keeps big cards free) or spread.
    #[arg(long)]
    pub strategy: Option<String>,
    /// Only nodes matching this label selector.
    #[arg(long)]
    pub selector: Option<String>,
    /// Count failed and quarantined GPUs too: healthy (default) or any.
    #[arg(long)]
    pub gpu_health: Option<String>,
    /// Most nodes to show.
    #[arg(long)]
    pub limit: Option<u32>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

impl FitArgs {
    /// The discovery request these flags ask for.
    pub fn request(&self) -> DiscoverRequest {
        DiscoverRequest {
            fit: Some(schemas::Fit {
                model: self.model.clone(),
                vram_gb: self.vram_gb,
                gpus: self.gpus,
            }),
            strategy: self.strategy.clone(),
            selector: self.selector.clone(),
            gpu_health: self.gpu_health.clone(),
            limit: self.limit,
            ..DiscoverRequest::default()
        }
    }
}
