//! Compact JWS framing: three segments of canonical unpadded base64url, a strict JSON
//! header, and the header rules that need no key (`alg` allow-list, unsupported
//! parameters). Nothing here is verified; see `keys` for signatures.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;

use super::{
    ErrorCode, Rejection,
    compact::{self, ObjectRef, ValueRef},
    echo,
};

/// Header parameters this service does not implement; their presence is MALFORMED
/// (`crit` must be understood, `b64`/`zip` change the payload, `enc`/`cty` mean JWE or
/// nested JWTs).
pub const UNSUPPORTED_HEADER_PARAMS: [&str; 5] = ["crit", "b64", "zip", "enc", "cty"];

/// A compact JWS split and decoded, nothing verified yet.
#[derive(Debug, Clone)]
pub struct CompactJws<'a> {
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`, the bytes that are signed.
    pub signing_input: &'a str,
    /// The header.
    pub header: Header,
    /// Decoded payload bytes.
    pub payload: Vec<u8>,
    /// Decoded signature bytes.
    pub signature: Vec<u8>,
}

/// The JOSE header members this service reads.
#[derive(Debug, Clone)]
pub struct Header {
    /// `alg` as written.
    pub alg: String,
    /// `kid`, when present.
    pub kid: Option<String>,
    /// `typ`, when present.
    pub typ: Option<String>,
    /// The first unsupported parameter present, if any.
    pub unsupported: Option<&'static str>,
}

impl Header {
    /// The algorithm, when it is one of the closed set jsonwebtoken supports (never `none`).
    pub fn algorithm(&self) -> Option<Algorithm> {
        // `Algorithm::from_str` is exact and case-sensitive: "none", "None", "NONE" and
        // every other spelling are not algorithms.
        self.alg.parse().ok()
    }

    /// Applies the tenant's allow-list and the unsupported-parameter rule, in that order.
    pub fn check(&self, allowed: &[Algorithm]) -> Result<Algorithm, Rejection> {
        let alg = self.algorithm().ok_or_else(|| {
            Rejection::new(
                ErrorCode::AlgorithmNotAllowed,
                format!("alg {} is not supported", echo(&self.alg)),
            )
        })?;
        if !allowed.contains(&alg) {
            return Err(Rejection::new(
                ErrorCode::AlgorithmNotAllowed,
                format!("alg {:?} is not allowed for this issuer", alg),
            ));
        }
        if let Some(p) = self.unsupported {
            return Err(Rejection::new(
                ErrorCode::Malformed,
                format!("header parameter `{p}` is not supported"),
            ));
        }
        Ok(alg)
    }
}

fn malformed(msg: impl Into<String>) -> Rejection {
    Rejection::new(ErrorCode::Malformed, msg)
}

/// Decodes canonical unpadded base64url: no padding, no other alphabet, no non-zero
/// trailing bits (so each value has exactly one encoding).
pub fn b64url_decode(segment: &str, what: &str) -> Result<Vec<u8>, Rejection> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| malformed(format!("{what} is not canonical base64url")))
}

/// True when `token` has the shape of a compact JWS (three dot-separated segments),
/// whether or not they decode.
pub fn is_jwt_shaped(token: &str) -> bool {
    token.bytes().filter(|b| *b == b'.').count() == 2
}

/// Splits and decodes a compact JWS and parses its header.
pub fn parse(token: &str) -> Result<CompactJws<'_>, Rejection> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a compact JWS has exactly three segments"));
    };
    if h.is_empty() {
        return Err(malformed("empty header segment"));
    }
    let header_bytes = b64url_decode(h, "header")?;
    let payload = b64url_decode(p, "payload")?;
    let signature = b64url_decode(s, "signature")?;
    let header_object =
        compact::parse_object(&header_bytes).map_err(|e| malformed(format!("header: {e}")))?;
    let header = header_from(ObjectRef::new(&header_object))?;
    Ok(CompactJws {
        signing_input: &token[..h.len() + 1 + p.len()],
        header,
        payload,
        signature,
    })
}

fn header_from(object: ObjectRef<'_>) -> Result<Header, Rejection> {
    let (mut alg, mut kid, mut typ, mut unsupported) = (None, None, None, None);
    let text = |v: ValueRef<'_>, what: &str| {
        v.as_str()
            .map(str::to_owned)
            .ok_or_else(|| malformed(format!("header {what} is not a string")))
    };
    for (name, v) in object.iter() {
        match name {
            "alg" => alg = Some(text(v, "alg")?),
            "kid" => kid = Some(text(v, "kid")?),
            "typ" => typ = Some(text(v, "typ")?),
            _ => {
                // Report the first of the list that is present, whatever the order.
                let rank = |p: &&str| UNSUPPORTED_HEADER_PARAMS.iter().position(|u| u == p);
                if let Some(p) = UNSUPPORTED_HEADER_PARAMS.iter().find(|p| **p == name)
                    && unsupported.as_ref().is_none_or(|u| rank(p) < rank(u))
                {
                    unsupported = Some(*p);
                }
            }
        }
    }
    Ok(Header {
        alg: alg.ok_or_else(|| malformed("header has no alg"))?,
        kid,
        typ,
        unsupported,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn parses_three_segments() {
        let t = format!(
            "{}.{}.{}",
            enc(r#"{"alg":"RS256","kid":"k"}"#),
            enc("{}"),
            enc("sig")
        );
        let jws = parse(&t).expect("parses");
        assert_eq!(jws.header.alg, "RS256");
        assert_eq!(jws.header.kid.as_deref(), Some("k"));
        assert_eq!(jws.signature, b"sig");
        assert!(t.starts_with(jws.signing_input));
    }

    #[test]
    fn rejects_framing_errors() {
        let h = enc(r#"{"alg":"RS256"}"#);
        for bad in [
            String::new(),
            "a.b".to_string(),
            format!("{h}.{h}.{h}.{h}"),
            format!("{h}=.e30.c2ln"),
            format!("{h}.e30=.c2ln"),
            format!("{h}.e30.c2ln+"),
            format!("{h}.e3?.c2ln"),
            format!("{}.e30.c2ln", enc(r#"{"alg":"RS256","alg":"none"}"#)),
            format!("{}.e30.c2ln", enc(r#"{"alg":1}"#)),
            format!("{}.e30.c2ln", enc(r#"{"kid":"x"}"#)),
        ] {
            let err = parse(&bad).expect_err(&bad);
            assert_eq!(err.code, ErrorCode::Malformed, "{bad}");
        }
    }

    #[test]
    fn rejects_non_canonical_trailing_bits() {
        // "e30" is "{}"; "e31" decodes to the same bytes with non-zero trailing bits.
        let h = enc(r#"{"alg":"RS256"}"#);
        assert!(parse(&format!("{h}.e30.c2ln")).is_ok());
        assert_eq!(
            parse(&format!("{h}.e31.c2ln")).unwrap_err().code,
            ErrorCode::Malformed
        );
    }

    #[test]
    fn none_in_any_spelling_is_not_allowed() {
        for alg in ["none", "None", "NONE", "nOnE", ""] {
            let h = Header {
                alg: alg.into(),
                kid: None,
                typ: None,
                unsupported: None,
            };
            let err = h.check(&[Algorithm::RS256, Algorithm::HS256]).unwrap_err();
            assert_eq!(err.code, ErrorCode::AlgorithmNotAllowed, "{alg}");
        }
    }

    #[test]
    fn alg_is_checked_before_unsupported_params() {
        let h = Header {
            alg: "HS256".into(),
            kid: None,
            typ: None,
            unsupported: Some("crit"),
        };
        assert_eq!(
            h.check(&[Algorithm::RS256]).unwrap_err().code,
            ErrorCode::AlgorithmNotAllowed
        );
        assert_eq!(
            h.check(&[Algorithm::HS256]).unwrap_err().code,
            ErrorCode::Malformed
        );
    }
}
