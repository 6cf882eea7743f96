//! Wiring only, in the order a server starts: [`run_with_listeners`] reads like a table
//! of contents. It loads TLS and builds the registry (a bad file or key is a
//! configuration error before anything starts), connects the fleet's shared state when
//! `shared_state` is configured (`start_fleet`), starts the background work (key
//! refreshers, readiness, the TLS reloader), mounts the gRPC services on one router
//! (`services`, with the metrics and overload layers; Envoy's Authorization service
//! when `ext_authz.enabled`), starts the side listeners
//! (`/metrics`, plaintext health) through `spawn_side_listener`, serves on a listener
//! it is given (so tests bind port 0), and shuts down in one sequence
//! (`serve_until_shutdown`): health NOT_SERVING, every background task and stream
//! cancelled, in-flight calls and tracked tasks drained within `server.shutdown_grace`.
//! Every gRPC listener (main, admin, health) is served by [`transport::serve`] with the
//! same connection limits.
//!
//! Every task is spawned on the one [`TaskTracker`] with its span, and stops when the
//! one [`CancellationToken`] fires; a new capability's background work joins them by
//! taking both.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::service::Routes;
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};
use tracing::{Instrument, info, info_span, warn};

use crate::{
    config::{AllowedTenantIds, ExtAuthzSettings, ServerSettings, Settings},
    fleet::Fleet,
    grpc::{
        AdminServiceImpl, Limits, TokenServiceImpl, TokenServiceRoutes,
        deadline::DeadlineLayer,
        ext_authz::{
            self, ExtAuthzService,
            pb::envoy::service::auth::v3::authorization_server::AuthorizationServer,
        },
        layers::{ConcurrencyLimitLayer, MetricsLayer},
        pb::{self, admin_service_server::AdminServiceServer},
        watch::WatcherLimits,
    },
    introspect::Introspection,
    metrics::{GrpcMethods, Metrics},
    oidc,
    registry::{Registry, token_cache},
    transport::{self, ConnectionLimits, GrpcService, ServeOptions, TlsConfig},
    upstream::{HttpClient, Redirects},
};

/// Name of the TokenService in grpc.health.v1.
pub const TOKEN_SERVICE_NAME: &str = "introspect.v1.TokenService";
/// Name under which grpc.health.v1 reports the fleet's shared state (with
/// `shared_state` only): SERVING while it is available, NOT_SERVING while the replica
/// falls back (`local`) or refuses (`fail_closed`). It never decides readiness.
pub const SHARED_STATE_SERVICE_NAME: &str = "introspect.v1.SharedState";
/// Longest start-up wait for the shared state before serving without it.
pub const SHARED_STATE_STARTUP_WAIT: Duration = Duration::from_secs(3);

/// Serves until `shutdown` resolves, then shuts down gracefully. Binds
/// `server.metrics_listen` and `server.health_listen` itself (when set).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let server = &settings.server;
    let listeners = Listeners {
        grpc: listener,
        metrics: bind_optional(server.metrics_listen, "server.metrics_listen").await?,
        health: bind_optional(server.health_listen, "server.health_listen").await?,
        admin: bind_optional(server.admin_listen, "server.admin_listen").await?,
    };
    run_with_listeners(settings, listeners, shutdown).await
}

async fn bind_optional(addr: Option<SocketAddr>, key: &str) -> anyhow::Result<Option<TcpListener>> {
    match addr {
        None => Ok(None),
        Some(addr) => Ok(Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding {key} {addr}"))?,
        )),
    }
}

/// The sockets a server serves on, bound before it starts (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// gRPC: every service (`server.listen`).
    pub grpc: TcpListener,
    /// Prometheus `/metrics` (`server.metrics_listen`).
    pub metrics: Option<TcpListener>,
    /// Plaintext grpc.health.v1 only (`server.health_listen`), for kubelet gRPC probes
    /// when the main listener uses TLS.
    pub health: Option<TcpListener>,
    /// AdminService and grpc.health.v1 alone (`server.admin_listen`).
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds every listener the settings ask for.
    pub async fn bind(settings: &Settings) -> anyhow::Result<Self> {
        let server = &settings.server;
        Ok(Self {
            grpc: TcpListener::bind(server.listen)
                .await
                .with_context(|| format!("binding server.listen {}", server.listen))?,
            metrics: bind_optional(server.metrics_listen, "server.metrics_listen").await?,
            health: bind_optional(server.health_listen, "server.health_listen").await?,
            admin: bind_optional(server.admin_listen, "server.admin_listen").await?,
        })
    }
}

/// Logs which Entra ID tenants each `{tenantid}` issuer accepts: every tenant (an
/// explicit `["*"]`) is a warning, since Entra's common keys sign any tenant's tokens.
fn log_entra_trust(settings: &Settings) {
    for t in &settings.tenants {
        match &t.allowed_tenant_ids {
            Some(AllowedTenantIds::Any) => warn!(
                tenant = %t.id,
                issuer = %t.issuer,
                "allowed_tenant_ids: [\"*\"]: tokens of every Entra ID tenant are accepted"
            ),
            Some(AllowedTenantIds::Only(ids)) => info!(
                tenant = %t.id,
                issuer = %t.issuer,
                allowed_tenant_ids = %ids.join(","),
                "tokens of the listed Entra ID tenants are accepted"
            ),
            None => {}
        }
    }
}

/// Like [`run`], with every listener bound by the caller.
pub async fn run_with_listeners(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::install_crypto();
    let server = &settings.server;
    // Settings changed after loading (`--listen`, tests) get the same check as a file.
    crate::config::check_admin_exposure(server)?;
    // A bad certificate or key is a configuration error (exit 2), found before anything starts.
    let tls = match &server.tls {
        Some(t) => Some(TlsConfig::load(t).context("loading server.tls")?),
        None => None,
    };
    let registry = Registry::new(&settings).context("building the tenant registry")?;
    log_entra_trust(&settings);
    let methods = Arc::new(grpc_methods()?);
    let metrics = Arc::new(Metrics::new(&registry, &methods));
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    // Whatever way this function returns, what it started stops.
    let _stop_on_return = cancel.clone().drop_guard();
    // Attached before anything reads the registry's shared state (refreshers,
    // introspectors); without `shared_state` no Redis code runs at all.
    let fleet = start_fleet(&settings, &registry, &metrics, &tasks, &cancel).await?;

    let http = HttpClient::new(Redirects::NoDowngrade).context("building the HTTP client")?;
    oidc::spawn_refreshers(
        &registry,
        &http,
        &tasks,
        &cancel,
        Some(metrics.fetch_observer()),
    );
    let gated = gated_services(&settings);
    let health = start_health(&registry, gated, &tasks, &cancel).await;
    if let Some(f) = &fleet {
        report_shared_state(f, &health, &tasks, &cancel);
    }
    spawn_token_cache_sweep(&registry, &tasks, &cancel);
    if let Some(t) = &tls {
        t.spawn_reloader(Some(metrics.clone()), &tasks, cancel.clone());
    }

    let options = serve_options(server, tls.clone());
    let ctx = Wiring {
        server,
        ext_authz: &settings.ext_authz,
        registry: &registry,
        metrics: &metrics,
        health: &health,
        tasks: &tasks,
        cancel: &cancel,
    };
    let main = services(&ctx, &methods)?;
    if let Some(l) = listeners.metrics {
        info!(addr = %local_addr(&l), "serving Prometheus metrics at /metrics");
        let serve = crate::metrics::serve(l, metrics.clone(), cancel.clone());
        spawn_side_listener(&tasks, info_span!("metrics"), serve);
    }
    if let Some(l) = listeners.health {
        spawn_health_listener(&ctx, l, &options);
    }
    if let Some(l) = listeners.admin {
        spawn_admin_listener(&ctx, l, &options);
    }
    info!(addr = %local_addr(&listeners.grpc), tenants = registry.tenants().len(), tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|t| t.mutual()), admin = server.admin, "serving gRPC");
    let serve = transport::serve(
        listeners.grpc,
        main,
        options,
        Some(metrics.clone()),
        cancel.clone(),
    );
    let grace = server.shutdown_grace;
    let health = (health, gated);
    serve_until_shutdown(serve, shutdown, health, grace, tasks, cancel).await
}

/// What every listener's connections are served with; `tls` for the main and admin
/// listeners.
fn serve_options(server: &ServerSettings, tls: Option<Arc<TlsConfig>>) -> ServeOptions {
    ServeOptions {
        tls,
        limits: ConnectionLimits {
            max_age: server.max_connection_age,
            grace: server.max_connection_age_grace,
        },
        handshake_timeout: server.handshake_timeout,
        max_connections: server.max_connections,
        max_concurrent_streams: server.max_concurrent_streams,
        keepalive_interval: Some(server.keepalive_interval),
        keepalive_timeout: server.keepalive_timeout,
        shutdown_grace: server.shutdown_grace,
    }
}

/// What the listeners are wired from.
struct Wiring<'a> {
    server: &'a ServerSettings,
    ext_authz: &'a ExtAuthzSettings,
    registry: &'a Registry,
    metrics: &'a Arc<Metrics>,
    health: &'a HealthReporter,
    tasks: &'a TaskTracker,
    cancel: &'a CancellationToken,
}

/// The layers of the main and admin listeners' services: per-call metrics (outermost)
/// and the call deadline.
fn layered(ctx: &Wiring<'_>, svc: impl GrpcService<Body = tonic::body::Body>) -> impl GrpcService {
    tower::ServiceBuilder::new()
        .layer(MetricsLayer::new(ctx.metrics.clone()))
        .layer(DeadlineLayer::new(Some(ctx.server.request_timeout)))
        .service(svc)
}

/// Plaintext and health only: kubelet's gRPC probes cannot speak TLS. It shares the
/// reporter, so it answers exactly what the main listener answers.
fn spawn_health_listener(ctx: &Wiring<'_>, l: TcpListener, options: &ServeOptions) {
    info!(addr = %local_addr(&l), "serving plaintext grpc.health.v1 for probes");
    let svc = tower::ServiceBuilder::new()
        .layer(DeadlineLayer::new(Some(ctx.server.request_timeout)))
        .service(Routes::new(health_service(ctx.health, ctx.server)).prepare());
    let options = ServeOptions {
        tls: None,
        ..options.clone()
    };
    let serve = transport::serve(l, svc, options, None, ctx.cancel.clone());
    ctx.tasks
        .spawn(serve.instrument(info_span!("health_listener")));
}

/// AdminService alone (and health, so it can be probed), with the main listener's TLS;
/// never TokenService.
fn spawn_admin_listener(ctx: &Wiring<'_>, l: TcpListener, options: &ServeOptions) {
    info!(addr = %local_addr(&l), auth = ctx.server.admin_auth.is_some(), "serving AdminService");
    let routes = Routes::new(health_service(ctx.health, ctx.server))
        .add_service(admin_service(ctx.server, ctx.registry))
        .prepare();
    let serve = transport::serve(
        l,
        layered(ctx, routes),
        options.clone(),
        None,
        ctx.cancel.clone(),
    );
    ctx.tasks
        .spawn(serve.instrument(info_span!("admin_listener")));
}

/// Sweeps expired tokens out of the verified-token cache every minute, when it is on.
fn spawn_token_cache_sweep(registry: &Registry, tasks: &TaskTracker, cancel: &CancellationToken) {
    if registry.token_cache().is_some() {
        let sweep = registry
            .clone()
            .sweep_token_cache(token_cache::SWEEP_PERIOD, cancel.clone());
        tasks.spawn(sweep.instrument(info_span!("token_cache_sweep")));
    }
}

/// Every gRPC method the server knows, for the metrics' labels and the overload layer.
fn grpc_methods() -> anyhow::Result<GrpcMethods> {
    GrpcMethods::from_descriptor_sets(&[
        pb::FILE_DESCRIPTOR_SET,
        ext_authz::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ])
    .context("reading the gRPC descriptors")
}

/// The services whose health waits for every tenant's first key fetch: TokenService,
/// and Envoy's Authorization service (it decides with the same keys) when it is on.
fn gated_services(settings: &Settings) -> &'static [&'static str] {
    if settings.ext_authz.enabled {
        &[TOKEN_SERVICE_NAME, ext_authz::SERVICE_NAME]
    } else {
        &[TOKEN_SERVICE_NAME]
    }
}

/// Sets every service of `names` to `status`.
async fn set_statuses(reporter: &HealthReporter, names: &[&str], status: ServingStatus) {
    for name in names {
        reporter.set_service_status(*name, status).await;
    }
}

/// grpc.health.v1: the whole server serving, the `gated` services NOT_SERVING until
/// every tenant's first key fetch has finished (a task waits for that).
async fn start_health(
    registry: &Registry,
    gated: &'static [&'static str],
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> HealthReporter {
    let reporter = HealthReporter::new();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    set_statuses(&reporter, gated, ServingStatus::NotServing).await;
    let ready = {
        let reporter = reporter.clone();
        let registry = registry.clone();
        let cancel = cancel.clone();
        async move {
            tokio::select! {
                _ = registry.wait_first_fetches() => {
                    if !cancel.is_cancelled() {
                        set_statuses(&reporter, gated, ServingStatus::Serving).await;
                        info!("every tenant's first key fetch has finished; serving");
                    }
                }
                _ = cancel.cancelled() => {}
            }
        }
    };
    tasks.spawn(ready.instrument(info_span!("readiness")));
    reporter
}

/// Connects to the fleet's shared state when `shared_state` is configured: starts its
/// tasks, waits a little for it (serving without it if it does not answer: the
/// `on_unavailable` policy applies until it does), and hands it to the registry and
/// the metrics.
async fn start_fleet(
    settings: &Settings,
    registry: &Registry,
    metrics: &Metrics,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<Fleet>> {
    let Some(shared) = &settings.shared_state else {
        return Ok(None);
    };
    let coordinated = registry
        .key_sets()
        .iter()
        .filter(|s| matches!(s.source, crate::registry::Source::Discovery { .. }))
        .map(|s| s.id.to_string())
        .collect::<Vec<_>>();
    let fleet = Fleet::new(shared, coordinated, registry.revocations().clone())?;
    fleet.spawn(tasks, cancel);
    if !fleet.wait_ready(SHARED_STATE_STARTUP_WAIT).await {
        warn!(on_unavailable = ?shared.on_unavailable,
            "the shared state does not answer yet; serving without it until it does");
    }
    registry.attach_shared(fleet.shared());
    metrics.observe_fleet(fleet.clone());
    info!(replica = %fleet.replica(), prefix = %fleet.key_prefix(),
        integrity = fleet.integrity_enabled(), "sharing state with the fleet");
    Ok(Some(fleet))
}

/// Reports the shared state's availability in grpc.health.v1 as it changes.
fn report_shared_state(
    fleet: &Fleet,
    reporter: &HealthReporter,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
) {
    let mut rx = fleet.health().watch();
    let reporter = reporter.clone();
    let cancel = cancel.clone();
    let follow = async move {
        loop {
            let status = if *rx.borrow_and_update() {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            reporter
                .set_service_status(SHARED_STATE_SERVICE_NAME, status)
                .await;
            tokio::select! {
                _ = cancel.cancelled() => return,
                changed = rx.changed() => if changed.is_err() { return },
            }
        }
    };
    tasks.spawn(follow.instrument(info_span!("shared_state_health")));
}

/// The health service answering from `reporter`.
fn health_service(
    reporter: &HealthReporter,
    server: &ServerSettings,
) -> HealthServer<HealthService> {
    HealthServer::new(HealthService::from_health_reporter(reporter.clone()))
        .max_decoding_message_size(server.decoding_limit())
}

/// Reflection for grpcurl and friends, v1 and v1alpha, over the same descriptors.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(ext_authz::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// Envoy's Authorization service over the same registry and introspectors, when
/// `ext_authz.enabled`.
fn ext_authz_server(
    ctx: &Wiring<'_>,
    introspection: &Introspection,
) -> Option<AuthorizationServer<ExtAuthzService>> {
    ctx.ext_authz.enabled.then(|| {
        let svc = ExtAuthzService::new(
            ctx.registry.clone(),
            introspection.clone(),
            ctx.ext_authz.clone(),
            ctx.server.max_token_bytes,
        )
        .with_metrics(ctx.metrics.clone());
        AuthorizationServer::new(svc).max_decoding_message_size(ctx.server.decoding_limit())
    })
}

/// AdminService over `registry`, with `server.admin_auth` when set.
fn admin_service(
    server: &ServerSettings,
    registry: &Registry,
) -> AdminServiceServer<AdminServiceImpl> {
    AdminServiceServer::new(
        AdminServiceImpl::new(registry.clone())
            .with_auth(server.admin_auth.clone(), server.max_token_bytes),
    )
    .max_decoding_message_size(server.decoding_limit())
}

/// The service of the gRPC listener: health, reflection, TokenService, Envoy's
/// Authorization service when `ext_authz.enabled`, and AdminService when `server.admin`,
/// behind the concurrency limit, the deadline and the metrics.
fn services(ctx: &Wiring<'_>, methods: &Arc<GrpcMethods>) -> anyhow::Result<impl GrpcService> {
    let server = ctx.server;
    let limit = server.decoding_limit();
    // One introspector per tenant with `introspection`, built once and shared by calls.
    let introspection =
        Introspection::new(ctx.registry).context("building the introspection client")?;
    for i in introspection.introspectors() {
        info!(tenant = %i.tenant(), "introspection of opaque tokens enabled");
    }
    ctx.metrics.observe_introspection(introspection.clone());
    let authorization = ext_authz_server(ctx, &introspection);
    let limits = Limits {
        max_token_bytes: server.max_token_bytes,
        watchers: WatcherLimits {
            total: server.max_watchers,
            per_connection: server.max_watchers_per_connection,
            per_peer: server.max_watchers_per_peer,
        },
    };
    let token = TokenServiceImpl::new(ctx.registry.clone(), limits)
        .with_introspector(introspection)
        .with_shutdown(ctx.cancel.clone())
        .with_metrics(ctx.metrics.clone());
    let watchers = token.watchers().clone();
    ctx.metrics.observe_watchers(move || watchers.active());
    let mut routes = Routes::new(health_service(ctx.health, server))
        .add_service(
            reflection()
                .build_v1()
                .context("building reflection v1")?
                .max_decoding_message_size(limit),
        )
        .add_service(
            reflection()
                .build_v1alpha()
                .context("building reflection v1alpha")?
                .max_decoding_message_size(limit),
        )
        .add_service(TokenServiceRoutes::new(token, limit));
    if let Some(a) = authorization {
        routes = routes.add_service(a);
    }
    // Not in health: the operator view does not decide whether the pod takes traffic.
    if server.admin {
        routes = routes.add_service(admin_service(server, ctx.registry));
    }
    let overload = (server.concurrency_limit > 0)
        .then(|| ConcurrencyLimitLayer::new(server.concurrency_limit, methods.clone(), limit));
    let limited = tower::ServiceBuilder::new()
        .option_layer(overload)
        .service(routes.prepare());
    Ok(layered(ctx, limited))
}

/// Serves a side listener on the tracker until its own shutdown (the cancel token it
/// was given); a failure is logged, never fatal to the gRPC listener.
fn spawn_side_listener<E: std::fmt::Display>(
    tasks: &TaskTracker,
    span: tracing::Span,
    serve: impl Future<Output = Result<(), E>> + Send + 'static,
) {
    tasks.spawn(
        async move {
            if let Err(e) = serve.await {
                warn!(error = %e, "listener failed");
            }
        }
        .instrument(span),
    );
}

fn local_addr(l: &TcpListener) -> String {
    l.local_addr().map(|a| a.to_string()).unwrap_or_default()
}

/// Serves until `shutdown` resolves, then shuts down in one sequence: health
/// NOT_SERVING, everything cancelled (streams end, refreshers and side listeners stop,
/// no new connections, GOAWAY on every connection), in-flight calls drained, and the
/// tracked tasks awaited, all within `grace` of the signal.
async fn serve_until_shutdown(
    serve: impl Future<Output = ()> + Send,
    shutdown: impl Future<Output = ()> + Send + 'static,
    (health, gated): (HealthReporter, &'static [&'static str]),
    grace: Duration,
    tasks: TaskTracker,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let signal = {
        let cancel = cancel.clone();
        async move {
            shutdown.await;
            info!("shutdown begins: health NOT_SERVING, draining calls");
            set_statuses(&health, gated, ServingStatus::NotServing).await;
            health
                .set_service_status("", ServingStatus::NotServing)
                .await;
            cancel.cancel();
        }
    };
    // transport::serve drains its connections within the grace itself; the same grace,
    // counted from the cancellation, bounds the tracked tasks.
    let grace_over = {
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            tokio::time::sleep(grace).await;
        }
    };
    tokio::pin!(grace_over);
    tokio::join!(serve, signal);
    cancel.cancel();
    tasks.close();
    let expired = tokio::select! {
        _ = tasks.wait() => false,
        _ = &mut grace_over => true,
    };
    if expired && !tasks.is_empty() {
        warn!(
            tasks = tasks.len(),
            "grace period over; abandoning the background tasks still running"
        );
    }
    info!("stopped");
    Ok(())
}

/// A server started in the background, for tests and embedding.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// The bound metrics address, when `server.metrics_listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    /// The bound plaintext health address, when `server.health_listen` is set.
    pub health_addr: Option<SocketAddr>,
    /// The bound admin address, when `server.admin_listen` is set.
    pub admin_addr: Option<SocketAddr>,
    stop: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl RunningServer {
    /// Starts shutdown and waits for the server to stop.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.handle.await.context("server task panicked")?
    }

    /// Starts shutdown without waiting.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits for the server to stop.
    pub async fn join(self) -> anyhow::Result<()> {
        self.handle.await.context("server task panicked")?
    }
}

/// Binds every listener of `settings` (port 0 picks a free port) and serves in the
/// background.
pub async fn spawn(settings: Settings) -> anyhow::Result<RunningServer> {
    let listeners = Listeners::bind(&settings).await?;
    let addr = listeners.grpc.local_addr()?;
    let metrics_addr = listeners.metrics.as_ref().and_then(|l| l.local_addr().ok());
    let health_addr = listeners.health.as_ref().and_then(|l| l.local_addr().ok());
    let admin_addr = listeners.admin.as_ref().and_then(|l| l.local_addr().ok());
    let stop = CancellationToken::new();
    let signal = {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let handle = tokio::spawn(
        run_with_listeners(settings, listeners, signal).instrument(info_span!("server", %addr)),
    );
    Ok(RunningServer {
        addr,
        metrics_addr,
        health_addr,
        admin_addr,
        stop,
        handle,
    })
}
