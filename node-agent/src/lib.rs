//! The node agent: the daemon on every node of the fleet.
//!
//! - [`config`]: the configuration (figment-layered).
//! - [`identity`]: the node id, derived once and kept in the state directory.
//! - [`detect`]: capabilities (OS, CPU, RAM, disk, Ollama models) and metrics.
//! - [`join`]: a join token exchanged for the node's own credentials.
//! - [`profile`]: the role's profile, watched and applied live.
//! - [`agent`]: register, heartbeat, tasks, deregister; [`run`] starts it.
#![deny(missing_docs)]

pub mod agent;
pub mod config;
pub mod detect;
pub mod health;
pub mod identity;
pub mod join;
mod metrics;
pub mod profile;
mod seq;

pub use agent::run;
pub use config::AgentConfig;
