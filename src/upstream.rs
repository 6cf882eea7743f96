//! Upstream HTTP: every call introspectd makes to another server (discovery documents,
//! JWKS, RFC 7662 introspection, client-credentials tokens) goes through the clients
//! built here: rustls on aws-lc-rs (never native TLS), a connect timeout and a
//! per-request timeout, a body cap of [`MAX_BODY_BYTES`], and a redirect policy chosen
//! per client ([`Redirects`]). The only module that knows reqwest; a new kind of
//! upstream call is a method here, used by the module that needs it.

use std::time::Duration;

use http::{
    HeaderValue,
    header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE},
};
use reqwest::redirect;
use serde_json::Value;
use url::Url;

/// Largest response body read, in bytes.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// Most redirects followed.
pub const MAX_REDIRECTS: usize = 5;

/// Why a fetch failed; the message never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No answer within the timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Could not connect or the connection broke.
    #[error("connection failed: {0}")]
    Connect(String),
    /// A non-success status.
    #[error("HTTP status {0}")]
    Status(u16),
    /// The body exceeded [`MAX_BODY_BYTES`].
    #[error("response body exceeds {MAX_BODY_BYTES} bytes")]
    TooLarge,
    /// The body is not JSON (or not a JSON object).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// A discovery document declares another issuer than the configured one.
    #[error("metadata issuer `{declared}` is not the configured `{expected}`")]
    IssuerMismatch {
        /// What the document says.
        declared: String,
        /// What the configuration says.
        expected: String,
    },
    /// The body is JSON, but not the document expected (a member missing, no usable
    /// key).
    #[error("invalid document: {0}")]
    Invalid(String),
    /// A URL that policy forbids (http while https is required, bad scheme).
    #[error("refused URL: {0}")]
    Insecure(String),
    /// Another replica of the fleet held the turn to fetch, and its fetch failed (or
    /// did not finish in time); this replica did not call the upstream itself.
    #[error("the fleet's fetch failed: {0}")]
    Fleet(String),
    /// A local file (`jwks_file`) could not be read.
    #[error("cannot read {0}")]
    File(String),
}

impl FetchError {
    /// What callers may see of this failure: a category (`timeout`, `http 503`,
    /// `invalid json`, `issuer mismatch`, ...), never a URL, a path or an error chain.
    /// The full error (its `Display`) is for the log.
    pub fn category(&self) -> String {
        match self {
            Self::Timeout(_) => "timeout".into(),
            Self::Connect(_) => "connection failed".into(),
            Self::Status(s) => format!("http {s}"),
            Self::TooLarge => "too large".into(),
            Self::Json(_) => "invalid json".into(),
            Self::IssuerMismatch { .. } => "issuer mismatch".into(),
            Self::Invalid(_) => "invalid document".into(),
            Self::Insecure(_) => "url refused".into(),
            Self::File(_) => "file unreadable".into(),
            Self::Fleet(_) => "another replica's fetch failed".into(),
        }
    }
}

/// Which redirects a client follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redirects {
    /// Up to [`MAX_REDIRECTS`], never from https to http (GETs of public documents:
    /// discovery and JWKS).
    NoDowngrade,
    /// None: a redirect is answered as it came. For POSTs that carry a token or a
    /// secret, which a 307 or 308 would re-send to wherever it points.
    Never,
}

impl Redirects {
    fn policy(self) -> redirect::Policy {
        match self {
            Redirects::Never => redirect::Policy::none(),
            Redirects::NoDowngrade => redirect::Policy::custom(|attempt| {
                if attempt.previous().len() >= MAX_REDIRECTS {
                    return attempt.error("too many redirects");
                }
                let downgrade = attempt.url().scheme() == "http"
                    && attempt.previous().iter().any(|u| u.scheme() == "https");
                if downgrade {
                    attempt.error("redirect from https to http refused")
                } else {
                    attempt.follow()
                }
            }),
        }
    }
}

/// Bound on establishing a connection (the request timeout bounds the whole exchange).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an idle pooled connection is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// An upstream HTTP client (cheap to clone).
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

/// A reply whose status the caller classifies itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// The body, at most [`MAX_BODY_BYTES`].
    pub body: Vec<u8>,
    /// `Retry-After` in its delta-seconds form (an HTTP-date is ignored), capped at
    /// [`MAX_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
}

/// Longest `Retry-After` honoured: a provider cannot silence a client for longer.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// The `Retry-After` delay of a response, when given in seconds.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER))
}

/// Checks a URL against the https policy.
pub fn check_url(url: &str, require_https: bool) -> Result<Url, FetchError> {
    let parsed = Url::parse(url).map_err(|e| FetchError::Insecure(format!("not a URL ({e})")))?;
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if !require_https => Ok(parsed),
        "http" => Err(FetchError::Insecure(format!("{url} is not https"))),
        other => Err(FetchError::Insecure(format!(
            "scheme {other} is not http(s)"
        ))),
    }
}

impl HttpClient {
    /// Builds a client that follows `redirects`.
    pub fn new(redirects: Redirects) -> Result<Self, FetchError> {
        let client = reqwest::Client::builder()
            .redirect(redirects.policy())
            .user_agent(concat!("introspectd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(CONNECT_TIMEOUT)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build()
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        Ok(Self { client })
    }

    /// GETs a JSON object.
    pub async fn get_json(
        &self,
        url: &str,
        timeout: Duration,
        require_https: bool,
    ) -> Result<Value, FetchError> {
        let url = check_url(url, require_https)?;
        let req = self
            .client
            .get(url)
            .header("accept", "application/json")
            .timeout(timeout);
        let reply = send_capped(req, timeout, |_| false).await?;
        parse_json(&reply.body)
    }

    /// POSTs a form (`body` already encoded), with an `Authorization` header when given
    /// (mark it sensitive); every status is returned for the caller to classify.
    pub async fn post_form(
        &self,
        url: Url,
        authorization: Option<HeaderValue>,
        body: String,
        timeout: Duration,
    ) -> Result<Reply, FetchError> {
        let mut req = self
            .client
            .post(url)
            .header(ACCEPT, "application/json")
            .header(CONTENT_TYPE, FORM)
            .timeout(timeout);
        if let Some(value) = authorization {
            req = req.header(AUTHORIZATION, value);
        }
        send_capped(req.body(body), timeout, |_| true).await
    }
}

/// `Content-Type` of RFC 7662 and RFC 6749 requests.
const FORM: &str = "application/x-www-form-urlencoded";

/// Parses a JSON body that must be an object.
pub fn parse_json(body: &[u8]) -> Result<Value, FetchError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| FetchError::Json(e.to_string()))?;
    if !v.is_object() {
        return Err(FetchError::Json("not an object".into()));
    }
    Ok(v)
}

fn classify(e: &reqwest::Error, timeout: Duration) -> FetchError {
    if e.is_timeout() {
        FetchError::Timeout(timeout)
    } else if e.is_redirect() {
        FetchError::Insecure(e.to_string())
    } else {
        // reqwest's Display names the URL but never a header or body.
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        FetchError::Connect(msg)
    }
}

/// Sends a request and reads at most [`MAX_BODY_BYTES`] of the body, all within
/// `timeout`. Non-2xx statuses are errors, except those `accept_status` allows.
async fn send_capped(
    req: reqwest::RequestBuilder,
    timeout: Duration,
    accept_status: impl Fn(u16) -> bool,
) -> Result<Reply, FetchError> {
    let work = async {
        let mut resp = req.send().await.map_err(|e| classify(&e, timeout))?;
        let status = resp.status().as_u16();
        let retry_after = retry_after(resp.headers());
        if !resp.status().is_success() && !accept_status(status) {
            return Err(FetchError::Status(status));
        }
        if resp
            .content_length()
            .is_some_and(|l| l > MAX_BODY_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| classify(&e, timeout))? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Reply {
            status,
            body,
            retry_after,
        })
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}

#[cfg(test)]
mod category_tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_is_read_and_capped() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(reqwest::header::RETRY_AFTER, " 7 ".parse().expect("value"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "86400".parse().expect("value"),
        );
        assert_eq!(retry_after(&h), Some(MAX_RETRY_AFTER));
        h.insert(
            reqwest::header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().expect("value"),
        );
        assert_eq!(retry_after(&h), None, "HTTP-dates are not honoured");
    }

    #[test]
    fn categories_hold_no_url_path_or_cause() {
        let cases = [
            (FetchError::Timeout(Duration::from_secs(5)), "timeout"),
            (
                FetchError::Connect("tcp connect error: http://10.0.0.1/x".into()),
                "connection failed",
            ),
            (FetchError::Status(503), "http 503"),
            (FetchError::TooLarge, "too large"),
            (
                FetchError::Json("expected value at line 1".into()),
                "invalid json",
            ),
            (
                FetchError::IssuerMismatch {
                    declared: "https://evil".into(),
                    expected: "https://good".into(),
                },
                "issuer mismatch",
            ),
            (
                FetchError::Invalid("no jwks_uri".into()),
                "invalid document",
            ),
            (
                FetchError::Insecure("http://x is not https".into()),
                "url refused",
            ),
            (
                FetchError::File("/etc/secret/keys.json: denied".into()),
                "file unreadable",
            ),
        ];
        for (err, want) in cases {
            assert_eq!(err.category(), want, "{err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::{
        Router,
        http::{StatusCode, header::LOCATION},
        routing::{get, post},
    };

    use super::*;

    async fn server() -> SocketAddr {
        let app = Router::new()
            .route(
                "/doc",
                get(|| async { axum::Json(serde_json::json!({"ok": true})) }),
            )
            .route(
                "/moved",
                get(|| async { (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, "/doc")]) }),
            )
            .route(
                "/loop",
                get(|| async { (StatusCode::FOUND, [(LOCATION, "/loop")]) }),
            )
            .route("/big", get(|| async { vec![b' '; MAX_BODY_BYTES + 1] }))
            .route(
                "/form",
                post(|| async { (StatusCode::TEMPORARY_REDIRECT, [(LOCATION, "/doc")]) }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        addr
    }

    const T: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn documents_follow_redirects_within_limits() {
        let addr = server().await;
        let http = HttpClient::new(Redirects::NoDowngrade).unwrap();
        let doc = http
            .get_json(&format!("http://{addr}/moved"), T, false)
            .await
            .unwrap();
        assert_eq!(doc["ok"], true);
        let err = http
            .get_json(&format!("http://{addr}/loop"), T, false)
            .await
            .unwrap_err();
        assert!(matches!(err, FetchError::Insecure(_)), "{err}");
        let err = http
            .get_json(&format!("http://{addr}/big"), T, false)
            .await
            .unwrap_err();
        assert_eq!(err, FetchError::TooLarge);
        let err = http
            .get_json(&format!("http://{addr}/doc"), T, true)
            .await
            .unwrap_err();
        assert!(
            matches!(err, FetchError::Insecure(_)),
            "http refused: {err}"
        );
    }

    #[tokio::test]
    async fn a_client_that_never_redirects_returns_the_redirect() {
        let addr = server().await;
        let http = HttpClient::new(Redirects::Never).unwrap();
        let url = Url::parse(&format!("http://{addr}/form")).unwrap();
        let reply = http.post_form(url, None, "a=b".into(), T).await.unwrap();
        assert_eq!(reply.status, 307, "not followed");
    }
}
