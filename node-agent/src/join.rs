//! `node-agent join --token T`: exchanges a one-time join token for this
//! node's own credentials. The node makes its key pair here; only the
//! public key leaves the machine. The credentials (`node.creds`) and what
//! the token granted (`join.json`: role, labels) are kept 0600 in the state
//! directory, where the agent finds them on every start.

use std::collections::BTreeMap;
use std::time::Duration;

use fleet_auth::token::JoinToken;
use schemas::join::{JoinReply, JoinRequest};
use serde::{Deserialize, Serialize};

use crate::config::{AgentConfig, CREDS_FILE};

/// What the token granted, kept in the state directory.
pub const JOINED_FILE: &str = "join.json";

/// How long to wait for one answer of the registry.
const JOIN_TIMEOUT: Duration = Duration::from_secs(15);
/// How long to keep asking while no registry answers (one starting or
/// failing over): a join is safe to repeat, the registry answers a repeat
/// of the same join (same token, node id and key) with the same grant.
const JOIN_PATIENCE: Duration = Duration::from_secs(60);

/// Why a join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The token is not a join token, or damaged.
    #[error(transparent)]
    Token(#[from] fleet_auth::AuthError),
    /// The node id could not be established.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// NATS could not be reached with the token's bootstrap credentials.
    #[error("connecting to NATS at {url}: {reason}")]
    Connect {
        /// The server URL that was tried.
        url: String,
        /// The underlying reason, as reported.
        reason: String,
    },
    /// No registry answered.
    #[error("no answer from the registry on {subject}: {reason}")]
    NoAnswer {
        /// The subject the request was sent on.
        subject: &'static str,
        /// The underlying reason, as reported.
        reason: String,
    },
    /// The registry refused the token.
    #[error("join refused ({code}): {message}")]
    Refused {
        /// The error code (401 wrong secret, 404 unknown, 409 used, 410 expired).
        code: u16,
        /// The underlying reason, as reported.
        message: String,
    },
    /// The answer could not be read.
    #[error("the registry's answer: {0}")]
    Answer(String),
}

/// What a join granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Joined {
    /// The id this node joined as: its credentials cover `node.<id>.*`.
    pub node_id: String,
    /// The role the token granted (used unless `--role` is given).
    pub role: String,
    /// The labels the token granted (used unless `--labels` are given).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Exchanges `token` for this node's credentials and stores them.
pub async fn join(config: &AgentConfig, token: &str) -> Result<Joined, JoinError> {
    let token = JoinToken::decode(token)?;
    let hostname = sysinfo::System::host_name().unwrap_or_else(|_| "localhost".to_owned());
    let id =
        crate::identity::load_or_create(config.node_id.as_deref(), &config.state_dir, &hostname)?;
    let key = nkeys::KeyPair::new_user();
    let connect_error = |reason: String| JoinError::Connect {
        url: config.nats_url.clone(),
        reason,
    };
    let options = async_nats::ConnectOptions::new()
        .name(format!("join-{id}"))
        .credentials(&token.creds)
        .map_err(|e| connect_error(format!("the token's bootstrap credentials: {e}")))?;
    // TLS as configured; the bootstrap credentials replace any creds.
    let tls = runtime_support::NatsAuth {
        creds: None,
        ..config.nats_auth()
    };
    let options = tls
        .apply(options)
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let client = options
        .connect(runtime_support::server_list(&config.nats_url))
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    let request = JoinRequest {
        token_id: token.id.clone(),
        secret: token.secret.clone(),
        node_id: id.to_string(),
        public_key: key.public_key(),
    };
    let payload: bytes::Bytes = serde_json::to_vec(&request)
        .map_err(|e| JoinError::Answer(e.to_string()))?
        .into();
    let give_up = tokio::time::Instant::now() + JOIN_PATIENCE;
    let mut backoff =
        runtime_support::Backoff::new(Duration::from_millis(250), Duration::from_secs(5));
    let reply = loop {
        let outcome = match tokio::time::timeout(
            JOIN_TIMEOUT,
            client.request(subjects::REGISTRY_JOIN, payload.clone()),
        )
        .await
        {
            Err(_) => Err(JoinError::NoAnswer {
                subject: subjects::REGISTRY_JOIN,
                reason: format!("nothing within {JOIN_TIMEOUT:?}"),
            }),
            Ok(Err(e)) => Err(JoinError::NoAnswer {
                subject: subjects::REGISTRY_JOIN,
                reason: e.to_string(),
            }),
            Ok(Ok(reply)) => {
                match schemas::nats::error_of(reply.headers.as_ref(), &reply.payload) {
                    Some(error) => Err(JoinError::Refused {
                        code: error.code,
                        message: error.message,
                    }),
                    None => Ok(reply),
                }
            }
        };
        match outcome {
            Ok(reply) => break reply,
            // No registry (yet), or its bucket unavailable: ask again.
            Err(e @ (JoinError::NoAnswer { .. } | JoinError::Refused { code: 503, .. })) => {
                let pause = backoff.next_delay();
                if tokio::time::Instant::now() + pause >= give_up {
                    return Err(e);
                }
                tracing::warn!(error = %e, retry_in = ?pause, "join not answered; asking again");
                tokio::time::sleep(pause).await;
            }
            Err(e) => return Err(e),
        }
    };
    let answer: JoinReply =
        serde_json::from_slice(&reply.payload).map_err(|e| JoinError::Answer(e.to_string()))?;
    let seed = key.seed().map_err(|e| JoinError::Answer(e.to_string()))?;
    fleet_auth::write_secret(
        &config.state_dir.join(CREDS_FILE),
        &fleet_auth::creds_file(&answer.jwt, &seed),
    )?;
    let joined = Joined {
        node_id: answer.node_id,
        role: answer.role,
        labels: answer.labels,
    };
    let text =
        serde_json::to_string_pretty(&joined).map_err(|e| JoinError::Answer(e.to_string()))?;
    fleet_auth::write_secret(&config.state_dir.join(JOINED_FILE), &text)?;
    Ok(joined)
}

/// Applies what a join granted (if this node joined) where the
/// configuration left the defaults: the role, and labels added under any
/// configured.
pub fn apply_joined(config: &mut AgentConfig) {
    let path = config.state_dir.join(JOINED_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return;
    };
    let Ok(joined) = serde_json::from_str::<Joined>(&text) else {
        tracing::warn!(path = %path.display(), "unreadable join record; ignored");
        return;
    };
    if config.role == AgentConfig::default().role {
        config.role = joined.role;
    }
    for (key, value) in joined.labels {
        config.labels.entry(key).or_insert(value);
    }
}
