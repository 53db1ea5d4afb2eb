//! The server's connection advisories (`$SYS.ACCOUNT.*.CONNECT|DISCONNECT`):
//! a known node whose connection closed is degraded a grace later unless it
//! is heard from (fast liveness).

use chrono::{DateTime, Utc};
use subjects::NodeId;
use tracing::{debug, info, warn};

use super::Worker;
use crate::counters::Counters;

/// Largest connection advisory read (the server's are about 1 KiB).
const MAX_CONNECTION_EVENT_BYTES: usize = 64 * 1024;
/// The reason a server gives for the connections it closes as it stops.
const SERVER_SHUTDOWN: &str = "Server Shutdown";

impl<S, A, T> Worker<S, A, T> {
    /// Takes in one connection advisory about a known node.
    pub(super) fn on_connection_advisory(&mut self, subject: &str, payload: &[u8]) {
        let event = match ConnectionEvent::decode(payload) {
            Ok(event) => event,
            Err(e) => {
                Counters::bump(&self.counters.connection_events_rejected);
                warn!(subject, error = %e, "connection event dropped");
                return;
            }
        };
        // Connections of other programs (the registry itself, nodectl) and
        // of unknown nodes are none of our business.
        let Ok(id) = NodeId::parse(&event.name) else {
            return;
        };
        if self.fleet.get(&id).is_none() {
            return;
        }
        Counters::bump(&self.counters.connection_events);
        match event.closed {
            None => {
                debug!(node_id = %id, "connection opened");
                self.fleet.connection_opened(&id, event.opened);
            }
            // The server going away is not the node going away: it will
            // reconnect to another (or the same, restarted) server.
            Some(_) if event.reason == SERVER_SHUTDOWN => {
                debug!(node_id = %id, "connection closed by a server shutdown");
            }
            Some(closed) => {
                if self.fleet.connection_closed(&id, event.opened, closed) {
                    info!(node_id = %id, reason = %event.reason, "connection closed; degraded unless it is heard from within the grace");
                }
            }
        }
    }
}

/// Reads a connection advisory as the worker does: the connection's name,
/// or why it would be dropped (for the fuzz targets).
pub fn read_connection_advisory(payload: &[u8]) -> Result<String, String> {
    ConnectionEvent::decode(payload)
        .map(|event| event.name)
        .map_err(|e| e.to_string())
}

/// A server advisory of a client connection opening or closing: the fields
/// the registry uses.
#[derive(Debug, PartialEq)]
struct ConnectionEvent {
    /// The connection's name (an agent's is its node id).
    name: String,
    opened: DateTime<Utc>,
    /// When it closed (a disconnect advisory).
    closed: Option<DateTime<Utc>>,
    reason: String,
}

/// Why a connection advisory was dropped.
#[derive(Debug, thiserror::Error)]
enum ConnectionEventError {
    #[error("{0} bytes, more than {MAX_CONNECTION_EVENT_BYTES}")]
    TooLarge(usize),
    #[error("not a connection advisory: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown advisory type {0:?}")]
    Type(String),
    #[error("bad time {0:?}")]
    Time(String),
}

impl ConnectionEvent {
    const CONNECT: &'static str = "io.nats.server.advisory.v1.client_connect";
    const DISCONNECT: &'static str = "io.nats.server.advisory.v1.client_disconnect";

    fn decode(payload: &[u8]) -> Result<Self, ConnectionEventError> {
        #[derive(serde::Deserialize)]
        struct Advisory {
            r#type: String,
            client: Client,
            #[serde(default)]
            reason: String,
        }
        #[derive(serde::Deserialize)]
        struct Client {
            #[serde(default)]
            name: String,
            start: String,
            #[serde(default)]
            stop: Option<String>,
        }
        if payload.len() > MAX_CONNECTION_EVENT_BYTES {
            return Err(ConnectionEventError::TooLarge(payload.len()));
        }
        // Server advisories gain fields over versions: unknown ones are
        // ignored here (unlike requests, these are not typed by people).
        let advisory: Advisory = serde_json::from_slice(payload)?;
        let time = |s: &str| {
            schemas::time::parse(s).ok_or_else(|| ConnectionEventError::Time(s.to_owned()))
        };
        let opened = time(&advisory.client.start)?;
        let closed = match advisory.r#type.as_str() {
            Self::CONNECT => None,
            Self::DISCONNECT => Some(match &advisory.client.stop {
                Some(stop) => time(stop)?,
                None => opened,
            }),
            other => return Err(ConnectionEventError::Type(other.to_owned())),
        };
        Ok(Self {
            name: advisory.client.name,
            opened,
            closed,
            reason: advisory.reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As nats-server 2.15 sends them (shortened server block).
    const DISCONNECT: &str = r#"{"type":"io.nats.server.advisory.v1.client_disconnect","id":"7dpw","timestamp":"2026-11-22T09:57:23.17518402Z","server":{"name":"N","ver":"2.15.1","seq":17},"client":{"start":"2026-11-22T09:57:22.673891295Z","host":"127.0.0.1","id":7,"acc":"FLEET","user":"fleet","name":"node-abc","rtt":327000,"stop":"2026-11-22T09:57:23.17518402Z","kind":"Client","client_type":"nats"},"sent":{"msgs":0,"bytes":0},"received":{"msgs":0,"bytes":0},"reason":"Client Closed"}"#;

    #[test]
    fn connection_advisories_are_read_and_bad_ones_rejected() {
        let event = ConnectionEvent::decode(DISCONNECT.as_bytes()).expect("a disconnect");
        assert_eq!(event.name, "node-abc");
        assert_eq!(event.reason, "Client Closed");
        let closed = event.closed.expect("closed");
        assert_eq!((closed - event.opened).num_milliseconds(), 501);
        let connect = DISCONNECT.replace("client_disconnect", "client_connect");
        assert!(ConnectionEvent::decode(connect.as_bytes())
            .expect("a connect")
            .closed
            .is_none());
        for bad in [
            "",
            "{}",
            "[1]",
            &DISCONNECT.replace("client_disconnect", "account_connections"),
            &DISCONNECT.replace("2026-11-22T09:57:22.673891295Z", "yesterday"),
        ] {
            assert!(ConnectionEvent::decode(bad.as_bytes()).is_err(), "{bad}");
        }
        let huge = vec![b' '; MAX_CONNECTION_EVENT_BYTES + 1];
        assert!(matches!(
            ConnectionEvent::decode(&huge),
            Err(ConnectionEventError::TooLarge(_))
        ));
    }
}
