//! A large fleet spaces its checkpoints: a budget of writes a second for
//! the whole fleet, and a takeover's window that follows the same interval.

use super::*;

/// Three nodes at one checkpoint write a second: each is checkpointed
/// every 3 s (the configured 1 s would cost 3 writes a second).
fn tight() -> LifecycleSettings {
    LifecycleSettings {
        checkpoint_interval: Duration::from_secs(1),
        checkpoint_writes_per_s: 1,
        degraded_after: Duration::from_secs(10),
        offline_after: Duration::from_secs(60),
        ..LifecycleSettings::default()
    }
}

#[test]
fn the_interval_follows_the_fleet_above_the_budget_only() {
    let defaults = LifecycleSettings::default();
    let at = |nodes| checkpoint_interval_for(&defaults, nodes);
    assert_eq!(at(10_000), Duration::from_secs(60));
    assert_eq!(at(120_000), Duration::from_secs(60));
    assert_eq!(at(300_000), Duration::from_secs(150));
    assert_eq!(at(1_000_000), Duration::from_secs(500));
    let unlimited = LifecycleSettings {
        checkpoint_writes_per_s: 0,
        ..defaults
    };
    assert_eq!(
        checkpoint_interval_for(&unlimited, 1_000_000),
        Duration::from_secs(60)
    );
}

#[test]
fn heartbeats_are_checkpointed_once_per_interval_spread_over_the_fleet_and_a_takeover_waits_as_long(
) {
    let ids: Vec<String> = (0..30).map(|n| format!("n{n}")).collect();
    let mut sim = Sim::new();
    sim.fleet = Fleet::new(LifecycleSettings {
        checkpoint_writes_per_s: 10,
        ..tight()
    });
    // The whole fleet registers at once, then beats every second.
    for id in &ids {
        sim.send(EventType::Register, id, t0());
    }
    assert_eq!(sim.fleet.checkpoint_interval(), Duration::from_secs(3));
    let mut per_second = Vec::new();
    for s in 1..=21 {
        let mut writes = 0;
        for id in &ids {
            writes += sim
                .send(EventType::Heartbeat, id, t0() + secs(s))
                .writes
                .len();
        }
        per_second.push(writes);
    }
    // After the first metrics (second 1): one write per node every 3 s
    // (this fleet's interval), not every second (the configured one).
    let steady = &per_second[3..];
    assert_eq!(steady.iter().sum::<usize>(), 30 * 18 / 3, "{per_second:?}");

    // A standby takes over at +23 s: each node may have been heard up to
    // one interval (3 s, this fleet's, not the configured 1 s) after its
    // last checkpoint, so it is degraded 10 s after that and not before.
    let stored: Vec<_> = ids
        .iter()
        .filter_map(|id| sim.fleet.get(&NodeId::parse(id).expect("id")))
        .map(|n| {
            (
                schemas::record::encode_record(&n.record()),
                n.revision.unwrap_or(0),
            )
        })
        .collect();
    let checkpointed: std::collections::HashMap<String, DateTime<Utc>> = ids
        .iter()
        .filter_map(|id| sim.fleet.get(&NodeId::parse(id).expect("id")))
        .filter_map(|n| {
            Some((
                n.id.to_string(),
                schemas::time::parse(&n.record().last_heartbeat)?,
            ))
        })
        .collect();
    let mut standby = Fleet::new(LifecycleSettings {
        checkpoint_writes_per_s: 10,
        // Silence of the whole fleet at once is the point here.
        self_preservation_min_fleet: 1000,
        ..tight()
    });
    standby.restore_with(stored, t0() + secs(23), Grace::SinceCheckpoint);
    let mut degraded_at = std::collections::HashMap::new();
    for s in 23..=40 {
        for alert in standby.sweep(t0() + secs(s)).alerts {
            if alert.r#type == NODE_DEGRADED {
                degraded_at.insert(alert.node_id.unwrap_or_default(), t0() + secs(s));
            }
        }
    }
    for (id, last) in &checkpointed {
        assert!(*last >= t0() + secs(19), "{id} checkpointed at {last}");
        let due = (*last + secs(3)).min(t0() + secs(23)) + secs(10);
        assert_eq!(
            degraded_at.get(id),
            Some(&due),
            "{id} (checkpointed at {last})"
        );
    }
}
