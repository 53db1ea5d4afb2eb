//! The fleet registry's messages: one contract, two encodings.
//!
//! `proto/fleet.proto` is the one source of truth; [`v1`] holds the types
//! generated from it, which also carry the serde derives of the JSON form.
//! The tour:
//! - [`codec`]: JSON ⇄ protobuf by `Content-Type`, size limits, strict
//!   decoding of requests.
//! - [`validate`]: checks an inbound event and turns it into a typed
//!   [`validate::ValidEvent`].
//! - [`status`]: the lowercase strings of statuses, alert, event and task
//!   types and admin ops as enums.
//! - [`error`]: coded error replies (`Nats-Service-Error-Code`).
//! - [`admin`], [`join`]: the requests and answers of `registry.admin` and
//!   `registry.join`.
//! - [`meta`]: the join-token and node-key records of `registry_meta`.
//! - [`profile`]: a role's configuration profile (bucket `profiles`).
//! - [`time`]: RFC 3339 formatting of the server's times.
//! - [`record`]: a node record as its KV value.
//! - `nats` (feature `nats`): the encoding named by a message's headers;
//!   reply headers. Off for the pure core, which has no NATS client.
//! - [`selector`]: the label-selector language of discovery queries.
#![deny(missing_docs)]

pub mod admin;
pub mod codec;
pub mod error;
pub mod health;
pub mod join;
pub mod json;
pub mod meta;
#[cfg(feature = "nats")]
pub mod nats;
pub mod profile;
pub mod record;
pub mod selector;
pub mod status;
pub mod time;
pub mod validate;

/// Types generated from `proto/fleet.proto` (package `fleet.v1`).
// NOTE: generated code documents only what the .proto comments, so
// missing_docs is relaxed here; the .proto file is the documentation.
#[allow(missing_docs, clippy::derive_partial_eq_without_eq)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/fleet.v1.rs"));
}

pub use codec::Encoding;
pub use v1::{
    Alert, Capabilities, DetectReply, DiscoverReply, DiscoverRequest, ErrorBody, ErrorReply,
    EventsLost, Fit, GetRequest, Gpu, GpuCordon, GpuHealth, GpuState, GpuUsage, Maintenance,
    Metrics, MigInstance, NatsLink, NodeEvent, NodeGpuHealth, NodeRecord, Ollama, OllamaModel,
    PingReply, Placement, ReannounceReply, SelfPreservationFigures, TaskRequest,
};
