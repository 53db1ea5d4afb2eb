//! The one retry backoff of the project: every loop that waits for NATS, a
//! bucket or a watch to come back waits through this.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Delays that double from `first` up to `max`, optionally with ±20 %
/// jitter (so a fleet of agents restarted together does not retry in step).
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Delays from `first`, doubling, never above `max`.
    pub fn new(first: Duration, max: Duration) -> Self {
        Self {
            first,
            next: first,
            max: max.max(first),
            jitter: false,
        }
    }

    /// The same delay every time (a fixed retry interval).
    pub fn constant(every: Duration) -> Self {
        Self::new(every, every)
    }

    /// Spreads each delay by ±20 %.
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The delay to wait now; the one after it is twice as long (up to the
    /// maximum).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        if self.jitter {
            delay.mul_f64(rand::rng().random_range(0.8..=1.2))
        } else {
            delay
        }
    }

    /// Back to the first delay (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// Waits the next delay; `false` when `cancel` fired first (stop
    /// retrying).
    pub async fn wait(&mut self, cancel: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            () = cancel.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_maximum_and_reset() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(100), ms(500));
        let delays: Vec<_> = (0..5).map(|_| backoff.next_delay()).collect();
        assert_eq!(delays, [ms(100), ms(200), ms(400), ms(500), ms(500)]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), ms(100));
        let mut constant = Backoff::constant(ms(50));
        assert_eq!(
            (constant.next_delay(), constant.next_delay()),
            (ms(50), ms(50))
        );
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        let mut backoff =
            Backoff::new(Duration::from_secs(1), Duration::from_secs(1)).with_jitter();
        for _ in 0..100 {
            let d = backoff.next_delay().as_secs_f64();
            assert!((0.8..=1.2).contains(&d), "{d}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn waiting_stops_when_cancelled() {
        let cancel = CancellationToken::new();
        let mut backoff = Backoff::constant(Duration::from_secs(3600));
        assert!(
            Backoff::constant(Duration::from_millis(1))
                .wait(&cancel)
                .await
        );
        cancel.cancel();
        assert!(!backoff.wait(&cancel).await);
    }
}
