//! The `node-registry` configuration: one struct, loaded by figment
//! (defaults < TOML file < `NODE_REGISTRY_*` environment < flags).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use subjects::Names;

use registry_core::lifecycle::LifecycleSettings;

/// Prefix of the environment variables that configure the registry.
pub const ENV_PREFIX: &str = "NODE_REGISTRY_";
/// The NATS URL used when none is configured.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Everything `node-registry` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RegistryConfig {
    /// NATS server(s) to connect to, comma-separated. Default
    /// `nats://127.0.0.1:4222`; `--nats-url` falls back to `NATS_URL`.
    pub nats_url: String,
    /// Silence after which an online node is degraded. Default 90s: three
    /// missed 30 s heartbeats. Lower detects sooner, with more false alarms on
    /// flaky links.
    #[serde(with = "humantime_serde")]
    pub degraded_after: Duration,
    /// Silence after which a node is offline. Default 5m.
    #[serde(with = "humantime_serde")]
    pub offline_after: Duration,
    /// Least time between KV checkpoints of one node's last heartbeat and
    /// metrics. Default 60s. Lower keeps KV fresher at more writes per second
    /// (at most fleet size / heartbeat interval).
    #[serde(with = "humantime_serde")]
    pub checkpoint_interval: Duration,
    /// Most checkpoint writes a second for the whole fleet. Default 2000: a
    /// fleet above `checkpoint_interval` × this (120 000 nodes at 60s)
    /// checkpoints each node every `nodes / checkpoint_writes_per_s`
    /// seconds instead (500 s at a million). That interval also bounds how
    /// late a detection after a failover can be: raise this where
    /// nats-server has cores to spare. 0: no limit.
    pub checkpoint_writes_per_s: u32,
    /// How often silence is judged. Default 1s; the bound on detection
    /// latency beyond `degraded_after`.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// Least time between two `reannounce` requests to one unknown node.
    /// Default 10s.
    #[serde(with = "humantime_serde")]
    pub reannounce_interval: Duration,
    /// Share of watched nodes silent at once above which the registry
    /// suspects itself and holds transitions. Default 0.5.
    pub self_preservation_threshold: f64,
    /// Fewest watched nodes for self-preservation to apply. Default 10.
    pub self_preservation_min_fleet: usize,
    /// How long after the server reports a node's connection closed (with
    /// nothing heard from it since) the node is degraded, without waiting
    /// for `degraded_after`. Default 10s: rides out a reconnect. 0s turns
    /// connection events off (silence alone is judged).
    #[serde(with = "humantime_serde")]
    pub disconnect_grace: Duration,
    /// How long a failed GPU must report healthy, without a break, before
    /// it returns to service (`gpu.healthy`). Default 10m.
    #[serde(with = "humantime_serde")]
    pub gpu_recovery: Duration,
    /// Replicas of streams and buckets it creates. Default 1 (3 in a cluster).
    pub replicas: usize,
    /// Shares the event stream is split into by node id, each led by one
    /// instance under its own lease (docs/SCALING.md). Fixed when the
    /// stream is created: a registry asking for another count is refused.
    /// Default 1 (no split).
    pub partitions: u32,
    /// Run as the hub's global view over these regions (their JetStream
    /// domains): source their `nodes` buckets into this domain's, answer
    /// discovery across them, judge nothing (docs/SCALING.md). Default
    /// none: a registry of its own region.
    pub global_view: Vec<String>,
    /// Max bytes of the `NODE_EVENTS` stream when created: the floor it
    /// grows from (`events_history`). Default 1 GiB; -1 for no limit.
    pub events_max_bytes: i64,
    /// The event stream's size as a budget in time: the leader grows its
    /// max bytes to hold this much at the measured event rate (never past
    /// `events_max_bytes_cap`, never shrinking it). Default 1h; 0s: fixed.
    #[serde(with = "humantime_serde")]
    pub events_history: Duration,
    /// The most bytes the event stream may grow to. Default 64 GiB.
    pub events_max_bytes_cap: i64,
    /// How long registrations and deregistrations are kept in
    /// `NODE_LIFECYCLE` (`nodectl audit` reads them after `NODE_EVENTS` let
    /// them go). Default 30d.
    #[serde(with = "humantime_serde")]
    pub lifecycle_max_age: Duration,
    /// Less event history than this at the current rate is warned about
    /// (`registry.history_short`, health). Default 10m.
    #[serde(with = "humantime_serde")]
    pub events_min_history: Duration,
    /// How often the leader writes a snapshot of the read index to the
    /// `registry_snapshots` object store (when the index moved since the
    /// last one). A registry starting with none of its instances running
    /// loads it and replays only what came after it, instead of reading
    /// every record of `nodes`. Default 60s; 0s: none written.
    #[serde(with = "humantime_serde")]
    pub index_snapshot_interval: Duration,
    /// Most bytes of records a second a snapshot is encoded at; it is
    /// stored zstd-compressed, a fraction of them. Default 64 MiB: a
    /// million nodes' snapshot (about 1 GB of records) takes 16 s, and
    /// its compressing and storing are spread over them instead of taking
    /// whole cores for a few seconds. 0: no limit.
    pub index_snapshot_bytes_per_s: u64,
    /// Stream, bucket and consumer names. Default: the contract's.
    pub names: Names,
    /// Log format: `text` (default) or `json`.
    pub log_format: String,
    /// TTL of the leader lease. Default 10s: a standby takes over within
    /// this (plus one renewal period) after the leader dies.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// This instance's name in the lease. Default: `<hostname>-<pid>`.
    pub instance: String,
    /// The registry user's `.creds` file (auth mode; see `nodectl auth`).
    /// Default none.
    pub creds: Option<PathBuf>,
    /// CA certificate(s) to trust for the server's TLS certificate (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// The fleet account's signing-key seed file: with it the registry
    /// answers `registry.join`, turning join tokens into node credentials.
    /// Default none (joins are refused).
    pub join_signing_key: Option<PathBuf>,
    /// The fleet account's public key (the issuer of joined nodes'
    /// credentials), with `join_signing_key`.
    pub join_account: Option<String>,
    /// How long a join token's record is kept after it expired, used or
    /// not (for `nodectl token list`); then the leader forgets it. Default
    /// 7 days.
    #[serde(with = "humantime_serde")]
    pub token_retention: Duration,
    /// Refuse events of nodes without a known key (every node has joined).
    /// Default false: a node with a key must sign its events either way.
    pub require_signatures: bool,
    /// Where to serve Prometheus's `/metrics` (e.g. `127.0.0.1:9464`).
    /// Default: off (no HTTP at all).
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Most online or degraded nodes with metric series of their own (CPU,
    /// memory, disk, load, each GPU); above it only the per role and region
    /// figures. Default 5 000.
    pub metrics_per_node_limit: usize,
    /// Most GPUs with series of their own (while the nodes are within
    /// `metrics_per_node_limit`); past it the rest fold into one overflow
    /// series. Default 10 000. Both limits cost memory up front (about
    /// 150 B a series), whether the fleet fills them or not.
    pub metrics_per_gpu_limit: usize,
    /// The OpenTelemetry collector's OTLP/HTTP base URL (e.g.
    /// `http://127.0.0.1:4318`): metrics and traces are pushed there.
    /// Default: off.
    pub otlp_endpoint: Option<String>,
    /// How often metrics are pushed over OTLP (spans wait at most as long).
    /// Default 10s.
    #[serde(with = "humantime_serde")]
    pub otlp_interval: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        let lifecycle = LifecycleSettings::default();
        Self {
            nats_url: DEFAULT_NATS_URL.to_owned(),
            degraded_after: lifecycle.degraded_after,
            offline_after: lifecycle.offline_after,
            checkpoint_interval: lifecycle.checkpoint_interval,
            checkpoint_writes_per_s: lifecycle.checkpoint_writes_per_s,
            sweep_interval: Duration::from_secs(1),
            reannounce_interval: lifecycle.reannounce_interval,
            self_preservation_threshold: lifecycle.self_preservation_threshold,
            self_preservation_min_fleet: lifecycle.self_preservation_min_fleet,
            disconnect_grace: lifecycle.disconnect_grace,
            gpu_recovery: lifecycle.gpu_recovery,
            replicas: 1,
            partitions: 1,
            global_view: Vec::new(),
            events_max_bytes: 1024 * 1024 * 1024,
            events_history: Duration::from_secs(3600),
            events_max_bytes_cap: 64 * 1024 * 1024 * 1024,
            events_min_history: Duration::from_secs(600),
            index_snapshot_interval: Duration::from_secs(60),
            index_snapshot_bytes_per_s: 64 << 20,
            lifecycle_max_age: Duration::from_secs(30 * 24 * 3600),
            names: Names::default(),
            log_format: "text".to_owned(),
            lease_ttl: Duration::from_secs(10),
            instance: String::new(),
            creds: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            join_signing_key: None,
            join_account: None,
            token_retention: Duration::from_secs(7 * 24 * 3600),
            require_signatures: false,
            metrics_addr: None,
            metrics_per_node_limit: crate::metrics::DEFAULT_PER_NODE_LIMIT,
            metrics_per_gpu_limit: crate::metrics::DEFAULT_PER_GPU_LIMIT,
            otlp_endpoint: None,
            otlp_interval: fleet_telemetry::DEFAULT_OTLP_INTERVAL,
        }
    }
}

pub use runtime_support::ConfigError;

/// Values given on the command line, layered over everything else.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--nats-url` (or `NATS_URL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// `--degraded-after`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub degraded_after: Option<Duration>,
    /// `--offline-after`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub offline_after: Option<Duration>,
    /// `--replicas`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replicas: Option<usize>,
    /// `--partitions`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partitions: Option<u32>,
    /// `--global-view`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_view: Option<Vec<String>>,
    /// `--metrics-addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// `--otlp-endpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `--creds`, `--tls-ca`, `--tls-cert`, `--tls-key`.
    #[serde(flatten)]
    pub auth: runtime_support::AuthFlags,
}

impl RegistryConfig {
    /// Loads defaults < `file` < environment < `overrides`, and checks them.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let config: Self =
            runtime_support::load_layered(&Self::default(), file, ENV_PREFIX, overrides)?;
        config.check()?;
        Ok(config)
    }

    /// Checks that the values fit together.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.degraded_after.is_zero() || self.sweep_interval.is_zero() {
            return invalid("degraded_after and sweep_interval must be above zero".into());
        }
        if self.offline_after <= self.degraded_after {
            return invalid(format!(
                "offline_after ({}) must be longer than degraded_after ({})",
                humantime::format_duration(self.offline_after),
                humantime::format_duration(self.degraded_after)
            ));
        }
        if !(0.0..=1.0).contains(&self.self_preservation_threshold) {
            return invalid("self_preservation_threshold must be between 0 and 1".into());
        }
        if self.otlp_interval.is_zero() {
            return invalid("otlp_interval must be above zero".into());
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return invalid(format!(
                "log_format {:?}: expected text or json",
                self.log_format
            ));
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return invalid("lease_ttl must be at least 300ms".into());
        }
        if self.join_signing_key.is_some() != self.join_account.is_some() {
            return invalid("join_signing_key and join_account go together".into());
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return invalid("tls_cert and tls_key go together".into());
        }
        if self.replicas == 0 || self.replicas > 5 {
            return invalid("replicas must be 1 to 5".into());
        }
        if let Some(bad) = self.global_view.iter().find(|d| {
            d.is_empty()
                || !d
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        }) {
            return invalid(format!(
                "global_view: {bad:?} is not a JetStream domain name (letters, digits, - and _)"
            ));
        }
        if self.partitions == 0 || self.partitions > subjects::PARTITIONS_MAX {
            return invalid(format!(
                "partitions must be 1 to {}",
                subjects::PARTITIONS_MAX
            ));
        }
        Ok(())
    }

    /// How it authenticates to NATS.
    pub fn nats_auth(&self) -> runtime_support::NatsAuth {
        runtime_support::NatsAuth {
            creds: self.creds.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            inbox_prefix: None,
        }
    }

    /// This instance's name: `instance`, or `<hostname>-<pid>`.
    pub fn instance_name(&self) -> String {
        if !self.instance.is_empty() {
            return self.instance.clone();
        }
        format!("{}-{}", host_name(), std::process::id())
    }

    /// The lifecycle part.
    pub fn lifecycle(&self) -> LifecycleSettings {
        LifecycleSettings {
            degraded_after: self.degraded_after,
            offline_after: self.offline_after,
            checkpoint_interval: self.checkpoint_interval,
            checkpoint_writes_per_s: self.checkpoint_writes_per_s,
            reannounce_interval: self.reannounce_interval,
            self_preservation_threshold: self.self_preservation_threshold,
            self_preservation_min_fleet: self.self_preservation_min_fleet,
            disconnect_grace: self.disconnect_grace,
            gpu_recovery: self.gpu_recovery,
        }
    }
}

/// The host's name, from the kernel (no dependency for one string).
/// This machine's host name (the first part of a default instance name).
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "registry".to_owned())
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order_and_durations_are_human() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("r.toml", "degraded_after = \"20s\"\noffline_after = \"1m\"\n[names]\nnodes_bucket = \"n2\"\n")?;
            jail.set_env("NODE_REGISTRY_OFFLINE_AFTER", "2m");
            let overrides = Overrides {
                degraded_after: Some(Duration::from_secs(30)),
                ..Overrides::default()
            };
            let c = RegistryConfig::load(Some(Path::new("r.toml")), &overrides)
                .map_err(|e| e.to_string())?;
            assert_eq!(c.degraded_after, Duration::from_secs(30));
            assert_eq!(c.offline_after, Duration::from_secs(120));
            assert_eq!(c.names.nodes_bucket, "n2");
            assert_eq!(c.names.events_stream, "NODE_EVENTS");
            Ok(())
        });
    }

    #[test]
    fn unknown_keys_and_bad_combinations_are_refused() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("r.toml", "degraded_afer = \"20s\"\n")?;
            let err = RegistryConfig::load(Some(Path::new("r.toml")), &Overrides::default());
            assert!(err.is_err());
            let overrides = Overrides {
                degraded_after: Some(Duration::from_secs(600)),
                ..Overrides::default()
            };
            let err = RegistryConfig::load(None, &overrides).expect_err("offline < degraded");
            assert!(err.to_string().contains("offline_after"));
            jail.set_env("NODE_REGISTRY_JOIN_SIGNING_KEY", "/keys/fleet-signing.nk");
            let err =
                RegistryConfig::load(None, &Overrides::default()).expect_err("half a join key");
            assert!(err.to_string().contains("join_account"), "{err}");
            Ok(())
        });
    }
}
