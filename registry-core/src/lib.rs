//! The fleet registry.
//!
//! Pure core (no I/O, time as an argument):
//! - [`lifecycle`]: the state machine and liveness sweeper over the fleet.
//! - [`discovery`]: query validation, matching and ranking.
//!
//! Adapters (NATS at the edges):
//! - [`index`]: the read index, a reflector of the `nodes` bucket.
//! - [`service`]: `registry.discover|get|list` as the NATS micro service.
//! - [`worker`]: consumes `NODE_EVENTS`, executes the core's decisions.
//! - [`config`]: the `node-registry` configuration; [`run`] wires it all.
#![deny(missing_docs)]

pub mod discovery;
pub mod lifecycle;
