//! Every name on the wire of the fleet registry, in one place.
//!
//! Subjects, stream, bucket and consumer names are spelled here and nowhere
//! else (DESIGN principle 1). Callers build subjects with the functions below
//! and parse inbound subjects back into a validated [`NodeId`], so a subject
//! that does not follow the contract is rejected at the edge.
//!
//! The tour:
//! - [`NodeId`]: the validated node identifier, one subject token.
//! - [`node_events`], [`node_tasks`], [`parse_node_events`]: per-node subjects.
//! - [`REGISTRY_DISCOVER`], [`REGISTRY_GET`], [`REGISTRY_LIST`],
//!   [`SYSTEM_BROADCAST`]: fixed subjects.
//! - [`Names`]: stream, bucket and consumer names, with the contract's
//!   defaults and room to configure them (tests use their own).
//! - [`meta_keys`]: the keys of the `registry_meta` bucket.
//! - [`partition_of`] and its kin: the event stream split by node id.
//! - [`SYS_CLAIMS_UPDATE`], [`sys_server_connz`]: the server's system
//!   subjects the tools use.
#![deny(missing_docs)]

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

mod partition;

pub use partition::{
    events_transform_destination, member_key, parse_stored_node_events, partition_consumer,
    partition_filter, partition_lease_key, partition_of, registry_admin_partition,
    stored_events_filters, MEMBER_PREFIX, PARTITIONS_MAX,
};

/// Prefix token of every per-node subject.
const NODE_PREFIX: &str = "node";
/// Last token of a node's event subject.
const EVENTS_SUFFIX: &str = "events";
/// Last token of a node's task subject.
const TASKS_SUFFIX: &str = "tasks";

/// Subject filter of every node's events: the subject of stream `NODE_EVENTS`.
pub const NODE_EVENTS_FILTER: &str = "node.*.events";
/// Subject filter of every node's task subject (used by broadcasts of tasks).
pub const NODE_TASKS_FILTER: &str = "node.*.tasks";
/// Discovery query: online nodes matching a filter.
pub const REGISTRY_DISCOVER: &str = "registry.discover";
/// One node by id.
pub const REGISTRY_GET: &str = "registry.get";
/// Like discover, but any status by default.
pub const REGISTRY_LIST: &str = "registry.list";
/// Alerts: lifecycle transitions and registry conditions.
pub const SYSTEM_BROADCAST: &str = "system.broadcast";

/// Name of the NATS micro service that answers discovery (`$SRV.*.registry`).
pub const SERVICE_NAME: &str = "registry";
/// Queue group of the discovery endpoints: any registry instance answers.
pub const SERVICE_QUEUE_GROUP: &str = "registry";
/// Endpoint name of [`REGISTRY_DISCOVER`] in the service's info and stats.
pub const ENDPOINT_DISCOVER: &str = "discover";
/// Endpoint name of [`REGISTRY_GET`].
pub const ENDPOINT_GET: &str = "get";
/// Every registry request subject (`registry.discover`, `.get`, `.list`,
/// `.join`, `.admin`).
pub const REGISTRY_FILTER: &str = "registry.>";
/// Admin requests to the leader: cordon, uncordon, deregister a node
/// (`{"op":"cordon","node_id":"..."}`); people with the admin role only.
pub const REGISTRY_ADMIN: &str = "registry.admin";
/// Join: a machine exchanges a join token for its node credentials.
pub const REGISTRY_JOIN: &str = "registry.join";
/// Subject every registry instance answers with its health (no queue
/// group: a request gathers one answer per instance).
pub const REGISTRY_HEALTH: &str = "registry.health";
/// Endpoint name of [`REGISTRY_JOIN`].
pub const ENDPOINT_JOIN: &str = "join";
/// Endpoint name of [`REGISTRY_LIST`].
pub const ENDPOINT_LIST: &str = "list";

/// The server's advisories of client connections opening, in any account
/// (imported from the system account; see `nats-config/accounts.conf`).
pub const ACCOUNT_CONNECT_EVENTS: &str = "$SYS.ACCOUNT.*.CONNECT";
/// The server's advisories of client connections closing, in any account.
pub const ACCOUNT_DISCONNECT_EVENTS: &str = "$SYS.ACCOUNT.*.DISCONNECT";

/// JetStream's advisories of a stream electing a new leader (clustered
/// servers), in the registry's own account.
pub const STREAM_LEADER_ELECTED_ADVISORIES: &str = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.*";

/// Default name of the stream holding every node event.
pub const STREAM_NODE_EVENTS: &str = "NODE_EVENTS";
/// Default name of the stream holding every alert.
pub const STREAM_ALERTS: &str = "ALERTS";
/// Default name of the KV bucket with one record per node.
pub const BUCKET_NODES: &str = "nodes";
/// Default name of the KV bucket with registry-wide state (leader lease).
pub const BUCKET_REGISTRY_META: &str = "registry_meta";
/// Default name of the object store bucket holding snapshots of the
/// registry's read index, one object per `nodes` bucket (named after it): a
/// cold start loads one and catches up from the KV revision it was taken at.
pub const BUCKET_INDEX_SNAPSHOTS: &str = "registry_snapshots";
/// Default name of the registry's durable pull consumer on `NODE_EVENTS`.
pub const CONSUMER_REGISTRY: &str = "registry";
/// Default name of the stream that keeps every node's registrations and
/// deregistrations long after `NODE_EVENTS` let them go (the audit of
/// lifecycle at any fleet size).
pub const STREAM_NODE_LIFECYCLE: &str = "NODE_LIFECYCLE";
/// What [`STREAM_NODE_LIFECYCLE`] holds: the registry's copies of the
/// `register` and `deregister` events it applied, one subject per node.
pub const NODE_LIFECYCLE_FILTER: &str = "registry.audit.*";
/// Header of a lifecycle copy: the server's receive time of the original
/// event (RFC 3339).
pub const HEADER_RECEIVED: &str = "Fleet-Received";

/// The subject of node `id`'s lifecycle copies.
pub fn node_lifecycle(id: &NodeId) -> String {
    format!("registry.audit.{id}")
}

/// The KV bucket with one configuration profile per role (key = role).
/// Not configurable: agents and credentials name it.
pub const BUCKET_PROFILES: &str = "profiles";
/// Longest role name, in bytes.
pub const ROLE_MAX_LEN: usize = 63;

/// Whether `role` can name a profile: `^[a-z0-9][a-z0-9_-]{0,62}$`, one
/// subject token and one KV key (a role outside this syntax has none).
pub fn is_role_name(role: &str) -> bool {
    !role.is_empty()
        && role.len() <= ROLE_MAX_LEN
        && role.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && role
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The subject of role `role`'s profile values in the `profiles` bucket.
pub fn profile_subject(role: &str) -> String {
    kv_key_subject(BUCKET_PROFILES, role)
}

/// Alert types on [`SYSTEM_BROADCAST`]. They are names of the contract that
/// look like subjects, so they are spelled here too.
pub mod alert_types {
    /// A node the registry did not know registered.
    pub const NODE_REGISTERED: &str = "node.registered";
    /// A degraded or offline node is back.
    pub const NODE_ONLINE: &str = "node.online";
    /// A node missed heartbeats for `degraded_after`.
    pub const NODE_DEGRADED: &str = "node.degraded";
    /// A node missed heartbeats for `offline_after`.
    pub const NODE_OFFLINE: &str = "node.offline";
    /// A node deregistered.
    pub const NODE_DEREGISTERED: &str = "node.deregistered";
    /// A node was put into maintenance (drained or cordoned).
    pub const NODE_MAINTENANCE: &str = "node.maintenance";
    /// A node left maintenance: resumed by an operator or at its deadline.
    pub const NODE_RESUMED: &str = "node.resumed";
    /// A node could not apply its role's profile (it keeps its last good one).
    pub const NODE_PROFILE_FAILED: &str = "node.profile_failed";
    /// A node lacks models its role's profile expects.
    pub const NODE_PROFILE_MISMATCH: &str = "node.profile_mismatch";
    /// An operator took one GPU of a node out of service.
    pub const GPU_CORDONED: &str = "gpu.cordoned";
    /// An operator put a cordoned GPU back in service.
    pub const GPU_UNCORDONED: &str = "gpu.uncordoned";
    /// A GPU failed and is out of service (quarantined).
    pub const GPU_UNHEALTHY: &str = "gpu.unhealthy";
    /// A quarantined GPU stayed healthy for the recovery time and is back.
    pub const GPU_HEALTHY: &str = "gpu.healthy";
    /// The registry suspects itself (entered / left).
    pub const REGISTRY_SELF_PRESERVATION: &str = "registry.self_preservation";
    /// The event stream discarded events before the registry read them
    /// (its limits were reached while the registry lagged).
    pub const REGISTRY_EVENTS_LOST: &str = "registry.events_lost";
    /// The event stream holds less history than the configured minimum at
    /// the current event rate (entered, or left).
    pub const REGISTRY_HISTORY_SHORT: &str = "registry.history_short";
    /// The registry lost its records and asks every node to register again
    /// (agents listening on `system.broadcast` do, after a random delay).
    pub const REGISTRY_REANNOUNCE: &str = "registry.reannounce";
}

/// Longest node id, in bytes.
pub const NODE_ID_MAX_LEN: usize = 63;

/// Stream, bucket and consumer names, configurable as a whole.
///
/// The defaults are the contract's names; tests and side-by-side deployments
/// may pick others. Subjects are not configurable: they are the contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Names {
    /// Stream of node events (default `NODE_EVENTS`).
    pub events_stream: String,
    /// Stream of alerts (default `ALERTS`).
    pub alerts_stream: String,
    /// KV bucket of node records (default `nodes`).
    pub nodes_bucket: String,
    /// KV bucket of registry-wide state (default `registry_meta`).
    pub meta_bucket: String,
    /// Durable consumer of the registry on the events stream (default `registry`).
    pub consumer: String,
    /// Stream of the registry's copies of registrations and deregistrations
    /// (default `NODE_LIFECYCLE`).
    pub lifecycle_stream: String,
    /// Object store bucket of read index snapshots (default
    /// `registry_snapshots`).
    pub snapshots_bucket: String,
}

impl Default for Names {
    fn default() -> Self {
        Self {
            events_stream: STREAM_NODE_EVENTS.to_owned(),
            alerts_stream: STREAM_ALERTS.to_owned(),
            nodes_bucket: BUCKET_NODES.to_owned(),
            meta_bucket: BUCKET_REGISTRY_META.to_owned(),
            consumer: CONSUMER_REGISTRY.to_owned(),
            lifecycle_stream: STREAM_NODE_LIFECYCLE.to_owned(),
            snapshots_bucket: BUCKET_INDEX_SNAPSHOTS.to_owned(),
        }
    }
}

/// A node identifier: `^[a-z0-9][a-z0-9-]{0,62}$`, one subject token.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeId(String);

/// Why a string is not a node id, or a subject is not a node subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubjectError {
    /// The id is empty.
    #[error("node id is empty")]
    EmptyId,
    /// The id is longer than [`NODE_ID_MAX_LEN`].
    #[error("node id is {len} bytes long, at most {NODE_ID_MAX_LEN} allowed")]
    IdTooLong {
        /// Length of the offered id.
        len: usize,
    },
    /// The id holds a character outside `[a-z0-9-]` or starts with `-`.
    #[error("node id {id:?} has {ch:?} at position {position}: only a-z, 0-9 and '-' (not first) are allowed")]
    BadIdChar {
        /// The offered id (cut to its first 64 characters).
        id: String,
        /// The offending character.
        ch: char,
        /// Its position, counted in characters from 0.
        position: usize,
    },
    /// The subject does not have the shape `node.<id>.<suffix>`.
    #[error("subject {subject:?} is not of the form node.<id>.{expected}")]
    NotANodeSubject {
        /// The offered subject (cut to its first 128 characters).
        subject: String,
        /// The last token that was expected.
        expected: &'static str,
    },
}

impl NodeId {
    /// Checks `id` against the node id syntax and wraps it.
    pub fn parse(id: &str) -> Result<Self, SubjectError> {
        if id.is_empty() {
            return Err(SubjectError::EmptyId);
        }
        if id.len() > NODE_ID_MAX_LEN {
            return Err(SubjectError::IdTooLong { len: id.len() });
        }
        for (position, ch) in id.chars().enumerate() {
            let ok = ch.is_ascii_lowercase() || ch.is_ascii_digit() || (ch == '-' && position > 0);
            if !ok {
                return Err(SubjectError::BadIdChar {
                    id: id.chars().take(64).collect(),
                    ch,
                    position,
                });
            }
        }
        Ok(Self(id.to_owned()))
    }

    /// Derives the id a new node takes: `node-<slug(hostname)>-<suffix>`.
    ///
    /// `suffix` is meant to be 8 random hex digits; the slug is cut so that the
    /// whole id always fits [`NODE_ID_MAX_LEN`], and a hostname with no usable
    /// character gives the slug `host`.
    pub fn derive(hostname: &str, suffix: &str) -> Result<Self, SubjectError> {
        let mut slug = String::with_capacity(hostname.len());
        for ch in hostname.chars().flat_map(char::to_lowercase) {
            if ch.is_ascii_lowercase() || ch.is_ascii_digit() {
                slug.push(ch);
            } else if !slug.ends_with('-') && !slug.is_empty() {
                slug.push('-');
            }
        }
        let room = NODE_ID_MAX_LEN.saturating_sub("node-".len() + 1 + suffix.len());
        slug.truncate(room);
        while slug.ends_with('-') {
            slug.pop();
        }
        if slug.is_empty() {
            slug.push_str("host");
        }
        Self::parse(&format!("node-{slug}-{suffix}"))
    }

    /// The id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeId {
    type Err = SubjectError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for NodeId {
    type Error = SubjectError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<NodeId> for String {
    fn from(id: NodeId) -> Self {
        id.0
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The subject a node publishes its events on: `node.<id>.events`.
pub fn node_events(id: &NodeId) -> String {
    format!("{NODE_PREFIX}.{id}.{EVENTS_SUFFIX}")
}

/// The subject a node takes control tasks on: `node.<id>.tasks`.
pub fn node_tasks(id: &NodeId) -> String {
    format!("{NODE_PREFIX}.{id}.{TASKS_SUFFIX}")
}

/// The node id of an event subject `node.<id>.events`, validated.
pub fn parse_node_events(subject: &str) -> Result<NodeId, SubjectError> {
    parse_node_subject(subject, EVENTS_SUFFIX)
}

/// The node id of a task subject `node.<id>.tasks`, validated.
pub fn parse_node_tasks(subject: &str) -> Result<NodeId, SubjectError> {
    parse_node_subject(subject, TASKS_SUFFIX)
}

fn parse_node_subject(subject: &str, expected: &'static str) -> Result<NodeId, SubjectError> {
    let not_node = || SubjectError::NotANodeSubject {
        subject: subject.chars().take(128).collect(),
        expected,
    };
    let mut tokens = subject.split('.');
    let (Some(prefix), Some(id), Some(suffix), None) =
        (tokens.next(), tokens.next(), tokens.next(), tokens.next())
    else {
        return Err(not_node());
    };
    if prefix != NODE_PREFIX || suffix != expected {
        return Err(not_node());
    }
    NodeId::parse(id)
}

/// The stream behind KV bucket `bucket` (JetStream names it `KV_<bucket>`).
pub fn kv_stream(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The server's system subject that takes an updated account JWT (pushed
/// after a revocation, so no server restart is needed).
pub const SYS_CLAIMS_UPDATE: &str = "$SYS.REQ.CLAIMS.UPDATE";

/// The server's system subject for one server's connection list (CONNZ).
pub fn sys_server_connz(server_id: &str) -> String {
    format!("$SYS.REQ.SERVER.{server_id}.CONNZ")
}

/// The server's system subject that every server answers with its
/// connection list (one reply per server).
pub const SYS_SERVER_PING_CONNZ: &str = "$SYS.REQ.SERVER.PING.CONNZ";

/// The server's system subject that closes one of its connections
/// (`{"cid":N}`): how a test drops a client the way a network would.
pub fn sys_server_kick(server_id: &str) -> String {
    format!("$SYS.REQ.SERVER.{server_id}.KICK")
}

/// The keys of the `registry_meta` bucket: the leader lease, join tokens and
/// joined nodes' public keys.
pub mod meta_keys {
    /// The leader lease.
    pub const LEADER: &str = "leader";
    /// What the keys of join-token records start with.
    pub const TOKEN_PREFIX: &str = "token.";
    /// What the keys of joined nodes' public keys start with.
    pub const NODE_KEY_PREFIX: &str = "nodekey.";

    /// The key of join token `id`'s record.
    pub fn token(id: &str) -> String {
        format!("{TOKEN_PREFIX}{id}")
    }

    /// The key under which node `node_id`'s public key is kept.
    pub fn node_key(node_id: &str) -> String {
        format!("{NODE_KEY_PREFIX}{node_id}")
    }

    /// The node id of a node-key key, if it is one.
    pub fn parse_node_key(key: &str) -> Option<&str> {
        key.strip_prefix(NODE_KEY_PREFIX)
    }

    /// The token id of a token-record key, if it is one.
    pub fn parse_token(key: &str) -> Option<&str> {
        key.strip_prefix(TOKEN_PREFIX)
    }
}

/// Whether a request's reply subject is one the registry may publish its
/// answer to. NATS does not check a requester's permissions on the reply
/// subject it names, so a client allowed to ask could otherwise have the
/// registry publish into a subject a stream captures (`$KV.nodes.<id>`
/// would overwrite a node's record) or one the fleet listens on. Refused:
/// system subjects (`$...`: KV, JetStream, `$SYS`, `$SRV`), node events and
/// tasks, `system.broadcast`, the registry's own subjects, and anything
/// with a wildcard or an empty token.
pub fn is_safe_reply(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    if subject.is_empty()
        || subject.starts_with('$')
        || subject.chars().any(|c| c.is_whitespace())
        || tokens
            .iter()
            .any(|t| t.is_empty() || *t == "*" || *t == ">")
    {
        return false;
    }
    !matches!(
        tokens.as_slice(),
        [NODE_PREFIX, _, "events" | "tasks"] | ["system", "broadcast"] | ["registry", ..]
    )
}

/// The subject of a KV key's values in a bucket, for filtering and replay.
pub fn kv_key_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_one_token_and_one_key() {
        for ok in ["worker", "gpu-box", "llm_server", "0"] {
            assert!(is_role_name(ok), "{ok}");
        }
        for bad in [
            "",
            "Worker",
            "a.b",
            "a*",
            ">",
            "-x",
            "_x",
            "a b",
            &"r".repeat(64),
        ] {
            assert!(!is_role_name(bad), "{bad}");
        }
        assert_eq!(profile_subject("worker"), "$KV.profiles.worker");
    }

    #[test]
    fn replies_go_to_inboxes_not_to_fleet_subjects() {
        for ok in ["_INBOX.abc.1", "_INBOX_node-a.x", "my.replies.7"] {
            assert!(is_safe_reply(ok), "{ok}");
        }
        for bad in [
            "",
            "$KV.nodes.node-a",
            "$JS.API.STREAM.DELETE.NODE_EVENTS",
            "$SYS.REQ.SERVER.PING",
            "node.node-a.events",
            "node.node-a.tasks",
            "system.broadcast",
            "registry.admin",
            "_INBOX.*",
            "_INBOX.>",
            "_INBOX..x",
        ] {
            assert!(!is_safe_reply(bad), "{bad}");
        }
    }

    #[test]
    fn meta_keys_round_trip() {
        assert_eq!(meta_keys::node_key("n-1"), "nodekey.n-1");
        assert_eq!(meta_keys::parse_node_key("nodekey.n-1"), Some("n-1"));
        assert_eq!(meta_keys::parse_node_key("token.ab"), None);
        assert_eq!(meta_keys::parse_token(&meta_keys::token("ab")), Some("ab"));
        assert_eq!(kv_stream("nodes"), "KV_nodes");
    }

    #[test]
    fn valid_ids_are_accepted() {
        for id in ["a", "node-gpu1-3f2a9c1d", "0", &"a".repeat(63)] {
            assert_eq!(NodeId::parse(id).map(String::from), Ok(id.to_owned()));
        }
    }

    #[test]
    fn invalid_ids_are_rejected_with_their_reason() {
        assert_eq!(NodeId::parse(""), Err(SubjectError::EmptyId));
        assert_eq!(
            NodeId::parse(&"a".repeat(64)),
            Err(SubjectError::IdTooLong { len: 64 })
        );
        for (id, ch, position) in [
            ("-a", '-', 0),
            ("A", 'A', 0),
            ("a.b", '.', 1),
            ("a*", '*', 1),
            ("a b", ' ', 1),
            ("a>", '>', 1),
            ("é", 'é', 0),
        ] {
            match NodeId::parse(id) {
                Err(SubjectError::BadIdChar {
                    ch: c, position: p, ..
                }) => {
                    assert_eq!((c, p), (ch, position), "{id}")
                }
                other => panic!("{id}: {other:?}"),
            }
        }
    }

    #[test]
    fn derive_slugs_and_fits_the_limit() {
        let id = NodeId::derive("GPU_Box.local", "3f2a9c1d").map(String::from);
        assert_eq!(id, Ok("node-gpu-box-local-3f2a9c1d".to_owned()));
        let long = NodeId::derive(&"x".repeat(200), "3f2a9c1d");
        assert!(matches!(long, Ok(ref id) if id.as_str().len() == NODE_ID_MAX_LEN));
        let empty = NodeId::derive("...", "00000000").map(String::from);
        assert_eq!(empty, Ok("node-host-00000000".to_owned()));
        let dashes = NodeId::derive(&format!("{}-----", "y".repeat(48)), "3f2a9c1d");
        assert!(matches!(dashes, Ok(ref id) if !id.as_str().contains("--")));
    }

    #[test]
    fn subjects_round_trip() {
        let id = NodeId::parse("node-a-1").expect("valid id");
        assert_eq!(node_events(&id), "node.node-a-1.events");
        assert_eq!(node_tasks(&id), "node.node-a-1.tasks");
        assert_eq!(parse_node_events(&node_events(&id)), Ok(id.clone()));
        assert_eq!(parse_node_tasks(&node_tasks(&id)), Ok(id));
    }

    #[test]
    fn malformed_subjects_are_rejected() {
        for subject in [
            "node.a.tasks",
            "node.a",
            "node.a.events.x",
            "nodes.a.events",
            "node..events",
            "node.A.events",
            "",
        ] {
            assert!(parse_node_events(subject).is_err(), "{subject}");
        }
    }

    #[test]
    fn node_id_deserialization_validates() {
        let ok: Result<NodeId, _> = serde_json_like("node-a");
        assert!(ok.is_ok());
        let bad: Result<NodeId, _> = serde_json_like("Node.A");
        assert!(bad.is_err());
    }

    fn serde_json_like(s: &str) -> Result<NodeId, SubjectError> {
        NodeId::try_from(s.to_owned())
    }
}
