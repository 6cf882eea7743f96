//! The claim set: parsed once into the compact form of `jwt::compact` (no
//! `serde_json::Value` tree), registered claims located and type-checked in the same
//! pass, and the checks of BEHAVIOUR.md steps 5-7 (type, time, required claims, audience
//! and `azp`, scopes, nonce), each a pure function of the claims, a policy and the
//! current time.

use std::{
    collections::HashSet,
    time::{Duration, SystemTime},
};

use serde_json::{Map, Value};

use super::{
    ErrorCode, Rejection,
    compact::{self, ListRef, ObjectRef, ValueRef},
    echo,
};

/// Where a value sits in the encoded claim set (start, end).
type Span = (u32, u32);

/// A payload parsed as a claim set, registered claims typed. Strings are read from the
/// encoded claim set where they are; nothing is copied out of it.
#[derive(Clone, PartialEq)]
pub struct Claims {
    encoded: Box<[u8]>,
    iss: Option<Span>,
    sub: Option<Span>,
    jti: Option<Span>,
    /// `aud`: one string, or the content of a list of strings.
    aud: Option<(Span, bool)>,
    /// The value of `scp`, else of `scope`.
    scope: Option<Span>,
    /// `exp`, seconds since the epoch.
    pub exp: Option<f64>,
    /// `nbf`.
    pub nbf: Option<f64>,
    /// `iat`.
    pub iat: Option<f64>,
    /// Whether there is a `cnf` member: most tokens are not sender-constrained, and
    /// every call asks (it fits in the struct's padding).
    has_cnf: bool,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Claim values stay out of debug output (they may end up in logs).
        f.debug_struct("Claims")
            .field("members", &self.members().iter().count())
            .field("exp", &self.exp)
            .finish_non_exhaustive()
    }
}

fn malformed(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::Malformed, msg)
}

fn span_of(base: &[u8], part: &[u8]) -> Span {
    // `part` is a sub-slice of `base`; both lengths are under the token size limit.
    let start = (part.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
    (start as u32, (start + part.len()) as u32)
}

/// 0001-01-01T00:00:00Z in seconds since the epoch: the earliest time a protobuf
/// `Timestamp` (and so Go's and Java's protobuf libraries) accepts.
pub const MIN_NUMERIC_DATE: i64 = -62_135_596_800;
/// 9999-12-31T23:59:59Z: the last whole second a protobuf `Timestamp` accepts.
pub const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// True when `secs` is a NumericDate a protobuf `Timestamp` can hold (fractions of the
/// last second included).
pub fn in_timestamp_range(secs: f64) -> bool {
    secs >= MIN_NUMERIC_DATE as f64 && secs < (MAX_NUMERIC_DATE + 1) as f64
}

fn string<'a>(name: &str, v: ValueRef<'a>) -> Result<&'a str, Rejection> {
    v.as_str()
        .ok_or_else(|| malformed(format!("claim `{name}` is not a string")))
}

fn number(name: &str, v: ValueRef<'_>) -> Result<f64, Rejection> {
    match v {
        ValueRef::Number(n) if in_timestamp_range(n) => Ok(n),
        ValueRef::Number(_) => Err(malformed(format!(
            "claim `{name}` is outside 0001-01-01..9999-12-31"
        ))),
        _ => Err(malformed(format!("claim `{name}` is not a number"))),
    }
}

impl Claims {
    /// Parses a payload: a strict JSON object whose registered claims have the right types.
    pub fn parse(payload: &[u8]) -> Result<Self, Rejection> {
        let encoded =
            compact::parse_object(payload).map_err(|e| malformed(format!("payload: {e}")))?;
        let mut c = Claims {
            encoded: encoded.into_boxed_slice(),
            iss: None,
            sub: None,
            jti: None,
            aud: None,
            scope: None,
            exp: None,
            nbf: None,
            iat: None,
            has_cnf: false,
        };
        let base = &c.encoded[..];
        let mut scope = None;
        for (name, v) in ObjectRef::new(base).iter() {
            let at = |s: &str| Some(span_of(base, s.as_bytes()));
            match name {
                "iss" => c.iss = at(string(name, v)?),
                "sub" => c.sub = at(string(name, v)?),
                "jti" => c.jti = at(string(name, v)?),
                "exp" => c.exp = Some(number(name, v)?),
                "nbf" => c.nbf = Some(number(name, v)?),
                "iat" => c.iat = Some(number(name, v)?),
                "aud" => c.aud = Some(audience(base, v)?),
                "scp" => c.scope = Some(value_span(base, v)),
                "scope" => scope = Some(value_span(base, v)),
                "cnf" => c.has_cnf = true,
                _ => {}
            }
        }
        c.scope = c.scope.or(scope);
        Ok(c)
    }

    fn text(&self, span: Option<Span>) -> Option<&str> {
        let (a, b) = span?;
        std::str::from_utf8(self.encoded.get(a as usize..b as usize)?).ok()
    }

    fn value(&self, span: Span) -> ValueRef<'_> {
        ValueRef::decode(
            self.encoded
                .get(span.0 as usize..span.1 as usize)
                .unwrap_or_default(),
        )
    }

    /// `iss`.
    pub fn iss(&self) -> Option<&str> {
        self.text(self.iss)
    }

    /// `sub`.
    pub fn sub(&self) -> Option<&str> {
        self.text(self.sub)
    }

    /// `jti`.
    pub fn jti(&self) -> Option<&str> {
        self.text(self.jti)
    }

    /// `aud`: a string is a one-element list.
    pub fn aud(&self) -> impl Iterator<Item = &str> + Clone {
        let (one, many) = match self.aud {
            Some((span, false)) => (self.text(Some(span)), None),
            Some((span, true)) => {
                let list = self.encoded.get(span.0 as usize..span.1 as usize);
                (None, list.map(ListRef::new))
            }
            None => (None, None),
        };
        one.into_iter().chain(
            many.into_iter()
                .flat_map(|l| l.iter().filter_map(ValueRef::as_str)),
        )
    }

    /// Every member, in document order.
    pub fn members(&self) -> ObjectRef<'_> {
        ObjectRef::new(&self.encoded)
    }

    /// `cnf`, the token's sender constraint (RFC 7800), when it has one; found without
    /// reading the claims when it has none.
    pub fn cnf(&self) -> Option<ValueRef<'_>> {
        if self.has_cnf { self.get("cnf") } else { None }
    }

    /// A member by name.
    pub fn get(&self, name: &str) -> Option<ValueRef<'_>> {
        self.members().get(name)
    }

    /// Whether a member is named `name`.
    pub fn contains(&self, name: &str) -> bool {
        self.members().contains(name)
    }

    /// A string claim, if present and a string.
    pub fn str(&self, name: &str) -> Option<&str> {
        self.get(name).and_then(ValueRef::as_str)
    }

    /// Granted scopes from `scp`, else `scope`: a space-separated string or an array.
    pub fn scopes(&self) -> impl Iterator<Item = &str> + Clone {
        let (string, list) = match self.scope.map(|s| self.value(s)) {
            Some(ValueRef::String(s)) => (Some(s), None),
            Some(ValueRef::List(l)) => (None, Some(l)),
            _ => (None, None),
        };
        let listed = list
            .into_iter()
            .flat_map(|l| l.iter().filter_map(ValueRef::as_str));
        string
            .into_iter()
            .chain(listed)
            .flat_map(str::split_whitespace)
    }

    /// The claim set as the content of a `google.protobuf.Struct`, ready to send.
    pub fn encoded(&self) -> &[u8] {
        &self.encoded
    }

    /// The claim set as a `serde_json` map, members in document order.
    pub fn to_json(&self) -> Map<String, Value> {
        self.members().to_json()
    }

    /// Bytes held on the heap.
    pub fn heap_bytes(&self) -> usize {
        self.encoded.len()
    }
}

/// Past this many accepted values, membership is checked through a hash set rather than
/// by scanning (request lists are bounded, a token's lists only by its size).
const LINEAR_MATCH_MAX: usize = 8;

/// Membership in a list of accepted values, linear for short lists, hashed otherwise, so
/// that matching costs O(n + m), never O(n·m).
enum Accepted<'a> {
    Few(&'a [String]),
    Many(HashSet<&'a str>),
}

impl<'a> Accepted<'a> {
    fn new(values: &'a [String]) -> Self {
        if values.len() <= LINEAR_MATCH_MAX {
            Self::Few(values)
        } else {
            Self::Many(values.iter().map(String::as_str).collect())
        }
    }

    fn contains(&self, v: &str) -> bool {
        match self {
            Self::Few(values) => values.iter().any(|a| a == v),
            Self::Many(set) => set.contains(v),
        }
    }
}

/// Where a member's whole value (the content of its `google.protobuf.Value`) is.
fn value_span(base: &[u8], v: ValueRef<'_>) -> Span {
    match v {
        ValueRef::String(s) => {
            // Back up over the string's tag and length to the start of the Value.
            let (a, b) = span_of(base, s.as_bytes());
            (a.saturating_sub(1 + varint_len(s.len()) as u32), b)
        }
        ValueRef::List(l) => {
            let (a, b) = span_of(base, l.bytes());
            (a.saturating_sub(1 + varint_len(l.bytes().len()) as u32), b)
        }
        _ => (0, 0),
    }
}

fn varint_len(n: usize) -> usize {
    let mut len = 1;
    let mut n = n >> 7;
    while n > 0 {
        len += 1;
        n >>= 7;
    }
    len
}

/// `aud`: a string, or an array of strings (kept as the list's content).
fn audience(base: &[u8], v: ValueRef<'_>) -> Result<(Span, bool), Rejection> {
    let not = || malformed("claim `aud` is not a string or array of strings");
    match v {
        ValueRef::String(s) => Ok((span_of(base, s.as_bytes()), false)),
        ValueRef::List(l) if l.iter().all(|i| i.as_str().is_some()) => {
            Ok((span_of(base, l.bytes()), true))
        }
        _ => Err(not()),
    }
}

/// How many names an error message lists before it only counts the rest.
const LISTED_NAMES: usize = 3;

/// A `typ` value as compared: ASCII lower case without an `application/` prefix (RFC 7515
/// 4.1.9). Nothing is trimmed: `"at+jwt "` is another type than `at+jwt`.
pub fn normalize_type(typ: &str) -> String {
    let lower = typ.to_ascii_lowercase();
    match lower.strip_prefix("application/") {
        Some(rest) => rest.to_string(),
        None => lower,
    }
}

/// True for a GUID in its 36-character form (an Entra ID `tid`).
pub fn is_guid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// The `typ` rule: absent list accepts anything; otherwise the header's `typ` must be one
/// of them, compared case-insensitively with an optional `application/` prefix.
pub fn check_type(typ: Option<&str>, accepted: Option<&[String]>) -> Result<(), Rejection> {
    let Some(accepted) = accepted else {
        return Ok(());
    };
    let Some(typ) = typ else {
        return Err(Rejection::new(
            ErrorCode::InvalidType,
            format!("typ is missing; accepted: {}", accepted.join(", ")),
        ));
    };
    let norm = normalize_type(typ);
    if accepted.contains(&norm) {
        Ok(())
    } else {
        Err(Rejection::new(
            ErrorCode::InvalidType,
            format!(
                "typ {} is not accepted; accepted: {}",
                echo(typ),
                accepted.join(", ")
            ),
        ))
    }
}

/// Inputs of the time and presence checks.
#[derive(Debug, Clone, Copy)]
pub struct TimePolicy<'a> {
    /// Tolerance on each comparison.
    pub clock_skew: Duration,
    /// Upper bound on `exp - iat`.
    pub max_lifetime: Option<Duration>,
    /// Claims that must be present.
    pub required_claims: &'a [String],
}

/// Now, in seconds since the epoch (fractional), the unit of `exp`, `nbf` and `iat`.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// `exp` (when required), `nbf`, `iat`, the lifetime bound, then the other required
/// claims; `now` is seconds since the epoch.
pub fn check_time(claims: &Claims, now: f64, policy: &TimePolicy<'_>) -> Result<(), Rejection> {
    let skew = policy.clock_skew.as_secs_f64();
    let exp_required = policy.required_claims.iter().any(|c| c == "exp");
    match claims.exp {
        None if exp_required => {
            return Err(Rejection::new(
                ErrorCode::MissingClaim,
                "claim `exp` is required",
            ));
        }
        Some(exp) if now >= exp + skew => {
            return Err(Rejection::new(
                ErrorCode::Expired,
                format!("expired {:.0}s ago", now - exp),
            ));
        }
        _ => {}
    }
    if let Some(nbf) = claims.nbf
        && nbf > now + skew
    {
        return Err(Rejection::new(
            ErrorCode::NotYetValid,
            format!("not valid for another {:.0}s (nbf)", nbf - now),
        ));
    }
    if let Some(iat) = claims.iat
        && iat > now + skew
    {
        return Err(Rejection::new(
            ErrorCode::NotYetValid,
            format!("issued {:.0}s in the future (iat)", iat - now),
        ));
    }
    if let (Some(max), Some(exp)) = (policy.max_lifetime, claims.exp) {
        // Without `iat` the lifetime still left is what a holder can use, so that is
        // what is bounded.
        let start = claims.iat.unwrap_or(now);
        let lifetime = exp - start;
        if lifetime > max.as_secs_f64() {
            return Err(Rejection::new(
                ErrorCode::LifetimeTooLong,
                format!(
                    "lifetime {:.0}s exceeds the maximum of {}s",
                    lifetime,
                    max.as_secs()
                ),
            ));
        }
    }
    for name in policy.required_claims {
        if name != "exp" && !claims.contains(name) {
            return Err(Rejection::new(
                ErrorCode::MissingClaim,
                format!("claim {} is required", echo(name)),
            ));
        }
    }
    Ok(())
}

/// What Validate checks a token as: an OAuth access token (the default) or an OpenID
/// Connect ID token, whose extra `azp` rule (OpenID Connect Core 3.1.3.7) applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TokenKind {
    /// An access token: one accepted audience in `aud` is enough (RFC 9068 4).
    #[default]
    AccessToken,
    /// An ID token: with several audiences, `azp` must be present and accepted.
    IdToken,
}

impl TokenKind {
    /// The configuration spelling (`access_token`, `id_token`).
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::AccessToken => "access_token",
            TokenKind::IdToken => "id_token",
        }
    }
}

/// The audience rule: one of `accepted` must be in `aud`. For an ID token with several
/// audiences, `azp` must also be present and be an accepted audience (OpenID Connect
/// Core 3.1.3.7); an access token's `azp` (Keycloak puts the client there) is not an
/// audience and is not checked. An empty `accepted` list rejects: there is never a
/// silent pass.
pub fn check_audience(
    claims: &Claims,
    accepted: &[String],
    kind: TokenKind,
) -> Result<(), Rejection> {
    if accepted.is_empty() {
        return Err(Rejection::new(
            ErrorCode::InvalidAudience,
            "no audience is configured for this tenant and the request named none",
        ));
    }
    let mut aud = claims.aud();
    if aud.next().is_none() {
        return Err(Rejection::new(
            ErrorCode::InvalidAudience,
            "token has no aud",
        ));
    }
    let several = aud.next().is_some();
    let accepted = Accepted::new(accepted);
    if !claims.aud().any(|a| accepted.contains(a)) {
        return Err(Rejection::new(
            ErrorCode::InvalidAudience,
            "no audience of the token is accepted",
        ));
    }
    if kind == TokenKind::IdToken && several {
        match claims.get("azp") {
            Some(ValueRef::String(azp)) if accepted.contains(azp) => {}
            Some(ValueRef::String(_)) => {
                return Err(Rejection::new(
                    ErrorCode::InvalidAudience,
                    "ID token has several audiences and its azp is not an accepted audience",
                ));
            }
            _ => {
                return Err(Rejection::new(
                    ErrorCode::InvalidAudience,
                    "ID token has several audiences but no azp",
                ));
            }
        }
    }
    Ok(())
}

/// Every one of `required` must be granted. The message names at most a few missing
/// scopes and counts the rest.
pub fn check_scopes(claims: &Claims, required: &[String]) -> Result<(), Rejection> {
    if required.is_empty() {
        return Ok(());
    }
    // A few required scopes are looked for in the granted ones directly (no allocation);
    // more are matched through a set of the granted ones, so the cost stays O(n + m).
    let granted = claims.scopes();
    let set: Option<HashSet<&str>> =
        (required.len() > LINEAR_MATCH_MAX).then(|| granted.clone().collect());
    let is_granted = |r: &str| match &set {
        Some(set) => set.contains(r),
        None => granted.clone().any(|g| g == r),
    };
    let missing: Vec<&String> = required
        .iter()
        .filter(|r| !is_granted(r.as_str()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = missing.iter().take(LISTED_NAMES).map(|m| echo(m)).collect();
    let more = missing.len().saturating_sub(LISTED_NAMES);
    let rest = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Err(Rejection::new(
        ErrorCode::InsufficientScope,
        format!(
            "missing {} of the required scopes: {}{rest}",
            missing.len(),
            names.join(", ")
        ),
    ))
}

/// When the request carries a nonce, the token's `nonce` must equal it.
pub fn check_nonce(claims: &Claims, expected: Option<&str>) -> Result<(), Rejection> {
    let Some(expected) = expected else {
        return Ok(());
    };
    match claims.str("nonce") {
        Some(n) if constant_time_eq(n.as_bytes(), expected.as_bytes()) => Ok(()),
        Some(_) => Err(Rejection::new(
            ErrorCode::InvalidNonce,
            "nonce does not match",
        )),
        None => Err(Rejection::new(
            ErrorCode::InvalidNonce,
            "token has no nonce",
        )),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(json: &str) -> Claims {
        Claims::parse(json.as_bytes()).expect("parses")
    }

    fn policy(required: &[String]) -> TimePolicy<'_> {
        TimePolicy {
            clock_skew: Duration::from_secs(60),
            max_lifetime: None,
            required_claims: required,
        }
    }

    #[test]
    fn cnf_is_found_only_where_it_is() {
        let bound = claims(r#"{"iss":"a","cnf":{"jkt":"x"},"sub":"s"}"#);
        let Some(ValueRef::Object(cnf)) = bound.cnf() else {
            panic!("cnf is an object");
        };
        assert_eq!(cnf.get("jkt").and_then(ValueRef::as_str), Some("x"));
        assert!(claims(r#"{"iss":"a","sub":"s"}"#).cnf().is_none());
        // The flag lives in the struct's padding: a cached entry is no larger for it.
        if cfg!(target_pointer_width = "64") {
            assert_eq!(std::mem::size_of::<Claims>(), 128);
        }
    }

    #[test]
    fn registered_claim_types_are_checked() {
        for bad in [
            r#"{"iss":1}"#,
            r#"{"sub":true}"#,
            r#"{"aud":5}"#,
            r#"{"aud":["a",1]}"#,
            r#"{"exp":"1"}"#,
            r#"{"nbf":null}"#,
            r#"{"iat":[1]}"#,
            r#"{"jti":{}}"#,
            r#"{"a":1,"a":2}"#,
        ] {
            assert_eq!(
                Claims::parse(bad.as_bytes()).unwrap_err().code,
                ErrorCode::Malformed,
                "{bad}"
            );
        }
        for out_of_range in [
            r#"{"exp":1e300}"#,
            r#"{"exp":253402300800}"#,
            r#"{"iat":-62135596801}"#,
            r#"{"nbf":-1e19}"#,
            r#"{"exp":18446744073709551615}"#,
            r#"{"nbf":-9223372036854775808}"#,
        ] {
            assert_eq!(
                Claims::parse(out_of_range.as_bytes()).unwrap_err().code,
                ErrorCode::Malformed,
                "{out_of_range}"
            );
        }
        let edges = claims(r#"{"exp":253402300799.5,"iat":-62135596800}"#);
        assert_eq!(edges.exp, Some(253402300799.5));
        let c = claims(r#"{"aud":"x","exp":1.5}"#);
        assert_eq!(c.aud().collect::<Vec<_>>(), ["x"]);
        assert_eq!(c.exp, Some(1.5));
    }

    #[test]
    fn time_checks_honour_skew() {
        let req = vec!["exp".to_string()];
        let now = 1_000_000.0;
        let p = policy(&req);
        assert!(check_time(&claims(r#"{"exp":1000030}"#), now, &p).is_ok());
        assert!(
            check_time(&claims(r#"{"exp":999950}"#), now, &p).is_ok(),
            "within skew"
        );
        assert_eq!(
            check_time(&claims(r#"{"exp":999940}"#), now, &p)
                .unwrap_err()
                .code,
            ErrorCode::Expired
        );
        assert_eq!(
            check_time(&claims("{}"), now, &p).unwrap_err().code,
            ErrorCode::MissingClaim
        );
        assert!(
            check_time(&claims("{}"), now, &policy(&[])).is_ok(),
            "exp not required"
        );
        assert_eq!(
            check_time(&claims(r#"{"exp":1000100,"nbf":1000061}"#), now, &p)
                .unwrap_err()
                .code,
            ErrorCode::NotYetValid
        );
        assert!(check_time(&claims(r#"{"exp":1000100,"nbf":1000059}"#), now, &p).is_ok());
        assert_eq!(
            check_time(&claims(r#"{"exp":1000100,"iat":1000100}"#), now, &p)
                .unwrap_err()
                .code,
            ErrorCode::NotYetValid
        );
    }

    #[test]
    fn lifetime_is_bounded() {
        let req = vec!["exp".to_string()];
        let mut p = policy(&req);
        p.max_lifetime = Some(Duration::from_secs(3600));
        let now = 1_000_000.0;
        assert!(check_time(&claims(r#"{"iat":1000000,"exp":1003600}"#), now, &p).is_ok());
        assert_eq!(
            check_time(&claims(r#"{"iat":1000000,"exp":1003601}"#), now, &p)
                .unwrap_err()
                .code,
            ErrorCode::LifetimeTooLong
        );
        assert_eq!(
            check_time(&claims(r#"{"exp":1999999}"#), now, &p)
                .unwrap_err()
                .code,
            ErrorCode::LifetimeTooLong
        );
    }

    #[test]
    fn other_required_claims() {
        let req = vec!["exp".to_string(), "sub".to_string()];
        let p = policy(&req);
        assert_eq!(
            check_time(&claims(r#"{"exp":2000000}"#), 1.0, &p)
                .unwrap_err()
                .code,
            ErrorCode::MissingClaim
        );
    }

    #[test]
    fn audience_rules() {
        let acc = vec!["api".to_string()];
        for kind in [TokenKind::AccessToken, TokenKind::IdToken] {
            assert!(check_audience(&claims(r#"{"aud":"api"}"#), &acc, kind).is_ok());
            assert!(
                check_audience(&claims(r#"{"aud":["x","api"],"azp":"api"}"#), &acc, kind).is_ok()
            );
            for bad in [r#"{"aud":"x"}"#, "{}", r#"{"aud":[]}"#] {
                assert_eq!(
                    check_audience(&claims(bad), &acc, kind).unwrap_err().code,
                    ErrorCode::InvalidAudience,
                    "{bad}"
                );
            }
            assert_eq!(
                check_audience(&claims(r#"{"aud":"api"}"#), &[], kind)
                    .unwrap_err()
                    .code,
                ErrorCode::InvalidAudience
            );
        }
        // azp is an ID token rule only.
        for multi in [r#"{"aud":["x","api"]}"#, r#"{"aud":["x","api"],"azp":"x"}"#] {
            assert!(check_audience(&claims(multi), &acc, TokenKind::AccessToken).is_ok());
            assert_eq!(
                check_audience(&claims(multi), &acc, TokenKind::IdToken)
                    .unwrap_err()
                    .code,
                ErrorCode::InvalidAudience,
                "{multi}"
            );
        }
    }

    #[test]
    fn scopes_from_scp_or_scope() {
        let need = vec!["read".to_string(), "write".to_string()];
        assert!(check_scopes(&claims(r#"{"scp":"read write"}"#), &need).is_ok());
        assert!(check_scopes(&claims(r#"{"scope":["read","write"]}"#), &need).is_ok());
        assert_eq!(
            check_scopes(&claims(r#"{"scope":"read"}"#), &need)
                .unwrap_err()
                .code,
            ErrorCode::InsufficientScope
        );
        assert!(check_scopes(&claims("{}"), &[]).is_ok());
        let many: Vec<String> = (0..64).map(|i| format!("s{i}")).collect();
        let err = check_scopes(&claims(r#"{"scp":"s1 s3"}"#), &many).unwrap_err();
        assert_eq!(
            err.message,
            "missing 62 of the required scopes: `s0`, `s2`, `s4` and 59 more"
        );
    }

    #[test]
    fn long_lists_match_through_sets() {
        let accepted: Vec<String> = (0..20).map(|i| format!("api{i}")).collect();
        let access = TokenKind::AccessToken;
        assert!(check_audience(&claims(r#"{"aud":"api17"}"#), &accepted, access).is_ok());
        assert!(check_audience(&claims(r#"{"aud":"api20"}"#), &accepted, access).is_err());
        let granted = format!(r#"{{"scp":"{}"}}"#, "a ".repeat(5000).trim_end());
        assert!(check_scopes(&claims(&granted), &["a".to_string()]).is_ok());
    }

    #[test]
    fn nonce_rules() {
        assert!(check_nonce(&claims(r#"{"nonce":"n1"}"#), Some("n1")).is_ok());
        assert!(check_nonce(&claims("{}"), None).is_ok());
        assert_eq!(
            check_nonce(&claims(r#"{"nonce":"n2"}"#), Some("n1"))
                .unwrap_err()
                .code,
            ErrorCode::InvalidNonce
        );
        assert_eq!(
            check_nonce(&claims("{}"), Some("n1")).unwrap_err().code,
            ErrorCode::InvalidNonce
        );
    }

    #[test]
    fn typ_rules() {
        let acc = vec!["at+jwt".to_string()];
        assert!(check_type(Some("at+JWT"), Some(&acc)).is_ok());
        assert!(check_type(Some("application/at+jwt"), Some(&acc)).is_ok());
        assert_eq!(
            check_type(Some("JWT"), Some(&acc)).unwrap_err().code,
            ErrorCode::InvalidType
        );
        assert_eq!(
            check_type(None, Some(&acc)).unwrap_err().code,
            ErrorCode::InvalidType
        );
        assert!(check_type(None, None).is_ok());
    }

    #[test]
    fn typ_is_never_trimmed() {
        let acc = vec!["at+jwt".to_string()];
        for bad in [
            "at+jwt ",
            " at+jwt",
            "at+jwt\t",
            "application/ at+jwt",
            "at+jwt\0",
        ] {
            assert_eq!(
                check_type(Some(bad), Some(&acc)).unwrap_err().code,
                ErrorCode::InvalidType,
                "{bad:?}"
            );
        }
        assert_eq!(normalize_type("Application/AT+JWT"), "at+jwt");
    }
}
