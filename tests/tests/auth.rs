//! Auth mode against a real nats-server in operator (JWT) mode, with the
//! material `nodectl auth init` makes: a node's credentials touch only what
//! is its own; revoked, expired and absent credentials are refused.

use std::time::Duration;

use async_nats::jetstream;
use fleet_auth::{AuthDir, Role};
use fleet_tests::{run_bin, NatsServer};
use futures::StreamExt;
use subjects::NodeId;
use tokio::sync::mpsc;

/// A connection as user `name` of `auth`, and the server's error lines.
async fn connect_as(
    server: &NatsServer,
    auth: &AuthDir,
    name: &str,
    inbox: &str,
) -> Result<(async_nats::Client, mpsc::UnboundedReceiver<String>), async_nats::ConnectError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let options = async_nats::ConnectOptions::with_credentials_file(auth.creds_path(name))
        .await
        .expect("read creds")
        .custom_inbox_prefix(inbox)
        .max_reconnects(Some(1))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        });
    let client = options.connect(server.url()).await?;
    Ok((client, rx))
}

/// Waits for a permissions violation naming `subject`.
async fn violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let found = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(line) = errors.recv().await {
            if line.to_lowercase().contains("permissions violation") && line.contains(subject) {
                return line;
            }
        }
        String::new()
    })
    .await;
    assert!(
        found.as_ref().is_ok_and(|l| !l.is_empty()),
        "no permissions violation for {subject}: {found:?}"
    );
}

struct Setup {
    _tmp: tempfile::TempDir,
    auth: AuthDir,
    server: NatsServer,
}

async fn setup() -> Setup {
    let tmp = tempfile::tempdir().expect("tempdir");
    let auth = AuthDir::init(tmp.path()).expect("auth init");
    // node-a is of role gpu: it may read that profile (and only that one).
    for (node, role) in [("node-a", Some("gpu")), ("node-b", None)] {
        let id = NodeId::parse(node).expect("id");
        auth.issue(&Role::Node(id, role.map(str::to_owned)), node, None)
            .expect("issue");
    }
    let server = NatsServer::start_with_auth(tmp.path(), "").await;
    // The registry's material: the streams and buckets exist.
    let (registry, _) = connect_as(&server, &auth, "registry", "_INBOX")
        .await
        .expect("registry connects");
    let js = jetstream::new(registry);
    fleet_tests::eventually("JetStream for the account", Duration::from_secs(20), || {
        let js = js.clone();
        async move {
            registry_kv::provision(
                &js,
                &subjects::Names::default(),
                &registry_kv::provision::StreamSettings::default(),
            )
            .await
            .ok()
        }
    })
    .await;
    Setup {
        _tmp: tmp,
        auth,
        server,
    }
}

/// The registry with its own credentials, and with the account's signing
/// key (serving joins) when `joins`.
fn start_registry(
    s: &Setup,
    joins: bool,
    extra_args: &[&str],
    extra_env: &[(&str, &str)],
) -> fleet_tests::Proc {
    let creds = s.auth.creds_path("registry").display().to_string();
    let key = s.auth.path().join("fleet-signing.nk").display().to_string();
    let account = s.auth.account();
    let mut args = vec!["--creds", creds.as_str()];
    args.extend_from_slice(extra_args);
    let mut envs = extra_env.to_vec();
    if joins {
        envs.push(("NODE_REGISTRY_JOIN_SIGNING_KEY", key.as_str()));
        envs.push(("NODE_REGISTRY_JOIN_ACCOUNT", account.as_str()));
    }
    fleet_tests::spawn_registry_on(
        &s.server.url(),
        s.server.temp_path("registry.log"),
        "registry",
        &args,
        &envs,
    )
}

#[tokio::test]
async fn a_node_touches_only_what_is_its_own() {
    let s = setup().await;
    let (a, mut errors) = connect_as(&s.server, &s.auth, "node-a", "_INBOX_node-a")
        .await
        .expect("node-a connects");
    let js = jetstream::new(a.clone());

    // Its own events: stored.
    let event = br#"{"type":"heartbeat","node_id":"node-a"}"#;
    js.publish("node.node-a.events", event.as_slice().into())
        .await
        .expect("publish")
        .await
        .expect("its own event is stored");

    // Another node's events: refused by the server, never stored.
    a.publish(
        "node.node-b.events",
        br#"{"type":"heartbeat","node_id":"node-b"}"#.as_slice().into(),
    )
    .await
    .expect("sent");
    violation(&mut errors, "node.node-b.events").await;

    // Alerts, and any bucket (KV writes are publishes on $KV.<bucket>.>).
    a.publish(subjects::SYSTEM_BROADCAST, "{}".into())
        .await
        .expect("sent");
    violation(&mut errors, subjects::SYSTEM_BROADCAST).await;
    a.publish("$KV.nodes.node-a", "{}".into())
        .await
        .expect("sent");
    violation(&mut errors, "$KV.nodes.node-a").await;
    a.publish("$JS.API.STREAM.DELETE.NODE_EVENTS", "".into())
        .await
        .expect("sent");
    violation(&mut errors, "$JS.API.STREAM.DELETE.NODE_EVENTS").await;

    // Another node's tasks: the subscription is refused.
    let _theirs = a.subscribe("node.node-b.tasks").await.expect("sent");
    violation(&mut errors, "node.node-b.tasks").await;
    // Its own tasks arrive.
    let mut mine = a.subscribe("node.node-a.tasks").await.expect("subscribe");
    // No registry serves discovery here: the request's "no responders"
    // comes back once the server has the subscription.
    fleet_tests::subscribed_via(&a, subjects::REGISTRY_DISCOVER).await;
    let (admin, _) = connect_as(&s.server, &s.auth, "admin", "_INBOX")
        .await
        .expect("admin connects");
    admin
        .publish("node.node-a.tasks", "ping".into())
        .await
        .expect("admin sends a task");
    admin.flush().await.expect("flush");
    let got = tokio::time::timeout(Duration::from_secs(5), mine.next()).await;
    assert!(matches!(got, Ok(Some(_))), "its own task did not arrive");

    // Nothing but its own event reached the stream.
    let (registry, _) = connect_as(&s.server, &s.auth, "registry", "_INBOX")
        .await
        .expect("registry connects");
    let mut stream = jetstream::new(registry)
        .get_stream(subjects::STREAM_NODE_EVENTS)
        .await
        .expect("stream");
    let info = stream.info().await.expect("info");
    assert_eq!(info.state.messages, 1, "only node-a's own event is stored");
}

/// The last value of `subject` in the `profiles` bucket by direct get, as
/// the agent reads it.
async fn direct_get(client: &async_nats::Client, subject: &str) -> Result<String, String> {
    let stream = jetstream::new(client.clone())
        .get_stream_no_info(subjects::kv_stream(subjects::BUCKET_PROFILES))
        .await
        .map_err(|e| e.to_string())?;
    let message = tokio::time::timeout(
        Duration::from_secs(3),
        stream.direct_get_last_for_subject(subject),
    )
    .await
    .map_err(|_| "no answer".to_owned())?
    .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&message.payload).into_owned())
}

#[tokio::test]
async fn a_node_reads_only_its_roles_profile_and_writes_none() {
    let s = setup().await;
    let (admin, _) = connect_as(&s.server, &s.auth, "admin", "_INBOX")
        .await
        .expect("admin connects");
    let profiles = jetstream::new(admin)
        .get_key_value(subjects::BUCKET_PROFILES)
        .await
        .expect("the profiles bucket");
    profiles
        .put("gpu", r#"{"labels":{"tier":"a"}}"#.into())
        .await
        .expect("an admin writes profiles");
    profiles
        .put("cpu", r#"{"labels":{"tier":"secret"}}"#.into())
        .await
        .expect("put");
    let (a, mut errors) = connect_as(&s.server, &s.auth, "node-a", "_INBOX_node-a")
        .await
        .expect("node-a connects");
    let own = subjects::profile_subject("gpu");
    let other = subjects::profile_subject("cpu");

    // Its own role's profile, the way the agent reads it: the value by
    // direct get, and its changes by subscription.
    let value = direct_get(&a, &own).await.expect("its own profile");
    assert!(value.contains("\"a\""), "{value}");
    let mut changes = a.subscribe(own.clone()).await.expect("subscribe");
    fleet_tests::subscribed_via(&a, subjects::REGISTRY_DISCOVER).await;
    profiles
        .put("gpu", r#"{"labels":{"tier":"b"}}"#.into())
        .await
        .expect("put");
    let heard = tokio::time::timeout(Duration::from_secs(5), changes.next()).await;
    assert!(matches!(heard, Ok(Some(_))), "the change was not heard");

    // Another role's: refused by the server, every way.
    let denied = direct_get(&a, &other).await;
    assert!(denied.is_err(), "read another role's profile: {denied:?}");
    violation(
        &mut errors,
        &format!("$JS.API.DIRECT.GET.KV_profiles.{other}"),
    )
    .await;
    let _theirs = a.subscribe(other.clone()).await.expect("sent");
    violation(&mut errors, &other).await;
    let stream = subjects::kv_stream(subjects::BUCKET_PROFILES);
    for api in [
        format!("$JS.API.DIRECT.GET.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.x.{own}"),
    ] {
        a.publish(api.clone(), "{}".into()).await.expect("sent");
        violation(&mut errors, &api).await;
    }
    // And it writes no profile, not even its own.
    a.publish(own.clone(), "{}".into()).await.expect("sent");
    violation(&mut errors, &own).await;
    assert_eq!(
        profiles.get("gpu").await.expect("get").as_deref(),
        Some(br#"{"labels":{"tier":"b"}}"#.as_slice())
    );
    // A node without a role reads none.
    let (b, mut b_errors) = connect_as(&s.server, &s.auth, "node-b", "_INBOX_node-b")
        .await
        .expect("node-b connects");
    assert!(direct_get(&b, &own).await.is_err());
    violation(&mut b_errors, &own).await;
}

#[tokio::test]
async fn absent_revoked_and_expired_credentials_are_refused() {
    let s = setup().await;
    // No credentials.
    let anonymous = async_nats::connect(s.server.url()).await;
    assert!(anonymous.is_err(), "an anonymous client got in");

    // Expired: issued for one second.
    let id = NodeId::parse("node-brief").expect("id");
    s.auth
        .issue(
            &Role::Node(id, None),
            "node-brief",
            Some(Duration::from_secs(1)),
        )
        .expect("issue");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let expired = connect_as(&s.server, &s.auth, "node-brief", "_INBOX_node-brief").await;
    assert!(expired.is_err(), "expired credentials got in");

    // Revoked: node-b works, is revoked, and is refused from then on.
    let (b, _) = connect_as(&s.server, &s.auth, "node-b", "_INBOX_node-b")
        .await
        .expect("node-b connects before revocation");
    drop(b);
    let account = s.auth.revoke("node-b").expect("revoke");
    let (sys, _) = connect_as(&s.server, &s.auth, "sys", "_INBOX")
        .await
        .expect("system user connects");
    let reply = sys
        .request(subjects::SYS_CLAIMS_UPDATE, account.into())
        .await
        .expect("claims update");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).expect("reply JSON");
    assert!(reply.get("error").is_none(), "{reply}");
    let revoked = connect_as(&s.server, &s.auth, "node-b", "_INBOX_node-b").await;
    assert!(revoked.is_err(), "revoked credentials got in");
    // The others are untouched.
    connect_as(&s.server, &s.auth, "node-a", "_INBOX_node-a")
        .await
        .expect("node-a still connects");
}

#[tokio::test]
async fn the_registry_and_an_agent_run_with_their_own_credentials() {
    let s = setup().await;
    let registry = start_registry(&s, false, &[], &[("NODE_REGISTRY_SWEEP_INTERVAL", "100ms")]);
    let agent = fleet_tests::spawn_agent_on(
        &s.server.url(),
        &s.server.temp_path("agent-a"),
        &[
            "--node-id",
            "node-a",
            "--creds",
            &s.auth.creds_path("node-a").display().to_string(),
            "--heartbeat-interval",
            "500ms",
            "--ollama-url",
            "http://127.0.0.1:9",
        ],
    );
    // A reader finds it; the reader can do nothing else.
    let (reader, mut errors) = connect_as(&s.server, &s.auth, "reader", "_INBOX")
        .await
        .expect("reader connects");
    let client = fleet_client::Client::new(reader.clone(), subjects::Names::default());
    fleet_tests::eventually(
        "the agent to be discovered",
        Duration::from_secs(30),
        || async {
            let reply = client
                .discover(&schemas::DiscoverRequest::default())
                .await
                .ok()?;
            reply
                .nodes
                .iter()
                .any(|n| n.node_id == "node-a" && n.metrics.is_some())
                .then_some(())
        },
    )
    .await;
    reader
        .publish("node.node-a.tasks", "{}".into())
        .await
        .expect("sent");
    violation(&mut errors, "node.node-a.tasks").await;
    reader
        .publish(subjects::REGISTRY_ADMIN, "{}".into())
        .await
        .expect("sent");
    violation(&mut errors, subjects::REGISTRY_ADMIN).await;
    // The registry can reach the node (a task round trip through the
    // node's own inbox rules).
    let (admin, _) = connect_as(&s.server, &s.auth, "admin", "_INBOX")
        .await
        .expect("admin connects");
    let reply = admin
        .request("node.node-a.tasks", r#"{"type":"ping"}"#.into())
        .await
        .expect("the node answers a task");
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON");
    assert_eq!(reply["node_id"], "node-a", "{reply}");
    // An admin may cordon.
    let admin_client = fleet_client::Client::new(admin.clone(), subjects::Names::default());
    let answer = fleet_tests::admin_json(&admin_client, "cordon", "node-a", None)
        .await
        .expect("an admin cordons");
    assert_eq!(answer["status"], "maintenance", "{answer}");
    drop((registry, agent));
}

/// `node-agent join --no-run`: (success, stderr).
fn try_join(url: &str, state: &str, token: &str) -> (bool, String) {
    let (ok, _, err) = run_bin(
        "node-agent",
        &[
            "--nats-url",
            url,
            "--state-dir",
            state,
            "join",
            "--token",
            token,
            "--no-run",
        ],
    );
    (ok, err)
}

/// `node-agent join --no-run` that must fail: its stderr.
fn refused_join(url: &str, state: &str, token: &str) -> String {
    let (ok, err) = try_join(url, state, token);
    assert!(!ok, "the join was accepted");
    err
}

/// `nodectl token ...` as the admin: (success, stdout, stderr).
fn nodectl_token(s: &Setup, args: &[&str]) -> (bool, String, String) {
    let url = s.server.url();
    let admin = s.auth.creds_path("admin").display().to_string();
    let mut all = vec!["--nats-url", &url, "--creds", &admin, "token"];
    all.extend_from_slice(args);
    run_bin("nodectl", &all)
}

/// The token records `nodectl token list -o json` shows: id → state.
fn listed_tokens(s: &Setup) -> std::collections::BTreeMap<String, String> {
    let (ok, out, err) = nodectl_token(s, &["list", "-o", "json"]);
    assert!(ok, "{err}");
    out.lines()
        .map(|line| {
            let row: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
            assert!(row.get("secret_sha256").is_none(), "{line}");
            (
                row["id"].as_str().expect("id").to_owned(),
                row["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

/// `nodectl token create` as the admin: (success, token, stderr).
fn create_token(s: &Setup, role: &str, labels: &str, ttl: &str) -> (bool, String, String) {
    let url = s.server.url();
    let admin = s.auth.creds_path("admin").display().to_string();
    let dir = s.auth.path().display().to_string();
    run_bin(
        "nodectl",
        &[
            "--nats-url",
            &url,
            "--creds",
            &admin,
            "token",
            "--dir",
            &dir,
            "create",
            "--role",
            role,
            "--labels",
            labels,
            "--ttl",
            ttl,
        ],
    )
}

/// A one-hour token, once the registry has provisioned `registry_meta`.
async fn first_token(s: &Setup, role: &str, labels: &str) -> String {
    fleet_tests::eventually("a join token", Duration::from_secs(30), || async {
        let (ok, token, _) = create_token(s, role, labels, "1h");
        ok.then_some(token)
    })
    .await
}

#[tokio::test]
async fn a_join_token_is_exchanged_once_for_a_nodes_own_credentials() {
    let s = setup().await;
    let dir = s.auth.path().display().to_string();
    let url = s.server.url();
    let _registry = start_registry(&s, true, &[], &[]);
    let admin = s.auth.creds_path("admin").display().to_string();
    // The registry provisions registry_meta; a token can be stored then.
    let token = first_token(&s, "inference", "gpu,region=eu").await;
    assert!(token.starts_with("fjt1_"), "{token}");

    // The bootstrap credentials inside the token can do nothing but join.
    let decoded = fleet_auth::token::JoinToken::decode(&token).expect("token");
    let (tx, mut errors) = mpsc::unbounded_channel();
    let bootstrap = async_nats::ConnectOptions::new()
        .credentials(&decoded.creds)
        .expect("creds")
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(&url)
        .await
        .expect("bootstrap connects");
    bootstrap
        .publish("node.node-x.events", "{}".into())
        .await
        .expect("sent");
    violation(&mut errors, "node.node-x.events").await;

    // The join: the agent gets its own credentials, 0600, and runs with
    // the role and labels the token granted.
    let state = s.server.temp_path("joined");
    let state_arg = state.display().to_string();
    let _agent = fleet_tests::Proc::spawn(
        "joined-agent",
        &fleet_tests::workspace_bin("node-agent"),
        &[
            "--nats-url",
            &url,
            "--state-dir",
            &state_arg,
            "--heartbeat-interval",
            "500ms",
            "--ollama-url",
            "http://127.0.0.1:9",
            "join",
            "--token",
            &token,
        ]
        .map(str::to_owned),
        &[],
        s.server.temp_path("joined-agent.log"),
    );
    let (reader, _) = connect_as(&s.server, &s.auth, "reader", "_INBOX")
        .await
        .expect("reader connects");
    let client = fleet_client::Client::new(reader, subjects::Names::default());
    let node = fleet_tests::eventually(
        "the joined node to be discovered",
        Duration::from_secs(30),
        || async {
            let reply = client
                .discover(&schemas::DiscoverRequest::default())
                .await
                .ok()?;
            reply
                .nodes
                .into_iter()
                .find(|n| n.role.as_deref() == Some("inference"))
        },
    )
    .await;
    assert_eq!(node.labels.get("region").map(String::as_str), Some("eu"));
    assert_eq!(node.labels.get("gpu").map(String::as_str), Some("true"));
    // Its credentials let it read its role's profile: an admin sets one and
    // the joined agent applies it.
    let profile = s.server.temp_path("inference.toml");
    std::fs::write(&profile, "[labels]\ntier = \"joined\"\n").expect("profile file");
    let profile = profile.display().to_string();
    let (ok, _, err) = run_bin(
        "nodectl",
        &[
            "--nats-url",
            &url,
            "--creds",
            &admin,
            "profile",
            "set",
            "inference",
            &profile,
        ],
    );
    assert!(ok, "{err}");
    fleet_tests::eventually(
        "the joined node on its profile",
        Duration::from_secs(30),
        || async {
            let record = client.get(&node.node_id).await.ok()??;
            (record.labels.get("tier").map(String::as_str) == Some("joined")
                && record.profile_revision.is_some())
            .then_some(())
        },
    )
    .await;
    // A reader cannot write one.
    let reader_creds = s.auth.creds_path("reader").display().to_string();
    let (ok, _, _) = run_bin(
        "nodectl",
        &[
            "--nats-url",
            &url,
            "--creds",
            &reader_creds,
            "profile",
            "set",
            "inference",
            &profile,
        ],
    );
    assert!(!ok, "a reader wrote a profile");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(state.join("node.creds"))
            .expect("node.creds")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    // Signed events: a captured event published again (by a client with
    // publish rights on the subject: here the node's own credentials) is
    // refused as a replay; one signed by another key is refused as forged.
    let subject = format!("node.{}.events", node.node_id);
    let (registry_conn, _) = connect_as(&s.server, &s.auth, "registry", "_INBOX")
        .await
        .expect("registry connects");
    let stream = jetstream::new(registry_conn)
        .get_stream(subjects::STREAM_NODE_EVENTS)
        .await
        .expect("stream");
    let captured = stream
        .get_last_raw_message_by_subject(&subject)
        .await
        .expect("a stored event");
    let captured_headers = captured.headers.clone();
    assert!(
        captured_headers.get(fleet_auth::SIGNATURE_HEADER).is_some(),
        "the joined agent signs its events"
    );
    let node_creds = std::fs::read_to_string(state.join("node.creds")).expect("node.creds");
    let as_node = async_nats::ConnectOptions::new()
        .credentials(&node_creds)
        .expect("creds")
        .custom_inbox_prefix(fleet_auth::node_inbox_prefix(
            &subjects::NodeId::parse(&node.node_id).expect("id"),
        ))
        .connect(&url)
        .await
        .expect("the node's credentials connect");
    let js_node = jetstream::new(as_node);
    let mut replay = async_nats::HeaderMap::new();
    for (name, values) in captured_headers.iter() {
        let name: &str = name.as_ref();
        if name != "Nats-Msg-Id" {
            for value in values {
                replay.append(name, value.as_str());
            }
        }
    }
    js_node
        .publish_with_headers(subject.clone(), replay, captured.payload.clone())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let mut forged: serde_json::Value =
        serde_json::from_slice(&captured.payload).expect("event JSON");
    forged["seq"] = serde_json::json!(u64::MAX / 2);
    forged["type"] = serde_json::json!("heartbeat");
    let forged = serde_json::to_vec(&forged).expect("JSON");
    let mut headers = async_nats::HeaderMap::new();
    let stranger = nkeys::KeyPair::new_user();
    headers.insert(
        fleet_auth::SIGNATURE_HEADER,
        fleet_auth::sign_event(&stranger, &forged)
            .expect("sign")
            .as_str(),
    );
    js_node
        .publish_with_headers(subject.clone(), headers, forged.into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    let (admin_conn, _) = connect_as(&s.server, &s.auth, "admin", "_INBOX")
        .await
        .expect("admin connects");
    fleet_tests::eventually(
        "the replay and the forgery to be refused",
        Duration::from_secs(20),
        || async {
            let reply = admin_conn
                .request(format!("$SRV.STATS.{}", subjects::SERVICE_NAME), "".into())
                .await
                .ok()?;
            let stats: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
            let data = &stats["endpoints"][0]["data"];
            (data["events_replayed"].as_u64() >= Some(1)
                && data["events_forged"].as_u64() >= Some(1))
            .then_some(())
        },
    )
    .await;
    let record = client
        .get(&node.node_id)
        .await
        .expect("get")
        .expect("record");
    assert!(record.seq < Some(u64::MAX / 2), "the forged seq was taken");

    // Revoking the joined node: its credentials are refused from then on.
    let (ok, _, err) = run_bin(
        "nodectl",
        &[
            "--nats-url",
            &url,
            "--creds",
            &admin,
            "auth",
            "--dir",
            &dir,
            "revoke",
            &node.node_id,
        ],
    );
    assert!(ok, "{err}");
    let refused = async_nats::ConnectOptions::new()
        .credentials(&node_creds)
        .expect("creds")
        .connect(&url)
        .await;
    assert!(refused.is_err(), "a revoked joined node got in");

    // The same token again: refused, clearly.
    let other = s.server.temp_path("second").display().to_string();
    let err = refused_join(&url, &other, &token);
    assert!(err.contains("already used"), "{err}");

    // An expired token: refused, clearly.
    let (ok, expiring, err) = create_token(&s, "inference", "gpu,region=eu", "1s");
    assert!(ok, "{err}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let err = refused_join(&url, &other, &expiring);
    assert!(err.contains("expired"), "{err}");
    // A forged one (right id, wrong secret): refused.
    let mut forged = fleet_auth::token::JoinToken::decode(&expiring).expect("token");
    forged.secret = "guess".into();
    let forged = forged.encode().expect("encode");
    let err = refused_join(&url, &other, &forged);
    assert!(err.contains("does not match"), "{err}");
}

#[tokio::test]
async fn join_tokens_are_listed_revoked_and_forgotten_after_their_retention() {
    let s = setup().await;
    let url = s.server.url();
    // No retention: a token's record goes as soon as it expires.
    let _registry = start_registry(&s, true, &[], &[("NODE_REGISTRY_TOKEN_RETENTION", "0s")]);
    let used = first_token(&s, "worker", "").await;
    let (ok, revoked, err) = create_token(&s, "worker", "", "1h");
    assert!(ok, "{err}");
    let (ok, expiring, err) = create_token(&s, "worker", "", "1s");
    assert!(ok, "{err}");
    let id = |token: &str| {
        fleet_auth::token::JoinToken::decode(token)
            .expect("token")
            .id
    };

    let state = s.server.temp_path("joined").display().to_string();
    let (ok, err) = try_join(&url, &state, &used);
    assert!(ok, "{err}");
    let (ok, out, err) = nodectl_token(&s, &["revoke", &id(&revoked)]);
    assert!(ok && out.contains("revoked"), "{out} {err}");
    let other = s.server.temp_path("other").display().to_string();
    let err = refused_join(&url, &other, &revoked);
    assert!(err.contains("revoked"), "{err}");
    // A used token cannot be revoked: its node's credentials can.
    let (ok, _, err) = nodectl_token(&s, &["revoke", &used]);
    assert!(!ok && err.contains("was used"), "{err}");

    // The expired token is forgotten by the registry; the others are kept
    // until they expire too, each with its state.
    let listed = fleet_tests::eventually(
        "the expired token's record to be forgotten",
        Duration::from_secs(20),
        || async {
            let listed = listed_tokens(&s);
            (!listed.contains_key(&id(&expiring))).then_some(listed)
        },
    )
    .await;
    assert_eq!(listed.get(&id(&used)).map(String::as_str), Some("used"));
    assert_eq!(
        listed.get(&id(&revoked)).map(String::as_str),
        Some("revoked")
    );
    let err = refused_join(&url, &other, &expiring);
    assert!(err.contains("unknown join token"), "{err}");
    let (ok, table, err) = nodectl_token(&s, &["list"]);
    assert!(ok, "{err}");
    assert!(table.starts_with("ID"), "{table}");

    // A join repeated with the same token, node id and key (its answer was
    // lost) gets the same grant; with another key it is refused.
    let (ok, token, err) = create_token(&s, "worker", "zone=a", "1h");
    assert!(ok, "{err}");
    let token = fleet_auth::token::JoinToken::decode(&token).expect("token");
    let bootstrap = async_nats::ConnectOptions::new()
        .credentials(&token.creds)
        .expect("creds")
        .connect(&url)
        .await
        .expect("bootstrap connects");
    let key = nkeys::KeyPair::new_user();
    let ask = |public_key: String| {
        let request = schemas::join::JoinRequest {
            token_id: token.id.clone(),
            secret: token.secret.clone(),
            node_id: "node-r".into(),
            public_key,
        };
        let bootstrap = bootstrap.clone();
        async move {
            let payload = serde_json::to_vec(&request).expect("JSON");
            let reply = bootstrap
                .request(subjects::REGISTRY_JOIN, payload.into())
                .await
                .expect("an answer");
            match schemas::nats::error_of(reply.headers.as_ref(), &reply.payload) {
                Some(error) => Err(error.code),
                None => Ok(
                    serde_json::from_slice::<schemas::join::JoinReply>(&reply.payload)
                        .expect("a join reply"),
                ),
            }
        }
    };
    let first = ask(key.public_key()).await.expect("joined");
    let again = ask(key.public_key()).await.expect("the same join again");
    assert_eq!(
        (&first.node_id, &first.labels),
        (&again.node_id, &again.labels)
    );
    let other = nkeys::KeyPair::new_user();
    assert_eq!(ask(other.public_key()).await.err(), Some(409));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_join_script_joins_with_a_token() {
    let s = setup().await;
    let url = s.server.url();
    let _registry = start_registry(&s, true, &[], &[]);
    let token = first_token(&s, "gateway", "region=us").await;

    let work = tempfile::tempdir().expect("tmp");
    let root = work.path().join("root");
    let log = work.path().join("systemctl.log");
    let pidfile = work.path().join("agent.pid");
    let systemctl = fleet_tests::fake_systemctl(work.path(), &log, &pidfile);
    let _cleanup = fleet_tests::KillOnDrop(pidfile.clone());
    let script = fleet_tests::workspace_root().join("deploy/join-network.sh");
    let binary = fleet_tests::workspace_bin("node-agent");
    let (url2, root2) = (url.clone(), root.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("bash")
            .arg(script)
            .args(["--nats-url", &url2, "--token", &token, "--timeout", "30"])
            .args(["--binary", binary.to_str().expect("utf-8")])
            .args(["--prefix", root2.to_str().expect("utf-8")])
            .args(["--systemctl", systemctl.to_str().expect("utf-8")])
            .env_remove("NATS_URL")
            .output()
            .expect("join script runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "join failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = stdout.lines().last().unwrap_or_default().trim().to_owned();
    let creds = root.join("var/lib/node-agent/node.creds");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&creds)
            .expect("node.creds")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let (reader, _) = connect_as(&s.server, &s.auth, "reader", "_INBOX")
        .await
        .expect("reader connects");
    let client = fleet_client::Client::new(reader, subjects::Names::default());
    let record = client.get(&id).await.expect("get").expect("known");
    assert_eq!(record.role.as_deref(), Some("gateway"), "the token's role");
    assert_eq!(record.labels.get("region").map(String::as_str), Some("us"));
}

#[tokio::test]
async fn in_auth_mode_a_crashed_agent_is_degraded_by_its_closed_connection() {
    let s = setup().await;
    let _registry = start_registry(
        &s,
        false,
        &["--degraded-after", "60s", "--offline-after", "120s"],
        &[
            ("NODE_REGISTRY_SWEEP_INTERVAL", "100ms"),
            ("NODE_REGISTRY_DISCONNECT_GRACE", "1s"),
        ],
    );
    let mut agent = fleet_tests::spawn_agent_on(
        &s.server.url(),
        &s.server.temp_path("agent-a"),
        &[
            "--node-id",
            "node-a",
            "--creds",
            &s.auth.creds_path("node-a").display().to_string(),
            "--heartbeat-interval",
            "500ms",
            "--ollama-url",
            "http://127.0.0.1:9",
        ],
    );
    let (admin, _) = connect_as(&s.server, &s.auth, "admin", "_INBOX")
        .await
        .expect("admin connects");
    let client = fleet_client::Client::new(admin.clone(), subjects::Names::default());
    let mut alerts = fleet_tests::AlertTap::new(&admin).await;
    fleet_tests::eventually("node-a online", Duration::from_secs(30), || async {
        let record = client.get("node-a").await.ok()??;
        record.metrics.is_some().then_some(())
    })
    .await;
    agent.kill9();
    let degraded = alerts
        .expect(
            "node.degraded on the closed connection",
            Duration::from_secs(20),
            |a| a.r#type == "node.degraded" && a.node_id.as_deref() == Some("node-a"),
        )
        .await;
    let message = degraded.message.unwrap_or_default();
    assert!(message.contains("connection closed"), "{message}");
}

#[tokio::test]
async fn a_node_issued_by_nodectl_has_its_events_checked_too() {
    let s = setup().await;
    let dir = s.auth.path().display().to_string();
    let url = s.server.url();
    let _registry = start_registry(&s, false, &[], &[("NODE_REGISTRY_SWEEP_INTERVAL", "100ms")]);
    let admin = s.auth.creds_path("admin").display().to_string();
    let creds = s.server.temp_path("node-c.creds").display().to_string();
    fleet_tests::eventually(
        "nodectl auth issue to reach the registry",
        Duration::from_secs(30),
        || async {
            let (ok, _, _) = run_bin(
                "nodectl",
                &[
                    "--nats-url",
                    &url,
                    "--creds",
                    &admin,
                    "auth",
                    "--dir",
                    &dir,
                    "issue",
                    "--role",
                    "node",
                    "--name",
                    "node-c",
                    "--out",
                    &creds,
                ],
            );
            ok.then_some(())
        },
    )
    .await;
    let _agent = fleet_tests::spawn_agent_on(
        &url,
        &s.server.temp_path("agent-c"),
        &[
            "--node-id",
            "node-c",
            "--creds",
            &creds,
            "--heartbeat-interval",
            "500ms",
            "--ollama-url",
            "http://127.0.0.1:9",
        ],
    );
    let (admin_conn, _) = connect_as(&s.server, &s.auth, "admin", "_INBOX")
        .await
        .expect("admin connects");
    let client = fleet_client::Client::new(admin_conn.clone(), subjects::Names::default());
    fleet_tests::eventually(
        "node-c's signed events accepted",
        Duration::from_secs(30),
        || async {
            let record = client.get("node-c").await.ok()??;
            record.metrics.is_some().then_some(())
        },
    )
    .await;
    // Unsigned, with the node's own credentials: refused.
    let as_node = async_nats::ConnectOptions::new()
        .credentials(&std::fs::read_to_string(&creds).expect("creds"))
        .expect("creds")
        .custom_inbox_prefix("_INBOX_node-c")
        .connect(&url)
        .await
        .expect("node-c connects");
    jetstream::new(as_node)
        .publish(
            "node.node-c.events",
            format!(
                r#"{{"type":"heartbeat","node_id":"node-c","seq":{}}}"#,
                u64::MAX / 2
            )
            .into(),
        )
        .await
        .expect("publish")
        .await
        .expect("stored");
    fleet_tests::eventually(
        "the unsigned event to be refused",
        Duration::from_secs(20),
        || async {
            let reply = admin_conn
                .request(format!("$SRV.STATS.{}", subjects::SERVICE_NAME), "".into())
                .await
                .ok()?;
            let stats: serde_json::Value = serde_json::from_slice(&reply.payload).ok()?;
            (stats["endpoints"][0]["data"]["events_forged"].as_u64() >= Some(1)).then_some(())
        },
    )
    .await;
}
