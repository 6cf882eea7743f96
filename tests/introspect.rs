//! Introspect end to end: the real server on port 0 and a fake authorization server over
//! real HTTP with a token endpoint and an introspection endpoint that check client
//! authentication (Basic with form-urlencoded id and secret, form post, bearer) and count
//! calls; JWTs validated locally; tenant selection; caching; faults; the concurrency cap.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::{
    collections::{HashMap, HashSet},
    io::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::http::Method;
use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::*;
use introspectd::grpc::pb;
use serde_json::{Value, json};
use tonic::Code;

/// A client id and secret that only survive RFC 6749 2.3.1 if form-urlencoded first.
const CLIENT_ID: &str = "intro spect:1";
const SECRET: &str = "s3cr:et/+é%";
const SECRET_ENV: &str = "INTROSPECTION_TEST_SECRET";
const SERVING: i32 = 1;

fn form(body: &[u8]) -> HashMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("v={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

fn header(seen: &Seen, name: &str) -> Option<String> {
    seen.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The (id, secret) of an RFC 6749 2.3.1 Basic header, decoded independently.
fn basic_credentials(seen: &Seen) -> Option<(String, String)> {
    let value = header(seen, "authorization")?;
    let encoded = value.strip_prefix("Basic ")?;
    let pair = String::from_utf8(STANDARD.decode(encoded).ok()?).ok()?;
    let (id, secret) = pair.split_once(':')?;
    Some((form_decode(id), form_decode(secret)))
}

fn json_reply(status: u16, v: Value) -> (u16, Vec<(String, String)>, Vec<u8>) {
    (
        status,
        vec![("content-type".into(), "application/json".into())],
        v.to_string().into_bytes(),
    )
}

/// How the fake introspection endpoint wants the client to authenticate.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Basic,
    Post,
    Bearer,
}

impl Mode {
    fn config(self) -> &'static str {
        match self {
            Mode::Basic => "client_secret_basic",
            Mode::Post => "client_secret_post",
            Mode::Bearer => "bearer",
        }
    }
}

/// A fake authorization server: discovery, JWKS, token endpoint, introspection endpoint.
#[derive(Clone)]
struct Provider {
    idp: FakeIdp,
    key: Arc<TestKey>,
    /// Client-credentials tokens the introspection endpoint accepts.
    accepted: Arc<Mutex<HashSet<String>>>,
    /// Whether tokens issued from now on are accepted.
    accept_new: Arc<AtomicBool>,
    issued: Arc<AtomicUsize>,
    expires_in: Arc<AtomicU64>,
    /// Programmed answers by token; others: "active*" is active, anything else inactive.
    answers: Arc<Mutex<HashMap<String, Value>>>,
}

impl Provider {
    async fn start(mode: Mode) -> Self {
        let idp = FakeIdp::start().await;
        let key = Arc::new(TestKey::rsa("k1", "RS256"));
        idp.serve_oidc(&[key.as_ref()]);
        let p = Self {
            idp,
            key,
            accepted: Arc::default(),
            accept_new: Arc::new(AtomicBool::new(true)),
            issued: Arc::default(),
            expires_in: Arc::new(AtomicU64::new(3600)),
            answers: Arc::default(),
        };
        p.serve_token_endpoint();
        p.serve_introspection("/introspect", mode);
        p
    }

    fn serve_token_endpoint(&self) {
        let p = self.clone();
        self.idp.set(
            Method::POST,
            "/token",
            Behaviour::Dynamic(Arc::new(move |seen: &Seen| {
                if basic_credentials(seen) != Some((CLIENT_ID.into(), SECRET.into())) {
                    return json_reply(401, json!({"error": "invalid_client"}));
                }
                if form(&seen.body).get("grant_type").map(String::as_str) != Some("client_credentials") {
                    return json_reply(400, json!({"error": "unsupported_grant_type"}));
                }
                let n = p.issued.fetch_add(1, Ordering::SeqCst) + 1;
                let token = format!("cc-{n}-{}", fastrand::u64(..));
                if p.accept_new.load(Ordering::SeqCst) {
                    p.accepted.lock().expect("lock").insert(token.clone());
                }
                json_reply(
                    200,
                    json!({"access_token": token, "token_type": "Bearer", "expires_in": p.expires_in.load(Ordering::SeqCst)}),
                )
            })),
        );
    }

    fn client_ok(&self, seen: &Seen, mode: Mode) -> bool {
        match mode {
            Mode::Basic => basic_credentials(seen) == Some((CLIENT_ID.into(), SECRET.into())),
            Mode::Post => {
                let f = form(&seen.body);
                header(seen, "authorization").is_none()
                    && f.get("client_id").map(String::as_str) == Some(CLIENT_ID)
                    && f.get("client_secret").map(String::as_str) == Some(SECRET)
            }
            Mode::Bearer => header(seen, "authorization")
                .and_then(|h| h.strip_prefix("Bearer ").map(str::to_owned))
                .is_some_and(|t| self.accepted.lock().expect("lock").contains(&t)),
        }
    }

    fn serve_introspection(&self, path: &str, mode: Mode) {
        let p = self.clone();
        self.idp.set(
            Method::POST,
            path,
            Behaviour::Dynamic(Arc::new(move |seen: &Seen| {
                if !p.client_ok(seen, mode) {
                    return json_reply(401, json!({"error": "invalid_client"}));
                }
                let f = form(&seen.body);
                let token = f.get("token").cloned().unwrap_or_default();
                let programmed = p.answers.lock().expect("lock").get(&token).cloned();
                let answer = programmed.unwrap_or_else(|| {
                    if token.starts_with("active") {
                        json!({"active": true, "sub": format!("sub-{token}"), "client_id": "app", "exp": now() + 3600})
                    } else {
                        json!({"active": false})
                    }
                });
                json_reply(200, answer)
            })),
        );
    }

    fn answer(&self, token: &str, v: Value) {
        self.answers.lock().expect("lock").insert(token.into(), v);
    }

    /// Makes every client token issued so far (and from now on, unless `accept_new`)
    /// unacceptable to the introspection endpoint.
    fn revoke_client_tokens(&self, accept_new: bool) {
        self.accepted.lock().expect("lock").clear();
        self.accept_new.store(accept_new, Ordering::SeqCst);
    }

    /// The YAML of one tenant `id` with introspection; `tenant_extra` at tenant level,
    /// `intro_extra` inside `introspection:` (each line indented by the caller).
    fn tenant(&self, id: &str, mode: Mode, tenant_extra: &str, intro_extra: &str) -> String {
        format!(
            "  - id: {id}\n    issuer: \"{}\"\n    require_https: false\n{tenant_extra}    introspection:\n      client_id: \"{CLIENT_ID}\"\n      client_secret_env: {SECRET_ENV}\n      auth: {}\n{intro_extra}",
            self.idp.issuer(),
            mode.config()
        )
    }
}

async fn serve(yaml: &str) -> Harness {
    let h = start(settings_with_env(yaml, &[(SECRET_ENV, SECRET)])).await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    h
}

/// One provider, one tenant `opaque`.
async fn setup(mode: Mode, tenant_extra: &str, intro_extra: &str) -> (Provider, Harness) {
    let p = Provider::start(mode).await;
    let h = serve(&format!(
        "tenants:\n{}",
        p.tenant("opaque", mode, tenant_extra, intro_extra)
    ))
    .await;
    (p, h)
}

fn req(token: &str) -> pb::IntrospectRequest {
    pb::IntrospectRequest {
        token: token.into(),
        ..Default::default()
    }
}

async fn introspect(
    h: &Harness,
    r: pb::IntrospectRequest,
) -> Result<pb::IntrospectResponse, tonic::Status> {
    h.client.clone().introspect(r).await.map(|r| r.into_inner())
}

async fn active(h: &Harness, token: &str) -> pb::IntrospectResponse {
    let r = introspect(h, req(token)).await.expect("Introspect ok");
    assert!(r.active, "{token} should be active");
    r
}

#[tokio::test]
async fn basic_auth_urlencodes_credentials_and_the_answer_is_mapped_field_for_field() {
    let p = Provider::start(Mode::Basic).await;
    p.serve_introspection("/oauth2/introspect", Mode::Basic);
    let endpoint = format!("      endpoint: \"{}\"\n", p.idp.url("/oauth2/introspect"));
    let h = serve(&format!(
        "tenants:\n{}",
        p.tenant("opaque", Mode::Basic, "", &endpoint)
    ))
    .await;
    let n = now();
    p.answer(
        "opaque-1",
        json!({"active": true, "scope": "read write", "client_id": "app", "username": "alice", "token_type": "Bearer",
               "exp": n + 3600, "iat": n, "nbf": n, "sub": "u1", "aud": ["a1", "a2"], "iss": "https://as.example",
               "jti": "j1", "ext": {"k": "v"}}),
    );
    let r = introspect(
        &h,
        pb::IntrospectRequest {
            token: "opaque-1".into(),
            token_type_hint: "access_token".into(),
            ..Default::default()
        },
    )
    .await
    .expect("ok");
    assert!(r.active);
    assert_eq!(r.scope, "read write");
    assert_eq!(r.client_id, "app");
    assert_eq!(r.username, "alice");
    assert_eq!(r.token_type, "Bearer");
    assert_eq!((r.exp, r.iat, r.nbf), (n + 3600, n, n));
    assert_eq!(r.sub, "u1");
    assert_eq!(r.aud, vec!["a1", "a2"]);
    assert_eq!(r.iss, "https://as.example");
    assert_eq!(r.jti, "j1");
    assert_eq!(r.tenant, "opaque");
    let claims = r.claims.expect("claims");
    assert_eq!(
        claims.fields.keys().collect::<Vec<_>>(),
        vec!["ext"],
        "only unmapped members are claims"
    );

    // The configured endpoint wins over the metadata's.
    assert_eq!(p.idp.count("/oauth2/introspect"), 1);
    assert_eq!(p.idp.count("/introspect"), 0);
    let seen = &p.idp.requests("/oauth2/introspect")[0];
    let basic = header(seen, "authorization").expect("authorization");
    let pair = STANDARD
        .decode(basic.strip_prefix("Basic ").expect("Basic"))
        .expect("base64");
    assert_eq!(
        String::from_utf8(pair).expect("utf8"),
        "intro+spect%3A1:s3cr%3Aet%2F%2B%C3%A9%25"
    );
    assert_eq!(
        header(seen, "content-type").as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    let f = form(&seen.body);
    assert_eq!(f.get("token").map(String::as_str), Some("opaque-1"));
    assert_eq!(
        f.get("token_type_hint").map(String::as_str),
        Some("access_token")
    );

    // The hint is passed through unchanged, and left out when absent; aud may be a string.
    p.answer("opaque-2", json!({"active": true, "aud": "only"}));
    let r = introspect(
        &h,
        pb::IntrospectRequest {
            token: "opaque-2".into(),
            token_type_hint: "urn:x:Custom".into(),
            ..Default::default()
        },
    )
    .await
    .expect("ok");
    assert_eq!(r.aud, vec!["only"]);
    assert!(r.claims.is_none());
    active(&h, "active-3").await;
    let seen = p.idp.requests("/oauth2/introspect");
    assert_eq!(
        form(&seen[1].body)
            .get("token_type_hint")
            .map(String::as_str),
        Some("urn:x:Custom")
    );
    assert!(!form(&seen[2].body).contains_key("token_type_hint"));
}

#[tokio::test]
async fn client_secret_post_sends_the_credentials_in_the_form_to_the_metadata_endpoint() {
    let (p, h) = setup(Mode::Post, "", "").await;
    let r = active(&h, "active-post").await;
    assert_eq!(r.sub, "sub-active-post");
    assert_eq!(r.tenant, "opaque");
    assert_eq!(
        p.idp.count("/introspect"),
        1,
        "introspection_endpoint from discovery"
    );
    let seen = &p.idp.requests("/introspect")[0];
    assert!(header(seen, "authorization").is_none());
    let inactive = introspect(&h, req("nope")).await.expect("ok");
    assert_eq!(
        inactive,
        pb::IntrospectResponse::default(),
        "inactive: nothing else"
    );
}

#[tokio::test]
async fn bearer_mode_shares_one_client_token_among_concurrent_calls() {
    let (p, h) = setup(Mode::Bearer, "", "      scope: \"introspection api\"\n").await;
    p.idp.set_delay("/token", Some(Duration::from_millis(300)));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let mut c = h.client.clone();
        tasks.push(tokio::spawn(async move {
            c.introspect(req(&format!("active-{i}"))).await
        }));
    }
    for t in tasks {
        let r = t.await.expect("join").expect("rpc").into_inner();
        assert!(r.active);
    }
    assert_eq!(
        p.idp.count("/token"),
        1,
        "N concurrent calls made one token request"
    );
    assert_eq!(p.idp.count("/introspect"), 20);
    let token_req = &p.idp.requests("/token")[0];
    let f = form(&token_req.body);
    assert_eq!(
        f.get("grant_type").map(String::as_str),
        Some("client_credentials")
    );
    assert_eq!(
        f.get("scope").map(String::as_str),
        Some("introspection api")
    );
    active(&h, "active-later").await;
    assert_eq!(p.idp.count("/token"), 1, "the cached token is reused");
}

#[tokio::test]
async fn bearer_401_renews_the_client_token_once_and_retries_once() {
    let (p, h) = setup(Mode::Bearer, "", "").await;
    active(&h, "active-a").await;
    assert_eq!((p.idp.count("/token"), p.idp.count("/introspect")), (1, 1));

    // The provider forgets the client token: one 401, one renewal, one retry.
    p.revoke_client_tokens(true);
    active(&h, "active-b").await;
    assert_eq!((p.idp.count("/token"), p.idp.count("/introspect")), (2, 3));
    active(&h, "active-c").await;
    assert_eq!(
        (p.idp.count("/token"), p.idp.count("/introspect")),
        (2, 4),
        "the renewed token is kept"
    );

    // Still 401 after the renewal: a configuration fault, UNAVAILABLE, no more attempts.
    p.revoke_client_tokens(false);
    let err = introspect(&h, req("active-d")).await.expect_err("refused");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(err.message().contains("configuration"), "{}", err.message());
    assert_eq!((p.idp.count("/token"), p.idp.count("/introspect")), (3, 6));
}

#[tokio::test]
async fn bearer_client_token_is_renewed_around_its_expiry() {
    let (p, h) = setup(Mode::Bearer, "", "").await;
    p.expires_in.store(2, Ordering::SeqCst);
    active(&h, "active-1").await;
    assert_eq!(p.idp.count("/token"), 1);
    // Renewal is due 0.2 s before expiry (min(60 s, 10 % of 2 s)).
    tokio::time::sleep(Duration::from_millis(1900)).await;
    active(&h, "active-2").await;
    assert!(
        eventually(Duration::from_secs(3), || p.idp.count("/token") == 2).await,
        "renewed"
    );
    active(&h, "active-3").await;
    assert_eq!(p.idp.count("/token"), 2, "the renewed token is used");
}

#[tokio::test]
async fn a_cached_answer_makes_no_upstream_call() {
    let (p, h) = setup(Mode::Basic, "", "").await;
    for _ in 0..3 {
        active(&h, "active-cached").await;
    }
    assert_eq!(p.idp.count("/introspect"), 1);
    for _ in 0..3 {
        assert!(
            !introspect(&h, req("inactive-cached"))
                .await
                .expect("ok")
                .active
        );
    }
    assert_eq!(p.idp.count("/introspect"), 2);
}

#[tokio::test]
async fn inactive_answers_are_cached_for_negative_cache_ttl() {
    let (p, h) = setup(Mode::Basic, "", "      negative_cache_ttl: 1s\n").await;
    for _ in 0..2 {
        assert!(!introspect(&h, req("gone")).await.expect("ok").active);
    }
    assert_eq!(p.idp.count("/introspect"), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(!introspect(&h, req("gone")).await.expect("ok").active);
    assert_eq!(
        p.idp.count("/introspect"),
        2,
        "expired after negative_cache_ttl"
    );
}

#[tokio::test]
async fn active_answers_are_not_cached_past_exp() {
    let (p, h) = setup(Mode::Basic, "", "      cache_ttl: 60s\n").await;
    p.answer("soon", json!({"active": true, "exp": now() + 2}));
    active(&h, "soon").await;
    active(&h, "soon").await;
    assert_eq!(p.idp.count("/introspect"), 1, "cached while before exp");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    active(&h, "soon").await;
    assert_eq!(p.idp.count("/introspect"), 2, "not served past exp");

    // An answer already past its exp is never cached (the provider still decides active).
    p.answer("stale", json!({"active": true, "exp": now() - 10}));
    active(&h, "stale").await;
    active(&h, "stale").await;
    assert_eq!(p.idp.count("/introspect"), 4);
}

#[tokio::test]
async fn active_answers_are_not_cached_past_cache_ttl() {
    let (p, h) = setup(Mode::Basic, "", "      cache_ttl: 1s\n").await;
    active(&h, "active-ttl").await;
    active(&h, "active-ttl").await;
    assert_eq!(p.idp.count("/introspect"), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    active(&h, "active-ttl").await;
    assert_eq!(p.idp.count("/introspect"), 2);
}

#[tokio::test]
async fn upstream_faults_are_unavailable_never_inactive_and_never_cached() {
    let (p, h) = setup(Mode::Basic, "    fetch_timeout: 300ms\n", "").await;
    let faults: Vec<(&str, Behaviour)> = vec![
        ("500", Behaviour::Status(500)),
        ("503", Behaviour::Status(503)),
        (
            "not JSON",
            Behaviour::Raw(200, b"<html>oops</html>".to_vec()),
        ),
        ("no active", Behaviour::Json(json!({"sub": "x"}))),
        (
            "active not a boolean",
            Behaviour::Json(json!({"active": "true"})),
        ),
        ("not an object", Behaviour::Json(json!([true]))),
        ("a redirect (never followed: it would re-send the token)", {
            let to = p.idp.url("/elsewhere");
            Behaviour::Dynamic(Arc::new(move |_: &Seen| {
                (307, vec![("location".into(), to.clone())], Vec::new())
            }))
        }),
    ];
    for (name, b) in faults {
        p.idp.set(Method::POST, "/introspect", b);
        let err = introspect(&h, req("active-x")).await.expect_err(name);
        assert_eq!(err.code(), Code::Unavailable, "{name}: {err:?}");
        assert!(
            !err.message().contains("active-x"),
            "{name}: the message echoes the token"
        );
    }
    assert_eq!(p.idp.count("/elsewhere"), 0);
    p.serve_introspection("/introspect", Mode::Basic);
    p.idp.set_delay("/introspect", Some(Duration::from_secs(2)));
    let err = introspect(&h, req("active-x")).await.expect_err("timeout");
    assert_eq!(err.code(), Code::Unavailable);
    // Callers see the failure's category (BEHAVIOUR.md); the log has the cause.
    assert!(err.message().contains("timeout"), "{}", err.message());
    p.idp.set_delay("/introspect", None);
    active(&h, "active-x").await;
}

#[tokio::test]
async fn connection_refused_is_unavailable() {
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let endpoint = format!("      endpoint: \"http://{closed}/introspect\"\n");
    let (_p, h) = setup(Mode::Basic, "", &endpoint).await;
    let err = introspect(&h, req("active-x")).await.expect_err("refused");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}

#[tokio::test]
async fn refused_client_credentials_are_a_configuration_fault() {
    let (p, h) = setup(Mode::Basic, "", "").await;
    let refusals: Vec<(&str, Behaviour)> = vec![
        (
            "400 invalid_client",
            Behaviour::Raw(400, br#"{"error":"invalid_client"}"#.to_vec()),
        ),
        ("401", Behaviour::Status(401)),
        ("403", Behaviour::Status(403)),
    ];
    for (name, b) in refusals {
        p.idp.set(Method::POST, "/introspect", b);
        let err = introspect(&h, req("active-x")).await.expect_err(name);
        assert_eq!(err.code(), Code::Unavailable, "{name}");
        assert!(
            err.message().contains("configuration fault"),
            "{name}: {}",
            err.message()
        );
    }
    assert_eq!(
        p.idp.count("/introspect"),
        3,
        "no retry without a bearer token to renew"
    );

    // A wrong secret, checked by the real endpoint, is the same fault.
    let p = Provider::start(Mode::Basic).await;
    let yaml = format!("tenants:\n{}", p.tenant("opaque", Mode::Basic, "", ""));
    let h = start(settings_with_env(&yaml, &[(SECRET_ENV, "wrong")])).await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    let err = introspect(&h, req("active-x")).await.expect_err("refused");
    assert_eq!(err.code(), Code::Unavailable);

    // In bearer mode, a token endpoint that refuses the client is the same fault.
    let p = Provider::start(Mode::Bearer).await;
    let yaml = format!("tenants:\n{}", p.tenant("opaque", Mode::Bearer, "", ""));
    let h = start(settings_with_env(&yaml, &[(SECRET_ENV, "wrong")])).await;
    h.wait_health("introspect.v1.TokenService", SERVING).await;
    let err = introspect(&h, req("active-x")).await.expect_err("refused");
    assert_eq!(err.code(), Code::Unavailable);
    assert!(
        err.message().contains("configuration fault"),
        "{}",
        err.message()
    );
    assert_eq!((p.idp.count("/token"), p.idp.count("/introspect")), (1, 0));
}

#[tokio::test]
async fn concurrency_cap_is_resource_exhausted_then_recovers() {
    let (p, h) = setup(Mode::Basic, "", "      max_concurrency: 2\n").await;
    p.idp
        .set_delay("/introspect", Some(Duration::from_millis(800)));
    let mut slow = Vec::new();
    for i in 0..2 {
        let mut c = h.client.clone();
        slow.push(tokio::spawn(async move {
            c.introspect(req(&format!("active-slow-{i}"))).await
        }));
    }
    assert!(
        eventually(Duration::from_secs(5), || p.idp.count("/introspect") == 2).await,
        "both calls upstream"
    );
    let err = introspect(&h, req("active-third"))
        .await
        .expect_err("over the cap");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert_eq!(
        p.idp.count("/introspect"),
        2,
        "refused without an upstream call"
    );
    for t in slow {
        assert!(t.await.expect("join").expect("rpc").into_inner().active);
    }
    p.idp.set_delay("/introspect", None);
    active(&h, "active-third").await;

    // With the cap full again, a cached answer is still served: hits take no permit.
    p.idp
        .set_delay("/introspect", Some(Duration::from_millis(800)));
    let before = p.idp.count("/introspect");
    let mut slow = Vec::new();
    for i in 0..2 {
        let mut c = h.client.clone();
        slow.push(tokio::spawn(async move {
            c.introspect(req(&format!("active-slow-again-{i}"))).await
        }));
    }
    assert!(
        eventually(Duration::from_secs(5), || p.idp.count("/introspect")
            == before + 2)
        .await
    );
    active(&h, "active-third").await;
    for t in slow {
        assert!(t.await.expect("join").expect("rpc").into_inner().active);
    }
}

#[tokio::test]
async fn jwts_are_validated_locally_with_the_field_mapping() {
    let p = Provider::start(Mode::Basic).await;
    let yaml = format!(
        "{}{}",
        oidc_tenant(&p.idp, ""),
        p.tenant("opaque", Mode::Basic, "    explicit: true\n", "")
    );
    let h = serve(&yaml).await;
    let mut c = claims(&p.idp.issuer(), "api://demo");
    c["scp"] = json!(["read", "write"]);
    c["azp"] = json!("app-1");
    c["upn"] = json!("user@example.com");
    c["custom"] = json!({"k": [1, 2]});
    let r = active(&h, &format!("Bearer {}", p.key.token(&c))).await;
    assert_eq!(r.tenant, "demo");
    assert_eq!(r.scope, "read write");
    assert_eq!(r.client_id, "app-1");
    assert_eq!(r.username, "user@example.com");
    assert_eq!(r.token_type, "Bearer");
    assert_eq!(
        (r.exp, r.iat, r.nbf),
        (
            c["exp"].as_i64().expect("exp"),
            c["iat"].as_i64().expect("iat"),
            c["nbf"].as_i64().expect("nbf")
        )
    );
    assert_eq!(r.sub, "user-1");
    assert_eq!(r.aud, vec!["api://demo"]);
    assert_eq!(r.iss, p.idp.issuer());
    assert_eq!(Some(r.jti.as_str()), c["jti"].as_str());
    let rest = r.claims.expect("claims");
    for kept in ["custom", "scp", "azp", "upn"] {
        assert!(rest.fields.contains_key(kept), "{kept}");
    }
    for lifted in ["sub", "exp", "iss", "aud", "jti"] {
        assert!(!rest.fields.contains_key(lifted), "{lifted}");
    }
    assert_eq!(p.idp.count("/introspect"), 0, "JWTs never go upstream");

    let n = now();
    let other = TestKey::rsa("k1", "RS256");
    let inactive: Vec<(&str, String)> = vec![
        (
            "expired",
            p.key
                .token(&json!({"iss": p.idp.issuer(), "aud": "api://demo", "exp": n - 600})),
        ),
        (
            "wrong audience (the tenant's apply)",
            p.key.token(&claims_with(&p, "aud", json!("api://other"))),
        ),
        (
            "unknown issuer",
            p.key
                .token(&claims_with(&p, "iss", json!("https://elsewhere.example"))),
        ),
        (
            "bad signature",
            other.token(&claims(&p.idp.issuer(), "api://demo")),
        ),
    ];
    for (name, token) in inactive {
        let r = introspect(&h, req(&token)).await.expect("ok");
        assert_eq!(
            r,
            pb::IntrospectResponse::default(),
            "{name}: active false and nothing else"
        );
    }
    assert_eq!(p.idp.count("/introspect"), 0);
}

fn claims_with(p: &Provider, name: &str, v: Value) -> Value {
    let mut c = claims(&p.idp.issuer(), "api://demo");
    c[name] = v;
    c
}

#[tokio::test]
async fn tenant_selection_rules() {
    let a = Provider::start(Mode::Basic).await;
    let jwt_only = FakeIdp::start().await;
    jwt_only.serve_oidc(&[]);
    let yaml = format!(
        "{}{}",
        oidc_tenant(&jwt_only, ""),
        a.tenant("a", Mode::Basic, "", "")
    );
    let h = serve(&yaml).await;
    // The only tenant with introspection is the default.
    assert_eq!(active(&h, "active-1").await.tenant, "a");
    assert_eq!(a.idp.count("/introspect"), 1);
    let named = introspect(
        &h,
        pb::IntrospectRequest {
            tenant: "a".into(),
            ..req("active-2")
        },
    )
    .await
    .expect("ok");
    assert_eq!(named.tenant, "a");
    // A tenant without introspection does not recognise an opaque token (RFC 7662).
    let asked = a.idp.count("/introspect");
    let r = introspect(
        &h,
        pb::IntrospectRequest {
            tenant: "demo".into(),
            ..req("active-1")
        },
    )
    .await
    .expect("answered");
    assert_eq!(r, pb::IntrospectResponse::default());
    assert_eq!(a.idp.count("/introspect"), asked, "not asked");
    let err = introspect(
        &h,
        pb::IntrospectRequest {
            tenant: "nope".into(),
            ..req("active-1")
        },
    )
    .await
    .expect_err("unknown");
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = introspect(&h, req("")).await.expect_err("empty");
    assert_eq!(err.code(), Code::InvalidArgument);

    // Two tenants with introspection: the request must name one.
    let b = Provider::start(Mode::Post).await;
    let yaml = format!(
        "tenants:\n{}{}",
        a.tenant("a", Mode::Basic, "", ""),
        b.tenant("b", Mode::Post, "", "")
    );
    let h = serve(&yaml).await;
    let err = introspect(&h, req("active-1"))
        .await
        .expect_err("ambiguous");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("name one"), "{}", err.message());
    let r = introspect(
        &h,
        pb::IntrospectRequest {
            tenant: "b".into(),
            ..req("active-1")
        },
    )
    .await
    .expect("ok");
    assert_eq!(r.tenant, "b");
    assert_eq!(b.idp.count("/introspect"), 1);

    // No tenant with introspection: nobody here recognises an opaque token.
    let h = serve(&oidc_tenant(&jwt_only, "")).await;
    let r = introspect(&h, req("opaque")).await.expect("answered");
    assert_eq!(r, pb::IntrospectResponse::default());
}

#[tokio::test]
async fn a_refresh_token_hint_sends_a_jws_upstream_when_the_tenant_has_no_keys() {
    let p = Provider::start(Mode::Basic).await;
    p.idp.set_json("/jwks", json!({"keys": []}));
    let h = serve(&format!(
        "tenants:\n{}",
        p.tenant("opaque", Mode::Basic, "", "")
    ))
    .await;
    let jws = p.key.token(&claims(&p.idp.issuer(), "api://demo"));
    p.answer(&jws, json!({"active": true, "sub": "from-upstream"}));
    let r = introspect(
        &h,
        pb::IntrospectRequest {
            token_type_hint: "refresh_token".into(),
            ..req(&jws)
        },
    )
    .await
    .expect("ok");
    assert_eq!(r.sub, "from-upstream");
    assert_eq!(
        form(&p.idp.requests("/introspect")[0].body)
            .get("token_type_hint")
            .map(String::as_str),
        Some("refresh_token")
    );
    let r = introspect(
        &h,
        pb::IntrospectRequest {
            token_type_hint: "access_token".into(),
            ..req(&jws)
        },
    )
    .await
    .expect("ok");
    assert!(
        !r.active,
        "an access-token JWS is validated locally, and this tenant has no keys"
    );
    assert_eq!(p.idp.count("/introspect"), 1);
}

/// Collects log output in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "current_thread")]
async fn secrets_and_tokens_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    // The server runs on this thread's runtime, so a thread-local default sees it all.
    let _guard = tracing::subscriber::set_default(subscriber);

    let (p, h) = setup(Mode::Bearer, "    fetch_timeout: 300ms\n", "").await;
    active(&h, "active-opaque-SENSITIVE-1").await;
    p.revoke_client_tokens(true);
    active(&h, "active-opaque-SENSITIVE-2").await;
    p.revoke_client_tokens(false);
    let _ = introspect(&h, req("active-opaque-SENSITIVE-3")).await;
    p.idp
        .set(Method::POST, "/introspect", Behaviour::Status(503));
    let _ = introspect(&h, req("active-opaque-SENSITIVE-4")).await;
    let jwt = p.key.token(&claims(&p.idp.issuer(), "api://nobody"));
    let _ = introspect(
        &h,
        pb::IntrospectRequest {
            tenant: "opaque".into(),
            ..req(&jwt)
        },
    )
    .await;
    drop(h);

    let logs = String::from_utf8_lossy(&captured.0.lock().expect("lock")).into_owned();
    assert!(logs.contains("introspection"), "the capture works");
    let encoded_secret =
        url::form_urlencoded::byte_serialize(SECRET.as_bytes()).collect::<String>();
    let basic = STANDARD.encode(format!(
        "{}:{encoded_secret}",
        url::form_urlencoded::byte_serialize(CLIENT_ID.as_bytes()).collect::<String>()
    ));
    let mut forbidden = vec![
        SECRET.to_string(),
        encoded_secret,
        basic,
        "SENSITIVE".to_string(),
        jwt,
    ];
    forbidden.extend(p.accepted.lock().expect("lock").iter().cloned());
    forbidden.extend((1..=p.issued.load(Ordering::SeqCst)).map(|n| format!("cc-{n}-")));
    for f in forbidden {
        assert!(
            !logs.contains(&f),
            "the logs contain a secret or token: {f}"
        );
    }
}

#[tokio::test]
async fn introspecting_a_jwt_does_not_use_it_up_under_replay_detection() {
    let idp = FakeIdp::start().await;
    let key = TestKey::ec("k1");
    idp.serve_oidc(&[&key]);
    let mut h = serve(&oidc_tenant(&idp, "    replay_detection: true\n")).await;
    let t = key.token(&claims(&idp.issuer(), "api://demo"));
    active(&h, &t).await;
    active(&h, &t).await;
    assert!(
        h.validate_token(&t).await.valid,
        "introspection recorded the jti"
    );
    assert_eq!(code(&h.validate_token(&t).await), pb::ErrorCode::Replayed);
    let after = introspect(&h, req(&t)).await.expect("Introspect ok");
    assert!(!after.active, "a replayed token is not active");
}
