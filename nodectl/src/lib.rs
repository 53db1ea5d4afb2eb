//! Everything an operator does to the fleet, as a library; the `nodectl`
//! command is a thin CLI over it (and over [`fleet_client::Client`] for
//! questions to the registry).
//!
//! - [`tokens`]: join tokens in `registry_meta` (create, list, revoke).
//! - [`node_keys`]: the node keys the registry checks signatures with.
//! - [`auth`]: the auth directory's roles, and pushing a revocation to the
//!   servers.
//! - [`meta`]: opening the registry's `registry_meta` bucket.
//! - [`profiles`]: role profiles (set, get, list, rm, history).
//! - [`table`]: rendering for people; [`reasons`]: what is out of service
//!   and why (`nodectl nodes --reasons`).
//! - [`Error`]: why an operation failed, by kind.
//!
//! Every write to `registry_meta` here is compare-and-swap (DESIGN
//! principle 5): an operator racing the registry or another operator gets a
//! clear "changed meanwhile" instead of clobbering.
#![deny(missing_docs)]

pub mod auth;
mod error;
pub mod meta;
pub mod node_keys;
pub mod profiles;
pub mod reasons;
pub mod table;
pub mod tokens;

pub use error::Error;
