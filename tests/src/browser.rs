//! A real headless Chromium, driven over WebDriver (Debian's `chromium` and
//! `chromium-driver`, installed by `scripts/chromium.sh`), for the
//! dashboard's tests and benchmark.
//!
//! The WebDriver client is the handful of W3C endpoints the tests use
//! (session, navigate, execute script, screenshot), over the `ureq` HTTP
//! client the workspace already has: a full client crate (fantoccini)
//! would add a second HTTP stack and a TLS stack for a loopback protocol.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::{eventually, free_port, workspace_root};

/// A Chromium session; the browser and its driver end when it is dropped.
#[derive(Debug)]
pub struct Browser {
    driver: Child,
    agent: ureq::Agent,
    session: String,
    _profile: tempfile::TempDir,
}

fn executable(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.is_file(),
        "{} not found: run scripts/chromium.sh (installs Debian's chromium and chromium-driver), or set {env}",
        path.display()
    );
    path
}

/// One WebDriver call; the `value` of its answer, or the driver's error.
fn call(
    agent: &ureq::Agent,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, String> {
    let response = match (method, body) {
        ("GET", _) => agent.get(url).call(),
        ("DELETE", _) => agent.delete(url).call(),
        (_, Some(body)) => agent.post(url).send_json(body),
        (_, None) => agent.post(url).send_json(json!({})),
    };
    let mut response = response.map_err(|e| format!("{method} {url}: {e}"))?;
    let ok = response.status().is_success();
    let answer: Value = response
        .body_mut()
        .with_config()
        .limit(256 * 1024 * 1024)
        .read_json()
        .map_err(|e| format!("{method} {url}: reading the answer: {e}"))?;
    let value = answer.get("value").cloned().unwrap_or(Value::Null);
    if ok {
        Ok(value)
    } else {
        Err(format!("{method} {url}: {value}"))
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    pub async fn start() -> Self {
        let driver_bin = executable("CHROMEDRIVER", "/usr/bin/chromedriver");
        let chromium = executable("CHROMIUM", "/usr/bin/chromium");
        let port = free_port();
        let driver = Command::new(&driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .new_agent();
        let base = format!("http://127.0.0.1:{port}");
        let probe = agent.clone();
        let status = format!("{base}/status");
        eventually("chromedriver to be ready", Duration::from_secs(20), || {
            let probe = probe.clone();
            let status = status.clone();
            async move {
                tokio::task::spawn_blocking(move || call(&probe, "GET", &status, None).ok())
                    .await
                    .ok()
                    .flatten()
                    .filter(|v| v["ready"] == json!(true))
            }
        })
        .await;
        let profile = tempfile::tempdir().expect("a browser profile directory");
        // The flags a sandboxed, offline machine needs (no GPU, no sandbox
        // as root, no calls home) and precise heap figures for the bench.
        let args = [
            "--headless=new".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--enable-precise-memory-info".to_owned(),
            "--js-flags=--expose-gc".to_owned(),
            "--window-size=1600,1000".to_owned(),
            format!("--user-data-dir={}", profile.path().display()),
        ];
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {"binary": chromium.display().to_string(), "args": args},
        }}});
        let session_url = format!("{base}/session");
        let create = agent.clone();
        let created = tokio::task::spawn_blocking(move || {
            call(&create, "POST", &session_url, Some(&capabilities))
        })
        .await
        .expect("the WebDriver call ran")
        .unwrap_or_else(|e| panic!("starting a Chromium session: {e}"));
        let id = created["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        Self {
            driver,
            agent,
            session: format!("{base}/session/{id}"),
            _profile: profile,
        }
    }

    async fn send(
        &self,
        method: &'static str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let agent = self.agent.clone();
        let url = format!("{}{path}", self.session);
        tokio::task::spawn_blocking(move || call(&agent, method, &url, body.as_ref()))
            .await
            .map_err(|e| e.to_string())?
    }

    /// Opens `url` (returns when the page has loaded).
    pub async fn goto(&self, url: &str) {
        self.send("POST", "/url", Some(json!({"url": url})))
            .await
            .unwrap_or_else(|e| panic!("opening {url}: {e}"));
    }

    /// Runs `script` (a function body; `return` gives the value) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.send(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": []})),
        )
        .await
        .unwrap_or_else(|e| panic!("running a script in the page: {e}"))
    }

    /// Waits until `script` returns something other than null or false,
    /// and returns it.
    pub async fn wait_for(&self, what: &str, limit: Duration, script: &str) -> Value {
        eventually(what, limit, || async {
            let value = self.eval(script).await;
            (!value.is_null() && value != json!(false)).then_some(value)
        })
        .await
    }

    /// Each node row in the DOM: (data-node-id, data-status).
    pub async fn rows(&self) -> Vec<(String, String)> {
        let value = self
            .eval("return [...document.querySelectorAll('[data-node-id][data-status]')].map(r => [r.dataset.nodeId, r.dataset.status]);")
            .await;
        serde_json::from_value(value).unwrap_or_default()
    }

    /// Saves a PNG of the window to `target/screenshots/<name>.png`; its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let shot = self
            .send("GET", "/screenshot", None)
            .await
            .unwrap_or_else(|e| panic!("taking a screenshot: {e}"));
        let png = base64_decode(shot.as_str().unwrap_or_default());
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("screenshots directory");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("write the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = call(&self.agent, "DELETE", &self.session, None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where the browser tests leave their screenshots.
pub fn screenshots_dir() -> PathBuf {
    workspace_root().join("target").join("screenshots")
}

/// Standard base64 (WebDriver's screenshot encoding).
fn base64_decode(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .expect("the screenshot is base64")
}

/// `nodectl dashboard` serving the page for nats-server's WebSocket at
/// `ws_port`, with `creds` for the page; its URL once it listens.
pub async fn serve_dashboard(
    ws_port: u16,
    creds: Option<&Path>,
    log: PathBuf,
) -> (crate::Proc, String) {
    let port = free_port();
    let mut args = vec![
        "dashboard".to_owned(),
        "--listen".to_owned(),
        format!("127.0.0.1:{port}"),
        "--ws-url".to_owned(),
        format!("ws://127.0.0.1:{ws_port}"),
    ];
    if let Some(creds) = creds {
        args.push("--creds".to_owned());
        args.push(creds.display().to_string());
    }
    let proc = crate::Proc::spawn(
        "nodectl dashboard",
        &crate::workspace_bin("nodectl"),
        &args,
        &[],
        log,
    );
    crate::wait_listening("the dashboard to listen", port, Duration::from_secs(20)).await;
    (proc, format!("http://127.0.0.1:{port}/"))
}

/// The nats-server configuration of a WebSocket listener on `port`.
pub fn websocket_config(port: u16) -> String {
    format!("websocket {{\n  listen: \"127.0.0.1:{port}\"\n  no_tls: true\n}}\n")
}
