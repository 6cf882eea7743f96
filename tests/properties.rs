//! Properties of the parts with a clear model, checked with proptest against that model:
//! canonical base64url (one encoding per value), duplicate-member detection at any depth,
//! the refresh schedule's bounds, and the audience and scope rules.

// Tests: a failed assumption is a failed test, and shared helpers are `pub`.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

use std::{collections::HashSet, time::Duration};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use introspectd::{
    jwt::{
        ErrorCode,
        claims::{Claims, TokenKind, check_audience, check_scopes},
        compact::{self, ObjectRef},
        jws,
    },
    oidc::{MAX_BACKOFF, MIN_BACKOFF, next_refresh},
};
use proptest::prelude::*;
use serde_json::{Value, json};

const B64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Strings over the base64url alphabet plus the characters a forger would try.
fn b64ish() -> impl Strategy<Value = String> {
    let alphabet: Vec<char> = B64URL
        .iter()
        .map(|b| char::from(*b))
        .chain("=+/. \n%".chars())
        .collect();
    proptest::collection::vec(proptest::sample::select(alphabet), 0..48)
        .prop_map(|cs| cs.into_iter().collect())
}

/// A token segment: canonical base64url of bytes (for a header, of a JSON header), the
/// same with one character changed or appended, or anything base64-ish.
fn segment(header: bool) -> impl Strategy<Value = String> {
    let bytes = if header {
        prop_oneof![
            Just(br#"{"alg":"RS256"}"#.to_vec()),
            Just(br#"{"alg":"ES256","kid":"k","typ":"at+jwt"}"#.to_vec()),
            proptest::collection::vec(any::<u8>(), 0..24),
        ]
        .boxed()
    } else {
        proptest::collection::vec(any::<u8>(), 0..48).boxed()
    };
    let canonical = bytes.prop_map(|b| URL_SAFE_NO_PAD.encode(b));
    prop_oneof![
        3 => canonical.clone(),
        1 => (canonical, b64ish()).prop_map(|(c, tail)| format!("{c}{}", tail.chars().take(1).collect::<String>())),
        1 => b64ish(),
    ]
}

/// A JSON object tree whose member names come from a tiny alphabet, so that duplicates
/// are frequent; kept as ordered pairs, since a map could not hold a duplicate.
#[derive(Debug, Clone)]
enum Tree {
    Leaf(i64),
    Object(Vec<(String, Tree)>),
    Array(Vec<Tree>),
}

fn tree() -> impl Strategy<Value = Tree> {
    let leaf = any::<i64>().prop_map(Tree::Leaf);
    leaf.prop_recursive(4, 32, 5, |inner| {
        prop_oneof![
            proptest::collection::vec(("[abc]", inner.clone()), 0..5).prop_map(Tree::Object),
            proptest::collection::vec(inner, 0..4).prop_map(Tree::Array),
        ]
    })
}

fn object() -> impl Strategy<Value = Vec<(String, Tree)>> {
    proptest::collection::vec(("[abc]", tree()), 0..5)
}

fn render(t: &Tree) -> String {
    match t {
        Tree::Leaf(n) => n.to_string(),
        Tree::Array(items) => format!(
            "[{}]",
            items.iter().map(render).collect::<Vec<_>>().join(",")
        ),
        Tree::Object(members) => render_object(members),
    }
}

fn render_object(members: &[(String, Tree)]) -> String {
    let inner: Vec<String> = members
        .iter()
        .map(|(k, v)| format!("{}:{}", Value::from(k.as_str()), render(v)))
        .collect();
    format!("{{{}}}", inner.join(","))
}

/// The model: no object anywhere has two members of the same name.
fn unique_names(t: &Tree) -> bool {
    match t {
        Tree::Leaf(_) => true,
        Tree::Array(items) => items.iter().all(unique_names),
        Tree::Object(members) => {
            let mut seen = HashSet::new();
            members.iter().all(|(k, _)| seen.insert(k.clone()))
                && members.iter().all(|(_, v)| unique_names(v))
        }
    }
}

fn claims_of(v: &Value) -> Claims {
    Claims::parse(v.to_string().as_bytes()).expect("claims parse")
}

fn names() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-d]", 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Every byte string has exactly one accepted encoding, and it round-trips.
    #[test]
    fn base64url_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let encoded = URL_SAFE_NO_PAD.encode(&bytes);
        prop_assert_eq!(jws::b64url_decode(&encoded, "x").expect("canonical"), bytes);
    }

    /// Whatever string the decoder accepts is the canonical encoding of what it decodes
    /// to: no padding, no other alphabet, no non-zero trailing bits.
    #[test]
    fn accepted_base64url_is_canonical(s in b64ish()) {
        if let Ok(bytes) = jws::b64url_decode(&s, "x") {
            prop_assert_eq!(URL_SAFE_NO_PAD.encode(&bytes), s);
        }
    }

    /// A compact JWS the parser accepts re-encodes to exactly its own text.
    #[test]
    fn parsed_tokens_re_encode_to_the_same_bytes(h in segment(true), p in segment(false), s in segment(false)) {
        let token = format!("{h}.{p}.{s}");
        if let Ok(parsed) = jws::parse(&token) {
            prop_assert_eq!(URL_SAFE_NO_PAD.encode(&parsed.payload), p.clone());
            prop_assert_eq!(URL_SAFE_NO_PAD.encode(&parsed.signature), s);
            let header = jws::b64url_decode(&h, "header").expect("parsed, so decodable");
            prop_assert_eq!(URL_SAFE_NO_PAD.encode(header), h.clone());
            prop_assert_eq!(parsed.signing_input, format!("{h}.{p}"));
        }
    }

    /// Strict JSON accepts an object exactly when no object in it repeats a name, and
    /// then agrees with serde_json on its value.
    #[test]
    fn duplicate_members_are_found_at_any_depth(members in object()) {
        let root = Tree::Object(members.clone());
        let text = render_object(&members);
        let strict = compact::parse_object(text.as_bytes()).map(|e| ObjectRef::new(&e).to_json());
        prop_assert_eq!(strict.is_ok(), unique_names(&root), "{}", text);
        if let Ok(map) = strict {
            let lenient: Value = serde_json::from_str(&text).expect("valid JSON");
            // The compact form is google.protobuf.Struct's, whose numbers are doubles.
            prop_assert_eq!(as_doubles(Value::Object(map)), as_doubles(lenient));
        }
    }

    /// After a success the next refresh is 90..100 % of the interval; after failures it
    /// is at most the cap (5 min, and the interval) and at least half the backoff, and
    /// the backoff never shrinks as failures accumulate.
    #[test]
    fn next_refresh_stays_in_its_bounds(
        failures in 0u32..64,
        interval_ms in 0u64..(40 * 24 * 3600 * 1000),
        jitter in prop_oneof![0.0f64..1.0, Just(f64::NAN), Just(-3.0), Just(7.0)],
    ) {
        let interval = Duration::from_millis(interval_ms);
        let ok = next_refresh(true, 0, interval, jitter);
        prop_assert!(ok <= interval);
        prop_assert!(ok >= interval.mul_f64(0.9).saturating_sub(Duration::from_micros(1)));
        let cap = MAX_BACKOFF.min(interval);
        let d = next_refresh(false, failures, interval, jitter);
        prop_assert!(d <= cap, "{:?} over {:?}", d, cap);
        let exponent = failures.saturating_sub(1).min(20);
        let backoff = MIN_BACKOFF.saturating_mul(1 << exponent).min(cap);
        prop_assert!(d >= backoff.mul_f64(0.5).saturating_sub(Duration::from_micros(1)));
        prop_assert!(next_refresh(false, failures + 1, interval, jitter) >= d);
    }

    /// The audience rule against its model: an accepted audience in `aud`, and for an ID
    /// token with several audiences an `azp` that is accepted.
    #[test]
    fn audience_rule_matches_its_model(
        aud in names(),
        accepted in names(),
        azp in proptest::option::of("[a-e]"),
        id_token in any::<bool>(),
    ) {
        let mut c = json!({"aud": aud});
        if let Some(a) = &azp {
            c["azp"] = json!(a);
        }
        let kind = if id_token { TokenKind::IdToken } else { TokenKind::AccessToken };
        let expected = !accepted.is_empty()
            && aud.iter().any(|a| accepted.contains(a))
            && (!id_token || aud.len() <= 1 || azp.as_ref().is_some_and(|z| accepted.contains(z)));
        let got = check_audience(&claims_of(&c), &accepted, kind);
        prop_assert_eq!(got.is_ok(), expected, "{} accepted {:?} {:?}", c, accepted, kind);
        if let Err(r) = got {
            prop_assert_eq!(r.code, ErrorCode::InvalidAudience);
        }
    }

    /// The scope rule against its model: every required scope among the granted ones,
    /// from `scp` (else `scope`), a space-separated string or an array of them.
    #[test]
    fn scope_rule_matches_its_model(
        granted in proptest::collection::vec("[a-d]{1,2}", 0..5),
        required in proptest::collection::vec("[a-d]{1,2}", 0..3),
        as_array in any::<bool>(),
        claim in prop_oneof![Just("scp"), Just("scope")],
    ) {
        let value = if as_array { json!(granted) } else { json!(granted.join(" ")) };
        let c = json!({ claim: value });
        let expected = required.iter().all(|r| granted.contains(r));
        let got = check_scopes(&claims_of(&c), &required);
        prop_assert_eq!(got.is_ok(), expected);
        if let Err(r) = got {
            prop_assert_eq!(r.code, ErrorCode::InsufficientScope);
        }
    }
}

/// `v` with every number as the double a `google.protobuf.Value` holds.
fn as_doubles(v: Value) -> Value {
    match v {
        Value::Number(n) => n.as_f64().map_or(Value::Null, |f| json!(f)),
        Value::Array(items) => Value::Array(items.into_iter().map(as_doubles).collect()),
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (k, as_doubles(v))).collect()),
        other => other,
    }
}
