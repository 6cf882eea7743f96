//! JSON of protobuf messages for the command-line tools (`validate`, `watch`): field
//! names as in the proto, enum values by name, and every timestamp in RFC 3339 (UTC,
//! millisecond precision).

use std::time::{Duration, SystemTime};

use prost_types::{Struct, Timestamp, Value as PValue, value::Kind};
use serde_json::{Map, Value};

use crate::grpc::pb;

/// An enum value's proto name, or its number when this build does not know it.
fn enum_name<E>(name: Result<&'static str, E>, number: i32) -> Value {
    name.map(String::from)
        .unwrap_or_else(|_| number.to_string())
        .into()
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

/// A ValidateResponse as JSON (empty fields left out).
pub fn validate_response_json(r: &pb::ValidateResponse) -> Value {
    let mut m = Map::new();
    m.insert("valid".into(), r.valid.into());
    if let Some(e) = &r.error {
        let code = enum_name(
            pb::ErrorCode::try_from(e.code).map(|c| c.as_str_name()),
            e.code,
        );
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
            m.insert(k.into(), timestamp_json(v));
        }
    }
    if let Some(c) = &r.claims {
        m.insert("claims".into(), Value::Object(struct_to_json(c)));
    }
    Value::Object(m)
}

/// A streamed key event as one JSON object, for `introspectd watch`: `type` is the enum
/// value's name, `jwk` the parsed public JWK (null when the event has none).
pub fn key_event_json(e: &pb::KeyEvent) -> Value {
    let kind = enum_name(
        pb::KeyEventType::try_from(e.r#type).map(|k| k.as_str_name()),
        e.r#type,
    );
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
    use crate::grpc::convert::json_to_struct;

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
    fn every_timestamp_is_rfc3339() {
        let at = Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        });
        let v = validate_response_json(&pb::ValidateResponse {
            valid: true,
            expires_at: at,
            issued_at: at,
            error: Some(pb::ValidationError {
                code: pb::ErrorCode::Expired as i32,
                message: "m".into(),
            }),
            ..Default::default()
        });
        assert_eq!(v["expires_at"], "2023-11-14T22:13:20.000Z");
        assert_eq!(v["issued_at"], v["expires_at"]);
        assert!(v.get("not_before").is_none(), "absent stays absent");
        assert_eq!(v["error"]["code"], "ERROR_CODE_EXPIRED");
    }
}
