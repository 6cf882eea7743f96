//! Parsing a `CheckRequest` once, at the boundary: the request headers (from
//! `attributes.request.http.headers`, or `header_map` when Envoy sends raw headers), the
//! `Bearer` or `DPoP` token in the configured header, what the client presented beside
//! it (DPoP proofs, method and URI, the peer certificate Envoy passes), and the route's
//! settings from `context_extensions` over the configured defaults.

use std::{borrow::Cow, collections::BTreeMap};

use crate::{
    config::ExtAuthzSettings,
    grpc::presentation::{dpop_header_proofs, request_uri},
    jwt::dpop::{Presentation, PresentationError, RawPresentation, Scheme},
};

use super::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest,
    attribute_context::{HttpRequest, Request as AttrRequest},
};

/// Most audiences or scopes a route may list (the bound Validate's request lists have).
pub const MAX_ROUTE_LIST: usize = crate::grpc::MAX_LIST_ENTRIES;
/// Longest tenant, audience or scope a route may name, in bytes (as for Validate).
pub const MAX_ROUTE_ENTRY_BYTES: usize = crate::grpc::MAX_ENTRY_BYTES;

/// A CheckRequest as Envoy's HTTP filter sends it for a `GET /` with `headers` (names in
/// lower case, in `attributes.request.http.headers`) on a route with
/// `context_extensions`: for tests, benchmarks and tools that speak to the service.
pub fn http_check_request(
    headers: &[(&str, &str)],
    context_extensions: &[(&str, &str)],
) -> CheckRequest {
    let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(AttrRequest {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    path: "/".into(),
                    headers: map(headers),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: map(context_extensions),
            ..Default::default()
        }),
    }
}

/// The request's HTTP attributes, if Envoy sent any.
pub fn http_request(req: &CheckRequest) -> Option<&HttpRequest> {
    req.attributes.as_ref()?.request.as_ref()?.http.as_ref()
}

/// One header looked up by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue<'a> {
    /// Not sent.
    Absent,
    /// Sent once.
    One(Cow<'a, str>),
    /// Sent more than once (seen separately in `header_map`).
    Repeated,
    /// Sent as bytes that are not UTF-8.
    NotUtf8,
}

/// Looks `name` (lower case) up in `headers`, else in `header_map`. Envoy lower-cases
/// header names in both; in `headers` it joins repeated headers with `,` into one value.
pub fn header<'a>(http: &'a HttpRequest, name: &str) -> HeaderValue<'a> {
    if let Some(v) = http.headers.get(name) {
        return HeaderValue::One(Cow::Borrowed(v));
    }
    let Some(map) = &http.header_map else {
        return HeaderValue::Absent;
    };
    let mut found = map
        .headers
        .iter()
        .filter(|h| h.key.eq_ignore_ascii_case(name));
    let Some(first) = found.next() else {
        return HeaderValue::Absent;
    };
    if found.next().is_some() {
        return HeaderValue::Repeated;
    }
    if !first.value.is_empty() || first.raw_value.is_empty() {
        return HeaderValue::One(Cow::Borrowed(&first.value));
    }
    match std::str::from_utf8(&first.raw_value) {
        Ok(s) => HeaderValue::One(Cow::Borrowed(s)),
        Err(_) => HeaderValue::NotUtf8,
    }
}

/// Every request header name, from both places Envoy may put them.
pub fn header_names(http: &HttpRequest) -> impl Iterator<Item = &str> {
    http.headers.keys().map(String::as_str).chain(
        http.header_map
            .iter()
            .flat_map(|m| m.headers.iter().map(|h| h.key.as_str())),
    )
}

/// Why the token header is a bad request (HTTP 400, `invalid_request`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenError {
    /// The header was sent more than once.
    Repeated,
    /// `Bearer` with nothing after it, or an empty header.
    Empty,
    /// Over `server.max_token_bytes`.
    TooLarge,
    /// A scheme other than `Bearer` or `DPoP`.
    WrongScheme,
    /// Characters outside RFC 6750's `b64token` (spaces, a `,` of two joined headers,
    /// bytes that are not UTF-8).
    Malformed,
    /// A `DPoP` token or proof on a request whose method or URI cannot be compared with
    /// a proof's `htm` and `htu` (no scheme or host, a target that is not a path).
    UnusableTarget,
}

impl TokenError {
    /// Its `error_description`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenError::Repeated => "repeated_token_header",
            TokenError::Empty => "empty_token",
            TokenError::TooLarge => "token_too_large",
            TokenError::WrongScheme => "unsupported_scheme",
            TokenError::Malformed => "malformed_token_header",
            TokenError::UnusableTarget => "unusable_request_target",
        }
    }
}

/// The scheme and token of a `Bearer <token>` or `DPoP <token>` header value (scheme
/// case-insensitive, RFC 6750 section 2.1 and RFC 9449 section 7.1), at most `limit`
/// bytes (exactly `limit` is accepted).
pub fn token_credentials(value: &str, limit: usize) -> Result<(Scheme, &str), TokenError> {
    let value = value.trim_matches([' ', '\t']);
    if value.is_empty() {
        return Err(TokenError::Empty);
    }
    let (name, rest) = value.split_once([' ', '\t']).unwrap_or((value, ""));
    let scheme = Scheme::parse(name).ok_or(TokenError::WrongScheme)?;
    let token = rest.trim_start_matches([' ', '\t']);
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    if token.len() > limit {
        return Err(TokenError::TooLarge);
    }
    if !is_b64token(token) {
        return Err(TokenError::Malformed);
    }
    Ok((scheme, token))
}

/// The `DPoP` request header's name, as Envoy lower-cases it.
pub const DPOP_HEADER: &str = "dpop";

/// Every DPoP proof the request carried: the `dpop` value of `headers` (where Envoy joins
/// repeated headers with `,`) split back into proofs, or each `dpop` entry of
/// `header_map`. Two or more are refused by the proof rules, never silently reduced.
pub fn dpop_proofs(http: &HttpRequest) -> Vec<String> {
    if let Some(v) = http.headers.get(DPOP_HEADER) {
        return dpop_header_proofs(v);
    }
    http.header_map
        .iter()
        .flat_map(|m| m.headers.iter())
        .filter(|h| h.key.eq_ignore_ascii_case(DPOP_HEADER))
        .flat_map(|h| {
            if h.value.is_empty() {
                dpop_header_proofs(&String::from_utf8_lossy(&h.raw_value))
            } else {
                dpop_header_proofs(&h.value)
            }
        })
        .collect()
}

/// The URL-encoded PEM of the client's certificate, when Envoy's listener terminated
/// mutual TLS and the filter sets `include_peer_certificate`.
pub fn peer_certificate(req: &CheckRequest) -> Option<&str> {
    let pem = &req.attributes.as_ref()?.source.as_ref()?.certificate;
    (!pem.is_empty()).then_some(pem.as_str())
}

/// What the client presented beside its token, as the core's binding rules read it: the
/// scheme, the DPoP proofs, the DER of its certificate, and, when a proof is to be
/// checked, the method and the URI it sent (`scheme://host/path` from Envoy's HTTP
/// attributes: the `:authority` or `Host` the client sent, never a forwarded host).
pub fn presentation(
    http: Option<&HttpRequest>,
    scheme: Scheme,
    certificate_der: &[u8],
) -> Result<Presentation, PresentationError> {
    let proofs = http.map(dpop_proofs).unwrap_or_default();
    let (method, uri) = match http {
        Some(h) if scheme == Scheme::Dpop || !proofs.is_empty() => {
            (h.method.as_str(), request_uri(&h.scheme, &h.host, &h.path))
        }
        _ => ("", String::new()),
    };
    RawPresentation {
        scheme: "",
        token_scheme: Some(scheme),
        proofs: &proofs,
        method,
        uri: &uri,
        certificate_der,
        certificate_sha256: "",
    }
    .parse()
}

/// `b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="`.
fn is_b64token(s: &str) -> bool {
    let body = s.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

/// A route's settings: `context_extensions` over the `ext_authz:` defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// The tenant that must accept the token; `None`: routed by `iss`.
    pub tenant: Option<&'a str>,
    /// Accepted audiences; empty: the tenant's.
    pub audiences: Cow<'a, [String]>,
    /// Scopes that must all be granted.
    pub required_scopes: Vec<String>,
    /// Let a request without any token through, without identity headers.
    pub allow_anonymous: bool,
}

/// A route whose `context_extensions` cannot be honoured: a configuration error of the
/// route (HTTP 500), never a reason to allow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// `tenant` names no configured tenant.
    #[error("context extension `tenant` names tenant `{0}`, which is not configured")]
    UnknownTenant(String),
    /// `allow_anonymous` is neither `true` nor `false`.
    #[error("context extension `allow_anonymous` must be \"true\" or \"false\"")]
    BadAnonymous,
    /// A list is longer than [`MAX_ROUTE_LIST`].
    #[error("context extension `{0}` lists more than {MAX_ROUTE_LIST} values")]
    TooMany(&'static str),
    /// A tenant or list entry is longer than [`MAX_ROUTE_ENTRY_BYTES`].
    #[error("context extension `{0}` has a value longer than {MAX_ROUTE_ENTRY_BYTES} bytes")]
    TooLong(&'static str),
}

/// Splits a comma- or space-separated list.
fn list(key: &'static str, raw: &str, separators: &[char]) -> Result<Vec<String>, RouteError> {
    let items: Vec<String> = raw
        .split(separators)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if items.len() > MAX_ROUTE_LIST {
        return Err(RouteError::TooMany(key));
    }
    if items.iter().any(|i| i.len() > MAX_ROUTE_ENTRY_BYTES) {
        return Err(RouteError::TooLong(key));
    }
    Ok(items)
}

/// The route's settings. `is_tenant` says whether a tenant id is configured. Keys other
/// than the four EXT_AUTHZ.md names are ignored (meshes add their own).
pub fn route<'a>(
    ext: &'a BTreeMap<String, String>,
    defaults: &'a ExtAuthzSettings,
    is_tenant: impl Fn(&str) -> bool,
) -> Result<Route<'a>, RouteError> {
    let tenant = match ext
        .get("tenant")
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
    {
        Some(t) if t.len() > MAX_ROUTE_ENTRY_BYTES => return Err(RouteError::TooLong("tenant")),
        Some(t) if !is_tenant(t) => return Err(RouteError::UnknownTenant(t.to_string())),
        Some(t) => Some(t),
        None => defaults.tenant.as_deref(),
    };
    let audiences = match ext.get("audiences") {
        Some(raw) if !raw.trim().is_empty() => {
            Cow::Owned(list("audiences", raw, &[',', ' ', '\t'])?)
        }
        _ => Cow::Borrowed(&defaults.audiences[..]),
    };
    let required_scopes = match ext.get("required_scopes") {
        Some(raw) => list("required_scopes", raw, &[' ', '\t'])?,
        None => Vec::new(),
    };
    let allow_anonymous = match ext.get("allow_anonymous").map(|s| s.trim()) {
        None | Some("") => false,
        Some(v) if v.eq_ignore_ascii_case("true") => true,
        Some(v) if v.eq_ignore_ascii_case("false") => false,
        Some(_) => return Err(RouteError::BadAnonymous),
    };
    Ok(Route {
        tenant,
        audiences,
        required_scopes,
        allow_anonymous,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::grpc::ext_authz::pb::envoy::config::core::v3::{HeaderMap, HeaderValue as PbHeader};

    fn bearer_token(value: &str, limit: usize) -> Result<&str, TokenError> {
        match token_credentials(value, limit)? {
            (Scheme::Bearer, t) => Ok(t),
            (Scheme::Dpop, _) => Err(TokenError::WrongScheme),
        }
    }

    #[test]
    fn bearer_tokens() {
        assert_eq!(
            bearer_token("Bearer abc.def-_~+/==", 64),
            Ok("abc.def-_~+/==")
        );
        assert_eq!(
            bearer_token("bEaReR   abc", 64),
            Ok("abc"),
            "scheme is case-insensitive"
        );
        assert_eq!(
            bearer_token("Bearer abc", 3),
            Ok("abc"),
            "exactly the limit"
        );
        assert_eq!(bearer_token("Bearer abcd", 3), Err(TokenError::TooLarge));
        assert_eq!(bearer_token("Bearer", 64), Err(TokenError::Empty));
        assert_eq!(bearer_token("Bearer  ", 64), Err(TokenError::Empty));
        assert_eq!(bearer_token("", 64), Err(TokenError::Empty));
        assert_eq!(
            bearer_token("Basic dXNlcjpwdw==", 64),
            Err(TokenError::WrongScheme)
        );
        assert_eq!(
            bearer_token("abc.def.ghi", 64),
            Err(TokenError::WrongScheme)
        );
        assert_eq!(
            token_credentials("dpop  abc.def", 64),
            Ok((Scheme::Dpop, "abc.def"))
        );
        assert_eq!(token_credentials("DPoP", 64), Err(TokenError::Empty));
        assert_eq!(
            token_credentials("DPoPabc", 64),
            Err(TokenError::WrongScheme)
        );
        assert_eq!(
            bearer_token("Bearer a.b.c,Bearer d.e.f", 64),
            Err(TokenError::Malformed),
            "two headers joined by Envoy"
        );
        assert_eq!(bearer_token("Bearer a b", 64), Err(TokenError::Malformed));
        assert_eq!(bearer_token("Bearer ===", 64), Err(TokenError::Malformed));
        assert_eq!(bearer_token("Bearer a=b", 64), Err(TokenError::Malformed));
    }

    fn http(headers: &[(&str, &str)], raw: &[(&str, &[u8])]) -> HttpRequest {
        HttpRequest {
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            header_map: (!raw.is_empty()).then(|| HeaderMap {
                headers: raw
                    .iter()
                    .map(|(k, v)| PbHeader {
                        key: k.to_string(),
                        value: String::new(),
                        raw_value: v.to_vec(),
                    })
                    .collect(),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn headers_from_either_place() {
        let h = http(&[("authorization", "Bearer x")], &[]);
        assert_eq!(
            header(&h, "authorization"),
            HeaderValue::One("Bearer x".into())
        );
        assert_eq!(header(&h, "x-other"), HeaderValue::Absent);
        let raw = http(&[], &[("authorization", b"Bearer y"), ("x-a", b"1")]);
        assert_eq!(
            header(&raw, "authorization"),
            HeaderValue::One("Bearer y".into())
        );
        let twice = http(
            &[],
            &[
                ("authorization", b"Bearer y"),
                ("authorization", b"Bearer z"),
            ],
        );
        assert_eq!(header(&twice, "authorization"), HeaderValue::Repeated);
        let bad = http(&[], &[("authorization", b"Bearer \xff")]);
        assert_eq!(header(&bad, "authorization"), HeaderValue::NotUtf8);
        let names: Vec<&str> = header_names(&raw).collect();
        assert_eq!(names, ["authorization", "x-a"]);
    }

    fn ext(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn routes_override_the_defaults() {
        let defaults = ExtAuthzSettings {
            tenant: Some("main".into()),
            audiences: vec!["api".into()],
            ..Default::default()
        };
        let known = |t: &str| matches!(t, "main" | "other");
        let empty = ext(&[]);
        let r = route(&empty, &defaults, known).expect("route");
        assert_eq!(r.tenant, Some("main"));
        assert_eq!(&r.audiences[..], ["api".to_string()]);
        assert!(r.required_scopes.is_empty());
        assert!(!r.allow_anonymous);

        let e = ext(&[
            ("tenant", "other"),
            ("audiences", "a1, a2 a3"),
            ("required_scopes", "read  write"),
            ("allow_anonymous", "TRUE"),
            ("istio-something", "ignored"),
        ]);
        let r = route(&e, &defaults, known).expect("route");
        assert_eq!(r.tenant, Some("other"));
        assert_eq!(&r.audiences[..], ["a1", "a2", "a3"].map(String::from));
        assert_eq!(r.required_scopes, ["read", "write"].map(String::from));
        assert!(r.allow_anonymous);
    }

    #[test]
    fn bad_routes_are_configuration_errors() {
        let d = ExtAuthzSettings::default();
        let known = |t: &str| t == "main";
        let e = ext(&[("tenant", "nope")]);
        assert_eq!(
            route(&e, &d, known),
            Err(RouteError::UnknownTenant("nope".into()))
        );
        let e = ext(&[("allow_anonymous", "yes")]);
        assert_eq!(route(&e, &d, known), Err(RouteError::BadAnonymous));
        let many = vec!["s"; MAX_ROUTE_LIST + 1].join(" ");
        let e = ext(&[("required_scopes", many.as_str())]);
        assert_eq!(
            route(&e, &d, known),
            Err(RouteError::TooMany("required_scopes"))
        );
        let exactly = vec!["s"; MAX_ROUTE_LIST].join(" ");
        let e = ext(&[("required_scopes", exactly.as_str())]);
        assert!(route(&e, &d, known).is_ok());
        let long = "a".repeat(MAX_ROUTE_ENTRY_BYTES + 1);
        for key in ["tenant", "audiences", "required_scopes"] {
            let e = ext(&[(key, long.as_str())]);
            assert_eq!(route(&e, &d, known), Err(RouteError::TooLong(key)), "{key}");
        }
        let longest = "a".repeat(MAX_ROUTE_ENTRY_BYTES);
        let e = ext(&[("required_scopes", longest.as_str())]);
        assert!(route(&e, &d, known).is_ok());
    }
}
