//! Finding 3: unbounded work per request before any signature check. Request lists were
//! matched against the token's in O(n·m) and every missing scope was listed in the error.

use std::time::Duration;

use introspectd::grpc::pb::{self, token_service_client::TokenServiceClient};
use serde_json::json;
use tonic::Code;

use crate::{common::*, serve, victim_validates};

const MAX_MESSAGE: usize = 512;

/// A token (signed or not, it does not matter: scopes are checked before the key) that
/// grants `n` scopes, all the same one-letter scope, as a 16 KiB token can.
fn scope_heavy_token(key: &TestKey, issuer: &str, n: usize) -> String {
    let mut c = claims(issuer, "api://demo");
    c["scp"] = json!("a ".repeat(n).trim_end());
    key.token(&c)
}

fn list(n: usize, len: usize) -> Vec<String> {
    (0..n).map(|i| format!("{i:0len$}")).collect()
}

async fn validate(
    h: &Harness,
    req: pb::ValidateRequest,
) -> Result<pb::ValidateResponse, tonic::Status> {
    h.client.clone().validate(req).await.map(|r| r.into_inner())
}

#[tokio::test]
async fn request_lists_are_bounded() {
    let (idp, key, h) = serve("", "").await;
    let token = key.token(&claims(&idp.issuer(), "api://demo"));
    let cases = [
        ("65 required scopes", list(65, 4), vec![]),
        ("a 257-byte scope", list(1, 257), vec![]),
        ("65 audiences", vec![], list(65, 4)),
        ("a 257-byte audience", vec![], list(1, 257)),
    ];
    for (name, required_scopes, audiences) in cases {
        let err = validate(
            &h,
            pb::ValidateRequest {
                token: token.clone(),
                required_scopes,
                audiences,
                ..Default::default()
            },
        )
        .await
        .expect_err(name);
        assert_eq!(err.code(), Code::InvalidArgument, "{name}: {err:?}");
        assert!(err.message().len() < MAX_MESSAGE, "{name}");
    }
    // Exactly at the bounds is accepted.
    let mut at_bound = list(63, 256);
    at_bound.push("api://demo".into());
    let ok = validate(
        &h,
        pb::ValidateRequest {
            token,
            audiences: at_bound,
            ..Default::default()
        },
    )
    .await
    .expect("64 audiences of at most 256 bytes");
    assert!(ok.valid, "{:?}", ok.error);
}

#[tokio::test]
async fn the_issues_attack_is_refused_at_the_boundary() {
    let (idp, key, h) = serve("", "").await;
    // 5,800 granted scopes and 8,000 required ones: under the 64 KiB message limit.
    let token = scope_heavy_token(&key, &idp.issuer(), 5800);
    let err = validate(
        &h,
        pb::ValidateRequest {
            token,
            required_scopes: list(8000, 4),
            ..Default::default()
        },
    )
    .await
    .expect_err("refused before any matching");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().len() < MAX_MESSAGE);
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
}

#[tokio::test]
async fn the_largest_allowed_request_answers_with_a_short_message() {
    let (idp, key, h) = serve("", "").await;
    let token = scope_heavy_token(&key, &idp.issuer(), 5800);
    let r = validate(
        &h,
        pb::ValidateRequest {
            token,
            required_scopes: list(64, 256),
            ..Default::default()
        },
    )
    .await
    .expect("answered");
    assert!(!r.valid);
    assert_eq!(code(&r), pb::ErrorCode::InsufficientScope);
    let message = r.error.expect("error").message;
    assert!(message.len() < MAX_MESSAGE, "{} bytes", message.len());
    assert!(
        message.contains("64"),
        "it says how many are missing: {message}"
    );
}

#[tokio::test]
async fn every_error_message_stays_under_512_bytes() {
    let (idp, key, h) = serve("", "").await;
    let long = "t".repeat(60_000);
    let token = key.token(&claims(&idp.issuer(), "api://demo"));
    let err = validate(
        &h,
        pb::ValidateRequest {
            token: token.clone(),
            tenant: long.clone(),
            ..Default::default()
        },
    )
    .await
    .expect_err("unknown tenant");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < MAX_MESSAGE, "{}", err.message().len());

    let err = h
        .client
        .clone()
        .introspect(pb::IntrospectRequest {
            token: "opaque".into(),
            tenant: long.clone(),
            ..Default::default()
        })
        .await
        .expect_err("unknown tenant");
    assert!(err.message().len() < MAX_MESSAGE, "{}", err.message().len());

    let err = h
        .client
        .clone()
        .introspect(pb::IntrospectRequest {
            token: token.clone(),
            token_type_hint: long.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a hint is a short word");
    assert_eq!(err.code(), Code::InvalidArgument);

    let err = TokenServiceClient::new(h.channel.clone())
        .watch_keys(pb::WatchKeysRequest {
            tenants: vec![long.clone()],
        })
        .await
        .expect_err("unknown tenant");
    assert!(err.message().len() < MAX_MESSAGE, "{}", err.message().len());
    let err = TokenServiceClient::new(h.channel.clone())
        .watch_keys(pb::WatchKeysRequest {
            tenants: list(65, 3),
        })
        .await
        .expect_err("too many tenants");
    assert_eq!(err.code(), Code::InvalidArgument);

    // A rejection of the token itself quoting a long unverified claim.
    let r = validate(
        &h,
        pb::ValidateRequest {
            token: key.token(&claims(&"i".repeat(9000), "api://demo")),
            ..Default::default()
        },
    )
    .await
    .expect("answered");
    assert_eq!(code(&r), pb::ErrorCode::UnknownIssuer);
    let message = r.error.expect("error").message;
    assert!(message.len() < MAX_MESSAGE, "{}", message.len());
}

#[tokio::test]
async fn a_flood_of_the_largest_allowed_requests_does_not_slow_others() {
    let (idp, key, h) = serve("", "").await;
    let token = scope_heavy_token(&key, &idp.issuer(), 5800);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut attackers = Vec::new();
    for _ in 0..4 {
        let mut client = h.client.clone();
        let (token, stop) = (token.clone(), stop.clone());
        attackers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = client
                    .validate(pb::ValidateRequest {
                        token: token.clone(),
                        required_scopes: list(64, 256),
                        audiences: list(64, 256),
                        ..Default::default()
                    })
                    .await;
                n += 1;
            }
            n
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for a in attackers {
        assert!(a.await.expect("attacker") > 0);
    }
}
