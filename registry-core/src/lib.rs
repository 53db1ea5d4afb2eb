//! The registry's decision core: what to do, never how to do it.
//!
//! Everything here takes the current time (and, for ranking, a random seed)
//! as an argument and does no I/O, so unit tests drive hours of node life in
//! microseconds. Its `Cargo.toml` names no async runtime, no NATS client and
//! no storage crate: purity is a fact of the build, not a comment (DESIGN
//! principle 2). The service that runs it is `node-registry`.
//!
//! - [`lifecycle`]: the state machine and liveness sweeper over the fleet
//!   (deadline wheel, self-preservation, restore, operator actions); it turns
//!   events and time into [`lifecycle::Effects`] for the service to execute.
//! - [`catalog`]: every record with inverted indexes, what discovery reads.
//! - [`discovery`]: query validation, matching and ranking over the catalog.
//! - [`selector`]: the label-selector language (owned by `schemas`).
#![deny(missing_docs)]

pub mod catalog;
pub mod discovery;
pub mod lifecycle;
pub mod slot_ids;
pub use schemas::selector;
