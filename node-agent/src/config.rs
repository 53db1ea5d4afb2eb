//! The `node-agent` configuration: one struct, loaded by figment
//! (defaults < `/etc/node-agent/config.toml` or `--config` < `NODE_AGENT_*`
//! environment < flags).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::detect::services::ServiceProbe;

/// Prefix of the environment variables that configure the agent.
pub const ENV_PREFIX: &str = "NODE_AGENT_";
/// The system-wide configuration file, read when it exists and no
/// `--config` is given.
pub const SYSTEM_CONFIG: &str = "/etc/node-agent/config.toml";

/// Everything `node-agent` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// NATS server(s), comma-separated. Default `nats://127.0.0.1:4222`;
    /// `--nats-url` falls back to `NATS_URL`.
    pub nats_url: String,
    /// The node id. Default: derived once as `node-<hostname>-<8 hex>` and
    /// kept in `<state_dir>/node_id`.
    pub node_id: Option<String>,
    /// A human name. Default: the hostname.
    pub node_name: Option<String>,
    /// The node's role (`worker`, `gateway`, ...). Default `worker`.
    pub role: String,
    /// Labels; a bare key means `"true"`. In TOML a table or a
    /// `"k=v,k2"` string, in the environment and on the command line the
    /// string form. Default none.
    #[serde(deserialize_with = "deserialize_labels")]
    pub labels: BTreeMap<String, String>,
    /// Time between heartbeats, each jittered by ±10 %. Default 30s. Lower
    /// detects failures sooner at more messages per second.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// Where the node id is kept. Default `$STATE_DIRECTORY` (systemd), else
    /// `$XDG_STATE_HOME/node-agent`, else `~/.local/state/node-agent`, else
    /// `/var/lib/node-agent`.
    pub state_dir: PathBuf,
    /// Ollama's HTTP address, for installed models. Default
    /// `http://127.0.0.1:11434`; unreachable means no models, no tag.
    pub ollama_url: String,
    /// The address others should reach this node at, when it is not the
    /// one NATS is reached from (NAT, public IP). Default none.
    pub advertise_ip: Option<String>,
    /// How often capabilities are detected again; a change is registered at
    /// once. Default 5m. SIGHUP also re-reads the configuration and detects.
    #[serde(with = "humantime_serde")]
    pub detect_interval: Duration,
    /// Local services to probe over TCP; heartbeats report those that are
    /// up. Default none. In TOML: `[[services]]` with `name` and `address`.
    pub services: Vec<ServiceProbe>,
    /// Encoding of the events the agent publishes: `json` (default) or
    /// `protobuf` (smaller heartbeats).
    pub encoding: String,
    /// Whether to load NVIDIA's NVML for GPU detection. Default true; on a
    /// machine without the driver it is simply not found.
    pub nvml: bool,
    /// Root of sysfs, for AMD GPUs. Default `/sys` (tests use fixture trees).
    pub sysfs_root: PathBuf,
    /// Root of procfs, for NVIDIA without NVML. Default `/proc`.
    pub procfs_root: PathBuf,
    /// Log format: `text` (default) or `json`.
    pub log_format: String,
    /// The node's `.creds` file (auth mode). Default `<state_dir>/node.creds`
    /// when it exists (`node-agent join` writes it there).
    pub creds: Option<PathBuf>,
    /// CA certificate(s) to trust for the server's TLS certificate (PEM).
    pub tls_ca: Option<PathBuf>,
    /// Client certificate for mutual TLS (PEM), with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Key of `tls_cert` (PEM).
    pub tls_key: Option<PathBuf>,
    /// The OpenTelemetry collector's OTLP/HTTP base URL (e.g.
    /// `http://127.0.0.1:4318`): the agent's metrics (heartbeats sent,
    /// publish failures, reconnects, detection time) and its registration
    /// traces are pushed there. Default: off (the agent serves no HTTP).
    pub otlp_endpoint: Option<String>,
    /// How often metrics are pushed over OTLP. Default 10s.
    #[serde(with = "humantime_serde")]
    pub otlp_interval: Duration,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            nats_url: "nats://127.0.0.1:4222".to_owned(),
            node_id: None,
            node_name: None,
            role: "worker".to_owned(),
            labels: BTreeMap::new(),
            heartbeat_interval: Duration::from_secs(30),
            state_dir: default_state_dir(),
            ollama_url: "http://127.0.0.1:11434".to_owned(),
            advertise_ip: None,
            detect_interval: Duration::from_secs(300),
            services: Vec::new(),
            encoding: "json".to_owned(),
            nvml: true,
            sysfs_root: PathBuf::from("/sys"),
            procfs_root: PathBuf::from("/proc"),
            log_format: "text".to_owned(),
            creds: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            otlp_endpoint: None,
            otlp_interval: Duration::from_secs(10),
        }
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, colon-separated; the first is ours.
        let first = dir.to_string_lossy().split(':').next().map(PathBuf::from);
        if let Some(first) = first {
            return first;
        }
    }
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME") {
        return PathBuf::from(xdg).join("node-agent");
    }
    if let Some(home) = std::env::var_os("HOME") {
        if home != "/" && !home.is_empty() {
            return PathBuf::from(home).join(".local/state/node-agent");
        }
    }
    PathBuf::from("/var/lib/node-agent")
}

/// Parses `k=v,k2,k3=v3` into labels; a bare key is `"true"`.
pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut labels = BTreeMap::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (key, value) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => (item, "true"),
        };
        schemas::validate::check_label_key(key).map_err(|e| e.to_string())?;
        labels.insert(key.to_owned(), value.to_owned());
    }
    Ok(labels)
}

fn deserialize_labels<'de, D>(deserializer: D) -> Result<BTreeMap<String, String>, D::Error>
where
    D: Deserializer<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Labels {
        Text(String),
        Table(BTreeMap<String, LabelValue>),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum LabelValue {
        Text(String),
        Flag(bool),
        Number(f64),
    }
    match Labels::deserialize(deserializer)? {
        Labels::Text(text) => parse_labels(&text).map_err(serde::de::Error::custom),
        Labels::Table(table) => Ok(table
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    LabelValue::Text(s) => s,
                    LabelValue::Flag(b) => b.to_string(),
                    LabelValue::Number(n) => n.to_string(),
                };
                (k, v)
            })
            .collect()),
    }
}

pub use runtime_support::ConfigError;

/// Values given on the command line, layered over everything else.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Overrides {
    /// `--nats-url` (or `NATS_URL`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nats_url: Option<String>,
    /// `--node-id`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_id: Option<String>,
    /// `--node-name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// `--role`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `--labels`, in the string form.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<String>,
    /// `--heartbeat-interval`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub heartbeat_interval: Option<Duration>,
    /// `--state-dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// `--ollama-url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ollama_url: Option<String>,
    /// `--detect-interval`.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde::option"
    )]
    pub detect_interval: Option<Duration>,
    /// `--encoding`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub encoding: Option<String>,
    /// `--otlp-endpoint`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub otlp_endpoint: Option<String>,
    /// `--creds`, `--tls-ca`, `--tls-cert`, `--tls-key`.
    #[serde(flatten)]
    pub auth: runtime_support::AuthFlags,
}

/// The file `node-agent join` stores the node's credentials in, in the
/// state directory.
pub const CREDS_FILE: &str = "node.creds";

impl AgentConfig {
    /// How it authenticates to NATS: `creds`, or the joined credentials in
    /// the state directory when they exist.
    pub fn nats_auth(&self) -> runtime_support::NatsAuth {
        let joined = self.state_dir.join(CREDS_FILE);
        runtime_support::NatsAuth {
            creds: self
                .creds
                .clone()
                .or_else(|| joined.exists().then_some(joined)),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            inbox_prefix: None,
        }
    }

    /// Loads defaults < file < environment < `overrides`, and checks them.
    /// Without `file`, [`SYSTEM_CONFIG`] is read if it exists.
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let system = Path::new(SYSTEM_CONFIG);
        let file = file.or_else(|| system.exists().then_some(system));
        let config: Self =
            runtime_support::load_layered(&Self::default(), file, ENV_PREFIX, overrides)?;
        config.check()?;
        Ok(config)
    }

    /// Checks that the values are usable.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.heartbeat_interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "heartbeat_interval must be at least 100ms".into(),
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(ConfigError::Invalid(format!(
                "log_format {:?}: expected text or json",
                self.log_format
            )));
        }
        if !matches!(self.encoding.as_str(), "json" | "protobuf") {
            return Err(ConfigError::Invalid(format!(
                "encoding {:?}: expected json or protobuf",
                self.encoding
            )));
        }
        if self.otlp_interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "otlp_interval must be at least 100ms".into(),
            ));
        }
        if self.detect_interval < Duration::from_millis(100) {
            return Err(ConfigError::Invalid(
                "detect_interval must be at least 100ms".into(),
            ));
        }
        for service in &self.services {
            service.check().map_err(ConfigError::Invalid)?;
        }
        if let Some(id) = &self.node_id {
            subjects::NodeId::parse(id)
                .map_err(|e| ConfigError::Invalid(format!("node_id: {e}")))?;
        }
        schemas::validate::validate_labels(&self.labels)
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        Ok(())
    }
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; fine in tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_with_bare_keys_as_true() {
        let labels = parse_labels("gpu, region=eu,tier = edge").expect("valid");
        assert_eq!(labels.get("gpu").map(String::as_str), Some("true"));
        assert_eq!(labels.get("region").map(String::as_str), Some("eu"));
        assert_eq!(labels.get("tier").map(String::as_str), Some("edge"));
        assert!(parse_labels("bad key=1").is_err());
        assert!(parse_labels("").expect("empty").is_empty());
    }

    #[test]
    fn file_env_and_flags_layer() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "a.toml",
                "role = \"gateway\"\nheartbeat_interval = \"10s\"\n[labels]\ngpu = true\nregion = \"eu\"\n",
            )?;
            jail.set_env("NODE_AGENT_ROLE", "edge");
            let overrides = Overrides {
                labels: Some("region=us".into()),
                ..Overrides::default()
            };
            let c = AgentConfig::load(Some(Path::new("a.toml")), &overrides)
                .map_err(|e| e.to_string())?;
            assert_eq!(c.role, "edge");
            assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
            // Flags replace the labels as a whole.
            assert_eq!(c.labels.len(), 1);
            assert_eq!(c.labels.get("region").map(String::as_str), Some("us"));
            Ok(())
        });
    }

    #[test]
    fn services_come_from_toml() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "a.toml",
                "encoding = \"protobuf\"\n[[services]]\nname = \"ollama\"\naddress = \"127.0.0.1:11434\"\n",
            )?;
            let c = AgentConfig::load(Some(Path::new("a.toml")), &Overrides::default())
                .map_err(|e| e.to_string())?;
            assert_eq!(c.services.len(), 1);
            assert_eq!(c.services[0].name, "ollama");
            assert_eq!(c.encoding, "protobuf");
            jail.create_file(
                "b.toml",
                "[[services]]\nname = \"x\"\naddress = \"nowhere\"\n",
            )?;
            assert!(AgentConfig::load(Some(Path::new("b.toml")), &Overrides::default()).is_err());
            Ok(())
        });
    }

    #[test]
    fn bad_values_are_refused() {
        figment::Jail::expect_with(|_jail| {
            let overrides = Overrides {
                node_id: Some("Bad.Id".into()),
                ..Overrides::default()
            };
            assert!(AgentConfig::load(None, &overrides).is_err());
            let overrides = Overrides {
                heartbeat_interval: Some(Duration::from_millis(1)),
                ..Overrides::default()
            };
            assert!(AgentConfig::load(None, &overrides).is_err());
            Ok(())
        });
    }
}
