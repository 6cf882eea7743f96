//! WatchKeys and AdminService end to end: the real server on port 0, fake OpenID Connect
//! providers over real HTTP, rotations by unknown kid, schedule, forced refresh and
//! `jwks_file` reload; thumbprints checked against an RFC 7638 computation done here.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

#[path = "../examples/watch_keys/mirror.rs"]
#[allow(dead_code)]
mod mirror;

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, SystemTime},
};

use aws_lc_rs::digest;
use axum::http::Method;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use common::*;
use introspectd::grpc::pb::{
    self, KeyEventType as T, admin_service_client::AdminServiceClient,
    token_service_client::TokenServiceClient,
};
use serde_json::{Value, json};
use tonic::{Code, Streaming, transport::Channel};

const SERVING: i32 = 1;
const TOKEN_SERVICE: &str = "introspect.v1.TokenService";
const PUBLIC_MEMBERS: [&str; 9] = ["kty", "kid", "use", "alg", "crv", "x", "y", "n", "e"];

/// RFC 7638: SHA-256 over the required members, in lexicographic order, no whitespace,
/// built by hand (independent of the service's own serialisation).
fn rfc7638(jwk: &Value) -> String {
    let m = |name: &str| {
        jwk[name]
            .as_str()
            .unwrap_or_else(|| panic!("member {name}"))
            .to_string()
    };
    let canonical = match m("kty").as_str() {
        "RSA" => format!(r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#, m("e"), m("n")),
        "EC" => format!(
            r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
            m("crv"),
            m("x"),
            m("y")
        ),
        other => panic!("kty {other}"),
    };
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
}

#[test]
fn the_thumbprint_helper_matches_rfc_7638s_own_example() {
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    assert_eq!(rfc7638(&jwk), "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs");
}

fn kind(e: &pb::KeyEvent) -> T {
    T::try_from(e.r#type).expect("known event type")
}

async fn watch(
    channel: &Channel,
    tenants: &[&str],
) -> Result<Streaming<pb::KeyEvent>, tonic::Status> {
    let req = pb::WatchKeysRequest {
        tenants: tenants.iter().map(|t| t.to_string()).collect(),
    };
    TokenServiceClient::new(channel.clone())
        .watch_keys(req)
        .await
        .map(|r| r.into_inner())
}

async fn next(s: &mut Streaming<pb::KeyEvent>) -> pb::KeyEvent {
    tokio::time::timeout(Duration::from_secs(20), s.message())
        .await
        .expect("an event within 20 s")
        .expect("stream ok")
        .expect("stream open")
}

/// The EXISTING events up to SYNCED.
async fn snapshot(s: &mut Streaming<pb::KeyEvent>) -> Vec<pb::KeyEvent> {
    let mut out = Vec::new();
    loop {
        let e = next(s).await;
        match kind(&e) {
            T::Existing => out.push(e),
            T::Synced => return out,
            other => panic!("{other:?} inside the snapshot"),
        }
    }
}

fn admin(channel: &Channel) -> AdminServiceClient<Channel> {
    AdminServiceClient::new(channel.clone())
}

async fn refresh(channel: &Channel, tenant: &str, policy: &str) -> pb::RefreshIssuerResponse {
    admin(channel)
        .refresh_issuer(pb::RefreshIssuerRequest {
            tenant: tenant.into(),
            policy: policy.into(),
        })
        .await
        .expect("RefreshIssuer")
        .into_inner()
}

fn refs(keys: &[TestKey]) -> Vec<&TestKey> {
    keys.iter().collect()
}

/// Checks everything a key event says about `key`.
fn assert_describes(e: &pb::KeyEvent, key: &TestKey, tenant: &str, issuer: &str) {
    assert_eq!(e.tenant, tenant);
    assert_eq!(e.issuer, issuer);
    assert_eq!(e.key_id, key.kid);
    assert_eq!(e.algorithm, key.alg);
    assert_eq!(e.key_type, key.jwk["kty"].as_str().expect("kty"));
    assert_eq!(e.thumbprint, rfc7638(&key.jwk), "thumbprint of {}", key.kid);
    let jwk: serde_json::Map<String, Value> = serde_json::from_str(&e.jwk).expect("jwk is JSON");
    for member in jwk.keys() {
        assert!(
            PUBLIC_MEMBERS.contains(&member.as_str()),
            "`{member}` streamed"
        );
    }
    for member in ["n", "e", "x", "y", "crv", "kty"] {
        assert_eq!(jwk.get(member), key.jwk.get(member), "{member}");
    }
    assert!(e.observed_at.is_some());
    assert!(e.message.is_empty());
}

/// The `server:` section of this suite: AdminService on the (loopback) main listener,
/// which it has to ask for.
const WITH_ADMIN: &str = "server:\n  listen: \"127.0.0.1:0\"\n  admin: true\n";

async fn setup(keys: &[&TestKey], extra: &str) -> (FakeIdp, Harness) {
    setup_tuned(keys, extra, |_| {}).await
}

/// For tests that force refreshes back to back: RefreshIssuer fetches at most once per
/// `unknown_kid_cooldown`, which a configuration keeps at 1 s or more; these tests set it
/// to zero on the loaded settings, to exercise the stream without waiting.
async fn setup_forcing_any_time(keys: &[&TestKey]) -> (FakeIdp, Harness) {
    setup_tuned(keys, "", |s| {
        s.tenants[0].refresh.unknown_kid_cooldown = Duration::ZERO;
    })
    .await
}

async fn setup_tuned(
    keys: &[&TestKey],
    extra: &str,
    tune: impl FnOnce(&mut introspectd::config::Settings),
) -> (FakeIdp, Harness) {
    let idp = FakeIdp::start().await;
    idp.serve_oidc(keys);
    let mut s = settings(&format!("{WITH_ADMIN}{}", oidc_tenant(&idp, extra)));
    tune(&mut s);
    let h = start(s).await;
    h.wait_health(TOKEN_SERVICE, SERVING).await;
    (idp, h)
}

#[tokio::test]
async fn the_snapshot_lists_every_public_key_then_synced() {
    let idp = FakeIdp::start().await;
    let (rsa, ec) = (TestKey::rsa("r1", "RS256"), TestKey::ec("e1"));
    idp.serve_oidc(&[&rsa, &ec]);
    let yaml = format!(
        "{}  - id: first-party\n    issuer: \"https://fp.example\"\n    audiences: [\"x\"]\n    algorithms: [HS256]\n    hmac_secret_env: FP_SECRET\n",
        oidc_tenant(&idp, "")
    );
    let secret = "s".repeat(32);
    let h = start(settings_with_env(&yaml, &[("FP_SECRET", &secret)])).await;
    h.wait_health(TOKEN_SERVICE, SERVING).await;
    let mut s = watch(&h.channel, &[]).await.expect("WatchKeys");
    let events = snapshot(&mut s).await;
    assert_eq!(
        events.len(),
        2,
        "two public keys; the HMAC secret is never streamed: {events:?}"
    );
    assert_describes(&events[0], &rsa, "demo", &idp.issuer());
    assert_describes(&events[1], &ec, "demo", &idp.issuer());
    assert!(
        events
            .iter()
            .all(|e| e.policy.is_empty() && e.key_type != "oct")
    );
    // A tenant with no streamable key yields an empty snapshot, still closed by SYNCED.
    let mut fp = watch(&h.channel, &["first-party"])
        .await
        .expect("WatchKeys");
    assert!(snapshot(&mut fp).await.is_empty());
}

#[tokio::test]
async fn an_unknown_kid_rotation_streams_added_then_removed_to_every_subscriber() {
    let (k1, k2) = (TestKey::rsa("k1", "RS256"), TestKey::ec("k2"));
    let (idp, mut h) = setup(&[&k1], "").await;
    let mut s1 = watch(&h.channel, &[]).await.expect("first subscriber");
    let other = connect(h.server.addr).await;
    let mut s2 = watch(&other, &["demo"]).await.expect("second subscriber");
    for s in [&mut s1, &mut s2] {
        let snap = snapshot(s).await;
        assert_eq!(snap.len(), 1);
        assert_describes(&snap[0], &k1, "demo", &idp.issuer());
    }
    idp.publish("/jwks", &[&k2]);
    let r = h
        .validate_token(&k2.token(&claims(&idp.issuer(), "api://demo")))
        .await;
    assert!(r.valid, "{:?}", r.error);
    for s in [&mut s1, &mut s2] {
        let added = next(s).await;
        assert_eq!(kind(&added), T::Added);
        assert_describes(&added, &k2, "demo", &idp.issuer());
        let removed = next(s).await;
        assert_eq!(kind(&removed), T::Removed);
        assert_describes(&removed, &k1, "demo", &idp.issuer());
    }
}

#[tokio::test]
async fn a_scheduled_refresh_streams_the_rotation() {
    let (k1, k2) = (TestKey::ec("k1"), TestKey::ec("k2"));
    let (idp, h) = setup(&[&k1], "    refresh_interval: 1s\n").await;
    let mut s = watch(&h.channel, &[]).await.expect("WatchKeys");
    assert_eq!(snapshot(&mut s).await.len(), 1);
    idp.publish("/jwks", &[&k1, &k2]);
    let added = next(&mut s).await;
    assert_eq!((kind(&added), added.key_id.as_str()), (T::Added, "k2"));
    assert_eq!(added.thumbprint, rfc7638(&k2.jwk));
    idp.publish("/jwks", &[&k2]);
    let removed = next(&mut s).await;
    assert_eq!(
        (kind(&removed), removed.key_id.as_str()),
        (T::Removed, "k1")
    );
}

#[tokio::test]
async fn a_jwks_file_reload_streams_the_rotation() {
    let (k1, k2) = (TestKey::ec("f1"), TestKey::ec("f2"));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("keys.json");
    let write = |keys: &[&TestKey]| {
        let tmp = dir.path().join("keys.tmp");
        std::fs::write(&tmp, jwks(keys).to_string()).expect("write");
        std::fs::rename(&tmp, &path).expect("rename");
    };
    write(&[&k1]);
    let yaml = format!(
        "tenants:\n  - id: files\n    issuer: \"https://files.example\"\n    audiences: [\"x\"]\n    jwks_file: \"{}\"\n    refresh_interval: 1s\n",
        path.display()
    );
    let h = start(settings(&yaml)).await;
    h.wait_health(TOKEN_SERVICE, SERVING).await;
    let mut s = watch(&h.channel, &["files"]).await.expect("WatchKeys");
    let snap = snapshot(&mut s).await;
    assert_eq!(snap.len(), 1);
    assert_describes(&snap[0], &k1, "files", "https://files.example");
    write(&[&k2]);
    let added = next(&mut s).await;
    assert_eq!(kind(&added), T::Added);
    assert_describes(&added, &k2, "files", "https://files.example");
    let removed = next(&mut s).await;
    assert_eq!(kind(&removed), T::Removed);
    assert_describes(&removed, &k1, "files", "https://files.example");
}

#[tokio::test]
async fn tenant_filters_and_unknown_tenants() {
    let (d1, d2, o1, o2) = (
        TestKey::ec("d1"),
        TestKey::ec("d2"),
        TestKey::ec("o1"),
        TestKey::ec("o2"),
    );
    let (demo, other) = (FakeIdp::start().await, FakeIdp::start().await);
    demo.serve_oidc(&[&d1]);
    other.serve_oidc(&[&o1]);
    let yaml = format!(
        "{WITH_ADMIN}{}  - id: other\n    issuer: \"{}\"\n    audiences: [\"x\"]\n    require_https: false\n",
        oidc_tenant(&demo, ""),
        other.issuer()
    );
    let h = start(settings(&yaml)).await;
    h.wait_health(TOKEN_SERVICE, SERVING).await;
    let mut s = watch(&h.channel, &["other", "other"])
        .await
        .expect("WatchKeys");
    let snap = snapshot(&mut s).await;
    assert_eq!(
        snap.iter().map(|e| e.key_id.as_str()).collect::<Vec<_>>(),
        vec!["o1"]
    );
    // A rotation of `demo` first, then of `other`: the first live event is other's.
    demo.publish("/jwks", &[&d1, &d2]);
    assert_eq!(refresh(&h.channel, "demo", "").await.added.len(), 1);
    other.publish("/jwks", &[&o1, &o2]);
    assert_eq!(refresh(&h.channel, "other", "").await.added.len(), 1);
    let e = next(&mut s).await;
    assert_eq!(
        (kind(&e), e.tenant.as_str(), e.key_id.as_str()),
        (T::Added, "other", "o2")
    );

    for bad in [vec!["nope"], vec!["other", "nope"]] {
        let err = watch(&h.channel, &bad).await.expect_err("unknown tenant");
        assert_eq!(err.code(), Code::InvalidArgument, "{bad:?}");
        assert!(err.message().contains("nope"));
    }
}

#[tokio::test]
async fn b2c_key_events_and_issuers_carry_their_policy() {
    let idp = FakeIdp::start().await;
    let issuer = idp.url("/tenant-id/v2.0/");
    let (a1, a2, b1) = (TestKey::ec("a1"), TestKey::ec("a2"), TestKey::ec("b1"));
    for (policy, key) in [("B2C_1_A", &a1), ("B2C_1_B", &b1)] {
        let jwks_path = format!("/{policy}/jwks");
        idp.set_json(
            &format!("/{policy}/v2.0/.well-known/openid-configuration"),
            idp.discovery(&issuer, &jwks_path),
        );
        idp.publish(&jwks_path, &[key]);
    }
    let yaml = format!(
        "{WITH_ADMIN}tenants:\n  - id: b2c\n    issuer: \"{issuer}\"\n    audiences: [\"app\"]\n    require_https: false\n    b2c:\n      metadata_url: \"{}/{{policy}}/v2.0/.well-known/openid-configuration\"\n      policies: [B2C_1_A, B2C_1_B]\n",
        idp.issuer()
    );
    let h = start(settings(&yaml)).await;
    h.wait_health(TOKEN_SERVICE, SERVING).await;
    let mut s = watch(&h.channel, &["b2c"]).await.expect("WatchKeys");
    let snap: Vec<(String, String)> = snapshot(&mut s)
        .await
        .into_iter()
        .map(|e| (e.policy, e.key_id))
        .collect();
    assert_eq!(
        snap,
        vec![
            ("B2C_1_A".to_string(), "a1".to_string()),
            ("B2C_1_B".into(), "b1".into())
        ]
    );
    idp.publish("/B2C_1_A/jwks", &[&a1, &a2]);
    // Policy names compare case-insensitively, as B2C's do.
    let r = refresh(&h.channel, "b2c", "b2c_1_a").await;
    assert!(r.refreshed, "{}", r.error);
    assert_eq!(
        r.issuer.as_ref().map(|i| i.policy.as_str()),
        Some("B2C_1_A")
    );
    let e = next(&mut s).await;
    assert_eq!(
        (kind(&e), e.policy.as_str(), e.key_id.as_str()),
        (T::Added, "B2C_1_A", "a2")
    );
    assert_describes(&e, &a2, "b2c", &issuer);

    let list = list_issuers(&h.channel).await;
    let shown: Vec<(&str, &str, usize)> = list
        .iter()
        .map(|i| (i.policy.as_str(), i.metadata_url.as_str(), i.keys.len()))
        .collect();
    let url_a = idp.url("/B2C_1_A/v2.0/.well-known/openid-configuration");
    let url_b = idp.url("/B2C_1_B/v2.0/.well-known/openid-configuration");
    assert_eq!(
        shown,
        vec![
            ("B2C_1_A", url_a.as_str(), 2),
            ("B2C_1_B", url_b.as_str(), 1)
        ]
    );
    let err = admin(&h.channel)
        .refresh_issuer(pb::RefreshIssuerRequest {
            tenant: "b2c".into(),
            policy: String::new(),
        })
        .await
        .expect_err("a B2C tenant needs a policy");
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// A subscriber's view: (kid, thumbprint) pairs, since a kid may be reused.
type Mirror = BTreeSet<(String, String)>;

/// Applies an event to a subscriber's view, refusing duplicates and losses: an ADDED
/// key must be new, a REMOVED one known; a snapshot (EXISTING ... SYNCED) replaces all.
fn apply(mirror: &mut Mirror, staging: &mut Option<Mirror>, e: &pb::KeyEvent) {
    let id = (e.key_id.clone(), e.thumbprint.clone());
    match kind(e) {
        T::Existing => {
            let st = staging.get_or_insert_with(Mirror::new);
            assert!(st.insert(id), "duplicate EXISTING");
        }
        T::Synced => *mirror = staging.take().unwrap_or_default(),
        T::Added => assert!(mirror.insert(id), "duplicate ADDED {}", e.key_id),
        T::Removed => assert!(mirror.remove(&id), "REMOVED unknown {}", e.key_id),
        other => panic!("unexpected {other:?}"),
    }
}

fn expected(keys: &[TestKey]) -> Mirror {
    keys.iter()
        .map(|k| (k.kid.clone(), rfc7638(&k.jwk)))
        .collect()
}

#[tokio::test]
async fn a_stalled_subscriber_is_resynchronised_while_a_reading_one_sees_every_event() {
    // 100 keys per set (the most a set holds): each rotation is 100 ADDED + 100 REMOVED.
    let set_a: Vec<TestKey> = (0..100).map(|i| TestKey::ec(&format!("a{i}"))).collect();
    let set_b: Vec<TestKey> = (0..100).map(|i| TestKey::ec(&format!("b{i}"))).collect();
    let (idp, h) = setup_forcing_any_time(&refs(&set_a)).await;

    let mut reader = watch(&h.channel, &[]).await.expect("reader");
    // The stalled client has its own connection with a tiny HTTP/2 window, so the
    // server stops pulling its events after a few kilobytes instead of megabytes.
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", h.server.addr))
        .expect("endpoint")
        .initial_stream_window_size(1024u32);
    let stalled_channel = endpoint.connect().await.expect("connect");
    let mut stalled = watch(&stalled_channel, &[]).await.expect("stalled");

    let (mut seen, mut staging) = (Mirror::new(), None);
    for e in snapshot(&mut reader).await {
        apply(&mut seen, &mut staging, &e);
    }
    apply(
        &mut seen,
        &mut staging,
        &pb::KeyEvent {
            r#type: T::Synced as i32,
            ..Default::default()
        },
    );
    let (mut late, mut late_staging) = (Mirror::new(), None);
    for e in snapshot(&mut stalled).await {
        apply(&mut late, &mut late_staging, &e);
    }
    apply(
        &mut late,
        &mut late_staging,
        &pb::KeyEvent {
            r#type: T::Synced as i32,
            ..Default::default()
        },
    );
    assert_eq!(seen, expected(&set_a));

    // 11 rotations = 2200 events, over twice what the bus holds for a subscriber.
    let rotations: u32 = 11;
    for r in 0..rotations {
        let now = if r.is_multiple_of(2) { &set_b } else { &set_a };
        idp.publish("/jwks", &refs(now));
        let resp = refresh(&h.channel, "demo", "").await;
        assert!(resp.refreshed, "{}", resp.error);
        assert_eq!((resp.added.len(), resp.removed.len()), (100, 100));
        for _ in 0..200 {
            let e = next(&mut reader).await;
            assert!(
                matches!(kind(&e), T::Added | T::Removed),
                "the reader is never resynchronised"
            );
            apply(&mut seen, &mut staging, &e);
        }
        assert_eq!(seen, expected(now), "rotation {r}");
    }
    let last = if !rotations.is_multiple_of(2) {
        &set_b
    } else {
        &set_a
    };

    // The stalled subscriber reads again: whatever was in flight, then a fresh snapshot.
    let mut resynced = false;
    while !resynced {
        let e = next(&mut stalled).await;
        if kind(&e) == T::Synced {
            assert!(e.message.contains("fell behind"), "{}", e.message);
            resynced = true;
        }
        apply(&mut late, &mut late_staging, &e);
    }
    assert_eq!(late, expected(last));
}

#[tokio::test]
async fn a_failed_refresh_is_streamed_once_per_failure_not_per_caller() {
    let (k1, k2, stranger) = (
        TestKey::ec("k1"),
        TestKey::ec("k2"),
        TestKey::ec("stranger"),
    );
    let (idp, h) = setup_forcing_any_time(&[&k1]).await;
    let mut s = watch(&h.channel, &[]).await.expect("WatchKeys");
    assert_eq!(snapshot(&mut s).await.len(), 1);

    let failing = Arc::new(AtomicBool::new(true));
    let failures = Arc::new(AtomicUsize::new(0));
    let good = jwks(&[&k1, &k2]).to_string().into_bytes();
    {
        let (failing, failures) = (failing.clone(), failures.clone());
        idp.set(
            Method::GET,
            "/jwks",
            Behaviour::Dynamic(Arc::new(move |_| {
                if failing.load(Ordering::SeqCst) {
                    failures.fetch_add(1, Ordering::SeqCst);
                    (500, vec![], b"fault".to_vec())
                } else {
                    (
                        200,
                        vec![("content-type".into(), "application/json".into())],
                        good.clone(),
                    )
                }
            })),
        );
    }
    // Five callers with an unknown kid at once: one refresh, one failure.
    let token = stranger.token(&claims(&idp.issuer(), "api://demo"));
    let calls = (0..5).map(|_| {
        let mut c = h.client.clone();
        let token = token.clone();
        async move {
            c.validate(pb::ValidateRequest {
                token,
                ..Default::default()
            })
            .await
            .expect("Validate")
            .into_inner()
        }
    });
    for r in futures::future::join_all(calls).await {
        assert!(!r.valid);
    }
    // Two operators forcing a refresh of a slow, failing provider share one fetch.
    idp.set_delay("/jwks", Some(Duration::from_millis(300)));
    let (r1, r2) = tokio::join!(
        refresh(&h.channel, "demo", ""),
        refresh(&h.channel, "demo", "")
    );
    for r in [&r1, &r2] {
        assert!(!r.refreshed);
        assert!(r.error.contains("500"), "{}", r.error);
    }
    idp.set_delay("/jwks", None);
    failing.store(false, Ordering::SeqCst);
    let ok = refresh(&h.channel, "demo", "").await;
    assert!(ok.refreshed, "{}", ok.error);
    assert_eq!(
        ok.added
            .iter()
            .map(|k| k.key_id.as_str())
            .collect::<Vec<_>>(),
        vec!["k2"]
    );

    // Every failure before the recovery, and only those, precede the ADDED marker.
    let mut failed_events = 0;
    loop {
        let e = next(&mut s).await;
        match kind(&e) {
            T::RefreshFailed => {
                assert_eq!(
                    (e.tenant.as_str(), e.issuer.clone()),
                    ("demo", idp.issuer())
                );
                assert!(e.message.contains("500"), "{}", e.message);
                assert!(e.key_id.is_empty() && e.jwk.is_empty());
                failed_events += 1;
            }
            T::Added => {
                assert_eq!(e.key_id, "k2");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let fetch_failures = failures.load(Ordering::SeqCst);
    assert!(
        fetch_failures >= 2,
        "the kid miss and the forced refresh both fetched"
    );
    assert!(
        fetch_failures < 7,
        "callers joined fetches: {fetch_failures}"
    );
    assert_eq!(
        failed_events, fetch_failures,
        "one REFRESH_FAILED per failed fetch"
    );
}

#[tokio::test]
async fn shutdown_ends_every_stream_with_ok() {
    let k1 = TestKey::ec("k1");
    let (_idp, h) = setup(&[&k1], "").await;
    let mut s1 = watch(&h.channel, &[]).await.expect("WatchKeys");
    let mut s2 = watch(&h.channel, &["demo"]).await.expect("WatchKeys");
    snapshot(&mut s1).await;
    snapshot(&mut s2).await;
    h.server.begin_shutdown();
    for s in [&mut s1, &mut s2] {
        let end = tokio::time::timeout(Duration::from_secs(10), s.message())
            .await
            .expect("ends in time");
        assert!(
            matches!(end, Ok(None)),
            "the stream ends with status OK: {end:?}"
        );
    }
    h.server.join().await.expect("clean exit");
}

#[tokio::test]
async fn the_watcher_cap_refuses_beyond_it_and_a_client_that_leaves_frees_its_slot() {
    let idp = FakeIdp::start().await;
    let k1 = TestKey::ec("k1");
    idp.serve_oidc(&[&k1]);
    let yaml = format!("server:\n  max_watchers: 2\n{}", oidc_tenant(&idp, ""));
    let h = start(settings(&yaml)).await;
    h.wait_health(TOKEN_SERVICE, SERVING).await;
    let leaving = connect(h.server.addr).await;
    let first = watch(&leaving, &[]).await.expect("first");
    let mut second = watch(&h.channel, &[]).await.expect("second");
    let err = watch(&h.channel, &[]).await.expect_err("third");
    assert_eq!(err.code(), Code::ResourceExhausted);
    snapshot(&mut second).await;
    drop(first);
    drop(leaving);
    let mut replacement = None;
    for _ in 0..250 {
        match watch(&h.channel, &[]).await {
            Ok(s) => {
                replacement = Some(s);
                break;
            }
            Err(e) => assert_eq!(e.code(), Code::ResourceExhausted),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut replacement = replacement.expect("the slot of the client that left is free again");
    assert_eq!(snapshot(&mut replacement).await.len(), 1);
    let err = watch(&h.channel, &[]).await.expect_err("still capped");
    assert_eq!(err.code(), Code::ResourceExhausted);
}

#[tokio::test]
async fn list_issuers_and_refresh_issuer_report_state_and_changes() {
    let (k1, k2, k3) = (
        TestKey::rsa("k1", "RS256"),
        TestKey::ec("k2"),
        TestKey::ec("k3"),
    );
    let (idp, h) = setup_forcing_any_time(&[&k1]).await;
    let list = list_issuers(&h.channel).await;
    assert_eq!(list.len(), 1);
    let i = &list[0];
    assert_eq!(
        (i.tenant.as_str(), i.policy.as_str(), i.source.as_str()),
        ("demo", "", "discovery")
    );
    assert_eq!(i.issuer, idp.issuer());
    assert_eq!(i.metadata_url, idp.url("/.well-known/openid-configuration"));
    assert_eq!(i.jwks_uri, idp.url("/jwks"));
    let keys: Vec<(&str, &str, &str, String)> = i
        .keys
        .iter()
        .map(|k| {
            (
                k.key_id.as_str(),
                k.algorithm.as_str(),
                k.key_type.as_str(),
                k.thumbprint.clone(),
            )
        })
        .collect();
    assert_eq!(keys, vec![("k1", "RS256", "RSA", rfc7638(&k1.jwk))]);
    let ts = |t: &Option<prost_types::Timestamp>| t.as_ref().map(|t| t.seconds).expect("timestamp");
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    assert!((now - 60..=now).contains(&ts(&i.last_success)));
    assert!(
        ts(&i.next_refresh) > now + 3600,
        "the next refresh is hours away"
    );
    assert_eq!((i.fetches_ok, i.fetches_failed), (1, 0));
    assert!(i.last_error.is_empty() && i.last_error_at.is_none() && !i.last_failed);

    idp.publish("/jwks", &[&k1, &k2]);
    let r = refresh(&h.channel, "demo", "").await;
    assert!(r.refreshed, "{}", r.error);
    assert_eq!(
        r.added
            .iter()
            .map(|k| (k.key_id.as_str(), k.thumbprint.clone()))
            .collect::<Vec<_>>(),
        vec![("k2", rfc7638(&k2.jwk))]
    );
    assert!(r.removed.is_empty());
    assert_eq!(r.issuer.as_ref().map(|i| i.keys.len()), Some(2));

    // Two concurrent forced refreshes share one fetch and report the same change.
    let before = idp.count("/jwks");
    idp.publish("/jwks", &[&k2, &k3]);
    idp.set_delay("/jwks", Some(Duration::from_millis(300)));
    let (a, b) = tokio::join!(
        refresh(&h.channel, "demo", ""),
        refresh(&h.channel, "demo", "")
    );
    idp.set_delay("/jwks", None);
    assert_eq!(idp.count("/jwks"), before + 1, "single flight");
    for r in [&a, &b] {
        assert!(r.refreshed, "{}", r.error);
        assert_eq!(
            r.added
                .iter()
                .map(|k| k.key_id.as_str())
                .collect::<Vec<_>>(),
            vec!["k3"]
        );
        assert_eq!(
            r.removed
                .iter()
                .map(|k| k.key_id.as_str())
                .collect::<Vec<_>>(),
            vec!["k1"]
        );
    }

    idp.set(Method::GET, "/jwks", Behaviour::Status(503));
    let failed = refresh(&h.channel, "demo", "").await;
    assert!(!failed.refreshed);
    assert!(failed.error.contains("503"), "{}", failed.error);
    assert!(
        failed.added.is_empty() && failed.removed.is_empty(),
        "the last good keys stay"
    );
    let i = list_issuers(&h.channel).await.remove(0);
    assert!(i.last_failed);
    assert!(i.last_error.contains("503"));
    assert!(i.last_error_at.is_some());
    assert!(i.fetches_failed >= 1);
    assert_eq!(i.keys.len(), 2);

    for (tenant, policy) in [("nope", ""), ("demo", "B2C_1_x"), ("", "")] {
        let err = admin(&h.channel)
            .refresh_issuer(pb::RefreshIssuerRequest {
                tenant: tenant.into(),
                policy: policy.into(),
            })
            .await
            .expect_err("bad target");
        assert_eq!(err.code(), Code::InvalidArgument, "{tenant}/{policy}");
    }
    let err = admin(&h.channel)
        .list_issuers(pb::ListIssuersRequest {
            tenants: vec!["nope".into()],
        })
        .await
        .expect_err("unknown tenant");
    assert_eq!(err.code(), Code::InvalidArgument);
}

async fn reflected_services(channel: &Channel) -> Vec<String> {
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut client = ServerReflectionClient::new(channel.clone());
    let mut answers = client
        .server_reflection_info(futures::stream::iter([req]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers
        .message()
        .await
        .expect("answer")
        .expect("one answer");
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            l.service.into_iter().map(|s| s.name).collect()
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn admin_is_listed_by_reflection_and_can_be_turned_off() {
    let k1 = TestKey::ec("k1");
    let (_idp, h) = setup(&[&k1], "").await;
    let services = reflected_services(&h.channel).await;
    for s in ["introspect.v1.AdminService", TOKEN_SERVICE] {
        assert!(services.iter().any(|n| n == s), "{s} not in {services:?}");
    }
    // The operator view is not a health dependency.
    assert_eq!(h.health("introspect.v1.AdminService").await, -1);

    let idp = FakeIdp::start().await;
    idp.serve_oidc(&[&k1]);
    let off = start(settings(&format!(
        "server:\n  admin: false\n{}",
        oidc_tenant(&idp, "")
    )))
    .await;
    off.wait_health(TOKEN_SERVICE, SERVING).await;
    let err = admin(&off.channel)
        .list_issuers(pb::ListIssuersRequest::default())
        .await
        .expect_err("not served");
    assert_eq!(err.code(), Code::Unimplemented);
    let mut s = watch(&off.channel, &[])
        .await
        .expect("WatchKeys is unaffected");
    assert_eq!(snapshot(&mut s).await.len(), 1);
}

#[tokio::test]
async fn the_example_mirror_verifies_a_token_signed_by_a_rotated_in_key() {
    introspectd::install_crypto();
    let (k1, k2) = (TestKey::rsa("k1", "RS256"), TestKey::ec("k2"));
    let (idp, h) = setup_forcing_any_time(&[&k1]).await;
    let mut s = watch(&h.channel, &["demo"]).await.expect("WatchKeys");
    let mut keys = mirror::KeyMirror::new();
    while !keys.is_synced() {
        keys.apply(&next(&mut s).await).expect("apply");
    }
    let aud = ["api://demo"];
    let t1 = k1.token(&claims(&idp.issuer(), "api://demo"));
    let t2 = k2.token(&claims(&idp.issuer(), "api://demo"));
    let claims1 = keys.verify(&t1, &aud).expect("k1 verifies locally");
    assert_eq!(claims1["sub"], "user-1");
    assert!(keys.verify(&t2, &aud).is_err(), "k2 is not known yet");
    assert!(
        keys.verify(&t1, &["api://other"]).is_err(),
        "audience is checked"
    );
    let forged = k2.token_with(json!({"kid": "k1"}), &claims(&idp.issuer(), "api://demo"));
    assert!(
        keys.verify(&forged, &aud).is_err(),
        "k1's kid with k2's signature and algorithm"
    );

    idp.publish("/jwks", &[&k1, &k2]);
    assert!(refresh(&h.channel, "demo", "").await.refreshed);
    let change = keys.apply(&next(&mut s).await).expect("apply");
    assert_eq!(
        change,
        mirror::Change::Added(("demo".into(), String::new(), "k2".into()))
    );
    let claims2 = keys
        .verify(&t2, &aud)
        .expect("the rotated-in key verifies locally");
    assert_eq!(claims2["iss"], idp.issuer());

    idp.publish("/jwks", &[&k2]);
    assert!(refresh(&h.channel, "demo", "").await.refreshed);
    let change = keys.apply(&next(&mut s).await).expect("apply");
    assert_eq!(
        change,
        mirror::Change::Removed(("demo".into(), String::new(), "k1".into()))
    );
    assert!(
        keys.verify(&t1, &aud).is_err(),
        "a removed key no longer verifies"
    );
    assert!(keys.verify(&t2, &aud).is_ok());
}

#[tokio::test]
async fn a_kid_reused_for_new_material_is_added_then_the_old_one_removed() {
    introspectd::install_crypto();
    let (old, new) = (TestKey::ec("k1"), TestKey::ec("k1"));
    let (idp, h) = setup(&[&old], "").await;
    let mut s = watch(&h.channel, &[]).await.expect("WatchKeys");
    let mut keys = mirror::KeyMirror::new();
    while !keys.is_synced() {
        keys.apply(&next(&mut s).await).expect("apply");
    }
    idp.publish("/jwks", &[&new]);
    let r = refresh(&h.channel, "demo", "").await;
    assert_eq!((r.added.len(), r.removed.len()), (1, 1));
    let added = next(&mut s).await;
    let removed = next(&mut s).await;
    assert_eq!(
        (kind(&added), added.thumbprint.clone()),
        (T::Added, rfc7638(&new.jwk))
    );
    assert_eq!(
        (kind(&removed), removed.thumbprint.clone()),
        (T::Removed, rfc7638(&old.jwk))
    );
    assert_eq!(
        (added.key_id.as_str(), removed.key_id.as_str()),
        ("k1", "k1")
    );
    keys.apply(&added).expect("apply");
    keys.apply(&removed).expect("apply");
    let id = ("demo".to_string(), String::new(), "k1".to_string());
    assert_eq!(
        keys.keys(),
        vec![(id, rfc7638(&new.jwk))],
        "the new material stays"
    );
    let token = new.token(&claims(&idp.issuer(), "api://demo"));
    keys.verify(&token, &["api://demo"])
        .expect("verifies with the new material");
    let stale = old.token(&claims(&idp.issuer(), "api://demo"));
    assert!(keys.verify(&stale, &["api://demo"]).is_err());
}

const BIN: &str = env!("CARGO_BIN_EXE_introspectd");

#[tokio::test]
async fn the_watch_command_prints_json_lines_and_exits_0_when_the_server_stops() {
    use tokio::io::AsyncBufReadExt as _;
    let (k1, k2) = (TestKey::ec("k1"), TestKey::ec("k2"));
    let (idp, h) = setup(&[&k1], "").await;
    let mut child = tokio::process::Command::new(BIN)
        .args([
            "watch",
            "--addr",
            &format!("http://{}", h.server.addr),
            "--tenant",
            "demo",
        ])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn introspectd watch");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut line = async || -> Value {
        let l = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("a line in time")
            .expect("read")
            .expect("a line");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
    };
    let existing = line().await;
    assert_eq!(existing["type"], "KEY_EVENT_TYPE_EXISTING");
    assert_eq!(existing["tenant"], "demo");
    assert_eq!(existing["issuer"], idp.issuer());
    assert_eq!(existing["key_id"], "k1");
    assert_eq!(existing["algorithm"], "ES256");
    assert_eq!(existing["key_type"], "EC");
    assert_eq!(existing["thumbprint"], rfc7638(&k1.jwk));
    assert_eq!(existing["jwk"]["x"], k1.jwk["x"], "jwk is parsed JSON");
    let at = existing["observed_at"].as_str().expect("observed_at");
    assert!(humantime::parse_rfc3339(at).is_ok(), "RFC 3339: {at}");
    assert_eq!(line().await["type"], "KEY_EVENT_TYPE_SYNCED");
    idp.publish("/jwks", &[&k1, &k2]);
    assert!(refresh(&h.channel, "demo", "").await.refreshed);
    let added = line().await;
    assert_eq!(
        (added["type"].as_str(), added["key_id"].as_str()),
        (Some("KEY_EVENT_TYPE_ADDED"), Some("k2"))
    );
    h.server.shutdown().await.expect("server stops");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("watch exits when the stream ends")
        .expect("wait");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_issuers_command_prints_a_table() {
    let k1 = TestKey::ec("k1");
    let (idp, h) = setup(&[&k1], "").await;
    let addr = format!("http://{}", h.server.addr);
    let out = tokio::process::Command::new(BIN)
        .args(["issuers", "--addr", &addr])
        .output()
        .await
        .expect("run introspectd issuers");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    for column in [
        "TENANT/POLICY",
        "ISSUER",
        "KEYS",
        "LAST SUCCESS",
        "LAST ERROR",
        "NEXT REFRESH",
        "OK/FAILED",
    ] {
        assert!(lines[0].contains(column), "{column}: {text}");
    }
    let row = lines[1];
    assert!(row.starts_with("demo "), "{row}");
    assert!(
        row.contains(&idp.issuer()) && row.contains("1 (k1)") && row.contains(" ago"),
        "{row}"
    );
    assert!(row.contains("in 1") && row.ends_with("1/0"), "{row}");
    assert_eq!(lines[0].find("ISSUER"), row.find(&idp.issuer()), "aligned");

    let idp2 = FakeIdp::start().await;
    idp2.serve_oidc(&[&k1]);
    let off = start(settings(&format!(
        "server:\n  admin: false\n{}",
        oidc_tenant(&idp2, "")
    )))
    .await;
    let out = tokio::process::Command::new(BIN)
        .args(["issuers", "--addr", &format!("http://{}", off.server.addr)])
        .output()
        .await
        .expect("run introspectd issuers");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.admin"));
}
