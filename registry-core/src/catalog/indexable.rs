//! What the catalog reads of a record, from either form it meets one in: a
//! [`NodeRecord`] the registry made (its own writes), or a [`RecordView`]
//! read straight from a stored value, borrowing its strings (a cold start's
//! million records, and every record written elsewhere), which costs no
//! owned record per value.

use std::borrow::Cow;
use std::fmt;

use schemas::NodeRecord;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

/// Where a node is attached to NATS.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NatsPlace<'a> {
    /// The server's name.
    pub server: &'a str,
    /// Its cluster, if it is in one.
    pub cluster: Option<&'a str>,
    /// Its JetStream domain, if any.
    pub domain: Option<&'a str>,
    /// The node's round trip to it, in ms.
    pub rtt_ms: Option<f64>,
}

/// The registry's verdict on one GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GpuVerdict<'a> {
    /// Quarantined (flapping).
    pub quarantined: bool,
    /// Its state (`ok`, `degraded`, `failed`, ...).
    pub state: &'a str,
}

/// The fields of a record that the catalog indexes and ranks by.
pub trait Indexable {
    /// The node id.
    fn node_id(&self) -> &str;
    /// Its status, as stored.
    fn status(&self) -> &str;
    /// Its role, if any.
    fn role(&self) -> Option<&str>;
    /// Its labels, key and value.
    fn labels(&self) -> impl Iterator<Item = (&str, &str)>;
    /// Whether it reported capabilities at all.
    fn has_capabilities(&self) -> bool;
    /// Its capability tags.
    fn tags(&self) -> impl Iterator<Item = &str>;
    /// Its installed models.
    fn models(&self) -> impl Iterator<Item = &str>;
    /// Each GPU's VRAM in GB, in the order of its capabilities (a GPU's
    /// position is its index).
    fn gpu_vram_gb(&self) -> impl Iterator<Item = f64>;
    /// RAM in GB.
    fn ram_gb(&self) -> f64;
    /// Disk in GB.
    fn disk_gb(&self) -> f64;
    /// CPU cores.
    fn cpu_cores(&self) -> u32;
    /// The models of its Ollama listing, with their sizes in bytes.
    fn ollama_models(&self) -> impl Iterator<Item = (&str, u64)>;
    /// CPU use in the last heartbeat.
    fn cpu_pct(&self) -> Option<f64>;
    /// GPU use in the last heartbeat.
    fn gpu_pct(&self) -> Option<f64>;
    /// VRAM used on GPU `index` in the last heartbeat.
    fn vram_used_gb(&self, index: usize) -> Option<f64>;
    /// Where it is attached to NATS.
    fn nats(&self) -> Option<NatsPlace<'_>>;
    /// The registry's verdict on GPU `index`, if it judged it.
    fn gpu_verdict(&self, index: usize) -> Option<GpuVerdict<'_>>;
    /// Whether an operator cordoned GPU `index`.
    fn gpu_cordoned(&self, index: usize) -> bool;
}

/// Implements [`Indexable`] for a record type whose fields have the
/// names, and the shapes up to string types, of [`NodeRecord`]'s: the
/// record itself and its [`RecordView`] read alike, from one body.
macro_rules! indexable_by_fields {
    ($record:ty) => {
        impl Indexable for $record {
            fn node_id(&self) -> &str {
                &self.node_id
            }
            fn status(&self) -> &str {
                &self.status
            }
            fn role(&self) -> Option<&str> {
                self.role.as_deref()
            }
            fn labels(&self) -> impl Iterator<Item = (&str, &str)> {
                self.labels.iter().map(|(k, v)| (&**k, &**v))
            }
            fn has_capabilities(&self) -> bool {
                self.capabilities.is_some()
            }
            fn tags(&self) -> impl Iterator<Item = &str> {
                self.capabilities
                    .iter()
                    .flat_map(|c| c.tags.iter().map(|t| &**t))
            }
            fn models(&self) -> impl Iterator<Item = &str> {
                self.capabilities
                    .iter()
                    .flat_map(|c| c.models.iter().map(|m| &**m))
            }
            fn gpu_vram_gb(&self) -> impl Iterator<Item = f64> {
                self.capabilities
                    .iter()
                    .flat_map(|c| c.gpus.iter().map(|g| g.vram_gb))
            }
            fn ram_gb(&self) -> f64 {
                self.capabilities.as_ref().map_or(0.0, |c| c.ram_gb)
            }
            fn disk_gb(&self) -> f64 {
                self.capabilities.as_ref().map_or(0.0, |c| c.disk_gb)
            }
            fn cpu_cores(&self) -> u32 {
                self.capabilities.as_ref().map_or(0, |c| c.cpu_cores)
            }
            fn ollama_models(&self) -> impl Iterator<Item = (&str, u64)> {
                self.capabilities
                    .iter()
                    .flat_map(|c| c.ollama.iter())
                    .flat_map(|o| o.models.iter().map(|m| (&*m.name, m.size_bytes)))
            }
            fn cpu_pct(&self) -> Option<f64> {
                self.metrics.as_ref()?.cpu_pct
            }
            fn gpu_pct(&self) -> Option<f64> {
                self.metrics.as_ref()?.gpu_pct
            }
            fn vram_used_gb(&self, index: usize) -> Option<f64> {
                self.metrics
                    .as_ref()?
                    .gpus
                    .iter()
                    .find(|u| u.index as usize == index)?
                    .vram_used_gb
            }
            fn nats(&self) -> Option<NatsPlace<'_>> {
                self.nats.as_ref().map(|n| NatsPlace {
                    server: &n.server,
                    cluster: n.cluster.as_deref(),
                    domain: n.domain.as_deref(),
                    rtt_ms: n.rtt_ms,
                })
            }
            fn gpu_verdict(&self, index: usize) -> Option<GpuVerdict<'_>> {
                self.gpu_health
                    .as_ref()?
                    .gpus
                    .iter()
                    .find(|g| g.index as usize == index)
                    .map(|g| GpuVerdict {
                        quarantined: g.quarantined,
                        state: &g.state,
                    })
            }
            fn gpu_cordoned(&self, index: usize) -> bool {
                self.gpu_cordons.iter().any(|c| c.index as usize == index)
            }
        }
    };
}

indexable_by_fields!(NodeRecord);
indexable_by_fields!(RecordView<'_>);

/// A string of a stored value: borrowed from it unless it had escapes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Text<'a>(pub Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(TextVisitor)
    }
}

/// A record's labels, in the order stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels<'a>(pub Vec<(Text<'a>, Text<'a>)>);

impl<'a> std::ops::Deref for Labels<'a> {
    type Target = [(Text<'a>, Text<'a>)];
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Labels<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelsVisitor;
        impl<'de> Visitor<'de> for LabelsVisitor {
            type Value = Labels<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of strings to strings")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(4).min(64));
                while let Some(pair) = map.next_entry::<Text<'de>, Text<'de>>()? {
                    pairs.push(pair);
                }
                Ok(Labels(pairs))
            }
        }
        deserializer.deserialize_map(LabelsVisitor)
    }
}

/// A stored record, read for indexing only: the fields [`Indexable`] asks
/// for, with strings borrowed from the value; every other field is skipped.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct RecordView<'a> {
    #[serde(borrow)]
    node_id: Text<'a>,
    #[serde(borrow)]
    status: Text<'a>,
    #[serde(borrow)]
    role: Option<Text<'a>>,
    #[serde(borrow)]
    labels: Labels<'a>,
    #[serde(borrow)]
    capabilities: Option<CapabilitiesView<'a>>,
    metrics: Option<MetricsView>,
    #[serde(borrow)]
    nats: Option<NatsView<'a>>,
    #[serde(borrow)]
    gpu_health: Option<GpuHealthView<'a>>,
    gpu_cordons: Vec<Indexed>,
}

impl<'a> RecordView<'a> {
    /// Reads a record's JSON.
    pub fn of(value: &'a [u8]) -> Result<Self, serde_json::Error> {
        schemas::json::from_bytes(value)
    }
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct CapabilitiesView<'a> {
    cpu_cores: u32,
    ram_gb: f64,
    disk_gb: f64,
    gpus: Vec<GpuView>,
    #[serde(borrow)]
    models: Vec<Text<'a>>,
    #[serde(borrow)]
    tags: Vec<Text<'a>>,
    #[serde(borrow)]
    ollama: Option<OllamaView<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct GpuView {
    vram_gb: f64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct OllamaView<'a> {
    #[serde(borrow)]
    models: Vec<OllamaModelView<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct OllamaModelView<'a> {
    #[serde(borrow)]
    name: Text<'a>,
    size_bytes: u64,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct MetricsView {
    cpu_pct: Option<f64>,
    gpu_pct: Option<f64>,
    gpus: Vec<GpuUsageView>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct GpuUsageView {
    index: u32,
    vram_used_gb: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct NatsView<'a> {
    #[serde(borrow)]
    server: Text<'a>,
    #[serde(borrow)]
    cluster: Option<Text<'a>>,
    #[serde(borrow)]
    domain: Option<Text<'a>>,
    rtt_ms: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct GpuHealthView<'a> {
    #[serde(borrow)]
    gpus: Vec<GpuStateView<'a>>,
}

#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct GpuStateView<'a> {
    index: u32,
    quarantined: bool,
    #[serde(borrow)]
    state: Text<'a>,
}

/// An entry that names a GPU by index (a cordon).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default)]
struct Indexed {
    index: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{
        Capabilities, Gpu, GpuCordon, GpuState, GpuUsage, Metrics, NatsLink, NodeGpuHealth, Ollama,
        OllamaModel,
    };

    /// Everything a reading gives, for comparing two readings.
    fn reading(r: &impl Indexable) -> String {
        let gpus = r.gpu_vram_gb().count() + 2;
        format!(
            "{} {} {:?} {:?} {} {:?} {:?} {:?} {} {} {} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            r.node_id(),
            r.status(),
            r.role(),
            r.labels().collect::<Vec<_>>(),
            r.has_capabilities(),
            r.tags().collect::<Vec<_>>(),
            r.models().collect::<Vec<_>>(),
            r.gpu_vram_gb().collect::<Vec<_>>(),
            r.ram_gb(),
            r.disk_gb(),
            r.cpu_cores(),
            r.ollama_models().collect::<Vec<_>>(),
            (r.cpu_pct(), r.gpu_pct()),
            (0..gpus).map(|i| r.vram_used_gb(i)).collect::<Vec<_>>(),
            r.nats(),
            (0..gpus).map(|i| r.gpu_verdict(i)).collect::<Vec<_>>(),
            (0..gpus).map(|i| r.gpu_cordoned(i)).collect::<Vec<_>>(),
            crate::catalog::Facts::of(r),
        )
    }

    fn full() -> NodeRecord {
        NodeRecord {
            node_id: "gpu-7".into(),
            status: "degraded".into(),
            role: Some("infer\"ence".into()),
            labels: [("region", "eu \"west\""), ("rack", "r\\42"), ("zone", "ä")]
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            hostname: Some("skipped".into()),
            capabilities: Some(Capabilities {
                os: "linux".into(),
                cpu_cores: 64,
                ram_gb: 512.5,
                disk_gb: 3800.0,
                gpus: vec![
                    Gpu {
                        vram_gb: 80.0,
                        model: "H100".into(),
                        ..Gpu::default()
                    },
                    Gpu {
                        vram_gb: 40.0,
                        ..Gpu::default()
                    },
                    Gpu {
                        vram_gb: 24.0,
                        ..Gpu::default()
                    },
                ],
                models: vec!["qwen3:32b".into(), "llama\\3".into()],
                tags: vec!["gpu".into(), "cuda\n".into()],
                ollama: Some(Ollama {
                    version: "0.9".into(),
                    models: vec![OllamaModel {
                        name: "qwen3:32b".into(),
                        size_bytes: 20_000_000_000,
                    }],
                }),
                ..Capabilities::default()
            }),
            metrics: Some(Metrics {
                cpu_pct: Some(12.5),
                gpu_pct: Some(40.0),
                gpus: vec![
                    GpuUsage {
                        index: 1,
                        vram_used_gb: Some(10.0),
                        ..GpuUsage::default()
                    },
                    GpuUsage {
                        index: 0,
                        vram_used_gb: None,
                        ..GpuUsage::default()
                    },
                ],
                ..Metrics::default()
            }),
            nats: Some(NatsLink {
                server: "n1".into(),
                cluster: Some("c\"1".into()),
                domain: None,
                rtt_ms: Some(0.7),
            }),
            gpu_health: Some(NodeGpuHealth {
                state: "warning".into(),
                gpus: vec![GpuState {
                    index: 0,
                    state: "failed".into(),
                    quarantined: false,
                    ..GpuState::default()
                }],
            }),
            gpu_cordons: vec![GpuCordon {
                index: 2,
                reason: "fan".into(),
                ..GpuCordon::default()
            }],
            ..NodeRecord::default()
        }
    }

    #[test]
    fn a_view_of_a_stored_record_reads_as_the_record_does() {
        for record in [full(), NodeRecord::default()] {
            let value = schemas::record::encode_record(&record);
            let view = RecordView::of(&value).expect("a stored record reads");
            assert_eq!(reading(&view), reading(&record));
        }
        // The record above counts one GPU (1: 0 failed, 2 cordoned), 30 GB free.
        let facts = crate::catalog::Facts::of(&full());
        assert_eq!((facts.gpus, facts.free_vram_gb), (1, 30.0));
    }

    #[test]
    fn a_view_borrows_plain_strings_and_copies_escaped_ones() {
        let value =
            br#"{"node_id":"a","status":"online","labels":{"k":"v\"w"},"x":[1,{"y":null}]}"#;
        let view = RecordView::of(value).expect("reads");
        assert!(matches!(view.node_id.0, Cow::Borrowed("a")));
        let (key, escaped) = &view.labels.0[0];
        assert!(matches!(key.0, Cow::Borrowed("k")));
        assert!(matches!(&escaped.0, Cow::Owned(v) if v == "v\"w"));
    }

    #[test]
    fn a_value_that_is_not_a_record_is_refused() {
        for value in [
            &b"{"[..],
            b"[1]",
            b"{\"labels\":[]}",
            b"{\"node_id\":5}",
            b"null",
            b"{\"node_id\":\"\xff\"}",
        ] {
            assert!(
                RecordView::of(value).is_err(),
                "{:?}",
                std::str::from_utf8(value)
            );
        }
    }
}
