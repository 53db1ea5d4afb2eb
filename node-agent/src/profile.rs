//! The role's profile: what the agent applies over its own configuration,
//! the last good one kept when a newer one cannot be applied, and its
//! `config` object written to `<state-dir>/profile.json` for local services.
//!
//! The watch on the `profiles` bucket is in [`watch`]; this file decides.

pub mod watch;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use schemas::profile::{Profile, ServiceProbe};
use schemas::validate::MAX_TEXT_LEN;
use serde::Serialize;

use crate::config::AgentConfig;

/// The file local services read the profile's `config` from.
pub const PROFILE_FILE: &str = "profile.json";

/// A change of the role's profile, as the watch saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// A value was put at `revision`.
    Put {
        /// Its KV revision.
        revision: u64,
        /// The stored bytes, not yet checked.
        value: Bytes,
    },
    /// The profile was removed (deleted or purged) at `revision`.
    Removed {
        /// The KV revision of the removal.
        revision: u64,
    },
}

/// The profile the agent has, and why it could not take the latest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileState {
    /// The profile in force and its revision (the last good one).
    pub applied: Option<(u64, Profile)>,
    /// Why the latest revision could not be applied.
    pub error: Option<String>,
}

/// What [`ProfileState::apply`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A new profile is in force (or none, after a removal).
    Applied,
    /// The update was refused; the last good profile stays.
    Refused,
    /// Nothing new (a revision already seen).
    Unchanged,
}

impl ProfileState {
    /// Takes an update: checks a new value and puts it in force, or keeps
    /// the last good one and says why.
    pub fn apply(&mut self, update: Update) -> Outcome {
        match update {
            Update::Put { revision, value } => {
                if self.applied.as_ref().is_some_and(|(r, _)| *r == revision) {
                    return Outcome::Unchanged;
                }
                match Profile::decode(&value) {
                    Ok(profile) => {
                        self.applied = Some((revision, profile));
                        self.error = None;
                        Outcome::Applied
                    }
                    Err(e) => {
                        let mut why = format!("revision {revision}: {e}");
                        truncate(&mut why, MAX_TEXT_LEN);
                        if self.error.as_ref() == Some(&why) {
                            return Outcome::Unchanged;
                        }
                        self.error = Some(why);
                        Outcome::Refused
                    }
                }
            }
            Update::Removed { .. } => {
                if self.applied.is_none() && self.error.is_none() {
                    return Outcome::Unchanged;
                }
                *self = Self::default();
                Outcome::Applied
            }
        }
    }

    /// The revision in force.
    pub fn revision(&self) -> Option<u64> {
        self.applied.as_ref().map(|(r, _)| *r)
    }

    /// The models the profile in force expects that `installed` lacks.
    pub fn missing_models(&self, installed: &[String]) -> Vec<String> {
        self.applied
            .as_ref()
            .map(|(_, p)| p.missing_models(installed))
            .unwrap_or_default()
    }

    /// The agent's configuration with the profile in force over `local`:
    /// the profile's intervals win (the role's policy), the node's own
    /// labels and services win over the profile's (the node knows itself).
    pub fn effective(&self, local: &AgentConfig) -> AgentConfig {
        let mut config = local.clone();
        let Some((_, profile)) = &self.applied else {
            return config;
        };
        if let Some(interval) = profile.heartbeat_interval() {
            config.heartbeat_interval = interval;
        }
        if let Some(interval) = profile.detect_interval() {
            config.detect_interval = interval;
        }
        let mut labels = profile.labels.clone();
        labels.extend(local.labels.clone());
        config.labels = labels;
        config.services = merge_services(&local.services, &profile.services);
        config
    }

    /// What the `profile` task answers and `profile.json` holds.
    pub fn view<'a>(&'a self, role: &'a str) -> ProfileView<'a> {
        ProfileView {
            role,
            revision: self.revision(),
            error: self.error.as_deref(),
            config: self.applied.as_ref().and_then(|(_, p)| p.config.as_ref()),
        }
    }
}

/// The node's own services, then the profile's whose names it does not use.
fn merge_services(local: &[ServiceProbe], profile: &[ServiceProbe]) -> Vec<ServiceProbe> {
    let mut services = local.to_vec();
    services.extend(
        profile
            .iter()
            .filter(|p| !local.iter().any(|l| l.name == p.name))
            .cloned(),
    );
    services
}

fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

/// The profile as local services see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProfileView<'a> {
    /// The node's role.
    pub role: &'a str,
    /// The revision in force (absent: none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Why the latest could not be applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<&'a str>,
    /// The profile's free-form settings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config: Option<&'a serde_json::Map<String, serde_json::Value>>,
}

/// Writes `<state-dir>/profile.json` atomically (a temporary file renamed
/// over it, mode 0600: settings may hold secrets), or removes it when no
/// profile is in force.
pub fn write_file(state_dir: &Path, view: &ProfileView<'_>) -> std::io::Result<PathBuf> {
    let path = state_dir.join(PROFILE_FILE);
    if view.revision.is_none() {
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => return Ok(path),
        }
    }
    std::fs::create_dir_all(state_dir)?;
    let temporary = state_dir.join(format!(".{PROFILE_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(view).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&temporary, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn put(revision: u64, json: &str) -> Update {
        Update::Put {
            revision,
            value: Bytes::copy_from_slice(json.as_bytes()),
        }
    }

    #[test]
    fn a_bad_revision_keeps_the_last_good_one_and_says_why() {
        let mut state = ProfileState::default();
        assert_eq!(
            state.apply(put(3, r#"{"heartbeat_interval":"5s"}"#)),
            Outcome::Applied
        );
        assert_eq!(state.apply(put(3, "{}")), Outcome::Unchanged);
        assert_eq!(
            state.apply(put(4, r#"{"heartbeat_interval":"5s","gpu_fan":"max"}"#)),
            Outcome::Refused
        );
        assert_eq!(state.revision(), Some(3), "the last good one stays");
        let why = state.error.clone().expect("why");
        assert!(
            why.starts_with("revision 4: unknown field `gpu_fan`"),
            "{why}"
        );
        assert_eq!(
            state.apply(put(4, r#"{"heartbeat_interval":"5s","gpu_fan":"max"}"#)),
            Outcome::Unchanged,
            "the same refusal (a watch reopened) is said once"
        );
        assert_eq!(state.apply(put(5, "{}")), Outcome::Applied);
        assert_eq!((state.revision(), state.error.as_deref()), (Some(5), None));
        assert_eq!(
            state.apply(Update::Removed { revision: 6 }),
            Outcome::Applied
        );
        assert_eq!(state, ProfileState::default());
        assert_eq!(
            state.apply(Update::Removed { revision: 7 }),
            Outcome::Unchanged
        );
    }

    #[test]
    fn the_profile_goes_over_the_local_configuration() {
        let local = AgentConfig {
            labels: [("region".to_owned(), "eu".to_owned())].into(),
            services: vec![ServiceProbe {
                name: "vllm".into(),
                address: "127.0.0.1:9000".into(),
            }],
            ..AgentConfig::default()
        };
        let mut state = ProfileState::default();
        assert_eq!(state.effective(&local), local, "no profile: as configured");
        state.apply(put(
            1,
            r#"{"heartbeat_interval":"7s","detect_interval":"1m",
                "labels":{"region":"us","tier":"gpu"},
                "services":[{"name":"vllm","address":"127.0.0.1:8000"},
                            {"name":"comfyui","address":"127.0.0.1:8188"}],
                "expected_models":["qwen3:32b","llama3:8b"]}"#,
        ));
        let config = state.effective(&local);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(7));
        assert_eq!(config.detect_interval, Duration::from_secs(60));
        assert_eq!(config.labels["region"], "eu", "the node's own label wins");
        assert_eq!(config.labels["tier"], "gpu");
        let services: Vec<(&str, &str)> = config
            .services
            .iter()
            .map(|s| (s.name.as_str(), s.address.as_str()))
            .collect();
        assert_eq!(
            services,
            vec![("vllm", "127.0.0.1:9000"), ("comfyui", "127.0.0.1:8188")]
        );
        assert_eq!(
            state.missing_models(&["llama3:8b".into()]),
            vec!["qwen3:32b".to_owned()]
        );
    }

    #[test]
    fn the_file_holds_the_config_and_goes_with_the_profile() {
        let dir = tempfile::tempdir().expect("dir");
        let mut state = ProfileState::default();
        state.apply(put(9, r#"{"config":{"llm":{"context":8192}}}"#));
        let path = write_file(dir.path(), &state.view("worker")).expect("write");
        let written: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        assert_eq!(
            written,
            serde_json::json!({"role":"worker","revision":9,"config":{"llm":{"context":8192}}})
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        state.apply(Update::Removed { revision: 10 });
        write_file(dir.path(), &state.view("worker")).expect("remove");
        assert!(!path.exists());
    }
}
