//! `WWW-Authenticate` challenges: RFC 6750 section 3 (`Bearer`) and the RFC 9449
//! section 7.1 form (`DPoP`, with `algs`), built by one pure function that every
//! adapter shares (ext_authz's denied answers today; Validate's `www_authenticate`).
//!
//! Parameter values are quoted-strings. RFC 6750 restricts `error_description` and
//! `scope` to `%x20-21 / %x23-5B / %x5D-7E`, so characters outside that set are dropped
//! rather than escaped; the realm is escaped as RFC 9110 quoted-string allows.

use std::fmt::Write as _;

use super::ErrorCode;

/// The realm introspectd names in its challenges.
pub const REALM: &str = "introspectd";

/// The authentication scheme a challenge asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// RFC 6750 bearer tokens.
    Bearer,
    /// RFC 9449 DPoP-bound tokens.
    DPoP,
}

impl Scheme {
    /// The scheme name as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::DPoP => "DPoP",
        }
    }
}

/// The `error` parameter (RFC 6750 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeError {
    /// The request is malformed: a missing or repeated parameter, an unsupported scheme.
    InvalidRequest,
    /// The token is expired, revoked, malformed or invalid for other reasons.
    InvalidToken,
    /// The token lacks a scope the resource requires.
    InsufficientScope,
    /// The DPoP proof is missing or invalid (RFC 9449 7.1).
    InvalidDpopProof,
    /// The resource server requires a DPoP nonce (RFC 9449 9); the answer carries one
    /// in `DPoP-Nonce`.
    UseDpopNonce,
}

impl ChallengeError {
    /// The parameter value.
    pub fn as_str(self) -> &'static str {
        match self {
            ChallengeError::InvalidRequest => "invalid_request",
            ChallengeError::InvalidToken => "invalid_token",
            ChallengeError::InsufficientScope => "insufficient_scope",
            ChallengeError::InvalidDpopProof => "invalid_dpop_proof",
            ChallengeError::UseDpopNonce => "use_dpop_nonce",
        }
    }

    /// The challenge error of a rejected token, or `None` when the rejection is the
    /// server's fault (KEYS_UNAVAILABLE, STATE_UNAVAILABLE: there is nothing for the
    /// client to fix, so no challenge is sent).
    pub fn of(code: ErrorCode) -> Option<Self> {
        match code {
            ErrorCode::KeysUnavailable | ErrorCode::StateUnavailable => None,
            ErrorCode::InsufficientScope => Some(ChallengeError::InsufficientScope),
            ErrorCode::InvalidDpopProof => Some(ChallengeError::InvalidDpopProof),
            ErrorCode::UseDpopNonce => Some(ChallengeError::UseDpopNonce),
            _ => Some(ChallengeError::InvalidToken),
        }
    }
}

/// One challenge. Without `error` it is the bare challenge of a request that carried no
/// credentials (RFC 6750 section 3.1: no error code then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Challenge<'a> {
    /// The scheme.
    pub scheme: Scheme,
    /// `realm`.
    pub realm: &'a str,
    /// `algs` (DPoP only): the proof algorithms accepted, space-separated on the wire.
    pub algs: &'a [&'a str],
    /// `error`.
    pub error: Option<ChallengeError>,
    /// `error_description`, sent only with `error`.
    pub error_description: Option<&'a str>,
    /// `scope`: the scopes required, sent with `insufficient_scope`.
    pub scope: &'a [String],
}

impl<'a> Challenge<'a> {
    /// The bare `Bearer realm="introspectd"` challenge.
    pub fn bearer() -> Self {
        Self {
            scheme: Scheme::Bearer,
            realm: REALM,
            algs: &[],
            error: None,
            error_description: None,
            scope: &[],
        }
    }

    /// The challenge for an error: `description` is sent as `error_description`, and
    /// `required_scopes` as `scope` when the error is `insufficient_scope`.
    pub fn error(
        error: ChallengeError,
        description: Option<&'a str>,
        required_scopes: &'a [String],
    ) -> Self {
        Self {
            error: Some(error),
            error_description: description,
            scope: if error == ChallengeError::InsufficientScope {
                required_scopes
            } else {
                &[]
            },
            ..Self::bearer()
        }
    }

    /// The challenge for a rejected token, or `None` when none is sent (see
    /// [`ChallengeError::of`]). Every error but `insufficient_scope` carries the code's
    /// name as `error_description`; `insufficient_scope` carries the required scopes
    /// instead.
    pub fn for_rejection(code: ErrorCode, required_scopes: &'a [String]) -> Option<Self> {
        let error = ChallengeError::of(code)?;
        let description = (error != ChallengeError::InsufficientScope).then(|| code.as_str());
        Some(Self::error(error, description, required_scopes))
    }

    /// The same challenge with the `DPoP` scheme, advertising `algs` (RFC 9449 7.1).
    pub fn with_dpop(self, algs: &'a [&'a str]) -> Self {
        Self {
            scheme: Scheme::DPoP,
            algs,
            ..self
        }
    }

    /// The `WWW-Authenticate` header value.
    pub fn header_value(&self) -> String {
        let mut out = String::with_capacity(96);
        out.push_str(self.scheme.as_str());
        out.push_str(" realm=\"");
        for c in self.realm.chars() {
            if matches!(c, '"' | '\\') {
                out.push('\\');
            }
            if !c.is_control() {
                out.push(c);
            }
        }
        out.push('"');
        if !self.algs.is_empty() {
            param(&mut out, "algs", self.algs.iter().copied());
        }
        if let Some(error) = self.error {
            param(&mut out, "error", [error.as_str()]);
            if let Some(d) = self.error_description {
                param(&mut out, "error_description", [d]);
            }
            if !self.scope.is_empty() {
                param(&mut out, "scope", self.scope.iter().map(String::as_str));
            }
        }
        out
    }
}

/// Appends `, name="v1 v2 ..."`, dropping characters RFC 6750 does not allow in a
/// parameter value.
fn param<'v>(out: &mut String, name: &str, values: impl IntoIterator<Item = &'v str>) {
    let _ = write!(out, ", {name}=\"");
    for (i, v) in values.into_iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.extend(v.chars().filter(|c| allowed_in_value(*c)));
    }
    out.push('"');
}

/// `%x20-21 / %x23-5B / %x5D-7E`.
fn allowed_in_value(c: char) -> bool {
    matches!(c, ' '..='~') && c != '"' && c != '\\'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_challenge_has_no_error() {
        assert_eq!(
            Challenge::bearer().header_value(),
            r#"Bearer realm="introspectd""#
        );
    }

    #[test]
    fn invalid_token_names_the_code() {
        let c = Challenge::for_rejection(ErrorCode::Expired, &[]).expect("challenge");
        assert_eq!(
            c.header_value(),
            r#"Bearer realm="introspectd", error="invalid_token", error_description="expired""#
        );
    }

    #[test]
    fn insufficient_scope_lists_the_required_scopes() {
        let scopes = vec!["api:read".to_string(), "api:write".to_string()];
        let c = Challenge::for_rejection(ErrorCode::InsufficientScope, &scopes).expect("challenge");
        assert_eq!(
            c.header_value(),
            r#"Bearer realm="introspectd", error="insufficient_scope", scope="api:read api:write""#
        );
        let other = Challenge::for_rejection(ErrorCode::InvalidAudience, &scopes).expect("c");
        assert!(
            !other.header_value().contains("scope="),
            "scope only with insufficient_scope"
        );
    }

    #[test]
    fn server_faults_send_no_challenge() {
        let server_faults = [ErrorCode::KeysUnavailable, ErrorCode::StateUnavailable];
        for code in server_faults {
            assert_eq!(Challenge::for_rejection(code, &[]), None, "{code}");
        }
        for code in ErrorCode::ALL {
            if !server_faults.contains(&code) {
                assert!(ChallengeError::of(code).is_some(), "{code}");
            }
        }
    }

    #[test]
    fn invalid_request() {
        let c = Challenge::error(ChallengeError::InvalidRequest, None, &[]);
        assert_eq!(
            c.header_value(),
            r#"Bearer realm="introspectd", error="invalid_request""#
        );
    }

    #[test]
    fn values_never_break_out_of_their_quotes() {
        let scopes = vec!["a\"b\\c\r\nd".to_string()];
        let c = Challenge {
            realm: "r\"\\\n",
            ..Challenge::error(ChallengeError::InsufficientScope, Some("x\"y"), &scopes)
        };
        assert_eq!(
            c.header_value(),
            r#"Bearer realm="r\"\\", error="insufficient_scope", error_description="xy", scope="abcd""#
        );
    }

    #[test]
    fn dpop_errors_of_rfc_9449() {
        let algs = ["ES256", "PS256", "EdDSA"];
        let c = |code| {
            Challenge::for_rejection(code, &[])
                .expect("challenge")
                .with_dpop(&algs)
                .header_value()
        };
        assert_eq!(
            c(ErrorCode::InvalidDpopProof),
            r#"DPoP realm="introspectd", algs="ES256 PS256 EdDSA", error="invalid_dpop_proof", error_description="invalid_dpop_proof""#
        );
        assert_eq!(
            c(ErrorCode::UseDpopNonce),
            r#"DPoP realm="introspectd", algs="ES256 PS256 EdDSA", error="use_dpop_nonce", error_description="use_dpop_nonce""#
        );
        assert_eq!(
            c(ErrorCode::BindingMismatch),
            r#"DPoP realm="introspectd", algs="ES256 PS256 EdDSA", error="invalid_token", error_description="binding_mismatch""#
        );
        assert_eq!(
            Challenge::for_rejection(ErrorCode::BindingMismatch, &[])
                .expect("challenge")
                .header_value(),
            r#"Bearer realm="introspectd", error="invalid_token", error_description="binding_mismatch""#
        );
    }

    #[test]
    fn dpop_form_of_rfc_9449() {
        let c = Challenge {
            scheme: Scheme::DPoP,
            algs: &["ES256", "PS256"],
            ..Challenge::error(ChallengeError::InvalidToken, Some("expired"), &[])
        };
        assert_eq!(
            c.header_value(),
            r#"DPoP realm="introspectd", algs="ES256 PS256", error="invalid_token", error_description="expired""#
        );
    }
}
