//! Prometheus metrics: every family introspectd exposes (the gRPC server families named
//! and labelled exactly as go-grpc-prometheus does, validations, key fetches, key-set
//! freshness computed at scrape time, the introspection cache, watchers, connections,
//! TLS, Envoy ext_authz checks in `checks`), the rule that label values only ever come
//! from configuration or closed sets, and the `/metrics` + `/healthz` HTTP endpoint.
//!
//! Everything a hot path touches is created up front (per method, per tenant), so
//! recording is an atomic add on a handle that already exists; no request can create a
//! series.

mod checks;
mod collectors;
mod fleet;
mod validations;

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, OnceLock},
};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Metric, Registry as PromRegistry},
};
use prost::Message as _;
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;

use self::collectors::{
    CacheCollector, KeySetCollector, ReplayCollector, TokenCacheCollector, WatcherCount,
    WatchersCollector,
};
use self::validations::ValidationCounters;
use crate::{
    fleet::Fleet,
    introspect::Introspection,
    jwt::ErrorCode,
    oidc::FetchObserver,
    registry::{KeySetId, Registry, ValidateError, Validated},
};

/// A map whose keys come from configuration or descriptors, never from a request (a
/// request's path or tenant is only looked up), so a fast hasher is safe.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// `grpc_code` label values, indexed by the numeric gRPC status code. Spelled as Go's
/// `codes.Code.String()` spells them (hence "Canceled"), as go-grpc-prometheus does.
pub const GRPC_CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// Numeric gRPC code of CANCELLED.
pub const CODE_CANCELLED: i32 = 1;
/// Numeric gRPC code of UNKNOWN.
pub const CODE_UNKNOWN: i32 = 2;
/// Numeric gRPC code of INTERNAL.
pub const CODE_INTERNAL: i32 = 13;

/// Label value used for anything that is not a configured or known name.
pub const UNKNOWN_LABEL: &str = "unknown";
/// `tenant` label of a validation no tenant was identified for.
pub const NO_TENANT_LABEL: &str = "none";

/// Bucket bounds of `grpc_server_handling_seconds`: Prometheus' default buckets, which
/// go-grpc-prometheus uses too.
pub const HANDLING_SECONDS_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The shape of a gRPC method, as the `grpc_type` label names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CallKind {
    /// One request, one response.
    Unary,
    /// A request stream, one response.
    ClientStream,
    /// One request, a response stream.
    ServerStream,
    /// Streams both ways.
    BidiStream,
}

impl CallKind {
    /// The `grpc_type` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            CallKind::Unary => "unary",
            CallKind::ClientStream => "client_stream",
            CallKind::ServerStream => "server_stream",
            CallKind::BidiStream => "bidi_stream",
        }
    }

    fn of(client_streaming: bool, server_streaming: bool) -> Self {
        match (client_streaming, server_streaming) {
            (false, false) => CallKind::Unary,
            (true, false) => CallKind::ClientStream,
            (false, true) => CallKind::ServerStream,
            (true, true) => CallKind::BidiStream,
        }
    }
}

/// One method the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MethodInfo {
    /// Fully qualified service name, e.g. `introspect.v1.TokenService`.
    pub service: Arc<str>,
    /// Method name, e.g. `Validate`.
    pub method: Arc<str>,
    /// Unary or streaming.
    pub kind: CallKind,
}

/// The known gRPC methods by request path (`/package.Service/Method`), read from the
/// services' encoded file descriptor sets so that nothing is listed by hand.
#[derive(Debug, Clone, Default)]
pub struct GrpcMethods {
    by_path: FastMap<String, MethodInfo>,
}

impl GrpcMethods {
    /// Every method of every service in `sets` (encoded `FileDescriptorSet`s).
    pub fn from_descriptor_sets(sets: &[&[u8]]) -> Result<Self, prost::DecodeError> {
        let mut by_path = FastMap::default();
        for bytes in sets {
            let set = prost_types::FileDescriptorSet::decode(*bytes)?;
            for file in &set.file {
                let package = file.package();
                for service in &file.service {
                    let full: Arc<str> = if package.is_empty() {
                        service.name().into()
                    } else {
                        format!("{package}.{}", service.name()).into()
                    };
                    for m in &service.method {
                        let info = MethodInfo {
                            service: full.clone(),
                            method: m.name().into(),
                            kind: CallKind::of(m.client_streaming(), m.server_streaming()),
                        };
                        by_path.insert(format!("/{full}/{}", m.name()), info);
                    }
                }
            }
        }
        Ok(Self { by_path })
    }

    /// The method at `path`, if it is one of ours.
    pub fn get(&self, path: &str) -> Option<&MethodInfo> {
        self.by_path.get(path)
    }

    /// Every known method.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MethodInfo)> {
        self.by_path.iter().map(|(p, m)| (p.as_str(), m))
    }

    /// Number of known methods.
    pub fn len(&self) -> usize {
        self.by_path.len()
    }

    /// True when no method is known.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: Arc<str>,
    grpc_method: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: Arc<str>,
    grpc_method: Arc<str>,
    grpc_code: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ValidationLabels {
    tenant: Arc<str>,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeyFetchLabels {
    tenant: Arc<str>,
    policy: Arc<str>,
    outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeySetLabels {
    tenant: Arc<str>,
    policy: Arc<str>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

/// Why the server closed (or refused) a connection, as `introspectd_grpc_connections_closed`
/// counts it.
pub const CONNECTION_CLOSE_REASONS: [&str; 3] = ["max_connections", "evicted", "handshake_timeout"];

/// The handles of one method's series.
#[derive(Debug)]
struct MethodMetrics {
    started: Counter,
    handled: [Counter; 17],
    seconds: Histogram,
}

/// All metrics of one process. Cheap to share behind an `Arc`.
pub struct Metrics {
    registry: PromRegistry,
    methods: FastMap<String, Arc<MethodMetrics>>,
    unknown_method: Arc<MethodMetrics>,
    tenants: FastMap<String, Arc<str>>,
    validations: ValidationCounters,
    checks: Family<checks::CheckLabels, Counter>,
    key_fetches: Family<KeyFetchLabels, Counter>,
    introspection: Arc<OnceLock<Introspection>>,
    watchers: Gauge,
    watcher_source: Arc<OnceLock<WatcherCount>>,
    connections: Gauge,
    connections_accepted: Counter,
    tls_handshake_failures: Counter,
    tls_reloads: Family<OutcomeLabels, Counter>,
    fleet: Arc<OnceLock<Fleet>>,
    connections_closed: Family<ReasonLabels, Counter>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("methods", &self.methods.len())
            .field("tenants", &self.tenants.len())
            .finish_non_exhaustive()
    }
}

/// Registers `metric` under `name` and returns it (its clones share the values).
fn registered<M: Metric + Clone>(prom: &mut PromRegistry, name: &str, help: &str, metric: M) -> M {
    prom.register(name, help, metric.clone());
    metric
}

/// The go-grpc-prometheus families, with the series of every known method (and one for
/// unknown methods) created up front.
fn grpc_families(
    prom: &mut PromRegistry,
    methods: &GrpcMethods,
) -> (FastMap<String, Arc<MethodMetrics>>, Arc<MethodMetrics>) {
    let started = registered(
        prom,
        "grpc_server_started",
        "Total number of RPCs started on the server",
        Family::<MethodLabels, Counter>::default(),
    );
    let handled = registered(
        prom,
        "grpc_server_handled",
        "Total number of RPCs completed on the server, regardless of success or failure",
        Family::<HandledLabels, Counter>::default(),
    );
    let seconds = registered(
        prom,
        "grpc_server_handling_seconds",
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
        Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(|| {
            Histogram::new(HANDLING_SECONDS_BUCKETS)
        }),
    );
    let method_metrics = |kind: CallKind, service: Arc<str>, method: Arc<str>| {
        let labels = MethodLabels {
            grpc_type: kind.as_str(),
            grpc_service: service.clone(),
            grpc_method: method.clone(),
        };
        let handled = GRPC_CODE_NAMES.map(|code| {
            handled.get_or_create_owned(&HandledLabels {
                grpc_type: kind.as_str(),
                grpc_service: service.clone(),
                grpc_method: method.clone(),
                grpc_code: code,
            })
        });
        Arc::new(MethodMetrics {
            started: started.get_or_create_owned(&labels),
            handled,
            seconds: seconds.get_or_create_owned(&labels),
        })
    };
    let by_path = methods
        .iter()
        .map(|(path, m)| {
            (
                path.to_string(),
                method_metrics(m.kind, m.service.clone(), m.method.clone()),
            )
        })
        .collect();
    let unknown: Arc<str> = UNKNOWN_LABEL.into();
    let unknown_method = method_metrics(CallKind::Unary, unknown.clone(), unknown);
    (by_path, unknown_method)
}

/// `introspectd_key_fetches`, both outcomes of every fetched key set at zero.
fn key_fetch_family(
    prom: &mut PromRegistry,
    registry: &Registry,
) -> Family<KeyFetchLabels, Counter> {
    let key_fetches = registered(
        prom,
        "introspectd_key_fetches",
        "Metadata and JWKS fetches by key set and outcome (success or failure)",
        Family::<KeyFetchLabels, Counter>::default(),
    );
    for state in registry.key_sets() {
        if state.refresh.is_refreshable() {
            for outcome in ["success", "failure"] {
                let (tenant, policy) = key_set_labels(&state.id);
                key_fetches.get_or_create_owned(&KeyFetchLabels {
                    tenant,
                    policy,
                    outcome,
                });
            }
        }
    }
    key_fetches
}

/// The gRPC listener's connection and TLS families.
struct ListenerMetrics {
    connections: Gauge,
    accepted: Counter,
    tls_handshake_failures: Counter,
    tls_reloads: Family<OutcomeLabels, Counter>,
    closed: Family<ReasonLabels, Counter>,
}

impl ListenerMetrics {
    fn register(prom: &mut PromRegistry) -> Self {
        let connections = registered(
            prom,
            "introspectd_grpc_connections",
            "Open connections on the gRPC listener (including those still in their TLS handshake)",
            Gauge::default(),
        );
        let connections_accepted = registered(
            prom,
            "introspectd_grpc_connections_accepted",
            "Connections accepted on the gRPC listener",
            Counter::default(),
        );
        let tls_handshake_failures = registered(
            prom,
            "introspectd_tls_handshake_failures",
            "TLS handshakes on the gRPC listener that failed or timed out (e.g. a client without an acceptable certificate under mutual TLS)",
            Counter::default(),
        );
        let tls_reloads = registered(
            prom,
            "introspectd_tls_reloads",
            "Reloads of changed TLS files by outcome; on failure the previous certificate stays in use",
            Family::<OutcomeLabels, Counter>::default(),
        );
        for outcome in ["success", "failure"] {
            tls_reloads.get_or_create_owned(&OutcomeLabels { outcome });
        }
        let closed = registered(
            prom,
            "introspectd_grpc_connections_closed",
            "Connections the gRPC listener refused or closed to protect other callers: max_connections (refused at the cap, every place held by an established connection), evicted (closed before its first request to make room for a new one), handshake_timeout (no request within server.handshake_timeout)",
            Family::<ReasonLabels, Counter>::default(),
        );
        for reason in CONNECTION_CLOSE_REASONS {
            closed.get_or_create_owned(&ReasonLabels { reason });
        }
        Self {
            connections,
            accepted: connections_accepted,
            tls_handshake_failures,
            tls_reloads,
            closed,
        }
    }
}

impl Metrics {
    /// Registers every family, with series for every known method and every configured
    /// tenant and key set created (at zero) up front.
    pub fn new(registry: &Registry, methods: &GrpcMethods) -> Self {
        let mut prom = PromRegistry::default();
        let (methods, unknown_method) = grpc_families(&mut prom, methods);
        let tenants: FastMap<String, Arc<str>> = registry
            .tenants()
            .iter()
            .map(|t| (t.id().to_string(), Arc::from(t.id())))
            .collect();
        let validations = ValidationCounters::register(&mut prom, registry);
        let checks = checks::register(&mut prom);
        let key_fetches = key_fetch_family(&mut prom, registry);

        let introspection = Arc::new(OnceLock::new());
        prom.register_collector(Box::new(CacheCollector {
            introspection: introspection.clone(),
        }));
        let watchers = Gauge::default();
        let watcher_source: Arc<OnceLock<WatcherCount>> = Arc::new(OnceLock::new());
        prom.register_collector(Box::new(WatchersCollector {
            counted: watchers.clone(),
            observed: watcher_source.clone(),
        }));
        let listener = ListenerMetrics::register(&mut prom);
        prom.register_collector(Box::new(KeySetCollector {
            registry: registry.clone(),
        }));
        let fleet = Arc::new(OnceLock::new());
        prom.register_collector(Box::new(fleet::FleetCollector::new(fleet.clone())));
        prom.register_collector(Box::new(TokenCacheCollector {
            registry: registry.clone(),
        }));
        prom.register_collector(Box::new(ReplayCollector {
            registry: registry.clone(),
        }));

        Self {
            registry: prom,
            methods,
            unknown_method,
            tenants,
            validations,
            checks,
            key_fetches,
            introspection,
            watchers,
            watcher_source,
            connections: listener.connections,
            connections_accepted: listener.accepted,
            tls_handshake_failures: listener.tls_handshake_failures,
            tls_reloads: listener.tls_reloads,
            fleet,
            connections_closed: listener.closed,
        }
    }

    /// The configured tenant's own label value, or `unknown` for anything else.
    fn tenant_label(&self, tenant: &str) -> Arc<str> {
        self.tenants
            .get(tenant)
            .cloned()
            .unwrap_or_else(|| Arc::from(UNKNOWN_LABEL))
    }

    /// Counts a gRPC call starting at `path`; the returned guard records its end (and
    /// records CANCELLED if dropped before an outcome was recorded).
    pub fn start_call(&self, path: &str) -> GrpcCall {
        let method = self
            .methods
            .get(path)
            .unwrap_or(&self.unknown_method)
            .clone();
        method.started.inc();
        GrpcCall {
            method,
            start: Instant::now(),
            done: false,
        }
    }

    /// Counts one token validation: `tenant` as routed (`None`: not routed to any),
    /// `error` the rejection code (`None`: valid).
    pub fn record_validation(&self, tenant: Option<&str>, error: Option<ErrorCode>) {
        self.validations.record(tenant, error);
    }

    /// Counts one validation of a configured tenant, by its position in the
    /// configuration ([`crate::registry::Tenant::index`]): one atomic add.
    pub fn record_validation_at(&self, tenant: usize, error: Option<ErrorCode>) {
        self.validations.record_at(tenant, error);
    }

    /// Counts one Validate outcome by its tenant and result; a bad request (no token was
    /// judged) is not a validation.
    pub fn record_validate_outcome(&self, outcome: &Result<Validated, ValidateError>) {
        match outcome {
            Ok(v) => self.record_validation_at(v.tenant.index, None),
            Err(e @ ValidateError::Rejected { tenant, .. }) => {
                self.record_validation(tenant.as_deref(), e.code())
            }
            Err(ValidateError::Request(_)) => {}
        }
    }

    /// Counts one metadata/JWKS fetch of a key set.
    pub fn record_key_fetch(&self, id: &KeySetId, success: bool) {
        let (tenant, policy) = key_set_labels(id);
        let tenant = self.tenant_label(&tenant);
        let outcome = if success { "success" } else { "failure" };
        self.key_fetches
            .get_or_create(&KeyFetchLabels {
                tenant,
                policy,
                outcome,
            })
            .inc();
    }

    /// The hook for `oidc::spawn_refreshers`, counting every fetch.
    pub fn fetch_observer(self: &Arc<Self>) -> FetchObserver {
        let metrics = self.clone();
        Arc::new(move |state, outcome| metrics.record_key_fetch(&state.id, outcome.is_ok()))
    }

    /// Reports the introspection answer caches (their own hit, miss and eviction
    /// counters, read at scrape time). The first call wins; later ones are ignored.
    pub fn observe_introspection(&self, introspection: Introspection) {
        let _ = self.introspection.set(introspection);
    }

    /// Reports the fleet's shared state (its own counters, read at scrape time). The
    /// first call wins.
    pub fn observe_fleet(&self, fleet: Fleet) {
        let _ = self.fleet.set(fleet);
    }

    /// Reports open WatchKeys streams from the handler's own count, read at scrape time
    /// (e.g. `move || watchers.active()`). The first call wins. Use this or the
    /// counting methods below, not both: `introspectd_watchers` is their sum.
    pub fn observe_watchers(&self, count: impl Fn() -> usize + Send + Sync + 'static) {
        let _ = self.watcher_source.set(Box::new(count));
    }

    /// One more open WatchKeys stream.
    pub fn watchers_inc(&self) {
        self.watchers.inc();
    }

    /// One fewer open WatchKeys stream.
    pub fn watchers_dec(&self) {
        self.watchers.dec();
    }

    /// Counts an open WatchKeys stream for as long as the guard lives (keep it in the
    /// stream, so that however the stream ends, the gauge goes down).
    pub fn watcher(&self) -> GaugeGuard {
        GaugeGuard::new(self.watchers.clone())
    }

    /// Counts an accepted connection, open for as long as the guard lives.
    pub fn connection(&self) -> GaugeGuard {
        self.connections_accepted.inc();
        GaugeGuard::new(self.connections.clone())
    }

    /// Counts a connection refused or closed for `reason` (one of
    /// [`CONNECTION_CLOSE_REASONS`]; anything else is not counted).
    pub fn record_connection_closed(&self, reason: &'static str) {
        if CONNECTION_CLOSE_REASONS.contains(&reason) {
            self.connections_closed
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
    }

    /// Counts a failed or timed-out TLS handshake.
    pub fn record_tls_handshake_failure(&self) {
        self.tls_handshake_failures.inc();
    }

    /// Counts a reload of changed TLS files.
    pub fn record_tls_reload(&self, success: bool) {
        let outcome = if success { "success" } else { "failure" };
        self.tls_reloads
            .get_or_create(&OutcomeLabels { outcome })
            .inc();
    }

    /// The exposition, in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail, and our collector only fails if the writer does.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn key_set_labels(id: &KeySetId) -> (Arc<str>, Arc<str>) {
    (
        Arc::from(id.tenant.as_str()),
        Arc::from(id.policy.as_deref().unwrap_or("")),
    )
}

/// One gRPC call in flight; records `grpc_server_handled_total` and
/// `grpc_server_handling_seconds` exactly once.
#[derive(Debug)]
pub struct GrpcCall {
    method: Arc<MethodMetrics>,
    start: Instant,
    done: bool,
}

impl GrpcCall {
    /// Records the end of the call with numeric gRPC status `code` (out-of-range codes
    /// count as Unknown).
    pub fn finish(mut self, code: i32) {
        self.record(code);
    }

    fn record(&mut self, code: i32) {
        if self.done {
            return;
        }
        self.done = true;
        let idx = usize::try_from(code)
            .ok()
            .filter(|i| *i < GRPC_CODE_NAMES.len())
            .unwrap_or(CODE_UNKNOWN as usize);
        self.method.handled[idx].inc();
        self.method
            .seconds
            .observe(self.start.elapsed().as_secs_f64());
    }
}

impl Drop for GrpcCall {
    fn drop(&mut self) {
        // Dropped without an outcome: the client went away, the connection was closed,
        // or tonic's timeout fired (which answers CANCELLED).
        self.record(CODE_CANCELLED);
    }
}

/// Keeps a gauge one higher while it lives.
#[derive(Debug)]
pub struct GaugeGuard(Gauge);

impl GaugeGuard {
    fn new(g: Gauge) -> Self {
        g.inc();
        Self(g)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Content type of the exposition.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` (the exposition) and `GET /healthz` (200 "ok") on `listener`
/// until `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    use axum::{Router, http::header, routing::get};
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = metrics.clone();
                async move { ([(header::CONTENT_TYPE, CONTENT_TYPE)], metrics.encode()) }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    axum::serve(listener, app)
        .with_graceful_shutdown(cancel.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config;

    fn registry() -> Registry {
        let yaml = "tenants:\n  - id: demo\n    issuer: https://idp.example\n  - id: b2c\n    issuer: https://b2c.example/\n    b2c:\n      metadata_url: https://b2c.example/{policy}/meta\n      policies: [B2C_1_a]\n";
        let settings = config::load_str(yaml, &|_| None, &[]).expect("config");
        Registry::new(&settings).expect("registry")
    }

    fn methods() -> GrpcMethods {
        GrpcMethods::from_descriptor_sets(&[
            crate::grpc::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ])
        .expect("descriptors")
    }

    fn line<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
        text.lines().find(|l| l.starts_with(prefix))
    }

    #[test]
    fn methods_come_from_descriptors() {
        let m = methods();
        let v = m
            .get("/introspect.v1.TokenService/Validate")
            .expect("Validate");
        assert_eq!(
            (&*v.service, &*v.method, v.kind),
            ("introspect.v1.TokenService", "Validate", CallKind::Unary)
        );
        let w = m
            .get("/introspect.v1.TokenService/WatchKeys")
            .expect("WatchKeys");
        assert_eq!(w.kind, CallKind::ServerStream);
        assert_eq!(
            m.get("/grpc.health.v1.Health/Watch").expect("Watch").kind,
            CallKind::ServerStream
        );
        assert!(m.get("/nope/Nope").is_none());
    }

    #[test]
    fn calls_are_counted_with_go_code_names_and_unknown_paths_are_not_labels() {
        let metrics = Metrics::new(&registry(), &methods());
        metrics
            .start_call("/introspect.v1.TokenService/Validate")
            .finish(0);
        metrics
            .start_call("/introspect.v1.TokenService/Validate")
            .finish(3);
        drop(metrics.start_call("/grpc.health.v1.Health/Watch"));
        metrics.start_call("/evil/<script>").finish(12);
        metrics
            .start_call("/introspect.v1.TokenService/Validate")
            .finish(99);
        let text = metrics.encode();
        let validate =
            r#"grpc_type="unary",grpc_service="introspect.v1.TokenService",grpc_method="Validate""#;
        assert!(
            text.contains(&format!("grpc_server_started_total{{{validate}}} 3")),
            "{text}"
        );
        assert!(text.contains(&format!(
            "grpc_server_handled_total{{{validate},grpc_code=\"OK\"}} 1"
        )));
        assert!(text.contains(&format!(
            "grpc_server_handled_total{{{validate},grpc_code=\"InvalidArgument\"}} 1"
        )));
        assert!(text.contains(&format!(
            "grpc_server_handled_total{{{validate},grpc_code=\"Unknown\"}} 1"
        )));
        assert!(text.contains(
            r#"grpc_server_handled_total{grpc_type="server_stream",grpc_service="grpc.health.v1.Health",grpc_method="Watch",grpc_code="Canceled"} 1"#
        ));
        assert!(text.contains(
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="unknown",grpc_method="unknown",grpc_code="Unimplemented"} 1"#
        ));
        assert!(text.contains(&format!(
            "grpc_server_handling_seconds_count{{{validate}}} 3"
        )));
        assert!(!text.contains("evil"));
    }

    #[test]
    fn validations_and_fetches_use_configured_names_only() {
        let reg = registry();
        let metrics = Arc::new(Metrics::new(&reg, &methods()));
        metrics.record_validation(Some("demo"), None);
        metrics.record_validation(Some("demo"), Some(ErrorCode::Expired));
        metrics.record_validation(None, Some(ErrorCode::Malformed));
        metrics.record_validation(Some("not-configured"), Some(ErrorCode::Expired));
        let b2c = KeySetId {
            tenant: "b2c".into(),
            policy: Some("B2C_1_a".into()),
        };
        metrics.record_key_fetch(&b2c, false);
        let text = metrics.encode();
        for want in [
            r#"introspectd_validations_total{tenant="demo",result="valid"} 1"#,
            r#"introspectd_validations_total{tenant="demo",result="expired"} 1"#,
            r#"introspectd_validations_total{tenant="none",result="malformed"} 1"#,
            r#"introspectd_validations_total{tenant="unknown",result="expired"} 1"#,
            r#"introspectd_key_fetches_total{tenant="b2c",policy="B2C_1_a",outcome="failure"} 1"#,
            r#"introspectd_key_fetches_total{tenant="demo",policy="",outcome="success"} 0"#,
            r#"introspectd_keys{tenant="demo",policy=""} 0"#,
            r#"introspectd_keys{tenant="b2c",policy="B2C_1_a"} 0"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(!text.contains("not-configured"));
        // Never fetched: no age series.
        assert!(
            line(&text, "introspectd_key_set_last_success_age_seconds{").is_none(),
            "{text}"
        );
    }

    #[test]
    fn replay_caches_are_reported_per_tenant() {
        let yaml = "tenants:\n  - id: r\n    issuer: https://r.example\n    replay_detection: true\n  - id: plain\n    issuer: https://p.example\n";
        let settings = config::load_str(yaml, &|_| None, &[]).expect("config");
        let reg = Registry::new(&settings).expect("registry");
        let metrics = Metrics::new(&reg, &methods());
        let cache = reg
            .tenant("r")
            .and_then(|t| t.replay_cache())
            .expect("cache");
        cache.check_and_record("https://r.example", "j1", 253_402_300_799.0);
        let text = metrics.encode();
        for want in [
            r#"introspectd_replay_cache_entries{tenant="r"} 1"#,
            r#"introspectd_replay_cache_capacity{tenant="r"} 1000000"#,
            r#"introspectd_replay_cache_refusals_total{tenant="r"} 0"#,
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        assert!(!text.contains(r#"replay_cache_entries{tenant="plain"}"#));
    }

    #[test]
    fn gauges_follow_their_guards() {
        let metrics = Arc::new(Metrics::new(&registry(), &methods()));
        let w = metrics.watcher();
        let c = metrics.connection();
        metrics.watchers_inc();
        let text = metrics.encode();
        assert!(text.contains("introspectd_watchers 2"), "{text}");
        assert!(text.contains("introspectd_grpc_connections 1"));
        drop((w, c));
        metrics.watchers_dec();
        let text = metrics.encode();
        assert!(text.contains("introspectd_watchers 0"));
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(3));
        let reported = open.clone();
        metrics.observe_watchers(move || reported.load(std::sync::atomic::Ordering::Relaxed));
        assert!(metrics.encode().contains("introspectd_watchers 3"));
        open.store(1, std::sync::atomic::Ordering::Relaxed);
        assert!(metrics.encode().contains("introspectd_watchers 1"));
        assert!(text.contains("introspectd_grpc_connections 0"));
        assert!(text.contains("introspectd_grpc_connections_accepted_total 1"));
    }
}
