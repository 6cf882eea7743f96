//! `cargo bench --bench validate`: the in-process Validate pipeline per algorithm beside
//! its floor, raw aws-lc verification of the same signature over the same signing input
//! with a key parsed once; Envoy's ext_authz Check around it (no RPC); and signature
//! verification with a key parsed once (as the service does) against
//! `jsonwebtoken::decode`, which parses the key on every call. Prints the median time
//! per operation over timed batches, and the ratios. Quote medians and ratios from one
//! run.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::{hint::black_box, time::Instant};

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{self as sig, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use introspectd::{
    config::{self, ExtAuthzSettings, KeySource},
    grpc::ext_authz::{
        ExtAuthzService, pb::envoy::service::auth::v3::CheckRequest, request::http_check_request,
    },
    introspect::Introspection,
    registry::{Registry, ValidateInput},
};
use prost::Message as _;
use serde_json::{Value, json};

/// The allocator the service runs with (src/main.rs), so that allocation costs what it
/// costs in production.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCHES: usize = 15;

/// Median nanoseconds per call of `f`, over `BATCHES` batches of `per_batch` calls.
fn median_ns(per_batch: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..per_batch {
        f();
    }
    let mut samples: Vec<f64> = (0..BATCHES)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..per_batch {
                f();
            }
            start.elapsed().as_nanos() as f64 / per_batch as f64
        })
        .collect();
    samples.sort_by(|a, b| a.total_cmp(b));
    samples[BATCHES / 2]
}

fn token(header: Value, claims: &Value, sign: impl Fn(&[u8]) -> Vec<u8>) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let s = URL_SAFE_NO_PAD.encode(sign(input.as_bytes()));
    format!("{input}.{s}")
}

/// A CheckRequest as Envoy sends it for a plain GET from curl.
fn check_request(token: &str) -> CheckRequest {
    let authorization = format!("Bearer {token}");
    http_check_request(
        &[
            (":authority", "api.example.com"),
            (":method", "GET"),
            (":path", "/orders/42"),
            (":scheme", "http"),
            ("accept", "*/*"),
            ("user-agent", "curl/8.5.0"),
            ("x-forwarded-proto", "http"),
            ("x-request-id", "0b5c4b9e-6d0e-4a1e-9f1c-2f0d4c1e8a77"),
            ("authorization", &authorization),
        ],
        &[],
    )
}

fn main() {
    introspectd::install_crypto();
    let rng = SystemRandom::new();
    let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa");
    let public = rsa.public_key();
    let (n, e) = (
        URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
        URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero()),
    );
    let pkcs8 =
        EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("ec");
    let ec = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
        .expect("ec");
    let p = ec.public_key().as_ref().to_vec();
    let jwks = json!({"keys": [
        {"kty": "RSA", "kid": "rs", "alg": "RS256", "n": n, "e": e},
        {"kty": "RSA", "kid": "ps", "alg": "PS256", "n": n, "e": e},
        {"kty": "EC", "kid": "es", "alg": "ES256", "crv": "P-256",
         "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])},
    ]});
    let yaml =
        "tenants:\n  - id: bench\n    issuer: \"https://bench.example\"\n    audiences: [api]\n";
    let mut settings = config::load_str(yaml, &|_| None, &[]).expect("config");
    settings.tenants[0].keys = KeySource::Static { jwks };
    // The pipeline is measured with the verified-token cache off (every call parses and
    // verifies); `cached` answers the same token from the cache after its first call.
    let cached = Registry::new(&settings).expect("registry");
    settings.token_cache.enabled = false;
    let registry = Registry::new(&settings).expect("registry");

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = json!({"iss": "https://bench.example", "sub": "u", "aud": "api", "iat": now, "exp": now + 3600, "scope": "read"});
    let rs = token(json!({"alg": "RS256", "kid": "rs"}), &claims, |m| {
        let mut out = vec![0; rsa.public_modulus_len()];
        rsa.sign(&sig::RSA_PKCS1_SHA256, &rng, m, &mut out)
            .expect("sign");
        out
    });
    let ps = token(json!({"alg": "PS256", "kid": "ps"}), &claims, |m| {
        let mut out = vec![0; rsa.public_modulus_len()];
        rsa.sign(&sig::RSA_PSS_SHA256, &rng, m, &mut out)
            .expect("sign");
        out
    });
    let es = token(json!({"alg": "ES256", "kid": "es"}), &claims, |m| {
        ec.sign(&rng, m).expect("sign").as_ref().to_vec()
    });

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // The floor of each algorithm: aws-lc verifying the same signature over the same
    // signing input with a key parsed once, nothing else.
    let rsa_der = rsa.public_key().as_ref().to_vec();
    println!(
        "{:<44} {:>12} {:>16} {:>8} {:>14}",
        "benchmark", "median/op", "raw aws-lc/op", "ratio", "cache hit/op"
    );
    for (name, t, alg, der) in [
        (
            "validate RS256 (full pipeline)",
            &rs,
            &sig::RSA_PKCS1_2048_8192_SHA256 as &dyn sig::VerificationAlgorithm,
            &rsa_der,
        ),
        (
            "validate PS256 (full pipeline)",
            &ps,
            &sig::RSA_PSS_2048_8192_SHA256,
            &rsa_der,
        ),
        (
            "validate ES256 (full pipeline)",
            &es,
            &sig::ECDSA_P256_SHA256_FIXED,
            &p,
        ),
    ] {
        let input = ValidateInput {
            token: t,
            ..Default::default()
        };
        let ns = median_ns(2000, || {
            let r = rt.block_on(registry.validate(&input));
            assert!(r.is_ok(), "{r:?}");
            black_box(r.ok());
        });
        let (signing_input, signature) = t.rsplit_once('.').expect("three segments");
        let signature = URL_SAFE_NO_PAD.decode(signature).expect("base64url");
        let key = sig::ParsedPublicKey::new(alg, der).expect("key");
        let raw = median_ns(2000, || {
            let r = key.verify_sig(signing_input.as_bytes(), &signature);
            assert!(r.is_ok(), "{r:?}");
            black_box(r.ok());
        });
        let hit = median_ns(2000, || {
            let r = rt.block_on(cached.validate(&input));
            assert!(r.is_ok(), "{r:?}");
            black_box(r.ok());
        });
        println!(
            "{name:<44} {:>9.1} µs {:>13.1} µs {:>7.2}x {:>11.2} µs",
            ns / 1000.0,
            raw / 1000.0,
            ns / raw,
            hit / 1000.0
        );
    }
    let input = ValidateInput {
        token: "x.y",
        ..Default::default()
    };
    let ns = median_ns(20000, || {
        black_box(rt.block_on(registry.validate(&input)).is_err());
    });
    println!(
        "{:<44} {:>9.1} µs",
        "reject malformed (no crypto)",
        ns / 1000.0
    );

    // Envoy's Check without the RPC: the adapter (parse the CheckRequest, build the
    // answer with identity headers, claims header and metadata) around the same Validate.
    let check_with = |r: &Registry| {
        ExtAuthzService::new(
            r.clone(),
            Introspection::local_only(r.clone()),
            ExtAuthzSettings::default(),
            16 * 1024,
        )
    };
    let (uncached, hit) = (check_with(&registry), check_with(&cached));
    for (name, t, ext_authz) in [
        ("ext_authz Check RS256 (adapter + Validate)", &rs, &uncached),
        ("ext_authz Check ES256 (adapter + Validate)", &es, &uncached),
        ("ext_authz Check RS256 (adapter + cache hit)", &rs, &hit),
        ("ext_authz Check ES256 (adapter + cache hit)", &es, &hit),
    ] {
        let req = check_request(t);
        let ns = median_ns(2000, || {
            let r = rt.block_on(ext_authz.check_message(&req));
            assert_eq!(r.status.as_ref().map(|s| s.code), Some(0), "{r:?}");
            black_box(r);
        });
        println!("{name:<44} {:>9.1} µs", ns / 1000.0);
    }
    // The same with the protobuf work of the RPC: the request decoded from its bytes and
    // the answer encoded, as the server does around the adapter.
    for (name, t) in [
        ("ext_authz Check RS256 (hit, + protobuf)", &rs),
        ("ext_authz Check ES256 (hit, + protobuf)", &es),
    ] {
        let wire = check_request(t).encode_to_vec();
        let mut out = Vec::with_capacity(4096);
        let ns = median_ns(2000, || {
            let req = CheckRequest::decode(wire.as_slice()).expect("decodes");
            let r = rt.block_on(hit.check_message(&req));
            out.clear();
            r.encode(&mut out).expect("room");
            black_box(&out);
        });
        println!("{name:<44} {:>9.1} µs", ns / 1000.0);
    }

    // Parsed once vs jsonwebtoken::decode building its verifier from the components.
    let ours = median_ns(2000, || {
        black_box(
            rt.block_on(registry.validate(&ValidateInput {
                token: &rs,
                ..Default::default()
            }))
            .is_ok(),
        );
    });
    let key = jsonwebtoken::DecodingKey::from_rsa_components(&n, &e).expect("key");
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.set_audience(&["api"]);
    v.set_issuer(&["https://bench.example"]);
    let theirs = median_ns(2000, || {
        let r = jsonwebtoken::decode::<Value>(&rs, &key, &v);
        assert!(r.is_ok(), "{r:?}");
        black_box(r.ok());
    });
    println!(
        "{:<44} {:>9.1} µs",
        "jsonwebtoken::decode RS256 (key per call)",
        theirs / 1000.0
    );
    println!(
        "ratio jsonwebtoken::decode / validate RS256: {:.2}x",
        theirs / ours
    );
}
