//! `introspect.v1.TokenService`: parses each request once at the boundary, calls the
//! core, and converts the outcome with `to_proto`.

use std::{pin::Pin, sync::Arc};

use futures::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tracing::debug;

use super::{
    BoundaryError, check_field, check_list, convert, non_empty, parse_token,
    pb::{self, token_service_server::TokenService},
    reply::Reply,
    split_validate_error,
    watch::{self, WatcherLimits, Watchers},
};
use crate::{
    introspect::Introspection,
    metrics::Metrics,
    registry::{Registry, ValidateInput},
    transport::Peer,
};

/// Limits applied at the boundary.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// `server.max_token_bytes`.
    pub max_token_bytes: usize,
    /// The caps on WatchKeys streams.
    pub watchers: WatcherLimits,
}

/// The TokenService handler (cheap to clone).
#[derive(Debug, Clone)]
pub struct TokenServiceImpl {
    registry: Registry,
    limits: Limits,
    introspection: Option<Introspection>,
    /// Open WatchKeys streams, capped by `limits.watchers`.
    watchers: Watchers,
    /// Ends every WatchKeys stream (with OK) when cancelled.
    shutdown: Option<CancellationToken>,
    metrics: Option<Arc<Metrics>>,
}

impl TokenServiceImpl {
    /// A handler over `registry`.
    pub fn new(registry: Registry, limits: Limits) -> Self {
        Self {
            registry,
            limits,
            introspection: None,
            watchers: Watchers::new(limits.watchers),
            shutdown: None,
            metrics: None,
        }
    }

    /// Answers Introspect with `introspection` (its introspectors serve opaque tokens).
    /// Without it, Introspect answers JWTs only.
    pub fn with_introspector(mut self, introspection: Introspection) -> Self {
        self.introspection = Some(introspection);
        self
    }

    /// Ends every WatchKeys stream cleanly when `token` is cancelled (the app's shutdown).
    pub fn with_shutdown(mut self, token: CancellationToken) -> Self {
        self.shutdown = Some(token);
        self
    }

    /// The WatchKeys subscriber count.
    pub fn watchers(&self) -> &Watchers {
        &self.watchers
    }

    /// Counts validations (by tenant and result) into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Introspect without the tonic wrapping, for handler tests.
    pub async fn introspect_message(
        &self,
        req: &pb::IntrospectRequest,
    ) -> Result<pb::IntrospectResponse, BoundaryError> {
        match &self.introspection {
            Some(i) => super::introspect::introspect_message(i, &self.limits, req).await,
            None => {
                let local = Introspection::local_only(self.registry.clone());
                super::introspect::introspect_message(&local, &self.limits, req).await
            }
        }
    }

    /// Validate without the tonic wrapping, for handler tests and tools.
    pub async fn validate_message(
        &self,
        req: &pb::ValidateRequest,
    ) -> Result<pb::ValidateResponse, BoundaryError> {
        Ok(self.validate_reply(req).await?.into_message())
    }

    /// Validate as the server answers it: an accepted token is encoded from the core's
    /// values when the answer is sent ([`Reply`]).
    pub async fn validate_reply(&self, req: &pb::ValidateRequest) -> Result<Reply, BoundaryError> {
        let token = parse_token(&req.token, self.limits.max_token_bytes)?;
        check_field("tenant", &req.tenant)?;
        check_field("nonce", &req.nonce)?;
        check_list("audiences", &req.audiences)?;
        check_list("required_scopes", &req.required_scopes)?;
        let input = ValidateInput {
            token,
            tenant: non_empty(&req.tenant),
            audiences: &req.audiences,
            required_scopes: &req.required_scopes,
            nonce: non_empty(&req.nonce),
            peek_replay: false,
        };
        let outcome = self.registry.validate(&input).await;
        if let Some(m) = &self.metrics {
            m.record_validate_outcome(&outcome);
        }
        match outcome {
            Ok(v) => Ok(Reply::Valid(v)),
            Err(e) => {
                let e = split_validate_error(e)?;
                debug!(error = %e, "token rejected");
                Ok(Reply::Message(Box::new(convert::rejected(&e))))
            }
        }
    }
}

/// The WatchKeys stream type.
pub type KeyEventStream =
    Pin<Box<dyn Stream<Item = Result<pb::KeyEvent, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl TokenService for TokenServiceImpl {
    async fn validate(
        &self,
        request: Request<pb::ValidateRequest>,
    ) -> Result<Response<pb::ValidateResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.validate_message(&req).await?))
    }

    async fn introspect(
        &self,
        request: Request<pb::IntrospectRequest>,
    ) -> Result<Response<pb::IntrospectResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(self.introspect_message(&req).await?))
    }

    type WatchKeysStream = KeyEventStream;

    async fn watch_keys(
        &self,
        request: Request<pb::WatchKeysRequest>,
    ) -> Result<Response<Self::WatchKeysStream>, Status> {
        let peer = request.extensions().get::<Peer>().copied();
        let req = request.into_inner();
        let stream = watch::open(
            &self.registry,
            &self.watchers,
            self.shutdown.clone(),
            &req,
            peer,
        )?;
        Ok(Response::new(stream))
    }
}
