//! How configuration values are read from YAML: durations and addresses with messages
//! that say what was expected, `null` meaning "not set", and the list of a section's
//! keys (for environment overrides).

use std::{net::SocketAddr, str::FromStr, time::Duration};

use serde::{
    Deserialize, Deserializer,
    de::{self, Error as _, Visitor},
    forward_to_deserialize_any,
};
use serde_yaml_ng::Value as Yaml;

/// Keys that have no default: a `null` there stays, so the error names the key itself
/// ("invalid type: unit value") rather than its section ("missing field").
const KEYS_WITHOUT_DEFAULT: [&str; 9] = [
    "id",
    "tenant",
    "issuer",
    "cert_file",
    "key_file",
    "metadata_url",
    "policies",
    "client_id",
    "client_secret_env",
];

/// Removes every `key: null` (also `key:` with nothing after it) from the mappings of
/// `doc`, so that `#[serde(default)]` applies to it exactly as to an absent key. Helm
/// renders an unset value as `null`; it has always meant "the default".
pub(super) fn drop_nulls(doc: &mut Yaml) {
    match doc {
        Yaml::Mapping(map) => {
            map.retain(|k, v| {
                !v.is_null()
                    || k.as_str()
                        .is_some_and(|k| KEYS_WITHOUT_DEFAULT.contains(&k))
            });
            for (_, v) in map.iter_mut() {
                drop_nulls(v);
            }
        }
        Yaml::Sequence(seq) => seq.iter_mut().for_each(drop_nulls),
        _ => {}
    }
}

/// Longest duration any key but `max_lifetime` accepts: far beyond every sensible
/// setting, and far enough from the limits of `Instant` and `SystemTime` arithmetic that
/// no configured duration can overflow what it is added to.
pub const MAX_DURATION: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest `max_lifetime` (a bound on tokens' lifetimes, only ever compared).
pub const MAX_LONG_DURATION: Duration = Duration::from_secs(3660 * 24 * 3600);

/// Parses a duration like `30s`, `5m` or `1h 30m`, at most [`MAX_DURATION`].
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    parse_bounded(s, MAX_DURATION, "30 days")
}

fn parse_bounded(s: &str, max: Duration, max_words: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("`{s}` is not a duration like \"30s\" or \"5m\": {e}"))?;
    if d > max {
        return Err(format!("`{s}` is longer than the maximum of {max_words}"));
    }
    Ok(d)
}

/// A duration key (`#[serde(deserialize_with = "de::duration")]`).
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(D::Error::custom)
}

/// A duration key without a default (`None` when absent).
pub(super) fn some_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

/// `max_lifetime`: like [`some_duration`], up to [`MAX_LONG_DURATION`].
pub(super) fn some_long_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    parse_bounded(&s, MAX_LONG_DURATION, "3660 days")
        .map(Some)
        .map_err(D::Error::custom)
}

/// A listen address key.
pub(super) fn address<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let s = String::deserialize(d)?;
    parse_address(&s).map_err(D::Error::custom)
}

/// A listen address key that an empty string turns off.
pub(super) fn optional_address<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.trim().is_empty() {
        return Ok(None);
    }
    parse_address(&s).map(Some).map_err(D::Error::custom)
}

fn parse_address(s: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(s.trim())
        .map_err(|_| format!("`{s}` is not an address like 0.0.0.0:50051"))
}

/// The keys of a section, as its `Deserialize` derive declares them: the one list, so
/// a new field is known everywhere the keys are needed.
pub(super) fn keys_of<'de, T: Deserialize<'de>>() -> &'static [&'static str] {
    let mut keys: &'static [&'static str] = &[];
    // The probe always fails: it records the field list and stops.
    let _ = T::deserialize(KeysProbe(&mut keys));
    keys
}

/// A deserializer that only answers `deserialize_struct`, by recording its fields.
struct KeysProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> Deserializer<'de> for KeysProbe<'_> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(Self::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _visitor: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(Self::Error::custom("keys recorded"))
    }

    forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    #[allow(dead_code)]
    struct Two {
        a: u8,
        #[serde(rename = "b_key")]
        b: u8,
    }

    #[test]
    fn keys_come_from_the_derive() {
        assert_eq!(keys_of::<Two>(), ["a", "b_key"]);
    }

    #[test]
    fn nulls_are_dropped_except_where_there_is_no_default() {
        let mut doc: Yaml =
            serde_yaml_ng::from_str("a: ~\nb:\nid: ~\nlist:\n  - c: ~\n    d: 1\n").unwrap();
        drop_nulls(&mut doc);
        let expected: Yaml = serde_yaml_ng::from_str("id: ~\nlist:\n  - d: 1\n").unwrap();
        assert_eq!(doc, expected);
    }

    #[test]
    fn duration_messages_say_what_is_expected() {
        let err = parse_duration("soon").unwrap_err();
        assert!(err.starts_with("`soon` is not a duration"), "{err}");
        assert_eq!(parse_duration(" 5m ").unwrap(), Duration::from_secs(300));
    }

    #[test]
    fn durations_are_bounded() {
        assert_eq!(parse_duration("30days").unwrap(), MAX_DURATION);
        for long in ["31days", "100000000y", "18446744073709551615s"] {
            let err = parse_duration(long).unwrap_err();
            assert!(
                err.contains("maximum of 30 days") || err.contains("not a duration"),
                "{err}"
            );
        }
        assert!(parse_bounded("10y", MAX_LONG_DURATION, "3660 days").is_ok());
        assert!(parse_bounded("11y", MAX_LONG_DURATION, "3660 days").is_err());
    }
}
