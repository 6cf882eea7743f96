//! `token_cache:`: the verified-token cache (see `registry::token_cache`), its bounds in
//! bytes and entries, how long an entry is used, and the negative cache of failed
//! signatures, with their defaults.

use std::time::Duration;

use serde::{Deserialize, Deserializer, de::Error as _};

use super::{ConfigError, de};

/// Default bound on the bytes of verified entries (64 MiB).
pub const DEFAULT_TOKEN_CACHE_MAX_BYTES: u64 = 64 * 1024 * 1024;
/// Default bound on the number of verified entries.
pub const DEFAULT_TOKEN_CACHE_MAX_ENTRIES: u64 = 1_000_000;
/// Default longest use of one entry, whatever the token's `exp`.
pub const DEFAULT_TOKEN_CACHE_MAX_TTL: Duration = Duration::from_secs(600);
/// Default time a failed signature is remembered.
pub const DEFAULT_TOKEN_CACHE_NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// Least byte budget accepted (below it the cache could not hold a typical token).
const MIN_MAX_BYTES: u64 = 64 * 1024;

/// `token_cache:` settings. Every key is optional; [`Default`] holds the built-in values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    expecting = "a mapping of token_cache keys"
)]
pub struct TokenCacheSettings {
    /// Cache verified tokens (and failed signatures) at all.
    pub enabled: bool,
    /// Bound on the bytes held by verified entries: a number of bytes or a size such as
    /// `64MiB`.
    #[serde(deserialize_with = "byte_size")]
    pub max_bytes: u64,
    /// Bound on the number of verified entries.
    pub max_entries: u64,
    /// Longest an entry is used, whatever the token's `exp`.
    #[serde(deserialize_with = "de::duration")]
    pub max_ttl: Duration,
    /// How long a failed signature is remembered; `0s` turns the negative cache off.
    #[serde(deserialize_with = "de::duration")]
    pub negative_ttl: Duration,
}

impl Default for TokenCacheSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: DEFAULT_TOKEN_CACHE_MAX_BYTES,
            max_entries: DEFAULT_TOKEN_CACHE_MAX_ENTRIES,
            max_ttl: DEFAULT_TOKEN_CACHE_MAX_TTL,
            negative_ttl: DEFAULT_TOKEN_CACHE_NEGATIVE_TTL,
        }
    }
}

impl TokenCacheSettings {
    /// Checks the rules between keys that their types cannot express.
    pub(super) fn validated(self) -> Result<Self, ConfigError> {
        if self.max_bytes < MIN_MAX_BYTES {
            return Err(ConfigError::new(
                "token_cache.max_bytes",
                format!("must be at least {MIN_MAX_BYTES} bytes (64KiB)"),
            ));
        }
        if self.max_entries == 0 {
            return Err(ConfigError::new(
                "token_cache.max_entries",
                "must be greater than 0",
            ));
        }
        if self.max_ttl.is_zero() {
            return Err(ConfigError::new(
                "token_cache.max_ttl",
                "must be greater than 0 (set enabled: false to turn the cache off)",
            ));
        }
        Ok(self)
    }
}

/// Parses a byte size: a plain number of bytes, or a number with a unit (`B`, `KiB`,
/// `MiB`, `GiB`, or the decimal `KB`, `MB`, `GB`), case-insensitive.
pub(super) fn parse_byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let multiplier: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(format!("`{s}` is not a size like 67108864 or \"64MiB\"")),
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .ok_or_else(|| format!("`{s}` is not a size like 67108864 or \"64MiB\""))
}

/// A byte-size key: an integer, or a string with a unit.
fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    match Size::deserialize(d)? {
        Size::Bytes(n) => Ok(n),
        Size::Text(s) => parse_byte_size(&s).map_err(D::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_byte_size("67108864"), Ok(64 << 20));
        assert_eq!(parse_byte_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_byte_size("64 mib"), Ok(64 << 20));
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_byte_size("512KB"), Ok(512_000));
        for bad in [
            "",
            "MiB",
            "64 parsecs",
            "-1",
            "1.5MiB",
            "99999999999999999999GiB",
        ] {
            assert!(parse_byte_size(bad).is_err(), "{bad}");
        }
    }
}
