//! Unit tests of the parent module (kept apart so the module reads short).

use super::*;
use schemas::{Metrics, NodeEvent};
use subjects::alert_types::*;

fn t0() -> DateTime<Utc> {
    schemas::time::parse("2026-11-22T00:00:00Z").expect("valid time")
}

fn secs(s: i64) -> chrono::Duration {
    chrono::Duration::seconds(s)
}

fn settings() -> LifecycleSettings {
    // The defaults: 90 s degraded, 5 min offline, 60 s checkpoints, 10 s
    // between reannounces, self-preservation above 50 % of 10+ nodes.
    LifecycleSettings::default()
}

fn event(kind: EventType, id: &str) -> ValidEvent {
    ValidEvent {
        kind,
        node_id: NodeId::parse(id).expect("valid id"),
        event: NodeEvent {
            r#type: kind.to_string(),
            node_id: id.to_owned(),
            node_name: Some(id.to_owned()),
            metrics: (kind == EventType::Heartbeat).then(|| Metrics {
                cpu_pct: Some(5.0),
                ..Metrics::default()
            }),
            ..NodeEvent::default()
        },
    }
}

/// Applies effects as a perfect worker would: every write succeeds.
struct Sim {
    fleet: Fleet,
    seq: u64,
    revision: u64,
    alerts: Vec<Alert>,
    writes: usize,
}

impl Sim {
    fn new() -> Self {
        Self {
            fleet: Fleet::new(settings()),
            seq: 0,
            revision: 0,
            alerts: Vec::new(),
            writes: 0,
        }
    }

    fn run(&mut self, effects: Effects) {
        self.alerts.extend(effects.alerts);
        for write in effects.writes {
            self.writes += 1;
            self.revision += 1;
            if let Write::Put { record, .. } = write {
                let id = NodeId::parse(&record.node_id).expect("valid id");
                self.fleet.confirm_write(&id, self.revision);
            }
        }
    }

    fn send(&mut self, kind: EventType, id: &str, at: DateTime<Utc>) -> Effects {
        self.seq += 1;
        let effects = self.fleet.apply(&event(kind, id), at, self.seq);
        self.run(effects.clone());
        effects
    }

    fn sweep(&mut self, at: DateTime<Utc>) -> Effects {
        let effects = self.fleet.sweep(at);
        self.run(effects.clone());
        effects
    }

    fn status(&self, id: &str) -> Option<NodeStatus> {
        self.fleet
            .get(&NodeId::parse(id).expect("valid id"))
            .map(|n| n.status)
    }

    fn alert_types(&self) -> Vec<String> {
        self.alerts.iter().map(|a| a.r#type.clone()).collect()
    }
}

#[test]
fn a_day_of_steady_heartbeats_raises_nothing_and_checkpoints_sparingly() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let writes_after_register = sim.writes;
    // 24 h of heartbeats every 30 s, sweeping every second.
    let mut now = t0();
    for beat in 1..=2880 {
        let at = t0() + secs(30 * beat);
        while now < at {
            now += secs(1);
            sim.sweep(now);
        }
        sim.send(EventType::Heartbeat, "n1", at);
    }
    assert_eq!(sim.alert_types(), vec![NODE_REGISTERED]);
    assert_eq!(sim.status("n1"), Some(NodeStatus::Online));
    // One checkpoint per 60 s at most: 24 h → at most 1440 writes.
    let checkpoints = sim.writes - writes_after_register;
    assert!(
        (1400..=1440).contains(&checkpoints),
        "{checkpoints} checkpoints"
    );
}

#[test]
fn silence_degrades_then_offlines_then_a_heartbeat_recovers() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    sim.sweep(t0() + secs(89));
    assert_eq!(sim.status("n1"), Some(NodeStatus::Online));
    let e = sim.sweep(t0() + secs(90));
    assert_eq!(sim.status("n1"), Some(NodeStatus::Degraded));
    assert_eq!(e.alerts[0].message.as_deref(), Some("no heartbeat for 90s"));
    assert_eq!(e.alerts[0].previous_status.as_deref(), Some("online"));
    sim.sweep(t0() + secs(299));
    assert_eq!(sim.status("n1"), Some(NodeStatus::Degraded));
    sim.sweep(t0() + secs(300));
    assert_eq!(sim.status("n1"), Some(NodeStatus::Offline));
    // Hours later nothing more happens while it stays silent.
    for h in 1..=5 {
        assert!(sim.sweep(t0() + secs(3600 * h)).alerts.is_empty());
    }
    let e = sim.send(EventType::Heartbeat, "n1", t0() + secs(6 * 3600));
    assert_eq!(sim.status("n1"), Some(NodeStatus::Online));
    assert_eq!(e.alerts[0].previous_status.as_deref(), Some("offline"));
    assert_eq!(
        sim.alert_types(),
        vec![NODE_REGISTERED, NODE_DEGRADED, NODE_OFFLINE, NODE_ONLINE]
    );
}

#[test]
fn a_long_sweep_gap_goes_straight_to_offline_once() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let e = sim.sweep(t0() + secs(1000));
    assert_eq!(e.alerts.len(), 1);
    assert_eq!(e.alerts[0].r#type, NODE_OFFLINE);
    assert_eq!(e.alerts[0].previous_status.as_deref(), Some("online"));
}

#[test]
fn deregister_deletes_and_alerts_once() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let e = sim.send(EventType::Deregister, "n1", t0() + secs(5));
    assert!(matches!(
        e.writes.as_slice(),
        [Write::Delete { revision: 1, .. }]
    ));
    assert_eq!(sim.status("n1"), None);
    // A redelivered deregister changes nothing.
    assert!(sim
        .send(EventType::Deregister, "n1", t0() + secs(6))
        .is_empty());
    assert!(sim.sweep(t0() + secs(1000)).is_empty());
    assert_eq!(sim.alert_types(), vec![NODE_REGISTERED, NODE_DEREGISTERED]);
}

#[test]
fn re_register_of_a_known_node_is_not_a_new_registration() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let registered_at = sim
        .fleet
        .get(&NodeId::parse("n1").expect("id"))
        .map(|n| n.record.registered_at.clone());
    let e = sim.send(EventType::Register, "n1", t0() + secs(10));
    assert!(e.alerts.is_empty());
    assert!(matches!(
        e.writes.as_slice(),
        [Write::Put {
            revision: Some(1),
            ..
        }]
    ));
    let node = sim.fleet.get(&NodeId::parse("n1").expect("id")).cloned();
    assert_eq!(node.map(|n| n.record.registered_at), registered_at);
}

#[test]
fn unknown_heartbeats_ask_for_reannounce_at_a_bounded_rate() {
    let mut sim = Sim::new();
    let mut asked = 0;
    for s in 0..60 {
        asked += sim
            .send(EventType::Heartbeat, "ghost", t0() + secs(s))
            .reannounce
            .len();
    }
    assert_eq!(asked, 6, "once per 10 s over 60 s");
    assert_eq!(sim.status("ghost"), None);
    assert!(sim.alerts.is_empty());
}

#[test]
fn a_heartbeat_with_another_caps_hash_asks_for_a_reannounce() {
    let mut sim = Sim::new();
    let mut register = event(EventType::Register, "n1");
    register.event.caps_hash = Some("aaaa".into());
    sim.fleet.apply(&register, t0(), 1);
    let mut beat = event(EventType::Heartbeat, "n1");
    beat.event.caps_hash = Some("aaaa".into());
    assert!(sim
        .fleet
        .apply(&beat, t0() + secs(1), 2)
        .reannounce
        .is_empty());
    beat.event.caps_hash = Some("bbbb".into());
    let asked: usize = (0..30)
        .map(|s| {
            sim.fleet
                .apply(&beat, t0() + secs(2 + s), 3 + s as u64)
                .reannounce
                .len()
        })
        .sum();
    assert_eq!(asked, 3, "once per 10 s over 30 s");
    // The fresh register brings the hash in line.
    register.event.caps_hash = Some("bbbb".into());
    sim.fleet.apply(&register, t0() + secs(40), 50);
    assert!(sim
        .fleet
        .apply(&beat, t0() + secs(41), 51)
        .reannounce
        .is_empty());
}

#[test]
fn a_change_of_loaded_models_or_services_is_written_at_once() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    sim.send(EventType::Heartbeat, "n1", t0() + secs(1));
    let mut beat = event(EventType::Heartbeat, "n1");
    assert!(sim.fleet.apply(&beat, t0() + secs(2), 10).writes.is_empty());
    beat.event.services = vec!["ollama".into()];
    let e = sim.fleet.apply(&beat, t0() + secs(3), 11);
    assert!(
        matches!(e.writes.as_slice(), [Write::Put { record, .. }] if record.services == ["ollama"])
    );
}

#[test]
fn restart_grants_a_full_window_and_raises_no_registration() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let record = sim
        .fleet
        .get(&NodeId::parse("n1").expect("id"))
        .map(|n| n.record.clone());
    let mut restarted = Fleet::new(settings());
    let start = t0() + secs(80);
    let skipped = restarted.restore(record.map(|r| (r, 1)), start);
    assert!(skipped.is_empty());
    // Without the grace it would be degraded at t0+90; with it, not before start+90.
    assert!(restarted.sweep(start + secs(89)).alerts.is_empty());
    let e = restarted.apply(&event(EventType::Register, "n1"), start + secs(1), 7);
    assert!(e.alerts.is_empty(), "no repeated node.registered");
    assert!(restarted.sweep(start + secs(90)).alerts.is_empty());
    let e = restarted.sweep(start + secs(91));
    assert_eq!(e.alerts.len(), 1);
    assert_eq!(e.alerts[0].r#type, NODE_DEGRADED);
}

#[test]
fn mass_silence_enters_self_preservation_and_holds_transitions() {
    let mut sim = Sim::new();
    let ids: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    for id in &ids {
        sim.send(EventType::Register, id, t0());
    }
    // 12 of 20 go silent; 8 keep beating.
    let mut now = t0();
    for s in 1..=600 {
        now = t0() + secs(s);
        if s % 30 == 0 {
            for id in &ids[12..] {
                sim.send(EventType::Heartbeat, id, now);
            }
        }
        sim.sweep(now);
    }
    assert!(sim.fleet.in_self_preservation());
    assert_eq!(sim.status("n0"), Some(NodeStatus::Online), "held");
    assert_eq!(
        sim.alert_types()
            .iter()
            .filter(|t| *t == REGISTRY_SELF_PRESERVATION)
            .count(),
        1
    );
    // The silent ones come back: the registry leaves and judges again.
    for id in &ids[..12] {
        sim.send(EventType::Heartbeat, id, now);
    }
    let e = sim.sweep(now + secs(1));
    assert_eq!(e.alerts.len(), 1);
    assert_eq!(e.alerts[0].status.as_deref(), Some("left"));
    assert!(!sim.fleet.in_self_preservation());
    assert!(!sim.alert_types().iter().any(|t| t == NODE_DEGRADED));
}

#[test]
fn a_minority_going_silent_is_judged_normally() {
    let mut sim = Sim::new();
    for i in 0..20 {
        sim.send(EventType::Register, &format!("n{i}"), t0());
    }
    for s in 1..=200 {
        let now = t0() + secs(s);
        if s % 30 == 0 {
            for i in 3..20 {
                sim.send(EventType::Heartbeat, &format!("n{i}"), now);
            }
        }
        sim.sweep(now);
    }
    assert!(!sim.fleet.in_self_preservation());
    let degraded = sim
        .alert_types()
        .iter()
        .filter(|t| *t == NODE_DEGRADED)
        .count();
    assert_eq!(degraded, 3);
}

#[test]
fn alert_ids_are_deterministic_per_cause() {
    let mut a = Fleet::new(settings());
    let mut b = Fleet::new(settings());
    let ea = a.apply(&event(EventType::Register, "n1"), t0(), 5);
    let eb = b.apply(&event(EventType::Register, "n1"), t0(), 5);
    assert_eq!(ea.alerts[0].id, eb.alerts[0].id);
    let ec = b.apply(&event(EventType::Deregister, "n1"), t0(), 6);
    assert_ne!(ea.alerts[0].id, ec.alerts[0].id);
}

#[test]
fn failed_writes_are_retried_by_the_next_sweep() {
    let mut fleet = Fleet::new(settings());
    let e = fleet.apply(&event(EventType::Register, "n1"), t0(), 1);
    assert_eq!(e.writes.len(), 1);
    let id = NodeId::parse("n1").expect("id");
    fleet.write_failed(&id, None);
    let e = fleet.sweep(t0() + secs(1));
    assert!(matches!(
        e.writes.as_slice(),
        [Write::Put { revision: None, .. }]
    ));
    fleet.confirm_write(&id, 3);
    assert!(fleet.sweep(t0() + secs(2)).writes.is_empty());
}
