//! The leader lease: one key in `registry_meta`, renewed by compare-and-swap.
//!
//! No clock is shared between instances. The holder renews every third of
//! the TTL and counts itself deposed once a TTL has passed since it *sent*
//! its last successful renewal; a standby takes over once it has seen the
//! key's revision unchanged for a TTL, counted from when *it saw* that
//! revision, which is after the holder sent it. So the holder always gives
//! up no later than a standby may take over, whatever the clocks say; and
//! every record write is a CAS as well, so even a paused holder that wakes
//! late cannot clobber what the new leader wrote.

use std::time::Duration;

use async_nats::jetstream::kv;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How often a standby reads the lease (one KV get each).
pub const STANDBY_POLL: Duration = Duration::from_millis(250);

/// The key of the lease in `registry_meta`.
pub const LEASE_KEY: &str = subjects::meta_keys::LEADER;

/// What the lease key holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// The instance holding it.
    pub holder: String,
    /// Its TTL in milliseconds (informational: each instance uses its own).
    pub ttl_ms: u64,
    /// When the holder last renewed it (RFC 3339, the holder's clock;
    /// informational).
    pub renewed_at: String,
}

/// Why a lease operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    /// The bucket could not be read or written (retryable).
    #[error("lease in {bucket}: {source}")]
    Backend {
        /// The bucket the operation was on.
        bucket: String,
        /// What failed.
        source: async_nats::Error,
    },
}

/// One instance's view of the lease.
#[derive(Debug)]
pub struct Lease {
    store: kv::Store,
    /// The key it lives under ([`LEASE_KEY`], or a partition's).
    key: String,
    holder: String,
    ttl: Duration,
    /// While held: the revision of our last write and when we sent it.
    held: Option<(u64, Instant)>,
    /// While not held: the revision last seen (0: no key) and since when.
    seen: Option<(u64, Instant)>,
    /// Whether another holder renewed the lease while this instance watched
    /// (so a leader was alive recently).
    saw_renewal: bool,
    /// Whether the lease was last taken from a leader seen alive.
    took_over_live: bool,
}

impl Lease {
    /// The lease in `store` for instance `holder`.
    pub fn new(store: kv::Store, holder: impl Into<String>, ttl: Duration) -> Self {
        Self::for_key(store, LEASE_KEY, holder, ttl)
    }

    /// The lease under `key` in `store` (a partition's:
    /// [`subjects::partition_lease_key`]) for instance `holder`.
    pub fn for_key(
        store: kv::Store,
        key: impl Into<String>,
        holder: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            store,
            key: key.into(),
            holder: holder.into(),
            ttl,
            held: None,
            seen: None,
            saw_renewal: false,
            took_over_live: false,
        }
    }

    /// Whether the lease, as held now, was taken from a leader this
    /// instance saw renewing it (a takeover), rather than found free or
    /// long expired (a start after an outage).
    pub fn took_over_live(&self) -> bool {
        self.took_over_live
    }

    /// Its TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// This instance's name.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// How long until the next [`Lease::tick`]: a third of the TTL while
    /// held (a renewal), at most [`STANDBY_POLL`] while not, so a standby
    /// hears each renewal, and then its absence, within that: it takes over
    /// at most TTL + 2 × `STANDBY_POLL` after the leader's last renewal,
    /// which is no later than TTL + 0.5 s after the leader died.
    pub fn tick_interval(&self) -> Duration {
        if self.held.is_some() {
            self.ttl / 3
        } else {
            (self.ttl / 3).min(STANDBY_POLL)
        }
    }

    /// Whether this instance holds the lease now (by its own clock: a TTL
    /// has not yet passed since it sent its last successful renewal).
    pub fn is_held(&self) -> bool {
        self.held.is_some_and(|(_, sent)| sent.elapsed() < self.ttl)
    }

    fn value(&self) -> bytes::Bytes {
        let record = LeaseRecord {
            holder: self.holder.clone(),
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
            renewed_at: chrono::Utc::now().to_rfc3339(),
        };
        serde_json::to_vec(&record).unwrap_or_default().into()
    }

    fn backend(&self, source: impl Into<async_nats::Error>) -> LeaseError {
        LeaseError::Backend {
            bucket: self.store.name.clone(),
            source: source.into(),
        }
    }

    /// Renews the lease if held, or takes it if it is free or has expired;
    /// returns whether it is held afterwards. Call it every
    /// [`Lease::tick_interval`].
    pub async fn tick(&mut self) -> Result<bool, LeaseError> {
        self.tick_taking(true).await
    }

    /// [`Lease::tick`], taking a *free* lease (never held, or released)
    /// only when `take_free`; an expired one (its holder gone silent) is
    /// always taken, so a failover never waits on the balance of shares.
    pub async fn tick_taking(&mut self, take_free: bool) -> Result<bool, LeaseError> {
        if let Some((revision, _)) = self.held {
            let sent = Instant::now();
            match self.store.update(&self.key, self.value(), revision).await {
                Ok(revision) => {
                    self.held = Some((revision, sent));
                    return Ok(true);
                }
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    warn!(holder = %self.holder, "lease taken by another instance; stepping down");
                    self.held = None;
                    self.seen = None;
                    return Ok(false);
                }
                Err(e) => {
                    // Unknown: keep counting from the last renewal that
                    // worked; `is_held` turns false once the TTL has passed.
                    if !self.is_held() {
                        self.held = None;
                    }
                    return Err(self.backend(e));
                }
            }
        }
        let entry = self
            .store
            .entry(&self.key)
            .await
            .map_err(|e| self.backend(e))?;
        let (revision, free) = match &entry {
            None => (0, true),
            Some(e) if e.operation != kv::Operation::Put => (e.revision, true),
            Some(e) => (e.revision, false),
        };
        // A lease last renewed by this very instance was lost to its own
        // trouble reaching JetStream, not taken from a live leader.
        let was_mine = entry
            .as_ref()
            .and_then(|e| serde_json::from_slice::<LeaseRecord>(&e.value).ok())
            .is_some_and(|r| r.holder == self.holder);
        let now = Instant::now();
        let unchanged_since = match self.seen {
            Some((seen, since)) if seen == revision => since,
            previous => {
                if previous.is_some() && !free {
                    self.saw_renewal = true;
                }
                self.seen = Some((revision, now));
                now
            }
        };
        let expired = now.duration_since(unchanged_since) >= self.ttl;
        if !free && !expired {
            debug!(revision, "lease held by another instance");
            return Ok(false);
        }
        if free && !take_free {
            debug!(key = %self.key, "lease free, left to an instance with fewer");
            return Ok(false);
        }
        let sent = Instant::now();
        let taken = match (free, entry.is_none()) {
            (true, true) => self
                .store
                .create(&self.key, self.value())
                .await
                .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists),
            _ => self
                .store
                .update(&self.key, self.value(), revision)
                .await
                .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision),
        };
        match taken {
            Ok(revision) => {
                info!(holder = %self.holder, key = %self.key, revision, expired, "took the leader lease");
                self.held = Some((revision, sent));
                self.took_over_live = self.saw_renewal && !was_mine;
                self.seen = None;
                self.saw_renewal = false;
                Ok(true)
            }
            // Another standby was quicker.
            Err(true) => Ok(false),
            Err(false) => Err(LeaseError::Backend {
                bucket: self.store.name.clone(),
                source: "writing the lease failed".into(),
            }),
        }
    }

    /// Gives the lease up (a clean shutdown), so a standby takes over at
    /// once instead of after a TTL.
    pub async fn release(&mut self) {
        if let Some((revision, _)) = self.held.take() {
            if let Err(e) = self
                .store
                .delete_expect_revision(&self.key, Some(revision))
                .await
            {
                warn!(error = %e, "releasing the lease");
            } else {
                info!(holder = %self.holder, key = %self.key, "released the leader lease");
            }
        }
    }
}
