//! Compiles `proto/fleet.proto` into Rust types with a pure-Rust protobuf
//! compiler (protox), so no system `protoc` is needed, and gives the types the
//! serde derives of the JSON contract.

use std::error::Error;

/// Messages that are requests: unknown fields are a person's typo, so an error.
const STRICT: &[&str] = &[
    ".fleet.v1.DiscoverRequest",
    ".fleet.v1.GetRequest",
    ".fleet.v1.TaskRequest",
];

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed=proto/fleet.proto");
    let descriptors = protox::compile(["proto/fleet.proto"], ["proto"])?;
    let mut config = prost_build::Config::new();
    config.type_attribute(
        ".fleet.v1",
        "#[serde_with::skip_serializing_none] #[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
    );
    for message in STRICT {
        config.type_attribute(message, "#[serde(deny_unknown_fields)]");
    }
    config.field_attribute(
        ".fleet.v1.DiscoverRequest.capability",
        "#[serde(deserialize_with = \"crate::json::one_or_many\")]",
    );
    // Events travel often: leave empty collections out of their JSON form.
    // Records and replies keep them, so readers need no null checks.
    for field in [
        ".fleet.v1.NodeEvent.models_loaded",
        ".fleet.v1.NodeEvent.services",
        ".fleet.v1.Metrics.gpus",
        ".fleet.v1.GpuUsage.throttle",
        ".fleet.v1.Gpu.mig_instances",
        ".fleet.v1.Alert.reasons",
        ".fleet.v1.DiscoverReply.placements",
        ".fleet.v1.DiscoverReply.latency_ms",
        // Rare operator and profile state: absent on most records.
        ".fleet.v1.NodeEvent.profile_mismatch",
        ".fleet.v1.NodeRecord.gpu_cordons",
        ".fleet.v1.NodeRecord.profile_mismatch",
    ] {
        config.field_attribute(field, "#[serde(skip_serializing_if = \"Vec::is_empty\")]");
    }
    config.field_attribute(
        ".fleet.v1.NodeEvent.labels",
        "#[serde(skip_serializing_if = \"::prost::alloc::collections::BTreeMap::is_empty\")]",
    );
    config.btree_map(["."]);
    config.compile_fds(descriptors)?;
    Ok(())
}
