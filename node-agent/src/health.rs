//! The agent's health, for `node-agent health` (container HEALTHCHECK,
//! systemd): the running agent writes `<state-dir>/health.json` after every
//! heartbeat it tries; the command reads it and says whether the agent is
//! alive and its heartbeats are acked.

use std::path::Path;

use chrono::{DateTime, Utc};
use schemas::status::HealthStatus;
use serde::{Deserialize, Serialize};

/// The file in the state directory.
pub const HEALTH_FILE: &str = "health.json";

/// Most bytes the file may hold.
const MAX_BYTES: u64 = 16 * 1024;

/// What the running agent last wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthFile {
    /// The agent's process id.
    pub pid: u32,
    /// The node id it runs as.
    pub node_id: String,
    /// When the agent started (RFC 3339).
    pub started_at: String,
    /// When a heartbeat was last acked by JetStream (RFC 3339).
    pub last_ok_at: Option<String>,
    /// Why the last heartbeat failed, if it did.
    pub last_error: Option<String>,
    /// Its heartbeat interval, in seconds.
    pub heartbeat_interval_s: f64,
}

impl HealthFile {
    /// The file of an agent starting now as node `node_id`.
    pub fn starting(node_id: String, config: &crate::config::AgentConfig) -> Self {
        Self {
            pid: std::process::id(),
            node_id,
            started_at: Utc::now().to_rfc3339(),
            last_ok_at: None,
            last_error: None,
            heartbeat_interval_s: config.heartbeat_interval.as_secs_f64(),
        }
    }

    /// Takes in a heartbeat's outcome (none: acked) and writes the file
    /// into `state_dir` (a failure to write is logged: the agent goes on).
    pub fn heartbeat(
        &mut self,
        error: Option<String>,
        interval: std::time::Duration,
        state_dir: &Path,
    ) {
        if error.is_none() {
            self.last_ok_at = Some(Utc::now().to_rfc3339());
        }
        self.last_error = error;
        self.heartbeat_interval_s = interval.as_secs_f64();
        if let Err(e) = write(state_dir, self) {
            tracing::debug!(error = %e, "writing the health file");
        }
    }
}

/// Writes `file` into `state_dir` atomically (a temp file renamed over it).
pub fn write(state_dir: &Path, file: &HealthFile) -> std::io::Result<()> {
    let text = serde_json::to_vec(file).map_err(std::io::Error::other)?;
    let tmp = state_dir.join(format!("{HEALTH_FILE}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(tmp, state_dir.join(HEALTH_FILE))
}

/// The verdict on what `state_dir` says at `now`, with the health reply to
/// print (the seed's shape).
pub fn check(state_dir: &Path, now: DateTime<Utc>) -> (HealthStatus, serde_json::Value) {
    let unhealthy = |why: String| {
        (
            HealthStatus::Unhealthy,
            serde_json::json!({
                "status": "unhealthy", "service": "node-agent",
                "version": env!("CARGO_PKG_VERSION"), "reason": why,
            }),
        )
    };
    let path = state_dir.join(HEALTH_FILE);
    let file = match std::fs::metadata(&path) {
        Ok(meta) if meta.len() > MAX_BYTES => {
            return unhealthy(format!("{} is too large", path.display()))
        }
        Ok(_) => std::fs::read(&path),
        Err(e) => Err(e),
    };
    let file: HealthFile = match file.map(|bytes| serde_json::from_slice(&bytes)) {
        Ok(Ok(file)) => file,
        Ok(Err(e)) => return unhealthy(format!("{}: {e}", path.display())),
        Err(e) => {
            return unhealthy(format!(
                "{}: {e} (is the agent running with this state directory?)",
                path.display()
            ))
        }
    };
    if !Path::new(&format!("/proc/{}", file.pid)).exists() {
        return unhealthy(format!("the agent (pid {}) is not running", file.pid));
    }
    let parse = |t: &Option<String>| t.as_deref().and_then(schemas::time::parse);
    // A heartbeat acked within two intervals more than the acked ones are
    // apart (and a margin for a slow ack).
    let intervals = (crate::agent::HEARTBEAT_ACK_EVERY + 2) as f64;
    let limit = chrono::Duration::milliseconds(
        (file.heartbeat_interval_s * intervals * 1000.0) as i64 + 5000,
    );
    let fresh = parse(&file.last_ok_at).is_some_and(|at| now.signed_duration_since(at) <= limit);
    let started = parse(&Some(file.started_at.clone()));
    // A fresh agent gets as long to be heard.
    let starting = file.last_ok_at.is_none()
        && started.is_some_and(|at| now.signed_duration_since(at) <= limit);
    let status = if fresh || starting {
        HealthStatus::Healthy
    } else {
        HealthStatus::Unhealthy
    };
    let nats = match (&file.last_error, fresh) {
        (_, true) => "connected".to_owned(),
        (Some(e), false) => format!("failing: {e}"),
        (None, false) => "no heartbeat acked yet".to_owned(),
    };
    let uptime = started.map_or(0, |at| now.signed_duration_since(at).num_seconds().max(0));
    (
        status,
        serde_json::json!({
            "status": status.as_str(), "service": "node-agent", "version": env!("CARGO_PKG_VERSION"),
            "uptime_s": uptime, "node_id": file.node_id, "last_heartbeat_ok_at": file.last_ok_at,
            "dependencies": {"nats": nats},
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(last_ok: Option<DateTime<Utc>>, pid: u32) -> HealthFile {
        HealthFile {
            pid,
            node_id: "node-a".into(),
            started_at: (Utc::now() - chrono::Duration::hours(1)).to_rfc3339(),
            last_ok_at: last_ok.map(|t| t.to_rfc3339()),
            last_error: Some("timed out".into()),
            heartbeat_interval_s: 30.0,
        }
    }

    #[test]
    fn healthy_while_heartbeats_are_acked() {
        let dir = tempfile::tempdir().expect("dir");
        let now = Utc::now();
        write(
            dir.path(),
            &file(
                Some(now - chrono::Duration::seconds(20)),
                std::process::id(),
            ),
        )
        .expect("write");
        assert_eq!(check(dir.path(), now).0, HealthStatus::Healthy);
        // Six intervals and more without an ack (acked beats are four apart):
        // unhealthy, and it says why.
        write(
            dir.path(),
            &file(
                Some(now - chrono::Duration::seconds(200)),
                std::process::id(),
            ),
        )
        .expect("write");
        let (status, reply) = check(dir.path(), now);
        assert_eq!(status, HealthStatus::Unhealthy);
        assert_eq!(reply["dependencies"]["nats"], "failing: timed out");
    }

    #[test]
    fn unhealthy_without_a_live_agent_or_a_readable_file() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(check(dir.path(), Utc::now()).0, HealthStatus::Unhealthy);
        std::fs::write(dir.path().join(HEALTH_FILE), b"{not json").expect("write");
        assert_eq!(check(dir.path(), Utc::now()).0, HealthStatus::Unhealthy);
        // A pid that cannot exist.
        write(dir.path(), &file(Some(Utc::now()), u32::MAX)).expect("write");
        let (status, reply) = check(dir.path(), Utc::now());
        assert_eq!(status, HealthStatus::Unhealthy);
        assert!(reply["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not running")));
    }
}
