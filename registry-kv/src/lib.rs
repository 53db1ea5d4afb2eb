//! The JetStream layer of the fleet registry.
//!
//! Everything the registry keeps lives in NATS; this crate owns the how:
//! - [`provision`]: creates the streams, buckets and the durable consumer when
//!   absent, and reuses compatible existing ones (idempotent; safe to race).
//! - [`records`]: the [`records::RecordStore`] trait the worker writes node
//!   records through, always compare-and-swap on the key's revision, with a
//!   JetStream KV implementation and an in-memory one for unit tests.
//! - [`watch`]: a raw watch of a bucket that says when its initial replay is
//!   complete (what the read index and a cold start need), and the one loop
//!   that keeps a cache fed from a watch ([`watch::keep_watching`]).
//! - [`lease`]: the leader lease in `registry_meta`, renewed by CAS, judged
//!   without a shared clock.
//! - [`meta`]: lists the keys under a prefix of a bucket and forgets a key
//!   for good (join-token housekeeping).
//! - [`snapshots`]: the object store of read index snapshots (one object per
//!   `nodes` bucket, replaced whole by each write).
//! - [`alerts`]: the [`alerts::AlertSink`] trait; publishes alerts on
//!   `system.broadcast` with `Nats-Msg-Id`, so a replayed alert is dropped by
//!   the stream's duplicate window, with an in-memory twin for unit tests.
#![deny(missing_docs)]

pub mod alerts;
pub mod lease;
pub mod meta;
pub mod provision;
pub mod publish;
pub mod records;
pub mod snapshots;
pub mod watch;

pub use provision::{provision, Provisioned, StreamSettings};
pub use records::{
    EncodedRecord, JetStreamRecords, MemoryRecords, RecordStore, StoreError, Versioned,
};
