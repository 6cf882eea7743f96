//! The one HTTP client for metadata, keys and introspection: rustls, a timeout per
//! request, a body-size cap, and no redirect that downgrades https to http.

use std::time::Duration;

use reqwest::redirect;
use serde_json::Value;

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
    /// The body is not the JSON expected.
    #[error("invalid document: {0}")]
    Invalid(String),
    /// A URL that policy forbids (http while https is required, bad scheme).
    #[error("refused URL: {0}")]
    Insecure(String),
    /// Another replica of the fleet held the turn to fetch, and its fetch failed (or
    /// did not finish in time).
    #[error("the fleet's fetch failed: {0}")]
    Fleet(String),
}

/// A shared HTTP client (cheap to clone).
#[derive(Debug, Clone)]
pub struct HttpClient {
    client: reqwest::Client,
}

/// Checks a URL against the https policy.
pub fn check_url(url: &str, require_https: bool) -> Result<reqwest::Url, FetchError> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| FetchError::Insecure(format!("not a URL ({e})")))?;
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
    /// Builds the client.
    pub fn new() -> Result<Self, FetchError> {
        let policy = redirect::Policy::custom(|attempt| {
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
        });
        let client = reqwest::Client::builder()
            .redirect(policy)
            .user_agent(concat!("introspectd/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .map_err(|e| FetchError::Connect(e.to_string()))?;
        Ok(Self { client })
    }

    /// The underlying client, for callers that build their own requests.
    pub fn inner(&self) -> &reqwest::Client {
        &self.client
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
        let (_, body) = send_capped(req, timeout).await?;
        parse_json(&body)
    }
}

/// Parses a JSON body that must be an object.
pub fn parse_json(body: &[u8]) -> Result<Value, FetchError> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| FetchError::Invalid(format!("not JSON ({e})")))?;
    if !v.is_object() {
        return Err(FetchError::Invalid("not a JSON object".into()));
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

/// Sends a request and reads at most [`MAX_BODY_BYTES`] of a success body; returns the
/// status and the body. Non-2xx statuses are errors, except those `accept_status` allows.
pub async fn send_capped(
    req: reqwest::RequestBuilder,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), FetchError> {
    send_capped_with(req, timeout, |_| false).await
}

/// Like [`send_capped`], with statuses the caller handles itself (e.g. 401).
pub async fn send_capped_with(
    req: reqwest::RequestBuilder,
    timeout: Duration,
    accept_status: impl Fn(u16) -> bool,
) -> Result<(u16, Vec<u8>), FetchError> {
    let work = async {
        let mut resp = req.send().await.map_err(|e| classify(&e, timeout))?;
        let status = resp.status().as_u16();
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
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| FetchError::Timeout(timeout))?
}
