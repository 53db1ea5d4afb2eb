//! The KV / stream layer against a real nats-server: provisioning is
//! idempotent and refuses an incompatible stream; the JetStream record store
//! and the in-memory one follow the same compare-and-swap rules.

use fleet_tests::NatsServer;
use registry_kv::provision::ProvisionError;
use registry_kv::{
    provision, EncodedRecord, JetStreamRecords, MemoryRecords, RecordStore, StoreError,
    StreamSettings,
};
use schemas::NodeRecord;
use subjects::Names;

fn record(id: &str, status: &str) -> NodeRecord {
    NodeRecord {
        node_id: id.to_owned(),
        status: status.to_owned(),
        ..NodeRecord::default()
    }
}

/// The CAS contract every RecordStore keeps.
async fn cas_contract(store: &impl RecordStore) {
    assert!(store.get("n1").await.expect("get").is_none());
    let r1 = store
        .create(&EncodedRecord::of(&record("n1", "online")))
        .await
        .expect("create");
    assert!(matches!(
        store
            .create(&EncodedRecord::of(&record("n1", "online")))
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let r2 = store
        .update(&EncodedRecord::of(&record("n1", "degraded")), r1)
        .await
        .expect("update at the right revision");
    assert!(r2 > r1);
    // A writer holding the old revision (a deposed leader) fails.
    assert!(matches!(
        store
            .update(&EncodedRecord::of(&record("n1", "online")), r1)
            .await,
        Err(StoreError::Conflict { .. })
    ));
    let current = store.get("n1").await.expect("get").expect("exists");
    assert_eq!(current.value.status, "degraded");
    assert_eq!(current.revision, r2);
    assert!(matches!(
        store.delete("n1", r1).await,
        Err(StoreError::Conflict { .. })
    ));
    store
        .delete("n1", r2)
        .await
        .expect("delete at the right revision");
    assert!(store.get("n1").await.expect("get").is_none());
    // A deleted key can be created again.
    store
        .create(&EncodedRecord::of(&record("n1", "online")))
        .await
        .expect("create after delete");
}

/// A fresh server with the registry's streams and buckets.
async fn provisioned() -> (NatsServer, registry_kv::Provisioned) {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let p = provision(&js, &Names::default(), &StreamSettings::default())
        .await
        .expect("provision");
    (server, p)
}

#[tokio::test]
async fn memory_records_keep_the_cas_contract() {
    cas_contract(&MemoryRecords::new()).await;
}

#[tokio::test]
async fn jetstream_records_keep_the_cas_contract() {
    let (_server, p) = provisioned().await;
    cas_contract(&JetStreamRecords::new(p.nodes)).await;
}

#[tokio::test]
async fn provisioning_is_idempotent_and_refuses_an_incompatible_stream() {
    let server = NatsServer::start().await;
    let js = async_nats::jetstream::new(server.client().await);
    let names = Names::default();
    let first = provision(&js, &names, &StreamSettings::default())
        .await
        .expect("first");
    first.nodes.put("kept", "x".into()).await.expect("put");
    let second = provision(&js, &names, &StreamSettings::default())
        .await
        .expect("second reuses");
    assert_eq!(
        second.nodes.get("kept").await.expect("get").as_deref(),
        Some(&b"x"[..])
    );
    let mut events = second.events.clone();
    let info = events.info().await.expect("info");
    assert_eq!(
        info.config.subjects,
        vec![subjects::NODE_EVENTS_FILTER.to_owned()]
    );
    assert_eq!(
        info.config.duplicate_window,
        std::time::Duration::from_secs(120)
    );

    let other = Names {
        events_stream: "OTHER".into(),
        ..Names::default()
    };
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "OTHER".into(),
        subjects: vec!["elsewhere.>".into()],
        ..Default::default()
    })
    .await
    .expect("a stream of the same name with other subjects");
    match provision(&js, &other, &StreamSettings::default()).await {
        Err(ProvisionError::Incompatible { name, .. }) => assert_eq!(name, "OTHER"),
        other => panic!("expected Incompatible, got {other:?}"),
    }
}

/// The read index compares its revision with the bucket's last sequence to
/// notice a watch that stalled; async-nats's `Store::status` answers with
/// the info cached when the bucket was opened, which never moves.
#[tokio::test]
async fn bucket_info_sees_writes_made_after_the_bucket_was_opened() {
    let (_server, p) = provisioned().await;
    let opened = registry_kv::watch::bucket_info(&p.nodes)
        .await
        .expect("info")
        .state
        .last_sequence;
    let mut last = 0;
    for key in ["a", "b", "c"] {
        last = p.nodes.put(key, "x".into()).await.expect("put");
    }
    let now = registry_kv::watch::bucket_info(&p.nodes)
        .await
        .expect("info")
        .state;
    assert_eq!(now.last_sequence, last);
    assert_eq!(now.last_sequence, opened + 3);
    assert_eq!(now.messages, 3);
}
