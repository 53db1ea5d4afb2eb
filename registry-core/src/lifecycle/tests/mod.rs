//! Unit tests of the parent module (kept apart so the module reads short).

use super::*;
use schemas::{Metrics, NodeEvent};
use subjects::alert_types::*;

mod backlog;
mod checkpoint;
mod operator;

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
                let stored = schemas::record::encode_record(&record);
                self.fleet.confirm_write(&id, self.revision, stored);
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
    // One checkpoint per 60 s slot of the node's phase at most: 24 h
    // touch 1 441 such slots at most.
    let checkpoints = sim.writes - writes_after_register;
    assert!(
        (1400..=1441).contains(&checkpoints),
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
fn a_long_sweep_gap_reports_degraded_then_offline_once_each() {
    // Judging resumes past `offline_after` (after a lag, a takeover, a
    // server loss): alerting keyed on `node.degraded` still hears of it.
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let e = sim.sweep(t0() + secs(1000));
    let seen: Vec<_> = e
        .alerts
        .iter()
        .map(|a| {
            (
                a.r#type.as_str(),
                a.previous_status.as_deref(),
                a.status.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            (NODE_DEGRADED, Some("online"), Some("degraded")),
            (NODE_OFFLINE, Some("degraded"), Some("offline")),
        ]
    );
    assert_ne!(e.alerts[0].id, e.alerts[1].id);
    assert_eq!(e.writes.len(), 1, "one write, of the final status");
    assert_eq!(sim.status("n1"), Some(NodeStatus::Offline));
    assert!(sim.sweep(t0() + secs(2000)).alerts.is_empty());
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
        .map(|n| n.record().registered_at);
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
    assert_eq!(node.map(|n| n.record().registered_at), registered_at);
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
        .map(|n| n.record());
    let mut restarted = Fleet::new(settings());
    let start = t0() + secs(80);
    let skipped = restarted.restore(
        record.map(|r| (schemas::record::encode_record(&r), 1)),
        start,
    );
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

fn id(name: &str) -> NodeId {
    NodeId::parse(name).expect("valid id")
}

/// Registers `name` with a `region` label.
fn register_in(sim: &mut Sim, name: &str, region: &str, at: DateTime<Utc>) {
    let mut e = event(EventType::Register, name);
    e.event
        .labels
        .insert(REGION_LABEL.to_owned(), region.to_owned());
    sim.seq += 1;
    let effects = sim.fleet.apply(&e, at, sim.seq);
    sim.run(effects);
}

#[test]
fn a_closed_connection_degrades_after_the_grace_not_the_silence_window() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    sim.send(EventType::Heartbeat, "n1", t0() + secs(5));
    // The process dies at 6 s: the server reports its connection closed.
    assert!(sim.fleet.connection_closed(&id("n1"), t0(), t0() + secs(6)));
    // Not within the 10 s grace…
    for s in 7..16 {
        assert!(sim.sweep(t0() + secs(s)).alerts.is_empty(), "at {s}s");
    }
    // …but right after it, long before degraded_after (90 s).
    let e = sim.sweep(t0() + secs(16));
    assert_eq!(e.alerts.len(), 1);
    assert_eq!(e.alerts[0].r#type, NODE_DEGRADED);
    let message = e.alerts[0].message.clone().unwrap_or_default();
    assert!(message.contains("connection closed"), "{message}");
    // Offline still waits for offline_after of silence from the last heartbeat.
    for s in 17..305 {
        assert!(sim.sweep(t0() + secs(s)).alerts.is_empty(), "at {s}s");
    }
    let e = sim.sweep(t0() + secs(305));
    assert_eq!(e.alerts[0].r#type, NODE_OFFLINE);
}

#[test]
fn a_reconnect_or_a_heartbeat_within_the_grace_rides_out_a_closed_connection() {
    let mut sim = Sim::new();
    for name in ["n1", "n2", "n3"] {
        sim.send(EventType::Register, name, t0());
        sim.fleet.connection_opened(&id(name), t0());
    }
    for name in ["n1", "n2", "n3"] {
        assert!(sim
            .fleet
            .connection_closed(&id(name), t0(), t0() + secs(20)));
    }
    // n1 reconnects (a newer connection); n2 is heard from.
    sim.fleet.connection_opened(&id("n1"), t0() + secs(22));
    sim.send(EventType::Heartbeat, "n2", t0() + secs(25));
    // The old connection's close, reported late, is stale: it is ignored.
    assert!(!sim
        .fleet
        .connection_closed(&id("n1"), t0(), t0() + secs(21)));
    for s in 21..=40 {
        sim.sweep(t0() + secs(s));
    }
    assert_eq!(sim.status("n1"), Some(NodeStatus::Online));
    assert_eq!(sim.status("n2"), Some(NodeStatus::Online));
    assert_eq!(sim.status("n3"), Some(NodeStatus::Degraded));
    assert_eq!(
        sim.alert_types()
            .iter()
            .filter(|t| *t == NODE_DEGRADED)
            .count(),
        1
    );
}

#[test]
fn connection_events_are_ignored_when_the_grace_is_zero() {
    let mut sim = Sim::new();
    sim.fleet = Fleet::new(LifecycleSettings {
        disconnect_grace: Duration::ZERO,
        ..settings()
    });
    sim.send(EventType::Register, "n1", t0());
    assert!(!sim.fleet.connection_closed(&id("n1"), t0(), t0() + secs(1)));
    for s in 2..=89 {
        sim.sweep(t0() + secs(s));
    }
    assert_eq!(sim.status("n1"), Some(NodeStatus::Online));
}

#[test]
fn mass_silence_in_one_region_holds_that_region_only() {
    let mut sim = Sim::new();
    for i in 0..20 {
        register_in(&mut sim, &format!("eu{i}"), "eu", t0());
        register_in(&mut sim, &format!("us{i}"), "us", t0());
    }
    // 12 of 20 in eu go silent (60 % of eu, 30 % of the fleet), and 2 in us.
    let mut now = t0();
    for s in 1..=200 {
        now = t0() + secs(s);
        if s % 30 == 0 {
            for i in 12..20 {
                sim.send(EventType::Heartbeat, &format!("eu{i}"), now);
            }
            for i in 2..20 {
                sim.send(EventType::Heartbeat, &format!("us{i}"), now);
            }
        }
        sim.sweep(now);
    }
    assert!(
        !sim.fleet.in_self_preservation(),
        "the fleet as a whole is fine"
    );
    assert_eq!(sim.fleet.silent_regions(), vec!["eu"]);
    assert_eq!(sim.status("eu0"), Some(NodeStatus::Online), "held");
    assert_eq!(sim.status("us0"), Some(NodeStatus::Degraded), "judged");
    let entered: Vec<&Alert> = sim
        .alerts
        .iter()
        .filter(|a| a.r#type == REGISTRY_SELF_PRESERVATION)
        .collect();
    assert_eq!(entered.len(), 1);
    let figures = entered[0].figures.clone().expect("figures");
    assert_eq!(figures.scope, "region=eu");
    assert_eq!(figures.reason, "mass_silence");
    assert_eq!((figures.watched, figures.silent), (Some(20), Some(12)));
    // eu comes back: the region leaves, with a fresh window for its nodes.
    for i in 0..12 {
        sim.send(EventType::Heartbeat, &format!("eu{i}"), now);
    }
    let e = sim.sweep(now + secs(1));
    assert_eq!(e.alerts.len(), 1);
    assert_eq!(e.alerts[0].status.as_deref(), Some("left"));
    assert!(sim.fleet.silent_regions().is_empty());
    let eu_degraded = sim
        .alerts
        .iter()
        .filter(|a| {
            a.r#type == NODE_DEGRADED && a.node_id.as_deref().is_some_and(|n| n.starts_with("eu"))
        })
        .count();
    assert_eq!(eu_degraded, 0);
}

#[test]
fn a_fault_of_the_registrys_own_holds_everything_until_it_clears() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let e = sim.fleet.fault(OwnFault::KvWrites, t0() + secs(10), 7);
    assert_eq!(e.alerts.len(), 1);
    let figures = e.alerts[0].figures.clone().expect("figures");
    assert_eq!(
        (figures.scope.as_str(), figures.reason.as_str()),
        ("registry", "kv_writes")
    );
    assert_eq!(figures.failures, Some(7));
    assert!(
        sim.fleet
            .fault(OwnFault::KvWrites, t0() + secs(11), 9)
            .is_empty(),
        "once"
    );
    for s in 11..=400 {
        sim.sweep(t0() + secs(s));
    }
    assert_eq!(sim.status("n1"), Some(NodeStatus::Online), "held");
    let e = sim
        .fleet
        .fault_cleared(OwnFault::KvWrites, t0() + secs(400));
    assert_eq!(e.alerts[0].status.as_deref(), Some("left"));
    assert!(sim
        .fleet
        .fault_cleared(OwnFault::KvWrites, t0() + secs(401))
        .is_empty());
    // A fresh window: nothing before 400 + 90 s, degraded then.
    for s in 401..490 {
        assert!(sim.sweep(t0() + secs(s)).alerts.is_empty(), "at {s}s");
    }
    sim.sweep(t0() + secs(490));
    assert_eq!(sim.status("n1"), Some(NodeStatus::Degraded));
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
    fleet.confirm_write(&id, 3, bytes::Bytes::from_static(b"{}"));
    assert!(fleet.sweep(t0() + secs(2)).writes.is_empty());
}

#[test]
fn a_node_held_while_degraded_is_still_judged_offline_after_self_preservation() {
    let mut sim = Sim::new();
    let ids: Vec<String> = (0..20).map(|i| format!("n{i}")).collect();
    for id in &ids {
        sim.send(EventType::Register, id, t0());
    }
    // n0 alone goes silent first and is degraded normally at +90 s.
    let mut now = t0();
    for s in 1..=120 {
        now = t0() + secs(s);
        if s % 30 == 0 {
            for id in &ids[1..] {
                sim.send(EventType::Heartbeat, id, now);
            }
        }
        sim.sweep(now);
    }
    assert_eq!(sim.status("n0"), Some(NodeStatus::Degraded));
    // Then most of the rest go silent: self-preservation holds n0 too.
    for s in 121..=400 {
        now = t0() + secs(s);
        if s % 30 == 0 {
            for id in &ids[15..] {
                sim.send(EventType::Heartbeat, id, now);
            }
        }
        sim.sweep(now);
    }
    assert!(sim.fleet.in_self_preservation());
    assert_eq!(sim.status("n0"), Some(NodeStatus::Degraded), "held");
    // They come back; after the fresh window n0 is judged offline.
    for id in &ids[1..] {
        sim.send(EventType::Heartbeat, id, now);
    }
    for s in 1..=400 {
        let at = now + secs(s);
        if s % 30 == 0 {
            for id in &ids[1..] {
                sim.send(EventType::Heartbeat, id, at);
            }
        }
        sim.sweep(at);
    }
    assert!(!sim.fleet.in_self_preservation());
    assert_eq!(sim.status("n0"), Some(NodeStatus::Offline));
}

#[test]
fn the_deadline_wheel_holds_one_entry_per_node_however_often_they_beat() {
    let mut sim = Sim::new();
    for i in 0..50 {
        sim.send(EventType::Register, &format!("n{i}"), t0());
    }
    for s in 1..=600 {
        let now = t0() + secs(s);
        for i in 0..50 {
            sim.send(EventType::Heartbeat, &format!("n{i}"), now);
        }
        sim.sweep(now);
    }
    let entries: usize = sim.fleet.wheel.values().map(Vec::len).sum();
    assert!(entries <= 50, "{entries} wheel entries for 50 nodes");
    assert!(sim.alerts.iter().all(|a| a.r#type == NODE_REGISTERED));
}

#[test]
fn a_takeover_keeps_deadlines_from_the_last_checkpoint_and_the_same_alert_ids() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let stored = sim.fleet.get(&NodeId::parse("n1").expect("id")).map(|n| {
        (
            schemas::record::encode_record(&n.record()),
            n.revision.unwrap_or(0),
        )
    });
    // The old leader judges n1 at +90 s and crashes before its write lands.
    let old = sim.sweep(t0() + secs(90));
    assert_eq!(old.alerts[0].r#type, NODE_DEGRADED);
    // A standby takes over at +95 s from what KV holds (checkpoint at +0).
    let mut standby = Fleet::new(settings());
    standby.restore_with(stored.clone(), t0() + secs(95), Grace::SinceCheckpoint);
    // It may have been heard up to one checkpoint interval (60 s) after
    // its checkpoint: judged at +150 s, not a full window after +95 s.
    assert!(standby.sweep(t0() + secs(149)).alerts.is_empty());
    let new = standby.sweep(t0() + secs(150));
    assert_eq!(new.alerts.len(), 1, "judged from the checkpoint, not reset");
    assert_eq!(
        new.alerts[0].id, old.alerts[0].id,
        "the same transition, the same id"
    );
    // After a plain restart the same node gets a full window instead.
    let mut restarted = Fleet::new(settings());
    restarted.restore(stored, t0() + secs(95));
    assert!(restarted.sweep(t0() + secs(96)).alerts.is_empty());
    assert!(!restarted.sweep(t0() + secs(185)).alerts.is_empty());
}

mod properties {
    //! Invariants of the state machine over random event sequences, checked
    //! against a brute-force reading of the same history.

    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Register(usize),
        Heartbeat(usize),
        Deregister(usize),
        Sweep,
    }

    fn op() -> impl Strategy<Value = (Op, u16)> {
        let kind = prop_oneof![
            2 => (0..6usize).prop_map(Op::Register),
            6 => (0..6usize).prop_map(Op::Heartbeat),
            1 => (0..6usize).prop_map(Op::Deregister),
            6 => Just(Op::Sweep),
        ];
        // Time advances 0 to 200 s between operations.
        (kind, 0..200u16)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn transitions_follow_silence_exactly(ops in proptest::collection::vec(op(), 1..300)) {
            let mut sim = Sim::new();
            let mut now = t0();
            // What the history says: per node, when it was last heard from.
            let mut heard: BTreeMap<String, DateTime<Utc>> = BTreeMap::new();
            for (op, dt) in ops {
                now += secs(i64::from(dt));
                let before = sim.alerts.len();
                match op {
                    Op::Register(n) | Op::Heartbeat(n) => {
                        let id = format!("n{n}");
                        let kind = if matches!(op, Op::Register(_)) { EventType::Register } else { EventType::Heartbeat };
                        let known = heard.contains_key(&id);
                        sim.send(kind, &id, now);
                        if known || kind == EventType::Register {
                            heard.insert(id, now);
                        }
                    }
                    Op::Deregister(n) => {
                        let id = format!("n{n}");
                        sim.send(EventType::Deregister, &id, now);
                        heard.remove(&id);
                    }
                    Op::Sweep => {
                        sim.sweep(now);
                        // Six nodes at most: below self-preservation's
                        // minimum fleet, so every silence is judged.
                        for (id, last) in &heard {
                            let silence = now.signed_duration_since(*last);
                            let expected = if silence >= secs(300) {
                                NodeStatus::Offline
                            } else if silence >= secs(90) {
                                NodeStatus::Degraded
                            } else {
                                NodeStatus::Online
                            };
                            let status = sim.status(id);
                            // A node degraded earlier stays degraded until offline.
                            prop_assert!(
                                status == Some(expected),
                                "{id}: {status:?}, expected {expected:?} after {silence}"
                            );
                        }
                    }
                }
                for alert in &sim.alerts[before..] {
                    let silence = alert.last_heartbeat.as_deref()
                        .and_then(schemas::time::parse)
                        .map(|last| now.signed_duration_since(last));
                    match alert.r#type.as_str() {
                        // Never judged before its silence.
                        NODE_DEGRADED => prop_assert!(silence >= Some(secs(90))),
                        NODE_OFFLINE => prop_assert!(silence >= Some(secs(300))),
                        // Online again only on hearing from it.
                        NODE_ONLINE => prop_assert!(matches!(op, Op::Register(_) | Op::Heartbeat(_))),
                        NODE_REGISTERED => prop_assert!(matches!(op, Op::Register(_))),
                        NODE_DEREGISTERED => prop_assert!(matches!(op, Op::Deregister(_))),
                        other => prop_assert!(false, "unexpected alert {other}"),
                    }
                }
                // No alert without a change: each node's alerts alternate.
                let mut last_type: BTreeMap<&str, &str> = BTreeMap::new();
                for alert in &sim.alerts {
                    let node = alert.node_id.as_deref().unwrap_or("");
                    if let Some(previous) = last_type.insert(node, alert.r#type.as_str()) {
                        prop_assert_ne!(previous, alert.r#type.as_str(), "repeated alert for {}", node);
                    }
                }
            }
        }
    }
}

/// A heartbeat of `id` whose GPUs report these verdicts.
fn gpu_heartbeat(id: &str, verdicts: &[(&str, &[&str])]) -> ValidEvent {
    let mut e = event(EventType::Heartbeat, id);
    if let Some(m) = e.event.metrics.as_mut() {
        m.gpus = verdicts
            .iter()
            .enumerate()
            .map(|(i, (state, reasons))| schemas::GpuUsage {
                index: u32::try_from(i).expect("few"),
                health: Some(schemas::GpuHealth {
                    state: (*state).to_owned(),
                    reasons: reasons.iter().map(|r| (*r).to_owned()).collect(),
                }),
                ..schemas::GpuUsage::default()
            })
            .collect();
    }
    e
}

#[test]
fn a_failing_gpu_is_quarantined_once_and_returns_after_the_recovery_time() {
    let mut sim = Sim::new();
    let mut register = event(EventType::Register, "gpu1");
    register.event.capabilities = Some(schemas::Capabilities {
        gpus: vec![schemas::Gpu::default(), schemas::Gpu::default()],
        ..schemas::Capabilities::default()
    });
    sim.seq += 1;
    let effects = sim.fleet.apply(&register, t0(), sim.seq);
    sim.run(effects);
    let mut at = t0();
    let beat = |sim: &mut Sim, at: DateTime<Utc>, verdicts: &[(&str, &[&str])]| {
        sim.seq += 1;
        let effects = sim
            .fleet
            .apply(&gpu_heartbeat("gpu1", verdicts), at, sim.seq);
        sim.run(effects.clone());
        effects
    };
    let healthy: &[(&str, &[&str])] = &[("healthy", &[]), ("healthy", &[])];
    let failing: &[(&str, &[&str])] = &[("healthy", &[]), ("failed", &["xid_79"])];
    beat(&mut sim, at, healthy);
    let record = |sim: &Sim| {
        sim.fleet
            .get(&id("gpu1"))
            .map(Tracked::record)
            .expect("known")
    };
    assert_eq!(
        record(&sim).gpu_health.map(|h| h.state),
        Some("healthy".into())
    );
    // GPU 1 fails: one alert, written at once, the node stays online.
    at += secs(30);
    let effects = beat(&mut sim, at, failing);
    assert_eq!(effects.writes.len(), 1);
    let gpu_alerts: Vec<&Alert> = sim
        .alerts
        .iter()
        .filter(|a| a.r#type == GPU_UNHEALTHY)
        .collect();
    assert_eq!(gpu_alerts.len(), 1);
    assert_eq!(gpu_alerts[0].gpu_index, Some(1));
    assert_eq!(gpu_alerts[0].reasons, vec!["xid_79"]);
    assert_eq!(sim.status("gpu1"), Some(NodeStatus::Online));
    let health = record(&sim).gpu_health.expect("kept");
    assert_eq!(health.state, "warning");
    assert!(health.gpus[1].quarantined && !health.gpus[0].quarantined);
    // Still failing: nothing new, no write.
    for _ in 0..3 {
        at += secs(30);
        let effects = beat(&mut sim, at, failing);
        assert!(effects.alerts.is_empty(), "one alert per transition");
    }
    // Healthy again: out of service for the recovery time, then back once.
    at += secs(30);
    beat(&mut sim, at, healthy);
    let back = at + chrono_duration(settings().gpu_recovery);
    while at < back - secs(30) {
        at += secs(30);
        let effects = beat(&mut sim, at, healthy);
        assert!(
            effects.alerts.is_empty(),
            "not back before the recovery time"
        );
        assert!(record(&sim).gpu_health.expect("kept").gpus[1].quarantined);
    }
    at += secs(30);
    beat(&mut sim, at, healthy);
    let back_alerts = sim
        .alerts
        .iter()
        .filter(|a| a.r#type == GPU_HEALTHY)
        .count();
    assert_eq!(back_alerts, 1);
    let health = record(&sim).gpu_health.expect("kept");
    assert_eq!(health.state, "healthy");
    assert!(!health.gpus[1].quarantined);
    // A re-registration keeps a quarantine: fail again, then register.
    at += secs(30);
    beat(&mut sim, at, failing);
    sim.seq += 1;
    let effects = sim.fleet.apply(&register, at + secs(1), sim.seq);
    sim.run(effects);
    assert!(record(&sim).gpu_health.expect("kept").gpus[1].quarantined);
}
