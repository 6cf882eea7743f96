//! TLS on the gRPC listener: plain TLS and mutual TLS with certificates made in the
//! test, refusal of clients without an acceptable certificate, bounded handshakes,
//! certificate reload without a restart, and bad files at start-up as config errors.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::Duration,
};

use common::*;
use introspectd::config::{ConfigError, Settings, TlsSettings};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, SanType};
use rustls_pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio::io::AsyncReadExt as _;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SERVING: i32 = 1;

struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert_pem: String,
    key_pem: String,
    der: CertificateDer<'static>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let issuer =
            CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key")).expect("ca");
        Self { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, cn: &str) -> Leaf {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, cn);
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

/// Writes `text` to `path` the way Kubernetes updates a secret volume: atomically.
fn replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write");
    std::fs::rename(&tmp, path).expect("rename");
}

struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
}

impl Pki {
    fn new() -> Self {
        introspectd::install_crypto();
        Self {
            dir: tempfile::tempdir().expect("dir"),
            ca: Ca::new("test ca"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn install(&self, leaf: &Leaf) {
        replace(&self.path("tls.crt"), &leaf.cert_pem);
        replace(&self.path("tls.key"), &leaf.key_pem);
    }

    fn settings(&self, mutual: bool) -> TlsSettings {
        std::fs::write(self.path("ca.crt"), self.ca.pem()).expect("ca");
        TlsSettings {
            cert_file: self.path("tls.crt"),
            key_file: self.path("tls.key"),
            client_ca_file: mutual.then(|| self.path("ca.crt")),
            reload_interval: Duration::from_millis(100),
            handshake_timeout: Duration::from_millis(500),
        }
    }
}

fn server_settings(tls: TlsSettings) -> Settings {
    let mut s = hmac_settings(
        "tenants:\n  - id: first-party\n    issuer: https://me.example\n    algorithms: [HS256]\n    hmac_secret_env: S\n",
    );
    s.server.tls = Some(tls);
    s.server.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    s
}

fn hmac_settings(yaml: &str) -> Settings {
    settings_with_env(yaml, &[("S", "0123456789abcdef0123456789abcdef")])
}

async fn tls_channel(
    addr: SocketAddr,
    ca_pem: &str,
    identity: Option<&Leaf>,
) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .domain_name("localhost");
    if let Some(id) = identity {
        tls = tls.identity(Identity::from_pem(&id.cert_pem, &id.key_pem));
    }
    Endpoint::from_shared(format!("https://{addr}"))
        .expect("endpoint")
        .tls_config(tls)?
        .connect()
        .await
}

async fn check(channel: Channel) -> Result<i32, tonic::Status> {
    HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// A TLS handshake with rustls directly, returning the certificate the server presented.
async fn served_certificate(addr: SocketAddr, ca_pem: &str) -> CertificateDer<'static> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.expect("ca pem")).expect("add ca");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.alpn_protocol(),
        Some(&b"h2"[..]),
        "ALPN h2 negotiated"
    );
    session
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server certificate")
        .clone()
        .into_owned()
}

use common::{metric as sample, scrape_metrics as scrape};

#[tokio::test]
async fn tls_serves_grpc_and_a_plaintext_client_is_refused() {
    let pki = Pki::new();
    let leaf = pki.ca.leaf("server");
    pki.install(&leaf);
    let server = introspectd::app::spawn(server_settings(pki.settings(false)))
        .await
        .expect("starts");

    let channel = tls_channel(server.addr, &pki.ca.pem(), None)
        .await
        .expect("TLS connect");
    assert_eq!(check(channel).await.expect("health over TLS"), SERVING);
    assert_eq!(
        served_certificate(server.addr, &pki.ca.pem()).await,
        leaf.der
    );

    // Plaintext HTTP/2 to a TLS port fails, and the server keeps serving.
    let plain = Endpoint::from_shared(format!("http://{}", server.addr)).expect("endpoint");
    if let Ok(c) = plain.connect().await {
        assert!(check(c).await.is_err(), "plaintext must not be served");
    }
    let channel = tls_channel(server.addr, &pki.ca.pem(), None)
        .await
        .expect("TLS connect again");
    assert_eq!(check(channel).await.expect("still serving"), SERVING);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn mutual_tls_requires_a_certificate_from_the_client_ca() {
    let pki = Pki::new();
    pki.install(&pki.ca.leaf("server"));
    let server = introspectd::app::spawn(server_settings(pki.settings(true)))
        .await
        .expect("starts");
    let ca = pki.ca.pem();

    let client = pki.ca.leaf("client");
    let channel = tls_channel(server.addr, &ca, Some(&client))
        .await
        .expect("mTLS connect");
    assert_eq!(check(channel).await.expect("health over mTLS"), SERVING);

    // No certificate: refused (the TLS 1.3 client may only learn it on its first call).
    match tls_channel(server.addr, &ca, None).await {
        Err(_) => {}
        Ok(c) => assert!(
            check(c).await.is_err(),
            "a client without a certificate must be refused"
        ),
    }
    // A certificate from another CA: refused.
    let rogue = Ca::new("rogue ca").leaf("client");
    match tls_channel(server.addr, &ca, Some(&rogue)).await {
        Err(_) => {}
        Ok(c) => assert!(
            check(c).await.is_err(),
            "a certificate from another CA must be refused"
        ),
    }

    // Failed handshakes never stop the accept loop.
    let channel = tls_channel(server.addr, &ca, Some(&client))
        .await
        .expect("mTLS connect again");
    assert_eq!(check(channel).await.expect("still serving"), SERVING);
    let text = scrape(server.metrics_addr.expect("metrics")).await;
    assert!(
        sample(&text, "introspectd_tls_handshake_failures_total") >= 2.0,
        "{text}"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout_without_blocking_others() {
    let pki = Pki::new();
    pki.install(&pki.ca.leaf("server"));
    let server = introspectd::app::spawn(server_settings(pki.settings(false)))
        .await
        .expect("starts");

    let mut silent = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    // Meanwhile another client completes its handshake and its call.
    let channel = tls_channel(server.addr, &pki.ca.pem(), None)
        .await
        .expect("TLS connect");
    assert_eq!(check(channel).await.expect("health"), SERVING);

    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the server closes a connection that never handshakes"
    );
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn certificate_is_reloaded_without_restart_and_bad_files_keep_the_current_one() {
    let pki = Pki::new();
    let ca = pki.ca.pem();
    let first = pki.ca.leaf("first");
    pki.install(&first);
    let server = introspectd::app::spawn(server_settings(pki.settings(false)))
        .await
        .expect("starts");
    assert_eq!(served_certificate(server.addr, &ca).await, first.der);
    let channel = tls_channel(server.addr, &ca, None)
        .await
        .expect("TLS connect");
    assert_eq!(check(channel.clone()).await.expect("health"), SERVING);

    // cert-manager renews: new files, same paths.
    let second = pki.ca.leaf("second");
    pki.install(&second);
    let mut seen = served_certificate(server.addr, &ca).await;
    for _ in 0..100 {
        if seen == second.der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = served_certificate(server.addr, &ca).await;
    }
    assert_eq!(
        seen, second.der,
        "new connections get the renewed certificate"
    );
    assert_eq!(
        check(channel.clone())
            .await
            .expect("an existing connection carries on"),
        SERVING
    );

    // A broken renewal keeps the current certificate.
    replace(
        &pki.path("tls.crt"),
        "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n",
    );
    let metrics = server.metrics_addr.expect("metrics");
    let mut failures = 0.0;
    for _ in 0..100 {
        failures = sample(
            &scrape(metrics).await,
            r#"introspectd_tls_reloads_total{outcome="failure"}"#,
        );
        if failures >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failures >= 1.0, "the bad file was read and rejected");
    assert_eq!(served_certificate(server.addr, &ca).await, second.der);
    let fresh = tls_channel(server.addr, &ca, None)
        .await
        .expect("TLS connect after a bad renewal");
    assert_eq!(check(fresh).await.expect("health"), SERVING);
    server.shutdown().await.expect("clean shutdown");
}

#[tokio::test]
async fn bad_certificate_at_start_up_is_a_config_error() {
    let pki = Pki::new();
    std::fs::write(pki.path("tls.crt"), "not a certificate").expect("write");
    std::fs::write(pki.path("tls.key"), pki.ca.leaf("x").key_pem).expect("write");
    let server = introspectd::app::spawn(server_settings(pki.settings(false)))
        .await
        .expect("binds");
    let err = server.join().await.expect_err("refuses to start");
    let config = err.downcast_ref::<ConfigError>().expect("a ConfigError");
    assert_eq!(config.key, "server.tls.cert_file");

    // The binary exits 2 naming the key.
    let leaf = pki.ca.leaf("x");
    std::fs::write(pki.path("tls.crt"), &leaf.cert_pem).expect("write");
    std::fs::write(
        pki.path("tls.key"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .expect("write");
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  metrics_listen: \"\"\n  tls:\n    cert_file: {}\n    key_file: {}\ntenants:\n  - id: a\n    issuer: https://a.example\n",
        pki.path("tls.crt").display(),
        pki.path("tls.key").display()
    );
    let config = pki.path("config.yaml");
    std::fs::write(&config, yaml).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_introspectd"))
        .args(["serve", "--config"])
        .arg(&config)
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("server.tls.key_file"), "{stderr}");
    assert!(
        !stderr.contains("AAAA"),
        "no key material in the message: {stderr}"
    );
}

#[tokio::test]
async fn plaintext_health_listener_answers_probes_and_nothing_else() {
    let pki = Pki::new();
    let leaf = pki.ca.leaf("server");
    pki.install(&leaf);
    let mut s = server_settings(pki.settings(true));
    s.server.health_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let server = introspectd::app::spawn(s).await.expect("starts");
    let health = server.health_addr.expect("health listener bound");
    let plain = common::connect(health).await;
    // The same answers as the main listener, with no client certificate.
    for service in ["", "introspect.v1.TokenService"] {
        let mut ok = false;
        for _ in 0..100 {
            let r = HealthClient::new(plain.clone())
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await;
            if r.map(|r| r.into_inner().status).ok() == Some(SERVING) {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(ok, "health of `{service}` on the plaintext listener");
    }
    // Only health: TokenService is not reachable there.
    let err = introspectd::grpc::pb::token_service_client::TokenServiceClient::new(plain.clone())
        .validate(introspectd::grpc::pb::ValidateRequest {
            token: "x".into(),
            ..Default::default()
        })
        .await
        .expect_err("TokenService must not be served in plaintext");
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    server.shutdown().await.expect("clean shutdown");
}
