//! The hub's global view (`--global-view eu,us`): every region's `nodes`
//! bucket sourced into the hub domain's own by JetStream stream sourcing
//! across domains (no replication of our own), a read index over it for
//! discovery across regions, and each region's reachability.
//!
//! A view judges nothing and writes no record: each region's registry owns
//! its nodes and keeps judging them while its site is cut off from the hub.
//! The view only says which regions it cannot reach now; the nodes of those
//! are answered as the last records it had, listed in a reply's
//! `unreachable` (held, not offline: a cut link is not a dead node).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use runtime_support::CancellationToken;
use tracing::{info, warn};

/// How often each region's JetStream is asked whether it answers.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// A region that has not answered for this long is unreachable.
pub const UNREACHABLE_AFTER: Duration = Duration::from_secs(3);

/// What the view knows of one region.
#[derive(Debug, Clone, Default)]
struct Region {
    /// When it last answered.
    answered: Option<tokio::time::Instant>,
    /// Since when it is unreachable (`None`: reachable, or not judged yet).
    unreachable_since: Option<DateTime<Utc>>,
}

/// The regions a global view sources, and which it reaches now.
#[derive(Debug, Default)]
pub struct Regions {
    regions: Mutex<BTreeMap<String, Region>>,
}

impl Regions {
    /// The regions named by their JetStream domains, none judged yet.
    pub fn new(domains: &[String]) -> Self {
        Self {
            regions: Mutex::new(
                domains
                    .iter()
                    .map(|d| (d.clone(), Region::default()))
                    .collect(),
            ),
        }
    }

    fn with<R>(&self, f: impl FnOnce(&mut BTreeMap<String, Region>) -> R) -> R {
        match self.regions.lock() {
            Ok(mut regions) => f(&mut regions),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The domains of the regions out of reach now.
    pub fn unreachable(&self) -> Vec<String> {
        self.with(|regions| {
            regions
                .iter()
                .filter(|(_, r)| r.unreachable_since.is_some())
                .map(|(d, _)| d.clone())
                .collect()
        })
    }

    /// Each region and how it is (`reachable`, `unreachable since …`), for
    /// health.
    pub fn report(&self) -> BTreeMap<String, String> {
        self.with(|regions| {
            regions
                .iter()
                .map(|(d, r)| {
                    let how = match r.unreachable_since {
                        Some(since) => {
                            format!("unreachable since {}", schemas::time::format(since))
                        }
                        None => "reachable".to_owned(),
                    };
                    (d.clone(), how)
                })
                .collect()
        })
    }

    /// Takes one ping's outcome for `domain` at `now`; returns the change,
    /// if any (`Some(true)`: reachable again, `Some(false)`: lost).
    fn observe(&self, domain: &str, answered: bool, now: tokio::time::Instant) -> Option<bool> {
        self.with(|regions| {
            let region = regions.entry(domain.to_owned()).or_default();
            if answered {
                region.answered = Some(now);
                return region.unreachable_since.take().map(|_| true);
            }
            // Counted from the last answer, or from the first ping.
            let since = *region.answered.get_or_insert(now);
            if region.unreachable_since.is_none() && now.duration_since(since) >= UNREACHABLE_AFTER
            {
                region.unreachable_since = Some(Utc::now());
                return Some(false);
            }
            None
        })
    }
}

/// Asks each region's JetStream (`$JS.<domain>.API.INFO`, over the leaf
/// connection) every [`PING_EVERY`] whether it answers, until `cancel`.
pub async fn watch_regions(
    client: async_nats::Client,
    regions: Arc<Regions>,
    cancel: CancellationToken,
) {
    let domains: Vec<String> = regions.with(|r| r.keys().cloned().collect());
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pings = domains.iter().map(|domain| {
            let client = client.clone();
            async move {
                let subject = format!("$JS.{domain}.API.INFO");
                let answer =
                    tokio::time::timeout(PING_EVERY, client.request(subject, "".into())).await;
                (domain, matches!(answer, Ok(Ok(_))))
            }
        });
        let now = tokio::time::Instant::now();
        for (domain, answered) in futures::future::join_all(pings).await {
            match regions.observe(domain, answered, now) {
                Some(true) => {
                    info!(region = %domain, "region reachable again: its records are current")
                }
                Some(false) => {
                    warn!(region = %domain, "region unreachable: its nodes are held as last known (not judged)")
                }
                None => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_region_silent_past_the_limit_is_unreachable_until_it_answers() {
        let regions = Regions::new(&["eu".to_owned(), "us".to_owned()]);
        let t0 = tokio::time::Instant::now();
        assert_eq!(regions.observe("eu", true, t0), None);
        assert_eq!(
            regions.observe("us", false, t0),
            None,
            "not judged on one miss"
        );
        assert_eq!(
            regions.observe("us", false, t0 + Duration::from_secs(2)),
            None
        );
        assert_eq!(
            regions.observe("us", false, t0 + UNREACHABLE_AFTER),
            Some(false)
        );
        assert_eq!(
            regions.observe("us", false, t0 + UNREACHABLE_AFTER * 2),
            None,
            "said once"
        );
        assert_eq!(regions.unreachable(), vec!["us".to_owned()]);
        assert!(regions.report()["us"].starts_with("unreachable since "));
        assert_eq!(regions.report()["eu"], "reachable");
        assert_eq!(
            regions.observe("us", true, t0 + UNREACHABLE_AFTER * 3),
            Some(true)
        );
        assert!(regions.unreachable().is_empty());
    }
}
