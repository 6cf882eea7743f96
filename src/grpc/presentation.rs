//! The sender-constraint fields of a request, parsed once at the boundary into the
//! core's [`Presentation`]: from `ValidateRequest` and `IntrospectRequest` (fields of
//! the same names), and the pieces an HTTP-facing adapter (Envoy ext_authz) has to
//! take apart first: `DPoP` header values, the request URI as the client sent it, and
//! a URL-encoded PEM client certificate.

use percent_encoding::percent_decode_str;
use rustls_pki_types::{CertificateDer, pem::PemObject};

use super::{BoundaryError, MAX_LIST_ENTRIES, check_field, pb};
use crate::jwt::dpop::{MAX_PROOF_BYTES, Presentation, RawPresentation, Scheme};

/// Longest `http_uri` accepted, in bytes (as long as the longest proof examined).
pub const MAX_URI_BYTES: usize = MAX_PROOF_BYTES;
/// Longest `client_certificate` accepted, in bytes (one DER certificate, not a chain).
pub const MAX_CERTIFICATE_BYTES: usize = 64 * 1024;

/// The same six fields of `ValidateRequest` and `IntrospectRequest`, as the core reads
/// them.
macro_rules! raw_presentation {
    ($req:expr, $token_scheme:expr) => {
        RawPresentation {
            scheme: &$req.authorization_scheme,
            token_scheme: $token_scheme,
            proofs: &$req.dpop_proofs,
            method: &$req.http_method,
            uri: &$req.http_uri,
            certificate_der: &$req.client_certificate,
            certificate_sha256: &$req.client_certificate_sha256,
        }
    };
}

/// The presentation of a Validate call (`token_scheme`: the token's own prefix).
pub fn of_validate(
    req: &pb::ValidateRequest,
    token_scheme: Option<Scheme>,
) -> Result<Presentation, BoundaryError> {
    parse(&raw_presentation!(req, token_scheme))
}

/// The presentation of an Introspect call.
pub fn of_introspect(
    req: &pb::IntrospectRequest,
    token_scheme: Option<Scheme>,
) -> Result<Presentation, BoundaryError> {
    parse(&raw_presentation!(req, token_scheme))
}

/// The fields within their bounds (a bad request otherwise), then parsed.
fn parse(raw: &RawPresentation<'_>) -> Result<Presentation, BoundaryError> {
    check_field("authorization_scheme", raw.scheme)?;
    check_field("http_method", raw.method)?;
    check_field("client_certificate_sha256", raw.certificate_sha256)?;
    let over = |name: &str, size: usize, limit: usize| {
        BoundaryError::Invalid(format!("`{name}` is {size}; the limit is {limit}"))
    };
    if raw.proofs.len() > MAX_LIST_ENTRIES {
        return Err(over("dpop_proofs", raw.proofs.len(), MAX_LIST_ENTRIES));
    }
    if raw.uri.len() > MAX_URI_BYTES {
        return Err(over("http_uri", raw.uri.len(), MAX_URI_BYTES));
    }
    if raw.certificate_der.len() > MAX_CERTIFICATE_BYTES {
        return Err(over(
            "client_certificate",
            raw.certificate_der.len(),
            MAX_CERTIFICATE_BYTES,
        ));
    }
    Ok(raw.parse()?)
}

/// The proofs in a `DPoP` header value as a proxy hands it over: repeated headers joined
/// with `,` (a compact JWS never holds one), each kept, empty ones included, so two
/// headers are two proofs.
pub fn dpop_header_proofs(joined: &str) -> Vec<String> {
    joined.split(',').map(|p| p.trim().to_string()).collect()
}

/// The request URI as the client sent it: the scheme of its connection, the `Host` /
/// `:authority` it sent and the path (with the query, which `htu` ignores). Never a
/// forwarded host or scheme header.
pub fn request_uri(scheme: &str, authority: &str, path: &str) -> String {
    format!("{scheme}://{authority}{path}")
}

/// The DER of a URL-encoded PEM certificate (Envoy's `source.certificate` with
/// `include_peer_certificate`); the first certificate when it is a chain.
pub fn certificate_from_urlencoded_pem(encoded: &str) -> Result<Vec<u8>, BoundaryError> {
    let pem = percent_decode_str(encoded).decode_utf8().map_err(|_| {
        BoundaryError::Invalid("the client certificate is not URL-encoded UTF-8".into())
    })?;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map(|c| c.as_ref().to_vec())
        .map_err(|_| {
            BoundaryError::Invalid("the client certificate is not a PEM certificate".into())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values() {
        assert_eq!(dpop_header_proofs("a.b.c"), vec!["a.b.c"]);
        assert_eq!(dpop_header_proofs("a.b.c, d.e.f"), vec!["a.b.c", "d.e.f"]);
        assert_eq!(dpop_header_proofs("a.b.c,"), vec!["a.b.c", ""]);
        assert_eq!(
            request_uri("https", "api.example.com:8443", "/v1/x?y=1"),
            "https://api.example.com:8443/v1/x?y=1"
        );
    }

    #[test]
    fn envoy_certificates() {
        let cert = rcgen::generate_simple_self_signed(vec!["client".into()]).expect("cert");
        let pem = cert.cert.pem();
        let der = cert.cert.der().to_vec();
        // Envoy URL-encodes the PEM: newlines, '+', '/', '=' and spaces escaped.
        let encoded: String = pem
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b == b'-' {
                    char::from(b).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        assert_eq!(certificate_from_urlencoded_pem(&encoded).expect("der"), der);
        assert_eq!(
            certificate_from_urlencoded_pem(&pem).expect("plain PEM too"),
            der
        );
        for bad in [
            "",
            "%FF%FE",
            "not a certificate",
            "-----BEGIN CERTIFICATE-----%0A!!%0A-----END CERTIFICATE-----",
        ] {
            assert!(certificate_from_urlencoded_pem(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn fields_of_both_requests() {
        let v = pb::ValidateRequest {
            authorization_scheme: "DPoP".into(),
            dpop_proofs: vec!["p".into()],
            http_method: "GET".into(),
            http_uri: "https://a.example/x".into(),
            ..Default::default()
        };
        let p = of_validate(&v, None).expect("presentation");
        assert_eq!((p.scheme, p.proofs.len()), (Scheme::Dpop, 1));
        let i = pb::IntrospectRequest {
            authorization_scheme: "DPoP".into(),
            ..Default::default()
        };
        assert!(matches!(
            of_introspect(&i, None),
            Err(BoundaryError::Presentation(_))
        ));
    }

    #[test]
    fn fields_are_bounded() {
        let base = pb::ValidateRequest {
            authorization_scheme: "DPoP".into(),
            dpop_proofs: vec!["p".into(); MAX_LIST_ENTRIES],
            http_method: "GET".into(),
            http_uri: format!("https://a.example/{}", "x".repeat(MAX_URI_BYTES - 18)),
            client_certificate: vec![0; MAX_CERTIFICATE_BYTES],
            ..Default::default()
        };
        assert!(of_validate(&base, None).is_ok(), "exactly the limits");
        let over = [
            pb::ValidateRequest {
                dpop_proofs: vec!["p".into(); MAX_LIST_ENTRIES + 1],
                ..base.clone()
            },
            pb::ValidateRequest {
                http_uri: format!("{}x", base.http_uri),
                ..base.clone()
            },
            pb::ValidateRequest {
                client_certificate: vec![0; MAX_CERTIFICATE_BYTES + 1],
                ..base.clone()
            },
            pb::ValidateRequest {
                http_method: "G".repeat(257),
                ..base.clone()
            },
            pb::ValidateRequest {
                client_certificate_sha256: "a".repeat(257),
                ..base.clone()
            },
        ];
        for req in over {
            assert!(
                matches!(of_validate(&req, None), Err(BoundaryError::Invalid(_))),
                "{:?}",
                of_validate(&req, None)
            );
        }
    }
}
