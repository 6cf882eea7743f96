//! Three replicas of introspectd on loopback (three `app::spawn` servers) sharing one
//! Redis, against a fake identity provider that counts requests: the numbers the issue
//! asks for, measured and printed (`--nocapture` shows them).

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, Instant},
};

use axum::http::Method;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::future::join_all;
use introspectd::{
    app::RunningServer,
    grpc::{
        ext_authz::{
            pb::envoy::service::auth::v3::{
                CheckResponse, authorization_client::AuthorizationClient,
                check_response::HttpResponse,
            },
            request::http_check_request,
        },
        pb::{
            self, admin_service_client::AdminServiceClient,
            token_service_client::TokenServiceClient,
        },
    },
};
use serde_json::json;
use tonic::transport::Channel;

use crate::common::*;

/// Environment variable holding the introspection client secret in these tests.
pub const SECRET_ENV: &str = "FLEET_TEST_SECRET";
/// Environment variable holding the replicas' integrity key in these tests.
pub const INTEGRITY_ENV: &str = "FLEET_TEST_INTEGRITY";
/// Cooldown of kid-miss fetches in these tests.
pub const COOLDOWN: Duration = Duration::from_secs(1);
/// Lifetime of a cached active introspection answer in these tests.
pub const CACHE_TTL: Duration = Duration::from_secs(2);

/// Where the replicas share their state.
#[derive(Debug, Clone)]
pub enum Store {
    /// No `shared_state` (the control: each replica an island).
    None,
    /// One server.
    Single(String),
    /// A cluster's seed nodes.
    Cluster(Vec<String>),
}

/// The fake provider: two issuers (`/r` detects replay, `/p` does not), one signing
/// key, an introspection endpoint.
pub struct Provider {
    pub idp: FakeIdp,
    pub key: TestKey,
}

impl Provider {
    pub async fn start() -> Self {
        let idp = FakeIdp::start().await;
        let key = TestKey::rsa("k1", "RS256");
        for (tenant, jwks) in [("/r", "/r/jwks"), ("/p", "/p/jwks")] {
            idp.set_json(
                &format!("{tenant}/.well-known/openid-configuration"),
                idp.discovery(&idp.url(tenant), jwks),
            );
            idp.publish(jwks, &[&key]);
        }
        idp.set(
            Method::POST,
            "/p/introspect",
            Behaviour::Dynamic(std::sync::Arc::new(|_| {
                let exp = now() + 3600;
                (
                    200,
                    vec![("content-type".into(), "application/json".into())],
                    json!({"active": true, "sub": "opaque-user", "iss": "https://as.example", "jti": "opaque-jti", "exp": exp})
                        .to_string()
                        .into_bytes(),
                )
            })),
        );
        Self { idp, key }
    }

    pub fn issuer(&self, tenant: &str) -> String {
        self.idp.url(tenant)
    }

    /// A token of `tenant` (`/r` or `/p`) signed with `key`.
    pub fn token(&self, key: &TestKey, tenant: &str) -> String {
        key.token(&claims(&self.issuer(tenant), "api://demo"))
    }

    fn tenants_yaml(&self) -> String {
        let tenant = |id: &str, path: &str, extra: &str| {
            format!(
                "  - id: {id}\n    issuer: \"{iss}\"\n    metadata_url: \"{iss}/.well-known/openid-configuration\"\n    audiences: [\"api://demo\"]\n    require_https: false\n    unknown_kid_cooldown: {cd}ms\n    fetch_timeout: 2s\n{extra}",
                iss = self.issuer(path),
                cd = COOLDOWN.as_millis(),
            )
        };
        format!(
            "tenants:\n{}{}",
            tenant("replay", "/r", "    replay_detection: true\n"),
            tenant(
                "plain",
                "/p",
                &format!(
                    "    introspection:\n      endpoint: \"{}\"\n      client_id: fleet\n      client_secret_env: {SECRET_ENV}\n      cache_ttl: {}ms\n",
                    self.idp.url("/p/introspect"),
                    CACHE_TTL.as_millis()
                ),
            )
        )
    }
}

/// One replica: its server and clients.
pub struct Replica {
    pub server: RunningServer,
    pub tokens: TokenServiceClient<Channel>,
    pub admin: AdminServiceClient<Channel>,
    pub envoy: AuthorizationClient<Channel>,
}

impl Replica {
    pub fn metrics_addr(&self) -> SocketAddr {
        self.server.metrics_addr.expect("metrics listener")
    }

    pub async fn validate(&self, token: &str) -> pb::ValidateResponse {
        self.tokens
            .clone()
            .validate(pb::ValidateRequest {
                token: token.into(),
                ..Default::default()
            })
            .await
            .expect("Validate RPC ok")
            .into_inner()
    }

    pub async fn introspect(&self, token: &str) -> pb::IntrospectResponse {
        self.tokens
            .clone()
            .introspect(pb::IntrospectRequest {
                token: token.into(),
                tenant: "plain".into(),
                ..Default::default()
            })
            .await
            .expect("Introspect RPC ok")
            .into_inner()
    }

    pub async fn introspect_jwt(&self, token: &str) -> pb::IntrospectResponse {
        self.tokens
            .clone()
            .introspect(pb::IntrospectRequest {
                token: token.into(),
                ..Default::default()
            })
            .await
            .expect("Introspect RPC ok")
            .into_inner()
    }

    /// Envoy's ext_authz Check of a request carrying `token`: (HTTP status the client
    /// would get, `error_description` of a denial).
    pub async fn check(&self, token: &str) -> (u32, String) {
        let bearer = format!("Bearer {token}");
        let r: CheckResponse = self
            .envoy
            .clone()
            .check(http_check_request(&[("authorization", &bearer)], &[]))
            .await
            .expect("Check RPC ok")
            .into_inner();
        match r.http_response {
            Some(HttpResponse::OkResponse(_)) => (200, String::new()),
            Some(HttpResponse::DeniedResponse(d)) => {
                let body: serde_json::Value =
                    serde_json::from_str(&d.body).expect("denial body is JSON");
                (
                    d.status.map_or(0, |s| s.code as u32),
                    body["error_description"].as_str().unwrap_or("").to_string(),
                )
            }
            other => panic!("no HTTP response: {other:?}"),
        }
    }

    /// `AdminService.Revoke` with `rule` and the default expiry.
    pub async fn revoke(&self, rule: pb::revoke_request::Rule) -> pb::RevokeResponse {
        self.admin
            .clone()
            .revoke(pb::RevokeRequest {
                rule: Some(rule),
                expires_at: None,
            })
            .await
            .expect("Revoke")
            .into_inner()
    }

    pub async fn metrics(&self) -> String {
        scrape_metrics(self.metrics_addr()).await
    }
}

/// Settings of replica `i`.
pub fn replica_settings(
    provider: &Provider,
    store: &Store,
    i: usize,
    extra_shared: &str,
) -> introspectd::config::Settings {
    let shared = match store {
        Store::None => String::new(),
        Store::Single(url) => format!(
            "shared_state:\n  redis_url: \"{url}\"\n  replica_name: r{i}\n  op_timeout: 2s\n{extra_shared}"
        ),
        Store::Cluster(nodes) => format!(
            "shared_state:\n  cluster_nodes: [{}]\n  replica_name: r{i}\n  op_timeout: 2s\n{extra_shared}",
            nodes
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n  admin: true\next_authz:\n  enabled: true\n{shared}{}",
        provider.tenants_yaml()
    );
    let integrity = "an integrity key every replica holds, and Redis never sees";
    let mut s = settings_with_env(
        &yaml,
        &[(SECRET_ENV, "fleet-secret"), (INTEGRITY_ENV, integrity)],
    );
    s.server.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    s
}

/// Starts `n` replicas at once (so their start-up fetches contend).
pub async fn start_replicas(
    provider: &Provider,
    store: &Store,
    n: usize,
    extra_shared: &str,
) -> Vec<Replica> {
    let servers = join_all(
        (1..=n)
            .map(|i| introspectd::app::spawn(replica_settings(provider, store, i, extra_shared))),
    )
    .await;
    let mut replicas = Vec::new();
    for s in servers {
        let server = s.expect("replica starts");
        let channel = connect(server.addr).await;
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let serving = async {
            loop {
                let r = h
                    .check(tonic_health::pb::HealthCheckRequest {
                        service: "introspect.v1.TokenService".into(),
                    })
                    .await;
                if r.is_ok_and(|r| r.into_inner().status == 1) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(15), serving)
            .await
            .expect("replica turns SERVING");
        replicas.push(Replica {
            server,
            tokens: TokenServiceClient::new(channel.clone()),
            admin: AdminServiceClient::new(channel.clone()),
            envoy: AuthorizationClient::new(channel),
        });
    }
    replicas
}

pub async fn stop(replicas: Vec<Replica>) {
    for r in replicas {
        let _ = r.server.shutdown().await;
    }
}

/// The health of `service` on a replica.
pub async fn health_of(r: &Replica, service: &str) -> i32 {
    let channel = connect(r.server.addr).await;
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    h.check(tonic_health::pb::HealthCheckRequest {
        service: service.into(),
    })
    .await
    .map(|r| r.into_inner().status)
    .unwrap_or(-1)
}

/// A token whose kid no provider has (the signature is never reached).
pub fn forged_kid_token(provider: &Provider, n: u64) -> String {
    let header = URL_SAFE_NO_PAD
        .encode(json!({"alg": "RS256", "kid": format!("forged-{n}"), "typ": "JWT"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims(&provider.issuer("/p"), "api://demo").to_string());
    let sig = URL_SAFE_NO_PAD.encode([7u8; 256]);
    format!("{header}.{payload}.{sig}")
}

/// Validates `token` on every replica concurrently; the codes in replica order.
pub async fn race(replicas: &[Replica], token: &str) -> Vec<pb::ErrorCode> {
    join_all(replicas.iter().map(|r| r.validate(token)))
        .await
        .iter()
        .map(code)
        .collect()
}

/// The replay numbers: `tokens` tokens validated on replica 1, each replayed on
/// replicas 2 and 3; then `raced` tokens sent to all three at once. Returns (replays
/// accepted, raced tokens accepted more than once).
pub async fn replay_numbers(
    p: &Provider,
    replicas: &[Replica],
    tokens: usize,
    raced: usize,
) -> (usize, usize) {
    let mut accepted_replays = 0;
    for chunk in (0..tokens).collect::<Vec<_>>().chunks(50) {
        let batch: Vec<String> = chunk.iter().map(|_| p.token(&p.key, "/r")).collect();
        let first = join_all(batch.iter().map(|t| replicas[0].validate(t))).await;
        assert!(
            first.iter().all(|r| r.valid),
            "first use accepted: {:?}",
            first.iter().find(|r| !r.valid)
        );
        let replays = join_all(
            batch
                .iter()
                .flat_map(|t| [replicas[1].validate(t), replicas[2].validate(t)]),
        )
        .await;
        for r in &replays {
            if r.valid {
                accepted_replays += 1;
            } else {
                assert_eq!(code(r), pb::ErrorCode::Replayed, "{:?}", r.error);
            }
        }
    }
    let mut twice = 0;
    for _ in 0..raced {
        let t = p.token(&p.key, "/r");
        let codes = race(replicas, &t).await;
        if codes
            .iter()
            .filter(|c| **c == pb::ErrorCode::Unspecified)
            .count()
            != 1
        {
            twice += 1;
        }
    }
    (accepted_replays, twice)
}

/// Sample of a metric, 0 when absent.
pub fn sample(text: &str, series: &str) -> f64 {
    metric_sample(text, series).unwrap_or(0.0)
}

/// Sum over replicas of a metric sample.
pub async fn total(replicas: &[Replica], series: &str) -> f64 {
    let mut sum = 0.0;
    for r in replicas {
        sum += sample(&r.metrics().await, series);
    }
    sum
}

/// Waits until `f` holds on every replica's metrics text, at most `limit`.
pub async fn wait_metrics(replicas: &[Replica], limit: Duration, f: impl Fn(&str) -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let mut all = true;
        for r in replicas {
            if !f(&r.metrics().await) {
                all = false;
            }
        }
        if all {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Per-replica issuers as the admin API reports them: key set -> (fetched_by, generation).
pub async fn issuers(r: &Replica) -> HashMap<String, (String, u64, String)> {
    r.admin
        .clone()
        .list_issuers(pb::ListIssuersRequest::default())
        .await
        .expect("ListIssuers")
        .into_inner()
        .issuers
        .into_iter()
        .map(|i| {
            (
                i.tenant.clone(),
                (i.fetched_by, i.shared_generation, i.replica),
            )
        })
        .collect()
}
