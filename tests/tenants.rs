//! Every kind of issuer end to end: Entra ID `{tenantid}` issuers, Azure AD B2C policies
//! chosen by `tfp`/`acr` with one key set per policy, first-party HMAC and `jwks_file`
//! keys, ID-token `nonce` and `azp`, replay detection, and tenants sharing an issuer.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod common;

use std::time::Duration;

use common::*;
use introspectd::grpc::pb::{self, ErrorCode as E};
use serde_json::json;

const G1: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const G2: &str = "0d3b8c2a-1f6e-4a47-9c1e-5b2f3f1e9a10";

fn entra_yaml(idp: &FakeIdp, allowed: &str) -> String {
    format!(
        "tenants:\n  - id: entra\n    issuer: \"{base}/{{tenantid}}/v2.0\"\n    metadata_url: \"{base}/common/v2.0/.well-known/openid-configuration\"\n    audiences: [\"api://my-api\"]\n    require_https: false\n{allowed}",
        base = idp.issuer()
    )
}

fn entra_claims(idp: &FakeIdp, iss_tid: &str, tid: &str) -> serde_json::Value {
    let mut c = claims(&format!("{}/{iss_tid}/v2.0", idp.issuer()), "api://my-api");
    c["tid"] = json!(tid);
    c
}

#[tokio::test]
async fn entra_tenantid_issuers_route_by_tid_and_allow_list() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("e1", "RS256");
    idp.set_json(
        "/common/v2.0/.well-known/openid-configuration",
        idp.discovery(
            &format!("{}/{{tenantid}}/v2.0", idp.issuer()),
            "/common/discovery/v2.0/keys",
        ),
    );
    idp.publish("/common/discovery/v2.0/keys", &[&key]);
    let mut h = start(settings(&entra_yaml(
        &idp,
        &format!("    allowed_tenant_ids: [\"{G1}\"]\n"),
    )))
    .await;
    let ok = h
        .validate_token(&key.token(&entra_claims(&idp, G1, G1)))
        .await;
    assert!(ok.valid, "{:?}", ok.error);
    assert_eq!(ok.tenant, "entra");
    let before = idp.total();
    for (name, c) in [
        ("tid not allowed", entra_claims(&idp, G2, G2)),
        ("tid differs from iss", entra_claims(&idp, G1, G2)),
        ("tid not a GUID", entra_claims(&idp, "common", "common")),
        ("no tid", {
            let mut c = entra_claims(&idp, G1, G1);
            c.as_object_mut().expect("obj").remove("tid");
            c
        }),
    ] {
        assert_eq!(
            code(&h.validate_token(&key.token(&c)).await),
            E::UnknownIssuer,
            "{name}"
        );
    }
    assert_eq!(idp.total(), before, "rejected tenant ids cause no traffic");
    assert_eq!(
        idp.count("/common/v2.0/.well-known/openid-configuration"),
        1,
        "one metadata fetch for all tenant ids"
    );
}

#[tokio::test]
async fn entra_with_star_accepts_any_guid() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("e1", "RS256");
    idp.set_json(
        "/common/v2.0/.well-known/openid-configuration",
        idp.discovery(&format!("{}/{{tenantid}}/v2.0", idp.issuer()), "/keys"),
    );
    idp.publish("/keys", &[&key]);
    // Without allowed_tenant_ids the configuration is refused (src/config/tests.rs);
    // `["*"]` is the written choice to trust every Entra tenant.
    let mut h = start(settings(&entra_yaml(
        &idp,
        "    allowed_tenant_ids: [\"*\"]\n",
    )))
    .await;
    for g in [G1, G2] {
        let r = h
            .validate_token(&key.token(&entra_claims(&idp, g, g)))
            .await;
        assert!(r.valid, "{g}: {:?}", r.error);
    }
}

struct B2c {
    idp: FakeIdp,
    a: TestKey,
    b: TestKey,
    h: Harness,
    issuer: String,
}

const POLICY_A: &str = "B2C_1_signupsignin";
const POLICY_B: &str = "B2C_1A_signup_signin";

async fn b2c() -> B2c {
    let idp = FakeIdp::start().await;
    let issuer = format!(
        "{}/775527ff-9a37-4307-8b3d-cc311f58d925/v2.0/",
        idp.issuer()
    );
    let a = TestKey::rsa("ka", "RS256");
    let b = TestKey::rsa("kb", "RS256");
    for (p, k) in [(POLICY_A, &a), (POLICY_B, &b)] {
        idp.set_json(
            &format!("/contoso.onmicrosoft.com/{p}/v2.0/.well-known/openid-configuration"),
            idp.discovery(
                &issuer,
                &format!("/contoso.onmicrosoft.com/{p}/discovery/v2.0/keys"),
            ),
        );
        idp.publish(
            &format!("/contoso.onmicrosoft.com/{p}/discovery/v2.0/keys"),
            &[k],
        );
    }
    let yaml = format!(
        "tenants:\n  - id: contoso-b2c\n    issuer: \"{issuer}\"\n    audiences: [\"app\"]\n    require_https: false\n    b2c:\n      metadata_url: \"{base}/contoso.onmicrosoft.com/{{policy}}/v2.0/.well-known/openid-configuration\"\n      policies: [{POLICY_A}, {POLICY_B}]\n",
        base = idp.issuer()
    );
    let h = start(settings(&yaml)).await;
    h.wait_health("introspect.v1.TokenService", 1).await;
    B2c {
        idp,
        a,
        b,
        h,
        issuer,
    }
}

fn b2c_claims(issuer: &str, claim: &str, policy: &str) -> serde_json::Value {
    let mut c = claims(issuer, "app");
    c[claim] = json!(policy);
    c
}

#[tokio::test]
async fn b2c_policies_route_by_tfp_or_acr_with_their_own_keys() {
    let B2c {
        idp,
        a,
        b,
        mut h,
        issuer,
    } = b2c().await;
    let r = h
        .validate_token(&a.token(&b2c_claims(&issuer, "tfp", "b2c_1_SIGNUPSIGNIN")))
        .await;
    assert!(r.valid, "{:?}", r.error);
    assert_eq!(r.policy, POLICY_A, "the configured name is reported");
    assert_eq!(r.tenant, "contoso-b2c");
    let r = h
        .validate_token(&b.token(&b2c_claims(&issuer, "acr", POLICY_B)))
        .await;
    assert!(r.valid, "{:?}", r.error);
    assert_eq!(r.policy, POLICY_B);
    // A's key, claiming B: B's key set does not have it.
    let r = h
        .validate_token(&a.token(&b2c_claims(&issuer, "tfp", POLICY_B)))
        .await;
    assert!(!r.valid);
    assert_eq!(code(&r), E::UnknownKey);
    assert_eq!(r.policy, POLICY_B);
    // tfp wins over acr.
    let mut both = b2c_claims(&issuer, "tfp", POLICY_A);
    both["acr"] = json!(POLICY_B);
    assert_eq!(h.validate_token(&a.token(&both)).await.policy, POLICY_A);
    let _ = idp;
}

#[tokio::test]
async fn b2c_unknown_policies_cause_no_fetch() {
    let B2c {
        idp,
        a,
        mut h,
        issuer,
        ..
    } = b2c().await;
    let before = idp.total();
    let mut names: Vec<String> = vec![
        "../../../etc/passwd".into(),
        "B2C_1_evil".into(),
        "http://attacker.example/x".into(),
        "B2C_1_signupsignin/../B2C_1_evil".into(),
    ];
    names.extend((0..200).map(|i| format!("B2C_1_random_{i}_{}", fastrand::u64(..))));
    for n in &names {
        let r = h
            .validate_token(&a.token(&b2c_claims(&issuer, "tfp", n)))
            .await;
        assert_eq!(code(&r), E::UnknownPolicy, "{n}");
    }
    let no_claim = a.token(&claims(&issuer, "app"));
    assert_eq!(code(&h.validate_token(&no_claim).await), E::UnknownPolicy);
    assert_eq!(idp.total(), before, "unknown policies made requests");
}

#[tokio::test]
async fn b2c_rotation_is_per_policy() {
    let B2c {
        idp,
        a,
        mut h,
        issuer,
        ..
    } = b2c().await;
    let a2 = TestKey::rsa("ka2", "RS256");
    let keys_a = format!("/contoso.onmicrosoft.com/{POLICY_A}/discovery/v2.0/keys");
    let keys_b = format!("/contoso.onmicrosoft.com/{POLICY_B}/discovery/v2.0/keys");
    let (before_a, before_b) = (idp.count(&keys_a), idp.count(&keys_b));
    idp.publish(&keys_a, &[&a, &a2]);
    let r = h
        .validate_token(&a2.token(&b2c_claims(&issuer, "tfp", POLICY_A)))
        .await;
    assert!(r.valid, "{:?}", r.error);
    assert_eq!(idp.count(&keys_a), before_a + 1);
    assert_eq!(
        idp.count(&keys_b),
        before_b,
        "the other policy's keys were not fetched"
    );
}

#[tokio::test]
async fn b2c_older_tfp_issuer_form_when_the_metadata_declares_it() {
    let idp = FakeIdp::start().await;
    let issuer = format!(
        "{}/775527ff-9a37-4307-8b3d-cc311f58d925/v2.0/",
        idp.issuer()
    );
    let tfp_issuer = format!(
        "{}/tfp/775527ff-9a37-4307-8b3d-cc311f58d925/{POLICY_A}/v2.0/",
        idp.issuer()
    );
    let a = TestKey::rsa("ka", "RS256");
    idp.set_json(
        &format!("/t/{POLICY_A}/v2.0/.well-known/openid-configuration"),
        idp.discovery(&tfp_issuer, "/t/a/keys"),
    );
    idp.publish("/t/a/keys", &[&a]);
    let yaml = format!(
        "tenants:\n  - id: b2c\n    issuer: \"{issuer}\"\n    audiences: [\"app\"]\n    require_https: false\n    b2c:\n      metadata_url: \"{}/t/{{policy}}/v2.0/.well-known/openid-configuration\"\n      policies: [{POLICY_A}]\n",
        idp.issuer()
    );
    let mut h = start(settings(&yaml)).await;
    h.wait_health("introspect.v1.TokenService", 1).await;
    let r = h
        .validate_token(&a.token(&b2c_claims(&tfp_issuer, "tfp", POLICY_A)))
        .await;
    assert!(r.valid, "{:?}", r.error);
    assert_eq!(r.policy, POLICY_A);
    let spoofed = format!(
        "{}/tfp/775527ff-9a37-4307-8b3d-cc311f58d925/B2C_1_other/v2.0/",
        idp.issuer()
    );
    assert_eq!(
        code(
            &h.validate_token(&a.token(&b2c_claims(&spoofed, "tfp", POLICY_A)))
                .await
        ),
        E::UnknownIssuer
    );
}

#[tokio::test]
async fn first_party_hmac_needs_no_network() {
    let secret = "a-first-party-secret-of-32-bytes!";
    let yaml = "tenants:\n  - id: first-party\n    issuer: \"https://my-api.example.com\"\n    audiences: [\"my-api-clients\"]\n    algorithms: [HS256]\n    hmac_secret_env: FIRST_PARTY_JWT_SECRET\n";
    let mut h = start(settings_with_env(
        yaml,
        &[("FIRST_PARTY_JWT_SECRET", secret)],
    ))
    .await;
    h.wait_health("introspect.v1.TokenService", 1).await;
    let key = TestKey::hmac("", secret.as_bytes());
    let c = claims("https://my-api.example.com", "my-api-clients");
    let t = key.token_with(json!({"kid": null}), &c);
    let r = h.validate_token(&t).await;
    assert!(r.valid, "{:?}", r.error);
    let wrong = TestKey::hmac("", b"another-secret-another-secret-xx");
    assert_eq!(
        code(
            &h.validate_token(&wrong.token_with(json!({"kid": null}), &c))
                .await
        ),
        E::InvalidSignature
    );
    let rsa = TestKey::rsa("r", "RS256");
    assert_eq!(
        code(&h.validate_token(&rsa.token(&c)).await),
        E::AlgorithmNotAllowed
    );
}

#[tokio::test]
async fn jwks_file_is_reread_when_it_changes() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("keys.json");
    let k1 = TestKey::ec("f1");
    let k2 = TestKey::ec("f2");
    std::fs::write(&path, jwks(&[&k1]).to_string()).expect("write");
    let yaml = format!(
        "tenants:\n  - id: files\n    issuer: \"https://files.example\"\n    audiences: [\"x\"]\n    jwks_file: \"{}\"\n    unknown_kid_cooldown: 1s\n",
        path.display()
    );
    let mut h = start(settings(&yaml)).await;
    h.wait_health("introspect.v1.TokenService", 1).await;
    let c = claims("https://files.example", "x");
    assert!(h.validate_token(&k1.token(&c)).await.valid);
    // A mounted Secret is replaced atomically: write elsewhere, rename over.
    let tmp = dir.path().join("keys.json.new");
    std::fs::write(&tmp, jwks(&[&k2]).to_string()).expect("write");
    std::fs::rename(&tmp, &path).expect("rename");
    let r = h.validate_token(&k2.token(&c)).await;
    assert!(
        r.valid,
        "the new key is picked up on an unknown kid: {:?}",
        r.error
    );
    let mut gone = false;
    for _ in 0..40 {
        if code(&h.validate_token(&k1.token(&c)).await) == E::UnknownKey {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(gone, "the removed key still validates");
}

#[tokio::test]
async fn id_token_nonce_and_azp() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let mut h = start(settings(&oidc_tenant(&idp, ""))).await;
    let mut c = claims(&idp.issuer(), "api://demo");
    c["nonce"] = json!("n-123");
    let t = key.token(&c);
    let req = |nonce: &str| pb::ValidateRequest {
        token: t.clone(),
        nonce: nonce.into(),
        ..Default::default()
    };
    assert!(h.validate(req("n-123")).await.valid);
    assert_eq!(code(&h.validate(req("n-999")).await), E::InvalidNonce);
    let no_nonce = key.token(&claims(&idp.issuer(), "api://demo"));
    let r = h
        .validate(pb::ValidateRequest {
            token: no_nonce,
            nonce: "n-123".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(&r), E::InvalidNonce);

    // The request's nonce makes it an ID token check, where azp is required.
    let mut multi = claims(&idp.issuer(), "api://demo");
    multi["aud"] = json!(["api://demo", "other"]);
    multi["nonce"] = json!("n-123");
    let id_token = |c: &serde_json::Value| pb::ValidateRequest {
        token: key.token(c),
        nonce: "n-123".into(),
        ..Default::default()
    };
    assert_eq!(
        code(&h.validate(id_token(&multi)).await),
        E::InvalidAudience,
        "no azp"
    );
    multi["azp"] = json!("other");
    assert_eq!(
        code(&h.validate(id_token(&multi)).await),
        E::InvalidAudience,
        "azp not accepted"
    );
    multi["azp"] = json!("api://demo");
    assert!(h.validate(id_token(&multi)).await.valid);
}

#[tokio::test]
async fn replay_detection_keys_on_iss_and_jti() {
    let idp = FakeIdp::start().await;
    let key = TestKey::ec("k1");
    idp.serve_oidc(&[&key]);
    let mut h = start(settings(&oidc_tenant(&idp, "    replay_detection: true\n"))).await;
    let c = claims(&idp.issuer(), "api://demo");
    let t = key.token(&c);
    assert!(h.validate_token(&t).await.valid);
    assert_eq!(code(&h.validate_token(&t).await), E::Replayed);
    // A re-signed token with the same (iss, jti) is the same token for replay purposes.
    assert_eq!(code(&h.validate_token(&key.token(&c)).await), E::Replayed);
    assert!(
        h.validate_token(&key.token(&claims(&idp.issuer(), "api://demo")))
            .await
            .valid
    );
    let mut no_jti = claims(&idp.issuer(), "api://demo");
    no_jti.as_object_mut().expect("obj").remove("jti");
    assert_eq!(
        code(&h.validate_token(&key.token(&no_jti)).await),
        E::MissingClaim
    );
    // A rejected token is not recorded.
    let mut c2 = claims(&idp.issuer(), "api://demo");
    c2["aud"] = json!("wrong");
    assert_eq!(
        code(&h.validate_token(&key.token(&c2)).await),
        E::InvalidAudience
    );
    c2["aud"] = json!("api://demo");
    assert!(h.validate_token(&key.token(&c2)).await.valid);
}

#[tokio::test]
async fn tenants_sharing_an_issuer_are_told_apart_by_the_request() {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let yaml = format!(
        "tenants:\n  - id: web\n    issuer: \"{iss}\"\n    audiences: [\"web\"]\n    require_https: false\n  - id: admin\n    issuer: \"{iss}\"\n    audiences: [\"admin\"]\n    explicit: true\n    require_https: false\n",
        iss = idp.issuer()
    );
    let mut h = start(settings(&yaml)).await;
    let admin_token = key.token(&claims(&idp.issuer(), "admin"));
    let r = h.validate_token(&admin_token).await;
    assert_eq!(r.tenant, "web");
    assert_eq!(
        code(&r),
        E::InvalidAudience,
        "routed by iss to the implicit tenant"
    );
    let r = h
        .validate(pb::ValidateRequest {
            token: admin_token,
            tenant: "admin".into(),
            ..Default::default()
        })
        .await;
    assert!(r.valid, "{:?}", r.error);
    assert_eq!(r.tenant, "admin");
    let r = h
        .validate(pb::ValidateRequest {
            token: key.token(&claims("https://elsewhere.example", "admin")),
            tenant: "admin".into(),
            ..Default::default()
        })
        .await;
    assert_eq!(code(&r), E::UnknownIssuer);
    assert_eq!(r.tenant, "admin");
}
