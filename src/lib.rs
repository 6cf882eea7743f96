//! introspectd: a gRPC token-introspection service. Services in any language send it a
//! bearer token; it answers whether the token is valid, for whom, with which claims. It
//! trusts many issuers at once, keeps their keys fresh without failing a valid token
//! during a rotation, and streams key changes to subscribers.
//!
//! # Layout
//! - [`config`]: typed configuration, defaults, environment overrides, validation errors.
//! - [`jwt`]: compact JWS framing, strict JSON, claim checks (no keys, no network).
//! - [`keys`]: JWK ingestion and hygiene, verifying keys, `KeySet` snapshots.
//! - [`registry`]: tenants, routing, per-key-set state, the Validate pipeline, revocation
//!   rules and `Revoke`.
//! - [`oidc`]: discovery and JWKS fetching, the refresh schedule and refresher loop
//!   (coordinated with the fleet when it shares state).
//! - [`introspect`]: RFC 7662 Introspect: local JWT answers, the upstream client for
//!   opaque tokens, the client-credentials token cache and the answer cache.
//! - [`events`]: key-rotation events and their bus.
//! - [`shared`]: what a fleet of replicas may share (replay store, introspection answer
//!   store, fetch coordination, revocation rules) as small traits, and the replica's
//!   view of their health; no Redis client.
//! - [`fleet`]: those traits on Redis (standalone or cluster): connection, key layout,
//!   scripts, pub/sub, the monitor; built by `app` only with `shared_state`.
//! - [`grpc`]: the TokenService adapter (with the WatchKeys stream), the operator
//!   AdminService, and the one error-to-Status mapping.
//! - [`app`]: wiring: registry, refreshers, services, serve, shutdown.
//! - [`dev`]: the `--dev` issuer and its signing key.
//! - [`cli`]: the command line (`serve`, `check-config`, `token`, `validate`, `watch`,
//!   `issuers`).
//! - [`telemetry`]: the tracing subscriber.
//! - [`metrics`]: Prometheus families, bounded labels, the `/metrics` endpoint.
//! - [`transport`]: the gRPC listener's accept loop, TLS with hot reload, connection age.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod cli;
pub mod config;
pub mod dev;
pub mod events;
pub mod fleet;
pub mod grpc;
pub mod introspect;
pub mod jwt;
pub mod keys;
pub mod metrics;
pub mod oidc;
pub mod registry;
pub mod shared;
pub mod telemetry;
pub mod transport;

/// Installs the process-wide crypto providers (jsonwebtoken and rustls on aws-lc-rs).
/// Safe to call more than once.
pub fn install_crypto() {
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
    // Err only means a provider is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
