//! TLS against a real nats-server: mutual TLS with client certificates
//! mapped to users (`verify_and_map`), each user with its role's
//! permissions. Certificates are made here, at test time (rcgen); no key is
//! committed. The registry, an agent and nodectl connect with
//! `--tls-ca/--tls-cert/--tls-key`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleet_auth::Role;
use fleet_tests::{eventually, spawn_agent_on, spawn_registry_on, NatsServer};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use subjects::NodeId;

struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Pki {
    fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "fleet test CA");
        let ca_key = KeyPair::generate().expect("CA key");
        let ca = params.self_signed(&ca_key).expect("CA cert");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).expect("write CA");
        Self { dir, ca, ca_key }
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A certificate named `cn` (with these SANs) signed by the CA: its
    /// (cert, key) files.
    fn issue(&self, cn: &str, sans: &[&str]) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(sans.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>())
                .expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("signed");
        let cert_path = self.dir.path().join(format!("{cn}.pem"));
        let key_path = self.dir.path().join(format!("{cn}-key.pem"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

#[tokio::test]
async fn mutual_tls_maps_certificates_to_users_with_their_roles() {
    let pki = Pki::new();
    let (server_cert, server_key) = pki.issue("nats-server", &["localhost", "127.0.0.1"]);
    let node = NodeId::parse("node-tls").expect("id");
    let users = [
        Role::Registry.config_user("CN=registry"),
        Role::Reader.config_user("CN=reader"),
        Role::Node(node.clone(), None).config_user("CN=node-tls"),
    ];
    let config = format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify_and_map: true\n  timeout: 5\n}}\n\
         accounts {{\n  MTLS: {{\n    jetstream: enabled\n    users: [\n      {}\n    ]\n  }}\n}}\n",
        path(&server_cert),
        path(&server_key),
        path(&pki.ca()),
        users.join("\n      ")
    );
    let server = NatsServer::start_plain(&config).await;
    let url = format!("tls://127.0.0.1:{}", server.port());

    // No certificate: refused.
    let plain = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca())
        .require_tls(true)
        .connect(&url)
        .await;
    assert!(plain.is_err(), "a client without a certificate got in");
    // A certificate from another CA: refused.
    let stranger = Pki::new();
    let (cert, key) = stranger.issue("registry", &[]);
    let forged = async_nats::ConnectOptions::new()
        .add_root_certificates(pki.ca())
        .add_client_certificate(cert, key)
        .connect(&url)
        .await;
    assert!(forged.is_err(), "a certificate from another CA got in");

    // The registry and an agent, each with its own certificate.
    let (registry_cert, registry_key) = pki.issue("registry", &[]);
    let (node_cert, node_key) = pki.issue("node-tls", &[]);
    let (reader_cert, reader_key) = pki.issue("reader", &[]);
    let _registry = spawn_registry_on(
        &url,
        server.temp_path("registry.log"),
        "registry",
        &[
            "--tls-ca",
            &path(&pki.ca()),
            "--tls-cert",
            &path(&registry_cert),
            "--tls-key",
            &path(&registry_key),
        ],
        &[("NODE_REGISTRY_SWEEP_INTERVAL", "100ms")],
    );
    let _agent = spawn_agent_on(
        &url,
        &server.temp_path("agent"),
        &[
            "--node-id",
            node.as_str(),
            "--heartbeat-interval",
            "500ms",
            "--ollama-url",
            "http://127.0.0.1:9",
            "--tls-ca",
            &path(&pki.ca()),
            "--tls-cert",
            &path(&node_cert),
            "--tls-key",
            &path(&node_key),
        ],
    );
    // nodectl, as the reader, finds the node.
    let found = eventually(
        "nodectl to find the node over mTLS",
        Duration::from_secs(30),
        || {
            let args = [
                "--nats-url".to_owned(),
                url.clone(),
                "--tls-ca".to_owned(),
                path(&pki.ca()),
                "--tls-cert".to_owned(),
                path(&reader_cert),
                "--tls-key".to_owned(),
                path(&reader_key),
                "get".to_owned(),
                node.to_string(),
            ];
            async move {
                let out = std::process::Command::new(fleet_tests::workspace_bin("nodectl"))
                    .args(&args)
                    .output()
                    .ok()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                (out.status.success() && text.contains("\"metrics\"")).then_some(text)
            }
        },
    )
    .await;
    assert!(found.contains("node-tls"), "{found}");
}
