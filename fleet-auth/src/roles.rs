//! Who may publish and subscribe to what: one role per kind of client.

use serde_json::json;
use subjects::NodeId;

/// A kind of client of the fleet's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The registry: the control plane. Everything in the account except
    /// speaking for a node.
    Registry,
    /// People running the fleet: read everything (streams, buckets,
    /// alerts), request discovery, send tasks to nodes. Cannot speak for a
    /// node or raise alerts.
    Admin,
    /// Services and people that look: discovery, get and list, and reading
    /// the fleet live as the dashboard does (watch the `nodes` bucket,
    /// replay `ALERTS` and `NODE_EVENTS`, follow heartbeats and alerts).
    /// Writes nothing: no KV put, no publish but requests, no durable or
    /// deleted consumer.
    Reader,
    /// One node: publishes its own events, receives its own tasks, asks for
    /// discovery (and a record, for `node-agent status`), and reads (only)
    /// the profile of its role, when it has one.
    Node(NodeId, Option<String>),
    /// A machine joining: can only exchange a join token for its node
    /// credentials.
    Bootstrap,
}

impl Role {
    /// The role's name as written in `issued.json` and on command lines.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Registry => "registry",
            Self::Admin => "admin",
            Self::Reader => "reader",
            Self::Node(..) => "node",
            Self::Bootstrap => "bootstrap",
        }
    }

    /// The inbox prefix a client in this role must use (`_INBOX` unless a
    /// node: a node's replies arrive under its own prefix, so it cannot
    /// read another's).
    pub fn inbox_prefix(&self) -> String {
        match self {
            Self::Node(id, _) => node_inbox_prefix(id),
            _ => "_INBOX".to_owned(),
        }
    }

    /// The `pub`, `sub` and `resp` parts of a NATS user JWT for this role.
    pub fn permissions(&self) -> serde_json::Value {
        let discovery = [
            subjects::REGISTRY_DISCOVER,
            subjects::REGISTRY_GET,
            subjects::REGISTRY_LIST,
        ];
        match self {
            Self::Registry => json!({
                "pub": {"allow": [">"], "deny": [subjects::NODE_EVENTS_FILTER]},
                "sub": {"allow": [">"]},
            }),
            Self::Admin => json!({
                "pub": {
                    "allow": [
                        "$JS.API.>", "$JS.ACK.>", "$JS.FC.>", "$KV.>", "$SRV.>",
                        subjects::REGISTRY_FILTER, subjects::NODE_TASKS_FILTER, "_INBOX.>",
                    ],
                    "deny": [subjects::NODE_EVENTS_FILTER, subjects::SYSTEM_BROADCAST],
                },
                "sub": {"allow": [">"]},
            }),
            Self::Reader => json!({
                "pub": {
                    "allow": discovery
                        .iter()
                        .map(|s| s.to_string())
                        .chain([
                            subjects::REGISTRY_HEALTH.to_owned(),
                            format!("$SRV.PING.{}", subjects::SERVICE_NAME),
                        ])
                        .chain(read_only_jetstream())
                        .collect::<Vec<_>>(),
                    "deny": [
                        // The registry's own durable consumer is not a reader's.
                        format!("$JS.API.CONSUMER.CREATE.{}.{}", subjects::STREAM_NODE_EVENTS, subjects::CONSUMER_REGISTRY),
                        format!("$JS.API.CONSUMER.CREATE.{}.{}.>", subjects::STREAM_NODE_EVENTS, subjects::CONSUMER_REGISTRY),
                    ],
                },
                "sub": {"allow": ["_INBOX.>", subjects::SYSTEM_BROADCAST, subjects::NODE_EVENTS_FILTER]},
            }),
            Self::Node(id, role) => json!({
                "pub": {"allow": node_publishes(id, role.as_deref())},
                "sub": {"allow": node_subscribes(id, role.as_deref())},
                // Replies to the tasks it receives, one each.
                "resp": {"max": 1, "ttl": 0},
            }),
            Self::Bootstrap => json!({
                "pub": {"allow": [subjects::REGISTRY_JOIN]},
                "sub": {"allow": ["_INBOX.>"]},
            }),
        }
    }
}

impl Role {
    /// A user of this role in nats-server's config syntax (for servers that
    /// map client certificates to users: `user` is the certificate's subject,
    /// e.g. `CN=node-a`).
    pub fn config_user(&self, user: &str) -> String {
        let permissions = self.permissions();
        let list = |v: &serde_json::Value| -> String {
            let items: Vec<String> = v
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str())
                        .map(|s| format!("{s:?}"))
                        .collect()
                })
                .unwrap_or_default();
            format!("[{}]", items.join(", "))
        };
        let mut parts = Vec::new();
        for (key, name) in [("pub", "publish"), ("sub", "subscribe")] {
            let rules = &permissions[key];
            let mut inner = vec![format!("allow: {}", list(&rules["allow"]))];
            if rules.get("deny").is_some() {
                inner.push(format!("deny: {}", list(&rules["deny"])));
            }
            parts.push(format!("{name}: {{{}}}", inner.join(", ")));
        }
        if permissions.get("resp").is_some() {
            parts.push("allow_responses: {max: 1}".to_owned());
        }
        format!("{{user: {user:?}, permissions: {{{}}}}}", parts.join(", "))
    }
}

/// What a reader may ask of JetStream: stream info, and ephemeral (ordered)
/// consumers it reads, on the `nodes` bucket, `ALERTS`, `NODE_EVENTS` and
/// `NODE_LIFECYCLE`;
/// plus the flow-control replies of a push consumer (a KV watch).
fn read_only_jetstream() -> Vec<String> {
    let streams = [
        subjects::kv_stream(subjects::BUCKET_NODES),
        subjects::STREAM_ALERTS.to_owned(),
        subjects::STREAM_NODE_EVENTS.to_owned(),
        subjects::STREAM_NODE_LIFECYCLE.to_owned(),
    ];
    let mut allow = vec!["$JS.API.INFO".to_owned(), "$JS.FC.>".to_owned()];
    for stream in streams {
        allow.push(format!("$JS.API.STREAM.INFO.{stream}"));
        allow.push(format!("$JS.API.CONSUMER.CREATE.{stream}"));
        allow.push(format!("$JS.API.CONSUMER.CREATE.{stream}.>"));
        allow.push(format!("$JS.API.CONSUMER.INFO.{stream}.*"));
        allow.push(format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.*"));
    }
    allow
}

/// What a node may publish: its events, discovery requests, the reads of
/// its role's profile, and the echo through its own inbox that measures
/// its round trip to its server (only it can subscribe there).
fn node_publishes(id: &NodeId, role: Option<&str>) -> Vec<String> {
    let mut allow = vec![
        subjects::node_events(id),
        subjects::REGISTRY_DISCOVER.to_owned(),
        subjects::REGISTRY_GET.to_owned(),
        format!("{}.rtt", node_inbox_prefix(id)),
    ];
    allow.extend(role.map(profile_reader).unwrap_or_default());
    allow
}

/// What a node of `role` may publish to read its role's profile, and
/// nothing else of the `profiles` bucket: a direct get of that one key (the
/// key is in the API subject). A role that cannot name a profile gets
/// nothing.
fn profile_reader(role: &str) -> Vec<String> {
    if !subjects::is_role_name(role) {
        return Vec::new();
    }
    vec![format!(
        "$JS.API.DIRECT.GET.{}.{}",
        subjects::kv_stream(subjects::BUCKET_PROFILES),
        subjects::profile_subject(role)
    )]
}

/// What a node may subscribe to: its tasks, its own inbox prefix, and the
/// changes of its role's profile (a KV put is a publish on the key's
/// subject).
fn node_subscribes(id: &NodeId, role: Option<&str>) -> Vec<String> {
    let mut allow = vec![
        subjects::node_tasks(id),
        format!("{}.>", node_inbox_prefix(id)),
    ];
    if let Some(role) = role.filter(|r| subjects::is_role_name(r)) {
        allow.push(subjects::profile_subject(role));
    }
    allow
}

/// The inbox prefix of node `id`'s connection.
pub fn node_inbox_prefix(id: &NodeId) -> String {
    format!("_INBOX_{id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sample mutual-TLS config lists users with the roles' permissions
    /// as this crate makes them; it must not drift from them.
    #[test]
    fn the_mtls_sample_config_has_the_roles_permissions() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../nats-config/tls/mtls.conf");
        let sample = std::fs::read_to_string(path).expect("nats-config/tls/mtls.conf");
        for (role, user) in [(Role::Registry, "CN=registry"), (Role::Reader, "CN=reader")] {
            let line = role.config_user(user);
            assert!(sample.contains(&line), "mtls.conf should have\n{line}");
        }
    }
}
