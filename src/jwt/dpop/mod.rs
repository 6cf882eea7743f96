//! Sender-constrained tokens: DPoP (RFC 9449) and certificate binding (RFC 8705). What
//! the resource server received beside the token ([`Presentation`], parsed once at the
//! boundary), each DPoP proof rule of RFC 9449 section 4.3 as its own refusal
//! ([`proof`]), `htu` normalisation ([`htu`]), stateless nonces ([`nonce`]) and the
//! binding decision against the token's `cnf` ([`binding`]). Pure: keys are checked by
//! a [`proof::ProofKeys`] the caller passes, replay is recorded by the caller.

pub mod binding;
pub mod htu;
pub mod nonce;
pub mod proof;

use aws_lc_rs::digest;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

pub use binding::{Accepted, Binding, BindingKind, Mode, Refused, SenderPolicy, decide};
pub use htu::{Htu, HtuError};
pub use nonce::{NonceCheck, NonceKey};
pub use proof::{KeyFault, ProofKeys};

use super::{ErrorCode, Rejection};

/// The `DPoP` authorization scheme name (RFC 9449 7.1).
pub const DPOP_SCHEME: &str = "DPoP";
/// The `Bearer` authorization scheme name (RFC 6750).
pub const BEARER_SCHEME: &str = "Bearer";
/// Longest DPoP proof examined, in bytes; longer ones are refused unread.
pub const MAX_PROOF_BYTES: usize = 8 * 1024;

/// The authorization scheme the resource server received the token with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Scheme {
    /// `Bearer` (also: no scheme given).
    #[default]
    Bearer,
    /// `DPoP`.
    Dpop,
}

impl Scheme {
    /// Parses a scheme name, case-insensitively (RFC 9110 11.1); empty is `Bearer`.
    pub fn parse(name: &str) -> Option<Self> {
        if name.is_empty() || name.eq_ignore_ascii_case(BEARER_SCHEME) {
            Some(Self::Bearer)
        } else if name.eq_ignore_ascii_case(DPOP_SCHEME) {
            Some(Self::Dpop)
        } else {
            None
        }
    }
}

/// The HTTP request a DPoP proof must match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// The method, as sent (`htm`, compared case-sensitively).
    pub method: String,
    /// The URI as the client sent it, normalised (`htu`).
    pub uri: Htu,
}

/// Everything the resource server received beside the token, parsed at the boundary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Presentation {
    /// The authorization scheme.
    pub scheme: Scheme,
    /// Every `DPoP` header value, in order.
    pub proofs: Vec<String>,
    /// Method and URI; always present when `scheme` is `DPoP` or a proof was given.
    pub request: Option<HttpRequest>,
    /// base64url SHA-256 of the DER client certificate the caller's TLS terminated.
    pub certificate: Option<String>,
}

/// Why the request's sender-constraint fields are unusable (a bad request, not a
/// rejected token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresentationError {
    /// A scheme other than `Bearer` or `DPoP`.
    #[error("authorization_scheme must be Bearer or DPoP")]
    UnknownScheme,
    /// `authorization_scheme` says one thing and the token's prefix another.
    #[error("authorization_scheme disagrees with the scheme prefixed to the token")]
    ConflictingScheme,
    /// The DPoP scheme or a proof without `http_method`.
    #[error("http_method is required with the DPoP scheme or a DPoP proof")]
    MissingMethod,
    /// A method that is not an RFC 9110 token.
    #[error("http_method is not an HTTP method token")]
    BadMethod,
    /// The DPoP scheme or a proof without `http_uri`.
    #[error("http_uri is required with the DPoP scheme or a DPoP proof")]
    MissingUri,
    /// `http_uri` is not an absolute http(s) URI.
    #[error("http_uri: {0}")]
    BadUri(HtuError),
    /// `client_certificate_sha256` is not base64url of 32 bytes (hex is not accepted).
    #[error(
        "client_certificate_sha256 must be the base64url (unpadded) SHA-256 of the DER certificate"
    )]
    BadCertificateThumbprint,
    /// `client_certificate` and `client_certificate_sha256` name different certificates.
    #[error("client_certificate and client_certificate_sha256 disagree")]
    ConflictingCertificate,
}

/// The raw sender-constraint fields of a request, as the caller sent them.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawPresentation<'a> {
    /// `authorization_scheme`.
    pub scheme: &'a str,
    /// The scheme prefixed to the token, if any (`DPoP ` or `Bearer `).
    pub token_scheme: Option<Scheme>,
    /// `dpop_proofs`.
    pub proofs: &'a [String],
    /// `http_method`.
    pub method: &'a str,
    /// `http_uri`.
    pub uri: &'a str,
    /// `client_certificate` (DER).
    pub certificate_der: &'a [u8],
    /// `client_certificate_sha256`.
    pub certificate_sha256: &'a str,
}

/// The access token a proof must hash (`ath`), with its SHA-256 when the caller has taken
/// it already (Validate has: it is the verified-token cache's key).
#[derive(Debug, Clone, Copy)]
pub struct AccessToken<'a> {
    text: &'a str,
    sha256: Option<&'a [u8; 32]>,
}

impl<'a> AccessToken<'a> {
    /// The token as presented.
    pub fn new(text: &'a str) -> Self {
        Self { text, sha256: None }
    }

    /// The token and its SHA-256 (checked in debug builds).
    pub fn with_sha256(text: &'a str, sha256: &'a [u8; 32]) -> Self {
        debug_assert_eq!(
            digest::digest(&digest::SHA256, text.as_bytes()).as_ref(),
            sha256,
            "the digest is not the token's SHA-256"
        );
        Self {
            text,
            sha256: Some(sha256),
        }
    }

    /// What a proof's `ath` must be: the token's SHA-256, base64url.
    pub fn ath(&self) -> String {
        match self.sha256 {
            Some(h) => URL_SAFE_NO_PAD.encode(h),
            None => sha256_b64url(self.text.as_bytes()),
        }
    }
}

/// base64url SHA-256, the form of `ath`, `jkt` and `x5t#S256`.
pub fn sha256_b64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

/// True for canonical unpadded base64url of exactly 32 bytes (a SHA-256 thumbprint).
pub fn is_sha256_b64url(s: &str) -> bool {
    s.len() == 43 && URL_SAFE_NO_PAD.decode(s).is_ok_and(|b| b.len() == 32)
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl<'a> RawPresentation<'a> {
    /// Parses the fields once: scheme, method and URI (required with `DPoP` or a
    /// proof), and the certificate reduced to its thumbprint.
    pub fn parse(&self) -> Result<Presentation, PresentationError> {
        let named = Scheme::parse(self.scheme.trim()).ok_or(PresentationError::UnknownScheme)?;
        let scheme = match (self.scheme.trim().is_empty(), self.token_scheme) {
            (true, Some(s)) => s,
            (false, Some(s)) if s != named => return Err(PresentationError::ConflictingScheme),
            _ => named,
        };
        let needs_request = scheme == Scheme::Dpop || !self.proofs.is_empty();
        let request = if needs_request || !self.method.is_empty() || !self.uri.is_empty() {
            if self.method.is_empty() {
                return Err(PresentationError::MissingMethod);
            }
            if !self.method.bytes().all(is_tchar) {
                return Err(PresentationError::BadMethod);
            }
            if self.uri.is_empty() {
                return Err(PresentationError::MissingUri);
            }
            let uri = htu::normalise(self.uri).map_err(PresentationError::BadUri)?;
            Some(HttpRequest {
                method: self.method.to_string(),
                uri,
            })
        } else {
            None
        };
        let from_der =
            (!self.certificate_der.is_empty()).then(|| sha256_b64url(self.certificate_der));
        let given = match self.certificate_sha256.trim() {
            "" => None,
            s if is_sha256_b64url(s) => Some(s.to_string()),
            _ => return Err(PresentationError::BadCertificateThumbprint),
        };
        let certificate = match (from_der, given) {
            (Some(a), Some(b)) if a != b => return Err(PresentationError::ConflictingCertificate),
            (a, b) => a.or(b),
        };
        Ok(Presentation {
            scheme,
            proofs: self.proofs.to_vec(),
            request,
            certificate,
        })
    }
}

/// Why a sender constraint was not met. Each DPoP rule has its own variant; messages
/// never quote a proof, a token or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    /// The DPoP scheme without a proof.
    #[error("the DPoP scheme was used and the request carried no DPoP proof")]
    MissingProof,
    /// More than one `DPoP` header.
    #[error("the request carried {0} DPoP proofs; exactly one is allowed")]
    MultipleProofs(usize),
    /// Not a compact JWS with JSON header and claims.
    #[error("DPoP proof is malformed: {0}")]
    MalformedProof(String),
    /// `typ` is not `dpop+jwt`.
    #[error("DPoP proof typ is not dpop+jwt")]
    ProofType,
    /// `alg` is `none`, symmetric, or not in the tenant's `dpop_algorithms`.
    #[error("DPoP proof alg {0} is not allowed")]
    ProofAlgorithm(String),
    /// A header parameter this service does not implement (`crit`, ...).
    #[error("DPoP proof header parameter `{0}` is not supported")]
    ProofHeader(&'static str),
    /// No `jwk` object in the header.
    #[error("DPoP proof header has no jwk")]
    MissingJwk,
    /// The `jwk` carries private key material.
    #[error("DPoP proof jwk has the private member `{0}`")]
    PrivateJwk(String),
    /// The `jwk` fails the key hygiene rules (size, curve, type, alg).
    #[error("DPoP proof jwk is not usable: {0}")]
    UnusableJwk(String),
    /// The signature does not verify with the `jwk`.
    #[error("DPoP proof signature does not verify with its jwk")]
    ProofSignature,
    /// A required claim is absent.
    #[error("DPoP proof has no `{0}` claim")]
    MissingProofClaim(&'static str),
    /// A claim of the wrong type or size.
    #[error("DPoP proof claim `{0}` has the wrong type or size")]
    BadProofClaim(&'static str),
    /// `htm` differs from the request's method.
    #[error("DPoP proof htm does not match the request method")]
    MethodMismatch,
    /// `htu` differs from the request's URI.
    #[error("DPoP proof htu does not match the request URI")]
    UriMismatch,
    /// `iat` older than `dpop_max_age`.
    #[error("DPoP proof is {age}s old; the limit is {max}s")]
    ProofTooOld {
        /// Age in seconds.
        age: u64,
        /// `dpop_max_age` in seconds.
        max: u64,
    },
    /// `iat` in the future beyond `clock_skew`.
    #[error("DPoP proof iat is {0}s in the future")]
    ProofFromFuture(u64),
    /// The `jti` was used before for this URI.
    #[error("DPoP proof was used before (jti replayed)")]
    ProofReplayed,
    /// The replay store cannot remember more proofs.
    #[error("DPoP proof replay store is full; refusing proofs it cannot remember")]
    ReplayStoreFull,
    /// The fleet's shared replay store is unavailable and the service refuses rather than
    /// decide alone (`on_unavailable: fail_closed`).
    #[error("the fleet's shared state is unavailable, so DPoP proof replay cannot be checked")]
    ReplayStoreUnavailable,
    /// No `ath`: the proof is not bound to this access token.
    #[error("DPoP proof has no ath, so it is not bound to an access token")]
    MissingAth,
    /// `ath` is not the hash of this access token.
    #[error("DPoP proof ath is not the hash of this access token")]
    AthMismatch,
    /// The tenant requires a nonce and the proof has none.
    #[error("a DPoP nonce is required")]
    NonceRequired,
    /// The proof's nonce is older than two windows.
    #[error("the DPoP nonce is stale")]
    NonceStale,
    /// The proof's nonce was not minted here.
    #[error("the DPoP nonce is not one this service issued")]
    NonceInvalid,
    /// The proof's key is not the token's `cnf.jkt`.
    #[error("the DPoP proof's key is not the key the token is bound to (cnf.jkt)")]
    KeyMismatch,
    /// A DPoP-bound token presented as a bearer token.
    #[error("a DPoP-bound token was presented with the Bearer scheme")]
    BoundTokenAsBearer,
    /// The DPoP scheme with a token bound to no DPoP key.
    #[error("the DPoP scheme was used with a token that is not bound to a DPoP key")]
    UnboundTokenAsDpop,
    /// `mode: required` and the token has no `cnf`.
    #[error("this tenant accepts only sender-constrained tokens and the token has no cnf")]
    BindingRequired,
    /// A `cnf` confirmation method this service cannot check.
    #[error("cnf confirmation method `{0}` is not supported")]
    UnsupportedConfirmation(String),
    /// `cnf` or one of its members has the wrong form (`jkt` or `x5t#S256` not a
    /// base64url SHA-256 thumbprint, e.g. hex).
    #[error("cnf {0} is malformed: thumbprints are unpadded base64url SHA-256")]
    MalformedConfirmation(&'static str),
    /// A certificate-bound token without a client certificate.
    #[error("the token is bound to a client certificate and the request named none")]
    MissingCertificate,
    /// A certificate other than the bound one.
    #[error("the client certificate is not the one the token is bound to (cnf x5t#S256)")]
    CertificateMismatch,
}

impl BindingError {
    /// The error code callers act on.
    pub fn code(&self) -> ErrorCode {
        use BindingError as E;
        match self {
            E::NonceRequired | E::NonceStale | E::NonceInvalid => ErrorCode::UseDpopNonce,
            E::ReplayStoreUnavailable => ErrorCode::StateUnavailable,
            E::KeyMismatch
            | E::BoundTokenAsBearer
            | E::UnboundTokenAsDpop
            | E::BindingRequired
            | E::UnsupportedConfirmation(_)
            | E::MalformedConfirmation(_)
            | E::MissingCertificate
            | E::CertificateMismatch => ErrorCode::BindingMismatch,
            _ => ErrorCode::InvalidDpopProof,
        }
    }

    /// As a [`Rejection`].
    pub fn rejection(&self) -> Rejection {
        Rejection::new(self.code(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(scheme: &'a str, method: &'a str, uri: &'a str) -> RawPresentation<'a> {
        RawPresentation {
            scheme,
            method,
            uri,
            ..Default::default()
        }
    }

    #[test]
    fn schemes() {
        assert_eq!(Scheme::parse(""), Some(Scheme::Bearer));
        assert_eq!(Scheme::parse("bearer"), Some(Scheme::Bearer));
        assert_eq!(Scheme::parse("dpop"), Some(Scheme::Dpop));
        assert_eq!(Scheme::parse("DPoP"), Some(Scheme::Dpop));
        assert_eq!(Scheme::parse("Basic"), None);
        assert_eq!(
            raw("Basic", "", "").parse(),
            Err(PresentationError::UnknownScheme)
        );
        let mut p = raw("", "GET", "https://a.example/x");
        p.token_scheme = Some(Scheme::Dpop);
        assert_eq!(p.parse().map(|p| p.scheme), Ok(Scheme::Dpop));
        p.scheme = "Bearer";
        assert_eq!(p.parse(), Err(PresentationError::ConflictingScheme));
        p.scheme = "dpop";
        assert_eq!(p.parse().map(|p| p.scheme), Ok(Scheme::Dpop));
    }

    #[test]
    fn dpop_needs_method_and_uri() {
        assert_eq!(
            raw("DPoP", "", "https://a.example/").parse(),
            Err(PresentationError::MissingMethod)
        );
        assert_eq!(
            raw("DPoP", "GET", "").parse(),
            Err(PresentationError::MissingUri)
        );
        assert_eq!(
            raw("DPoP", "GE T", "https://a.example/").parse(),
            Err(PresentationError::BadMethod)
        );
        assert_eq!(
            raw("DPoP", "GET", "/x").parse(),
            Err(PresentationError::BadUri(HtuError::NotAbsolute))
        );
        let proofs = vec!["p".to_string()];
        let mut bearer_with_proof = raw("Bearer", "", "");
        bearer_with_proof.proofs = &proofs;
        assert_eq!(
            bearer_with_proof.parse(),
            Err(PresentationError::MissingMethod)
        );
        let p = raw("DPoP", "POST", "HTTPS://A.example:443/x?y")
            .parse()
            .expect("ok");
        let r = p.request.expect("request");
        assert_eq!(
            (r.method.as_str(), r.uri.as_str()),
            ("POST", "https://a.example/x")
        );
        assert_eq!(raw("", "", "").parse(), Ok(Presentation::default()));
    }

    #[test]
    fn certificates() {
        let der = b"not really DER, but bytes";
        let thumb = sha256_b64url(der);
        let mut p = RawPresentation {
            certificate_der: der,
            ..Default::default()
        };
        assert_eq!(p.parse().map(|p| p.certificate), Ok(Some(thumb.clone())));
        p.certificate_sha256 = &thumb;
        assert_eq!(p.parse().map(|p| p.certificate), Ok(Some(thumb.clone())));
        let other = sha256_b64url(b"other");
        p.certificate_sha256 = &other;
        assert_eq!(p.parse(), Err(PresentationError::ConflictingCertificate));
        let hex: String = digest::digest(&digest::SHA256, der)
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let hex_only = RawPresentation {
            certificate_sha256: &hex,
            ..Default::default()
        };
        assert_eq!(
            hex_only.parse(),
            Err(PresentationError::BadCertificateThumbprint)
        );
        let padded = format!("{thumb}=");
        let padded_only = RawPresentation {
            certificate_sha256: &padded,
            ..Default::default()
        };
        assert_eq!(
            padded_only.parse(),
            Err(PresentationError::BadCertificateThumbprint)
        );
    }

    #[test]
    fn codes() {
        assert_eq!(
            BindingError::MissingProof.code(),
            ErrorCode::InvalidDpopProof
        );
        assert_eq!(BindingError::NonceStale.code(), ErrorCode::UseDpopNonce);
        assert_eq!(BindingError::KeyMismatch.code(), ErrorCode::BindingMismatch);
        assert_eq!(
            BindingError::BoundTokenAsBearer.rejection().code,
            ErrorCode::BindingMismatch
        );
    }
}

#[cfg(test)]
mod rule_tests;
