//! Logs of the real binary: `--log-format json` writes one JSON object per line, the
//! level comes from `RUST_LOG`, and even at debug level a rejected token never appears.
//! (Multi-threaded runtimes: the fake IdP must answer while a test thread blocks reading
//! the child's stderr.)

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::{
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::*;
use introspectd::grpc::pb::{self, token_service_client::TokenServiceClient};
use serde_json::Value;

struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Server {
    fn start(config: &Path, json: bool, rust_log: &str) -> Self {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_introspectd"));
        cmd.args(["serve", "--config"]).arg(config);
        if json {
            cmd.args(["--log-format", "json"]);
        }
        let mut child = cmd
            .env("RUST_LOG", rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("binary starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line so far, or collects lines until one, that satisfies `want` (bounded).
    fn wait_for(&mut self, want: impl Fn(&str) -> bool) -> String {
        if let Some(line) = self.seen.iter().find(|l| want(l)) {
            return line.clone();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(line) = self.lines.recv_timeout(Duration::from_millis(100)) {
                self.seen.push(line.clone());
                if want(&line) {
                    return line;
                }
            }
        }
        let _ = self.child.kill();
        panic!("no such log line; got:\n{}", self.seen.join("\n"));
    }

    /// SIGTERM, wait for a clean exit, and return every line logged.
    fn stop(mut self) -> Vec<String> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("the server did not exit on SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(status.success(), "exit status {status}");
        self.seen.extend(self.lines.iter());
        self.seen
    }
}

fn write_config(dir: &Path, idp: &FakeIdp) -> std::path::PathBuf {
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  metrics_listen: \"\"\n  shutdown_grace: 2s\n{}",
        oidc_tenant(idp, "")
    );
    let path = dir.join("config.yaml");
    std::fs::write(&path, yaml).expect("config");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_json_lines_and_never_hold_a_rejected_token() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Server::start(&write_config(dir.path(), &idp), true, "debug");

    let serving = server.wait_for(|l| l.contains("serving gRPC"));
    let serving: Value = serde_json::from_str(&serving).expect("JSON line");
    let addr = serving["addr"].as_str().expect("addr field").to_string();
    server.wait_for(|l| l.contains("key refresh succeeded"));

    // Same kid, another key: rejected with INVALID_SIGNATURE after full processing.
    let impostor = TestKey::rsa("k1", "RS256");
    let token = impostor.token(&claims(&idp.issuer(), "api://demo"));
    let mut client = TokenServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let r = client
        .validate(pb::ValidateRequest {
            token: format!("Bearer {token}"),
            ..Default::default()
        })
        .await
        .expect("Validate")
        .into_inner();
    assert_eq!(code(&r), pb::ErrorCode::InvalidSignature);
    server.wait_for(|l| l.contains("token rejected"));

    let lines = server.stop();
    let mut levels = std::collections::HashSet::new();
    for line in lines.iter().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        assert!(
            v.get("timestamp").is_some() && v.get("message").is_some(),
            "{line}"
        );
        levels.insert(v["level"].as_str().expect("level").to_string());
    }
    assert!(
        levels.contains("DEBUG"),
        "RUST_LOG=debug is honoured: {levels:?}"
    );
    let parts: Vec<&str> = token.split('.').collect();
    for line in &lines {
        assert!(!line.contains(&token), "the token was logged: {line}");
        assert!(
            !line.contains(parts[1]),
            "the token's payload was logged: {line}"
        );
        assert!(
            !line.contains(parts[2]),
            "the token's signature was logged: {line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("stopped")),
        "shutdown is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_logs_by_default_at_the_level_of_rust_log() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Server::start(
        &write_config(dir.path(), &idp),
        false,
        "warn,introspectd=info",
    );
    let line = server.wait_for(|l| l.contains("serving gRPC"));
    assert!(
        serde_json::from_str::<Value>(&line).is_err(),
        "human-readable by default: {line}"
    );
    assert!(line.contains("INFO"), "{line}");
    let lines = server.stop();
    assert!(
        !lines.iter().any(|l| l.contains("DEBUG")),
        "no debug lines at info"
    );
}

/// Issue 12, finding 6: `serve` says at start-up which Entra ID tenants each `{tenantid}`
/// issuer trusts; trusting every tenant (`["*"]`) is a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_logs_which_entra_tenants_each_tenantid_issuer_trusts() {
    const GUID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
    let idp = FakeIdp::start().await;
    let dir = tempfile::tempdir().expect("dir");
    let tenant = |id: &str, allowed: &str, explicit: bool| {
        format!(
            "  - id: {id}\n    issuer: \"{base}/{{tenantid}}/v2.0\"\n    metadata_url: \"{base}/common/v2.0/.well-known/openid-configuration\"\n    require_https: false\n    explicit: {explicit}\n    allowed_tenant_ids: {allowed}\n",
            base = idp.issuer()
        )
    };
    let yaml = format!(
        "server:\n  listen: 127.0.0.1:0\n  metrics_listen: \"\"\n  shutdown_grace: 2s\ntenants:\n{}{}",
        tenant("any", "[\"*\"]", false),
        tenant("one", &format!("[\"{GUID}\"]"), true),
    );
    let path = dir.path().join("config.yaml");
    std::fs::write(&path, yaml).expect("config");
    let mut server = Server::start(&path, true, "info");
    let json = |line: &str| serde_json::from_str::<Value>(line).expect("JSON line");
    let any = json(&server.wait_for(|l| l.contains("tokens of every Entra ID tenant")));
    assert_eq!(any["level"], "WARN", "{any}");
    assert!(any.to_string().contains(r#""tenant":"any""#), "{any}");
    let one = json(&server.wait_for(|l| l.contains("the listed Entra ID tenants")));
    assert_eq!(one["level"], "INFO", "{one}");
    assert!(one.to_string().contains(GUID), "{one}");
    assert!(one.to_string().contains(r#""tenant":"one""#), "{one}");
    server.stop();
}
