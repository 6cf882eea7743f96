//! The client-credentials access token used in `bearer` mode: fetched from the token
//! endpoint (RFC 6749 4.4, client authenticated with HTTP Basic), cached, renewed when
//! less than the smaller of 60 s and 10 % of its lifetime remains (the pure
//! [`renew_at`]), single-flight (concurrent callers share one token request), and
//! replaced once when the introspection endpoint rejects it.
//!
//! Nothing a caller sends makes more token requests than that: after a failed token
//! request no other is made before the backoff ([`token_backoff`], or the provider's
//! `Retry-After` when longer) has passed (callers meanwhile get the last failure at once), and a token obtained because the previous
//! one was rejected, and rejected in turn before it was ever accepted, is not replaced
//! again within [`REJECTION_RENEWAL_COOLDOWN`].

use std::{
    fmt,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use futures::{
    FutureExt as _,
    future::{BoxFuture, Shared},
};
use serde_json::Value;
use tokio::time::Instant;
use tracing::{Instrument as _, debug, info_span};

use super::client::{self, ClientAuth, Endpoint, Failure};
use crate::{
    config::Secret,
    upstream::{self, FetchError, HttpClient},
};

/// Longest a renewal margin gets, whatever the token's lifetime.
pub const MAX_RENEWAL_MARGIN: Duration = Duration::from_secs(60);
/// Wait after the first failed token request; it doubles with each further failure.
pub const MIN_TOKEN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest wait between token requests while they fail.
pub const MAX_TOKEN_BACKOFF: Duration = Duration::from_secs(60);
/// After a rejected token was replaced and the replacement was rejected before ever being
/// accepted, no further replacement for this long: the endpoint refuses this client.
pub const REJECTION_RENEWAL_COOLDOWN: Duration = Duration::from_secs(30);

/// How long no token request is made after `failures` consecutive failed ones:
/// 1 s, doubling, at most [`MAX_TOKEN_BACKOFF`].
pub fn token_backoff(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    MIN_TOKEN_BACKOFF
        .saturating_mul(1u32 << doublings)
        .min(MAX_TOKEN_BACKOFF)
}
/// Lifetime assumed when the token endpoint's answer has no `expires_in`.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// How long before its expiry a token of `lifetime` is renewed: min(60 s, lifetime / 10).
pub fn renewal_margin(lifetime: Duration) -> Duration {
    MAX_RENEWAL_MARGIN.min(lifetime / 10)
}

/// When a token obtained at `obtained` with `lifetime` is renewed.
pub fn renew_at(obtained: Instant, lifetime: Duration) -> Instant {
    obtained + lifetime.saturating_sub(renewal_margin(lifetime))
}

/// A client-credentials access token. Its `Debug` never shows the value.
pub struct AccessToken {
    value: String,
    /// Which token request produced it (increasing).
    pub generation: u64,
    /// From then on, callers ask for a new one.
    pub renew_at: Instant,
    /// From then on, it is not used at all.
    pub expires_at: Instant,
}

impl AccessToken {
    /// The token, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.value
    }
}

impl fmt::Debug for AccessToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessToken")
            .field("value", &"[redacted]")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

type Flight = Shared<BoxFuture<'static, Result<Arc<AccessToken>, Failure>>>;

#[derive(Default)]
struct State {
    current: Option<Arc<AccessToken>>,
    flight: Option<Flight>,
    generation: u64,
    /// After a failed token request, no token request before this.
    retry_after: Option<Instant>,
    /// Consecutive failed token requests.
    failures: u32,
    /// What the last failed token request said, returned while backing off.
    last_failure: Option<Failure>,
    /// The newest generation the introspection endpoint accepted.
    proven: u64,
    /// The generation fetched to replace a rejected token, and when.
    rejection_renewal: Option<(u64, Instant)>,
}

impl State {
    /// The last failure, while token requests are backing off.
    fn backing_off(&self, now: Instant) -> Option<Failure> {
        let until = self.retry_after?;
        (now < until).then(|| {
            self.last_failure.clone().unwrap_or_else(|| {
                Failure::unavailable("token endpoint: backing off after a failure")
            })
        })
    }
}

struct Inner {
    tenant: String,
    client_id: String,
    secret: Secret,
    scope: Option<String>,
    endpoint: Endpoint,
    http: HttpClient,
    timeout: Duration,
    require_https: bool,
    state: Mutex<State>,
}

/// The cached client-credentials token of one tenant (cheap to clone).
#[derive(Clone)]
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("tenant", &self.inner.tenant)
            .field("client_id", &self.inner.client_id)
            .field("secret", &self.inner.secret)
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

/// What a [`ClientCredentials`] needs (`Debug` shows no secret: [`Secret`] redacts).
#[derive(Debug)]
pub struct ClientCredentialsConfig {
    /// Tenant id, for logs.
    pub tenant: String,
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub secret: Secret,
    /// Scope to request, if any.
    pub scope: Option<String>,
    /// The token endpoint.
    pub endpoint: Endpoint,
    /// Timeout of one token request.
    pub timeout: Duration,
    /// Endpoints only over https.
    pub require_https: bool,
}

impl ClientCredentials {
    /// A token source; nothing is fetched until the first [`ClientCredentials::get`].
    pub fn new(config: ClientCredentialsConfig, http: HttpClient) -> Self {
        Self {
            inner: Arc::new(Inner {
                tenant: config.tenant,
                client_id: config.client_id,
                secret: config.secret,
                scope: config.scope,
                endpoint: config.endpoint,
                http,
                timeout: config.timeout,
                require_https: config.require_https,
                state: Mutex::new(State::default()),
            }),
        }
    }

    /// A usable token. One due for renewal but not expired is returned at once while a
    /// renewal runs in the background; with no usable token, the caller waits for the
    /// token request in flight, or starts it. While token requests back off after a
    /// failure, no request is made: the last failure is returned at once.
    pub async fn get(&self) -> Result<Arc<AccessToken>, Failure> {
        let flight = {
            let mut state = self.inner.lock();
            let now = Instant::now();
            let backing_off = state.backing_off(now);
            if let Some(t) = state.current.clone() {
                if now < t.renew_at {
                    return Ok(t);
                }
                if now < t.expires_at {
                    if backing_off.is_none() {
                        // Not awaited: the request runs in its own task.
                        let _renewal = self.flight(&mut state);
                    }
                    return Ok(t);
                }
            }
            if let Some(failure) = backing_off {
                return Err(failure);
            }
            self.flight(&mut state)
        };
        flight.await
    }

    /// The introspection endpoint accepted `token`: a later rejection of it is a
    /// revocation worth one renewal, not a sign that this client is refused.
    pub fn accepted(&self, token: &AccessToken) {
        let mut state = self.inner.lock();
        state.proven = state.proven.max(token.generation);
    }

    /// The provider rejected `rejected`: returns a newer token, fetching one unless a
    /// newer one already exists or is being fetched (so N callers rejected at once make
    /// one token request). A replacement that was itself rejected before ever being
    /// accepted is not replaced again within [`REJECTION_RENEWAL_COOLDOWN`].
    pub async fn renew_rejected(
        &self,
        rejected: &AccessToken,
    ) -> Result<Arc<AccessToken>, Failure> {
        let flight = {
            let mut state = self.inner.lock();
            let now = Instant::now();
            match &state.current {
                Some(t) if t.generation > rejected.generation && now < t.expires_at => {
                    return Ok(t.clone());
                }
                Some(t) if t.generation == rejected.generation => {
                    let futile = state.rejection_renewal.is_some_and(|(g, at)| {
                        g == rejected.generation
                            && state.proven < g
                            && now < at + REJECTION_RENEWAL_COOLDOWN
                    });
                    if futile {
                        return Err(Failure::configuration(format!(
                            "introspection endpoint rejects introspectd's client token even when just issued; next renewal in at most {}s",
                            REJECTION_RENEWAL_COOLDOWN.as_secs()
                        )));
                    }
                    state.current = None;
                }
                _ => {}
            }
            if let Some(failure) = state.backing_off(now) {
                return Err(failure);
            }
            let joined = state.flight.is_some();
            let flight = self.flight(&mut state);
            if !joined {
                state.rejection_renewal = Some((state.generation, now));
            }
            flight
        };
        flight.await
    }

    /// The token request in flight, or a new one. Runs in its own task, so it completes
    /// (bounded by the timeout) and is cached even if every caller gives up.
    fn flight(&self, state: &mut State) -> Flight {
        if let Some(f) = &state.flight {
            return f.clone();
        }
        state.generation += 1;
        let generation = state.generation;
        let inner = self.inner.clone();
        let span = info_span!("client_credentials", tenant = %inner.tenant, generation);
        let task = tokio::spawn(
            async move {
                let result = inner.fetch(generation).await.map(Arc::new);
                let mut state = inner.lock();
                match &result {
                    Ok(t) => {
                        state.current = Some(t.clone());
                        state.retry_after = None;
                        state.failures = 0;
                        state.last_failure = None;
                    }
                    Err(r) => {
                        state.failures = state.failures.saturating_add(1);
                        // The provider's Retry-After when longer than our own backoff.
                        let wait =
                            token_backoff(state.failures).max(r.retry_after.unwrap_or_default());
                        state.retry_after = Some(Instant::now() + wait);
                        state.last_failure = Some(r.failure.clone());
                    }
                }
                state.flight = None;
                result.map_err(|r| r.failure)
            }
            .instrument(span),
        );
        let flight = async move {
            task.await.unwrap_or_else(|e| {
                Err(Failure::unavailable(format!(
                    "token request task failed: {e}"
                )))
            })
        }
        .boxed()
        .shared();
        state.flight = Some(flight.clone());
        flight
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn fetch(&self, generation: u64) -> Result<AccessToken, Refusal> {
        const WHAT: &str = "token endpoint";
        let url = self
            .endpoint
            .resolve(self.timeout, self.require_https)
            .await?;
        let mut pairs: Vec<(&str, &[u8])> = vec![("grant_type", b"client_credentials")];
        if let Some(scope) = &self.scope {
            pairs.push(("scope", scope.as_bytes()));
        }
        let auth = ClientAuth::Basic {
            client_id: &self.client_id,
            secret: &self.secret,
        };
        let started = Instant::now();
        let reply = client::post_form(&self.http, url, &pairs, &auth, self.timeout, WHAT).await?;
        let status = reply.status;
        if !(200..300).contains(&status) {
            let failure = if (400..500).contains(&status) && !matches!(status, 408 | 429) {
                let code = client::oauth_error(&reply.body)
                    .map(|c| format!(" {c}"))
                    .unwrap_or_default();
                Failure::configuration(format!(
                    "{WHAT} refused the client-credentials grant (HTTP {status}{code})"
                ))
            } else {
                Failure::fetch(WHAT, &FetchError::Status(status))
            };
            return Err(Refusal {
                failure,
                retry_after: reply.retry_after,
            });
        }
        let (value, lifetime) = parse_token_response(&reply.body).map_err(|e| match e {
            TokenResponseError::Malformed(m) => Failure::Unavailable {
                reason: format!("{WHAT}: invalid document"),
                detail: format!("{WHAT}: malformed answer ({m})"),
            },
            TokenResponseError::NotBearer(t) => Failure::configuration(format!(
                "{WHAT} issued a `{t}` token; only Bearer tokens can be used"
            )),
        })?;
        debug!(lifetime = ?lifetime, "client-credentials token obtained");
        Ok(AccessToken {
            value,
            generation,
            renew_at: renew_at(started, lifetime),
            expires_at: started + lifetime,
        })
    }
}

/// A failed token request, with the provider's `Retry-After` when it sent one.
struct Refusal {
    failure: Failure,
    retry_after: Option<Duration>,
}

impl From<Failure> for Refusal {
    fn from(failure: Failure) -> Self {
        Self {
            failure,
            retry_after: None,
        }
    }
}

/// Why a token endpoint's answer is unusable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenResponseError {
    /// Not the JSON of RFC 6749 5.1.
    Malformed(String),
    /// A `token_type` other than Bearer (sanitised).
    NotBearer(String),
}

/// Reads an RFC 6749 5.1 answer: `access_token`, `token_type` Bearer (case-insensitive;
/// absent is accepted), `expires_in` in seconds (a number, or a numeric string as some
/// providers send; absent: [`DEFAULT_TOKEN_LIFETIME`]).
pub fn parse_token_response(body: &[u8]) -> Result<(String, Duration), TokenResponseError> {
    let doc =
        upstream::parse_json(body).map_err(|e| TokenResponseError::Malformed(e.to_string()))?;
    let token = match doc.get("access_token") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        _ => return Err(TokenResponseError::Malformed("no access_token".into())),
    };
    match doc.get("token_type") {
        None => {}
        Some(Value::String(t)) if t.eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(t)) => return Err(TokenResponseError::NotBearer(crate::jwt::echo(t))),
        Some(_) => {
            return Err(TokenResponseError::Malformed(
                "token_type is not a string".into(),
            ));
        }
    }
    let secs = match doc.get("expires_in") {
        None => None,
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    let lifetime = match secs {
        None if doc.get("expires_in").is_none() => DEFAULT_TOKEN_LIFETIME,
        Some(s) if s.is_finite() && s >= 0.0 => Duration::from_secs_f64(s.min(365.0 * 86400.0)),
        _ => {
            return Err(TokenResponseError::Malformed(
                "expires_in is not a number of seconds".into(),
            ));
        }
    };
    Ok((token, lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_margin_is_the_smaller_of_60s_and_a_tenth() {
        assert_eq!(
            renewal_margin(Duration::from_secs(3600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            renewal_margin(Duration::from_secs(600)),
            Duration::from_secs(60)
        );
        assert_eq!(
            renewal_margin(Duration::from_secs(300)),
            Duration::from_secs(30)
        );
        assert_eq!(
            renewal_margin(Duration::from_secs(10)),
            Duration::from_secs(1)
        );
        assert_eq!(renewal_margin(Duration::ZERO), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn renew_at_is_before_expiry_by_the_margin() {
        let t0 = Instant::now();
        assert_eq!(
            renew_at(t0, Duration::from_secs(3600)),
            t0 + Duration::from_secs(3540)
        );
        assert_eq!(
            renew_at(t0, Duration::from_secs(100)),
            t0 + Duration::from_secs(90)
        );
        assert_eq!(renew_at(t0, Duration::ZERO), t0);
    }

    #[test]
    fn token_backoff_doubles_from_one_second_to_a_minute() {
        let secs: Vec<u64> = [1, 2, 3, 4, 6, 7, 8, 100, u32::MAX]
            .iter()
            .map(|n| token_backoff(*n).as_secs())
            .collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 32, 60, 60, 60, 60]);
        assert_eq!(token_backoff(0), MIN_TOKEN_BACKOFF);
    }

    #[test]
    fn token_responses() {
        let (t, l) = parse_token_response(
            br#"{"access_token":"abc","token_type":"bearer","expires_in":3600}"#,
        )
        .expect("ok");
        assert_eq!((t.as_str(), l), ("abc", Duration::from_secs(3600)));
        let (_, l) = parse_token_response(br#"{"access_token":"abc","expires_in":"120"}"#)
            .expect("string seconds");
        assert_eq!(l, Duration::from_secs(120));
        let (_, l) = parse_token_response(br#"{"access_token":"abc"}"#).expect("no expires_in");
        assert_eq!(l, DEFAULT_TOKEN_LIFETIME);
        assert!(matches!(
            parse_token_response(br#"{"access_token":"abc","token_type":"DPoP"}"#),
            Err(TokenResponseError::NotBearer(_))
        ));
        for bad in [
            &b"nope"[..],
            br#"{"token_type":"Bearer"}"#,
            br#"{"access_token":""}"#,
            br#"{"access_token":"a","expires_in":-5}"#,
            br#"{"access_token":"a","expires_in":"soon"}"#,
        ] {
            assert!(
                matches!(
                    parse_token_response(bad),
                    Err(TokenResponseError::Malformed(_))
                ),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn access_tokens_are_redacted() {
        let t = AccessToken {
            value: "very-secret-token".into(),
            generation: 1,
            renew_at: Instant::now(),
            expires_at: Instant::now(),
        };
        assert!(!format!("{t:?}").contains("very-secret"));
    }
}
