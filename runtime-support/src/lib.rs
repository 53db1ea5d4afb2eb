//! What every binary of the fleet sets up the same way.
//!
//! Libraries only emit `tracing` events; binaries install the subscriber
//! here ([`init_tracing`]), stop on SIGTERM or SIGINT ([`shutdown_signal`]),
//! and load their one configuration struct in layers ([`load_layered`]).
//! Every retry loop waits through [`Backoff`]; every service stops its
//! tasks with one [`CancellationToken`].
#![deny(missing_docs)]

mod backoff;
pub mod trace_context;

pub use backoff::Backoff;
pub use tokio_util::sync::CancellationToken;

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

/// Why a configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A source could not be read or holds a wrong type or unknown key.
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    /// The values do not fit together.
    #[error("configuration: {0}")]
    Invalid(String),
}

/// Loads a configuration in layers: `defaults` < the TOML `file` (which must
/// exist when given) < environment variables named `<env_prefix><FIELD>`
/// (`__` separates nested fields) < `overrides` (the command line; leave out
/// what was not given).
pub fn load_layered<T, O>(
    defaults: &T,
    file: Option<&Path>,
    env_prefix: &str,
    overrides: &O,
) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned,
    O: Serialize,
{
    let mut figment = Figment::from(Serialized::defaults(defaults));
    if let Some(file) = file {
        figment = figment.merge(Toml::file_exact(file));
    }
    Ok(figment
        .merge(Env::prefixed(env_prefix).split("__"))
        .merge(Serialized::defaults(overrides))
        .extract()
        .map_err(Box::new)?)
}

/// Installs the tracing subscriber on stderr: `format` is `json` for JSON
/// lines, anything else for text. `RUST_LOG` filters (default `info`).
pub fn init_tracing(format: &str) {
    init_tracing_with(format, None);
}

/// [`init_tracing`], and `extra` beside the log output (the OpenTelemetry
/// layer that exports spans as traces). `RUST_LOG` filters both.
pub fn init_tracing_with(format: &str, extra: Option<Box<dyn Layer<Registry> + Send + Sync>>) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let subscriber = tracing_subscriber::registry().with(extra).with(filter);
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    // A second install (tests that run a main twice) keeps the first.
    let _ = if format == "json" {
        subscriber.with(logs.json()).try_init()
    } else {
        subscriber.with(logs).try_init()
    };
}

/// For command-line tools: `extra` (the OpenTelemetry layer) and, only when
/// `RUST_LOG` is set, logs on stderr; a tool's output stays its own.
pub fn init_tracing_quiet(extra: Option<Box<dyn Layer<Registry> + Send + Sync>>) {
    let logs = std::env::var_os("RUST_LOG").is_some().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(EnvFilter::from_default_env())
    });
    let _ = tracing_subscriber::registry()
        .with(extra)
        .with(logs)
        .with(EnvFilter::new("info"))
        .try_init();
}

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {},
                    _ = term.recv() => {},
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    tracing::info!("shutting down");
}

/// The servers of a `--nats-url` value: one URL, or several separated by
/// commas (the members of a cluster; the client picks one and fails over to
/// the others).
pub fn server_list(urls: &str) -> Vec<&str> {
    urls.split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .collect()
}

#[cfg(test)]
mod server_list_tests {
    use super::server_list;

    #[test]
    fn one_or_several_urls() {
        assert_eq!(server_list("nats://a:4222"), ["nats://a:4222"]);
        assert_eq!(
            server_list("nats://a:4222, nats://b:4223,,"),
            ["nats://a:4222", "nats://b:4223"]
        );
        assert!(server_list(" ").is_empty());
    }
}

/// How a program proves who it is to NATS and checks the server: a `.creds`
/// file (decentralised JWT auth; see `nodectl auth`) and TLS (a CA to trust,
/// and a client certificate for mutual TLS). Empty: no auth, plain TCP
/// (development).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsAuth {
    /// The user's credentials (JWT and nkey seed).
    pub creds: Option<std::path::PathBuf>,
    /// PEM file of the CA(s) that signed the server's certificate.
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that verify clients (mTLS).
    pub tls_cert: Option<std::path::PathBuf>,
    /// PEM key of `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// The inbox prefix replies come under (a node's credentials allow only
    /// its own: `_INBOX_<node id>`). Default `_INBOX`.
    pub inbox_prefix: Option<String>,
}

/// The `--creds`, `--tls-ca`, `--tls-cert` and `--tls-key` flags every
/// binary takes, the same way (also as a layer of its configuration: each
/// is serialised only when given).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args, Serialize)]
pub struct AuthFlags {
    /// The .creds file to connect with (auth mode; made by `nodectl auth`
    /// or a join; node-agent falls back to <state-dir>/node.creds).
    #[arg(long, env = "NATS_CREDS", global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds: Option<std::path::PathBuf>,
    /// CA certificate(s) to trust for the server's certificate (PEM).
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// Client certificate for mutual TLS (PEM).
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Key of --tls-cert (PEM).
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<std::path::PathBuf>,
}

impl AuthFlags {
    /// The connection settings these flags ask for.
    pub fn nats_auth(&self) -> NatsAuth {
        NatsAuth {
            creds: self.creds.clone(),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            inbox_prefix: None,
        }
    }
}

/// Why the connection could not be set up as configured.
#[derive(Debug, thiserror::Error)]
pub enum NatsAuthError {
    /// The credentials file could not be read.
    #[error("credentials {path}: {source}")]
    Creds {
        /// The file that could not be used.
        path: String,
        /// The underlying reason, as reported.
        #[source]
        source: std::io::Error,
    },
    /// Only half of a client certificate was given.
    #[error("tls_cert and tls_key go together")]
    HalfCertificate,
}

impl NatsAuth {
    /// Applies the credentials and TLS settings to `options`.
    pub async fn apply(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, NatsAuthError> {
        if let Some(path) = &self.creds {
            options =
                options
                    .credentials_file(path)
                    .await
                    .map_err(|source| NatsAuthError::Creds {
                        path: path.display().to_string(),
                        source,
                    })?;
        }
        if let Some(prefix) = &self.inbox_prefix {
            options = options.custom_inbox_prefix(prefix);
        }
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                options = options
                    .add_client_certificate(cert.clone(), key.clone())
                    .require_tls(true);
            }
            (None, None) => {}
            _ => return Err(NatsAuthError::HalfCertificate),
        }
        Ok(options)
    }
}

/// Sends one request that several responders answer (no queue group, such
/// as `registry.health`) and gathers the answers that arrive within
/// `wait`, or until `enough` have.
pub async fn gather(
    client: &async_nats::Client,
    subject: String,
    payload: bytes::Bytes,
    wait: std::time::Duration,
    enough: usize,
) -> Result<Vec<async_nats::Message>, async_nats::Error> {
    use futures::StreamExt as _;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client.publish_with_reply(subject, inbox, payload).await?;
    client.flush().await?;
    let mut gathered = Vec::new();
    let deadline = tokio::time::Instant::now() + wait;
    while gathered.len() < enough {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(message)) => gathered.push(message),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(gathered)
}
