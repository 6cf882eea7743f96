//! Token parsing and claim checks: compact JWS framing, strict JSON, registered claim
//! types, and the time, audience, scope, type and nonce rules; the sender-constraint
//! (DPoP and certificate binding) rules; and the `WWW-Authenticate` challenge a
//! rejection maps to. Knows nothing of keys' origin, the network or gRPC.

pub mod challenge;
pub mod claims;
pub mod compact;
pub mod dpop;
pub mod jws;

use std::fmt;

/// Why a token was rejected; mirrors `introspect.v1.ErrorCode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not a compact JWS, or a claim of the wrong JSON type.
    Malformed,
    /// `none`, an algorithm not allowed, or one the key is not bound to.
    AlgorithmNotAllowed,
    /// No tenant trusts the `iss`.
    UnknownIssuer,
    /// B2C policy missing or not allowed.
    UnknownPolicy,
    /// No key with the token's kid, even after a refresh.
    UnknownKey,
    /// The signature does not verify.
    InvalidSignature,
    /// `exp` is past.
    Expired,
    /// `nbf` or `iat` is in the future.
    NotYetValid,
    /// A required claim is absent.
    MissingClaim,
    /// No accepted audience, or the `azp` rule failed.
    InvalidAudience,
    /// A required scope is missing.
    InsufficientScope,
    /// `typ` not accepted.
    InvalidType,
    /// `nonce` differs from the request's.
    InvalidNonce,
    /// `exp - iat` exceeds the tenant's maximum.
    LifetimeTooLong,
    /// The `jti` was seen before.
    Replayed,
    /// The issuer's keys could not be fetched and none are known.
    KeysUnavailable,
    /// The token matches a revocation rule.
    Revoked,
    /// The fleet's shared state is unavailable and the service refuses rather than
    /// decide alone (`on_unavailable: fail_closed`).
    StateUnavailable,
    /// A DPoP proof is missing, duplicated, or breaks a rule of RFC 9449 4.3.
    InvalidDpopProof,
    /// The tenant requires a DPoP nonce and the proof's is absent, stale or forged.
    UseDpopNonce,
    /// The token's binding (`cnf`) was not proven: wrong scheme, key or certificate.
    BindingMismatch,
}

impl ErrorCode {
    /// Every code, for metrics and tests.
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::Malformed,
        ErrorCode::AlgorithmNotAllowed,
        ErrorCode::UnknownIssuer,
        ErrorCode::UnknownPolicy,
        ErrorCode::UnknownKey,
        ErrorCode::InvalidSignature,
        ErrorCode::Expired,
        ErrorCode::NotYetValid,
        ErrorCode::MissingClaim,
        ErrorCode::InvalidAudience,
        ErrorCode::InsufficientScope,
        ErrorCode::InvalidType,
        ErrorCode::InvalidNonce,
        ErrorCode::LifetimeTooLong,
        ErrorCode::Replayed,
        ErrorCode::KeysUnavailable,
        ErrorCode::Revoked,
        ErrorCode::StateUnavailable,
        ErrorCode::InvalidDpopProof,
        ErrorCode::UseDpopNonce,
        ErrorCode::BindingMismatch,
    ];

    /// Stable lower-case name, used as a metrics label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::AlgorithmNotAllowed => "algorithm_not_allowed",
            ErrorCode::UnknownIssuer => "unknown_issuer",
            ErrorCode::UnknownPolicy => "unknown_policy",
            ErrorCode::UnknownKey => "unknown_key",
            ErrorCode::InvalidSignature => "invalid_signature",
            ErrorCode::Expired => "expired",
            ErrorCode::NotYetValid => "not_yet_valid",
            ErrorCode::MissingClaim => "missing_claim",
            ErrorCode::InvalidAudience => "invalid_audience",
            ErrorCode::InsufficientScope => "insufficient_scope",
            ErrorCode::InvalidType => "invalid_type",
            ErrorCode::InvalidNonce => "invalid_nonce",
            ErrorCode::LifetimeTooLong => "lifetime_too_long",
            ErrorCode::Replayed => "replayed",
            ErrorCode::KeysUnavailable => "keys_unavailable",
            ErrorCode::Revoked => "revoked",
            ErrorCode::StateUnavailable => "state_unavailable",
            ErrorCode::InvalidDpopProof => "invalid_dpop_proof",
            ErrorCode::UseDpopNonce => "use_dpop_nonce",
            ErrorCode::BindingMismatch => "binding_mismatch",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected token: the code callers act on and a message safe to log (never the token,
/// never a claim value longer than [`MAX_ECHOED_CHARS`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// The error code.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

impl Rejection {
    /// Builds a rejection; the message is clamped to [`MAX_MESSAGE_BYTES`].
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: clamp_message(message.into()),
        }
    }
}

/// Every error message a caller sees is shorter than this many bytes.
pub const MAX_MESSAGE_BYTES: usize = 512;

/// Cuts `message` (at a character boundary, marked with `...`) so that it is shorter
/// than [`MAX_MESSAGE_BYTES`].
pub fn clamp_message(mut message: String) -> String {
    const MARK: &str = "...";
    if message.len() < MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES - 1 - MARK.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(MARK);
    message
}

/// Longest claim value an error message may quote.
pub const MAX_ECHOED_CHARS: usize = 64;

/// Quotes a value from an unverified token for an error message, or says it is too long.
pub fn echo(value: &str) -> String {
    if value.chars().count() <= MAX_ECHOED_CHARS && !value.chars().any(char::is_control) {
        format!("`{value}`")
    } else {
        format!("(a value of {} characters)", value.chars().count())
    }
}
