//! The `shared_state:` section (FLEET.md): where a fleet's shared state lives (one Redis
//! or Valkey server, or a Redis Cluster), how it is addressed, and what a replica does
//! while it is unavailable. Absent: every replica keeps everything in memory.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{ConfigError, EnvLookup, Secret, de};

/// Default prefix of every key.
pub const DEFAULT_KEY_PREFIX: &str = "introspectd:";
/// Default bound on one Redis operation.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_millis(50);
/// Longest `op_timeout` accepted: a Validate call waits this long at most per operation.
pub const MAX_OP_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest `key_prefix` accepted, in bytes.
pub const MAX_KEY_PREFIX_BYTES: usize = 64;
/// Shortest integrity key accepted, in bytes.
pub const MIN_INTEGRITY_KEY_BYTES: usize = 32;
/// Environment variables that name the replica when `replica_name` is not set, in order
/// (Kubernetes sets `HOSTNAME` to the pod's name).
pub const REPLICA_NAME_ENV: [&str; 2] = ["POD_NAME", "HOSTNAME"];

/// What a replica does while the shared state is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnavailable {
    /// Per-replica state (replay, introspection answers, fetch coordination), counted
    /// in a metric and shown in health.
    #[default]
    Local,
    /// Replay-detecting tenants and revocation checks refuse with `STATE_UNAVAILABLE`.
    FailClosed,
}

/// Where the shared state lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisEndpoints {
    /// One server (`redis_url`).
    Single(String),
    /// Seed nodes of a Redis Cluster (`cluster_nodes`).
    Cluster(Vec<String>),
}

/// `shared_state:` settings.
#[derive(Debug, Clone)]
pub struct SharedStateSettings {
    /// The server or the cluster's seed nodes.
    pub endpoints: RedisEndpoints,
    /// The password, read from `redis_password_env` at start-up.
    pub password: Option<Secret>,
    /// Every key starts with it.
    pub key_prefix: String,
    /// Bound on one operation; past it the operation counts as failed.
    pub op_timeout: Duration,
    /// Behaviour while the shared state is unavailable.
    pub on_unavailable: OnUnavailable,
    /// This replica's name, shown to operators (`issuers`: who fetched last).
    pub replica_name: String,
    /// PEM CA bundle that signs the server's certificate (`rediss://`); `None`: the
    /// system's roots.
    pub tls_ca_file: Option<PathBuf>,
    /// The key that tags published key sets and introspection answers, read from
    /// `integrity_key_env`; `None`: Redis is trusted with them.
    pub integrity_key: Option<Secret>,
}

/// `shared_state:` as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of shared_state keys")]
pub(super) struct SharedStateFile {
    redis_url: Option<String>,
    #[serde(default)]
    cluster_nodes: Vec<String>,
    redis_password_env: Option<String>,
    key_prefix: Option<String>,
    op_timeout: Option<String>,
    on_unavailable: Option<String>,
    replica_name: Option<String>,
    tls_ca_file: Option<PathBuf>,
    integrity_key_env: Option<String>,
}

const KEY: &str = "shared_state";

fn check_redis_url(key: &str, url: &str) -> Result<bool, ConfigError> {
    let parsed = url::Url::parse(url.trim())
        .map_err(|e| ConfigError::new(key, format!("`{url}` is not a URL: {e}")))?;
    let tls = match parsed.scheme() {
        "redis" => false,
        "rediss" => true,
        other => {
            return Err(ConfigError::new(
                key,
                format!("scheme `{other}` is not redis:// or rediss://"),
            ));
        }
    };
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(ConfigError::new(key, "URL has no host"));
    }
    if parsed.password().is_some() {
        return Err(ConfigError::new(
            key,
            "holds a password; put it in the variable named by shared_state.redis_password_env",
        ));
    }
    Ok(tls)
}

fn endpoints(raw: &SharedStateFile) -> Result<RedisEndpoints, ConfigError> {
    match (&raw.redis_url, raw.cluster_nodes.is_empty()) {
        (Some(_), false) => Err(ConfigError::new(
            KEY,
            "set either redis_url or cluster_nodes, not both",
        )),
        (None, true) => Err(ConfigError::new(
            KEY,
            "needs redis_url (one server) or cluster_nodes (a Redis Cluster)",
        )),
        (Some(url), true) => {
            check_redis_url("shared_state.redis_url", url)?;
            Ok(RedisEndpoints::Single(url.trim().to_string()))
        }
        (None, false) => {
            let mut schemes = Vec::new();
            for (i, url) in raw.cluster_nodes.iter().enumerate() {
                schemes.push(check_redis_url(
                    &format!("shared_state.cluster_nodes[{i}]"),
                    url,
                )?);
            }
            if schemes.iter().any(|t| *t != schemes[0]) {
                return Err(ConfigError::new(
                    "shared_state.cluster_nodes",
                    "mixes redis:// and rediss:// nodes",
                ));
            }
            Ok(RedisEndpoints::Cluster(
                raw.cluster_nodes
                    .iter()
                    .map(|u| u.trim().to_string())
                    .collect(),
            ))
        }
    }
}

fn key_prefix(raw: &Option<String>) -> Result<String, ConfigError> {
    let prefix = raw
        .clone()
        .unwrap_or_else(|| DEFAULT_KEY_PREFIX.to_string());
    let ok = !prefix.is_empty()
        && prefix.len() <= MAX_KEY_PREFIX_BYTES
        && prefix
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'{' && b != b'}');
    if !ok {
        return Err(ConfigError::new(
            "shared_state.key_prefix",
            format!(
                "must be 1 to {MAX_KEY_PREFIX_BYTES} printable ASCII characters without spaces, '{{' or '}}' (braces would change Redis Cluster hash slots)"
            ),
        ));
    }
    Ok(prefix)
}

fn replica_name(raw: &Option<String>, env: EnvLookup<'_>) -> Result<String, ConfigError> {
    let name = match raw {
        Some(n) => n.trim().to_string(),
        None => REPLICA_NAME_ENV
            .iter()
            .find_map(|v| env(v).filter(|s| !s.trim().is_empty()))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| format!("replica-{:08x}", fastrand::u32(..))),
    };
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        return Err(ConfigError::new(
            "shared_state.replica_name",
            "must be 1 to 253 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(name)
}

fn secret(
    key: &str,
    var: &Option<String>,
    env: EnvLookup<'_>,
    min_bytes: usize,
) -> Result<Option<Secret>, ConfigError> {
    let Some(var) = var else {
        return Ok(None);
    };
    let value = env(var).filter(|v| !v.is_empty()).ok_or_else(|| {
        ConfigError::new(
            key,
            format!("environment variable `{var}` is not set or empty"),
        )
    })?;
    if value.len() < min_bytes {
        return Err(ConfigError::new(
            key,
            format!(
                "environment variable `{var}` holds {} bytes; at least {min_bytes} are needed",
                value.len()
            ),
        ));
    }
    Ok(Some(Secret::new(value.into_bytes())))
}

impl SharedStateFile {
    /// Resolves and checks `shared_state:`, reading its secrets from `env`.
    pub(super) fn resolve(self, env: EnvLookup<'_>) -> Result<SharedStateSettings, ConfigError> {
        resolve(self, env)
    }
}

fn resolve(raw: SharedStateFile, env: EnvLookup<'_>) -> Result<SharedStateSettings, ConfigError> {
    let endpoints = endpoints(&raw)?;
    let password = secret(
        "shared_state.redis_password_env",
        &raw.redis_password_env,
        env,
        1,
    )?;
    let integrity_key = secret(
        "shared_state.integrity_key_env",
        &raw.integrity_key_env,
        env,
        MIN_INTEGRITY_KEY_BYTES,
    )?;
    let op_timeout = match &raw.op_timeout {
        None => DEFAULT_OP_TIMEOUT,
        Some(s) => {
            de::parse_duration(s).map_err(|m| ConfigError::new("shared_state.op_timeout", m))?
        }
    };
    if op_timeout.is_zero() || op_timeout > MAX_OP_TIMEOUT {
        return Err(ConfigError::new(
            "shared_state.op_timeout",
            format!(
                "must be greater than 0 and at most {}",
                humantime::format_duration(MAX_OP_TIMEOUT)
            ),
        ));
    }
    let on_unavailable = match raw.on_unavailable.as_deref().map(str::trim) {
        None | Some("local") => OnUnavailable::Local,
        Some("fail_closed") => OnUnavailable::FailClosed,
        Some(other) => {
            return Err(ConfigError::new(
                "shared_state.on_unavailable",
                format!("`{other}` is not `local` or `fail_closed`"),
            ));
        }
    };
    Ok(SharedStateSettings {
        endpoints,
        password,
        key_prefix: key_prefix(&raw.key_prefix)?,
        op_timeout,
        on_unavailable,
        replica_name: replica_name(&raw.replica_name, env)?,
        tls_ca_file: raw.tls_ca_file,
        integrity_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Result<SharedStateSettings, ConfigError> {
        let raw: SharedStateFile = serde_yaml_ng::from_str(yaml).expect("yaml");
        let env = |name: &str| match name {
            "REDIS_PASSWORD" => Some("s3cret".to_string()),
            "FLEET_KEY" => Some("k".repeat(32)),
            "SHORT_KEY" => Some("k".repeat(31)),
            "HOSTNAME" => Some("pod-7".to_string()),
            _ => None,
        };
        resolve(raw, &env)
    }

    fn key_of(yaml: &str) -> String {
        load(yaml).expect_err(yaml).key
    }

    #[test]
    fn defaults() {
        let s = load("redis_url: redis://cache:6379/0").expect("valid");
        assert_eq!(
            s.endpoints,
            RedisEndpoints::Single("redis://cache:6379/0".into())
        );
        assert_eq!(s.key_prefix, DEFAULT_KEY_PREFIX);
        assert_eq!(s.op_timeout, DEFAULT_OP_TIMEOUT);
        assert_eq!(s.on_unavailable, OnUnavailable::Local);
        assert_eq!(s.replica_name, "pod-7", "from HOSTNAME");
        assert!(s.password.is_none());
    }

    #[test]
    fn cluster_password_and_policy() {
        let s = load(
            "cluster_nodes: [rediss://a:7000, rediss://b:7000]\nredis_password_env: REDIS_PASSWORD\non_unavailable: fail_closed\nop_timeout: 20ms\nkey_prefix: \"prod:iam:\"\nreplica_name: r1\n",
        )
        .expect("valid");
        assert_eq!(
            s.endpoints,
            RedisEndpoints::Cluster(vec!["rediss://a:7000".into(), "rediss://b:7000".into()])
        );
        assert_eq!(
            s.password.as_ref().map(Secret::expose),
            Some(&b"s3cret"[..])
        );
        assert!(
            !format!("{s:?}").contains("s3cret"),
            "the password is redacted"
        );
        assert_eq!(s.on_unavailable, OnUnavailable::FailClosed);
        assert_eq!(s.op_timeout, Duration::from_millis(20));
        assert_eq!(s.key_prefix, "prod:iam:");
        assert_eq!(s.replica_name, "r1");
        assert!(s.integrity_key.is_none());
        let tagged = load("redis_url: redis://a\nintegrity_key_env: FLEET_KEY").expect("valid");
        assert_eq!(tagged.integrity_key.map(|k| k.expose().len()), Some(32));
    }

    #[test]
    fn bad_values_name_their_key() {
        assert_eq!(key_of("{}"), "shared_state");
        assert_eq!(
            key_of("redis_url: redis://a\ncluster_nodes: [redis://b]"),
            "shared_state"
        );
        assert_eq!(key_of("redis_url: http://a"), "shared_state.redis_url");
        assert_eq!(key_of("redis_url: redis://:pw@a"), "shared_state.redis_url");
        assert_eq!(
            key_of("cluster_nodes: [redis://a, ftp://b]"),
            "shared_state.cluster_nodes[1]"
        );
        assert_eq!(
            key_of("cluster_nodes: [redis://a, rediss://b]"),
            "shared_state.cluster_nodes"
        );
        assert_eq!(
            key_of("redis_url: redis://a\nredis_password_env: MISSING"),
            "shared_state.redis_password_env"
        );
        assert_eq!(
            key_of("redis_url: redis://a\nop_timeout: 0s"),
            "shared_state.op_timeout"
        );
        assert_eq!(
            key_of("redis_url: redis://a\nop_timeout: soon"),
            "shared_state.op_timeout"
        );
        assert_eq!(
            key_of("redis_url: redis://a\non_unavailable: open"),
            "shared_state.on_unavailable"
        );
        assert_eq!(
            key_of("redis_url: redis://a\nkey_prefix: \"{x}:\""),
            "shared_state.key_prefix"
        );
        assert_eq!(
            key_of("redis_url: redis://a\nkey_prefix: \"\""),
            "shared_state.key_prefix"
        );
        assert_eq!(
            key_of("redis_url: redis://a\nreplica_name: \"a b\""),
            "shared_state.replica_name"
        );
        assert_eq!(
            key_of("redis_url: redis://a\nintegrity_key_env: SHORT_KEY"),
            "shared_state.integrity_key_env"
        );
        assert_eq!(
            key_of("redis_url: redis://a\nintegrity_key_env: MISSING"),
            "shared_state.integrity_key_env"
        );
    }
}
