//! Control tasks on `node.<id>.tasks`: reannounce, ping, detect, profile.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::Message;
use schemas::codec::{self, Encoding, MAX_REQUEST_BYTES};
use schemas::error::{ErrorCode, ServiceError};
use schemas::status::TaskType;
use schemas::{DetectReply, PingReply, ReannounceReply, TaskRequest};
use tracing::{info, instrument, warn};

use super::{detect, Shared, AGENT_VERSION};

/// Answers one control task; returns whether a fresh `register` is due.
#[instrument(skip_all, fields(node_id = %agent.id))]
pub(super) async fn handle_task(agent: &Arc<Shared>, message: Message) -> bool {
    let mut reregister = false;
    let (encoding, result) = match schemas::nats::encoding_of(message.headers.as_ref()) {
        Err(e) => (
            Encoding::Json,
            Err(ServiceError::new(ErrorCode::BadRequest, e.to_string())),
        ),
        Ok(encoding) => {
            let result =
                match codec::decode::<TaskRequest>(&message.payload, encoding, MAX_REQUEST_BYTES) {
                    Err(e) => Err(ServiceError::new(ErrorCode::BadRequest, e.to_string())),
                    Ok(task) => match task.r#type.parse::<TaskType>() {
                        Ok(TaskType::Reannounce) => {
                            info!("asked to reannounce");
                            reregister = true;
                            Ok(codec::encode(&ReannounceReply { ok: true }, encoding))
                        }
                        Ok(TaskType::Ping) => Ok(codec::encode(
                            &PingReply {
                                node_id: agent.id.to_string(),
                                agent_version: AGENT_VERSION.to_owned(),
                                uptime_s: agent.started.elapsed().as_secs(),
                                last_publish_ok: agent.last_publish_ok.load(Ordering::Relaxed),
                            },
                            encoding,
                        )),
                        Ok(TaskType::Detect) => Ok(codec::encode(
                            &DetectReply {
                                capabilities: Some(detect(agent).await),
                            },
                            encoding,
                        )),
                        Ok(TaskType::Profile) => profile_reply(agent, encoding),
                        Err(unknown) => Err(ServiceError::new(
                            ErrorCode::NotFound,
                            format!(
                                "unknown task type {:?}, expected one of {}",
                                unknown.value,
                                TaskType::ALL.join(", ")
                            ),
                        )),
                    },
                };
            (encoding, result)
        }
    };
    if let Err(error) = &result {
        warn!(code = error.code, message = %error.message, "task refused");
    }
    if let Some(reply) = message.reply.filter(|r| {
        let safe = subjects::is_safe_reply(r);
        if !safe {
            warn!(reply = %r, "task with a reply subject that is not an inbox; not answered");
        }
        safe
    }) {
        let (headers, body) = schemas::nats::reply_parts(result, encoding);
        if let Err(e) = agent
            .client
            .publish_with_headers(reply, headers, body)
            .await
        {
            warn!(error = %e, "replying to a task");
        }
    }
    reregister
}

/// The role's profile as local services see it (JSON only: its `config`
/// is free-form JSON).
fn profile_reply(agent: &Arc<Shared>, encoding: Encoding) -> Result<Vec<u8>, ServiceError> {
    if encoding != Encoding::Json {
        return Err(ServiceError::new(
            ErrorCode::BadRequest,
            "the profile task is answered in JSON only (its config is free-form JSON)",
        ));
    }
    let role = agent.config().role.clone();
    let state = agent.profile.lock().unwrap_or_else(|p| p.into_inner());
    serde_json::to_vec(&state.view(&role))
        .map_err(|e| ServiceError::new(ErrorCode::Internal, e.to_string()))
}
