//! The RFC 7662 section 2.2 answer as a core value, and the two pure mappings into it:
//! from the claims of a locally validated JWT (BEHAVIOUR.md's field mapping), and from an
//! upstream provider's JSON answer (field for field, everything else into `claims`).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::jwt::{
    claims::{Claims, in_timestamp_range},
    compact::ValueRef,
};

/// `token_type` of an access token (RFC 6750).
pub const BEARER: &str = "Bearer";

/// One introspection answer. An inactive answer carries nothing but `active: false`
/// (RFC 7662 2.2: nothing about an invalid token is disclosed).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Answer {
    /// Whether the token is active.
    pub active: bool,
    /// Space-separated scopes.
    pub scope: Option<String>,
    /// The client the token was issued to.
    pub client_id: Option<String>,
    /// The resource owner, human-readable.
    pub username: Option<String>,
    /// The token type, `Bearer` for access tokens.
    pub token_type: Option<String>,
    /// Expiry, seconds since the epoch.
    pub exp: Option<i64>,
    /// Issued-at, seconds since the epoch.
    pub iat: Option<i64>,
    /// Not-before, seconds since the epoch.
    pub nbf: Option<i64>,
    /// Subject.
    pub sub: Option<String>,
    /// Audiences.
    pub aud: Vec<String>,
    /// Issuer.
    pub iss: Option<String>,
    /// Token id.
    pub jti: Option<String>,
    /// Every other member of the token or of the upstream answer.
    pub claims: Map<String, Value>,
    /// The tenant that answered (active answers only).
    pub tenant: Option<String>,
}

impl Answer {
    /// `active: false` and nothing else.
    pub fn inactive() -> Self {
        Self::default()
    }

    /// The answer without anything that echoes `token`: a field, an `aud` entry, a claim
    /// (at any depth, member names included) whose string holds the token is dropped. A
    /// provider that echoes the token it was asked about would otherwise hand it to
    /// callers, who log answers more freely than tokens.
    pub fn without_token(mut self, token: &str) -> Self {
        if token.is_empty() {
            return self;
        }
        for field in [
            &mut self.scope,
            &mut self.client_id,
            &mut self.username,
            &mut self.token_type,
            &mut self.sub,
            &mut self.iss,
            &mut self.jti,
            &mut self.tenant,
        ] {
            if field.as_deref().is_some_and(|v| echoes(v, token)) {
                *field = None;
            }
        }
        self.aud.retain(|a| !echoes(a, token));
        forget_in_object(&mut self.claims, token);
        self
    }
}

/// Shortest token that is looked for inside longer values; a shorter one is only
/// dropped where a value equals it (a two-letter token is part of many honest values).
pub const MIN_ECHO_SEARCH_BYTES: usize = 16;

/// Whether `value` echoes `token`.
pub fn echoes(value: &str, token: &str) -> bool {
    value == token || (token.len() >= MIN_ECHO_SEARCH_BYTES && value.contains(token))
}

fn forget_in_object(map: &mut Map<String, Value>, token: &str) {
    map.retain(|k, v| !echoes(k, token) && !matches!(v, Value::String(s) if echoes(s, token)));
    for v in map.values_mut() {
        forget_in_value(v, token);
    }
}

fn forget_in_value(v: &mut Value, token: &str) {
    match v {
        Value::Object(m) => forget_in_object(m, token),
        Value::Array(items) => {
            items.retain(|i| !matches!(i, Value::String(s) if echoes(s, token)));
            for i in items {
                forget_in_value(i, token);
            }
        }
        _ => {}
    }
}

/// Reads members of a JSON object, removing each member that is mapped to a field, and
/// leaving members of an unexpected type where they are (they end up in `claims`, so
/// nothing the token or provider said is lost).
struct Members(Map<String, Value>);

impl Members {
    fn string(&mut self, name: &str) -> Option<String> {
        match self.0.get(name) {
            Some(Value::String(_)) => match self.0.remove(name) {
                Some(Value::String(s)) => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// A NumericDate: a JSON number within 0001-01-01..9999-12-31, fractions truncated
    /// towards the past.
    fn date(&mut self, name: &str) -> Option<i64> {
        let secs = self
            .0
            .get(name)?
            .as_f64()
            .filter(|f| in_timestamp_range(*f))?;
        self.0.remove(name);
        Some(secs.floor() as i64)
    }

    /// A scope: a space-separated string, or an array of strings joined with spaces.
    fn scope(&mut self, name: &str) -> Option<String> {
        let joined = scope_of(self.0.get(name))?;
        self.0.remove(name);
        Some(joined)
    }

    /// An audience: a string, or an array of strings.
    fn audiences(&mut self, name: &str) -> Vec<String> {
        let aud = match self.0.get(name) {
            Some(Value::String(s)) => vec![s.clone()],
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => items
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect(),
            _ => return Vec::new(),
        };
        self.0.remove(name);
        aud
    }

    /// Every member not mapped to a field.
    fn rest(self) -> Map<String, Value> {
        self.0
    }
}

/// A scope value: a space-separated string, or an array of strings joined with spaces.
fn scope_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) if items.iter().all(Value::is_string) => Some(
            items
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "),
        ),
        _ => None,
    }
}

/// Claims that mark an OpenID Connect ID token rather than an access token.
const ID_TOKEN_MARKERS: [&str; 3] = ["nonce", "at_hash", "c_hash"];
/// Claims that only access tokens carry.
const ACCESS_TOKEN_MARKERS: [&str; 4] = ["scope", "scp", "client_id", "roles"];

/// Whether a validated JWT is an access token (so its `token_type` is `Bearer`): the
/// caller's hint says so, or it carries scopes, a client id or roles; an ID token is one
/// that carries none of those but a `nonce`, `at_hash` or `c_hash`. Anything else was
/// presented as a bearer token and is treated as one.
pub fn is_access_token(has: impl Fn(&str) -> bool, hint: Option<&str>) -> bool {
    if hint == Some("access_token") {
        return true;
    }
    if ACCESS_TOKEN_MARKERS.iter().any(|m| has(m)) {
        return true;
    }
    !ID_TOKEN_MARKERS.iter().any(|m| has(m))
}

/// A claim's scopes as one space-separated string: a string as it is, a list of strings
/// joined; anything else is no scope.
fn claim_scope(value: Option<ValueRef<'_>>) -> Option<String> {
    match value? {
        ValueRef::String(s) => Some(s.to_owned()),
        ValueRef::List(items) => items
            .iter()
            .map(ValueRef::as_str)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.join(" ")),
        _ => None,
    }
}

/// The answer fields for a JWT that Validate accepted (BEHAVIOUR.md, Introspect): `scope`
/// from `scope`, else `scp`; `client_id` from `client_id`, else `azp`, else `appid`;
/// `username` from `preferred_username`, else `upn`, else `email`; `token_type` Bearer
/// for access tokens. `claims` is left empty: this is what a caller that needs only the
/// fields (ext_authz) pays for, read straight from the verified claims.
pub fn fields_from_claims(claims: &Claims, tenant: &str, hint: Option<&str>) -> Answer {
    // Every claim the fields come from, found in one pass over the claims.
    let found = claims.members().pick(FIELD_SOURCES);
    let [scope, scp, client_id, azp, appid, username, upn, email, ..] = found;
    let first = |values: [Option<ValueRef<'_>>; 3]| {
        values
            .into_iter()
            .find_map(|v| v.and_then(ValueRef::as_str))
            .map(str::to_owned)
    };
    // The markers, by name; all of them are in FIELD_SOURCES (tested).
    let has = |marker: &str| {
        FIELD_SOURCES
            .iter()
            .zip(&found)
            .any(|(name, v)| *name == marker && v.is_some())
    };
    Answer {
        active: true,
        scope: claim_scope(scope).or_else(|| claim_scope(scp)),
        client_id: first([client_id, azp, appid]),
        username: first([username, upn, email]),
        token_type: is_access_token(has, hint).then(|| BEARER.to_string()),
        exp: claims.exp.map(|f| f.floor() as i64),
        iat: claims.iat.map(|f| f.floor() as i64),
        nbf: claims.nbf.map(|f| f.floor() as i64),
        sub: claims.sub().map(str::to_owned),
        aud: claims.aud().map(str::to_owned).collect(),
        iss: claims.iss().map(str::to_owned),
        jti: claims.jti().map(str::to_owned),
        claims: Map::new(),
        tenant: Some(tenant.to_string()),
    }
}

/// The claims [`fields_from_claims`] reads: the sources of `scope`, `client_id` and
/// `username` first, in the order it takes them apart, then the other markers of
/// [`is_access_token`].
const FIELD_SOURCES: [&str; 12] = [
    "scope",
    "scp",
    "client_id",
    "azp",
    "appid",
    "preferred_username",
    "upn",
    "email",
    "roles",
    "nonce",
    "at_hash",
    "c_hash",
];

/// The whole answer for a JWT that Validate accepted: [`fields_from_claims`], and in
/// `claims` every other claim. A claim whose value became a field is not repeated in
/// `claims`; claims used as a fallback source (`scp`, `azp`, `upn`, ...) stay there.
pub fn from_claims(claims: &Claims, tenant: &str, hint: Option<&str>) -> Answer {
    let mut answer = fields_from_claims(claims, tenant, hint);
    let mut rest = claims.to_json();
    if claim_scope(claims.get("scope")).is_some() {
        rest.remove("scope");
    }
    if claims.str("client_id").is_some() {
        rest.remove("client_id");
    }
    // Validate has checked the types of the registered claims, so each one present is
    // in its field.
    for registered in ["exp", "iat", "nbf", "sub", "aud", "iss", "jti"] {
        rest.remove(registered);
    }
    answer.claims = rest;
    answer
}

/// Why an upstream answer is not an RFC 7662 answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    /// The body is not a JSON object.
    #[error("not a JSON object")]
    NotAnObject,
    /// `active` is absent or not a boolean.
    #[error("no boolean `active` member")]
    NoActive,
}

/// The provider's answer, field for field: it is authoritative (no audience of the tenant
/// is applied). `aud` may be a string or an array; members of a type RFC 7662 does not
/// give them stay in `claims`. An inactive answer keeps nothing but `active: false`.
pub fn from_upstream(doc: Value, tenant: &str) -> Result<Answer, AnswerError> {
    let Value::Object(map) = doc else {
        return Err(AnswerError::NotAnObject);
    };
    let Some(Value::Bool(active)) = map.get("active") else {
        return Err(AnswerError::NoActive);
    };
    if !active {
        return Ok(Answer::inactive());
    }
    let mut m = Members(map);
    m.0.remove("active");
    Ok(Answer {
        active: true,
        scope: m.scope("scope"),
        client_id: m.string("client_id"),
        username: m.string("username"),
        token_type: m.string("token_type"),
        exp: m.date("exp"),
        iat: m.date("iat"),
        nbf: m.date("nbf"),
        sub: m.string("sub"),
        aud: m.audiences("aud"),
        iss: m.string("iss"),
        jti: m.string("jti"),
        claims: m.rest(),
        tenant: Some(tenant.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn every_token_type_marker_is_picked() {
        for name in ACCESS_TOKEN_MARKERS.iter().chain(&ID_TOKEN_MARKERS) {
            assert!(FIELD_SOURCES.contains(name), "{name} is not picked");
        }
    }

    fn claims(v: Value) -> Claims {
        Claims::parse(v.to_string().as_bytes()).expect("claims parse")
    }

    #[test]
    fn jwt_fields_prefer_the_rfc_names() {
        let c = claims(json!({
            "iss": "https://i", "sub": "s", "aud": ["a", "b"], "exp": 200, "iat": 100.7, "nbf": 100, "jti": "j",
            "scope": "read write", "scp": ["x"], "client_id": "c", "azp": "z", "appid": "p",
            "preferred_username": "alice", "upn": "u@x", "email": "e@x", "custom": {"k": 1}
        }));
        let a = from_claims(&c, "t", None);
        assert!(a.active);
        assert_eq!(a.scope.as_deref(), Some("read write"));
        assert_eq!(a.client_id.as_deref(), Some("c"));
        assert_eq!(a.username.as_deref(), Some("alice"));
        assert_eq!(a.token_type.as_deref(), Some(BEARER));
        assert_eq!((a.exp, a.iat, a.nbf), (Some(200), Some(100), Some(100)));
        assert_eq!(a.sub.as_deref(), Some("s"));
        assert_eq!(a.aud, vec!["a", "b"]);
        assert_eq!(a.iss.as_deref(), Some("https://i"));
        assert_eq!(a.jti.as_deref(), Some("j"));
        assert_eq!(a.tenant.as_deref(), Some("t"));
        for lifted in [
            "scope",
            "client_id",
            "exp",
            "iat",
            "nbf",
            "sub",
            "aud",
            "iss",
            "jti",
        ] {
            assert!(
                !a.claims.contains_key(lifted),
                "{lifted} is a field, not a claim"
            );
        }
        for kept in [
            "scp",
            "azp",
            "appid",
            "preferred_username",
            "upn",
            "email",
            "custom",
        ] {
            assert!(a.claims.contains_key(kept), "{kept} stays in claims");
        }
    }

    #[test]
    fn jwt_fields_fall_back_in_order() {
        let a = from_claims(
            &claims(json!({"scp": ["a", "b"], "azp": "z", "appid": "p", "upn": "u", "email": "e"})),
            "t",
            None,
        );
        assert_eq!(a.scope.as_deref(), Some("a b"));
        assert_eq!(a.client_id.as_deref(), Some("z"));
        assert_eq!(a.username.as_deref(), Some("u"));
        let a = from_claims(
            &claims(json!({"scp": "a b", "appid": "p", "email": "e"})),
            "t",
            None,
        );
        assert_eq!(a.scope.as_deref(), Some("a b"));
        assert_eq!(a.client_id.as_deref(), Some("p"));
        assert_eq!(a.username.as_deref(), Some("e"));
        let a = from_claims(&claims(json!({"sub": "s"})), "t", None);
        assert_eq!((a.scope, a.client_id, a.username), (None, None, None));
    }

    #[test]
    fn the_fields_alone_are_the_whole_answers_fields() {
        for doc in [
            json!({"sub": "s", "scope": "a b", "scp": "x", "client_id": "c", "exp": 9.5}),
            json!({"scp": ["r", "w"], "azp": "z", "upn": "u", "aud": ["a1", "a2"]}),
            json!({"scope": ["r", 1], "appid": "p", "email": "e", "nonce": "n"}),
            json!({"iss": "i", "jti": "j", "iat": 1, "nbf": 2, "preferred_username": 7}),
        ] {
            let c = claims(doc.clone());
            let mut whole = from_claims(&c, "t", Some("id_token"));
            whole.claims = Map::new();
            assert_eq!(
                fields_from_claims(&c, "t", Some("id_token")),
                whole,
                "{doc}"
            );
        }
    }

    #[test]
    fn id_tokens_are_not_bearer_tokens() {
        let id = json!({"nonce": "n", "at_hash": "h"});
        let m = id.as_object().expect("obj");
        let has = |name: &str| m.contains_key(name);
        assert!(!is_access_token(has, None));
        assert!(
            is_access_token(has, Some("access_token")),
            "the caller's hint wins"
        );
        assert!(is_access_token(
            |name| name == "nonce" || name == "scp",
            None
        ));
        assert!(
            is_access_token(|_| false, None),
            "presented as a bearer token"
        );
        assert_eq!(from_claims(&claims(id), "t", None).token_type, None);
    }

    #[test]
    fn upstream_answer_field_for_field() {
        let a = from_upstream(
            json!({"active": true, "scope": "a b", "client_id": "c", "username": "u", "token_type": "Bearer",
                   "exp": 300, "iat": 100, "nbf": 100.5, "sub": "s", "aud": "x", "iss": "i", "jti": "j", "ext": [1]}),
            "t",
        )
        .expect("answer");
        assert_eq!(a.scope.as_deref(), Some("a b"));
        assert_eq!(a.client_id.as_deref(), Some("c"));
        assert_eq!(a.username.as_deref(), Some("u"));
        assert_eq!(a.token_type.as_deref(), Some("Bearer"));
        assert_eq!((a.exp, a.iat, a.nbf), (Some(300), Some(100), Some(100)));
        assert_eq!(a.aud, vec!["x"]);
        assert_eq!(a.claims.keys().collect::<Vec<_>>(), vec!["ext"]);
        assert_eq!(a.tenant.as_deref(), Some("t"));
        let a = from_upstream(
            json!({"active": true, "aud": ["x", "y"], "exp": "soon"}),
            "t",
        )
        .expect("answer");
        assert_eq!(a.aud, vec!["x", "y"]);
        assert_eq!(a.exp, None);
        assert_eq!(
            a.claims.get("exp"),
            Some(&json!("soon")),
            "a member of the wrong type is kept, not dropped"
        );
    }

    #[test]
    fn out_of_range_dates_stay_claims() {
        let a = from_upstream(json!({"active": true, "exp": 1e300, "iat": -1e19}), "t")
            .expect("answer");
        assert_eq!((a.exp, a.iat), (None, None));
        assert!(a.claims.contains_key("exp") && a.claims.contains_key("iat"));
    }

    #[test]
    fn nothing_echoes_the_token() {
        let token = "opaque-token-0123456";
        let a = from_upstream(
            json!({"active": true, "sub": token, "jti": "j", "aud": [token, "api"],
                   "token": token, token: 1, "n": {"auth": format!("Bearer {token}"), "k": [token, 2]}}),
            "t",
        )
        .expect("answer")
        .without_token(token);
        assert_eq!(a.sub, None);
        assert_eq!(a.jti.as_deref(), Some("j"));
        assert_eq!(a.aud, vec!["api"]);
        assert_eq!(Value::Object(a.claims), json!({"n": {"k": [2]}}));
        let short = from_upstream(json!({"active": true, "sub": "ab", "scope": "abc"}), "t")
            .expect("answer")
            .without_token("ab");
        assert_eq!(
            (short.sub, short.scope.as_deref()),
            (None, Some("abc")),
            "a short token is only dropped where a value equals it"
        );
    }

    #[test]
    fn upstream_inactive_answer_discloses_nothing() {
        let a =
            from_upstream(json!({"active": false, "sub": "s", "error": "x"}), "t").expect("answer");
        assert_eq!(a, Answer::inactive());
    }

    #[test]
    fn upstream_answer_must_have_boolean_active() {
        assert_eq!(
            from_upstream(json!([1]), "t"),
            Err(AnswerError::NotAnObject)
        );
        assert_eq!(
            from_upstream(json!({"sub": "s"}), "t"),
            Err(AnswerError::NoActive)
        );
        assert_eq!(
            from_upstream(json!({"active": "true"}), "t"),
            Err(AnswerError::NoActive)
        );
        assert_eq!(
            from_upstream(json!({"active": 1}), "t"),
            Err(AnswerError::NoActive)
        );
    }
}
