//! JSON ⇄ protobuf, chosen by the `Content-Type` header, with size limits.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The header that names a payload's encoding.
pub const HEADER_CONTENT_TYPE: &str = "Content-Type";
/// Content type of the JSON form (the default when the header is absent).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of the protobuf form.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/protobuf";

/// Largest event payload accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Largest request payload accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// proto3 JSON mapping with the contract's snake_case names.
    #[default]
    Json,
    /// Binary protobuf.
    Protobuf,
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The payload is larger than allowed.
    #[error("payload is {size} bytes, at most {max} allowed")]
    TooLarge {
        /// Size of the payload.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The Content-Type header names an encoding we do not speak.
    #[error("unsupported Content-Type {0:?}, expected application/json or application/protobuf")]
    UnsupportedContentType(String),
    /// The JSON form is malformed, has a wrong type, or an unknown field where
    /// those are refused.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The protobuf form is malformed.
    #[error("invalid protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
}

impl Encoding {
    /// The encoding named by a Content-Type value; JSON when absent.
    /// Parameters (`; charset=utf-8`) and case are ignored.
    pub fn from_content_type(value: Option<&str>) -> Result<Self, CodecError> {
        let Some(value) = value else {
            return Ok(Self::Json);
        };
        let media = value.split(';').next().unwrap_or_default().trim();
        if media.is_empty() || media.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
            Ok(Self::Json)
        } else if media.eq_ignore_ascii_case(CONTENT_TYPE_PROTOBUF)
            || media.eq_ignore_ascii_case("application/x-protobuf")
        {
            Ok(Self::Protobuf)
        } else {
            Err(CodecError::UnsupportedContentType(
                value.chars().take(64).collect(),
            ))
        }
    }

    /// The Content-Type value of this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => CONTENT_TYPE_JSON,
            Self::Protobuf => CONTENT_TYPE_PROTOBUF,
        }
    }
}

/// Decodes a message of either encoding after checking its size.
///
/// An empty JSON payload decodes as `{}`, so `nats req registry.discover ''`
/// asks for all online nodes.
pub fn decode<T>(payload: &[u8], encoding: Encoding, max_bytes: usize) -> Result<T, CodecError>
where
    T: prost::Message + DeserializeOwned + Default,
{
    if payload.len() > max_bytes {
        return Err(CodecError::TooLarge {
            size: payload.len(),
            max: max_bytes,
        });
    }
    match encoding {
        Encoding::Json if payload.iter().all(u8::is_ascii_whitespace) => Ok(T::default()),
        Encoding::Json => Ok(serde_json::from_slice(payload)?),
        Encoding::Protobuf => Ok(T::decode(payload)?),
    }
}

/// Encodes a message in the chosen encoding.
pub fn encode<T>(message: &T, encoding: Encoding) -> Vec<u8>
where
    T: prost::Message + Serialize,
{
    match encoding {
        // NOTE: the generated types hold only strings, numbers, lists and maps
        // with string keys, which serde_json always serialises.
        Encoding::Json => serde_json::to_vec(message).unwrap_or_default(),
        Encoding::Protobuf => message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{Capabilities, DiscoverRequest, Gpu, Metrics, NodeEvent};

    fn register_json() -> &'static str {
        r#"{"type":"register","node_id":"node-gpu1-3f2a9c1d","node_name":"gpu1","role":"worker",
 "labels":{"gpu":"true","region":"eu"},"hostname":"gpu1","ip_address":"203.0.113.7","local_ip":"192.168.1.33",
 "capabilities":{"os":"linux","os_version":"12","arch":"x86_64","cpu_model":"...","cpu_cores":16,
   "ram_gb":62.7,"disk_gb":953.0,"gpus":[{"vendor":"nvidia","model":"RTX 4000 SFF Ada","vram_gb":20.0}],
   "models":["qwen3:8b","mistral:7b"],"tags":["gpu","nvidia","ollama"]},
 "agent_version":"0.1.0","seq":1}"#
    }

    #[test]
    fn contract_register_event_decodes() {
        let event: NodeEvent =
            decode(register_json().as_bytes(), Encoding::Json, MAX_EVENT_BYTES).expect("decodes");
        assert_eq!(event.r#type, "register");
        assert_eq!(event.labels.get("region").map(String::as_str), Some("eu"));
        let caps = event.capabilities.expect("capabilities");
        assert_eq!(caps.cpu_cores, 16);
        assert_eq!(caps.gpus[0].vram_gb, 20.0);
        assert_eq!(event.seq, Some(1));
    }

    #[test]
    fn json_and_protobuf_carry_the_same_event() {
        let event: NodeEvent =
            decode(register_json().as_bytes(), Encoding::Json, MAX_EVENT_BYTES).expect("decodes");
        let bytes = encode(&event, Encoding::Protobuf);
        let back: NodeEvent = decode(&bytes, Encoding::Protobuf, MAX_EVENT_BYTES).expect("decodes");
        assert_eq!(back, event);
        let json = encode(&back, Encoding::Json);
        let again: NodeEvent = decode(&json, Encoding::Json, MAX_EVENT_BYTES).expect("decodes");
        assert_eq!(again, event);
    }

    #[test]
    fn json_omits_absent_fields_and_uses_numbers() {
        let event = NodeEvent {
            r#type: "heartbeat".into(),
            node_id: "node-a".into(),
            seq: Some(9_007_199_254_740_991),
            metrics: Some(Metrics {
                cpu_pct: Some(12.5),
                ..Metrics::default()
            }),
            ..NodeEvent::default()
        };
        let value: serde_json::Value =
            serde_json::from_slice(&encode(&event, Encoding::Json)).expect("json");
        assert_eq!(value["seq"], serde_json::json!(9_007_199_254_740_991u64));
        assert_eq!(value["metrics"], serde_json::json!({"cpu_pct":12.5}));
        assert!(value.get("node_name").is_none());
        assert!(value.get("capabilities").is_none());
    }

    #[test]
    fn unknown_event_fields_are_ignored() {
        let json = r#"{"type":"heartbeat","node_id":"n1","future_field":{"x":1}}"#;
        let event: NodeEvent =
            decode(json.as_bytes(), Encoding::Json, MAX_EVENT_BYTES).expect("ok");
        assert_eq!(event.node_id, "n1");
    }

    #[test]
    fn unknown_request_fields_are_refused() {
        let err = decode::<DiscoverRequest>(br#"{"capabilty":"gpu"}"#, Encoding::Json, 1024)
            .expect_err("typo refused");
        assert!(
            err.to_string().contains("unknown field `capabilty`"),
            "{err}"
        );
    }

    #[test]
    fn capability_is_a_string_or_a_list() {
        let one: DiscoverRequest =
            decode(br#"{"capability":"gpu"}"#, Encoding::Json, 1024).expect("string");
        assert_eq!(one.capability, vec!["gpu"]);
        let many: DiscoverRequest =
            decode(br#"{"capability":["gpu","nvidia"]}"#, Encoding::Json, 1024).expect("list");
        assert_eq!(many.capability, vec!["gpu", "nvidia"]);
        let empty: DiscoverRequest = decode(b"", Encoding::Json, 1024).expect("empty is {}");
        assert_eq!(empty, DiscoverRequest::default());
        assert!(decode::<DiscoverRequest>(br#"{"capability":3}"#, Encoding::Json, 1024).is_err());
    }

    #[test]
    fn oversized_payloads_are_refused_before_decoding() {
        let big = vec![b' '; MAX_EVENT_BYTES + 1];
        let err = decode::<NodeEvent>(&big, Encoding::Json, MAX_EVENT_BYTES).expect_err("too big");
        assert!(matches!(err, CodecError::TooLarge { .. }));
    }

    #[test]
    fn content_types() {
        assert_eq!(Encoding::from_content_type(None).ok(), Some(Encoding::Json));
        assert_eq!(
            Encoding::from_content_type(Some("Application/JSON; charset=utf-8")).ok(),
            Some(Encoding::Json)
        );
        assert_eq!(
            Encoding::from_content_type(Some("application/protobuf")).ok(),
            Some(Encoding::Protobuf)
        );
        assert!(Encoding::from_content_type(Some("text/plain")).is_err());
    }

    #[test]
    fn garbage_protobuf_is_an_error_not_a_panic() {
        let garbage = [0xff_u8, 0xff, 0xff, 0xff, 0x0f, 0x01];
        assert!(decode::<NodeEvent>(&garbage, Encoding::Protobuf, MAX_EVENT_BYTES).is_err());
        let _ = Capabilities::default();
        let _ = Gpu::default();
    }
}
