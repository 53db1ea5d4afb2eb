//! The agent's life: register until acked, heartbeat with jitter, keep
//! capabilities current, answer control tasks, re-register after a
//! reconnect, deregister on shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use futures::StreamExt;
use rand::Rng;
use schemas::codec::{self, Encoding, HEADER_CONTENT_TYPE};
use schemas::status::EventType;
use schemas::{Capabilities, NodeEvent};
use subjects::NodeId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, info_span, instrument, warn, Instrument};

use crate::config::{AgentConfig, ConfigError};
use crate::detect::{local_ip_towards, Detector};
use crate::profile::{self, ProfileState};

mod link;
mod settings;
mod tasks;
use settings::{apply_config, apply_profile, apply_reload, watch_profile};
use tasks::handle_task;

/// The agent's version, reported in registrations and pings.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long one publish may wait for JetStream's ack.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// One heartbeat in this many waits for JetStream's ack (the agent's proof
/// that its events are stored, for its health); the others are published
/// without one, which spares the server a reply per heartbeat. A lost
/// heartbeat is followed by the next; registrations and deregistrations
/// are always acked and retried.
pub const HEARTBEAT_ACK_EVERY: u64 = 4;
/// The whole budget for the deregister at shutdown (the agent exits within 2 s).
const DEREGISTER_BUDGET: Duration = Duration::from_millis(1500);
/// Longest pause between two registration attempts.
const MAX_REGISTER_BACKOFF: Duration = Duration::from_secs(30);

/// Re-reads the configuration (on SIGHUP).
pub type Reload = Box<dyn Fn() -> Result<AgentConfig, ConfigError> + Send + Sync>;

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node id could not be established.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The NATS URL is unusable.
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        /// The server URL that was tried.
        url: String,
        /// The underlying reason, as reported.
        source: async_nats::ConnectError,
    },
    /// The credentials or TLS files could not be used.
    #[error("NATS auth: {0}")]
    Auth(String),
    /// The task subject could not be subscribed.
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        /// The subject the request was sent on.
        subject: String,
        /// The underlying reason, as reported.
        source: async_nats::SubscribeError,
    },
}

/// Why one publish failed.
#[derive(Debug, thiserror::Error)]
#[error("publishing {kind} on {subject}: {reason}")]
struct PublishFailure {
    kind: EventType,
    subject: String,
    reason: String,
}

/// What the agent's concurrent parts share.
struct Shared {
    id: NodeId,
    hostname: String,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The configuration in force: `local` with the role's profile over it.
    config: RwLock<AgentConfig>,
    /// The configuration as loaded; SIGHUP replaces it (but not the NATS URL).
    local: RwLock<AgentConfig>,
    /// The role's profile in force, and why the latest was refused.
    profile: Mutex<ProfileState>,
    /// Asks the profile watch to read the profile again (after a reconnect).
    profile_resync: Arc<tokio::sync::Notify>,
    detector: Mutex<Detector>,
    /// Rises with every event; together with `boot` it makes `Nats-Msg-Id`
    /// unique, so a retried publish is stored once.
    seq: AtomicU64,
    boot: String,
    /// The node's key, when it has credentials: every event is signed.
    key: Option<Arc<nkeys::KeyPair>>,
    started: Instant,
    last_publish_ok: AtomicBool,
    /// Heartbeats published since the last one acked.
    unacked_beats: AtomicU64,
    /// Whether a register was ever acked (heartbeats start then).
    registered: AtomicBool,
    /// The caps_hash of the latest acked register, carried by heartbeats.
    registered_hash: Mutex<Option<String>>,
    /// What `<state-dir>/health.json` says.
    health: Mutex<crate::health::HealthFile>,
    metrics: crate::metrics::AgentMetrics,
}

/// A register being published, and the hash of what it carries.
struct Registration {
    task: JoinHandle<()>,
    hash: String,
}

/// Runs the agent until `shutdown` resolves, then deregisters.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    run_with_reload(config, None, shutdown).await
}

/// Like [`run`], re-reading the configuration with `reload` on SIGHUP.
pub async fn run_with_reload(
    config: AgentConfig,
    reload: Option<Reload>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "localhost".to_owned());
    let id =
        crate::identity::load_or_create(config.node_id.as_deref(), &config.state_dir, &hostname)?;
    let span = info_span!("agent", node_id = %id);
    run_as(id, hostname, config, reload, shutdown)
        .instrument(span)
        .await
}

async fn run_as(
    id: NodeId,
    hostname: String,
    config: AgentConfig,
    reload: Option<Reload>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let (events_tx, mut events_rx) = mpsc::channel(16);
    let options = async_nats::ConnectOptions::new()
        // The connection is named after the node, so the server's connection
        // events say which node a closed connection was.
        .name(id.as_str())
        // Replies come under the node's own prefix: in auth mode that is the
        // only inbox its credentials may subscribe to.
        .custom_inbox_prefix(fleet_auth::node_inbox_prefix(&id))
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let tx = events_tx.clone();
            async move {
                // A full channel only drops a duplicate notice.
                let _ = tx.try_send(event);
            }
        });
    let options = config
        .nats_auth()
        .apply(options)
        .await
        .map_err(|e| AgentError::Auth(e.to_string()))?;
    let client = options
        .connect(runtime_support::server_list(&config.nats_url))
        .await
        .map_err(|source| AgentError::Connect {
            url: config.nats_url.clone(),
            source,
        })?;
    let mut js = jetstream::new(client.clone());
    js.set_timeout(PUBLISH_TIMEOUT);
    let task_subject = subjects::node_tasks(&id);
    let mut tasks = client
        .subscribe(task_subject.clone())
        .await
        .map_err(|source| AgentError::Subscribe {
            subject: task_subject,
            source,
        })?;
    // The registry broadcasts a `registry.reannounce` alert when it lost its
    // records; every node registers again, spread over a few seconds. With
    // node credentials (auth mode) the broadcast is not ours to read: the
    // registry asks each node it does not know on its own task subject.
    let mut broadcast = if config.nats_auth().creds.is_some() {
        futures::stream::SelectAll::new()
    } else {
        let subscriber = client
            .subscribe(subjects::SYSTEM_BROADCAST)
            .await
            .map_err(|source| AgentError::Subscribe {
                subject: subjects::SYSTEM_BROADCAST.to_owned(),
                source,
            })?;
        futures::stream::select_all([subscriber])
    };
    let mut reannounce_at: Option<Instant> = None;
    info!(url = %config.nats_url, "node agent starting");
    let health_id = id.to_string();
    let agent = Arc::new(Shared {
        detector: Mutex::new(Detector::new(&config)),
        id,
        hostname,
        client,
        js,
        seq: AtomicU64::new(crate::seq::first_seq(&config.state_dir)),
        boot: format!("{:08x}", rand::random::<u32>()),
        key: signing_key(&config),
        started: Instant::now(),
        last_publish_ok: AtomicBool::new(false),
        unacked_beats: AtomicU64::new(HEARTBEAT_ACK_EVERY),
        registered: AtomicBool::new(false),
        registered_hash: Mutex::new(None),
        health: Mutex::new(crate::health::HealthFile::starting(health_id, &config)),
        metrics: crate::metrics::AgentMetrics::new(),
        local: RwLock::new(config.clone()),
        profile: Mutex::new(ProfileState::default()),
        profile_resync: Arc::new(tokio::sync::Notify::new()),
        config: RwLock::new(config),
    });
    // The role's profile: watched off the loop, applied in it.
    let (profile_tx, mut profile_rx) = mpsc::channel::<profile::Update>(4);
    let mut profile_watch = watch_profile(&agent, &profile_tx);

    tokio::pin!(shutdown);
    let mut hangups = hangup_signals();
    // Detection results come back here; it runs off the loop, so tasks are
    // answered and shutdown is honoured while Ollama or NVML are slow.
    let (detected_tx, mut detected_rx) = mpsc::channel::<NodeEvent>(2);
    // Registration runs beside the loop too, retrying until acked.
    let mut registration: Option<Registration> = None;
    spawn_detection(&agent, &detected_tx);
    let mut next_beat = Instant::now() + agent.jittered_interval();
    let mut next_detect = Instant::now() + agent.detect_interval();
    let mut heartbeat_in_flight: Option<JoinHandle<()>> = None;
    let mut initial_connect_seen = false;
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep_until(next_beat) => {
                next_beat = Instant::now() + agent.jittered_interval();
                // Heartbeats start after the first registration and go on
                // while a later one is retried (after a reconnect): the
                // registry knows the node, and silence would be a false alarm.
                let known = agent.registered.load(Ordering::Relaxed);
                // One heartbeat in flight at most: during an outage they time
                // out one after the other, never pile up.
                let idle = heartbeat_in_flight.as_ref().is_none_or(|h| h.is_finished());
                if known && idle {
                    heartbeat_in_flight = Some(tokio::spawn(heartbeat(agent.clone()).in_current_span()));
                }
            }
            _ = tokio::time::sleep_until(next_detect) => {
                next_detect = Instant::now() + agent.detect_interval();
                spawn_detection(&agent, &detected_tx);
            }
            Some(event) = detected_rx.recv() => {
                let hash = caps_hash(&event);
                let current = match &registration {
                    Some(r) if !r.task.is_finished() => Some(r.hash.clone()),
                    _ => agent.registered_hash.lock().unwrap_or_else(|p| p.into_inner()).clone(),
                };
                if current.as_deref() != Some(hash.as_str()) {
                    if current.is_some() {
                        info!(caps_hash = %hash, "capabilities changed; registering again");
                    }
                    start_registration(&agent, &mut registration, event, hash);
                }
            }
            Some(()) = next_hangup(&mut hangups) => {
                info!("SIGHUP: re-reading the configuration and detecting again");
                if let Some(reload) = &reload {
                    if apply_reload(&agent, reload()) {
                        // Another role: another profile.
                        profile_watch.abort();
                        *agent.profile.lock().unwrap_or_else(|p| p.into_inner()) = ProfileState::default();
                        apply_config(&agent);
                        profile_watch = watch_profile(&agent, &profile_tx);
                    }
                }
                spawn_detection(&agent, &detected_tx);
            }
            Some(update) = profile_rx.recv() => {
                if apply_profile(&agent, update) {
                    // A shorter interval takes effect at once.
                    next_beat = next_beat.min(Instant::now() + agent.jittered_interval());
                    next_detect = next_detect.min(Instant::now() + agent.detect_interval());
                    spawn_detection(&agent, &detected_tx);
                }
            }
            Some(event) = events_rx.recv() => match event {
                async_nats::Event::Connected if !initial_connect_seen => {
                    initial_connect_seen = true;
                    // NATS was down at start: the registration may be in a
                    // long backoff; try again now that the server is here.
                    let late = agent.started.elapsed() > Duration::from_secs(2);
                    if late && !agent.registered.load(Ordering::Relaxed) {
                        if let Some(r) = registration.take() {
                            r.task.abort();
                        }
                        spawn_detection(&agent, &detected_tx);
                    }
                }
                async_nats::Event::Connected => {
                    info!("reconnected to NATS; registering again");
                    // A profile change may have been missed meanwhile.
                    agent.profile_resync.notify_one();
                    agent.metrics.reconnected();
                    // Forget the hash so the fresh detection registers even
                    // when nothing changed: the registry may have lost us.
                    *agent.registered_hash.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    if let Some(r) = registration.take() {
                        r.task.abort();
                    }
                    spawn_detection(&agent, &detected_tx);
                }
                async_nats::Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
                other => debug!(event = %other, "NATS connection event"),
            },
            Some(message) = broadcast.next() => {
                if asks_to_reannounce(&message.payload) && reannounce_at.is_none() {
                    let spread = Duration::from_millis(u64::from(rand::random::<u16>() % 5000));
                    info!(in_ms = spread.as_millis() as u64, "the registry asks every node to register again");
                    reannounce_at = Some(Instant::now() + spread);
                }
            }
            () = async {
                match reannounce_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => {
                reannounce_at = None;
                *agent.registered_hash.lock().unwrap_or_else(|p| p.into_inner()) = None;
                if let Some(r) = registration.take() {
                    r.task.abort();
                }
                spawn_detection(&agent, &detected_tx);
            }
            Some(message) = tasks.next() => {
                if handle_task(&agent, message).await {
                    *agent.registered_hash.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    if let Some(r) = registration.take() {
                        r.task.abort();
                    }
                    spawn_detection(&agent, &detected_tx);
                }
            }
        }
    }
    for handle in [
        registration.map(|r| r.task),
        heartbeat_in_flight,
        Some(profile_watch),
    ]
    .into_iter()
    .flatten()
    {
        handle.abort();
    }
    deregister(&agent).await;
    Ok(())
}

#[cfg(unix)]
type Hangups = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangups = ();

#[cfg(unix)]
fn hangup_signals() -> Hangups {
    use tokio::signal::unix::{signal, SignalKind};
    signal(SignalKind::hangup())
        .map_err(|e| warn!(error = %e, "cannot listen for SIGHUP"))
        .ok()
}

#[cfg(not(unix))]
fn hangup_signals() -> Hangups {}

/// The next SIGHUP; never resolves where there are none.
#[cfg(unix)]
async fn next_hangup(hangups: &mut Hangups) -> Option<()> {
    match hangups {
        Some(signal) => signal.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(not(unix))]
async fn next_hangup(_: &mut Hangups) -> Option<()> {
    std::future::pending().await
}

/// Detects capabilities off the loop and sends the register event it makes.
fn spawn_detection(agent: &Arc<Shared>, results: &mpsc::Sender<NodeEvent>) {
    let agent = agent.clone();
    let results = results.clone();
    tokio::spawn(
        async move {
            let event = register_event(&agent).await;
            // A full channel means a detection is already waiting: enough.
            let _ = results.try_send(event);
        }
        .in_current_span(),
    );
}

/// Starts publishing `event`, replacing a registration in progress.
fn start_registration(
    agent: &Arc<Shared>,
    registration: &mut Option<Registration>,
    event: NodeEvent,
    hash: String,
) {
    if let Some(old) = registration.take() {
        old.task.abort();
    }
    let task =
        tokio::spawn(register_until_acked(agent.clone(), event, hash.clone()).in_current_span());
    *registration = Some(Registration { task, hash });
}

impl Shared {
    fn config(&self) -> std::sync::RwLockReadGuard<'_, AgentConfig> {
        self.config.read().unwrap_or_else(|p| p.into_inner())
    }

    fn jittered_interval(&self) -> Duration {
        let factor = rand::rng().random_range(0.9..=1.1);
        self.config().heartbeat_interval.mul_f64(factor)
    }

    fn detect_interval(&self) -> Duration {
        self.config().detect_interval
    }

    fn encoding(&self) -> Encoding {
        if self.config().encoding == "protobuf" {
            Encoding::Protobuf
        } else {
            Encoding::Json
        }
    }

    /// Writes `<state-dir>/health.json` for `node-agent health`.
    fn record_health(&self, error: Option<String>) {
        let config = self.config.read().unwrap_or_else(|p| p.into_inner());
        let mut last = self.health.lock().unwrap_or_else(|p| p.into_inner());
        last.heartbeat(error, config.heartbeat_interval, &config.state_dir);
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Publishes `event`, waiting for JetStream's ack when `acked`.
    async fn publish(&self, event: &NodeEvent, acked: Acked) -> Result<(), PublishFailure> {
        let result = publish(
            &self.js,
            &self.id,
            &self.boot,
            self.key.as_deref(),
            event,
            self.encoding(),
            acked,
        )
        .await;
        self.last_publish_ok
            .store(result.is_ok(), Ordering::Relaxed);
        self.metrics.published(&event.r#type, result.is_ok());
        result
    }
}

/// The node's key from its credentials, if it has any.
fn signing_key(config: &AgentConfig) -> Option<Arc<nkeys::KeyPair>> {
    let path = config.nats_auth().creds?;
    match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|text| fleet_auth::creds_key(&text).map_err(|e| e.to_string()))
    {
        Ok(key) => Some(Arc::new(key)),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "events go unsigned");
            None
        }
    }
}

/// A short, stable hash of what a register carries (everything but its
/// sequence number and the hash itself): 16 hex digits of FNV-1a over the
/// protobuf form, which is deterministic (maps are ordered).
pub fn caps_hash(event: &NodeEvent) -> String {
    let mut material = NodeEvent {
        seq: None,
        caps_hash: None,
        ..event.clone()
    };
    // Where it is attached counts; its round trip of the moment does not.
    if let Some(link) = material.nats.as_mut() {
        link.rtt_ms = None;
    }
    let bytes = prost::Message::encode_to_vec(&material);
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// Detects capabilities without blocking the runtime (sysinfo, NVML, Ollama).
async fn detect(agent: &Arc<Shared>) -> Capabilities {
    let started = Instant::now();
    let detector = agent.clone();
    let capabilities = tokio::task::spawn_blocking(move || {
        detector
            .detector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .capabilities()
    })
    .await
    .unwrap_or_default();
    agent.metrics.detected(started.elapsed());
    capabilities
}

async fn register_event(agent: &Arc<Shared>) -> NodeEvent {
    let capabilities = detect(agent).await;
    let config = agent.config().clone();
    let local_ip = local_ip_towards(&config.nats_url).map(|ip| ip.to_string());
    // The operator's labels, then those GPU feature discovery would set
    // (the operator's win; the fleet's label limit is kept).
    let mut labels = config.labels.clone();
    crate::detect::gpu::labels::merge_into(&mut labels, &capabilities.gpus);
    let mut event = NodeEvent {
        r#type: EventType::Register.to_string(),
        node_id: agent.id.to_string(),
        node_name: Some(
            config
                .node_name
                .clone()
                .unwrap_or_else(|| agent.hostname.clone()),
        ),
        role: Some(config.role.clone()),
        labels,
        hostname: Some(agent.hostname.clone()),
        ip_address: config.advertise_ip.clone().or_else(|| local_ip.clone()),
        local_ip,
        capabilities: Some(capabilities),
        agent_version: Some(AGENT_VERSION.to_owned()),
        ..NodeEvent::default()
    };
    {
        let profile = agent.profile.lock().unwrap_or_else(|p| p.into_inner());
        event.profile_revision = profile.revision();
        event.profile_error = profile.error.clone();
        event.profile_mismatch = event
            .capabilities
            .as_ref()
            .map(|c| profile.missing_models(&c.models))
            .unwrap_or_default();
    }
    event.nats = link::nats_link(&agent.client, &fleet_auth::node_inbox_prefix(&agent.id)).await;
    event.caps_hash = Some(caps_hash(&event));
    event
}

/// Publishes `register` until JetStream acks it, backing off with jitter.
/// Each registration is a trace of its own (its events carry the
/// `traceparent` the registry continues).
#[instrument(name = "register", parent = None, skip_all, fields(node_id = %agent.id, caps_hash = %hash))]
async fn register_until_acked(agent: Arc<Shared>, mut event: NodeEvent, hash: String) {
    event.seq = Some(agent.next_seq());
    let mut backoff =
        runtime_support::Backoff::new(Duration::from_millis(250), MAX_REGISTER_BACKOFF)
            .with_jitter();
    loop {
        match agent.publish(&event, Acked::Yes).await {
            Ok(()) => {
                agent.registered.store(true, Ordering::Relaxed);
                *agent
                    .registered_hash
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(hash);
                let caps = event.capabilities.as_ref();
                info!(
                    models = caps.map_or(0, |c| c.models.len()),
                    gpus = caps.map_or(0, |c| c.gpus.len()),
                    labels = ?event.labels,
                    "registered"
                );
                return;
            }
            Err(e) => {
                let delay = backoff.next_delay();
                warn!(error = %e, retry_in = ?delay, "registration not acked; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

async fn heartbeat(agent: Arc<Shared>) {
    let sampler = agent.clone();
    let sample = tokio::task::spawn_blocking(move || {
        sampler
            .detector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample()
    })
    .await
    .unwrap_or_default();
    let event = NodeEvent {
        r#type: EventType::Heartbeat.to_string(),
        node_id: agent.id.to_string(),
        seq: Some(agent.next_seq()),
        metrics: Some(sample.metrics),
        models_loaded: sample.models_loaded,
        services: sample.services,
        caps_hash: agent
            .registered_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        ..NodeEvent::default()
    };
    // Every HEARTBEAT_ACK_EVERY-th beat is acked, and the next one after
    // any that failed.
    let acked = if agent.unacked_beats.load(Ordering::Relaxed) + 1 >= HEARTBEAT_ACK_EVERY {
        Acked::Yes
    } else {
        Acked::No
    };
    let result = agent.publish(&event, acked).await;
    match (&result, acked) {
        (Ok(()), Acked::Yes) => agent.unacked_beats.store(0, Ordering::Relaxed),
        (Ok(()), Acked::No) => {
            agent.unacked_beats.fetch_add(1, Ordering::Relaxed);
        }
        (Err(e), _) => {
            warn!(error = %e, "heartbeat not stored");
            agent
                .unacked_beats
                .store(HEARTBEAT_ACK_EVERY, Ordering::Relaxed);
        }
    }
    // The health file hears of acks and failures, not of unacked beats.
    if result.is_err() || acked == Acked::Yes {
        agent.record_health(result.err().map(|e| e.to_string()));
    }
}

/// Whether a publish waits for JetStream's ack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Acked {
    /// Waits for the ack (and fails without one in time).
    Yes,
    /// Leaves once the client has taken it.
    No,
}

/// Publishes `deregister` within [`DEREGISTER_BUDGET`].
async fn deregister(agent: &Arc<Shared>) {
    if !agent.registered.load(Ordering::Relaxed) {
        return;
    }
    let event = NodeEvent {
        r#type: EventType::Deregister.to_string(),
        node_id: agent.id.to_string(),
        seq: Some(agent.next_seq()),
        reason: Some("shutdown".to_owned()),
        ..NodeEvent::default()
    };
    match tokio::time::timeout(DEREGISTER_BUDGET, agent.publish(&event, Acked::Yes)).await {
        Ok(Ok(())) => info!("deregistered"),
        Ok(Err(e)) => warn!(error = %e, "deregister not acked"),
        Err(_) => warn!("deregister not acked within {DEREGISTER_BUDGET:?}"),
    }
}

/// Whether a `system.broadcast` message is the registry's request that every
/// node register again. Anything else there (alerts) is not for the agent;
/// oversized or malformed messages are ignored.
fn asks_to_reannounce(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(borrow)]
        r#type: std::borrow::Cow<'a, str>,
    }
    payload.len() <= schemas::codec::MAX_EVENT_BYTES
        && serde_json::from_slice::<Kind<'_>>(payload)
            .is_ok_and(|k| k.r#type == subjects::alert_types::REGISTRY_REANNOUNCE)
}

/// Publishes one event, and waits for JetStream's ack when `acked`.
async fn publish(
    js: &jetstream::Context,
    id: &NodeId,
    boot: &str,
    key: Option<&nkeys::KeyPair>,
    event: &NodeEvent,
    encoding: Encoding,
    acked: Acked,
) -> Result<(), PublishFailure> {
    let kind: EventType = event.r#type.parse().unwrap_or(EventType::Heartbeat);
    let subject = subjects::node_events(id);
    let fail = |reason: String| PublishFailure {
        kind,
        subject: subject.clone(),
        reason,
    };
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_CONTENT_TYPE, encoding.content_type());
    if kind == EventType::Register {
        // The registration's trace, continued by the registry.
        runtime_support::trace_context::inject(&mut headers);
    }
    if kind != EventType::Heartbeat {
        // Retried until acked: the id makes a retry stored once. A
        // heartbeat is never retried, so it spares the server the lookup.
        let msg_id = format!("{id}-{boot}-{}", event.seq.unwrap_or_default());
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
    }
    let payload = codec::encode(event, encoding);
    if let Some(key) = key {
        let signature = fleet_auth::sign_event(key, &payload).map_err(|e| fail(e.to_string()))?;
        headers.insert(fleet_auth::SIGNATURE_HEADER, signature.as_str());
    }
    if acked == Acked::No {
        return js
            .client()
            .publish_with_headers(subject.clone(), headers, payload.into())
            .await
            .map_err(|e| fail(e.to_string()));
    }
    let ack = js
        .publish_with_headers(subject.clone(), headers, payload.into())
        .await
        .map_err(|e| fail(e.to_string()))?;
    tokio::time::timeout(PUBLISH_TIMEOUT, ack)
        .await
        .map_err(|_| fail("no ack in time".to_owned()))?
        .map_err(|e| fail(e.to_string()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_hash_ignores_seq_and_sees_changes() {
        let event = NodeEvent {
            r#type: "register".into(),
            node_id: "n1".into(),
            labels: [("region".to_owned(), "eu".to_owned())].into(),
            capabilities: Some(Capabilities {
                models: vec!["qwen3:8b".into()],
                ..Capabilities::default()
            }),
            ..NodeEvent::default()
        };
        let h = caps_hash(&event);
        assert_eq!(h.len(), 16);
        let again = NodeEvent {
            seq: Some(99),
            caps_hash: Some("x".into()),
            ..event.clone()
        };
        assert_eq!(caps_hash(&again), h, "seq and the hash itself do not count");
        let mut pulled = event.clone();
        if let Some(c) = pulled.capabilities.as_mut() {
            c.models.push("llama3:8b".into());
        }
        assert_ne!(caps_hash(&pulled), h);
        let mut relabelled = event;
        relabelled.labels.insert("tier".into(), "edge".into());
        assert_ne!(caps_hash(&relabelled), h);
    }
}
