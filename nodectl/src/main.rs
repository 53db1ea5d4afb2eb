//! `nodectl`: the operator's command line over [`nodectl::Client`].

use std::collections::BTreeMap;
use std::process::ExitCode;

use chrono::Utc;
use clap::{Args, Parser, Subcommand, ValueEnum};
use futures::StreamExt;
use nodectl::{parse_time_arg, AuditQuery, AuditSource, Client, SelectorChange};
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
    /// Your .creds file (auth mode).
    #[arg(long, env = "NATS_CREDS", global = true)]
    creds: Option<std::path::PathBuf>,
    /// CA certificate(s) to trust for the server's certificate (PEM).
    #[arg(long, global = true)]
    tls_ca: Option<std::path::PathBuf>,
    /// Client certificate for mutual TLS (PEM).
    #[arg(long, global = true)]
    tls_cert: Option<std::path::PathBuf>,
    /// Key of --tls-cert (PEM).
    #[arg(long, global = true)]
    tls_key: Option<std::path::PathBuf>,
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
    Discover(Box<DiscoverArgs>),
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
    /// Put a node in maintenance: not judged, not discovered as online (admin).
    Cordon {
        /// The node id.
        id: String,
    },
    /// Take a node out of maintenance (admin).
    Uncordon {
        /// The node id.
        id: String,
    },
    /// Remove a node's record (admin); for nodes gone for good. A live node
    /// registers again: revoke its credentials first.
    Deregister {
        /// The node id.
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

/// Admin commands over the auth directory (operator, accounts, issued
/// credentials).
#[derive(Debug, Subcommand)]
enum AuthCommand {
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
enum TokenCommand {
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

#[derive(Debug, Args)]
struct DiscoverArgs {
    /// A label selector over labels and tags: "gpu,region in (eu,us),tier!=edge,!spot".
    selector: Option<String>,
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
    /// Least VRAM of all GPUs together, in GiB.
    #[arg(long)]
    min_total_gpu_vram_gb: Option<f64>,
    /// Least VRAM free now on one GPU, in GiB.
    #[arg(long)]
    min_free_gpu_vram_gb: Option<f64>,
    /// Least disk, in GiB.
    #[arg(long)]
    min_disk_gb: Option<f64>,
    /// Every one of these models installed; repeatable.
    #[arg(long)]
    models_all: Vec<String>,
    /// At least one of these models installed; repeatable.
    #[arg(long)]
    models_any: Vec<String>,
    /// Rank nodes with this label first (key=value); repeatable.
    #[arg(long = "prefer")]
    prefer_labels: Vec<String>,
    /// least_loaded (default), most_free_vram, random, node_id.
    #[arg(long)]
    sort: Option<String>,
    /// Most nodes to return (default 100).
    #[arg(long)]
    limit: Option<u32>,
    /// Only these record fields, comma-separated (node_id always).
    #[arg(long, value_delimiter = ',')]
    fields: Vec<String>,
    /// Continue after this cursor (sort node_id).
    #[arg(long)]
    cursor: Option<String>,
    /// Answer only from an index at least at this KV revision.
    #[arg(long)]
    min_revision: Option<u64>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,
}

impl DiscoverArgs {
    fn request(&self) -> Result<DiscoverRequest, String> {
        let pairs = |flag: &str, items: &[String]| -> Result<BTreeMap<String, String>, String> {
            items
                .iter()
                .map(|item| {
                    item.split_once('=')
                        .map(|(k, v)| (k.to_owned(), v.to_owned()))
                        .ok_or_else(|| format!("--{flag} {item:?}: expected key=value"))
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

fn nats_auth(cli: &Cli) -> runtime_support::NatsAuth {
    runtime_support::NatsAuth {
        creds: cli.creds.clone(),
        tls_ca: cli.tls_ca.clone(),
        tls_cert: cli.tls_cert.clone(),
        tls_key: cli.tls_key.clone(),
        inbox_prefix: None,
    }
}

/// `nodectl auth ...`.
async fn auth(cli: &Cli, dir: &std::path::Path, command: &AuthCommand) -> Result<(), String> {
    use fleet_auth::{AuthDir, Role};
    let open = || AuthDir::open(dir).map_err(|e| format!("{e} (run `nodectl auth init` first?)"));
    match command {
        AuthCommand::Init => {
            let made = AuthDir::init(dir).map_err(|e| e.to_string())?;
            println!("auth material in {}", made.path().display());
            println!(
                "  server config to include: {}",
                dir.join("server.conf").display()
            );
            for name in ["registry", "admin", "reader", "bootstrap", "sys"] {
                println!("  {name:9} {}", made.creds_path(name).display());
            }
            println!(
                "  account signing key (give to the registry to serve joins): {}",
                dir.join("fleet-signing.nk").display()
            );
            println!("  fleet account: {}", made.account());
        }
        AuthCommand::Issue {
            role,
            name,
            ttl,
            out,
        } => {
            let dir = open()?;
            let role = match role.as_str() {
                "node" => Role::Node(subjects::NodeId::parse(name).map_err(|e| e.to_string())?),
                "reader" => Role::Reader,
                "admin" => Role::Admin,
                "registry" => Role::Registry,
                other => {
                    return Err(format!(
                        "unknown role {other:?}: node, reader, admin or registry"
                    ))
                }
            };
            let path = dir.issue(&role, name, *ttl).map_err(|e| e.to_string())?;
            // The registry checks a node's event signatures against the key
            // it knows for it: tell it (with --creds, an admin's).
            if matches!(role, Role::Node(_)) {
                let key = dir
                    .issued()
                    .map_err(|e| e.to_string())?
                    .into_iter()
                    .rev()
                    .find(|u| u.name == *name)
                    .map(|u| u.public_key)
                    .ok_or("the issued user is missing from issued.json")?;
                if cli.creds.is_some() {
                    remember_node_key(cli, name, &key).await?;
                } else {
                    eprintln!(
                        "note: without --creds the registry is not told {name}'s key; its events go unchecked until it is"
                    );
                }
            }
            let path = match out {
                Some(out) => {
                    let text = std::fs::read_to_string(&path).map_err(|e| e.to_string())?;
                    fleet_auth::write_secret(out, &text).map_err(|e| e.to_string())?;
                    std::fs::remove_file(&path).map_err(|e| e.to_string())?;
                    out.clone()
                }
                None => path,
            };
            println!("{}", path.display());
        }
        AuthCommand::Revoke { name, no_push } => {
            let dir = open()?;
            let account = match dir.revoke(name) {
                Ok(account) => account,
                // Not issued here: a node that joined through the registry,
                // whose key the registry remembers.
                Err(fleet_auth::AuthError::UnknownUser(_)) => {
                    let key = joined_key(cli, name).await?;
                    dir.revoke_key(name, &key).map_err(|e| e.to_string())?
                }
                Err(e) => return Err(e.to_string()),
            };
            println!(
                "revoked {name} in {}",
                dir.path().join("fleet.jwt").display()
            );
            if !no_push {
                let sys = runtime_support::NatsAuth {
                    creds: Some(dir.creds_path("sys")),
                    ..nats_auth(cli)
                };
                let client = Client::connect_with(&cli.nats_url, &sys)
                    .await
                    .map_err(|e| e.to_string())?;
                let reply = client
                    .nats()
                    .request("$SYS.REQ.CLAIMS.UPDATE", account.into())
                    .await
                    .map_err(|e| format!("pushing the account update: {e}"))?;
                let reply: serde_json::Value = serde_json::from_slice(&reply.payload)
                    .map_err(|e| format!("the server's answer: {e}"))?;
                if let Some(error) = reply.get("error") {
                    return Err(format!("the server refused the account update: {error}"));
                }
                println!("pushed to {}", cli.nats_url);
            }
        }
        AuthCommand::List => {
            let dir = open()?;
            let users = dir.issued().map_err(|e| e.to_string())?;
            let time = |t: Option<i64>| {
                t.and_then(|t| chrono::DateTime::from_timestamp(t, 0))
                    .map_or_else(|| "-".to_owned(), |t| t.to_rfc3339())
            };
            let rows: Vec<Vec<String>> = users
                .iter()
                .map(|u| {
                    vec![
                        u.name.clone(),
                        u.role.clone(),
                        u.public_key.clone(),
                        time(Some(u.issued_at)),
                        time(u.expires_at),
                        time(u.revoked_at),
                    ]
                })
                .collect();
            print!(
                "{}",
                nodectl::table::render(
                    &["NAME", "ROLE", "KEY", "ISSUED", "EXPIRES", "REVOKED"],
                    &rows
                )
            );
        }
    }
    Ok(())
}

/// The registry's `registry_meta` bucket (lease, join tokens, node keys).
async fn registry_meta(client: &Client) -> Result<async_nats::jetstream::kv::Store, String> {
    async_nats::jetstream::new(client.nats().clone())
        .get_key_value(subjects::BUCKET_REGISTRY_META)
        .await
        .map_err(|e| {
            format!(
                "the registry's {} bucket: {e} (is the registry running?)",
                subjects::BUCKET_REGISTRY_META
            )
        })
}

/// Tells the registry a node's key (`nodekey.<id>` in `registry_meta`).
async fn remember_node_key(cli: &Cli, node_id: &str, public_key: &str) -> Result<(), String> {
    use fleet_auth::token::{node_key_key, NodeKeyRecord};
    let client = Client::connect_with(&cli.nats_url, &nats_auth(cli))
        .await
        .map_err(|e| e.to_string())?;
    let kv = registry_meta(&client).await?;
    let record = NodeKeyRecord {
        public_key: public_key.to_owned(),
        joined_at: schemas::time::format(Utc::now()),
        token_id: "issued".to_owned(),
    };
    let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
    kv.put(node_key_key(node_id), value.into())
        .await
        .map_err(|e| format!("storing {node_id}'s key: {e}"))?;
    Ok(())
}

/// The key a joined node was issued credentials for; its record is removed
/// (the node id may join again with a fresh token).
async fn joined_key(cli: &Cli, node_id: &str) -> Result<String, String> {
    use fleet_auth::token::{node_key_key, NodeKeyRecord};
    let client = Client::connect_with(&cli.nats_url, &nats_auth(cli))
        .await
        .map_err(|e| e.to_string())?;
    let kv = registry_meta(&client).await?;
    let key = node_key_key(node_id);
    let value = kv
        .get(&key)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no credentials issued to {node_id} here or by a join"))?;
    let record: NodeKeyRecord = serde_json::from_slice(&value).map_err(|e| e.to_string())?;
    kv.delete(&key).await.map_err(|e| e.to_string())?;
    Ok(record.public_key)
}

/// Writes a token's record to `registry_meta` and returns the token.
async fn create_token(
    client: &Client,
    dir: &std::path::Path,
    role: &str,
    labels: &str,
    ttl: std::time::Duration,
) -> Result<String, String> {
    use fleet_auth::token::{secret_digest, token_key, JoinToken, TokenRecord};
    let bootstrap = dir.join("creds").join("bootstrap.creds");
    let creds = std::fs::read_to_string(&bootstrap).map_err(|e| {
        format!(
            "{}: {e} (run `nodectl auth init` first?)",
            bootstrap.display()
        )
    })?;
    let mut granted = std::collections::BTreeMap::new();
    for item in labels.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = item.split_once('=').unwrap_or((item, "true"));
        schemas::validate::check_label_key(key).map_err(|e| e.to_string())?;
        granted.insert(key.to_owned(), value.to_owned());
    }
    if role.is_empty() || role.len() > 64 {
        return Err("--role must be 1 to 64 characters".into());
    }
    let token = JoinToken::new(creds).map_err(|e| e.to_string())?;
    let now = Utc::now();
    let record = TokenRecord {
        secret_sha256: secret_digest(&token.secret),
        role: role.to_owned(),
        labels: granted,
        created_at: schemas::time::format(now),
        expires_at: schemas::time::format(
            now + chrono::Duration::from_std(ttl).map_err(|e| e.to_string())?,
        ),
        used_at: None,
        node_id: None,
        revoked_at: None,
    };
    let kv = registry_meta(client).await?;
    let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
    kv.create(token_key(&token.id), value.into())
        .await
        .map_err(|e| format!("storing the token: {e}"))?;
    token.encode().map_err(|e| e.to_string())
}

/// Every token record in `registry_meta`, by id.
async fn token_records(
    kv: &async_nats::jetstream::kv::Store,
) -> Result<Vec<(String, fleet_auth::token::TokenRecord)>, String> {
    use fleet_auth::token::TOKEN_KEY_PREFIX;
    let mut records = Vec::new();
    for key in registry_kv::meta::keys_under(kv, TOKEN_KEY_PREFIX)
        .await
        .map_err(|e| e.to_string())?
    {
        let Some(value) = kv.get(&key).await.map_err(|e| e.to_string())? else {
            continue;
        };
        let id = key.trim_start_matches(TOKEN_KEY_PREFIX).to_owned();
        match serde_json::from_slice(&value) {
            Ok(record) => records.push((id, record)),
            Err(e) => eprintln!("token {id}: unreadable record ({e})"),
        }
    }
    Ok(records)
}

/// `nodectl token list`.
async fn list_tokens(client: &Client, output: Output) -> Result<(), String> {
    let kv = registry_meta(client).await?;
    let now = Utc::now();
    let records = token_records(&kv).await?;
    if output == Output::Json {
        for (id, record) in &records {
            let mut line = serde_json::to_value(record).map_err(|e| e.to_string())?;
            line["id"] = id.clone().into();
            line["state"] = record.state(now).to_string().into();
            if let Some(map) = line.as_object_mut() {
                map.remove("secret_sha256");
            }
            println!("{}", json_line(&line)?);
        }
        return Ok(());
    }
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|(id, record)| {
            let labels: Vec<String> = record
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            vec![
                id.clone(),
                record.state(now).to_string(),
                record.role.clone(),
                labels.join(","),
                record.expires_at.clone(),
                record.node_id.clone().unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print!(
        "{}",
        nodectl::table::render(&["ID", "STATE", "ROLE", "LABELS", "EXPIRES", "NODE"], &rows)
    );
    Ok(())
}

/// `nodectl token revoke`: marks an unused token revoked (compare-and-swap,
/// so a join in flight either wins or is refused); returns its id.
async fn revoke_token(client: &Client, token: &str) -> Result<String, String> {
    use fleet_auth::token::{token_key, JoinToken, TokenRecord, TOKEN_PREFIX};
    let id = if token.trim().starts_with(TOKEN_PREFIX) {
        JoinToken::decode(token).map_err(|e| e.to_string())?.id
    } else {
        token.trim().to_owned()
    };
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!("{id:?} is not a token id"));
    }
    let kv = registry_meta(client).await?;
    let key = token_key(&id);
    let entry = kv
        .entry(&key)
        .await
        .map_err(|e| e.to_string())?
        .filter(|e| e.operation == async_nats::jetstream::kv::Operation::Put)
        .ok_or_else(|| format!("no join token {id}"))?;
    let mut record: TokenRecord = serde_json::from_slice(&entry.value)
        .map_err(|e| format!("token {id}: unreadable record ({e})"))?;
    if let Some(used) = &record.used_at {
        return Err(format!(
            "join token {id} was used at {used} by {}: revoke that node's credentials instead (nodectl auth revoke {0})",
            record.node_id.as_deref().unwrap_or("?")
        ));
    }
    if record.revoked_at.is_some() {
        return Ok(id);
    }
    record.revoked_at = Some(schemas::time::format(Utc::now()));
    let value = serde_json::to_vec(&record).map_err(|e| e.to_string())?;
    kv.update(&key, value.into(), entry.revision)
        .await
        .map_err(|e| format!("join token {id} changed meanwhile (used?); look again: {e}"))?;
    Ok(id)
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Command::Auth { dir, command } = &cli.command {
        return auth(&cli, dir, command).await;
    }
    let client = Client::connect_with(&cli.nats_url, &nats_auth(&cli))
        .await
        .map_err(|e| e.to_string())?
        .with_timeout(std::time::Duration::from_secs(cli.timeout));
    match cli.command {
        Command::Nodes { output } => {
            let request = DiscoverRequest {
                status: Some("any".into()),
                limit: Some(1000),
                ..DiscoverRequest::default()
            };
            let nodes = client.list_all(&request).await.map_err(|e| e.to_string())?;
            match output {
                Output::Json => {
                    let reply = schemas::DiscoverReply {
                        total: nodes.len() as u64,
                        nodes,
                        ..schemas::DiscoverReply::default()
                    };
                    println!("{}", json_pretty(&reply)?)
                }
                Output::Table => print!("{}", nodectl::table::nodes(&nodes, Utc::now())),
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
                    println!(
                        "({} shown, {} matched, index revision {})",
                        reply.nodes.len(),
                        reply.total,
                        reply.revision
                    );
                    if let Some(cursor) = &reply.next_cursor {
                        println!("(more: --cursor {cursor})");
                    }
                }
            }
        }
        Command::Watch { selector } => {
            use std::io::IsTerminal;
            let selector = selector.unwrap_or_default();
            let mut changes = Box::pin(
                client
                    .watch_selector(&selector)
                    .await
                    .map_err(|e| e.to_string())?,
            );
            let live_table = std::io::stdout().is_terminal();
            let mut shown: BTreeMap<String, schemas::NodeRecord> = BTreeMap::new();
            while let Some(change) = changes.next().await {
                let now = schemas::time::format(Utc::now());
                match change.map_err(|e| e.to_string())? {
                    SelectorChange::Added(r) | SelectorChange::Changed(r) => {
                        if !live_table {
                            println!("{now}  {:<8} {}  {}", "PUT", r.node_id, r.status);
                        }
                        shown.insert(r.node_id.clone(), *r);
                    }
                    SelectorChange::Removed(id) => {
                        if !live_table {
                            println!("{now}  {:<8} {id}", "REMOVED");
                        }
                        shown.remove(&id);
                    }
                }
                if live_table {
                    let records: Vec<schemas::NodeRecord> = shown.values().cloned().collect();
                    // Clear the screen and draw the table again.
                    print!("\x1b[2J\x1b[H");
                    println!(
                        "nodectl watch {selector}    {now}    {} nodes\n",
                        records.len()
                    );
                    print!("{}", nodectl::table::nodes(&records, Utc::now()));
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
        // Handled before connecting.
        Command::Auth { .. } => {}
        Command::Cordon { id } => {
            let answer = client
                .admin("cordon", &id, None)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", json_pretty(&answer)?);
        }
        Command::Uncordon { id } => {
            let answer = client
                .admin("uncordon", &id, None)
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", json_pretty(&answer)?);
        }
        Command::Deregister { id, reason } => {
            let answer = client
                .admin("deregister", &id, reason.as_deref())
                .await
                .map_err(|e| e.to_string())?;
            println!("{}", json_pretty(&answer)?);
        }
        Command::Token {
            dir,
            command: TokenCommand::Create { role, labels, ttl },
        } => {
            let token = create_token(&client, &dir, &role, &labels, ttl).await?;
            println!("{token}");
        }
        Command::Token {
            command: TokenCommand::List { output },
            ..
        } => list_tokens(&client, output).await?,
        Command::Token {
            command: TokenCommand::Revoke { token },
            ..
        } => {
            let id = revoke_token(&client, &token).await?;
            println!("revoked join token {id}");
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
