//! The discovery bench's records, shared with the snapshot bench: the
//! simulator's registrations as the registry stores them, with metrics.

use fleet_sim::generate::{self, Rng};
use schemas::{GpuUsage, NodeRecord};

/// Seed of the generated fleet, so runs are comparable.
pub const SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// A realistic record: the simulator's registration of node `i` (labels,
/// tags, GPUs, models), as the registry would store it, with metrics.
pub fn record(i: u64, rng: &mut Rng) -> NodeRecord {
    let event = generate::register(&format!("node-{i:07}"), i, 1, SEED);
    let gpus = event
        .capabilities
        .as_ref()
        .map_or(0, |c| c.gpus.len() as u32);
    let status = if rng.chance(95) {
        "online"
    } else if rng.chance(50) {
        "degraded"
    } else {
        "offline"
    };
    let mut metrics = generate::heartbeat(&event.node_id, 2, rng)
        .metrics
        .unwrap_or_default();
    metrics.gpus = (0..gpus)
        .map(|index| GpuUsage {
            index,
            util_pct: Some(rng.below(100) as f64),
            vram_used_gb: Some(rng.below(16) as f64),
            ..GpuUsage::default()
        })
        .collect();
    metrics.gpu_pct = (gpus > 0).then(|| rng.below(100) as f64);
    NodeRecord {
        node_id: event.node_id,
        node_name: event.node_name,
        role: event.role,
        labels: event.labels,
        hostname: event.hostname,
        ip_address: event.ip_address,
        local_ip: event.local_ip,
        capabilities: event.capabilities,
        agent_version: event.agent_version,
        seq: event.seq,
        status: status.into(),
        last_heartbeat: "2026-11-22T10:00:00.000Z".into(),
        registered_at: "2026-11-20T08:00:00.000Z".into(),
        updated_at: "2026-11-22T10:00:00.000Z".into(),
        metrics: Some(metrics),
        models_loaded: Vec::new(),
        services: vec!["ollama".into()],
        caps_hash: event.caps_hash,
        ..NodeRecord::default()
    }
}
