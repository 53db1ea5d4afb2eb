//! A fleet of virtual nodes in one process, for scale benchmarks.
//!
//! Each virtual node publishes what a real agent does (a realistic
//! `register` of 1–2 KiB as JSON, then heartbeats at an interval with
//! jitter, a `deregister` when it leaves) over a few shared connections.
//! Churn knobs add joins, graceful leaves, crashes (a node stops without a
//! word) and silent nodes (registered, never heartbeating). Every crash is
//! recorded with its time, so detection latency can be measured against the
//! registry's alerts.
//!
//! - [`generate`]: deterministic realistic registrations and heartbeats.
//! - [`schedule`]: when each node publishes next.
//! - [`Simulator`]: the churn and the publishing.
#![deny(missing_docs)]

pub mod generate;
pub mod schedule;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::HeaderMap;
use chrono::{DateTime, Utc};
use schemas::codec::{encode, Encoding, HEADER_CONTENT_TYPE};
use schemas::NodeEvent;
use serde::Serialize;
use tokio::time::Instant;
use tracing::{info, warn};

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes at the start.
    pub nodes: u64,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Jitter of each interval, as a fraction (0.1 = ±10 %).
    pub jitter: f64,
    /// Encoding of the events.
    pub encoding: Encoding,
    /// New nodes per second.
    pub joins_per_sec: f64,
    /// Graceful leaves (deregister) per second.
    pub leaves_per_sec: f64,
    /// Crashes (silence without deregister) per second.
    pub crashes_per_sec: f64,
    /// Of the initial nodes, how many register but never heartbeat.
    pub silent: u64,
    /// How long to run after the start.
    pub duration: Duration,
    /// Prefix of the node ids (`<prefix>-<n>`).
    pub id_prefix: String,
    /// Most publishes awaiting their JetStream ack at once.
    pub max_in_flight: usize,
    /// One heartbeat of a node in this many waits for JetStream's ack, as
    /// the agent does (`node_agent::agent::HEARTBEAT_ACK_EVERY`); the rest
    /// are published without one. 1: every heartbeat is acked.
    pub heartbeat_ack_every: u64,
    /// Seed of the deterministic generator.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            nodes: 1000,
            heartbeat_interval: Duration::from_secs(30),
            jitter: 0.1,
            encoding: Encoding::Json,
            joins_per_sec: 0.0,
            leaves_per_sec: 0.0,
            crashes_per_sec: 0.0,
            silent: 0,
            duration: Duration::from_secs(60),
            id_prefix: "sim".to_owned(),
            max_in_flight: 20_000,
            heartbeat_ack_every: 4,
            seed: 1,
        }
    }
}

/// One crash: which node went silent, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Crash {
    /// The node that went silent.
    pub node_id: String,
    /// When it stopped publishing (the simulator's clock, UTC).
    pub crashed_at: DateTime<Utc>,
}

/// What a run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SimReport {
    /// Events published (all types).
    pub published: u64,
    /// Publishes that were not acked.
    pub failed: u64,
    /// Registrations published.
    pub registers: u64,
    /// Registrations sent again: the last was not acked, or the registry
    /// asked for one (`reannounce`).
    pub registers_retried: u64,
    /// `reannounce` tasks to this fleet's nodes that were answered.
    pub reannounces_answered: u64,
    /// Heartbeats published.
    pub heartbeats: u64,
    /// Deregistrations published.
    pub deregisters: u64,
    /// Nodes that crashed, with the time.
    pub crashes: Vec<Crash>,
    /// Nodes alive (publishing) at the end.
    pub alive_at_end: u64,
    /// Wall time of the run, in seconds.
    pub seconds: f64,
    /// Published events per second.
    pub events_per_sec: f64,
}

/// Why a run failed.
#[derive(Debug, thiserror::Error)]
#[error("publishing to NATS: {0}")]
pub struct SimError(#[source] async_nats::Error);

/// A node's state in the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Alive,
    Silent,
    Gone,
}

/// Events published so far, by type: read while a run goes on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Published {
    /// Registrations.
    pub registers: u64,
    /// Heartbeats.
    pub heartbeats: u64,
    /// Deregistrations.
    pub deregisters: u64,
}

impl Published {
    /// All events.
    pub fn total(&self) -> u64 {
        self.registers + self.heartbeats + self.deregisters
    }
}

impl std::ops::Sub for Published {
    type Output = Published;

    fn sub(self, earlier: Published) -> Published {
        Published {
            registers: self.registers.saturating_sub(earlier.registers),
            heartbeats: self.heartbeats.saturating_sub(earlier.heartbeats),
            deregisters: self.deregisters.saturating_sub(earlier.deregisters),
        }
    }
}

/// Runs a simulated fleet against a JetStream context.
#[derive(Debug)]
pub struct Simulator {
    config: SimConfig,
    js: jetstream::Context,
    in_flight: Arc<tokio::sync::Semaphore>,
    failed: Arc<AtomicU64>,
    /// Nodes to register again at their next beat: their register was not
    /// acked (an agent retries it), or the registry asked them to
    /// (`reannounce`, answered by an agent with a register).
    to_register_again: Arc<std::sync::Mutex<Vec<u64>>>,
    /// `reannounce` tasks answered.
    reannounces: Arc<AtomicU64>,
    counts: [AtomicU64; 3],
    stop: std::sync::atomic::AtomicBool,
}

impl Simulator {
    /// A simulator publishing through `js`.
    pub fn new(config: SimConfig, js: jetstream::Context) -> Self {
        let in_flight = Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1)));
        Self {
            config,
            js,
            in_flight,
            failed: Arc::new(AtomicU64::new(0)),
            to_register_again: Arc::default(),
            reannounces: Arc::default(),
            counts: Default::default(),
            stop: Default::default(),
        }
    }

    /// Events published so far.
    pub fn published(&self) -> Published {
        let [registers, heartbeats, deregisters] =
            self.counts.each_ref().map(|c| c.load(Ordering::Relaxed));
        Published {
            registers,
            heartbeats,
            deregisters,
        }
    }

    /// Ends a run before its `duration` (it returns its report as usual).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    fn count(&self, kind: usize) {
        self.counts[kind].fetch_add(1, Ordering::Relaxed);
    }

    fn node_id(&self, n: u64) -> String {
        format!("{}-{n}", self.config.id_prefix)
    }

    /// Publishes one event; the ack is awaited in the background, bounded by
    /// `max_in_flight`. Heartbeats other than every
    /// `heartbeat_ack_every`-th of a node go without an ack.
    async fn publish(&self, event: &NodeEvent) -> Result<(), SimError> {
        self.publish_node(event, None).await
    }

    /// Listens for `reannounce` tasks to this fleet's nodes: each is
    /// answered with a register at the node's next beat, until the returned
    /// task is aborted.
    async fn answer_reannounces(&self) -> Option<tokio::task::JoinHandle<()>> {
        let mut tasks = match self
            .js
            .client()
            .subscribe(subjects::NODE_TASKS_FILTER)
            .await
        {
            Ok(tasks) => tasks,
            Err(e) => {
                warn!(error = %e, "not answering reannounce tasks");
                return None;
            }
        };
        let prefix = format!("{}-", self.config.id_prefix);
        let to_register = self.to_register_again.clone();
        let answered = self.reannounces.clone();
        Some(tokio::spawn(async move {
            use futures::StreamExt;
            while let Some(task) = tasks.next().await {
                let reannounce = serde_json::from_slice::<schemas::TaskRequest>(&task.payload)
                    .is_ok_and(|t| t.r#type == "reannounce");
                let node = subjects::parse_node_tasks(task.subject.as_str())
                    .ok()
                    .and_then(|id| id.as_str().strip_prefix(&prefix)?.parse::<u64>().ok());
                if let (true, Some(n)) = (reannounce, node) {
                    answered.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut nodes) = to_register.lock() {
                        nodes.push(n);
                    }
                }
            }
        }))
    }

    /// Publishes one event of node `n`; a register of it (`n` given) that
    /// is not acked is sent again at the node's next beat.
    async fn publish_node(
        &self,
        event: &NodeEvent,
        register_of: Option<u64>,
    ) -> Result<(), SimError> {
        let unacked = event.r#type == "heartbeat"
            && event
                .seq
                .is_some_and(|s| s % self.config.heartbeat_ack_every.max(1) != 0);
        if unacked {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_CONTENT_TYPE, self.config.encoding.content_type());
            let id = subjects::NodeId::parse(&event.node_id).map_err(|e| SimError(e.into()))?;
            return self
                .js
                .client()
                .publish_with_headers(
                    subjects::node_events(&id),
                    headers,
                    encode(event, self.config.encoding).into(),
                )
                .await
                .map_err(|e| SimError(e.into()));
        }
        let permit = self
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| SimError(e.into()))?;
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_CONTENT_TYPE, self.config.encoding.content_type());
        let id = subjects::NodeId::parse(&event.node_id).map_err(|e| SimError(e.into()))?;
        let subject = subjects::node_events(&id);
        let ack = self
            .js
            .publish_with_headers(subject, headers, encode(event, self.config.encoding).into())
            .await
            .map_err(|e| SimError(e.into()))?;
        let failed = self.failed.clone();
        let to_register_again = self.to_register_again.clone();
        tokio::spawn(async move {
            if ack.await.is_err() {
                failed.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = register_of {
                    if let Ok(mut nodes) = to_register_again.lock() {
                        nodes.push(n);
                    }
                }
            }
            drop(permit);
        });
        Ok(())
    }

    fn next_beat(&self, now: Instant, rng: &mut generate::Rng) -> Instant {
        let jitter = (rng.unit() * 2.0 - 1.0) * self.config.jitter;
        now + self
            .config
            .heartbeat_interval
            .mul_f64((1.0 + jitter).max(0.01))
    }

    /// Runs the simulation to its end and reports.
    pub async fn run(&self) -> Result<SimReport, SimError> {
        let mut rng = generate::Rng::new(self.config.seed);
        let mut report = SimReport::default();
        let start = Instant::now();
        let end = start + self.config.duration;
        let mut life: Vec<Life> = Vec::new();
        let mut due = schedule::Schedule::new(start);
        let mut seq: Vec<u64> = Vec::new();

        // Registrations, spread over the first interval so the start is not
        // a thundering herd.
        for n in 0..self.config.nodes {
            let silent = n < self.config.silent;
            life.push(if silent { Life::Silent } else { Life::Alive });
            seq.push(1);
            let offset = self.config.heartbeat_interval.mul_f64(rng.unit());
            due.push(start + offset, n);
        }
        let mut registered = vec![false; life.len()];
        let answering = self.answer_reannounces().await;
        let rate = |per_sec: f64| (per_sec > 0.0).then(|| Duration::from_secs_f64(1.0 / per_sec));
        let (join_every, leave_every, crash_every) = (
            rate(self.config.joins_per_sec),
            rate(self.config.leaves_per_sec),
            rate(self.config.crashes_per_sec),
        );
        let mut next_join = join_every.map(|d| start + d);
        let mut next_leave = leave_every.map(|d| start + d);
        let mut next_crash = crash_every.map(|d| start + d);
        let mut last_report = start;

        loop {
            let now = Instant::now();
            if now >= end || self.stop.load(Ordering::Relaxed) {
                break;
            }
            // Churn events due now.
            if let (Some(at), Some(every)) = (next_join, join_every) {
                if now >= at {
                    let n = life.len() as u64;
                    life.push(Life::Alive);
                    seq.push(1);
                    registered.push(false);
                    due.push(now, n);
                    next_join = Some(at + every);
                }
            }
            if let (Some(at), Some(every)) = (next_leave, leave_every) {
                if now >= at {
                    if let Some(n) = pick_alive(&life, &registered, &mut rng) {
                        life[n as usize] = Life::Gone;
                        let event = generate::deregister(&self.node_id(n), seq[n as usize]);
                        self.publish(&event).await?;
                        report.deregisters += 1;
                        report.published += 1;
                        self.count(2);
                    }
                    next_leave = Some(at + every);
                }
            }
            if let (Some(at), Some(every)) = (next_crash, crash_every) {
                if now >= at {
                    if let Some(n) = pick_alive(&life, &registered, &mut rng) {
                        life[n as usize] = Life::Gone;
                        report.crashes.push(Crash {
                            node_id: self.node_id(n),
                            crashed_at: Utc::now(),
                        });
                    }
                    next_crash = Some(at + every);
                }
            }
            // Registers not acked: sent again at the node's next beat.
            let unacked: Vec<u64> = self
                .to_register_again
                .lock()
                .map(|mut nodes| std::mem::take(&mut *nodes))
                .unwrap_or_default();
            for n in unacked {
                if let Some(done) = registered.get_mut(n as usize).filter(|done| **done) {
                    *done = false;
                    report.registers_retried += 1;
                }
            }
            // Heartbeats and registrations due now.
            let mut sent = 0;
            while sent < 10_000 {
                let Some(n) = due.pop_due(now) else {
                    break;
                };
                let i = n as usize;
                if life[i] == Life::Gone {
                    continue;
                }
                let id = self.node_id(n);
                let s = seq[i];
                seq[i] += 1;
                if !registered[i] {
                    registered[i] = true;
                    self.publish_node(&generate::register(&id, n, s, self.config.seed), Some(n))
                        .await?;
                    report.registers += 1;
                    self.count(0);
                } else {
                    self.publish(&generate::heartbeat(&id, s, &mut rng)).await?;
                    report.heartbeats += 1;
                    self.count(1);
                }
                report.published += 1;
                sent += 1;
                if life[i] == Life::Alive {
                    due.push(self.next_beat(now, &mut rng), n);
                }
            }
            if now.duration_since(last_report) >= Duration::from_secs(5) {
                last_report = now;
                info!(
                    published = report.published,
                    failed = self.failed.load(Ordering::Relaxed),
                    alive = life.iter().filter(|l| **l != Life::Gone).count(),
                    "fleet-sim progress"
                );
            }
            // Sleep until the next thing is due (bounded, so churn and the
            // end are seen in time).
            let next = due.next_due().unwrap_or(end);
            let wake = [Some(next), next_join, next_leave, next_crash, Some(end)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(end);
            if wake > Instant::now() {
                tokio::time::sleep_until(wake.min(Instant::now() + Duration::from_millis(100)))
                    .await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        // Wait for the acks still in flight.
        let permits = u32::try_from(self.config.max_in_flight.max(1)).unwrap_or(u32::MAX);
        if tokio::time::timeout(
            Duration::from_secs(30),
            self.in_flight.acquire_many(permits),
        )
        .await
        .is_err()
        {
            warn!("acks still outstanding after 30 s");
        }
        report.failed = self.failed.load(Ordering::Relaxed);
        report.reannounces_answered = self.reannounces.load(Ordering::Relaxed);
        if let Some(answering) = answering {
            answering.abort();
        }
        report.alive_at_end = life.iter().filter(|l| **l != Life::Gone).count() as u64;
        report.seconds = start.elapsed().as_secs_f64();
        report.events_per_sec = report.published as f64 / report.seconds.max(1e-9);
        Ok(report)
    }
}

/// A random node that is alive and registered.
fn pick_alive(life: &[Life], registered: &[bool], rng: &mut generate::Rng) -> Option<u64> {
    let n = life.len() as u64;
    if n == 0 {
        return None;
    }
    // A few random probes, then a scan from a random start.
    let start = rng.below(n);
    (0..n)
        .map(|k| (start + k) % n)
        .find(|&i| life[i as usize] == Life::Alive && registered[i as usize])
}
