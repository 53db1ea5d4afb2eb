//! Role profiles in the `profiles` bucket: read from a TOML or JSON file,
//! checked as the agent will check them, written with their revisions kept.

use std::path::Path;

use async_nats::jetstream::kv;
use chrono::Utc;
use fleet_client::Client;
use futures::StreamExt;
use schemas::profile::{Profile, MAX_PROFILE_BYTES};
use serde::Serialize;

use crate::Error;

/// Largest profile file read (TOML is wordier than the JSON stored).
pub const MAX_PROFILE_FILE_BYTES: usize = 4 * MAX_PROFILE_BYTES;

/// One stored revision of a role's profile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Revision {
    /// The role.
    pub role: String,
    /// Its KV revision (what nodes report as `profile_revision`).
    pub revision: u64,
    /// When it was written (RFC 3339).
    pub at: String,
    /// `put`, or `delete` for a removal.
    pub operation: &'static str,
    /// The value as stored (JSON), if it is JSON; absent for a removal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<serde_json::Value>,
}

/// Opens the bucket (the registry provisions it; nodectl never creates it).
pub async fn open(client: &Client) -> Result<kv::Store, Error> {
    async_nats::jetstream::new(client.nats().clone())
        .get_key_value(subjects::BUCKET_PROFILES)
        .await
        .map_err(|e| Error::NoMetaBucket {
            bucket: subjects::BUCKET_PROFILES,
            reason: e.to_string(),
        })
}

/// Checks a role name.
pub fn check_role(role: &str) -> Result<(), Error> {
    if subjects::is_role_name(role) {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "role {role:?}: 1 to 63 characters of a-z 0-9 - _, starting with a letter or digit"
        )))
    }
}

/// Reads a profile file: JSON when it is named `.json` or starts with `{`,
/// TOML otherwise; checked as the agent checks it (unknown keys refused).
pub fn read_file(path: &Path) -> Result<Profile, Error> {
    let bytes = std::fs::read(path).map_err(Error::io(path))?;
    parse(path, &bytes)
}

/// Parses the text of a profile file named `path`.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Profile, Error> {
    let invalid = |why: String| Error::Invalid(format!("{}: {why}", path.display()));
    if bytes.len() > MAX_PROFILE_FILE_BYTES {
        return Err(invalid(format!(
            "{} bytes, at most {MAX_PROFILE_FILE_BYTES}",
            bytes.len()
        )));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| invalid(e.to_string()))?;
    let json = path.extension().is_some_and(|e| e == "json") || text.trim_start().starts_with('{');
    let value: serde_json::Value = if json {
        serde_json::from_str(text).map_err(|e| invalid(e.to_string()))?
    } else {
        toml::from_str(text).map_err(|e| invalid(e.to_string()))?
    };
    Profile::from_value(value).map_err(|e| invalid(e.to_string()))
}

/// Writes `role`'s profile; returns its revision.
pub async fn set(kv: &kv::Store, role: &str, profile: &Profile) -> Result<u64, Error> {
    check_role(role)?;
    profile
        .validate()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    kv.put(role, profile.encode().into())
        .await
        .map_err(|e| Error::nats(format!("writing the profile of {role}"))(e.to_string()))
}

/// `role`'s profile now, if it has one.
pub async fn get(kv: &kv::Store, role: &str) -> Result<Option<Revision>, Error> {
    check_role(role)?;
    let entry = kv
        .entry(role)
        .await
        .map_err(|e| Error::nats(format!("reading the profile of {role}"))(e.to_string()))?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .map(revision))
}

/// Every role's profile now, by role.
pub async fn list(kv: &kv::Store) -> Result<Vec<Revision>, Error> {
    let mut keys = kv
        .keys()
        .await
        .map_err(|e| Error::nats("listing profiles")(e.to_string()))?;
    let mut roles = Vec::new();
    while let Some(key) = keys.next().await {
        roles.push(key.map_err(|e| Error::nats("listing profiles")(e.to_string()))?);
    }
    roles.sort();
    let mut out = Vec::new();
    for role in roles {
        if let Some(found) = get(kv, &role).await? {
            out.push(found);
        }
    }
    Ok(out)
}

/// Removes `role`'s profile (its history stays): agents of the role go
/// back to their own configuration.
pub async fn remove(kv: &kv::Store, role: &str) -> Result<(), Error> {
    if get(kv, role).await?.is_none() {
        return Err(Error::NotFound(format!("no profile for role {role}")));
    }
    kv.delete(role)
        .await
        .map_err(|e| Error::nats(format!("removing the profile of {role}"))(e.to_string()))
}

/// Every revision of `role`'s profile the bucket keeps, oldest first.
pub async fn history(kv: &kv::Store, role: &str) -> Result<Vec<Revision>, Error> {
    check_role(role)?;
    let mut entries = kv
        .history(role)
        .await
        .map_err(|e| Error::nats(format!("reading the history of {role}"))(e.to_string()))?;
    let mut out = Vec::new();
    while let Some(entry) = entries.next().await {
        out.push(revision(entry.map_err(|e| {
            Error::nats(format!("reading the history of {role}"))(e.to_string())
        })?));
    }
    if out.is_empty() {
        return Err(Error::NotFound(format!("no profile for role {role}")));
    }
    Ok(out)
}

fn revision(entry: kv::Entry) -> Revision {
    let put = entry.operation == kv::Operation::Put;
    let at = schemas::time::format(entry.created.with_timezone(&Utc));
    Revision {
        role: entry.key,
        revision: entry.revision,
        at,
        operation: if put { "put" } else { "delete" },
        profile: put
            .then(|| serde_json::from_slice(&entry.value).ok())
            .flatten(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_files_are_read_and_checked() {
        let toml = br#"
heartbeat_interval = "10s"
expected_models = ["qwen3:32b"]
[labels]
tier = "gpu"
[[services]]
name = "vllm"
address = "127.0.0.1:8000"
[config.llm]
max_tokens = 4096
"#;
        let profile = parse(Path::new("gpu.toml"), toml).expect("toml");
        assert_eq!(profile.labels["tier"], "gpu");
        assert_eq!(profile.services[0].name, "vllm");
        let json = profile.encode();
        assert_eq!(parse(Path::new("gpu.json"), &json).expect("json"), profile);
        let bad = parse(Path::new("gpu.toml"), b"heartbeat = \"10s\"\n").expect_err("typo");
        assert!(
            bad.to_string().contains("unknown field `heartbeat`"),
            "{bad}"
        );
        let bad =
            parse(Path::new("gpu.toml"), b"heartbeat_interval = \"1ms\"\n").expect_err("bound");
        assert!(bad.to_string().contains("heartbeat_interval"), "{bad}");
        assert!(parse(Path::new("x.toml"), &vec![b'#'; MAX_PROFILE_FILE_BYTES + 1]).is_err());
        assert!(check_role("gpu-box").is_ok());
        assert!(check_role("a.b").is_err());
    }
}
