//! Publishing runs of messages to JetStream in order, every ack awaited,
//! in windows. An async-nats context lets at most `max_ack_inflight`
//! publishes (5 000 by default) wait for their acks; a publish past that
//! waits for a permit, and a permit comes back only when an ack is
//! awaited. Publishing a longer run before awaiting any ack therefore
//! waits for ever: a registry that raised 5 000 alerts in one sweep (a
//! site of 5 000 nodes going quiet at once) stopped there, for good.

use async_nats::jetstream;
use async_nats::HeaderMap;
use bytes::Bytes;

/// Publishes sent before their acks are awaited: far under the context's
/// in-flight limit, whatever else shares the context meanwhile.
pub const ACK_WINDOW: usize = 1000;

/// One message of a run: its subject, headers and payload.
pub type Outgoing = (String, HeaderMap, Bytes);

/// Publishes `messages` in order on `js`, [`ACK_WINDOW`] at a time, each
/// window's acks awaited before the next is sent; one result per message.
pub async fn publish_acked(
    js: &jetstream::Context,
    messages: impl IntoIterator<Item = Outgoing>,
) -> Vec<Result<(), async_nats::Error>> {
    let mut results = Vec::new();
    let mut messages = messages.into_iter().peekable();
    while messages.peek().is_some() {
        let mut sent = Vec::with_capacity(ACK_WINDOW);
        for (subject, headers, payload) in messages.by_ref().take(ACK_WINDOW) {
            sent.push(js.publish_with_headers(subject, headers, payload).await);
        }
        for sent in sent {
            results.push(match sent {
                Err(e) => Err(e.into()),
                Ok(ack) => ack.await.map(|_| ()).map_err(Into::into),
            });
        }
    }
    results
}
