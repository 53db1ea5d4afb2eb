//! `registry.admin`: an operator's request to the leader, and its answer.

use serde::{Deserialize, Serialize};
use subjects::NodeId;

use crate::status::AdminOp;

/// Largest admin request read.
pub const MAX_ADMIN_REQUEST_BYTES: usize = 4096;
/// Longest reason an operator may give.
pub const MAX_REASON_BYTES: usize = 256;

/// A request on `registry.admin`. Unknown fields are an error: they are a
/// person's typo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRequest {
    /// What to do.
    pub op: AdminOp,
    /// To which node.
    pub node_id: NodeId,
    /// Why (kept in the alert of a deregistration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why an admin request is refused before it is looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdminRequestError {
    /// Over [`MAX_ADMIN_REQUEST_BYTES`].
    #[error("admin request over {MAX_ADMIN_REQUEST_BYTES} bytes")]
    TooLarge,
    /// Not the JSON of an admin request (unknown op or field, bad node id).
    #[error("admin request: {0}")]
    Malformed(String),
    /// A reason over [`MAX_REASON_BYTES`].
    #[error("reason over {MAX_REASON_BYTES} bytes")]
    ReasonTooLong,
}

impl AdminRequest {
    /// Size-checks, strictly decodes and validates a request.
    pub fn decode(payload: &[u8]) -> Result<Self, AdminRequestError> {
        if payload.len() > MAX_ADMIN_REQUEST_BYTES {
            return Err(AdminRequestError::TooLarge);
        }
        let request: Self = serde_json::from_slice(payload)
            .map_err(|e| AdminRequestError::Malformed(e.to_string()))?;
        if request
            .reason
            .as_ref()
            .is_some_and(|r| r.len() > MAX_REASON_BYTES)
        {
            return Err(AdminRequestError::ReasonTooLong);
        }
        Ok(request)
    }

    /// The request's JSON.
    pub fn encode(&self) -> Vec<u8> {
        // NOTE: a struct of an enum and strings always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The leader's answer to an admin request it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminReply {
    /// Always true (a refusal is a coded error instead).
    pub ok: bool,
    /// The node it concerns.
    pub node_id: String,
    /// Its status now (`null` once removed).
    pub status: Option<String>,
    /// Whether the change is durable in KV already (else it is retried).
    pub stored: bool,
    /// What the operator should know (e.g. a removed live node comes back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_and_bad_ones_are_named() {
        let request = AdminRequest {
            op: AdminOp::Deregister,
            node_id: NodeId::parse("node-a").expect("id"),
            reason: Some("decommissioned".into()),
        };
        assert_eq!(AdminRequest::decode(&request.encode()), Ok(request));
        for (bad, want) in [
            (r#"{"op":"reboot","node_id":"a"}"#, "unknown variant"),
            (r#"{"op":"cordon","node_id":"A B"}"#, "node id"),
            (r#"{"op":"cordon","node_id":"a","x":1}"#, "unknown field"),
        ] {
            let error = AdminRequest::decode(bad.as_bytes()).expect_err(bad);
            assert!(error.to_string().contains(want), "{bad}: {error}");
        }
        let long = format!(
            r#"{{"op":"cordon","node_id":"a","reason":"{}"}}"#,
            "x".repeat(257)
        );
        assert_eq!(
            AdminRequest::decode(long.as_bytes()),
            Err(AdminRequestError::ReasonTooLong)
        );
        let huge = vec![b' '; MAX_ADMIN_REQUEST_BYTES + 1];
        assert_eq!(
            AdminRequest::decode(&huge),
            Err(AdminRequestError::TooLarge)
        );
    }
}
