//! Sender-constrained tokens through Envoy's Authorization service over real gRPC: the
//! server on port 0, tokens from a fake identity provider over real HTTP, DPoP proofs
//! from a client that shares no code with the service, the method, scheme, host and
//! path from `attributes.request.http`, proofs from the `dpop` headers, the peer
//! certificate from `attributes.source.certificate`. Each hostile request is denied
//! with its HTTP status, challenge and body; positive controls show the honest request
//! passes the same setup.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::{collections::HashMap, sync::Arc};

use axum::http::Method;
use common::{dpop::*, *};
use introspectd::grpc::ext_authz::{
    SERVICE_NAME,
    pb::envoy::{
        config::core::v3::{HeaderMap, HeaderValue},
        service::auth::v3::{
            CheckRequest, CheckResponse, attribute_context::Peer,
            authorization_client::AuthorizationClient, check_response::HttpResponse,
        },
    },
    request::http_check_request,
};
use serde_json::{Value, json};
use tonic::Code;

/// The URI the client sends every request to, as a proof's `htu` names it.
const URI: &str = "https://api.example.com/v1/items";
const DPOP_CHALLENGE: &str = r#"DPoP realm="introspectd", algs="ES256 PS256 EdDSA""#;
const BEARER_CHALLENGE: &str = r#"Bearer realm="introspectd""#;
/// The service with tenant `demo` (`extra` lines added to it), its Authorization
/// service SERVING.
async fn setup(extra: &str, env: &[(&str, &str)]) -> Fixture {
    Fixture::start(extra, env, SERVICE_NAME).await
}

async fn check(fx: &Fixture, req: CheckRequest) -> CheckResponse {
    AuthorizationClient::new(fx.h.channel.clone())
        .check(req)
        .await
        .expect("Check")
        .into_inner()
}

/// What Envoy sends for `method https://api.example.com/v1/items?page=2` with `headers`
/// (lower-case names; a repeated header joined with `,`, as Envoy joins them).
fn request(method: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let mut req = http_check_request(headers, &[]);
    let http = http_mut(&mut req);
    http.method = method.into();
    http.scheme = "https".into();
    http.host = "api.example.com".into();
    http.path = "/v1/items?page=2".into();
    req
}

fn http_mut(
    req: &mut CheckRequest,
) -> &mut introspectd::grpc::ext_authz::pb::envoy::service::auth::v3::attribute_context::HttpRequest
{
    req.attributes
        .as_mut()
        .and_then(|a| a.request.as_mut())
        .and_then(|r| r.http.as_mut())
        .expect("http attributes")
}

/// The same request with Envoy's `include_peer_certificate`: the client certificate's
/// PEM, URL-encoded, in `source.certificate`.
fn with_certificate(mut req: CheckRequest, pem: &str) -> CheckRequest {
    let encoded: String = pem
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    if let Some(a) = req.attributes.as_mut() {
        a.source = Some(Peer {
            certificate: encoded,
            ..Default::default()
        });
    }
    req
}

fn dpop_request(token: &str, proofs: &[&str]) -> CheckRequest {
    let auth = format!("DPoP {token}");
    let joined = proofs.join(",");
    let mut headers = vec![("authorization", auth.as_str())];
    if !proofs.is_empty() {
        headers.push(("dpop", joined.as_str()));
    }
    request("GET", &headers)
}

fn status(r: &CheckResponse) -> (Code, i32) {
    let code = Code::from_i32(r.status.as_ref().map_or(-1, |s| s.code));
    let http = match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => d.status.as_ref().map_or(0, |s| s.code),
        Some(HttpResponse::OkResponse(_)) => 200,
        _ => 0,
    };
    (code, http)
}

/// The headers of a denied answer (sent to the client) or, on allow, the headers added
/// to the client's response.
fn client_headers(r: &CheckResponse) -> HashMap<String, String> {
    let list = match &r.http_response {
        Some(HttpResponse::DeniedResponse(d)) => &d.headers,
        Some(HttpResponse::OkResponse(o)) => &o.response_headers_to_add,
        _ => return HashMap::new(),
    };
    list.iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn upstream_subject(r: &CheckResponse) -> Option<String> {
    match &r.http_response {
        Some(HttpResponse::OkResponse(o)) => o
            .headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == "x-auth-subject")
            .map(|h| h.value.clone()),
        _ => None,
    }
}

fn assert_allowed(name: &str, r: &CheckResponse) {
    assert_eq!(status(r), (Code::Ok, 200), "{name}: {r:?}");
    assert!(upstream_subject(r).is_some(), "{name}: no identity");
}

/// Denied with 401, a challenge starting with `challenge` and naming `error`, and
/// `description` in the body; nothing of the token leaks.
fn assert_denied(name: &str, r: &CheckResponse, challenge: &str, error: &str, description: &str) {
    assert_eq!(status(r), (Code::Unauthenticated, 401), "{name}: {r:?}");
    let h = client_headers(r);
    let www = h.get("www-authenticate").cloned().unwrap_or_default();
    assert!(www.starts_with(challenge), "{name}: challenge {www:?}");
    assert!(
        www.contains(&format!("error=\"{error}\"")),
        "{name}: challenge {www:?}"
    );
    let Some(HttpResponse::DeniedResponse(d)) = &r.http_response else {
        panic!("{name}: not denied");
    };
    let body: Value = serde_json::from_str(&d.body).expect("JSON body");
    assert_eq!(body["error"], error, "{name}");
    assert_eq!(body["error_description"], description, "{name}");
    assert_eq!(
        h.get("cache-control").map(String::as_str),
        Some("no-store"),
        "{name}"
    );
}

#[tokio::test]
async fn dpop_bound_tokens_through_check() {
    let fx = setup("", &[]).await;
    let key = DpopKey::es256();
    let t = fx.token(json!({"jkt": key.jkt()}));

    // The honest request: scheme, host and path from Envoy's attributes make the htu.
    for alg_key in [DpopKey::es256(), DpopKey::rsa("PS256"), DpopKey::ed25519()] {
        let bound = fx.token(json!({"jkt": alg_key.jkt()}));
        let r = check(
            &fx,
            dpop_request(&bound, &[&alg_key.proof("GET", URI, &bound)]),
        )
        .await;
        assert_allowed(alg_key.alg, &r);
        assert!(client_headers(&r).is_empty(), "no nonce without dpop_nonce");
    }
    // Raw headers (`encode_raw_headers`): one dpop entry is one proof.
    let proof = key.proof("GET", URI, &t);
    let mut raw = request("GET", &[]);
    http_mut(&mut raw).header_map = Some(raw_headers(&[
        ("authorization", &format!("DPoP {t}")),
        ("dpop", &proof),
    ]));
    assert_allowed("raw headers", &check(&fx, raw).await);

    let p = key.proof("GET", URI, &t);
    let r = check(&fx, dpop_request(&t, &[&p])).await;
    assert_allowed("first use", &r);
    let replay = check(&fx, dpop_request(&t, &[&p])).await;
    assert_denied(
        "the same proof again",
        &replay,
        DPOP_CHALLENGE,
        "invalid_dpop_proof",
        "invalid_dpop_proof",
    );

    let other = DpopKey::es256();
    let unbound = fx.token(Value::Null);
    let proof_for = |uri: &str| key.proof("GET", uri, &t);
    let laundered = {
        // The client reached an internal host; a forwarded host names the public one.
        let p = proof_for(URI);
        let auth = format!("DPoP {t}");
        let mut req = request(
            "GET",
            &[
                ("authorization", &auth),
                ("dpop", &p),
                ("x-forwarded-host", "api.example.com"),
            ],
        );
        http_mut(&mut req).host = "internal.svc.cluster.local:8080".into();
        req
    };
    let wrong_scheme = {
        let p = proof_for(URI);
        let mut req = dpop_request(&t, &[&p]);
        http_mut(&mut req).scheme = "http".into();
        req
    };
    let post = {
        let p = proof_for(URI);
        let auth = format!("DPoP {t}");
        request("POST", &[("authorization", &auth), ("dpop", &p)])
    };
    let two_raw = {
        let (a, b) = (proof_for(URI), proof_for(URI));
        let mut req = request("GET", &[]);
        http_mut(&mut req).header_map = Some(raw_headers(&[
            ("authorization", &format!("DPoP {t}")),
            ("dpop", &a),
            ("dpop", &b),
        ]));
        req
    };
    let proof_cases: Vec<(&str, CheckRequest)> = vec![
        ("DPoP scheme without a proof", dpop_request(&t, &[])),
        (
            "two dpop headers joined by Envoy",
            dpop_request(&t, &[&proof_for(URI), &proof_for(URI)]),
        ),
        ("two raw dpop headers", two_raw),
        ("Host laundering through x-forwarded-host", laundered),
        (
            "htu for another path",
            dpop_request(&t, &[&proof_for("https://api.example.com/v1/other")]),
        ),
        (
            "htu for another port",
            dpop_request(&t, &[&proof_for("https://api.example.com:8443/v1/items")]),
        ),
        ("http instead of https", wrong_scheme),
        ("htm GET for a POST", post),
        (
            "ath of another token",
            dpop_request(&t, &[&key.proof("GET", URI, &unbound)]),
        ),
        (
            "a proof that is not a JWS",
            dpop_request(&t, &["not-a-proof"]),
        ),
    ];
    for (name, req) in proof_cases {
        let r = check(&fx, req).await;
        assert_denied(
            name,
            &r,
            DPOP_CHALLENGE,
            "invalid_dpop_proof",
            "invalid_dpop_proof",
        );
    }

    let binding_cases: Vec<(&str, CheckRequest, &str)> = vec![
        (
            "a proof by another key",
            dpop_request(&t, &[&other.proof("GET", URI, &t)]),
            DPOP_CHALLENGE,
        ),
        (
            "an unbound token with the DPoP scheme",
            dpop_request(&unbound, &[&key.proof("GET", URI, &unbound)]),
            DPOP_CHALLENGE,
        ),
        (
            "a DPoP-bound token as Bearer, with its proof",
            request(
                "GET",
                &[
                    ("authorization", &format!("Bearer {t}")),
                    ("dpop", &key.proof("GET", URI, &t)),
                ],
            ),
            DPOP_CHALLENGE,
        ),
    ];
    for (name, req, challenge) in binding_cases {
        let r = check(&fx, req).await;
        assert_denied(name, &r, challenge, "invalid_token", "binding_mismatch");
    }
    let bearer_only = check(
        &fx,
        request("GET", &[("authorization", &format!("Bearer {t}"))]),
    )
    .await;
    assert_eq!(status(&bearer_only), (Code::Unauthenticated, 401));
    assert!(
        client_headers(&bearer_only)["www-authenticate"].contains("binding_mismatch"),
        "a DPoP-bound token as Bearer: {bearer_only:?}"
    );
    // Any refusal of a DPoP call is challenged with DPoP, an expired token included.
    let mut c = claims(&fx.idp.issuer(), "api://demo");
    c["cnf"] = json!({"jkt": key.jkt()});
    c["exp"] = json!(now() - 3600);
    c["iat"] = json!(now() - 7200);
    let expired = fx.issuer.token(&c);
    let r = check(
        &fx,
        dpop_request(&expired, &[&key.proof("GET", URI, &expired)]),
    )
    .await;
    assert_denied("expired", &r, DPOP_CHALLENGE, "invalid_token", "expired");

    // A request whose target cannot be compared with htu is a bad request.
    let mut no_host = dpop_request(&t, &[&proof_for(URI)]);
    http_mut(&mut no_host).host = String::new();
    let r = check(&fx, no_host).await;
    assert_eq!(status(&r), (Code::InvalidArgument, 400), "{r:?}");
}

fn raw_headers(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                value: String::new(),
                raw_value: v.as_bytes().to_vec(),
            })
            .collect(),
    }
}

#[tokio::test]
async fn dpop_nonces_on_both_answers() {
    let fx = setup(
        "    sender_constraint:\n      dpop_nonce: true\n      dpop_nonce_secret_env: NONCE_SECRET\n",
        &[],
    )
    .await;
    let key = DpopKey::es256();
    let t = fx.token(json!({"jkt": key.jkt()}));
    let r = check(&fx, dpop_request(&t, &[&key.proof("GET", URI, &t)])).await;
    assert_denied(
        "no nonce",
        &r,
        DPOP_CHALLENGE,
        "use_dpop_nonce",
        "use_dpop_nonce",
    );
    let nonce = client_headers(&r)
        .get("dpop-nonce")
        .cloned()
        .expect("DPoP-Nonce on the 401");
    let forged = key.proof_with("GET", URI, &t, json!({"nonce": "forged-nonce"}));
    let r = check(&fx, dpop_request(&t, &[&forged])).await;
    assert_denied(
        "a forged nonce",
        &r,
        DPOP_CHALLENGE,
        "use_dpop_nonce",
        "use_dpop_nonce",
    );
    let honest = key.proof_with("GET", URI, &t, json!({"nonce": nonce}));
    let r = check(&fx, dpop_request(&t, &[&honest])).await;
    assert_allowed("with the server's nonce", &r);
    assert!(
        client_headers(&r).contains_key("dpop-nonce"),
        "a fresh nonce for the client on allow: {r:?}"
    );
}

#[tokio::test]
async fn certificate_bound_tokens_through_check() {
    let fx = setup("", &[]).await;
    let cert = rcgen::generate_simple_self_signed(vec!["client.example".into()]).expect("cert");
    let other = rcgen::generate_simple_self_signed(vec!["other.example".into()]).expect("cert");
    let t = fx.token(json!({"x5t#S256": b64_sha256(cert.cert.der())}));
    let bearer = format!("Bearer {t}");
    let plain = || request("GET", &[("authorization", bearer.as_str())]);

    let r = check(&fx, with_certificate(plain(), &cert.cert.pem())).await;
    assert_allowed("the bound certificate", &r);
    for (name, req) in [
        ("no certificate", plain()),
        (
            "another certificate",
            with_certificate(plain(), &other.cert.pem()),
        ),
        (
            "an unusable certificate from the proxy",
            with_certificate(plain(), "not a certificate"),
        ),
    ] {
        let r = check(&fx, req).await;
        assert_denied(
            name,
            &r,
            BEARER_CHALLENGE,
            "invalid_token",
            "binding_mismatch",
        );
    }
    // A certificate the token is not bound to, or an unusable one, does not affect an
    // unbound token.
    let unbound = format!("Bearer {}", fx.token(Value::Null));
    for pem in [other.cert.pem(), "not a certificate".to_string()] {
        let req = with_certificate(request("GET", &[("authorization", &unbound)]), &pem);
        assert_allowed("unbound token", &check(&fx, req).await);
    }
    // A hex thumbprint in cnf never matches.
    let hex: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cert.cert.der())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let hex_bound = format!("Bearer {}", fx.token(json!({"x5t#S256": hex})));
    let req = with_certificate(
        request("GET", &[("authorization", &hex_bound)]),
        &cert.cert.pem(),
    );
    assert_denied(
        "cnf x5t#S256 in hex",
        &check(&fx, req).await,
        BEARER_CHALLENGE,
        "invalid_token",
        "binding_mismatch",
    );
}

#[tokio::test]
async fn opaque_tokens_bound_by_the_introspection_answer() {
    let key = DpopKey::es256();
    let jkt = key.jkt();
    let fx = Fixture::start_with(introspection_yaml, &[("S", "secret")], SERVICE_NAME).await;
    fx.idp.set(
        Method::POST,
        "/introspect",
        Behaviour::Dynamic(Arc::new(move |seen: &Seen| {
            let body = String::from_utf8_lossy(&seen.body).to_string();
            let mut answer = json!({"active": true, "sub": "opaque-user", "client_id": "svc",
                "aud": ["api://demo"], "exp": now() + 600});
            if body.contains("token=bound") {
                answer["cnf"] = json!({"jkt": jkt});
                answer["token_type"] = json!("DPoP");
            }
            (
                200,
                vec![("content-type".into(), "application/json".into())],
                answer.to_string().into_bytes(),
            )
        })),
    );
    let token = "bound-opaque-1";
    let p = key.proof("GET", URI, token);
    assert_allowed(
        "with its proof",
        &check(&fx, dpop_request(token, &[&p])).await,
    );
    assert_denied(
        "the same proof again",
        &check(&fx, dpop_request(token, &[&p])).await,
        DPOP_CHALLENGE,
        "invalid_dpop_proof",
        "invalid_dpop_proof",
    );
    let as_bearer = check(
        &fx,
        request("GET", &[("authorization", &format!("Bearer {token}"))]),
    )
    .await;
    assert_denied(
        "bound opaque token as Bearer",
        &as_bearer,
        DPOP_CHALLENGE,
        "invalid_token",
        "binding_mismatch",
    );
    let other = DpopKey::es256();
    assert_denied(
        "a proof by another key",
        &check(&fx, dpop_request(token, &[&other.proof("GET", URI, token)])).await,
        DPOP_CHALLENGE,
        "invalid_token",
        "binding_mismatch",
    );
    let unbound = "plain-opaque-2";
    assert_allowed(
        "an unbound opaque token as Bearer",
        &check(
            &fx,
            request("GET", &[("authorization", &format!("Bearer {unbound}"))]),
        )
        .await,
    );
    assert_denied(
        "an unbound opaque token with the DPoP scheme",
        &check(
            &fx,
            dpop_request(unbound, &[&key.proof("GET", URI, unbound)]),
        )
        .await,
        DPOP_CHALLENGE,
        "invalid_token",
        "binding_mismatch",
    );
}
