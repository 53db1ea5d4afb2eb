//! Regions on leaf nodes, with the configurations operators run
//! (`nats-config/leaf/`): a hub and two region sites, each site its own
//! JetStream domain with its own registry, and the hub's global view
//! (`node-registry --global-view eu,us`) sourcing both regions' `nodes`
//! buckets. Discovery at the hub answers across regions; a site cut off
//! from the hub is held as unreachable, with no degraded or offline alert
//! anywhere, keeps serving its own region, and comes back when the link
//! does.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use fleet_tests::link::CuttableLink;
use fleet_tests::{
    eventually, free_port, spawn_agent_on, spawn_registry_on, workspace_root, AlertTap, NatsServer,
    Proc,
};
use schemas::health::HealthReply;
use schemas::{DiscoverReply, DiscoverRequest};

/// Generous bound for anything that should happen "soon".
const SOON: Duration = Duration::from_secs(30);

/// A shipped leaf configuration as the harness runs it: the harness
/// includes the development accounts and sets the client port itself, the
/// hub's leaf-node port is `leaf_port`, and the hub does not advertise it
/// (a site would otherwise dial it directly, around the link the test
/// cuts, where a real WAN cut would take both).
fn leaf_config(file: &str, leaf_port: u16) -> String {
    let path = workspace_root().join("nats-config/leaf").join(file);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.starts_with("include ") && !l.starts_with("port:"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("127.0.0.1:7422", &format!("127.0.0.1:{leaf_port}"))
        .replace("leafnodes {", "leafnodes {\n  no_advertise: true")
}

struct Site {
    server: NatsServer,
    link: CuttableLink,
    _registry: Proc,
    agents: Vec<Proc>,
    ids: BTreeSet<String>,
}

async fn start_site(region: &str, hub_leaf: u16, dir: &std::path::Path) -> Site {
    let link = CuttableLink::start(hub_leaf).await;
    let server =
        NatsServer::start_with_config(&leaf_config(&format!("site-{region}.conf"), link.port()))
            .await;
    let name = format!("reg-{region}");
    let registry = spawn_registry_on(
        &server.url(),
        dir.join(format!("{name}.log")),
        &name,
        &["--degraded-after", "3s", "--offline-after", "60s"],
        &[
            ("NODE_REGISTRY_INSTANCE", name.as_str()),
            ("NODE_REGISTRY_SWEEP_INTERVAL", "200ms"),
            ("NODE_REGISTRY_CHECKPOINT_INTERVAL", "1s"),
        ],
    );
    let ids: BTreeSet<String> = (0..2).map(|i| format!("{region}-node-{i}")).collect();
    let agents = ids
        .iter()
        .map(|id| {
            spawn_agent_on(
                &server.url(),
                &dir.join(id),
                &[
                    "--node-id",
                    id,
                    "--labels",
                    &format!("region={region}"),
                    "--heartbeat-interval",
                    "500ms",
                    "--ollama-url",
                    "http://127.0.0.1:9",
                ],
            )
        })
        .collect();
    Site {
        server,
        link,
        _registry: registry,
        agents,
        ids,
    }
}

fn client(nats: async_nats::Client) -> fleet_client::Client {
    fleet_client::Client::new(nats, subjects::Names::default()).with_timeout(Duration::from_secs(2))
}

async fn discover(client: &fleet_client::Client) -> Option<DiscoverReply> {
    client.discover(&DiscoverRequest::default()).await.ok()
}

fn ids(reply: &DiscoverReply) -> BTreeSet<String> {
    reply.nodes.iter().map(|n| n.node_id.clone()).collect()
}

/// How the view says region `region` is.
async fn region_state(hub: &fleet_client::Client, region: &str) -> Option<String> {
    let replies: Vec<HealthReply> = hub.health().await.ok()?;
    replies
        .into_iter()
        .find(|h| h.instance == "hub-view")?
        .regions?
        .get(region)
        .cloned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hub_sees_both_regions_and_holds_a_cut_off_one_as_unreachable() {
    let dir = tempfile::tempdir().expect("temp dir");
    let hub_leaf = free_port();
    let hub = NatsServer::start_with_config(&leaf_config("hub.conf", hub_leaf)).await;
    let eu = start_site("eu", hub_leaf, dir.path()).await;
    let mut us = start_site("us", hub_leaf, dir.path()).await;
    let _view = spawn_registry_on(
        &hub.url(),
        dir.path().join("hub-view.log"),
        "hub-view",
        &["--global-view", "eu,us"],
        &[("NODE_REGISTRY_INSTANCE", "hub-view")],
    );
    let hub_nats = hub.client().await;
    let at_hub = client(hub_nats.clone());
    let at_us = client(us.server.client().await);
    let all: BTreeSet<String> = eu.ids.union(&us.ids).cloned().collect();

    // Discovery at the hub answers across regions, each node with its region.
    let reply = eventually("the hub to see both regions' nodes", SOON, || async {
        let reply = discover(&at_hub).await?;
        (ids(&reply) == all).then_some(reply)
    })
    .await;
    for node in &reply.nodes {
        let region = node.labels.get("region").map(String::as_str);
        let want = if eu.ids.contains(&node.node_id) {
            "eu"
        } else {
            "us"
        };
        assert_eq!(region, Some(want), "{}", node.node_id);
        assert_eq!(
            node.nats.as_ref().and_then(|l| l.domain.as_deref()),
            Some(want),
            "attached to its site's domain"
        );
    }
    assert!(reply.unreachable.is_empty(), "{:?}", reply.unreachable);
    // Discovery in a region answers for that region only.
    let regional = discover(&at_us).await.expect("discovery in us");
    assert_eq!(ids(&regional), us.ids);

    for region in ["eu", "us"] {
        eventually(&format!("the view to reach {region}"), SOON, || async {
            (region_state(&at_hub, region).await? == "reachable").then_some(())
        })
        .await;
    }

    let mut alerts_hub = AlertTap::new(&hub_nats).await;
    let mut alerts_eu = AlertTap::new(&eu.server.client().await).await;
    let mut alerts_us = AlertTap::new(&us.server.client().await).await;

    // Cut the us site off the hub.
    us.link.cut();
    let cut = Instant::now();
    eventually("the view to hold us as unreachable", SOON, || async {
        region_state(&at_hub, "us")
            .await
            .filter(|s| s.starts_with("unreachable"))
    })
    .await;
    println!(
        "us held as unreachable {:.1} s after the cut",
        cut.elapsed().as_secs_f64()
    );
    let reply = discover(&at_hub).await.expect("discovery at the hub");
    assert_eq!(
        ids(&reply),
        all,
        "the cut-off region's nodes are still listed"
    );
    let unreachable: BTreeSet<String> = reply.unreachable.iter().cloned().collect();
    assert_eq!(unreachable, us.ids, "and said to be out of reach");
    eventually("the view to still reach eu", SOON, || async {
        (region_state(&at_hub, "eu").await? == "reachable").then_some(())
    })
    .await;
    // The cut-off site keeps serving its region, its nodes online.
    let regional = discover(&at_us)
        .await
        .expect("discovery in us while cut off");
    assert_eq!(ids(&regional), us.ids);
    // A few degraded_after windows: nothing is judged anywhere.
    for tap in [&mut alerts_hub, &mut alerts_eu, &mut alerts_us] {
        tap.collect_for(Duration::from_secs(3)).await;
    }
    for (name, tap) in [("hub", &alerts_hub), ("eu", &alerts_eu), ("us", &alerts_us)] {
        let judged: Vec<_> = tap
            .seen
            .iter()
            .filter(|a| matches!(a.r#type.as_str(), "node.degraded" | "node.offline"))
            .collect();
        assert!(judged.is_empty(), "alerts at {name}: {judged:#?}");
    }

    // The link comes back: so does the region, and its records flow again.
    us.link.mend();
    eventually("the view to reach us again", SOON, || async {
        (region_state(&at_hub, "us").await? == "reachable").then_some(())
    })
    .await;
    let reply = discover(&at_hub).await.expect("discovery at the hub");
    assert!(reply.unreachable.is_empty(), "{:?}", reply.unreachable);
    assert_eq!(ids(&reply), all);
    // Sourcing resumed: a node the us registry now judges shows so at the hub.
    let mended = Instant::now();
    let gone = us.ids.iter().next().cloned().expect("a us node");
    us.agents.remove(0).kill9();
    eventually(
        &format!("{gone} degraded in the hub's view"),
        SOON,
        || async {
            let record = at_hub.get(&gone).await.ok()??;
            (record.status == "degraded").then_some(())
        },
    )
    .await;
    println!(
        "a us node's degraded record reached the hub {:.1} s after the link was mended",
        mended.elapsed().as_secs_f64()
    );
}
