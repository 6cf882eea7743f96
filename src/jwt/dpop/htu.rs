//! The `htu` comparison of RFC 9449: an `http`/`https` URI without its query and
//! fragment, normalised as RFC 3986 section 6 says (scheme and host case, default port,
//! percent-encoding, dot segments, empty path), so that two spellings of one resource
//! compare equal and nothing else does. No Host header, proxy header or guess is ever
//! involved: the input is the URI as the client sent it.

use std::fmt;

/// Longest URI accepted, in bytes (a request line longer than this is not a real one).
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// An `http`/`https` URI reduced to what `htu` compares: `scheme://host[:port]/path`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Htu(String);

impl Htu {
    /// The normalised URI.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Htu {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a string is not an absolute `http`/`https` URI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HtuError {
    /// Longer than [`MAX_URI_BYTES`].
    #[error("the URI is longer than {MAX_URI_BYTES} bytes")]
    TooLong,
    /// No `scheme://`.
    #[error("the URI is not absolute (scheme://host/path)")]
    NotAbsolute,
    /// A scheme other than `http` or `https`.
    #[error("the URI's scheme is not http or https")]
    Scheme,
    /// `user@host`: HTTP URIs carry no userinfo (RFC 9110 4.2.4).
    #[error("the URI carries userinfo")]
    Userinfo,
    /// Empty or invalid host.
    #[error("the URI's host is empty or invalid")]
    Host,
    /// A port that is not a number up to 65535.
    #[error("the URI's port is invalid")]
    Port,
    /// A `%` not followed by two hex digits.
    #[error("the URI has an invalid percent-encoding")]
    Encoding,
    /// A character RFC 3986 does not allow there.
    #[error("the URI has a character RFC 3986 does not allow")]
    Character,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn is_sub_delim(b: u8) -> bool {
    matches!(
        b,
        b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b';' | b'='
    )
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-encoding normalisation (RFC 3986 6.2.2.1-2): escapes of unreserved characters
/// are decoded, other escapes get upper-case hex digits; every literal byte must satisfy
/// `allowed`. With `lower`, letters outside escapes are lower-cased (hosts).
fn normalise_component(
    raw: &str,
    allowed: fn(u8) -> bool,
    lower: bool,
) -> Result<String, HtuError> {
    let bytes = raw.as_bytes();
    let mut out = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex_value),
                bytes.get(i + 2).copied().and_then(hex_value),
            ) else {
                return Err(HtuError::Encoding);
            };
            let decoded = hi * 16 + lo;
            if is_unreserved(decoded) {
                let c = if lower {
                    decoded.to_ascii_lowercase()
                } else {
                    decoded
                };
                out.push(char::from(c));
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(hi)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(lo)]));
            }
            i += 3;
        } else if allowed(b) {
            out.push(char::from(if lower { b.to_ascii_lowercase() } else { b }));
            i += 1;
        } else {
            return Err(HtuError::Character);
        }
    }
    Ok(out)
}

fn path_char(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b) || matches!(b, b':' | b'@' | b'/')
}

fn reg_name_char(b: u8) -> bool {
    is_unreserved(b) || is_sub_delim(b)
}

fn ip_literal_char(b: u8) -> bool {
    b.is_ascii_hexdigit() || matches!(b, b':' | b'.')
}

/// RFC 3986 5.2.4 `remove_dot_segments`.
fn remove_dot_segments(path: &str) -> String {
    let mut input = path;
    let mut out = String::with_capacity(path.len());
    let pop = |out: &mut String| match out.rfind('/') {
        Some(i) => out.truncate(i),
        None => out.clear(),
    };
    while !input.is_empty() {
        if let Some(rest) = input.strip_prefix("../") {
            input = rest;
        } else if let Some(rest) = input.strip_prefix("./") {
            input = rest;
        } else if input.starts_with("/./") {
            input = &input[2..];
        } else if input == "/." {
            input = "/";
        } else if input.starts_with("/../") {
            input = &input[3..];
            pop(&mut out);
        } else if input == "/.." {
            input = "/";
            pop(&mut out);
        } else if input == "." || input == ".." {
            input = "";
        } else {
            let start = usize::from(input.starts_with('/'));
            let end = input[start..].find('/').map_or(input.len(), |i| i + start);
            out.push_str(&input[..end]);
            input = &input[end..];
        }
    }
    out
}

/// Splits `host[:port]` and normalises both; the default port of the scheme is dropped.
fn normalise_authority(authority: &str, default_port: u16) -> Result<String, HtuError> {
    if authority.contains('@') {
        return Err(HtuError::Userinfo);
    }
    let (host, port) = if authority.starts_with('[') {
        let end = authority.find(']').ok_or(HtuError::Host)?;
        let (literal, rest) = authority.split_at(end + 1);
        let inner = &literal[1..literal.len() - 1];
        if inner.is_empty() || !inner.bytes().all(ip_literal_char) {
            return Err(HtuError::Host);
        }
        let port = match rest {
            "" => None,
            r => Some(r.strip_prefix(':').ok_or(HtuError::Port)?),
        };
        (literal.to_ascii_lowercase(), port)
    } else {
        let (host, port) = match authority.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        };
        (normalise_component(host, reg_name_char, true)?, port)
    };
    if host.is_empty() {
        return Err(HtuError::Host);
    }
    let port = match port {
        None | Some("") => default_port,
        Some(p) => {
            if !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(HtuError::Port);
            }
            let digits = p.trim_start_matches('0');
            if digits.len() > 5 {
                return Err(HtuError::Port);
            }
            if digits.is_empty() {
                0
            } else {
                digits.parse::<u16>().map_err(|_| HtuError::Port)?
            }
        }
    };
    Ok(if port == default_port {
        host
    } else {
        format!("{host}:{port}")
    })
}

/// Normalises an absolute `http`/`https` URI for the `htu` comparison; its query and
/// fragment are dropped first (RFC 9449 4.3 ignores them), so only the rest is held to
/// RFC 3986's character rules.
pub fn normalise(uri: &str) -> Result<Htu, HtuError> {
    if uri.len() > MAX_URI_BYTES {
        return Err(HtuError::TooLong);
    }
    let without_fragment = uri.split_once('#').map_or(uri, |(a, _)| a);
    let without_query = without_fragment
        .split_once('?')
        .map_or(without_fragment, |(a, _)| a);
    let (scheme, rest) = without_query
        .split_once("://")
        .ok_or(HtuError::NotAbsolute)?;
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        "" => return Err(HtuError::NotAbsolute),
        _ => return Err(HtuError::Scheme),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let authority = normalise_authority(authority, default_port)?;
    let path = normalise_component(path, path_char, false)?;
    let path = remove_dot_segments(&path);
    let path = if path.is_empty() { "/" } else { path.as_str() };
    Ok(Htu(format!("{scheme}://{authority}{path}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> String {
        normalise(s)
            .map(|h| h.0)
            .unwrap_or_else(|e| format!("ERR {e:?}"))
    }

    #[test]
    fn equivalent_spellings_compare_equal() {
        let base = "https://api.example.com/v1/items";
        for same in [
            "https://api.example.com/v1/items",
            "HTTPS://API.Example.COM/v1/items",
            "https://api.example.com:443/v1/items",
            "https://api.example.com:/v1/items",
            "https://api.example.com:00443/v1/items",
            "https://api.example.com/v1/%69tems",
            "https://api.example.com/v1/./items",
            "https://api.example.com/v1/x/../items",
            "https://api.example.com/v1/items?q=1",
            "https://api.example.com/v1/items#frag",
            "https://api.example.com/v1/items?q=1#f",
            "https://api.example.com/v1/items?",
            "https://%61pi.example.com/v1/items",
        ] {
            assert_eq!(n(same), base, "{same}");
        }
        assert_eq!(n("http://a.example:80"), "http://a.example/");
        assert_eq!(n("http://a.example"), "http://a.example/");
        assert_eq!(n("http://a.example/%7euser"), "http://a.example/~user");
        assert_eq!(n("http://a.example/a%2fb"), "http://a.example/a%2Fb");
        assert_eq!(n("http://[::1]:8080/x"), "http://[::1]:8080/x");
        assert_eq!(n("http://[FE80::1]/x"), "http://[fe80::1]/x");
    }

    #[test]
    fn different_resources_stay_different() {
        let base = n("https://api.example.com/v1/items");
        for other in [
            "https://api.example.com/v1/items/",
            "https://api.example.com/V1/items",
            "http://api.example.com/v1/items",
            "https://api.example.com:8443/v1/items",
            "https://api.example.com:80/v1/items",
            "https://other.example.com/v1/items",
            "https://api.example.com./v1/items",
            "https://api.example.com/v1/items%3Fq=1",
            "https://api.example.com/v1/items%2F",
            "https://api.example.com/v1/item",
            "https://api.example.com/v1//items",
        ] {
            assert_ne!(n(other), base, "{other}");
        }
    }

    #[test]
    fn only_absolute_http_uris() {
        for (bad, err) in [
            ("/v1/items", HtuError::NotAbsolute),
            ("api.example.com/v1", HtuError::NotAbsolute),
            ("://api.example.com/v1", HtuError::NotAbsolute),
            ("ftp://api.example.com/v1", HtuError::Scheme),
            ("javascript://x/", HtuError::Scheme),
            ("https://user@api.example.com/", HtuError::Userinfo),
            ("https://user:pw@api.example.com/", HtuError::Userinfo),
            ("https:///v1", HtuError::Host),
            ("https://:443/v1", HtuError::Host),
            ("https://[]/v1", HtuError::Host),
            ("https://[::1/v1", HtuError::Host),
            ("https://[::1]x/v1", HtuError::Port),
            ("https://a.example:65536/", HtuError::Port),
            ("https://a.example:1x/", HtuError::Port),
            ("https://a.example:-1/", HtuError::Port),
            ("https://a.example:999999/", HtuError::Port),
            ("https://a.example/%zz", HtuError::Encoding),
            ("https://a.example/%4", HtuError::Encoding),
            ("https://a.example/a b", HtuError::Character),
            ("https://a.example/a\\b", HtuError::Character),
            ("https://a.example/é", HtuError::Character),
            ("https://a.ex ample/", HtuError::Character),
            ("https://a.example/\n", HtuError::Character),
        ] {
            assert_eq!(normalise(bad), Err(err), "{bad:?}");
        }
        let long = format!("https://a.example/{}", "a".repeat(MAX_URI_BYTES));
        assert_eq!(normalise(&long), Err(HtuError::TooLong));
    }

    #[test]
    fn query_and_fragment_are_dropped_before_character_checks() {
        assert_eq!(n("https://a.example/x?a=|b c"), "https://a.example/x");
        assert_eq!(n("https://a.example/x#a b"), "https://a.example/x");
        // A `?` that is encoded belongs to the path.
        assert_eq!(n("https://a.example/x%3Fy"), "https://a.example/x%3Fy");
    }

    #[test]
    fn rfc3986_dot_segment_examples() {
        // RFC 3986 5.2.4 and 5.4.
        assert_eq!(remove_dot_segments("/a/b/c/./../../g"), "/a/g");
        assert_eq!(remove_dot_segments("mid/content=5/../6"), "mid/6");
        assert_eq!(remove_dot_segments("/../../g"), "/g");
        assert_eq!(remove_dot_segments("/a/.."), "/");
        assert_eq!(remove_dot_segments("/a/."), "/a/");
        assert_eq!(remove_dot_segments(""), "");
        assert_eq!(n("https://a.example/a/%2E%2E/b"), "https://a.example/b");
    }
}
