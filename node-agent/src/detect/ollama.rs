//! A local Ollama: version, installed models with sizes, loaded models.

use std::time::Duration;

use schemas::{Ollama, OllamaModel};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use tracing::debug;

/// How long one Ollama request may take.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Asks an Ollama server over HTTP.
#[derive(Debug)]
pub struct OllamaClient {
    base: String,
    http: ureq::Agent,
}

#[derive(Debug, Deserialize)]
struct Version {
    version: String,
}

#[derive(Debug, Deserialize)]
struct ModelList {
    #[serde(default)]
    models: Vec<ModelEntry>,
}

#[derive(Debug, Deserialize)]
struct ModelEntry {
    name: String,
    #[serde(default)]
    size: u64,
}

impl OllamaClient {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:11434`).
    pub fn new(base: &str) -> Self {
        let http: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(true)
            .build()
            .into();
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http,
        }
    }

    fn get<T: DeserializeOwned>(&self, path: &str) -> Option<T> {
        let url = format!("{}{path}", self.base);
        match self.http.get(&url).call() {
            Ok(mut response) => match response.body_mut().read_json() {
                Ok(value) => Some(value),
                Err(e) => {
                    debug!(%url, error = %e, "Ollama answered something else");
                    None
                }
            },
            Err(e) => {
                debug!(%url, error = %e, "Ollama not reachable");
                None
            }
        }
    }

    /// Version and installed models, or `None` when Ollama does not answer.
    pub fn describe(&self) -> Option<Ollama> {
        let list: ModelList = self.get("/api/tags")?;
        let version = self
            .get::<Version>("/api/version")
            .map(|v| v.version)
            .unwrap_or_default();
        Some(Ollama {
            version: clean(version),
            models: clean_models(list.models)
                .into_iter()
                .map(|m| OllamaModel {
                    name: m.name,
                    size_bytes: m.size,
                })
                .collect(),
        })
    }

    /// Models loaded in memory now (`/api/ps`); empty when Ollama does not answer.
    pub fn loaded(&self) -> Vec<String> {
        self.get::<ModelList>("/api/ps")
            .map(|l| clean_models(l.models).into_iter().map(|m| m.name).collect())
            .unwrap_or_default()
    }
}

fn clean(text: String) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(schemas::validate::MAX_TEXT_LEN)
        .collect()
}

/// Sorted, deduplicated, within the contract's limits.
fn clean_models(mut models: Vec<ModelEntry>) -> Vec<ModelEntry> {
    models.retain(|m| {
        !m.name.is_empty()
            && m.name.len() <= schemas::validate::MAX_TEXT_LEN
            && !m.name.chars().any(char::is_control)
    });
    models.sort_by(|a, b| a.name.cmp(&b.name));
    models.dedup_by(|a, b| a.name == b.name);
    models.truncate(schemas::validate::MAX_LIST_LEN);
    models
}

/// A fake Ollama for unit tests: a thread answering HTTP requests by path.
#[cfg(test)]
pub(crate) mod fake {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// Serves `routes` (path → JSON body; 404 otherwise) until the test ends.
    pub fn serve(routes: Vec<(&'static str, String)>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]);
                let path = request.split_whitespace().nth(1).unwrap_or("").to_owned();
                let reply = match routes.iter().find(|(p, _)| *p == path) {
                    Some((_, body)) => format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    None => "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned(),
                };
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_models_with_sizes_and_loaded_models() {
        let url = fake::serve(vec![
            ("/api/version", r#"{"version":"0.6.2"}"#.to_owned()),
            (
                "/api/tags",
                r#"{"models":[{"name":"qwen3:8b","size":5200000000,"digest":"x"},{"name":"mistral:7b","size":4100000000},{"name":"qwen3:8b","size":5200000000}]}"#.to_owned(),
            ),
            ("/api/ps", r#"{"models":[{"name":"qwen3:8b","size_vram":6000000000}]}"#.to_owned()),
        ]);
        let client = OllamaClient::new(&url);
        let ollama = client.describe().expect("answers");
        assert_eq!(ollama.version, "0.6.2");
        let models: Vec<(&str, u64)> = ollama
            .models
            .iter()
            .map(|m| (m.name.as_str(), m.size_bytes))
            .collect();
        assert_eq!(
            models,
            vec![("mistral:7b", 4_100_000_000), ("qwen3:8b", 5_200_000_000)]
        );
        assert_eq!(client.loaded(), vec!["qwen3:8b"]);
    }

    #[test]
    fn an_old_ollama_without_version_or_ps_still_lists_models() {
        let url = fake::serve(vec![(
            "/api/tags",
            r#"{"models":[{"name":"llama3:8b"}]}"#.to_owned(),
        )]);
        let client = OllamaClient::new(&url);
        let ollama = client.describe().expect("answers");
        assert_eq!(ollama.version, "");
        assert_eq!(ollama.models.len(), 1);
        assert!(client.loaded().is_empty());
    }

    #[test]
    fn unreachable_or_garbage_is_none() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        assert!(OllamaClient::new(&format!("http://127.0.0.1:{port}"))
            .describe()
            .is_none());
        let url = fake::serve(vec![("/api/tags", "not json".to_owned())]);
        assert!(OllamaClient::new(&url).describe().is_none());
    }
}
