//! Working off a backlog: first metrics wait for the node's checkpoint.

use super::*;

#[test]
fn under_a_backlog_first_metrics_wait_for_the_checkpoint() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    sim.send(EventType::Register, "n2", t0());
    // Caught up: a node's first metrics are written at once.
    let steady = sim.send(EventType::Heartbeat, "n1", t0() + secs(1));
    assert_eq!(steady.writes.len(), 1, "first metrics written");
    // Behind a backlog: the same is deferred ...
    sim.fleet.set_backlogged(true);
    let behind = sim.send(EventType::Heartbeat, "n2", t0() + secs(1));
    assert!(behind.writes.is_empty(), "deferred: {behind:?}");
    // ... but a material change is not (a register is written as ever) ...
    let registered = sim.send(EventType::Register, "n2", t0() + secs(2));
    assert_eq!(registered.writes.len(), 1);
    // ... and the checkpoint writes the metrics once due.
    let due = sim.send(EventType::Heartbeat, "n2", t0() + secs(63));
    assert_eq!(due.writes.len(), 1, "the checkpoint");
    // Caught up again: first metrics of a new node are written at once.
    sim.fleet.set_backlogged(false);
    sim.send(EventType::Register, "n3", t0() + secs(64));
    assert_eq!(
        sim.send(EventType::Heartbeat, "n3", t0() + secs(65))
            .writes
            .len(),
        1
    );
}
