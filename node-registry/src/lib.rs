//! The fleet registry service: the I/O around `registry-core`'s decisions.
//!
//! - [`run`]: wires it all and runs until the shutdown future resolves.
//! - [`worker`]: the leader's loop: consumes `NODE_EVENTS`, executes the
//!   core's decisions through a record store, an alert sink and a task
//!   sender.
//! - [`index`]: the read index, a reflector of the `nodes` bucket.
//! - [`service`]: `registry.discover|get|list` as the NATS micro service.
//! - [`join`]: `registry.join`, and the housekeeping of join tokens.
//! - [`keys`]: joined nodes' public keys, for checking event signatures.
//! - [`tasks`]: control tasks to nodes.
//! - [`lead`]: a partition's lease, one leadership term, and the guard of
//!   the `nodes` bucket.
//! - [`partitions`]: partitions shared among instances (membership, shares).
//! - [`view`]: the hub's global view over regions (`--global-view`).
//! - [`counters`]: what the registry counts (`$SRV.STATS`).
//! - [`config`]: the `node-registry` configuration.
#![deny(missing_docs)]

pub mod config;
pub mod counters;
pub mod health;
pub mod index;
pub mod join;
pub mod keys;
pub mod lead;
pub mod link;
pub mod metrics;
pub mod partitions;
pub mod probe;
pub mod service;
pub mod state;
pub mod tasks;
pub mod view;
pub mod worker;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use link::Link;
use registry_kv::StreamSettings;
use runtime_support::{Backoff, CancellationToken};
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
        /// The server URL that was tried.
        url: String,
        /// The underlying reason, as reported.
        reason: String,
    },
    /// The join signing key could not be used.
    #[error("join signing key {path}: {reason}")]
    JoinKey {
        /// The file that could not be used.
        path: String,
        /// The underlying reason, as reported.
        reason: String,
    },
}

/// Connects to NATS, waiting for the server with a bounded backoff until
/// `cancel`. Publishes connection state on the returned channel.
async fn connect(
    url: &str,
    auth: &runtime_support::NatsAuth,
    cancel: &CancellationToken,
) -> Result<Option<(async_nats::Client, watch::Receiver<Link>)>, RegistryError> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let (tx, rx) = watch::channel(Link::connected());
        let options = async_nats::ConnectOptions::new()
            .name("node-registry")
            .max_reconnects(None)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tx.send_modify(|link| link.up = true);
                        }
                        async_nats::Event::Disconnected => {
                            warn!("disconnected from NATS: judging nothing until back");
                            tx.send_modify(Link::dropped);
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
        if !backoff.wait(cancel).await {
            return Ok(None);
        }
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

/// Bytes per chunk of an index snapshot: large chunks (fewer messages for
/// nats-server to store and deliver), within what the server accepts.
fn snapshot_chunk_size(client: &async_nats::Client) -> usize {
    const MOST: usize = 1 << 20;
    let accepted = client.server_info().max_payload;
    // Room for the chunk's subject and the protocol around it.
    accepted.saturating_sub(4096).clamp(1 << 10, MOST)
}

/// Runs the registry until `shutdown` resolves: provisions, restores the
/// fleet from `nodes`, serves discovery, consumes events, judges liveness.
pub async fn run(
    config: RegistryConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RegistryError> {
    // One token for every task: the shutdown future cancels it.
    let cancel = CancellationToken::new();
    let body = async {
        let Some((client, connected)) =
            connect(&config.nats_url, &config.nats_auth(), &cancel).await?
        else {
            return Ok(());
        };
        info!(url = %config.nats_url, "connected to NATS");
        let js = async_nats::jetstream::new(client.clone());
        let settings = stream_settings(&config);
        if !config.global_view.is_empty() {
            return run_view(&config, &client, &js, &settings, connected, &cancel).await;
        }
        let Some(provisioned) = provision_with_retry(&cancel, || {
            registry_kv::provision(&js, &config.names, &settings)
        })
        .await?
        else {
            return Ok(());
        };

        let counters = Arc::new(counters::Counters::default());
        let index = index::spawn_reflector(
            provisioned.nodes.clone(),
            provisioned
                .snapshots
                .clone()
                .map(|snapshots| index::snapshot::Source {
                    snapshots,
                    counters: counters.clone(),
                }),
            cancel.clone(),
        );
        let state = Arc::new(state::RegistryState::with_partitions(
            config.instance_name(),
            config.partitions,
        ));
        tokio::spawn(health::serve(
            client.clone(),
            health::HealthSources {
                js: js.clone(),
                names: config.names.clone(),
                connected: connected.clone(),
                state: state.clone(),
                index: index.clone(),
                regions: None,
            },
            cancel.clone(),
        ));
        let service = tokio::spawn(service::serve(
            client.clone(),
            index.clone(),
            counters.clone(),
            None,
            cancel.clone(),
        ));

        // Joined nodes' keys, for checking event signatures.
        let node_keys = keys::spawn_watcher(provisioned.meta.clone(), cancel.clone());
        // Joins, when this instance holds the account's signing key.
        if let Some(issuer) = join_issuer(&config)? {
            tokio::spawn(join::serve(
                client.clone(),
                provisioned.meta.clone(),
                Arc::new(issuer),
                counters.clone(),
                cancel.clone(),
            ));
        }

        // Every instance answers discovery; the holder of a partition's
        // lease alone consumes its events and writes its records.
        let share = Arc::new(partitions::Share::new(config.partitions));
        if config.partitions > 1 {
            tokio::spawn(partitions::keep_membership(
                provisioned.meta.clone(),
                config.instance_name(),
                config.lease_ttl,
                share.clone(),
                cancel.clone(),
            ));
        }
        let mut terms = Vec::new();
        let mut lease_tasks = Vec::new();
        for index in 0..config.partitions {
            let partition = worker::Partition {
                index,
                count: config.partitions,
            };
            let (leading_tx, leading) = watch::channel(false);
            let takeover = Arc::new(std::sync::atomic::AtomicBool::new(false));
            lease_tasks.push(tokio::spawn(lead::hold_lease(
                registry_kv::lease::Lease::for_key(
                    provisioned.meta.clone(),
                    subjects::partition_lease_key(index, config.partitions),
                    config.instance_name(),
                    config.lease_ttl,
                ),
                partition,
                share.clone(),
                leading_tx,
                takeover.clone(),
                connected.clone(),
                cancel.clone(),
            )));
            // Health and metrics say which partitions this instance leads.
            {
                let mut leading = leading.clone();
                let state = state.clone();
                tokio::spawn(async move {
                    loop {
                        state.set_leader(index, *leading.borrow_and_update());
                        if leading.changed().await.is_err() {
                            break;
                        }
                    }
                });
            }
            terms.push((partition, leading, takeover));
        }
        // Join tokens and index snapshots are kept by the leader of
        // partition 0.
        if let Some((_, leading, _)) = terms.first() {
            tokio::spawn(join::keep_tokens(
                provisioned.meta.clone(),
                config.token_retention,
                leading.clone(),
                cancel.clone(),
            ));
            if let Some(snapshots) = provisioned.snapshots.clone() {
                tokio::spawn(index::snapshot::keep_writing(
                    index::snapshot::Writer {
                        index: index.clone(),
                        snapshots,
                        bucket: config.names.nodes_bucket.clone(),
                        every: config.index_snapshot_interval,
                        chunk_size: snapshot_chunk_size(&client),
                        bytes_per_s: config.index_snapshot_bytes_per_s,
                        counters: counters.clone(),
                    },
                    leading.clone(),
                    state.clone(),
                    cancel.clone(),
                ));
            }
        }
        // Metrics, observed from what the registry keeps anyway (no-ops
        // unless the binary installed the SDK: --metrics-addr or --otlp-endpoint).
        let _metrics =
            (config.metrics_addr.is_some() || config.otlp_endpoint.is_some()).then(|| {
                metrics::register(metrics::MetricSources {
                    index: index.clone(),
                    state: state.clone(),
                    counters: counters.clone(),
                    per_node_limit: config.metrics_per_node_limit,
                })
            });
        let leader = lead::Leader {
            config: &config,
            provisioned: &provisioned,
            client: &client,
            js: &js,
            index: &index,
            counters: &counters,
            node_keys: &node_keys,
            state: &state,
            connected,
            cancel: cancel.clone(),
        };
        // One loop of terms per partition, side by side on this task.
        futures::future::join_all(terms.into_iter().map(|(partition, leading, takeover)| {
            let leader = &leader;
            let cancel = cancel.clone();
            async move {
                loop {
                    let mut waiting = leading.clone();
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        became = waiting.wait_for(|l| *l) => if became.is_err() { break },
                    }
                    let grace = if takeover.load(std::sync::atomic::Ordering::Relaxed) {
                        registry_core::lifecycle::Grace::SinceCheckpoint
                    } else {
                        registry_core::lifecycle::Grace::Full
                    };
                    leader.term(partition, leading.clone(), grace).await;
                    if cancel.is_cancelled() {
                        break;
                    }
                }
            }
        }))
        .await;
        for lease_task in lease_tasks {
            if let Err(e) = lease_task.await {
                warn!(error = %e, "lease task");
            }
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
    let stopping = async {
        shutdown.await;
        cancel.cancel();
        // The body winds down on the token; this arm never ends the run.
        std::future::pending::<()>().await
    };
    tokio::select! {
        result = body => result,
        () = stopping => Ok(()),
    }
}

/// Runs the hub's global view until `cancel`: the sourced `nodes` bucket,
/// its read index, discovery across regions, health with each region's
/// reachability, metrics. No lease, no events, no judging.
async fn run_view(
    config: &RegistryConfig,
    client: &async_nats::Client,
    js: &async_nats::jetstream::Context,
    settings: &StreamSettings,
    connected: watch::Receiver<Link>,
    cancel: &CancellationToken,
) -> Result<(), RegistryError> {
    let Some(nodes) = provision_with_retry(cancel, || {
        registry_kv::provision::provision_view(js, &config.names, settings, &config.global_view)
    })
    .await?
    else {
        return Ok(());
    };
    info!(regions = ?config.global_view, "global view over the regions' nodes buckets");
    let regions = Arc::new(view::Regions::new(&config.global_view));
    tokio::spawn(view::watch_regions(
        client.clone(),
        regions.clone(),
        cancel.clone(),
    ));
    let index = index::spawn_reflector(nodes, None, cancel.clone());
    let state = Arc::new(state::RegistryState::new(config.instance_name()));
    tokio::spawn(health::serve(
        client.clone(),
        health::HealthSources {
            js: js.clone(),
            names: config.names.clone(),
            connected,
            state: state.clone(),
            index: index.clone(),
            regions: Some(regions.clone()),
        },
        cancel.clone(),
    ));
    let counters = Arc::new(counters::Counters::default());
    let _metrics = (config.metrics_addr.is_some() || config.otlp_endpoint.is_some()).then(|| {
        metrics::register(metrics::MetricSources {
            index: index.clone(),
            state,
            counters: counters.clone(),
            per_node_limit: config.metrics_per_node_limit,
        })
    });
    service::serve(
        client.clone(),
        index,
        counters,
        Some(regions),
        cancel.clone(),
    )
    .await?;
    Ok(())
}

/// The stream settings the configuration asks for.
pub(crate) fn stream_settings(config: &RegistryConfig) -> StreamSettings {
    StreamSettings {
        replicas: config.replicas,
        partitions: config.partitions,
        events_max_bytes: config.events_max_bytes,
        lifecycle_max_age: config.lifecycle_max_age,
        ..StreamSettings::default()
    }
}

/// Provisions with `provision`, retrying a while (the server may be
/// electing its JetStream leaders); an incompatible existing stream or
/// bucket is fatal. `None`: cancelled meanwhile.
async fn provision_with_retry<T, F, Fut>(
    cancel: &CancellationToken,
    mut provision: F,
) -> Result<Option<T>, RegistryError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, registry_kv::provision::ProvisionError>>,
{
    let mut backoff = Backoff::constant(Duration::from_millis(500));
    let mut attempt = 0;
    loop {
        match provision().await {
            Ok(p) => return Ok(Some(p)),
            Err(e @ registry_kv::provision::ProvisionError::Incompatible { .. }) => {
                return Err(e.into())
            }
            Err(e) if attempt >= 20 => return Err(e.into()),
            Err(e) => warn!(error = %e, attempt, "provisioning; retrying"),
        }
        attempt += 1;
        if !backoff.wait(cancel).await {
            return Ok(None);
        }
    }
}
