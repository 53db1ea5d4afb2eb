//! `fields`: the record fields a reply may be cut down to, and the cut.

use std::collections::BTreeMap;

use schemas::NodeRecord;

use super::Query;

/// Top-level fields of a node record, for `fields` projections.
pub const RECORD_FIELDS: &[&str] = &[
    "node_id",
    "node_name",
    "role",
    "labels",
    "hostname",
    "ip_address",
    "local_ip",
    "capabilities",
    "agent_version",
    "seq",
    "status",
    "last_heartbeat",
    "registered_at",
    "updated_at",
    "metrics",
    "models_loaded",
    "services",
    "caps_hash",
    "gpu_health",
    "maintenance",
    "gpu_cordons",
    "profile_revision",
    "profile_error",
    "profile_mismatch",
    "nats",
];

impl Query {
    /// The record with only the requested fields (all when none are named).
    pub fn project(&self, record: &NodeRecord) -> NodeRecord {
        let Some(fields) = &self.fields else {
            return record.clone();
        };
        let keep = |name: &str| fields.contains(name);
        NodeRecord {
            node_id: record.node_id.clone(),
            node_name: record.node_name.clone().filter(|_| keep("node_name")),
            role: record.role.clone().filter(|_| keep("role")),
            labels: if keep("labels") {
                record.labels.clone()
            } else {
                BTreeMap::new()
            },
            hostname: record.hostname.clone().filter(|_| keep("hostname")),
            ip_address: record.ip_address.clone().filter(|_| keep("ip_address")),
            local_ip: record.local_ip.clone().filter(|_| keep("local_ip")),
            capabilities: record.capabilities.clone().filter(|_| keep("capabilities")),
            agent_version: record
                .agent_version
                .clone()
                .filter(|_| keep("agent_version")),
            seq: record.seq.filter(|_| keep("seq")),
            status: if keep("status") {
                record.status.clone()
            } else {
                String::new()
            },
            last_heartbeat: if keep("last_heartbeat") {
                record.last_heartbeat.clone()
            } else {
                String::new()
            },
            registered_at: if keep("registered_at") {
                record.registered_at.clone()
            } else {
                String::new()
            },
            updated_at: if keep("updated_at") {
                record.updated_at.clone()
            } else {
                String::new()
            },
            metrics: record.metrics.clone().filter(|_| keep("metrics")),
            models_loaded: if keep("models_loaded") {
                record.models_loaded.clone()
            } else {
                Vec::new()
            },
            services: if keep("services") {
                record.services.clone()
            } else {
                Vec::new()
            },
            caps_hash: record.caps_hash.clone().filter(|_| keep("caps_hash")),
            gpu_health: record.gpu_health.clone().filter(|_| keep("gpu_health")),
            maintenance: record.maintenance.clone().filter(|_| keep("maintenance")),
            gpu_cordons: if keep("gpu_cordons") {
                record.gpu_cordons.clone()
            } else {
                Vec::new()
            },
            profile_revision: record.profile_revision.filter(|_| keep("profile_revision")),
            profile_error: record
                .profile_error
                .clone()
                .filter(|_| keep("profile_error")),
            profile_mismatch: if keep("profile_mismatch") {
                record.profile_mismatch.clone()
            } else {
                Vec::new()
            },
            nats: record.nats.clone().filter(|_| keep("nats")),
        }
    }
}
