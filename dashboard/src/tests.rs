//! The server against a real socket: what it serves and what it refuses.

use super::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn page() -> PageConfig {
    PageConfig {
        ws_url: "ws://127.0.0.1:9222".to_owned(),
        creds: Some("-----BEGIN NATS USER JWT-----".to_owned()),
        names: PageNames::from(&subjects::Names::default()),
    }
}

async fn start() -> (SocketAddr, CancellationToken) {
    let dashboard = Dashboard::bind("127.0.0.1:0".parse().expect("addr"), &page())
        .await
        .expect("bind");
    let addr = dashboard.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn(dashboard.serve(stop.clone()));
    (addr, stop)
}

/// One HTTP/1.1 request; the status line and the whole response.
async fn request(addr: SocketAddr, method: &str, path: &str, host: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let text = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(text.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    (status, response)
}

#[tokio::test]
async fn serves_the_page_and_its_config() {
    let (addr, stop) = start().await;
    let host = addr.to_string();
    let (status, body) = request(addr, "GET", "/", &host).await;
    assert_eq!(status, 200);
    assert!(body.contains("text/html"), "{body}");
    assert!(body.contains("<title>Fleet</title>"), "{body}");
    let (status, body) = request(addr, "GET", "/nodes/registry", &host).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = request(
        addr,
        "GET",
        "/config.json",
        &format!("localhost:{}", addr.port()),
    )
    .await;
    assert_eq!(status, 200);
    assert!(
        body.contains("\"ws_url\":\"ws://127.0.0.1:9222\""),
        "{body}"
    );
    assert!(body.contains("\"bucket\":\"nodes\""), "{body}");
    assert!(body.contains("no-store"), "{body}");
    stop.cancel();
}

#[tokio::test]
async fn serves_files_only() {
    let (addr, stop) = start().await;
    let host = addr.to_string();
    assert_eq!(request(addr, "POST", "/", &host).await.0, 405);
    assert_eq!(request(addr, "DELETE", "/config.json", &host).await.0, 405);
    assert_eq!(request(addr, "GET", "/api/nodes", &host).await.0, 404);
    assert_eq!(request(addr, "GET", "/../Cargo.toml", &host).await.0, 404);
    let (status, head) = request(addr, "HEAD", "/", &host).await;
    assert_eq!(status, 200);
    assert!(!head.contains("<title>"), "HEAD has no body: {head}");
    stop.cancel();
}

#[tokio::test]
async fn a_loopback_server_refuses_other_host_names() {
    let (addr, stop) = start().await;
    let (status, body) = request(addr, "GET", "/config.json", "evil.example:9207").await;
    assert_eq!(status, 421);
    assert!(!body.contains("JWT"), "{body}");
    stop.cancel();
}

#[test]
fn loopback_names() {
    for host in [
        "localhost",
        "localhost:9207",
        "127.0.0.1:9207",
        "127.0.0.2",
        "[::1]:9207",
        "LOCALHOST",
    ] {
        assert!(is_loopback_host(host), "{host}");
    }
    for host in [
        "",
        "example.com",
        "10.0.0.1:9207",
        "[2001:db8::1]:80",
        "localhost.evil.com",
    ] {
        assert!(!is_loopback_host(host), "{host}");
    }
}

#[test]
fn a_ws_url_must_be_a_websocket_url() {
    let mut p = page();
    for bad in [
        "nats://127.0.0.1:4222",
        "ws://",
        "127.0.0.1:9222",
        "ws://a b",
    ] {
        p.ws_url = bad.to_owned();
        assert!(
            matches!(p.validate(), Err(DashboardError::BadWsUrl(_))),
            "{bad}"
        );
    }
    p.ws_url = "wss://fleet.example:443".to_owned();
    assert!(p.validate().is_ok());
}
