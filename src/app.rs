//! Wiring only: builds the registry, starts the refreshers, mounts the gRPC services
//! (TokenService, health, reflection, and AdminService when `server.admin`), serves on
//! a listener it is given (so tests bind port 0), and shuts down in order: health
//! NOT_SERVING, streams and refreshers cancelled, in-flight calls drained within the
//! grace period. Also wires metrics (the `/metrics` listener, the gRPC layers), TLS,
//! and the overload limits.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    task::{JoinHandle, JoinSet},
};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    config::Settings,
    fleet::Fleet,
    grpc::{
        AdminServiceImpl, TokenServiceImpl,
        layers::{ConcurrencyLimitLayer, MetricsLayer},
        pb::{
            self, admin_service_server::AdminServiceServer,
            token_service_server::TokenServiceServer,
        },
    },
    introspect::Introspection,
    metrics::{GrpcMethods, Metrics},
    oidc::{self, HttpClient},
    registry::Registry,
    transport::{self, ConnectionLimits, Incoming, TlsConfig},
};

/// Name of the TokenService in grpc.health.v1.
pub const TOKEN_SERVICE_NAME: &str = "introspect.v1.TokenService";
/// Name under which grpc.health.v1 reports the fleet's shared state (with
/// `shared_state` only): SERVING while it is available, NOT_SERVING while the replica
/// falls back (`local`) or refuses (`fail_closed`). It never decides readiness.
pub const SHARED_STATE_SERVICE_NAME: &str = "introspect.v1.SharedState";
/// Longest start-up wait for the shared state before serving without it.
pub const SHARED_STATE_STARTUP_WAIT: Duration = Duration::from_secs(3);

/// The shared parts of a running service.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The registry.
    pub registry: Registry,
    /// The HTTP client.
    pub http: HttpClient,
    /// Cancelled when shutdown begins.
    pub shutdown: CancellationToken,
    /// The settings.
    pub settings: Arc<Settings>,
}

/// Serves until `shutdown` resolves, then shuts down gracefully. Binds
/// `server.metrics_listen` and `server.health_listen` itself (when set).
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listeners = Listeners {
        grpc: listener,
        metrics: bind_optional(settings.server.metrics_listen, "server.metrics_listen").await?,
        health: bind_optional(settings.server.health_listen, "server.health_listen").await?,
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
        })
    }
}

/// Like [`run`], with every listener bound by the caller.
pub async fn run_with_listeners(
    settings: Settings,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Listeners {
        grpc: listener,
        metrics: metrics_listener,
        health: health_listener,
    } = listeners;
    crate::install_crypto();
    // A bad certificate or key is a configuration error (exit 2), found before anything starts.
    let tls = match &settings.server.tls {
        Some(t) => Some(TlsConfig::load(t).context("loading server.tls")?),
        None => None,
    };
    let registry = Registry::new(&settings).context("building the tenant registry")?;
    let http = HttpClient::new().context("building the HTTP client")?;
    let cancel = CancellationToken::new();
    // Attached before anything reads the registry's shared state (introspectors,
    // refreshers); without `shared_state` no Redis code runs at all.
    let (fleet, mut fleet_tasks) = match start_fleet(&settings, &registry, &cancel).await? {
        Some((f, t)) => (Some(f), t),
        None => (None, JoinSet::new()),
    };
    let state = AppState {
        registry: registry.clone(),
        http: http.clone(),
        shutdown: cancel.clone(),
        settings: Arc::new(settings),
    };
    let server = &state.settings.server;

    let methods = Arc::new(
        GrpcMethods::from_descriptor_sets(&[
            pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ])
        .context("reading the gRPC descriptors")?,
    );
    let metrics = Arc::new(Metrics::new(&registry, &methods));
    if let Some(f) = &fleet {
        metrics.observe_fleet(f.clone());
    }
    if let Some(l) = metrics_listener {
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        info!(%addr, "serving Prometheus metrics at /metrics");
        let metrics = metrics.clone();
        let cancel = cancel.clone();
        tokio::spawn(
            async move {
                if let Err(e) = crate::metrics::serve(l, metrics, cancel).await {
                    warn!(error = %e, "metrics endpoint failed");
                }
            }
            .instrument(info_span!("metrics")),
        );
    }

    let mut refreshers =
        oidc::spawn_refreshers(&registry, &http, &cancel, Some(metrics.fetch_observer()));

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status(TOKEN_SERVICE_NAME, ServingStatus::NotServing)
        .await;
    if let Some(f) = &fleet {
        spawn_shared_state_health(f, reporter.clone(), cancel.clone());
    }
    {
        let reporter = reporter.clone();
        let registry = registry.clone();
        let cancel = cancel.clone();
        tokio::spawn(
            async move {
                tokio::select! {
                    _ = registry.wait_first_fetches() => {
                        if !cancel.is_cancelled() {
                            reporter.set_service_status(TOKEN_SERVICE_NAME, ServingStatus::Serving).await;
                            info!("every tenant's first key fetch has finished; serving");
                        }
                    }
                    _ = cancel.cancelled() => {}
                }
            }
            .instrument(info_span!("readiness")),
        );
    }

    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection v1")?
        .max_decoding_message_size(server.max_message_bytes);
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection v1alpha")?
        .max_decoding_message_size(server.max_message_bytes);

    let limits = crate::grpc::Limits {
        max_token_bytes: server.max_token_bytes,
        max_watchers: server.max_watchers,
    };
    // One introspector per tenant with `introspection`, built once and shared by calls.
    let introspection =
        Introspection::new(&registry).context("building the introspection client")?;
    for i in introspection.introspectors() {
        info!(tenant = %i.tenant(), "introspection of opaque tokens enabled");
    }
    metrics.observe_introspection(introspection.clone());
    let token_impl = TokenServiceImpl::new(registry.clone(), limits)
        .with_introspector(introspection)
        .with_shutdown(cancel.clone())
        .with_metrics(metrics.clone());
    let watchers = token_impl.watchers().clone();
    metrics.observe_watchers(move || watchers.active());
    let token_service =
        TokenServiceServer::new(token_impl).max_decoding_message_size(server.max_message_bytes);
    let health_service = health_service.max_decoding_message_size(server.max_message_bytes);
    if let Some(l) = health_listener {
        // Plaintext and health only: kubelet's gRPC probes cannot speak TLS. It shares
        // the reporter, so it answers exactly what the main listener answers.
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        info!(%addr, "serving plaintext grpc.health.v1 for probes");
        let svc = health_service.clone();
        let cancel = cancel.clone();
        tokio::spawn(
            async move {
                let r = tonic::transport::Server::builder()
                    .add_service(svc)
                    .serve_with_incoming_shutdown(
                        tokio_stream::wrappers::TcpListenerStream::new(l),
                        cancel.cancelled_owned(),
                    )
                    .await;
                if let Err(e) = r {
                    warn!(error = %e, "health listener failed");
                }
            }
            .instrument(info_span!("health_listener")),
        );
    }
    // Not in health: the operator view does not decide whether the pod takes traffic.
    let admin_service = server.admin.then(|| {
        AdminServiceServer::new(AdminServiceImpl::new(registry.clone()))
            .max_decoding_message_size(server.max_message_bytes)
    });

    // tonic's `timeout` answers CANCELLED ("Timeout expired") and also honours a shorter
    // grpc-timeout from the client. `max_connection_age` here only sends GOAWAY: tonic's
    // own grace option skips the GOAWAY, so the forced close is `transport::Conn`'s.
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(server.keepalive_interval))
        .http2_keepalive_timeout(Some(server.keepalive_timeout))
        .timeout(server.request_timeout);
    if let Some(age) = server.max_connection_age {
        builder = builder.max_connection_age(age);
    }
    let limit = (server.concurrency_limit > 0)
        .then(|| ConcurrencyLimitLayer::new(server.concurrency_limit, methods.clone()));
    let mut builder = builder
        .layer(MetricsLayer::new(metrics.clone()))
        .layer(tower::util::option_layer(limit));

    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    info!(%addr, tenants = registry.tenants().len(), tls = tls.is_some(),
        mutual_tls = tls.as_ref().is_some_and(|t| t.mutual()), "serving gRPC");
    if let Some(t) = &tls {
        t.spawn_reloader(Some(metrics.clone()), cancel.clone());
    }
    let incoming = transport::spawn_incoming(
        listener,
        tls,
        ConnectionLimits {
            max_age: server.max_connection_age,
            grace: server.max_connection_age_grace,
        },
        Some(metrics.clone()),
        cancel.clone(),
    );

    let signal = {
        let reporter = reporter.clone();
        let cancel = cancel.clone();
        async move {
            shutdown.await;
            info!("shutdown begins: health NOT_SERVING, draining calls");
            reporter
                .set_service_status(TOKEN_SERVICE_NAME, ServingStatus::NotServing)
                .await;
            reporter
                .set_service_status("", ServingStatus::NotServing)
                .await;
            cancel.cancel();
        }
    };
    let router = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(token_service)
        .add_optional_service(admin_service);
    let serve = async move {
        match incoming {
            Incoming::Plain(s) => {
                router
                    .serve_with_incoming_shutdown(s.map(Ok::<_, std::io::Error>), signal)
                    .await
            }
            Incoming::Tls(s) => {
                router
                    .serve_with_incoming_shutdown(s.map(Ok::<_, std::io::Error>), signal)
                    .await
            }
        }
    };

    let grace = server.shutdown_grace;
    let drained = {
        let cancel = cancel.clone();
        async move {
            cancel.cancelled().await;
            tokio::time::sleep(grace).await;
        }
    };
    tokio::select! {
        r = serve => r.context("gRPC server failed")?,
        _ = drained => warn!(?grace, "grace period over; closing the remaining connections"),
    }
    cancel.cancel();
    refreshers.shutdown().await;
    fleet_tasks.shutdown().await;
    info!("stopped");
    Ok(())
}

/// Connects to the fleet's shared state when `shared_state` is configured: starts its
/// tasks, waits a little for it (serving without it if it does not answer: the
/// `on_unavailable` policy applies), and hands it to the registry.
async fn start_fleet(
    settings: &Settings,
    registry: &Registry,
    cancel: &CancellationToken,
) -> anyhow::Result<Option<(Fleet, JoinSet<()>)>> {
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
    let tasks = fleet.spawn(cancel).await;
    if !fleet.wait_ready(SHARED_STATE_STARTUP_WAIT).await {
        warn!(on_unavailable = ?shared.on_unavailable, "the shared state does not answer yet; serving without it until it does");
    }
    registry.attach_shared(fleet.shared());
    info!(replica = %fleet.replica(), prefix = %fleet.key_prefix(),
        integrity = fleet.integrity_enabled(), "sharing state with the fleet");
    Ok(Some((fleet, tasks)))
}

/// Reports the shared state's availability in grpc.health.v1 as it changes.
fn spawn_shared_state_health(
    fleet: &Fleet,
    reporter: tonic_health::server::HealthReporter,
    cancel: CancellationToken,
) {
    let mut rx = fleet.health().watch();
    tokio::spawn(
        async move {
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
        }
        .instrument(info_span!("shared_state_health")),
    );
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
        stop,
        handle,
    })
}
