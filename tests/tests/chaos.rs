//! Chaos: a fleet of 200 nodes (195 simulated in this process, 5 real
//! `node-agent` processes) and two registry instances, while registries and
//! agents are killed with SIGKILL at random and restarted. At the end the
//! `nodes` bucket must equal what a model of the run predicts, and `ALERTS`
//! must hold exactly one alert per transition, and none for a node that was
//! never killed.
//!
//! CI runs 30 seconds of chaos; the long run is
//! `CHAOS_SECONDS=120 cargo test -p fleet-tests --test chaos -- --nocapture`
//! (`CHAOS_SEED` picks another random run).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::Utc;
use fleet_tests::{eventually, registry_client, spawn_agent, spawn_registry, NatsServer, Proc};
use futures::StreamExt;
use schemas::{Alert, NodeEvent, NodeRecord};
use tokio::task::JoinHandle;

const SIMULATED: usize = 195;
const REAL_AGENTS: usize = 5;
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Never fewer simulated nodes alive than this (no mass silence: that is
/// self-preservation's test, not this one's).
const MIN_ALIVE: usize = 150;

/// A small deterministic generator (xorshift64*): the run is replayable
/// from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n.max(1) as u64).unwrap_or(0)
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.next() % (to - from).max(1))
    }
}

/// What the model says a node should be at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Alive,
    Dead,
    Gone,
}

fn event(kind: &str, id: &str) -> Vec<u8> {
    let event = NodeEvent {
        r#type: kind.to_owned(),
        node_id: id.to_owned(),
        ..NodeEvent::default()
    };
    serde_json::to_vec(&event).expect("event JSON")
}

fn subject(id: &str) -> String {
    subjects::node_events(&subjects::NodeId::parse(id).expect("valid node id"))
}

/// Publishes until the server acks it.
async fn publish_acked(js: &jetstream::Context, id: &str, payload: Vec<u8>) {
    loop {
        if let Ok(ack) = js.publish(subject(id), payload.clone().into()).await {
            if tokio::time::timeout(Duration::from_secs(2), ack)
                .await
                .is_ok_and(|a| a.is_ok())
            {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A simulated agent: registers, then heartbeats until aborted (the
/// abort is its SIGKILL: it says nothing more).
fn simulated(js: jetstream::Context, id: String) -> JoinHandle<()> {
    tokio::spawn(async move {
        publish_acked(&js, &id, event("register", &id)).await;
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tick.tick().await;
            if let Ok(ack) = js
                .publish(subject(&id), event("heartbeat", &id).into())
                .await
            {
                // A lost heartbeat is what a real agent would shrug off too.
                let _ = tokio::time::timeout(Duration::from_secs(1), ack).await;
            }
        }
    })
}

struct Registry {
    name: &'static str,
    proc: Option<Proc>,
    incarnation: u32,
    restart_at: Option<Instant>,
}

fn start_registry(server: &NatsServer, name: &str, incarnation: u32) -> Proc {
    spawn_registry(
        server,
        &format!("registry-{name}-{incarnation}"),
        &["--degraded-after", "4s", "--offline-after", "8s"],
        &[
            ("NODE_REGISTRY_SWEEP_INTERVAL", "100ms"),
            ("NODE_REGISTRY_CHECKPOINT_INTERVAL", "1s"),
            ("NODE_REGISTRY_LEASE_TTL", "2s"),
            ("NODE_REGISTRY_DISCONNECT_GRACE", "1s"),
            ("NODE_REGISTRY_INSTANCE", name),
        ],
    )
}

fn start_agent(server: &NatsServer, i: usize) -> Proc {
    spawn_agent(
        server,
        &format!("agent{i}"),
        &[
            "--heartbeat-interval",
            "500ms",
            "--ollama-url",
            "http://127.0.0.1:9",
        ],
    )
}

/// Checks one node's alerts, in stream order, as a chain of transitions;
/// returns the status they end in (`None`: deregistered).
fn replay_chain(id: &str, alerts: &[&Alert]) -> Result<Option<String>, String> {
    let mut status: Option<String> = None;
    let mut registered = 0;
    for alert in alerts {
        let previous = alert.previous_status.clone();
        match alert.r#type.as_str() {
            "node.registered" => {
                registered += 1;
                if status.is_some() {
                    return Err(format!("{id}: registered again while {status:?}"));
                }
                status = Some("online".to_owned());
                continue;
            }
            "node.deregistered" => {
                if status.is_none() {
                    return Err(format!("{id}: deregistered while unknown"));
                }
                status = None;
                continue;
            }
            _ => {}
        }
        if previous != status {
            return Err(format!(
                "{id}: {} claims previous {previous:?} but the node was {status:?} (a transition alerted twice, or one missed)",
                alert.r#type
            ));
        }
        let next = alert.status.clone();
        let allowed = matches!(
            (alert.r#type.as_str(), previous.as_deref(), next.as_deref()),
            ("node.degraded", Some("online"), Some("degraded"))
                | ("node.offline", Some("degraded"), Some("offline"))
                | ("node.online", Some("degraded" | "offline"), Some("online"))
        );
        if !allowed {
            return Err(format!(
                "{id}: impossible {} {previous:?} → {next:?}",
                alert.r#type
            ));
        }
        status = next;
    }
    if registered != 1 {
        return Err(format!("{id}: {registered} registrations"));
    }
    Ok(status)
}

#[tokio::test]
async fn registries_and_agents_killed_at_random_leave_a_bucket_that_matches_the_model() {
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_cafe);
    println!("chaos: {seconds} s, seed {seed}");
    let mut rng = Rng(seed | 1);
    let server = NatsServer::start().await;
    let client = registry_client(&server).await;
    let js = jetstream::new(server.client().await);
    let started = Utc::now();

    let mut registries: Vec<Registry> = ["a", "b"]
        .into_iter()
        .map(|name| Registry {
            name,
            proc: Some(start_registry(&server, name, 0)),
            incarnation: 0,
            restart_at: None,
        })
        .collect();
    fleet_tests::wait_registry(&client).await;

    // The fleet: simulated nodes and real agents.
    let sim_ids: Vec<String> = (0..SIMULATED).map(|i| format!("chaos-{i:03}")).collect();
    let mut sims: Vec<Option<JoinHandle<()>>> = sim_ids
        .iter()
        .map(|id| Some(simulated(js.clone(), id.clone())))
        .collect();
    let mut fates: BTreeMap<String, Fate> =
        sim_ids.iter().map(|id| (id.clone(), Fate::Alive)).collect();
    let mut agents: Vec<Option<Proc>> = (0..REAL_AGENTS)
        .map(|i| Some(start_agent(&server, i)))
        .collect();
    let mut agent_restart: Vec<Option<Instant>> = vec![None; REAL_AGENTS];
    let mut agent_ids = Vec::new();
    for i in 0..REAL_AGENTS {
        let id = fleet_tests::agent_node_id(&server, &format!("agent{i}")).await;
        fates.insert(id.clone(), Fate::Alive);
        agent_ids.push(id);
    }
    eventually(
        "every node to be online",
        Duration::from_secs(60),
        || async {
            let reply = client
                .discover(&schemas::DiscoverRequest {
                    limit: Some(1000),
                    ..Default::default()
                })
                .await
                .ok()?;
            (reply.total == (SIMULATED + REAL_AGENTS) as u64).then_some(())
        },
    )
    .await;
    let mut ever_killed: BTreeSet<String> = BTreeSet::new();
    let mut tally: BTreeMap<&str, u32> = BTreeMap::new();

    // Chaos.
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = Instant::now();
        for registry in &mut registries {
            match (&mut registry.proc, registry.restart_at) {
                (Some(proc), _) if rng.chance(0.06) => {
                    proc.kill9();
                    registry.proc = None;
                    registry.restart_at = Some(now + rng.millis(500, 5000));
                    *tally.entry("registry killed").or_default() += 1;
                }
                (None, Some(at)) if now >= at => {
                    registry.incarnation += 1;
                    registry.proc =
                        Some(start_registry(&server, registry.name, registry.incarnation));
                    registry.restart_at = None;
                }
                _ => {}
            }
        }
        let alive: Vec<usize> = (0..SIMULATED)
            .filter(|i| fates[&sim_ids[*i]] == Fate::Alive)
            .collect();
        if alive.len() > MIN_ALIVE && rng.chance(0.5) {
            let i = alive[rng.below(alive.len())];
            if let Some(task) = sims[i].take() {
                task.abort();
            }
            fates.insert(sim_ids[i].clone(), Fate::Dead);
            ever_killed.insert(sim_ids[i].clone());
            *tally.entry("node killed").or_default() += 1;
        }
        let dead: Vec<usize> = (0..SIMULATED)
            .filter(|i| fates[&sim_ids[*i]] == Fate::Dead)
            .collect();
        if !dead.is_empty() && rng.chance(0.35) {
            let i = dead[rng.below(dead.len())];
            sims[i] = Some(simulated(js.clone(), sim_ids[i].clone()));
            fates.insert(sim_ids[i].clone(), Fate::Alive);
            *tally.entry("node restarted").or_default() += 1;
        }
        if alive.len() > MIN_ALIVE && rng.chance(0.03) {
            let i = alive[rng.below(alive.len())];
            if let Some(task) = sims[i].take() {
                task.abort();
            }
            publish_acked(&js, &sim_ids[i], event("deregister", &sim_ids[i])).await;
            fates.insert(sim_ids[i].clone(), Fate::Gone);
            ever_killed.insert(sim_ids[i].clone());
            *tally.entry("node left").or_default() += 1;
        }
        for i in 0..REAL_AGENTS {
            match (&mut agents[i], agent_restart[i]) {
                (Some(proc), _) if rng.chance(0.04) => {
                    proc.kill9();
                    agents[i] = None;
                    agent_restart[i] = Some(now + rng.millis(1000, 12_000));
                    fates.insert(agent_ids[i].clone(), Fate::Dead);
                    ever_killed.insert(agent_ids[i].clone());
                    *tally.entry("agent killed").or_default() += 1;
                }
                (None, Some(at)) if now >= at => {
                    agents[i] = Some(start_agent(&server, i));
                    agent_restart[i] = None;
                    fates.insert(agent_ids[i].clone(), Fate::Alive);
                }
                _ => {}
            }
        }
    }
    // The end: every registry runs again; dead nodes stay dead.
    for registry in &mut registries {
        if registry.proc.is_none() {
            registry.incarnation += 1;
            registry.proc = Some(start_registry(&server, registry.name, registry.incarnation));
        }
    }
    println!("chaos: {tally:?}");

    // The model: alive → online, dead → offline, gone → no record.
    let expected: BTreeMap<String, String> = fates
        .iter()
        .filter_map(|(id, fate)| match fate {
            Fate::Alive => Some((id.clone(), "online".to_owned())),
            Fate::Dead => Some((id.clone(), "offline".to_owned())),
            Fate::Gone => None,
        })
        .collect();
    let kv = js
        .get_key_value(subjects::BUCKET_NODES)
        .await
        .expect("nodes bucket");
    let settle = Instant::now();
    let mut last_seen = BTreeMap::new();
    let settled = tokio::time::timeout(Duration::from_secs(90), async {
        loop {
            let mut bucket = BTreeMap::new();
            if let Ok(mut keys) = kv.keys().await {
                while let Some(Ok(key)) = keys.next().await {
                    if let Ok(Some(value)) = kv.get(&key).await {
                        if let Ok(record) = serde_json::from_slice::<NodeRecord>(&value) {
                            bucket.insert(key, record.status);
                        }
                    }
                }
            }
            if bucket == expected {
                return;
            }
            last_seen = bucket;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    if settled.is_err() {
        let wrong: Vec<String> = expected
            .iter()
            .filter(|(id, status)| last_seen.get(*id) != Some(*status))
            .map(|(id, status)| format!("{id}: expected {status}, bucket {:?}", last_seen.get(id)))
            .chain(
                last_seen
                    .keys()
                    .filter(|id| !expected.contains_key(*id))
                    .map(|id| format!("{id}: expected no record")),
            )
            .collect();
        panic!("the bucket never matched the model: {wrong:#?}");
    }
    println!(
        "chaos: the bucket matched the model {:?} after the chaos",
        settle.elapsed()
    );

    // ALERTS: one alert per transition, in a consistent chain per node,
    // ending where the bucket is; nothing for a node never killed.
    let alerts = client.alerts(started, None).await.expect("ALERTS");
    let mut ids = BTreeSet::new();
    for alert in &alerts {
        assert!(
            ids.insert(alert.id.clone()),
            "alert id {} stored twice",
            alert.id
        );
    }
    let mut by_node: BTreeMap<&str, Vec<&Alert>> = BTreeMap::new();
    for alert in &alerts {
        if let Some(id) = alert.node_id.as_deref() {
            by_node.entry(id).or_default().push(alert);
        }
    }
    let mut transitions = 0;
    for id in fates.keys() {
        let chain = by_node.get(id.as_str()).cloned().unwrap_or_default();
        let end = replay_chain(id, &chain).unwrap_or_else(|e| panic!("{e}\n{chain:#?}"));
        assert_eq!(
            end.as_deref(),
            expected.get(id).map(String::as_str),
            "{id}: {chain:#?}"
        );
        if !ever_killed.contains(id) {
            assert_eq!(chain.len(), 1, "{id} was never killed, yet: {chain:#?}");
        }
        transitions += chain.len();
    }
    let preservation = alerts
        .iter()
        .filter(|a| a.r#type == "registry.self_preservation")
        .count();
    println!(
        "chaos: {} alerts, {transitions} node transitions, {preservation} self-preservation alerts",
        alerts.len()
    );
    for task in sims.into_iter().flatten() {
        task.abort();
    }
}
