//! The agent's life: register until acked, heartbeat with jitter, answer
//! control tasks, re-register after a reconnect, deregister on shutdown.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{HeaderMap, Message};
use futures::StreamExt;
use rand::Rng;
use schemas::codec::{self, Encoding, HEADER_CONTENT_TYPE, MAX_REQUEST_BYTES};
use schemas::error::{ErrorCode, ServiceError};
use schemas::status::EventType;
use schemas::{Capabilities, DetectReply, NodeEvent, PingReply, ReannounceReply, TaskRequest};
use subjects::NodeId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, info, info_span, instrument, warn, Instrument};

use crate::config::AgentConfig;
use crate::detect::{local_ip_towards, Detector};

/// The agent's version, reported in registrations and pings.
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
/// How long one publish may wait for JetStream's ack.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole budget for the deregister at shutdown (the agent exits within 2 s).
const DEREGISTER_BUDGET: Duration = Duration::from_millis(1500);
/// Longest pause between two registration attempts.
const MAX_REGISTER_BACKOFF: Duration = Duration::from_secs(30);

/// Why the agent could not run.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The node id could not be established.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The NATS URL is unusable.
    #[error("connecting to NATS at {url}: {source}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        source: async_nats::ConnectError,
    },
    /// The task subject could not be subscribed.
    #[error("subscribing to {subject}: {source}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// Why.
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
    config: AgentConfig,
    hostname: String,
    client: async_nats::Client,
    js: jetstream::Context,
    detector: Mutex<Detector>,
    /// Rises with every event; together with `boot` it makes `Nats-Msg-Id`
    /// unique, so a retried publish is stored once.
    seq: AtomicU64,
    boot: String,
    started: Instant,
    last_publish_ok: AtomicBool,
    registered: AtomicBool,
}

/// Runs the agent until `shutdown` resolves, then deregisters.
pub async fn run(
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "localhost".to_owned());
    let id =
        crate::identity::load_or_create(config.node_id.as_deref(), &config.state_dir, &hostname)?;
    let span = info_span!("agent", node_id = %id);
    run_as(id, hostname, config, shutdown)
        .instrument(span)
        .await
}

async fn run_as(
    id: NodeId,
    hostname: String,
    config: AgentConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let (events_tx, mut events_rx) = mpsc::channel(16);
    let client = async_nats::ConnectOptions::new()
        // The connection is named after the node, so the server's connection
        // events say which node a closed connection was.
        .name(id.as_str())
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let tx = events_tx.clone();
            async move {
                // A full channel only drops a duplicate notice.
                let _ = tx.try_send(event);
            }
        })
        .connect(&config.nats_url)
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
    info!(url = %config.nats_url, "node agent starting");
    let agent = Arc::new(Shared {
        detector: Mutex::new(Detector::new(&config.ollama_url)),
        id,
        hostname,
        client,
        js,
        seq: AtomicU64::new(0),
        boot: format!("{:08x}", rand::random::<u32>()),
        started: Instant::now(),
        last_publish_ok: AtomicBool::new(false),
        registered: AtomicBool::new(false),
        config,
    });

    tokio::pin!(shutdown);
    // Registration runs beside the loop, so tasks are answered and shutdown
    // is honoured while it retries (no stream yet, NATS unreachable).
    let mut registration: Option<JoinHandle<()>> = Some(tokio::spawn(
        register_until_acked(agent.clone()).in_current_span(),
    ));
    let mut next_beat = Instant::now() + agent.jittered_interval();
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
            Some(event) = events_rx.recv() => match event {
                async_nats::Event::Connected if !initial_connect_seen => initial_connect_seen = true,
                async_nats::Event::Connected => {
                    info!("reconnected to NATS; registering again");
                    restart_registration(&agent, &mut registration);
                }
                async_nats::Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
                other => debug!(event = %other, "NATS connection event"),
            },
            Some(message) = tasks.next() => {
                if handle_task(&agent, message).await {
                    restart_registration(&agent, &mut registration);
                }
            }
        }
    }
    for handle in [registration, heartbeat_in_flight].into_iter().flatten() {
        handle.abort();
    }
    deregister(&agent).await;
    Ok(())
}

/// Starts a fresh registration (fresh capabilities), replacing one in progress.
fn restart_registration(agent: &Arc<Shared>, registration: &mut Option<JoinHandle<()>>) {
    if let Some(old) = registration.take() {
        old.abort();
    }
    *registration = Some(tokio::spawn(
        register_until_acked(agent.clone()).in_current_span(),
    ));
}

impl Shared {
    fn jittered_interval(&self) -> Duration {
        let factor = rand::rng().random_range(0.9..=1.1);
        self.config.heartbeat_interval.mul_f64(factor)
    }

    fn next_seq(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed) + 1
    }

    async fn publish(&self, event: &NodeEvent) -> Result<(), PublishFailure> {
        let result = publish(&self.js, &self.id, &self.boot, event).await;
        self.last_publish_ok
            .store(result.is_ok(), Ordering::Relaxed);
        result
    }
}

/// Detects capabilities without blocking the runtime (sysinfo, Ollama HTTP).
async fn detect(agent: &Arc<Shared>) -> Capabilities {
    let agent = agent.clone();
    tokio::task::spawn_blocking(move || {
        agent
            .detector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .capabilities()
    })
    .await
    .unwrap_or_default()
}

async fn register_event(agent: &Arc<Shared>) -> NodeEvent {
    let capabilities = detect(agent).await;
    let config = &agent.config;
    let local_ip = local_ip_towards(&config.nats_url).map(|ip| ip.to_string());
    NodeEvent {
        r#type: EventType::Register.to_string(),
        node_id: agent.id.to_string(),
        node_name: Some(
            config
                .node_name
                .clone()
                .unwrap_or_else(|| agent.hostname.clone()),
        ),
        role: Some(config.role.clone()),
        labels: config.labels.clone(),
        hostname: Some(agent.hostname.clone()),
        ip_address: config.advertise_ip.clone().or_else(|| local_ip.clone()),
        local_ip,
        capabilities: Some(capabilities),
        agent_version: Some(AGENT_VERSION.to_owned()),
        seq: Some(agent.next_seq()),
        ..NodeEvent::default()
    }
}

/// Publishes `register` until JetStream acks it, backing off with jitter.
#[instrument(skip_all)]
async fn register_until_acked(agent: Arc<Shared>) {
    let event = register_event(&agent).await;
    let mut backoff = Duration::from_millis(250);
    loop {
        match agent.publish(&event).await {
            Ok(()) => {
                agent.registered.store(true, Ordering::Relaxed);
                let caps = event.capabilities.as_ref();
                info!(
                    models = caps.map_or(0, |c| c.models.len()),
                    labels = ?event.labels,
                    "registered"
                );
                return;
            }
            Err(e) => warn!(error = %e, retry_in = ?backoff, "registration not acked; retrying"),
        }
        let jitter = rand::rng().random_range(0.8..=1.2);
        tokio::time::sleep(backoff.mul_f64(jitter)).await;
        backoff = (backoff * 2).min(MAX_REGISTER_BACKOFF);
    }
}

async fn heartbeat(agent: Arc<Shared>) {
    let sampler = agent.clone();
    let metrics = tokio::task::spawn_blocking(move || {
        sampler
            .detector
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .metrics()
    })
    .await
    .unwrap_or_default();
    let event = NodeEvent {
        r#type: EventType::Heartbeat.to_string(),
        node_id: agent.id.to_string(),
        seq: Some(agent.next_seq()),
        metrics: Some(metrics),
        ..NodeEvent::default()
    };
    if let Err(e) = agent.publish(&event).await {
        warn!(error = %e, "heartbeat not acked");
    }
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
    match tokio::time::timeout(DEREGISTER_BUDGET, agent.publish(&event)).await {
        Ok(Ok(())) => info!("deregistered"),
        Ok(Err(e)) => warn!(error = %e, "deregister not acked"),
        Err(_) => warn!("deregister not acked within {DEREGISTER_BUDGET:?}"),
    }
}

/// Answers one control task; returns whether a fresh `register` is due.
#[instrument(skip_all)]
async fn handle_task(agent: &Arc<Shared>, message: Message) -> bool {
    let mut reregister = false;
    let (encoding, result) = match schemas::nats::encoding_of(message.headers.as_ref()) {
        Err(e) => (
            Encoding::Json,
            Err(ServiceError::new(ErrorCode::BadRequest, e.to_string())),
        ),
        Ok(encoding) => {
            let result =
                match codec::decode::<TaskRequest>(&message.payload, encoding, MAX_REQUEST_BYTES) {
                    Err(e) => Err(ServiceError::new(ErrorCode::BadRequest, e.to_string())),
                    Ok(task) => match task.r#type.as_str() {
                        "reannounce" => {
                            info!("asked to reannounce");
                            reregister = true;
                            Ok(codec::encode(&ReannounceReply { ok: true }, encoding))
                        }
                        "ping" => Ok(codec::encode(
                            &PingReply {
                                node_id: agent.id.to_string(),
                                agent_version: AGENT_VERSION.to_owned(),
                                uptime_s: agent.started.elapsed().as_secs(),
                                last_publish_ok: agent.last_publish_ok.load(Ordering::Relaxed),
                            },
                            encoding,
                        )),
                        "detect" => Ok(codec::encode(
                            &DetectReply {
                                capabilities: Some(detect(agent).await),
                            },
                            encoding,
                        )),
                        other => Err(ServiceError::new(
                            ErrorCode::NotFound,
                            format!(
                                "unknown task type {:?}, expected one of reannounce, ping, detect",
                                other.chars().take(64).collect::<String>()
                            ),
                        )),
                    },
                };
            (encoding, result)
        }
    };
    if let Err(error) = &result {
        warn!(code = error.code, message = %error.message, "task refused");
    }
    if let Some(reply) = message.reply {
        let (headers, body) = schemas::nats::reply_parts(result, encoding);
        if let Err(e) = agent
            .client
            .publish_with_headers(reply, headers, body)
            .await
        {
            warn!(error = %e, "replying to a task");
        }
    }
    reregister
}

/// Publishes one event (JSON) and waits for JetStream's ack.
async fn publish(
    js: &jetstream::Context,
    id: &NodeId,
    boot: &str,
    event: &NodeEvent,
) -> Result<(), PublishFailure> {
    let kind: EventType = event.r#type.parse().unwrap_or(EventType::Heartbeat);
    let subject = subjects::node_events(id);
    let fail = |reason: String| PublishFailure {
        kind,
        subject: subject.clone(),
        reason,
    };
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_CONTENT_TYPE, Encoding::Json.content_type());
    let msg_id = format!("{id}-{boot}-{}", event.seq.unwrap_or_default());
    headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
    let payload = codec::encode(event, Encoding::Json);
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
