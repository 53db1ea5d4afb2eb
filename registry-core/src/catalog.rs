//! The node catalog: every record, with inverted indexes so a selective
//! query touches only its candidates. Pure data structure, no I/O.
//!
//! Each record lives in a slot; posting lists (roaring bitmaps of slots) map
//! a status, a tag, a label key, a label key=value, a model or a role to the
//! nodes that have it. A query intersects the lists of its positive
//! conditions and checks every candidate exactly ([`crate::discovery`]), so
//! the indexes only ever narrow, never decide.

use std::collections::HashMap;

use roaring::RoaringBitmap;
use schemas::status::NodeStatus;
use schemas::NodeRecord;

/// Posting lists keyed by a string.
type Postings = HashMap<String, RoaringBitmap>;

/// Every record, indexed.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    slots: Vec<Option<NodeRecord>>,
    by_id: HashMap<String, u32>,
    free: Vec<u32>,
    live: RoaringBitmap,
    status: HashMap<NodeStatus, RoaringBitmap>,
    tags: Postings,
    label_keys: Postings,
    label_values: HashMap<String, Postings>,
    models: Postings,
    roles: Postings,
    /// The highest KV revision applied.
    pub revision: u64,
}

fn add(postings: &mut Postings, key: &str, slot: u32) {
    match postings.get_mut(key) {
        Some(bitmap) => {
            bitmap.insert(slot);
        }
        None => {
            postings.insert(key.to_owned(), RoaringBitmap::from_iter([slot]));
        }
    }
}

fn remove(postings: &mut Postings, key: &str, slot: u32) {
    if let Some(bitmap) = postings.get_mut(key) {
        bitmap.remove(slot);
        if bitmap.is_empty() {
            postings.remove(key);
        }
    }
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The record of a node.
    pub fn get(&self, node_id: &str) -> Option<&NodeRecord> {
        let slot = *self.by_id.get(node_id)?;
        self.slot(slot)
    }

    /// The record in a slot.
    pub fn slot(&self, slot: u32) -> Option<&NodeRecord> {
        self.slots.get(slot as usize).and_then(Option::as_ref)
    }

    /// Every record, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = &NodeRecord> {
        self.slots.iter().filter_map(Option::as_ref)
    }

    /// Inserts or replaces the record of `record.node_id`.
    pub fn upsert(&mut self, record: NodeRecord) {
        let slot = match self.by_id.get(&record.node_id) {
            Some(&slot) => {
                self.unindex(slot);
                slot
            }
            None => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
                });
                self.by_id.insert(record.node_id.clone(), slot);
                slot
            }
        };
        self.index(slot, &record);
        if let Some(entry) = self.slots.get_mut(slot as usize) {
            *entry = Some(record);
        }
    }

    /// Removes a node's record, if present.
    pub fn remove(&mut self, node_id: &str) {
        if let Some(slot) = self.by_id.remove(node_id) {
            self.unindex(slot);
            if let Some(entry) = self.slots.get_mut(slot as usize) {
                *entry = None;
            }
            self.free.push(slot);
        }
    }

    fn index(&mut self, slot: u32, record: &NodeRecord) {
        self.live.insert(slot);
        if let Ok(status) = record.status.parse::<NodeStatus>() {
            self.status.entry(status).or_default().insert(slot);
        }
        for (key, value) in &record.labels {
            add(&mut self.label_keys, key, slot);
            add(
                self.label_values.entry(key.clone()).or_default(),
                value,
                slot,
            );
        }
        if let Some(caps) = &record.capabilities {
            for tag in &caps.tags {
                add(&mut self.tags, tag, slot);
            }
            for model in &caps.models {
                add(&mut self.models, model, slot);
            }
        }
        if let Some(role) = &record.role {
            add(&mut self.roles, role, slot);
        }
    }

    fn unindex(&mut self, slot: u32) {
        let Some(Some(record)) = self.slots.get(slot as usize).cloned() else {
            return;
        };
        self.live.remove(slot);
        if let Ok(status) = record.status.parse::<NodeStatus>() {
            if let Some(bitmap) = self.status.get_mut(&status) {
                bitmap.remove(slot);
            }
        }
        for (key, value) in &record.labels {
            remove(&mut self.label_keys, key, slot);
            if let Some(values) = self.label_values.get_mut(key) {
                remove(values, value, slot);
                if values.is_empty() {
                    self.label_values.remove(key);
                }
            }
        }
        if let Some(caps) = &record.capabilities {
            for tag in &caps.tags {
                remove(&mut self.tags, tag, slot);
            }
            for model in &caps.models {
                remove(&mut self.models, model, slot);
            }
        }
        if let Some(role) = &record.role {
            remove(&mut self.roles, role, slot);
        }
    }

    /// Every live slot.
    pub fn all(&self) -> RoaringBitmap {
        self.live.clone()
    }

    /// Slots with this status.
    pub fn with_status(&self, status: NodeStatus) -> RoaringBitmap {
        self.status.get(&status).cloned().unwrap_or_default()
    }

    fn posting(postings: &Postings, key: &str) -> RoaringBitmap {
        postings.get(key).cloned().unwrap_or_default()
    }

    /// Slots with this tag or label key (any value): a superset of the
    /// nodes where the key "exists".
    pub fn with_key(&self, key: &str) -> RoaringBitmap {
        Self::posting(&self.tags, key) | Self::posting(&self.label_keys, key)
    }

    /// Slots with this label key (any value).
    pub fn with_label_key(&self, key: &str) -> RoaringBitmap {
        Self::posting(&self.label_keys, key)
    }

    /// Slots whose label `key` has `value`, plus, for `"true"`, the slots
    /// tagged `key` (a superset of selector equality).
    pub fn with_value(&self, key: &str, value: &str) -> RoaringBitmap {
        let mut slots = self
            .label_values
            .get(key)
            .and_then(|values| values.get(value))
            .cloned()
            .unwrap_or_default();
        if value == "true" {
            slots |= Self::posting(&self.tags, key);
        }
        slots
    }

    /// Slots whose label `key` has exactly `value` (no tags).
    pub fn with_label_value(&self, key: &str, value: &str) -> RoaringBitmap {
        self.label_values
            .get(key)
            .and_then(|values| values.get(value))
            .cloned()
            .unwrap_or_default()
    }

    /// Slots with this model installed.
    pub fn with_model(&self, model: &str) -> RoaringBitmap {
        Self::posting(&self.models, model)
    }

    /// Slots with this role.
    pub fn with_role(&self, role: &str) -> RoaringBitmap {
        Self::posting(&self.roles, role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Capabilities;

    fn record(id: &str, status: &str, labels: &[(&str, &str)], tags: &[&str]) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            status: status.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            capabilities: Some(Capabilities {
                tags: tags.iter().map(|t| (*t).into()).collect(),
                ..Capabilities::default()
            }),
            ..NodeRecord::default()
        }
    }

    #[test]
    fn upsert_replaces_postings_and_remove_frees_the_slot() {
        let mut c = Catalog::new();
        c.upsert(record("a", "online", &[("region", "eu")], &["gpu"]));
        c.upsert(record("b", "online", &[("region", "us")], &[]));
        assert_eq!(c.with_value("region", "eu").len(), 1);
        assert_eq!(c.with_key("gpu").len(), 1);
        c.upsert(record("a", "degraded", &[("region", "us")], &[]));
        assert_eq!(c.len(), 2);
        assert!(c.with_value("region", "eu").is_empty());
        assert_eq!(c.with_value("region", "us").len(), 2);
        assert!(c.with_key("gpu").is_empty());
        assert_eq!(c.with_status(NodeStatus::Online).len(), 1);
        c.remove("a");
        assert_eq!(c.len(), 1);
        assert!(c.get("a").is_none());
        c.upsert(record("c", "online", &[], &[]));
        assert_eq!(c.slots.len(), 2, "the freed slot is reused");
        assert_eq!(c.all().len(), 2);
    }
}
