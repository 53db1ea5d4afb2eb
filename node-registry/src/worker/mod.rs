//! The registry worker: the one writer of `nodes`. It takes the events of
//! `NODE_EVENTS` and the passing of time to the fleet (`registry-core`'s
//! lifecycle) and carries out what the fleet decides.
//!
//! The I/O goes through three small traits, each with an in-memory twin, so
//! the rules that matter (ack only after the effect is durable; a CAS
//! conflict is re-read and re-decided; one write per node per batch; KV
//! trouble holds transitions after two failing rounds; a poison message is
//! terminated once) have unit tests (`tests`):
//! [`registry_kv::RecordStore`], [`registry_kv::alerts::AlertSink`] and
//! [`crate::tasks::TaskSender`].
//!
//! One job a file:
//! - here: the [`Worker`] and what it holds;
//! - `run`: one leadership term's select loop over NATS (events, connection
//!   advisories, admin requests, stream leader elections, the sweep tick and
//!   the event-stream probe, the keeper's alerts);
//! - `ingest`: a batch of deliveries decoded, checked, applied, and the
//!   verdict for each (ack, retry, terminate);
//! - `execute`: the fleet's effects carried out; write health;
//! - `admin`: operators' requests;
//! - `advisories`: the server's connection advisories;
//! - `caught_up`: whether every event was applied, on evidence fresh enough
//!   to judge nodes by (and a pull that went quiet);
//! - `clock`: the server's clock, as the events show it;
//! - `losses`: events the stream discarded before they were read;
//! - `history`: the history the event stream holds at the current rate,
//!   and its size as a budget in time;
//! - `stream_keeper`: the task that looks at the event stream every second
//!   and grows it (partition 0's leader), beside the loop;
//! - `position`: where a term reads the stream from (a rewind to the ack
//!   floor) and how it acks (per batch).

mod admin;
mod advisories;
mod caught_up;
mod clock;
mod execute;
mod history;
mod ingest;
mod losses;
mod position;
mod run;
mod stream_keeper;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use registry_core::lifecycle::Fleet;
use schemas::Alert;
use subjects::NodeId;

use crate::counters::Counters;
use crate::index::ReadIndex;
use crate::keys::NodeKeys;

pub use admin::read_admin_request;
pub use advisories::read_connection_advisory;
pub use clock::ServerClock;
pub use history::HistorySettings;
pub use ingest::{Delivery, DeliveryMeta, Ingested, Verdict};
pub use losses::LossWatch;
pub use run::Term;

/// Which share of the fleet a worker leads: partition `index` of `count`
/// (the whole fleet with one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    /// Its number, from 0.
    pub index: u32,
    /// How many the event stream has.
    pub count: u32,
}

impl Partition {
    /// The whole fleet: one partition.
    pub const WHOLE: Self = Self { index: 0, count: 1 };

    /// Whether node `id`'s record is this partition's.
    pub fn owns(&self, id: &NodeId) -> bool {
        subjects::partition_of(id, self.count) == self.index
    }

    /// The partition that owns node `id`.
    pub fn of(&self, id: &NodeId) -> Self {
        Self {
            index: subjects::partition_of(id, self.count),
            count: self.count,
        }
    }
}

/// Consumes events and judges liveness; the one writer of `nodes`.
#[derive(Debug)]
pub struct Worker<S, A, T> {
    fleet: Fleet,
    store: S,
    alerts: A,
    tasks: T,
    counters: Arc<Counters>,
    clock: ServerClock,
    /// Alerts not stored yet (`ALERTS` unreachable), retried in order.
    pending_alerts: VecDeque<Alert>,
    index: Option<ReadIndex>,
    /// Rounds of writes in a row that failed (not conflicts) with none
    /// succeeding, and the failures counted over them.
    failing_rounds: u32,
    failed_writes: u64,
    /// Joined nodes' keys: their events must be signed, with rising seq.
    keys: Option<NodeKeys>,
    /// Whether events of nodes without a key are refused.
    require_signatures: bool,
    /// The highest event seq accepted per signing node.
    last_seq: HashMap<NodeId, u64>,
    /// Events the stream discarded before they were read.
    losses: LossWatch,
    /// Where applied registrations and deregistrations are copied.
    lifecycle_stream: String,
    /// Events up to this stream sequence were delivered before the last
    /// rewind: they come again, and are not replays.
    redelivered_up_to: u64,
    /// The share of the fleet it leads.
    partition: Partition,
}

impl<S, A, T> Worker<S, A, T> {
    /// A worker over a restored fleet, writing through `store`, storing
    /// alerts in `alerts` and sending tasks through `tasks`.
    pub fn new(fleet: Fleet, store: S, alerts: A, tasks: T, counters: Arc<Counters>) -> Self {
        Self {
            fleet,
            store,
            alerts,
            tasks,
            counters,
            clock: ServerClock::default(),
            pending_alerts: VecDeque::new(),
            index: None,
            failing_rounds: 0,
            failed_writes: 0,
            keys: None,
            require_signatures: false,
            last_seq: HashMap::new(),
            losses: LossWatch::default(),
            lifecycle_stream: subjects::STREAM_NODE_LIFECYCLE.to_owned(),
            redelivered_up_to: 0,
            partition: Partition::WHOLE,
        }
    }

    /// Leads `partition` only: operators' requests for other nodes are
    /// handed to their partition's leader.
    pub fn with_partition(mut self, partition: Partition) -> Self {
        self.partition = partition;
        self
    }

    /// Announces every record this worker writes to `index`, which then
    /// takes the record as it is from the watch (the bytes shared with the
    /// fleet) instead of decoding it again.
    pub fn with_index(mut self, index: ReadIndex) -> Self {
        self.index = Some(index);
        self
    }

    /// Copies applied registrations and deregistrations to `stream`
    /// (default `NODE_LIFECYCLE`).
    pub fn with_lifecycle_stream(mut self, stream: String) -> Self {
        self.lifecycle_stream = stream;
        self
    }

    /// Checks events against the nodes' keys: a node with a key must sign
    /// its events, with a seq above the last one accepted; with
    /// `require_signatures`, a node without a key is refused.
    pub fn with_keys(mut self, keys: NodeKeys, require_signatures: bool) -> Self {
        self.keys = Some(keys);
        self.require_signatures = require_signatures;
        self
    }

    /// The fleet as the worker knows it.
    pub fn fleet(&self) -> &Fleet {
        &self.fleet
    }

    /// Alerts waiting to be stored.
    pub fn pending_alerts(&self) -> usize {
        self.pending_alerts.len()
    }

    /// Starts a term whose consumer had read up to stream sequence `high`
    /// (unknown: the first delivery sets it).
    pub fn losses_after(&mut self, high: Option<u64>) {
        self.losses = high
            .map(LossWatch::after)
            .unwrap_or_default()
            .partitioned(self.partition.index, self.partition.count);
    }

    /// The consumer was rewound: delivery resumes after stream sequence
    /// `floor`, and what follows up to `delivered_before` comes again.
    pub fn rewound(&mut self, floor: u64, delivered_before: u64) {
        self.losses.rewound_to(floor);
        self.redelivered_up_to = self.redelivered_up_to.max(delivered_before);
    }
}
