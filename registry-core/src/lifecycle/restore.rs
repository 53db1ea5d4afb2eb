//! The fleet rebuilt from the records in KV, at a start (a full window for
//! every node) or a takeover (a window from the last checkpoint).

use super::*;

/// How much benefit of the doubt restored nodes get before their silence is
/// judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grace {
    /// A full `degraded_after` window from the restore (a registry start:
    /// what KV says may be arbitrarily old).
    Full,
    /// From the last checkpointed heartbeat plus one checkpoint interval (a
    /// takeover from a leader that was running: it checkpointed every node
    /// it heard at least that often, so no node was heard later than that).
    SinceCheckpoint,
}

/// The fields of a stored record that liveness needs, read without
/// decoding (or allocating) the rest.
#[derive(Debug, serde::Deserialize)]
pub(super) struct Liveness<'a> {
    #[serde(borrow)]
    node_id: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    status: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    last_heartbeat: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    updated_at: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    caps_hash: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    models_loaded: Vec<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    services: Vec<std::borrow::Cow<'a, str>>,
    #[serde(default)]
    metrics: Option<serde::de::IgnoredAny>,
    #[serde(borrow, default)]
    labels: Option<RegionLabel<'a>>,
    /// The GPUs in and out of service (small, and only on GPU nodes).
    #[serde(default)]
    gpu_health: Option<schemas::NodeGpuHealth>,
    /// An operator's drain, for its deadline (only on drained nodes).
    #[serde(default)]
    maintenance: Option<schemas::Maintenance>,
}

/// The one label liveness needs.
#[derive(Debug, serde::Deserialize)]
pub(super) struct RegionLabel<'a> {
    #[serde(borrow, default)]
    region: Option<std::borrow::Cow<'a, str>>,
}

impl Fleet {
    /// Loads the records found in KV at start, as stored (JSON) with their
    /// revisions. Every node gets one full `degraded_after` window from
    /// `now` before its silence is judged, so a restarted registry raises no
    /// false alarm on stale knowledge. Returns what was skipped as
    /// unreadable (the node id when it could be read).
    pub fn restore(
        &mut self,
        records: impl IntoIterator<Item = (Bytes, u64)>,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        self.restore_with(records, now, Grace::Full)
    }

    /// Like [`Fleet::restore`], with the given grace.
    pub fn restore_with(
        &mut self,
        records: impl IntoIterator<Item = (Bytes, u64)>,
        now: DateTime<Utc>,
        grace: Grace,
    ) -> Vec<String> {
        let mut skipped = Vec::new();
        for (bytes, revision) in records {
            let Ok(live) = schemas::json::from_bytes::<Liveness<'_>>(&bytes) else {
                skipped.push(String::from_utf8_lossy(&bytes[..bytes.len().min(64)]).into_owned());
                continue;
            };
            let (Ok(id), Ok(status)) = (
                NodeId::parse(&live.node_id),
                live.status.parse::<NodeStatus>(),
            ) else {
                skipped.push(live.node_id.into_owned());
                continue;
            };
            let last_seen = schemas::time::parse(&live.last_heartbeat).unwrap_or(now);
            let updated = schemas::time::parse(&live.updated_at).unwrap_or(now);
            let region = self.region_number(
                live.labels
                    .as_ref()
                    .and_then(|l| l.region.as_deref())
                    .unwrap_or(""),
            );
            let tracked = Tracked {
                gpu_digest: gpus::kept_digest(live.gpu_health.as_ref()),
                gpu_quarantine: gpus::any_quarantined(live.gpu_health.as_ref()),
                caps_hash: caps_digest(live.caps_hash.as_deref()),
                usage: usage_digest(
                    live.models_loaded.iter().map(|m| &**m),
                    live.services.iter().map(|s| &**s),
                ),
                has_metrics: live.metrics.is_some(),
                id: id.clone(),
                record: RecordState::Written(bytes.clone()),
                status,
                last_seen,
                // A takeover's window is set below, once the fleet's size
                // (and so its checkpoint interval) is known.
                judged_from: now,
                status_since: updated,
                last_written: updated,
                revision: Some(revision),
                needs_write: false,
                phased: false,
                queued: None,
                region,
                link: None,
                resume_at: live
                    .maintenance
                    .as_ref()
                    .and_then(|m| m.resume_at.as_deref())
                    .and_then(schemas::time::parse)
                    .filter(|_| status == NodeStatus::Maintenance),
            };
            self.take(&id);
            self.put(tracked);
        }
        if grace == Grace::SinceCheckpoint {
            // The old leader checkpointed every node it heard at least this
            // often (its fleet was this one): no node was heard later than
            // its last checkpoint plus this.
            // Deadlines only move earlier here: each node is queued again.
            let checkpoint = chrono_duration(self.checkpoint_interval());
            for slot in 0..u32::try_from(self.slots.len()).unwrap_or(u32::MAX) {
                if let Some(node) = self.slot_mut(slot) {
                    node.judged_from = (node.last_seen + checkpoint).min(now);
                    self.schedule(slot);
                }
            }
        }
        skipped
    }
}
