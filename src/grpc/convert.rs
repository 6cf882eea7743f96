//! Conversions from core values to protobuf messages (`to_proto`).

use std::time::SystemTime;

use prost_types::{ListValue, Struct, Timestamp, Value as PValue, value::Kind};
use serde_json::{Map, Value};

use super::{BoundaryError, pb};
use crate::{
    events::{KeyEvent, KeyEventKind, KeyInfo},
    jwt::{
        ErrorCode,
        challenge::Challenge,
        claims::{MAX_NUMERIC_DATE, MIN_NUMERIC_DATE},
        dpop::{Binding, BindingKind},
    },
    keys::{KeyType, VerifyingKey},
    registry::{
        DpopHint, KeySetState, RefreshReport, RevokeInput, RevokeTarget, Source, ValidateError,
        Validated,
    },
};

/// A JSON value as a protobuf `Value`.
pub fn json_to_value(v: &Value) -> PValue {
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(json_to_value).collect(),
        }),
        Value::Object(o) => Kind::StructValue(json_to_struct(o)),
    };
    PValue { kind: Some(kind) }
}

/// A JSON object as a protobuf `Struct`.
pub fn json_to_struct(map: &Map<String, Value>) -> Struct {
    Struct {
        fields: map
            .iter()
            .map(|(k, v)| (k.clone(), json_to_value(v)))
            .collect(),
    }
}

/// Seconds since the epoch (possibly fractional) as a `Timestamp`, always within
/// protobuf's valid range (0001-01-01..9999-12-31, nanos under 10^9): claims outside it
/// are refused at parsing, so the clamp only guards against a future caller.
pub fn timestamp(secs: f64) -> Timestamp {
    let whole = secs.floor();
    let seconds = whole as i64;
    if seconds < MIN_NUMERIC_DATE {
        return Timestamp {
            seconds: MIN_NUMERIC_DATE,
            nanos: 0,
        };
    }
    if seconds > MAX_NUMERIC_DATE {
        return Timestamp {
            seconds: MAX_NUMERIC_DATE,
            nanos: 999_999_999,
        };
    }
    Timestamp {
        seconds,
        // `as` saturates; rounding can reach 10^9 for a fraction just under 1.
        nanos: (((secs - whole) * 1e9) as i32).clamp(0, 999_999_999),
    }
}

/// A `SystemTime` as a `Timestamp` (before the epoch: the epoch; past 9999: the end of
/// 9999).
pub fn system_time(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    match i64::try_from(d.as_secs()) {
        Ok(seconds) if seconds <= MAX_NUMERIC_DATE => Timestamp {
            seconds,
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        },
        _ => Timestamp {
            seconds: MAX_NUMERIC_DATE,
            nanos: 999_999_999,
        },
    }
}

/// The protobuf error code.
pub fn error_code(code: ErrorCode) -> pb::ErrorCode {
    match code {
        ErrorCode::Malformed => pb::ErrorCode::Malformed,
        ErrorCode::AlgorithmNotAllowed => pb::ErrorCode::AlgorithmNotAllowed,
        ErrorCode::UnknownIssuer => pb::ErrorCode::UnknownIssuer,
        ErrorCode::UnknownPolicy => pb::ErrorCode::UnknownPolicy,
        ErrorCode::UnknownKey => pb::ErrorCode::UnknownKey,
        ErrorCode::InvalidSignature => pb::ErrorCode::InvalidSignature,
        ErrorCode::Expired => pb::ErrorCode::Expired,
        ErrorCode::NotYetValid => pb::ErrorCode::NotYetValid,
        ErrorCode::MissingClaim => pb::ErrorCode::MissingClaim,
        ErrorCode::InvalidAudience => pb::ErrorCode::InvalidAudience,
        ErrorCode::InsufficientScope => pb::ErrorCode::InsufficientScope,
        ErrorCode::InvalidType => pb::ErrorCode::InvalidType,
        ErrorCode::InvalidNonce => pb::ErrorCode::InvalidNonce,
        ErrorCode::LifetimeTooLong => pb::ErrorCode::LifetimeTooLong,
        ErrorCode::Replayed => pb::ErrorCode::Replayed,
        ErrorCode::KeysUnavailable => pb::ErrorCode::KeysUnavailable,
        ErrorCode::Revoked => pb::ErrorCode::Revoked,
        ErrorCode::StateUnavailable => pb::ErrorCode::StateUnavailable,
        ErrorCode::InvalidDpopProof => pb::ErrorCode::InvalidDpopProof,
        ErrorCode::UseDpopNonce => pb::ErrorCode::UseDpopNonce,
        ErrorCode::BindingMismatch => pb::ErrorCode::BindingMismatch,
    }
}

/// A binding kind as the protobuf enum.
pub fn binding_kind(kind: BindingKind) -> pb::BindingKind {
    match kind {
        BindingKind::None => pb::BindingKind::None,
        BindingKind::Dpop => pb::BindingKind::Dpop,
        BindingKind::Mtls => pb::BindingKind::Mtls,
    }
}

/// A proven binding as a protobuf `Binding`.
pub fn binding(b: &Binding) -> pb::Binding {
    pb::Binding {
        kind: binding_kind(b.kind) as i32,
        jkt: b.jkt.clone().unwrap_or_default(),
        x5t_s256: b.x5t_s256.clone().unwrap_or_default(),
    }
}

/// The `WWW-Authenticate` challenge of a rejection (RFC 6750, or RFC 9449 7.1 when the
/// client is to use DPoP); `None` for the service's own unavailability.
pub fn challenge(
    code: ErrorCode,
    dpop: Option<&DpopHint>,
    required_scopes: &[String],
) -> Option<String> {
    let c = Challenge::for_rejection(code, required_scopes)?;
    Some(match dpop {
        Some(hint) => {
            let algs: Vec<&str> = hint.algorithms.iter().map(String::as_str).collect();
            c.with_dpop(&algs).header_value()
        }
        None => c.header_value(),
    })
}

/// An accepted token as a ValidateResponse.
/// The generated message; the server writes the same answer without building it (see
/// [`super::reply`]).
pub fn validated(v: &Validated) -> pb::ValidateResponse {
    let c = v.claims();
    let owned = |s: Option<&str>| s.unwrap_or_default().to_string();
    pb::ValidateResponse {
        valid: true,
        error: None,
        tenant: v.tenant.id().to_string(),
        policy: owned(v.policy()),
        issuer: owned(c.iss()),
        subject: owned(c.sub()),
        audiences: c.aud().map(str::to_owned).collect(),
        scopes: c.scopes().map(str::to_owned).collect(),
        expires_at: c.exp.map(timestamp),
        issued_at: c.iat.map(timestamp),
        not_before: c.nbf.map(timestamp),
        key_id: owned(v.kid().or(v.key().kid.as_deref())),
        algorithm: format!("{:?}", v.algorithm()),
        claims: Some(json_to_struct(&c.to_json())),
        binding: Some(binding(&v.binding)),
        dpop_nonce: v.dpop_nonce.clone().unwrap_or_default(),
        www_authenticate: String::new(),
    }
}

/// A rejected token as a ValidateResponse (nothing from the token but the tenant), with
/// its challenge (`required_scopes` name the scopes an `insufficient_scope` one lists).
pub fn rejected(err: &ValidateError, required_scopes: &[String]) -> pb::ValidateResponse {
    match err {
        ValidateError::Rejected {
            rejection,
            tenant,
            policy,
            dpop,
        } => pb::ValidateResponse {
            valid: false,
            error: Some(pb::ValidationError {
                code: error_code(rejection.code) as i32,
                message: rejection.message.clone(),
            }),
            tenant: tenant.clone().unwrap_or_default(),
            policy: policy.clone().unwrap_or_default(),
            www_authenticate: challenge(rejection.code, dpop.as_deref(), required_scopes)
                .unwrap_or_default(),
            dpop_nonce: dpop
                .as_ref()
                .and_then(|d| d.nonce.clone())
                .unwrap_or_default(),
            ..Default::default()
        },
        ValidateError::Request(r) => pb::ValidateResponse {
            valid: false,
            error: Some(pb::ValidationError {
                code: pb::ErrorCode::Unspecified as i32,
                message: r.to_string(),
            }),
            ..Default::default()
        },
    }
}

/// A key event as a protobuf message.
pub fn key_event(e: &KeyEvent) -> pb::KeyEvent {
    let kind = match e.kind {
        KeyEventKind::Existing => pb::KeyEventType::Existing,
        KeyEventKind::Synced => pb::KeyEventType::Synced,
        KeyEventKind::Added => pb::KeyEventType::Added,
        KeyEventKind::Removed => pb::KeyEventType::Removed,
        KeyEventKind::RefreshFailed => pb::KeyEventType::RefreshFailed,
    };
    let key = e.key.clone().unwrap_or_default();
    pb::KeyEvent {
        r#type: kind as i32,
        tenant: e.tenant.clone(),
        policy: e.policy.clone().unwrap_or_default(),
        issuer: e.issuer.clone(),
        key_id: key.kid,
        algorithm: key.algorithm,
        key_type: key.key_type,
        thumbprint: key.thumbprint,
        jwk: key.jwk,
        observed_at: Some(system_time(e.observed_at)),
        message: e.message.clone(),
    }
}

/// A key as operators see it; a symmetric key shows no thumbprint (it would be a hash
/// of the secret).
pub fn key_summary(k: &VerifyingKey) -> pb::KeySummary {
    pb::KeySummary {
        key_id: k.kid.clone().unwrap_or_default(),
        algorithm: k.algorithm_name(),
        key_type: k.kty.as_str().to_string(),
        thumbprint: if k.kty == KeyType::Oct {
            String::new()
        } else {
            k.thumbprint.clone()
        },
    }
}

/// A streamed key's description as a [`pb::KeySummary`].
pub fn key_info_summary(k: &KeyInfo) -> pb::KeySummary {
    pb::KeySummary {
        key_id: k.kid.clone(),
        algorithm: k.algorithm.clone(),
        key_type: k.key_type.clone(),
        thumbprint: k.thumbprint.clone(),
    }
}

/// A forced refresh's report as a RefreshIssuer answer; `replica` as for
/// [`issuer_status`].
pub fn refresh_report(r: &RefreshReport, replica: &str) -> pb::RefreshIssuerResponse {
    let error = r.outcome.error();
    pb::RefreshIssuerResponse {
        refreshed: error.is_none(),
        added: r.added.iter().map(key_info_summary).collect(),
        removed: r.removed.iter().map(key_info_summary).collect(),
        error: error.unwrap_or_default(),
        issuer: Some(issuer_status(&r.key_set, replica)),
        throttled: r.retry_after.is_some(),
        retry_after: r.retry_after.map(system_time),
    }
}

/// One key set's state for `ListIssuers`; `replica` is this replica's name (empty
/// without `shared_state`).
pub fn issuer_status(s: &KeySetState, replica: &str) -> pb::IssuerStatus {
    let status = s.status();
    let (source, metadata_url) = match &s.source {
        Source::Discovery { metadata_url } => ("discovery", metadata_url.clone()),
        Source::JwksFile { path } => ("jwks_file", path.display().to_string()),
        Source::Static => ("static", String::new()),
    };
    let (last_error, last_error_at) = match &status.last_error {
        Some((message, at)) => (message.clone(), Some(system_time(*at))),
        None => (String::new(), None),
    };
    pb::IssuerStatus {
        tenant: s.id.tenant.clone(),
        policy: s.id.policy.clone().unwrap_or_default(),
        issuer: s.issuer.clone(),
        metadata_url,
        jwks_uri: s.metadata().map(|m| m.jwks_uri.clone()).unwrap_or_default(),
        source: source.to_string(),
        keys: s.keys().iter().map(|k| key_summary(k)).collect(),
        last_success: status.last_success.map(system_time),
        last_error,
        last_error_at,
        last_failed: status.last_failed,
        next_refresh: status.next_refresh.map(system_time),
        fetches_ok: status.successes,
        fetches_failed: status.failures,
        fetched_by: status.fetched_by.clone().unwrap_or_default(),
        shared_generation: status.shared_generation,
        fetches_avoided: status.avoided,
        fetched_at: status.fetched_at.map(system_time),
        replica: replica.to_string(),
    }
}

/// Seconds since the epoch of a request's timestamp, when it is one protobuf allows
/// (0001-01-01 to 9999-12-31, nanos in range) and not before the epoch.
fn timestamp_secs(t: &Timestamp) -> Option<i64> {
    const MAX_SECONDS: i64 = 253_402_300_799;
    ((0..=MAX_SECONDS).contains(&t.seconds) && (0..1_000_000_000).contains(&t.nanos))
        .then_some(t.seconds)
}

/// A Revoke request as the core's input: exactly one rule, timestamps in range.
pub fn revoke_input(req: &pb::RevokeRequest) -> Result<RevokeInput, BoundaryError> {
    use pb::revoke_request::Rule;
    let secs = |t: &Timestamp, name: &str| {
        timestamp_secs(t)
            .ok_or_else(|| BoundaryError::Invalid(format!("{name} is not a valid time")))
    };
    let target = match &req.rule {
        None => {
            return Err(BoundaryError::Invalid(
                "name what to revoke: token, token_sha256, jti or subject".into(),
            ));
        }
        Some(Rule::Token(t)) => RevokeTarget::Token(t.clone()),
        Some(Rule::TokenSha256(h)) => RevokeTarget::TokenDigest(h.clone()),
        Some(Rule::Jti(j)) => RevokeTarget::Jti {
            iss: j.issuer.clone(),
            jti: j.jti.clone(),
        },
        Some(Rule::Subject(s)) => RevokeTarget::Subject {
            iss: s.issuer.clone(),
            sub: s.subject.clone(),
            issued_before: s
                .issued_before
                .as_ref()
                .map(|t| secs(t, "issued_before"))
                .transpose()?,
        },
    };
    Ok(RevokeInput {
        target,
        expires_at: req
            .expires_at
            .as_ref()
            .map(|t| secs(t, "expires_at"))
            .transpose()?,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn symmetric_keys_show_no_thumbprint() {
        let k = VerifyingKey::hmac(
            Some("h".into()),
            &[7u8; 32],
            &[jsonwebtoken::Algorithm::HS256],
        )
        .expect("hmac");
        let s = key_summary(&k);
        assert_eq!(
            (s.key_id.as_str(), s.algorithm.as_str(), s.key_type.as_str()),
            ("h", "HS256", "oct")
        );
        assert!(s.thumbprint.is_empty());
    }

    #[test]
    fn fractional_timestamps() {
        let t = timestamp(10.25);
        assert_eq!((t.seconds, t.nanos), (10, 250_000_000));
        let t = timestamp(-0.25);
        assert_eq!((t.seconds, t.nanos), (-1, 750_000_000));
    }

    #[test]
    fn timestamps_stay_in_the_protobuf_range() {
        let valid = |t: &Timestamp| {
            (MIN_NUMERIC_DATE..=MAX_NUMERIC_DATE).contains(&t.seconds)
                && (0..1_000_000_000).contains(&t.nanos)
        };
        for secs in [
            1e300,
            -1e300,
            f64::NAN,
            f64::INFINITY,
            0.999_999_999_999_999_9,
            MAX_NUMERIC_DATE as f64 + 0.999_999,
            MIN_NUMERIC_DATE as f64 - 1.0,
        ] {
            let t = timestamp(secs);
            assert!(valid(&t), "{secs}: {t:?}");
        }
        let far = SystemTime::UNIX_EPOCH.checked_add(Duration::from_secs(1 << 40));
        if let Some(far) = far {
            assert!(valid(&system_time(far)));
        }
        assert!(valid(&system_time(SystemTime::UNIX_EPOCH)));
    }
}
