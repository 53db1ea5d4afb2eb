//! What every binary of the fleet sets up the same way.
//!
//! Libraries only emit `tracing` events; binaries install the subscriber
//! here ([`init_tracing`]), stop on SIGTERM or SIGINT ([`shutdown_signal`]),
//! and load their one configuration struct in layers ([`load_layered`]).
#![deny(missing_docs)]

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing_subscriber::EnvFilter;

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
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
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
