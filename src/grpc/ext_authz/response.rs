//! Building the `CheckResponse` (EXT_AUTHZ.md, "The answer"): an allowed answer sets the
//! identity headers with overwrite and lists every identity header it does not set in
//! `headers_to_remove`, so a client can never supply its own; a denied answer carries the
//! HTTP status, `WWW-Authenticate` challenge, gRPC status, JSON body and
//! `cache-control: no-store` of the deny table. A `DPoP` call is challenged with the
//! `DPoP` scheme, and a fresh nonce (tenants that require them) goes to the client in
//! `DPoP-Nonce` on either answer (RFC 9449 sections 7.1 and 9).

use std::sync::Arc;

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use prost_types::{Struct, Value as PValue, value::Kind};
use serde_json::{Map, Value};
use tonic::Code;

use super::{
    pb::{
        envoy::{
            config::core::v3::{
                HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
            },
            service::auth::v3::{
                CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response::HttpResponse,
            },
            r#type::v3::HttpStatus,
        },
        google::rpc::Status as RpcStatus,
    },
    request::TokenError,
};
use crate::{
    config::ExtAuthzSettings,
    grpc::convert::json_to_value,
    introspect::{Answer, answer},
    jwt::{
        ErrorCode,
        challenge::{Challenge, ChallengeError},
        compact::ValueRef,
    },
    registry::{DpopHint, Validated, VerifiedToken},
};

/// The response header carrying a fresh DPoP nonce to the client (RFC 9449 section 9).
pub const DPOP_NONCE_HEADER: &str = "dpop-nonce";

/// Who the token says the caller is: the answer (Introspect's field mapping, `tenant`
/// set), the claims that names not in the answer are looked up in, and the claims
/// header's value.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The answer fields (for a JWT, without the rest of its claims: see `claims`).
    pub answer: Answer,
    /// Every claim: the verified JWT payload, or the provider's RFC 7662 answer.
    claims: ClaimSet,
    /// The claims as base64url JSON: a JWT's payload segment exactly as the issuer signed
    /// it, or the serialized answer of an opaque token.
    pub claims_b64: String,
    /// A fresh nonce for the client's `DPoP-Nonce` header (nonce-requiring tenants).
    pub dpop_nonce: Option<String>,
}

/// Where the claims of an identity are looked up.
#[derive(Debug, Clone)]
enum ClaimSet {
    /// A verified JWT's claims, shared with the verified-token cache (read in place: a
    /// Check builds no map of them).
    Jwt(Arc<VerifiedToken>),
    /// An opaque token's RFC 7662 answer, as JSON.
    Json(Map<String, Value>),
}

impl ClaimSet {
    /// The claim `name`, if present.
    fn get(&self, name: &str) -> Option<Value> {
        match self {
            Self::Jwt(t) => t.claims.get(name).map(ValueRef::to_json),
            Self::Json(m) => m.get(name).cloned(),
        }
    }
}

impl Identity {
    /// The identity of a token Validate accepted (`token` is the compact JWS it
    /// accepted): Introspect's field mapping of its claims, and its payload.
    pub fn from_validated(v: Validated, token: &str) -> Self {
        let answer = answer::fields_from_claims(v.claims(), v.tenant.id(), None);
        let claims_b64 = token.split('.').nth(1).unwrap_or_default().to_string();
        Self {
            answer,
            claims: ClaimSet::Jwt(v.token),
            claims_b64,
            dpop_nonce: v.dpop_nonce,
        }
    }

    /// The identity of an active introspection answer: its claims are the answer itself.
    pub fn from_answer(answer: Answer) -> Self {
        let claims = answer_json(&answer);
        let claims_b64 = URL_SAFE_NO_PAD.encode(Value::Object(claims.clone()).to_string());
        Self {
            answer,
            claims: ClaimSet::Json(claims),
            claims_b64,
            dpop_nonce: None,
        }
    }

    /// The header value of an answer field or claim; `None` when the token has none (or
    /// one that cannot be a header value).
    pub fn value(&self, source: &str) -> Option<String> {
        let a = &self.answer;
        let field = match source {
            "sub" => a.sub.clone(),
            "tenant" => a.tenant.clone(),
            "scope" => a.scope.clone(),
            "client_id" => a.client_id.clone(),
            "username" => a.username.clone(),
            "iss" => a.iss.clone(),
            "jti" => a.jti.clone(),
            "token_type" => a.token_type.clone(),
            "aud" => (!a.aud.is_empty()).then(|| a.aud.join(",")),
            "exp" => a.exp.map(|v| v.to_string()),
            "iat" => a.iat.map(|v| v.to_string()),
            "nbf" => a.nbf.map(|v| v.to_string()),
            other => self.claims.get(other).as_ref().and_then(claim_text),
        };
        field.filter(|v| is_header_value(v))
    }
}

/// A claim as header text: strings as they are, numbers and booleans in JSON, arrays of
/// those joined with `,`, objects as JSON.
fn claim_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(_) | Value::Number(_) | Value::Object(_) => Some(v.to_string()),
        Value::Array(items) => {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|i| match i {
                    Value::String(s) => Some(s.clone()),
                    Value::Bool(_) | Value::Number(_) => Some(i.to_string()),
                    _ => None,
                })
                .collect();
            Some(parts.map_or_else(|| v.to_string(), |p| p.join(",")))
        }
    }
}

/// Whether Envoy may send `v` as a header value: no control characters (a claim holding
/// CR or LF must never become a second header), not empty.
fn is_header_value(v: &str) -> bool {
    !v.is_empty() && !v.chars().any(|c| c.is_control() && c != '\t')
}

/// An RFC 7662 answer as its JSON object (what the provider said, `tenant` aside).
fn answer_json(a: &Answer) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("active".into(), Value::Bool(a.active));
    let strings = [
        ("scope", &a.scope),
        ("client_id", &a.client_id),
        ("username", &a.username),
        ("token_type", &a.token_type),
        ("sub", &a.sub),
        ("iss", &a.iss),
        ("jti", &a.jti),
    ];
    for (k, v) in strings {
        if let Some(v) = v {
            m.insert(k.into(), Value::String(v.clone()));
        }
    }
    for (k, v) in [("exp", a.exp), ("iat", a.iat), ("nbf", a.nbf)] {
        if let Some(v) = v {
            m.insert(k.into(), Value::from(v));
        }
    }
    if !a.aud.is_empty() {
        m.insert("aud".into(), Value::from(a.aud.clone()));
    }
    for (k, v) in &a.claims {
        m.entry(k.clone()).or_insert_with(|| v.clone());
    }
    m
}

fn header(name: &str, value: String) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: name.to_string(),
            value,
            raw_value: Vec::new(),
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

fn status(code: Code, message: &str) -> RpcStatus {
    RpcStatus {
        code: code as i32,
        message: message.to_string(),
        details: Vec::new(),
    }
}

fn string_value(s: &str) -> PValue {
    PValue {
        kind: Some(Kind::StringValue(s.to_string())),
    }
}

/// What the upstream request loses on allow besides the identity headers: the token
/// header (`strip_token`) and any header a client sent under a name that some
/// frameworks read as an identity header (`x_auth_subject` for `x-auth-subject`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removals {
    /// Header names to remove.
    pub extra: Vec<String>,
}

/// The allowed answer of an authenticated request.
pub fn allowed(id: &Identity, settings: &ExtAuthzSettings, removals: Removals) -> CheckResponse {
    let mut headers = Vec::with_capacity(settings.headers.len() + 1);
    let mut remove = removals.extra;
    for m in &settings.headers {
        match id.value(&m.source) {
            Some(v) => headers.push(header(&m.header, v)),
            None => remove.push(m.header.clone()),
        }
    }
    if let Some(name) = &settings.claims_header {
        headers.push(header(name, id.claims_b64.clone()));
    }
    CheckResponse {
        status: Some(status(Code::Ok, "")),
        dynamic_metadata: Some(metadata(&id.answer)),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers,
            headers_to_remove: remove,
            response_headers_to_add: id
                .dpop_nonce
                .iter()
                .map(|n| header(DPOP_NONCE_HEADER, n.clone()))
                .collect(),
            ..Default::default()
        })),
    }
}

/// The allowed answer of an anonymous request on an `allow_anonymous` route: no identity
/// header, every one of them removed.
pub fn anonymous(settings: &ExtAuthzSettings, removals: Removals) -> CheckResponse {
    let mut remove = removals.extra;
    remove.extend(settings.identity_headers().map(str::to_owned));
    CheckResponse {
        status: Some(status(Code::Ok, "")),
        dynamic_metadata: None,
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers_to_remove: remove,
            ..Default::default()
        })),
    }
}

/// `dynamic_metadata` of an allowed answer: `tenant`, `iss`, `sub`, `client_id`,
/// `scope`, `aud` (list), `exp` (number); absent values are left out.
pub fn metadata(a: &Answer) -> Struct {
    let mut fields = std::collections::BTreeMap::new();
    let strings = [
        ("tenant", &a.tenant),
        ("iss", &a.iss),
        ("sub", &a.sub),
        ("client_id", &a.client_id),
        ("scope", &a.scope),
    ];
    for (k, v) in strings {
        if let Some(v) = v {
            fields.insert(k.to_string(), string_value(v));
        }
    }
    fields.insert(
        "aud".to_string(),
        json_to_value(&Value::from(a.aud.clone())),
    );
    if let Some(exp) = a.exp {
        fields.insert("exp".to_string(), json_to_value(&Value::from(exp)));
    }
    Struct { fields }
}

/// Why a request is denied: one row of the deny table each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denial {
    /// No token, on a route that does not allow anonymous requests.
    NoToken,
    /// The token header is a bad request.
    BadRequest(TokenError),
    /// Validate rejected the token.
    Rejected(ErrorCode),
    /// The provider says the opaque token is not active.
    Inactive,
    /// The opaque token lacks a required scope.
    OpaqueScope,
    /// The opaque token's audiences include none the route accepts.
    OpaqueAudience,
    /// The introspection provider cannot answer.
    IntrospectionUnavailable,
    /// The route's settings cannot be honoured (a configuration error).
    Misconfigured,
}

/// The decision label of a check, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    /// Allowed with an identity.
    Allowed,
    /// Allowed without a token (`allow_anonymous`).
    Anonymous,
    /// 401.
    Unauthenticated,
    /// 403.
    Forbidden,
    /// 400.
    BadRequest,
    /// 503.
    Unavailable,
    /// 500: the route is misconfigured.
    Misconfigured,
}

impl Decision {
    /// Every decision, for metrics.
    pub const ALL: [Decision; 7] = [
        Decision::Allowed,
        Decision::Anonymous,
        Decision::Unauthenticated,
        Decision::Forbidden,
        Decision::BadRequest,
        Decision::Unavailable,
        Decision::Misconfigured,
    ];

    /// The `decision` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allowed => "allowed",
            Decision::Anonymous => "anonymous",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Forbidden => "forbidden",
            Decision::BadRequest => "bad_request",
            Decision::Unavailable => "unavailable",
            Decision::Misconfigured => "misconfigured",
        }
    }
}

impl Denial {
    /// Its decision label.
    pub fn decision(self) -> Decision {
        match self {
            Denial::Rejected(ErrorCode::InsufficientScope) | Denial::OpaqueScope => {
                Decision::Forbidden
            }
            Denial::Rejected(ErrorCode::KeysUnavailable | ErrorCode::StateUnavailable)
            | Denial::IntrospectionUnavailable => Decision::Unavailable,
            Denial::NoToken | Denial::Rejected(_) | Denial::Inactive | Denial::OpaqueAudience => {
                Decision::Unauthenticated
            }
            Denial::BadRequest(_) => Decision::BadRequest,
            Denial::Misconfigured => Decision::Misconfigured,
        }
    }

    /// HTTP status and gRPC code.
    pub fn statuses(self) -> (u16, Code) {
        match self.decision() {
            Decision::Forbidden => (403, Code::PermissionDenied),
            Decision::BadRequest => (400, Code::InvalidArgument),
            Decision::Unavailable => (503, Code::Unavailable),
            Decision::Misconfigured => (500, Code::Internal),
            _ => (401, Code::Unauthenticated),
        }
    }

    /// The body's `error` and `error_description` (never a claim value, never the token).
    pub fn body_fields(self) -> (&'static str, &'static str) {
        match self {
            Denial::NoToken => ("unauthorized", "missing_token"),
            Denial::BadRequest(e) => ("invalid_request", e.as_str()),
            Denial::Rejected(code @ (ErrorCode::KeysUnavailable | ErrorCode::StateUnavailable)) => {
                ("temporarily_unavailable", code.as_str())
            }
            Denial::Rejected(code) => match ChallengeError::of(code) {
                Some(e) => (e.as_str(), code.as_str()),
                None => ("invalid_token", code.as_str()),
            },
            Denial::Inactive => ("invalid_token", "inactive"),
            Denial::OpaqueScope => ("insufficient_scope", ErrorCode::InsufficientScope.as_str()),
            Denial::OpaqueAudience => ("invalid_token", ErrorCode::InvalidAudience.as_str()),
            Denial::IntrospectionUnavailable => {
                ("temporarily_unavailable", "introspection_unavailable")
            }
            Denial::Misconfigured => ("server_error", "configuration_error"),
        }
    }

    /// Whether the token itself was refused (a 401 or 403 with an error challenge), as
    /// opposed to a missing token, a bad request or the service's own trouble.
    pub fn is_token_refusal(self) -> bool {
        matches!(
            self.decision(),
            Decision::Unauthenticated | Decision::Forbidden
        ) && self != Denial::NoToken
    }

    /// The `WWW-Authenticate` value, when the row has one: RFC 9449's `DPoP` form with
    /// `dpop`'s algorithms when the client is to use DPoP.
    pub fn challenge(self, required_scopes: &[String], dpop: Option<&DpopHint>) -> Option<String> {
        let c = match self {
            Denial::NoToken => Challenge::bearer(),
            Denial::BadRequest(_) => Challenge::error(ChallengeError::InvalidRequest, None, &[]),
            Denial::Rejected(code) => Challenge::for_rejection(code, required_scopes)?,
            Denial::Inactive => {
                Challenge::error(ChallengeError::InvalidToken, Some("inactive"), &[])
            }
            Denial::OpaqueScope => {
                Challenge::for_rejection(ErrorCode::InsufficientScope, required_scopes)?
            }
            Denial::OpaqueAudience => {
                Challenge::for_rejection(ErrorCode::InvalidAudience, required_scopes)?
            }
            Denial::IntrospectionUnavailable | Denial::Misconfigured => return None,
        };
        let algs: Vec<&str> = dpop
            .map(|h| h.algorithms.iter().map(String::as_str).collect())
            .unwrap_or_default();
        Some(match dpop {
            Some(_) if self.is_token_refusal() => c.with_dpop(&algs).header_value(),
            _ => c.header_value(),
        })
    }
}

/// The denied answer; `tenant` (when known) goes into `dynamic_metadata` with the error,
/// for Envoy's access logs; `dpop` makes the challenge a `DPoP` one and brings its nonce.
pub fn denied(
    d: Denial,
    required_scopes: &[String],
    tenant: Option<&str>,
    dpop: Option<&DpopHint>,
) -> CheckResponse {
    let (http, code) = d.statuses();
    let (error, description) = d.body_fields();
    let body = serde_json::json!({"error": error, "error_description": description}).to_string();
    let mut headers = vec![
        header("cache-control", "no-store".to_string()),
        header("content-type", "application/json".to_string()),
    ];
    if let Some(c) = d.challenge(required_scopes, dpop) {
        headers.push(header("www-authenticate", c));
    }
    if let Some(nonce) = dpop.and_then(|h| h.nonce.as_ref()) {
        headers.push(header(DPOP_NONCE_HEADER, nonce.clone()));
    }
    let mut fields = std::collections::BTreeMap::new();
    fields.insert("error".to_string(), string_value(description));
    if let Some(t) = tenant {
        fields.insert("tenant".to_string(), string_value(t));
    }
    CheckResponse {
        status: Some(status(code, description)),
        dynamic_metadata: Some(Struct { fields }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: i32::from(http),
            }),
            headers,
            body,
        })),
    }
}
