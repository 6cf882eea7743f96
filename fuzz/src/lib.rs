//! The fuzz targets' bodies and the properties they assert, shared by the libFuzzer
//! binaries (`fuzz_targets/`) and by `tests/fuzz_regressions.rs`, which replays the
//! committed seed corpora and every input a fuzzer ever crashed on through the very same
//! checks in plain `cargo test`.
//!
//! Each target goes through the entry point production uses and asserts properties,
//! not just the absence of a panic:
//! - [`validate`]: the TokenService's Validate and Introspect handlers (boundary parse,
//!   routing, header and claim checks, key lookup, signature, replay, `to_proto`): a
//!   token the JWS parser accepts re-encodes to the same bytes; every emitted Timestamp
//!   is within protobuf's range; no answer or message echoes the token; an accepted
//!   token's claims are in range and its tenant trusts its `iss`.
//! - [`jwks`]: JWKS ingestion of a fetched document: no `oct` key and no private member
//!   ever enters a remote key set, every key is bound to allowed algorithms of its type,
//!   RSA moduli are 2048..8192 bits, kids are unique, and re-ingesting the published
//!   public JWKs gives the same thumbprints.
//! - [`discovery`]: the discovery document check: an accepted document names the
//!   expected issuer (or its B2C `/tfp/` form) and an https `jwks_uri` when required.
//! - [`introspect_answer`]: the RFC 7662 answer mapper: an inactive answer carries
//!   nothing else, no field, claim or error text echoes the token, dates are in range.
//! - [`config`]: configuration loading with environment overrides: an accepted
//!   configuration respects every bound, loads the same way twice and builds a
//!   registry; no error or `Debug` output shows a secret.

#![forbid(unsafe_code)]
// This is test code: a panic here is the finding the fuzzer reports.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{sync::OnceLock, time::Duration};

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{self as sig, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use introspectd::{
    config,
    grpc::{Limits, TokenServiceImpl, pb},
    introspect::{
        Answer, Introspection,
        answer::{MIN_ECHO_SEARCH_BYTES, echoes},
        client,
    },
    jwt::{
        claims::{MAX_NUMERIC_DATE, MIN_NUMERIC_DATE},
        jws,
    },
    keys::{IngestOptions, KeySet, KeyType, MAX_RSA_BITS, MIN_RSA_BITS, SUPPORTED_ALGORITHMS},
    oidc,
    registry::{KeySetId, Registry},
    upstream,
};
use jsonwebtoken::AlgorithmFamily;
use serde_json::{Map, Value, json};

/// The HMAC secret of the fuzzed tenants (not a secret: it is in the repository).
pub const HMAC_SECRET: &str = "fuzz-hmac-secret-0123456789abcdef0123456789abcdef0123456789abcdef";
/// A value the configuration target's environment holds for every secret variable; it
/// must never appear in an error or in `Debug` output.
pub const CONFIG_SECRET: &str = "FUZZ-SECRET-never-shown-0123456789abcdef";
/// The issuer the discovery target expects.
pub const DISCOVERY_ISSUER: &str = "https://idp.example.com/tenant";
/// Largest token the validate target's boundary accepts.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The tenants the validate target routes to: HMAC tenants with different policies
/// (audience, types, required claims, lifetime, replay detection, an explicit tenant
/// sharing an issuer) and an ES256 tenant whose key set is installed directly.
const VALIDATE_CONFIG: &str = r#"
tenants:
  - id: fp
    issuer: "https://fuzz.example"
    audiences: [api]
    algorithms: [HS256, HS384, HS512]
    hmac_secret_env: S
    max_lifetime: 24h
  - id: typed
    issuer: "https://typed.example"
    audiences: [api, other]
    algorithms: [HS256]
    hmac_secret_env: S
    types: [at+jwt, JWT]
    required_claims: [exp, sub]
    replay_detection: true
  - id: shared
    issuer: "https://fuzz.example"
    explicit: true
    audiences: [shared-api]
    algorithms: [HS256]
    hmac_secret_env: S
    clock_skew: 0s
  - id: ec
    issuer: "https://ec.fuzz.example"
    audiences: [api]
    algorithms: [ES256, RS256]
    jwks_file: /nonexistent/introspectd-fuzz.jwks
    fetch_timeout: 1ms
"#;

struct Fixture {
    runtime: tokio::runtime::Runtime,
    service: TokenServiceImpl,
    ec: EcdsaKeyPair,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        introspectd::install_crypto();
        let settings =
            config::load_str(VALIDATE_CONFIG, &|_| Some(HMAC_SECRET.to_string()), &[])
                .expect("the validate target's configuration loads");
        let registry = Registry::new(&settings).expect("registry");
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("keygen");
        let ec = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("key");
        let point = ec.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "ec1", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65])});
        let id = KeySetId {
            tenant: "ec".into(),
            policy: None,
        };
        let state = registry.key_set(&id).expect("ec key set");
        let (set, _) = KeySet::from_jwks(&json!({"keys": [jwk]}), &state.ingest_options())
            .expect("ec jwks");
        registry.install_keys(&state, set);
        // Its start-up "fetch" is done; a kid miss waits `fetch_timeout` (1 ms) once per
        // cooldown for a refresher that does not exist here.
        state.refresh.complete(1);
        let limits = Limits {
            max_token_bytes: MAX_TOKEN_BYTES,
            watchers: introspectd::grpc::watch::WatcherLimits::total(1),
        };
        let service = TokenServiceImpl::new(registry.clone(), limits)
            .with_introspector(Introspection::local_only(registry));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        Fixture {
            runtime,
            service,
            ec,
        }
    })
}

// ---- validate ----------------------------------------------------------------------------

/// How the first byte of a validate input shapes the request.
#[derive(Debug, Clone, Copy)]
struct Shape(u8);

impl Shape {
    /// 0: the rest is the token; 1: HS256-signed; 2: ES256-signed; 3: HS512-signed,
    /// where the rest is `header JSON 0x00 payload JSON`.
    fn signing(self) -> u8 {
        self.0 & 3
    }
    fn nonce(self) -> bool {
        self.0 & 4 != 0
    }
    fn tenant(self) -> &'static str {
        match (self.0 >> 3) & 3 {
            0 => "",
            1 => "typed",
            2 => "shared",
            _ => "nope",
        }
    }
    fn audiences(self) -> Vec<String> {
        if self.0 & 32 != 0 {
            vec!["other".into(), "shared-api".into()]
        } else {
            Vec::new()
        }
    }
    fn bearer(self) -> bool {
        self.0 & 64 != 0
    }
    fn scopes(self) -> Vec<String> {
        if self.0 & 128 != 0 {
            vec!["read".into()]
        } else {
            Vec::new()
        }
    }
}

/// Builds the compact JWS the input describes (signed by the fixture's keys).
fn token_of(shape: Shape, rest: &[u8]) -> Option<String> {
    if shape.signing() == 0 {
        return std::str::from_utf8(rest).ok().map(str::to_owned);
    }
    let split = rest.iter().position(|b| *b == 0)?;
    let (header, payload) = (&rest[..split], &rest[split + 1..]);
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let signature = match shape.signing() {
        1 => hmac(aws_lc_rs::hmac::HMAC_SHA256, input.as_bytes()),
        3 => hmac(aws_lc_rs::hmac::HMAC_SHA512, input.as_bytes()),
        _ => fixture()
            .ec
            .sign(&SystemRandom::new(), input.as_bytes())
            .ok()?
            .as_ref()
            .to_vec(),
    };
    Some(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
}

fn hmac(alg: aws_lc_rs::hmac::Algorithm, message: &[u8]) -> Vec<u8> {
    let key = aws_lc_rs::hmac::Key::new(alg, HMAC_SECRET.as_bytes());
    aws_lc_rs::hmac::sign(&key, message).as_ref().to_vec()
}

/// Whether finding `token` in a text means the text echoes it. A token that is part of
/// a fixed message ("a compact JWS has exactly three segments" holds many 16-byte
/// strings) is not echoed; a real token is at least 16 bytes with two dots, which no
/// message template has, and a message's quoted claims are always shorter than the
/// token they come from.
fn echo_is_meaningful(token: &str) -> bool {
    token.len() >= MIN_ECHO_SEARCH_BYTES && jws::is_jwt_shaped(token)
}

/// Every Timestamp must be one Go's and Java's protobuf libraries accept.
fn assert_timestamp(t: &Option<prost_types::Timestamp>, what: &str) {
    if let Some(t) = t {
        assert!(
            (MIN_NUMERIC_DATE..=MAX_NUMERIC_DATE).contains(&t.seconds)
                && (0..1_000_000_000).contains(&t.nanos),
            "{what} out of protobuf's range: {t:?}"
        );
    }
}

/// A token the JWS parser accepts re-encodes to exactly its own bytes: one encoding per
/// value, so two parties can never disagree on what a token says.
fn assert_canonical(token: &str) {
    let Ok(parsed) = jws::parse(token) else {
        return;
    };
    let segments: Vec<&str> = token.split('.').collect();
    assert_eq!(segments.len(), 3, "a parsed JWS has three segments");
    let header = jws::b64url_decode(segments[0], "header").expect("parsed header decodes");
    assert_eq!(URL_SAFE_NO_PAD.encode(&header), segments[0], "header");
    assert_eq!(
        URL_SAFE_NO_PAD.encode(&parsed.payload),
        segments[1],
        "payload"
    );
    assert_eq!(
        URL_SAFE_NO_PAD.encode(&parsed.signature),
        segments[2],
        "signature"
    );
    assert_eq!(
        parsed.signing_input,
        format!("{}.{}", segments[0], segments[1])
    );
}

/// The properties of one Validate answer for `token`.
fn check_validate_response(token: &str, r: &pb::ValidateResponse) {
    for (t, what) in [
        (&r.expires_at, "expires_at"),
        (&r.issued_at, "issued_at"),
        (&r.not_before, "not_before"),
    ] {
        assert_timestamp(t, what);
    }
    if r.valid {
        assert!(r.error.is_none());
        assert!(
            ["fp", "typed", "shared", "ec"].contains(&r.tenant.as_str()),
            "accepted by {:?}",
            r.tenant
        );
        assert!(
            r.expires_at.is_some() || r.tenant != "typed",
            "typed requires exp"
        );
        assert_canonical(token);
    } else {
        let e = r.error.as_ref().expect("a rejection has an error");
        assert!(r.claims.is_none(), "no claims on a rejection");
        assert!(r.subject.is_empty() && r.audiences.is_empty());
        assert!(
            !echo_is_meaningful(token) || !e.message.contains(token),
            "the message echoes the token: {}",
            e.message
        );
        assert!(
            e.message.len() < 512,
            "message of {} bytes",
            e.message.len()
        );
    }
}

/// Validate and Introspect of one fuzzed request through the TokenService handlers.
pub fn validate(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let shape = Shape(first);
    let Some(token) = token_of(shape, rest) else {
        return;
    };
    assert_canonical(&token);
    let f = fixture();
    let raw = if shape.bearer() {
        format!("Bearer {token}")
    } else {
        token.clone()
    };
    let req = pb::ValidateRequest {
        token: raw.clone(),
        tenant: shape.tenant().into(),
        audiences: shape.audiences(),
        required_scopes: shape.scopes(),
        nonce: if shape.nonce() {
            "n-1".into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let outcome = f.runtime.block_on(f.service.validate_message(&req));
    let trimmed = token.trim();
    match &outcome {
        Ok(r) => check_validate_response(trimmed, r),
        Err(e) => assert!(
            !echo_is_meaningful(trimmed) || !e.to_string().contains(trimmed),
            "a request error echoes the token"
        ),
    }
    let ireq = pb::IntrospectRequest {
        token: raw,
        tenant: shape.tenant().into(),
        ..Default::default()
    };
    if let Ok(r) = f.runtime.block_on(f.service.introspect_message(&ireq)) {
        if !r.active {
            assert_eq!(
                r,
                pb::IntrospectResponse::default(),
                "inactive: nothing else"
            );
        }
        if echo_is_meaningful(trimmed) {
            assert_response_silent(&r, trimmed);
        }
    }
}

/// Every string of an Introspect response, claims (names and values) included.
fn response_strings(r: &pb::IntrospectResponse) -> Vec<String> {
    fn walk(v: &prost_types::Value, out: &mut Vec<String>) {
        use prost_types::value::Kind;
        match &v.kind {
            Some(Kind::StringValue(s)) => out.push(s.clone()),
            Some(Kind::ListValue(l)) => l.values.iter().for_each(|v| walk(v, out)),
            Some(Kind::StructValue(s)) => {
                for (k, v) in &s.fields {
                    out.push(k.clone());
                    walk(v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = vec![
        r.scope.clone(),
        r.client_id.clone(),
        r.username.clone(),
        r.token_type.clone(),
        r.sub.clone(),
        r.iss.clone(),
        r.jti.clone(),
        r.tenant.clone(),
    ];
    out.extend(r.aud.iter().cloned());
    if let Some(c) = &r.claims {
        let root = prost_types::Value {
            kind: Some(prost_types::value::Kind::StructValue(c.clone())),
        };
        walk(&root, &mut out);
    }
    out
}

/// No string of the response holds the token (checked field by field: a `Debug`
/// rendering adds quotes and names a fuzzer can complete a token with).
fn assert_response_silent(r: &pb::IntrospectResponse, token: &str) {
    for s in response_strings(r) {
        assert!(!s.contains(token), "the response echoes the token");
    }
}

// ---- jwks ----------------------------------------------------------------------------------

const PRIVATE_MEMBERS: [&str; 8] = ["d", "p", "q", "dp", "dq", "qi", "oth", "k"];

fn rsa_bits(jwk: &Map<String, Value>) -> usize {
    let n = jwk
        .get("n")
        .and_then(Value::as_str)
        .and_then(|n| URL_SAFE_NO_PAD.decode(n).ok())
        .unwrap_or_default();
    let first = n.first().copied().unwrap_or(0);
    (n.len() * 8).saturating_sub(first.leading_zeros() as usize)
}

/// A fetched JWKS document through the refresher's parse and ingestion.
pub fn jwks(data: &[u8]) {
    let Ok(doc) = upstream::parse_json(data) else {
        return;
    };
    // A tenant's allow-list: everything, or only the asymmetric default.
    let allowed: &[jsonwebtoken::Algorithm] = if data.len().is_multiple_of(2) {
        &SUPPORTED_ALGORITHMS
    } else {
        &config::DEFAULT_ALGORITHMS
    };
    let opts = IngestOptions {
        allow_symmetric: false,
        algorithms: allowed,
    };
    let Ok((set, _skipped)) = KeySet::from_jwks(&doc, &opts) else {
        return;
    };
    let mut kids = std::collections::HashSet::new();
    let mut published = Vec::new();
    for key in set.iter() {
        assert_ne!(key.kty, KeyType::Oct, "a remote key set holds an oct key");
        let jwk = key
            .public_jwk
            .as_ref()
            .expect("a public key has a public JWK");
        for m in PRIVATE_MEMBERS {
            assert!(!jwk.contains_key(m), "private member {m} in a remote key");
        }
        assert!(!key.algorithms.is_empty());
        for alg in &key.algorithms {
            assert!(allowed.contains(alg), "{alg:?} is not allowed");
            let family = alg.family();
            let fits = match key.kty {
                KeyType::Rsa => family == AlgorithmFamily::Rsa,
                KeyType::Ec => family == AlgorithmFamily::Ec,
                KeyType::Okp => family == AlgorithmFamily::Ed,
                KeyType::Oct => false,
            };
            assert!(fits, "{alg:?} bound to a {:?} key", key.kty);
        }
        if key.kty == KeyType::Rsa {
            let bits = rsa_bits(jwk);
            assert!(
                (MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits),
                "{bits}-bit RSA"
            );
        }
        if let Some(kid) = &key.kid {
            assert!(kids.insert(kid.clone()), "kid {kid:?} twice in one set");
        }
        published.push(Value::Object(jwk.clone()));
    }
    // What WatchKeys publishes is itself a valid JWKS with the same keys.
    let (again, skipped) = KeySet::from_jwks(&json!({ "keys": published }), &opts)
        .expect("the published keys form a JWKS");
    assert!(
        skipped.is_empty(),
        "a published key is refused: {skipped:?}"
    );
    let prints = |s: &KeySet| s.iter().map(|k| k.thumbprint.clone()).collect::<Vec<_>>();
    assert_eq!(
        prints(&set),
        prints(&again),
        "thumbprints survive republishing"
    );
}

// ---- discovery -------------------------------------------------------------------------

/// A discovery document through the refresher's parse and checks.
pub fn discovery(data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(doc) = upstream::parse_json(rest) else {
        return;
    };
    let require_https = first & 1 == 0;
    let policy = (first & 2 != 0).then_some("B2C_1_signin");
    let Ok(m) = oidc::parse_metadata(&doc, DISCOVERY_ISSUER, policy, require_https) else {
        return;
    };
    let tfp = policy.is_some_and(|p| oidc::is_b2c_tfp_issuer(&m.issuer, DISCOVERY_ISSUER, p));
    assert!(
        m.issuer == DISCOVERY_ISSUER || tfp,
        "accepted issuer {:?}",
        m.issuer
    );
    if tfp {
        let declared = url::Url::parse(&m.issuer).expect("a tfp issuer is a URL");
        assert_eq!(declared.host_str(), Some("idp.example.com"));
    }
    let jwks = url::Url::parse(&m.jwks_uri).expect("jwks_uri is a URL");
    let allowed: &[&str] = if require_https {
        &["https"]
    } else {
        &["https", "http"]
    };
    assert!(
        allowed.contains(&jwks.scheme()),
        "jwks_uri {:?}",
        m.jwks_uri
    );
    assert_eq!(
        Some(m.jwks_uri.as_str()),
        doc.get("jwks_uri").and_then(Value::as_str)
    );
}

// ---- introspect_answer -----------------------------------------------------------------

fn assert_no_echo(v: &Value, token: &str) {
    match v {
        Value::String(s) => assert!(!echoes(s, token), "a claim echoes the token"),
        Value::Array(items) => items.iter().for_each(|i| assert_no_echo(i, token)),
        Value::Object(m) => {
            for (k, v) in m {
                assert!(!echoes(k, token), "a member name echoes the token");
                assert_no_echo(v, token);
            }
        }
        _ => {}
    }
}

fn assert_answer(a: &Answer, token: &str) {
    if !a.active {
        assert_eq!(a, &Answer::inactive(), "an inactive answer carries nothing");
        return;
    }
    let fields = [
        &a.scope,
        &a.client_id,
        &a.username,
        &a.token_type,
        &a.sub,
        &a.iss,
        &a.jti,
        &a.tenant,
    ];
    for f in fields.into_iter().flatten() {
        assert!(!echoes(f, token), "a field echoes the token");
    }
    for aud in &a.aud {
        assert!(!echoes(aud, token), "an audience echoes the token");
    }
    assert_no_echo(&Value::Object(a.claims.clone()), token);
    for d in [a.exp, a.iat, a.nbf].into_iter().flatten() {
        assert!(
            (MIN_NUMERIC_DATE..=MAX_NUMERIC_DATE).contains(&d),
            "date {d}"
        );
    }
    let proto = introspectd::grpc::introspect::to_proto(a);
    if token.len() >= MIN_ECHO_SEARCH_BYTES {
        assert_response_silent(&proto, token);
    }
}

/// An introspection endpoint's reply through the RFC 7662 client's mapper: two bytes of
/// status, the token up to a 0x00 byte, then the body.
pub fn introspect_answer(data: &[u8]) {
    let [hi, lo, rest @ ..] = data else {
        return;
    };
    let status = u16::from_be_bytes([*hi, *lo]) % 600;
    let split = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
    let Ok(token) = std::str::from_utf8(&rest[..split]) else {
        return;
    };
    if token.is_empty() {
        return;
    }
    let body = rest.get(split + 1..).unwrap_or_default();
    match client::answer_for(token, status, body, "tenant-x") {
        Ok(a) => {
            assert!((200..300).contains(&status), "an answer from HTTP {status}");
            assert_answer(&a, token);
        }
        Err(failure) => {
            let texts = match &failure {
                client::Failure::Unavailable { reason, detail } => vec![reason, detail],
                client::Failure::Configuration { reason } => vec![reason],
            };
            if token.len() >= MIN_ECHO_SEARCH_BYTES {
                for text in texts {
                    assert!(!text.contains(token), "a failure quotes the token");
                }
            }
        }
    }
}

// ---- config ------------------------------------------------------------------------------

fn check_settings(s: &config::Settings) {
    for t in &s.tenants {
        let r = &t.refresh;
        assert!(r.refresh_interval >= Duration::from_secs(1));
        assert!(!r.fetch_timeout.is_zero());
        assert!(r.unknown_kid_cooldown >= config::MIN_UNKNOWN_KID_COOLDOWN);
        for d in [
            r.refresh_interval,
            r.unknown_kid_cooldown,
            r.fetch_timeout,
            t.policy.clock_skew,
        ] {
            assert!(d <= config::MAX_DURATION, "a duration over the maximum");
        }
        assert!((1..=config::MAX_REPLAY_CACHE_ENTRIES).contains(&t.policy.replay_cache_entries));
        // Fail closed: a `{tenantid}` issuer always says which Entra tenants it trusts.
        assert_eq!(t.is_templated(), t.allowed_tenant_ids.is_some());
        assert!(!t.policy.algorithms.is_empty());
        if let Some(types) = &t.policy.types {
            assert!(types.iter().all(|ty| !ty.is_empty()));
        }
        if let Some(i) = &t.introspection {
            assert!(i.max_concurrency > 0);
        }
    }
    assert!(s.server.max_token_bytes > 0);
    assert!(s.server.decoding_limit() >= s.server.max_token_bytes);
}

/// A configuration file and `INTROSPECTD_*` overrides through the loader: YAML, a 0x00
/// byte, then `NAME=value` lines.
pub fn config(data: &[u8]) {
    let split = data.iter().position(|b| *b == 0).unwrap_or(data.len());
    let Ok(yaml) = std::str::from_utf8(&data[..split]) else {
        return;
    };
    let overrides: Vec<(String, String)> = data
        .get(split + 1..)
        .map(String::from_utf8_lossy)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("{}{k}", config::ENV_PREFIX), v.to_string()))
        .collect();
    let env = |_: &str| Some(CONFIG_SECRET.to_string());
    // The secret comes from the environment; when the input itself spells it (in a key
    // name, an issuer, ...), an error or Debug quoting the input is not a leak.
    let planted = yaml.contains(CONFIG_SECRET)
        || overrides
            .iter()
            .any(|(k, v)| k.contains(CONFIG_SECRET) || v.contains(CONFIG_SECRET));
    let shows_secret = |text: String| !planted && text.contains(CONFIG_SECRET);
    let first = config::load_str(yaml, &env, &overrides);
    let again = config::load_str(yaml, &env, &overrides);
    match (&first, &again) {
        (Ok(s), Ok(t)) => {
            assert_eq!(
                format!("{s:?}"),
                format!("{t:?}"),
                "loading is deterministic"
            );
            assert!(!shows_secret(format!("{s:?}")), "Debug shows a secret");
            check_settings(s);
            introspectd::install_crypto();
            if let Err(e) = Registry::new(s) {
                assert!(!shows_secret(e.to_string()), "an error shows a secret");
            }
        }
        (Err(e), Err(f)) => {
            assert_eq!(e, f, "loading is deterministic");
            assert!(!e.key.is_empty(), "an error names a key");
            assert!(!shows_secret(e.to_string()), "an error shows a secret");
        }
        _ => panic!("the same input loaded once and failed once"),
    }
}

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target by name, for the corpus replay in `tests/fuzz_regressions.rs`.
pub const TARGETS: [(&str, Target); 5] = [
    ("validate", validate),
    ("jwks", jwks),
    ("discovery", discovery),
    ("introspect_answer", introspect_answer),
    ("config", config),
];
