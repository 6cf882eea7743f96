//! Conversions from core values to protobuf messages (`to_proto`), and of protobuf
//! messages to JSON for the command-line tools.

use std::time::{Duration, SystemTime};

use prost_types::{ListValue, Struct, Timestamp, Value as PValue, value::Kind};
use serde_json::{Map, Value};

use super::{BoundaryError, pb};
use crate::{
    events::{KeyEvent, KeyEventKind, KeyInfo},
    jwt::ErrorCode,
    keys::{KeyType, VerifyingKey},
    registry::{KeySetState, RevokeInput, RevokeTarget, Source, ValidateError, Validated},
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

/// A protobuf `Value` as JSON.
pub fn value_to_json(v: &PValue) -> Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n)
                    .map(Value::Number)
                    .unwrap_or(Value::Null)
            }
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => Value::Object(struct_to_json(s)),
    }
}

/// A protobuf `Struct` as a JSON object.
pub fn struct_to_json(s: &Struct) -> Map<String, Value> {
    let mut keys: Vec<&String> = s.fields.keys().collect();
    keys.sort();
    keys.into_iter()
        .map(|k| (k.clone(), value_to_json(&s.fields[k])))
        .collect()
}

/// Seconds since the epoch (possibly fractional) as a `Timestamp`.
pub fn timestamp(secs: f64) -> Timestamp {
    let whole = secs.floor();
    Timestamp {
        seconds: whole as i64,
        nanos: ((secs - whole) * 1e9) as i32,
    }
}

/// A `SystemTime` as a `Timestamp`.
pub fn system_time(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
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
    }
}

/// An accepted token as a ValidateResponse.
pub fn validated(v: &Validated) -> pb::ValidateResponse {
    let c = &v.claims;
    pb::ValidateResponse {
        valid: true,
        error: None,
        tenant: v.tenant.id().to_string(),
        policy: v.policy.clone().unwrap_or_default(),
        issuer: c.iss.clone().unwrap_or_default(),
        subject: c.sub.clone().unwrap_or_default(),
        audiences: c.aud.clone(),
        scopes: c.scopes(),
        expires_at: c.exp.map(timestamp),
        issued_at: c.iat.map(timestamp),
        not_before: c.nbf.map(timestamp),
        key_id: v
            .kid
            .clone()
            .or_else(|| v.key.kid.clone())
            .unwrap_or_default(),
        algorithm: format!("{:?}", v.algorithm),
        claims: Some(json_to_struct(&c.all)),
    }
}

/// A rejected token as a ValidateResponse (nothing from the token but the tenant).
pub fn rejected(err: &ValidateError) -> pb::ValidateResponse {
    match err {
        ValidateError::Rejected {
            rejection,
            tenant,
            policy,
        } => pb::ValidateResponse {
            valid: false,
            error: Some(pb::ValidationError {
                code: error_code(rejection.code) as i32,
                message: rejection.message.clone(),
            }),
            tenant: tenant.clone().unwrap_or_default(),
            policy: policy.clone().unwrap_or_default(),
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

fn ts_json(t: &Option<Timestamp>) -> Value {
    match t {
        Some(t) => Value::from(t.seconds),
        None => Value::Null,
    }
}

/// A ValidateResponse as JSON, for the command-line tools.
pub fn validate_response_json(r: &pb::ValidateResponse) -> Value {
    let mut m = Map::new();
    m.insert("valid".into(), r.valid.into());
    if let Some(e) = &r.error {
        let code = pb::ErrorCode::try_from(e.code)
            .map(|c| c.as_str_name().to_string())
            .unwrap_or_else(|_| e.code.to_string());
        m.insert(
            "error".into(),
            serde_json::json!({"code": code, "message": e.message}),
        );
    }
    for (k, v) in [
        ("tenant", &r.tenant),
        ("policy", &r.policy),
        ("issuer", &r.issuer),
        ("subject", &r.subject),
        ("key_id", &r.key_id),
        ("algorithm", &r.algorithm),
    ] {
        if !v.is_empty() {
            m.insert(k.into(), v.clone().into());
        }
    }
    if !r.audiences.is_empty() {
        m.insert("audiences".into(), r.audiences.clone().into());
    }
    if !r.scopes.is_empty() {
        m.insert("scopes".into(), r.scopes.clone().into());
    }
    for (k, v) in [
        ("expires_at", &r.expires_at),
        ("issued_at", &r.issued_at),
        ("not_before", &r.not_before),
    ] {
        if v.is_some() {
            m.insert(k.into(), ts_json(v));
        }
    }
    if let Some(c) = &r.claims {
        m.insert("claims".into(), Value::Object(struct_to_json(c)));
    }
    Value::Object(m)
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

/// A Revoke request as the core's input: exactly one rule, timestamps in range.
pub fn revoke_input(req: &pb::RevokeRequest) -> Result<RevokeInput, BoundaryError> {
    use pb::revoke_request::Rule;
    let secs = |t: &Timestamp, name: &str| {
        timestamp_to_system_time(t)
            .map(crate::shared::unix_secs)
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

/// A `Timestamp` as a `SystemTime` (`None` before the epoch or out of range).
pub fn timestamp_to_system_time(t: &Timestamp) -> Option<SystemTime> {
    let secs = u64::try_from(t.seconds).ok()?;
    let nanos = u32::try_from(t.nanos).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// A `Timestamp` in RFC 3339 (UTC, millisecond precision), or JSON null.
pub fn timestamp_json(t: &Option<Timestamp>) -> Value {
    match t.as_ref().and_then(timestamp_to_system_time) {
        Some(st) => Value::String(humantime::format_rfc3339_millis(st).to_string()),
        None => Value::Null,
    }
}

/// A streamed key event as one JSON object, for `introspectd watch`: `type` is the enum
/// value's name, `jwk` the parsed public JWK (null when the event has none).
pub fn key_event_json(e: &pb::KeyEvent) -> Value {
    let kind = pb::KeyEventType::try_from(e.r#type)
        .map(|k| k.as_str_name().to_string())
        .unwrap_or_else(|_| e.r#type.to_string());
    let jwk = if e.jwk.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&e.jwk).unwrap_or_else(|_| Value::String(e.jwk.clone()))
    };
    serde_json::json!({
        "type": kind,
        "tenant": e.tenant,
        "policy": e.policy,
        "issuer": e.issuer,
        "key_id": e.key_id,
        "algorithm": e.algorithm,
        "key_type": e.key_type,
        "thumbprint": e.thumbprint,
        "jwk": jwk,
        "observed_at": timestamp_json(&e.observed_at),
        "message": e.message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_struct() {
        let v = serde_json::json!({"a": 1, "b": [true, null, "x"], "c": {"d": 1.5}});
        let s = json_to_struct(v.as_object().expect("obj"));
        assert_eq!(Value::Object(struct_to_json(&s)), v);
    }

    #[test]
    fn key_events_as_json_lines() {
        let e = pb::KeyEvent {
            r#type: pb::KeyEventType::Added as i32,
            tenant: "demo".into(),
            key_id: "k1".into(),
            jwk: r#"{"kty":"EC","crv":"P-256","x":"AA","y":"BB"}"#.into(),
            observed_at: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 250_000_000,
            }),
            ..Default::default()
        };
        let v = key_event_json(&e);
        assert_eq!(v["type"], "KEY_EVENT_TYPE_ADDED");
        assert_eq!(v["jwk"]["kty"], "EC", "the jwk is parsed, not a string");
        assert_eq!(v["observed_at"], "2023-11-14T22:13:20.250Z");
        assert_eq!(v["policy"], "");
        let synced = key_event_json(&pb::KeyEvent {
            r#type: pb::KeyEventType::Synced as i32,
            ..Default::default()
        });
        assert_eq!(synced["jwk"], Value::Null);
        assert_eq!(synced["observed_at"], Value::Null);
        let line = serde_json::to_string(&v).expect("json");
        assert!(!line.contains('\n'), "one event per line");
    }

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
    }
}
