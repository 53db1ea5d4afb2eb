//! `node-registry health`: asks the running instances for their health and
//! says whether this one is well (exit 0) or not (exit 1), for container
//! `HEALTHCHECK`s and systemd.

use std::time::Duration;

use schemas::health::HealthReply;
use schemas::status::HealthStatus;

use crate::config::RegistryConfig;

/// How long the answers are waited for.
const WAIT: Duration = Duration::from_secs(2);

/// Why the probe found no healthy instance to report.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// NATS could not be reached (then no instance can work either).
    #[error("NATS at {url}: {reason}")]
    Nats {
        /// The URL tried.
        url: String,
        /// Why.
        reason: String,
    },
    /// No instance of this host (or of the configured name) answered.
    #[error("no registry instance {0} answered registry.health within 2s")]
    NoAnswer(String),
}

/// Which answer is this instance's: the configured `instance` name, or
/// any instance on this host (`<host>-<pid>`).
fn is_ours(reply: &HealthReply, config: &RegistryConfig, host: &str) -> bool {
    if config.instance.is_empty() {
        reply
            .instance
            .strip_prefix(host)
            .is_some_and(|rest| rest.starts_with('-'))
    } else {
        reply.instance == config.instance
    }
}

/// This instance's health, asked over NATS as its configuration connects.
pub async fn probe(config: &RegistryConfig) -> Result<HealthReply, ProbeError> {
    let nats = |reason: String| ProbeError::Nats {
        url: config.nats_url.clone(),
        reason,
    };
    let options = async_nats::ConnectOptions::new()
        .name("node-registry health")
        .connection_timeout(WAIT)
        .max_reconnects(Some(0));
    let options = config
        .nats_auth()
        .apply(options)
        .await
        .map_err(|e| nats(e.to_string()))?;
    let client = options
        .connect(runtime_support::server_list(&config.nats_url))
        .await
        .map_err(|e| nats(e.to_string()))?;
    let answers = runtime_support::gather(
        &client,
        subjects::REGISTRY_HEALTH.to_owned(),
        bytes::Bytes::new(),
        WAIT,
        usize::MAX,
    )
    .await
    .map_err(|e| nats(e.to_string()))?;
    let host = crate::config::host_name();
    let who = if config.instance.is_empty() {
        format!("on host {host}")
    } else {
        format!("named {}", config.instance)
    };
    answers
        .iter()
        .filter_map(|m| serde_json::from_slice::<HealthReply>(&m.payload).ok())
        .filter(|r| is_ours(r, config, &host))
        // The best of them (several instances on one host).
        .min_by_key(|r| match r.status {
            HealthStatus::Healthy => 0,
            HealthStatus::Degraded => 1,
            HealthStatus::Unhealthy => 2,
        })
        .ok_or(ProbeError::NoAnswer(who))
}

/// Whether a status passes a health check (degraded still works: it holds
/// back on purpose).
pub fn passes(status: HealthStatus) -> bool {
    status != HealthStatus::Unhealthy
}
