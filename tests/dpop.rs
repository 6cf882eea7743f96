//! Sender-constrained tokens end to end: the real server on port 0, tokens from a fake
//! OpenID Connect provider over real HTTP, DPoP proofs and certificates from a client
//! that shares no code with the service. Each hostile case is refused with its code and
//! a fitting challenge; positive controls show the same setup accepts the honest call.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{dpop::*, *};
use introspectd::grpc::pb::{self, ErrorCode as E};
use serde_json::{Value, json};

const URI: &str = "https://api.example.com/v1/items";
const DPOP_CHALLENGE: &str = r#"DPoP realm="introspectd", algs="ES256 PS256 EdDSA""#;
const BEARER_CHALLENGE: &str = r#"Bearer realm="introspectd""#;
async fn setup(sender: &str) -> Fixture {
    Fixture::start(sender, &[], "introspect.v1.TokenService").await
}

fn dpop_req(token: &str, proofs: Vec<String>) -> pb::ValidateRequest {
    pb::ValidateRequest {
        token: token.into(),
        authorization_scheme: "DPoP".into(),
        dpop_proofs: proofs,
        http_method: "GET".into(),
        http_uri: URI.into(),
        ..Default::default()
    }
}

fn bearer_req(token: &str) -> pb::ValidateRequest {
    pb::ValidateRequest {
        token: token.into(),
        ..Default::default()
    }
}

/// What a refusal must carry: its code, and a challenge of `scheme` with `error="..."`.
#[derive(Clone, Copy)]
struct Refused {
    code: E,
    scheme: &'static str,
    error: &'static str,
}

const fn refused(code: E, scheme: &'static str, error: &'static str) -> Refused {
    Refused {
        code,
        scheme,
        error,
    }
}

/// A proof that breaks a rule.
const BAD_PROOF: Refused = refused(E::InvalidDpopProof, DPOP_CHALLENGE, "invalid_dpop_proof");
/// A DPoP call whose token and proof do not belong together.
const DPOP_MISMATCH: Refused = refused(E::BindingMismatch, DPOP_CHALLENGE, "invalid_token");
/// A certificate-bound token without its certificate.
const CERT_MISMATCH: Refused = refused(E::BindingMismatch, BEARER_CHALLENGE, "invalid_token");
/// A proof without the server's current nonce.
const NONCE_NEEDED: Refused = refused(E::UseDpopNonce, DPOP_CHALLENGE, "use_dpop_nonce");

/// A refusal as `want` describes it, with no claim in the answer.
fn assert_refused(name: &str, r: &pb::ValidateResponse, want: Refused) {
    assert!(!r.valid, "{name}: accepted");
    assert_eq!(common::code(r), want.code, "{name}: {:?}", r.error);
    assert!(
        r.www_authenticate.starts_with(want.scheme),
        "{name}: challenge {:?}",
        r.www_authenticate
    );
    let error = format!("error=\"{}\"", want.error);
    assert!(
        r.www_authenticate.contains(&error),
        "{name}: challenge {:?}",
        r.www_authenticate
    );
    assert!(
        r.claims.is_none() && r.subject.is_empty(),
        "{name}: leaks claims"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn positive_controls() {
    let mut fx = setup("").await;
    for key in [DpopKey::es256(), DpopKey::rsa("PS256"), DpopKey::ed25519()] {
        let t = fx.token(json!({"jkt": key.jkt()}));
        let r =
            fx.h.validate(dpop_req(&t, vec![key.proof("GET", URI, &t)]))
                .await;
        assert!(r.valid, "{}: {:?}", key.alg, r.error);
        let b = r.binding.expect("binding");
        assert_eq!(b.kind, pb::BindingKind::Dpop as i32);
        assert_eq!(b.jkt, key.jkt());
        assert!(r.www_authenticate.is_empty() && r.dpop_nonce.is_empty());
    }
    // The token's "DPoP " prefix sets the scheme; equivalent spellings of the URI match.
    let key = DpopKey::es256();
    let t = fx.token(json!({"jkt": key.jkt()}));
    let mut req = dpop_req(
        &format!("DPoP {t}"),
        vec![key.proof("GET", "https://API.example.com:443/v1/items?page=2", &t)],
    );
    req.authorization_scheme.clear();
    req.http_uri = "https://api.example.com/v1/%69tems?q=1#f".into();
    let r = fx.h.validate(req).await;
    assert!(r.valid, "{:?}", r.error);
    // A bearer token stays a bearer token.
    let plain = fx.token(Value::Null);
    let r = fx.h.validate(bearer_req(&format!("Bearer {plain}"))).await;
    assert!(r.valid, "{:?}", r.error);
    assert_eq!(
        r.binding.expect("binding").kind,
        pb::BindingKind::None as i32
    );
    // Certificate-bound: by DER or by its base64url SHA-256.
    let der = b"the DER bytes of a client certificate".to_vec();
    let t = fx.token(json!({"x5t#S256": b64_sha256(&der)}));
    for req in [
        pb::ValidateRequest {
            client_certificate: der.clone(),
            ..bearer_req(&t)
        },
        pb::ValidateRequest {
            client_certificate_sha256: b64_sha256(&der),
            ..bearer_req(&t)
        },
    ] {
        let r = fx.h.validate(req).await;
        assert!(r.valid, "{:?}", r.error);
        let b = r.binding.expect("binding");
        assert_eq!(
            (b.kind, b.x5t_s256.as_str()),
            (pb::BindingKind::Mtls as i32, b64_sha256(&der).as_str())
        );
    }
}

/// Hostile DPoP calls against one token bound to `key`: each refused with its code and
/// a DPoP challenge naming the error.
#[tokio::test]
async fn hostile_proofs_are_refused_with_their_code_and_challenge() {
    let mut fx = setup("").await;
    let key = DpopKey::es256();
    let t = fx.token(json!({"jkt": key.jkt()}));
    let std = DpopKey::claims("GET", URI, &t);
    let with = |change: Value| key.proof_with("GET", URI, &t, change);
    let header = |h: Value| key.proof_from(h, &std);
    let mut private = key.jwk.clone();
    private["d"] = json!(URL_SAFE_NO_PAD.encode([7u8; 32]));
    let mut off_curve = key.jwk.clone();
    off_curve["y"] = off_curve["x"].clone();
    let small_rsa = json!({"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xC5u8; 128]), "e": "AQAB"});
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD
            .encode(json!({"typ": "dpop+jwt", "alg": "none", "jwk": key.jwk}).to_string()),
        URL_SAFE_NO_PAD.encode(std.to_string())
    );
    let hs256 = {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD
                .encode(json!({"typ": "dpop+jwt", "alg": "HS256", "jwk": key.jwk}).to_string()),
            URL_SAFE_NO_PAD.encode(std.to_string())
        );
        let k = aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            key.jwk["x"].as_str().unwrap_or("").as_bytes(),
        );
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(aws_lc_rs::hmac::sign(&k, input.as_bytes()))
        )
    };
    let mut flipped = key.proof("GET", URI, &t);
    let last = flipped.pop().unwrap_or('A');
    flipped.push(if last == 'A' { 'B' } else { 'A' });
    let other = DpopKey::es256();
    let wrong_signer = other.proof_from(json!({"jwk": key.jwk}), &std);
    let rs256 = DpopKey::rsa("RS256");
    let cases: Vec<(&str, Vec<String>)> = vec![
        ("no proof with the DPoP scheme", vec![]),
        (
            "two proofs",
            vec![key.proof("GET", URI, &t), key.proof("GET", URI, &t)],
        ),
        ("the same proof twice", {
            let p = key.proof("GET", URI, &t);
            vec![p.clone(), p]
        }),
        ("not a JWS", vec!["not-a-proof".into()]),
        (
            "a JWS with four segments",
            vec![format!("{}.x", key.proof("GET", URI, &t))],
        ),
        ("typ JWT", vec![header(json!({"typ": "JWT"}))]),
        ("typ missing", vec![header(json!({"typ": null}))]),
        ("typ at+jwt", vec![header(json!({"typ": "at+jwt"}))]),
        ("alg none", vec![unsigned]),
        ("alg HS256", vec![hs256]),
        (
            "alg RS256 (not in dpop_algorithms)",
            vec![rs256.proof("GET", URI, &t)],
        ),
        ("crit header", vec![header(json!({"crit": ["htu"]}))]),
        ("jwk missing", vec![header(json!({"jwk": null}))]),
        ("private jwk", vec![header(json!({"jwk": private}))]),
        (
            "symmetric jwk",
            vec![header(json!({"jwk": {"kty": "oct", "k": "AAAA"}}))],
        ),
        (
            "EC point off its curve",
            vec![header(json!({"jwk": off_curve}))],
        ),
        (
            "RSA key of 1024 bits",
            vec![header(json!({"alg": "PS256", "jwk": small_rsa}))],
        ),
        ("signature by another key", vec![wrong_signer]),
        ("signature bit flipped", vec![flipped]),
        ("htm POST for GET", vec![with(json!({"htm": "POST"}))]),
        ("htm lower case", vec![with(json!({"htm": "get"}))]),
        ("htm missing", vec![with(json!({"htm": null}))]),
        (
            "htu another path",
            vec![with(json!({"htu": "https://api.example.com/v1/admin"}))],
        ),
        (
            "htu trailing slash",
            vec![with(json!({"htu": "https://api.example.com/v1/items/"}))],
        ),
        (
            "htu path case",
            vec![with(json!({"htu": "https://api.example.com/V1/Items"}))],
        ),
        (
            "htu another port",
            vec![with(
                json!({"htu": "https://api.example.com:8443/v1/items"}),
            )],
        ),
        (
            "htu http for https",
            vec![with(json!({"htu": "http://api.example.com/v1/items"}))],
        ),
        (
            "htu encoded query",
            vec![with(
                json!({"htu": "https://api.example.com/v1/items%3Fa=1"}),
            )],
        ),
        (
            "htu query naming the real URI",
            vec![with(
                json!({"htu": format!("https://evil.example/x?u={URI}")}),
            )],
        ),
        (
            "htu of another host (Host laundering)",
            vec![with(json!({"htu": "https://other.example.com/v1/items"}))],
        ),
        (
            "htu with userinfo",
            vec![with(
                json!({"htu": "https://api.example.com@evil.example/v1/items"}),
            )],
        ),
        ("htu missing", vec![with(json!({"htu": null}))]),
        ("iat stale", vec![with(json!({"iat": now() - 120}))]),
        ("iat in the future", vec![with(json!({"iat": now() + 300}))]),
        ("iat missing", vec![with(json!({"iat": null}))]),
        (
            "iat a string",
            vec![with(json!({"iat": now().to_string()}))],
        ),
        ("jti missing", vec![with(json!({"jti": null}))]),
        ("ath missing", vec![with(json!({"ath": null}))]),
        (
            "ath of another token",
            vec![with(json!({"ath": b64_sha256(b"another access token")}))],
        ),
        (
            "ath in hex",
            vec![with(
                json!({"ath": hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, t.as_bytes()).as_ref()) }),
            )],
        ),
    ];
    assert!(cases.len() >= 40, "{} cases", cases.len());
    for (name, proofs) in cases {
        let r = fx.h.validate(dpop_req(&t, proofs)).await;
        assert_refused(name, &r, BAD_PROOF);
    }
    // A valid proof by another key: the proof is fine, the binding is not.
    let r =
        fx.h.validate(dpop_req(&t, vec![other.proof("GET", URI, &t)]))
            .await;
    assert_refused("jkt mismatch", &r, DPOP_MISMATCH);
    // And the honest call still passes after all of that.
    let r =
        fx.h.validate(dpop_req(&t, vec![key.proof("GET", URI, &t)]))
            .await;
    assert!(r.valid, "{:?}", r.error);
}

#[tokio::test]
async fn replayed_proofs_are_refused() {
    let mut fx = setup("").await;
    let key = DpopKey::es256();
    let t = fx.token(json!({"jkt": key.jkt()}));
    let proof = key.proof("GET", URI, &t);
    assert!(fx.h.validate(dpop_req(&t, vec![proof.clone()])).await.valid);
    let r = fx.h.validate(dpop_req(&t, vec![proof])).await;
    assert_refused("the same proof again", &r, BAD_PROOF);
    assert!(
        r.error
            .as_ref()
            .is_some_and(|e| e.message.contains("replayed")),
        "{:?}",
        r.error
    );
    // A new signature over the same jti and htu is the same proof for the replay rule.
    let same_jti = key.proof_with("GET", URI, &t, json!({"jti": "fixed-jti"}));
    assert!(fx.h.validate(dpop_req(&t, vec![same_jti])).await.valid);
    let again = key.proof_with(
        "GET",
        "https://API.example.com:443/v1/items?x",
        &t,
        json!({"jti": "fixed-jti"}),
    );
    let r = fx.h.validate(dpop_req(&t, vec![again])).await;
    assert_refused("same jti, same htu spelled differently", &r, BAD_PROOF);
    // The same jti for another URI is another proof.
    let mut req = dpop_req(
        &t,
        vec![key.proof_with(
            "GET",
            "https://api.example.com/v1/other",
            &t,
            json!({"jti": "fixed-jti"}),
        )],
    );
    req.http_uri = "https://api.example.com/v1/other".into();
    assert!(fx.h.validate(req).await.valid);
}

#[tokio::test]
async fn scheme_and_binding_mismatches() {
    let mut fx = setup("").await;
    let key = DpopKey::es256();
    let bound = fx.token(json!({"jkt": key.jkt()}));
    let plain = fx.token(Value::Null);
    // The most common bypass: a DPoP-bound token sent as a bearer token.
    for (name, req) in [
        ("bound token, no scheme", bearer_req(&bound)),
        (
            "bound token, Bearer prefix",
            bearer_req(&format!("Bearer {bound}")),
        ),
        (
            "bound token, Bearer scheme with a proof",
            pb::ValidateRequest {
                authorization_scheme: "Bearer".into(),
                ..dpop_req(&bound, vec![key.proof("GET", URI, &bound)])
            },
        ),
    ] {
        let r = fx.h.validate(req).await;
        assert_refused(name, &r, DPOP_MISMATCH);
    }
    let r =
        fx.h.validate(dpop_req(&plain, vec![key.proof("GET", URI, &plain)]))
            .await;
    assert_refused("unbound token as DPoP", &r, DPOP_MISMATCH);
    // A DPoP call whose token fails before the binding still gets a DPoP challenge.
    let mut c = claims(&fx.idp.issuer(), "api://demo");
    c["exp"] = json!(now() - 3600);
    c["cnf"] = json!({"jkt": key.jkt()});
    let expired = fx.issuer.token(&c);
    let r =
        fx.h.validate(dpop_req(&expired, vec![key.proof("GET", URI, &expired)]))
            .await;
    assert_refused(
        "expired bound token",
        &r,
        Refused {
            code: E::Expired,
            ..DPOP_MISMATCH
        },
    );
    for (name, cnf) in [
        ("cnf with an unsupported method", json!({"jwk": key.jwk})),
        ("cnf not an object", json!(key.jkt())),
        (
            "cnf jkt in hex",
            json!({"jkt": hex(&URL_SAFE_NO_PAD.decode(key.jkt()).unwrap_or_default())}),
        ),
    ] {
        let t = fx.token(cnf);
        let r =
            fx.h.validate(dpop_req(&t, vec![key.proof("GET", URI, &t)]))
                .await;
        assert_refused(name, &r, DPOP_MISMATCH);
    }
}

/// A token accepted before (so any verified-token cache holds it) proves its binding
/// again on every call: the same token, as Bearer, with a used proof, with another key's
/// proof, and with a certificate-bound token's certificate gone, is refused each time.
#[tokio::test]
async fn a_token_accepted_before_proves_its_binding_on_every_call() {
    let mut fx = setup("").await;
    let key = DpopKey::es256();
    let t = fx.token(json!({"jkt": key.jkt()}));
    let used = key.proof("GET", URI, &t);
    for proof in [used.clone(), key.proof("GET", URI, &t)] {
        let r = fx.h.validate(dpop_req(&t, vec![proof])).await;
        assert!(r.valid, "{:?}", r.error);
    }
    let other = DpopKey::es256();
    let refusals = [
        ("as Bearer", bearer_req(&t), E::BindingMismatch),
        (
            "a used proof",
            dpop_req(&t, vec![used]),
            E::InvalidDpopProof,
        ),
        (
            "another key's proof",
            dpop_req(&t, vec![other.proof("GET", URI, &t)]),
            E::BindingMismatch,
        ),
        ("no proof", dpop_req(&t, vec![]), E::InvalidDpopProof),
    ];
    for (name, req, code) in refusals {
        let r = fx.h.validate(req).await;
        assert!(!r.valid, "{name}: accepted");
        assert_eq!(common::code(&r), code, "{name}");
    }
    let r =
        fx.h.validate(dpop_req(&t, vec![key.proof("GET", URI, &t)]))
            .await;
    assert!(r.valid, "and again with a fresh proof: {:?}", r.error);

    let der = b"DER of a client certificate".to_vec();
    let bound = fx.token(json!({"x5t#S256": b64_sha256(&der)}));
    let with_cert = pb::ValidateRequest {
        client_certificate: der,
        ..bearer_req(&bound)
    };
    assert!(fx.h.validate(with_cert.clone()).await.valid);
    assert!(fx.h.validate(with_cert).await.valid);
    let r = fx.h.validate(bearer_req(&bound)).await;
    assert_eq!(common::code(&r), E::BindingMismatch, "certificate gone");
}

#[tokio::test]
async fn certificate_binding_is_checked() {
    let mut fx = setup("").await;
    let der = b"DER of the bound certificate".to_vec();
    let thumb = b64_sha256(&der);
    let t = fx.token(json!({"x5t#S256": thumb}));
    let r = fx.h.validate(bearer_req(&t)).await;
    assert_refused("no certificate", &r, CERT_MISMATCH);
    let r =
        fx.h.validate(pb::ValidateRequest {
            client_certificate: b"another certificate".to_vec(),
            ..bearer_req(&t)
        })
        .await;
    assert_refused("another certificate", &r, CERT_MISMATCH);
    let r =
        fx.h.validate(pb::ValidateRequest {
            client_certificate_sha256: b64_sha256(b"another"),
            ..bearer_req(&t)
        })
        .await;
    assert_refused("another thumbprint", &r, CERT_MISMATCH);
    // The token's thumbprint in hex never matches, even for the right certificate.
    let hex_bound = fx.token(json!({"x5t#S256": hex(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &der).as_ref())}));
    let r =
        fx.h.validate(pb::ValidateRequest {
            client_certificate: der.clone(),
            ..bearer_req(&hex_bound)
        })
        .await;
    assert_refused("cnf x5t#S256 in hex", &r, CERT_MISMATCH);
    // A caller passing hex is a bad request.
    let err =
        fx.h.client
            .validate(pb::ValidateRequest {
                client_certificate_sha256: hex(aws_lc_rs::digest::digest(
                    &aws_lc_rs::digest::SHA256,
                    &der,
                )
                .as_ref()),
                ..bearer_req(&t)
            })
            .await
            .expect_err("hex thumbprint from the caller");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn bad_requests_are_invalid_argument() {
    let mut fx = setup("").await;
    let key = DpopKey::es256();
    let t = fx.token(json!({"jkt": key.jkt()}));
    let p = key.proof("GET", URI, &t);
    for (name, req) in [
        (
            "unknown scheme",
            pb::ValidateRequest {
                authorization_scheme: "Basic".into(),
                ..dpop_req(&t, vec![p.clone()])
            },
        ),
        (
            "scheme disagrees with the prefix",
            pb::ValidateRequest {
                authorization_scheme: "Bearer".into(),
                ..dpop_req(&format!("DPoP {t}"), vec![p.clone()])
            },
        ),
        (
            "DPoP without a method",
            pb::ValidateRequest {
                http_method: String::new(),
                ..dpop_req(&t, vec![p.clone()])
            },
        ),
        (
            "DPoP without a URI",
            pb::ValidateRequest {
                http_uri: String::new(),
                ..dpop_req(&t, vec![p.clone()])
            },
        ),
        (
            "a relative URI",
            pb::ValidateRequest {
                http_uri: "/v1/items".into(),
                ..dpop_req(&t, vec![p.clone()])
            },
        ),
        (
            "certificate and thumbprint disagree",
            pb::ValidateRequest {
                client_certificate: b"one".to_vec(),
                client_certificate_sha256: b64_sha256(b"two"),
                ..bearer_req(&t)
            },
        ),
    ] {
        let err = fx.h.client.validate(req).await.expect_err(name);
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}");
        assert!(
            !err.message().contains(&t),
            "{name}: the message echoes the token"
        );
    }
}

#[tokio::test]
async fn required_mode_refuses_bearer_tokens() {
    let mut fx = setup("    sender_constraint:\n      mode: required\n").await;
    let r = fx.h.validate(bearer_req(&fx.token(Value::Null))).await;
    assert_refused("unbound token, required mode", &r, CERT_MISMATCH);
    let key = DpopKey::es256();
    let t = fx.token(json!({"jkt": key.jkt()}));
    assert!(
        fx.h.validate(dpop_req(&t, vec![key.proof("GET", URI, &t)]))
            .await
            .valid
    );
}

#[tokio::test]
async fn off_mode_ignores_cnf() {
    let mut fx = setup("    sender_constraint:\n      mode: \"off\"\n").await;
    let key = DpopKey::es256();
    let r =
        fx.h.validate(bearer_req(&fx.token(json!({"jkt": key.jkt()}))))
            .await;
    assert!(r.valid, "{:?}", r.error);
    assert_eq!(
        r.binding.expect("binding").kind,
        pb::BindingKind::None as i32
    );
}

#[tokio::test]
async fn restricted_algorithms() {
    let mut fx = setup("    sender_constraint:\n      dpop_algorithms: [ES256]\n").await;
    let key = DpopKey::ed25519();
    let t = fx.token(json!({"jkt": key.jkt()}));
    let r =
        fx.h.validate(dpop_req(&t, vec![key.proof("GET", URI, &t)]))
            .await;
    let only_es256 = Refused {
        scheme: r#"DPoP realm="introspectd", algs="ES256""#,
        ..BAD_PROOF
    };
    assert_refused("EdDSA proof, ES256 only", &r, only_es256);
}

#[tokio::test]
async fn nonces_are_required_issued_and_checked() {
    let mut fx = setup(
        "    sender_constraint:\n      dpop_nonce: true\n      dpop_nonce_secret_env: NONCE_SECRET\n",
    )
    .await;
    let key = DpopKey::es256();
    let t = fx.token(json!({"jkt": key.jkt()}));
    let r =
        fx.h.validate(dpop_req(&t, vec![key.proof("GET", URI, &t)]))
            .await;
    assert_refused("no nonce", &r, NONCE_NEEDED);
    let nonce = r.dpop_nonce.clone();
    assert!(!nonce.is_empty(), "the refusal carries a nonce");
    let ok =
        fx.h.validate(dpop_req(
            &t,
            vec![key.proof_with("GET", URI, &t, json!({"nonce": nonce}))],
        ))
        .await;
    assert!(ok.valid, "{:?}", ok.error);
    assert!(
        !ok.dpop_nonce.is_empty(),
        "valid answers carry the current nonce"
    );
    // A nonce of the right form under another secret, and garbage.
    let forged = {
        let mut raw = URL_SAFE_NO_PAD.decode(&nonce).expect("nonce is base64url");
        if let Some(b) = raw.last_mut() {
            *b ^= 0x55;
        }
        URL_SAFE_NO_PAD.encode(raw)
    };
    for (name, n) in [
        ("forged nonce", forged),
        ("garbage nonce", "nonce".to_string()),
    ] {
        let r =
            fx.h.validate(dpop_req(
                &t,
                vec![key.proof_with("GET", URI, &t, json!({"nonce": n}))],
            ))
            .await;
        assert_refused(name, &r, NONCE_NEEDED);
        assert!(
            !r.dpop_nonce.is_empty(),
            "{name}: a fresh nonce to retry with"
        );
    }
    // A nonce from an earlier window: the same MAC construction over window - 3, which only
    // the secret's holder can make, is stale.
    let stale = {
        let mut raw = URL_SAFE_NO_PAD.decode(&nonce).expect("nonce");
        let mut w = [0u8; 8];
        w.copy_from_slice(&raw[..8]);
        let window = u64::from_be_bytes(w) - 3;
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, NONCE_SECRET.as_bytes());
        let mut ctx = aws_lc_rs::hmac::Context::with_key(&k);
        for part in [
            &b"introspectd dpop nonce v1"[..],
            &[0],
            b"demo",
            &[0],
            &window.to_be_bytes(),
        ] {
            ctx.update(part);
        }
        raw[..8].copy_from_slice(&window.to_be_bytes());
        raw[8..].copy_from_slice(&ctx.sign().as_ref()[..16]);
        URL_SAFE_NO_PAD.encode(raw)
    };
    let r =
        fx.h.validate(dpop_req(
            &t,
            vec![key.proof_with("GET", URI, &t, json!({"nonce": stale}))],
        ))
        .await;
    assert_refused("stale nonce", &r, NONCE_NEEDED);
    assert!(
        r.error
            .as_ref()
            .is_some_and(|e| e.message.contains("stale")),
        "{:?}",
        r.error
    );
}

#[tokio::test]
async fn introspect_checks_the_binding_of_jwts_and_opaque_tokens() {
    let idp = FakeIdp::start().await;
    let issuer = TestKey::ec("issuer-1");
    idp.serve_oidc(&[&issuer]);
    let key = DpopKey::es256();
    let jkt = key.jkt();
    idp.set(
        axum::http::Method::POST,
        "/introspect",
        Behaviour::Json(
            json!({"active": true, "sub": "u", "client_id": "c", "token_type": "DPoP",
            "exp": now() + 600, "cnf": {"jkt": jkt}}),
        ),
    );
    let yaml = format!(
        "{}    introspection:\n      endpoint: \"{}\"\n      client_id: introspectd\n      client_secret_env: S\n",
        oidc_tenant(&idp, ""),
        idp.url("/introspect")
    );
    let h = start(settings_with_env(&yaml, &[("S", "secret")])).await;
    h.wait_health("introspect.v1.TokenService", 1).await;
    let mut client = h.client.clone();
    let mut c = claims(&idp.issuer(), "api://demo");
    c["cnf"] = json!({"jkt": jkt});
    let jwt = issuer.token(&c);
    for token in [jwt.as_str(), "an-opaque-dpop-bound-token"] {
        let base = pb::IntrospectRequest {
            token: token.into(),
            tenant: "demo".into(),
            ..Default::default()
        };
        let as_bearer = client
            .introspect(base.clone())
            .await
            .expect("rpc")
            .into_inner();
        assert!(!as_bearer.active, "{token}: bound token as Bearer");
        let with_proof = pb::IntrospectRequest {
            authorization_scheme: "DPoP".into(),
            dpop_proofs: vec![key.proof("GET", URI, token)],
            http_method: "GET".into(),
            http_uri: URI.into(),
            ..base.clone()
        };
        let r = client
            .introspect(with_proof.clone())
            .await
            .expect("rpc")
            .into_inner();
        assert!(r.active, "{token}: with its proof");
        let replay = client
            .introspect(with_proof)
            .await
            .expect("rpc")
            .into_inner();
        assert!(!replay.active, "{token}: the same proof again");
        let other = DpopKey::es256();
        let r = client
            .introspect(pb::IntrospectRequest {
                authorization_scheme: "DPoP".into(),
                dpop_proofs: vec![other.proof("GET", URI, token)],
                http_method: "GET".into(),
                http_uri: URI.into(),
                ..base
            })
            .await
            .expect("rpc")
            .into_inner();
        assert_eq!(
            r,
            pb::IntrospectResponse::default(),
            "{token}: another key, nothing disclosed"
        );
    }
}
