//! The parts of the run: the upstream (an in-process HTTP server answering 200), the
//! introspectd process (tenant keys from a JWKS file), and the Envoy process with one
//! listener per setup.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::Context as _;
use serde_json::{Value, json};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::{
    procs::{self, Proc},
    tokens::{AUDIENCE, ISSUER},
};

/// What sits in Envoy's filter chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Setup {
    /// No authentication: the cost of the proxy itself.
    None,
    /// `envoy.filters.http.jwt_authn`, as configured by default (no JWT cache).
    JwtAuthn,
    /// `jwt_authn` with its JWT cache as large as the token set.
    JwtAuthnCached,
    /// `envoy.filters.http.ext_authz` asking introspectd.
    ExtAuthz,
    /// The same, sending only the token header (`allowed_headers`).
    ExtAuthzTokenOnly,
}

impl Setup {
    /// Every setup, in the table's order.
    pub(crate) const ALL: [Setup; 5] = [
        Setup::None,
        Setup::JwtAuthn,
        Setup::JwtAuthnCached,
        Setup::ExtAuthz,
        Setup::ExtAuthzTokenOnly,
    ];

    /// Its label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Setup::None => "no auth",
            Setup::JwtAuthn => "jwt_authn",
            Setup::JwtAuthnCached => "jwt_authn (JWT cache)",
            Setup::ExtAuthz => "ext_authz introspectd",
            Setup::ExtAuthzTokenOnly => "ext_authz, token only",
        }
    }
}

/// Envoy's listener ports.
pub(crate) struct Ports {
    ports: [u16; Setup::ALL.len()],
}

impl Ports {
    /// The listener of `setup`.
    pub(crate) fn port(&self, setup: Setup) -> u16 {
        self.ports[setup as usize]
    }
}

/// The upstream: answers every request `200 ok`.
pub(crate) async fn spawn_upstream() -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback(|| async { "ok" });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// Starts the release introspectd with one tenant whose keys are `jwks`; returns it and
/// its gRPC address once the Authorization service is SERVING.
pub(crate) async fn start_introspectd(
    work: &Path,
    jwks: &Value,
) -> anyhow::Result<(Proc, SocketAddr)> {
    let jwks_file = work.join("jwks.json");
    std::fs::write(&jwks_file, jwks.to_string())?;
    let addr = procs::free_addr()?;
    let config = work.join("introspectd.yaml");
    std::fs::write(
        &config,
        format!(
            "server:\n  listen: \"{addr}\"\n  metrics_listen: \"\"\ntenants:\n  - id: bench\n    issuer: \"{ISSUER}\"\n    audiences: [\"{AUDIENCE}\"]\n    algorithms: [RS256, ES256]\n    jwks_file: \"{}\"\n",
            jwks_file.display()
        ),
    )?;
    let bin = Path::new(env!("CARGO_BIN_EXE_introspectd"));
    let config_arg = config.display().to_string();
    let mut proc = Proc::spawn(
        "introspectd",
        bin,
        &["serve", "--config", &config_arg],
        &work.join("introspectd.log"),
    )?;
    let url = format!("http://{addr}");
    proc.wait_ready(|| {
        let url = url.clone();
        async move {
            let Ok(channel) = tonic::transport::Endpoint::from_shared(url)
                .map(|e| e.connect_timeout(Duration::from_secs(1)))
            else {
                return false;
            };
            let Ok(channel) = channel.connect().await else {
                return false;
            };
            HealthClient::new(channel)
                .check(HealthCheckRequest {
                    service: "envoy.service.auth.v3.Authorization".into(),
                })
                .await
                .is_ok_and(|r| r.into_inner().status == 1)
        }
    })
    .await?;
    Ok((proc, addr))
}

fn cluster(name: &str, addr: SocketAddr, http2: bool) -> Value {
    let mut c = json!({
        "name": name, "type": "STATIC", "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}}}}]}]},
    });
    if http2 {
        c["typed_extension_protocol_options"] = json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}});
    }
    c
}

fn ext_authz(allowed_headers: Option<Value>) -> Value {
    let mut config = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
        "grpc_service": {"envoy_grpc": {"cluster_name": "introspectd"}, "timeout": "6s"},
        "transport_api_version": "V3", "failure_mode_allow": false});
    if let Some(a) = allowed_headers {
        config["allowed_headers"] = a;
    }
    json!({"name": "envoy.filters.http.ext_authz", "typed_config": config})
}

fn filter(setup: Setup, jwks: &Value, tokens: usize) -> Option<Value> {
    let jwt_authn = |cache: Option<usize>| {
        let mut provider = json!({
            "issuer": ISSUER, "audiences": [AUDIENCE],
            "local_jwks": {"inline_string": jwks.to_string()},
            "from_headers": [{"name": "authorization", "value_prefix": "Bearer "}],
        });
        if let Some(size) = cache {
            provider["jwt_cache_config"] = json!({"jwt_cache_size": size});
        }
        json!({"name": "envoy.filters.http.jwt_authn", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
            "providers": {"bench": provider},
            "rules": [{"match": {"prefix": "/"}, "requires": {"provider_name": "bench"}}]}})
    };
    match setup {
        Setup::None => None,
        Setup::JwtAuthn => Some(jwt_authn(None)),
        Setup::JwtAuthnCached => Some(jwt_authn(Some(tokens))),
        Setup::ExtAuthz => Some(ext_authz(None)),
        Setup::ExtAuthzTokenOnly => Some(ext_authz(Some(
            json!({"patterns": [{"exact": "authorization"}]}),
        ))),
    }
}

fn listener(setup: Setup, port: u16, jwks: &Value, tokens: usize) -> Value {
    let filters: Vec<Value> = filter(setup, jwks, tokens)
        .into_iter()
        .chain([
            json!({"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}),
        ])
        .collect();
    json!({"name": format!("l{port}"),
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": format!("l{port}"),
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"],
                "routes": [{"match": {"prefix": "/"}, "route": {"cluster": "upstream"}}]}]},
            "http_filters": filters}}]}]})
}

/// Starts Envoy (one worker) with a listener per setup; returns it once `/ready`.
pub(crate) async fn start_envoy(
    bin: &Path,
    work: &Path,
    jwks: &Value,
    upstream: SocketAddr,
    introspectd: SocketAddr,
    tokens: usize,
) -> anyhow::Result<(Proc, Ports)> {
    let admin = procs::free_port()?;
    let mut ports = [0u16; Setup::ALL.len()];
    for p in &mut ports {
        *p = procs::free_port()?;
    }
    let listeners: Vec<Value> = Setup::ALL
        .iter()
        .map(|s| listener(*s, ports[*s as usize], jwks, tokens))
        .collect();
    let config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {"listeners": listeners, "clusters": [
            cluster("upstream", upstream, false), cluster("introspectd", introspectd, true)]},
    });
    let path = work.join("envoy.yaml");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    let path_arg = path.display().to_string();
    let mut proc = Proc::spawn(
        "envoy",
        bin,
        &[
            "-c",
            &path_arg,
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "error",
        ],
        &work.join("envoy.log"),
    )
    .context("starting Envoy")?;
    let ready = format!("http://127.0.0.1:{admin}/ready");
    proc.wait_ready(|| {
        let ready = ready.clone();
        async move {
            match reqwest::get(&ready).await {
                Ok(r) => r.text().await.is_ok_and(|t| t.trim() == "LIVE"),
                Err(_) => false,
            }
        }
    })
    .await?;
    Ok((proc, Ports { ports }))
}
