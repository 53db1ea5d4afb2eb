//! Why an operator's operation failed.

use fleet_client::ClientError;

/// Why an operation failed, by kind.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A question to the registry or NATS failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The auth directory could not be used.
    #[error("{0}")]
    Auth(#[from] fleet_auth::AuthError),
    /// The registry's `registry_meta` bucket is not there.
    #[error("the registry's {bucket} bucket: {reason} (is the registry running?)")]
    NoMetaBucket {
        /// The bucket the operation was on.
        bucket: &'static str,
        /// Why it could not be opened.
        reason: String,
    },
    /// A NATS operation (a `registry_meta` read or write, a request) failed.
    #[error("{what}: {reason}")]
    Nats {
        /// What was attempted.
        what: String,
        /// Why it failed.
        reason: String,
    },
    /// A record changed between our read and our write (compare-and-swap).
    #[error("{0} changed meanwhile; look again")]
    Changed(String),
    /// What was asked for is not there.
    #[error("{0}")]
    NotFound(String),
    /// The input (a flag, an argument) is not usable.
    #[error("{0}")]
    Invalid(String),
    /// A stored record does not decode.
    #[error("{what}: unreadable record ({reason})")]
    Corrupt {
        /// Which record.
        what: String,
        /// The underlying reason, as reported.
        reason: String,
    },
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file that could not be used.
        path: String,
        /// The underlying reason, as reported.
        #[source]
        source: std::io::Error,
    },
    /// JSON could not be written.
    #[error("encoding JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The dashboard could not be served.
    #[error(transparent)]
    Dashboard(#[from] fleet_dashboard::DashboardError),
    /// A server refused what was pushed to it.
    #[error("the server refused the account update: {0}")]
    Refused(String),
}

impl Error {
    /// A failed NATS operation (a `registry_meta` read or write, a request).
    pub(crate) fn nats(what: impl Into<String>) -> impl FnOnce(String) -> Self {
        let what = what.into();
        move |reason| Self::Nats { what, reason }
    }

    /// Turns an I/O error on `path` into a [`Error::Io`].
    pub fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.display().to_string(),
            source,
        }
    }
}
