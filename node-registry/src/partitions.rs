//! Partitions shared among instances: who is alive, how many partitions
//! each should lead, and when one gives a partition up to another.
//!
//! Each partition has its own lease ([`crate::lead::hold_lease`]). A lease
//! whose holder went silent is taken by whoever sees it expire first, so a
//! failover never waits for the balance. The balance comes after, by
//! leases found *free*: an instance takes a free partition only while it
//! leads fewer than its fair share (`ceil(partitions / live instances)`),
//! and an instance leading more than its share releases its highest
//! partition, which frees it for one with fewer. Instances know each other
//! by their membership keys in `registry_meta` (`member.<instance>`,
//! renewed every third of the lease TTL, followed by a KV watch).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use runtime_support::CancellationToken;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// One instance's view of how the partitions are shared.
#[derive(Debug)]
pub struct Share {
    count: u32,
    /// The partitions it leads, one bit each.
    led: AtomicU64,
    /// Live instances, itself included.
    members: AtomicU32,
}

impl Share {
    /// The view of an instance over `count` partitions, alone so far.
    pub fn new(count: u32) -> Self {
        Self {
            count: count.clamp(1, subjects::PARTITIONS_MAX),
            led: AtomicU64::new(0),
            members: AtomicU32::new(1),
        }
    }

    /// How many partitions the event stream has.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// How many partitions each live instance should lead, at most.
    pub fn fair(&self) -> u32 {
        self.count
            .div_ceil(self.members.load(Ordering::Relaxed).max(1))
    }

    /// How many partitions this instance leads.
    pub fn led(&self) -> u32 {
        self.led.load(Ordering::Relaxed).count_ones()
    }

    /// Records whether it leads partition `p`.
    pub fn set_led(&self, p: u32, leads: bool) {
        let bit = 1u64 << p.min(63);
        if leads {
            self.led.fetch_or(bit, Ordering::Relaxed);
        } else {
            self.led.fetch_and(!bit, Ordering::Relaxed);
        }
    }

    /// Records how many instances are alive (itself included).
    pub fn set_members(&self, live: u32) {
        self.members.store(live.max(1), Ordering::Relaxed);
    }

    /// Whether it may take a free partition: it leads less than its share.
    pub fn may_take_free(&self) -> bool {
        self.count <= 1 || self.led() < self.fair()
    }

    /// Whether it should give partition `p` up: it leads more than its
    /// share, and `p` is the highest it leads.
    pub fn should_release(&self, p: u32) -> bool {
        let led = self.led.load(Ordering::Relaxed);
        self.count > 1 && led.count_ones() > self.fair() && 63 - led.leading_zeros() == p
    }
}

/// What a membership key holds (informational: liveness is its renewals).
#[derive(Debug, serde::Serialize)]
struct Member<'a> {
    instance: &'a str,
    ttl_ms: u64,
    partitions: Vec<u32>,
}

/// Keeps this instance's membership key renewed every third of `ttl`, and
/// counts the instances whose keys were renewed within `ttl` into `share`.
/// Deletes the key at shutdown, so the others rebalance at once.
pub async fn keep_membership(
    meta: kv::Store,
    instance: String,
    ttl: Duration,
    share: Arc<Share>,
    cancel: CancellationToken,
) {
    let key = subjects::member_key(&instance);
    let filter = format!("{}>", subjects::MEMBER_PREFIX);
    let mut seen: HashMap<String, Instant> = HashMap::new();
    let mut watch = None;
    let mut tick = tokio::time::interval(ttl / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if watch.is_none() {
            match meta.watch_with_history(&filter).await {
                Ok(w) => watch = Some(w),
                Err(e) => warn!(error = %e, "following registry instances; retrying"),
            }
        }
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {
                let member = Member {
                    instance: &instance,
                    ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
                    partitions: (0..share.count())
                        .filter(|p| share.led.load(Ordering::Relaxed) & (1u64 << p) != 0)
                        .collect(),
                };
                let value = serde_json::to_vec(&member).unwrap_or_default();
                if let Err(e) = meta.put(&key, value.into()).await {
                    warn!(error = %e, "renewing this instance's membership");
                }
            }
            entry = async {
                match watch.as_mut() {
                    Some(w) => w.next().await,
                    None => {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        None
                    }
                }
            } => match entry {
                Some(Ok(entry)) => {
                    if entry.operation == kv::Operation::Put {
                        seen.insert(entry.key, Instant::now());
                    } else {
                        seen.remove(&entry.key);
                    }
                }
                Some(Err(e)) => {
                    debug!(error = %e, "membership watch; following again");
                    watch = None;
                }
                None => watch = None,
            },
        }
        let now = Instant::now();
        seen.retain(|_, at| now.duration_since(*at) < ttl);
        let live =
            u32::try_from(seen.len() + usize::from(!seen.contains_key(&key))).unwrap_or(u32::MAX);
        if live != share.members.load(Ordering::Relaxed) {
            info!(
                live,
                fair = share.count().div_ceil(live.max(1)),
                "registry instances alive"
            );
        }
        share.set_members(live);
    }
    if let Err(e) = meta.delete(&key).await {
        warn!(error = %e, "removing this instance's membership");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_alone_takes_every_partition() {
        let share = Share::new(4);
        for p in 0..4 {
            assert!(share.may_take_free(), "partition {p}");
            share.set_led(p, true);
        }
        assert!(!share.may_take_free());
        assert!(!share.should_release(3));
    }

    #[test]
    fn a_second_instance_makes_the_first_release_its_highest() {
        let share = Share::new(4);
        (0..4).for_each(|p| share.set_led(p, true));
        share.set_members(2);
        assert_eq!(share.fair(), 2);
        assert!(share.should_release(3));
        assert!(!share.should_release(2), "only the highest");
        share.set_led(3, false);
        assert!(share.should_release(2));
        share.set_led(2, false);
        assert!(!share.should_release(1));
        assert!(
            !share.may_take_free(),
            "at its share it leaves free ones to others"
        );
    }

    #[test]
    fn an_odd_count_rounds_the_share_up() {
        let share = Share::new(3);
        share.set_members(2);
        assert_eq!(share.fair(), 2);
        share.set_led(0, true);
        assert!(share.may_take_free());
        share.set_led(2, true);
        assert!(!share.may_take_free());
        assert!(!share.should_release(2));
    }
}
