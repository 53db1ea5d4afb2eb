//! Discovery: validating a query, finding its matches through the catalog's
//! indexes, ranking and cutting them. Pure.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};

use rand::seq::SliceRandom;
use rand::SeedableRng;
use roaring::RoaringBitmap;
use schemas::status::{NodeStatus, SortOrder, StatusFilter};
use schemas::validate::check_label_key;
use schemas::{DiscoverReply, DiscoverRequest, NodeRecord};

use crate::catalog::{Catalog, Facts, GpusCounted};

mod fields;
mod fit;
mod near;

use crate::selector::{Requirement, Selector};
pub use fields::RECORD_FIELDS;
pub use fit::{model_size_in, place, FitNeed, FitStrategy, FIT_OVERHEAD, MAX_FIT_GPUS};
pub use near::{Near, Origin, Tiers, HOP_MS};

/// Default number of nodes in a reply.
pub const DEFAULT_LIMIT: usize = 100;
/// Most nodes one reply may ask for.
pub const MAX_LIMIT: usize = 10_000;
/// The capability (tag) of a node with a GPU.
pub const GPU_CAPABILITY: &str = "gpu";
/// The label value that matches any value.
pub const ANY_VALUE: &str = "*";
/// Why a discovery request is invalid (answered with 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// A field holds a value outside its domain.
    #[error("field {field}: {reason}")]
    Field {
        /// The request field at fault.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The selector does not parse.
    #[error(transparent)]
    Selector(#[from] crate::selector::SelectorError),
}

fn field(field: &'static str, reason: impl Into<String>) -> QueryError {
    QueryError::Field {
        field,
        reason: reason.into(),
    }
}

/// A validated discovery query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    /// Each must be a tag or a label key whose value is not `"false"`.
    pub capabilities: Vec<String>,
    /// Each key must be present with this value (`*`: any value).
    pub labels: BTreeMap<String, String>,
    /// Requirements over labels and tags.
    pub selector: Selector,
    /// Must be among the installed models.
    pub model: Option<String>,
    /// All must be installed.
    pub models_all: Vec<String>,
    /// One must be installed (if any are given).
    pub models_any: Vec<String>,
    /// Must be the node's role.
    pub role: Option<String>,
    /// Which statuses pass.
    pub status: StatusFilter,
    /// Lower bound on RAM.
    pub min_ram_gb: Option<f64>,
    /// Lower bound on CPU cores.
    pub min_cpu_cores: Option<u32>,
    /// Lower bound on disk.
    pub min_disk_gb: Option<f64>,
    /// Some GPU must have at least this much VRAM.
    pub min_gpu_vram_gb: Option<f64>,
    /// All GPUs together must have at least this much VRAM.
    pub min_total_gpu_vram_gb: Option<f64>,
    /// Some GPU must have at least this much VRAM free.
    pub min_free_gpu_vram_gb: Option<f64>,
    /// At least this many GPUs.
    pub min_gpus: Option<u32>,
    /// Which GPUs count for the GPU bounds.
    pub gpus_counted: GpusCounted,
    /// Only nodes where this fits now, ranked by its strategy.
    pub fit: Option<FitNeed>,
    /// Labels that rank a node first without excluding the others.
    pub prefer_labels: BTreeMap<String, String>,
    /// Rank by estimated round trip from here first.
    pub near: Option<Near>,
    /// Order of the reply.
    pub sort: SortOrder,
    /// Most nodes in the reply.
    pub limit: usize,
    /// Continue after this node id (sort `node_id` only).
    pub cursor: Option<String>,
    /// Only these record fields (node_id always); `None`: all.
    pub fields: Option<BTreeSet<String>>,
    /// Answer only from an index at least at this revision.
    pub min_revision: Option<u64>,
    /// Seed of the shuffle behind `sort: random`: the core draws no
    /// randomness of its own, so a test fixes it and the service draws one
    /// per request ([`Query::with_seed`]).
    pub seed: u64,
}

impl Query {
    /// Validates a request; `default_status` and `default_sort` apply when it
    /// names none (discover: online, least_loaded; list: any, node_id).
    pub fn from_request(
        request: DiscoverRequest,
        default_status: StatusFilter,
        default_sort: SortOrder,
    ) -> Result<Self, QueryError> {
        let status = match request.status.as_deref() {
            None => default_status,
            Some(s) => s.parse().map_err(|e| field("status", format!("{e}")))?,
        };
        let sort = match request.sort.as_deref() {
            None => default_sort,
            Some(s) => s.parse().map_err(|e| field("sort", format!("{e}")))?,
        };
        let limit = match request.limit {
            None => DEFAULT_LIMIT,
            Some(0) => return Err(field("limit", "must be at least 1")),
            Some(n) if n as usize > MAX_LIMIT => {
                return Err(field("limit", format!("{n} is more than {MAX_LIMIT}")))
            }
            Some(n) => n as usize,
        };
        for key in request.labels.keys() {
            check_label_key(key).map_err(|e| field("labels", e.to_string()))?;
        }
        for key in request.prefer_labels.keys() {
            check_label_key(key).map_err(|e| field("prefer_labels", e.to_string()))?;
        }
        if request.capability.iter().any(|c| c.trim().is_empty()) {
            return Err(field("capability", "an empty capability matches nothing"));
        }
        for (name, list) in [
            ("models_all", &request.models_all),
            ("models_any", &request.models_any),
        ] {
            if list.iter().any(|m| m.is_empty()) {
                return Err(field(name, "an empty model name matches nothing"));
            }
        }
        for (name, value) in [
            ("min_ram_gb", request.min_ram_gb),
            ("min_disk_gb", request.min_disk_gb),
            ("min_gpu_vram_gb", request.min_gpu_vram_gb),
            ("min_total_gpu_vram_gb", request.min_total_gpu_vram_gb),
            ("min_free_gpu_vram_gb", request.min_free_gpu_vram_gb),
        ] {
            if let Some(v) = value {
                if !v.is_finite() || v < 0.0 {
                    return Err(field(name, format!("{v} is not a non-negative number")));
                }
            }
        }
        let gpus_counted = match request.gpu_health.as_deref() {
            None | Some("healthy") => GpusCounted::InService,
            Some("any") => GpusCounted::All,
            Some(other) => {
                return Err(field(
                    "gpu_health",
                    format!("{other:?}: expected \"healthy\" or \"any\""),
                ))
            }
        };
        let fit = fit::need_of(
            request.fit,
            request.strategy.as_deref(),
            request.cursor.is_some(),
        )?;
        let near = near::near_of(
            request.near,
            request.requester,
            &fit,
            request.cursor.is_some(),
        )?;
        let selector = Selector::parse(request.selector.as_deref().unwrap_or(""))?;
        if request.cursor.is_some() && sort != SortOrder::NodeId {
            return Err(field(
                "cursor",
                "paging with a cursor needs sort \"node_id\"",
            ));
        }
        let fields = if request.fields.is_empty() {
            None
        } else {
            let mut set = BTreeSet::new();
            for name in request.fields {
                if !RECORD_FIELDS.contains(&name.as_str()) {
                    return Err(field(
                        "fields",
                        format!(
                            "unknown field {name:?}, expected some of {}",
                            RECORD_FIELDS.join(", ")
                        ),
                    ));
                }
                set.insert(name);
            }
            set.insert("node_id".to_owned());
            Some(set)
        };
        Ok(Self {
            capabilities: request.capability,
            labels: request.labels,
            selector,
            model: request.model,
            models_all: request.models_all,
            models_any: request.models_any,
            role: request.role,
            status,
            min_ram_gb: request.min_ram_gb,
            min_cpu_cores: request.min_cpu_cores,
            min_disk_gb: request.min_disk_gb,
            min_gpu_vram_gb: request.min_gpu_vram_gb,
            min_total_gpu_vram_gb: request.min_total_gpu_vram_gb,
            min_free_gpu_vram_gb: request.min_free_gpu_vram_gb,
            min_gpus: request.min_gpus,
            gpus_counted,
            fit,
            prefer_labels: request.prefer_labels,
            near,
            sort,
            limit,
            cursor: request.cursor,
            fields,
            min_revision: request.min_revision,
            seed: 0,
        })
    }

    /// The query with the seed of its `sort: random` shuffle.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Whether a record satisfies every condition of the query. This is the
    /// definition; the catalog's indexes only find candidates for it.
    pub fn matches(&self, record: &NodeRecord) -> bool {
        let Ok(status) = record.status.parse::<NodeStatus>() else {
            return self.status == StatusFilter::Any;
        };
        if !self.status.admits(status) {
            return false;
        }
        if let Some(role) = &self.role {
            if record.role.as_deref() != Some(role.as_str()) {
                return false;
            }
        }
        let caps = record.capabilities.as_ref();
        let tags: &[String] = caps.map(|c| c.tags.as_slice()).unwrap_or_default();
        for capability in &self.capabilities {
            let tagged = tags.iter().any(|t| t == capability);
            let labelled = record.labels.get(capability).is_some_and(|v| v != "false");
            if !tagged && !labelled {
                return false;
            }
        }
        for (key, wanted) in &self.labels {
            match record.labels.get(key) {
                Some(value) if wanted == ANY_VALUE || value == wanted => {}
                _ => return false,
            }
        }
        if !self.selector.matches(&record.labels, tags) {
            return false;
        }
        let models: &[String] = caps.map(|c| c.models.as_slice()).unwrap_or_default();
        let has = |m: &String| models.contains(m);
        if self.model.as_ref().is_some_and(|m| !has(m))
            || !self.models_all.iter().all(has)
            || (!self.models_any.is_empty() && !self.models_any.iter().any(has))
        {
            return false;
        }
        self.bounds_hold(&Facts::over(record, self.gpus_counted))
    }

    /// Whether the query bounds GPUs (VRAM, count): such a query needs a
    /// GPU that counts (in service, by default).
    fn is_gpu_query(&self) -> bool {
        self.min_gpu_vram_gb.is_some()
            || self.min_total_gpu_vram_gb.is_some()
            || self.min_free_gpu_vram_gb.is_some()
            || self.min_gpus.is_some()
    }

    /// Whether the query asks for the `gpu` capability: a node whose GPUs
    /// have all failed or are out of service does not have it.
    fn wants_gpu(&self) -> bool {
        self.capabilities.iter().any(|c| c == GPU_CAPABILITY)
    }

    /// The facts of a slot over the GPUs the query counts (decoded from the
    /// record for `gpu_health: "any"`, which the catalog does not keep).
    fn facts_of(&self, catalog: &Catalog, slot: u32) -> Option<Facts> {
        match self.gpus_counted {
            GpusCounted::InService => catalog.facts(slot).copied(),
            GpusCounted::All => catalog
                .record(slot)
                .map(|r| Facts::over(&r, GpusCounted::All)),
        }
    }

    fn has_no_bounds(&self) -> bool {
        !self.is_gpu_query()
            && self.min_ram_gb.is_none()
            && self.min_disk_gb.is_none()
            && self.min_cpu_cores.is_none()
            && self.min_gpu_vram_gb.is_none()
            && self.min_total_gpu_vram_gb.is_none()
            && self.min_free_gpu_vram_gb.is_none()
    }

    /// The slots that satisfy every condition but the resource bounds: set
    /// algebra over the catalog's posting lists, negations included.
    pub fn candidates(&self, catalog: &Catalog) -> RoaringBitmap {
        let mut set = match self.status {
            StatusFilter::Any => catalog.all(),
            StatusFilter::Online => catalog.with_status(NodeStatus::Online),
            StatusFilter::Degraded => catalog.with_status(NodeStatus::Degraded),
            StatusFilter::Offline => catalog.with_status(NodeStatus::Offline),
            StatusFilter::Maintenance => catalog.with_status(NodeStatus::Maintenance),
        };
        for capability in &self.capabilities {
            set &= catalog.capability(capability);
        }
        for (key, value) in &self.labels {
            set &= if value == ANY_VALUE {
                catalog.with_label_key(key)
            } else {
                catalog.with_label_value(key, value)
            };
        }
        let any_of = |key: &str, values: &[String]| {
            values
                .iter()
                .fold(RoaringBitmap::new(), |acc, v| acc | catalog.equals(key, v))
        };
        for requirement in &self.selector.requirements {
            match requirement {
                Requirement::Exists(key) => set &= catalog.exists(key),
                Requirement::NotExists(key) => set -= catalog.exists(key),
                Requirement::Equals(key, value) => set &= catalog.equals(key, value),
                Requirement::NotEquals(key, value) => set -= catalog.equals(key, value),
                Requirement::In(key, values) => set &= any_of(key, values),
                Requirement::NotIn(key, values) => set -= any_of(key, values),
                Requirement::GreaterThan(key, _) | Requirement::LessThan(key, _) => {
                    // Tags read "true", never a number: labels only.
                    set &= catalog
                        .label_values(key)
                        .filter(|(value, _)| requirement.compares(value) == Some(true))
                        .fold(RoaringBitmap::new(), |acc, (_, slots)| acc | slots);
                }
            }
        }
        for model in self.model.iter().chain(&self.models_all) {
            set &= catalog.with_model(model);
        }
        if !self.models_any.is_empty() {
            set &= self
                .models_any
                .iter()
                .fold(RoaringBitmap::new(), |acc, m| acc | catalog.with_model(m));
        }
        if let Some(role) = &self.role {
            set &= catalog.with_role(role);
        }
        set
    }

    /// Whether a node's figures meet the query's resource bounds.
    fn bounds_hold(&self, f: &Facts) -> bool {
        if self.wants_gpu() && f.gpus_out {
            return false;
        }
        if self.has_no_bounds() {
            return true;
        }
        let at_least = |bound: Option<f64>, value: f64| bound.is_none_or(|b| value >= b);
        f.has_capabilities
            && at_least(self.min_ram_gb, f.ram_gb)
            && at_least(self.min_disk_gb, f.disk_gb)
            && self.min_cpu_cores.is_none_or(|b| f.cpu_cores >= b)
            && self
                .min_gpu_vram_gb
                .is_none_or(|b| f.best_vram_gb.is_some_and(|v| v >= b))
            && at_least(self.min_total_gpu_vram_gb, f.total_vram_gb)
            && self
                .min_free_gpu_vram_gb
                .is_none_or(|b| f.free_vram_gb >= 0.0 && f.free_vram_gb >= b)
            && self.min_gpus.is_none_or(|n| f.gpus >= n)
            && (!self.is_gpu_query() || f.gpus >= 1)
    }

    /// Answers the query from the catalog's indexes: only the matches are
    /// touched, and only the returned records are decoded.
    pub fn answer(&self, catalog: &Catalog) -> DiscoverReply {
        if let Some(need) = &self.fit {
            return self.answer_fit(need, catalog);
        }
        let selection = self.select(catalog);
        DiscoverReply {
            nodes: selection
                .slots
                .iter()
                .filter_map(|slot| catalog.record(*slot))
                .map(|r| self.project(&r))
                .collect(),
            total: selection.total,
            revision: catalog.revision,
            next_cursor: selection.next_cursor,
            latency_ms: selection.latency_ms,
            ..DiscoverReply::default()
        }
    }

    /// The slots of the reply, in order, with the count of all matches and
    /// the cursor to continue from.
    pub fn select(&self, catalog: &Catalog) -> Selection {
        if matches!(self.sort, SortOrder::LeastLoaded | SortOrder::MostFreeVram)
            && self.cursor.is_none()
            && self.gpus_counted == GpusCounted::InService
            && self.near.is_none()
        {
            return self.select_ranked(catalog);
        }
        let origin = self.near.as_ref().map(|n| n.origin(catalog));
        let tiers = origin.as_ref().map(|o| o.tiers(catalog));
        let prefer: Vec<RoaringBitmap> = self
            .prefer_labels
            .iter()
            .map(|(k, v)| catalog.with_label_value(k, v))
            .collect();
        let hits: Vec<Ranked<'_, u32>> = self
            .candidates(catalog)
            .iter()
            .filter_map(|slot| {
                let facts = self.facts_of(catalog, slot)?;
                if !self.bounds_hold(&facts) {
                    return None;
                }
                let score = prefer.iter().filter(|b| b.contains(slot)).count();
                Some(Ranked {
                    near: tiers
                        .as_ref()
                        .map_or((0, 0.0), |t| (t.of(slot), facts.nats_rtt_ms)),
                    score: u32::try_from(score).unwrap_or(u32::MAX),
                    key: sort_key(self.sort, &facts),
                    node_id: catalog.node_id(slot)?,
                    item: slot,
                })
            })
            .collect();
        let (slots, total, next_cursor) = self.rank_and_cut(hits);
        let latency_ms = match (&origin, &tiers) {
            (Some(origin), Some(tiers)) => slots
                .iter()
                .map(|slot| {
                    let rtt = catalog
                        .facts(*slot)
                        .map_or(f64::INFINITY, |f| f.nats_rtt_ms);
                    origin.latency_ms(tiers.of(*slot), rtt)
                })
                .collect(),
            _ => Vec::new(),
        };
        Selection {
            slots,
            total,
            next_cursor,
            latency_ms,
        }
    }

    /// The load- or VRAM-ranked selection, for broad queries at scale: ranks
    /// on dense numeric keys (24 bytes a match, no record or id touched),
    /// then breaks ties at the cut by node id, as [`Query::answer_scan`] does.
    fn select_ranked(&self, catalog: &Catalog) -> Selection {
        let prefer: Vec<RoaringBitmap> = self
            .prefer_labels
            .iter()
            .map(|(k, v)| catalog.with_label_value(k, v))
            .collect();
        let check_bounds = !self.has_no_bounds() || self.wants_gpu();
        // (preference, first key, second key) in ascending rank order.
        type Key = (u32, u64, u64);
        let mut items: Vec<(Key, u32)> = Vec::new();
        for slot in self.candidates(catalog).iter() {
            if check_bounds
                && !self
                    .facts_of(catalog, slot)
                    .is_some_and(|f| self.bounds_hold(&f))
            {
                continue;
            }
            let [cpu, gpu, free] = catalog.hot(slot);
            let (a, b) = match self.sort {
                SortOrder::MostFreeVram => (-free, 0.0),
                _ => (cpu, gpu),
            };
            let score = prefer.iter().filter(|bm| bm.contains(slot)).count();
            let score = u32::MAX - u32::try_from(score).unwrap_or(u32::MAX);
            items.push(((score, ordered(a), ordered(b)), slot));
        }
        let total = items.len() as u64;
        let limit = self.limit.min(items.len());
        let mut chosen: Vec<(Key, u32)> = if items.len() > limit && limit > 0 {
            items.select_nth_unstable(limit - 1);
            let boundary = items[limit - 1].0;
            // Everything ranked strictly before the boundary is in; the
            // boundary's ties compete by node id, as in the reference.
            let mut chosen: Vec<(Key, u32)> = items
                .iter()
                .copied()
                .filter(|(k, _)| *k < boundary)
                .collect();
            let mut ties: Vec<(Key, u32)> = items
                .iter()
                .copied()
                .filter(|(k, _)| *k == boundary)
                .collect();
            ties.sort_by(|a, b| catalog.node_id(a.1).cmp(&catalog.node_id(b.1)));
            let room = limit - chosen.len();
            chosen.extend(ties.into_iter().take(room));
            chosen
        } else {
            items.truncate(limit);
            items
        };
        chosen.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| catalog.node_id(a.1).cmp(&catalog.node_id(b.1)))
        });
        Selection {
            slots: chosen.into_iter().map(|(_, slot)| slot).collect(),
            total,
            next_cursor: None,
            latency_ms: Vec::new(),
        }
    }

    /// Answers the query by scanning every record with [`Query::matches`]:
    /// the reference the indexed [`Query::answer`] must agree with.
    pub fn answer_scan<'a>(
        &self,
        records: impl IntoIterator<Item = &'a NodeRecord> + Clone,
    ) -> DiscoverReply {
        if let Some(need) = &self.fit {
            return self.answer_fit_scan(need, records);
        }
        let origin = self.near.as_ref().map(|n| n.origin_among(records.clone()));
        let hits: Vec<Ranked<'a, &'a NodeRecord>> = records
            .into_iter()
            .filter(|r| self.matches(r))
            .map(|r| {
                let score = self
                    .prefer_labels
                    .iter()
                    .filter(|(k, v)| r.labels.get(*k) == Some(*v))
                    .count();
                let facts = Facts::over(r, self.gpus_counted);
                Ranked {
                    near: origin
                        .as_ref()
                        .map_or((0, 0.0), |o| (o.tier_of(r), facts.nats_rtt_ms)),
                    score: u32::try_from(score).unwrap_or(u32::MAX),
                    key: sort_key(self.sort, &facts),
                    node_id: r.node_id.as_str(),
                    item: r,
                }
            })
            .collect();
        let (records, total, next_cursor) = self.rank_and_cut(hits);
        let latency_ms = origin.map_or_else(Vec::new, |o| {
            records
                .iter()
                .map(|r| {
                    let rtt = Facts::over(*r, self.gpus_counted).nats_rtt_ms;
                    o.latency_ms(o.tier_of(r), rtt)
                })
                .collect()
        });
        DiscoverReply {
            nodes: records.into_iter().map(|r| self.project(r)).collect(),
            total,
            next_cursor,
            latency_ms,
            ..DiscoverReply::default()
        }
    }

    /// Orders the matches and cuts them to the limit (after the cursor):
    /// the chosen items, the count of all matches, and the next cursor.
    fn rank_and_cut<T: Copy>(&self, mut hits: Vec<Ranked<'_, T>>) -> (Vec<T>, u64, Option<String>) {
        let total = hits.len() as u64;
        if let Some(cursor) = &self.cursor {
            hits.retain(|h| h.node_id > cursor.as_str());
        }
        let more = hits.len() > self.limit;
        if self.sort == SortOrder::Random {
            let mut rng = rand::rngs::StdRng::seed_from_u64(self.seed);
            if self.prefer_labels.is_empty() && self.near.is_none() {
                let (chosen, _) = hits.partial_shuffle(&mut rng, self.limit);
                let chosen: Vec<T> = chosen.iter().map(|h| h.item).collect();
                return (chosen, total, None);
            }
            hits.shuffle(&mut rng);
            // Stable: equal scores keep their random order.
            hits.sort_by_key(|h| std::cmp::Reverse(h.score));
            if self.near.is_some() {
                // Random within a tier, nearer tiers first.
                hits.sort_by_key(|h| h.near.0);
            }
            hits.truncate(self.limit);
        } else {
            let order = compare::<T>;
            if hits.len() > self.limit {
                // Partial sort: only the first `limit` need an order.
                hits.select_nth_unstable_by(self.limit, order);
                hits.truncate(self.limit);
            }
            hits.sort_unstable_by(order);
        }
        let next_cursor = (more && self.sort == SortOrder::NodeId)
            .then(|| hits.last().map(|h| h.node_id.to_owned()))
            .flatten();
        (
            hits.into_iter().map(|h| h.item).collect(),
            total,
            next_cursor,
        )
    }
}

/// The nodes a reply returns, as catalog slots in reply order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// The slots, best first.
    pub slots: Vec<u32>,
    /// Matches before the limit (and the cursor) were applied.
    pub total: u64,
    /// Where the next page starts (sort `node_id` only).
    pub next_cursor: Option<String>,
    /// With `near`: the estimated round trip to each slot, in order.
    pub latency_ms: Vec<f64>,
}

/// A match being ranked: its preference score, its sort key, its id, and
/// what the reply is built from (a catalog slot, or a record). Small, so
/// partial sorting moves little memory.
#[derive(Debug, Clone, Copy)]
struct Ranked<'a, T> {
    /// With `near`: the tier, then the node's round trip to its server.
    near: (u8, f64),
    score: u32,
    key: (f64, f64),
    node_id: &'a str,
    item: T,
}

/// Maps a float to an integer of the same order (IEEE 754 total order), so
/// keys compare as integers.
fn ordered(x: f64) -> u64 {
    let bits = x.to_bits();
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    }
}

/// The sort key of a node's figures: lower ranks first.
fn sort_key(sort: SortOrder, f: &Facts) -> (f64, f64) {
    match sort {
        SortOrder::NodeId | SortOrder::Random => (0.0, 0.0),
        SortOrder::MostFreeVram => (-f.free_vram_gb, 0.0),
        // Lowest CPU, then lowest GPU use; an unmeasured CPU ranks last.
        SortOrder::LeastLoaded => (f.cpu_pct, f.gpu_pct),
    }
}

fn compare<T>(a: &Ranked<'_, T>, b: &Ranked<'_, T>) -> Ordering {
    a.near
        .0
        .cmp(&b.near.0)
        .then(a.near.1.total_cmp(&b.near.1))
        .then(b.score.cmp(&a.score))
        .then(a.key.0.total_cmp(&b.key.0))
        .then(a.key.1.total_cmp(&b.key.1))
        .then_with(|| a.node_id.cmp(b.node_id))
}

#[cfg(test)]
mod tests;
