//! What this machine can do (capabilities) and how busy it is (metrics).
//!
//! Detection never fails the agent: what cannot be read is left out.
//! - [`gpu`]: NVIDIA (NVML), AMD (sysfs), Apple Silicon.
//! - [`ollama`]: the local Ollama's version, models and loaded models.
//! - [`services`]: local services probed over TCP.

pub mod gpu;
pub mod ollama;
pub mod services;

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;

use schemas::{Capabilities, Metrics};
use sysinfo::{Disks, System};

use crate::config::AgentConfig;
use gpu::GpuProbe;
use ollama::OllamaClient;
use services::ServiceProbe;

/// Bytes in a GiB, the unit of every `*_gb` field.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// What a heartbeat reports besides the node id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// CPU, RAM, disk, load and GPU usage.
    pub metrics: Metrics,
    /// Models loaded in Ollama now.
    pub models_loaded: Vec<String>,
    /// Configured services that are up.
    pub services: Vec<String>,
}

/// Reads capabilities and usage; keeps the state CPU usage needs between
/// two samples and the GPUs found by the last detection.
#[derive(Debug)]
pub struct Detector {
    system: Option<System>,
    disks: Option<Disks>,
    ollama: OllamaClient,
    gpus: GpuProbe,
    services: Vec<ServiceProbe>,
}

impl Detector {
    /// A detector configured from the agent's configuration.
    pub fn new(config: &AgentConfig) -> Self {
        let mut system = System::new().ok();
        if let Some(system) = system.as_mut() {
            system.refresh_cpu_all();
            system.refresh_memory();
        }
        Self {
            system,
            disks: Disks::new_with_refreshed_list().ok(),
            ollama: OllamaClient::new(&config.ollama_url),
            gpus: GpuProbe::new(&config.sysfs_root, &config.procfs_root, config.nvml),
            services: config.services.clone(),
        }
    }

    /// Replaces the services probed (the role's profile changed).
    pub fn set_services(&mut self, services: Vec<ServiceProbe>) {
        self.services = services;
    }

    /// Detects capabilities now (blocking: reads sysfs, asks NVML and Ollama).
    pub fn capabilities(&mut self) -> Capabilities {
        let mut caps = Capabilities {
            os: std::env::consts::OS.to_owned(),
            os_version: System::os_version().unwrap_or_default(),
            arch: std::env::consts::ARCH.to_owned(),
            ..Capabilities::default()
        };
        if let Some(system) = self.system.as_mut() {
            system.refresh_memory();
            caps.cpu_model = system
                .cpus()
                .first()
                .map(|c| c.brand().trim().to_owned())
                .unwrap_or_default();
            caps.cpu_cores = u32::try_from(system.cpus().len()).unwrap_or(u32::MAX);
            caps.ram_gb = round1(system.total_memory() as f64 / GIB);
        }
        if let Some((total, _)) = self.root_disk() {
            caps.disk_gb = round1(total as f64 / GIB);
        }
        caps.gpus = self.gpus.detect(caps.ram_gb);
        if !caps.gpus.is_empty() {
            caps.tags.push("gpu".to_owned());
            caps.tags.extend(caps.gpus.iter().map(|g| g.vendor.clone()));
        }
        if let Some(ollama) = self.ollama.describe() {
            caps.models = ollama.models.iter().map(|m| m.name.clone()).collect();
            caps.ollama = Some(ollama);
            caps.tags.push("ollama".to_owned());
        }
        caps.tags.sort();
        caps.tags.dedup();
        caps
    }

    /// Samples usage now: CPU since the previous sample, RAM, disk, load,
    /// GPUs, loaded models and services.
    pub fn sample(&mut self) -> Sample {
        let mut metrics = Metrics::default();
        if let Some(system) = self.system.as_mut() {
            system.refresh_cpu_usage();
            system.refresh_memory();
            metrics.cpu_pct = Some(round1(
                f64::from(system.global_cpu_usage()).clamp(0.0, 100.0),
            ));
            let total = system.total_memory();
            if total > 0 {
                metrics.ram_pct = Some(round1(
                    (system.used_memory() as f64 / total as f64 * 100.0).clamp(0.0, 100.0),
                ));
            }
        }
        if let Some((total, available)) = self.root_disk() {
            if total > 0 {
                let used = total.saturating_sub(available) as f64;
                metrics.disk_pct = Some(round1((used / total as f64 * 100.0).clamp(0.0, 100.0)));
            }
        }
        if let Ok(load) = System::load_average() {
            if load.one.is_finite() && load.one >= 0.0 {
                metrics.load_1m = Some((load.one * 100.0).round() / 100.0);
            }
        }
        metrics.gpus = self.gpus.usage();
        let utils: Vec<f64> = metrics.gpus.iter().filter_map(|g| g.util_pct).collect();
        if !utils.is_empty() {
            metrics.gpu_pct = Some(round1(utils.iter().sum::<f64>() / utils.len() as f64));
        }
        Sample {
            metrics,
            models_loaded: self.ollama.loaded(),
            services: services::probe_all(&self.services),
        }
    }

    /// Total and available bytes of the disk holding `/`.
    fn root_disk(&mut self) -> Option<(u64, u64)> {
        let disks = self.disks.as_mut()?;
        disks.refresh(true);
        disks
            .iter()
            .filter(|d| Path::new("/").starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map(|d| (d.total_space(), d.available_space()))
    }
}

/// The local address used to reach the first NATS server of `nats_url`
/// (no packet is sent: a UDP connect only picks a route).
pub fn local_ip_towards(nats_url: &str) -> Option<IpAddr> {
    let first = nats_url.split(',').next()?.trim();
    let without_scheme = first.split_once("://").map_or(first, |(_, rest)| rest);
    let host_port = without_scheme
        .rsplit_once('@')
        .map_or(without_scheme, |(_, hp)| hp);
    let host_port = host_port.split('/').next()?;
    let target = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:4222")
    };
    let addr = target.to_socket_addrs().ok()?.next()?;
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(addr).ok()?;
    socket.local_addr().ok().map(|a| a.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(ollama_url: &str, sys: &Path) -> AgentConfig {
        AgentConfig {
            ollama_url: ollama_url.to_owned(),
            sysfs_root: sys.to_owned(),
            procfs_root: sys.join("proc"),
            nvml: false,
            ..AgentConfig::default()
        }
    }

    #[test]
    fn capabilities_combine_machine_gpus_and_ollama_with_derived_tags() {
        let sys = tempfile::tempdir().expect("tmp");
        gpu::fixture::amd_card(sys.path(), 0, Some("AMD Radeon PRO W7900"));
        let url = ollama::fake::serve(vec![
            (
                "/api/tags",
                r#"{"models":[{"name":"qwen3:8b","size":5}]}"#.to_owned(),
            ),
            ("/api/ps", r#"{"models":[{"name":"qwen3:8b"}]}"#.to_owned()),
        ]);
        let mut detector = Detector::new(&config(&url, sys.path()));
        let caps = detector.capabilities();
        assert_eq!(caps.tags, vec!["amd", "gpu", "ollama"]);
        assert_eq!(caps.models, vec!["qwen3:8b"]);
        assert_eq!(caps.gpus.len(), 1);
        assert!(caps.cpu_cores >= 1 && caps.ram_gb > 0.0);
        assert_eq!(caps.arch, std::env::consts::ARCH);
        let sample = detector.sample();
        assert_eq!(sample.models_loaded, vec!["qwen3:8b"]);
        assert_eq!(sample.metrics.gpu_pct, Some(37.0));
        for v in [
            sample.metrics.cpu_pct,
            sample.metrics.ram_pct,
            sample.metrics.disk_pct,
        ]
        .into_iter()
        .flatten()
        {
            assert!((0.0..=100.0).contains(&v), "{v}");
        }
    }

    #[test]
    fn nothing_to_find_means_no_tags() {
        let sys = tempfile::tempdir().expect("tmp");
        let mut detector = Detector::new(&config("http://127.0.0.1:9", sys.path()));
        let caps = detector.capabilities();
        assert!(caps.tags.is_empty() && caps.models.is_empty() && caps.gpus.is_empty());
        assert!(caps.ollama.is_none());
        let sample = detector.sample();
        assert_eq!(sample.metrics.gpu_pct, None);
        assert!(sample.metrics.ram_pct.is_some());
    }

    #[test]
    fn local_ip_of_loopback_is_loopback() {
        let ip = local_ip_towards("nats://127.0.0.1:4222").expect("ip");
        assert!(ip.is_loopback());
        assert_eq!(
            local_ip_towards("nats://user:pw@127.0.0.1").map(|i| i.is_loopback()),
            Some(true)
        );
    }
}
