//! The Wycheproof JOSE vectors (tests/conformance/wycheproof/): every JWS and JWK case
//! ends in the expected verdict, with the errata listed in that folder's README, and
//! nothing panics. Each case goes through the service's own path: compact framing,
//! header rules, key ingestion with hygiene, key selection and signature verification.

// Tests and benches: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::collections::HashMap;

use aws_lc_rs::digest;
use introspectd::{
    jwt::jws,
    keys::{IngestOptions, KeyLookup, KeySet, Signed},
};
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};

const ALL: [Algorithm; 12] = introspectd::keys::SUPPORTED_ALGORITHMS;

/// Cases whose label is wrong, per the README's errata: (tcId, verdict a correct verifier gives).
fn errata(file: &str) -> HashMap<u64, bool> {
    match file {
        "json_web_signature_test.json" => HashMap::from([
            (367, true),
            (370, true),
            (372, false),
            (373, false),
            (346, false),
            (350, false),
            (347, false),
            (351, false),
        ]),
        _ => HashMap::new(),
    }
}

fn key_set(group: &Value) -> KeySet {
    let key = group
        .get("public")
        .or_else(|| group.get("private"))
        .cloned()
        .unwrap_or(Value::Null);
    // Private JWKs are given for HMAC groups; their public members are what a verifier
    // holds, so private members of asymmetric keys are stripped as a JWKS endpoint would.
    let strip = |k: &Value| -> Value {
        let mut k = k.clone();
        if let Some(o) = k.as_object_mut()
            && o.get("kty").and_then(Value::as_str) != Some("oct")
        {
            for m in ["d", "p", "q", "dp", "dq", "qi", "oth"] {
                o.remove(m);
            }
        }
        k
    };
    let doc = match key.get("keys") {
        Some(Value::Array(keys)) => json!({"keys": keys.iter().map(strip).collect::<Vec<_>>()}),
        _ => json!({"keys": [strip(&key)]}),
    };
    let opts = IngestOptions {
        allow_symmetric: true,
        algorithms: &ALL,
    };
    KeySet::from_jwks(&doc, &opts)
        .map(|(set, _)| set)
        .unwrap_or_default()
}

fn verdict(keys: &KeySet, token: &str) -> bool {
    let Ok(parsed) = jws::parse(token) else {
        return false;
    };
    let Ok(alg) = parsed.header.check(&ALL) else {
        return false;
    };
    // Validate verifies RS256, PS256 and ES256 from the SHA-256 it has already taken of
    // the signing input; every vector must get the same verdict both ways.
    let bytes = parsed.signing_input.as_bytes();
    let sha256 = digest::digest(&digest::SHA256, bytes);
    let verdict = |message| {
        let kid = parsed.header.kid.as_deref();
        matches!(
            keys.verify(kid, alg, message, &parsed.signature),
            KeyLookup::Verified(_)
        )
    };
    let from_bytes = verdict(Signed::new(bytes));
    let from_digest = verdict(Signed::with_sha256(bytes, &sha256));
    assert_eq!(
        from_bytes, from_digest,
        "{alg:?}: digest and bytes disagree"
    );
    from_bytes
}

fn run(file: &str) -> (usize, Vec<String>) {
    let path = format!(
        "{}/tests/conformance/wycheproof/{file}",
        env!("CARGO_MANIFEST_DIR")
    );
    let doc: Value =
        serde_json::from_slice(&std::fs::read(&path).expect("vectors present")).expect("json");
    let errata = errata(file);
    let mut failures = Vec::new();
    let mut count = 0;
    for group in doc["testGroups"].as_array().expect("groups") {
        let keys = key_set(group);
        for test in group["tests"].as_array().expect("tests") {
            count += 1;
            let id = test["tcId"].as_u64().expect("tcId");
            let token = test["jws"].as_str().expect("jws");
            let got = verdict(&keys, token);
            let expected = match errata.get(&id) {
                Some(v) => Some(*v),
                None => match test["result"].as_str() {
                    Some("valid") => Some(true),
                    Some("invalid") => Some(false),
                    _ => None,
                },
            };
            if let Some(want) = expected
                && got != want
            {
                failures.push(format!(
                    "{file} tc{id} ({}): expected {want}, got {got}",
                    test["comment"]
                ));
            }
        }
    }
    (count, failures)
}

#[test]
fn json_web_signature_vectors() {
    let (count, failures) = run("json_web_signature_test.json");
    assert_eq!(count, 401);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn json_web_key_vectors() {
    let (count, failures) = run("json_web_key_test.json");
    assert_eq!(count, 26);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
