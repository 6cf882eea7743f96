//! `envoy.service.auth.v3.Authorization/Check` (EXT_AUTHZ.md): Envoy, Istio, Envoy
//! Gateway and Contour ask it before a request reaches a service. The adapter parses the
//! `CheckRequest` once ([`request`]), turns it into the same typed requests Validate and
//! Introspect take (so their caches, error codes and metrics apply; there is no second
//! validation path), and maps the outcome onto a `CheckResponse` ([`response`]).
//!
//! Generated code for the vendored Envoy protos is fenced in [`pb`].

pub mod request;
pub mod response;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use tonic::{Request, Response, Status};
use tracing::{debug, error, warn};

pub use response::{Decision, Denial, Identity};

use self::{
    pb::envoy::service::auth::v3::{
        CheckRequest, CheckResponse, attribute_context::HttpRequest,
        authorization_server::Authorization,
    },
    request::{HeaderValue, Route, TokenError},
    response::Removals,
};
use crate::{
    config::ExtAuthzSettings,
    introspect::{
        Answer, FAULT_LOG_PERIOD, FaultLog, IntrospectError, IntrospectInput, Introspection,
    },
    jwt::ErrorCode,
    metrics::Metrics,
    registry::{Registry, ValidateError, ValidateInput},
};

/// Generated protobuf and gRPC code for Envoy's external authorization API
/// (`envoy.service.auth.v3` and the packages it imports), from `proto/`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    pub mod envoy {
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
        pub mod config {
            pub mod core {
                pub mod v3 {
                    tonic::include_proto!("envoy.config.core.v3");
                }
            }
        }
        pub mod r#type {
            pub mod v3 {
                tonic::include_proto!("envoy.r#type.v3");
            }
        }
    }
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
    pub mod xds {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("xds.core.v3");
            }
        }
        pub mod annotations {
            pub mod v3 {
                tonic::include_proto!("xds.annotations.v3");
            }
        }
    }
    pub mod udpa {
        pub mod annotations {
            tonic::include_proto!("udpa.annotations");
        }
    }
    pub mod validate {
        tonic::include_proto!("validate");
    }

    /// The encoded file descriptor set of the Envoy protos, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/envoy_ext_authz_descriptor.bin"));
}

/// The service's name in grpc.health.v1 and reflection.
pub const SERVICE_NAME: &str = "envoy.service.auth.v3.Authorization";

/// The Authorization handler (cheap to clone).
#[derive(Debug, Clone)]
pub struct ExtAuthzService {
    registry: Registry,
    introspection: Introspection,
    settings: Arc<ExtAuthzSettings>,
    max_token_bytes: usize,
    metrics: Option<Arc<Metrics>>,
    config_faults: Arc<FaultLog>,
}

/// One check's outcome: the answer, its metrics label and the tenant that decided.
struct Verdict {
    response: CheckResponse,
    decision: Decision,
    tenant: Option<String>,
}

impl Verdict {
    fn denied(d: Denial, required_scopes: &[String], tenant: Option<String>) -> Self {
        Self {
            response: response::denied(d, required_scopes, tenant.as_deref()),
            decision: d.decision(),
            tenant,
        }
    }
}

impl ExtAuthzService {
    /// A handler answering with `registry` (JWTs) and `introspection` (opaque tokens);
    /// tokens over `max_token_bytes` (`server.max_token_bytes`) are bad requests.
    pub fn new(
        registry: Registry,
        introspection: Introspection,
        settings: ExtAuthzSettings,
        max_token_bytes: usize,
    ) -> Self {
        Self {
            registry,
            introspection,
            settings: Arc::new(settings),
            max_token_bytes,
            metrics: None,
            config_faults: Arc::new(FaultLog::default()),
        }
    }

    /// Counts checks (by tenant and decision) and validations into `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        metrics.prepare_checks(&Decision::ALL.map(Decision::as_str));
        self.metrics = Some(metrics);
        self
    }

    /// Check without the tonic wrapping, for handler tests.
    pub async fn check_message(&self, req: &CheckRequest) -> CheckResponse {
        let v = self.decide(req).await;
        if let Some(m) = &self.metrics {
            m.record_check(v.tenant.as_deref(), v.decision.as_str());
        }
        v.response
    }

    async fn decide(&self, req: &CheckRequest) -> Verdict {
        let none = HashMap::new();
        let ext = req
            .attributes
            .as_ref()
            .map_or(&none, |a| &a.context_extensions);
        let route = match request::route(ext, &self.settings, |t| self.registry.tenant(t).is_some())
        {
            Ok(r) => r,
            Err(e) => {
                self.configuration_error(&e.to_string());
                return Verdict::denied(Denial::Misconfigured, &[], None);
            }
        };
        let tenant = route.tenant.map(str::to_owned);
        let http = request::http_request(req);
        let presented = http.map_or(HeaderValue::Absent, |h| {
            request::header(h, &self.settings.token_header)
        });
        let value = match presented {
            HeaderValue::Absent if route.allow_anonymous => {
                return Verdict {
                    response: response::anonymous(&self.settings, self.removals(http, false)),
                    decision: Decision::Anonymous,
                    tenant,
                };
            }
            HeaderValue::Absent => return Verdict::denied(Denial::NoToken, &[], tenant),
            HeaderValue::Repeated => {
                return Verdict::denied(Denial::BadRequest(TokenError::Repeated), &[], tenant);
            }
            HeaderValue::NotUtf8 => {
                return Verdict::denied(Denial::BadRequest(TokenError::Malformed), &[], tenant);
            }
            HeaderValue::One(v) => v,
        };
        let token = match request::bearer_token(&value, self.max_token_bytes) {
            Ok(t) => t,
            Err(e) => return Verdict::denied(Denial::BadRequest(e), &[], tenant),
        };
        let verdict = if is_jwt_shaped(token) {
            self.validate(token, &route).await
        } else {
            self.introspect(token, &route).await
        };
        match verdict {
            Ok(identity) => Verdict {
                response: response::allowed(&identity, &self.settings, self.removals(http, true)),
                decision: Decision::Allowed,
                tenant: identity.answer.tenant.clone(),
            },
            Err(v) => v,
        }
    }

    /// Validate with the route's tenant, audiences and scopes.
    async fn validate(&self, token: &str, route: &Route<'_>) -> Result<Identity, Verdict> {
        let input = ValidateInput {
            token,
            tenant: route.tenant,
            audiences: &route.audiences,
            required_scopes: &route.required_scopes,
            nonce: None,
            peek_replay: false,
        };
        let outcome = self.registry.validate(&input).await;
        if let Some(m) = &self.metrics {
            m.record_validate_outcome(&outcome);
        }
        match outcome {
            Ok(v) => Ok(Identity::from_validated(v, token)),
            Err(ValidateError::Rejected {
                rejection, tenant, ..
            }) => {
                debug!(code = %rejection.code, tenant = tenant.as_deref().unwrap_or(""), "ext_authz: token rejected");
                Err(Verdict::denied(
                    Denial::Rejected(rejection.code),
                    &route.required_scopes,
                    tenant,
                ))
            }
            Err(ValidateError::Request(e)) => {
                self.configuration_error(&e.to_string());
                Err(Verdict::denied(Denial::Misconfigured, &[], None))
            }
        }
    }

    /// Introspect an opaque token at its tenant's provider; where no tenant can
    /// introspect it, Validate answers (MALFORMED: it is not a JWS).
    async fn introspect(&self, token: &str, route: &Route<'_>) -> Result<Identity, Verdict> {
        // Introspect answers such a token `active: false` (RFC 7662); the deny table says
        // why it is refused instead: it is not a JWS.
        if let Err(IntrospectError::NoIntrospection(_) | IntrospectError::NotConfigured) =
            self.introspection.select(route.tenant)
        {
            return self.validate(token, route).await;
        }
        let input = IntrospectInput {
            token,
            token_type_hint: None,
            tenant: route.tenant,
        };
        let tenant = route.tenant.map(str::to_owned);
        match self.introspection.introspect(&input).await {
            Ok(answer) if !answer.active => Err(Verdict::denied(
                Denial::Inactive,
                &route.required_scopes,
                tenant,
            )),
            Ok(answer) => match opaque_denial(&answer, route) {
                Some(d) => Err(Verdict::denied(d, &route.required_scopes, answer.tenant)),
                None => Ok(Identity::from_answer(answer)),
            },
            Err(IntrospectError::TenantRequired(tenants)) => {
                if let Some(suppressed) = self.config_faults.admit(FAULT_LOG_PERIOD) {
                    warn!(%tenants, suppressed, "ext_authz: an opaque token on a route that names no tenant, and several tenants introspect; name one in the route's context_extensions `tenant` or in ext_authz.tenant");
                }
                Err(Verdict::denied(
                    Denial::Rejected(ErrorCode::UnknownIssuer),
                    &[],
                    None,
                ))
            }
            Err(e @ IntrospectError::UnknownTenant(_)) => {
                self.configuration_error(&e.to_string());
                Err(Verdict::denied(Denial::Misconfigured, &[], tenant))
            }
            Err(e) => {
                debug!(error = %e, "ext_authz: introspection cannot answer");
                Err(Verdict::denied(
                    Denial::IntrospectionUnavailable,
                    &[],
                    tenant,
                ))
            }
        }
    }

    /// What the upstream request loses on allow besides the identity headers: the token
    /// header when `strip_token` (and a token was checked), and client headers whose
    /// names differ from an identity header only by `_` for `-` (CGI-style frameworks
    /// read both as the same variable).
    fn removals(&self, http: Option<&HttpRequest>, authenticated: bool) -> Removals {
        let mut extra = Vec::new();
        if authenticated && self.settings.strip_token {
            extra.push(self.settings.token_header.clone());
        }
        if let Some(http) = http {
            for name in request::header_names(http).filter(|n| n.contains('_')) {
                let dashed = name.replace('_', "-");
                if self
                    .settings
                    .identity_headers()
                    .any(|h| h.eq_ignore_ascii_case(&dashed))
                    && !extra.iter().any(|e| e == name)
                {
                    extra.push(name.to_string());
                }
            }
        }
        Removals { extra }
    }

    fn configuration_error(&self, what: &str) {
        if let Some(suppressed) = self.config_faults.admit(FAULT_LOG_PERIOD) {
            error!(error = %what, suppressed, "ext_authz: route configuration error; denying with 500");
        }
    }
}

/// Three dot-separated segments: Validate answers (a JWT-shaped token that is not a JWS
/// is MALFORMED, as Introspect treats it).
fn is_jwt_shaped(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// The route's own checks on an active opaque answer (the provider's answer is
/// authoritative, so only what the route asks for explicitly applies): its audiences,
/// when the route or `ext_authz.audiences` names any, and its required scopes.
fn opaque_denial(answer: &Answer, route: &Route<'_>) -> Option<Denial> {
    if !route.audiences.is_empty() && !answer.aud.iter().any(|a| route.audiences.contains(a)) {
        return Some(Denial::OpaqueAudience);
    }
    // A set: the provider's scope string may be long, and matching stays O(n + m).
    let granted: HashSet<&str> = answer
        .scope
        .as_deref()
        .map(|s| s.split_whitespace().collect())
        .unwrap_or_default();
    if route
        .required_scopes
        .iter()
        .any(|r| !granted.contains(r.as_str()))
    {
        return Some(Denial::OpaqueScope);
    }
    None
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        Ok(Response::new(self.check_message(request.get_ref()).await))
    }
}

#[cfg(test)]
mod tests;
