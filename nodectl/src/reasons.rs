//! What is out of service and why, like Slurm's `sinfo -R`: drained nodes
//! (an operator's reason), silent nodes (the registry's), cordoned GPUs
//! (an operator's) and quarantined GPUs (their health).

use chrono::{DateTime, Utc};
use schemas::NodeRecord;
use serde::Serialize;

/// One thing out of service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Reason {
    /// The node.
    pub node_id: String,
    /// The GPU, when only one GPU is out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// `maintenance`, `degraded`, `offline`, `cordoned` or `quarantined`.
    pub state: String,
    /// Why.
    pub reason: String,
    /// Who said so (`registry` for the registry's own judgement).
    pub by: String,
    /// Since when (RFC 3339).
    pub since: String,
    /// When it ends by itself (a drain's deadline).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
}

/// Everything out of service among `records`, oldest first.
pub fn reasons(records: &[NodeRecord]) -> Vec<Reason> {
    let mut out = Vec::new();
    for r in records {
        let node = |state: &str, reason: String, by: String, since: String| Reason {
            node_id: r.node_id.clone(),
            gpu: None,
            state: state.to_owned(),
            reason,
            by,
            since,
            until: None,
        };
        match r.status.as_str() {
            "maintenance" => {
                let m = r.maintenance.clone().unwrap_or_default();
                out.push(Reason {
                    until: m.resume_at,
                    ..node(
                        "maintenance",
                        if m.reason.is_empty() {
                            "cordoned".to_owned()
                        } else {
                            m.reason
                        },
                        m.by.unwrap_or_else(|| "-".to_owned()),
                        if m.since.is_empty() {
                            r.updated_at.clone()
                        } else {
                            m.since
                        },
                    )
                });
            }
            status @ ("degraded" | "offline") => out.push(node(
                status,
                "no heartbeat".to_owned(),
                "registry".to_owned(),
                r.updated_at.clone(),
            )),
            _ => {}
        }
        for c in &r.gpu_cordons {
            out.push(Reason {
                gpu: Some(c.index),
                ..node(
                    "cordoned",
                    c.reason.clone(),
                    c.by.clone().unwrap_or_else(|| "-".to_owned()),
                    c.since.clone(),
                )
            });
        }
        for g in r.gpu_health.iter().flat_map(|h| &h.gpus) {
            if g.quarantined {
                out.push(Reason {
                    gpu: Some(g.index),
                    ..node(
                        "quarantined",
                        if g.reasons.is_empty() {
                            g.state.clone()
                        } else {
                            g.reasons.join("; ")
                        },
                        "registry".to_owned(),
                        g.since.clone().unwrap_or_default(),
                    )
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.since, &a.node_id, a.gpu).cmp(&(&b.since, &b.node_id, b.gpu)));
    out
}

/// The reasons as a table: REASON, BY, SINCE (age), UNTIL, STATE, NODE.
pub fn table(reasons: &[Reason], now: DateTime<Utc>) -> String {
    let rows: Vec<Vec<String>> = reasons
        .iter()
        .map(|r| {
            vec![
                r.reason.clone(),
                r.by.clone(),
                format!("{} ({} ago)", r.since, crate::table::age(&r.since, now)),
                r.until.clone().unwrap_or_else(|| "-".to_owned()),
                r.state.clone(),
                match r.gpu {
                    Some(gpu) => format!("{} gpu {gpu}", r.node_id),
                    None => r.node_id.clone(),
                },
            ]
        })
        .collect();
    crate::table::render(&["REASON", "BY", "SINCE", "UNTIL", "STATE", "NODE"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{GpuCordon, GpuState, Maintenance, NodeGpuHealth};

    #[test]
    fn what_is_out_and_why() {
        let record = |id: &str, status: &str| NodeRecord {
            node_id: id.into(),
            status: status.into(),
            updated_at: "2026-11-26T09:00:00Z".into(),
            ..NodeRecord::default()
        };
        let drained = NodeRecord {
            maintenance: Some(Maintenance {
                reason: "PSU swap".into(),
                by: Some("ops".into()),
                since: "2026-11-26T08:00:00Z".into(),
                resume_at: Some("2026-11-26T10:00:00Z".into()),
            }),
            ..record("node-a", "maintenance")
        };
        let gpus = NodeRecord {
            gpu_cordons: vec![GpuCordon {
                index: 1,
                reason: "fan noise".into(),
                by: Some("ops".into()),
                since: "2026-11-26T07:00:00Z".into(),
                ..GpuCordon::default()
            }],
            gpu_health: Some(NodeGpuHealth {
                state: "warning".into(),
                gpus: vec![GpuState {
                    index: 0,
                    state: "failed".into(),
                    reasons: vec!["xid 79".into()],
                    quarantined: true,
                    since: Some("2026-11-26T06:00:00Z".into()),
                    ..GpuState::default()
                }],
            }),
            ..record("node-b", "online")
        };
        let all = reasons(&[
            drained,
            gpus,
            record("node-c", "offline"),
            record("node-d", "online"),
        ]);
        let seen: Vec<(&str, Option<u32>, &str, &str)> = all
            .iter()
            .map(|r| {
                (
                    r.node_id.as_str(),
                    r.gpu,
                    r.state.as_str(),
                    r.reason.as_str(),
                )
            })
            .collect();
        assert_eq!(
            seen,
            vec![
                ("node-b", Some(0), "quarantined", "xid 79"),
                ("node-b", Some(1), "cordoned", "fan noise"),
                ("node-a", None, "maintenance", "PSU swap"),
                ("node-c", None, "offline", "no heartbeat"),
            ]
        );
        let now = schemas::time::parse("2026-11-26T09:30:00Z").expect("now");
        let text = table(&all, now);
        assert!(text.starts_with("REASON"), "{text}");
        let drained = text
            .lines()
            .find(|l| l.starts_with("PSU swap"))
            .expect("row");
        assert!(
            drained.contains(" ops ") && drained.contains("2026-11-26T10:00:00Z"),
            "{text}"
        );
        assert!(text.contains("node-b gpu 1"), "{text}");
    }
}
