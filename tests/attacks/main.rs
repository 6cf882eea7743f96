//! One hostile caller cannot hurt anyone else: each module attacks the real server over
//! loopback the way a client with network access to the gRPC port would, and checks that
//! another client's Validate still answers correctly within one second.
//!
//! - [`admin`]: AdminService exposure, RefreshIssuer amplification, leaked error chains.
//! - [`http2`]: header-only streams, provoked resets, silent connections, connection caps.
//! - [`request_bounds`]: unbounded request lists and the work and messages they cause.
//! - [`watchers`]: one client taking every WatchKeys slot.
//! - [`introspect`]: amplification of the introspection provider's token endpoint.
//! - [`ext_authz`]: Envoy's Authorization service under the same limits: header-only
//!   Check streams, unbounded route lists in `context_extensions`.

// Tests and their tools: a failed assumption is a failed run, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../common/mod.rs"]
mod common;

mod admin;
mod ext_authz;
mod http2;
mod introspect;
mod net;
mod request_bounds;
mod watchers;

use std::{net::SocketAddr, time::Duration};

use common::*;
use introspectd::grpc::pb::{self, token_service_client::TokenServiceClient};

pub(crate) const SERVING: i32 = 1;
pub(crate) const TOKEN_SERVICE: &str = "introspect.v1.TokenService";
/// What "still answers" means for the victim.
pub(crate) const VICTIM_DEADLINE: Duration = Duration::from_secs(1);

/// A provider with one RSA key and a server whose `server:` section is `server_yaml`
/// (lines indented by two spaces) and whose one tenant `demo` gets `tenant_extra`.
pub(crate) async fn serve(server_yaml: &str, tenant_extra: &str) -> (FakeIdp, TestKey, Harness) {
    let idp = FakeIdp::start().await;
    let key = TestKey::rsa("k1", "RS256");
    idp.serve_oidc(&[&key]);
    let yaml = format!(
        "server:\n  listen: \"127.0.0.1:0\"\n{server_yaml}{}",
        oidc_tenant(&idp, tenant_extra)
    );
    let mut s = settings(&yaml);
    s.server.metrics_listen = Some("127.0.0.1:0".parse().expect("addr"));
    let h = start(s).await;
    h.wait_health(TOKEN_SERVICE, SERVING).await;
    (idp, key, h)
}

/// `introspectd_grpc_connections_closed_total{reason}` of a server from [`serve`].
pub(crate) async fn connections_closed(h: &Harness, reason: &str) -> f64 {
    let text = scrape_metrics(h.server.metrics_addr.expect("metrics")).await;
    metric(
        &text,
        &format!("introspectd_grpc_connections_closed_total{{reason=\"{reason}\"}}"),
    )
}

/// Another client, on its own new connection, validates a good token: it must answer
/// `valid` within [`VICTIM_DEADLINE`], connection set-up included.
pub(crate) async fn victim_validates(addr: SocketAddr, key: &TestKey, issuer: &str) {
    let token = key.token(&claims(issuer, "api://demo"));
    let call = async move {
        let channel = net::own_channel(addr).await;
        TokenServiceClient::new(channel)
            .validate(pb::ValidateRequest {
                token,
                ..Default::default()
            })
            .await
    };
    let answer = tokio::time::timeout(VICTIM_DEADLINE, call)
        .await
        .expect("the other client is answered within 1 s")
        .expect("the other client's Validate is not refused");
    assert!(
        answer.get_ref().valid,
        "the other client's token is valid: {:?}",
        answer.get_ref().error
    );
}
