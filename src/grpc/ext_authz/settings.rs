//! The resolved `ext_authz:` settings the adapter works from (EXT_AUTHZ.md), with their
//! defaults as named constants.

/// Default request header that holds `Bearer <token>`.
pub const DEFAULT_TOKEN_HEADER: &str = "authorization";
/// Default upstream header with every claim as base64url JSON.
pub const DEFAULT_CLAIMS_HEADER: &str = "x-auth-claims";
/// Default identity headers: answer field or claim name -> upstream header.
pub const DEFAULT_HEADERS: [(&str, &str); 4] = [
    ("sub", "x-auth-subject"),
    ("tenant", "x-auth-tenant"),
    ("scope", "x-auth-scope"),
    ("client_id", "x-auth-client-id"),
];

/// One identity header: the answer field or claim it carries, and its (lower-case) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderMapping {
    /// An answer field (`sub`, `tenant`, `scope`, `client_id`, `iss`, `aud`, `exp`, ...)
    /// or a claim name.
    pub source: String,
    /// The upstream header, lower case.
    pub header: String,
}

/// The `ext_authz:` section, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzSettings {
    /// Serve `envoy.service.auth.v3.Authorization` on `server.listen`.
    pub enabled: bool,
    /// Tenant used when the route names none; `None`: route by the token's `iss`.
    pub tenant: Option<String>,
    /// Audiences used when the route names none; empty: the tenant's.
    pub audiences: Vec<String>,
    /// Request header holding `Bearer <token>`, lower case.
    pub token_header: String,
    /// Remove the token header from the request sent upstream on allow.
    pub strip_token: bool,
    /// Identity headers set on allow, in configuration order.
    pub headers: Vec<HeaderMapping>,
    /// Upstream header with every claim as base64url JSON; `None`: off.
    pub claims_header: Option<String>,
}

impl Default for ExtAuthzSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            tenant: None,
            audiences: Vec::new(),
            token_header: DEFAULT_TOKEN_HEADER.to_string(),
            strip_token: false,
            headers: DEFAULT_HEADERS
                .iter()
                .map(|(source, header)| HeaderMapping {
                    source: (*source).to_string(),
                    header: (*header).to_string(),
                })
                .collect(),
            claims_header: Some(DEFAULT_CLAIMS_HEADER.to_string()),
        }
    }
}

impl ExtAuthzSettings {
    /// Every header name introspectd sets on allow (identity headers, then the claims
    /// header): the names a client must never be able to supply itself.
    pub fn identity_headers(&self) -> impl Iterator<Item = &str> {
        self.headers
            .iter()
            .map(|h| h.header.as_str())
            .chain(self.claims_header.as_deref())
    }
}
