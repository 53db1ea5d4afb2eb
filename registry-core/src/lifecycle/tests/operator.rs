//! Drains with reasons and deadlines, resumes, and GPU cordons.

use super::*;
use crate::lifecycle::{Drain, GpuCordonRequest, OperatorError};

fn drain(reason: &str, resume_at: Option<DateTime<Utc>>) -> Drain {
    Drain {
        reason: reason.to_owned(),
        by: Some("ops".to_owned()),
        resume_at,
    }
}

fn record(sim: &Sim, name: &str) -> NodeRecord {
    sim.fleet.get(&id(name)).expect("known").record()
}

#[test]
fn a_drain_with_a_deadline_resumes_by_itself_once_and_is_never_judged() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let until = t0() + secs(3600);
    let effects = sim
        .fleet
        .drain(
            &id("n1"),
            t0() + secs(10),
            "admin/1",
            drain("PSU swap", Some(until)),
        )
        .expect("known");
    sim.run(effects);
    assert_eq!(sim.status("n1"), Some(NodeStatus::Maintenance));
    let entered = sim.alerts.last().expect("alert").clone();
    assert_eq!(entered.r#type, NODE_MAINTENANCE);
    assert_eq!(entered.reason.as_deref(), Some("PSU swap"));
    assert_eq!(entered.resume_at, Some(schemas::time::format(until)));
    let kept = record(&sim, "n1").maintenance.expect("maintenance");
    assert_eq!(
        (kept.reason.as_str(), kept.by.as_deref()),
        ("PSU swap", Some("ops"))
    );
    // Silent for most of an hour: never judged while drained.
    assert!(sim.sweep(t0() + secs(3599)).alerts.is_empty());
    let resumed = sim.sweep(until);
    assert_eq!(resumed.alerts.len(), 1, "{:?}", resumed.alerts);
    assert_eq!(resumed.alerts[0].r#type, NODE_RESUMED);
    assert_eq!(resumed.alerts[0].status.as_deref(), Some("online"));
    assert_eq!(sim.status("n1"), Some(NodeStatus::Online));
    assert!(record(&sim, "n1").maintenance.is_none());
    // Judged again after a fresh window (it is silent: degraded then).
    assert!(sim.sweep(until + secs(89)).alerts.is_empty());
    let judged = sim.sweep(until + secs(90));
    assert_eq!(judged.alerts[0].r#type, NODE_DEGRADED);
}

#[test]
fn a_drain_survives_a_restart_and_a_missed_deadline_resumes_at_the_first_sweep() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let until = t0() + secs(60);
    let effects = sim
        .fleet
        .drain(&id("n1"), t0(), "admin/1", drain("firmware", Some(until)))
        .expect("known");
    sim.run(effects);
    let n = sim.fleet.get(&id("n1")).expect("known");
    let stored = vec![(
        schemas::record::encode_record(&n.record()),
        n.revision.unwrap_or(0),
    )];
    let leader_alert = sim.sweep(until).alerts[0].clone();
    // A registry started after the deadline resumes it at once, raising
    // the alert its predecessor did (same id: the stream drops a repeat).
    let mut restarted = Fleet::new(settings());
    restarted.restore(stored.clone(), until + secs(30));
    assert_eq!(
        restarted.get(&id("n1")).map(|n| n.status),
        Some(NodeStatus::Maintenance)
    );
    let effects = restarted.sweep(until + secs(30));
    assert_eq!(effects.alerts.len(), 1);
    assert_eq!(effects.alerts[0].id, leader_alert.id);
    // Before the deadline, a restarted registry keeps it drained.
    let mut early = Fleet::new(settings());
    early.restore(stored, t0() + secs(5));
    assert!(early.sweep(t0() + secs(59)).alerts.is_empty());
    assert_eq!(early.sweep(until).alerts[0].r#type, NODE_RESUMED);
}

#[test]
fn draining_again_updates_the_reason_without_a_second_alert_and_cordon_keeps_it() {
    let mut sim = Sim::new();
    sim.send(EventType::Register, "n1", t0());
    let first = sim
        .fleet
        .drain(&id("n1"), t0(), "admin/1", drain("disk", None))
        .expect("known");
    sim.run(first);
    let again = sim
        .fleet
        .drain(
            &id("n1"),
            t0() + secs(5),
            "admin/2",
            drain("disk and fan", None),
        )
        .expect("known");
    assert!(again.alerts.is_empty());
    assert_eq!(again.writes.len(), 1);
    sim.run(again);
    let kept = record(&sim, "n1").maintenance.expect("kept");
    assert_eq!(kept.reason, "disk and fan");
    assert_eq!(
        kept.since,
        schemas::time::format(t0()),
        "since the first drain"
    );
    let cordon = sim
        .fleet
        .cordon(&id("n1"), t0() + secs(6), "admin/3")
        .expect("known");
    assert!(cordon.is_empty(), "a cordon leaves a drain as it is");
    // A heartbeat and a re-register keep it drained, with its reason.
    sim.send(EventType::Heartbeat, "n1", t0() + secs(7));
    sim.send(EventType::Register, "n1", t0() + secs(8));
    assert_eq!(sim.status("n1"), Some(NodeStatus::Maintenance));
    assert_eq!(
        record(&sim, "n1").maintenance.map(|m| m.reason),
        Some("disk and fan".to_owned())
    );
    let resumed = sim
        .fleet
        .resume(&id("n1"), t0() + secs(9), "admin/4")
        .expect("known");
    assert_eq!(resumed.alerts[0].r#type, NODE_RESUMED);
    assert_eq!(resumed.alerts[0].reason.as_deref(), Some("disk and fan"));
    sim.run(resumed);
    let twice = sim
        .fleet
        .resume(&id("n1"), t0() + secs(10), "admin/5")
        .expect("known");
    assert!(twice.is_empty());
    assert_eq!(
        sim.fleet
            .drain(&id("ghost"), t0(), "admin/6", Drain::default()),
        Err(OperatorError::UnknownNode(id("ghost")))
    );
}

#[test]
fn a_cordoned_gpu_leaves_the_figures_and_outlives_a_re_register() {
    let mut sim = Sim::new();
    let mut register = event(EventType::Register, "gpu1");
    register.event.capabilities = Some(schemas::Capabilities {
        gpus: vec![
            schemas::Gpu {
                vram_gb: 80.0,
                index: Some(0),
                ..schemas::Gpu::default()
            },
            schemas::Gpu {
                vram_gb: 80.0,
                index: Some(1),
                uuid: Some("GPU-1".into()),
                ..schemas::Gpu::default()
            },
        ],
        ..schemas::Capabilities::default()
    });
    sim.seq += 1;
    let effects = sim.fleet.apply(&register, t0(), sim.seq);
    sim.run(effects);
    let request = |index| GpuCordonRequest {
        index,
        reason: "fan".into(),
        by: Some("ops".into()),
    };
    assert_eq!(
        sim.fleet
            .cordon_gpu(&id("gpu1"), t0(), "admin/1", request(7))
            .map(|_| ()),
        Err(OperatorError::NoSuchGpu {
            node: id("gpu1"),
            index: 7,
            count: 2
        })
    );
    let effects = sim
        .fleet
        .cordon_gpu(&id("gpu1"), t0() + secs(1), "admin/2", request(1))
        .expect("known");
    assert_eq!(effects.alerts[0].r#type, GPU_CORDONED);
    assert_eq!(effects.alerts[0].gpu_uuid.as_deref(), Some("GPU-1"));
    sim.run(effects);
    assert_eq!(
        sim.status("gpu1"),
        Some(NodeStatus::Online),
        "the node stays in"
    );
    let facts = crate::catalog::Facts::of(&record(&sim, "gpu1"));
    assert_eq!((facts.gpus, facts.total_vram_gb), (1, 80.0));
    let all = crate::catalog::Facts::over(&record(&sim, "gpu1"), crate::catalog::GpusCounted::All);
    assert_eq!(all.gpus, 2, "gpu_health any counts it");
    sim.seq += 1;
    let effects = sim.fleet.apply(&register, t0() + secs(2), sim.seq);
    sim.run(effects);
    assert_eq!(
        record(&sim, "gpu1").gpu_cordons.len(),
        1,
        "kept across a restart"
    );
    let effects = sim
        .fleet
        .uncordon_gpu(&id("gpu1"), t0() + secs(3), "admin/3", 1)
        .expect("known");
    assert_eq!(effects.alerts[0].r#type, GPU_UNCORDONED);
    sim.run(effects);
    assert!(record(&sim, "gpu1").gpu_cordons.is_empty());
    assert_eq!(crate::catalog::Facts::of(&record(&sim, "gpu1")).gpus, 2);
}

#[test]
fn a_profile_failure_and_a_mismatch_are_each_said_once() {
    let mut sim = Sim::new();
    let with = |error: Option<&str>, missing: &[&str]| {
        let mut e = event(EventType::Register, "n1");
        e.event.role = Some("worker".into());
        e.event.profile_revision = Some(3);
        e.event.profile_error = error.map(str::to_owned);
        e.event.profile_mismatch = missing.iter().map(|m| (*m).to_owned()).collect();
        e
    };
    let send = |sim: &mut Sim, e: &ValidEvent| {
        sim.seq += 1;
        let effects = sim.fleet.apply(e, t0(), sim.seq);
        sim.run(effects.clone());
        effects
            .alerts
            .iter()
            .map(|a| a.r#type.clone())
            .filter(|t| t.starts_with("node.profile"))
            .collect::<Vec<_>>()
    };
    assert!(send(&mut sim, &with(None, &[])).is_empty());
    assert_eq!(
        send(&mut sim, &with(Some("revision 4: unknown field `x`"), &[])),
        vec![NODE_PROFILE_FAILED]
    );
    assert!(send(&mut sim, &with(Some("revision 4: unknown field `x`"), &[])).is_empty());
    assert_eq!(
        send(&mut sim, &with(None, &["qwen3:32b"])),
        vec![NODE_PROFILE_MISMATCH]
    );
    assert!(send(&mut sim, &with(None, &["qwen3:32b"])).is_empty());
    let kept = record(&sim, "n1");
    assert_eq!(kept.profile_revision, Some(3));
    assert_eq!(kept.profile_mismatch, vec!["qwen3:32b".to_owned()]);
    assert!(
        send(&mut sim, &with(None, &[])).is_empty(),
        "fixed: no alert"
    );
}
