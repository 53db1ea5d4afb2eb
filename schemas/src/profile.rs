//! A role's configuration profile: the value of key `<role>` in the
//! `profiles` bucket, written by `nodectl profile set` and applied live by
//! every agent of that role.
//!
//! Both sides check it the same way, here: nodectl before it writes, the
//! agent before it applies. Unknown keys are refused, so a key a newer
//! nodectl knows and an older agent does not is an error the node reports,
//! never a setting silently ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::validate::{validate_labels, MAX_LIST_LEN, MAX_TEXT_LEN};

/// Largest profile, as stored (JSON).
pub const MAX_PROFILE_BYTES: usize = 64 * 1024;
/// Most services one profile may probe.
pub const MAX_PROFILE_SERVICES: usize = 64;
/// Shortest heartbeat interval a profile may set.
pub const MIN_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest heartbeat interval a profile may set.
pub const MAX_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(3600);
/// Shortest detection interval a profile may set.
pub const MIN_DETECT_INTERVAL: Duration = Duration::from_secs(1);
/// Longest detection interval a profile may set.
pub const MAX_DETECT_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// A local service an agent reports as up when its TCP address accepts a
/// connection (from the agent's configuration or its role's profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceProbe {
    /// The name heartbeats report (e.g. `ollama`, `vllm`).
    pub name: String,
    /// `host:port` to connect to (e.g. `127.0.0.1:11434`).
    pub address: String,
}

impl ServiceProbe {
    /// Checks the name and that the address has the `host:port` form.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!(
                "service name {:?}: 1 to 63 characters of A-Z a-z 0-9 - _ .",
                self.name
            ));
        }
        let port_ok = self.address.len() <= MAX_TEXT_LEN
            && self
                .address
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!(
                "service {}: address {:?} is not host:port",
                self.name, self.address
            ));
        }
        Ok(())
    }
}

/// What a profile may set for every node of its role. Every key is
/// optional; unknown keys are an error.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Time between heartbeats (`"10s"`), over the agent's own setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval: Option<String>,
    /// Time between capability detections (`"5m"`), over the agent's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detect_interval: Option<String>,
    /// Labels every node of the role gets (a node's own labels win).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Services to probe, besides the node's own (its own win by name).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<ServiceProbe>,
    /// Models every node of the role should have; one lacking any is
    /// flagged (`profile_mismatch`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expected_models: Vec<String>,
    /// Free-form settings for the node's own services (a JSON object):
    /// written to `<state-dir>/profile.json` and answered on the `profile`
    /// task.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<serde_json::Map<String, serde_json::Value>>,
}

/// Why a profile is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProfileError {
    /// Over [`MAX_PROFILE_BYTES`].
    #[error("profile of {0} bytes, at most {MAX_PROFILE_BYTES}")]
    TooLarge(usize),
    /// Not the JSON of a profile: an unknown key, a wrong type.
    #[error("{0}")]
    Malformed(String),
    /// A value out of bounds.
    #[error("{field}: {reason}")]
    Invalid {
        /// The key.
        field: &'static str,
        /// What is wrong with its value.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ProfileError {
    ProfileError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl Profile {
    /// Size-checks, strictly decodes and validates a stored profile.
    pub fn decode(bytes: &[u8]) -> Result<Self, ProfileError> {
        if bytes.len() > MAX_PROFILE_BYTES {
            return Err(ProfileError::TooLarge(bytes.len()));
        }
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| ProfileError::Malformed(e.to_string()))?;
        Self::from_value(value)
    }

    /// Checks a profile built from another form (TOML), as [`Profile::decode`].
    pub fn from_value(value: serde_json::Value) -> Result<Self, ProfileError> {
        // serde would take a list as the fields in order: a profile is a table.
        if !value.is_object() {
            return Err(ProfileError::Malformed(
                "a profile is a JSON object (a TOML table)".into(),
            ));
        }
        let profile: Self =
            serde_json::from_value(value).map_err(|e| ProfileError::Malformed(e.to_string()))?;
        profile.validate()?;
        let size = profile.encode().len();
        if size > MAX_PROFILE_BYTES {
            return Err(ProfileError::TooLarge(size));
        }
        Ok(profile)
    }

    /// The stored form (JSON).
    pub fn encode(&self) -> Vec<u8> {
        // NOTE: strings, maps and JSON values always serialise.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The heartbeat interval it sets, if any.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        self.heartbeat_interval
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
    }

    /// The detection interval it sets, if any.
    pub fn detect_interval(&self) -> Option<Duration> {
        self.detect_interval
            .as_deref()
            .and_then(|t| humantime::parse_duration(t).ok())
    }

    /// Checks every value against its bounds.
    pub fn validate(&self) -> Result<(), ProfileError> {
        for (field, text, min, max) in [
            (
                "heartbeat_interval",
                &self.heartbeat_interval,
                MIN_HEARTBEAT_INTERVAL,
                MAX_HEARTBEAT_INTERVAL,
            ),
            (
                "detect_interval",
                &self.detect_interval,
                MIN_DETECT_INTERVAL,
                MAX_DETECT_INTERVAL,
            ),
        ] {
            let Some(text) = text else { continue };
            let value = humantime::parse_duration(text)
                .map_err(|e| invalid(field, format!("{text:?}: {e} (e.g. \"30s\", \"5m\")")))?;
            if value < min || value > max {
                return Err(invalid(
                    field,
                    format!(
                        "{text} is outside {} to {}",
                        humantime::format_duration(min),
                        humantime::format_duration(max)
                    ),
                ));
            }
        }
        validate_labels(&self.labels).map_err(|e| invalid("labels", e.to_string()))?;
        if self.services.len() > MAX_PROFILE_SERVICES {
            return Err(invalid(
                "services",
                format!(
                    "{} services, at most {MAX_PROFILE_SERVICES}",
                    self.services.len()
                ),
            ));
        }
        for service in &self.services {
            service.check().map_err(|e| invalid("services", e))?;
        }
        if self.expected_models.len() > MAX_LIST_LEN {
            return Err(invalid(
                "expected_models",
                format!(
                    "{} models, at most {MAX_LIST_LEN}",
                    self.expected_models.len()
                ),
            ));
        }
        if let Some(bad) = self
            .expected_models
            .iter()
            .find(|m| m.is_empty() || m.len() > MAX_TEXT_LEN || m.chars().any(|c| c.is_control()))
        {
            return Err(invalid(
                "expected_models",
                format!("{bad:?} is not a model name (1 to {MAX_TEXT_LEN} bytes)"),
            ));
        }
        Ok(())
    }

    /// The models it expects that `installed` lacks, in its order.
    pub fn missing_models(&self, installed: &[String]) -> Vec<String> {
        self.expected_models
            .iter()
            .filter(|m| !installed.contains(m))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_profile_round_trips() {
        let json = r#"{"heartbeat_interval":"10s","detect_interval":"1m",
            "labels":{"tier":"gpu"},"services":[{"name":"vllm","address":"127.0.0.1:8000"}],
            "expected_models":["qwen3:32b"],"config":{"llm":{"max_tokens":4096}}}"#;
        let profile = Profile::decode(json.as_bytes()).expect("profile");
        assert_eq!(profile.heartbeat_interval(), Some(Duration::from_secs(10)));
        assert_eq!(profile.detect_interval(), Some(Duration::from_secs(60)));
        assert_eq!(Profile::decode(&profile.encode()), Ok(profile.clone()));
        assert_eq!(
            profile.missing_models(&["qwen3:8b".into()]),
            vec!["qwen3:32b".to_owned()]
        );
        assert!(profile.missing_models(&["qwen3:32b".into()]).is_empty());
        assert_eq!(Profile::decode(b"{}"), Ok(Profile::default()));
    }

    #[test]
    fn bad_profiles_are_named() {
        for (bad, want) in [
            (
                r#"{"heartbeat_intervl":"10s"}"#,
                "unknown field `heartbeat_intervl`",
            ),
            (
                r#"{"heartbeat_interval":"fast"}"#,
                "heartbeat_interval: \"fast\"",
            ),
            (r#"{"heartbeat_interval":"100ms"}"#, "outside 1s to 1h"),
            (r#"{"detect_interval":"2days"}"#, "outside"),
            (r#"{"labels":{"bad key!":"x"}}"#, "labels"),
            (
                r#"{"services":[{"name":"x","address":"nowhere"}]}"#,
                "not host:port",
            ),
            (r#"{"expected_models":[""]}"#, "not a model name"),
            (r#"{"config":[1,2]}"#, "invalid type"),
            (r#"[]"#, "a profile is a JSON object"),
            (r#"["10s"]"#, "a profile is a JSON object"),
        ] {
            let error = Profile::decode(bad.as_bytes()).expect_err(bad);
            assert!(error.to_string().contains(want), "{bad}: {error}");
        }
        let huge = format!(
            r#"{{"config":{{"x":"{}"}}}}"#,
            "y".repeat(MAX_PROFILE_BYTES)
        );
        assert!(matches!(
            Profile::decode(huge.as_bytes()),
            Err(ProfileError::TooLarge(_))
        ));
    }

    #[test]
    fn services_are_checked() {
        let probe = |name: &str, address: &str| ServiceProbe {
            name: name.into(),
            address: address.into(),
        };
        assert!(probe("ollama", "127.0.0.1:11434").check().is_ok());
        assert!(probe("ollama", "localhost:11434").check().is_ok());
        assert!(probe("", "127.0.0.1:1").check().is_err());
        assert!(probe("bad name", "127.0.0.1:1").check().is_err());
        assert!(probe("x", "127.0.0.1").check().is_err());
        assert!(probe("x", ":80").check().is_err());
        assert!(probe("x", "h:99999").check().is_err());
    }
}
