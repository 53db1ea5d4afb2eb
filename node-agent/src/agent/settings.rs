//! The configuration in force: the agent's own (re-read on SIGHUP) with
//! its role's profile over it, and the profile's changes as they come.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn, Instrument};

use super::Shared;
use crate::config::{AgentConfig, ConfigError};
use crate::detect::Detector;
use crate::profile::{self, Outcome};

/// Takes a reloaded configuration; returns whether the role changed.
pub(super) fn apply_reload(
    agent: &Arc<Shared>,
    reloaded: Result<AgentConfig, ConfigError>,
) -> bool {
    let config = match reloaded {
        Ok(config) => config,
        Err(e) => {
            warn!(error = %e, "configuration not reloaded; keeping the one in force");
            return false;
        }
    };
    let role_changed = {
        let mut local = agent.local.write().unwrap_or_else(|p| p.into_inner());
        if config.nats_url != local.nats_url || config.node_id != local.node_id {
            warn!("nats_url and node_id take effect only after a restart");
        }
        let nats_url = std::mem::take(&mut local.nats_url);
        let node_id = local.node_id.take();
        let role_changed = config.role != local.role;
        *local = AgentConfig {
            nats_url,
            node_id,
            ..config
        };
        role_changed
    };
    let effective = apply_config(agent);
    *agent.detector.lock().unwrap_or_else(|p| p.into_inner()) = Detector::new(&effective);
    role_changed
}

/// Puts the local configuration with the profile over it in force, and
/// returns it.
pub(super) fn apply_config(agent: &Arc<Shared>) -> AgentConfig {
    let local = agent
        .local
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let effective = agent
        .profile
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .effective(&local);
    agent
        .detector
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .set_services(effective.services.clone());
    *agent.config.write().unwrap_or_else(|p| p.into_inner()) = effective.clone();
    effective
}

/// Starts watching the role's profile.
pub(super) fn watch_profile(
    agent: &Arc<Shared>,
    updates: &mpsc::Sender<profile::Update>,
) -> JoinHandle<()> {
    let role = agent.config().role.clone();
    tokio::spawn(
        profile::watch::run(
            agent.client.clone(),
            role,
            updates.clone(),
            agent.profile_resync.clone(),
        )
        .in_current_span(),
    )
}

/// Takes a change of the role's profile; returns whether the node is to
/// register again (it applied a profile, or it says why it could not).
pub(super) fn apply_profile(agent: &Arc<Shared>, update: profile::Update) -> bool {
    let role = agent.config().role.clone();
    let state_dir = agent
        .local
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .state_dir
        .clone();
    let outcome = {
        let mut state = agent.profile.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = state.apply(update);
        match outcome {
            Outcome::Unchanged => return false,
            Outcome::Applied => info!(%role, revision = ?state.revision(), "profile applied"),
            Outcome::Refused => warn!(
                %role,
                error = state.error.as_deref().unwrap_or_default(),
                kept = ?state.revision(),
                "profile refused; keeping the last good one"
            ),
        }
        if outcome == Outcome::Applied {
            if let Err(e) = profile::write_file(&state_dir, &state.view(&role)) {
                warn!(error = %e, "cannot write {}", profile::PROFILE_FILE);
            }
        }
        outcome
    };
    if outcome == Outcome::Applied {
        apply_config(agent);
    }
    true
}
