//! Metadata and keys from the network (or a JWKS file): OpenID Connect discovery with the
//! issuer check, JWKS fetching with limits, the pure refresh schedule, and the refresher
//! loop that keeps the last good keys when a fetch fails.

pub mod coordinated;
mod schedule;

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde_json::Value;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, debug, info, info_span, warn};

pub use coordinated::Obtained;
pub use schedule::{MAX_BACKOFF, MIN_BACKOFF, next_refresh};

use crate::{
    keys::KeySet,
    registry::{KeySetState, Metadata, RefreshKind, Registry, Source},
    upstream::{self, FetchError, HttpClient},
};

/// How often a `jwks_file` is checked for changes (at most; `refresh_interval` if shorter).
pub const JWKS_FILE_POLL: Duration = Duration::from_secs(5);

/// Hook for metrics: called after every fetch with the key set, outcome and key count.
pub type FetchObserver = Arc<dyn Fn(&KeySetState, Result<usize, &FetchError>) + Send + Sync>;

/// True when `declared` is the older Azure AD B2C issuer form of `configured` for
/// `policy`: same scheme and host, path `/tfp/{tenant}/{policy}/v2.0/` (policy compared
/// case-insensitively, as B2C does).
pub fn is_b2c_tfp_issuer(declared: &str, configured: &str, policy: &str) -> bool {
    let (Ok(d), Ok(c)) = (url::Url::parse(declared), url::Url::parse(configured)) else {
        return false;
    };
    if d.scheme() != c.scheme() || d.host_str() != c.host_str() || d.port() != c.port() {
        return false;
    }
    let segments: Vec<&str> = d.path().trim_matches('/').split('/').collect();
    matches!(segments.as_slice(), ["tfp", tenant, p, "v2.0"] if !tenant.is_empty() && p.eq_ignore_ascii_case(policy))
}

/// Fetches and checks a discovery document: its `issuer` must be `expected_issuer`, or,
/// for a B2C policy, the `/tfp/` form of it for that policy.
pub async fn fetch_metadata(
    http: &HttpClient,
    url: &str,
    expected_issuer: &str,
    policy: Option<&str>,
    timeout: Duration,
    require_https: bool,
) -> Result<Metadata, FetchError> {
    let doc = http.get_json(url, timeout, require_https).await?;
    parse_metadata(&doc, expected_issuer, policy, require_https)
}

/// Checks a discovery document (fetched, or published by another replica; already
/// parsed as a JSON object): its `issuer` must be `expected_issuer`, or, for a B2C
/// policy, the `/tfp/` form of it for that policy; its `jwks_uri` must pass the https
/// policy.
pub fn parse_metadata(
    doc: &Value,
    expected_issuer: &str,
    policy: Option<&str>,
    require_https: bool,
) -> Result<Metadata, FetchError> {
    let field = |name: &str| doc.get(name).and_then(Value::as_str).map(str::to_owned);
    let issuer = field("issuer").ok_or_else(|| FetchError::Invalid("no issuer".into()))?;
    let tfp_form = policy.is_some_and(|p| is_b2c_tfp_issuer(&issuer, expected_issuer, p));
    if issuer != expected_issuer && !tfp_form {
        return Err(FetchError::IssuerMismatch {
            declared: issuer,
            expected: expected_issuer.to_string(),
        });
    }
    let jwks_uri = field("jwks_uri").ok_or_else(|| FetchError::Invalid("no jwks_uri".into()))?;
    upstream::check_url(&jwks_uri, require_https)?;
    Ok(Metadata {
        issuer,
        jwks_uri,
        introspection_endpoint: field("introspection_endpoint"),
        token_endpoint: field("token_endpoint"),
    })
}

/// Fetches the JWKS document of a key set: discovery first (unless `kind` is keys-only
/// and metadata is known), then the JWKS; or reads the JWKS file.
async fn fetch_document(
    http: &HttpClient,
    state: &KeySetState,
    kind: RefreshKind,
) -> Result<Value, FetchError> {
    let timeout = state.settings.fetch_timeout;
    let https = state.settings.require_https;
    match &state.source {
        Source::Static => Err(FetchError::Invalid(
            "static key sets are not fetched".into(),
        )),
        Source::JwksFile { path } => {
            let bytes = tokio::fs::read(path)
                .await
                .map_err(|e| FetchError::File(format!("{}: {e}", path.display())))?;
            if bytes.len() > upstream::MAX_BODY_BYTES {
                return Err(FetchError::TooLarge);
            }
            upstream::parse_json(&bytes)
        }
        Source::Discovery { metadata_url } => {
            let known = state.metadata();
            let metadata = match (kind, known) {
                (RefreshKind::KeysOnly, Some(m)) => m,
                _ => {
                    let m = fetch_metadata(
                        http,
                        metadata_url,
                        &state.issuer,
                        state.id.policy.as_deref(),
                        timeout,
                        https,
                    )
                    .await?;
                    state.set_metadata(m.clone());
                    Arc::new(m)
                }
            };
            http.get_json(&metadata.jwks_uri, timeout, https).await
        }
    }
}

/// Ingests a JWKS document into a key set under the key set's hygiene rules; returns
/// it with a description of the keys skipped.
fn ingest(state: &KeySetState, doc: &Value) -> Result<(KeySet, String), FetchError> {
    let (set, skipped) = KeySet::from_jwks(doc, &state.ingest_options())
        .map_err(|e| FetchError::Invalid(e.to_string()))?;
    Ok((set, Registry::describe_skipped(&skipped)))
}

/// Starts one refresher per refreshable key set on `tasks`; they stop when `cancel`
/// fires.
pub fn spawn_refreshers(
    registry: &Registry,
    http: &HttpClient,
    tasks: &TaskTracker,
    cancel: &CancellationToken,
    observer: Option<FetchObserver>,
) {
    for state in registry.key_sets() {
        if !state.refresh.is_refreshable() {
            continue;
        }
        let span = info_span!("refresher", key_set = %state.id, issuer = %state.issuer);
        let fut = run_refresher(
            registry.clone(),
            http.clone(),
            state,
            cancel.clone(),
            observer.clone(),
        );
        tasks.spawn(fut.instrument(span));
    }
}

/// The refresher loop of one key set: fetch at start-up, then on schedule, on request
/// (unknown kid, operator) and, after a failure, with backoff. With a fleet, each of
/// those asks the fleet first ([`coordinated::obtain`]), and publications other replicas
/// announce in between are taken as they come.
pub async fn run_refresher(
    registry: Registry,
    http: HttpClient,
    state: Arc<KeySetState>,
    cancel: CancellationToken,
    observer: Option<FetchObserver>,
) {
    let interval = match state.source {
        Source::JwksFile { .. } => state.settings.refresh_interval.min(JWKS_FILE_POLL),
        _ => state.settings.refresh_interval,
    };
    let mut file_fingerprint: Option<Vec<u8>> = None;
    let mut announced = coordinated::announcements(&registry, &state);
    let mut scheduled = true;
    loop {
        // A request made while the previous fetch ran is served right away.
        let (generation, kind) = state.refresh.begin();
        let kind = if state.metadata().is_none() {
            RefreshKind::Full
        } else {
            kind
        };
        let outcome = tokio::select! {
            _ = cancel.cancelled() => {
                debug!("refresher stopped");
                return;
            }
            r = coordinated::obtain(&registry, &http, &state, kind, scheduled) => r,
        };
        let delay = match outcome {
            Ok(obtained) => {
                if matches!(obtained, Obtained::Fetched { .. })
                    && let Some(o) = &observer
                {
                    o(&state, Ok(obtained_len(&obtained)));
                }
                succeeded(&registry, &state, obtained, kind, &mut file_fingerprint);
                next_refresh(true, 0, interval, fastrand::f64())
            }
            Err(err) => {
                let failures = failed(&registry, &state, &err, kind);
                if let Some(o) = &observer {
                    o(&state, Err(&err));
                }
                next_refresh(false, failures, interval, fastrand::f64())
            }
        };
        state.refresh.complete(generation);
        state.update_status(|s| s.next_refresh = SystemTime::now().checked_add(delay));
        match wait_next(&registry, &state, delay, &cancel, &mut announced).await {
            Some(s) => scheduled = s,
            None => {
                debug!("refresher stopped");
                return;
            }
        }
    }
}

fn obtained_len(o: &Obtained) -> usize {
    match o {
        Obtained::Fetched { set, .. } | Obtained::Adopted { set, .. } => set.len(),
        Obtained::Unchanged => 0,
    }
}

/// Waits for the next refresh: `Some(true)` when the schedule is due, `Some(false)` when
/// one was requested, `None` on cancellation. Announced publications are taken
/// meanwhile.
async fn wait_next(
    registry: &Registry,
    state: &Arc<KeySetState>,
    delay: Duration,
    cancel: &CancellationToken,
    announced: &mut Option<tokio::sync::watch::Receiver<u64>>,
) -> Option<bool> {
    let sleep = tokio::time::sleep(delay);
    tokio::pin!(sleep);
    // A wake-up permit may be left from a request this fetch already served, so a
    // wake-up only leads to a fetch when a request is really pending.
    while !state.refresh.pending() {
        tokio::select! {
            _ = cancel.cancelled() => return None,
            _ = &mut sleep => {
                state.refresh.want_full();
                return Some(true);
            }
            _ = state.refresh.requested() => {}
            _ = coordinated::announced(announced) => {
                if let Some(obtained) = coordinated::take_announced(registry, state).await {
                    let mut no_file = None;
                    succeeded(registry, state, obtained, RefreshKind::KeysOnly, &mut no_file);
                }
            }
        }
    }
    Some(false)
}

/// Installs what a refresh obtained and records the success.
fn succeeded(
    registry: &Registry,
    state: &KeySetState,
    obtained: Obtained,
    kind: RefreshKind,
    file_fingerprint: &mut Option<Vec<u8>>,
) {
    coordinated::record_origin(registry, state, &obtained);
    let (set, skipped, adopted_at) = match obtained {
        Obtained::Unchanged => return,
        Obtained::Fetched { set, skipped, .. } => (set, skipped, None),
        Obtained::Adopted { set, skipped, from } => {
            (set, skipped, Some(coordinated::fetched_at(&from)))
        }
    };
    let unchanged_file = matches!(state.source, Source::JwksFile { .. }) && {
        let fp: Vec<u8> = set
            .iter()
            .flat_map(|k| {
                k.thumbprint
                    .bytes()
                    .chain(k.kid.clone().unwrap_or_default().into_bytes())
            })
            .collect();
        let same = file_fingerprint.as_ref() == Some(&fp);
        *file_fingerprint = Some(fp);
        same
    };
    let count = set.len();
    if !skipped.is_empty() {
        warn!(skipped = %skipped, "keys skipped at ingestion");
    }
    if let Some(m) = state.metadata()
        && m.issuer != state.issuer
    {
        registry.add_alias(&m.issuer, &state.id);
    }
    let events = if unchanged_file {
        Vec::new()
    } else {
        registry.install_keys(state, set)
    };
    if !unchanged_file || state.status().last_failed {
        info!(
            keys = count,
            added_or_removed = events.len(),
            ?kind,
            adopted = adopted_at.is_some(),
            "key refresh succeeded"
        );
    } else {
        debug!(keys = count, "jwks file unchanged");
    }
    state.update_status(|s| {
        match adopted_at {
            // Keys another replica fetched: as fresh as its fetch, not a fetch of ours.
            Some(at) => s.last_success = s.last_success.max(Some(at)),
            None => {
                s.last_success = Some(SystemTime::now());
                s.successes += 1;
            }
        }
        s.consecutive_failures = 0;
        s.last_failed = false;
    });
}

/// Records a failed refresh (the keys stay) and returns the failures in a row.
fn failed(registry: &Registry, state: &KeySetState, err: &FetchError, kind: RefreshKind) -> u32 {
    let failures = state.update_status(|s| {
        s.last_error = Some((err.category(), SystemTime::now()));
        s.failures += 1;
        s.consecutive_failures = s.consecutive_failures.saturating_add(1);
        s.last_failed = true;
        s.consecutive_failures
    });
    let keys = state.keys().len();
    warn!(error = %err, ?kind, failures, keys_kept = keys, "key refresh failed; keeping the last good keys");
    registry.publish_failure(state, err.category());
    // After a failure the next attempt re-reads discovery too.
    state.refresh.want_full();
    failures
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn discovery_documents_are_checked() {
        let iss = "https://idp.example";
        let doc = json!({"issuer": iss, "jwks_uri": "https://idp.example/keys", "token_endpoint": "https://idp.example/t"});
        let m = parse_metadata(&doc, iss, None, true).expect("valid");
        assert_eq!(m.jwks_uri, "https://idp.example/keys");
        assert_eq!(m.token_endpoint.as_deref(), Some("https://idp.example/t"));
        assert_eq!(m.introspection_endpoint, None);
        for (bad, https) in [
            (json!({"jwks_uri": "https://idp.example/keys"}), true),
            (
                json!({"issuer": "https://evil.example", "jwks_uri": "https://idp.example/keys"}),
                true,
            ),
            (json!({"issuer": iss}), true),
            (
                json!({"issuer": iss, "jwks_uri": "http://idp.example/keys"}),
                true,
            ),
            (
                json!({"issuer": iss, "jwks_uri": "file:///etc/passwd"}),
                false,
            ),
            (json!({"issuer": iss, "jwks_uri": 7}), true),
        ] {
            assert!(parse_metadata(&bad, iss, None, https).is_err(), "{bad}");
        }
    }

    #[test]
    fn b2c_tfp_issuer_form() {
        let configured = "https://contoso.b2clogin.com/775527ff-9a37-4307-8b3d-cc311f58d925/v2.0/";
        let tfp = "https://contoso.b2clogin.com/tfp/775527ff-9a37-4307-8b3d-cc311f58d925/B2C_1_signupsignin/v2.0/";
        assert!(is_b2c_tfp_issuer(tfp, configured, "b2c_1_SignUpSignIn"));
        assert!(!is_b2c_tfp_issuer(tfp, configured, "B2C_1_other"));
        assert!(!is_b2c_tfp_issuer(
            &tfp.replace("contoso", "evil"),
            configured,
            "B2C_1_signupsignin"
        ));
        assert!(!is_b2c_tfp_issuer(
            configured,
            configured,
            "B2C_1_signupsignin"
        ));
    }
}
