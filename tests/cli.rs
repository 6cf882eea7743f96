//! The binary from the outside: configuration errors exit 2 naming the key; the README's
//! quick start (`serve --dev`, `token`, `validate`) works end to end; SIGTERM exits 0.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::{
    io::Read as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const BIN: &str = env!("CARGO_BIN_EXE_introspectd");

fn write(dir: &tempfile::TempDir, name: &str, text: &str) -> std::path::PathBuf {
    let p = dir.path().join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn check_config_exits_2_and_names_the_key() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        ("server:\n  lisen: x\n", "server.lisen"),
        ("tenants:\n  - id: a\n", "tenants[0]"),
        (
            "tenants:\n  - id: a\n    issuer: https://a\n    clock_skew: soon\n",
            "tenants[0].clock_skew",
        ),
        (
            "tenants:\n  - id: a\n    issuer: https://a\n  - id: a\n    issuer: https://b\n",
            "tenants[1].id",
        ),
        (
            "tenants:\n  - id: a\n    issuer: http://a\n",
            "tenants[0].issuer",
        ),
        (ENTRA, "tenants[0].allowed_tenant_ids"),
        (
            "defaults:\n  unknown_kid_cooldown: 0s\n",
            "defaults.unknown_kid_cooldown",
        ),
        (
            "tenants:\n  - id: a\n    issuer: https://a\n    clock_skew: 31days\n",
            "tenants[0].clock_skew",
        ),
    ];
    for (yaml, key) in cases {
        let path = write(&dir, "c.yaml", yaml);
        for sub in [vec!["check-config"], vec!["serve"]] {
            let out = Command::new(BIN)
                .args(&sub)
                .arg("--config")
                .arg(&path)
                .output()
                .expect("run");
            assert_eq!(out.status.code(), Some(2), "{sub:?} {yaml}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains(&format!("`{key}`")),
                "{sub:?}: stderr does not name {key}: {err}"
            );
        }
    }
    let ok = write(
        &dir,
        "ok.yaml",
        "tenants:\n  - id: a\n    issuer: https://a.example\n    audiences: [x]\n",
    );
    let out = Command::new(BIN)
        .arg("check-config")
        .arg("--config")
        .arg(&ok)
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A `{tenantid}` issuer without `allowed_tenant_ids`.
const ENTRA: &str = "tenants:\n  - id: entra\n    issuer: \"https://login.microsoftonline.com/{tenantid}/v2.0\"\n    metadata_url: https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration\n";

#[test]
fn check_config_says_which_entra_tenants_are_trusted() {
    let dir = tempfile::tempdir().expect("tmp");
    let cases = [
        ("[\"*\"]", "accepts tokens of every Entra ID tenant"),
        (
            "[\"72f988bf-86f1-41af-91ab-2d7cd011db47\"]",
            "accepts tokens of 1 Entra ID tenant(s): 72f988bf-86f1-41af-91ab-2d7cd011db47",
        ),
    ];
    for (list, says) in cases {
        let path = write(
            &dir,
            "entra.yaml",
            &format!("{ENTRA}    allowed_tenant_ids: {list}\n"),
        );
        let out = Command::new(BIN)
            .args(["check-config", "--config"])
            .arg(&path)
            .output()
            .expect("run");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}");
        assert!(
            stdout.contains(&format!(
                "tenant `entra` (https://login.microsoftonline.com/{{tenantid}}/v2.0) {says}"
            )),
            "{stdout}"
        );
    }
}

#[test]
fn example_config_passes_check_config() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/config.example.yaml"
    );
    let out = Command::new(BIN)
        .args(["check-config", "--config", example])
        .env("FIRST_PARTY_JWT_SECRET", "0123456789abcdef0123456789abcdef")
        .env("INTROSPECTION_CLIENT_SECRET", "s3cret")
        .output()
        .expect("run");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

#[test]
fn dev_quick_start_then_sigterm_exits_0() {
    let dir = tempfile::tempdir().expect("tmp");
    let key = dir.path().join("dev-key.json");
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut server = Command::new(BIN)
        .args(["serve", "--dev", "--listen", &addr, "--dev-key-file"])
        .arg(&key)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let token = {
        // `token` creates the key if `serve` has not yet; both end up with the same one.
        let mut out = None;
        for _ in 0..50 {
            let o = Command::new(BIN)
                .args([
                    "token",
                    "--sub",
                    "alice",
                    "--scope",
                    "read write",
                    "--dev-key-file",
                ])
                .arg(&key)
                .output()
                .expect("token");
            if o.status.success() {
                out = Some(
                    String::from_utf8(o.stdout)
                        .expect("utf8")
                        .trim()
                        .to_string(),
                );
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        out.expect("token minted")
    };
    let mut answer = None;
    for _ in 0..100 {
        let o = Command::new(BIN)
            .args(["validate", "--addr", &format!("http://{addr}"), &token])
            .output()
            .expect("validate");
        if o.status.success() {
            answer = Some(String::from_utf8(o.stdout).expect("utf8"));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let answer: serde_json::Value =
        serde_json::from_str(&answer.expect("server answered")).expect("json");
    assert_eq!(answer["valid"], true, "{answer}");
    assert_eq!(answer["subject"], "alice");
    assert_eq!(answer["tenant"], "dev");
    assert_eq!(answer["scopes"], serde_json::json!(["read", "write"]));

    let bad = Command::new(BIN)
        .args([
            "validate",
            "--addr",
            &format!("http://{addr}"),
            "not-a-token",
        ])
        .output()
        .expect("validate");
    let bad: serde_json::Value = serde_json::from_slice(&bad.stdout).expect("json");
    assert_eq!(bad["valid"], false);
    assert_eq!(bad["error"]["code"], "ERROR_CODE_MALFORMED");

    let started = Instant::now();
    let status = Command::new("kill")
        .args(["-TERM", &server.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let code = loop {
        if let Some(s) = server.try_wait().expect("wait") {
            break s;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "did not exit within 10 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut logs = String::new();
    if let Some(mut e) = server.stderr.take() {
        let _ = e.read_to_string(&mut logs);
    }
    assert_eq!(code.code(), Some(0), "logs: {logs}");
    assert!(!logs.contains(&token), "a token appeared in the logs");
}
