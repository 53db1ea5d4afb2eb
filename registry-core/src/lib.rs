//! The fleet registry.
//!
//! Pure core (no I/O, time as an argument):
//! - [`lifecycle`]: the state machine and liveness sweeper over the fleet.
//! - [`discovery`]: query validation, matching and ranking.
//!
//! Adapters (NATS at the edges):
//! - [`index`]: the read index, a reflector of the `nodes` bucket.
//! - [`service`]: `registry.discover|get|list` as the NATS micro service.
//! - [`worker`]: consumes `NODE_EVENTS`, executes the core's decisions.
//! - [`config`]: the `node-registry` configuration; [`run`] wires it all.
#![deny(missing_docs)]

pub mod catalog;
pub mod config;
pub mod discovery;
pub mod index;
pub mod lifecycle;
pub use schemas::selector;
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
}

/// Connects to NATS, waiting for the server with a bounded backoff until
/// `shutdown` resolves. Publishes connection state on the returned channel.
async fn connect(
    url: &str,
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
        match options.connect(url).await {
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
        let Some((client, connected)) = connect(&config.nats_url, &mut stop_rx).await? else {
            return Ok(());
        };
        info!(url = %config.nats_url, "connected to NATS");
        let js = async_nats::jetstream::new(client.clone());
        let settings = StreamSettings {
            replicas: config.replicas,
            events_max_bytes: config.events_max_bytes,
            ..StreamSettings::default()
        };
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

        // The fleet starts from what the read index loaded: one read of the
        // bucket, and the record bytes shared between the two.
        let mut fleet = lifecycle::Fleet::new(config.lifecycle());
        tokio::select! {
            _ = stop_rx.wait_for(|s| *s) => return Ok(()),
            () = index.wait_ready() => {}
        }
        let (count, skipped) = index.read(|catalog| {
            (
                catalog.len(),
                fleet.restore(catalog.stored(), chrono::Utc::now()),
            )
        });
        for id in skipped {
            warn!(node_id = %id, "skipping an unreadable record at start");
        }
        info!(
            nodes = count,
            grace_s = config.degraded_after.as_secs(),
            "fleet restored; every known node has one full window before it is judged"
        );
        let worker = worker::Worker::new(
            fleet,
            JetStreamRecords::new(provisioned.nodes.clone()),
            client.clone(),
            js.clone(),
            counters,
        )
        .with_index(index.clone());
        worker
            .run(
                provisioned.consumer,
                config.sweep_interval,
                connected,
                stop_rx.clone(),
            )
            .await;
        match service.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(e) => warn!(error = %e, "service task"),
        }
        if let Err(e) = client.flush().await {
            warn!(error = %e, "flushing at shutdown");
        }
        Ok(())
    };
    tokio::select! {
        result = body => result,
        () = async { shutdown_task.await; std::future::pending::<()>().await } => Ok(()),
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
