//! Partitions of the event stream: `node.*.events` split by node id into N
//! shares, each consumed by the leader of its own lease.
//!
//! The split is done by nats-server itself, with the stream's subject
//! transform `node.*.events` → `node.<id>.events.<p>`, where
//! `p = partition(N, 1)` is the FNV-1a hash of the id token modulo N. The
//! agents publish on `node.<id>.events` as always; only what the stream
//! stores carries the partition token. With one partition (the default) no
//! transform is set and nothing on the wire changes.
//!
//! [`partition_of`] is the same hash, so the registry knows which share owns
//! a node's record without an event in hand (restores, operators' requests).

use crate::{NodeId, SubjectError, EVENTS_SUFFIX, NODE_PREFIX};

/// The most partitions the event stream may be split into.
pub const PARTITIONS_MAX: u32 = 64;

/// What the keys of registry instances' membership records start with, in
/// `registry_meta` (`member.<instance>`).
pub const MEMBER_PREFIX: &str = "member.";

/// The share of the fleet node `id` belongs to, out of `count`: the hash
/// nats-server's `partition(count, 1)` computes (32-bit FNV-1a of the id
/// token, modulo the count).
pub fn partition_of(id: &NodeId, count: u32) -> u32 {
    if count <= 1 {
        return 0;
    }
    let mut hash: u32 = 0x811c_9dc5;
    for byte in id.as_str().bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash % count
}

/// The destination of the event stream's subject transform for `count`
/// partitions (its source is [`crate::NODE_EVENTS_FILTER`]).
pub fn events_transform_destination(count: u32) -> String {
    format!("{NODE_PREFIX}.{{{{wildcard(1)}}}}.{EVENTS_SUFFIX}.{{{{partition({count},1)}}}}")
}

/// The subjects partition `p`'s events are stored under:
/// `node.*.events.<p>`.
pub fn partition_filter(p: u32) -> String {
    format!("{NODE_PREFIX}.*.{EVENTS_SUFFIX}.{p}")
}

/// The durable consumer of partition `p` out of `count`: `base` itself with
/// one partition (the contract's `registry`), `<base>-<p>` with more.
pub fn partition_consumer(base: &str, p: u32, count: u32) -> String {
    if count <= 1 {
        base.to_owned()
    } else {
        format!("{base}-{p}")
    }
}

/// The key of partition `p`'s lease in `registry_meta`: `leader` with one
/// partition, `leader.<p>` with more.
pub fn partition_lease_key(p: u32, count: u32) -> String {
    if count <= 1 {
        crate::meta_keys::LEADER.to_owned()
    } else {
        format!("{}.{p}", crate::meta_keys::LEADER)
    }
}

/// The key of instance `instance`'s membership record: `member.<instance>`,
/// with every character a KV key may not hold replaced by `_`.
pub fn member_key(instance: &str) -> String {
    let safe: String = instance
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '=') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{MEMBER_PREFIX}{safe}")
}

/// Where the leader of partition `p` takes operators' requests that
/// reached the leader of another (`registry.admin.partition.<p>`).
pub fn registry_admin_partition(p: u32) -> String {
    format!("{}.partition.{p}", crate::REGISTRY_ADMIN)
}

/// Where an event was stored: its node, and its partition when the stream
/// is partitioned (`node.<id>.events.<p>`; `None` for `node.<id>.events`).
pub fn parse_stored_node_events(subject: &str) -> Result<(NodeId, Option<u32>), SubjectError> {
    let not_node = || SubjectError::NotANodeSubject {
        subject: subject.chars().take(128).collect(),
        expected: EVENTS_SUFFIX,
    };
    let mut tokens = subject.split('.');
    let (Some(prefix), Some(id), Some(suffix)) = (tokens.next(), tokens.next(), tokens.next())
    else {
        return Err(not_node());
    };
    if prefix != NODE_PREFIX || suffix != EVENTS_SUFFIX {
        return Err(not_node());
    }
    let partition = match (tokens.next(), tokens.next()) {
        (None, _) => None,
        (Some(p), None) => Some(p.parse::<u32>().map_err(|_| not_node())?),
        (Some(_), Some(_)) => return Err(not_node()),
    };
    Ok((NodeId::parse(id)?, partition))
}

/// The filters that find stored events of node `id` (every node's with
/// `None`), whether or not the stream is partitioned.
pub fn stored_events_filters(id: Option<&NodeId>) -> Vec<String> {
    let token = id.map_or("*", NodeId::as_str);
    vec![
        format!("{NODE_PREFIX}.{token}.{EVENTS_SUFFIX}"),
        format!("{NODE_PREFIX}.{token}.{EVENTS_SUFFIX}.*"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).expect("id")
    }

    #[test]
    fn one_partition_keeps_the_contracts_names() {
        assert_eq!(partition_of(&id("gpu-1"), 1), 0);
        assert_eq!(partition_consumer("registry", 0, 1), "registry");
        assert_eq!(partition_lease_key(0, 1), "leader");
        assert_eq!(partition_consumer("registry", 3, 4), "registry-3");
        assert_eq!(partition_lease_key(3, 4), "leader.3");
    }

    #[test]
    fn the_hash_is_fnv1a_modulo_the_count() {
        // FNV-1a("a") = 0xe40c292c; of "" it is the offset basis.
        assert_eq!(partition_of(&id("a"), 1 << 31), 0xe40c_292c % (1 << 31));
        let spread: std::collections::HashSet<u32> = (0..200)
            .map(|i| partition_of(&id(&format!("node-{i}")), 4))
            .collect();
        assert_eq!(spread.len(), 4, "200 ids land in every one of 4 partitions");
    }

    #[test]
    fn stored_subjects_parse_with_or_without_a_partition() {
        assert_eq!(
            parse_stored_node_events("node.gpu-1.events"),
            Ok((id("gpu-1"), None))
        );
        assert_eq!(
            parse_stored_node_events("node.gpu-1.events.3"),
            Ok((id("gpu-1"), Some(3)))
        );
        for bad in [
            "node.gpu-1.events.x",
            "node.gpu-1.events.3.4",
            "node.gpu-1.tasks",
            "node.GPU.events",
            "node.gpu-1",
        ] {
            assert!(parse_stored_node_events(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_transform_names_the_partition_function() {
        assert_eq!(
            events_transform_destination(4),
            "node.{{wildcard(1)}}.events.{{partition(4,1)}}"
        );
        assert_eq!(partition_filter(2), "node.*.events.2");
        assert_eq!(member_key("reg a/1"), "member.reg_a_1");
    }
}
