//! What this machine can do (capabilities) and how busy it is (metrics).
//!
//! Detection never fails the agent: what cannot be read is left out.

use std::net::{IpAddr, ToSocketAddrs, UdpSocket};
use std::path::Path;
use std::time::Duration;

use schemas::{Capabilities, Metrics};
use serde::Deserialize;
use sysinfo::{Disks, System};
use tracing::debug;

/// How long one Ollama request may take.
const OLLAMA_TIMEOUT: Duration = Duration::from_secs(2);
/// Bytes in a GiB, the unit of every `*_gb` field.
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;

/// Reads capabilities and metrics; keeps the state CPU usage needs between
/// two samples.
#[derive(Debug)]
pub struct Detector {
    system: Option<System>,
    disks: Option<Disks>,
    ollama_url: String,
    http: ureq::Agent,
}

/// Ollama's `GET /api/tags` answer, as far as we read it.
#[derive(Debug, Deserialize)]
struct OllamaTags {
    #[serde(default)]
    models: Vec<OllamaModel>,
}

#[derive(Debug, Deserialize)]
struct OllamaModel {
    name: String,
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

impl Detector {
    /// A detector asking Ollama at `ollama_url`.
    pub fn new(ollama_url: &str) -> Self {
        let mut system = System::new().ok();
        if let Some(system) = system.as_mut() {
            system.refresh_cpu_all();
            system.refresh_memory();
        }
        let http: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(OLLAMA_TIMEOUT))
            .http_status_as_error(true)
            .build()
            .into();
        Self {
            system,
            disks: Disks::new_with_refreshed_list().ok(),
            ollama_url: ollama_url.trim_end_matches('/').to_owned(),
            http,
        }
    }

    /// Detects capabilities now (blocking: asks Ollama over HTTP).
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
        if let Some(models) = self.ollama_models() {
            caps.models = models;
            caps.tags.push("ollama".to_owned());
        }
        caps.tags.sort();
        caps.tags.dedup();
        caps
    }

    /// Samples usage now: CPU since the previous sample, RAM, disk, load.
    pub fn metrics(&mut self) -> Metrics {
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
        metrics
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

    /// Installed Ollama models, or `None` when Ollama does not answer.
    pub fn ollama_models(&self) -> Option<Vec<String>> {
        let url = format!("{}/api/tags", self.ollama_url);
        let tags: OllamaTags = match self.http.get(&url).call() {
            Ok(mut response) => match response.body_mut().read_json() {
                Ok(tags) => tags,
                Err(e) => {
                    debug!(%url, error = %e, "Ollama answered something else");
                    return None;
                }
            },
            Err(e) => {
                debug!(%url, error = %e, "Ollama not reachable");
                return None;
            }
        };
        let mut models: Vec<String> = tags
            .models
            .into_iter()
            .map(|m| m.name)
            .filter(|n| !n.is_empty() && n.len() <= schemas::validate::MAX_TEXT_LEN)
            .collect();
        models.sort();
        models.dedup();
        models.truncate(schemas::validate::MAX_LIST_LEN);
        Some(models)
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
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server answering every request with `body`.
    fn fake_ollama(body: &'static str, requests: usize) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming().take(requests) {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 2048];
                let _ = stream.read(&mut buf);
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        format!("http://{addr}")
    }

    #[test]
    fn ollama_models_are_read_sorted_and_tagged() {
        let url = fake_ollama(
            r#"{"models":[{"name":"qwen3:8b","size":5},{"name":"mistral:7b"},{"name":"qwen3:8b"}]}"#,
            1,
        );
        let mut detector = Detector::new(&url);
        let caps = detector.capabilities();
        assert_eq!(caps.models, vec!["mistral:7b", "qwen3:8b"]);
        assert!(caps.tags.contains(&"ollama".to_owned()));
        assert!(caps.cpu_cores >= 1);
        assert!(caps.ram_gb > 0.0);
        assert_eq!(caps.arch, std::env::consts::ARCH);
    }

    #[test]
    fn unreachable_ollama_means_no_models_and_no_tag() {
        // A port that was just free: nothing listens there.
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let mut detector = Detector::new(&format!("http://127.0.0.1:{port}"));
        let caps = detector.capabilities();
        assert!(caps.models.is_empty());
        assert!(!caps.tags.contains(&"ollama".to_owned()));
    }

    #[test]
    fn garbage_from_ollama_is_no_models() {
        let url = fake_ollama("this is not json", 1);
        assert_eq!(Detector::new(&url).ollama_models(), None);
    }

    #[test]
    fn metrics_are_percentages() {
        let mut detector = Detector::new("http://127.0.0.1:9");
        let m = detector.metrics();
        for v in [m.cpu_pct, m.ram_pct, m.disk_pct].into_iter().flatten() {
            assert!((0.0..=100.0).contains(&v), "{v}");
        }
        assert!(m.ram_pct.is_some());
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
