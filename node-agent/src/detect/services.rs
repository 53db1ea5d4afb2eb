//! Local services to watch: a name and a TCP address to probe.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

pub use schemas::profile::ServiceProbe;

/// Whether a service accepts a TCP connection now (blocking, bounded).
fn is_up(service: &ServiceProbe) -> bool {
    let addrs: Vec<SocketAddr> = match service.address.to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(_) => return false,
    };
    addrs
        .iter()
        .any(|a| TcpStream::connect_timeout(a, PROBE_TIMEOUT).is_ok())
}
/// The names of the services that are up, in configuration order.
pub fn probe_all(services: &[ServiceProbe]) -> Vec<String> {
    services
        .iter()
        .filter(|s| is_up(s))
        .map(|s| s.name.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn up_and_down_services() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let up = listener.local_addr().expect("addr");
        let down = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("addr");
        let services = vec![
            ServiceProbe {
                name: "vllm".into(),
                address: up.to_string(),
            },
            ServiceProbe {
                name: "comfyui".into(),
                address: down.to_string(),
            },
        ];
        assert_eq!(probe_all(&services), vec!["vllm"]);
    }
}
