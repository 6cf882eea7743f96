//! Loading and validation of whole configuration files.

use std::{path::Path, time::Duration};

use jsonwebtoken::Algorithm;

use crate::jwt::claims::TokenKind;

use super::*;

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<Settings, ConfigError> {
    load_str(text, &no_env, &[])
}

const EXAMPLE: &str = include_str!("../../tests/fixtures/config.example.yaml");

#[test]
fn example_config_loads_with_its_secrets() {
    let env = |name: &str| match name {
        "FIRST_PARTY_JWT_SECRET" => Some("0123456789abcdef0123456789abcdef".to_string()),
        "INTROSPECTION_CLIENT_SECRET" => Some("s3cret".to_string()),
        _ => None,
    };
    let s = load_str(EXAMPLE, &env, &[]).expect("example loads");
    assert_eq!(s.tenants.len(), 5);
    assert_eq!(s.server.max_token_bytes, 16384);
    let demo = &s.tenants[0];
    assert_eq!(demo.policy.clock_skew, Duration::from_secs(60));
    assert_eq!(
        demo.refresh.refresh_interval,
        Duration::from_secs(12 * 3600)
    );
    assert!(
        matches!(&demo.keys, KeySource::Discovery { metadata_url } if metadata_url == "https://idp.example.com/.well-known/openid-configuration")
    );
    assert!(s.tenants[1].is_templated());
    assert!(matches!(s.tenants[2].keys, KeySource::B2c(_)));
    assert!(matches!(s.tenants[3].keys, KeySource::Hmac { .. }));
    assert_eq!(s.tenants[3].policy.algorithms, vec![Algorithm::HS256]);
    let intro = s.tenants[4].introspection.as_ref().expect("introspection");
    assert_eq!(intro.auth, IntrospectionAuth::ClientSecretBasic);
    assert_eq!(intro.negative_cache_ttl, Duration::from_secs(10));
}

#[test]
fn unknown_key_is_named() {
    let err = load("server:\n  listen: 127.0.0.1:1\n  lisen: x\n").unwrap_err();
    assert_eq!(err.key, "server.lisen");
    assert!(err.message.contains("lisen"), "{err}");
    let err = load("tenants:\n  - id: a\n    issuer: https://a\n    clock_skw: 5s\n").unwrap_err();
    assert_eq!(err.key, "tenants[0].clock_skw");
    assert!(err.message.contains("clock_skw"), "{err}");
}

#[test]
fn missing_issuer_is_named() {
    let err = load("tenants:\n  - id: a\n").unwrap_err();
    assert_eq!(err.key, "tenants[0]");
    assert!(err.message.contains("issuer"), "{err}");
}

#[test]
fn bad_duration_is_named() {
    let err = load("tenants:\n  - id: a\n    issuer: https://a\n    clock_skew: 5 parsecs\n")
        .unwrap_err();
    assert_eq!(err.key, "tenants[0].clock_skew");
    let err =
        load("defaults:\n  fetch_timeout: soon\ntenants:\n  - id: a\n    issuer: https://a\n")
            .unwrap_err();
    assert_eq!(err.key, "defaults.fetch_timeout");
}

#[test]
fn duplicate_tenant_id_is_named() {
    let err =
        load("tenants:\n  - id: a\n    issuer: https://a\n  - id: a\n    issuer: https://b\n")
            .unwrap_err();
    assert_eq!(err.key, "tenants[1].id");
}

#[test]
fn http_issuer_needs_require_https_false() {
    let err = load("tenants:\n  - id: a\n    issuer: http://a\n").unwrap_err();
    assert_eq!(err.key, "tenants[0].issuer");
    assert!(err.message.contains("require_https"));
    load("tenants:\n  - id: a\n    issuer: http://a\n    require_https: false\n").expect("allowed");
    let err = load("tenants:\n  - id: a\n    issuer: https://a\n    metadata_url: http://a/m\n")
        .unwrap_err();
    assert_eq!(err.key, "tenants[0].metadata_url");
}

#[test]
fn hmac_algorithm_without_secret_is_an_error() {
    let err =
        load("tenants:\n  - id: a\n    issuer: https://a\n    algorithms: [HS256]\n").unwrap_err();
    assert_eq!(err.key, "tenants[0].algorithms");
}

#[test]
fn short_hmac_secret_is_an_error() {
    let env = |_: &str| Some("short".to_string());
    let err = load_str(
        "tenants:\n  - id: a\n    issuer: https://a\n    algorithms: [HS256]\n    hmac_secret_env: S\n",
        &env,
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "tenants[0].hmac_secret_env");
}

#[test]
fn hs512_needs_a_64_byte_secret() {
    let env = |_: &str| Some("x".repeat(40));
    let err = load_str(
        "tenants:\n  - id: a\n    issuer: https://a\n    algorithms: [HS512]\n    hmac_secret_env: S\n",
        &env,
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "tenants[0].hmac_secret_env");
    assert!(err.message.contains("64"), "{err}");
}

#[test]
fn none_algorithm_is_rejected() {
    let err =
        load("tenants:\n  - id: a\n    issuer: https://a\n    algorithms: [none]\n").unwrap_err();
    assert_eq!(err.key, "tenants[0].algorithms");
}

#[test]
fn env_overrides_apply_and_unrelated_vars_are_ignored() {
    let overrides = vec![
        (
            "INTROSPECTD_SERVER__LISTEN".to_string(),
            "127.0.0.1:6000".to_string(),
        ),
        ("INTROSPECTD_SERVER__ADMIN".to_string(), "false".to_string()),
        (
            "INTROSPECTD_TENANTS__0__CLOCK_SKEW".to_string(),
            "5s".to_string(),
        ),
        (
            "INTROSPECTD_DEFAULTS__ALGORITHMS".to_string(),
            "[ES256]".to_string(),
        ),
        (
            "INTROSPECTD_SERVICE_HOST".to_string(),
            "10.0.0.1".to_string(),
        ),
    ];
    let s = load_str(
        "tenants:\n  - id: a\n    issuer: https://a\n",
        &no_env,
        &overrides,
    )
    .expect("loads");
    assert_eq!(s.server.listen.to_string(), "127.0.0.1:6000");
    assert!(!s.server.admin);
    assert_eq!(s.tenants[0].policy.clock_skew, Duration::from_secs(5));
    assert_eq!(s.tenants[0].policy.algorithms, vec![Algorithm::ES256]);
}

#[test]
fn env_override_of_unknown_key_is_named() {
    let overrides = vec![("INTROSPECTD_SERVER__LISTN".to_string(), "x".to_string())];
    let err = load_str("", &no_env, &overrides).unwrap_err();
    assert!(err.message.contains("listn"), "{err}");
}

#[test]
fn shared_issuer_needs_explicit_tenants() {
    let two = "tenants:\n  - id: a\n    issuer: https://a\n  - id: b\n    issuer: https://a\n";
    let err = load(two).unwrap_err();
    assert_eq!(err.key, "tenants[1].issuer");
    let ok = "tenants:\n  - id: a\n    issuer: https://a\n  - id: b\n    issuer: https://a\n    explicit: true\n";
    load(ok).expect("explicit tenant may share");
}

#[test]
fn types_are_normalised() {
    let s =
        load("tenants:\n  - id: a\n    issuer: https://a\n    types: [application/AT+JWT, JWT]\n")
            .expect("loads");
    assert_eq!(
        s.tenants[0].policy.types,
        Some(vec!["at+jwt".to_string(), "jwt".to_string()])
    );
}

#[test]
fn tls_settings_have_defaults_and_named_errors() {
    let s = load("server:\n  tls:\n    cert_file: /c.pem\n    key_file: /k.pem\n").expect("loads");
    let tls = s.server.tls.expect("tls");
    assert_eq!(tls.reload_interval, DEFAULT_TLS_RELOAD_INTERVAL);
    assert_eq!(tls.handshake_timeout, DEFAULT_TLS_HANDSHAKE_TIMEOUT);
    assert!(tls.client_ca_file.is_none());
    assert_eq!(
        s.server.max_connection_age_grace,
        DEFAULT_MAX_CONNECTION_AGE_GRACE
    );
    let s = load(
        "server:\n  tls:\n    cert_file: /c\n    key_file: /k\n    client_ca_file: /ca\n    reload_interval: 1s\n    handshake_timeout: 2s\n",
    )
    .expect("loads");
    let tls = s.server.tls.expect("tls");
    assert_eq!(tls.reload_interval, Duration::from_secs(1));
    assert_eq!(tls.handshake_timeout, Duration::from_secs(2));
    assert_eq!(tls.client_ca_file.as_deref(), Some(Path::new("/ca")));
    let err =
        load("server:\n  tls:\n    cert_file: /c\n    key_file: /k\n    reload_interval: 0s\n")
            .unwrap_err();
    assert_eq!(err.key, "server.tls.reload_interval");
    let err =
        load("server:\n  tls:\n    cert_file: /c\n    key_file: /k\n    handshake_timeout: soon\n")
            .unwrap_err();
    assert_eq!(err.key, "server.tls.handshake_timeout");
    let err = load("server:\n  tls:\n    key_file: /k\n").unwrap_err();
    assert_eq!(err.key, "server.tls");
    assert!(err.message.contains("cert_file"), "{err}");
}

#[test]
fn introspection_without_metadata_needs_its_endpoints() {
    let env = |_: &str| Some("0123456789abcdef0123456789abcdef".to_string());
    let base = "tenants:\n  - id: a\n    issuer: https://a\n    algorithms: [HS256]\n    hmac_secret_env: S\n    introspection:\n      client_id: c\n      client_secret_env: C\n";
    let err = load_str(base, &env, &[]).unwrap_err();
    assert_eq!(err.key, "tenants[0].introspection.endpoint");
    let bearer = format!("{base}      endpoint: https://a/introspect\n      auth: bearer\n");
    let err = load_str(&bearer, &env, &[]).unwrap_err();
    assert_eq!(err.key, "tenants[0].introspection.token_endpoint");
    load_str(
        &format!("{bearer}      token_endpoint: https://a/token\n"),
        &env,
        &[],
    )
    .expect("both named");
    let discovery = "tenants:\n  - id: a\n    issuer: https://a\n    introspection:\n      client_id: c\n      client_secret_env: C\n      auth: bearer\n";
    load_str(discovery, &env, &[]).expect("metadata may name both");
}

#[test]
fn secrets_are_redacted_in_debug() {
    let s = Secret::new(b"hunter2hunter2".to_vec());
    assert!(!format!("{s:?}").contains("hunter2"));
}

#[test]
fn a_null_value_takes_its_default_but_a_null_required_key_is_named() {
    let s = load(
        "server:\n  metrics_listen: ~\n  request_timeout:\ntenants:\n  - id: a\n    issuer: https://a\n    clock_skew: ~\n",
    )
    .expect("loads");
    assert_eq!(s.server.metrics_listen, Some(DEFAULT_METRICS_LISTEN));
    assert_eq!(s.server.request_timeout, DEFAULT_REQUEST_TIMEOUT);
    assert_eq!(s.tenants[0].policy.clock_skew, DEFAULT_CLOCK_SKEW);
    let err = load("tenants:\n  - id: a\n    issuer:\n").unwrap_err();
    assert_eq!(err.key, "tenants[0].issuer");
}

#[test]
fn environment_overrides_reach_every_top_level_section() {
    assert_eq!(
        de::keys_of::<File>(),
        [
            "server",
            "defaults",
            "tenants",
            "shared_state",
            "token_cache",
            "ext_authz"
        ]
    );
    let s = load_str(
        "shared_state:\n  redis_url: redis://a:6379\n",
        &|_| None,
        &[(
            "INTROSPECTD_SHARED_STATE__ON_UNAVAILABLE".into(),
            "fail_closed".into(),
        )],
    )
    .expect("loads");
    assert_eq!(
        s.shared_state.map(|s| s.on_unavailable),
        Some(OnUnavailable::FailClosed)
    );
}

const G1: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";

fn entra(allowed: &str) -> Result<Settings, ConfigError> {
    load(&format!(
        "tenants:\n  - id: e\n    issuer: \"https://login.microsoftonline.com/{{tenantid}}/v2.0\"\n    metadata_url: https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration\n{allowed}"
    ))
}

#[test]
fn entra_tenantid_issuer_fails_closed_without_allowed_tenant_ids() {
    for absent in ["", "    allowed_tenant_ids: ~\n"] {
        let err = entra(absent).unwrap_err();
        assert_eq!(err.key, "tenants[0].allowed_tenant_ids", "{err}");
        assert!(
            err.message.contains("[\"*\"]"),
            "says how to trust all: {err}"
        );
    }
    let any = entra("    allowed_tenant_ids: [\"*\"]\n").expect("explicit *");
    assert_eq!(
        any.tenants[0].allowed_tenant_ids,
        Some(AllowedTenantIds::Any)
    );
    assert!(
        any.tenants[0]
            .entra_trust()
            .expect("templated")
            .contains("every")
    );
    let only = entra(&format!(
        "    allowed_tenant_ids: [\"{}\"]\n",
        G1.to_uppercase()
    ))
    .expect("a GUID");
    assert_eq!(
        only.tenants[0].allowed_tenant_ids,
        Some(AllowedTenantIds::Only(vec![G1.to_string()]))
    );
    let bad = [
        (
            "    allowed_tenant_ids: []\n",
            "tenants[0].allowed_tenant_ids",
        ),
        (
            "    allowed_tenant_ids: [\"*\", \"72f988bf-86f1-41af-91ab-2d7cd011db47\"]\n",
            "tenants[0].allowed_tenant_ids",
        ),
        (
            "    allowed_tenant_ids: [\"all\"]\n",
            "tenants[0].allowed_tenant_ids[0]",
        ),
    ];
    for (yaml, key) in bad {
        assert_eq!(entra(yaml).unwrap_err().key, key, "{yaml}");
    }
    // An environment override can make the same explicit choice.
    let overrides = vec![(
        "INTROSPECTD_TENANTS__0__ALLOWED_TENANT_IDS".to_string(),
        "[\"*\"]".to_string(),
    )];
    let text = "tenants:\n  - id: e\n    issuer: \"https://login.microsoftonline.com/{tenantid}/v2.0\"\n    metadata_url: https://login.microsoftonline.com/common/v2.0/.well-known/openid-configuration\n";
    let s = load_str(text, &no_env, &overrides).expect("override");
    assert_eq!(s.tenants[0].allowed_tenant_ids, Some(AllowedTenantIds::Any));
    // Other issuers neither need nor accept the key.
    let plain = load("tenants:\n  - id: a\n    issuer: https://a\n").expect("loads");
    assert_eq!(plain.tenants[0].allowed_tenant_ids, None);
    assert_eq!(plain.tenants[0].entra_trust(), None);
    let err = load("tenants:\n  - id: a\n    issuer: https://a\n    allowed_tenant_ids: [\"*\"]\n")
        .unwrap_err();
    assert_eq!(err.key, "tenants[0].allowed_tenant_ids");
}

#[test]
fn token_kind_is_a_policy_key_with_named_errors() {
    let s = load(
        "defaults:\n  token_kind: id_token\ntenants:\n  - id: a\n    issuer: https://a\n  - id: b\n    issuer: https://b\n    token_kind: access_token\n",
    )
    .expect("loads");
    assert_eq!(s.tenants[0].policy.token_kind, TokenKind::IdToken);
    assert_eq!(s.tenants[1].policy.token_kind, TokenKind::AccessToken);
    let plain = load("tenants:\n  - id: a\n    issuer: https://a\n").expect("loads");
    assert_eq!(plain.tenants[0].policy.token_kind, TokenKind::AccessToken);
    let err = load("tenants:\n  - id: a\n    issuer: https://a\n    token_kind: refresh_token\n")
        .unwrap_err();
    assert_eq!(err.key, "tenants[0].token_kind");
    assert!(err.message.contains("access_token, id_token"), "{err}");
    let err =
        load("defaults:\n  token_kind: ID_TOKEN\ntenants:\n  - id: a\n    issuer: https://a\n")
            .unwrap_err();
    assert_eq!(err.key, "defaults.token_kind");
}

#[test]
fn replay_cache_entries_is_a_bounded_policy_key() {
    let plain = load("tenants:\n  - id: a\n    issuer: https://a\n").expect("loads");
    assert_eq!(
        plain.tenants[0].policy.replay_cache_entries,
        DEFAULT_REPLAY_CACHE_ENTRIES
    );
    let s = load(
        "defaults:\n  replay_cache_entries: 5000\ntenants:\n  - id: a\n    issuer: https://a\n  - id: b\n    issuer: https://b\n    replay_cache_entries: 7\n",
    )
    .expect("loads");
    assert_eq!(s.tenants[0].policy.replay_cache_entries, 5000);
    assert_eq!(s.tenants[1].policy.replay_cache_entries, 7);
    for (yaml, key) in [
        (
            "    replay_cache_entries: 0\n",
            "tenants[0].replay_cache_entries",
        ),
        (
            "    replay_cache_entries: 100000001\n",
            "tenants[0].replay_cache_entries",
        ),
        (
            "    replay_cache_entries: -1\n",
            "tenants[0].replay_cache_entries",
        ),
        (
            "    replay_cache_entries: many\n",
            "tenants[0].replay_cache_entries",
        ),
    ] {
        let err = load(&format!(
            "tenants:\n  - id: a\n    issuer: https://a\n{yaml}"
        ))
        .unwrap_err();
        assert_eq!(err.key, key, "{yaml}: {err}");
    }
    let max = format!("    replay_cache_entries: {MAX_REPLAY_CACHE_ENTRIES}\n");
    load(&format!(
        "tenants:\n  - id: a\n    issuer: https://a\n{max}"
    ))
    .expect("the maximum");
}

#[test]
fn cooldown_has_a_floor_and_durations_a_ceiling() {
    let tenant = |extra: &str| {
        load(&format!(
            "tenants:\n  - id: a\n    issuer: https://a\n{extra}"
        ))
    };
    for short in ["0s", "500ms"] {
        let err = tenant(&format!("    unknown_kid_cooldown: {short}\n")).unwrap_err();
        assert_eq!(err.key, "tenants[0].unknown_kid_cooldown", "{short}");
        assert!(err.message.contains("at least 1s"), "{err}");
        let err = load(&format!("defaults:\n  unknown_kid_cooldown: {short}\n")).unwrap_err();
        assert_eq!(err.key, "defaults.unknown_kid_cooldown", "{short}");
    }
    let s = tenant("    unknown_kid_cooldown: 1s\n").expect("the floor");
    assert_eq!(
        s.tenants[0].refresh.unknown_kid_cooldown,
        MIN_UNKNOWN_KID_COOLDOWN
    );
    for (yaml, key) in [
        ("    clock_skew: 31days\n", "tenants[0].clock_skew"),
        ("    refresh_interval: 1y\n", "tenants[0].refresh_interval"),
        (
            "    unknown_kid_cooldown: 100000000y\n",
            "tenants[0].unknown_kid_cooldown",
        ),
        (
            "    fetch_timeout: 18446744073709551615s\n",
            "tenants[0].fetch_timeout",
        ),
        ("    max_lifetime: 11y\n", "tenants[0].max_lifetime"),
    ] {
        let err = tenant(yaml).unwrap_err();
        assert_eq!(err.key, key, "{yaml}: {err}");
    }
    for (yaml, key) in [
        (
            "server:\n  shutdown_grace: 31days\n",
            "server.shutdown_grace",
        ),
        (
            "server:\n  max_connection_age: 1y\n",
            "server.max_connection_age",
        ),
    ] {
        assert_eq!(load(yaml).unwrap_err().key, key, "{yaml}");
    }
    let s = tenant("    refresh_interval: 30days\n    max_lifetime: 3650days\n")
        .expect("at the bounds");
    assert_eq!(s.tenants[0].refresh.refresh_interval, MAX_DURATION);
    assert_eq!(
        s.tenants[0].policy.max_lifetime,
        Some(Duration::from_secs(3650 * 24 * 3600))
    );
}

#[test]
fn a_type_with_surrounding_whitespace_is_refused() {
    let err =
        load("tenants:\n  - id: a\n    issuer: https://a\n    types: [\"at+jwt \"]\n").unwrap_err();
    assert_eq!(err.key, "tenants[0].types");
    let err = load("defaults:\n  types: [\" jwt\"]\n").unwrap_err();
    assert_eq!(err.key, "defaults.types");
}

#[test]
fn defaults_are_checked_without_any_tenant() {
    for (yaml, key) in [
        (
            "defaults:\n  unknown_kid_cooldown: 0s\n",
            "defaults.unknown_kid_cooldown",
        ),
        (
            "defaults:\n  replay_cache_entries: 0\n",
            "defaults.replay_cache_entries",
        ),
        ("defaults:\n  token_kind: jwt\n", "defaults.token_kind"),
        ("defaults:\n  algorithms: [none]\n", "defaults.algorithms"),
    ] {
        assert_eq!(load(yaml).unwrap_err().key, key, "{yaml}");
    }
}

#[test]
fn limits_that_protect_callers_have_defaults_and_refuse_zero() {
    let s = load("tenants:\n  - id: a\n    issuer: https://a\n").expect("loads");
    assert!(!s.server.admin, "AdminService is off unless asked for");
    assert_eq!(s.server.admin_listen, None);
    assert_eq!(s.server.max_connections, DEFAULT_MAX_CONNECTIONS);
    assert_eq!(s.server.max_concurrent_streams, 128);
    assert_eq!(s.server.handshake_timeout, Duration::from_secs(5));
    assert_eq!(s.server.max_watchers_per_connection, 16);
    assert_eq!(s.server.max_watchers_per_peer, 64);
    for key in [
        "max_connections",
        "max_concurrent_streams",
        "max_watchers_per_connection",
        "max_watchers_per_peer",
    ] {
        let err = load(&format!("server:\n  {key}: 0\n")).unwrap_err();
        assert_eq!(err.key, format!("server.{key}"), "{err}");
    }
    let err = load("server:\n  handshake_timeout: 0s\n").unwrap_err();
    assert_eq!(err.key, "server.handshake_timeout");
}

#[test]
fn admin_off_loopback_needs_admin_auth() {
    let tenant = "tenants:\n  - id: ops\n    issuer: https://ops\n";
    for server in [
        "server:\n  admin: true\n",
        "server:\n  listen: 127.0.0.1:1\n  admin_listen: 0.0.0.0:2\n",
        "server:\n  listen: \"[::]:1\"\n  admin: true\n",
    ] {
        let err = load(&format!("{server}{tenant}")).unwrap_err();
        assert_eq!(err.key, "server.admin_auth", "{server}: {err}");
    }
    for server in [
        "server:\n  listen: 127.0.0.1:1\n  admin: true\n",
        "server:\n  admin_listen: 127.0.0.1:2\n",
        "server:\n  admin_listen: \"[::1]:2\"\n",
        "server:\n  admin: true\n  admin_listen: 0.0.0.0:2\n  admin_auth:\n    tenant: ops\n    required_scopes: [admin]\n",
    ] {
        let s = load(&format!("{server}{tenant}")).expect(server);
        assert!(s.server.admin || s.server.admin_listen.is_some());
    }
    let err = load(&format!(
        "server:\n  admin_auth:\n    tenant: nobody\n    audiences: [x]\n{tenant}"
    ))
    .unwrap_err();
    assert_eq!(err.key, "server.admin_auth.tenant");
    let err = load(&format!(
        "server:\n  admin_auth:\n    tenant: ops\n{tenant}"
    ))
    .unwrap_err();
    assert_eq!(
        err.key, "server.admin_auth",
        "neither audiences nor scopes: {err}"
    );
    let err = load(&format!(
        "server:\n  admin_auth:\n    audiences: [x]\n{tenant}"
    ))
    .unwrap_err();
    assert_eq!(err.key, "server.admin_auth", "{err}");
    assert!(err.message.contains("tenant"), "{err}");
    let s = load(&format!(
        "server:\n  admin_auth:\n    tenant: ops\n    audiences: [api://ops]\n    required_scopes: [ops.admin]\n{tenant}"
    ))
    .expect("loads");
    let auth = s.server.admin_auth.expect("admin_auth");
    assert_eq!(auth.tenant, "ops");
    assert_eq!(auth.required_scopes, vec!["ops.admin".to_string()]);
}
