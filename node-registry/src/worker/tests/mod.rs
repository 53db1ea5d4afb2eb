//! The worker's rules over in-memory twins of its store, alert sink and task
//! sender: what is acked when, what a conflict or a failing store does.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use registry_core::lifecycle::{Fleet, LifecycleSettings};
use registry_kv::alerts::MemoryAlerts;
use registry_kv::MemoryRecords;
use schemas::status::TaskType;

use super::*;
use crate::counters::Counters;
use crate::tasks::MemoryTasks;

type TestWorker = Worker<MemoryRecords, MemoryAlerts, MemoryTasks>;

struct Rig {
    worker: TestWorker,
    store: MemoryRecords,
    alerts: MemoryAlerts,
    tasks: MemoryTasks,
    counters: Arc<Counters>,
}

fn rig() -> Rig {
    let (store, alerts, tasks) = (
        MemoryRecords::new(),
        MemoryAlerts::new(),
        MemoryTasks::default(),
    );
    let counters = Arc::new(Counters::default());
    let worker = Worker::new(
        Fleet::new(LifecycleSettings::default()),
        store.clone(),
        alerts.clone(),
        tasks.clone(),
        counters.clone(),
    );
    Rig {
        worker,
        store,
        alerts,
        tasks,
        counters,
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0)
        .single()
        .expect("a time")
}

/// An event as the stream delivers it, `seq` in the stream, at `at`.
struct Sent {
    subject: String,
    payload: Vec<u8>,
    meta: DeliveryMeta,
}

fn sent(node: &str, json: &str, seq: u64, at: DateTime<Utc>) -> Sent {
    Sent {
        subject: format!("node.{node}.events"),
        payload: json.as_bytes().to_vec(),
        meta: DeliveryMeta {
            stream_seq: seq,
            pending: 0,
            received: at,
            delivered: 1,
        },
    }
}

fn register(node: &str, seq: u64, at: DateTime<Utc>) -> Sent {
    sent(
        node,
        &format!(r#"{{"type":"register","node_id":"{node}","role":"worker","seq":{seq}}}"#),
        seq,
        at,
    )
}

fn heartbeat(node: &str, seq: u64, at: DateTime<Utc>, cpu: f64) -> Sent {
    sent(
        node,
        &format!(
            r#"{{"type":"heartbeat","node_id":"{node}","seq":{seq},"metrics":{{"cpu_pct":{cpu}}}}}"#
        ),
        seq,
        at,
    )
}

async fn ingest(worker: &mut TestWorker, batch: &[Sent]) -> Ingested {
    let deliveries: Vec<Delivery<'_>> = batch
        .iter()
        .map(|s| Delivery {
            subject: &s.subject,
            headers: None,
            payload: &s.payload,
            meta: Ok(s.meta),
        })
        .collect();
    worker.ingest(&deliveries).await
}

fn writes(counters: &Counters) -> u64 {
    counters.kv_writes.load(Ordering::Relaxed)
}

#[tokio::test]
async fn events_are_acked_only_once_their_effects_are_durable() {
    let mut r = rig();
    // The store is down: the register's write fails, so it is not acked.
    r.store.set_failing(true);
    let out = ingest(&mut r.worker, &[register("node-a", 1, t0())]).await;
    assert_eq!(out.verdicts, [Verdict::Retry]);
    assert!(r.store.snapshot().is_empty());
    // The alert was stored before the write was tried: never lost.
    assert_eq!(r.alerts.stored().len(), 1);
    // Redelivered once the store is back: written, then acked.
    r.store.set_failing(false);
    let out = ingest(&mut r.worker, &[register("node-a", 1, t0())]).await;
    assert_eq!(out.verdicts, [Verdict::Ack]);
    let stored = r.store.snapshot();
    assert_eq!(stored["node-a"].value.status, "online");
    // ALERTS down: the write happened but the event is retried, and the
    // alert waits for a retry with its id.
    r.alerts.set_failing(true);
    let out = ingest(&mut r.worker, &[register("node-b", 2, t0())]).await;
    assert_eq!(out.verdicts, [Verdict::Retry]);
    assert_eq!(r.worker.pending_alerts(), 1);
    r.alerts.set_failing(false);
    r.worker.retry_alerts().await;
    assert_eq!(r.worker.pending_alerts(), 0);
    assert!(r
        .alerts
        .stored()
        .iter()
        .any(|a| a.node_id.as_deref() == Some("node-b")));
}

#[tokio::test]
async fn a_revision_conflict_is_re_read_and_re_decided() {
    let mut r = rig();
    ingest(&mut r.worker, &[register("node-a", 1, t0())]).await;
    let mine = r.store.snapshot()["node-a"].clone();
    // Someone else writes the key (a deposed leader's late write).
    let mut theirs = mine.value.clone();
    theirs.status = "offline".into();
    let their_revision = r.store.write_behind_our_back(theirs);
    assert!(their_revision > mine.revision);
    // The registry's next write of it (a changed role) conflicts...
    let changed = sent(
        "node-a",
        r#"{"type":"register","node_id":"node-a","role":"gpu","seq":2}"#,
        2,
        t0() + Duration::seconds(1),
    );
    let out = ingest(&mut r.worker, &[changed]).await;
    assert_eq!(out.verdicts, [Verdict::Retry]);
    assert_eq!(r.counters.kv_write_failures.load(Ordering::Relaxed), 1);
    assert_eq!(r.store.snapshot()["node-a"].value.status, "offline");
    // ...and the next sweep writes the fleet's decision at the revision it
    // re-read: the registry, which saw every event, has the last word.
    let effects = r.worker.fleet.sweep(t0() + Duration::seconds(2));
    assert!(r.worker.execute(effects).await);
    let now = &r.store.snapshot()["node-a"];
    assert_eq!(now.value.status, "online");
    assert_eq!(now.value.role.as_deref(), Some("gpu"));
    assert!(now.revision > their_revision);
}

#[tokio::test]
async fn several_events_of_one_node_in_a_batch_make_one_write() {
    let mut r = rig();
    let at = t0();
    let batch = [
        register("node-a", 1, at),
        sent(
            "node-a",
            r#"{"type":"register","node_id":"node-a","role":"gpu","seq":2}"#,
            2,
            at,
        ),
        register("node-b", 3, at),
    ];
    let out = ingest(&mut r.worker, &batch).await;
    assert_eq!(out.verdicts, [Verdict::Ack; 3]);
    // Two nodes, two writes: node-a's second register superseded its first.
    assert_eq!(writes(&r.counters), 2);
    let stored = r.store.snapshot();
    assert_eq!(stored["node-a"].value.role.as_deref(), Some("gpu"));
    assert_eq!(stored.len(), 2);
    // The first heartbeat brings metrics into the record (a write); the
    // next ones only update memory until the checkpoint interval.
    ingest(&mut r.worker, &[heartbeat("node-a", 4, at, 12.5)]).await;
    assert_eq!(writes(&r.counters), 3);
    let later = at + Duration::seconds(5);
    ingest(&mut r.worker, &[heartbeat("node-a", 5, later, 13.0)]).await;
    assert_eq!(writes(&r.counters), 3);
}

#[tokio::test]
async fn kv_trouble_holds_transitions_after_two_failing_rounds() {
    let mut r = rig();
    let at = t0();
    ingest(&mut r.worker, &[register("node-a", 1, at)]).await;
    let preservation = |alerts: &MemoryAlerts| {
        alerts
            .stored()
            .into_iter()
            .filter(|a| a.r#type == "registry.self_preservation")
            .collect::<Vec<_>>()
    };
    r.store.set_failing(true);
    // One failing round is a hiccup...
    ingest(&mut r.worker, &[register("node-b", 2, at)]).await;
    assert!(preservation(&r.alerts).is_empty());
    assert!(!r.worker.fleet.in_self_preservation());
    // ...two in a row are the registry's own trouble.
    ingest(&mut r.worker, &[register("node-c", 3, at)]).await;
    let entered = preservation(&r.alerts);
    assert_eq!(entered.len(), 1, "{entered:?}");
    let figures = entered[0].figures.as_ref().expect("figures");
    assert_eq!(figures.reason, "kv_writes");
    assert_eq!(figures.failures, Some(2));
    assert!(r.worker.fleet.in_self_preservation());
    // Writes succeed again: it leaves, once.
    r.store.set_failing(false);
    let effects = r.worker.fleet.sweep(at + Duration::seconds(1));
    assert!(r.worker.execute(effects).await);
    assert!(!r.worker.fleet.in_self_preservation());
    assert_eq!(preservation(&r.alerts).len(), 2);
    assert_eq!(r.store.snapshot().len(), 3);
}

#[tokio::test]
async fn a_poison_message_is_terminated_once_and_spares_its_batch() {
    let mut r = rig();
    let at = t0();
    let batch = [
        sent("node-a", "{not json", 1, at),
        // Spoofed: node-b's subject, node-c's payload.
        sent("node-b", r#"{"type":"register","node_id":"node-c"}"#, 2, at),
        register("node-d", 3, at),
    ];
    let out = ingest(&mut r.worker, &batch).await;
    assert_eq!(
        out.verdicts,
        [Verdict::Terminate, Verdict::Terminate, Verdict::Ack]
    );
    assert_eq!(r.counters.events_rejected.load(Ordering::Relaxed), 2);
    let stored = r.store.snapshot();
    assert_eq!(stored.keys().collect::<Vec<_>>(), ["node-d"]);
    // A delivery without stream metadata is terminated too.
    let no_meta = Delivery {
        subject: "node.node-e.events",
        headers: None,
        payload: br#"{"type":"register","node_id":"node-e"}"#,
        meta: Err("no reply subject".into()),
    };
    let out = r.worker.ingest(&[no_meta]).await;
    assert_eq!(out.verdicts, [Verdict::Terminate]);
    assert_eq!(r.counters.events_rejected.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_heartbeat_from_an_unknown_node_asks_it_to_reannounce() {
    let mut r = rig();
    let out = ingest(&mut r.worker, &[heartbeat("node-x", 1, t0(), 1.0)]).await;
    assert_eq!(out.verdicts, [Verdict::Ack]);
    let sent = r.tasks.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0.as_str(), "node-x");
    assert_eq!(sent[0].1, TaskType::Reannounce);
    assert!(r.store.snapshot().is_empty());
}

#[tokio::test]
async fn admin_requests_are_answered_with_typed_replies() {
    let mut r = rig();
    ingest(&mut r.worker, &[register("node-a", 1, t0())]).await;
    let answer = r
        .worker
        .answer_admin(br#"{"op":"cordon","node_id":"node-a"}"#, "_INBOX.1")
        .await
        .expect("cordoned");
    let reply: schemas::admin::AdminReply = serde_json::from_slice(&answer).expect("a reply");
    assert_eq!(reply.status.as_deref(), Some("maintenance"));
    assert!(reply.stored);
    let unknown = r
        .worker
        .answer_admin(br#"{"op":"cordon","node_id":"node-z"}"#, "_INBOX.2")
        .await;
    assert_eq!(unknown.map_err(|e| e.code), Err(404));
    let bad = r
        .worker
        .answer_admin(br#"{"op":"reboot","node_id":"node-a"}"#, "_INBOX.3")
        .await;
    assert_eq!(bad.map_err(|e| e.code), Err(400));
}
