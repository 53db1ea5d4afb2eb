//! The fleet page, served as static files.
//!
//! The page (source in `web/`, built by `scripts/dashboard.sh` with esbuild)
//! talks to NATS itself, over nats-server's WebSocket listener. This crate
//! only hands the browser the page's files, embedded at build time, and one
//! generated file, `/config.json`: the WebSocket URL to dial, the stream and
//! bucket names, and the credentials the page connects with (auth mode).
//! There is no API here: GET and HEAD of those files, nothing else.
//!
//! Because `/config.json` may carry credentials, a server on a loopback
//! address answers only requests whose `Host` is a loopback name, so a web
//! page elsewhere cannot read it through DNS rebinding.
#![deny(missing_docs)]

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

mod assets {
    include!(concat!(env!("OUT_DIR"), "/assets.rs"));
}

/// Whether this build carries the real page (false: a placeholder saying
/// how to build it).
pub const PAGE_BUILT: bool = assets::BUILT;

/// The default address the page is served on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9207";

/// The default WebSocket URL of nats-server the page dials.
pub const DEFAULT_WS_URL: &str = "ws://127.0.0.1:9222";

/// What the page is told in `/config.json`.
#[derive(Debug, Clone, Serialize)]
pub struct PageConfig {
    /// nats-server's WebSocket URL (`ws://` or `wss://`).
    pub ws_url: String,
    /// The contents of a `.creds` file (auth mode), or none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creds: Option<String>,
    /// The stream and bucket names of this deployment.
    pub names: PageNames,
}

/// The names the page reads (as [`subjects::Names`] has them).
#[derive(Debug, Clone, Serialize)]
pub struct PageNames {
    /// The node records' KV bucket.
    pub bucket: String,
    /// The alerts stream.
    pub alerts_stream: String,
    /// The node events stream.
    pub events_stream: String,
}

impl From<&subjects::Names> for PageNames {
    fn from(names: &subjects::Names) -> Self {
        Self {
            bucket: names.nodes_bucket.clone(),
            alerts_stream: names.alerts_stream.clone(),
            events_stream: names.events_stream.clone(),
        }
    }
}

/// Why the dashboard could not be served.
#[derive(Debug, thiserror::Error)]
pub enum DashboardError {
    /// The WebSocket URL is not one a browser can dial.
    #[error("--ws-url {0:?}: expected ws://HOST:PORT or wss://HOST:PORT")]
    BadWsUrl(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Serving stopped on an I/O error.
    #[error("serving the dashboard: {0}")]
    Serve(std::io::Error),
}

impl PageConfig {
    /// Checks the fields a browser will use.
    pub fn validate(&self) -> Result<(), DashboardError> {
        let rest = self
            .ws_url
            .strip_prefix("ws://")
            .or_else(|| self.ws_url.strip_prefix("wss://"));
        match rest {
            Some(host) if !host.is_empty() && !host.chars().any(char::is_whitespace) => Ok(()),
            _ => Err(DashboardError::BadWsUrl(self.ws_url.clone())),
        }
    }
}

/// A bound dashboard server, not yet serving.
#[derive(Debug)]
pub struct Dashboard {
    listener: tokio::net::TcpListener,
    state: Arc<Served>,
}

#[derive(Debug)]
struct Served {
    config_json: Vec<u8>,
    loopback_only: bool,
}

impl Dashboard {
    /// Binds `addr` for `page`.
    pub async fn bind(addr: SocketAddr, page: &PageConfig) -> Result<Self, DashboardError> {
        page.validate()?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| DashboardError::Listen { addr, source })?;
        let config_json = serde_json::to_vec(page).unwrap_or_else(|_| b"{}".to_vec());
        Ok(Self {
            listener,
            state: Arc::new(Served {
                config_json,
                loopback_only: addr.ip().is_loopback(),
            }),
        })
    }

    /// The address it listens on (the port chosen when asked for port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> Result<(), DashboardError> {
        let app = Router::new().fallback(file).with_state(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(DashboardError::Serve)
    }
}

/// Whether a `Host` header names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        host.rsplit_once(':').map_or(host, |(name, _)| name)
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn plain(status: StatusCode, text: &'static str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text,
    )
        .into_response()
}

/// The only handler: the page's files and `/config.json`, by GET or HEAD.
async fn file(
    State(served): State<Arc<Served>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "files only: GET or HEAD\n");
    }
    if served.loopback_only {
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !is_loopback_host(host) {
            return plain(
                StatusCode::MISDIRECTED_REQUEST,
                "this dashboard answers loopback names only\n",
            );
        }
    }
    let path = match uri.path() {
        "/" | "/nodes" | "/nodes/registry" => "/index.html",
        other => other,
    };
    let (content_type, bytes): (&str, Body) = if path == "/config.json" {
        ("application/json", Body::from(served.config_json.clone()))
    } else if let Some((_, kind, bytes)) = assets::ASSETS.iter().find(|(p, _, _)| *p == path) {
        (kind, Body::from(*bytes))
    } else {
        return plain(StatusCode::NOT_FOUND, "not found\n");
    };
    let mut response = Response::new(if method == Method::HEAD {
        Body::empty()
    } else {
        bytes
    });
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; connect-src 'self' ws: wss:; script-src 'self'; \
             style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    response
}

#[cfg(test)]
mod tests;
