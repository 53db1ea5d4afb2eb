//! Deterministic, realistic events of virtual nodes.

use std::collections::BTreeMap;

use schemas::status::EventType;
use schemas::{Capabilities, Gpu, GpuUsage, Metrics, NodeEvent, Ollama, OllamaModel};

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced by a constant).
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 {
            0x9e37_79b9_7f4a_7c15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// True with `percent` % probability.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const MODELS: &[(&str, u64)] = &[
    ("qwen3:8b", 5_200_000_000),
    ("qwen3:32b", 20_000_000_000),
    ("llama3.1:8b", 4_900_000_000),
    ("llama3.1:70b", 43_000_000_000),
    ("mistral:7b", 4_100_000_000),
    ("gemma2:27b", 16_000_000_000),
    ("phi4:14b", 9_100_000_000),
    ("deepseek-r1:14b", 9_000_000_000),
    ("nomic-embed-text", 274_000_000),
    ("qwen2.5-coder:7b", 4_700_000_000),
];
const REGIONS: &[&str] = &["eu", "us", "ap", "sa", "af"];
const TIERS: &[&str] = &["prod", "dev", "edge"];

/// The register event of virtual node `n`: the same for the same `n` and
/// seed, 1–2 KiB as JSON.
pub fn register(node_id: &str, n: u64, seq: u64, seed: u64) -> NodeEvent {
    let mut rng = Rng::new(seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5151);
    let gpu = rng.chance(50);
    let vendor = if rng.chance(80) { "nvidia" } else { "amd" };
    let gpus: Vec<Gpu> = if gpu {
        (0..1 + rng.below(4))
            .map(|_| Gpu {
                vendor: vendor.into(),
                model: if vendor == "nvidia" {
                    "NVIDIA RTX 4000 SFF Ada Generation"
                } else {
                    "AMD Instinct MI210"
                }
                .into(),
                vram_gb: [16.0, 20.0, 24.0, 48.0, 80.0][rng.below(5) as usize],
                ..Gpu::default()
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut tags = Vec::new();
    if gpu {
        tags.push("gpu".to_owned());
        tags.push(vendor.to_owned());
    }
    let mut models: Vec<OllamaModel> = Vec::new();
    let ollama = rng.chance(70);
    if ollama {
        tags.push("ollama".to_owned());
        for _ in 0..1 + rng.below(4) {
            let (name, size) = MODELS[rng.below(MODELS.len() as u64) as usize];
            models.push(OllamaModel {
                name: name.into(),
                size_bytes: size,
            });
        }
        models.sort_by(|a, b| a.name.cmp(&b.name));
        models.dedup_by(|a, b| a.name == b.name);
    }
    tags.sort();
    let mut labels = BTreeMap::new();
    labels.insert(
        "region".to_owned(),
        REGIONS[rng.below(5) as usize].to_owned(),
    );
    labels.insert("zone".to_owned(), format!("z{:02}", rng.below(20)));
    labels.insert("rack".to_owned(), format!("r{:02}", rng.below(100)));
    labels.insert("tier".to_owned(), TIERS[rng.below(3) as usize].to_owned());
    if gpu {
        labels.insert("gpu".to_owned(), "true".to_owned());
    }
    if rng.chance(10) {
        labels.insert("spot".to_owned(), "true".to_owned());
    }
    NodeEvent {
        r#type: EventType::Register.to_string(),
        node_id: node_id.to_owned(),
        node_name: Some(format!("host-{n}")),
        role: Some(if gpu { "inference" } else { "worker" }.into()),
        labels,
        hostname: Some(format!("host-{n}.fleet.example")),
        ip_address: Some(format!("10.{}.{}.{}", n >> 16 & 255, n >> 8 & 255, n & 255)),
        local_ip: Some(format!("192.168.{}.{}", n >> 8 & 255, n & 255)),
        capabilities: Some(Capabilities {
            os: "linux".into(),
            os_version: "12".into(),
            arch: "x86_64".into(),
            cpu_model: "AMD EPYC 9454P 48-Core Processor".into(),
            cpu_cores: [8, 16, 32, 64, 96][rng.below(5) as usize],
            ram_gb: [31.3, 62.7, 125.5, 251.5][rng.below(4) as usize],
            disk_gb: [476.9, 953.9, 1907.7][rng.below(3) as usize],
            gpus,
            models: models.iter().map(|m| m.name.clone()).collect(),
            tags,
            ollama: ollama.then(|| Ollama {
                version: "0.6.2".into(),
                models,
            }),
        }),
        agent_version: Some("0.1.0-sim".into()),
        seq: Some(seq),
        caps_hash: Some(format!("{:016x}", Rng::new(n ^ seed).next_u64())),
        ..NodeEvent::default()
    }
}

/// A heartbeat with plausible metrics.
pub fn heartbeat(node_id: &str, seq: u64, rng: &mut Rng) -> NodeEvent {
    NodeEvent {
        r#type: EventType::Heartbeat.to_string(),
        node_id: node_id.to_owned(),
        seq: Some(seq),
        metrics: Some(Metrics {
            cpu_pct: Some(rng.below(1000) as f64 / 10.0),
            ram_pct: Some(rng.below(1000) as f64 / 10.0),
            gpu_pct: None,
            disk_pct: Some(rng.below(100) as f64),
            load_1m: Some(rng.below(800) as f64 / 100.0),
            gpus: Vec::<GpuUsage>::new(),
        }),
        ..NodeEvent::default()
    }
}

/// A graceful goodbye.
pub fn deregister(node_id: &str, seq: u64) -> NodeEvent {
    NodeEvent {
        r#type: EventType::Deregister.to_string(),
        node_id: node_id.to_owned(),
        seq: Some(seq),
        reason: Some("shutdown".into()),
        ..NodeEvent::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::codec::{encode, Encoding};

    #[test]
    fn registrations_are_realistic_deterministic_and_valid() {
        let mut sizes = Vec::new();
        for n in 0..200 {
            let id = format!("sim-{n}");
            let a = register(&id, n, 1, 7);
            assert_eq!(a, register(&id, n, 1, 7), "deterministic");
            let subject_id = subjects::NodeId::parse(&id).map_err(|e| e.to_string());
            let valid = subject_id.and_then(|sid| {
                schemas::validate::validate_event(a.clone(), &sid).map_err(|e| e.to_string())
            });
            assert!(valid.is_ok(), "{valid:?}");
            sizes.push(encode(&a, Encoding::Json).len());
        }
        let mean = sizes.iter().sum::<usize>() / sizes.len();
        assert!((700..=2048).contains(&mean), "mean register size {mean} B");
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Rng::new(3);
        let hits = (0..10_000).filter(|_| rng.chance(30)).count();
        assert!((2700..3300).contains(&hits), "{hits}");
        assert!((0..1000)
            .map(|_| rng.unit())
            .all(|u| (0.0..1.0).contains(&u)));
    }
}
