//! Discovery end to end: selectors, paging, projections, revisions, replies
//! that fit the server's max payload, and the client's watch and stale
//! fallback.

use std::time::Duration;

use fleet_client::{Client, SelectorChange};
use fleet_tests::{eventually, registry_client, spawn_registry, wait_registry, NatsServer, Proc};
use futures::StreamExt;
use schemas::codec::{encode, Encoding};
use schemas::{Capabilities, DiscoverRequest, NodeEvent};

const SOON: Duration = Duration::from_secs(20);

fn registry(server: &NatsServer) -> Proc {
    spawn_registry(server, "registry", &[], &[])
}

fn register(id: &str, labels: &[(&str, &str)], tags: &[&str], models: &[&str]) -> NodeEvent {
    NodeEvent {
        r#type: "register".into(),
        node_id: id.into(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        capabilities: Some(Capabilities {
            tags: tags.iter().map(|t| (*t).into()).collect(),
            models: models.iter().map(|m| (*m).into()).collect(),
            ram_gb: 64.0,
            ..Capabilities::default()
        }),
        ..NodeEvent::default()
    }
}

/// Publishes events straight into NODE_EVENTS, as agents would.
async fn publish_all(server: &NatsServer, events: &[NodeEvent]) {
    let js = async_nats::jetstream::new(server.client().await);
    let mut acks = Vec::new();
    for event in events {
        let subject = format!("node.{}.events", event.node_id);
        acks.push(
            js.publish(subject, encode(event, Encoding::Json).into())
                .await
                .expect("publish"),
        );
    }
    for ack in acks {
        ack.await.expect("stored");
    }
}

async fn wait_total(client: &Client, json: &str, n: u64) {
    eventually(&format!("{n} matches for {json}"), SOON, || async {
        let request: DiscoverRequest = serde_json::from_str(json).expect("json");
        client
            .list(&request)
            .await
            .ok()
            .filter(|r| r.total == n)
            .map(|_| ())
    })
    .await;
}

async fn ids(client: &Client, json: &str) -> Vec<String> {
    let request: DiscoverRequest = serde_json::from_str(json).expect("json");
    let mut ids: Vec<String> = client
        .discover(&request)
        .await
        .expect("discover answers")
        .nodes
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    ids.sort();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_models_and_bad_selectors() {
    let server = NatsServer::start().await;
    let _registry = registry(&server);
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    publish_all(
        &server,
        &[
            register(
                "a",
                &[("region", "eu"), ("tier", "edge")],
                &["gpu", "nvidia"],
                &["qwen3:8b"],
            ),
            register(
                "b",
                &[("region", "us")],
                &["gpu"],
                &["qwen3:8b", "mistral:7b"],
            ),
            register(
                "c",
                &[("region", "eu"), ("spot", "true")],
                &[],
                &["mistral:7b"],
            ),
        ],
    )
    .await;
    wait_total(&client, "{}", 3).await;
    assert_eq!(
        ids(
            &client,
            r#"{"selector":"gpu,region in (eu,us),tier!=edge,!spot"}"#
        )
        .await,
        vec!["b"]
    );
    assert_eq!(
        ids(&client, r#"{"selector":"region=eu"}"#).await,
        vec!["a", "c"]
    );
    assert_eq!(ids(&client, r#"{"selector":"!gpu"}"#).await, vec!["c"]);
    assert_eq!(
        ids(&client, r#"{"models_all":["qwen3:8b","mistral:7b"]}"#).await,
        vec!["b"]
    );
    assert_eq!(
        ids(&client, r#"{"models_any":["mistral:7b"]}"#).await,
        vec!["b", "c"]
    );
    let first = client
        .discover(
            &serde_json::from_str(r#"{"prefer_labels":{"region":"us"},"sort":"node_id"}"#)
                .expect("json"),
        )
        .await
        .expect("discover");
    assert_eq!(first.nodes[0].node_id, "b");

    let reply = client
        .request_raw(
            subjects::REGISTRY_DISCOVER,
            r#"{"selector":"region in (eu,us"}"#.into(),
        )
        .await
        .expect("a reply");
    let error = fleet_client::service_error(&reply).expect("a coded error");
    assert_eq!(error.code, 400);
    assert!(error.message.contains("position 16"), "{}", error.message);
    assert!(
        error.message.contains("expected ',' or ')'"),
        "{}",
        error.message
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_pages_with_a_cursor_and_replies_fit_the_max_payload() {
    // A small max payload, so a large reply must be cut.
    let server = NatsServer::start_with_config("max_payload: 65536").await;
    let _registry = registry(&server);
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    let events: Vec<NodeEvent> = (0..600)
        .map(|i| {
            let mut e = register(
                &format!("n{i:04}"),
                &[("rack", &format!("r{}", i % 7))],
                &["gpu"],
                &["qwen3:8b"],
            );
            e.node_name = Some("x".repeat(100));
            e
        })
        .collect();
    publish_all(&server, &events).await;
    wait_total(&client, r#"{"status":"any"}"#, 600).await;

    // One request for all 600 would be ~250 KiB: it is cut, not refused.
    let big = client
        .list(&serde_json::from_str(r#"{"limit":10000}"#).expect("json"))
        .await
        .expect("a cut reply, not an error");
    assert_eq!(big.truncated, Some(true));
    assert!(!big.nodes.is_empty() && big.nodes.len() < 600);
    assert!(big.next_cursor.is_some());

    let all = client
        .list_all(&serde_json::from_str(r#"{"limit":10000}"#).expect("json"))
        .await
        .expect("pages");
    let got: Vec<String> = all.iter().map(|n| n.node_id.clone()).collect();
    let want: Vec<String> = (0..600).map(|i| format!("n{i:04}")).collect();
    assert_eq!(got, want, "every node exactly once, in order");

    // Small replies by projection: ids and labels only.
    let reply = client
        .request_raw(
            subjects::REGISTRY_DISCOVER,
            r#"{"fields":["labels"],"limit":3,"sort":"node_id"}"#.into(),
        )
        .await
        .expect("reply");
    let value: serde_json::Value = serde_json::from_slice(&reply.payload).expect("json");
    let node = &value["nodes"][0];
    assert_eq!(node.as_object().map(|o| o.len()), Some(2), "{node}");
    assert_eq!(node["node_id"], "n0000");
    assert_eq!(node["labels"]["rack"], "r0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_carry_the_revision_and_min_revision_reads_your_writes() {
    let server = NatsServer::start().await;
    let _registry = registry(&server);
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    publish_all(&server, &[register("a", &[], &[], &[])]).await;
    wait_total(&client, "{}", 1).await;
    let before = client
        .discover(&DiscoverRequest::default())
        .await
        .expect("discover");
    assert!(before.revision > 0);
    let reply = client
        .request_raw(subjects::REGISTRY_GET, r#"{"node_id":"a"}"#.into())
        .await
        .expect("get");
    let header = reply
        .headers
        .as_ref()
        .and_then(|h| h.get("Registry-Revision"))
        .map(|v| v.to_string());
    assert_eq!(header, Some(before.revision.to_string()));

    // Write a record change ourselves, then ask for at least its revision.
    let js = async_nats::jetstream::new(server.client().await);
    let kv = js
        .get_key_value(subjects::BUCKET_NODES)
        .await
        .expect("bucket");
    let mut record = client.get("a").await.expect("get").expect("a");
    record.labels.insert("written".into(), "by-test".into());
    let revision = kv
        .put("a", encode(&record, Encoding::Json).into())
        .await
        .expect("put");
    let request = DiscoverRequest {
        min_revision: Some(revision),
        selector: Some("written=by-test".into()),
        ..DiscoverRequest::default()
    };
    let reply = client
        .discover(&request)
        .await
        .expect("answers once caught up");
    assert!(reply.revision >= revision);
    assert_eq!(reply.nodes.len(), 1);

    let too_new = DiscoverRequest {
        min_revision: Some(revision + 1_000_000),
        ..DiscoverRequest::default()
    };
    match client.discover(&too_new).await {
        Err(fleet_client::ClientError::Service(e)) => {
            assert_eq!(e.code, 503);
            assert!(e.message.contains("min_revision"), "{}", e.message);
        }
        other => panic!("expected a 503, got {other:?}"),
    }
}

async fn next_change<S>(changes: &mut S) -> SelectorChange
where
    S: futures::Stream<Item = Result<SelectorChange, fleet_client::ClientError>> + Unpin,
{
    tokio::time::timeout(SOON, changes.next())
        .await
        .expect("a change in time")
        .expect("the watch goes on")
        .expect("no watch error")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_watches_a_selector_and_falls_back_to_stale_answers() {
    let server = NatsServer::start().await;
    let mut registry = registry(&server);
    let client = registry_client(&server).await.with_stale_fallback();
    wait_registry(&client).await;
    publish_all(&server, &[register("a", &[("region", "eu")], &[], &[])]).await;
    wait_total(&client, "{}", 1).await;

    let mut changes = Box::pin(client.watch_selector("region=eu").await.expect("watch"));
    assert!(
        matches!(next_change(&mut changes).await, SelectorChange::Added(r) if r.node_id == "a")
    );
    publish_all(
        &server,
        &[
            register("b", &[("region", "us")], &[], &[]),
            register("c", &[("region", "eu")], &[], &[]),
        ],
    )
    .await;
    assert!(
        matches!(next_change(&mut changes).await, SelectorChange::Added(r) if r.node_id == "c")
    );
    publish_all(&server, &[register("a", &[("region", "us")], &[], &[])]).await;
    assert!(matches!(next_change(&mut changes).await, SelectorChange::Removed(id) if id == "a"));

    // Stale fallback: the last answer, marked stale, once no registry answers.
    let fresh = client
        .discover(&DiscoverRequest::default())
        .await
        .expect("fresh");
    assert_eq!(fresh.stale, None);
    registry.kill9();
    let stale = client
        .discover(&DiscoverRequest::default())
        .await
        .expect("stale answer");
    assert_eq!(stale.stale, Some(true));
    assert_eq!(stale.nodes, fresh.nodes);
    let plain = registry_client(&server).await;
    assert!(matches!(
        plain.discover(&DiscoverRequest::default()).await,
        Err(fleet_client::ClientError::NoRegistry(_))
    ));
}

/// The value of the one series of counter `name` the registry serving
/// metrics at `addr` exports.
async fn scraped(addr: &str, name: &str) -> f64 {
    let url = format!("http://{addr}/metrics");
    eventually(&format!("{name} at {url}"), SOON, || {
        let url = url.clone();
        async move {
            let body = tokio::task::spawn_blocking(move || {
                ureq::get(&url)
                    .call()
                    .ok()?
                    .body_mut()
                    .read_to_string()
                    .ok()
            })
            .await
            .ok()??;
            body.lines()
                .find(|l| l.split([' ', '{']).next() == Some(name))
                .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        }
    })
    .await
}

/// Waits until `registry`'s log has a line holding every one of `parts`.
async fn logged(registry: &Proc, parts: &[&str]) -> String {
    eventually(&format!("a log line with {parts:?}"), SOON, || async {
        registry
            .log()
            .lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_owned)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_loads_the_index_snapshot_and_replays_only_what_came_after() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let often = [("NODE_REGISTRY_INDEX_SNAPSHOT_INTERVAL", "1s")];
    let mut first = spawn_registry(&server, "registry-a", &[], &often);
    let client = registry_client(&server).await;
    wait_registry(&client).await;
    let events: Vec<NodeEvent> = (0..40)
        .map(|i| register(&format!("n-{i}"), &[("zone", "a")], &["gpu"], &[]))
        .collect();
    publish_all(&server, &events).await;
    wait_total(&client, r#"{"selector":"zone=a"}"#, 40).await;

    // The leader writes a snapshot of everything the bucket holds.
    let nodes = js
        .get_key_value(subjects::BUCKET_NODES)
        .await
        .expect("nodes bucket");
    let snapshots = js
        .get_object_store(subjects::BUCKET_INDEX_SNAPSHOTS)
        .await
        .expect("snapshot bucket");
    eventually("a snapshot at the bucket's last revision", SOON, || async {
        let last = registry_kv::watch::bucket_info(&nodes)
            .await
            .ok()?
            .state
            .last_sequence;
        let info = snapshots.info(subjects::BUCKET_NODES).await.ok()?;
        let revision: u64 = info.metadata.get("revision")?.parse().ok()?;
        (revision == last && info.metadata.get("records")? == "40").then_some(())
    })
    .await;
    first
        .terminate(Duration::from_secs(15))
        .await
        .expect("the registry stops");

    // After the snapshot, while no registry runs: one record changed, one
    // deleted, one added (a copy of another under a new id).
    let record = |id: &'static str| {
        let nodes = nodes.clone();
        async move {
            let bytes = nodes.get(id).await.expect("get").expect("stored");
            serde_json::from_slice::<serde_json::Value>(&bytes).expect("a record")
        }
    };
    let mut moved = record("n-0").await;
    moved["labels"]["zone"] = "b".into();
    nodes
        .put("n-0", serde_json::to_vec(&moved).expect("JSON").into())
        .await
        .expect("put");
    nodes.delete("n-1").await.expect("delete");
    let mut added = record("n-2").await;
    added["node_id"] = "n-new".into();
    nodes
        .put("n-new", serde_json::to_vec(&added).expect("JSON").into())
        .await
        .expect("put");

    let metrics = format!("127.0.0.1:{}", fleet_tests::free_port());
    let second = spawn_registry(&server, "registry-b", &["--metrics-addr", &metrics], &often);
    wait_registry(&client).await;
    let read = logged(&second, &["index snapshot read", "records=40"]).await;
    assert!(read.contains("behind=3"), "{read}");
    logged(
        &second,
        &["read index loaded", "from_snapshot=true", "nodes=40"],
    )
    .await;
    wait_total(&client, r#"{"selector":"zone=a"}"#, 39).await;
    assert_eq!(ids(&client, r#"{"selector":"zone=b"}"#).await, vec!["n-0"]);
    assert!(client.get("n-1").await.expect("get answers").is_none());
    assert!(client.get("n-new").await.expect("get answers").is_some());
    // And its metrics say so.
    assert_eq!(
        scraped(&metrics, "registry_index_snapshot_loads_total").await,
        1.0
    );
    assert_eq!(
        scraped(&metrics, "registry_index_snapshot_refused_total").await,
        0.0
    );
    drop(second);

    // Bytes that are not a snapshot are said, and the bucket is read whole.
    snapshots
        .put(
            subjects::BUCKET_NODES,
            &mut &b"not a snapshot at all, though long enough for a header"[..],
        )
        .await
        .expect("put garbage");
    let mut third = spawn_registry(&server, "registry-c", &[], &often);
    wait_registry(&client).await;
    logged(&third, &["index snapshot not used", "bad magic"]).await;
    logged(&third, &["read index loaded", "from_snapshot=false"]).await;
    wait_total(&client, r#"{"selector":"zone=a"}"#, 39).await;
    assert_eq!(ids(&client, r#"{"selector":"zone=b"}"#).await, vec!["n-0"]);

    // A snapshot of a bucket deleted since is not used: its records went
    // with the bucket.
    logged(&third, &["index snapshot written", "records=40"]).await;
    third
        .terminate(Duration::from_secs(15))
        .await
        .expect("the registry stops");

    // A snapshot in the format of earlier builds (records only, stored
    // uncompressed) still loads, its records indexed from their JSON.
    let earlier = records_only_snapshot(&nodes).await;
    snapshots
        .put(subjects::BUCKET_NODES, &mut &earlier[..])
        .await
        .expect("put the earlier format");
    let mut fifth = spawn_registry(&server, "registry-e", &[], &[]);
    wait_registry(&client).await;
    logged(
        &fifth,
        &["index snapshot read", "version=1", "records=40", "behind=0"],
    )
    .await;
    wait_total(&client, r#"{"selector":"zone=a"}"#, 39).await;
    assert_eq!(ids(&client, r#"{"selector":"zone=b"}"#).await, vec!["n-0"]);
    fifth
        .terminate(Duration::from_secs(15))
        .await
        .expect("the registry stops");
    js.delete_key_value(subjects::BUCKET_NODES)
        .await
        .expect("delete the nodes bucket");
    let fourth = spawn_registry(&server, "registry-d", &[], &[]);
    wait_registry(&client).await;
    logged(
        &fourth,
        &["index snapshot not used", "of a bucket created at"],
    )
    .await;
    wait_total(&client, r#"{"status":"any"}"#, 0).await;
}

/// The `nodes` bucket as a snapshot of the format earlier builds wrote
/// (version 1: each record's JSON with its revision, nothing derived).
async fn records_only_snapshot(nodes: &async_nats::jetstream::kv::Store) -> Vec<u8> {
    use node_registry::index::snapshot::created_ns;
    use node_registry::index::snapshot_format::{Encoder, Header, VERSION_RECORDS_ONLY};
    use tokio::io::AsyncReadExt;
    let info = registry_kv::watch::bucket_info(nodes)
        .await
        .expect("the bucket answers");
    let mut keys = nodes.keys().await.expect("keys");
    let mut slots = Vec::new();
    while let Some(key) = keys.next().await {
        let key = key.expect("a key");
        let entry = nodes.entry(&key).await.expect("entry").expect("stored");
        slots.push(Some(registry_core::catalog::ImageSlot {
            value: entry.value,
            revision: entry.revision,
            meta: bytes::Bytes::new(),
        }));
    }
    let header = Header {
        version: VERSION_RECORDS_ONLY,
        layout: 0,
        ..Header::new(
            created_ns(info.created),
            info.state.last_sequence,
            slots.len() as u64,
        )
    };
    let mut bytes = Vec::new();
    Encoder::new(header, slots, bytes::Bytes::new())
        .read_to_end(&mut bytes)
        .await
        .expect("in memory");
    bytes
}
