//! The soak's identity provider over real HTTP: discovery, a JWKS whose keys the rotator
//! changes, and an RFC 7662 introspection endpoint, each failing now and then (503s, a
//! body that is not JSON, answers slower than the service's fetch timeout).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};

/// Requests seen and faults injected, per endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    pub discovery: AtomicU64,
    pub jwks: AtomicU64,
    pub introspect: AtomicU64,
    pub faults: AtomicU64,
}

struct Inner {
    issuer: String,
    /// The JWKS served now.
    published: Mutex<Vec<Value>>,
    counters: Counters,
    /// Percent of requests answered with a fault.
    fault_percent: u32,
}

/// A running provider (cheap to clone).
#[derive(Clone)]
pub struct Provider {
    inner: Arc<Inner>,
}

/// How a request is spoiled, if it is.
enum Fault {
    Unavailable,
    NotJson,
    Slow,
}

fn roll(percent: u32) -> Option<Fault> {
    let n = fastrand::u32(0..1000);
    if n >= percent * 10 {
        return None;
    }
    Some(match n % 3 {
        0 => Fault::Unavailable,
        1 => Fault::NotJson,
        _ => Fault::Slow,
    })
}

/// Answers `doc` as JSON, unless a fault is rolled (a slow answer is the document after
/// longer than the service waits).
async fn answer(inner: &Inner, doc: impl FnOnce() -> Value) -> Response {
    match roll(inner.fault_percent) {
        None => json_response(doc()),
        Some(fault) => {
            inner.counters.faults.fetch_add(1, Ordering::Relaxed);
            match fault {
                Fault::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response(),
                Fault::NotJson => (StatusCode::OK, "<html>oops</html>").into_response(),
                Fault::Slow => {
                    tokio::time::sleep(Duration::from_secs(3)).await;
                    json_response(doc())
                }
            }
        }
    }
}

fn json_response(v: Value) -> Response {
    ([("content-type", "application/json")], v.to_string()).into_response()
}

async fn discovery(State(inner): State<Arc<Inner>>) -> Response {
    inner.counters.discovery.fetch_add(1, Ordering::Relaxed);
    let doc = json!({
        "issuer": inner.issuer,
        "jwks_uri": format!("{}/jwks", inner.issuer),
        "introspection_endpoint": format!("{}/introspect", inner.issuer),
    });
    answer(&inner, || doc).await
}

async fn jwks(State(inner): State<Arc<Inner>>) -> Response {
    inner.counters.jwks.fetch_add(1, Ordering::Relaxed);
    let keys = inner.published.lock().expect("lock").clone();
    answer(&inner, || json!({ "keys": keys })).await
}

/// RFC 7662: `good-*` tokens are active, anything else inactive.
async fn introspect(State(inner): State<Arc<Inner>>, body: Bytes) -> Response {
    inner.counters.introspect.fetch_add(1, Ordering::Relaxed);
    let token = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let doc = if token.starts_with("good-") {
        json!({"active": true, "sub": "soak", "client_id": "soak", "exp": now + 3600})
    } else {
        json!({"active": false})
    };
    match roll(inner.fault_percent) {
        // The answer cache must never keep a fault: 503 only (a slow or non-JSON answer
        // is covered by the key endpoints).
        Some(_) => {
            inner.counters.faults.fetch_add(1, Ordering::Relaxed);
            (StatusCode::SERVICE_UNAVAILABLE, "busy").into_response()
        }
        None => json_response(doc),
    }
}

impl Provider {
    /// Starts on 127.0.0.1:0 publishing `keys`; `fault_percent` of requests fail.
    pub async fn start(keys: Vec<Value>, fault_percent: u32) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the provider");
        let addr = listener.local_addr().expect("addr");
        let inner = Arc::new(Inner {
            issuer: format!("http://{addr}"),
            published: Mutex::new(keys),
            counters: Counters::default(),
            fault_percent,
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/introspect", post(introspect))
            .with_state(inner.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { inner }
    }

    /// The issuer its discovery document declares.
    pub fn issuer(&self) -> &str {
        &self.inner.issuer
    }

    /// Replaces the published keys.
    pub fn publish(&self, keys: Vec<Value>) {
        *self.inner.published.lock().expect("lock") = keys;
    }

    /// The request and fault counters.
    pub fn counters(&self) -> &Counters {
        &self.inner.counters
    }
}
