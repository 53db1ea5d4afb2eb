//! Self-preservation: when the registry's own faults (link, writes, event
//! stream) or an implausible share of silence in the fleet or a region make
//! silence mean nothing, transitions are held, and said so once each way.

use super::*;

/// A fault of the registry's own that makes it distrust what it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OwnFault {
    /// Its NATS connection is down: it hears nothing.
    NatsLink,
    /// Its record writes are failing.
    KvWrites,
    /// The event stream does not answer (no leader, or JetStream itself
    /// is down): nodes cannot store their heartbeats, so silence means
    /// nothing.
    EventStream,
}

impl OwnFault {
    /// What fails, for the alert's message.
    fn subject(self) -> &'static str {
        match self {
            Self::NatsLink => "NATS link is",
            Self::KvWrites => "record writes are",
            Self::EventStream => "event stream is",
        }
    }

    /// Its name in alerts' `figures` and in health (`nats_link`, ...).
    pub fn reason(self) -> &'static str {
        match self {
            Self::NatsLink => "nats_link",
            Self::KvWrites => "kv_writes",
            Self::EventStream => "event_stream",
        }
    }
}

/// A summary of the fleet for self-preservation and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SilenceCensus {
    /// Nodes watched for liveness: online, plus degraded within one window.
    pub watched: usize,
    /// Of those, the ones silent for `degraded_after` or more.
    pub silent: usize,
}

/// The figures of all regions together.
pub(super) fn total(by_region: &[SilenceCensus]) -> SilenceCensus {
    by_region
        .iter()
        .fold(SilenceCensus::default(), |a, c| SilenceCensus {
            watched: a.watched + c.watched,
            silent: a.silent + c.silent,
        })
}

impl Fleet {
    /// Grants every node a fresh `degraded_after` window from `now` (after the
    /// registry lost its NATS link, or left self-preservation).
    pub fn grant_grace(&mut self, now: DateTime<Utc>) {
        self.grant_grace_to(now, None);
    }

    /// Grants a fresh window to the nodes of `region` (all when `None`).
    pub(super) fn grant_grace_to(&mut self, now: DateTime<Utc>, region: Option<u16>) {
        for node in self.slots.iter_mut().flatten() {
            if region.is_none_or(|r| node.region == r) {
                node.judged_from = node.judged_from.max(now);
            }
        }
        // Deadlines only moved later: queued entries find that out lazily.
        // Held nodes have none; queue them again unless still held.
        for slot in std::mem::take(&mut self.held) {
            let still_held = self
                .slots
                .get(slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|n| region.is_some_and(|r| n.region != r) && self.holds(n.region));
            if still_held {
                self.held.push(slot);
            } else {
                self.schedule(slot);
            }
        }
    }

    /// Whether transitions of nodes in `region` are held.
    pub(super) fn holds(&self, region: u16) -> bool {
        self.in_self_preservation() || (region != 0 && self.silent_regions.contains(&region))
    }

    /// Notes a fault of the registry's own (at `now`): every transition is
    /// held until it clears. Returns the `registry.self_preservation` alert
    /// when this starts a hold.
    pub fn fault(&mut self, fault: OwnFault, now: DateTime<Utc>, failures: u64) -> Effects {
        let mut effects = Effects::default();
        if self.faults.contains_key(&fault) {
            return effects;
        }
        self.faults.insert(fault, now);
        effects.alerts.push(self.preservation_alert(
            "entered",
            now,
            SelfPreservationFigures {
                scope: "registry".to_owned(),
                reason: fault.reason().to_owned(),
                since: Some(schemas::time::format(now)),
                failures: (failures > 0).then_some(failures),
                ..SelfPreservationFigures::default()
            },
            format!(
                "the registry's {} failing: holding degraded/offline transitions",
                fault.subject()
            ),
        ));
        effects
    }

    /// Notes that a fault of the registry's own cleared at `now`: when none
    /// is left, every node gets a fresh grace window and judging resumes.
    pub fn fault_cleared(&mut self, fault: OwnFault, now: DateTime<Utc>) -> Effects {
        let mut effects = Effects::default();
        let Some(since) = self.faults.remove(&fault) else {
            return effects;
        };
        self.grant_grace(now);
        effects.alerts.push(self.preservation_alert(
            "left",
            now,
            SelfPreservationFigures {
                scope: "registry".to_owned(),
                reason: fault.reason().to_owned(),
                since: Some(schemas::time::format(since)),
                ..SelfPreservationFigures::default()
            },
            format!(
                "the registry's {} working again after {}s: judging again after a fresh {}s grace window",
                fault.subject(),
                seconds(now.signed_duration_since(since)),
                self.settings.degraded_after.as_secs()
            ),
        ));
        effects
    }

    /// The faults of its own the registry holds transitions for.
    pub fn faults(&self) -> impl Iterator<Item = OwnFault> + '_ {
        self.faults.keys().copied()
    }

    /// The regions whose transitions are held (mass silence in the region).
    pub fn silent_regions(&self) -> Vec<&str> {
        self.silent_regions
            .iter()
            .filter_map(|r| self.regions.get(usize::from(*r)).map(String::as_str))
            .collect()
    }

    /// Whether more of the fleet went silent in one window than the
    /// threshold allows (every transition held).
    pub fn mass_silence(&self) -> bool {
        self.mass_silence
    }

    /// Whether every transition is held because the registry suspects
    /// itself (mass silence across the fleet, or a fault of its own).
    pub fn in_self_preservation(&self) -> bool {
        self.mass_silence || !self.faults.is_empty()
    }

    /// Counts the nodes watched for liveness and the silent ones among them:
    /// the nodes degraded within the last window, and the online nodes whose
    /// silence is being held. Nodes due at this moment but not yet swept are
    /// counted by the sweep itself.
    pub fn census(&mut self, now: DateTime<Utc>) -> SilenceCensus {
        total(&self.census_by_region(now))
    }

    /// [`Fleet::census`] per region (indexed by region number; 0: none).
    pub(super) fn census_by_region(&mut self, now: DateTime<Utc>) -> Vec<SilenceCensus> {
        let mut by_region: Vec<SilenceCensus> = self
            .online_in
            .iter()
            .map(|&online| SilenceCensus {
                watched: online,
                silent: 0,
            })
            .collect();
        let window = chrono_duration(self.settings.degraded_after);
        while self
            .degradations
            .front()
            .is_some_and(|(at, _)| now.signed_duration_since(*at) >= window)
        {
            self.degradations.pop_front();
        }
        for (at, slot) in &self.degradations {
            let Some(node) = self.slots.get(*slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            if node.status == NodeStatus::Degraded && node.status_since == *at {
                if let Some(c) = by_region.get_mut(usize::from(node.region)) {
                    c.watched += 1;
                    c.silent += 1;
                }
            }
        }
        // A held node leaves the list when it is queued again (it was heard
        // from) or gone; the degraded ones wait for their offline judgement.
        let mut held = std::mem::take(&mut self.held);
        held.retain(|slot| {
            self.slots
                .get(*slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|n| {
                    n.queued.is_none()
                        && matches!(n.status, NodeStatus::Online | NodeStatus::Degraded)
                })
        });
        for slot in &held {
            let Some(node) = self.slots.get(*slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            if node.status == NodeStatus::Online && self.is_silent(node, now) {
                if let Some(c) = by_region.get_mut(usize::from(node.region)) {
                    c.silent += 1;
                }
            }
        }
        self.held = held;
        by_region
    }

    /// Enters or leaves self-preservation for the fleet and for each region
    /// on this sweep's figures.
    pub(super) fn self_preservation_check(
        &mut self,
        by_region: &[SilenceCensus],
        now: DateTime<Utc>,
    ) -> Effects {
        let mut effects = Effects::default();
        let fleet = total(by_region);
        if self.suspicious(fleet) != self.mass_silence {
            self.mass_silence = !self.mass_silence;
            effects
                .alerts
                .push(self.mass_silence_alert(None, fleet, self.mass_silence, now));
        }
        for (region, census) in by_region.iter().enumerate().skip(1) {
            let Ok(region) = u16::try_from(region) else {
                break;
            };
            let suspicious = self.suspicious(*census);
            if suspicious == self.silent_regions.contains(&region) {
                continue;
            }
            if suspicious {
                self.silent_regions.insert(region);
            } else {
                self.silent_regions.remove(&region);
                self.grant_grace_to(now, Some(region));
            }
            effects
                .alerts
                .push(self.mass_silence_alert(Some(region), *census, suspicious, now));
        }
        effects
    }

    /// Whether these figures are an implausible share of silence.
    pub(super) fn suspicious(&self, census: SilenceCensus) -> bool {
        census.watched >= self.settings.self_preservation_min_fleet
            && census.silent as f64
                > self.settings.self_preservation_threshold * census.watched as f64
    }

    /// The alert for entering (`entered`) or leaving mass silence in
    /// `region` (the fleet when `None`); leaving the fleet's grants grace.
    pub(super) fn mass_silence_alert(
        &mut self,
        region: Option<u16>,
        census: SilenceCensus,
        entered: bool,
        now: DateTime<Utc>,
    ) -> Alert {
        let scope = match region {
            None => "fleet".to_owned(),
            Some(r) => format!(
                "{REGION_LABEL}={}",
                self.regions.get(usize::from(r)).map_or("", String::as_str)
            ),
        };
        let threshold = self.settings.self_preservation_threshold;
        let message = if entered {
            format!(
                "{} of {} watched nodes ({scope}) went silent within one window (threshold {:.0} %): holding their degraded/offline transitions",
                census.silent,
                census.watched,
                threshold * 100.0
            )
        } else {
            if region.is_none() {
                self.grant_grace(now);
            }
            format!(
                "{} of {} watched nodes ({scope}) silent: judging again after a fresh {}s grace window",
                census.silent,
                census.watched,
                self.settings.degraded_after.as_secs()
            )
        };
        let figures = SelfPreservationFigures {
            scope,
            reason: "mass_silence".to_owned(),
            watched: Some(census.watched as u64),
            silent: Some(census.silent as u64),
            threshold: Some(threshold),
            ..SelfPreservationFigures::default()
        };
        self.preservation_alert(
            if entered { "entered" } else { "left" },
            now,
            figures,
            message,
        )
    }

    /// A `registry.self_preservation` alert.
    pub(super) fn preservation_alert(
        &self,
        state: &str,
        now: DateTime<Utc>,
        figures: SelfPreservationFigures,
        message: String,
    ) -> Alert {
        Alert {
            id: alert_id(
                None,
                AlertType::SelfPreservation,
                &format!(
                    "{}/{}/{state}/{}",
                    figures.scope,
                    figures.reason,
                    now.timestamp_millis()
                ),
            ),
            r#type: AlertType::SelfPreservation.to_string(),
            status: Some(state.to_owned()),
            at: schemas::time::format(now),
            message: Some(message),
            figures: Some(figures),
            ..Alert::default()
        }
    }
}
