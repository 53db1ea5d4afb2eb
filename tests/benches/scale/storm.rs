//! The registration storm of the scale bench: every node registers again
//! within 3 s, as every agent does after a NATS restart.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use fleet_sim::{SimConfig, Simulator};
use fleet_tests::AlertTap;
use schemas::codec::{encode, HEADER_CONTENT_TYPE};
use serde::Serialize;

use super::{encoding, lag, publish_pipelined, registry_consumer, settle, start};

/// A registration storm: what every agent does after a NATS restart.
#[derive(Debug, Serialize, serde::Deserialize)]
pub struct Storm {
    pub nodes: u64,
    /// Seconds over which the registrations were published.
    pub published_s: f64,
    /// Most events waiting at once, and the oldest one's age then.
    pub peak_backlog: u64,
    pub peak_lag_s: f64,
    /// From the storm's start until the oldest unprocessed event was under
    /// 1 s old again.
    pub worked_off_s: f64,
    /// Degraded or offline alerts (no node crashed).
    pub false_alarms: usize,
    /// `node.registered` alerts (every node was known).
    pub repeated_registrations: usize,
}

impl Storm {
    /// Prints the figures, and gives them back.
    pub fn said(self) -> Self {
        println!(
            "registration storm: {} nodes registered again in {:.1} s on top of their heartbeats; peak backlog {} events ({:.1} s old); worked off (oldest unprocessed < 1 s) {:.1} s after it began; false alarms {}, repeated node.registered {}",
            self.nodes,
            self.published_s,
            self.peak_backlog,
            self.peak_lag_s,
            self.worked_off_s,
            self.false_alarms,
            self.repeated_registrations
        );
        self
    }
}

/// `nodes` at a 30 s interval, settled; then every one registers again
/// within 3 s (as every agent does after a NATS restart), on top of the
/// steady heartbeats.
pub async fn storm(nodes: u64) -> Storm {
    let interval = Duration::from_secs(30);
    let degraded_after = interval * 3;
    let (server, registry, client) = start(degraded_after, None).await;
    let js = jetstream::new(server.client().await);
    let mut consumer = registry_consumer(&js).await;
    let config = SimConfig {
        nodes,
        heartbeat_interval: interval,
        encoding: encoding(),
        duration: Duration::from_secs(900),
        seed: 5,
        ..SimConfig::default()
    };
    let simulator = std::sync::Arc::new(Simulator::new(
        config,
        jetstream::new(server.client().await),
    ));
    let sim = {
        let simulator = simulator.clone();
        tokio::spawn(async move { simulator.run().await })
    };
    tokio::time::sleep(interval * 2).await;
    settle(&js, &mut consumer, Duration::from_secs(600)).await;
    fleet_tests::wait_total(&client, nodes, Duration::from_secs(600)).await;
    println!("  storm: {nodes} nodes registered and settled; every one registers again within 3 s");

    let mut alerts = AlertTap::new(client.nats()).await;
    let encoding = encoding();
    let started = Instant::now();
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            // 30 waves, 100 ms apart: the whole fleet within 3 s.
            let per_wave = nodes.div_ceil(30);
            for wave in 0..30u64 {
                let due = started + Duration::from_millis(100 * wave);
                tokio::time::sleep_until(due.into()).await;
                let events = (wave * per_wave..((wave + 1) * per_wave).min(nodes)).map(|n| {
                    let event =
                        fleet_sim::generate::register(&format!("sim-{n}"), n, 1_000_000 + n, 5);
                    let mut headers = async_nats::HeaderMap::new();
                    headers.insert(HEADER_CONTENT_TYPE, encoding.content_type());
                    (
                        format!("node.sim-{n}.events"),
                        Some(headers),
                        encode(&event, encoding).into(),
                    )
                });
                publish_pipelined(&js, events).await;
            }
            started.elapsed().as_secs_f64()
        })
    };
    let (mut peak_backlog, mut peak_lag_s) = (0, 0.0f64);
    let mut worked_off_s = f64::NAN;
    let mut published_s = f64::NAN;
    while started.elapsed() < Duration::from_secs(300) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if published_s.is_nan() && publisher.is_finished() {
            published_s = started.elapsed().as_secs_f64();
        }
        if let Some((waiting, age)) = lag(&js, &mut consumer).await {
            peak_backlog = peak_backlog.max(waiting);
            peak_lag_s = peak_lag_s.max(age);
            if !published_s.is_nan() && age < 1.0 {
                worked_off_s = started.elapsed().as_secs_f64();
                break;
            }
        }
    }
    let published_s = publisher.await.unwrap_or(published_s);
    let seen = alerts.collect_for(Duration::from_secs(5)).await;
    let count = |kinds: &[&str]| {
        seen.iter()
            .filter(|a| kinds.contains(&a.r#type.as_str()))
            .count()
    };
    simulator.stop();
    let _ = sim.await;
    drop(registry);
    Storm {
        nodes,
        published_s,
        peak_backlog,
        peak_lag_s,
        worked_off_s,
        false_alarms: count(&["node.degraded", "node.offline"]),
        repeated_registrations: count(&["node.registered"]),
    }
}
