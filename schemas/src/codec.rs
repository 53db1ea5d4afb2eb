//! JSON ⇄ protobuf, chosen by the `Content-Type` header, with size limits.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// The header that names a payload's encoding.
pub const HEADER_CONTENT_TYPE: &str = "Content-Type";
/// Content type of the JSON form (the default when the header is absent).
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of the protobuf form.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/protobuf";

/// Largest event payload accepted, in bytes.
pub const MAX_EVENT_BYTES: usize = 64 * 1024;
/// Largest request payload accepted, in bytes.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A payload encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoding {
    /// proto3 JSON mapping with the contract's snake_case names.
    #[default]
    Json,
    /// Binary protobuf.
    Protobuf,
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The payload is larger than allowed.
    #[error("payload is {size} bytes, at most {max} allowed")]
    TooLarge {
        /// Size of the payload.
        size: usize,
        /// The limit exceeded, in bytes.
        max: usize,
    },
    /// The Content-Type header names an encoding we do not speak.
    #[error("unsupported Content-Type {0:?}, expected application/json or application/protobuf")]
    UnsupportedContentType(String),
    /// The JSON form is malformed, has a wrong type, or an unknown field where
    /// those are refused.
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// The protobuf form is malformed.
    #[error("invalid protobuf: {0}")]
    Protobuf(#[from] prost::DecodeError),
    /// The JSON form is not an object (serde would read a list as the
    /// fields in order: a message is an object).
    #[error("invalid JSON: a message is a JSON object")]
    NotAnObject,
}

impl Encoding {
    /// The encoding named by a Content-Type value; JSON when absent.
    /// Parameters (`; charset=utf-8`) and case are ignored.
    pub fn from_content_type(value: Option<&str>) -> Result<Self, CodecError> {
        let Some(value) = value else {
            return Ok(Self::Json);
        };
        let media = value.split(';').next().unwrap_or_default().trim();
        if media.is_empty() || media.eq_ignore_ascii_case(CONTENT_TYPE_JSON) {
            Ok(Self::Json)
        } else if media.eq_ignore_ascii_case(CONTENT_TYPE_PROTOBUF)
            || media.eq_ignore_ascii_case("application/x-protobuf")
        {
            Ok(Self::Protobuf)
        } else {
            Err(CodecError::UnsupportedContentType(
                value.chars().take(64).collect(),
            ))
        }
    }

    /// The Content-Type value of this encoding.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => CONTENT_TYPE_JSON,
            Self::Protobuf => CONTENT_TYPE_PROTOBUF,
        }
    }
}

/// Decodes a message of either encoding after checking its size.
///
/// An empty JSON payload decodes as `{}`, so `nats req registry.discover ''`
/// asks for all online nodes.
pub fn decode<T>(payload: &[u8], encoding: Encoding, max_bytes: usize) -> Result<T, CodecError>
where
    T: prost::Message + DeserializeOwned + Default,
{
    if payload.len() > max_bytes {
        return Err(CodecError::TooLarge {
            size: payload.len(),
            max: max_bytes,
        });
    }
    match encoding {
        Encoding::Json => match payload.iter().find(|b| !b.is_ascii_whitespace()) {
            None => Ok(T::default()),
            Some(b'{') => Ok(crate::json::from_bytes(payload)?),
            Some(_) => Err(CodecError::NotAnObject),
        },
        Encoding::Protobuf => Ok(T::decode(payload)?),
    }
}

/// Encodes a message in the chosen encoding.
pub fn encode<T>(message: &T, encoding: Encoding) -> Vec<u8>
where
    T: prost::Message + Serialize,
{
    match encoding {
        // NOTE: the generated types hold only strings, numbers, lists and maps
        // with string keys, which serde_json always serialises.
        Encoding::Json => serde_json::to_vec(message).unwrap_or_default(),
        Encoding::Protobuf => message.encode_to_vec(),
    }
}

#[cfg(test)]
mod tests;
