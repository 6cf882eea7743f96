//! introspectd: a gRPC token-introspection service. Services in any language send it a
//! bearer token; it answers whether the token is valid, for whom, with which claims. It
//! trusts many issuers at once, keeps their keys fresh without failing a valid token
//! during a rotation, and streams key changes to subscribers.
//!
//! # Layout
//! - [`config`]: typed configuration, one file per section (`server.rs`, `admin.rs` for
//!   where AdminService is served and who may call it, `tenant.rs`, `policy.rs` for the
//!   keys `defaults:` shares with tenants, `key_source.rs`, `introspection.rs`,
//!   `ext_authz.rs`, `token_cache.rs`, `sender_constraint.rs`), `DEFAULT_*` constants,
//!   `env.rs` overrides, validation errors naming the key. Its module docs say how to add
//!   a section or a key.
//! - [`jwt`]: compact JWS framing, strict JSON parsed in one pass into the wire form of
//!   `google.protobuf.Struct` (`compact.rs`), claim checks, the sender-constraint rules
//!   ([`jwt::dpop`]: DPoP proofs, `htu` normalisation, nonces, the `cnf` binding
//!   decision) and the `WWW-Authenticate` challenges (`challenge.rs`; no keys, no
//!   network).
//! - [`keys`]: JWK ingestion and hygiene (`jwk.rs`, `KeyError`), verifying keys,
//!   `KeySet` snapshots.
//! - [`events`]: key-rotation events and their bus.
//! - [`shared`]: what a fleet of replicas may share (replay store, introspection answer
//!   store, fetch coordination, revocation rules) as small traits, and the replica's
//!   view of their health; no Redis client.
//! - [`registry`]: tenants, routing, per-key-set state, the Validate pipeline (with the
//!   revocation and replay checks), the verified-token cache and its purges
//!   (`token_cache.rs`), each tenant's sender-constraint state (`sender.rs`: nonce key,
//!   proof replay store, local or the fleet's; `proof_keys.rs`: proof keys checked with
//!   the token key hygiene rules and remembered once they passed), what operators ask
//!   (`operator.rs`: key-set lookup, forced refresh with its diff), and revocation rules
//!   with `Revoke`.
//! - [`oidc`]: discovery and JWKS fetching, the refresh schedule and refresher loop
//!   (coordinated with the fleet when it shares state: `coordinated.rs`).
//! - [`introspect`]: RFC 7662 Introspect: local JWT answers, the upstream client for
//!   opaque tokens, the client-credentials token cache and the answer cache (the
//!   fleet's, with `shared_state`).
//! - [`upstream`]: the one upstream HTTP module (the only one that knows reqwest):
//!   clients with rustls, timeouts, the body cap and a redirect policy each, used by
//!   `oidc` and `introspect`.
//! - [`fleet`]: the `shared` traits on Redis (standalone or cluster): connection, key
//!   layout, scripts, integrity tags, pub/sub, the monitor; the only module that knows
//!   the Redis client, built by `app` only with `shared_state`.
//! - [`grpc`]: the TokenService adapter (with the WatchKeys stream and its per-caller
//!   caps), the operator AdminService adapter (with `admin_auth`; `Revoke`), Envoy's
//!   external authorization service (`ext_authz/`, over the vendored Envoy protos; DPoP
//!   proofs, request target and peer certificate read from the CheckRequest), the
//!   sender-constraint fields of a request read once (`presentation.rs`), `to_proto`
//!   conversions, the Validate reply encoded from the core's values (`reply.rs`), request
//!   bounds, the one error-to-Status mapping, and the tower layers
//!   (`layers.rs`: metrics and the concurrency limit taken after the request message;
//!   `deadline.rs`: the call deadline).
//! - [`app`]: wiring: registry, background tasks (one tracker, one cancel token),
//!   services, side listeners, serve, the one shutdown sequence.
//! - [`dev`]: the `--dev` issuer and its signing key.
//! - [`cli`]: the command line (`serve`, `check-config`, `token`, `validate`, `watch`,
//!   `issuers`) and the JSON it prints (`json.rs`).
//! - [`telemetry`]: the tracing subscriber.
//! - [`metrics`]: Prometheus families, bounded labels, scrape-time collectors, the
//!   per-tenant validation counters created at start-up (`validations.rs`), the ext_authz
//!   checks (`checks.rs`), the `/metrics` endpoint.
//! - [`transport`]: every gRPC listener's connections, served with hyper's HTTP/2 server:
//!   the connection cap with eviction of idle connections (`admission.rs`), TLS with hot
//!   reload, the first-request deadline, HTTP/2 stream and reset limits, connection age
//!   and graceful shutdown (`conn.rs`), and replies written with their trailers in one
//!   syscall (`coalesce.rs`).
//!
//! Dependencies go one way: `jwt`, `keys`, `shared` <- `events` <- `registry` <- `oidc`,
//! `introspect` <- `fleet`, `grpc` <- `app` <- `cli`; `config` is read by all of them
//! and reads only `jwt` and `keys`.

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
pub mod upstream;

/// Installs the process-wide crypto providers (jsonwebtoken and rustls on aws-lc-rs).
/// Safe to call more than once. Serving calls it ([`app::run_with_listeners`]); code
/// that signs or verifies without a server (the `token` command, tests) gets the same
/// providers from the crates' features, which name aws-lc-rs alone.
pub fn install_crypto() {
    let _ = jsonwebtoken::crypto::CryptoProvider::install_default(
        &jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER,
    );
    // Err only means a provider is installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
