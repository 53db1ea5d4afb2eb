//! The node's identity: derived once, kept in `<state-dir>/node_id`.

use std::io::Write;
use std::path::{Path, PathBuf};

use subjects::NodeId;

/// File name of the stored id inside the state directory.
pub const NODE_ID_FILE: &str = "node_id";

/// Why the identity could not be established.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The state directory or the id file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The stored id is not a valid node id.
    #[error("{path} holds an invalid node id: {source}")]
    Invalid {
        /// The id file.
        path: PathBuf,
        /// Why it is invalid.
        source: subjects::SubjectError,
    },
}

/// The id to use: `configured` if given, else the one stored in
/// `state_dir`, else a new one derived from `hostname` and stored.
pub fn load_or_create(
    configured: Option<&str>,
    state_dir: &Path,
    hostname: &str,
) -> Result<NodeId, IdentityError> {
    let path = state_dir.join(NODE_ID_FILE);
    if let Some(id) = configured {
        return NodeId::parse(id).map_err(|source| IdentityError::Invalid { path, source });
    }
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            return NodeId::parse(text.trim())
                .map_err(|source| IdentityError::Invalid { path, source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(IdentityError::Io { path, source }),
    }
    let suffix = format!("{:08x}", rand::random::<u32>());
    let id = NodeId::derive(hostname, &suffix).map_err(|source| IdentityError::Invalid {
        path: path.clone(),
        source,
    })?;
    let io = |source| IdentityError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(|source| IdentityError::Io {
        path: state_dir.to_owned(),
        source,
    })?;
    // Write to a temp file and rename, so a crash never leaves half an id.
    let tmp = state_dir.join(format!(".{NODE_ID_FILE}.tmp"));
    let mut file = std::fs::File::create(&tmp).map_err(io)?;
    file.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)?;
    Ok(id)
}

#[cfg(test)]
mod tests;
