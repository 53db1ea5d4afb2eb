//! Where a term reads the event stream from, and how it says what it has
//! done.
//!
//! The `registry` consumer acks all (`AckAll`): one ack of a batch's last
//! event covers the batch, so the server takes one ack per batch instead
//! of one per event. That is only sound while every event below the acked
//! one was processed, so deliveries must reach the worker in stream order
//! with none outstanding from before. A term therefore starts by
//! **rewinding** the consumer to its ack floor (`$JS.API.CONSUMER.RESET`,
//! nats-server 2.14+): whatever an earlier term (a dead leader's pull,
//! this instance's pull before a reconnect) was handed and did not ack is
//! delivered again at once, in order, instead of waiting for `ack_wait`
//! while later acks would cover it. The same rewind follows every pull
//! that is dropped (lost heartbeats, a reconnect) and every batch whose
//! effects could not be stored: nothing after a failed event is acked until
//! it has been applied.
//!
//! A consumer made by an older version acks each event (`AckExplicit`; the
//! policy of a consumer cannot be changed): the leader recreates it with
//! `AckAll` at its ack floor before its first pull, so nothing acked is
//! delivered again and nothing unacked is skipped.

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{self, stream};
use tracing::{info, warn};

/// How a term acks the events it applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acking {
    /// One ack for the batch's last event (`AckAll`).
    PerBatch,
    /// One ack per event (a consumer that could not be migrated).
    PerEvent,
}

impl Acking {
    /// How `consumer` must be acked.
    pub fn of(consumer: &PullConsumer) -> Self {
        if consumer.cached_info().config.ack_policy == consumer::AckPolicy::All {
            Self::PerBatch
        } else {
            Self::PerEvent
        }
    }
}

/// Where a rewind left the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewound {
    /// The last stream sequence acked: delivery resumes after it.
    pub floor: u64,
    /// The last stream sequence delivered before the rewind: events up to
    /// it come again (a redelivery, not a replay).
    pub delivered_before: u64,
}

/// Restarts delivery after the consumer's ack floor. `None` when the
/// server could not do it (not connected, or older than 2.14).
pub async fn rewind(consumer: &mut PullConsumer) -> Option<Rewound> {
    let delivered_before = match consumer.info().await {
        Ok(info) => info.delivered.stream_sequence,
        Err(e) => {
            warn!(error = %e, "reading the event consumer before rewinding it");
            return None;
        }
    };
    match consumer.reset(None).await {
        Ok(reset) => Some(Rewound {
            floor: reset.reset_seq,
            delivered_before,
        }),
        Err(e) => {
            warn!(error = %e, "rewinding the event consumer to its ack floor");
            None
        }
    }
}

/// The consumer, acking all: an older one that acks each event is
/// recreated at its ack floor (only the leader may, before it pulls).
/// On failure the consumer is left as it was and acked per event.
pub async fn ack_all(js: &jetstream::Context, consumer: PullConsumer) -> PullConsumer {
    if Acking::of(&consumer) == Acking::PerBatch {
        return consumer;
    }
    let info = consumer.cached_info().clone();
    let Ok(events) = js.get_stream(&info.stream_name).await else {
        return consumer;
    };
    let floor = match consumer.clone().info().await {
        Ok(info) => info.ack_floor.stream_sequence,
        Err(_) => return consumer,
    };
    let mut config = consumer::pull::Config {
        durable_name: info.config.durable_name.clone(),
        description: info.config.description.clone(),
        ack_policy: consumer::AckPolicy::All,
        ack_wait: info.config.ack_wait,
        max_ack_pending: info.config.max_ack_pending,
        deliver_policy: consumer::DeliverPolicy::All,
        filter_subject: info.config.filter_subject.clone(),
        ..Default::default()
    };
    if floor > 0 {
        config.deliver_policy = consumer::DeliverPolicy::ByStartSequence {
            start_sequence: floor + 1,
        };
    }
    if let Err(e) = events.delete_consumer(&info.name).await {
        warn!(error = %e, consumer = %info.name, "could not recreate the event consumer to ack per batch; acking each event");
        return consumer;
    }
    match recreate(&events, &info.name, config).await {
        Some(migrated) => {
            info!(consumer = %info.name, floor, "event consumer recreated to ack per batch (it acked each event)");
            migrated
        }
        None => consumer,
    }
}

async fn recreate(
    events: &stream::Stream,
    name: &str,
    config: consumer::pull::Config,
) -> Option<PullConsumer> {
    // The consumer is gone now: keep trying, or events would have no reader.
    let mut backoff = runtime_support::Backoff::new(
        std::time::Duration::from_millis(100),
        std::time::Duration::from_secs(5),
    );
    for _ in 0..20 {
        match events.create_consumer(config.clone()).await {
            Ok(consumer) => return Some(consumer),
            Err(e) => {
                warn!(error = %e, consumer = name, "recreating the event consumer; retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
    None
}

/// The last stream sequence this term may take as read before its first
/// delivery: the ack floor after a rewind; for a consumer that never
/// delivered anything, 0 when it was made with its stream (it misses every
/// event), the one before its start when it starts at a sequence, and the
/// one before the stream's first when it was added to an older stream.
pub fn read_up_to(info: &consumer::Info, stream: &stream::Info) -> u64 {
    if info.delivered.stream_sequence > 0 {
        return info
            .ack_floor
            .stream_sequence
            .max(info.delivered.stream_sequence);
    }
    if let consumer::DeliverPolicy::ByStartSequence { start_sequence } = info.config.deliver_policy
    {
        return start_sequence.saturating_sub(1);
    }
    let together = (info.created - stream.created).num_seconds() < 60;
    if together {
        0
    } else {
        stream.state.first_sequence.saturating_sub(1)
    }
}
