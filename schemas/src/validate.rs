//! Checks an inbound event beyond its syntax and types it.

use subjects::{NodeId, SubjectError};

use crate::status::{EventType, UnknownValue};
use crate::v1::{Capabilities, Metrics, NodeEvent};

/// Most labels one node may carry.
pub const MAX_LABELS: usize = 64;
/// A GPU's health states, best first.
pub const GPU_HEALTH_STATES: &[&str] = &["healthy", "warning", "failed"];
/// Longest label key, in bytes.
pub const MAX_LABEL_KEY_LEN: usize = 63;
/// Longest label value, in bytes.
pub const MAX_LABEL_VALUE_LEN: usize = 253;
/// Longest free-text field (names, models, tags, versions), in bytes.
pub const MAX_TEXT_LEN: usize = 256;
/// Most entries in one list (models, tags, GPUs, services).
pub const MAX_LIST_LEN: usize = 1024;

/// A decoded event whose fields passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidEvent {
    /// Its type.
    pub kind: EventType,
    /// The validated node id of the payload.
    pub node_id: NodeId,
    /// The event as decoded.
    pub event: NodeEvent,
}

/// Why an event is invalid.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ValidationError {
    /// `type` is missing or unknown.
    #[error("event type: {0}")]
    Type(#[from] UnknownValue),
    /// `node_id` is missing or malformed.
    #[error("event node_id: {0}")]
    NodeId(#[from] SubjectError),
    /// The subject's node id differs from the payload's.
    #[error("payload node_id {payload:?} differs from the subject's {subject:?}")]
    SpoofedId {
        /// Id in the subject.
        subject: String,
        /// Id in the payload.
        payload: String,
    },
    /// A field breaks a limit or holds an impossible value.
    #[error("field {field}: {reason}")]
    Field {
        /// Path of the field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
}

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> ValidationError {
    ValidationError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Validates an event received on the subject of `subject_id`.
pub fn validate_event(
    event: NodeEvent,
    subject_id: &NodeId,
) -> Result<ValidEvent, ValidationError> {
    let kind: EventType = event.r#type.parse()?;
    let node_id = NodeId::parse(&event.node_id)?;
    if &node_id != subject_id {
        return Err(ValidationError::SpoofedId {
            subject: subject_id.to_string(),
            payload: node_id.to_string(),
        });
    }
    for (field, value) in [
        ("node_name", &event.node_name),
        ("role", &event.role),
        ("hostname", &event.hostname),
        ("ip_address", &event.ip_address),
        ("local_ip", &event.local_ip),
        ("agent_version", &event.agent_version),
        ("reason", &event.reason),
        ("caps_hash", &event.caps_hash),
        ("profile_error", &event.profile_error),
    ] {
        if let Some(value) = value {
            check_text(field, value)?;
        }
    }
    validate_labels(&event.labels)?;
    if let Some(caps) = &event.capabilities {
        validate_capabilities(caps)?;
    }
    if let Some(metrics) = &event.metrics {
        validate_metrics(metrics)?;
    }
    check_list("models_loaded", &event.models_loaded)?;
    check_list("services", &event.services)?;
    check_list("profile_mismatch", &event.profile_mismatch)?;
    if let Some(link) = &event.nats {
        validate_nats_link("nats", link)?;
    }
    Ok(ValidEvent {
        kind,
        node_id,
        event,
    })
}

/// Checks where a node or a requester says it is attached to NATS: names
/// as short text, a finite non-negative round trip.
pub fn validate_nats_link(field: &str, link: &crate::NatsLink) -> Result<(), ValidationError> {
    check_text(&format!("{field}.server"), &link.server)?;
    for (name, value) in [("cluster", &link.cluster), ("domain", &link.domain)] {
        if let Some(value) = value {
            check_text(&format!("{field}.{name}"), value)?;
        }
    }
    if let Some(rtt) = link.rtt_ms {
        if !rtt.is_finite() || rtt < 0.0 {
            return Err(field_error(
                format!("{field}.rtt_ms"),
                format!("{rtt} is not a non-negative number"),
            ));
        }
    }
    Ok(())
}

/// Checks label keys and values against the limits.
pub fn validate_labels(
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), ValidationError> {
    if labels.len() > MAX_LABELS {
        return Err(field_error(
            "labels",
            format!("{} labels, at most {MAX_LABELS} allowed", labels.len()),
        ));
    }
    for (key, value) in labels {
        check_label_key(key)?;
        if value.len() > MAX_LABEL_VALUE_LEN || value.chars().any(char::is_control) {
            return Err(field_error(
                format!("labels.{key}"),
                format!(
                    "value must be at most {MAX_LABEL_VALUE_LEN} bytes without control characters"
                ),
            ));
        }
    }
    Ok(())
}

/// Whether `key` is a label key: 1 to 63 bytes of `[A-Za-z0-9._/-]`
/// starting alphanumeric, or a Kubernetes qualified name (a DNS subdomain
/// prefix of up to 253 bytes, `/`, and a name of up to 63 that starts and
/// ends alphanumeric: `feature.node.kubernetes.io/cpu-cpuid.AVX512F`).
pub fn is_label_key(key: &str) -> bool {
    let short = !key.is_empty()
        && key.len() <= MAX_LABEL_KEY_LEN
        && key.starts_with(|c: char| c.is_ascii_alphanumeric())
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'));
    short || is_qualified_name(key)
}

/// Kubernetes' qualified name: `[prefix/]name`.
fn is_qualified_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    let alnum_ends = |s: &str| {
        s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    let name_ok = !name.is_empty()
        && name.len() <= MAX_LABEL_KEY_LEN
        && alnum_ends(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.split('.').all(|part| {
                !part.is_empty()
                    && part.len() <= 63
                    && alnum_ends(part)
                    && part
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            })
    });
    name_ok && prefix_ok
}

/// Checks one label key (see [`is_label_key`]).
pub fn check_label_key(key: &str) -> Result<(), ValidationError> {
    if is_label_key(key) {
        Ok(())
    } else {
        Err(field_error(
            format!("labels.{}", key.chars().take(64).collect::<String>()),
            format!("key must be 1 to {MAX_LABEL_KEY_LEN} characters of A-Z a-z 0-9 . _ / -, starting with a letter or digit, or a DNS prefix of up to 253, '/' and a name of up to {MAX_LABEL_KEY_LEN}"),
        ))
    }
}

fn validate_capabilities(caps: &Capabilities) -> Result<(), ValidationError> {
    for (field, value) in [
        ("capabilities.os", &caps.os),
        ("capabilities.os_version", &caps.os_version),
        ("capabilities.arch", &caps.arch),
        ("capabilities.cpu_model", &caps.cpu_model),
    ] {
        check_text(field, value)?;
    }
    check_amount("capabilities.ram_gb", caps.ram_gb)?;
    check_amount("capabilities.disk_gb", caps.disk_gb)?;
    if caps.gpus.len() > MAX_LIST_LEN {
        return Err(field_error("capabilities.gpus", "too many GPUs"));
    }
    for gpu in &caps.gpus {
        check_text("capabilities.gpus.vendor", &gpu.vendor)?;
        check_text("capabilities.gpus.model", &gpu.model)?;
        check_amount("capabilities.gpus.vram_gb", gpu.vram_gb)?;
        for (field, value) in [
            ("capabilities.gpus.uuid", &gpu.uuid),
            ("capabilities.gpus.pci_bus_id", &gpu.pci_bus_id),
            ("capabilities.gpus.driver_version", &gpu.driver_version),
            ("capabilities.gpus.cuda_version", &gpu.cuda_version),
            ("capabilities.gpus.rocm_version", &gpu.rocm_version),
            (
                "capabilities.gpus.compute_capability",
                &gpu.compute_capability,
            ),
            ("capabilities.gpus.architecture", &gpu.architecture),
            ("capabilities.gpus.mig_mode", &gpu.mig_mode),
        ] {
            if let Some(value) = value {
                check_text(field, value)?;
            }
        }
        if gpu.mig_instances.len() > MAX_LIST_LEN {
            return Err(field_error(
                "capabilities.gpus.mig_instances",
                "too many MIG instances",
            ));
        }
        for instance in &gpu.mig_instances {
            check_text("capabilities.gpus.mig_instances.uuid", &instance.uuid)?;
            check_text("capabilities.gpus.mig_instances.profile", &instance.profile)?;
            check_amount(
                "capabilities.gpus.mig_instances.memory_gb",
                instance.memory_gb,
            )?;
        }
    }
    check_list("capabilities.models", &caps.models)?;
    check_list("capabilities.tags", &caps.tags)?;
    if let Some(ollama) = &caps.ollama {
        check_text("capabilities.ollama.version", &ollama.version)?;
        if ollama.models.len() > MAX_LIST_LEN {
            return Err(field_error("capabilities.ollama.models", "too many models"));
        }
        for model in &ollama.models {
            check_text("capabilities.ollama.models.name", &model.name)?;
        }
    }
    Ok(())
}

fn validate_metrics(metrics: &Metrics) -> Result<(), ValidationError> {
    for (field, value) in [
        ("metrics.cpu_pct", metrics.cpu_pct),
        ("metrics.ram_pct", metrics.ram_pct),
        ("metrics.gpu_pct", metrics.gpu_pct),
        ("metrics.disk_pct", metrics.disk_pct),
    ] {
        if let Some(value) = value {
            if !(0.0..=100.0).contains(&value) {
                return Err(field_error(field, format!("{value} is not a percentage")));
            }
        }
    }
    if let Some(load) = metrics.load_1m {
        check_amount("metrics.load_1m", load)?;
    }
    if metrics.gpus.len() > MAX_LIST_LEN {
        return Err(field_error("metrics.gpus", "too many GPUs"));
    }
    for gpu in &metrics.gpus {
        if let Some(util) = gpu.util_pct {
            if !(0.0..=100.0).contains(&util) {
                return Err(field_error(
                    "metrics.gpus.util_pct",
                    format!("{util} is not a percentage"),
                ));
            }
        }
        for (field, value) in [
            ("metrics.gpus.vram_used_gb", gpu.vram_used_gb),
            ("metrics.gpus.power_w", gpu.power_w),
            ("metrics.gpus.power_limit_w", gpu.power_limit_w),
        ] {
            if let Some(value) = value {
                check_amount(field, value)?;
            }
        }
        if let Some(t) = gpu.temperature_c {
            if !t.is_finite() || !(-100.0..=300.0).contains(&t) {
                return Err(field_error(
                    "metrics.gpus.temperature_c",
                    format!("{t} is not a temperature"),
                ));
            }
        }
        check_list("metrics.gpus.throttle", &gpu.throttle)?;
        if let Some(health) = &gpu.health {
            if !GPU_HEALTH_STATES.contains(&health.state.as_str()) {
                return Err(field_error(
                    "metrics.gpus.health.state",
                    format!(
                        "{:?}: expected {}",
                        health.state.chars().take(32).collect::<String>(),
                        GPU_HEALTH_STATES.join(", ")
                    ),
                ));
            }
            check_list("metrics.gpus.health.reasons", &health.reasons)?;
        }
    }
    Ok(())
}

fn check_text(field: &str, value: &str) -> Result<(), ValidationError> {
    if value.len() > MAX_TEXT_LEN {
        return Err(field_error(
            field,
            format!("{} bytes, at most {MAX_TEXT_LEN} allowed", value.len()),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(field_error(field, "holds control characters"));
    }
    Ok(())
}

fn check_list(field: &str, values: &[String]) -> Result<(), ValidationError> {
    if values.len() > MAX_LIST_LEN {
        return Err(field_error(
            field,
            format!("{} entries, at most {MAX_LIST_LEN} allowed", values.len()),
        ));
    }
    values.iter().try_for_each(|v| check_text(field, v))
}

fn check_amount(field: &str, value: f64) -> Result<(), ValidationError> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(field_error(
            field,
            format!("{value} is not a non-negative number"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> NodeId {
        NodeId::parse(s).expect("valid id")
    }

    fn event(kind: &str, node: &str) -> NodeEvent {
        NodeEvent {
            r#type: kind.into(),
            node_id: node.into(),
            ..NodeEvent::default()
        }
    }

    #[test]
    fn minimal_events_are_valid() {
        for kind in ["register", "heartbeat", "deregister"] {
            let valid = validate_event(event(kind, "n1"), &id("n1")).expect("valid");
            assert_eq!(valid.kind.as_str(), kind);
        }
    }

    #[test]
    fn spoofed_ids_are_rejected() {
        let err = validate_event(event("heartbeat", "n2"), &id("n1")).expect_err("spoofed");
        assert!(matches!(err, ValidationError::SpoofedId { .. }));
    }

    #[test]
    fn bad_fields_are_rejected() {
        assert!(validate_event(event("reboot", "n1"), &id("n1")).is_err());
        assert!(validate_event(event("heartbeat", "N1"), &id("n1")).is_err());
        assert!(validate_event(event("heartbeat", ""), &id("n1")).is_err());

        let mut e = event("register", "n1");
        e.labels.insert("bad key".into(), "x".into());
        assert!(validate_event(e, &id("n1")).is_err());

        let mut e = event("heartbeat", "n1");
        e.metrics = Some(Metrics {
            cpu_pct: Some(f64::NAN),
            ..Metrics::default()
        });
        assert!(validate_event(e, &id("n1")).is_err());

        let mut e = event("register", "n1");
        e.capabilities = Some(Capabilities {
            ram_gb: -1.0,
            ..Capabilities::default()
        });
        assert!(validate_event(e, &id("n1")).is_err());

        let mut e = event("register", "n1");
        e.node_name = Some("x".repeat(MAX_TEXT_LEN + 1));
        assert!(validate_event(e, &id("n1")).is_err());
    }

    #[test]
    fn label_keys_short_or_kubernetes_qualified() {
        for good in [
            "region",
            "a-",
            "f/g.h-i",
            "nvidia.com/gpu.product",
            "1234",
            "feature.node.kubernetes.io/cpu-cpuid.AVX512F",
        ] {
            assert!(is_label_key(good), "{good}");
        }
        let long_prefix = format!("{}.example.com/name", "a".repeat(60));
        assert!(long_prefix.len() > 63 && is_label_key(&long_prefix));
        for bad in [
            "",
            "-a",
            &"a".repeat(64),
            &"a".repeat(254),
            &format!("Upper.Example.com/{}", "n".repeat(50)),
            "a b",
            &format!("{long_prefix}/{}", "n".repeat(64)),
        ] {
            assert!(!is_label_key(bad), "{bad}");
        }
    }
}
