//! The `ext_authz:` section (EXT_AUTHZ.md): Envoy external authorization on
//! `server.listen`. Defaults are named constants; validation names the offending key.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::ConfigError;

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

/// `ext_authz:` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of ext_authz keys"
)]
pub(super) struct ExtAuthzFile {
    enabled: Option<bool>,
    tenant: Option<String>,
    audiences: Option<Vec<String>>,
    token_header: Option<String>,
    strip_token: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
    claims_header: Option<String>,
}

/// A header name as Envoy may set it on a request: an RFC 9110 token, lower-cased; never
/// a pseudo-header or `host` (Envoy refuses to change those).
fn header_name(key: &str, value: &str) -> Result<String, ConfigError> {
    let name = value.trim().to_ascii_lowercase();
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if name.is_empty() || !name.bytes().all(token) {
        return Err(ConfigError::new(
            key,
            format!("`{value}` is not an HTTP header name"),
        ));
    }
    if name == "host" {
        return Err(ConfigError::new(
            key,
            "Envoy does not let ext_authz change `host`",
        ));
    }
    Ok(name)
}

/// Resolves the section; `is_tenant` says whether a tenant id is configured.
pub(super) fn resolve(
    raw: ExtAuthzFile,
    is_tenant: &dyn Fn(&str) -> bool,
) -> Result<ExtAuthzSettings, ConfigError> {
    let defaults = ExtAuthzSettings::default();
    let tenant = raw.tenant.filter(|t| !t.trim().is_empty());
    if let Some(t) = &tenant
        && !is_tenant(t)
    {
        return Err(ConfigError::new(
            "ext_authz.tenant",
            format!("tenant `{t}` is not configured"),
        ));
    }
    let audiences = raw.audiences.unwrap_or_default();
    if let Some(i) = audiences.iter().position(|a| a.trim().is_empty()) {
        return Err(ConfigError::new(
            format!("ext_authz.audiences[{i}]"),
            "must not be empty",
        ));
    }
    let token_header = match raw.token_header {
        Some(h) => header_name("ext_authz.token_header", &h)?,
        None => defaults.token_header,
    };
    let headers = match raw.headers {
        None => defaults.headers,
        Some(map) => {
            let mut out = Vec::with_capacity(map.len());
            for (source, header) in map.into_iter().filter(|(_, h)| !h.trim().is_empty()) {
                let key = format!("ext_authz.headers.{source}");
                let header = header_name(&key, &header)?;
                out.push(HeaderMapping { source, header });
            }
            out
        }
    };
    let claims_header = match raw.claims_header {
        None => defaults.claims_header,
        Some(h) if h.trim().is_empty() => None,
        Some(h) => Some(header_name("ext_authz.claims_header", &h)?),
    };
    let settings = ExtAuthzSettings {
        enabled: raw.enabled.unwrap_or(defaults.enabled),
        tenant,
        audiences,
        token_header,
        strip_token: raw.strip_token.unwrap_or(defaults.strip_token),
        headers,
        claims_header,
    };
    check_distinct(&settings)?;
    Ok(settings)
}

/// No two identity headers share a name, and none is the token header (setting it would
/// overwrite the token the upstream may need, or hand it a second one).
fn check_distinct(s: &ExtAuthzSettings) -> Result<(), ConfigError> {
    let mut seen: Vec<&str> = Vec::new();
    for (key, name) in s
        .headers
        .iter()
        .map(|h| (format!("ext_authz.headers.{}", h.source), h.header.as_str()))
        .chain(
            s.claims_header
                .as_deref()
                .map(|c| ("ext_authz.claims_header".to_string(), c)),
        )
    {
        if name == s.token_header {
            return Err(ConfigError::new(
                key,
                format!("`{name}` is the token header (ext_authz.token_header)"),
            ));
        }
        if seen.contains(&name) {
            return Err(ConfigError::new(
                key,
                format!("header `{name}` is already set for another field"),
            ));
        }
        seen.push(name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<ExtAuthzSettings, ConfigError> {
        let raw: ExtAuthzFile = serde_yaml_ng::from_str(yaml).expect("yaml");
        resolve(raw, &|t| t == "main")
    }

    #[test]
    fn defaults_are_the_contract() {
        let s = resolve(ExtAuthzFile::default(), &|_| false).expect("defaults");
        assert_eq!(s, ExtAuthzSettings::default());
        assert!(s.enabled && !s.strip_token && s.tenant.is_none() && s.audiences.is_empty());
        assert_eq!(s.token_header, "authorization");
        assert_eq!(s.claims_header.as_deref(), Some("x-auth-claims"));
        let pairs: Vec<(&str, &str)> = s
            .headers
            .iter()
            .map(|h| (h.source.as_str(), h.header.as_str()))
            .collect();
        assert_eq!(pairs, DEFAULT_HEADERS);
    }

    #[test]
    fn configured_values() {
        let s = load(
            "{enabled: false, tenant: main, audiences: [api], token_header: X-Token, strip_token: true,\n headers: {email: X-Auth-Email, sub: ''}, claims_header: ''}",
        )
        .expect("settings");
        assert!(!s.enabled && s.strip_token);
        assert_eq!(s.tenant.as_deref(), Some("main"));
        assert_eq!(s.token_header, "x-token");
        assert_eq!(
            s.headers,
            [HeaderMapping {
                source: "email".into(),
                header: "x-auth-email".into()
            }],
            "an empty value drops a mapping; names are lower-cased"
        );
        assert_eq!(s.claims_header, None);
    }

    #[test]
    fn errors_name_the_key() {
        let key = |yaml: &str| load(yaml).expect_err(yaml).key;
        assert_eq!(key("{tenant: nope}"), "ext_authz.tenant");
        assert_eq!(key("{audiences: ['']}"), "ext_authz.audiences[0]");
        assert_eq!(
            key("{token_header: 'bad header'}"),
            "ext_authz.token_header"
        );
        assert_eq!(key("{headers: {sub: ':path'}}"), "ext_authz.headers.sub");
        assert_eq!(key("{headers: {sub: Host}}"), "ext_authz.headers.sub");
        assert_eq!(
            key("{headers: {sub: authorization}}"),
            "ext_authz.headers.sub"
        );
        assert_eq!(key("{headers: {a: x-a, b: x-a}}"), "ext_authz.headers.b");
        assert_eq!(
            key("{claims_header: x-auth-subject}"),
            "ext_authz.claims_header"
        );
        let unknown: Result<ExtAuthzFile, _> = serde_yaml_ng::from_str("{nope: 1}");
        assert!(unknown.is_err(), "unknown keys are refused");
    }
}
