//! The deadline wheel and the sweep: each node waits in one bucket until
//! its silence is due to be judged; a sweep looks only at the buckets whose
//! time has come.

use super::*;

/// Width of one deadline-wheel bucket, in milliseconds.
pub(super) const GRAIN_MS: i64 = 100;

/// The wheel bucket at or after `at`: a node queued there is never looked at
/// before its deadline.
pub(super) fn bucket_of(at: DateTime<Utc>) -> i64 {
    let ms = at.timestamp_millis();
    ms.div_euclid(GRAIN_MS) + i64::from(ms.rem_euclid(GRAIN_MS) != 0)
}

impl Fleet {
    /// When a node whose connection closed is to be degraded, if it was not
    /// heard from since.
    pub(super) fn link_deadline(&self, node: &Tracked) -> Option<DateTime<Utc>> {
        let closed = node.link?.closed?;
        if self.settings.disconnect_grace.is_zero() || node.last_seen > closed {
            return None;
        }
        Some(closed.max(node.judged_from) + chrono_duration(self.settings.disconnect_grace))
    }

    /// When a node's silence is next to be judged, if ever.
    pub(super) fn deadline(&self, node: &Tracked) -> Option<DateTime<Utc>> {
        let from = node.last_seen.max(node.judged_from);
        match node.status {
            NodeStatus::Online => {
                let silent = from + chrono_duration(self.settings.degraded_after);
                Some(self.link_deadline(node).map_or(silent, |d| d.min(silent)))
            }
            NodeStatus::Degraded => Some(from + chrono_duration(self.settings.offline_after)),
            // Not judged; a drain with a deadline ends by itself.
            NodeStatus::Maintenance => node.resume_at,
            NodeStatus::Offline => None,
        }
    }

    /// Queues a node at its deadline unless it already has an entry as
    /// early (an early entry is moved when it comes up).
    pub(super) fn schedule(&mut self, slot: u32) {
        let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
            return;
        };
        let Some(deadline) = self.deadline(node) else {
            return;
        };
        let bucket = bucket_of(deadline);
        if node.queued.is_some_and(|q| q <= bucket) {
            return;
        }
        if let Some(node) = self.slot_mut(slot) {
            node.queued = Some(bucket);
        }
        self.wheel.entry(bucket).or_default().push(slot);
    }

    /// Whether an online node is due to be degraded at `now`: silent for
    /// `degraded_after`, or its connection closed a grace ago and nothing
    /// was heard since.
    pub(super) fn is_silent(&self, node: &Tracked, now: DateTime<Utc>) -> bool {
        self.silence(node, now) >= chrono_duration(self.settings.degraded_after)
            || self.link_deadline(node).is_some_and(|d| d <= now)
    }

    /// How long a node has been silent, for judgement: measured from its last
    /// heartbeat or from the start of its grace window, whichever is later.
    pub(super) fn silence(&self, node: &Tracked, now: DateTime<Utc>) -> chrono::Duration {
        now.signed_duration_since(node.last_seen.max(node.judged_from))
    }

    /// Takes the nodes whose deadline has come off the wheel (moving the ones
    /// found early to their real deadline).
    pub(super) fn due(&mut self, now: DateTime<Utc>) -> Vec<u32> {
        let mut due = Vec::new();
        let now_bucket = now.timestamp_millis().div_euclid(GRAIN_MS);
        while let Some(entry) = self.wheel.first_entry() {
            if *entry.key() > now_bucket {
                break;
            }
            let bucket = *entry.key();
            for slot in entry.remove() {
                let Some(node) = self.slot_mut(slot) else {
                    continue;
                };
                if node.queued != Some(bucket) {
                    continue; // a stale entry: the node moved or left
                }
                node.queued = None;
                let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                    continue;
                };
                match self.deadline(node) {
                    Some(deadline) if deadline <= now => due.push(slot),
                    Some(_) => self.schedule(slot),
                    None => {}
                }
            }
        }
        due
    }

    /// Judges silence at `now`: online → degraded → offline, unless the
    /// registry is in self-preservation. Also re-issues writes that failed.
    ///
    /// Call it only while the registry is caught up with the event stream and
    /// connected; otherwise silence may be the registry's, not the node's.
    pub fn sweep(&mut self, now: DateTime<Utc>) -> Effects {
        let (resumed, due): (Vec<u32>, Vec<u32>) = self.due(now).into_iter().partition(|slot| {
            self.slot(*slot)
                .is_some_and(|n| n.status == NodeStatus::Maintenance)
        });
        // Drains whose deadline came: an operator's decision, never held.
        let mut effects = Effects::default();
        for slot in resumed {
            let Some(node) = self.slot(slot) else {
                continue;
            };
            // The drained record's version: a standby that takes over derives
            // the same alert id.
            let cause = format!("resume/r{}", node.revision.unwrap_or(0));
            let how = format!(
                "by itself: its drain ended at {}",
                node.resume_at
                    .map(schemas::time::format)
                    .unwrap_or_default()
            );
            effects.extend(self.resume_slot(slot, now, &cause, &how));
        }
        let mut by_region = self.census_by_region(now);
        for slot in &due {
            let Some(node) = self.slots.get(*slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            if node.status == NodeStatus::Online {
                if let Some(c) = by_region.get_mut(usize::from(node.region)) {
                    c.silent += 1;
                }
            }
        }
        effects.extend(self.self_preservation_check(&by_region, now));
        let (held, judged): (Vec<u32>, Vec<u32>) = due.into_iter().partition(|slot| {
            self.slots
                .get(*slot as usize)
                .and_then(Option::as_ref)
                .is_some_and(|n| self.holds(n.region))
        });
        self.held.extend(held);
        if !judged.is_empty() {
            effects.extend(self.judge(judged, now));
        }
        for slot in std::mem::take(&mut self.owed) {
            let Some(node) = self.slot_mut(slot) else {
                continue;
            };
            if node.needs_write {
                let record = node.record();
                self.write(slot, record, now, &mut effects);
            }
        }
        effects
    }

    pub(super) fn judge(&mut self, mut due: Vec<u32>, now: DateTime<Utc>) -> Effects {
        let degraded_after = chrono_duration(self.settings.degraded_after);
        let offline_after = chrono_duration(self.settings.offline_after);
        // In id order, so a sweep's alerts come out the same on every run.
        due.sort_by(|a, b| {
            let id = |slot: &u32| {
                self.slots
                    .get(*slot as usize)
                    .and_then(Option::as_ref)
                    .map(|n| n.id.as_str())
            };
            id(a).cmp(&id(b))
        });
        let mut effects = Effects::default();
        for slot in due {
            let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            let silence = self.silence(node, now);
            let closed = self
                .link_deadline(node)
                .filter(|d| *d <= now)
                .and(node.link.and_then(|l| l.closed));
            let target = match node.status {
                NodeStatus::Online | NodeStatus::Degraded if silence >= offline_after => {
                    NodeStatus::Offline
                }
                NodeStatus::Online if silence >= degraded_after || closed.is_some() => {
                    NodeStatus::Degraded
                }
                _ => {
                    self.schedule(slot);
                    continue;
                }
            };
            let previous = node.status;
            let last_seen = node.last_seen;
            let silent_for = seconds(now.signed_duration_since(last_seen));
            let mut record = node.record();
            self.set_status(slot, target, now);
            let Some(node) = self.slots.get(slot as usize).and_then(Option::as_ref) else {
                continue;
            };
            record.status = target.to_string();
            record.last_heartbeat = schemas::time::format(last_seen);
            record.updated_at = schemas::time::format(now);
            let kind = if target == NodeStatus::Offline {
                AlertType::Offline
            } else {
                AlertType::Degraded
            };
            // The cause is the record version judged (every return to online
            // writes a new one), so a registry that crashed after publishing,
            // or the standby that took over from it, derives the same id
            // from what KV holds.
            let cause = format!("r{}", node.revision.unwrap_or(0));
            let message = match closed {
                Some(closed) if kind == AlertType::Degraded && silence < degraded_after => format!(
                    "connection closed {}s ago and nothing heard since (no heartbeat for {silent_for}s)",
                    seconds(now.signed_duration_since(closed))
                ),
                _ => format!("no heartbeat for {silent_for}s"),
            };
            let mut previous = previous;
            if previous == NodeStatus::Online && target == NodeStatus::Offline {
                // Judging resumed (after a hold: a lag, a takeover, a
                // server loss) past `offline_after`: the node is still
                // reported degraded first, so alerting keyed on
                // `node.degraded` hears of every incident. Both ids come
                // from the same record version, so a standby repeating the
                // judgement raises the same two.
                let mut degraded = self.alert(
                    AlertType::Degraded,
                    node,
                    Some(previous),
                    now,
                    &cause,
                    message.clone(),
                );
                degraded.status = Some(NodeStatus::Degraded.to_string());
                effects.alerts.push(degraded);
                previous = NodeStatus::Degraded;
            }
            effects
                .alerts
                .push(self.alert(kind, node, Some(previous), now, &cause, message));
            self.write(slot, record, now, &mut effects);
            self.schedule(slot);
        }
        effects
    }
}
