//! When writes that only freshen a record are made: each node's checkpoints
//! on a phase of its own, and first metrics within a budget of writes a
//! second.
//!
//! A fleet that registers at once (a first rollout, every agent after a NATS
//! restart) would otherwise checkpoint at once too, one interval later and
//! every interval after: at a million nodes, a million KV writes within
//! the half minute the registrations took, not 2 000 a second. Measured
//! with the scale bench, such waves (the first metrics of a whole fleet
//! just after a backlog is worked off, then its checkpoints) put
//! nats-server behind for minutes.

use chrono::{DateTime, Utc};
use std::hash::{BuildHasher, Hasher};

/// Whether a node last written at `last_written` and heard at `at` is due a
/// checkpoint, for checkpoints every `interval`.
///
/// A node's first checkpoint after a registration or a restore (not
/// `phased` yet) comes on a phase of its own: time is cut into slots of one
/// interval, shifted by a digest of its id, and the node is due at the
/// first event heard in a slot after the one of its last write. Phases
/// spread the nodes of a wave evenly over an interval, whenever they
/// registered. Later checkpoints count the interval from the last write,
/// so they keep that spread, and a node whose heartbeats fall a little
/// short of an interval is written every third one rather than every
/// second (slots would write it at the first heartbeat of every slot:
/// with 30 s heartbeats and a 60 s interval, one write in two heartbeats
/// instead of one in three, measured at 100 000 nodes as 13.5 % of a core
/// for the registry instead of 10.0 %).
///
/// Either way, a node heard without a write was heard less than one
/// interval after its last write: the bound a takeover relies on
/// (`Fleet::restore`'s grace).
pub fn checkpoint_due(
    node_id: &str,
    last_written: DateTime<Utc>,
    phased: bool,
    at: DateTime<Utc>,
    interval: chrono::Duration,
) -> bool {
    if phased {
        return at.signed_duration_since(last_written) >= interval;
    }
    let width = interval.num_milliseconds();
    if width <= 0 {
        return true;
    }
    let phase = i64::try_from(phase_of(node_id) % width.unsigned_abs()).unwrap_or(0);
    let slot = |t: DateTime<Utc>| (t.timestamp_millis() - phase).div_euclid(width);
    slot(at) > slot(last_written)
}

/// A node's phase: a digest of its id, the same in every process and build.
fn phase_of(node_id: &str) -> u64 {
    let mut hasher = foldhash::fast::FixedState::with_seed(0x0c4e_c4b0_1e7a_5e11).build_hasher();
    hasher.write(node_id.as_bytes());
    hasher.finish()
}

/// Writes a second that optional writes may take, by the events' clock.
#[derive(Debug, Clone)]
pub struct WriteBudget {
    per_s: f64,
    tokens: f64,
    at: Option<DateTime<Utc>>,
}

impl WriteBudget {
    /// A budget of `per_s` writes a second (0: no limit), with up to one
    /// second's worth saved up.
    pub fn new(per_s: u32) -> Self {
        Self {
            per_s: f64::from(per_s),
            tokens: f64::from(per_s),
            at: None,
        }
    }

    /// Takes one write at `at`, if the budget has one.
    pub fn take(&mut self, at: DateTime<Utc>) -> bool {
        if self.per_s <= 0.0 {
            return true;
        }
        let elapsed = self.at.map_or(0.0, |last| {
            (at - last).num_microseconds().unwrap_or(i64::MAX).max(0) as f64 / 1e6
        });
        self.at = Some(self.at.map_or(at, |last| last.max(at)));
        self.tokens = (self.tokens + elapsed * self.per_s).min(self.per_s.max(1.0));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(ms: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_millis(1_800_000_000_000 + ms).expect("a time")
    }

    #[test]
    fn a_wave_registered_at_once_checkpoints_spread_over_one_interval() {
        let interval = chrono::Duration::seconds(100);
        let ids: Vec<String> = (0..10_000).map(|n| format!("node-{n}")).collect();
        // All written at 0 and heard every second after: the second each
        // first comes due.
        let mut per_decile = [0usize; 10];
        for id in &ids {
            let first = (1..=200)
                .find(|&s| checkpoint_due(id, t(0), false, t(s * 1000), interval))
                .expect("due within two intervals");
            assert!(first <= 100, "{id} not due within an interval: {first} s");
            per_decile[((first - 1) / 10) as usize] += 1;
        }
        // Evenly: each tenth of the interval takes a tenth of the fleet.
        for n in per_decile {
            assert!((800..1200).contains(&n), "{per_decile:?}");
        }
    }

    #[test]
    fn a_node_is_due_once_per_interval_and_never_heard_an_interval_unwritten() {
        let interval = chrono::Duration::seconds(10);
        for id in ["a", "gpu-7", "node-123456"] {
            let (writes, _) = heard_every(id, 1000, 1000, interval);
            assert!((99..=101).contains(&writes), "{id}: {writes}");
        }
        assert!(checkpoint_due(
            "a",
            t(0),
            false,
            t(1),
            chrono::Duration::zero()
        ));
    }

    /// A node written at 0, heard every `every_ms` `times` times, its
    /// checkpoints made when due: how many, and when the first was
    /// (asserting it was never heard an interval unwritten).
    fn heard_every(
        id: &str,
        every_ms: i64,
        times: i64,
        interval: chrono::Duration,
    ) -> (usize, i64) {
        let (mut last_written, mut phased) = (t(0), false);
        let (mut writes, mut first) = (0, 0);
        for n in 1..=times {
            let at = t(n * every_ms);
            if checkpoint_due(id, last_written, phased, at, interval) {
                last_written = at;
                phased = true;
                writes += 1;
                if first == 0 {
                    first = n * every_ms;
                }
            }
            assert!(at - last_written < interval, "{id} at {n}");
        }
        (writes, first)
    }

    #[test]
    fn heartbeats_a_little_short_of_half_an_interval_checkpoint_every_third() {
        // 29.5 s heartbeats, 60 s interval: 60 s after a write, the second
        // heartbeat (59 s) is short of it; the third (88.5 s) is due.
        let interval = chrono::Duration::seconds(60);
        let day = 24 * 3600 * 1000 / 29_500;
        for id in ["a", "gpu-7", "node-123456"] {
            let (writes, first) = heard_every(id, 29_500, day, interval);
            assert!(first <= 60_000 + 29_500, "{id}: first at {first} ms");
            let thirds = usize::try_from(day / 3).unwrap_or_default();
            assert!(
                writes.abs_diff(thirds) <= 2,
                "{id}: {writes} writes, {thirds} expected"
            );
        }
    }

    #[test]
    fn the_budget_gives_its_rate_by_the_events_clock_and_saves_up_one_second() {
        let mut budget = WriteBudget::new(10);
        let taken = (0..100).filter(|_| budget.take(t(0))).count();
        assert_eq!(taken, 10, "one second's worth at once");
        // 2.5 s later: 25 more, capped at one second's worth.
        let taken = (0..100).filter(|_| budget.take(t(2500))).count();
        assert_eq!(taken, 10);
        // A second later, 10 across it.
        let taken = (1..=100).filter(|i| budget.take(t(2500 + i * 10))).count();
        assert!((9..=10).contains(&taken), "{taken}");
        // An event from before the last one neither refills nor breaks it.
        assert!(!budget.take(t(0)));
        assert!(WriteBudget::new(0).take(t(0)));
    }
}
