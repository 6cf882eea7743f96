//! `envoy.service.auth.v3.Authorization/Check` (EXT_AUTHZ.md): Envoy, Istio, Envoy
//! Gateway and Contour ask it before a request reaches a service. The adapter parses the
//! `CheckRequest` once ([`request`]), turns it into the same typed requests Validate and
//! Introspect take, with what the client presented beside its token (DPoP proofs, the
//! request's method and URI, the peer certificate), so their caches, error codes,
//! sender-constraint checks and metrics apply (there is no second validation path), and
//! maps the outcome onto a `CheckResponse` ([`response`]).
//!
//! Generated code for the vendored Envoy protos is fenced in [`pb`].

pub mod request;
pub mod response;

use std::{
    collections::{BTreeMap, HashSet},
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
    grpc::presentation::certificate_from_urlencoded_pem,
    introspect::{
        Answer, FAULT_LOG_PERIOD, FaultLog, IntrospectError, IntrospectInput, Introspection,
    },
    jwt::{
        ErrorCode,
        claims::now_secs,
        dpop::{Presentation, Scheme},
        jws,
    },
    metrics::Metrics,
    registry::{DpopHint, Registry, ValidateError, ValidateInput},
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
        Self::refused(Refusal::new(d, tenant), required_scopes)
    }

    fn refused(r: Refusal, required_scopes: &[String]) -> Self {
        Self {
            response: response::denied(
                r.denial,
                required_scopes,
                r.tenant.as_deref(),
                r.dpop.as_deref(),
            ),
            decision: r.denial.decision(),
            tenant: r.tenant,
        }
    }
}

/// A token refused by Validate, Introspect or the route, before it becomes an answer.
struct Refusal {
    denial: Denial,
    tenant: Option<String>,
    /// The DPoP challenge data, when the client is to be challenged with `DPoP`.
    dpop: Option<Box<DpopHint>>,
}

impl Refusal {
    fn new(denial: Denial, tenant: Option<String>) -> Self {
        Self {
            denial,
            tenant,
            dpop: None,
        }
    }
}

/// The token of one check and what the client presented beside it.
struct Call<'a> {
    token: &'a str,
    route: &'a Route<'a>,
    presentation: &'a Presentation,
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
        let none = BTreeMap::new();
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
        let (scheme, token) = match request::token_credentials(&value, self.max_token_bytes) {
            Ok(c) => c,
            Err(e) => return Verdict::denied(Denial::BadRequest(e), &[], tenant),
        };
        let der = self.peer_certificate(req);
        let presentation = match request::presentation(http, scheme, &der) {
            Ok(p) => p,
            Err(e) => {
                debug!(error = %e, "ext_authz: the request cannot be compared with a DPoP proof");
                let d = Denial::BadRequest(TokenError::UnusableTarget);
                return Verdict::denied(d, &[], tenant);
            }
        };
        let call = Call {
            token,
            route: &route,
            presentation: &presentation,
        };
        // Three dot-separated segments: Validate answers (a JWT-shaped token that is not a
        // JWS is MALFORMED, as Introspect treats it).
        let verdict = if jws::is_jwt_shaped(token) {
            self.validate(&call).await
        } else {
            self.introspect(&call).await
        };
        match verdict {
            Ok(identity) => Verdict {
                response: response::allowed(&identity, &self.settings, self.removals(http, true)),
                decision: Decision::Allowed,
                tenant: identity.answer.tenant.clone(),
            },
            Err(r) => Verdict::refused(self.with_dpop_hint(r, scheme), &route.required_scopes),
        }
    }

    /// A refused `DPoP` call is challenged with the `DPoP` scheme (RFC 9449 7.1), with
    /// the tenant's algorithms and a fresh nonce when it requires them, whatever the
    /// refusal's cause.
    fn with_dpop_hint(&self, mut r: Refusal, scheme: Scheme) -> Refusal {
        if scheme == Scheme::Dpop && r.dpop.is_none() && r.denial.is_token_refusal() {
            r.dpop = Some(Box::new(
                self.registry.dpop_hint(r.tenant.as_deref(), now_secs()),
            ));
        }
        r
    }

    /// The DER of the peer certificate Envoy passed; one it cannot have meant (not a
    /// URL-encoded PEM certificate) is logged and counts as none, so a certificate-bound
    /// token is refused and an unbound one is unaffected.
    fn peer_certificate(&self, req: &CheckRequest) -> Vec<u8> {
        let Some(pem) = request::peer_certificate(req) else {
            return Vec::new();
        };
        certificate_from_urlencoded_pem(pem).unwrap_or_else(|e| {
            if let Some(suppressed) = self.config_faults.admit(FAULT_LOG_PERIOD) {
                warn!(error = %e, suppressed, "ext_authz: the peer certificate in the CheckRequest is unusable; treating the request as sent without one");
            }
            Vec::new()
        })
    }

    /// Validate with the route's tenant, audiences and scopes.
    async fn validate(&self, call: &Call<'_>) -> Result<Identity, Refusal> {
        let route = call.route;
        let input = ValidateInput {
            token: call.token,
            tenant: route.tenant,
            audiences: &route.audiences,
            required_scopes: &route.required_scopes,
            nonce: None,
            peek_replay: false,
            presentation: Some(call.presentation),
        };
        let outcome = self.registry.validate(&input).await;
        if let Some(m) = &self.metrics {
            m.record_validate_outcome(&outcome);
        }
        outcome
            .map(|v| Identity::from_validated(v, call.token))
            .map_err(|e| self.rejected(e))
    }

    /// A Validate refusal (or an unproven binding of an introspected token) as a denial.
    fn rejected(&self, e: ValidateError) -> Refusal {
        match e {
            ValidateError::Rejected {
                rejection,
                tenant,
                dpop,
                ..
            } => {
                debug!(code = %rejection.code, tenant = tenant.as_deref().unwrap_or(""), "ext_authz: token rejected");
                Refusal {
                    denial: Denial::Rejected(rejection.code),
                    tenant,
                    dpop,
                }
            }
            ValidateError::Request(e) => {
                self.configuration_error(&e.to_string());
                Refusal::new(Denial::Misconfigured, None)
            }
        }
    }

    /// Introspect an opaque token at its tenant's provider; where no tenant can
    /// introspect it, Validate answers (MALFORMED: it is not a JWS).
    async fn introspect(&self, call: &Call<'_>) -> Result<Identity, Refusal> {
        let route = call.route;
        // Introspect answers such a token `active: false` (RFC 7662); the deny table says
        // why it is refused instead: it is not a JWS.
        if let Err(IntrospectError::NoIntrospection(_) | IntrospectError::NotConfigured) =
            self.introspection.select(route.tenant)
        {
            return self.validate(call).await;
        }
        let input = IntrospectInput {
            token: call.token,
            token_type_hint: None,
            tenant: route.tenant,
            presentation: Some(call.presentation),
        };
        let tenant = route.tenant.map(str::to_owned);
        match self.introspection.introspect(&input).await {
            Ok(answer) if !answer.active => Err(Refusal::new(Denial::Inactive, tenant)),
            Ok(answer) => match opaque_denial(&answer, route) {
                Some(d) => Err(Refusal::new(d, answer.tenant)),
                None => Ok(Identity::from_answer(answer)),
            },
            Err(IntrospectError::Unbound(e)) => Err(self.rejected(*e)),
            Err(IntrospectError::TenantRequired(tenants)) => {
                if let Some(suppressed) = self.config_faults.admit(FAULT_LOG_PERIOD) {
                    warn!(%tenants, suppressed, "ext_authz: an opaque token on a route that names no tenant, and several tenants introspect; name one in the route's context_extensions `tenant` or in ext_authz.tenant");
                }
                Err(Refusal::new(
                    Denial::Rejected(ErrorCode::UnknownIssuer),
                    None,
                ))
            }
            Err(e @ IntrospectError::UnknownTenant(_)) => {
                self.configuration_error(&e.to_string());
                Err(Refusal::new(Denial::Misconfigured, tenant))
            }
            Err(e) => {
                debug!(error = %e, "ext_authz: introspection cannot answer");
                Err(Refusal::new(Denial::IntrospectionUnavailable, tenant))
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
