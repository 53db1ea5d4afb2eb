//! `registry.join`: a machine exchanges a one-time join token for its own
//! node credentials. The machine makes its key pair and sends only the
//! public key; the registry checks the token (digest, expiry, single use by
//! compare-and-swap), issues a user JWT for that key with the node's
//! permissions, and remembers the key under the node id.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::Utc;
use fleet_auth::token::{secret_matches, MAX_TOKEN_BYTES};
use fleet_auth::{Role, UserIssuer};
use futures::StreamExt;
use runtime_support::CancellationToken;
use schemas::codec::Encoding;
use schemas::error::{ErrorCode, ServiceError};
use schemas::join::{JoinReply, JoinRequest};
use schemas::meta::{NodeKeyRecord, TokenRecord, TokenState};
use subjects::meta_keys;
use subjects::NodeId;
use tokio::sync::watch;
use tracing::{info, info_span, warn, Instrument};

use crate::counters::Counters;

/// `registry_meta` did not answer: a 503, for the machine to retry.
fn unavailable(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::new(ErrorCode::NotReady, format!("registry_meta: {e}"))
}

/// Answers `registry.join` until `cancel` (every instance does, in the
/// registry's queue group).
pub async fn serve(
    client: async_nats::Client,
    meta: kv::Store,
    issuer: Arc<UserIssuer>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
) {
    let mut requests = match client
        .queue_subscribe(
            subjects::REGISTRY_JOIN,
            subjects::SERVICE_QUEUE_GROUP.into(),
        )
        .await
    {
        Ok(requests) => requests,
        Err(e) => {
            warn!(error = %e, "cannot serve joins");
            return;
        }
    };
    info!(account = issuer.account(), "serving joins");
    loop {
        let message = tokio::select! {
            () = cancel.cancelled() => break,
            next = requests.next() => match next {
                Some(message) => message,
                None => break,
            },
        };
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        if !subjects::is_safe_reply(&reply) {
            Counters::bump(&counters.joins_refused);
            warn!(reply = %reply, "join with a reply subject that is not an inbox; ignored");
            continue;
        }
        let result = join(&meta, &issuer, &message.payload)
            .instrument(info_span!("join"))
            .await;
        match &result {
            Ok(joined) => {
                Counters::bump(&counters.joins);
                info!(node_id = %joined.node_id, role = %joined.role, "node joined");
            }
            Err(e) => {
                Counters::bump(&counters.joins_refused);
                warn!(code = e.code, reason = %e.message, "join refused");
            }
        }
        let body = result.and_then(|joined| {
            serde_json::to_vec(&joined)
                .map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))
        });
        let (headers, body) = schemas::nats::reply_parts(body, Encoding::Json);
        if let Err(e) = client.publish_with_headers(reply, headers, body).await {
            warn!(error = %e, "answering a join");
        }
    }
}

/// Checks one join request and, when it is good, issues the credentials.
async fn join(
    meta: &kv::Store,
    issuer: &UserIssuer,
    payload: &[u8],
) -> Result<JoinReply, ServiceError> {
    if payload.len() > MAX_TOKEN_BYTES {
        return Err(ServiceError::new(
            ErrorCode::BadRequest,
            "join request too large",
        ));
    }
    let request: JoinRequest = serde_json::from_slice(payload)
        .map_err(|e| ServiceError::new(ErrorCode::BadRequest, format!("join request: {e}")))?;
    let node_id = NodeId::parse(&request.node_id)
        .map_err(|e| ServiceError::new(ErrorCode::BadRequest, e.to_string()))?;
    if !request.public_key.starts_with('U') {
        return Err(ServiceError::new(
            ErrorCode::BadRequest,
            "public_key must be a user nkey (U...)",
        ));
    }
    let key = meta_keys::token(&request.token_id);
    let entry = if request.token_id.chars().all(|c| c.is_ascii_hexdigit()) {
        meta.entry(&key).await.map_err(unavailable)?
    } else {
        None
    };
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        return Err(ServiceError::new(ErrorCode::NotFound, "unknown join token"));
    };
    let mut record: TokenRecord = serde_json::from_slice(&entry.value)
        .map_err(|e| ServiceError::new(ErrorCode::Internal, format!("token record: {e}")))?;
    if !secret_matches(&request.secret, &record.secret_sha256) {
        return Err(ServiceError::new(
            ErrorCode::Unauthorized,
            "join token secret does not match",
        ));
    }
    if let Some(used) = &record.used_at {
        if record.node_id.as_deref() == Some(node_id.as_str())
            && joined_key(meta, &node_id).await? == Some(request.public_key.clone())
        {
            // The same join again (its answer was lost): the same grant.
            return grant(issuer, &node_id, &request.public_key, record);
        }
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "join token already used at {used} by {}",
                record.node_id.as_deref().unwrap_or("?")
            ),
        ));
    }
    if let Some(revoked) = &record.revoked_at {
        return Err(ServiceError::new(
            ErrorCode::Forbidden,
            format!("join token revoked at {revoked}"),
        ));
    }
    let now = Utc::now();
    if record.state(now) == TokenState::Expired {
        return Err(ServiceError::new(
            ErrorCode::Gone,
            format!("join token expired at {}", record.expires_at),
        ));
    }
    let node_key = meta_keys::node_key(node_id.as_str());
    if meta
        .entry(&node_key)
        .await
        .map_err(unavailable)?
        .is_some_and(|e| e.operation == kv::Operation::Put)
    {
        return Err(ServiceError::new(
            ErrorCode::Conflict,
            format!(
                "node id {node_id} already has credentials; revoke them first or pick another id"
            ),
        ));
    }
    // Single use: the token is spent by a compare-and-swap on its record.
    record.used_at = Some(schemas::time::format(now));
    record.node_id = Some(node_id.to_string());
    let spent = serde_json::to_vec(&record)
        .map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))?;
    meta.update(&key, spent.into(), entry.revision)
        .await
        .map_err(|e| match e.kind() {
            // Another join spent it between our read and this write.
            kv::UpdateErrorKind::WrongLastRevision => {
                ServiceError::new(ErrorCode::Conflict, "join token already used")
            }
            _ => unavailable(e),
        })?;
    let reply = grant(issuer, &node_id, &request.public_key, record)?;
    let remembered = NodeKeyRecord {
        public_key: request.public_key.clone(),
        joined_at: schemas::time::format(now),
        token_id: request.token_id.clone(),
    };
    let remembered = serde_json::to_vec(&remembered)
        .map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))?;
    meta.create(&node_key, remembered.into())
        .await
        .map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => ServiceError::new(
                ErrorCode::Conflict,
                format!("node id {node_id} joined meanwhile"),
            ),
            _ => unavailable(e),
        })?;
    Ok(reply)
}

/// The public key a node id joined with, if it did.
async fn joined_key(meta: &kv::Store, node_id: &NodeId) -> Result<Option<String>, ServiceError> {
    let entry = meta
        .entry(meta_keys::node_key(node_id.as_str()))
        .await
        .map_err(unavailable)?;
    Ok(entry
        .filter(|e| e.operation == kv::Operation::Put)
        .and_then(|e| serde_json::from_slice::<NodeKeyRecord>(&e.value).ok())
        .map(|r| r.public_key))
}

/// The node's credentials (a user JWT for its key with the node role) and
/// what the token grants.
fn grant(
    issuer: &UserIssuer,
    node_id: &NodeId,
    public_key: &str,
    record: TokenRecord,
) -> Result<JoinReply, ServiceError> {
    let jwt = issuer
        .issue(
            &Role::Node(node_id.clone(), Some(record.role.clone())),
            node_id.as_str(),
            public_key,
            None,
        )
        .map_err(|e| ServiceError::new(ErrorCode::BadRequest, e.to_string()))?;
    Ok(JoinReply {
        jwt,
        node_id: node_id.to_string(),
        role: record.role,
        labels: record.labels,
    })
}

/// Keeps `registry_meta` from growing with every token ever made: while this
/// instance leads, forgets the records of tokens that expired more than
/// `retention` ago (used, revoked or never used), every quarter of
/// `retention` (at most every 10 minutes, at least every second).
pub async fn keep_tokens(
    meta: kv::Store,
    retention: Duration,
    leading: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let every = (retention / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !*leading.borrow() {
            continue;
        }
        match sweep_tokens(&meta, retention, Utc::now())
            .instrument(info_span!("token_sweep"))
            .await
        {
            Ok(0) => {}
            Ok(forgotten) => info!(forgotten, "forgot outlived join tokens"),
            Err(e) => warn!(error = %e, "sweeping join tokens"),
        }
    }
}

/// Forgets every token record outlived at `now`; returns how many went.
/// Records that do not decode are left for an admin to look at.
async fn sweep_tokens(
    meta: &kv::Store,
    retention: chrono::Duration,
    now: chrono::DateTime<Utc>,
) -> Result<usize, registry_kv::meta::MetaError> {
    let mut forgotten = 0;
    for key in registry_kv::meta::keys_under(meta, meta_keys::TOKEN_PREFIX).await? {
        let entry = match meta.entry(&key).await {
            Ok(entry) => entry,
            Err(e) => {
                warn!(key, error = %e, "reading a join token");
                continue;
            }
        };
        let outlived = match entry {
            // Deleted or purged by hand: only its marker is left.
            None => true,
            Some(entry) if entry.operation != kv::Operation::Put => true,
            Some(entry) => match serde_json::from_slice::<TokenRecord>(&entry.value) {
                Ok(record) => record.outlived(now, retention),
                Err(e) => {
                    warn!(key, error = %e, "a join token record that does not decode; left alone");
                    false
                }
            },
        };
        if outlived {
            registry_kv::meta::forget(meta, &key).await?;
            forgotten += 1;
        }
    }
    Ok(forgotten)
}
