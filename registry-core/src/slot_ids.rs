//! Node ids to slot numbers, for tables whose slots already hold each id.

use std::hash::BuildHasher;

use hashbrown::HashTable;

/// The slot of each node id, holding slot numbers only: the slots hold the
/// ids themselves, so a fleet keeps one copy of each id instead of two (a
/// `HashMap<String, u32>` costs a key and its heap block per node). Every
/// method takes `id_of`, which reads the id a slot holds.
#[derive(Debug, Clone, Default)]
pub struct SlotIds {
    table: HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl SlotIds {
    /// An empty table with room for `capacity` ids.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            table: HashTable::with_capacity(capacity),
            hasher: foldhash::fast::RandomState::default(),
        }
    }

    /// How many ids it holds.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The slot holding `id`.
    pub fn get<'a>(&self, id: &str, id_of: impl Fn(u32) -> Option<&'a str>) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |&slot| id_of(slot) == Some(id))
            .copied()
    }

    /// Notes that `slot` holds `id` (not held yet). Only the slots already
    /// noted are read through `id_of` (when the table grows).
    pub fn insert<'a>(&mut self, id: &str, slot: u32, id_of: impl Fn(u32) -> Option<&'a str>) {
        let hash = self.hasher.hash_one(id);
        let hasher = &self.hasher;
        self.table.insert_unique(hash, slot, |&held| {
            hasher.hash_one(id_of(held).unwrap_or_default())
        });
    }

    /// Notes that `slot` holds `id` unless another slot is noted holding
    /// it (then nothing changes); returns whether it was noted.
    pub fn insert_new<'a>(
        &mut self,
        id: &str,
        slot: u32,
        id_of: impl Fn(u32) -> Option<&'a str>,
    ) -> bool {
        let hash = self.hasher.hash_one(id);
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |&held| id_of(held) == Some(id),
            |&held| hasher.hash_one(id_of(held).unwrap_or_default()),
        ) {
            hashbrown::hash_table::Entry::Occupied(_) => false,
            hashbrown::hash_table::Entry::Vacant(vacant) => {
                vacant.insert(slot);
                true
            }
        }
    }

    /// Forgets `id` (while its slot still holds it); returns its slot.
    pub fn remove<'a>(&mut self, id: &str, id_of: impl Fn(u32) -> Option<&'a str>) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        let entry = self
            .table
            .find_entry(hash, |&slot| id_of(slot) == Some(id))
            .ok()?;
        Some(entry.remove().0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_found_through_their_slots_across_growth_and_removal() {
        let mut slots: Vec<Option<String>> = Vec::new();
        let mut ids = SlotIds::default();
        for n in 0..1000u32 {
            let id = format!("node-{n}");
            slots.push(Some(id.clone()));
            let held = &slots;
            ids.insert(&id, n, |s| held.get(s as usize)?.as_deref());
        }
        assert_eq!(ids.len(), 1000);
        assert_eq!(
            ids.get("node-417", |s| slots.get(s as usize)?.as_deref()),
            Some(417)
        );
        assert_eq!(
            ids.get("node-1000", |s| slots.get(s as usize)?.as_deref()),
            None
        );
        assert_eq!(
            ids.remove("node-417", |s| slots.get(s as usize)?.as_deref()),
            Some(417)
        );
        slots[417] = None;
        assert_eq!(
            ids.get("node-417", |s| slots.get(s as usize)?.as_deref()),
            None
        );
        assert_eq!(
            ids.remove("node-417", |s| slots.get(s as usize)?.as_deref()),
            None
        );
        assert_eq!(ids.len(), 999);
        // Noted only where no slot holds the id already.
        let held = &slots;
        assert!(!ids.insert_new("node-5", 5000, |s| held.get(s as usize)?.as_deref()));
        assert_eq!(
            ids.get("node-5", |s| held.get(s as usize)?.as_deref()),
            Some(5)
        );
        slots[417] = Some("node-417".into());
        let held = &slots;
        assert!(ids.insert_new("node-417", 417, |s| held.get(s as usize)?.as_deref()));
        assert_eq!(ids.len(), 1000);
    }
}
