//! Shared integration-test harness: a fake identity provider over real HTTP on loopback
//! (programmable routes, per-route request counters, faults), signing keys independent
//! of the service's own code (aws-lc-rs directly), and helpers that start the real
//! server on port 0.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{self as sig, EcdsaKeyPair, KeyPair as _},
};
use axum::{
    Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri},
    response::Response,
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use introspectd::{
    app::RunningServer,
    config,
    grpc::pb::{
        self, admin_service_client::AdminServiceClient, token_service_client::TokenServiceClient,
    },
};
use serde_json::{Value, json};
use tonic::transport::Channel;

/// A request the fake provider received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A programmed answer.
pub type Handler = Arc<dyn Fn(&Seen) -> (u16, Vec<(String, String)>, Vec<u8>) + Send + Sync>;

#[derive(Clone)]
pub enum Behaviour {
    Json(Value),
    Status(u16),
    Raw(u16, Vec<u8>),
    Dynamic(Handler),
}

#[derive(Default)]
struct IdpState {
    routes: HashMap<(Method, String), Behaviour>,
    delays: HashMap<String, Duration>,
    counts: HashMap<String, usize>,
    log: Vec<Seen>,
}

/// The fake identity provider.
#[derive(Clone)]
pub struct FakeIdp {
    pub addr: SocketAddr,
    state: Arc<Mutex<IdpState>>,
}

async fn handle(
    State(state): State<Arc<Mutex<IdpState>>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_string();
    let seen = Seen {
        method: method.clone(),
        path: path.clone(),
        headers,
        body,
    };
    let (behaviour, delay) = {
        let mut s = state.lock().expect("idp lock");
        *s.counts.entry(path.clone()).or_default() += 1;
        s.log.push(seen.clone());
        (
            s.routes.get(&(method, path.clone())).cloned(),
            s.delays.get(&path).copied(),
        )
    };
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let (status, headers, body) = match behaviour {
        None => (404, vec![], b"not found".to_vec()),
        Some(Behaviour::Json(v)) => (
            200,
            vec![("content-type".into(), "application/json".into())],
            v.to_string().into_bytes(),
        ),
        Some(Behaviour::Status(code)) => (code, vec![], b"fault".to_vec()),
        Some(Behaviour::Raw(code, body)) => (code, vec![], body),
        Some(Behaviour::Dynamic(f)) => f(&seen),
    };
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (k, v) in headers {
        resp = resp.header(k, v);
    }
    resp.body(Body::from(body)).expect("response")
}

impl FakeIdp {
    /// Starts an empty provider on 127.0.0.1:0.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(IdpState::default()));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind idp");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, state }
    }

    /// `http://127.0.0.1:PORT` + path.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// The issuer this provider's default discovery document declares.
    pub fn issuer(&self) -> String {
        self.url("")
    }

    pub fn set(&self, method: Method, path: &str, b: Behaviour) {
        self.state
            .lock()
            .expect("lock")
            .routes
            .insert((method, path.to_string()), b);
    }

    pub fn set_json(&self, path: &str, v: Value) {
        self.set(Method::GET, path, Behaviour::Json(v));
    }

    pub fn set_delay(&self, path: &str, d: Option<Duration>) {
        let mut s = self.state.lock().expect("lock");
        match d {
            Some(d) => s.delays.insert(path.to_string(), d),
            None => s.delays.remove(path),
        };
    }

    pub fn count(&self, path: &str) -> usize {
        self.state
            .lock()
            .expect("lock")
            .counts
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    pub fn total(&self) -> usize {
        self.state.lock().expect("lock").counts.values().sum()
    }

    pub fn requests(&self, path: &str) -> Vec<Seen> {
        self.state
            .lock()
            .expect("lock")
            .log
            .iter()
            .filter(|s| s.path == path)
            .cloned()
            .collect()
    }

    /// Serves a standard OIDC discovery document at `/.well-known/openid-configuration`
    /// pointing at `/jwks`, with `keys` published there.
    pub fn serve_oidc(&self, keys: &[&TestKey]) {
        self.set_json(
            "/.well-known/openid-configuration",
            self.discovery(&self.issuer(), "/jwks"),
        );
        self.publish("/jwks", keys);
    }

    pub fn discovery(&self, issuer: &str, jwks_path: &str) -> Value {
        json!({
            "issuer": issuer,
            "jwks_uri": self.url(jwks_path),
            "introspection_endpoint": self.url("/introspect"),
            "token_endpoint": self.url("/token"),
        })
    }

    pub fn publish(&self, path: &str, keys: &[&TestKey]) {
        self.set_json(path, jwks(keys));
    }
}

pub fn jwks(keys: &[&TestKey]) -> Value {
    json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()})
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Hmac(Vec<u8>),
}

/// A signing key with its public JWK.
pub struct TestKey {
    pub kid: String,
    pub alg: String,
    pub jwk: Value,
    signer: Signer,
}

impl TestKey {
    pub fn rsa(kid: &str, alg: &str) -> Self {
        let kp = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa keygen");
        let public = kp.public_key();
        let n = public.modulus().big_endian_without_leading_zero();
        let e = public.exponent().big_endian_without_leading_zero();
        let jwk = json!({"kty":"RSA","kid":kid,"alg":alg,"use":"sig","n":URL_SAFE_NO_PAD.encode(n),"e":URL_SAFE_NO_PAD.encode(e)});
        Self {
            kid: kid.into(),
            alg: alg.into(),
            jwk,
            signer: Signer::Rsa(kp),
        }
    }

    pub fn ec(kid: &str) -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("ec keygen");
        let kp = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("ec parse");
        let p = kp.public_key().as_ref().to_vec();
        let jwk = json!({"kty":"EC","kid":kid,"alg":"ES256","use":"sig","crv":"P-256","x":URL_SAFE_NO_PAD.encode(&p[1..33]),"y":URL_SAFE_NO_PAD.encode(&p[33..65])});
        Self {
            kid: kid.into(),
            alg: "ES256".into(),
            jwk,
            signer: Signer::Ec(kp),
        }
    }

    pub fn hmac(kid: &str, secret: &[u8]) -> Self {
        Self {
            kid: kid.into(),
            alg: "HS256".into(),
            jwk: Value::Null,
            signer: Signer::Hmac(secret.to_vec()),
        }
    }

    /// The same key material under another kid.
    pub fn jwk_without_alg(&self) -> Value {
        let mut j = self.jwk.clone();
        j.as_object_mut().expect("obj").remove("alg");
        j
    }

    pub fn sign(&self, alg: &str, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Rsa(kp) => {
                let enc: &'static dyn sig::RsaEncoding = match alg {
                    "RS384" => &sig::RSA_PKCS1_SHA384,
                    "RS512" => &sig::RSA_PKCS1_SHA512,
                    "PS256" => &sig::RSA_PSS_SHA256,
                    "PS384" => &sig::RSA_PSS_SHA384,
                    "PS512" => &sig::RSA_PSS_SHA512,
                    _ => &sig::RSA_PKCS1_SHA256,
                };
                let mut out = vec![0; kp.public_modulus_len()];
                kp.sign(enc, &rng, message, &mut out).expect("rsa sign");
                out
            }
            Signer::Ec(kp) => kp.sign(&rng, message).expect("ec sign").as_ref().to_vec(),
            Signer::Hmac(secret) => {
                let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
                aws_lc_rs::hmac::sign(&k, message).as_ref().to_vec()
            }
        }
    }

    /// Signs `claims` with a header of `{"alg", "kid", "typ": "JWT"}` merged with `extra_header`.
    pub fn token_with(&self, extra_header: Value, claims: &Value) -> String {
        let mut header = json!({"alg": self.alg, "kid": self.kid, "typ": "JWT"});
        if let Value::Object(extra) = extra_header {
            for (k, v) in extra {
                if v.is_null() {
                    header.as_object_mut().expect("obj").remove(&k);
                } else {
                    header[k] = v;
                }
            }
        }
        let alg = header["alg"].as_str().unwrap_or("RS256").to_string();
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{h}.{p}");
        let s = URL_SAFE_NO_PAD.encode(self.sign(&alg, input.as_bytes()));
        format!("{input}.{s}")
    }

    pub fn token(&self, claims: &Value) -> String {
        self.token_with(Value::Null, claims)
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Standard claims: iss, sub, aud, iat, nbf, exp (+1h), jti.
pub fn claims(iss: &str, aud: &str) -> Value {
    let n = now();
    json!({"iss": iss, "sub": "user-1", "aud": aud, "iat": n, "nbf": n, "exp": n + 3600, "jti": format!("j{}", fastrand::u64(..))})
}

/// Loads a YAML config (secrets from `env`), forces loopback port 0 and metrics off.
pub fn settings_with_env(yaml: &str, env: &[(&str, &str)]) -> config::Settings {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = move |name: &str| env.get(name).cloned();
    let mut s = config::load_str(yaml, &lookup, &[]).expect("test config loads");
    s.server.listen = "127.0.0.1:0".parse().expect("addr");
    s.server.metrics_listen = None;
    s.server.shutdown_grace = Duration::from_secs(3);
    s
}

pub fn settings(yaml: &str) -> config::Settings {
    settings_with_env(yaml, &[])
}

/// A running server and a connected client.
pub struct Harness {
    pub server: RunningServer,
    pub client: TokenServiceClient<Channel>,
    pub channel: Channel,
}

pub async fn connect(addr: SocketAddr) -> Channel {
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).expect("endpoint");
    for _ in 0..100 {
        if let Ok(c) = endpoint.connect().await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("server at {addr} did not accept connections");
}

pub async fn start(settings: config::Settings) -> Harness {
    let server = introspectd::app::spawn(settings)
        .await
        .expect("server starts");
    let channel = connect(server.addr).await;
    Harness {
        client: TokenServiceClient::new(channel.clone()),
        server,
        channel,
    }
}

impl Harness {
    pub async fn validate(&mut self, req: pb::ValidateRequest) -> pb::ValidateResponse {
        self.client
            .validate(req)
            .await
            .expect("Validate RPC ok")
            .into_inner()
    }

    pub async fn validate_token(&mut self, token: &str) -> pb::ValidateResponse {
        self.validate(pb::ValidateRequest {
            token: token.into(),
            ..Default::default()
        })
        .await
    }

    /// Polls health for `service` until it reports `want` (bounded).
    pub async fn wait_health(&self, service: &str, want: i32) {
        let mut h = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        for _ in 0..200 {
            if let Ok(r) = h
                .check(tonic_health::pb::HealthCheckRequest {
                    service: service.into(),
                })
                .await
                && r.into_inner().status == want
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("health of `{service}` never became {want}");
    }

    pub async fn health(&self, service: &str) -> i32 {
        let mut h = tonic_health::pb::health_client::HealthClient::new(self.channel.clone());
        h.check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
        .unwrap_or(-1)
    }
}

/// The error code of a response, as the enum.
pub fn code(r: &pb::ValidateResponse) -> pb::ErrorCode {
    r.error
        .as_ref()
        .and_then(|e| pb::ErrorCode::try_from(e.code).ok())
        .unwrap_or(pb::ErrorCode::Unspecified)
}

/// Polls `cond` every 20 ms for at most `limit`.
pub async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

/// A basic OIDC tenant config for `idp`.
pub fn oidc_tenant(idp: &FakeIdp, extra: &str) -> String {
    format!(
        "tenants:\n  - id: demo\n    issuer: \"{}\"\n    audiences: [\"api://demo\"]\n    require_https: false\n{extra}",
        idp.issuer()
    )
}

/// A fake provider serving discovery and one RS256 key (`k1`).
pub async fn oidc_idp() -> (FakeIdp, TestKey) {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    (idp, key)
}

/// A fake provider serving one RS256 key (`k1`), and the service (changed by `tune`)
/// with the one tenant `oidc_tenant(extra)` trusting it, once TokenService is SERVING.
pub async fn start_oidc(
    extra: &str,
    tune: impl FnOnce(&mut config::Settings),
) -> (FakeIdp, TestKey, Harness) {
    let (idp, key) = oidc_idp().await;
    let mut s = settings(&oidc_tenant(&idp, extra));
    tune(&mut s);
    let h = start(s).await;
    h.wait_health("introspect.v1.TokenService", 1).await;
    (idp, key, h)
}

/// The Prometheus text of a server's `/metrics`.
pub async fn scrape_metrics(addr: SocketAddr) -> String {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("scrape");
    assert_eq!(resp.status(), 200, "metrics endpoint");
    resp.text().await.expect("metrics body")
}

/// The value of the sample whose line starts with `series` (name and labels, exact).
pub fn metric_sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Like [`metric_sample`], panicking with the whole text when the series is absent.
pub fn metric(text: &str, series: &str) -> f64 {
    metric_sample(text, series).unwrap_or_else(|| panic!("no sample `{series}` in\n{text}"))
}

/// AdminService's ListIssuers over `channel`, called without a token.
pub async fn list_issuers(channel: &Channel) -> Vec<pb::IssuerStatus> {
    AdminServiceClient::new(channel.clone())
        .list_issuers(pb::ListIssuersRequest::default())
        .await
        .expect("ListIssuers")
        .into_inner()
        .issuers
}
