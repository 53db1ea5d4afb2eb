//! Unit tests of the parent module (kept apart so the module reads short).

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
    let event: NodeEvent = decode(json.as_bytes(), Encoding::Json, MAX_EVENT_BYTES).expect("ok");
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
    // A list is not a message, though serde would take it as the fields in
    // order.
    for list in [&br#"["gpu"]"#[..], b" [ ]", br#"["heartbeat","node-a"]"#] {
        assert!(matches!(
            decode::<DiscoverRequest>(list, Encoding::Json, 1024),
            Err(CodecError::NotAnObject)
        ));
        assert!(matches!(
            decode::<NodeEvent>(list, Encoding::Json, 1024),
            Err(CodecError::NotAnObject)
        ));
    }
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
