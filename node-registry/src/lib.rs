//! The fleet registry service: the I/O around `registry-core`'s decisions.
//!
//! - [`index`]: the read index, a reflector of the `nodes` bucket.
//! - [`service`]: `registry.discover|get|list` as the NATS micro service.
//! - [`worker`]: consumes `NODE_EVENTS`, executes the core's decisions.
//! - [`config`]: the `node-registry` configuration; [`run`] wires it all.
#![deny(missing_docs)]

pub mod config;
pub mod index;
pub mod join;
pub mod keys;
pub mod service;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use registry_kv::{JetStreamRecords, StreamSettings};
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::RegistryConfig;

/// Why the registry stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// Streams, buckets or the consumer could not be provisioned.
    #[error(transparent)]
    Provision(#[from] registry_kv::provision::ProvisionError),
    /// The discovery service could not start.
    #[error(transparent)]
    Service(#[from] service::ServiceStartError),
    /// The `nodes` bucket could not be read at start.
    #[error("restoring the fleet from KV: {0}")]
    Restore(#[from] registry_kv::watch::WatchError),
    /// The NATS URL is not usable.
    #[error("connecting to NATS at {url}: {reason}")]
    Connect {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// The join signing key could not be used.
    #[error("join signing key {path}: {reason}")]
    JoinKey {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Connects to NATS, waiting for the server with a bounded backoff until
/// `shutdown` resolves. Publishes connection state on the returned channel.
async fn connect(
    url: &str,
    auth: &runtime_support::NatsAuth,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<(async_nats::Client, watch::Receiver<bool>)>, RegistryError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let (tx, rx) = watch::channel(true);
        let options = async_nats::ConnectOptions::new()
            .name("node-registry")
            .max_reconnects(None)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tx.send_replace(true);
                        }
                        async_nats::Event::Disconnected => {
                            warn!("disconnected from NATS: judging nothing until back");
                            tx.send_replace(false);
                        }
                        other => info!(event = %other, "NATS connection event"),
                    }
                }
            });
        let options = auth
            .apply(options)
            .await
            .map_err(|e| RegistryError::Connect {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
        match options.connect(runtime_support::server_list(url)).await {
            Ok(client) => return Ok(Some((client, rx))),
            Err(e) if e.kind() == async_nats::ConnectErrorKind::ServerParse => {
                return Err(RegistryError::Connect {
                    url: url.to_owned(),
                    reason: e.to_string(),
                })
            }
            Err(e) => warn!(url, error = %e, "NATS not reachable yet; retrying"),
        }
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The issuer of joined nodes' credentials, when configured.
fn join_issuer(config: &RegistryConfig) -> Result<Option<fleet_auth::UserIssuer>, RegistryError> {
    let (Some(path), Some(account)) = (&config.join_signing_key, &config.join_account) else {
        return Ok(None);
    };
    let invalid = |reason: String| RegistryError::JoinKey {
        path: path.display().to_string(),
        reason,
    };
    let seed = std::fs::read_to_string(path).map_err(|e| invalid(e.to_string()))?;
    fleet_auth::UserIssuer::new(&seed, account)
        .map(Some)
        .map_err(|e| invalid(e.to_string()))
}

/// Runs the registry until `shutdown` resolves: provisions, restores the
/// fleet from `nodes`, serves discovery, consumes events, judges liveness.
pub async fn run(
    config: RegistryConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RegistryError> {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let shutdown_task = {
        let stop_tx = stop_tx.clone();
        async move {
            shutdown.await;
            stop_tx.send_replace(true);
        }
    };
    let body = async {
        let Some((client, connected)) =
            connect(&config.nats_url, &config.nats_auth(), &mut stop_rx).await?
        else {
            return Ok(());
        };
        info!(url = %config.nats_url, "connected to NATS");
        let js = async_nats::jetstream::new(client.clone());
        let settings = stream_settings(&config);
        let provisioned = provision_with_retry(&js, &config, &settings, &mut stop_rx).await?;
        let Some(provisioned) = provisioned else {
            return Ok(());
        };

        let index = index::spawn_reflector(provisioned.nodes.clone(), stop_rx.clone());
        let counters = Arc::new(service::Counters::default());
        let service = tokio::spawn(service::serve(
            client.clone(),
            index.clone(),
            counters.clone(),
            stop_rx.clone(),
        ));

        // Joined nodes' keys, for checking event signatures.
        let node_keys = keys::spawn_watcher(provisioned.meta.clone(), stop_rx.clone());
        // Joins, when this instance holds the account's signing key.
        if let Some(issuer) = join_issuer(&config)? {
            tokio::spawn(join::serve(
                client.clone(),
                provisioned.meta.clone(),
                Arc::new(issuer),
                counters.clone(),
                stop_rx.clone(),
            ));
        }

        // Every instance answers discovery; the lease holder alone consumes
        // events and writes records.
        let (leading_tx, leading) = watch::channel(false);
        tokio::spawn(join::keep_tokens(
            provisioned.meta.clone(),
            config.token_retention,
            leading.clone(),
            stop_rx.clone(),
        ));
        let takeover = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let lease_task = tokio::spawn(hold_lease(
            registry_kv::lease::Lease::new(
                provisioned.meta.clone(),
                config.instance_name(),
                config.lease_ttl,
            ),
            leading_tx,
            takeover.clone(),
            connected.clone(),
            stop_rx.clone(),
        ));
        loop {
            let mut waiting = leading.clone();
            let mut stop = stop_rx.clone();
            tokio::select! {
                _ = stop.wait_for(|s| *s) => break,
                became = waiting.wait_for(|l| *l) => if became.is_err() { break },
            }
            let grace = if takeover.load(std::sync::atomic::Ordering::Relaxed) {
                registry_core::lifecycle::Grace::SinceCheckpoint
            } else {
                registry_core::lifecycle::Grace::Full
            };
            lead(
                &config,
                &provisioned,
                &client,
                &js,
                &index,
                &counters,
                &node_keys,
                grace,
                connected.clone(),
                leading.clone(),
                stop_rx.clone(),
            )
            .await;
            if *stop_rx.borrow() {
                break;
            }
        }
        if let Err(e) = lease_task.await {
            warn!(error = %e, "lease task");
        }
        match service.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => warn!(error = %e, "service task"),
        }
        // Bounded: with NATS unreachable a flush would wait for a
        // reconnect that may never come, and SIGTERM must still stop us.
        match tokio::time::timeout(Duration::from_secs(2), client.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "flushing at shutdown"),
            Err(_) => warn!("NATS unreachable at shutdown; unsent messages are dropped"),
        }
        Ok(())
    };
    tokio::select! {
        result = body => result,
        () = async { shutdown_task.await; std::future::pending::<()>().await } => Ok(()),
    }
}

/// Keeps the lease: renews or takes it every third of its TTL, and says on
/// `leading` whether this instance leads. Releases it at shutdown.
async fn hold_lease(
    mut lease: registry_kv::lease::Lease,
    leading: watch::Sender<bool>,
    takeover: Arc<std::sync::atomic::AtomicBool>,
    connected: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(lease.tick_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            _ = tick.tick() => {}
        }
        // A standby that cannot reach NATS must not take over; a leader that
        // cannot renew counts down its own TTL.
        if *connected.borrow() || lease.is_held() {
            if let Err(e) = lease.tick().await {
                warn!(error = %e, "lease");
            }
        }
        let held = lease.is_held();
        takeover.store(lease.took_over_live(), std::sync::atomic::Ordering::Relaxed);
        // Sent only on a change: the worker ends its term on any.
        leading.send_if_modified(|leads| {
            if *leads == held {
                return false;
            }
            info!(instance = lease.holder(), held, "leadership changed");
            *leads = held;
            true
        });
    }
    leading.send_replace(false);
    lease.release().await;
}

/// One term as leader: builds the fleet from the read index, then consumes
/// and judges until the lease is lost or the registry stops.
#[allow(clippy::too_many_arguments)]
async fn lead(
    config: &RegistryConfig,
    provisioned: &registry_kv::Provisioned,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    index: &index::ReadIndex,
    counters: &Arc<service::Counters>,
    node_keys: &keys::NodeKeys,
    grace: registry_core::lifecycle::Grace,
    connected: watch::Receiver<bool>,
    leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    // The fleet starts from what the read index loaded: one read of the
    // bucket, and the record bytes shared between the two.
    tokio::select! {
        _ = stop.wait_for(|s| *s) => return,
        () = index.wait_ready() => {}
    }
    // Taking over from a leader seen alive keeps each node's deadline from
    // its last checkpointed heartbeat, pushed back by one checkpoint
    // interval (what that leader heard but did not checkpoint is no later).
    // A lease found free or long expired is a start after an outage: every
    // node gets a full window (principle 4).
    let mut fleet = registry_core::lifecycle::Fleet::new(config.lifecycle());
    let (count, skipped) = index.read(|catalog| {
        (
            catalog.len(),
            fleet.restore_with(catalog.stored(), chrono::Utc::now(), grace),
        )
    });
    for id in skipped {
        warn!(node_id = %id, "skipping an unreadable record at start");
    }
    info!(
        nodes = count,
        ?grace,
        "leading: fleet restored from the read index"
    );
    let worker = worker::Worker::new(
        fleet,
        JetStreamRecords::new(provisioned.nodes.clone()),
        client.clone(),
        js.clone(),
        counters.clone(),
    )
    .with_index(index.clone())
    .with_keys(node_keys.clone(), config.require_signatures);
    let (lost_tx, lost_rx) = watch::channel(0u32);
    let guard = tokio::spawn(guard_bucket(
        config.clone(),
        js.clone(),
        lost_tx,
        leading.clone(),
        stop.clone(),
    ));
    worker
        .run(
            provisioned.consumer.clone(),
            config.sweep_interval,
            connected,
            leading,
            stop,
            lost_rx,
        )
        .await;
    guard.abort();
}

/// How often the leader checks that the `nodes` bucket still exists.
const BUCKET_CHECK: Duration = Duration::from_secs(2);

/// While leading: notices the loss of the `nodes` bucket (deleted by
/// mistake, or lost with its servers), provisions it again, tells the
/// worker to write every record it holds, and broadcasts a
/// `registry.reannounce` alert so every node registers again (what the
/// registry did not hold comes back that way).
async fn guard_bucket(
    config: RegistryConfig,
    js: async_nats::jetstream::Context,
    lost: watch::Sender<u32>,
    mut leading: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let stream = subjects::kv_stream(&config.names.nodes_bucket);
    let alerts = registry_kv::alerts::AlertPublisher::new(js.clone());
    loop {
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            _ = leading.wait_for(|l| !*l) => return,
            _ = tokio::time::sleep(BUCKET_CHECK) => {}
        }
        let missing = match js.get_stream(&stream).await {
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            ),
        };
        if !missing {
            continue;
        }
        warn!(bucket = %config.names.nodes_bucket, "the nodes bucket is gone; provisioning it again");
        if let Err(e) = registry_kv::provision(&js, &config.names, &stream_settings(&config)).await
        {
            warn!(error = %e, "provisioning after the loss of the nodes bucket; retrying");
            continue;
        }
        lost.send_modify(|n| *n += 1);
        let now = chrono::Utc::now();
        let alert = schemas::Alert {
            id: uuid::Uuid::new_v4().to_string(),
            r#type: schemas::status::AlertType::Reannounce.to_string(),
            at: schemas::time::format(now),
            message: Some(format!(
                "the {} bucket was lost and is being rebuilt: every node, register again",
                config.names.nodes_bucket
            )),
            ..schemas::Alert::default()
        };
        if let Err(e) = alerts.publish(&alert).await {
            warn!(error = %e, "broadcasting the reannounce request");
        }
    }
}

/// The stream settings the configuration asks for.
fn stream_settings(config: &RegistryConfig) -> StreamSettings {
    StreamSettings {
        replicas: config.replicas,
        events_max_bytes: config.events_max_bytes,
        ..StreamSettings::default()
    }
}

async fn provision_with_retry(
    js: &async_nats::jetstream::Context,
    config: &RegistryConfig,
    settings: &StreamSettings,
    stop: &mut watch::Receiver<bool>,
) -> Result<Option<registry_kv::Provisioned>, RegistryError> {
    let mut attempt = 0;
    loop {
        match registry_kv::provision(js, &config.names, settings).await {
            Ok(p) => return Ok(Some(p)),
            Err(e @ registry_kv::provision::ProvisionError::Incompatible { .. }) => {
                return Err(e.into())
            }
            Err(e) if attempt >= 20 => return Err(e.into()),
            Err(e) => warn!(error = %e, attempt, "provisioning; retrying"),
        }
        attempt += 1;
        tokio::select! {
            _ = stop.wait_for(|s| *s) => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}
