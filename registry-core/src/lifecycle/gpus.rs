//! GPUs in and out of service. Agents judge each GPU (healthy, warning,
//! failed, with reasons) and say so in heartbeats; the registry keeps the
//! verdicts in the record's `gpu_health`, takes a failed GPU out of service
//! at once (`gpu.unhealthy`), and puts it back only after it has reported
//! healthy for `gpu_recovery` without a break (`gpu.healthy`): one bad GPU
//! never takes the node out, and a flapping one stays out.
//!
//! Cost: a heartbeat's verdicts are reduced to a digest and compared with
//! the one last written; the record is decoded only when they differ, or
//! while a GPU is quarantined (its recovery clock needs the record).

use std::hash::{Hash, Hasher};

use schemas::{GpuState, GpuUsage, Metrics, NodeGpuHealth};

use super::*;

/// A GPU's change of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    /// It failed: out of service.
    Out,
    /// It was healthy for the recovery time: back.
    Back,
}

/// A digest of GPU verdicts, (index, state, reasons) in order; 0 for none.
fn digest<'a>(verdicts: impl Iterator<Item = (u32, &'a str, &'a [String])>) -> u32 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    let mut any = false;
    for (index, state, reasons) in verdicts {
        any = true;
        (index, state, reasons).hash(&mut hasher);
    }
    if any {
        // Never 0: 0 means "no verdicts".
        (hasher.finish() as u32) | 1
    } else {
        0
    }
}

/// The digest of the verdicts a heartbeat carries.
pub(super) fn reported_digest(metrics: Option<&Metrics>) -> u32 {
    digest(
        metrics
            .map(|m| m.gpus.as_slice())
            .unwrap_or_default()
            .iter()
            .filter_map(|u| {
                u.health
                    .as_ref()
                    .map(|h| (u.index, h.state.as_str(), h.reasons.as_slice()))
            }),
    )
}

/// The digest of the verdicts a record holds.
pub(super) fn kept_digest(health: Option<&NodeGpuHealth>) -> u32 {
    digest(
        health
            .map(|h| h.gpus.as_slice())
            .unwrap_or_default()
            .iter()
            .map(|g| (g.index, g.state.as_str(), g.reasons.as_slice())),
    )
}

/// Whether any GPU is out of service.
pub(super) fn any_quarantined(health: Option<&NodeGpuHealth>) -> bool {
    health.is_some_and(|h| h.gpus.iter().any(|g| g.quarantined))
}

/// The node's state from its GPUs: `failed` with none in service,
/// `warning` when one is out or not healthy, else `healthy`.
pub fn summary(gpus: &[GpuState]) -> &'static str {
    let in_service = gpus
        .iter()
        .filter(|g| !g.quarantined && g.state != "failed")
        .count();
    if in_service == 0 {
        "failed"
    } else if gpus.iter().any(|g| g.quarantined || g.state != "healthy") {
        "warning"
    } else {
        "healthy"
    }
}

/// The GPUs' next states from the verdicts `reported` at `at`, given the
/// states kept (`previous`) and the node's GPUs (for their uuids), with the
/// GPUs that changed service.
pub(super) fn next(
    previous: Option<&NodeGpuHealth>,
    reported: &[GpuUsage],
    uuids: &[Option<String>],
    at: DateTime<Utc>,
    recovery: chrono::Duration,
) -> (NodeGpuHealth, Vec<(Turn, GpuState)>) {
    let now = schemas::time::format(at);
    let mut turns = Vec::new();
    let mut gpus = Vec::new();
    for usage in reported {
        let Some(health) = &usage.health else {
            continue;
        };
        let uuid = uuids.get(usage.index as usize).cloned().flatten();
        // The same GPU as before: same index, and the same uuid when both
        // are known (a replaced card starts afresh).
        let before = previous
            .and_then(|p| p.gpus.iter().find(|g| g.index == usage.index))
            .filter(|g| match (&g.uuid, &uuid) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            });
        let mut gpu = GpuState {
            index: usage.index,
            uuid,
            state: health.state.clone(),
            reasons: health.reasons.clone(),
            quarantined: before.is_some_and(|b| b.quarantined),
            since: before.and_then(|b| b.since.clone()),
            recovering_since: before.and_then(|b| b.recovering_since.clone()),
        };
        if gpu.state == "failed" {
            gpu.recovering_since = None;
            if !gpu.quarantined {
                gpu.quarantined = true;
                gpu.since = Some(now.clone());
                turns.push((Turn::Out, gpu.clone()));
            }
        } else if gpu.quarantined {
            let recovering = gpu
                .recovering_since
                .as_deref()
                .and_then(schemas::time::parse)
                .unwrap_or(at);
            if at.signed_duration_since(recovering) >= recovery {
                gpu.quarantined = false;
                gpu.since = Some(now.clone());
                gpu.recovering_since = None;
                turns.push((Turn::Back, gpu.clone()));
            } else {
                gpu.recovering_since = Some(schemas::time::format(recovering));
            }
        }
        gpus.push(gpu);
    }
    let state = summary(&gpus).to_owned();
    (NodeGpuHealth { state, gpus }, turns)
}

/// The GPU health a new register keeps from the record before it: the GPUs
/// still there (same index, same uuid when known), quarantine included.
pub(super) fn carried(
    previous: Option<NodeGpuHealth>,
    gpus: &[schemas::Gpu],
) -> Option<NodeGpuHealth> {
    let mut health = previous?;
    health.gpus.retain(|g| {
        gpus.get(g.index as usize)
            .is_some_and(|now| match (&g.uuid, &now.uuid) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            })
    });
    if health.gpus.is_empty() {
        return None;
    }
    health.state = summary(&health.gpus).to_owned();
    Some(health)
}

impl Fleet {
    /// Takes the GPU verdicts of a heartbeat from the node in `slot`:
    /// the new `gpu_health` to write when it changed, with an alert for
    /// each GPU that left or re-entered service.
    pub(super) fn gpu_verdicts(
        &mut self,
        slot: u32,
        metrics: Option<&Metrics>,
        at: DateTime<Utc>,
        seq: u64,
        effects: &mut Effects,
    ) -> Option<NodeGpuHealth> {
        let recovery = chrono_duration(self.settings.gpu_recovery);
        let reported = reported_digest(metrics);
        let node = self.slots.get(slot as usize)?.as_ref()?;
        if reported == 0 || (reported == node.gpu_digest && !node.gpu_quarantine) {
            return None;
        }
        let record = node.record();
        let uuids: Vec<Option<String>> = record
            .capabilities
            .as_ref()
            .map(|c| c.gpus.iter().map(|g| g.uuid.clone()).collect())
            .unwrap_or_default();
        let reported_gpus = metrics.map(|m| m.gpus.as_slice()).unwrap_or_default();
        let (health, turns) = next(
            record.gpu_health.as_ref(),
            reported_gpus,
            &uuids,
            at,
            recovery,
        );
        if Some(&health) == record.gpu_health.as_ref() {
            return None;
        }
        for (turn, gpu) in turns {
            let (kind, message) = match turn {
                Turn::Out => (
                    AlertType::GpuUnhealthy,
                    format!(
                        "GPU {} of node {} failed ({}): out of service",
                        gpu.index,
                        node.id,
                        gpu.reasons.join(", ")
                    ),
                ),
                Turn::Back => (
                    AlertType::GpuHealthy,
                    format!(
                        "GPU {} of node {} healthy for {} s: back in service",
                        gpu.index,
                        node.id,
                        self.settings.gpu_recovery.as_secs()
                    ),
                ),
            };
            let cause = format!("{seq}/gpu{}", gpu.index);
            let mut alert = self.alert(kind, node, None, at, &cause, message);
            alert.gpu_index = Some(gpu.index);
            alert.gpu_uuid = gpu.uuid.clone();
            alert.reasons = gpu.reasons.clone();
            effects.alerts.push(alert);
        }
        Some(health)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::GpuHealth;

    fn usage(index: u32, state: &str, reasons: &[&str]) -> GpuUsage {
        GpuUsage {
            index,
            health: Some(GpuHealth {
                state: state.into(),
                reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
            }),
            ..GpuUsage::default()
        }
    }

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).unwrap_or_default()
    }

    #[test]
    fn a_failed_gpu_is_out_at_once_and_back_after_the_recovery_time() {
        let recovery = chrono::Duration::minutes(10);
        let uuids = vec![Some("GPU-a".to_owned()), Some("GPU-b".to_owned())];
        let (h, turns) = next(
            None,
            &[usage(0, "healthy", &[]), usage(1, "failed", &["xid_79"])],
            &uuids,
            at(0),
            recovery,
        );
        assert_eq!(h.state, "warning", "one GPU out does not take the node out");
        assert_eq!(turns.len(), 1);
        assert_eq!((turns[0].0, turns[0].1.index), (Turn::Out, 1));
        assert!(h.gpus[1].quarantined && h.gpus[1].uuid.as_deref() == Some("GPU-b"));
        // Still failing: no new turn.
        let (h, turns) = next(
            Some(&h),
            &[usage(0, "healthy", &[]), usage(1, "failed", &["xid_79"])],
            &uuids,
            at(30),
            recovery,
        );
        assert!(turns.is_empty() && h.gpus[1].quarantined);
        // Healthy again: recovering, still out.
        let (h, turns) = next(
            Some(&h),
            &[usage(0, "healthy", &[]), usage(1, "healthy", &[])],
            &uuids,
            at(60),
            recovery,
        );
        assert!(turns.is_empty() && h.gpus[1].quarantined);
        assert_eq!(
            h.gpus[1].recovering_since.as_deref(),
            Some(schemas::time::format(at(60)).as_str())
        );
        // A relapse restarts the clock.
        let (h, _) = next(
            Some(&h),
            &[
                usage(0, "healthy", &[]),
                usage(1, "failed", &["ecc_uncorrected"]),
            ],
            &uuids,
            at(300),
            recovery,
        );
        assert!(h.gpus[1].quarantined && h.gpus[1].recovering_since.is_none());
        let (h, _) = next(
            Some(&h),
            &[usage(0, "healthy", &[]), usage(1, "healthy", &[])],
            &uuids,
            at(400),
            recovery,
        );
        let (h, turns) = next(
            Some(&h),
            &[usage(0, "healthy", &[]), usage(1, "healthy", &[])],
            &uuids,
            at(999),
            recovery,
        );
        assert!(turns.is_empty(), "not yet ten minutes since 400");
        let (h, turns) = next(
            Some(&h),
            &[usage(0, "healthy", &[]), usage(1, "healthy", &[])],
            &uuids,
            at(1000),
            recovery,
        );
        assert_eq!(turns.len(), 1);
        assert_eq!((turns[0].0, turns[0].1.index), (Turn::Back, 1));
        assert_eq!(h.state, "healthy");
        assert!(!h.gpus[1].quarantined);
    }

    #[test]
    fn warnings_stay_in_service_and_all_failed_is_failed() {
        let recovery = chrono::Duration::minutes(10);
        let (h, turns) = next(
            None,
            &[usage(0, "warning", &["throttle_thermal"])],
            &[],
            at(0),
            recovery,
        );
        assert!(turns.is_empty());
        assert_eq!(h.state, "warning");
        assert!(!h.gpus[0].quarantined);
        let (h, _) = next(
            None,
            &[
                usage(0, "failed", &["ecc_uncorrected"]),
                usage(1, "failed", &["xid_48"]),
            ],
            &[],
            at(0),
            recovery,
        );
        assert_eq!(h.state, "failed");
    }

    #[test]
    fn a_replaced_card_starts_afresh_and_a_register_keeps_what_is_still_there() {
        let recovery = chrono::Duration::minutes(10);
        let (h, _) = next(
            None,
            &[usage(0, "failed", &["xid_79"])],
            &[Some("GPU-old".into())],
            at(0),
            recovery,
        );
        let (h2, turns) = next(
            Some(&h),
            &[usage(0, "healthy", &[])],
            &[Some("GPU-new".into())],
            at(10),
            recovery,
        );
        assert!(
            turns.is_empty() && !h2.gpus[0].quarantined,
            "a new card is not the old one's quarantine"
        );
        let old_gpus = [schemas::Gpu {
            uuid: Some("GPU-old".into()),
            ..schemas::Gpu::default()
        }];
        let new_gpus = [schemas::Gpu {
            uuid: Some("GPU-new".into()),
            ..schemas::Gpu::default()
        }];
        assert_eq!(
            carried(Some(h.clone()), &old_gpus).map(|c| c.gpus[0].quarantined),
            Some(true)
        );
        assert_eq!(carried(Some(h), &new_gpus), None);
    }

    #[test]
    fn digests_see_changes_only() {
        let m = |v: Vec<GpuUsage>| Metrics {
            gpus: v,
            ..Metrics::default()
        };
        assert_eq!(reported_digest(None), 0);
        assert_eq!(
            reported_digest(Some(&m(vec![GpuUsage::default()]))),
            0,
            "no verdicts"
        );
        let a = reported_digest(Some(&m(vec![usage(0, "healthy", &[])])));
        let b = reported_digest(Some(&m(vec![usage(0, "warning", &["temperature_high"])])));
        assert!(a != 0 && a != b);
        let (h, _) = next(
            None,
            &[usage(0, "healthy", &[])],
            &[],
            at(0),
            chrono::Duration::minutes(1),
        );
        assert_eq!(kept_digest(Some(&h)), a);
    }
}
