//! Discovery: validating a query, matching records and ranking them. Pure.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use schemas::status::{NodeStatus, SortOrder, StatusFilter};
use schemas::validate::check_label_key;
use schemas::{DiscoverReply, DiscoverRequest, NodeRecord};

/// Default number of nodes in a reply.
pub const DEFAULT_LIMIT: usize = 100;
/// Most nodes one reply may ask for.
pub const MAX_LIMIT: usize = 10_000;
/// The label value that matches any value.
pub const ANY_VALUE: &str = "*";

/// Why a discovery request is invalid (answered with 400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QueryError {
    /// A field holds a value outside its domain.
    #[error("field {field}: {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
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
    /// Must be among the installed models.
    pub model: Option<String>,
    /// Must be the node's role.
    pub role: Option<String>,
    /// Which statuses pass.
    pub status: StatusFilter,
    /// Lower bound on RAM.
    pub min_ram_gb: Option<f64>,
    /// Lower bound on CPU cores.
    pub min_cpu_cores: Option<u32>,
    /// Some GPU must have at least this much VRAM.
    pub min_gpu_vram_gb: Option<f64>,
    /// Order of the reply.
    pub sort: SortOrder,
    /// Most nodes in the reply.
    pub limit: usize,
}

impl Query {
    /// Validates a request; `default_status` applies when it names none
    /// (`online` for discover, `any` for list).
    pub fn from_request(
        request: DiscoverRequest,
        default_status: StatusFilter,
    ) -> Result<Self, QueryError> {
        let status = match request.status.as_deref() {
            None => default_status,
            Some(s) => s.parse().map_err(|e| field("status", format!("{e}")))?,
        };
        let sort = match request.sort.as_deref() {
            None => SortOrder::LeastLoaded,
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
        if request.capability.iter().any(|c| c.trim().is_empty()) {
            return Err(field("capability", "an empty capability matches nothing"));
        }
        for (name, value) in [
            ("min_ram_gb", request.min_ram_gb),
            ("min_gpu_vram_gb", request.min_gpu_vram_gb),
        ] {
            if let Some(v) = value {
                if !v.is_finite() || v < 0.0 {
                    return Err(field(name, format!("{v} is not a non-negative number")));
                }
            }
        }
        Ok(Self {
            capabilities: request.capability,
            labels: request.labels,
            model: request.model,
            role: request.role,
            status,
            min_ram_gb: request.min_ram_gb,
            min_cpu_cores: request.min_cpu_cores,
            min_gpu_vram_gb: request.min_gpu_vram_gb,
            sort,
            limit,
        })
    }

    /// Whether a record satisfies every condition of the query.
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
        if let Some(model) = &self.model {
            if !caps.is_some_and(|c| c.models.iter().any(|m| m == model)) {
                return false;
            }
        }
        if let Some(min) = self.min_ram_gb {
            if !caps.is_some_and(|c| c.ram_gb >= min) {
                return false;
            }
        }
        if let Some(min) = self.min_cpu_cores {
            if caps.is_none_or(|c| c.cpu_cores < min) {
                return false;
            }
        }
        if let Some(min) = self.min_gpu_vram_gb {
            if !caps.is_some_and(|c| c.gpus.iter().any(|g| g.vram_gb >= min)) {
                return false;
            }
        }
        true
    }

    /// Answers the query over `records`: the matches, ranked, cut to the
    /// limit, with the count before the cut.
    pub fn answer<'a>(&self, records: impl IntoIterator<Item = &'a NodeRecord>) -> DiscoverReply {
        let mut hits: Vec<&NodeRecord> = records.into_iter().filter(|r| self.matches(r)).collect();
        let total = hits.len();
        let order = |a: &&NodeRecord, b: &&NodeRecord| compare(self.sort, a, b);
        if hits.len() > self.limit {
            // Partial sort: only the first `limit` need an order.
            hits.select_nth_unstable_by(self.limit, order);
            hits.truncate(self.limit);
        }
        hits.sort_unstable_by(order);
        DiscoverReply {
            nodes: hits.into_iter().cloned().collect(),
            total: total as u64,
        }
    }
}

/// Load figure used for ranking; an unmeasured load ranks after every
/// measured one.
fn load(value: Option<f64>) -> f64 {
    value.filter(|v| v.is_finite()).unwrap_or(f64::INFINITY)
}

fn compare(sort: SortOrder, a: &NodeRecord, b: &NodeRecord) -> Ordering {
    match sort {
        SortOrder::NodeId => a.node_id.cmp(&b.node_id),
        SortOrder::LeastLoaded => {
            let key = |r: &NodeRecord| {
                let m = r.metrics.as_ref();
                let cpu = load(m.and_then(|m| m.cpu_pct));
                // A node without a GPU has no GPU load to rank on.
                let gpu = m
                    .and_then(|m| m.gpu_pct)
                    .filter(|v| v.is_finite())
                    .unwrap_or(0.0);
                (cpu, gpu)
            };
            let (ca, ga) = key(a);
            let (cb, gb) = key(b);
            ca.total_cmp(&cb)
                .then(ga.total_cmp(&gb))
                .then_with(|| a.node_id.cmp(&b.node_id))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Capabilities, Gpu, Metrics};

    fn node(id: &str, status: &str, cpu: Option<f64>) -> NodeRecord {
        NodeRecord {
            node_id: id.into(),
            status: status.into(),
            role: Some("worker".into()),
            metrics: Some(Metrics {
                cpu_pct: cpu,
                ..Metrics::default()
            }),
            capabilities: Some(Capabilities {
                ram_gb: 32.0,
                cpu_cores: 8,
                ..Capabilities::default()
            }),
            ..NodeRecord::default()
        }
    }

    fn query(json: &str) -> Query {
        let request: DiscoverRequest = serde_json::from_str(json).expect("request");
        Query::from_request(request, StatusFilter::Online).expect("valid query")
    }

    fn ids(reply: &DiscoverReply) -> Vec<&str> {
        reply.nodes.iter().map(|n| n.node_id.as_str()).collect()
    }

    fn fleet() -> Vec<NodeRecord> {
        let mut gpu = node("gpu1", "online", Some(50.0));
        gpu.labels.insert("region".into(), "eu".into());
        gpu.labels.insert("gpu".into(), "true".into());
        if let Some(c) = gpu.capabilities.as_mut() {
            c.tags = vec!["gpu".into(), "nvidia".into(), "ollama".into()];
            c.models = vec!["qwen3:8b".into()];
            c.gpus = vec![Gpu {
                vendor: "nvidia".into(),
                model: "RTX 4000".into(),
                vram_gb: 20.0,
            }];
        }
        let mut laptop = node("laptop", "online", Some(10.0));
        laptop.labels.insert("region".into(), "us".into());
        laptop.labels.insert("gpu".into(), "false".into());
        let mut old = node("old", "offline", Some(1.0));
        old.labels.insert("region".into(), "eu".into());
        let mut big = node("big", "online", None);
        big.labels.insert("region".into(), "eu".into());
        if let Some(c) = big.capabilities.as_mut() {
            c.ram_gb = 256.0;
            c.cpu_cores = 64;
            c.models = vec!["qwen3:8b".into(), "mistral:7b".into()];
        }
        vec![gpu, laptop, old, big]
    }

    #[test]
    fn empty_query_is_all_online_nodes_least_loaded_first() {
        let reply = query("{}").answer(&fleet());
        assert_eq!(ids(&reply), vec!["laptop", "gpu1", "big"]);
        assert_eq!(reply.total, 3);
    }

    #[test]
    fn capability_matches_tags_and_true_labels() {
        assert_eq!(
            ids(&query(r#"{"capability":"gpu"}"#).answer(&fleet())),
            vec!["gpu1"]
        );
        assert_eq!(
            ids(&query(r#"{"capability":["gpu","nvidia"]}"#).answer(&fleet())),
            vec!["gpu1"]
        );
        assert!(query(r#"{"capability":["gpu","amd"]}"#)
            .answer(&fleet())
            .nodes
            .is_empty());
    }

    #[test]
    fn labels_model_role_and_bounds() {
        let q = query(r#"{"labels":{"region":"eu"},"model":"qwen3:8b"}"#);
        assert_eq!(ids(&q.answer(&fleet())), vec!["gpu1", "big"]);
        let q = query(r#"{"labels":{"gpu":"*"}}"#);
        assert_eq!(ids(&q.answer(&fleet())), vec!["laptop", "gpu1"]);
        assert_eq!(
            ids(&query(r#"{"min_ram_gb":100}"#).answer(&fleet())),
            vec!["big"]
        );
        assert_eq!(
            ids(&query(r#"{"min_cpu_cores":16}"#).answer(&fleet())),
            vec!["big"]
        );
        assert_eq!(
            ids(&query(r#"{"min_gpu_vram_gb":16}"#).answer(&fleet())),
            vec!["gpu1"]
        );
        assert!(query(r#"{"min_gpu_vram_gb":24}"#)
            .answer(&fleet())
            .nodes
            .is_empty());
        assert!(query(r#"{"role":"gateway"}"#)
            .answer(&fleet())
            .nodes
            .is_empty());
    }

    #[test]
    fn status_sort_and_limit() {
        let q = query(r#"{"status":"any","sort":"node_id","limit":2}"#);
        let reply = q.answer(&fleet());
        assert_eq!(ids(&reply), vec!["big", "gpu1"]);
        assert_eq!(reply.total, 4);
        assert_eq!(
            ids(&query(r#"{"status":"offline"}"#).answer(&fleet())),
            vec!["old"]
        );
    }

    #[test]
    fn limit_keeps_the_best_ranked() {
        let records: Vec<NodeRecord> = (0..500)
            .map(|i| {
                node(
                    &format!("n{i:03}"),
                    "online",
                    Some(f64::from((i * 37) % 500)),
                )
            })
            .collect();
        let reply = query(r#"{"limit":5}"#).answer(&records);
        let loads: Vec<f64> = reply
            .nodes
            .iter()
            .filter_map(|n| n.metrics.as_ref().and_then(|m| m.cpu_pct))
            .collect();
        assert_eq!(loads, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(reply.total, 500);
    }

    #[test]
    fn invalid_queries_name_the_field() {
        for (json, field_name) in [
            (r#"{"status":"up"}"#, "status"),
            (r#"{"sort":"fastest"}"#, "sort"),
            (r#"{"limit":0}"#, "limit"),
            (r#"{"limit":10001}"#, "limit"),
            (r#"{"labels":{"bad key":"x"}}"#, "labels"),
            (r#"{"min_ram_gb":-1}"#, "min_ram_gb"),
            (r#"{"capability":""}"#, "capability"),
        ] {
            let request: DiscoverRequest = serde_json::from_str(json).expect("request");
            let err = Query::from_request(request, StatusFilter::Online).expect_err(json);
            assert!(
                matches!(err, QueryError::Field { field, .. } if field == field_name),
                "{json}: {err}"
            );
        }
    }
}
