//! `INTROSPECTD_*` environment overrides: `INTROSPECTD_SERVER__LISTEN=127.0.0.1:6000`
//! sets `server.listen`, `INTROSPECTD_TENANTS__0__CLOCK_SKEW=5s` sets
//! `tenants[0].clock_skew`. They are applied to the YAML document before it is read, so
//! an override is checked exactly like the key it replaces.

use serde_yaml_ng::Value as Yaml;

use super::ConfigError;

/// Prefix of the environment variables that override configuration keys.
pub const ENV_PREFIX: &str = "INTROSPECTD_";

/// Every `INTROSPECTD_*` variable of the process environment.
pub fn env_overrides() -> Vec<(String, String)> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with(ENV_PREFIX))
        .collect()
}

/// Applies one override. `roots` are the top-level keys an override may start with;
/// anything else under the prefix (Kubernetes injects `INTROSPECTD_SERVICE_HOST` for a
/// Service of that name) is not configuration and is ignored.
pub(super) fn apply(
    doc: &mut Yaml,
    name: &str,
    value: &str,
    roots: &[&str],
) -> Result<(), ConfigError> {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return Ok(());
    };
    let segments: Vec<String> = rest.split("__").map(|s| s.to_ascii_lowercase()).collect();
    let [root, _, ..] = segments.as_slice() else {
        return Ok(());
    };
    if !roots.contains(&root.as_str()) {
        return Ok(());
    }
    let parsed = parse_value(value);
    let mut node = doc;
    for (i, seg) in segments.iter().enumerate() {
        let next = segments.get(i + 1);
        if node.is_null() {
            *node = Yaml::Mapping(Default::default());
        }
        node = child(node, seg, next, name)?;
        if next.is_none() {
            *node = parsed;
            return Ok(());
        }
    }
    Ok(())
}

/// The slot `seg` names inside `node` (a list index or a mapping key), created when
/// missing as a list or a mapping depending on the segment after it.
fn child<'a>(
    node: &'a mut Yaml,
    seg: &str,
    next: Option<&String>,
    name: &str,
) -> Result<&'a mut Yaml, ConfigError> {
    match node {
        Yaml::Sequence(seq) => {
            let idx: usize = seg.parse().map_err(|_| {
                ConfigError::new(name, format!("`{seg}` is not an index into a list"))
            })?;
            let len = seq.len();
            seq.get_mut(idx).ok_or_else(|| {
                ConfigError::new(
                    name,
                    format!("index {idx} is past the end of a list of {len}"),
                )
            })
        }
        Yaml::Mapping(map) => {
            let fresh = match next {
                Some(n) if n.parse::<usize>().is_ok() => Yaml::Sequence(Vec::new()),
                Some(_) => Yaml::Mapping(Default::default()),
                None => Yaml::Null,
            };
            Ok(map.entry(Yaml::String(seg.to_string())).or_insert(fresh))
        }
        _ => Err(ConfigError::new(
            name,
            format!("`{seg}` does not name a key inside a scalar value"),
        )),
    }
}

/// Environment values are strings; lists, maps, booleans and integers are read as YAML so
/// that `INTROSPECTD_DEFAULTS__ALGORITHMS='[RS256]'` and `..._ADMIN=false` work, while
/// anything else (addresses, durations, URLs) stays a string.
fn parse_value(value: &str) -> Yaml {
    let t = value.trim();
    let structured = t.starts_with('[')
        || t.starts_with('{')
        || t == "true"
        || t == "false"
        || (!t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()));
    if structured && let Ok(v) = serde_yaml_ng::from_str::<Yaml>(t) {
        return v;
    }
    Yaml::String(value.to_string())
}
