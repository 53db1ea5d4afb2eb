//! Local services to watch: a name and a TCP address to probe.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// A service the agent reports as up when its TCP address accepts a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceProbe {
    /// The name heartbeats report (e.g. `ollama`, `vllm`).
    pub name: String,
    /// `host:port` to connect to (e.g. `127.0.0.1:11434`).
    pub address: String,
}

impl ServiceProbe {
    /// Checks the name and that the address has the `host:port` form.
    pub fn check(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 63
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(format!(
                "service name {:?}: 1 to 63 characters of A-Z a-z 0-9 - _ .",
                self.name
            ));
        }
        let port_ok = self
            .address
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(format!(
                "service {}: address {:?} is not host:port",
                self.name, self.address
            ));
        }
        Ok(())
    }

    /// Whether the service accepts a TCP connection now (blocking, bounded).
    pub fn is_up(&self) -> bool {
        let addrs: Vec<SocketAddr> = match self.address.to_socket_addrs() {
            Ok(addrs) => addrs.collect(),
            Err(_) => return false,
        };
        addrs
            .iter()
            .any(|a| TcpStream::connect_timeout(a, PROBE_TIMEOUT).is_ok())
    }
}

/// The names of the services that are up, in configuration order.
pub fn probe_all(services: &[ServiceProbe]) -> Vec<String> {
    services
        .iter()
        .filter(|s| s.is_up())
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

    #[test]
    fn bad_probes_are_refused() {
        let probe = |name: &str, address: &str| ServiceProbe {
            name: name.into(),
            address: address.into(),
        };
        assert!(probe("ollama", "127.0.0.1:11434").check().is_ok());
        assert!(probe("ollama", "localhost:11434").check().is_ok());
        assert!(probe("", "127.0.0.1:1").check().is_err());
        assert!(probe("bad name", "127.0.0.1:1").check().is_err());
        assert!(probe("x", "127.0.0.1").check().is_err());
        assert!(probe("x", ":80").check().is_err());
        assert!(probe("x", "h:99999").check().is_err());
    }
}
