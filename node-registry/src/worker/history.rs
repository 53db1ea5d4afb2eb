//! How much history the event stream holds at the current event rate, and
//! its size as a budget in time.
//!
//! `NODE_EVENTS` keeps events up to its limits (age, bytes, messages). What
//! that means in time depends on the fleet: 1 GiB is four hours of events at
//! 10 000 nodes and two minutes at a million. So the leader measures the
//! event rate and:
//! - grows the stream's `max_bytes` to hold [`HistorySettings::budget`] of
//!   events (with a quarter of headroom), never past
//!   [`HistorySettings::max_bytes_cap`] (the disk the operator gives it),
//!   never shrinking it (that would discard); a stream three quarters full
//!   grows at the rate seen over [`FILLING_WINDOW`] instead of waiting for
//!   a whole [`RATE_WINDOW`];
//! - warns, with one `registry.history_short` alert and in its health, when
//!   the stream holds less than [`HistorySettings::min`] at the current rate
//!   (the cap binds, or another limit does), and once more when it holds
//!   enough again. Less history than the registry's lag means events are
//!   discarded unread (see `losses`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use registry_core::lifecycle::alert_id;
use schemas::status::AlertType;
use schemas::Alert;

/// The window over which the event rate is measured.
pub const RATE_WINDOW: Duration = Duration::from_secs(10);

/// The least time a rate is measured over for a stream about to discard
/// (three quarters full).
pub const FILLING_WINDOW: Duration = Duration::from_secs(2);

/// The leader's settings for the event stream's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistorySettings {
    /// Less history than this at the current rate is warned about.
    pub min: Duration,
    /// The stream grows to hold this much at the current rate (zero: it
    /// never grows).
    pub budget: Duration,
    /// The stream never grows past this many bytes.
    pub max_bytes_cap: i64,
}

/// What the stream says of itself (its info).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StreamFigures {
    /// The last stream sequence.
    pub last_seq: u64,
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// Its byte limit (-1 or 0: none).
    pub max_bytes: i64,
    /// Its message limit (-1 or 0: none).
    pub max_messages: i64,
    /// Its age limit (zero: none).
    pub max_age: Duration,
}

/// What the leader is to do after a look at the stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryStep {
    /// Set the stream's `max_bytes` to this.
    pub grow_to: Option<i64>,
    /// Publish this alert.
    pub alert: Option<Alert>,
}

/// The event rate and the history it leaves.
#[derive(Debug, Clone, PartialEq)]
pub struct HistoryWatch {
    settings: HistorySettings,
    /// Start of the current rate window: when, and the last sequence then.
    window: Option<(DateTime<Utc>, u64)>,
    /// Events per second over the last full window.
    rate: Option<f64>,
    /// Whether the history is short now (said).
    short: bool,
    /// The history at the current rate (`None`: unbounded or unknown).
    capacity: Option<Duration>,
    /// Grown in this window before its end (once per window at most).
    grew_early: bool,
}

impl HistoryWatch {
    /// A watch with `settings`; it knows nothing until a window has passed.
    pub fn new(settings: HistorySettings) -> Self {
        Self {
            settings,
            window: None,
            rate: None,
            short: false,
            capacity: None,
            grew_early: false,
        }
    }

    /// The history the stream holds at the current rate (`None`: no limit
    /// binds, or the rate is not known yet).
    pub fn capacity(&self) -> Option<Duration> {
        self.capacity
    }

    /// Whether that is less than the minimum.
    pub fn is_short(&self) -> bool {
        self.short
    }

    /// Takes a look at the stream at `now`.
    pub fn observe(&mut self, now: DateTime<Utc>, stream: StreamFigures) -> HistoryStep {
        let mut step = HistoryStep::default();
        let Some((since, first)) = self.window else {
            self.window = Some((now, stream.last_seq));
            return step;
        };
        let elapsed = now
            .signed_duration_since(since)
            .to_std()
            .unwrap_or_default();
        let rate = stream.last_seq.saturating_sub(first) as f64 / elapsed.as_secs_f64().max(1e-3);
        let average = if stream.messages > 0 {
            stream.bytes as f64 / stream.messages as f64
        } else {
            0.0
        };
        if elapsed < RATE_WINDOW {
            // A stream about to discard (a fleet's first registrations
            // fill the 1 GiB it is created with in about 30 s at a
            // million nodes) grows at the rate seen so far, without
            // waiting for the window: its oldest events may be unread.
            let filling = stream.max_bytes > 0 && stream.bytes >= stream.max_bytes as u64 / 4 * 3;
            if filling && elapsed >= FILLING_WINDOW && !self.grew_early {
                step.grow_to = self.wanted(rate, average, stream.max_bytes);
                self.grew_early = step.grow_to.is_some();
            }
            return step;
        }
        self.window = Some((now, stream.last_seq));
        self.grew_early = false;
        self.rate = Some(rate);
        step.grow_to = self.wanted(rate, average, stream.max_bytes);
        let max_bytes = step.grow_to.unwrap_or(stream.max_bytes);
        self.capacity = capacity(
            rate,
            average,
            max_bytes,
            stream.max_messages,
            stream.max_age,
        );
        let short = self.capacity.is_some_and(|c| c < self.settings.min);
        if short != self.short {
            self.short = short;
            step.alert = Some(self.alert(now, rate, max_bytes));
        }
        step
    }

    /// The max bytes that hold the budget at `rate` events/s of `average`
    /// bytes, with a quarter of headroom, when that is a tenth more than
    /// `max_bytes` (within the cap).
    fn wanted(&self, rate: f64, average: f64, max_bytes: i64) -> Option<i64> {
        if self.settings.budget.is_zero() || rate <= 0.0 || average <= 0.0 || max_bytes <= 0 {
            return None;
        }
        let wanted = (rate * average * self.settings.budget.as_secs_f64() * 1.25) as i64;
        let wanted = wanted.min(self.settings.max_bytes_cap);
        (wanted > max_bytes + max_bytes / 10).then_some(wanted)
    }

    fn alert(&self, now: DateTime<Utc>, rate: f64, max_bytes: i64) -> Alert {
        let held = self.capacity.map_or(0, |c| c.as_secs());
        let min = self.settings.min.as_secs();
        let message = if self.short {
            format!(
                "the event stream holds about {} of events at {rate:.0} events/s (max_bytes {max_bytes}), less than the minimum of {}: a registry that lags further loses events unread; give it more (events_max_bytes_cap, events_history)",
                humantime::format_duration(Duration::from_secs(held)),
                humantime::format_duration(self.settings.min)
            )
        } else {
            format!(
                "the event stream holds enough history again ({} at {rate:.0} events/s)",
                self.capacity.map_or_else(
                    || "no limit binds".to_owned(),
                    |c| humantime::format_duration(Duration::from_secs(c.as_secs())).to_string()
                )
            )
        };
        Alert {
            id: alert_id(
                None,
                AlertType::HistoryShort,
                &format!(
                    "{}/{}",
                    if self.short { "entered" } else { "left" },
                    now.timestamp()
                ),
            ),
            r#type: AlertType::HistoryShort.to_string(),
            status: Some(if self.short { "entered" } else { "left" }.to_owned()),
            at: schemas::time::format(now),
            message: Some(message),
            history_s: self.capacity.map(|c| c.as_secs()),
            min_history_s: Some(min),
            ..Alert::default()
        }
    }
}

/// The time the stream's limits hold at `rate` events/s of `average`
/// bytes: the tightest of its age, bytes and message limits (`None` when
/// none binds).
fn capacity(
    rate: f64,
    average: f64,
    max_bytes: i64,
    max_messages: i64,
    max_age: Duration,
) -> Option<Duration> {
    let mut tightest: Option<f64> = (!max_age.is_zero()).then_some(max_age.as_secs_f64());
    let mut bind = |seconds: f64| {
        tightest = Some(tightest.map_or(seconds, |t| t.min(seconds)));
    };
    if rate > 0.0 {
        if max_bytes > 0 && average > 0.0 {
            bind(max_bytes as f64 / (rate * average));
        }
        if max_messages > 0 {
            bind(max_messages as f64 / rate);
        }
    }
    tightest.map(Duration::from_secs_f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: i64 = 1024 * 1024 * 1024;

    fn at(s: i64) -> DateTime<Utc> {
        schemas::time::parse("2026-11-26T10:00:00Z").expect("time") + chrono::Duration::seconds(s)
    }

    fn stream(last_seq: u64, max_bytes: i64) -> StreamFigures {
        StreamFigures {
            last_seq,
            messages: 1_000_000,
            bytes: 220_000_000,
            max_bytes,
            max_messages: -1,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }

    #[test]
    fn a_million_nodes_grow_the_stream_to_the_budget_and_the_cap_is_warned_about() {
        let settings = HistorySettings {
            min: Duration::from_secs(600),
            budget: Duration::from_secs(3600),
            max_bytes_cap: 8 * GIB,
        };
        let mut watch = HistoryWatch::new(settings);
        assert_eq!(watch.observe(at(0), stream(0, GIB)), HistoryStep::default());
        assert_eq!(
            watch.observe(at(5), stream(0, GIB)),
            HistoryStep::default(),
            "no full window yet"
        );
        // 33 333 events/s of 220 B: an hour is 26 GB, past the 8 GiB cap;
        // 8 GiB holds about 19.5 minutes: more than the 10 minute minimum.
        let step = watch.observe(at(10), stream(333_330, GIB));
        assert_eq!(step.grow_to, Some(8 * GIB));
        assert!(step.alert.is_none());
        let held = watch.capacity().expect("bounded").as_secs();
        assert!((1150..1200).contains(&held), "{held}");
        // Twice the rate: about 10 minutes... less than the minimum now.
        let step = watch.observe(at(20), stream(333_330 + 700_000, 8 * GIB));
        assert_eq!(step.grow_to, None, "capped");
        let alert = step.alert.expect("short");
        assert_eq!(alert.r#type, "registry.history_short");
        assert_eq!(alert.status.as_deref(), Some("entered"));
        assert_eq!(alert.min_history_s, Some(600));
        assert!(watch.is_short());
        assert!(
            watch
                .observe(at(30), stream(1_033_330 + 700_000, 8 * GIB))
                .alert
                .is_none(),
            "said once"
        );
        // The fleet shrinks: enough again, said once.
        let step = watch.observe(at(40), stream(1_733_330 + 10_000, 8 * GIB));
        assert_eq!(step.alert.map(|a| a.status), Some(Some("left".to_owned())));
        assert!(!watch.is_short());
    }

    #[test]
    fn a_small_fleet_keeps_its_floor_and_no_budget_means_no_growth() {
        let mut watch = HistoryWatch::new(HistorySettings {
            min: Duration::from_secs(600),
            budget: Duration::from_secs(3600),
            max_bytes_cap: 64 * GIB,
        });
        watch.observe(at(0), stream(0, GIB));
        // 333 events/s (10 000 nodes): an hour is 330 MB, under the 1 GiB floor.
        let step = watch.observe(at(10), stream(3_330, GIB));
        assert_eq!(step, HistoryStep::default());
        let held = watch.capacity().expect("bounded").as_secs();
        assert!(held > 4 * 3600, "{held}");
        let mut fixed = HistoryWatch::new(HistorySettings {
            min: Duration::from_secs(600),
            budget: Duration::ZERO,
            max_bytes_cap: 64 * GIB,
        });
        fixed.observe(at(0), stream(0, GIB));
        let step = fixed.observe(at(10), stream(333_330, GIB));
        assert_eq!(step.grow_to, None);
        assert!(
            step.alert.is_some(),
            "1 GiB at a million nodes is under 3 minutes"
        );
    }

    #[test]
    fn a_stream_about_to_discard_grows_without_waiting_for_the_window() {
        let mut watch = HistoryWatch::new(HistorySettings {
            min: Duration::from_secs(600),
            budget: Duration::from_secs(3600),
            max_bytes_cap: 64 * GIB,
        });
        let filling = |last_seq: u64, bytes: u64| StreamFigures {
            last_seq,
            messages: last_seq,
            bytes,
            max_bytes: GIB,
            max_messages: -1,
            max_age: Duration::from_secs(7 * 24 * 3600),
        };
        watch.observe(at(0), filling(0, 0));
        // A burst of 1 KB events: three quarters full 3 s into the window.
        assert_eq!(
            watch.observe(at(1), filling(33_333, 34_000_000)).grow_to,
            None,
            "not near full"
        );
        let step = watch.observe(at(3), filling(900_000, 900_000_000));
        assert_eq!(
            step.grow_to,
            Some(64 * GIB),
            "an hour at the rate seen, capped"
        );
        assert_eq!(
            watch
                .observe(at(4), filling(1_000_000, 900_000_000))
                .grow_to,
            None,
            "once a window (a refused growth is not asked again each look)"
        );
        // A small fleet's stream at its floor, full at steady state, does
        // not grow: the rate it sees is far under what the floor holds.
        let mut small = HistoryWatch::new(HistorySettings {
            min: Duration::from_secs(600),
            budget: Duration::from_secs(3600),
            max_bytes_cap: 64 * GIB,
        });
        let full = |last_seq: u64| StreamFigures {
            last_seq,
            messages: 4_000_000,
            bytes: GIB as u64,
            max_bytes: GIB,
            max_messages: -1,
            max_age: Duration::from_secs(7 * 24 * 3600),
        };
        small.observe(at(0), full(50_000_000));
        assert_eq!(small.observe(at(3), full(50_001_000)).grow_to, None);
    }

    #[test]
    fn the_tightest_limit_binds() {
        let week = Duration::from_secs(7 * 24 * 3600);
        assert_eq!(capacity(0.0, 220.0, GIB, -1, week), Some(week));
        assert_eq!(capacity(0.0, 220.0, GIB, -1, Duration::ZERO), None);
        let by_messages = capacity(100.0, 220.0, -1, 6000, week).expect("bound");
        assert_eq!(by_messages.as_secs(), 60);
    }
}
