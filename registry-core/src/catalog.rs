//! The node catalog: every record, with inverted indexes that answer a
//! query's conditions exactly, so a query touches only its matches. Pure
//! data structure, no I/O.
//!
//! Each record lives in a slot, kept as its JSON bytes (spliced as they are
//! into JSON replies; decoded only for other encodings and projections) beside the few numbers ranking and resource
//! bounds need ([`Facts`]). Posting lists (roaring bitmaps of slots) map a
//! status, a tag, a label key, a label key=value, a model or a role to the
//! nodes that have it; selector requirements, negations included, are set
//! algebra over them ([`Catalog::exists`], [`Catalog::equals`]).

/// The catalog's maps: keyed by node ids and label values, looked up for
/// every record indexed and every query; foldhash (randomly seeded per
/// process) instead of SipHash, which was a tenth of a cold start's
/// indexing.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

mod image;
mod indexable;

pub use image::{Image, ImageError, ImageLoader, ImageSlot, LAYOUT as IMAGE_LAYOUT};
pub use indexable::{GpuVerdict, Indexable, NatsPlace, RecordView};

use crate::slot_ids::SlotIds;
use roaring::RoaringBitmap;
use schemas::status::NodeStatus;
use schemas::NodeRecord;

/// Posting lists keyed by a string.
type Postings = HashMap<String, RoaringBitmap>;

/// The numbers of a record that ranking and resource bounds read, kept
/// beside the encoded record so a query need not decode it.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Facts {
    /// Whether the record has capabilities at all (bounds need them).
    pub has_capabilities: bool,
    /// CPU use; +∞ when unmeasured (ranks last).
    pub cpu_pct: f64,
    /// GPU use; 0 when the node has none or it is unmeasured.
    pub gpu_pct: f64,
    /// Most VRAM free on one GPU; negative when the node has no GPU.
    pub free_vram_gb: f64,
    /// Largest GPU, if any.
    pub best_vram_gb: Option<f64>,
    /// All GPUs together.
    pub total_vram_gb: f64,
    /// RAM.
    pub ram_gb: f64,
    /// Disk.
    pub disk_gb: f64,
    /// CPU cores.
    pub cpu_cores: u32,
    /// GPUs counted (in service, or all).
    pub gpus: u32,
    /// The node has GPUs and none of them counts (all failed or out).
    pub gpus_out: bool,
    /// The node's round trip to its NATS server in ms; +∞ when unknown
    /// (ranks last within its `near` tier).
    pub nats_rtt_ms: f64,
}

impl Facts {
    /// The facts of a record, over its GPUs in service (neither failed nor
    /// quarantined): what discovery counts by default.
    pub fn of(record: &impl Indexable) -> Self {
        Self::over(record, GpusCounted::InService)
    }

    /// The facts of a record over the GPUs `counted`.
    pub fn over(record: &impl Indexable, counted: GpusCounted) -> Self {
        let mut listed = false;
        let mut gpus = 0u32;
        let mut best_vram_gb = None;
        let mut total_vram_gb = 0.0;
        for (i, vram) in record.gpu_vram_gb().enumerate() {
            listed = true;
            if counted.counts(record, i) {
                gpus = gpus.saturating_add(1);
                best_vram_gb = max_of(best_vram_gb, vram);
                total_vram_gb += vram;
            }
        }
        Self {
            has_capabilities: record.has_capabilities(),
            cpu_pct: record
                .cpu_pct()
                .filter(|v| v.is_finite())
                .unwrap_or(f64::INFINITY),
            gpu_pct: record.gpu_pct().filter(|v| v.is_finite()).unwrap_or(0.0),
            free_vram_gb: free_vram_over(record, counted).unwrap_or(-1.0),
            best_vram_gb,
            total_vram_gb,
            ram_gb: record.ram_gb(),
            disk_gb: record.disk_gb(),
            cpu_cores: record.cpu_cores(),
            gpus,
            gpus_out: listed && gpus == 0,
            nats_rtt_ms: record
                .nats()
                .and_then(|n| n.rtt_ms)
                .filter(|v| v.is_finite())
                .unwrap_or(f64::INFINITY),
        }
    }
}

/// Which of a node's GPUs discovery counts (`gpu_health` of a query).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GpusCounted {
    /// Those in service: not failed, not quarantined, not cordoned by an
    /// operator (the default).
    #[default]
    InService,
    /// All of them.
    All,
}

impl GpusCounted {
    /// Whether GPU `index` (its position in capabilities) of `record` counts.
    pub fn counts(self, record: &impl Indexable, index: usize) -> bool {
        self == Self::All
            || (record
                .gpu_verdict(index)
                .is_none_or(|g| !g.quarantined && g.state != "failed")
                && !record.gpu_cordoned(index))
    }
}

/// The most VRAM free on one GPU in service: total minus the heartbeat's
/// used figure (a GPU without a used figure counts as entirely free).
pub fn free_vram(record: &impl Indexable) -> Option<f64> {
    free_vram_over(record, GpusCounted::InService)
}

/// The most VRAM free on one of the GPUs `counted`.
pub fn free_vram_over(record: &impl Indexable, counted: GpusCounted) -> Option<f64> {
    record
        .gpu_vram_gb()
        .enumerate()
        .filter(|(i, _)| counted.counts(record, *i))
        .map(|(i, vram)| (vram - record.vram_used_gb(i).unwrap_or(0.0)).max(0.0))
        .fold(None, max_of)
}

/// A running maximum folded with `v`.
pub(crate) fn max_of(acc: Option<f64>, v: f64) -> Option<f64> {
    Some(acc.map_or(v, |a| a.max(v)))
}

/// One occupied slot.
#[derive(Debug, Clone)]
struct Slot {
    node_id: Box<str>,
    /// The record as stored in KV; shared with the lifecycle's copy.
    encoded: bytes::Bytes,
    facts: Facts,
    /// The KV revision of `encoded`.
    revision: u64,
    /// Its status (`None` for a status this build does not know).
    status: Option<NodeStatus>,
    /// A digest of what the posting lists hold besides the status: when it
    /// is unchanged, a new version only moves the status and the figures.
    shape: u64,
}

/// A digest of the indexed fields of a record other than its status.
fn shape(record: &impl Indexable) -> u64 {
    use std::hash::{BuildHasher, Hash, Hasher};
    // A digest compared within this process only: fixed seed, fast. Each
    // field is tagged, so one cannot stand for another.
    let mut hasher = foldhash::fast::FixedState::with_seed(0x5eed).build_hasher();
    for (key, value) in record.labels() {
        hasher.write_u8(1);
        key.hash(&mut hasher);
        value.hash(&mut hasher);
    }
    if let Some(role) = record.role() {
        hasher.write_u8(2);
        role.hash(&mut hasher);
    }
    for tag in record.tags() {
        hasher.write_u8(3);
        tag.hash(&mut hasher);
    }
    for model in record.models() {
        hasher.write_u8(4);
        model.hash(&mut hasher);
    }
    if let Some(nats) = record.nats() {
        hasher.write_u8(5);
        nats.server.hash(&mut hasher);
        nats.cluster.hash(&mut hasher);
        nats.domain.hash(&mut hasher);
    }
    hasher.finish()
}

/// Every record, indexed.
#[derive(Debug, Default, Clone)]
pub struct Catalog {
    slots: Vec<Option<Slot>>,
    /// Per slot: CPU use, GPU use, most free VRAM; dense, so ranking a
    /// broad query reads 24 bytes per match instead of a whole slot.
    hot: Vec<[f64; 3]>,
    by_id: SlotIds,
    free: Vec<u32>,
    live: RoaringBitmap,
    status: HashMap<NodeStatus, RoaringBitmap>,
    tags: Postings,
    label_keys: Postings,
    label_values: HashMap<String, Postings>,
    models: Postings,
    roles: Postings,
    /// Where nodes are attached to NATS: by server, cluster and domain
    /// (discovery's `near` tiers).
    nats_servers: Postings,
    nats_clusters: Postings,
    nats_domains: Postings,
    /// Largest size of each model in the nodes' Ollama listings, in bytes
    /// (what a fit by model name needs).
    model_sizes: HashMap<String, u64>,
    /// The highest KV revision applied.
    pub revision: u64,
}

/// The node id a slot holds.
fn id_in(slots: &[Option<Slot>], slot: u32) -> Option<&str> {
    slots.get(slot as usize)?.as_ref().map(|s| &*s.node_id)
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

    /// An empty catalog with room for `nodes` records without growing its
    /// tables (a cold start knows the bucket's size: growing by doubling
    /// would copy each table into fresh memory a score of times).
    pub fn with_capacity(nodes: usize) -> Self {
        Self {
            slots: Vec::with_capacity(nodes),
            hot: Vec::with_capacity(nodes),
            by_id: SlotIds::with_capacity(nodes),
            ..Self::default()
        }
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The slot of a node.
    fn slot_of(&self, node_id: &str) -> Option<u32> {
        self.by_id.get(node_id, |s| id_in(&self.slots, s))
    }

    /// The record of a node.
    pub fn get(&self, node_id: &str) -> Option<NodeRecord> {
        self.record(self.slot_of(node_id)?)
    }

    /// The record in a slot.
    pub fn record(&self, slot: u32) -> Option<NodeRecord> {
        schemas::json::from_bytes(self.json(slot)?).ok()
    }

    /// The record of a node, as the JSON of the contract.
    pub fn json_of(&self, node_id: &str) -> Option<&[u8]> {
        self.json(self.slot_of(node_id)?)
    }

    /// The record in a slot, as the JSON of the contract.
    pub fn json(&self, slot: u32) -> Option<&[u8]> {
        self.slots.get(slot as usize)?.as_ref().map(|s| &*s.encoded)
    }

    /// The node id in a slot.
    pub fn node_id(&self, slot: u32) -> Option<&str> {
        self.slots.get(slot as usize)?.as_ref().map(|s| &*s.node_id)
    }

    /// The ranking and bound figures of a slot.
    pub fn facts(&self, slot: u32) -> Option<&Facts> {
        self.slots.get(slot as usize)?.as_ref().map(|s| &s.facts)
    }

    /// CPU use, GPU use and most free VRAM of a slot (see [`Facts`]).
    pub fn hot(&self, slot: u32) -> [f64; 3] {
        self.hot
            .get(slot as usize)
            .copied()
            .unwrap_or([f64::INFINITY, 0.0, -1.0])
    }

    /// The records of the nodes `keep` accepts by id, as stored, with
    /// their revisions (a partition's share of the fleet).
    pub fn stored_where<'a>(
        &'a self,
        keep: impl Fn(&str) -> bool + 'a,
    ) -> impl Iterator<Item = (bytes::Bytes, u64)> + 'a {
        self.slots
            .iter()
            .flatten()
            .filter(move |s| keep(&s.node_id))
            .map(|s| (s.encoded.clone(), s.revision))
    }

    /// Every record, in slot order.
    pub fn records(&self) -> impl Iterator<Item = NodeRecord> + '_ {
        self.live.iter().filter_map(|slot| self.record(slot))
    }

    /// Inserts or replaces the record of `record.node_id` (encodes it).
    pub fn upsert(&mut self, record: NodeRecord) {
        let encoded = schemas::record::encode_record(&record);
        let revision = self.revision;
        self.insert(&record, encoded, revision);
    }

    /// The KV revision held for a node.
    pub fn revision_of(&self, node_id: &str) -> Option<u64> {
        let slot = self.slot_of(node_id)?;
        self.slots.get(slot as usize)?.as_ref().map(|s| s.revision)
    }

    /// Inserts or replaces the record of `record`'s node, stored as
    /// `encoded` (its JSON, kept as it is) at KV `revision`.
    pub fn insert(&mut self, record: &impl Indexable, encoded: bytes::Bytes, revision: u64) {
        let status = record.status().parse::<NodeStatus>().ok();
        let shape = shape(record);
        let slot = match self.slot_of(record.node_id()) {
            Some(slot) => {
                let old = self.slots.get(slot as usize).and_then(Option::as_ref);
                match old.map(|o| (o.shape, o.status)) {
                    Some((old_shape, old_status)) if old_shape == shape => {
                        if old_status != status {
                            self.move_status(slot, old_status, status);
                        }
                    }
                    _ => {
                        self.unindex(slot);
                        self.index(slot, record);
                    }
                }
                slot
            }
            None => {
                let slot = self.free.pop().unwrap_or_else(|| {
                    self.slots.push(None);
                    self.hot.push([0.0; 3]);
                    u32::try_from(self.slots.len() - 1).unwrap_or(u32::MAX)
                });
                let slots = &self.slots;
                self.by_id
                    .insert(record.node_id(), slot, |s| id_in(slots, s));
                self.index(slot, record);
                slot
            }
        };
        for (name, bytes) in record.ollama_models() {
            if bytes == 0 {
                continue;
            }
            match self.model_sizes.get_mut(name) {
                Some(size) => *size = (*size).max(bytes),
                None => {
                    self.model_sizes.insert(name.to_owned(), bytes);
                }
            }
        }
        let facts = Facts::of(record);
        if let Some(hot) = self.hot.get_mut(slot as usize) {
            *hot = [facts.cpu_pct, facts.gpu_pct, facts.free_vram_gb];
        }
        if let Some(entry) = self.slots.get_mut(slot as usize) {
            *entry = Some(Slot {
                facts,
                encoded,
                node_id: record.node_id().into(),
                revision,
                status,
                shape,
            });
        }
    }

    fn move_status(&mut self, slot: u32, from: Option<NodeStatus>, to: Option<NodeStatus>) {
        if let Some(bitmap) = from.and_then(|s| self.status.get_mut(&s)) {
            bitmap.remove(slot);
        }
        if let Some(to) = to {
            self.status.entry(to).or_default().insert(slot);
        }
    }

    /// Removes a node's record, if present.
    pub fn remove(&mut self, node_id: &str) {
        let slots = &self.slots;
        if let Some(slot) = self.by_id.remove(node_id, |s| id_in(slots, s)) {
            self.unindex(slot);
            if let Some(entry) = self.slots.get_mut(slot as usize) {
                *entry = None;
            }
            self.free.push(slot);
        }
    }

    fn index(&mut self, slot: u32, record: &impl Indexable) {
        self.live.insert(slot);
        if let Ok(status) = record.status().parse::<NodeStatus>() {
            self.status.entry(status).or_default().insert(slot);
        }
        for (key, value) in record.labels() {
            add(&mut self.label_keys, key, slot);
            match self.label_values.get_mut(key) {
                Some(values) => add(values, value, slot),
                None => {
                    let mut values = Postings::default();
                    add(&mut values, value, slot);
                    self.label_values.insert(key.to_owned(), values);
                }
            }
        }
        for tag in record.tags() {
            add(&mut self.tags, tag, slot);
        }
        for model in record.models() {
            add(&mut self.models, model, slot);
        }
        if let Some(role) = record.role() {
            add(&mut self.roles, role, slot);
        }
        if let Some(nats) = record.nats() {
            add(&mut self.nats_servers, nats.server, slot);
            if let Some(cluster) = nats.cluster {
                add(&mut self.nats_clusters, cluster, slot);
            }
            if let Some(domain) = nats.domain {
                add(&mut self.nats_domains, domain, slot);
            }
        }
    }

    /// Takes a slot's record out of the posting lists, as read from its
    /// stored value (the same reading [`Catalog::index`] was given, or its
    /// equal).
    fn unindex(&mut self, slot: u32) {
        let Some((encoded, status)) = self
            .slots
            .get(slot as usize)
            .and_then(Option::as_ref)
            .map(|s| (s.encoded.clone(), s.status))
        else {
            return;
        };
        self.live.remove(slot);
        if let Some(bitmap) = status.and_then(|s| self.status.get_mut(&s)) {
            bitmap.remove(slot);
        }
        let Ok(record) = RecordView::of(&encoded) else {
            return;
        };
        for (key, value) in record.labels() {
            remove(&mut self.label_keys, key, slot);
            if let Some(values) = self.label_values.get_mut(key) {
                remove(values, value, slot);
                if values.is_empty() {
                    self.label_values.remove(key);
                }
            }
        }
        for tag in record.tags() {
            remove(&mut self.tags, tag, slot);
        }
        for model in record.models() {
            remove(&mut self.models, model, slot);
        }
        if let Some(role) = record.role() {
            remove(&mut self.roles, role, slot);
        }
        if let Some(nats) = record.nats() {
            remove(&mut self.nats_servers, nats.server, slot);
            if let Some(cluster) = nats.cluster {
                remove(&mut self.nats_clusters, cluster, slot);
            }
            if let Some(domain) = nats.domain {
                remove(&mut self.nats_domains, domain, slot);
            }
        }
    }

    fn posting(postings: &Postings, key: &str) -> RoaringBitmap {
        postings.get(key).cloned().unwrap_or_default()
    }

    /// Every live slot.
    pub fn all(&self) -> RoaringBitmap {
        self.live.clone()
    }

    /// Slots with this status.
    pub fn with_status(&self, status: NodeStatus) -> RoaringBitmap {
        self.status.get(&status).cloned().unwrap_or_default()
    }

    /// Slots whose label `key` has exactly `value`.
    pub fn with_label_value(&self, key: &str, value: &str) -> RoaringBitmap {
        self.label_values
            .get(key)
            .and_then(|values| values.get(value))
            .cloned()
            .unwrap_or_default()
    }

    /// Slots with this label key, whatever its value.
    pub fn with_label_key(&self, key: &str) -> RoaringBitmap {
        Self::posting(&self.label_keys, key)
    }

    /// Slots tagged `key` that have no label of that name (where the tag
    /// speaks for the key in selector terms).
    fn tag_only(&self, key: &str) -> RoaringBitmap {
        Self::posting(&self.tags, key) - Self::posting(&self.label_keys, key)
    }

    /// Where `key` exists in selector terms: a label not `"false"`, or a tag
    /// with no label of that name.
    pub fn exists(&self, key: &str) -> RoaringBitmap {
        (self.with_label_key(key) - self.with_label_value(key, "false")) | self.tag_only(key)
    }

    /// Where `key` has `value` in selector terms (a tag has `"true"`).
    pub fn equals(&self, key: &str, value: &str) -> RoaringBitmap {
        let mut slots = self.with_label_value(key, value);
        if value == "true" {
            slots |= self.tag_only(key);
        }
        slots
    }

    /// Where a discovery `capability` holds: a tag, or a label not `"false"`.
    pub fn capability(&self, name: &str) -> RoaringBitmap {
        Self::posting(&self.tags, name)
            | (self.with_label_key(name) - self.with_label_value(name, "false"))
    }

    /// The largest size of `model` any node's Ollama listing gave, in bytes.
    pub fn model_size(&self, model: &str) -> Option<u64> {
        self.model_sizes.get(model).copied()
    }

    /// Slots with this model installed.
    pub fn with_model(&self, model: &str) -> RoaringBitmap {
        Self::posting(&self.models, model)
    }

    /// Slots with this role.
    pub fn with_role(&self, role: &str) -> RoaringBitmap {
        Self::posting(&self.roles, role)
    }

    /// Slots attached to this NATS server.
    pub fn on_nats_server(&self, server: &str) -> RoaringBitmap {
        Self::posting(&self.nats_servers, server)
    }

    /// Slots attached to a server of this NATS cluster.
    pub fn in_nats_cluster(&self, cluster: &str) -> RoaringBitmap {
        Self::posting(&self.nats_clusters, cluster)
    }

    /// Slots attached to a server of this JetStream domain.
    pub fn in_nats_domain(&self, domain: &str) -> RoaringBitmap {
        Self::posting(&self.nats_domains, domain)
    }

    /// The cluster and domain of a NATS server, as a node attached to it
    /// reported them (`None` when no node is attached to it).
    pub fn nats_server_place(&self, server: &str) -> Option<(Option<String>, Option<String>)> {
        let slot = self.nats_servers.get(server)?.min()?;
        let nats = self.record(slot)?.nats?;
        Some((nats.cluster, nats.domain))
    }

    /// Every role present, with its slots (for figures by role).
    pub fn roles(&self) -> impl Iterator<Item = (&str, &RoaringBitmap)> + '_ {
        self.roles.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Every value of label `key` present, with its slots (for figures by
    /// region, say).
    pub fn label_values(&self, key: &str) -> impl Iterator<Item = (&str, &RoaringBitmap)> + '_ {
        self.label_values
            .get(key)
            .into_iter()
            .flat_map(|values| values.iter().map(|(k, v)| (k.as_str(), v)))
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
        assert_eq!(c.equals("region", "eu").len(), 1);
        assert_eq!(c.exists("gpu").len(), 1);
        c.upsert(record("a", "degraded", &[("region", "us")], &[]));
        assert_eq!(c.len(), 2);
        assert!(c.equals("region", "eu").is_empty());
        assert_eq!(c.equals("region", "us").len(), 2);
        assert!(c.exists("gpu").is_empty());
        assert_eq!(c.with_status(NodeStatus::Online).len(), 1);
        assert_eq!(c.get("a").map(|r| r.status), Some("degraded".to_owned()));
        c.remove("a");
        assert_eq!(c.len(), 1);
        assert!(c.get("a").is_none());
        c.upsert(record("c", "online", &[], &[]));
        assert_eq!(c.slots.len(), 2, "the freed slot is reused");
        assert_eq!(c.all().len(), 2);
    }

    #[test]
    fn a_new_version_of_the_same_shape_moves_only_the_status() {
        let mut c = Catalog::new();
        let a = record("a", "online", &[("region", "eu")], &["gpu"]);
        c.insert(&a, schemas::record::encode_record(&a), 5);
        let degraded = record("a", "degraded", &[("region", "eu")], &["gpu"]);
        c.insert(&degraded, schemas::record::encode_record(&degraded), 6);
        assert!(c.with_status(NodeStatus::Online).is_empty());
        assert_eq!(c.with_status(NodeStatus::Degraded).len(), 1);
        assert_eq!(c.equals("region", "eu").len(), 1);
        assert_eq!(c.exists("gpu").len(), 1);
        assert_eq!(c.revision_of("a"), Some(6));
        assert_eq!(c.get("a").map(|r| r.status), Some("degraded".to_owned()));
        assert_eq!(c.len(), 1);
    }

    #[test]
    fn a_record_indexed_from_its_view_is_unindexed_when_replaced() {
        let mut c = Catalog::new();
        let a = record("a", "online", &[("region", "eu")], &["gpu"]);
        let stored = schemas::record::encode_record(&a);
        let view = RecordView::of(&stored).expect("reads");
        c.insert(&view, stored.clone(), 3);
        assert_eq!(c.equals("region", "eu").len(), 1);
        assert_eq!(c.get("a"), Some(a));
        let moved = record("a", "online", &[("region", "us")], &[]);
        c.upsert(moved);
        assert!(c.equals("region", "eu").is_empty());
        assert!(c.exists("gpu").is_empty());
        assert_eq!(c.equals("region", "us").len(), 1);
        assert_eq!(c.with_status(NodeStatus::Online).len(), 1);
    }

    #[test]
    fn a_false_label_hides_a_tag_of_the_same_name() {
        let mut c = Catalog::new();
        c.upsert(record("a", "online", &[("gpu", "false")], &["gpu"]));
        c.upsert(record("b", "online", &[], &["gpu"]));
        c.upsert(record("c", "online", &[("gpu", "true")], &[]));
        let ids = |set: RoaringBitmap| {
            let mut v: Vec<String> = set
                .iter()
                .filter_map(|s| c.node_id(s).map(str::to_owned))
                .collect();
            v.sort();
            v
        };
        assert_eq!(ids(c.exists("gpu")), vec!["b", "c"]);
        assert_eq!(ids(c.equals("gpu", "true")), vec!["b", "c"]);
        assert_eq!(ids(c.equals("gpu", "false")), vec!["a"]);
        // A capability is a tag or a true label: the tag counts on "a".
        assert_eq!(ids(c.capability("gpu")), vec!["a", "b", "c"]);
    }
}
