//! `registry.join`: a machine trades a one-time join token for its own node
//! credentials.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A request on `registry.join`. Unknown fields are an error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    /// The token's id.
    pub token_id: String,
    /// The token's secret.
    pub secret: String,
    /// The node id the machine will use.
    pub node_id: String,
    /// The public user nkey it generated (its seed never leaves it).
    pub public_key: String,
}

/// The answer to a join: the node's user JWT (with its own seed, its
/// `.creds`), and what the token granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinReply {
    /// The node's user JWT.
    pub jwt: String,
    /// Its node id.
    pub node_id: String,
    /// Its role.
    pub role: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}
