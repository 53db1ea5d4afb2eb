//! The NATS side of a message: the encoding named by its headers, the
//! headers and body of a reply (a success, or a coded error), and where a
//! connection is attached.

use async_nats::HeaderMap;
use bytes::Bytes;

use crate::codec::{CodecError, Encoding, HEADER_CONTENT_TYPE};
use crate::error::{ServiceError, HEADER_ERROR, HEADER_ERROR_CODE};

/// The encoding a message's `Content-Type` header names (JSON when absent).
pub fn encoding_of(headers: Option<&HeaderMap>) -> Result<Encoding, CodecError> {
    let value = headers
        .and_then(|h| h.get(HEADER_CONTENT_TYPE))
        .map(|v| v.as_str());
    Encoding::from_content_type(value)
}

/// The headers and body of a reply: the encoded answer with its
/// Content-Type, or a coded error (`Nats-Service-Error-Code`,
/// `Nats-Service-Error`, and the JSON body `{"error":{...}}`).
pub fn reply_parts(
    result: Result<Vec<u8>, ServiceError>,
    encoding: Encoding,
) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    match result {
        Ok(body) => {
            headers.insert(HEADER_CONTENT_TYPE, encoding.content_type());
            (headers, body.into())
        }
        Err(error) => {
            headers.insert(HEADER_CONTENT_TYPE, Encoding::Json.content_type());
            headers.insert(HEADER_ERROR_CODE, error.code.to_string().as_str());
            headers.insert(HEADER_ERROR, error.message.as_str());
            (headers, error.body().into())
        }
    }
}

/// The coded error a reply carries, if it is one.
pub fn error_of(headers: Option<&HeaderMap>, body: &[u8]) -> Option<ServiceError> {
    let headers = headers?;
    ServiceError::from_reply(
        headers.get(HEADER_ERROR_CODE).map(|v| v.as_str()),
        headers.get(HEADER_ERROR).map(|v| v.as_str()),
        body,
    )
}

/// Where a connection is attached, from its server's INFO: the server's
/// name (its id when unnamed), cluster and JetStream domain, with the round
/// trip measured to it. `None` before the first INFO (not connected yet).
pub fn link_of(info: &async_nats::ServerInfo, rtt_ms: Option<f64>) -> Option<crate::NatsLink> {
    let server = if info.server_name.is_empty() {
        info.server_id.clone()
    } else {
        info.server_name.clone()
    };
    if server.is_empty() {
        return None;
    }
    Some(crate::NatsLink {
        server,
        cluster: info.cluster.clone().filter(|c| !c.is_empty()),
        domain: info.domain.clone().filter(|d| !d.is_empty()),
        rtt_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    #[test]
    fn error_replies_round_trip() {
        let error = ServiceError::new(ErrorCode::NotFound, "no node x");
        let (headers, body) = reply_parts(Err(error.clone()), Encoding::Protobuf);
        assert_eq!(encoding_of(Some(&headers)).ok(), Some(Encoding::Json));
        assert_eq!(error_of(Some(&headers), &body), Some(error));
        let (headers, body) = reply_parts(Ok(b"{}".to_vec()), Encoding::Protobuf);
        assert_eq!(encoding_of(Some(&headers)).ok(), Some(Encoding::Protobuf));
        assert_eq!(error_of(Some(&headers), &body), None);
    }
}
