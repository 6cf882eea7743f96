//! The `WWW-Authenticate` challenge a resource server sends with a refusal: RFC 6750
//! section 3 for the `Bearer` scheme, RFC 9449 section 7.1 for `DPoP` (with `algs`).
//! One pure function, shared by Validate's `www_authenticate` and Envoy ext_authz.

use jsonwebtoken::Algorithm;

use super::ErrorCode;

/// The `realm` of every challenge.
pub const REALM: &str = "introspectd";

/// What the challenge reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeError<'a> {
    /// No credentials at all: a bare challenge without `error` (RFC 6750 3.1).
    NoToken,
    /// The request itself is malformed (`invalid_request`).
    InvalidRequest,
    /// The token (or its proof) was refused with this code; `scopes` are the required
    /// scopes, reported with `insufficient_scope`.
    Refused {
        /// The refusal's code.
        code: ErrorCode,
        /// The scopes the request required.
        scopes: &'a [String],
    },
}

/// The scheme a challenge uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChallengeScheme<'a> {
    /// `Bearer`.
    Bearer,
    /// `DPoP`, advertising the accepted proof algorithms.
    Dpop(&'a [Algorithm]),
}

/// The RFC 6750 / RFC 9449 `error` value for a refusal code.
pub fn error_value(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::InsufficientScope => "insufficient_scope",
        ErrorCode::InvalidDpopProof => "invalid_dpop_proof",
        ErrorCode::UseDpopNonce => "use_dpop_nonce",
        _ => "invalid_token",
    }
}

/// True for codes that are the service's own trouble (answered 503 without a
/// challenge), not the client's.
pub fn is_unavailable(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::KeysUnavailable)
}

/// A quoted-string value: the inputs here are fixed names, but a quote or backslash is
/// escaped all the same (RFC 9110 5.6.4).
fn quoted(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('"');
    for c in v.chars().filter(|c| !c.is_control()) {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The challenge text, or `None` when the refusal gets none (the service's own
/// unavailability). `error_description` is the code's lower-case name, never a claim.
pub fn www_authenticate(scheme: ChallengeScheme<'_>, error: ChallengeError<'_>) -> Option<String> {
    let mut params = vec![format!("realm={}", quoted(REALM))];
    let name = match scheme {
        ChallengeScheme::Bearer => "Bearer",
        ChallengeScheme::Dpop(algs) => {
            let names: Vec<String> = algs.iter().map(|a| format!("{a:?}")).collect();
            params.push(format!("algs={}", quoted(&names.join(" "))));
            "DPoP"
        }
    };
    match error {
        ChallengeError::NoToken => {}
        ChallengeError::InvalidRequest => {
            params.push(format!("error={}", quoted("invalid_request")))
        }
        ChallengeError::Refused { code, scopes } => {
            if is_unavailable(code) {
                return None;
            }
            params.push(format!("error={}", quoted(error_value(code))));
            params.push(format!("error_description={}", quoted(code.as_str())));
            if code == ErrorCode::InsufficientScope && !scopes.is_empty() {
                params.push(format!("scope={}", quoted(&scopes.join(" "))));
            }
        }
    }
    Some(format!("{name} {}", params.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALGS: [Algorithm; 3] = [Algorithm::ES256, Algorithm::PS256, Algorithm::EdDSA];

    fn refused(code: ErrorCode) -> ChallengeError<'static> {
        ChallengeError::Refused { code, scopes: &[] }
    }

    #[test]
    fn bearer_challenges() {
        assert_eq!(
            www_authenticate(ChallengeScheme::Bearer, ChallengeError::NoToken).as_deref(),
            Some(r#"Bearer realm="introspectd""#)
        );
        assert_eq!(
            www_authenticate(ChallengeScheme::Bearer, refused(ErrorCode::Expired)).as_deref(),
            Some(
                r#"Bearer realm="introspectd", error="invalid_token", error_description="expired""#
            )
        );
        assert_eq!(
            www_authenticate(ChallengeScheme::Bearer, ChallengeError::InvalidRequest).as_deref(),
            Some(r#"Bearer realm="introspectd", error="invalid_request""#)
        );
        let scopes = vec!["read".to_string(), "write".to_string()];
        assert_eq!(
            www_authenticate(
                ChallengeScheme::Bearer,
                ChallengeError::Refused {
                    code: ErrorCode::InsufficientScope,
                    scopes: &scopes
                }
            )
            .as_deref(),
            Some(
                r#"Bearer realm="introspectd", error="insufficient_scope", error_description="insufficient_scope", scope="read write""#
            )
        );
        assert_eq!(
            www_authenticate(ChallengeScheme::Bearer, refused(ErrorCode::BindingMismatch))
                .as_deref(),
            Some(
                r#"Bearer realm="introspectd", error="invalid_token", error_description="binding_mismatch""#
            )
        );
        assert_eq!(
            www_authenticate(ChallengeScheme::Bearer, refused(ErrorCode::KeysUnavailable)),
            None
        );
    }

    #[test]
    fn dpop_challenges() {
        let dpop = ChallengeScheme::Dpop(&ALGS);
        assert_eq!(
            www_authenticate(dpop, refused(ErrorCode::InvalidDpopProof)).as_deref(),
            Some(
                r#"DPoP realm="introspectd", algs="ES256 PS256 EdDSA", error="invalid_dpop_proof", error_description="invalid_dpop_proof""#
            )
        );
        assert_eq!(
            www_authenticate(dpop, refused(ErrorCode::UseDpopNonce)).as_deref(),
            Some(
                r#"DPoP realm="introspectd", algs="ES256 PS256 EdDSA", error="use_dpop_nonce", error_description="use_dpop_nonce""#
            )
        );
        assert_eq!(
            www_authenticate(dpop, refused(ErrorCode::Expired)).as_deref(),
            Some(
                r#"DPoP realm="introspectd", algs="ES256 PS256 EdDSA", error="invalid_token", error_description="expired""#
            )
        );
        assert_eq!(
            www_authenticate(dpop, ChallengeError::NoToken).as_deref(),
            Some(r#"DPoP realm="introspectd", algs="ES256 PS256 EdDSA""#)
        );
    }

    #[test]
    fn every_code_has_an_error_value() {
        for code in ErrorCode::ALL {
            let v = error_value(code);
            assert!(
                [
                    "invalid_token",
                    "insufficient_scope",
                    "invalid_dpop_proof",
                    "use_dpop_nonce"
                ]
                .contains(&v)
            );
        }
        assert_eq!(quoted("a\"b\\c\n"), r#""a\"b\\c""#);
    }
}
