//! What this instance knows about itself, shared by the parts that learn it
//! (the leases, the workers) and the parts that report it (health,
//! metrics). With partitions, each share it leads reports on its own; the
//! getters sum or merge them.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the leader of one partition knows.
#[derive(Debug, Default, Clone)]
struct PartitionState {
    leads: bool,
    /// Events not yet processed (none: not looked yet).
    backlog: Option<u64>,
    self_preservation: Option<serde_json::Value>,
    /// The event stream's history at the current rate, and whether it is
    /// under the minimum.
    event_history: (Option<Duration>, bool),
}

/// The instance's own state.
#[derive(Debug)]
pub struct RegistryState {
    /// The instance's name.
    pub instance: String,
    started: Instant,
    partitions: Mutex<Vec<PartitionState>>,
}

impl RegistryState {
    /// The state of instance `instance` with one partition, starting now.
    pub fn new(instance: String) -> Self {
        Self::with_partitions(instance, 1)
    }

    /// The state of instance `instance` over `count` partitions.
    pub fn with_partitions(instance: String, count: u32) -> Self {
        Self {
            instance,
            started: Instant::now(),
            partitions: Mutex::new(vec![PartitionState::default(); count.max(1) as usize]),
        }
    }

    /// Seconds since the start.
    pub fn uptime_s(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    fn read<R>(&self, f: impl FnOnce(&[PartitionState]) -> R) -> R {
        match self.partitions.lock() {
            Ok(parts) => f(&parts),
            Err(poisoned) => f(&poisoned.into_inner()),
        }
    }

    fn write(&self, p: u32, f: impl FnOnce(&mut PartitionState)) {
        let mut parts = match self.partitions.lock() {
            Ok(parts) => parts,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(part) = parts.get_mut(p as usize) {
            f(part);
        }
    }

    /// Whether it leads any partition.
    pub fn is_leader(&self) -> bool {
        self.read(|parts| parts.iter().any(|p| p.leads))
    }

    /// The partitions it leads, in order.
    pub fn led_partitions(&self) -> Vec<u32> {
        self.read(|parts| {
            (0u32..)
                .zip(parts)
                .filter(|(_, p)| p.leads)
                .map(|(i, _)| i)
                .collect()
        })
    }

    /// How many partitions the event stream has.
    pub fn partition_count(&self) -> u32 {
        self.read(|parts| u32::try_from(parts.len()).unwrap_or(u32::MAX))
    }

    /// Records whether it leads partition `p` (a standby has no backlog of
    /// its own).
    pub fn set_leader(&self, p: u32, leads: bool) {
        self.write(p, |part| {
            if leads {
                part.leads = true;
            } else {
                *part = PartitionState::default();
            }
        });
    }

    /// Events not yet processed, summed over the partitions it leads, as
    /// their leaders last saw them.
    pub fn backlog(&self) -> Option<u64> {
        self.read(|parts| {
            parts
                .iter()
                .filter_map(|p| p.backlog)
                .reduce(u64::saturating_add)
        })
    }

    /// Records partition `p`'s backlog.
    pub fn set_backlog(&self, p: u32, events: u64) {
        self.write(p, |part| part.backlog = Some(events));
    }

    /// Why transitions are held, if they are (with partitions: the first
    /// partition holding them, named).
    pub fn self_preservation(&self) -> Option<serde_json::Value> {
        self.read(|parts| {
            let count = parts.len();
            (0..)
                .zip(parts)
                .find_map(|(i, p)| p.self_preservation.clone().map(|v| (i, v)))
                .map(|(i, mut v)| {
                    if count > 1 {
                        if let Some(map) = v.as_object_mut() {
                            map.insert("partition".into(), serde_json::json!(i));
                        }
                    }
                    v
                })
        })
    }

    /// Records why partition `p`'s transitions are held (none: they are not).
    pub fn set_self_preservation(&self, p: u32, why: Option<serde_json::Value>) {
        self.write(p, |part| part.self_preservation = why);
    }

    /// The event stream's history at the current rate (`None`: unbounded
    /// or not measured), and whether it is under the minimum: the shortest
    /// any led partition measured.
    pub fn event_history(&self) -> (Option<Duration>, bool) {
        self.read(|parts| {
            parts
                .iter()
                .filter(|p| p.leads && p.event_history.0.is_some())
                .map(|p| p.event_history)
                .min_by_key(|h| h.0)
                .unwrap_or_default()
        })
    }

    /// Records partition `p`'s leader's look at the event stream's history.
    pub fn set_event_history(&self, p: u32, held: Option<Duration>, short: bool) {
        self.write(p, |part| part.event_history = (held, short));
    }
}
