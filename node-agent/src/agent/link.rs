//! Where the agent is attached to NATS, for discovery's `near`: its
//! server (from the connection's INFO) and its round trip to it.

use std::time::Duration;

use futures::StreamExt as _;
use tokio::time::Instant;

/// The agent's server and its round trip to it; `None` while not connected
/// (no server to name).
pub(super) async fn nats_link(
    client: &async_nats::Client,
    inbox_prefix: &str,
) -> Option<schemas::NatsLink> {
    // The echo comes back only once connected: the INFO read after it is
    // the server's.
    let rtt_ms = round_trip(client, inbox_prefix)
        .await
        .map(|rtt| (rtt.as_secs_f64() * 100_000.0).round() / 100.0);
    schemas::nats::link_of(&client.server_info(), rtt_ms)
}

/// One message through the agent's own inbox and back (`<prefix>.rtt`,
/// which only it subscribes to): a round trip to its server, the best of
/// three. `None` when none comes back within a second (or the credentials
/// do not allow the echo, or the connection is not up within 3 s).
/// (async-nats' `flush` writes the buffer without waiting for a PONG, so
/// it cannot measure this.)
async fn round_trip(client: &async_nats::Client, inbox_prefix: &str) -> Option<Duration> {
    let subject = format!("{inbox_prefix}.rtt");
    let mut echo = client.subscribe(subject.clone()).await.ok()?;
    // The subscription is in place on the server before the first probe
    // (while connecting, this waits for the connection, up to a bound).
    tokio::time::timeout(Duration::from_secs(3), client.flush())
        .await
        .ok()?
        .ok()?;
    let mut best: Option<Duration> = None;
    for _ in 0..3 {
        let started = Instant::now();
        client
            .publish(subject.clone(), bytes::Bytes::new())
            .await
            .ok()?;
        match tokio::time::timeout(Duration::from_secs(1), echo.next()).await {
            Ok(Some(_)) => {
                let rtt = started.elapsed();
                best = Some(best.map_or(rtt, |b| b.min(rtt)));
            }
            _ => break,
        }
    }
    let _ = echo.unsubscribe().await;
    best
}
