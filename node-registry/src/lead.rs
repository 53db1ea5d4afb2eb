//! Leadership: the lease kept, one term as leader (the fleet restored from
//! the read index, the worker run until the lease is lost), and the guard
//! that rebuilds a lost `nodes` bucket.

use std::sync::Arc;
use std::time::Duration;

use registry_core::lifecycle::{alert_id, Fleet, Grace};
use registry_kv::alerts::{AlertPublisher, AlertSink};
use registry_kv::JetStreamRecords;
use runtime_support::CancellationToken;
use schemas::status::AlertType;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::RegistryConfig;
use crate::counters::Counters;
use crate::index::ReadIndex;
use crate::keys::NodeKeys;
use crate::partitions::Share;
use crate::tasks::NatsTasks;
use crate::worker::{Partition, Term, Worker};

/// Keeps one partition's lease: renews it every third of its TTL (takes it
/// within 250 ms of its expiry, as a standby), and says on `leading`
/// whether this instance leads. With `share`, takes a free lease only while
/// under its fair share and gives up its highest partition while over
/// (see [`crate::partitions`]). Releases it at shutdown.
pub async fn hold_lease(
    mut lease: registry_kv::lease::Lease,
    partition: Partition,
    share: Arc<Share>,
    leading: watch::Sender<bool>,
    takeover: Arc<std::sync::atomic::AtomicBool>,
    connected: watch::Receiver<crate::link::Link>,
    cancel: CancellationToken,
) {
    let mut first = true;
    let mut held_since: Option<tokio::time::Instant> = None;
    loop {
        // The first tick at once; then a renewal every third of the TTL, or
        // a standby's read of the lease every 250 ms.
        let wait = if first {
            Duration::ZERO
        } else {
            lease.tick_interval()
        };
        first = false;
        tokio::select! {
            () = cancel.cancelled() => break,
            () = tokio::time::sleep(wait) => {}
        }
        // A standby that cannot reach NATS must not take over; a leader that
        // cannot renew counts down its own TTL.
        if connected.borrow().up || lease.is_held() {
            if let Err(e) = lease.tick_taking(share.may_take_free()).await {
                warn!(error = %e, partition = partition.index, "lease");
            }
        }
        // Over its share, after a TTL in office (no flapping while
        // instances come and go): give the highest partition up.
        if lease.is_held()
            && share.should_release(partition.index)
            && held_since.is_some_and(|t| t.elapsed() >= lease.ttl())
        {
            info!(
                partition = partition.index,
                led = share.led(),
                fair = share.fair(),
                "leading more than a fair share: releasing this partition"
            );
            lease.release().await;
        }
        let held = lease.is_held();
        held_since = match (held, held_since) {
            (true, None) => Some(tokio::time::Instant::now()),
            (true, since) => since,
            (false, _) => None,
        };
        share.set_led(partition.index, held);
        takeover.store(lease.took_over_live(), std::sync::atomic::Ordering::Relaxed);
        // Sent only on a change: the worker ends its term on any.
        leading.send_if_modified(|leads| {
            if *leads == held {
                return false;
            }
            info!(
                instance = lease.holder(),
                partition = partition.index,
                held,
                "leadership changed"
            );
            *leads = held;
            true
        });
    }
    leading.send_replace(false);
    share.set_led(partition.index, false);
    lease.release().await;
}

/// What a leadership term needs: the registry's parts, shared by every term.
#[derive(Debug)]
pub struct Leader<'a> {
    /// The registry's configuration.
    pub config: &'a RegistryConfig,
    /// The streams, buckets and consumer.
    pub provisioned: &'a registry_kv::Provisioned,
    /// The NATS connection (subscriptions, replies).
    pub client: &'a async_nats::Client,
    /// Its JetStream context.
    pub js: &'a async_nats::jetstream::Context,
    /// The read index (the fleet starts from what it loaded).
    pub index: &'a ReadIndex,
    /// The counters of `$SRV.STATS`.
    pub counters: &'a Arc<Counters>,
    /// Joined nodes' keys.
    pub node_keys: &'a NodeKeys,
    /// The instance's own state (backlog and self-preservation, for health).
    pub state: &'a Arc<crate::state::RegistryState>,
    /// Whether the connection to NATS is up.
    pub connected: watch::Receiver<crate::link::Link>,
    /// The registry is stopping.
    pub cancel: CancellationToken,
}

impl Leader<'_> {
    /// One term as leader of `partition` (whose lease `leading` follows):
    /// builds its share of the fleet from the read index, then consumes and
    /// judges until the lease is lost or the registry stops.
    pub async fn term(&self, partition: Partition, leading: watch::Receiver<bool>, grace: Grace) {
        // The fleet starts from what the read index loaded: one read of the
        // bucket, and the record bytes shared between the two.
        tokio::select! {
            () = self.cancel.cancelled() => return,
            () = self.index.wait_ready() => {}
        }
        if !self.index_current(leading.clone()).await {
            return;
        }
        // Taking over from a leader seen alive keeps each node's deadline
        // from its last checkpointed heartbeat, pushed back by one
        // checkpoint interval (what that leader heard but did not checkpoint
        // is no later). A lease found free or long expired is a start after
        // an outage: every node gets a full window (principle 4).
        // The records are taken under the read lock (shared bytes, no
        // copy) and parsed on a blocking thread: at a million nodes that
        // takes seconds, during which this thread keeps answering discovery.
        let owned: Vec<(bytes::Bytes, u64)> = self.index.read(|catalog| {
            catalog
                .stored_where(|id| {
                    subjects::NodeId::parse(id)
                        .map_or(partition.index == 0, |id| partition.owns(&id))
                })
                .collect()
        });
        let mut fleet = Fleet::new(self.config.lifecycle());
        let restored = tokio::task::spawn_blocking(move || {
            let skipped = fleet.restore_with(owned, chrono::Utc::now(), grace);
            (fleet, skipped)
        });
        let (fleet, skipped) = tokio::select! {
            () = self.cancel.cancelled() => return,
            restored = restored => match restored {
                Ok(restored) => restored,
                Err(e) => {
                    warn!(error = %e, "restoring the fleet failed; this term ends");
                    return;
                }
            },
        };
        let count = fleet.len();
        for id in skipped {
            warn!(node_id = %id, "skipping an unreadable record at start");
        }
        info!(
            nodes = count,
            partition = partition.index,
            partitions = partition.count,
            ?grace,
            "leading: fleet restored from the read index"
        );
        let Some(consumer) = self.provisioned.consumers.get(partition.index as usize) else {
            warn!(
                partition = partition.index,
                "no consumer provisioned for this partition"
            );
            return;
        };
        let worker = Worker::new(
            fleet,
            JetStreamRecords::new(self.provisioned.nodes.clone()),
            AlertPublisher::new(self.js.clone()),
            NatsTasks::new(self.client.clone()),
            self.counters.clone(),
        )
        .with_index(self.index.clone())
        .with_keys(self.node_keys.clone(), self.config.require_signatures)
        .with_lifecycle_stream(self.config.names.lifecycle_stream.clone())
        .with_partition(partition);
        let (lost_tx, lost_rx) = watch::channel(0u32);
        let guard = tokio::spawn(guard_bucket(
            self.config.clone(),
            self.js.clone(),
            lost_tx,
            leading.clone(),
            self.cancel.clone(),
        ));
        worker
            .run(Term {
                consumer: consumer.clone(),
                client: self.client.clone(),
                js: self.js.clone(),
                sweep_interval: self.config.sweep_interval,
                connected: self.connected.clone(),
                leading,
                cancel: self.cancel.clone(),
                bucket_lost: lost_rx,
                state: self.state.clone(),
                history: crate::worker::HistorySettings {
                    min: self.config.events_min_history,
                    budget: self.config.events_history,
                    max_bytes_cap: self.config.events_max_bytes_cap,
                },
            })
            .await;
        guard.abort();
    }
}

impl Leader<'_> {
    /// Waits until the read index holds every write the `nodes` bucket
    /// holds now; returns false when the term is over first (stopping, or
    /// the lease lost). A term started from an older view would decide
    /// from older records than the bucket's, and its consumer is already
    /// past the events that made the newer ones: it would write the older
    /// over them (a standby's index lags by milliseconds; one whose watch
    /// stalled, until the watch is reopened). A bucket that does not
    /// answer for [`BUCKET_ANSWER_WAIT`] is not waited for (it may be lost:
    /// the term's guard provisions it again).
    async fn index_current(&self, mut leading: watch::Receiver<bool>) -> bool {
        let mut unanswered_since = tokio::time::Instant::now();
        loop {
            if !*leading.borrow_and_update() {
                return false;
            }
            let asked = tokio::time::timeout(
                BUCKET_ANSWER_WAIT,
                registry_kv::watch::bucket_info(&self.provisioned.nodes),
            );
            let last = match self.unless_changed(&mut leading, asked).await {
                Interrupted::Over => return false,
                Interrupted::Changed => continue,
                Interrupted::Done(Ok(Ok(info))) => Some(info.state.last_sequence),
                Interrupted::Done(_) => None,
            };
            let Some(last) = last else {
                if unanswered_since.elapsed() >= BUCKET_ANSWER_WAIT {
                    warn!(
                        held = self.index.revision(),
                        "the nodes bucket does not answer at the start of a term; starting from the read index as it is"
                    );
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            unanswered_since = tokio::time::Instant::now();
            let wait = self.index.wait_revision(last, INDEX_CATCH_UP_WAIT);
            match self.unless_changed(&mut leading, wait).await {
                Interrupted::Over => return false,
                Interrupted::Changed => continue,
                Interrupted::Done(true) => return true,
                Interrupted::Done(false) => {}
            }
            warn!(
                held = self.index.revision(),
                last,
                "the read index is behind the nodes bucket at the start of a term; waiting for it"
            );
        }
    }

    /// Runs `work` unless the registry stops or `leading` changes first.
    async fn unless_changed<T>(
        &self,
        leading: &mut watch::Receiver<bool>,
        work: impl std::future::Future<Output = T>,
    ) -> Interrupted<T> {
        tokio::select! {
            () = self.cancel.cancelled() => Interrupted::Over,
            changed = leading.changed() => match changed {
                Ok(()) => Interrupted::Changed,
                Err(_) => Interrupted::Over,
            },
            done = work => Interrupted::Done(done),
        }
    }
}

/// How a piece of a term's start ended.
enum Interrupted<T> {
    /// The registry is stopping (or leadership is no longer followed).
    Over,
    /// Leadership changed: look again.
    Changed,
    /// The work ended with this.
    Done(T),
}

/// How long a term waits for the `nodes` bucket to answer before it starts
/// from the read index as it is.
const BUCKET_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// How long a term waits for the read index to catch up before it says
/// so (and waits again: a stalled watch is reopened within 15 s).
const INDEX_CATCH_UP_WAIT: Duration = Duration::from_secs(10);

/// How often the leader checks that the `nodes` bucket still exists.
const BUCKET_CHECK: Duration = Duration::from_secs(2);

/// While leading: notices the loss of the `nodes` bucket (deleted by
/// mistake, or lost with its servers), provisions it again, tells the
/// worker to write every record it holds, and broadcasts a
/// `registry.reannounce` alert so every node registers again (what the
/// registry did not hold comes back that way).
async fn guard_bucket(
    config: RegistryConfig,
    js: async_nats::jetstream::Context,
    lost: watch::Sender<u32>,
    mut leading: watch::Receiver<bool>,
    cancel: CancellationToken,
) {
    let stream = subjects::kv_stream(&config.names.nodes_bucket);
    let alerts = AlertPublisher::new(js.clone());
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            _ = leading.wait_for(|l| !*l) => return,
            _ = tokio::time::sleep(BUCKET_CHECK) => {}
        }
        let missing = match js.get_stream(&stream).await {
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                async_nats::jetstream::context::GetStreamErrorKind::JetStream(ref j)
                    if j.error_code() == async_nats::jetstream::ErrorCode::STREAM_NOT_FOUND
            ),
        };
        if !missing {
            continue;
        }
        warn!(bucket = %config.names.nodes_bucket, "the nodes bucket is gone; provisioning it again");
        if let Err(e) =
            registry_kv::provision(&js, &config.names, &crate::stream_settings(&config)).await
        {
            warn!(error = %e, "provisioning after the loss of the nodes bucket; retrying");
            continue;
        }
        lost.send_modify(|n| *n += 1);
        // The id is derived from the new bucket's creation: a second
        // leader that saw the same loss re-derives it (deduplicated).
        let created = match js.get_stream(&stream).await {
            Ok(handle) => handle.cached_info().created,
            Err(e) => {
                // NOTE: rare (it was just made); the alert still goes out,
                // its id then from this instance's clock.
                warn!(error = %e, "reading the new nodes bucket");
                chrono::Utc::now()
            }
        };
        let created = schemas::time::format(created);
        let alert = schemas::Alert {
            id: alert_id(
                None,
                AlertType::Reannounce,
                &format!("{}/{created}", config.names.nodes_bucket),
            ),
            r#type: AlertType::Reannounce.to_string(),
            at: schemas::time::format(chrono::Utc::now()),
            message: Some(format!(
                "the {} bucket was lost and is being rebuilt: every node, register again",
                config.names.nodes_bucket
            )),
            ..schemas::Alert::default()
        };
        if let Err(e) = alerts.publish(&alert).await {
            warn!(error = %e, "broadcasting the reannounce request");
        }
    }
}
