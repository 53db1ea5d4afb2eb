//! `registry.admin`: an operator's request to the leader, and its answer.

use serde::{Deserialize, Serialize};
use subjects::NodeId;

use crate::status::AdminOp;

/// Largest admin request read.
pub const MAX_ADMIN_REQUEST_BYTES: usize = 4096;
/// Longest reason an operator may give.
pub const MAX_REASON_BYTES: usize = 256;
/// Longest name of who asked.
pub const MAX_BY_BYTES: usize = 128;
/// Longest drain an operator may ask for (a year: past that, no deadline).
pub const MAX_DRAIN: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// A request on `registry.admin`. Unknown fields are an error: they are a
/// person's typo.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminRequest {
    /// What to do.
    pub op: AdminOp,
    /// To which node.
    pub node_id: NodeId,
    /// Why (kept in the record of a drain or cordon, and in its alert).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Who asks, as their client says (kept in the record with the reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Cordon and uncordon: one GPU (its index) instead of the whole node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// Drain: resume by itself after this long (`90m`, `2h`), on the
    /// registry's clock.
    #[serde(default, rename = "for", skip_serializing_if = "Option::is_none")]
    pub for_: Option<String>,
    /// Drain: resume by itself at this time (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<String>,
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
    /// A reason over [`MAX_REASON_BYTES`], or with control characters.
    #[error("reason over {MAX_REASON_BYTES} bytes or with control characters")]
    ReasonTooLong,
    /// `by` over [`MAX_BY_BYTES`], or with control characters.
    #[error("by over {MAX_BY_BYTES} bytes or with control characters")]
    ByTooLong,
    /// A field given to an op that does not take it.
    #[error("{field} does not go with op {op}")]
    NotForOp {
        /// The field.
        field: &'static str,
        /// The op it was given to.
        op: AdminOp,
    },
    /// `for` and `until` together, a bad duration or time, or a deadline
    /// in the past or too far ahead.
    #[error("deadline: {0}")]
    Deadline(String),
}

impl AdminRequest {
    /// Size-checks, strictly decodes and validates a request.
    pub fn decode(payload: &[u8]) -> Result<Self, AdminRequestError> {
        if payload.len() > MAX_ADMIN_REQUEST_BYTES {
            return Err(AdminRequestError::TooLarge);
        }
        // serde would read a list as the fields in order: a request is an object.
        if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(AdminRequestError::Malformed(
                "a request is a JSON object".into(),
            ));
        }
        let request: Self = serde_json::from_slice(payload)
            .map_err(|e| AdminRequestError::Malformed(e.to_string()))?;
        let bad_text = |text: &Option<String>, max: usize| {
            text.as_ref()
                .is_some_and(|t| t.len() > max || t.chars().any(char::is_control))
        };
        if bad_text(&request.reason, MAX_REASON_BYTES) {
            return Err(AdminRequestError::ReasonTooLong);
        }
        if bad_text(&request.by, MAX_BY_BYTES) {
            return Err(AdminRequestError::ByTooLong);
        }
        let op = request.op;
        if request.gpu.is_some() && !matches!(op, AdminOp::Cordon | AdminOp::Uncordon) {
            return Err(AdminRequestError::NotForOp { field: "gpu", op });
        }
        for (field, given) in [
            ("for", request.for_.is_some()),
            ("until", request.until.is_some()),
        ] {
            if given && op != AdminOp::Drain {
                return Err(AdminRequestError::NotForOp { field, op });
            }
        }
        if request.for_.is_some() && request.until.is_some() {
            return Err(AdminRequestError::Deadline(
                "give for or until, not both".into(),
            ));
        }
        if let Some(text) = &request.for_ {
            let length = humantime::parse_duration(text)
                .map_err(|e| AdminRequestError::Deadline(format!("for {text:?}: {e}")))?;
            if length.is_zero() || length > MAX_DRAIN {
                return Err(AdminRequestError::Deadline(format!(
                    "for {text:?}: more than nothing and at most 366 days"
                )));
            }
        }
        if let Some(text) = &request.until {
            crate::time::parse(text).ok_or_else(|| {
                AdminRequestError::Deadline(format!("until {text:?} is not an RFC 3339 time"))
            })?;
        }
        Ok(request)
    }

    /// When a drain asked at `now` resumes by itself, if it does; an
    /// `until` not after `now`, or over [`MAX_DRAIN`] ahead, is refused.
    pub fn resume_at(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<chrono::DateTime<chrono::Utc>>, AdminRequestError> {
        let at = match (&self.for_, &self.until) {
            (Some(text), _) => {
                let length = humantime::parse_duration(text)
                    .map_err(|e| AdminRequestError::Deadline(format!("for {text:?}: {e}")))?;
                now + chrono::Duration::from_std(length)
                    .map_err(|e| AdminRequestError::Deadline(e.to_string()))?
            }
            (None, Some(text)) => crate::time::parse(text).ok_or_else(|| {
                AdminRequestError::Deadline(format!("until {text:?} is not an RFC 3339 time"))
            })?,
            (None, None) => return Ok(None),
        };
        if at <= now {
            return Err(AdminRequestError::Deadline(format!(
                "resume at {} is not in the future (the registry's clock says {})",
                crate::time::format(at),
                crate::time::format(now)
            )));
        }
        let max = chrono::Duration::from_std(MAX_DRAIN).unwrap_or(chrono::Duration::MAX);
        if at - now > max {
            return Err(AdminRequestError::Deadline(
                "resume at is more than 366 days ahead".into(),
            ));
        }
        Ok(Some(at))
    }

    /// The request's JSON.
    pub fn encode(&self) -> Vec<u8> {
        // NOTE: a struct of an enum and strings always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// The leader's answer to an admin request it applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// The node's drain now, if it is in maintenance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maintenance: Option<crate::v1::Maintenance>,
    /// Its GPUs cordoned now.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_cordons: Vec<crate::v1::GpuCordon>,
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
            by: Some("ops@example".into()),
            gpu: None,
            for_: None,
            until: None,
        };
        assert_eq!(AdminRequest::decode(&request.encode()), Ok(request));
        for (bad, want) in [
            (r#"{"op":"reboot","node_id":"a"}"#, "unknown variant"),
            (r#"{"op":"cordon","node_id":"A B"}"#, "node id"),
            (r#"{"op":"cordon","node_id":"a","x":1}"#, "unknown field"),
            (r#"["drain","a"]"#, "a request is a JSON object"),
            (
                r#"{"op":"drain","node_id":"a","gpu":1}"#,
                "gpu does not go with op drain",
            ),
            (
                r#"{"op":"cordon","node_id":"a","for":"1h"}"#,
                "for does not go",
            ),
            (
                r#"{"op":"drain","node_id":"a","for":"1h","until":"2030-01-01T00:00:00Z"}"#,
                "not both",
            ),
            (
                r#"{"op":"drain","node_id":"a","for":"soon"}"#,
                "for \"soon\"",
            ),
            (
                r#"{"op":"drain","node_id":"a","for":"0s"}"#,
                "more than nothing",
            ),
            (
                r#"{"op":"drain","node_id":"a","until":"tomorrow"}"#,
                "RFC 3339",
            ),
            (
                r#"{"op":"drain","node_id":"a","reason":"a\u0007b"}"#,
                "control",
            ),
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
        let now = crate::time::parse("2026-11-26T10:00:00Z").expect("time");
        let drain = |json: &str| AdminRequest::decode(json.as_bytes()).expect(json);
        assert_eq!(
            drain(r#"{"op":"drain","node_id":"a","reason":"r","for":"2h"}"#).resume_at(now),
            Ok(crate::time::parse("2026-11-26T12:00:00Z"))
        );
        assert_eq!(
            drain(r#"{"op":"drain","node_id":"a","until":"2026-11-27T00:00:00Z"}"#).resume_at(now),
            Ok(crate::time::parse("2026-11-27T00:00:00Z"))
        );
        assert_eq!(
            drain(r#"{"op":"drain","node_id":"a"}"#).resume_at(now),
            Ok(None)
        );
        assert!(
            drain(r#"{"op":"drain","node_id":"a","until":"2026-11-26T09:00:00Z"}"#)
                .resume_at(now)
                .is_err()
        );
        let huge = vec![b' '; MAX_ADMIN_REQUEST_BYTES + 1];
        assert_eq!(
            AdminRequest::decode(&huge),
            Err(AdminRequestError::TooLarge)
        );
    }
}
