//! Wiring only: builds the registry, starts the refreshers, mounts the gRPC services
//! (TokenService, health, reflection, and AdminService when `server.admin`), serves on
//! a listener it is given (so tests bind port 0), and shuts down in order: health
//! NOT_SERVING, streams and refreshers cancelled, in-flight calls drained within the
//! grace period.

use std::{future::Future, net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tonic_health::ServingStatus;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    config::Settings,
    grpc::{
        AdminServiceImpl, TokenServiceImpl,
        pb::{
            self, admin_service_server::AdminServiceServer,
            token_service_server::TokenServiceServer,
        },
    },
    introspect::Introspection,
    oidc::{self, HttpClient},
    registry::Registry,
};

/// Name of the TokenService in grpc.health.v1.
pub const TOKEN_SERVICE_NAME: &str = "introspect.v1.TokenService";

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

/// Serves until `shutdown` resolves, then shuts down gracefully.
pub async fn run(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    crate::install_crypto();
    let registry = Registry::new(&settings).context("building the tenant registry")?;
    let http = HttpClient::new().context("building the HTTP client")?;
    let cancel = CancellationToken::new();
    let state = AppState {
        registry: registry.clone(),
        http: http.clone(),
        shutdown: cancel.clone(),
        settings: Arc::new(settings),
    };
    let server = &state.settings.server;

    let mut refreshers = oidc::spawn_refreshers(&registry, &http, &cancel, None);

    let (reporter, health_service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("", ServingStatus::Serving)
        .await;
    reporter
        .set_service_status(TOKEN_SERVICE_NAME, ServingStatus::NotServing)
        .await;
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
        .context("building reflection v1")?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection v1alpha")?;

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
    let token_service = TokenServiceServer::new(
        TokenServiceImpl::new(registry.clone(), limits)
            .with_introspector(introspection)
            .with_shutdown(cancel.clone()),
    )
    .max_decoding_message_size(server.max_message_bytes);
    // Not in health: the operator view does not decide whether the pod takes traffic.
    let admin_service = server.admin.then(|| {
        AdminServiceServer::new(AdminServiceImpl::new(registry.clone()))
            .max_decoding_message_size(server.max_message_bytes)
    });

    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(server.keepalive_interval))
        .http2_keepalive_timeout(Some(server.keepalive_timeout))
        .timeout(server.request_timeout);
    if server.concurrency_limit > 0 {
        builder = builder.concurrency_limit_per_connection(server.concurrency_limit);
    }
    if let Some(age) = server.max_connection_age {
        builder = builder.max_connection_age(age);
    }

    let addr = listener.local_addr().ok();
    info!(addr = ?addr, tenants = registry.tenants().len(), "serving gRPC");

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
    let serve = builder
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(token_service)
        .add_optional_service(admin_service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), signal);

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
    info!("stopped");
    Ok(())
}

/// A server started in the background, for tests and embedding.
#[derive(Debug)]
pub struct RunningServer {
    /// The bound address.
    pub addr: SocketAddr,
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

/// Binds `settings.server.listen` (port 0 picks a free port) and serves in the background.
pub async fn spawn(settings: Settings) -> anyhow::Result<RunningServer> {
    let listener = TcpListener::bind(settings.server.listen)
        .await
        .with_context(|| format!("binding {}", settings.server.listen))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let signal = {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let handle =
        tokio::spawn(run(settings, listener, signal).instrument(info_span!("server", %addr)));
    Ok(RunningServer { addr, stop, handle })
}
