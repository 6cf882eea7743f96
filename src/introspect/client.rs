//! The HTTP side of introspection: where the endpoints are (configuration, else the
//! tenant's discovery metadata), how the client authenticates (RFC 6749 2.3.1 Basic with
//! form-urlencoded id and secret, the form body, or a bearer token), the RFC 7662 2.1
//! request itself, and the classification of every upstream outcome into an answer, an
//! outage or a configuration fault.

use std::{fmt, sync::Arc, time::Duration};

use base64::Engine as _;
use http::HeaderValue;
use serde_json::Value;
use url::Url;

use super::answer::{self, Answer};
use crate::{
    config::Secret,
    registry::{KeySetState, Metadata},
    upstream::{self, FetchError, HttpClient, Reply},
};

/// Why an upstream call did not produce an answer. `reason` is terse and safe to return
/// to callers; `detail` is the full cause, for logs. Neither holds a token or a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The provider could not answer: timeout, connection, 5xx, a malformed answer, or
    /// metadata not known yet.
    Unavailable {
        /// For callers.
        reason: String,
        /// For logs.
        detail: String,
    },
    /// The provider refused introspectd's client credentials, or the configuration
    /// names no endpoint: an operator has to act.
    Configuration {
        /// For callers and logs.
        reason: String,
    },
}

impl Failure {
    /// An outage with the same text for callers and logs.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        let reason = reason.into();
        Self::Unavailable {
            detail: reason.clone(),
            reason,
        }
    }

    /// A configuration fault.
    pub fn configuration(reason: impl Into<String>) -> Self {
        Self::Configuration {
            reason: reason.into(),
        }
    }

    /// The failure with every appearance of `token` in its texts replaced (a provider
    /// may echo it in an `error` code, which the texts quote).
    pub fn without_token(self, token: &str) -> Self {
        let scrub = |mut text: String| {
            if token.len() >= answer::MIN_ECHO_SEARCH_BYTES {
                // Each pass shortens the text, so this ends.
                while text.contains(token) {
                    text = text.replace(token, "[token]");
                }
            }
            text
        };
        match self {
            Self::Unavailable { reason, detail } => Self::Unavailable {
                reason: scrub(reason),
                detail: scrub(detail),
            },
            Self::Configuration { reason } => Self::Configuration {
                reason: scrub(reason),
            },
        }
    }

    /// A failed HTTP exchange, `what` naming the endpoint ("introspection endpoint").
    pub fn fetch(what: &str, err: &FetchError) -> Self {
        Self::Unavailable {
            reason: format!("{what}: {}", err.category()),
            detail: format!("{what}: {err}"),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unavailable { detail, .. } => f.write_str(detail),
            Self::Configuration { reason } => f.write_str(reason),
        }
    }
}

/// The HTTP client of introspection: it never follows a redirect. A 307 or 308 would
/// re-send the POST body, the token (and in `client_secret_post` the secret), to
/// wherever the redirect points; a redirect is answered as an upstream fault instead.
pub fn http_client() -> Result<HttpClient, FetchError> {
    HttpClient::new(upstream::Redirects::Never)
}

/// Form-urlencodes bytes (`application/x-www-form-urlencoded`, space as `+`).
pub fn form_encode(bytes: &[u8]) -> String {
    url::form_urlencoded::byte_serialize(bytes).collect()
}

/// `Basic base64(urlencode(id) ":" urlencode(secret))`, as RFC 6749 2.3.1 requires (a
/// colon or non-ASCII byte in either part would otherwise break the pair).
pub fn basic_authorization(client_id: &str, secret: &[u8]) -> String {
    let pair = format!(
        "{}:{}",
        form_encode(client_id.as_bytes()),
        form_encode(secret)
    );
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A header value that the HTTP stack treats as sensitive (never logged or indexed).
pub fn sensitive_header(value: &str) -> Result<HeaderValue, Failure> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| Failure::configuration("the credential cannot be sent in an HTTP header"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// An endpoint: configured, else a member of the tenant's discovery metadata.
#[derive(Clone)]
pub struct Endpoint {
    /// Name for messages ("introspection endpoint").
    pub what: &'static str,
    /// Configuration key that sets it, for messages.
    pub key: &'static str,
    /// The configured address.
    pub configured: Option<String>,
    /// The key set whose metadata may name it.
    pub key_set: Option<Arc<KeySetState>>,
    /// Which metadata member names it.
    pub from_metadata: fn(&Metadata) -> Option<&str>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("what", &self.what)
            .field("configured", &self.configured)
            .field("key_set", &self.key_set.as_ref().map(|k| k.id.to_string()))
            .finish()
    }
}

impl Endpoint {
    /// The address to call. When it comes from metadata that the start-up fetch has not
    /// delivered yet, waits for that fetch at most `timeout`.
    pub async fn resolve(&self, timeout: Duration, require_https: bool) -> Result<Url, Failure> {
        let refused = |e: FetchError| Failure::configuration(format!("{}: {e}", self.what));
        if let Some(url) = &self.configured {
            return upstream::check_url(url, require_https).map_err(refused);
        }
        let Some(ks) = &self.key_set else {
            return Err(Failure::configuration(format!(
                "no {} is configured ({}) and the tenant has no discovery metadata",
                self.what, self.key
            )));
        };
        if ks.metadata().is_none() && !ks.refresh.first_done() {
            let _ = tokio::time::timeout(timeout, ks.refresh.wait_first()).await;
        }
        let Some(metadata) = ks.metadata() else {
            return Err(Failure::unavailable(format!(
                "{}: the provider's metadata could not be fetched yet",
                self.what
            )));
        };
        match (self.from_metadata)(&metadata) {
            Some(url) => upstream::check_url(url, require_https).map_err(refused),
            None => Err(Failure::configuration(format!(
                "no {} is configured ({}) and the provider's metadata names none",
                self.what, self.key
            ))),
        }
    }
}

/// How one request authenticates the client.
pub enum ClientAuth<'a> {
    /// HTTP Basic with the form-urlencoded pair.
    Basic {
        /// Client id.
        client_id: &'a str,
        /// Client secret.
        secret: &'a Secret,
    },
    /// `client_id` and `client_secret` in the form body.
    Post {
        /// Client id.
        client_id: &'a str,
        /// Client secret.
        secret: &'a Secret,
    },
    /// `Authorization: Bearer`.
    Bearer(&'a str),
}

impl fmt::Debug for ClientAuth<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The secret redacts itself; the bearer token is a credential too.
        match self {
            Self::Basic { client_id, secret } => f
                .debug_struct("Basic")
                .field("client_id", client_id)
                .field("secret", secret)
                .finish(),
            Self::Post { client_id, secret } => f
                .debug_struct("Post")
                .field("client_id", client_id)
                .field("secret", secret)
                .finish(),
            Self::Bearer(_) => f.write_str("Bearer([redacted])"),
        }
    }
}

/// Builds a form body from pairs (values as bytes, so a secret is never copied into an
/// intermediate `String` other than the body itself).
pub fn form_body(pairs: &[(&str, &[u8])]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", form_encode(k.as_bytes()), form_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// POSTs a form with client authentication; returns the status and the body (every
/// status is returned: the caller classifies it).
pub async fn post_form(
    http: &HttpClient,
    url: Url,
    pairs: &[(&str, &[u8])],
    auth: &ClientAuth<'_>,
    timeout: Duration,
    what: &str,
) -> Result<Reply, Failure> {
    let mut pairs = pairs.to_vec();
    let authorization = match auth {
        ClientAuth::Basic { client_id, secret } => Some(sensitive_header(&basic_authorization(
            client_id,
            secret.expose(),
        ))?),
        ClientAuth::Post { client_id, secret } => {
            pairs.push(("client_id", client_id.as_bytes()));
            pairs.push(("client_secret", secret.expose()));
            None
        }
        ClientAuth::Bearer(token) => Some(sensitive_header(&format!("Bearer {token}"))?),
    };
    http.post_form(url, authorization, form_body(&pairs), timeout)
        .await
        .map_err(|e| Failure::fetch(what, &e))
}

/// The OAuth `error` code of a 4xx body, when it is a plain identifier.
pub fn oauth_error(body: &[u8]) -> Option<String> {
    let doc: Value = serde_json::from_slice(body).ok()?;
    let code = doc.get("error")?.as_str()?;
    let plain = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    plain.then(|| code.to_string())
}

/// True for the statuses that mean "your client credentials are bad": 401, 403, and 400
/// with `invalid_client` (RFC 6749 5.2).
pub fn credentials_refused(status: u16, body: &[u8]) -> bool {
    match status {
        401 | 403 => true,
        400 => oauth_error(body).as_deref() == Some("invalid_client"),
        _ => false,
    }
}

/// The answer to introspecting `token`: [`interpret`], without anything that echoes the
/// token ([`Answer::without_token`], [`Failure::without_token`]).
pub fn answer_for(token: &str, status: u16, body: &[u8], tenant: &str) -> Result<Answer, Failure> {
    interpret(status, body, tenant)
        .map(|a| a.without_token(token))
        .map_err(|f| f.without_token(token))
}

/// Classifies an introspection endpoint's reply (a 401 on the bearer path has already
/// been retried): a 2xx with an RFC 7662 answer, a configuration fault, or an outage.
pub fn interpret(status: u16, body: &[u8], tenant: &str) -> Result<Answer, Failure> {
    const WHAT: &str = "introspection endpoint";
    if (200..300).contains(&status) {
        let doc = upstream::parse_json(body).map_err(|e| Failure::fetch(WHAT, &e))?;
        return answer::from_upstream(doc, tenant)
            .map_err(|e| Failure::fetch(WHAT, &FetchError::Invalid(e.to_string())));
    }
    if credentials_refused(status, body) {
        let code = oauth_error(body)
            .map(|c| format!(" {c}"))
            .unwrap_or_default();
        return Err(Failure::configuration(format!(
            "{WHAT} refused introspectd's client credentials (HTTP {status}{code})"
        )));
    }
    Err(Failure::fetch(WHAT, &FetchError::Status(status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_urlencodes_before_base64() {
        // RFC 6749 2.3.1: the id and secret are application/x-www-form-urlencoded first.
        let h = basic_authorization("my client:1", "p@ss:w/rd+é".as_bytes());
        let encoded = h.strip_prefix("Basic ").expect("scheme");
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        assert_eq!(decoded, b"my+client%3A1:p%40ss%3Aw%2Frd%2B%C3%A9");
        assert_eq!(
            basic_authorization("a", b"b"),
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode("a:b")
            )
        );
    }

    #[test]
    fn form_bodies_are_encoded() {
        assert_eq!(
            form_body(&[("token", b"a b&c=d"), ("token_type_hint", b"access_token")]),
            "token=a+b%26c%3Dd&token_type_hint=access_token"
        );
    }

    #[test]
    fn sensitive_headers_are_marked_and_redacted() {
        let v = sensitive_header("Bearer abc").expect("header");
        assert!(v.is_sensitive());
        assert!(!format!("{v:?}").contains("abc"));
        assert!(sensitive_header("bad\nvalue").is_err());
    }

    #[test]
    fn redirects_are_faults() {
        assert!(matches!(
            interpret(307, b"", "t"),
            Err(Failure::Unavailable { .. })
        ));
        assert!(matches!(
            interpret(302, b"", "t"),
            Err(Failure::Unavailable { .. })
        ));
    }

    #[test]
    fn reply_classification() {
        let ok = interpret(200, br#"{"active":true,"sub":"s"}"#, "t").expect("answer");
        assert!(ok.active);
        assert_eq!(ok.sub.as_deref(), Some("s"));
        assert!(matches!(
            interpret(200, b"<html>", "t"),
            Err(Failure::Unavailable { .. })
        ));
        assert!(matches!(
            interpret(200, br#"{"sub":"s"}"#, "t"),
            Err(Failure::Unavailable { .. })
        ));
        assert!(matches!(
            interpret(500, b"", "t"),
            Err(Failure::Unavailable { .. })
        ));
        assert!(matches!(
            interpret(503, b"", "t"),
            Err(Failure::Unavailable { .. })
        ));
        assert!(matches!(
            interpret(404, b"", "t"),
            Err(Failure::Unavailable { .. })
        ));
        assert!(matches!(
            interpret(400, br#"{"error":"invalid_request"}"#, "t"),
            Err(Failure::Unavailable { .. })
        ));
        for (status, body) in [
            (400, &br#"{"error":"invalid_client"}"#[..]),
            (401, b""),
            (403, b""),
        ] {
            let err = interpret(status, body, "t").expect_err("refused");
            assert!(matches!(err, Failure::Configuration { .. }), "{status}");
        }
    }

    #[test]
    fn a_refusal_never_quotes_the_token() {
        let token = "Zx0123456789abcdefToken";
        let body = format!(r#"{{"error":"{token}"}}"#);
        let err = answer_for(token, 401, body.as_bytes(), "t").expect_err("refused");
        let shown = format!("{err} {err:?}");
        assert!(!shown.contains(token), "{shown}");
        assert!(shown.contains("[token]"), "{shown}");
        assert!(
            interpret(401, body.as_bytes(), "t")
                .expect_err("refused")
                .to_string()
                .contains(token),
            "the plain code is quoted otherwise"
        );
    }

    #[test]
    fn oauth_error_codes_are_only_echoed_when_plain() {
        assert_eq!(
            oauth_error(br#"{"error":"invalid_client"}"#).as_deref(),
            Some("invalid_client")
        );
        assert_eq!(oauth_error(br#"{"error":"<script>"}"#), None);
        assert_eq!(oauth_error(b"nope"), None);
    }
}
