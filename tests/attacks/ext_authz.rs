//! Envoy's Authorization service (on by default on `server.listen`) under the same
//! attacks: its Check streams hold no concurrency permit before their message arrives,
//! and the route lists a CheckRequest carries in `context_extensions` are bounded like
//! Validate's request lists (any caller that reaches the port can send them, not only
//! Envoy).

use std::time::Duration;

use introspectd::grpc::ext_authz::{
    pb::envoy::service::auth::v3::{
        CheckResponse, authorization_client::AuthorizationClient, check_response::HttpResponse,
    },
    request::http_check_request,
};
use serde_json::json;
use tonic::Code;

use crate::{VICTIM_DEADLINE, common::*, net, serve, victim_validates};

const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";
const MAX_MESSAGE: usize = 512;

/// One Check of `token` with the route's `context_extensions`, on a new connection.
async fn check(
    addr: std::net::SocketAddr,
    token: &str,
    ext: &[(&str, &str)],
) -> Result<CheckResponse, tonic::Status> {
    let bearer = format!("Bearer {token}");
    let req = http_check_request(&[("authorization", bearer.as_str())], ext);
    AuthorizationClient::new(net::own_channel(addr).await)
        .check(req)
        .await
        .map(|r| r.into_inner())
}

/// The HTTP status and body Envoy would send the client.
fn denied(r: &CheckResponse) -> (i32, String) {
    match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => {
            (d.status.as_ref().map_or(0, |s| s.code), d.body.clone())
        }
        Some(HttpResponse::OkResponse(_)) => (200, String::new()),
        _ => (0, String::new()),
    }
}

fn code(r: &CheckResponse) -> Code {
    Code::from_i32(r.status.as_ref().map_or(-1, |s| s.code))
}

/// Another client's Check of a good token is allowed within [`VICTIM_DEADLINE`].
async fn victim_checks(addr: std::net::SocketAddr, key: &TestKey, issuer: &str) {
    let token = key.token(&claims(issuer, "api://demo"));
    let answer = tokio::time::timeout(VICTIM_DEADLINE, check(addr, &token, &[]))
        .await
        .expect("the other client's Check is answered within 1 s")
        .expect("the other client's Check is not refused");
    assert_eq!(code(&answer), Code::Ok, "{:?}", answer.status);
}

/// Nine connections of 128 header-only Check streams: more streams than concurrency
/// permits (1,024), none of which holds one, so Validate and Check still answer.
#[tokio::test]
async fn header_only_check_streams_hold_no_concurrency_permit() {
    let (idp, key, h) = serve("", "").await;
    let mut attacks = Vec::new();
    for _ in 0..9 {
        let a =
            net::header_only_streams(h.server.addr, CHECK_PATH, 128, Duration::from_millis(300))
                .await;
        assert_eq!(
            a.server_limit, 128,
            "Check streams get MAX_CONCURRENT_STREAMS"
        );
        attacks.push(a);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    victim_validates(h.server.addr, &key, &idp.issuer()).await;
    victim_checks(h.server.addr, &key, &idp.issuer()).await;
    drop(attacks);
}

/// Route lists past 64 entries or 256 bytes an entry (and a tenant over 256 bytes) are
/// route configuration errors (HTTP 500, never an allow); at the bounds, a token granting
/// thousands of scopes is matched through sets and answered in short messages, while
/// other clients are answered.
#[tokio::test]
async fn route_lists_in_a_check_request_are_bounded() {
    let (idp, key, h) = serve("", "").await;
    let addr = h.server.addr;
    let token = key.token(&claims(&idp.issuer(), "api://demo"));
    let long = "s".repeat(257);
    let many = (0..65)
        .map(|i| format!("s{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let cases: [(&str, &str, &str); 4] = [
        ("65 required scopes", "required_scopes", &many),
        ("a 257-byte scope", "required_scopes", &long),
        ("a 257-byte audience", "audiences", &long),
        ("a 257-byte tenant", "tenant", &long),
    ];
    for (name, ext_key, value) in cases {
        let r = check(addr, &token, &[(ext_key, value)]).await.expect(name);
        let (http, body) = denied(&r);
        assert_eq!(
            http, 500,
            "{name}: a route configuration error, never an allow"
        );
        assert_eq!(code(&r), Code::Internal, "{name}");
        assert!(body.len() < MAX_MESSAGE, "{name}: {} bytes", body.len());
    }

    // The largest route allowed against a forged token granting 5,000 scopes.
    let scopes: Vec<String> = (0..64).map(|i| format!("{i:0256}")).collect();
    let required = scopes.join(" ");
    let mut c = claims(&idp.issuer(), "api://demo");
    c["scp"] = json!("a ".repeat(5000).trim_end());
    let forged = key.token(&c);
    for _ in 0..20 {
        let r = check(addr, &forged, &[("required_scopes", &required)])
            .await
            .expect("answered");
        let (http, body) = denied(&r);
        assert_eq!(http, 403, "insufficient scope");
        assert!(body.len() < MAX_MESSAGE, "{} bytes", body.len());
        let message = r.status.as_ref().map_or(0, |s| s.message.len());
        assert!(message < MAX_MESSAGE, "{message} bytes");
    }
    victim_validates(addr, &key, &idp.issuer()).await;
    victim_checks(addr, &key, &idp.issuer()).await;
}
