//! The answer on `registry.health`, in the shape of the seed documents'
//! health standard: `{"status","service","version","uptime",
//! "dependencies"}`, with what a registry instance adds.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::status::HealthStatus;

/// One instance's health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthReply {
    /// Healthy, degraded (self-preservation, a backlog, an index still
    /// loading) or unhealthy (a dependency is down).
    pub status: HealthStatus,
    /// The service (`node-registry`).
    pub service: String,
    /// Its version.
    pub version: String,
    /// Seconds since the instance started.
    pub uptime_s: u64,
    /// The instance's name (`instance` setting, or `<host>-<pid>`).
    pub instance: String,
    /// Whether it holds the leader lease (consumes events, writes records).
    pub leader: bool,
    /// Events not yet processed (pending + ack pending), as the leader saw
    /// them last; none on a standby.
    pub backlog: Option<u64>,
    /// Each dependency and how it is: `nats`, `jetstream`, `kv`,
    /// `event_stream` (`connected`/`ok`, or what is wrong).
    pub dependencies: BTreeMap<String, String>,
    /// While transitions are held: why, and over what scope.
    pub self_preservation: Option<serde_json::Value>,
    /// The leader's event stream holds about this many seconds of events at
    /// the current rate (absent: no limit binds, or not measured yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_history_s: Option<u64>,
    /// That is less than the configured minimum: a registry lagging that
    /// far loses events unread.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub event_history_short: bool,
    /// With a partitioned event stream: the partitions this instance leads
    /// (`leader` is true when it leads any). Absent with one partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<Vec<u32>>,
    /// With a partitioned event stream: how many partitions it has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_count: Option<u32>,
    /// A global view: each region (JetStream domain) it sources, and
    /// whether it reaches it now (`reachable`, or `unreachable since
    /// <RFC 3339>`). Absent on a regional registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<BTreeMap<String, String>>,
}

impl HealthReply {
    /// The status its dependencies and state call for: unhealthy when a
    /// dependency is not `ok`/`connected`, degraded in self-preservation,
    /// with a short event history, with a backlog of `backlog_limit` or
    /// more, or (a global view) with a region out of reach, else healthy.
    pub fn judge(&self, backlog_limit: u64) -> HealthStatus {
        if self
            .dependencies
            .values()
            .any(|v| v != "ok" && v != "connected")
        {
            HealthStatus::Unhealthy
        } else if self.self_preservation.is_some()
            || self.event_history_short
            || self.backlog.is_some_and(|b| b >= backlog_limit)
            || self
                .regions
                .as_ref()
                .is_some_and(|r| r.values().any(|v| v != "reachable"))
        {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply() -> HealthReply {
        HealthReply {
            status: HealthStatus::Healthy,
            service: "node-registry".into(),
            version: "0.1.0".into(),
            uptime_s: 5,
            instance: "a".into(),
            leader: true,
            backlog: Some(0),
            dependencies: [
                ("nats", "connected"),
                ("jetstream", "ok"),
                ("kv", "ok"),
                ("event_stream", "ok"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            self_preservation: None,
            event_history_s: Some(3600),
            event_history_short: false,
            partitions: None,
            partition_count: None,
            regions: None,
        }
    }

    #[test]
    fn judged_by_dependencies_then_state() {
        let mut r = reply();
        assert_eq!(r.judge(1000), HealthStatus::Healthy);
        r.backlog = Some(5000);
        assert_eq!(r.judge(1000), HealthStatus::Degraded);
        r.backlog = None;
        r.event_history_short = true;
        assert_eq!(r.judge(1000), HealthStatus::Degraded);
        r.event_history_short = false;
        r.self_preservation = Some(serde_json::json!({"scope": "fleet"}));
        assert_eq!(r.judge(1000), HealthStatus::Degraded);
        r.dependencies
            .insert("kv".into(), "unavailable: timed out".into());
        assert_eq!(r.judge(1000), HealthStatus::Unhealthy);
    }

    #[test]
    fn the_json_has_the_contract_shape() {
        let json = serde_json::to_value(reply()).expect("json");
        assert_eq!(json["status"], "healthy");
        assert_eq!(json["dependencies"]["nats"], "connected");
        assert_eq!(json["self_preservation"], serde_json::Value::Null);
        let back: HealthReply = serde_json::from_value(json).expect("parses back");
        assert_eq!(back, reply());
    }
}
