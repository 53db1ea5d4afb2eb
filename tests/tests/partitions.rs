//! Partitioned leaders (`--partitions 2`) on a 3-server cluster with two
//! registry instances: the partitions spread over the instances, each
//! event is stored under the partition the registry computes for its node,
//! operators' requests reach the leader of the node's partition whichever
//! instance takes them, and killing the leader of one partition moves it
//! to the other instance, whose nodes are then judged right, while the
//! other partition is untouched.

use std::time::{Duration, Instant};

use fleet_tests::{
    eventually, spawn_agent_on, spawn_registry_on, AlertTap, NatsCluster, NatsServer, Proc,
};
use schemas::admin::AdminRequest;
use schemas::health::HealthReply;
use schemas::status::AdminOp;
use schemas::DiscoverRequest;
use subjects::NodeId;

/// Generous bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(30);
/// The lease TTL the registries run with.
const LEASE_TTL: Duration = Duration::from_secs(2);

fn spawn_instance(urls: &str, dir: &std::path::Path, name: &str) -> Proc {
    spawn_registry_on(
        urls,
        dir.join(format!("{name}.log")),
        name,
        &[
            "--replicas",
            if urls.contains(',') { "3" } else { "1" },
            "--partitions",
            "2",
            "--degraded-after",
            "3s",
            "--offline-after",
            "60s",
        ],
        &[
            ("NODE_REGISTRY_INSTANCE", name),
            ("NODE_REGISTRY_SWEEP_INTERVAL", "200ms"),
            ("NODE_REGISTRY_CHECKPOINT_INTERVAL", "1s"),
            ("NODE_REGISTRY_LEASE_TTL", "2s"),
        ],
    )
}

/// The partitions instance `name` leads, as its health says.
async fn led_by(client: &fleet_client::Client, name: &str) -> Option<Vec<u32>> {
    let replies: Vec<HealthReply> = client.health().await.ok()?;
    replies
        .into_iter()
        .find(|h| h.instance == name)
        .and_then(|h| h.partitions)
}

async fn wait_led(client: &fleet_client::Client, name: &str, want: &[u32]) {
    eventually(&format!("{name} leading {want:?}"), SOON, || async {
        (led_by(client, name).await? == want).then_some(())
    })
    .await;
}

/// Two node ids of each partition.
fn ids_by_partition() -> [Vec<String>; 2] {
    let mut by = [Vec::new(), Vec::new()];
    for i in 0.. {
        let id = format!("part-node-{i}");
        let p = subjects::partition_of(&NodeId::parse(&id).expect("id"), 2) as usize;
        if by[p].len() < 2 {
            by[p].push(id);
        }
        if by.iter().all(|ids| ids.len() == 2) {
            break;
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_partition_leader_is_replaced_and_the_other_partition_is_untouched() {
    let cluster = NatsCluster::start(3).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = cluster.servers[0].client().await;
    let client = fleet_client::Client::new(nats.clone(), subjects::Names::default())
        .with_timeout(Duration::from_secs(2));

    // Alone, the first instance leads both partitions.
    let _a = spawn_instance(&cluster.urls(), dir.path(), "reg-a");
    wait_led(&client, "reg-a", &[0, 1]).await;
    // A second instance: the first gives its highest partition up to it.
    let mut b = spawn_instance(&cluster.urls(), dir.path(), "reg-b");
    wait_led(&client, "reg-b", &[1]).await;
    wait_led(&client, "reg-a", &[0]).await;

    let ids = ids_by_partition();
    let mut agents: Vec<(String, Proc)> = ids
        .iter()
        .flatten()
        .map(|id| {
            let agent = spawn_agent_on(
                &cluster.urls(),
                &dir.path().join(id),
                &[
                    "--node-id",
                    id,
                    "--heartbeat-interval",
                    "500ms",
                    "--ollama-url",
                    "http://127.0.0.1:9",
                ],
            );
            (id.clone(), agent)
        })
        .collect();
    eventually("4 online nodes", SOON, || async {
        let reply = client.discover(&DiscoverRequest::default()).await.ok()?;
        (reply.nodes.len() == 4).then_some(())
    })
    .await;

    // nats-server stored each node's events under the partition the
    // registry computes for it (the same hash on both sides).
    let js = async_nats::jetstream::new(nats.clone());
    let events = js.get_stream("NODE_EVENTS").await.expect("event stream");
    for (p, group) in ids.iter().enumerate() {
        for id in group {
            let subject = format!("node.{id}.events.{p}");
            events
                .get_last_raw_message_by_subject(&subject)
                .await
                .unwrap_or_else(|e| panic!("no event stored under {subject}: {e}"));
        }
    }
    // Both registry instances lead a partition: whichever takes an
    // operator's request, it reaches the leader of the node's partition.
    for id in ids.iter().flatten() {
        for op in [AdminOp::Cordon, AdminOp::Uncordon] {
            let request = AdminRequest {
                op,
                node_id: NodeId::parse(id).expect("id"),
                reason: None,
                by: Some("test".into()),
                gpu: None,
                for_: None,
                until: None,
            };
            client
                .admin(&request)
                .await
                .unwrap_or_else(|e| panic!("{op:?} {id}: {e}"));
        }
    }

    let mut alerts = AlertTap::new(&nats).await;
    let meta = js
        .get_key_value("registry_meta")
        .await
        .expect("meta bucket");
    let lease_0 = meta
        .entry("leader.0")
        .await
        .expect("lease 0")
        .expect("lease 0 held");

    // Kill the leader of partition 1: reg-a takes it within the TTL (+1 s).
    b.kill9();
    let killed = Instant::now();
    wait_led(&client, "reg-a", &[0, 1]).await;
    println!(
        "partition 1 led again {:.2} s after its leader was killed (lease TTL {:?})",
        killed.elapsed().as_secs_f64(),
        LEASE_TTL
    );

    // Right after the failover, a node of partition 1 that dies is judged.
    let (dead, mut dead_agent) = {
        let at = agents
            .iter()
            .position(|(id, _)| *id == ids[1][0])
            .expect("agent of partition 1");
        agents.remove(at)
    };
    dead_agent.kill9();
    alerts
        .expect(&format!("{dead} degraded"), SOON, |a| {
            a.r#type == "node.degraded" && a.node_id.as_deref() == Some(dead.as_str())
        })
        .await;
    // And nothing else was judged: the live nodes of both partitions kept
    // their standing through the failover.
    alerts.collect_for(Duration::from_secs(3)).await;
    let judged: Vec<_> = alerts
        .seen
        .iter()
        .filter(|a| {
            matches!(a.r#type.as_str(), "node.degraded" | "node.offline")
                && a.node_id.as_deref() != Some(dead.as_str())
        })
        .collect();
    assert!(judged.is_empty(), "live nodes judged: {judged:#?}");
    // A partition's consumer skips the others' events: no loss is said.
    let lost: Vec<_> = alerts
        .seen
        .iter()
        .filter(|a| a.r#type == "registry.events_lost")
        .collect();
    assert!(lost.is_empty(), "false losses: {lost:#?}");
    // Partition 0 never changed hands: its lease is reg-a's, renewed all along.
    let lease_0_now = meta
        .entry("leader.0")
        .await
        .expect("lease 0")
        .expect("lease 0 held");
    let holder = |e: &async_nats::jetstream::kv::Entry| {
        serde_json::from_slice::<registry_kv::lease::LeaseRecord>(&e.value)
            .expect("lease record")
            .holder
    };
    assert_eq!(holder(&lease_0), "reg-a");
    assert_eq!(holder(&lease_0_now), "reg-a");
    assert!(lease_0_now.revision > lease_0.revision, "renewed meanwhile");
    let online = client
        .discover(&DiscoverRequest::default())
        .await
        .expect("discover");
    assert_eq!(online.nodes.len(), 3, "{:?}", online.nodes);
}

#[tokio::test]
async fn a_registry_asking_for_another_partition_count_is_refused() {
    let server = NatsServer::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let nats = server.client().await;
    let client = fleet_client::Client::new(nats.clone(), subjects::Names::default())
        .with_timeout(Duration::from_secs(2));
    let _first = spawn_instance(&server.url(), dir.path(), "reg-a");
    wait_led(&client, "reg-a", &[0, 1]).await;
    // The same stream, asked for with 3 partitions: refused, saying why.
    let mut second = spawn_registry_on(
        &server.url(),
        dir.path().join("reg-c.log"),
        "reg-c",
        &["--partitions", "3"],
        &[("NODE_REGISTRY_INSTANCE", "reg-c")],
    );
    let status = eventually("the second registry to exit", SOON, || {
        let status = second.try_wait();
        async move { status }
    })
    .await;
    assert!(!status.success(), "exit status {status:?}");
    let log = std::fs::read_to_string(dir.path().join("reg-c.log")).expect("log");
    assert!(
        log.contains("partition count is fixed when the stream is created"),
        "{log}"
    );
}
