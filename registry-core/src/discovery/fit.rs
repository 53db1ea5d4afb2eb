//! Fit: where a model, or an amount of VRAM, fits on a node's GPUs now.
//!
//! A need of `vram_gb` over `gpus` GPUs (default 1) asks for that many GPUs
//! of one node, each with `vram_gb / gpus` free; a model's need is its
//! largest size in the nodes' Ollama listings times [`FIT_OVERHEAD`] (room
//! for the KV cache and the runtime). Only GPUs that count take part (in
//! service, by default). `binpack` picks the GPUs with the least room that
//! still fits and ranks nodes by least free VRAM left after placing, which
//! keeps big cards free for big models; `spread` does the opposite.

use roaring::RoaringBitmap;
use schemas::{DiscoverReply, Fit, NodeRecord, Placement};

use super::{Query, QueryError};
use crate::catalog::{Catalog, GpusCounted};

/// VRAM a model needs beyond its file size (KV cache, runtime).
pub const FIT_OVERHEAD: f64 = 1.2;
/// Most GPUs one fit may ask for.
pub const MAX_FIT_GPUS: u32 = 64;
/// Bytes in a GiB.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// How nodes and GPUs are chosen for a fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FitStrategy {
    /// Least free VRAM left after placing (the default).
    #[default]
    Binpack,
    /// Most free VRAM left after placing.
    Spread,
}

/// What is to be placed.
#[derive(Debug, Clone, PartialEq)]
pub struct FitNeed {
    /// The model, whose size the listings give (unless `vram_gb` is given).
    pub model: Option<String>,
    /// VRAM over all its GPUs, GiB.
    pub vram_gb: Option<f64>,
    /// How many GPUs of one node.
    pub gpus: u32,
    /// How to choose.
    pub strategy: FitStrategy,
}

impl FitNeed {
    /// The VRAM needed per GPU, given a model's size in bytes when known;
    /// `None` when neither a size nor `vram_gb` says.
    pub fn per_gpu_gb(&self, model_size: Option<u64>) -> Option<f64> {
        let total = match self.vram_gb {
            Some(v) => v,
            None => model_size.map(|b| b as f64 / GIB * FIT_OVERHEAD)?,
        };
        Some(total / f64::from(self.gpus.max(1)))
    }
}

/// The largest size of `model` in these records' Ollama listings.
pub fn model_size_in<'a>(
    records: impl IntoIterator<Item = &'a NodeRecord>,
    model: &str,
) -> Option<u64> {
    records
        .into_iter()
        .filter_map(|r| r.capabilities.as_ref()?.ollama.as_ref())
        .flat_map(|o| o.models.iter())
        .filter(|m| m.name == model && m.size_bytes > 0)
        .map(|m| m.size_bytes)
        .max()
}

/// Where `per_gpu_gb` fits on `gpus` of the node's GPUs that count, if it does.
pub fn place(
    record: &NodeRecord,
    per_gpu_gb: f64,
    gpus: u32,
    strategy: FitStrategy,
    counted: GpusCounted,
) -> Option<Placement> {
    let caps = record.capabilities.as_ref()?;
    let usage = record
        .metrics
        .as_ref()
        .map(|m| m.gpus.as_slice())
        .unwrap_or_default();
    let mut room: Vec<(f64, u32)> = caps
        .gpus
        .iter()
        .enumerate()
        .filter(|(i, _)| counted.counts(record, *i))
        .filter_map(|(i, g)| {
            let index = u32::try_from(i).ok()?;
            let used = usage
                .iter()
                .find(|u| u.index == index)
                .and_then(|u| u.vram_used_gb)
                .unwrap_or(0.0);
            let free = (g.vram_gb - used).max(0.0);
            (g.vram_gb > 0.0 && free >= per_gpu_gb).then_some((free, index))
        })
        .collect();
    let gpus = gpus.max(1) as usize;
    if room.len() < gpus {
        return None;
    }
    room.sort_by(|a, b| match strategy {
        FitStrategy::Binpack => a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)),
        FitStrategy::Spread => b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)),
    });
    room.truncate(gpus);
    let free_after_gb: f64 = room.iter().map(|(free, _)| free - per_gpu_gb).sum();
    let mut indices: Vec<u32> = room.into_iter().map(|(_, i)| i).collect();
    indices.sort_unstable();
    Some(Placement {
        node_id: record.node_id.clone(),
        gpus: indices,
        vram_per_gpu_gb: (per_gpu_gb * 100.0).round() / 100.0,
        free_after_gb: (free_after_gb * 100.0).round() / 100.0,
    })
}

/// A request's `fit` and `strategy`, checked; `paged`: it has a cursor.
pub(super) fn need_of(
    fit: Option<Fit>,
    strategy_name: Option<&str>,
    paged: bool,
) -> Result<Option<FitNeed>, QueryError> {
    let strategy = match strategy_name {
        None | Some("binpack") => FitStrategy::Binpack,
        Some("spread") => FitStrategy::Spread,
        Some(other) => {
            return Err(super::field(
                "strategy",
                format!("{other:?}: expected \"binpack\" or \"spread\""),
            ))
        }
    };
    let fit = match fit {
        None if strategy_name.is_some() => {
            return Err(super::field("strategy", "orders a fit: give fit too"))
        }
        None => None,
        Some(f) => {
            if f.model.as_deref().is_none_or(str::is_empty) && f.vram_gb.is_none() {
                return Err(super::field("fit", "give a model or vram_gb"));
            }
            if let Some(v) = f.vram_gb {
                if !v.is_finite() || v <= 0.0 {
                    return Err(super::field(
                        "fit",
                        format!("vram_gb {v} is not a positive number"),
                    ));
                }
            }
            let gpus = f.gpus.unwrap_or(1);
            if gpus == 0 || gpus > MAX_FIT_GPUS {
                return Err(super::field(
                    "fit",
                    format!("gpus {gpus}: expected 1 to {MAX_FIT_GPUS}"),
                ));
            }
            if paged {
                return Err(super::field(
                    "cursor",
                    "a fit is ranked by its strategy: no paging",
                ));
            }
            Some(FitNeed {
                model: f.model.filter(|m| !m.is_empty()),
                vram_gb: f.vram_gb,
                gpus,
                strategy,
            })
        }
    };
    Ok(fit)
}

impl Query {
    /// Where `need` fits, from the catalog: the figures rule nodes out
    /// first, and only the candidates left are decoded and placed.
    pub(super) fn answer_fit(&self, need: &FitNeed, catalog: &Catalog) -> DiscoverReply {
        let size = need.model.as_deref().and_then(|m| catalog.model_size(m));
        let prefer: Vec<RoaringBitmap> = self
            .prefer_labels
            .iter()
            .map(|(k, v)| catalog.with_label_value(k, v))
            .collect();
        let hits = need.per_gpu_gb(size).map(|per_gpu| {
            self.candidates(catalog)
                .iter()
                .filter_map(|slot| {
                    let facts = self.facts_of(catalog, slot)?;
                    // Cheap first: the figures say whether it can fit at all.
                    if !self.bounds_hold(&facts)
                        || facts.free_vram_gb < per_gpu
                        || facts.gpus < need.gpus
                    {
                        return None;
                    }
                    let record = catalog.record(slot)?;
                    let placement = place(
                        &record,
                        per_gpu,
                        need.gpus,
                        need.strategy,
                        self.gpus_counted,
                    )?;
                    let score = prefer.iter().filter(|b| b.contains(slot)).count();
                    Some((score, placement, record))
                })
                .collect()
        });
        let mut reply = self.fit_reply(need, hits.unwrap_or_default());
        reply.revision = catalog.revision;
        reply
    }

    /// [`Query::answer_fit`] by scanning records: the reference.
    pub(super) fn answer_fit_scan<'a>(
        &self,
        need: &FitNeed,
        records: impl IntoIterator<Item = &'a NodeRecord> + Clone,
    ) -> DiscoverReply {
        let size = need
            .model
            .as_deref()
            .and_then(|m| model_size_in(records.clone(), m));
        let hits = need.per_gpu_gb(size).map(|per_gpu| {
            records
                .clone()
                .into_iter()
                .filter(|r| self.matches(r))
                .filter_map(|r| {
                    let placement = place(r, per_gpu, need.gpus, need.strategy, self.gpus_counted)?;
                    let score = self
                        .prefer_labels
                        .iter()
                        .filter(|(k, v)| r.labels.get(*k) == Some(*v))
                        .count();
                    Some((score, placement, r.clone()))
                })
                .collect()
        });
        self.fit_reply(need, hits.unwrap_or_default())
    }

    /// The reply to a fit: nodes where it fits, preferred labels first,
    /// then by the free VRAM left after placing (least for binpack, most
    /// for spread), then by id; each with its placement.
    fn fit_reply(
        &self,
        need: &FitNeed,
        mut hits: Vec<(usize, schemas::Placement, NodeRecord)>,
    ) -> DiscoverReply {
        let total = hits.len() as u64;
        hits.sort_by(|a, b| {
            let left = match need.strategy {
                FitStrategy::Binpack => a.1.free_after_gb.total_cmp(&b.1.free_after_gb),
                FitStrategy::Spread => b.1.free_after_gb.total_cmp(&a.1.free_after_gb),
            };
            b.0.cmp(&a.0)
                .then(left)
                .then_with(|| a.2.node_id.cmp(&b.2.node_id))
        });
        hits.truncate(self.limit);
        let (nodes, placements) = hits
            .into_iter()
            .map(|(_, placement, record)| (self.project(&record), placement))
            .unzip();
        DiscoverReply {
            nodes,
            placements,
            total,
            ..DiscoverReply::default()
        }
    }
}
