//! Clustered NATS: three servers on loopback, streams and buckets with three
//! replicas (`--replicas 3`). Losing the server that leads the event stream
//! (or the `nodes` bucket's stream) loses no event, discovery keeps
//! answering, and the state is whole when the server returns; a cluster
//! restarted as a whole keeps every record; a cluster without quorum for
//! longer than `degraded_after` judges no live node.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use async_nats::HeaderMap;
use chrono::Utc;
use fleet_client::{AuditQuery, AuditSource};
use fleet_tests::{eventually, spawn_agent_on, spawn_registry_on, AlertTap, NatsCluster, Proc};
use registry_core::discovery::HOP_MS;
use schemas::{DiscoverRequest, NodeEvent};
use tokio::sync::watch;

/// Generous bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(30);
/// One cluster test at a time: each runs three servers, a registry and
/// agents, and on a 2-core machine four at once starved a cluster of its
/// JetStream leader election.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The synthetic node whose every event is accounted for.
const PROBE: &str = "node-probe";

/// Dropped in field order: processes (printing their logs on a failure),
/// then servers, then the directory holding the logs.
struct Fleet {
    _registry: Proc,
    _agents: Vec<Proc>,
    cluster: NatsCluster,
    _dir: tempfile::TempDir,
    agent_ids: Vec<String>,
}

async fn start_fleet(agents: usize) -> Fleet {
    let cluster = NatsCluster::start(3).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let registry = spawn_registry_on(
        &cluster.urls(),
        dir.path().join("registry.log"),
        "registry",
        &[
            "--replicas",
            "3",
            "--degraded-after",
            "10s",
            "--offline-after",
            "60s",
        ],
        &[
            ("NODE_REGISTRY_SWEEP_INTERVAL", "200ms"),
            ("NODE_REGISTRY_CHECKPOINT_INTERVAL", "1s"),
            ("NODE_REGISTRY_LEASE_TTL", "2s"),
        ],
    );
    let procs: Vec<Proc> = (0..agents)
        .map(|i| {
            spawn_agent_on(
                &cluster.urls(),
                &dir.path().join(format!("agent{i}")),
                &[
                    "--heartbeat-interval",
                    "500ms",
                    "--ollama-url",
                    "http://127.0.0.1:9",
                ],
            )
        })
        .collect();
    let mut agent_ids = Vec::new();
    for i in 0..agents {
        let id = fleet_tests::stored_node_id(&dir.path().join(format!("agent{i}"))).await;
        agent_ids.push(id);
    }
    let fleet = Fleet {
        _registry: registry,
        _agents: procs,
        cluster,
        _dir: dir,
        agent_ids,
    };
    let client = fleet.client_at(0).await;
    wait_online(&client, agents).await;
    fleet
}

impl Fleet {
    /// The degraded/offline alerts among `alerts` that judged one of the
    /// fleet's (live) agents.
    fn judged<'a>(&self, alerts: &'a [schemas::Alert]) -> Vec<&'a schemas::Alert> {
        alerts
            .iter()
            .filter(|a| {
                matches!(a.r#type.as_str(), "node.degraded" | "node.offline")
                    && a.node_id
                        .as_ref()
                        .is_some_and(|n| self.agent_ids.contains(n))
            })
            .collect()
    }

    /// A registry client on member `i` only.
    async fn client_at(&self, i: usize) -> fleet_client::Client {
        fleet_client::Client::new(
            self.cluster.servers[i].client().await,
            subjects::Names::default(),
        )
        .with_timeout(Duration::from_millis(500))
    }
}

async fn wait_online(client: &fleet_client::Client, n: usize) {
    eventually(&format!("{n} online nodes"), SOON, || async {
        let reply = client.discover(&DiscoverRequest::default()).await.ok()?;
        (reply.nodes.len() == n).then_some(())
    })
    .await;
}

/// The server (`n0`…) leading `stream`.
async fn leader_of(js: &jetstream::Context, stream: &str) -> String {
    eventually(&format!("a leader for {stream}"), SOON, || async {
        let mut stream = js.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        info.cluster.as_ref()?.leader.clone()
    })
    .await
}

/// Waits until every replica of `stream` is current.
async fn wait_replicas_current(js: &jetstream::Context, stream: &str) {
    eventually(
        &format!("{stream}'s replicas to be current"),
        SOON,
        || async {
            let mut stream = js.get_stream(stream).await.ok()?;
            let info = stream.info().await.ok()?;
            let cluster = info.cluster.as_ref()?;
            let all = cluster.leader.is_some()
                && cluster.replicas.len() == 2
                && cluster.replicas.iter().all(|r| r.current && !r.offline);
            all.then_some(())
        },
    )
    .await;
}

/// What the registry and the event consumer show of the probe, for a
/// failure's message.
async fn where_the_probe_stands(client: &fleet_client::Client, js: &jetstream::Context) -> String {
    let record = client
        .get(PROBE)
        .await
        .map(|r| r.map(|r| (r.seq, r.status)));
    let (stream, consumer) = match js.get_stream(subjects::STREAM_NODE_EVENTS).await {
        Ok(mut events) => {
            let stream = events.info().await.map_or_else(
                |e| e.to_string(),
                |i| {
                    format!(
                        "first {} last {}",
                        i.state.first_sequence, i.state.last_sequence
                    )
                },
            );
            let consumer = match events
                .get_consumer::<jetstream::consumer::pull::Config>(subjects::CONSUMER_REGISTRY)
                .await
            {
                Ok(mut consumer) => consumer.info().await.map_or_else(
                    |e| e.to_string(),
                    |i| {
                        format!(
                            "delivered {} ack floor {} pending {} ack pending {} leader {:?}",
                            i.delivered.stream_sequence,
                            i.ack_floor.stream_sequence,
                            i.num_pending,
                            i.num_ack_pending,
                            i.cluster.as_ref().and_then(|c| c.leader.clone())
                        )
                    },
                ),
                Err(e) => e.to_string(),
            };
            (stream, consumer)
        }
        Err(e) => (e.to_string(), String::new()),
    };
    format!(
        "the probe's record (seq, status): {record:?}; NODE_EVENTS: {stream}; consumer: {consumer}"
    )
}

/// Publishes the probe's events, seq `first` (a register) up, each retried until
/// the server acks it (with a message id, so a retry is never stored twice),
/// until `stop`; returns the last seq acked.
async fn publish_probe(js: jetstream::Context, mut stop: watch::Receiver<bool>, first: u64) -> u64 {
    let mut seq = first;
    loop {
        let event = NodeEvent {
            r#type: if seq == first {
                "register"
            } else {
                "heartbeat"
            }
            .to_owned(),
            node_id: PROBE.to_owned(),
            seq: Some(seq),
            ..NodeEvent::default()
        };
        let payload = serde_json::to_vec(&event).expect("event JSON");
        loop {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", format!("{PROBE}-{seq}").as_str());
            let acked = match js
                .publish_with_headers(
                    format!("node.{PROBE}.events"),
                    headers,
                    payload.clone().into(),
                )
                .await
            {
                Ok(ack) => tokio::time::timeout(Duration::from_secs(2), ack)
                    .await
                    .is_ok_and(|a| a.is_ok()),
                Err(_) => false,
            };
            if acked {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if *stop.borrow_and_update() {
            return seq;
        }
        seq += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asks for discovery every 100 ms until `stop`; returns the longest time
/// between two answers.
async fn probe_discovery(client: fleet_client::Client, stop: watch::Receiver<bool>) -> Duration {
    let mut last = Instant::now();
    let mut longest = Duration::ZERO;
    while !*stop.borrow() {
        if client.discover(&DiscoverRequest::default()).await.is_ok() {
            longest = longest.max(last.elapsed());
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    longest.max(last.elapsed())
}

#[tokio::test]
async fn losing_a_stream_leader_loses_no_event_and_discovery_keeps_answering() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut fleet = start_fleet(3).await;
    let mut total_events = 0u64;
    let mut first = 0u64;
    for stream in [
        subjects::STREAM_NODE_EVENTS.to_owned(),
        subjects::kv_stream(subjects::BUCKET_NODES),
    ] {
        let js0 = jetstream::new(fleet.cluster.servers[0].client().await);
        let leader = leader_of(&js0, &stream).await;
        let victim: usize = leader
            .strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("leader name {leader}"));
        // Watch from a server that stays up.
        let watcher = (victim + 1) % 3;
        let client = fleet.client_at(watcher).await;
        let js = jetstream::new(fleet.cluster.servers[watcher].client().await);
        let mut alerts = AlertTap::new(client.nats()).await;
        let (stop_tx, stop) = watch::channel(false);
        let publisher = tokio::spawn(publish_probe(js.clone(), stop.clone(), first));
        let prober = tokio::spawn(probe_discovery(client.clone(), stop));
        tokio::time::sleep(Duration::from_secs(1)).await;

        fleet.cluster.servers[victim].kill();
        let new_leader = leader_of(&js, &stream).await;
        assert_ne!(new_leader, leader, "{stream} kept a dead leader");
        tokio::time::sleep(Duration::from_secs(4)).await;
        stop_tx.send(true).expect("stop");
        let last = publisher.await.expect("publisher");
        let gap = prober.await.expect("prober");
        total_events += last - first + 1;
        println!(
            "{stream}: leader {leader} killed, new leader {new_leader}, {} probe events, longest discovery gap {gap:?}",
            last - first + 1
        );
        assert!(
            gap <= Duration::from_secs(2),
            "discovery did not answer for {gap:?} after {leader} (leading {stream}) was killed"
        );

        // Every acked event is stored once and applied: the probe's record
        // carries the last one's seq (a register: always written).
        let final_seq = last + 1;
        let register = NodeEvent {
            r#type: "register".to_owned(),
            node_id: PROBE.to_owned(),
            seq: Some(final_seq),
            ..NodeEvent::default()
        };
        js.publish(
            format!("node.{PROBE}.events"),
            serde_json::to_vec(&register).expect("JSON").into(),
        )
        .await
        .expect("publish")
        .await
        .expect("ack");
        let applied = tokio::time::timeout(SOON, async {
            loop {
                if let Ok(Some(record)) = client.get(PROBE).await {
                    if record.seq == Some(final_seq) {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        if applied.is_err() {
            panic!(
                "the registry did not apply the probe's last event (seq {final_seq}) within {SOON:?} ({stream} failover); {}",
                where_the_probe_stands(&client, &js).await
            );
        }
        let query = AuditQuery {
            node_id: Some(PROBE.to_owned()),
            since: Some(Utc::now() - chrono::Duration::minutes(10)),
            ..AuditQuery::default()
        };
        let stored: Vec<u64> = client
            .audit(&query)
            .await
            .expect("audit")
            .into_iter()
            .filter(|e| matches!(e.source, AuditSource::Event))
            .filter_map(|e| e.detail["seq"].as_u64())
            .collect();
        let mut counts: BTreeMap<u64, usize> = BTreeMap::new();
        for seq in &stored {
            *counts.entry(*seq).or_default() += 1;
        }
        for seq in first..=last {
            assert!(
                counts.get(&seq).is_some_and(|n| *n >= 1),
                "probe event {seq} lost ({stream} failover)"
            );
        }
        let consumer_caught_up = eventually(
            "the registry's consumer to ack everything",
            SOON,
            || async {
                let stream = js.get_stream(subjects::STREAM_NODE_EVENTS).await.ok()?;
                let mut consumer: jetstream::consumer::PullConsumer = stream
                    .get_consumer(subjects::CONSUMER_REGISTRY)
                    .await
                    .ok()?;
                let info = consumer.info().await.ok()?;
                (info.num_pending == 0 && info.num_ack_pending == 0)
                    .then_some(info.ack_floor.stream_sequence)
            },
        )
        .await;
        assert!(consumer_caught_up > 0);

        // No live agent was judged meanwhile.
        let seen = alerts.collect_for(Duration::from_millis(500)).await;
        let judged = fleet.judged(&seen);
        assert!(judged.is_empty(), "live agents judged: {judged:?}");
        first = final_seq + 1;

        // The server returns and catches up: every replica is current, and
        // it serves the same records.
        fleet.cluster.servers[victim].start_again().await;
        wait_replicas_current(&js, subjects::STREAM_NODE_EVENTS).await;
        wait_replicas_current(&js, &subjects::kv_stream(subjects::BUCKET_NODES)).await;
        let returned = fleet.client_at(victim).await;
        let ids = |reply: schemas::DiscoverReply| {
            let mut ids: Vec<String> = reply.nodes.into_iter().map(|n| n.node_id).collect();
            ids.sort();
            ids
        };
        let all = DiscoverRequest {
            status: Some("any".to_owned()),
            ..DiscoverRequest::default()
        };
        // A server that rejoins learns the registry's subscriptions from its
        // routes a moment after it is up: wait for it to route discovery.
        let here = ids(
            eventually("the returned server to route discovery", SOON, || async {
                returned.discover(&all).await.ok()
            })
            .await,
        );
        let there = ids(client.discover(&all).await.expect("discover"));
        assert_eq!(here, there);
        assert_eq!(here.len(), 4, "three agents and the probe: {here:?}");
    }
    assert!(
        total_events > 20,
        "the probe published during the failovers"
    );
}

#[tokio::test]
async fn a_cluster_restarted_whole_keeps_every_record() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut fleet = start_fleet(2).await;
    let all = DiscoverRequest {
        status: Some("any".to_owned()),
        ..DiscoverRequest::default()
    };
    let before: BTreeMap<String, String> = fleet
        .client_at(0)
        .await
        .discover(&all)
        .await
        .expect("discover")
        .nodes
        .into_iter()
        .map(|n| (n.node_id, n.registered_at))
        .collect();
    assert_eq!(before.len(), 2);
    let since = Utc::now();

    for server in &mut fleet.cluster.servers {
        server.kill();
    }
    for server in &mut fleet.cluster.servers {
        server.start_again().await;
    }
    fleet.cluster.wait_ready().await;

    let client = fleet.client_at(0).await;
    let seen = Arc::new(Mutex::new(BTreeMap::new()));
    eventually("the registry to answer with every record", SOON, || async {
        let reply = client.discover(&all).await.ok()?;
        let after: BTreeMap<String, String> = reply
            .nodes
            .into_iter()
            .map(|n| (n.node_id, n.registered_at))
            .collect();
        *seen.lock().expect("lock") = after.clone();
        (after == before).then_some(())
    })
    .await;
    wait_online(&client, 2).await;
    // Nobody was judged for the restart (the registry's link was down; it
    // held, and granted a fresh window when it came back).
    let mut alerts = AlertTap::new(client.nats()).await;
    let later: Vec<_> = alerts
        .collect_for(Duration::from_secs(2))
        .await
        .into_iter()
        .chain(client.alerts(since, None).await.expect("stored alerts"))
        .filter(|a| a.r#type.starts_with("node.") && a.r#type != "node.registered")
        .collect();
    assert!(later.is_empty(), "alerts for the restart: {later:?}");
    let records = seen.lock().expect("lock").len();
    assert_eq!(records, 2);
}

/// The member (index) the registry is connected to, from each server's
/// own connection list (system account).
async fn registry_server(cluster: &NatsCluster) -> usize {
    for (i, server) in cluster.servers.iter().enumerate() {
        let Ok(sys) =
            async_nats::ConnectOptions::with_user_and_password("sys".into(), "sys".into())
                .connect(server.url())
                .await
        else {
            continue;
        };
        let id = sys.server_info().server_id;
        let Ok(reply) = sys
            .request(subjects::sys_server_connz(&id), "{}".into())
            .await
        else {
            continue;
        };
        let connz: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
        let here = connz["data"]["connections"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["name"] == "node-registry"));
        if here {
            return i;
        }
    }
    panic!("the registry's connection is on no server");
}

#[tokio::test]
async fn losing_the_registrys_own_server_keeps_discovery_answering() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut fleet = start_fleet(2).await;
    let victim = registry_server(&fleet.cluster).await;
    let watcher = (victim + 1) % 3;
    let client = fleet.client_at(watcher).await;
    let mut alerts = AlertTap::new(client.nats()).await;
    let (stop_tx, stop) = watch::channel(false);
    let prober = tokio::spawn(probe_discovery(client.clone(), stop));
    tokio::time::sleep(Duration::from_secs(1)).await;

    fleet.cluster.servers[victim].kill();
    // The registry reconnects to another member and answers again; it
    // still leads: the agents stay online, nobody is judged.
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop_tx.send(true).expect("stop");
    let gap = prober.await.expect("prober");
    println!("the registry's server n{victim} killed: longest discovery gap {gap:?}");
    assert!(
        gap <= Duration::from_secs(2),
        "discovery did not answer for {gap:?} after the registry's own server was killed"
    );
    assert_ne!(registry_server(&fleet.cluster).await, victim);
    wait_online(&client, 2).await;
    let judged: Vec<_> = alerts
        .collect_for(Duration::from_millis(500))
        .await
        .into_iter()
        .filter(|a| matches!(a.r#type.as_str(), "node.degraded" | "node.offline"))
        .collect();
    assert!(judged.is_empty(), "live agents judged: {judged:?}");
}

#[tokio::test]
async fn a_cluster_without_quorum_for_longer_than_degraded_after_raises_no_false_alarm() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut fleet = start_fleet(2).await;
    let js = jetstream::new(fleet.cluster.servers[0].client().await);
    let client = fleet.client_at(0).await;
    let mut alerts = AlertTap::new(client.nats()).await;

    // Two of three servers gone: no stream has a leader, nodes cannot store
    // heartbeats, yet every process can still reach server 0.
    fleet.cluster.servers[1].kill();
    fleet.cluster.servers[2].kill();
    let mut seen = alerts.collect_for(Duration::from_secs(14)).await;
    fleet.cluster.servers[1].start_again().await;
    fleet.cluster.servers[2].start_again().await;
    wait_replicas_current(&js, subjects::STREAM_NODE_EVENTS).await;
    wait_replicas_current(&js, &subjects::kv_stream(subjects::BUCKET_NODES)).await;
    // A full window after the quorum is back: the agents are heard again.
    seen.extend(alerts.collect_for(Duration::from_secs(12)).await);
    let judged = fleet.judged(&seen);
    let held: Vec<_> = seen
        .iter()
        .filter(|a| a.r#type == "registry.self_preservation")
        .filter_map(|a| Some((a.status.clone()?, a.figures.as_ref()?.reason.clone())))
        .collect();
    println!("quorum lost for 14 s: self-preservation {held:?}");
    assert!(judged.is_empty(), "live agents judged: {judged:?}");
    wait_online(&client, fleet.agent_ids.len()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn near_me_puts_the_nodes_on_the_requesters_own_server_first() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let cluster = NatsCluster::start(3).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let _registry = spawn_registry_on(
        &cluster.urls(),
        dir.path().join("registry.log"),
        "registry",
        &["--replicas", "3"],
        &[],
    );
    // Two agents on n0, one on n1, one on n2 (each given only its server).
    let on = [0usize, 0, 1, 2];
    let _agents: Vec<Proc> = on
        .iter()
        .enumerate()
        .map(|(i, server)| {
            spawn_agent_on(
                &cluster.servers[*server].url(),
                &dir.path().join(format!("agent{i}")),
                &["--ollama-url", "http://127.0.0.1:9"],
            )
        })
        .collect();
    let mut ids = Vec::new();
    for i in 0..on.len() {
        ids.push(fleet_tests::stored_node_id(&dir.path().join(format!("agent{i}"))).await);
    }
    let near_me = DiscoverRequest {
        near: Some("me".to_owned()),
        ..DiscoverRequest::default()
    };
    let asked_on = |i: usize| {
        let cluster = &cluster;
        let near_me = near_me.clone();
        async move {
            let client = fleet_client::Client::new(
                cluster.servers[i].client().await,
                subjects::Names::default(),
            );
            eventually("four nodes that say where they are", SOON, || async {
                let reply = client.discover(&near_me).await.ok()?;
                (reply.nodes.len() == 4 && reply.nodes.iter().all(|n| n.nats.is_some()))
                    .then_some(reply)
            })
            .await
        }
    };

    // Asked on n1: its one node first, then the rest of the cluster.
    let reply = asked_on(1).await;
    let order: Vec<&str> = reply.nodes.iter().map(|n| n.node_id.as_str()).collect();
    assert_eq!(order[0], ids[2], "{order:?}");
    let first = reply.nodes[0].nats.as_ref().expect("nats");
    assert_eq!(first.server, "n1");
    assert_eq!(first.cluster.as_deref(), Some("fleet"));
    assert!(first.rtt_ms.is_some_and(|rtt| rtt >= 0.0), "{first:?}");
    assert_eq!(reply.latency_ms.len(), 4);
    // The rest are a cluster hop further. Each estimate is the requester's
    // round trip plus the node's own plus its tier's hop: less the node's
    // own (measured by its agent, so it varies with the host's load), the
    // rest are exactly one cluster hop above the first (to the hundredth the
    // estimate is rounded to; a node without a round trip counts 1 ms).
    let beyond_own: Vec<f64> = reply
        .nodes
        .iter()
        .zip(&reply.latency_ms)
        .map(|(n, l)| l - n.nats.as_ref().and_then(|x| x.rtt_ms).unwrap_or(1.0))
        .collect();
    assert!(
        beyond_own[1..]
            .iter()
            .all(|l| (l - beyond_own[0] - HOP_MS[1]).abs() < 0.02),
        "{:?} (less each node's own round trip: {beyond_own:?})",
        reply.latency_ms
    );

    // Asked on n0: its two nodes first.
    let reply = asked_on(0).await;
    let mut nearest: Vec<&str> = reply.nodes[..2]
        .iter()
        .map(|n| n.node_id.as_str())
        .collect();
    nearest.sort_unstable();
    let mut on_n0 = vec![ids[0].as_str(), ids[1].as_str()];
    on_n0.sort_unstable();
    assert_eq!(nearest, on_n0);

    // Or by name, from anywhere: n2's node first.
    let client = fleet_client::Client::new(
        cluster.servers[0].client().await,
        subjects::Names::default(),
    );
    let reply = client
        .discover(&DiscoverRequest {
            near: Some("n2".to_owned()),
            ..DiscoverRequest::default()
        })
        .await
        .expect("discover");
    assert_eq!(reply.nodes[0].node_id, ids[3]);
}
