//! The event stream's keeper: a task of partition 0's leader that looks at
//! `NODE_EVENTS` every [`LOOK_EVERY`], grows it to its history budget and
//! tells health (and, through the worker, an alert) when its history turns
//! short or long enough again (see `history`).
//!
//! It runs beside the worker's loop, not in it: a registration wave fills
//! the 1 GiB the stream is created with in about 30 s at a million nodes,
//! and the worker, busy with batches whose writes wait on a swamped server,
//! looked between them, seconds apart, while the stream discarded
//! registrations it had not read.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use chrono::Utc;
use schemas::Alert;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use super::history::{HistorySettings, HistoryWatch, StreamFigures};
use crate::state::RegistryState;

/// How often the keeper looks at the stream.
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// How long a stream no growth fitted is left at its size before a growth
/// is asked again (storage may have been freed meanwhile).
const REFUSED_WAIT: Duration = Duration::from_secs(300);

/// How long one look may take (a swamped server answers slowly; a look
/// that times out is made again at the next).
const LOOK_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether the server refused a size for want of storage (its
/// `max_file_store`, or the account's limit): a smaller one may fit.
fn lacks_storage(e: &jetstream::context::UpdateStreamError) -> bool {
    use async_nats::jetstream::{context::CreateStreamErrorKind, ErrorCode};
    matches!(
        e.kind(),
        CreateStreamErrorKind::JetStream(e)
            if e.error_code() == ErrorCode::STORAGE_RESOURCES_EXCEEDED
                || e.error_code() == ErrorCode::INSUFFICIENT_RESOURCES
    )
}

/// What the keeper looks after, and where it tells what it sees.
#[derive(Debug)]
pub(super) struct StreamKeeper {
    /// The JetStream context the stream is read and updated through.
    pub js: jetstream::Context,
    /// The event stream's name.
    pub stream: String,
    /// The minimum history, the budget, the cap.
    pub settings: HistorySettings,
    /// Where health reads the history held.
    pub state: Arc<RegistryState>,
    /// The partition whose leader runs it (health is told per partition).
    pub partition: u32,
    /// The worker publishes the alerts (it retries those not stored).
    pub alerts: mpsc::Sender<Alert>,
}

impl StreamKeeper {
    /// Looks at the stream until the worker's term ends (the alert channel
    /// closes) or the task is aborted.
    pub(super) async fn run(self) {
        let mut watch = HistoryWatch::new(self.settings);
        let mut refused = None;
        let mut every = tokio::time::interval(LOOK_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if self.alerts.is_closed() {
                return;
            }
            let span = info_span!("event_stream_look", stream = %self.stream);
            let alert = self.look(&mut watch, &mut refused).instrument(span).await;
            if let Some(alert) = alert {
                if self.alerts.send(alert).await.is_err() {
                    return;
                }
            }
        }
    }

    /// One look: the stream's figures, a growth when due (not again for
    /// [`REFUSED_WAIT`] from a size at which none fitted: `refused`),
    /// health told; returns an alert to publish.
    async fn look(
        &self,
        watch: &mut HistoryWatch,
        refused: &mut Option<(i64, Instant)>,
    ) -> Option<Alert> {
        let info = match tokio::time::timeout(LOOK_TIMEOUT, self.js.get_stream(&self.stream)).await
        {
            Ok(Ok(handle)) => handle.cached_info().clone(),
            Ok(Err(e)) => {
                debug!(error = %e, "reading the event stream");
                return None;
            }
            Err(_) => {
                debug!(
                    timeout_s = LOOK_TIMEOUT.as_secs(),
                    "reading the event stream: no answer in time"
                );
                return None;
            }
        };
        let figures = StreamFigures {
            last_seq: info.state.last_sequence,
            messages: info.state.messages,
            bytes: info.state.bytes,
            max_bytes: info.config.max_bytes,
            max_messages: info.config.max_messages,
            max_age: info.config.max_age,
        };
        let step = watch.observe(Utc::now(), figures);
        let was = info.config.max_bytes;
        let waiting = refused.is_some_and(|(at, when)| at == was && when.elapsed() < REFUSED_WAIT);
        if let Some(wanted) = step.grow_to {
            if waiting {
                debug!(
                    wanted,
                    "not growing the event stream: no size fitted a moment ago"
                );
            } else if !self.grow(&info, wanted).await {
                *refused = Some((was, Instant::now()));
            }
        }
        self.state
            .set_event_history(self.partition, watch.capacity(), watch.is_short());
        let alert = step.alert?;
        warn!(
            message = alert.message.as_deref().unwrap_or_default(),
            "event stream history"
        );
        Some(alert)
    }

    /// Sets the stream's `max_bytes` to `wanted`, or to the largest half of
    /// it the server has storage for: an hour of a million nodes'
    /// registration wave is far more than most disks, and a stream left at
    /// its first size while the wave fills it discards events not yet read.
    /// Halves down to the least growth the history rule makes (a tenth).
    /// Returns whether it grew.
    async fn grow(&self, info: &jetstream::stream::Info, wanted: i64) -> bool {
        let was = info.config.max_bytes;
        let mut size = wanted;
        loop {
            let mut config = info.config.clone();
            config.max_bytes = size;
            match self.js.update_stream(config).await {
                Ok(_) => {
                    info!(
                        was,
                        max_bytes = size,
                        wanted,
                        bytes = info.state.bytes,
                        "grew the event stream to hold its history budget at the current rate"
                    );
                    return true;
                }
                Err(e) if lacks_storage(&e) && size / 2 > was + was / 10 => {
                    debug!(size, error = %e, "no storage for this size of the event stream; asking for half");
                    size /= 2;
                }
                Err(e) => {
                    warn!(error = %e, was, max_bytes = size, wanted, "growing the event stream");
                    return false;
                }
            }
        }
    }
}
