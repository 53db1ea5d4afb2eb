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
    assert_eq!(at(300_000), Duration::from_secs(60));
    assert_eq!(at(1_000_000), Duration::from_secs(200));
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
fn heartbeats_are_checkpointed_at_the_fleets_interval_and_a_takeover_waits_as_long() {
    let mut sim = Sim::new();
    sim.fleet = Fleet::new(tight());
    for id in ["n1", "n2", "n3"] {
        sim.send(EventType::Register, id, t0());
        // First metrics: written at once, as ever.
        sim.send(EventType::Heartbeat, id, t0());
    }
    assert_eq!(sim.fleet.checkpoint_interval(), Duration::from_secs(3));
    // Within 3 s of its last write a heartbeat writes nothing ...
    let early = sim.send(EventType::Heartbeat, "n1", t0() + secs(2));
    assert!(early.writes.is_empty(), "{early:?}");
    // ... at 3 s it is checkpointed.
    let due = sim.send(EventType::Heartbeat, "n1", t0() + secs(3));
    assert_eq!(due.writes.len(), 1);

    // A standby takes over at +8 s: n1 checkpointed at +3 s may have been
    // heard until +6 s (one interval of this fleet, not the configured
    // 1 s), so it is not degraded before +16 s.
    let stored: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .filter_map(|id| sim.fleet.get(&NodeId::parse(id).expect("id")))
        .map(|n| {
            (
                schemas::record::encode_record(&n.record()),
                n.revision.unwrap_or(0),
            )
        })
        .collect();
    let mut standby = Fleet::new(tight());
    standby.restore_with(stored, t0() + secs(8), Grace::SinceCheckpoint);
    let degraded = |effects: &Effects, id: &str| {
        effects
            .alerts
            .iter()
            .any(|a| a.r#type == NODE_DEGRADED && a.node_id.as_deref() == Some(id))
    };
    // n2 and n3 (checkpointed at 0, so heard until +3 s at the latest) are
    // judged at +13 s; n1 is not yet.
    let at_13 = standby.sweep(t0() + secs(13));
    assert!(
        degraded(&at_13, "n2") && degraded(&at_13, "n3"),
        "{at_13:?}"
    );
    assert!(!degraded(&at_13, "n1"));
    assert!(!degraded(&standby.sweep(t0() + secs(15)), "n1"));
    assert!(degraded(&standby.sweep(t0() + secs(16)), "n1"));
}
