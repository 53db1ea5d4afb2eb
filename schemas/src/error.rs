//! Coded error replies: the headers and body every request-reply endpoint
//! sends when it cannot answer.

use crate::v1::{ErrorBody, ErrorReply};

/// Header with the one-line error text (NATS micro protocol).
pub const HEADER_ERROR: &str = "Nats-Service-Error";
/// Header with the numeric error code (NATS micro protocol).
pub const HEADER_ERROR_CODE: &str = "Nats-Service-Error-Code";

/// The codes an endpoint answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The request is malformed or invalid.
    BadRequest,
    /// The credentials or secret offered do not match.
    Unauthorized,
    /// Not allowed, e.g. a revoked join token.
    Forbidden,
    /// The thing asked for does not exist.
    NotFound,
    /// It conflicts with the state (e.g. a join token already used, a node
    /// id taken by another key).
    Conflict,
    /// It existed but is no more (e.g. an expired join token).
    Gone,
    /// The answerer is not ready yet (e.g. its index is still loading).
    NotReady,
    /// The answerer failed.
    Internal,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::Conflict => 409,
            Self::Gone => 410,
            Self::NotReady => 503,
            Self::Internal => 500,
        }
    }

    /// The code for a number, if it is one of ours.
    pub fn from_code(code: u16) -> Option<Self> {
        match code {
            400 => Some(Self::BadRequest),
            401 => Some(Self::Unauthorized),
            403 => Some(Self::Forbidden),
            404 => Some(Self::NotFound),
            409 => Some(Self::Conflict),
            410 => Some(Self::Gone),
            503 => Some(Self::NotReady),
            500 => Some(Self::Internal),
            _ => None,
        }
    }
}

/// An error as carried by a coded reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ServiceError {
    /// The numeric code: one of [`ErrorCode`]'s (a reply from another
    /// program may carry another).
    pub code: u16,
    /// One line saying what went wrong.
    pub message: String,
}

impl ServiceError {
    /// An error with one of our codes; the message is kept to one line.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let message: String = message.into();
        Self {
            code: code.code(),
            message: one_line(&message),
        }
    }

    /// The JSON body of the reply: `{"error":{"code":..,"message":..}}`.
    pub fn body(&self) -> Vec<u8> {
        let reply = ErrorReply {
            error: Some(ErrorBody {
                code: u32::from(self.code),
                message: self.message.clone(),
            }),
        };
        // NOTE: serialising a struct of a number and a string cannot fail.
        serde_json::to_vec(&reply).unwrap_or_default()
    }

    /// Reads a coded error from a reply's error-code header and body; `None`
    /// when the reply is not an error.
    pub fn from_reply(
        code_header: Option<&str>,
        text_header: Option<&str>,
        body: &[u8],
    ) -> Option<Self> {
        let code: u16 = code_header?.trim().parse().ok()?;
        let message = serde_json::from_slice::<ErrorReply>(body)
            .ok()
            .and_then(|r| r.error)
            .map(|e| e.message)
            .or_else(|| text_header.map(str::to_owned))
            .unwrap_or_default();
        Some(Self { code, message })
    }
}

/// Cuts a message to its first line and 512 characters, for a header.
fn one_line(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default();
    first.chars().take(512).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips() {
        for code in [400, 401, 403, 404, 409, 410, 500, 503] {
            let kind = ErrorCode::from_code(code).expect("one of ours");
            assert_eq!(kind.code(), code);
        }
        assert_eq!(ErrorCode::from_code(418), None);
    }

    #[test]
    fn body_has_the_contract_shape_and_parses_back() {
        let err = ServiceError::new(
            ErrorCode::BadRequest,
            "unknown field `capabilty`\nsecond line",
        );
        let body = err.body();
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            value,
            serde_json::json!({"error":{"code":400,"message":"unknown field `capabilty`"}})
        );
        assert_eq!(
            ServiceError::from_reply(Some("400"), None, &body),
            Some(err)
        );
        assert_eq!(ServiceError::from_reply(None, None, &body), None);
    }
}
