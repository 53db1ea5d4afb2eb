//! What this instance knows about itself, shared by the parts that learn it
//! (the lease, the worker) and the parts that report it (health, metrics).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// No backlog figure yet (a standby, or a leader before its first look).
const UNKNOWN: u64 = u64::MAX;

/// The instance's own state.
#[derive(Debug)]
pub struct RegistryState {
    /// The instance's name.
    pub instance: String,
    started: Instant,
    leader: AtomicBool,
    backlog: AtomicU64,
    self_preservation: Mutex<Option<serde_json::Value>>,
    /// The event stream's history at the current rate, and whether it is
    /// under the minimum (the leader's look).
    event_history: Mutex<(Option<Duration>, bool)>,
}

impl RegistryState {
    /// The state of instance `instance`, starting now.
    pub fn new(instance: String) -> Self {
        Self {
            instance,
            started: Instant::now(),
            leader: AtomicBool::new(false),
            backlog: AtomicU64::new(UNKNOWN),
            self_preservation: Mutex::new(None),
            event_history: Mutex::new((None, false)),
        }
    }

    /// Seconds since the start.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    /// Whether it leads.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }

    /// Records whether it leads (a standby has no backlog of its own).
    pub fn set_leader(&self, leads: bool) {
        self.leader.store(leads, Ordering::Relaxed);
        if !leads {
            self.backlog.store(UNKNOWN, Ordering::Relaxed);
            self.set_self_preservation(None);
            self.set_event_history(None, false);
        }
    }

    /// Events not yet processed, as the leader last saw them.
    pub fn backlog(&self) -> Option<u64> {
        Some(self.backlog.load(Ordering::Relaxed)).filter(|b| *b != UNKNOWN)
    }

    /// Records the leader's backlog.
    pub fn set_backlog(&self, events: u64) {
        self.backlog
            .store(events.min(UNKNOWN - 1), Ordering::Relaxed);
    }

    /// Why transitions are held, if they are.
    pub fn self_preservation(&self) -> Option<serde_json::Value> {
        self.self_preservation
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The event stream's history at the current rate (`None`: unbounded
    /// or not measured), and whether it is under the minimum.
    pub fn event_history(&self) -> (Option<Duration>, bool) {
        self.event_history.lock().map(|h| *h).unwrap_or_default()
    }

    /// Records the leader's look at the event stream's history.
    pub fn set_event_history(&self, held: Option<Duration>, short: bool) {
        if let Ok(mut history) = self.event_history.lock() {
            *history = (held, short);
        }
    }

    /// Records why transitions are held (none: they are not).
    pub fn set_self_preservation(&self, why: Option<serde_json::Value>) {
        if let Ok(mut held) = self.self_preservation.lock() {
            *held = why;
        }
    }
}
