//! When each virtual node publishes next: a timer wheel of coarse ticks.
//!
//! A binary heap of a million `(time, node)` entries spent a third of the
//! simulator's CPU popping (a score of cache misses per pop), and on the
//! registry's own machine that CPU is taken from what is measured. Here a
//! node is filed under the tick its time falls in, in a map of ticks to
//! lists: filing and taking cost a few comparisons among a few thousand
//! ticks, and a tick's nodes are taken from one list. Within a tick, order
//! is not kept; a node is due once its tick has ended, so nothing is
//! published before its time, nor more than one tick after it.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

/// Width of a tick: how late, at most, a node's turn comes.
pub const TICK: Duration = Duration::from_millis(5);

/// Most emptied lists kept.
const MAX_SPARE: usize = 64;

/// When tick `tick` after `origin` ends.
fn end_of(origin: Instant, tick: u64) -> Instant {
    let nanos = u64::try_from(TICK.as_nanos())
        .unwrap_or(u64::MAX)
        .saturating_mul(tick);
    origin + Duration::from_nanos(nanos)
}

/// Nodes waiting for their turn, by tick.
#[derive(Debug)]
pub struct Schedule {
    origin: Instant,
    ticks: BTreeMap<u64, Vec<u64>>,
    /// Emptied lists, kept for the ticks to come (a tick's list grows to a
    /// few hundred nodes; growing a fresh one each time cost more than the
    /// filing).
    spare: Vec<Vec<u64>>,
}

impl Schedule {
    /// An empty schedule; times before `origin` are due at once.
    pub fn new(origin: Instant) -> Self {
        Self {
            origin,
            ticks: BTreeMap::new(),
            spare: Vec::new(),
        }
    }

    /// The tick that ends at or after `at`.
    fn tick_of(&self, at: Instant) -> u64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        let width = TICK.as_nanos();
        u64::try_from(nanos.div_ceil(width)).unwrap_or(u64::MAX)
    }

    /// Files node `node` for its turn at `at`.
    pub fn push(&mut self, at: Instant, node: u64) {
        let tick = self.tick_of(at);
        let spare = &mut self.spare;
        self.ticks
            .entry(tick)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(node);
    }

    /// How many nodes wait.
    pub fn len(&self) -> usize {
        self.ticks.values().map(Vec::len).sum()
    }

    /// Whether none waits.
    pub fn is_empty(&self) -> bool {
        self.ticks.is_empty()
    }

    /// When the earliest waiting node is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.ticks
            .keys()
            .next()
            .map(|&tick| end_of(self.origin, tick))
    }

    /// A node whose turn has come by `now`, if any.
    pub fn pop_due(&mut self, now: Instant) -> Option<u64> {
        let mut first = self.ticks.first_entry()?;
        if end_of(self.origin, *first.key()) > now {
            return None;
        }
        let node = first.get_mut().pop();
        if first.get().is_empty() {
            let emptied = first.remove();
            if self.spare.len() < MAX_SPARE {
                self.spare.push(emptied);
            }
        }
        node
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_come_due_in_tick_order_never_early_and_at_most_a_tick_late() {
        let origin = Instant::now();
        let mut schedule = Schedule::new(origin);
        let at = |ms: u64| origin + Duration::from_millis(ms);
        for (ms, node) in [(12, 1), (0, 2), (3, 3), (12, 4), (40, 5)] {
            schedule.push(at(ms), node);
        }
        assert_eq!(schedule.len(), 5);
        assert_eq!(schedule.next_due(), Some(at(0)));
        assert_eq!(schedule.pop_due(at(0)), Some(2));
        // Node 3 is due at 3 ms: not at 4 ms (its tick ends at 5 ms).
        assert_eq!(schedule.pop_due(at(4)), None);
        assert_eq!(schedule.next_due(), Some(at(5)));
        assert_eq!(schedule.pop_due(at(5)), Some(3));
        // Nodes 1 and 4 share the tick ending at 15 ms.
        assert_eq!(schedule.pop_due(at(14)), None);
        let mut both = [schedule.pop_due(at(15)), schedule.pop_due(at(15))];
        both.sort();
        assert_eq!(both, [Some(1), Some(4)]);
        assert_eq!(schedule.pop_due(at(39)), None);
        assert_eq!(schedule.pop_due(at(40)), Some(5));
        assert!(schedule.is_empty());
        assert_eq!(schedule.next_due(), None);
    }
}
