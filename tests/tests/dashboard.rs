//! The fleet page in a real headless Chromium, against a real nats-server
//! (its WebSocket listener), registry and agents: it lists the fleet,
//! follows it live without a reload, narrows with the selector box (the
//! registry's answer), shows a killed agent go degraded then offline, works
//! with a reader's credentials in auth mode, and says plainly when it
//! cannot connect. Screenshots land in target/screenshots/.

use std::collections::BTreeSet;
use std::time::Duration;

use fleet_auth::{AuthDir, Role};
use fleet_tests::browser::{serve_dashboard, websocket_config, Browser};
use fleet_tests::{agent_node_id, free_port, spawn_agent, spawn_registry, NatsServer};
use serde_json::{json, Value};
use subjects::NodeId;

const LIMIT: Duration = Duration::from_secs(30);

fn agent_args<'a>(labels: &'a str, role: &'a str) -> Vec<&'a str> {
    vec![
        "--heartbeat-interval",
        "500ms",
        "--labels",
        labels,
        "--role",
        role,
        "--ollama-url",
        "http://127.0.0.1:9",
    ]
}

/// The set of (id, status) rows, once it equals `expected`.
async fn wait_rows(browser: &Browser, what: &str, expected: &[(&str, &str)]) {
    let want: BTreeSet<(String, String)> = expected
        .iter()
        .map(|(id, s)| ((*id).to_owned(), (*s).to_owned()))
        .collect();
    fleet_tests::eventually(what, LIMIT, || async {
        let rows: BTreeSet<(String, String)> = browser.rows().await.into_iter().collect();
        (rows == want).then_some(())
    })
    .await;
}

async fn status_of(browser: &Browser, id: &str) -> Value {
    browser
        .eval(&format!(
            "const r = document.querySelector('[data-node-id=\"{id}\"][data-status]'); return r ? r.dataset.status : null;"
        ))
        .await
}

async fn type_selector(browser: &Browser, text: &str) {
    browser
        .eval(&format!(
            "const i = document.querySelector('input[data-role=\"selector\"]'); i.value = {}; i.dispatchEvent(new Event('input')); return true;",
            json!(text)
        ))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_the_fleet_live() {
    let ws = free_port();
    let server = NatsServer::start_with_config(&websocket_config(ws)).await;
    let _registry = spawn_registry(
        &server,
        "registry",
        &["--degraded-after", "3s", "--offline-after", "7s"],
        &[
            ("NODE_REGISTRY_SWEEP_INTERVAL", "100ms"),
            ("NODE_REGISTRY_DISCONNECT_GRACE", "0s"),
        ],
    );
    let _gpu = spawn_agent(&server, "gpu", &agent_args("gpu,region=eu", "inference"));
    let _ws1 = spawn_agent(&server, "ws1", &agent_args("region=eu", "worker"));
    let mut laptop = spawn_agent(&server, "laptop", &agent_args("region=us,spot", "worker"));
    let gpu = agent_node_id(&server, "gpu").await;
    let ws1 = agent_node_id(&server, "ws1").await;
    let lap = agent_node_id(&server, "laptop").await;
    let (_dashboard, url) = serve_dashboard(ws, None, server.temp_path("dashboard.log")).await;
    let browser = Browser::start().await;
    browser.goto(&url).await;

    // The page lists the three agents, online, and counts them.
    wait_rows(
        &browser,
        "three online rows",
        &[(&gpu, "online"), (&ws1, "online"), (&lap, "online")],
    )
    .await;
    browser
        .wait_for(
            "the summary to count 3 online",
            LIMIT,
            "const e = document.querySelector('[data-summary=\"online\"]'); return e && e.textContent === '3';",
        )
        .await;
    assert_eq!(
        browser.eval("return window.fleetDashboard.error;").await,
        Value::Null
    );

    // A new agent appears without a reload (the marker survives).
    browser
        .eval("window.__sameDocument = true; return true;")
        .await;
    let _edge = spawn_agent(&server, "edge", &agent_args("region=ap", "edge"));
    let edge = agent_node_id(&server, "edge").await;
    wait_rows(
        &browser,
        "the new agent's row",
        &[
            (&gpu, "online"),
            (&ws1, "online"),
            (&lap, "online"),
            (&edge, "online"),
        ],
    )
    .await;
    assert_eq!(
        browser.eval("return window.__sameDocument === true;").await,
        json!(true)
    );
    browser.screenshot("dashboard-fleet").await;

    // The selector box narrows the table to the registry's answer.
    type_selector(&browser, "region=eu").await;
    wait_rows(
        &browser,
        "only the eu nodes",
        &[(&gpu, "online"), (&ws1, "online")],
    )
    .await;
    // A whole discovery query as JSON works too.
    type_selector(&browser, r#"{"selector": "gpu", "role": "inference"}"#).await;
    wait_rows(&browser, "only the gpu node", &[(&gpu, "online")]).await;
    // A bad selector says why (the registry's coded error) and keeps the rows.
    type_selector(&browser, "region in (eu").await;
    browser
        .wait_for(
            "the selector error",
            LIMIT,
            "const i = document.querySelector('input[data-role=\"selector\"]'); return i.dataset.state === 'invalid' && document.getElementById('selector-state').textContent;",
        )
        .await;
    type_selector(&browser, "").await;
    wait_rows(
        &browser,
        "all rows again",
        &[
            (&gpu, "online"),
            (&ws1, "online"),
            (&lap, "online"),
            (&edge, "online"),
        ],
    )
    .await;

    // Node detail: capabilities and the audit timeline (its register event).
    browser
        .eval(&format!(
            "document.querySelector('[data-node-id=\"{gpu}\"]').click(); return true;"
        ))
        .await;
    browser
        .wait_for(
            "the node's timeline",
            LIMIT,
            "const t = document.querySelector('[data-role=\"timeline\"]'); return t && t.textContent.includes('register');",
        )
        .await;

    // A drain shows live: the row in maintenance, the detail says why and
    // until when; a resume brings it back with a node.resumed alert.
    let client = fleet_tests::registry_client(&server).await;
    fleet_tests::admin_json(&client, "drain", &gpu, Some("PSU swap"))
        .await
        .expect("drain");
    fleet_tests::eventually("the drained row", LIMIT, || async {
        (status_of(&browser, &gpu).await == json!("maintenance")).then_some(())
    })
    .await;
    browser
        .wait_for(
            "the drain's reason in the detail",
            LIMIT,
            "const m = document.querySelector('[data-role=\"maintenance\"]'); return !!m && m.textContent.includes('PSU swap');",
        )
        .await;
    fleet_tests::admin_json(&client, "resume", &gpu, None)
        .await
        .expect("resume");
    fleet_tests::eventually("the resumed row", LIMIT, || async {
        (status_of(&browser, &gpu).await == json!("online")).then_some(())
    })
    .await;
    browser
        .wait_for(
            "a node.resumed alert in the feed",
            LIMIT,
            &format!(
                "return !!document.querySelector('[data-alert-type=\"node.resumed\"][data-alert-node=\"{gpu}\"]');"
            ),
        )
        .await;

    // A killed agent's row goes degraded, then offline, live; its
    // heartbeat age keeps ticking; the feed shows both alerts.
    laptop.kill9();
    fleet_tests::eventually("the laptop's row to go degraded", LIMIT, || async {
        (status_of(&browser, &lap).await == json!("degraded")).then_some(())
    })
    .await;
    let age_script =
        format!("return document.querySelector('[data-node-id=\"{lap}\"] .age').textContent;");
    let first = browser.eval(&age_script).await;
    fleet_tests::eventually("the heartbeat age to tick", LIMIT, || async {
        (browser.eval(&age_script).await != first).then_some(())
    })
    .await;
    fleet_tests::eventually("the laptop's row to go offline", LIMIT, || async {
        (status_of(&browser, &lap).await == json!("offline")).then_some(())
    })
    .await;
    for kind in ["node.degraded", "node.offline"] {
        browser
            .wait_for(
                &format!("a {kind} alert in the feed"),
                LIMIT,
                &format!(
                    "return !!document.querySelector('[data-alert-type=\"{kind}\"][data-alert-node=\"{lap}\"]');"
                ),
            )
            .await;
    }
    browser
        .wait_for(
            "the summary to count 3 online and 1 offline",
            LIMIT,
            "const n = (s) => document.querySelector(`[data-summary=\"${s}\"]`).textContent; return n('online') === '3' && n('offline') === '1';",
        )
        .await;
    browser.screenshot("dashboard-offline").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_with_reader_credentials_and_nothing_more() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let auth = AuthDir::init(tmp.path()).expect("auth init");
    let id = NodeId::parse("node-a").expect("id");
    auth.issue(&Role::Node(id, None), "node-a", None)
        .expect("issue");
    let ws = free_port();
    let server = NatsServer::start_with_auth(tmp.path(), &websocket_config(ws)).await;
    let registry_creds = auth.creds_path("registry").display().to_string();
    let _registry = spawn_registry(&server, "registry", &["--creds", &registry_creds], &[]);
    let node_creds = auth.creds_path("node-a").display().to_string();
    let mut args = agent_args("gpu,region=eu", "inference");
    args.extend(["--node-id", "node-a", "--creds", &node_creds]);
    let _agent = spawn_agent(&server, "a", &args);

    let reader = auth.creds_path("reader");
    let (_dashboard, url) =
        serve_dashboard(ws, Some(&reader), server.temp_path("dashboard.log")).await;
    let browser = Browser::start().await;
    browser.goto(&url).await;
    wait_rows(
        &browser,
        "the node's row, as a reader",
        &[("node-a", "online")],
    )
    .await;
    // Live heartbeats arrive (the reader may follow node events).
    browser
        .wait_for(
            "the alerts replay and the node's registration alert",
            LIMIT,
            "return !!document.querySelector('[data-alert-type=\"node.registered\"][data-alert-node=\"node-a\"]');",
        )
        .await;
    type_selector(&browser, "region=eu").await;
    browser
        .wait_for(
            "the selector answered for a reader",
            LIMIT,
            "return document.querySelector('input[data-role=\"selector\"]').dataset.state === 'applied';",
        )
        .await;
    browser
        .eval("document.querySelector('[data-node-id=\"node-a\"]').click(); return true;")
        .await;
    browser
        .wait_for(
            "the node's timeline, as a reader",
            LIMIT,
            "const t = document.querySelector('[data-role=\"timeline\"]'); return t && t.textContent.includes('register');",
        )
        .await;
    assert_eq!(
        browser.eval("return window.fleetDashboard.error;").await,
        Value::Null
    );
    browser.screenshot("dashboard-reader").await;
    // Everything the page did was within the reader's permissions.
    let log = std::fs::read_to_string(server.temp_path("nats-server.log")).unwrap_or_default();
    let violations: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("Permissions Violation"))
        .collect();
    assert!(
        violations.is_empty(),
        "the page hit permissions: {violations:#?}"
    );

    // Without credentials, the server refuses, and the page says so with
    // the URL it tried.
    let (_open, open_url) = serve_dashboard(ws, None, server.temp_path("dashboard-open.log")).await;
    browser.goto(&open_url).await;
    let message = browser
        .wait_for(
            "the refusal message",
            LIMIT,
            "const b = document.querySelector('[data-role=\"connection-error\"]'); return b && !b.hidden && b.textContent;",
        )
        .await;
    let message = message.as_str().unwrap_or_default().to_owned();
    assert!(
        message.contains(&format!("ws://127.0.0.1:{ws}")),
        "{message}"
    );
    assert!(
        message.to_lowercase().contains("authorization"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_said_plainly() {
    // Nothing listens on this port.
    let ws = free_port();
    let dir = tempfile::tempdir().expect("tempdir");
    let (_dashboard, url) = serve_dashboard(ws, None, dir.path().join("dashboard.log")).await;
    let browser = Browser::start().await;
    browser.goto(&url).await;
    let message = browser
        .wait_for(
            "the connection error",
            LIMIT,
            "const b = document.querySelector('[data-role=\"connection-error\"]'); return b && !b.hidden && b.textContent;",
        )
        .await;
    let message = message.as_str().unwrap_or_default().to_owned();
    assert!(message.contains("Cannot connect to NATS"), "{message}");
    assert!(
        message.contains(&format!("ws://127.0.0.1:{ws}")),
        "{message}"
    );
    assert_eq!(
        browser
            .eval("return document.getElementById('connection').dataset.connection;")
            .await,
        json!("failed")
    );
    browser.screenshot("dashboard-refused").await;
}
