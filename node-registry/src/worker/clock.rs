//! The NATS server's clock, as the receive times of the events show it:
//! liveness is judged on the server's time, never the node's (DESIGN
//! principle 3), nor this host's.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

/// How long one window of the server-clock estimate lasts.
const CLOCK_WINDOW: Duration = Duration::from_secs(60);

/// An estimate of the NATS server's clock, from the receive timestamps of the
/// events consumed: the smallest `local now − server receive time` seen over
/// the last one to two windows. Lag only makes the estimate later, never
/// earlier, so an error delays judgement; it never hastens it.
#[derive(Debug)]
pub struct ServerClock {
    current: Option<chrono::Duration>,
    previous: Option<chrono::Duration>,
    window_start: Instant,
}

impl Default for ServerClock {
    fn default() -> Self {
        Self {
            current: None,
            previous: None,
            window_start: Instant::now(),
        }
    }
}

impl ServerClock {
    /// Takes in one event's server receive time.
    pub fn observe(&mut self, received: DateTime<Utc>) {
        if self.window_start.elapsed() >= CLOCK_WINDOW {
            self.previous = self.current.take();
            self.window_start = Instant::now();
        }
        let sample = Utc::now().signed_duration_since(received);
        self.current = Some(self.current.map_or(sample, |c| c.min(sample)));
    }

    /// The server's time now, as well as it is known.
    pub fn now(&self) -> DateTime<Utc> {
        let offset = match (self.current, self.previous) {
            (Some(a), Some(b)) => a.min(b),
            (Some(a), None) | (None, Some(a)) => a,
            (None, None) => chrono::Duration::zero(),
        };
        Utc::now() - offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_clock_follows_the_smallest_delay() {
        let mut clock = ServerClock::default();
        let skew = chrono::Duration::seconds(30);
        // The server runs 30 s ahead; events arrive with 0 to 2 s of delay.
        for delay in [2, 1, 0, 2] {
            clock.observe(Utc::now() + skew - chrono::Duration::seconds(delay));
        }
        let error = (clock.now() - (Utc::now() + skew)).num_milliseconds().abs();
        assert!(error < 500, "estimate off by {error} ms");
        // Lag (a backlog) never moves the estimate later than it was.
        clock.observe(Utc::now() + skew - chrono::Duration::seconds(120));
        let error = (clock.now() - (Utc::now() + skew)).num_milliseconds().abs();
        assert!(
            error < 500,
            "estimate off by {error} ms after lagging events"
        );
    }
}
