//! The gRPC adapter: generated code fenced in [`pb`], the `TokenService` implementation
//! (its `WatchKeys` stream in [`watch`]), the operator `AdminService` in [`admin`],
//! Envoy's external authorization service in [`ext_authz`],
//! parsing of requests at the boundary, conversion of core values `to_proto`, and the ONE
//! mapping from errors to `tonic::Status`.

pub mod admin;
pub mod convert;
pub mod deadline;
pub mod ext_authz;
pub mod introspect;
pub mod layers;
pub mod reply;
mod token_service;
pub mod watch;

pub use admin::AdminServiceImpl;
pub use reply::TokenServiceRoutes;
pub use token_service::{KeyEventStream, Limits, TokenServiceImpl};

/// Generated protobuf and gRPC code for `introspect.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod pb {
    tonic::include_proto!("introspect.v1");

    /// The encoded file descriptor set, served by reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/introspect_descriptor.bin"));
}

use tonic::Status;

use crate::registry::{RefreshError, RequestError, ValidateError};

/// A request rejected at the boundary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoundaryError {
    /// No token after stripping `Bearer `.
    #[error("token is empty")]
    EmptyToken,
    /// The token exceeds `server.max_token_bytes`.
    #[error("token is {size} bytes; the limit is {limit}")]
    TokenTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A request field is invalid.
    #[error("{0}")]
    Invalid(String),
    /// A core request error.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// Too many concurrent calls of a kind.
    #[error("{0}")]
    Exhausted(String),
    /// An upstream could not answer.
    #[error("{0}")]
    Unavailable(String),
    /// The request is well-formed but the target does not support it (e.g. refreshing
    /// keys that are never fetched).
    #[error("{0}")]
    Precondition(String),
    /// An admin call without an acceptable token.
    #[error("{0}")]
    Unauthenticated(String),
    /// An admin call whose token lacks a required scope.
    #[error("{0}")]
    PermissionDenied(String),
}

/// The one mapping from errors to gRPC statuses. Messages are terse and token-free, and
/// never longer than [`MAX_MESSAGE_BYTES`]; full causes are logged where they happen.
pub fn to_status(err: &BoundaryError) -> Status {
    let message = crate::jwt::clamp_message(err.to_string());
    match err {
        BoundaryError::EmptyToken
        | BoundaryError::TokenTooLarge { .. }
        | BoundaryError::Invalid(_)
        | BoundaryError::Request(_) => Status::invalid_argument(message),
        BoundaryError::Exhausted(_) => Status::resource_exhausted(message),
        BoundaryError::Unavailable(_) => Status::unavailable(message),
        BoundaryError::Precondition(_) => Status::failed_precondition(message),
        BoundaryError::Unauthenticated(_) => Status::unauthenticated(message),
        BoundaryError::PermissionDenied(_) => Status::permission_denied(message),
    }
}

pub use crate::jwt::MAX_MESSAGE_BYTES;

/// Most entries a repeated request field (`audiences`, `required_scopes`, `tenants`)
/// may hold: matching stays cheap whatever the token holds.
pub const MAX_LIST_ENTRIES: usize = 64;
/// Longest entry of a request list, and longest tenant, policy, nonce or
/// `token_type_hint`, in bytes.
pub const MAX_ENTRY_BYTES: usize = 256;

/// Checks one short request field against [`MAX_ENTRY_BYTES`].
pub fn check_field(name: &str, value: &str) -> Result<(), BoundaryError> {
    if value.len() > MAX_ENTRY_BYTES {
        return Err(BoundaryError::Invalid(format!(
            "`{name}` is {} bytes; the limit is {MAX_ENTRY_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// Checks a repeated request field against [`MAX_LIST_ENTRIES`] and each entry against
/// [`MAX_ENTRY_BYTES`].
pub fn check_list(name: &str, values: &[String]) -> Result<(), BoundaryError> {
    if values.len() > MAX_LIST_ENTRIES {
        return Err(BoundaryError::Invalid(format!(
            "`{name}` has {} entries; the limit is {MAX_LIST_ENTRIES}",
            values.len()
        )));
    }
    for (i, v) in values.iter().enumerate() {
        if v.len() > MAX_ENTRY_BYTES {
            return Err(BoundaryError::Invalid(format!(
                "`{name}[{i}]` is {} bytes; the limit is {MAX_ENTRY_BYTES}",
                v.len()
            )));
        }
    }
    Ok(())
}

impl From<RefreshError> for BoundaryError {
    fn from(e: RefreshError) -> Self {
        match e {
            RefreshError::Request(r) => Self::Request(r),
            RefreshError::NotFetched(_) => Self::Precondition(e.to_string()),
        }
    }
}

impl From<BoundaryError> for Status {
    fn from(e: BoundaryError) -> Self {
        to_status(&e)
    }
}

/// Strips a `Bearer ` prefix (scheme name case-insensitive) and applies the size limit:
/// exactly `limit` bytes is accepted.
pub fn parse_token(raw: &str, limit: usize) -> Result<&str, BoundaryError> {
    let start = raw.trim_start();
    let token = match start.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => start[7..].trim(),
        _ => start.trim_end(),
    };
    if token.is_empty() {
        return Err(BoundaryError::EmptyToken);
    }
    if token.len() > limit {
        return Err(BoundaryError::TokenTooLarge {
            size: token.len(),
            limit,
        });
    }
    Ok(token)
}

/// Splits a Validate outcome into a gRPC error (bad request) or an answer.
pub fn split_validate_error(err: ValidateError) -> Result<ValidateError, BoundaryError> {
    match err {
        ValidateError::Request(r) => Err(BoundaryError::Request(r)),
        other => Ok(other),
    }
}

/// An empty string means "not given".
pub fn non_empty(s: &str) -> Option<&str> {
    if s.is_empty() { None } else { Some(s) }
}

/// Helpers shared by the handler tests of this module's services.
#[cfg(test)]
pub(crate) mod testing {
    /// The HMAC secret of the handler tests' first-party tenant.
    pub(crate) const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// `claims` signed HS256 with [`SECRET`].
    pub(crate) fn hs256(claims: &serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &key,
        )
        .expect("sign")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_prefix_and_limits() {
        assert_eq!(parse_token("Bearer abc", 10), Ok("abc"));
        assert_eq!(parse_token("bEaReR abc", 10), Ok("abc"));
        assert_eq!(parse_token("abc", 3), Ok("abc"));
        assert!(matches!(
            parse_token("abcd", 3),
            Err(BoundaryError::TokenTooLarge { size: 4, limit: 3 })
        ));
        assert_eq!(
            parse_token("Bearer abc", 3),
            Ok("abc"),
            "the limit counts after stripping"
        );
        assert_eq!(parse_token("", 3), Err(BoundaryError::EmptyToken));
        assert_eq!(parse_token("Bearer ", 3), Err(BoundaryError::EmptyToken));
        assert_eq!(parse_token("   ", 3), Err(BoundaryError::EmptyToken));
    }

    #[test]
    fn request_fields_are_bounded() {
        let ok: Vec<String> = (0..MAX_LIST_ENTRIES)
            .map(|_| "a".repeat(MAX_ENTRY_BYTES))
            .collect();
        assert!(check_list("audiences", &ok).is_ok());
        let mut long = ok.clone();
        long.push("a".into());
        let err = check_list("audiences", &long).expect_err("65 entries");
        assert_eq!(to_status(&err).code(), tonic::Code::InvalidArgument);
        let err = check_list("required_scopes", &["x".repeat(MAX_ENTRY_BYTES + 1)])
            .expect_err("257 bytes");
        assert!(err.to_string().contains("required_scopes[0]"), "{err}");
        assert!(check_field("nonce", &"n".repeat(MAX_ENTRY_BYTES)).is_ok());
        assert!(check_field("nonce", &"n".repeat(MAX_ENTRY_BYTES + 1)).is_err());
    }

    #[test]
    fn status_messages_are_clamped() {
        let huge = BoundaryError::Invalid("é".repeat(10_000));
        let status = to_status(&huge);
        assert!(
            status.message().len() < MAX_MESSAGE_BYTES,
            "{}",
            status.message().len()
        );
        assert!(status.message().ends_with("..."), "{}", status.message());
    }

    #[test]
    fn statuses() {
        assert_eq!(
            to_status(&BoundaryError::EmptyToken).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            to_status(&BoundaryError::Request(RequestError::UnknownTenant(
                "x".into()
            )))
            .code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            to_status(&BoundaryError::Exhausted("x".into())).code(),
            tonic::Code::ResourceExhausted
        );
        assert_eq!(
            to_status(&BoundaryError::Unavailable("x".into())).code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            to_status(&BoundaryError::Precondition("x".into())).code(),
            tonic::Code::FailedPrecondition
        );
    }
}
