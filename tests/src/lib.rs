//! The test harness: a real `nats-server` per test, and the fleet's own
//! binaries started as real processes around it.
//!
//! - [`NatsServer`]: JetStream on a free loopback port with a fresh temp
//!   store, killed on drop; [`NatsServer::restart`] keeps the store.
//! - [`Proc`]: a child process (registry, agent) with SIGTERM and SIGKILL,
//!   its log kept in a file and printed when a test fails.
//! - [`AlertTap`]: a subscription to `system.broadcast` to await alerts;
//!   [`AlertLog`]: one read all the time, for long runs.
//! - [`FakeOllama`]: answers `GET /api/tags` with a model list that tests can
//!   change while it runs.
//! - [`eventually`]: awaits a condition with a deadline.
//! - [`otlp::OtlpCollector`]: a stand-in OpenTelemetry collector.
#![deny(missing_docs)]

pub mod browser;
pub mod link;
pub mod otlp;

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use futures::StreamExt;
use schemas::Alert;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The nats-server binary (installed by `scripts/nats-server.sh` on first use).
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let script = workspace_root().join("scripts/nats-server.sh");
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
        assert!(out.status.success(), "{} failed", script.display());
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert!(!path.is_empty(), "{} printed no path", script.display());
        PathBuf::from(path)
    })
}

/// Runs `cargo build <args>` in the workspace, with the environment of the
/// shell that started the tests.
pub fn cargo_build(args: &[&str]) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let mut command = Command::new(cargo);
    // Cargo gives a test process the CARGO_PKG_* and other variables of the
    // test crate; build scripts that watch the environment (ring's) would
    // see a change and rebuild. Build with the outer environment.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let ours = key.starts_with("CARGO_") && key != "CARGO_HOME" && key != "CARGO_TARGET_DIR";
        if ours || key == "RUST_RECURSION_COUNT" {
            command.env_remove(key.as_ref());
        }
    }
    let status = command
        .current_dir(workspace_root())
        .arg("build")
        .args(args)
        .status()
        .expect("running cargo build");
    assert!(status.success(), "cargo build {args:?} failed");
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A binary of this workspace (`node-registry`, `node-agent`, `nodectl`),
/// built once per test run so the tests never run a stale one.
pub fn workspace_bin(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    // The same command as scripts/test.sh: the same feature unification, so
    // an up-to-date build is a no-op here.
    BUILT.get_or_init(|| cargo_build(&["--quiet", "--workspace", "--bins"]));
    target_dir().join("debug").join(name)
}

/// A release build of a workspace binary (for benchmarks).
pub fn release_bin(package: &str, name: &str) -> PathBuf {
    cargo_build(&["--quiet", "--release", "-p", package, "--bin", name]);
    target_dir().join("release").join(name)
}

/// Resource use of a process, from procfs (for benchmarks).
pub mod procfs {
    /// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ; 100 on Linux).
    pub fn clock_ticks() -> f64 {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    }

    /// User plus system CPU time of a process, in clock ticks.
    pub fn cpu_ticks(pid: u32) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The fields after the command name, which is in parentheses; utime
        // and stime are fields 14 and 15 of the line, 11 and 12 after ")".
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .unwrap_or(0)
        };
        field(11) + field(12)
    }

    /// Resident set size of a process, in KiB.
    pub fn rss_kib(pid: u32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// The value at quantile `p` (0..=1) of sorted samples.
    pub fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
        if sorted.is_empty() {
            return T::default();
        }
        let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[i]
    }
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// Awaits `check` until it yields `Some`, polling every 50 ms, for at most
/// `limit`; panics with `what` when the time is up.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until something accepts TCP connections on loopback `port`.
pub async fn wait_listening(what: &str, port: u16, limit: Duration) {
    eventually(what, limit, || async move {
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()
            .map(|_| ())
    })
    .await;
}

/// A real nats-server with JetStream, on a free port with a fresh store.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<std::process::Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server and waits until it accepts connections.
    pub async fn start() -> Self {
        Self::start_with_config("").await
    }

    /// Starts a server with extra configuration (nats-server config syntax,
    /// e.g. `max_payload: 65536`), after `nats-config/accounts.conf`.
    pub async fn start_with_config(config: &str) -> Self {
        Self::start_on(free_port(), config).await
    }

    /// Starts a server with `config` alone (no development accounts: for
    /// configurations with their own, like mutual TLS).
    pub async fn start_plain(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for nats-server");
        std::fs::write(dir.path().join("extra.conf"), config).expect("write nats-server config");
        Self::start_in(dir, free_port()).await
    }

    /// Starts the server whose `extra.conf` is in `dir`, on `port`.
    async fn start_in(dir: tempfile::TempDir, port: u16) -> Self {
        let mut server = Self {
            child: None,
            port,
            dir,
        };
        server.spawn().await;
        server
    }

    /// Its client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Starts a server in operator mode with the auth material of `auth`
    /// (its `server.conf`, instead of the development accounts).
    pub async fn start_with_auth(auth: &Path, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for nats-server");
        std::fs::copy(auth.join("server.conf"), dir.path().join("auth.conf"))
            .expect("copy the auth server.conf");
        std::fs::write(
            dir.path().join("extra.conf"),
            format!("include \"auth.conf\"\n{config}\n"),
        )
        .expect("write nats-server config");
        Self::start_in(dir, free_port()).await
    }

    /// Starts a server on a given port (for clients started before it).
    pub async fn start_on(port: u16, config: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for nats-server");
        // The development accounts (connection events exported to FLEET),
        // as the demo runs them; `include` paths are relative to the file.
        std::fs::copy(
            workspace_root().join("nats-config/accounts.conf"),
            dir.path().join("accounts.conf"),
        )
        .expect("copy nats-config/accounts.conf");
        std::fs::write(
            dir.path().join("extra.conf"),
            format!("include \"accounts.conf\"\n{config}\n"),
        )
        .expect("write nats-server config");
        Self::start_in(dir, port).await
    }

    async fn spawn(&mut self) {
        let store = self.dir.path().join("jetstream");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("nats-server.log"))
            .expect("nats-server log file");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(self.dir.path().join("extra.conf"))
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting nats-server");
        self.child = Some(child);
        let port = self.port;
        // Listening is enough (in auth mode an anonymous client is refused).
        wait_listening(
            "nats-server to accept connections",
            port,
            Duration::from_secs(15),
        )
        .await;
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A fresh client connection.
    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url())
            .await
            .expect("connecting to the test nats-server")
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// A temp directory that lives as long as the server (for agents' state).
    pub fn temp_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Kills the server (SIGKILL) without removing its store.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again after [`NatsServer::kill`], on the same port and store.
    pub async fn start_again(&mut self) {
        if self.child.is_none() {
            self.spawn().await;
        }
    }

    /// Kills and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Nats-servers clustered on loopback (`fleet`), each with its own store,
/// named `n0`, `n1`, …
#[derive(Debug)]
pub struct NatsCluster {
    /// The members, in name order.
    pub servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `n` servers and waits until JetStream has a meta leader.
    pub async fn start(n: usize) -> Self {
        let mut ports = std::collections::BTreeSet::new();
        while ports.len() < 2 * n {
            ports.insert(free_port());
        }
        let ports: Vec<u16> = ports.into_iter().collect();
        let (clients, routes) = ports.split_at(n);
        let route_list = routes
            .iter()
            .map(|p| format!("nats-route://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut servers = Vec::with_capacity(n);
        for (i, (client, route)) in clients.iter().zip(routes).enumerate() {
            let config = format!(
                "server_name: n{i}\ncluster {{\n  name: fleet\n  listen: 127.0.0.1:{route}\n  routes: [{route_list}]\n}}\n"
            );
            servers.push(NatsServer::start_on(*client, &config).await);
        }
        let cluster = Self { servers };
        cluster.wait_ready().await;
        cluster
    }

    /// Waits until every running member answers JetStream requests.
    pub async fn wait_ready(&self) {
        for server in self.servers.iter().filter(|s| s.pid().is_some()) {
            let js = async_nats::jetstream::new(server.client().await);
            eventually(
                "JetStream in the cluster to have a leader",
                Duration::from_secs(60),
                || {
                    let js = js.clone();
                    async move { js.query_account().await.ok().map(|_| ()) }
                },
            )
            .await;
        }
    }

    /// Every member's URL, comma-separated (for `--nats-url`).
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The member named `name` (`n0`…).
    pub fn named(&mut self, name: &str) -> Option<&mut NatsServer> {
        let i: usize = name.strip_prefix('n')?.parse().ok()?;
        self.servers.get_mut(i)
    }
}

/// A child process of the fleet (registry or agent).
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Proc {
    /// Starts `bin` with `args` and `envs`, logging to `log`.
    pub fn spawn(
        name: &str,
        bin: &Path,
        args: &[String],
        envs: &[(&str, String)],
        log: PathBuf,
    ) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("process log file");
        let err = file.try_clone().expect("log file handle");
        let mut command = Command::new(bin);
        command
            .args(args)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("NATS_URL")
            .stdout(file)
            .stderr(err);
        for (k, v) in envs {
            command.env(k, v);
        }
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        Self {
            name: name.to_owned(),
            child: Some(child),
            log,
        }
    }

    /// The OS process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Kills it with SIGKILL: no chance to say goodbye.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Sends a signal by name (`HUP`, `TERM`, ...).
    pub fn signal(&self, name: &str) {
        let pid = self.pid().expect("the process is running");
        let status = Command::new("kill")
            .args([format!("-{name}"), pid.to_string()])
            .status()
            .expect("running kill");
        assert!(status.success(), "kill -{name} {pid} failed");
    }

    /// Sends SIGTERM and waits up to `limit` for it to exit; returns the
    /// exit status and how long it took, or `None` if it did not exit.
    pub async fn terminate(
        &mut self,
        limit: Duration,
    ) -> Option<(std::process::ExitStatus, Duration)> {
        let child = self.child.as_mut()?;
        let started = std::time::Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .ok()?;
        assert!(status.success(), "kill -TERM failed");
        let deadline = started + limit;
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Some((status, started.elapsed()));
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The process's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail_from = lines.len().saturating_sub(40);
            // Before the tail, the warnings (at most 60): what went wrong
            // earlier is often what explains the end.
            let warnings: Vec<&str> = lines[..tail_from]
                .iter()
                .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
                .copied()
                .collect();
            if !warnings.is_empty() {
                eprintln!("----- earlier warnings of {} -----", self.name);
                for line in &warnings[warnings.len().saturating_sub(60)..] {
                    eprintln!("{line}");
                }
            }
            eprintln!("----- last lines of {} -----", self.name);
            for line in &lines[tail_from..] {
                eprintln!("{line}");
            }
        }
        self.kill9();
    }
}

/// Starts `node-registry` against `server` with extra flags and
/// `NODE_REGISTRY_*` settings.
pub fn spawn_registry(
    server: &NatsServer,
    name: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Proc {
    spawn_registry_on(
        &server.url(),
        server.temp_path(&format!("{name}.log")),
        name,
        args,
        envs,
    )
}

/// Starts `node-registry` against the servers at `urls` (comma-separated),
/// logging to `log`.
pub fn spawn_registry_on(
    urls: &str,
    log: PathBuf,
    name: &str,
    args: &[&str],
    envs: &[(&str, &str)],
) -> Proc {
    let mut all = vec!["--nats-url".to_owned(), urls.to_owned()];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let envs: Vec<(&str, String)> = envs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    Proc::spawn(name, &workspace_bin("node-registry"), &all, &envs, log)
}

/// Starts `node-agent` against `server` with its state in `state` (a
/// directory under the server's temp dir) and extra flags.
pub fn spawn_agent(server: &NatsServer, state: &str, args: &[&str]) -> Proc {
    spawn_agent_on(&server.url(), &server.temp_path(state), args)
}

/// Starts `node-agent` against the servers at `urls` with its state in
/// `state` (it logs next to it).
pub fn spawn_agent_on(urls: &str, state: &Path, args: &[&str]) -> Proc {
    let mut all = vec![
        "--nats-url".to_owned(),
        urls.to_owned(),
        "--state-dir".to_owned(),
        state.display().to_string(),
    ];
    all.extend(args.iter().map(|s| (*s).to_owned()));
    let name = state
        .file_name()
        .map_or_else(|| "agent".to_owned(), |n| n.to_string_lossy().into_owned());
    Proc::spawn(
        &name,
        &workspace_bin("node-agent"),
        &all,
        &[],
        state.with_extension("log"),
    )
}

/// Starts a quick `node-agent` against `server`: a heartbeat every 300 ms,
/// no Ollama (a closed port), and `extra` flags.
pub fn spawn_quick_agent(server: &NatsServer, state: &str, extra: &[&str]) -> Proc {
    let mut args = vec![
        "--heartbeat-interval",
        "300ms",
        "--ollama-url",
        "http://127.0.0.1:9",
    ];
    args.extend_from_slice(extra);
    spawn_agent(server, state, &args)
}

/// Publishes `event` on node `node_id`'s events subject as an agent would
/// (JSON), and waits for the stream's ack.
pub async fn publish_event(
    js: &async_nats::jetstream::Context,
    node_id: &str,
    event: &schemas::NodeEvent,
) {
    let subject = subjects::node_events(&subjects::NodeId::parse(node_id).expect("node id"));
    let payload = serde_json::to_vec(event).expect("JSON");
    js.publish(subject, payload.into())
        .await
        .expect("publish")
        .await
        .expect("acked");
}

/// The node id an agent stored in its state directory, once it has.
pub async fn agent_node_id(server: &NatsServer, state: &str) -> String {
    stored_node_id(&server.temp_path(state)).await
}

/// The node id an agent stored in `state_dir`, once it has.
pub async fn stored_node_id(state_dir: &Path) -> String {
    let path = state_dir.join("node_id");
    eventually(
        "the agent to store its node id",
        Duration::from_secs(20),
        || {
            let path = path.clone();
            async move {
                std::fs::read_to_string(&path)
                    .ok()
                    .map(|s| s.trim().to_owned())
                    .filter(|s| !s.is_empty())
            }
        },
    )
    .await
}

/// Runs a binary of the workspace to completion, without `NATS_URL` from
/// the environment: (success, stdout, stderr), trimmed.
pub fn run_bin(name: &str, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(workspace_bin(name))
        .args(args)
        .env_remove("NATS_URL")
        .output()
        .expect("run");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        String::from_utf8_lossy(&out.stderr).trim().to_owned(),
    )
}

/// An RFC 3339 time of the contract (a test fails on anything else).
pub fn rfc3339(text: &str) -> chrono::DateTime<chrono::Utc> {
    schemas::time::parse(text).unwrap_or_else(|| panic!("{text:?} is not an RFC 3339 time"))
}

/// The node ids a discovery query (as JSON) answers, in reply order.
pub async fn discover_ids(client: &fleet_client::Client, json: &str) -> Vec<String> {
    let request: schemas::DiscoverRequest = serde_json::from_str(json).expect("request JSON");
    let reply = client.discover(&request).await.expect("discover answers");
    reply.nodes.into_iter().map(|n| n.node_id).collect()
}

/// A typed registry client on `server`, with the contract's names.
pub async fn registry_client(server: &NatsServer) -> fleet_client::Client {
    fleet_client::Client::new(server.client().await, subjects::Names::default())
}

/// Waits until a registry answers discovery (its index is loaded).
pub async fn wait_registry(client: &fleet_client::Client) {
    eventually(
        "the registry to answer",
        Duration::from_secs(20),
        || async {
            client
                .discover(&schemas::DiscoverRequest::default())
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

/// Sends `registry.admin` as `op` on `node_id` and returns the answer as
/// JSON (what an operator's tool sees on the wire). Known ops go through the
/// typed [`fleet_client::Client::admin`]; anything else is sent as raw JSON,
/// so a test can ask for what the typed client cannot say.
pub async fn admin_json(
    client: &fleet_client::Client,
    op: &str,
    node_id: &str,
    reason: Option<&str>,
) -> Result<serde_json::Value, fleet_client::ClientError> {
    let typed = op
        .parse::<schemas::status::AdminOp>()
        .ok()
        .zip(subjects::NodeId::parse(node_id).ok());
    if let Some((op, node_id)) = typed {
        let request = schemas::admin::AdminRequest {
            op,
            node_id,
            reason: reason.map(str::to_owned),
            by: None,
            gpu: None,
            for_: None,
            until: None,
        };
        let answer = client.admin(&request).await?;
        return Ok(serde_json::to_value(answer).expect("an answer is JSON"));
    }
    let request = serde_json::json!({"op": op, "node_id": node_id, "reason": reason});
    let reply = client
        .request_raw(subjects::REGISTRY_ADMIN, request.to_string().into())
        .await?;
    if let Some(error) = fleet_client::service_error(&reply) {
        return Err(fleet_client::ClientError::Service(error));
    }
    Ok(serde_json::from_slice(&reply.payload).expect("the leader answers JSON"))
}
/// Waits up to `limit` until the registry lists at least `nodes` nodes of
/// any status.
pub async fn wait_total(client: &fleet_client::Client, nodes: u64, limit: Duration) {
    eventually(
        &format!("the registry to list {nodes} nodes"),
        limit,
        || async {
            let request = schemas::DiscoverRequest {
                status: Some("any".into()),
                limit: Some(1),
                ..schemas::DiscoverRequest::default()
            };
            client
                .list(&request)
                .await
                .ok()
                .filter(|r| r.total >= nodes)
                .map(|_| ())
        },
    )
    .await;
}

/// Where [`subscribed`] sends its request: JetStream's account info, which
/// every role but a node's may ask for (fleet_auth's permissions).
const ROUND_TRIP_SUBJECT: &str = "$JS.API.INFO";

/// Returns once the server has processed everything `client` sent before,
/// its subscriptions included, so a message another connection publishes
/// afterwards reaches them. `client.flush()` is not enough: it only empties
/// the client's socket buffer, and the server may still be reading it when
/// another connection's publish arrives.
pub async fn subscribed(client: &async_nats::Client) {
    subscribed_via(client, ROUND_TRIP_SUBJECT).await;
}

/// [`subscribed`] for a connection that may publish only to `subject`: a
/// request there comes back (answered, refused by a status, or with no
/// responders) only after the server has read what came before it.
pub async fn subscribed_via(client: &async_nats::Client, subject: &str) {
    let answered = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject.to_owned(), bytes::Bytes::new()),
    )
    .await;
    match answered {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {}
        other => panic!("no round trip to the server on {subject}: {other:?}"),
    }
}

/// A live subscription to `system.broadcast`.
#[derive(Debug)]
pub struct AlertTap {
    subscription: async_nats::Subscriber,
    /// Every alert received so far, in order.
    pub seen: Vec<Alert>,
}

impl AlertTap {
    /// Subscribes, and waits until the server has the subscription, so no
    /// alert published afterwards is missed.
    pub async fn new(client: &async_nats::Client) -> Self {
        let subscription = client
            .subscribe(subjects::SYSTEM_BROADCAST)
            .await
            .expect("subscribing to alerts");
        subscribed(client).await;
        Self {
            subscription,
            seen: Vec::new(),
        }
    }

    /// Waits up to `limit` for an alert matching `pred`; returns it.
    pub async fn expect(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&Alert) -> bool,
    ) -> Alert {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let next = tokio::time::timeout_at(deadline, self.subscription.next()).await;
            let message = match next {
                Ok(Some(message)) => message,
                Ok(None) => panic!("alert subscription closed while waiting for {what}"),
                Err(_) => panic!(
                    "timed out after {limit:?} waiting for {what}; alerts seen: {:#?}",
                    self.seen
                        .iter()
                        .map(|a| format!("{} {:?}", a.r#type, a.node_id))
                        .collect::<Vec<_>>()
                ),
            };
            let alert: Alert =
                serde_json::from_slice(&message.payload).expect("alert is JSON of the contract");
            self.seen.push(alert.clone());
            if pred(&alert) {
                return alert;
            }
        }
    }

    /// Collects every alert arriving within `window` (an observation window,
    /// for asserting that nothing happens).
    pub async fn collect_for(&mut self, window: Duration) -> Vec<Alert> {
        let deadline = tokio::time::Instant::now() + window;
        let mut got = Vec::new();
        while let Ok(Some(message)) =
            tokio::time::timeout_at(deadline, self.subscription.next()).await
        {
            if let Ok(alert) = serde_json::from_slice::<Alert>(&message.payload) {
                self.seen.push(alert.clone());
                got.push(alert);
            }
        }
        got
    }
}

/// An alert, and when it arrived (this host's clock).
pub type Received = (Alert, chrono::DateTime<chrono::Utc>);

/// The alerts of the kinds asked for, read all the time by a task of its
/// own on a connection of its own. An [`AlertTap`] read only at the end of a
/// long run loses what its subscription's buffer (64 Ki messages) cannot
/// hold: a million `node.registered` in a registration wave push out the
/// crashes' alerts that come after. What the client still drops is counted.
#[derive(Debug)]
pub struct AlertLog {
    kept: Arc<Mutex<Vec<Received>>>,
    read: Arc<std::sync::atomic::AtomicU64>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl AlertLog {
    /// Subscribes on `server_url` and starts reading; returns once the
    /// server has the subscription. Keeps alerts whose type is in `kinds`.
    pub async fn start(server_url: &str, kinds: &'static [&'static str]) -> Self {
        use std::sync::atomic::{AtomicU64, Ordering};
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = dropped.clone();
        let client = async_nats::ConnectOptions::new()
            .subscription_capacity(1 << 20)
            .event_callback(move |event| {
                let counted = counted.clone();
                async move {
                    if matches!(event, async_nats::Event::SlowConsumer(_)) {
                        counted.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
            .connect(server_url)
            .await
            .expect("connecting the alert log");
        let mut subscription = client
            .subscribe(subjects::SYSTEM_BROADCAST)
            .await
            .expect("subscribing to alerts");
        subscribed(&client).await;
        let kept = Arc::new(Mutex::new(Vec::new()));
        let read = Arc::new(AtomicU64::new(0));
        let task = {
            let (kept, read) = (kept.clone(), read.clone());
            tokio::spawn(async move {
                // The connection lives as long as the task.
                let _client = client;
                while let Some(message) = subscription.next().await {
                    read.fetch_add(1, Ordering::Relaxed);
                    let wanted = kinds.iter().any(|kind| {
                        message
                            .payload
                            .windows(kind.len())
                            .any(|w| w == kind.as_bytes())
                    });
                    if !wanted {
                        continue;
                    }
                    let received = chrono::Utc::now();
                    if let Ok(alert) = serde_json::from_slice::<Alert>(&message.payload) {
                        if kinds.contains(&alert.r#type.as_str()) {
                            kept.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .push((alert, received));
                        }
                    }
                }
            })
        };
        Self {
            kept,
            read,
            dropped,
            task,
        }
    }

    /// The alerts kept so far, in the order received, each with when it
    /// was received (this host's clock).
    pub fn kept(&self) -> Vec<Received> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many alerts of any kind were read.
    pub fn read(&self) -> u64 {
        self.read.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many times the client reported the subscription too slow (each
    /// report is one or more alerts lost).
    pub fn slow_consumer_reports(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for AlertLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A fake Ollama: `GET /api/tags` answers with the installed models,
/// `/api/ps` with the loaded ones, `/api/version` with a version; tests can
/// change both lists while it runs.
#[derive(Debug, Clone)]
pub struct FakeOllama {
    /// Its base URL.
    pub url: String,
    state: Arc<Mutex<OllamaState>>,
}

#[derive(Debug, Default)]
struct OllamaState {
    installed: Vec<String>,
    loaded: Vec<String>,
}

fn model_list(names: &[String]) -> String {
    let entries: Vec<serde_json::Value> = names
        .iter()
        .map(|m| serde_json::json!({"name": m, "model": m, "size": 5_000_000_000u64}))
        .collect();
    serde_json::json!({ "models": entries }).to_string()
}

impl FakeOllama {
    /// Starts one with `models` installed and none loaded.
    pub async fn start(models: &[&str]) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind fake ollama");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(Mutex::new(OllamaState {
            installed: models.iter().map(|m| (*m).to_owned()).collect(),
            loaded: Vec::new(),
        }));
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let state = shared.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    let n = stream.read(&mut buf).await.unwrap_or(0);
                    let request = String::from_utf8_lossy(&buf[..n]);
                    let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
                    let body = {
                        let state = state.lock().unwrap_or_else(|p| p.into_inner());
                        match path.as_str() {
                            "/api/tags" => Some(model_list(&state.installed)),
                            "/api/ps" => Some(model_list(&state.loaded)),
                            "/api/version" => Some(r#"{"version":"0.6.2"}"#.to_owned()),
                            _ => None,
                        }
                    };
                    let reply = match body {
                        Some(body) => format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        ),
                        None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                    };
                    let _ = stream.write_all(reply.as_bytes()).await;
                });
            }
        });
        Self { url, state }
    }

    /// Replaces the installed models.
    pub fn set_models(&self, models: &[&str]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.installed = models.iter().map(|s| (*s).to_owned()).collect();
    }

    /// Replaces the loaded models.
    pub fn set_loaded(&self, models: &[&str]) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.loaded = models.iter().map(|s| (*s).to_owned()).collect();
    }
}

/// The installed unit's ExecStart, run by a fake systemctl as systemd would.
pub fn fake_systemctl(dir: &Path, log: &Path, pidfile: &Path) -> PathBuf {
    let path = dir.join("systemctl");
    let script = format!(
        r#"#!/usr/bin/env bash
echo "$@" >> "{log}"
if [ "$1" = enable ] && [ "$2" = --now ]; then
  unit="$(dirname "$0")/root/etc/systemd/system/$3"
  exec_start="$(sed -n 's/^ExecStart=//p' "$unit")"
  STATE_DIRECTORY="$(dirname "$0")/root/var/lib/node-agent" nohup $exec_start > "{log}.agent" 2>&1 &
  echo $! > "{pid}"
fi
exit 0
"#,
        log = log.display(),
        pid = pidfile.display()
    );
    std::fs::write(&path, script).expect("write fake systemctl");
    let status = Command::new("chmod")
        .args(["+x", path.to_str().expect("utf-8")])
        .status()
        .expect("chmod");
    assert!(status.success());
    path
}

/// Kills the agent the fake systemctl started, whatever happens.
#[derive(Debug)]
pub struct KillOnDrop(pub PathBuf);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.0) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
    }
}
