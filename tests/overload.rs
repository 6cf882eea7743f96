//! Overload protection and connection lifetime, end to end: the global limit on
//! in-flight unary calls (RESOURCE_EXHAUSTED at once, streams and health exempt), the
//! request timeout, message size limits, HTTP/2 keepalive, and max connection age with
//! its grace period.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::time::Duration;

use common::*;
use introspectd::{
    config::Settings,
    grpc::{
        ext_authz::{
            pb::envoy::service::auth::v3::authorization_client::AuthorizationClient,
            request::http_check_request,
        },
        pb::{self, admin_service_client::AdminServiceClient},
    },
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

const SERVING: i32 = 1;

async fn setup(
    extra_tenant: &str,
    tune: impl FnOnce(&mut Settings),
) -> (FakeIdp, TestKey, Harness) {
    start_oidc(extra_tenant, |s| {
        s.server.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
        tune(s);
    })
    .await
}

async fn scrape(h: &Harness) -> String {
    scrape_metrics(h.server.metrics_addr.expect("metrics")).await
}

use common::metric as sample;

const VALIDATE: &str =
    r#"grpc_type="unary",grpc_service="introspect.v1.TokenService",grpc_method="Validate""#;

#[tokio::test]
async fn beyond_the_concurrency_limit_calls_are_refused_at_once_and_service_recovers() {
    let (idp, key, h) = setup(
        "    fetch_timeout: 20s\n    unknown_kid_cooldown: 1s\n",
        |s| {
            s.server.concurrency_limit = 1;
            s.server.admin = true;
            s.ext_authz.enabled = true;
        },
    )
    .await;
    let iss = idp.issuer();
    // A token under an unknown kid holds its slot while the (slow) JWKS refresh runs.
    let k2 = TestKey::rsa("k2", "RS256");
    idp.publish("/jwks", &[&key, &k2]);
    idp.set_delay("/jwks", Some(Duration::from_secs(3)));
    let jwks_before = idp.count("/jwks");
    let slow = {
        let mut client = h.client.clone();
        let token = k2.token(&claims(&iss, "api://demo"));
        tokio::spawn(async move {
            client
                .validate(pb::ValidateRequest {
                    token,
                    ..Default::default()
                })
                .await
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || idp.count("/jwks") > jwks_before).await,
        "the kid miss refreshes"
    );

    let mut client = h.client.clone();
    let refused = client
        .validate(pb::ValidateRequest {
            token: key.token(&claims(&iss, "api://demo")),
            ..Default::default()
        })
        .await
        .expect_err("over the limit");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    // Every other unary method shares the same permits.
    let introspect = client
        .introspect(pb::IntrospectRequest {
            token: key.token(&claims(&iss, "api://demo")),
            ..Default::default()
        })
        .await
        .expect_err("Introspect over the limit");
    let admin = AdminServiceClient::new(h.channel.clone())
        .list_issuers(pb::ListIssuersRequest::default())
        .await
        .expect_err("ListIssuers over the limit");
    let check = AuthorizationClient::new(h.channel.clone())
        .check(http_check_request(&[("authorization", "Bearer x")], &[]))
        .await
        .expect_err("Check over the limit");
    for (method, status) in [
        ("Introspect", introspect),
        ("ListIssuers", admin),
        ("Check", check),
    ] {
        assert_eq!(
            status.code(),
            tonic::Code::ResourceExhausted,
            "{method}: {status:?}"
        );
    }

    // Health checks and streams are not limited.
    assert_eq!(h.health("").await, SERVING);
    let mut watch = HealthClient::new(h.channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch is not limited")
        .into_inner();
    assert!(watch.message().await.expect("first status").is_some());
    drop(watch);

    let first = slow.await.expect("join").expect("the slow call completes");
    assert!(first.into_inner().valid, "the slot holder got its answer");
    let again = client
        .validate(pb::ValidateRequest {
            token: key.token(&claims(&iss, "api://demo")),
            ..Default::default()
        })
        .await
        .expect("recovered");
    assert!(again.into_inner().valid);

    let text = scrape(&h).await;
    assert_eq!(
        sample(
            &text,
            &format!(r#"grpc_server_handled_total{{{VALIDATE},grpc_code="ResourceExhausted"}}"#)
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            &format!(r#"grpc_server_handled_total{{{VALIDATE},grpc_code="OK"}}"#)
        ),
        2.0
    );
}

#[tokio::test]
async fn a_call_past_the_request_timeout_is_cancelled() {
    let (idp, _key, h) = setup(
        "    fetch_timeout: 20s\n    unknown_kid_cooldown: 1s\n",
        |s| {
            s.server.request_timeout = Duration::from_millis(300);
        },
    )
    .await;
    idp.set_delay("/jwks", Some(Duration::from_secs(3)));
    let k2 = TestKey::rsa("k2", "RS256");
    let mut client = h.client.clone();
    let err = client
        .validate(pb::ValidateRequest {
            token: k2.token(&claims(&idp.issuer(), "api://demo")),
            ..Default::default()
        })
        .await
        .expect_err("times out");
    assert_eq!(err.code(), tonic::Code::Cancelled, "{err:?}");
    let text = scrape(&h).await;
    assert_eq!(
        sample(
            &text,
            &format!(r#"grpc_server_handled_total{{{VALIDATE},grpc_code="Canceled"}}"#)
        ),
        1.0
    );
    // The server is fine afterwards.
    assert_eq!(h.health("").await, SERVING);
}

#[tokio::test]
async fn oversized_messages_are_refused_before_decoding() {
    let (_idp, _key, h) = setup("", |s| {
        s.server.max_token_bytes = 1024;
        s.server.max_message_bytes = Some(2048);
    })
    .await;
    let mut client = h.client.clone();
    let err = client
        .validate(pb::ValidateRequest {
            token: "a".repeat(1500),
            ..Default::default()
        })
        .await
        .expect_err("token limit");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = client
        .validate(pb::ValidateRequest {
            token: "a".repeat(4096),
            ..Default::default()
        })
        .await
        .expect_err("message limit");
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    let mut health = HealthClient::new(h.channel.clone());
    let err = health
        .check(HealthCheckRequest {
            service: "s".repeat(4096),
        })
        .await
        .expect_err("health has the limit too");
    assert_eq!(err.code(), tonic::Code::OutOfRange);
}

#[tokio::test]
async fn old_connections_get_goaway_then_are_closed_after_the_grace() {
    let age = Duration::from_secs(1);
    let grace = Duration::from_secs(2);
    let (_idp, _key, h) = setup("", |s| {
        s.server.max_connection_age = Some(age);
        s.server.max_connection_age_grace = grace;
    })
    .await;
    // A fresh connection, so its age starts now.
    let channel = connect(h.server.addr).await;
    let opened = tokio::time::Instant::now();
    let mut health = HealthClient::new(channel.clone());
    let mut watch = health
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("watch")
        .into_inner();
    assert!(watch.message().await.expect("first").is_some());
    let accepted_before = sample(
        &scrape(&h).await,
        "introspectd_grpc_connections_accepted_total",
    );

    // Past the age, within the grace: the stream lives on; new calls go elsewhere.
    tokio::time::sleep(age + Duration::from_millis(500)).await;
    let pending = tokio::time::timeout(Duration::from_millis(10), watch.message()).await;
    assert!(
        pending.is_err(),
        "the stream is still open during the grace period"
    );
    let mut ok = false;
    for _ in 0..5 {
        if health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .is_ok()
        {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "calls after GOAWAY succeed on a new connection");
    let accepted = sample(
        &scrape(&h).await,
        "introspectd_grpc_connections_accepted_total",
    );
    assert!(
        accepted > accepted_before,
        "the client reconnected: {accepted_before} -> {accepted}"
    );

    // After the grace, the old connection is closed and the stream ends, not OK.
    let ended = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("ends after the grace");
    assert!(ended.is_err(), "the stream ends with an error: {ended:?}");
    assert!(opened.elapsed() >= age + grace, "not before age + grace");
    let watch_labels =
        r#"grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch""#;
    let mut cancelled = 0.0;
    for _ in 0..100 {
        cancelled = sample(
            &scrape(&h).await,
            &format!(r#"grpc_server_handled_total{{{watch_labels},grpc_code="Canceled"}}"#),
        );
        if cancelled >= 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(cancelled, 1.0);
}

/// Reads HTTP/2 frames until EOF; returns the frame types seen.
async fn frame_types(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = stream.read_to_end(&mut bytes).await;
    let mut types = Vec::new();
    let mut i = 0;
    while i + 9 <= bytes.len() {
        let len = (usize::from(bytes[i]) << 16)
            | (usize::from(bytes[i + 1]) << 8)
            | usize::from(bytes[i + 2]);
        types.push(bytes[i + 3]);
        i += 9 + len;
    }
    types
}

#[tokio::test]
async fn keepalive_pings_and_closes_a_peer_that_never_answers() {
    let (_idp, _key, h) = setup("", |s| {
        s.server.keepalive_interval = Duration::from_millis(200);
        s.server.keepalive_timeout = Duration::from_millis(200);
    })
    .await;
    let mut raw = tokio::net::TcpStream::connect(h.server.addr)
        .await
        .expect("connect");
    // The HTTP/2 preface and an empty SETTINGS frame, then silence: no ACKs, no pongs.
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("preface");
    raw.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .expect("settings");
    let types = tokio::time::timeout(Duration::from_secs(10), frame_types(&mut raw))
        .await
        .expect("the server closes the connection");
    const PING: u8 = 6;
    assert!(types.contains(&PING), "the server pinged: {types:?}");
}

/// About twice the capacity offered: calls beyond the limit are refused at once (never
/// after a timeout), health stays SERVING throughout, and admitted calls keep a bounded
/// latency. Capacity here is `concurrency_limit` calls held by a slow (1 s) JWKS
/// refresh: each call presents an unknown kid and waits for the refresh in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_twice_the_capacity_excess_calls_are_refused_at_once_and_admitted_ones_stay_fast() {
    const LIMIT: usize = 8;
    const HOLD: Duration = Duration::from_secs(1);
    let (idp, _key, h) = setup(
        "    fetch_timeout: 5s\n    unknown_kid_cooldown: 1s\n",
        |s| s.server.concurrency_limit = LIMIT,
    )
    .await;
    idp.set_delay("/jwks", Some(HOLD));
    let iss = idp.issuer();
    let stranger = TestKey::rsa("stranger", "RS256");
    let until = tokio::time::Instant::now() + Duration::from_secs(4);

    let mut workers = Vec::new();
    for w in 0..2 * LIMIT {
        let mut client = h.client.clone();
        let token = stranger.token(&claims(&iss, "api://demo"));
        workers.push(tokio::spawn(async move {
            let (mut admitted, mut refused) = (Vec::new(), Vec::new());
            while tokio::time::Instant::now() < until {
                let t0 = tokio::time::Instant::now();
                let r = client
                    .validate(pb::ValidateRequest {
                        token: token.clone(),
                        ..Default::default()
                    })
                    .await;
                let took = t0.elapsed();
                match r {
                    Ok(_) => admitted.push(took),
                    Err(s) if s.code() == tonic::Code::ResourceExhausted => {
                        refused.push(took);
                        tokio::time::sleep(Duration::from_millis(10 + w as u64)).await;
                    }
                    Err(s) => panic!("unexpected {s:?}"),
                }
            }
            (admitted, refused)
        }));
    }
    let mut health = HealthClient::new(h.channel.clone());
    let mut probes = 0;
    while tokio::time::Instant::now() < until {
        let status = health
            .check(HealthCheckRequest {
                service: "introspect.v1.TokenService".into(),
            })
            .await
            .expect("health answers under overload")
            .into_inner()
            .status;
        assert_eq!(status, SERVING);
        probes += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut admitted, mut refused) = (Vec::new(), Vec::new());
    for w in workers {
        let (a, r) = w.await.expect("worker");
        admitted.extend(a);
        refused.extend(r);
    }
    assert!(probes >= 10, "health was probed throughout: {probes}");
    assert!(!refused.is_empty() && !admitted.is_empty(), "both happened");
    let slowest_refusal = refused.iter().max().copied().unwrap_or_default();
    assert!(
        slowest_refusal < HOLD / 2,
        "refusals come at once, not after waiting: slowest {slowest_refusal:?} of {}",
        refused.len()
    );
    let slowest_admitted = admitted.iter().max().copied().unwrap_or_default();
    assert!(
        slowest_admitted < 3 * HOLD,
        "admitted calls wait at most about one refresh: slowest {slowest_admitted:?}"
    );
}
