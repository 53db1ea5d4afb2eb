use super::*;
use proptest::prelude::*;
use schemas::{Capabilities, Gpu, GpuUsage, Metrics};

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
            disk_gb: 500.0,
            ..Capabilities::default()
        }),
        ..NodeRecord::default()
    }
}

fn request(json: &str) -> DiscoverRequest {
    serde_json::from_str(json).expect("request")
}

fn query(json: &str) -> Query {
    Query::from_request(request(json), StatusFilter::Online, SortOrder::LeastLoaded)
        .expect("valid query")
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
            ..Gpu::default()
        }];
    }
    if let Some(m) = gpu.metrics.as_mut() {
        m.gpus = vec![GpuUsage {
            index: 0,
            util_pct: Some(50.0),
            vram_used_gb: Some(12.0),
            ..GpuUsage::default()
        }];
    }
    let mut laptop = node("laptop", "online", Some(10.0));
    laptop.labels.insert("region".into(), "us".into());
    laptop.labels.insert("gpu".into(), "false".into());
    laptop.labels.insert("spot".into(), "true".into());
    let mut old = node("old", "offline", Some(1.0));
    old.labels.insert("region".into(), "eu".into());
    let mut big = node("big", "online", None);
    big.labels.insert("region".into(), "eu".into());
    big.labels.insert("tier".into(), "edge".into());
    if let Some(c) = big.capabilities.as_mut() {
        c.ram_gb = 256.0;
        c.cpu_cores = 64;
        c.disk_gb = 4000.0;
        c.models = vec!["qwen3:8b".into(), "mistral:7b".into()];
        c.gpus = vec![
            Gpu {
                vendor: "amd".into(),
                model: "MI210".into(),
                vram_gb: 16.0,
                ..Gpu::default()
            },
            Gpu {
                vendor: "amd".into(),
                model: "MI210".into(),
                vram_gb: 16.0,
                ..Gpu::default()
            },
        ];
    }
    vec![gpu, laptop, old, big]
}

fn catalog(records: &[NodeRecord]) -> Catalog {
    let mut c = Catalog::new();
    for r in records {
        c.upsert(r.clone());
    }
    c
}

/// Both ways of answering `json` over `records` agree (nodes, total,
/// latency estimates), and the indexed answer is returned.
fn agree(records: &[NodeRecord], json: &str) -> DiscoverReply {
    let q = query(json);
    let indexed = q.answer(&catalog(records));
    let scanned = q.answer_scan(records);
    assert_eq!(ids(&indexed), ids(&scanned), "{json}");
    assert_eq!(indexed.total, scanned.total, "{json}");
    assert_eq!(indexed.latency_ms, scanned.latency_ms, "{json}");
    indexed
}

/// [`agree`] over the test fleet.
fn both(json: &str) -> DiscoverReply {
    agree(&fleet(), json)
}

#[test]
fn empty_query_is_all_online_nodes_least_loaded_first() {
    let reply = both("{}");
    assert_eq!(ids(&reply), vec!["laptop", "gpu1", "big"]);
    assert_eq!(reply.total, 3);
}

#[test]
fn capability_matches_tags_and_true_labels() {
    assert_eq!(ids(&both(r#"{"capability":"gpu"}"#)), vec!["gpu1"]);
    assert_eq!(
        ids(&both(r#"{"capability":["gpu","nvidia"]}"#)),
        vec!["gpu1"]
    );
    assert!(both(r#"{"capability":["gpu","amd"]}"#).nodes.is_empty());
}

#[test]
fn labels_model_role_and_bounds() {
    assert_eq!(
        ids(&both(r#"{"labels":{"region":"eu"},"model":"qwen3:8b"}"#)),
        vec!["gpu1", "big"]
    );
    assert_eq!(
        ids(&both(r#"{"labels":{"gpu":"*"}}"#)),
        vec!["laptop", "gpu1"]
    );
    assert_eq!(ids(&both(r#"{"min_ram_gb":100}"#)), vec!["big"]);
    assert_eq!(ids(&both(r#"{"min_cpu_cores":16}"#)), vec!["big"]);
    assert_eq!(ids(&both(r#"{"min_disk_gb":1000}"#)), vec!["big"]);
    assert_eq!(ids(&both(r#"{"min_gpu_vram_gb":18}"#)), vec!["gpu1"]);
    assert_eq!(ids(&both(r#"{"min_total_gpu_vram_gb":30}"#)), vec!["big"]);
    assert_eq!(
        ids(&both(r#"{"min_free_gpu_vram_gb":10}"#)),
        vec!["big"],
        "gpu1 has 8 GiB free"
    );
    assert!(both(r#"{"min_gpu_vram_gb":24}"#).nodes.is_empty());
    assert!(both(r#"{"role":"gateway"}"#).nodes.is_empty());
    assert_eq!(
        ids(&both(r#"{"models_all":["qwen3:8b","mistral:7b"]}"#)),
        vec!["big"]
    );
    assert_eq!(
        ids(&both(r#"{"models_any":["mistral:7b","llama3:8b"]}"#)),
        vec!["big"]
    );
}

#[test]
fn selectors() {
    assert_eq!(ids(&both(r#"{"selector":"gpu"}"#)), vec!["gpu1"]);
    assert_eq!(
        ids(&both(
            r#"{"selector":"region in (eu,us),!spot","sort":"node_id"}"#
        )),
        vec!["big", "gpu1"]
    );
    assert_eq!(
        ids(&both(r#"{"selector":"region=eu,tier!=edge"}"#)),
        vec!["gpu1"]
    );
    assert_eq!(
        ids(&both(r#"{"selector":"region notin (eu)"}"#)),
        vec!["laptop"]
    );
    assert_eq!(ids(&both(r#"{"selector":"nvidia=true"}"#)), vec!["gpu1"]);
    assert_eq!(ids(&both(r#"{"selector":"gpu=false"}"#)), vec!["laptop"]);
}

#[test]
fn sorts_status_limit_prefer_and_random() {
    let reply = both(r#"{"status":"any","sort":"node_id","limit":2}"#);
    assert_eq!(ids(&reply), vec!["big", "gpu1"]);
    assert_eq!(reply.total, 4);
    assert_eq!(ids(&both(r#"{"status":"offline"}"#)), vec!["old"]);
    assert_eq!(
        ids(&both(r#"{"sort":"most_free_vram"}"#)),
        vec!["big", "gpu1", "laptop"]
    );
    assert_eq!(
        ids(&both(r#"{"prefer_labels":{"region":"us"}}"#)),
        vec!["laptop", "gpu1", "big"]
    );
    assert_eq!(
        ids(&both(
            r#"{"prefer_labels":{"region":"eu"},"sort":"node_id"}"#
        )),
        vec!["big", "gpu1", "laptop"]
    );
    let records = fleet();
    let c = catalog(&records);
    let mut firsts = BTreeSet::new();
    for seed in 0..64 {
        let random = query(r#"{"sort":"random","limit":1}"#).with_seed(seed);
        let reply = random.answer(&c);
        assert_eq!(reply.total, 3);
        assert_eq!(random.answer(&c), reply, "one seed, one order");
        firsts.insert(reply.nodes[0].node_id.clone());
    }
    assert_eq!(
        firsts.len(),
        3,
        "random spreads over every match: {firsts:?}"
    );
    let preferred =
        query(r#"{"sort":"random","limit":1,"prefer_labels":{"spot":"true"}}"#).answer(&c);
    assert_eq!(ids(&preferred), vec!["laptop"]);
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
    let reply = query(r#"{"limit":5}"#).answer(&catalog(&records));
    let loads: Vec<f64> = reply
        .nodes
        .iter()
        .filter_map(|n| n.metrics.as_ref().and_then(|m| m.cpu_pct))
        .collect();
    assert_eq!(loads, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(reply.total, 500);
}

#[test]
fn cursor_pages_through_everything_once() {
    let records: Vec<NodeRecord> = (0..257)
        .map(|i| node(&format!("n{i:04}"), "online", None))
        .collect();
    let c = catalog(&records);
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut req = request(r#"{"status":"any","limit":50}"#);
        req.cursor = cursor.clone();
        let q = Query::from_request(req, StatusFilter::Any, SortOrder::NodeId).expect("valid");
        let reply = q.answer(&c);
        assert_eq!(reply.total, 257);
        seen.extend(reply.nodes.iter().map(|n| n.node_id.clone()));
        match reply.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    let expected: Vec<String> = (0..257).map(|i| format!("n{i:04}")).collect();
    assert_eq!(seen, expected);
}

#[test]
fn fields_project_the_reply() {
    let reply = both(r#"{"fields":["metrics"],"limit":1}"#);
    let node = &reply.nodes[0];
    assert_eq!(node.node_id, "laptop");
    assert!(node.metrics.is_some());
    assert!(node.capabilities.is_none() && node.labels.is_empty() && node.status.is_empty());
}

#[test]
fn invalid_queries_name_the_field() {
    for (json, field_name) in [
        (r#"{"status":"up"}"#, "status"),
        (r#"{"sort":"fastest"}"#, "sort"),
        (r#"{"limit":0}"#, "limit"),
        (r#"{"limit":10001}"#, "limit"),
        (r#"{"labels":{"bad key":"x"}}"#, "labels"),
        (r#"{"prefer_labels":{"bad key":"x"}}"#, "prefer_labels"),
        (r#"{"min_ram_gb":-1}"#, "min_ram_gb"),
        (r#"{"min_free_gpu_vram_gb":-1}"#, "min_free_gpu_vram_gb"),
        (r#"{"capability":""}"#, "capability"),
        (r#"{"models_any":[""]}"#, "models_any"),
        (r#"{"cursor":"n1"}"#, "cursor"),
        (r#"{"fields":["nope"]}"#, "fields"),
    ] {
        let err = Query::from_request(request(json), StatusFilter::Online, SortOrder::LeastLoaded)
            .expect_err(json);
        assert!(
            matches!(err, QueryError::Field { field, .. } if field == field_name),
            "{json}: {err}"
        );
    }
    let err = Query::from_request(
        request(r#"{"selector":"a in (b"}"#),
        StatusFilter::Online,
        SortOrder::LeastLoaded,
    )
    .expect_err("bad selector");
    assert!(err.to_string().contains("position 7"), "{err}");
}

// Property: over random fleets and random queries, the indexed answer is
// exactly the brute-force filter's.

const KEYS: &[&str] = &["region", "gpu", "tier", "spot", "zone"];
// Empty and numeric values too: `k=`, `k in (,eu)`, `k>2`.
const VALUES: &[&str] = &["eu", "us", "true", "false", "edge", "", "2", "10", "-1"];
const TAGS: &[&str] = &["gpu", "nvidia", "amd", "ollama", "spot"];
const MODELS: &[&str] = &["qwen3:8b", "mistral:7b", "llama3:8b"];
const STATUSES: &[&str] = &["online", "degraded", "offline", "maintenance"];

fn arb_record(i: usize) -> impl Strategy<Value = NodeRecord> {
    (
        proptest::collection::btree_map(0..KEYS.len(), 0..VALUES.len(), 0..4),
        proptest::collection::btree_set(0..TAGS.len(), 0..3),
        proptest::collection::btree_set(0..MODELS.len(), 0..3),
        0..STATUSES.len(),
        0u32..4,
        proptest::option::of(0.0f64..100.0),
        proptest::collection::vec((8.0f64..80.0, 0u8..4, 0.0f64..8.0), 0..3),
    )
        .prop_map(
            move |(labels, tags, models, status, ram, cpu, gpus)| NodeRecord {
                node_id: format!("n{i:03}"),
                status: STATUSES[status].into(),
                role: Some(if i % 3 == 0 { "gateway" } else { "worker" }.into()),
                labels: labels
                    .into_iter()
                    .map(|(k, v)| (KEYS[k].to_owned(), VALUES[v].to_owned()))
                    .collect(),
                capabilities: Some(Capabilities {
                    tags: tags.into_iter().map(|t| TAGS[t].to_owned()).collect(),
                    models: models.into_iter().map(|m| MODELS[m].to_owned()).collect(),
                    ram_gb: f64::from(ram) * 32.0,
                    gpus: gpus
                        .iter()
                        .map(|&(v, _, _)| Gpu {
                            vendor: "nvidia".into(),
                            model: "x".into(),
                            vram_gb: v,
                            ..Gpu::default()
                        })
                        .collect(),
                    ..Capabilities::default()
                }),
                metrics: Some(Metrics {
                    cpu_pct: cpu,
                    gpus: gpus
                        .iter()
                        .enumerate()
                        .map(|(i, &(_, _, used))| GpuUsage {
                            index: u32::try_from(i).unwrap_or(0),
                            vram_used_gb: Some(used),
                            ..GpuUsage::default()
                        })
                        .collect(),
                    ..Metrics::default()
                }),
                // Each GPU healthy, warning, failed, or quarantined.
                gpu_health: (!gpus.is_empty()).then(|| schemas::NodeGpuHealth {
                    state: String::new(),
                    gpus: gpus
                        .iter()
                        .enumerate()
                        .map(|(i, &(_, h, _))| schemas::GpuState {
                            index: u32::try_from(i).unwrap_or(0),
                            state: ["healthy", "warning", "failed", "healthy"][usize::from(h)]
                                .into(),
                            quarantined: h == 3,
                            ..schemas::GpuState::default()
                        })
                        .collect(),
                }),
                ..NodeRecord::default()
            },
        )
}

fn arb_fleet() -> impl Strategy<Value = Vec<NodeRecord>> {
    (0usize..60).prop_flat_map(|n| (0..n).map(arb_record).collect::<Vec<_>>())
}

fn arb_requirement() -> impl Strategy<Value = String> {
    let key = (0..KEYS.len() + TAGS.len())
        .prop_map(|i| KEYS.iter().chain(TAGS).nth(i).copied().unwrap_or("x"));
    let value = (0..VALUES.len()).prop_map(|i| VALUES[i]);
    let values = proptest::collection::vec((0..VALUES.len()).prop_map(|i| VALUES[i]), 1..3);
    let number = prop_oneof![Just(-1i64), Just(0), Just(2), Just(5)];
    (key, value, values, number, 0..8).prop_map(|(k, v, vs, n, op)| match op {
        0 => k.to_owned(),
        1 => format!("!{k}"),
        2 => format!("{k}={v}"),
        3 => format!("{k}!={v}"),
        4 => format!("{k} in ({})", vs.join(",")),
        5 => format!("{k} notin ({})", vs.join(",")),
        6 => format!("{k}>{n}"),
        _ => format!("{k}<{n}"),
    })
}

fn arb_request() -> impl Strategy<Value = DiscoverRequest> {
    (
        proptest::collection::vec(arb_requirement(), 0..4),
        proptest::option::of(0..MODELS.len()),
        proptest::collection::vec(0..MODELS.len(), 0..3),
        proptest::option::of(0..STATUSES.len() + 1),
        proptest::option::of((0..KEYS.len(), 0..VALUES.len() + 1)),
        proptest::option::of(0..2usize),
        proptest::option::of(0.0f64..100.0),
        proptest::option::of(0..TAGS.len()),
        (
            0..3usize,
            proptest::option::of((0..KEYS.len(), 0..VALUES.len())),
            proptest::option::of(0u32..4),
            1u32..30,
            proptest::option::of(0u32..3),
            proptest::option::of(0..2usize),
            proptest::option::of(0.0f64..60.0),
            proptest::option::of((1.0f64..90.0, 1u32..3, 0..2usize)),
        ),
    )
        .prop_map(
            |(
                reqs,
                model,
                any,
                status,
                label,
                role,
                vram,
                capability,
                (sort, prefer, ram, limit, min_gpus, gpu_health, free, fit),
            )| DiscoverRequest {
                fit: fit.map(|(vram_gb, gpus, _)| schemas::Fit {
                    model: None,
                    vram_gb: Some(vram_gb),
                    gpus: Some(gpus),
                }),
                strategy: fit.map(|(_, _, s)| ["binpack", "spread"][s].to_owned()),
                min_gpus,
                gpu_health: gpu_health.map(|h| ["healthy", "any"][h].to_owned()),
                min_free_gpu_vram_gb: free,
                selector: (!reqs.is_empty()).then(|| reqs.join(",")),
                model: model.map(|m| MODELS[m].to_owned()),
                models_any: any.into_iter().map(|m| MODELS[m].to_owned()).collect(),
                status: status.map(|s| STATUSES.get(s).copied().unwrap_or("any").to_owned()),
                labels: label
                    .map(|(k, v)| {
                        (
                            KEYS[k].to_owned(),
                            VALUES.get(v).copied().unwrap_or("*").to_owned(),
                        )
                    })
                    .into_iter()
                    .collect(),
                role: role.map(|r| ["worker", "gateway"][r].to_owned()),
                min_gpu_vram_gb: vram,
                capability: capability.map(|c| TAGS[c].to_owned()).into_iter().collect(),
                sort: Some(["node_id", "least_loaded", "most_free_vram"][sort].into()),
                prefer_labels: prefer
                    .map(|(k, v)| (KEYS[k].to_owned(), VALUES[v].to_owned()))
                    .into_iter()
                    .collect(),
                min_ram_gb: ram.map(|r| f64::from(r) * 32.0),
                limit: Some(limit),
                ..DiscoverRequest::default()
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn the_index_agrees_with_brute_force(fleet in arb_fleet(), request in arb_request(), churn in 0usize..10) {
        let mut c = Catalog::new();
        for r in &fleet {
            c.upsert(r.clone());
        }
        // Some churn: remove and re-add a few, so slots are reused.
        for r in fleet.iter().take(churn) {
            c.remove(&r.node_id);
        }
        for r in fleet.iter().take(churn / 2) {
            c.upsert(r.clone());
        }
        let kept: Vec<NodeRecord> = fleet
            .iter()
            .enumerate()
            .filter(|(i, _)| *i >= churn || *i < churn / 2)
            .map(|(_, r)| r.clone())
            .collect();
        let q = Query::from_request(request, StatusFilter::Online, SortOrder::NodeId).expect("generated queries are valid");
        let indexed = q.answer(&c);
        let scanned = q.answer_scan(&kept);
        prop_assert_eq!(ids(&indexed), ids(&scanned));
        prop_assert_eq!(indexed.total, scanned.total);
        prop_assert_eq!(indexed.placements, scanned.placements);
    }
}

/// Two nodes with two GPUs: `h100x2` has its 80 GB card quarantined, `dead`
/// has both failed.
fn gpu_fleet() -> Vec<NodeRecord> {
    let gpu_node = |id: &str, vram: [f64; 2], states: [(&str, bool); 2]| {
        let mut r = node(id, "online", Some(10.0));
        if let Some(c) = r.capabilities.as_mut() {
            c.tags = vec!["gpu".into()];
            c.gpus = vram
                .iter()
                .map(|v| Gpu {
                    vendor: "nvidia".into(),
                    vram_gb: *v,
                    ..Gpu::default()
                })
                .collect();
        }
        r.gpu_health = Some(schemas::NodeGpuHealth {
            state: String::new(),
            gpus: states
                .iter()
                .enumerate()
                .map(|(i, (state, quarantined))| schemas::GpuState {
                    index: u32::try_from(i).unwrap_or(0),
                    state: (*state).into(),
                    quarantined: *quarantined,
                    ..schemas::GpuState::default()
                })
                .collect(),
        });
        r
    };
    vec![
        gpu_node(
            "h100x2",
            [80.0, 24.0],
            [("healthy", true), ("healthy", false)],
        ),
        gpu_node("dead", [48.0, 48.0], [("failed", true), ("failed", true)]),
        gpu_node(
            "fine",
            [24.0, 24.0],
            [("warning", false), ("healthy", false)],
        ),
    ]
}

fn gpu_answer(json: &str) -> Vec<String> {
    let q = query(json);
    let records = gpu_fleet();
    let indexed = q.answer(&catalog(&records));
    let scanned = q.answer_scan(&records);
    assert_eq!(ids(&indexed), ids(&scanned), "{json}");
    let mut found: Vec<String> = ids(&indexed).into_iter().map(str::to_owned).collect();
    found.sort();
    found
}

#[test]
fn only_gpus_in_service_count_unless_asked_for_any() {
    // The 80 GB card is quarantined: by default h100x2 has none that big.
    assert!(gpu_answer(r#"{"min_gpu_vram_gb":48}"#).is_empty());
    assert_eq!(
        gpu_answer(r#"{"min_gpu_vram_gb":48,"gpu_health":"any"}"#),
        vec!["dead", "h100x2"]
    );
    // Counts: a warning GPU is in service, a quarantined one is not.
    assert_eq!(gpu_answer(r#"{"min_gpus":2}"#), vec!["fine"]);
    assert_eq!(gpu_answer(r#"{"min_gpus":1}"#), vec!["fine", "h100x2"]);
    assert_eq!(
        gpu_answer(r#"{"min_gpus":2,"gpu_health":"any"}"#),
        vec!["dead", "fine", "h100x2"]
    );
    // All GPUs failed: not a GPU node for GPU queries.
    assert_eq!(
        gpu_answer(r#"{"capability":"gpu"}"#),
        vec!["fine", "h100x2"]
    );
    assert_eq!(gpu_answer(r#"{}"#), vec!["dead", "fine", "h100x2"]);
    assert_eq!(gpu_answer(r#"{"min_total_gpu_vram_gb":48}"#), vec!["fine"]);
    let bad = Query::from_request(
        request(r#"{"gpu_health":"sick"}"#),
        StatusFilter::Online,
        SortOrder::LeastLoaded,
    )
    .expect_err("bad gpu_health");
    assert!(bad.to_string().contains("gpu_health"), "{bad}");
}

/// Nodes for fit: `big` (80 + 24 GB, 10 used on the 80), `pair` (2 × 24,
/// 4 used on each), `small` (16), `sick` (48, failed); qwen3:32b is 20 GiB
/// in `pair`'s Ollama listing.
fn fit_fleet() -> Vec<NodeRecord> {
    let mut records = Vec::new();
    let make = |id: &str, gpus: &[(f64, f64, &str)]| {
        let mut r = node(id, "online", Some(10.0));
        if let Some(c) = r.capabilities.as_mut() {
            c.gpus = gpus
                .iter()
                .map(|(v, _, _)| Gpu {
                    vram_gb: *v,
                    ..Gpu::default()
                })
                .collect();
        }
        if let Some(m) = r.metrics.as_mut() {
            m.gpus = gpus
                .iter()
                .enumerate()
                .map(|(i, (_, used, _))| GpuUsage {
                    index: u32::try_from(i).unwrap_or(0),
                    vram_used_gb: Some(*used),
                    ..GpuUsage::default()
                })
                .collect();
        }
        r.gpu_health = Some(schemas::NodeGpuHealth {
            state: String::new(),
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, (_, _, state))| schemas::GpuState {
                    index: u32::try_from(i).unwrap_or(0),
                    state: (*state).into(),
                    quarantined: *state == "failed",
                    ..schemas::GpuState::default()
                })
                .collect(),
        });
        r
    };
    let mut pair = make("pair", &[(24.0, 4.0, "healthy"), (24.0, 4.0, "healthy")]);
    if let Some(c) = pair.capabilities.as_mut() {
        c.ollama = Some(schemas::Ollama {
            version: "0.6".into(),
            models: vec![schemas::OllamaModel {
                name: "qwen3:32b".into(),
                size_bytes: 20 * 1024 * 1024 * 1024,
            }],
        });
    }
    records.push(make(
        "big",
        &[(80.0, 10.0, "healthy"), (24.0, 0.0, "healthy")],
    ));
    records.push(pair);
    records.push(make("small", &[(16.0, 0.0, "healthy")]));
    records.push(make("sick", &[(48.0, 0.0, "failed")]));
    records
}

fn fit_answer(json: &str) -> DiscoverReply {
    let q = query(json);
    let records = fit_fleet();
    let indexed = q.answer(&catalog(&records));
    let scanned = q.answer_scan(&records);
    assert_eq!(ids(&indexed), ids(&scanned), "{json}");
    assert_eq!(indexed.placements, scanned.placements, "{json}");
    assert_eq!(indexed.total, scanned.total, "{json}");
    indexed
}

fn placed(reply: &DiscoverReply) -> Vec<(&str, Vec<u32>)> {
    reply
        .placements
        .iter()
        .map(|p| (p.node_id.as_str(), p.gpus.clone()))
        .collect()
}

#[test]
fn fit_a_model_on_healthy_gpus_packing_tightly() {
    // qwen3:32b: 20 GiB × 1.2 = 24 GiB on one card. pair's cards have 20
    // free, big's 24 GB card has 24 and its 80 GB card 70: binpack takes
    // the 24 GB card first; sick's 48 GB card has failed.
    let reply = fit_answer(r#"{"fit":{"model":"qwen3:32b"}}"#);
    assert_eq!(placed(&reply), vec![("big", vec![1])]);
    assert_eq!(reply.placements[0].free_after_gb, 0.0);
    let reply = fit_answer(r#"{"fit":{"model":"qwen3:32b"},"strategy":"spread"}"#);
    assert_eq!(placed(&reply), vec![("big", vec![0])]);
    // A size given: 16 GiB fits everywhere with room; binpack fills the
    // fullest first.
    let reply = fit_answer(r#"{"fit":{"vram_gb":16}}"#);
    assert_eq!(
        placed(&reply),
        vec![("small", vec![0]), ("pair", vec![0]), ("big", vec![1])]
    );
    assert_eq!(reply.total, 3);
    // Over two cards: 36 GiB as 2 × 18.
    let reply = fit_answer(r#"{"fit":{"vram_gb":36,"gpus":2}}"#);
    assert_eq!(
        placed(&reply),
        vec![("pair", vec![0, 1]), ("big", vec![0, 1])]
    );
    // The failed card counts only when asked.
    let reply = fit_answer(r#"{"fit":{"vram_gb":40},"gpu_health":"any"}"#);
    assert_eq!(placed(&reply), vec![("sick", vec![0]), ("big", vec![0])]);
    let reply = fit_answer(r#"{"fit":{"vram_gb":40}}"#);
    assert_eq!(placed(&reply), vec![("big", vec![0])]);
    // A model no listing knows, with no size: nothing fits.
    assert_eq!(fit_answer(r#"{"fit":{"model":"unknown:1b"}}"#).total, 0);
    for (bad, what) in [
        (r#"{"fit":{}}"#, "fit"),
        (r#"{"fit":{"vram_gb":-1}}"#, "fit"),
        (r#"{"fit":{"vram_gb":1,"gpus":0}}"#, "fit"),
        (r#"{"strategy":"spread"}"#, "strategy"),
        (r#"{"fit":{"vram_gb":1},"strategy":"tight"}"#, "strategy"),
    ] {
        let err = Query::from_request(request(bad), StatusFilter::Online, SortOrder::LeastLoaded)
            .expect_err(bad);
        assert!(err.to_string().contains(what), "{bad}: {err}");
    }
}
mod near;
