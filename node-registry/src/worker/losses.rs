//! Nothing lost silently: events the stream discarded before the worker
//! read them.
//!
//! `NODE_EVENTS` has limits (age, bytes) and discards its oldest events
//! when they are reached. Once the registry lags further behind than the
//! stream holds, the events it had not read yet are gone: its consumer
//! simply skips to the stream's new first event. The consumer takes every
//! subject of the stream, so the stream sequences it is handed are
//! consecutive; a jump past the highest one seen is exactly the events
//! lost. They are counted (`registry_events_lost_total`) and said, at most
//! once per [`SAY_EVERY`], with one `registry.events_lost` alert carrying
//! the count, the sequences and the time span.
//!
//! Recovery needs nothing new: a node whose registration was lost is
//! unknown to the registry, and its next heartbeat brings it a `reannounce`
//! request; a node whose changed capabilities were lost carries another
//! `caps_hash` in its heartbeats, which brings the same; a lost heartbeat
//! is followed by the next one; a lost deregistration leaves a node that
//! goes silent, and is judged so.

use std::time::Duration;

use chrono::{DateTime, Utc};
use registry_core::lifecycle::alert_id;
use schemas::status::AlertType;
use schemas::{Alert, EventsLost};
use tracing::warn;

/// Least time between two `registry.events_lost` alerts (losses in between
/// are summed into the next one).
pub const SAY_EVERY: Duration = Duration::from_secs(10);

/// Watches the stream sequences the worker is handed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LossWatch {
    /// The highest stream sequence read (or known read before this term);
    /// `None` until known.
    high: Option<u64>,
    /// The server time of the event at `high`, when read in this term.
    high_at: Option<DateTime<Utc>>,
    /// Lost and not said yet.
    unsaid: Option<EventsLost>,
    /// When the last alert was made.
    said_at: Option<DateTime<Utc>>,
    /// With a partitioned stream: the partition, its count, and the
    /// stream sequence up to which discards were already counted.
    partition: Option<(u32, u32, u64)>,
}

impl LossWatch {
    /// A watch whose consumer has read up to stream sequence `high`.
    pub fn after(high: u64) -> Self {
        Self {
            high: Some(high),
            ..Self::default()
        }
    }

    /// Delivery starts again after stream sequence `floor` (a rewind):
    /// a jump past it is a loss, even below what was read before.
    pub fn rewound_to(&mut self, floor: u64) {
        self.high = Some(floor);
        self.high_at = None;
    }

    /// Watches a consumer of partition `index` of `count`: the sequences
    /// it is handed skip the other partitions' events, so a jump is no
    /// loss; [`LossWatch::stream_front`] finds them instead.
    pub fn partitioned(mut self, index: u32, count: u32) -> Self {
        if count > 1 {
            self.partition = Some((index, count, 0));
        }
        self
    }

    /// Partitioned only: the stream's first sequence is `first_seq` while
    /// the consumer still has `pending` events to read. Events discarded
    /// past the highest read were discarded unread; this partition's share
    /// of them is estimated (count / partitions). Returns the estimate.
    pub fn stream_front(&mut self, first_seq: u64, pending: u64, now: DateTime<Utc>) -> u64 {
        let (Some(high), Some((index, count, counted))) = (self.high, self.partition) else {
            return 0;
        };
        let from_seq = high.max(counted) + 1;
        if pending == 0 || first_seq <= from_seq {
            return 0;
        }
        let discarded = first_seq - from_seq;
        let lost = discarded.div_ceil(u64::from(count));
        self.partition = Some((index, count, first_seq - 1));
        self.unsay(EventsLost {
            count: lost,
            first_seq: from_seq,
            last_seq: first_seq - 1,
            from: self.high_at.map(schemas::time::format),
            to: schemas::time::format(now),
            partition: Some(index),
        });
        lost
    }

    /// Takes one delivery (stream sequence `seq`, received at `received`);
    /// returns how many events were lost just before it. A redelivery
    /// (`seq` not above the highest) loses nothing; the first delivery of a
    /// watch that does not know where its consumer stood only sets it.
    pub fn observe(&mut self, seq: u64, received: DateTime<Utc>) -> u64 {
        let Some(high) = self.high else {
            self.high = Some(seq);
            self.high_at = Some(received);
            return 0;
        };
        if seq <= high {
            return 0;
        }
        if self.partition.is_some() {
            self.high = Some(seq);
            self.high_at = Some(received);
            return 0;
        }
        let lost = seq - high - 1;
        if lost > 0 {
            self.unsay(EventsLost {
                count: lost,
                first_seq: high + 1,
                last_seq: seq - 1,
                from: self.high_at.map(schemas::time::format),
                to: schemas::time::format(received),
                partition: None,
            });
        }
        self.high = Some(seq);
        self.high_at = Some(received);
        lost
    }

    /// Adds `lost` to what is not said yet (one alert sums the losses of
    /// its window: the first's start, the last's end).
    fn unsay(&mut self, lost: EventsLost) {
        match self.unsaid.as_mut() {
            Some(unsaid) => {
                unsaid.count += lost.count;
                unsaid.last_seq = lost.last_seq;
                unsaid.to = lost.to;
            }
            None => self.unsaid = Some(lost),
        }
    }

    /// The alert due at `now`: the losses not said yet, unless one was said
    /// less than [`SAY_EVERY`] ago.
    pub fn alert_due(&mut self, now: DateTime<Utc>) -> Option<Alert> {
        let every = chrono::Duration::from_std(SAY_EVERY).unwrap_or(chrono::Duration::MAX);
        if self
            .said_at
            .is_some_and(|at| now.signed_duration_since(at) < every)
        {
            return None;
        }
        let lost = self.unsaid.take()?;
        self.said_at = Some(now);
        Some(alert(lost, now))
    }
}

impl<S, A, T> super::Worker<S, A, T> {
    /// Counts `lost` events found missing before stream sequence `seq`.
    pub(super) fn count_lost(&mut self, lost: u64, seq: u64) {
        if lost == 0 {
            return;
        }
        self.counters
            .events_lost
            .fetch_add(lost, std::sync::atomic::Ordering::Relaxed);
        warn!(
            lost,
            seq, "events discarded by the event stream before the registry read them"
        );
    }

    /// A partition's look at the stream's front (its first sequence) while
    /// its consumer has `pending` events to read: see
    /// [`LossWatch::stream_front`].
    pub(super) fn count_discarded(&mut self, front: u64, pending: u64) {
        let lost = self.losses.stream_front(front, pending, self.clock.now());
        self.count_lost(lost, front);
    }
}

/// The `registry.events_lost` alert for `lost`; its id is derived from the
/// sequences, so a standby that finds the same gap says it once with it.
fn alert(lost: EventsLost, now: DateTime<Utc>) -> Alert {
    let span = match &lost.from {
        Some(from) => format!("received between {from} and {}", lost.to),
        None => format!("received before {}", lost.to),
    };
    let what = match lost.partition {
        Some(p) => format!(
            "About {} node events of partition {p} (among stream sequences {}-{}, {span})",
            lost.count, lost.first_seq, lost.last_seq
        ),
        None => format!(
            "{} node events (stream sequences {}-{}, {span})",
            lost.count, lost.first_seq, lost.last_seq
        ),
    };
    Alert {
        id: alert_id(
            None,
            AlertType::EventsLost,
            &match lost.partition {
                Some(p) => format!("lost/{p}/{}-{}", lost.first_seq, lost.last_seq),
                None => format!("lost/{}-{}", lost.first_seq, lost.last_seq),
            },
        ),
        r#type: AlertType::EventsLost.to_string(),
        at: schemas::time::format(now),
        message: Some(format!(
            "{what} were discarded by the event stream's limits before the registry read them; nodes whose registrations were among them are asked to register again at their next heartbeat"
        )),
        events_lost: Some(lost),
        ..Alert::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> DateTime<Utc> {
        schemas::time::parse("2026-11-26T10:00:00Z").expect("time") + chrono::Duration::seconds(s)
    }

    #[test]
    fn a_jump_in_sequences_is_counted_and_said_once_per_window() {
        let mut watch = LossWatch::after(10);
        assert_eq!(watch.observe(11, at(0)), 0);
        assert_eq!(watch.observe(11, at(0)), 0, "a redelivery loses nothing");
        assert_eq!(watch.observe(5, at(0)), 0, "an older redelivery neither");
        assert_eq!(watch.observe(20, at(3)), 8);
        let said = watch.alert_due(at(4)).expect("an alert");
        assert_eq!(said.r#type, "registry.events_lost");
        let lost = said.events_lost.clone().expect("figures");
        assert_eq!((lost.count, lost.first_seq, lost.last_seq), (8, 12, 19));
        assert_eq!(lost.from, Some(schemas::time::format(at(0))));
        assert_eq!(lost.to, schemas::time::format(at(3)));
        assert!(watch.alert_due(at(5)).is_none(), "nothing more to say");
        // Two more gaps within the window: summed into the next alert.
        assert_eq!(watch.observe(25, at(6)), 4);
        assert_eq!(watch.observe(30, at(7)), 4);
        assert!(watch.alert_due(at(8)).is_none(), "said less than 10 s ago");
        let next = watch.alert_due(at(14)).expect("the next alert");
        let lost = next.events_lost.clone().expect("figures");
        assert_eq!((lost.count, lost.first_seq, lost.last_seq), (8, 21, 29));
        assert_ne!(next.id, said.id);
        // The same gap found again (a standby) has the same id.
        let mut standby = LossWatch::after(10);
        standby.observe(11, at(0));
        standby.observe(20, at(3));
        assert_eq!(standby.alert_due(at(9)).map(|a| a.id), Some(said.id));
    }

    #[test]
    fn a_partitions_jumps_are_no_loss_but_a_front_past_its_position_is() {
        let mut watch = LossWatch::after(10).partitioned(1, 4);
        assert_eq!(watch.observe(15, at(0)), 0, "events 11-14 are others'");
        assert_eq!(watch.observe(40, at(1)), 0);
        assert_eq!(
            watch.stream_front(30, 5, at(2)),
            0,
            "the front behind the position"
        );
        assert_eq!(
            watch.stream_front(60, 0, at(2)),
            0,
            "nothing pending: nothing unread"
        );
        assert_eq!(
            watch.stream_front(81, 5, at(3)),
            10,
            "40 discarded, a quarter ours"
        );
        assert_eq!(watch.stream_front(81, 5, at(4)), 0, "counted once");
        assert_eq!(watch.stream_front(85, 5, at(5)), 1);
        let lost = watch
            .alert_due(at(6))
            .and_then(|a| a.events_lost)
            .expect("said");
        assert_eq!(
            (lost.count, lost.first_seq, lost.last_seq, lost.partition),
            (11, 41, 84, Some(1))
        );
    }

    #[test]
    fn a_watch_that_does_not_know_its_start_loses_nothing_at_first() {
        let mut watch = LossWatch::default();
        assert_eq!(watch.observe(1000, at(0)), 0);
        assert_eq!(watch.observe(1001, at(0)), 0);
        assert_eq!(watch.observe(1003, at(1)), 1);
        let lost = watch.alert_due(at(1)).and_then(|a| a.events_lost);
        assert_eq!(lost.map(|l| (l.count, l.first_seq)), Some((1, 1002)));
    }
}
