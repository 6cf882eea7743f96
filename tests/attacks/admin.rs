//! Finding 1: AdminService was unauthenticated, on by default on the same port as
//! TokenService, and RefreshIssuer caused one discovery and one JWKS fetch per call
//! (skipping the failure backoff); its answers handed out URLs and raw error chains.

use std::time::Duration;

use axum::http::Method;
use introspectd::grpc::pb::{
    self, KeyEventType, admin_service_client::AdminServiceClient,
    token_service_client::TokenServiceClient,
};
use tonic::{Code, transport::Channel};

use crate::{common::*, serve, victim_validates};

const DISCOVERY: &str = "/.well-known/openid-configuration";

fn admin(channel: &Channel) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(channel.clone())
}

async fn refresh(channel: &Channel) -> Result<pb::RefreshIssuerResponse, tonic::Status> {
    admin(channel)
        .refresh_issuer(pb::RefreshIssuerRequest {
            tenant: "demo".into(),
            policy: String::new(),
        })
        .await
        .map(|r| r.into_inner())
}

/// ListIssuers' first key set, called without a token.
async fn first_issuer(channel: &Channel) -> pb::IssuerStatus {
    list_issuers(channel).await.remove(0)
}

fn fetches(idp: &FakeIdp) -> (usize, usize) {
    (idp.count(DISCOVERY), idp.count("/jwks"))
}

#[tokio::test]
async fn by_default_nothing_on_the_main_listener_lets_a_caller_trigger_a_fetch() {
    let (idp, key, h) = serve("", "").await;
    let before = fetches(&idp);
    for _ in 0..20 {
        let err = refresh(&h.channel).await.expect_err("AdminService is off");
        assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    }
    let err = admin(&h.channel)
        .list_issuers(pb::ListIssuersRequest::default())
        .await
        .expect_err("ListIssuers is off too");
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(fetches(&idp), before, "no fetch was caused");
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
}

#[tokio::test]
async fn refresh_issuer_fetches_at_most_once_per_cooldown_and_says_so() {
    // The main listener is loopback here, so no authorization is required.
    let (idp, key, h) = serve("  admin: true\n", "    unknown_kid_cooldown: 30s\n").await;
    let before = fetches(&idp);
    let first = refresh(&h.channel).await.expect("first RefreshIssuer");
    assert!(first.refreshed, "{first:?}");
    assert!(!first.throttled, "the first call fetches");
    let after_first = fetches(&idp);
    assert_eq!(
        after_first,
        (before.0 + 1, before.1 + 1),
        "one discovery, one JWKS"
    );
    for _ in 0..30 {
        let again = refresh(&h.channel).await.expect("RefreshIssuer");
        assert!(
            again.throttled,
            "inside the cooldown the last result is returned"
        );
        assert!(again.refreshed, "the last result was a success");
        assert!(
            again.retry_after.is_some(),
            "the answer says when a fetch is allowed again"
        );
    }
    assert_eq!(
        fetches(&idp),
        after_first,
        "no further fetch inside the cooldown"
    );
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
}

#[tokio::test]
async fn refresh_issuer_does_not_bypass_the_failure_backoff() {
    let (idp, _key, h) = serve("  admin: true\n", "    unknown_kid_cooldown: 30s\n").await;
    idp.set(Method::GET, "/jwks", Behaviour::Status(503));
    idp.set(Method::GET, DISCOVERY, Behaviour::Status(503));
    let before = fetches(&idp);
    let first = refresh(&h.channel).await.expect("RefreshIssuer");
    assert!(!first.refreshed);
    for _ in 0..20 {
        let again = refresh(&h.channel).await.expect("RefreshIssuer");
        assert!(!again.refreshed && again.throttled, "{again:?}");
    }
    // One forced fetch; the refresher's own backoff (from 1 s) may add one retry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = fetches(&idp);
    assert!(
        after.0 - before.0 <= 2,
        "discovery fetched {} times",
        after.0 - before.0
    );
}

#[tokio::test]
async fn callers_see_a_failure_category_never_urls_paths_or_error_chains() {
    // RefreshIssuer fetches at most once per cooldown (at least 1 s): each refresh below
    // waits that long after the one before.
    let (idp, _key, h) = serve("  admin: true\n", "    unknown_kid_cooldown: 1s\n").await;
    let cooldown = Duration::from_millis(1100);
    let mut events = TokenServiceClient::new(h.channel.clone())
        .watch_keys(pb::WatchKeysRequest::default())
        .await
        .expect("watch")
        .into_inner();
    idp.set(Method::GET, "/jwks", Behaviour::Status(503));
    let answer = refresh(&h.channel).await.expect("RefreshIssuer");
    assert!(!answer.refreshed);
    assert_eq!(answer.error, "http 503");
    let listed = first_issuer(&h.channel).await;
    assert_eq!(listed.last_error, "http 503");
    let failed = loop {
        let e = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await
            .expect("an event in time")
            .expect("stream ok")
            .expect("stream open");
        if e.r#type == KeyEventType::RefreshFailed as i32 {
            break e;
        }
    };
    assert_eq!(failed.message, "http 503");

    // A body that is not JSON.
    tokio::time::sleep(cooldown).await;
    idp.set(
        Method::GET,
        "/jwks",
        Behaviour::Raw(200, b"<html>".to_vec()),
    );
    let answer = refresh(&h.channel).await.expect("RefreshIssuer");
    assert_eq!(answer.error, "invalid json");

    // A discovery document for another issuer.
    tokio::time::sleep(cooldown).await;
    idp.set_json(
        DISCOVERY,
        idp.discovery("https://elsewhere.example", "/jwks"),
    );
    let answer = refresh(&h.channel).await.expect("RefreshIssuer");
    assert_eq!(answer.error, "issuer mismatch");
    for text in [&answer.error, &answer.issuer.expect("status").last_error] {
        assert!(!text.contains("http://"), "{text}");
        assert!(!text.contains("elsewhere"), "{text}");
    }
}

#[tokio::test]
async fn a_jwks_file_failure_shows_no_path() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("secret-location.json");
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  admin: true\ntenants:\n  - id: file\n    issuer: https://f.example\n    audiences: [x]\n    jwks_file: {}\n",
        path.display()
    );
    let h = start(settings(&yaml)).await;
    h.wait_health(crate::TOKEN_SERVICE, crate::SERVING).await;
    let listed = first_issuer(&h.channel).await;
    assert!(listed.last_failed);
    assert_eq!(listed.last_error, "file unreadable");
    assert!(!listed.last_error.contains("secret-location"));
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    crate::net::own_channel(addr).await
}

fn admin_token(key: &TestKey, issuer: &str, aud: &str, scope: Option<&str>) -> String {
    let mut c = claims(issuer, aud);
    if let Some(s) = scope {
        c["scp"] = serde_json::json!(s);
    }
    key.token(&c)
}

/// `message` with `authorization: <token>` metadata when given.
fn authorized<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", t.parse().expect("metadata"));
    }
    req
}

async fn list_as(channel: &Channel, token: Option<&str>) -> Result<usize, tonic::Status> {
    let req = authorized(pb::ListIssuersRequest::default(), token);
    admin(channel)
        .list_issuers(req)
        .await
        .map(|r| r.into_inner().issuers.len())
}

#[tokio::test]
async fn admin_listen_serves_admin_service_alone() {
    let (idp, key, h) = serve("  admin_listen: \"127.0.0.1:0\"\n", "").await;
    let admin_addr = h.server.admin_addr.expect("admin listener");
    // The main listener does not serve it...
    let err = list_as(&h.channel, None).await.expect_err("not on listen");
    assert_eq!(err.code(), Code::Unimplemented);
    // ...the admin listener does (loopback, no admin_auth: open), with health...
    let ops = channel(admin_addr).await;
    assert_eq!(list_as(&ops, None).await.expect("ListIssuers"), 1);
    let health = tonic_health::pb::health_client::HealthClient::new(ops.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("health on the admin listener");
    assert_eq!(health.into_inner().status, crate::SERVING);
    // ...and nothing else.
    let err = TokenServiceClient::new(ops)
        .validate(pb::ValidateRequest {
            token: key.token(&claims(&idp.issuer(), "api://demo")),
            ..Default::default()
        })
        .await
        .expect_err("no TokenService on the admin listener");
    assert_eq!(err.code(), Code::Unimplemented);
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
}

#[tokio::test]
async fn admin_auth_guards_every_admin_call() {
    let server = "  admin: true\n  admin_listen: \"127.0.0.1:0\"\n  admin_auth:\n    tenant: demo\n    audiences: [\"api://introspectd-admin\"]\n    required_scopes: [introspectd.admin]\n";
    let (idp, key, h) = serve(server, "").await;
    let iss = idp.issuer();
    let ops = channel(h.server.admin_addr.expect("admin listener")).await;
    let good = admin_token(
        &key,
        &iss,
        "api://introspectd-admin",
        Some("introspectd.admin"),
    );
    let no_scope = admin_token(&key, &iss, "api://introspectd-admin", Some("read"));
    let api_token = admin_token(&key, &iss, "api://demo", Some("introspectd.admin"));
    let mut expired = claims(&iss, "api://introspectd-admin");
    expired["exp"] = serde_json::json!(now() - 3600);
    expired["scp"] = serde_json::json!("introspectd.admin");
    let expired = key.token(&expired);
    let stranger = TestKey::rsa("k1", "RS256");
    let forged = admin_token(
        &stranger,
        &iss,
        "api://introspectd-admin",
        Some("introspectd.admin"),
    );

    // On both listeners, loopback or not: admin_auth applies wherever AdminService is.
    for channel in [&h.channel, &ops] {
        let cases: [(Option<String>, Code); 7] = [
            (None, Code::Unauthenticated),
            (Some("Basic dXNlcjpwdw==".into()), Code::Unauthenticated),
            (Some("Bearer not-a-token".into()), Code::Unauthenticated),
            (Some(format!("Bearer {api_token}")), Code::Unauthenticated),
            (Some(format!("Bearer {expired}")), Code::Unauthenticated),
            (Some(format!("Bearer {forged}")), Code::Unauthenticated),
            (Some(format!("Bearer {no_scope}")), Code::PermissionDenied),
        ];
        for (auth, want) in cases {
            let err = list_as(channel, auth.as_deref())
                .await
                .expect_err("refused");
            assert_eq!(err.code(), want, "{auth:?}: {err:?}");
            assert!(!err.message().contains(&good), "no token in messages");
        }
        assert_eq!(
            list_as(channel, Some(&format!("bearer {good}")))
                .await
                .expect("an admin token"),
            1
        );
    }
    let before = fetches(&idp);
    let mut req = tonic::Request::new(pb::RefreshIssuerRequest {
        tenant: "demo".into(),
        policy: String::new(),
    });
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {no_scope}").parse().expect("metadata"),
    );
    let err = admin(&ops).refresh_issuer(req).await.expect_err("no scope");
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(fetches(&idp), before, "a refused call fetches nothing");

    // The operator command follows: it sends the token, and says what is missing.
    let addr = format!("http://{}", h.server.admin_addr.expect("admin listener"));
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{good}\n")).expect("write");
    let bin = env!("CARGO_BIN_EXE_introspectd");
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(bin);
        cmd.arg("issuers")
            .args(args)
            .env_remove("INTROSPECTD_ADMIN_TOKEN");
        cmd.output()
    };
    let out = run(&["--addr", &addr]).await.expect("issuers");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("admin token"), "{stderr}");
    let file = token_file.to_string_lossy().to_string();
    let out = run(&["--addr", &addr, "--token-file", &file])
        .await
        .expect("issuers");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo"));
    victim_validates(h.server.addr, &key, &iss).await;
}

#[test]
fn admin_service_off_loopback_without_admin_auth_does_not_start() {
    let dir = tempfile::tempdir().expect("dir");
    for (name, server) in [
        (
            "admin_listen",
            "server:\n  listen: 127.0.0.1:0\n  admin_listen: 0.0.0.0:0\n",
        ),
        ("admin", "server:\n  listen: 0.0.0.0:0\n  admin: true\n"),
    ] {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!("{server}tenants:\n  - id: demo\n    issuer: https://idp.example\n    audiences: [x]\n"),
        )
        .expect("write");
        for cmd in ["check-config", "serve"] {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_introspectd"))
                .args([cmd, "--config"])
                .arg(&path)
                .output()
                .expect("run introspectd");
            assert_eq!(out.status.code(), Some(2), "{name} {cmd}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(
                stderr.contains("server.admin_auth"),
                "{name} {cmd}: {stderr}"
            );
        }
    }
}

async fn revoke_as(
    channel: &Channel,
    token: Option<&str>,
    victim: &str,
) -> Result<pb::RevokeResponse, tonic::Status> {
    let rule = pb::revoke_request::Rule::Token(victim.into());
    let req = authorized(
        pb::RevokeRequest {
            rule: Some(rule),
            expires_at: None,
        },
        token,
    );
    admin(channel).revoke(req).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn revoke_is_guarded_by_admin_auth_and_a_refused_call_revokes_nothing() {
    let server = "  admin: true\n  admin_auth:\n    tenant: demo\n    audiences: [\"api://introspectd-admin\"]\n    required_scopes: [introspectd.admin]\n";
    let (idp, key, h) = serve(server, "").await;
    let iss = idp.issuer();
    let victim = key.token(&claims(&iss, "api://demo"));
    let good = admin_token(
        &key,
        &iss,
        "api://introspectd-admin",
        Some("introspectd.admin"),
    );
    let no_scope = admin_token(&key, &iss, "api://introspectd-admin", Some("read"));
    let validate = || async {
        TokenServiceClient::new(h.channel.clone())
            .validate(pb::ValidateRequest {
                token: victim.clone(),
                ..Default::default()
            })
            .await
            .expect("Validate")
            .into_inner()
    };
    for (auth, want) in [
        (None, Code::Unauthenticated),
        (Some(format!("Bearer {no_scope}")), Code::PermissionDenied),
    ] {
        let err = revoke_as(&h.channel, auth.as_deref(), &victim)
            .await
            .expect_err("refused");
        assert_eq!(err.code(), want, "{auth:?}: {err:?}");
        assert!(validate().await.valid, "a refused Revoke revokes nothing");
    }
    let done = revoke_as(&h.channel, Some(&format!("Bearer {good}")), &victim)
        .await
        .expect("an admin token may revoke");
    assert!(!done.fleet_wide);
    let r = validate().await;
    assert!(!r.valid);
    assert_eq!(r.error.map(|e| e.code), Some(pb::ErrorCode::Revoked as i32));
}
