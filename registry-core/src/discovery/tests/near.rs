//! `near`: nearest first, by tier and measured round trip, with an estimate.

use super::*;
use schemas::NatsLink;

fn attached(id: &str, link: Option<(&str, Option<&str>, Option<&str>, f64)>) -> NodeRecord {
    let mut record = node(id, "online", Some(10.0));
    record.nats = link.map(|(server, cluster, domain, rtt)| NatsLink {
        server: server.into(),
        cluster: cluster.map(Into::into),
        domain: domain.map(Into::into),
        rtt_ms: Some(rtt),
    });
    record
}

/// Two servers of cluster c1 at the hub, a leaf server in domain eu, and a
/// node that never said where it is.
fn topology() -> Vec<NodeRecord> {
    let mut leaf = attached("leaf-1", Some(("leaf-eu", None, Some("eu"), 0.3)));
    leaf.labels.insert("region".into(), "eu".into());
    vec![
        attached("hub-1a", Some(("n1", Some("c1"), Some("hub"), 0.5))),
        attached("hub-1b", Some(("n1", Some("c1"), Some("hub"), 0.2))),
        attached("hub-2a", Some(("n2", Some("c1"), Some("hub"), 0.1))),
        leaf,
        attached("unknown", None),
    ]
}

/// [`agree`] over the topology.
fn near(json: &str) -> DiscoverReply {
    agree(&topology(), json)
}

#[test]
fn near_me_ranks_my_server_then_my_cluster_then_my_region_then_the_rest() {
    let reply = near(
        r#"{"near":"me","requester":{"server":"n1","cluster":"c1","domain":"hub","rtt_ms":0.4}}"#,
    );
    assert_eq!(
        ids(&reply),
        ["hub-1b", "hub-1a", "hub-2a", "leaf-1", "unknown"]
    );
    // Two round trips to the servers, plus a hop per tier; an unknown
    // round trip counts 1 ms. The leaf is in another domain: elsewhere.
    assert_eq!(reply.latency_ms, [0.6, 0.9, 1.5, 50.7, 51.4]);
}

#[test]
fn near_a_name_places_the_requester_on_a_server_a_cluster_or_a_region() {
    // A server: its own nodes, then its cluster's.
    assert_eq!(
        ids(&near(r#"{"near":"n2"}"#)),
        ["hub-2a", "hub-1b", "hub-1a", "leaf-1", "unknown"]
    );
    // A cluster: all of its servers' nodes, by round trip.
    assert_eq!(
        ids(&near(r#"{"near":"c1"}"#)),
        ["hub-2a", "hub-1b", "hub-1a", "leaf-1", "unknown"]
    );
    // A region (domain or region label).
    let eu = near(r#"{"near":"eu"}"#);
    assert_eq!(ids(&eu)[0], "leaf-1");
    assert_eq!(eu.latency_ms[0], 10.3);
    // Other filters still apply, and the limit keeps the nearest.
    assert_eq!(
        ids(&near(r#"{"near":"n1","limit":2}"#)),
        ["hub-1b", "hub-1a"]
    );
    // Without near, no estimates.
    assert!(near("{}").latency_ms.is_empty());
}

#[test]
fn near_is_checked() {
    let refused = |json: &str| {
        Query::from_request(request(json), StatusFilter::Online, SortOrder::LeastLoaded)
            .expect_err(json)
            .to_string()
    };
    assert!(refused(r#"{"near":"me"}"#).contains("requester"));
    assert!(refused(r#"{"requester":{"server":"n1"}}"#).contains("requester"));
    assert!(refused(r#"{"near":"n1","fit":{"vram_gb":8}}"#).contains("fit"));
    assert!(refused(r#"{"near":"n1","sort":"node_id","cursor":"a"}"#).contains("cursor"));
    assert!(refused(r#"{"near":" "}"#).contains("near"));
    assert!(refused(r#"{"near":"me","requester":{"server":"n1","rtt_ms":-1}}"#).contains("rtt_ms"));
}
