//! The fleet suite: introspectd's shared state against real Redis servers that the tests
//! start themselves (standalone, TLS, and a 3-master Redis Cluster), and three replicas
//! of introspectd on loopback sharing them. Built only with `--features redis-tests`
//! (`.ci/run` installs redis-server and runs it); plain `cargo test` does not build it.

#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

#[path = "../common/mod.rs"]
mod common;
mod dpop;
mod replicas;
mod scenarios;
mod servers;
mod state;
