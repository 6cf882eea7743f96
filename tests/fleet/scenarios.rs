//! The issue's test list, with three replicas sharing one Redis (standalone, and the
//! 3-master cluster for the cluster path). Each prints its numbers on a `fleet:` line.

use std::time::{Duration, Instant};

use futures::future::join_all;
use introspectd::grpc::pb;

use crate::{
    common::*,
    replicas::*,
    servers::{Options, RedisCluster, RedisServer},
};

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

// ---- replay ------------------------------------------------------------------------

async fn replay_case(store: Store, label: &str) {
    let p = Provider::start().await;
    let replicas = start_replicas(&p, &store, 3, "").await;
    let (accepted, twice) = replay_numbers(&p, &replicas, 500, 100).await;
    let fallbacks = total(
        &replicas,
        "introspectd_shared_state_fallbacks_total{facet=\"replay\"}",
    )
    .await;
    assert_eq!(
        fallbacks, 0.0,
        "Redis answered within op_timeout throughout (else the numbers below are the fallback's)"
    );
    println!(
        "fleet: {label}: {accepted} of 1000 replays accepted on replicas 2 and 3; {twice} of 100 tokens raced on three replicas accepted more than once"
    );
    assert_eq!(
        accepted, 0,
        "a token validated on replica 1 is REPLAYED on 2 and 3"
    );
    assert_eq!(
        twice, 0,
        "raced on all three, a token is accepted exactly once"
    );
    // Envoy's Check goes through the same replay record as Validate, on any replica.
    let t = p.token(&p.key, "/r");
    assert!(replicas[0].validate(&t).await.valid);
    assert_eq!(replicas[1].check(&t).await, (401, "replayed".into()));
    let t = p.token(&p.key, "/r");
    assert_eq!(replicas[2].check(&t).await.0, 200);
    assert_eq!(
        code(&replicas[0].validate(&t).await),
        pb::ErrorCode::Replayed,
        "a Check uses the token up for the fleet"
    );
    // Introspect asks about a token without using it up, on any replica.
    let t = p.token(&p.key, "/r");
    assert!(replicas[1].introspect_jwt(&t).await.active);
    assert!(replicas[0].validate(&t).await.valid);
    assert!(
        !replicas[2].introspect_jwt(&t).await.active,
        "used once: inactive everywhere"
    );
    let m = replicas[1].metrics().await;
    assert_eq!(sample(&m, "introspectd_shared_state_up"), 1.0);
    assert!(
        sample(
            &m,
            "introspectd_shared_state_operations_total{operation=\"replay_record\",outcome=\"ok\"}"
        ) > 0.0
    );
    stop(replicas).await;
}

/// One test of `case` on a standalone server and one on the 3-master cluster.
macro_rules! on_standalone_and_cluster {
    ($case:ident, $standalone:ident, $cluster:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $standalone() {
            let redis = RedisServer::start();
            $case(Store::Single(redis.url()), "standalone").await;
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $cluster() {
            let cluster = RedisCluster::start();
            $case(Store::Cluster(cluster.urls()), "cluster").await;
        }
    };
}

on_standalone_and_cluster!(
    replay_case,
    a_token_used_on_one_replica_is_replayed_on_the_others,
    replay_detection_on_a_redis_cluster
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_a_replicas_verified_cache_is_still_replayed_across_the_fleet() {
    // The verified-token cache skips only the signature: a cached token still goes
    // through the fleet's replay record. Replica 2 caches the token by introspecting it
    // (which only peeks at replay); replica 1 uses it; replica 2's next Validate is a
    // cache hit and REPLAYED.
    let redis = RedisServer::start();
    let p = Provider::start().await;
    let replicas = start_replicas(&p, &Store::Single(redis.url()), 2, "").await;
    let hit = "introspectd_token_cache_requests_total{result=\"hit\"}";
    let t = p.token(&p.key, "/r");
    assert!(replicas[1].introspect_jwt(&t).await.active);
    assert!(
        replicas[1].introspect_jwt(&t).await.active,
        "a peek records nothing"
    );
    let hits = sample(&replicas[1].metrics().await, hit);
    assert!(hits >= 1.0, "the second Introspect was a cache hit");
    assert!(
        replicas[0].validate(&t).await.valid,
        "first use, on replica 1"
    );
    assert_eq!(
        code(&replicas[1].validate(&t).await),
        pb::ErrorCode::Replayed
    );
    assert_eq!(
        sample(&replicas[1].metrics().await, hit),
        hits + 1.0,
        "refused on a cache hit"
    );
    stop(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_state_each_replica_is_an_island() {
    // The control: the numbers above are the fleet's doing.
    let p = Provider::start().await;
    let replicas = start_replicas(&p, &Store::None, 3, "").await;
    let (accepted, _) = replay_numbers(&p, &replicas, 20, 0).await;
    assert_eq!(accepted, 40, "every replay on another replica is accepted");
    assert_eq!(
        p.idp.count("/p/jwks"),
        3,
        "each replica fetches at start-up"
    );
    let start = Instant::now();
    for n in 0..1500u64 {
        let r = replicas[(n % 3) as usize]
            .validate(&forged_kid_token(&p, n))
            .await;
        assert_eq!(code(&r), pb::ErrorCode::UnknownKey);
    }
    let fetched = p.idp.count("/p/jwks") - 3;
    let cooldowns = start.elapsed().as_secs_f64() / COOLDOWN.as_secs_f64();
    println!(
        "fleet: without shared_state: 1500 forged-kid calls over 3 replicas in {:.1?} ({cooldowns:.1} cooldowns): {fetched} JWKS fetches",
        start.elapsed()
    );
    assert!(fetched >= 3, "every replica fetches for itself: {fetched}");
    let m = replicas[0].metrics().await;
    assert!(
        !m.contains("introspectd_shared_state"),
        "no fleet metrics without shared_state"
    );
    assert_eq!(
        health_of(&replicas[0], "introspect.v1.SharedState").await,
        -1,
        "no health entry"
    );
    let r = replicas[0]
        .revoke(pb::revoke_request::Rule::Jti(pb::RevokedJti {
            issuer: p.issuer("/p"),
            jti: "j-local".into(),
        }))
        .await;
    assert!(!r.fleet_wide);
    assert!(r.message.contains("this replica only"), "{}", r.message);
    stop(replicas).await;
}

/// Redis operations a replica made, by kind, except the monitor's own (probe, re-reads).
async fn operations_on_the_call_path(r: &Replica) -> f64 {
    let m = r.metrics().await;
    m.lines()
        .filter(|l| l.starts_with("introspectd_shared_state_operations_total{"))
        .filter(|l| {
            !l.contains("operation=\"probe\"")
                && !l.contains("operation=\"revocation_sync\"")
                && !l.contains("operation=\"fetch_published\"")
                && !l.contains("operation=\"subscribe\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_replay_detection_costs_a_round_trip() {
    let redis = RedisServer::start();
    let p = Provider::start().await;
    let replicas = start_replicas(&p, &Store::Single(redis.url()), 3, "").await;
    let r = &replicas[1];
    let plain = p.token(&p.key, "/p");
    let before = operations_on_the_call_path(r).await;
    for _ in 0..100 {
        assert!(r.validate(&plain).await.valid);
    }
    for _ in 0..20 {
        assert!(r.validate(&p.token(&p.key, "/p")).await.valid);
    }
    assert_eq!(
        operations_on_the_call_path(r).await,
        before,
        "no Redis call for a tenant without replay detection (revocation rules are in memory)"
    );
    for _ in 0..20 {
        assert!(r.validate(&p.token(&p.key, "/r")).await.valid);
    }
    assert_eq!(
        operations_on_the_call_path(r).await,
        before + 20.0,
        "one round trip per replay-detecting Validate"
    );
    stop(replicas).await;
}

// ---- key fetches -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_kid_flood_costs_one_fetch_per_cooldown_and_rotations_still_land() {
    let redis = RedisServer::start();
    let p = Provider::start().await;
    let replicas = start_replicas(&p, &Store::Single(redis.url()), 3, "").await;
    assert_eq!(
        p.idp.count("/p/jwks"),
        1,
        "start-up: one fetch for three replicas"
    );
    assert_eq!(p.idp.count("/p/.well-known/openid-configuration"), 1);
    let by = issuers(&replicas[2]).await;
    let (fetched_by, generation, replica) = &by["plain"];
    assert!(
        fetched_by.starts_with('r') && *generation >= 1 && replica == "r3",
        "{by:?}"
    );

    // 10,000 forged kids over the three replicas, with real tokens in between.
    let before = p.idp.count("/p/jwks");
    let start = Instant::now();
    let mut rejected_real = 0;
    for chunk in (0..10_000u64).collect::<Vec<_>>().chunks(100) {
        let calls = chunk.iter().map(|n| {
            let r = &replicas[(*n % 3) as usize];
            let t = forged_kid_token(&p, *n);
            async move { r.validate(&t).await }
        });
        for r in join_all(calls).await {
            assert_eq!(code(&r), pb::ErrorCode::UnknownKey, "{:?}", r.error);
        }
        let real = p.token(&p.key, "/p");
        if !replicas[(chunk[0] % 3) as usize]
            .validate(&real)
            .await
            .valid
        {
            rejected_real += 1;
        }
    }
    let flood = start.elapsed();
    let fetched = p.idp.count("/p/jwks") - before;
    let cooldowns = flood.as_secs_f64() / COOLDOWN.as_secs_f64();
    println!(
        "fleet: 10000 forged-kid calls over 3 replicas in {flood:.1?} ({cooldowns:.1} cooldowns of {COOLDOWN:?}): {fetched} JWKS fetches at the provider; {rejected_real} real tokens rejected"
    );
    assert!(
        fetched as f64 <= cooldowns.ceil() + 1.0,
        "at most one fetch per cooldown: {fetched}"
    );
    assert_eq!(rejected_real, 0);
    let avoided = total(
        &replicas,
        "introspectd_shared_state_fetches_avoided_total{tenant=\"plain\",policy=\"\"}",
    )
    .await;
    assert!(
        avoided >= 1.0,
        "the fleet's cooldown avoided fetches: {avoided}"
    );

    // A rotation: a new key, used once the cooldown is over. The replica that meets it
    // fetches; the others take its publication.
    tokio::time::sleep(COOLDOWN).await;
    let k2 = TestKey::rsa("k2", "RS256");
    p.idp.publish("/p/jwks", &[&p.key, &k2]);
    let fetches = p.idp.count("/p/jwks");
    let rotated = p.token(&k2, "/p");
    assert!(
        replicas[1].validate(&rotated).await.valid,
        "the new key is fetched on a kid miss"
    );
    for r in &replicas {
        assert!(
            r.validate(&p.token(&k2, "/p")).await.valid,
            "no false rejection on any replica"
        );
        assert!(r.validate(&p.token(&p.key, "/p")).await.valid);
    }
    assert_eq!(
        p.idp.count("/p/jwks"),
        fetches + 1,
        "one fetch for the fleet"
    );
    let by = issuers(&replicas[0]).await;
    assert_eq!(
        by["plain"].0, "r2",
        "issuers shows which replica fetched last: {by:?}"
    );
    stop(replicas).await;
}

/// Plants a publication of the `plain` key set with an attacker's key directly in Redis
/// and announces it; returns how many replicas then accept the attacker's token.
async fn plant_a_key(redis: &RedisServer, p: &Provider, replicas: &[Replica]) -> usize {
    let evil = TestKey::rsa("evil", "RS256");
    let jwks = serde_json::json!({"keys": [evil.jwk.clone(), p.key.jwk.clone()]}).to_string();
    let at_ms = (now() + 5) * 1000;
    redis.cli(&[
        "HSET",
        "introspectd:jwks:{plain}:published",
        "generation",
        "999",
        "jwks",
        &jwks,
        "metadata",
        "",
        "replica",
        "mallory",
        "at_ms",
        &at_ms.to_string(),
        "tag",
        "",
    ]);
    redis.cli(&["PUBLISH", "introspectd:events", "jwks 999 plain"]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let forged = p.token(&evil, "/p");
    let mut accepted = 0;
    for r in replicas {
        if r.validate(&forged).await.valid {
            accepted += 1;
        }
        assert!(
            r.validate(&p.token(&p.key, "/p")).await.valid,
            "the real key still works"
        );
    }
    accepted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_planted_in_redis_is_refused_with_an_integrity_key() {
    let redis = RedisServer::start();
    let p = Provider::start().await;
    let extra = format!("  integrity_key_env: {INTEGRITY_ENV}\n");
    let replicas = start_replicas(&p, &Store::Single(redis.url()), 3, &extra).await;
    // The fleet works as before: publications are tagged, checked and taken.
    assert_eq!(p.idp.count("/p/jwks"), 1, "one fetch for three replicas");
    assert_eq!(
        plant_a_key(&redis, &p, &replicas).await,
        0,
        "no replica trusts the planted key"
    );
    let refused = total(
        &replicas,
        "introspectd_shared_state_integrity_refusals_total",
    )
    .await;
    assert!(refused >= 1.0, "the refusals are counted: {refused}");
    stop(replicas).await;

    // The trust model without the key: whoever can write to Redis can plant keys.
    let redis = RedisServer::start();
    let replicas = start_replicas(&p, &Store::Single(redis.url()), 3, "").await;
    assert_eq!(
        plant_a_key(&redis, &p, &replicas).await,
        3,
        "without integrity_key_env Redis is trusted"
    );
    stop(replicas).await;
}

// ---- introspection answers ---------------------------------------------------------

async fn answers_case(store: Store, label: &str) {
    let p = Provider::start().await;
    let replicas = start_replicas(&p, &store, 3, "").await;
    let opaque = format!("opaque-{}", fastrand::u64(..));
    // 300 introspections over the replicas: 100 concurrent bursts of three.
    let start = std::time::Instant::now();
    for _ in 0..100 {
        let answers = join_all(replicas.iter().map(|r| r.introspect(&opaque))).await;
        assert!(answers.iter().all(|a| a.active && a.sub == "opaque-user"));
    }
    let took = start.elapsed();
    let calls = p.idp.count("/p/introspect");
    let ttls = (took.as_secs_f64() / CACHE_TTL.as_secs_f64()).floor() as usize + 1;
    println!(
        "fleet: {label}: 300 introspections of one opaque token over 3 replicas in {took:.1?}: {calls} upstream call(s), TTL {CACHE_TTL:?}"
    );
    assert!(
        calls <= ttls,
        "one upstream call per TTL: {calls} calls in {took:?}"
    );
    tokio::time::sleep(CACHE_TTL + Duration::from_millis(200)).await;
    for r in &replicas {
        assert!(r.introspect(&opaque).await.active);
    }
    assert_eq!(
        p.idp.count("/p/introspect"),
        calls + 1,
        "and one more after the TTL"
    );
    stop(replicas).await;
}

on_standalone_and_cluster!(
    answers_case,
    an_opaque_token_costs_one_upstream_call_per_ttl,
    shared_answers_on_a_redis_cluster
);

// ---- revocation --------------------------------------------------------------------

/// Revokes with `rule` on replica 1; returns how long until replicas 2 and 3 refuse
/// `token` (which they validated, twice, just before).
async fn revoke_and_time(
    replicas: &[Replica],
    token: &str,
    rule: pb::revoke_request::Rule,
) -> Duration {
    for r in &replicas[1..] {
        assert!(r.validate(token).await.valid);
        assert!(
            r.validate(token).await.valid,
            "in the verified cache, if any"
        );
        assert_eq!(r.check(token).await.0, 200, "Envoy's Check allows it too");
    }
    let start = Instant::now();
    let done = replicas[0].revoke(rule).await;
    assert!(done.fleet_wide, "{}", done.message);
    assert_eq!(
        code(&replicas[0].validate(token).await),
        pb::ErrorCode::Revoked
    );
    let mut slowest = Duration::ZERO;
    for r in &replicas[1..] {
        loop {
            let c = code(&r.validate(token).await);
            if c == pb::ErrorCode::Revoked {
                slowest = slowest.max(start.elapsed());
                break;
            }
            assert_eq!(c, pb::ErrorCode::Unspecified, "valid until revoked");
            assert!(
                start.elapsed() < Duration::from_secs(2),
                "refused within 1 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(r.check(token).await, (401, "revoked".into()), "and Check");
    }
    slowest
}

async fn revocation_case(store: Store, label: &str) {
    let p = Provider::start().await;
    let replicas = start_replicas(&p, &store, 3, "").await;
    use pb::revoke_request::Rule;
    let t1 = p.token(&p.key, "/p");
    let jti = jti_of(&t1);
    let by_jti = revoke_and_time(
        &replicas,
        &t1,
        Rule::Jti(pb::RevokedJti {
            issuer: p.issuer("/p"),
            jti,
        }),
    )
    .await;
    let t2 = p.token(&p.key, "/p");
    let by_token = revoke_and_time(&replicas, &t2, Rule::Token(t2.clone())).await;
    let t3 = p.token(&p.key, "/p");
    let by_subject = revoke_and_time(
        &replicas,
        &t3,
        Rule::Subject(pb::RevokedSubject {
            issuer: p.issuer("/p"),
            subject: "user-1".into(),
            issued_before: Some(prost_types::Timestamp {
                seconds: now() + 1,
                nanos: 0,
            }),
        }),
    )
    .await;
    println!(
        "fleet: {label}: Revoke on replica 1 refused on replicas 2 and 3 after {by_jti:.1?} (jti), {by_token:.1?} (token), {by_subject:.1?} (subject)"
    );
    for d in [by_jti, by_token, by_subject] {
        assert!(d < Duration::from_secs(1), "within 1 s: {d:?}");
    }
    // The token rule holds for a re-encoded signature too, and in Introspect.
    let opaque = format!("opaque-{}", fastrand::u64(..));
    assert!(replicas[2].introspect(&opaque).await.active);
    replicas[0].revoke(Rule::Token(opaque.clone())).await;
    let start = Instant::now();
    while replicas[2].introspect(&opaque).await.active {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "opaque token revoked within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let m = replicas[2].metrics().await;
    assert!(sample(&m, "introspectd_revocation_rules") >= 4.0);
    assert!(
        sample(
            &m,
            "introspectd_validations_total{tenant=\"plain\",result=\"revoked\"}"
        ) >= 3.0
    );
    stop(replicas).await;
}

on_standalone_and_cluster!(
    revocation_case,
    revoke_on_one_replica_is_refused_everywhere_within_a_second,
    revocation_on_a_redis_cluster
);

/// The `jti` claim of a compact JWS.
fn jti_of(token: &str) -> String {
    serde_json::from_slice::<serde_json::Value>(
        &base64::Engine::decode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            token.split('.').nth(1).expect("payload"),
        )
        .expect("b64"),
    )
    .expect("json")["jti"]
        .as_str()
        .expect("jti")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_one_replica_purges_the_verified_cache_of_the_others() {
    // FLEET.md: the verified-token cache stays per replica, and a revocation purges it
    // on every replica. Replica 2 holds the tokens in its cache; the rules reach it from
    // replica 1 through Redis and purge exactly the revoked entry, before replica 2 is
    // ever called with it again; its next call verifies the token again and refuses it.
    use pb::revoke_request::Rule;
    let redis = RedisServer::start();
    let p = Provider::start().await;
    let replicas = start_replicas(&p, &Store::Single(redis.url()), 2, "").await;
    let hit = "introspectd_token_cache_requests_total{result=\"hit\"}";
    let miss = "introspectd_token_cache_requests_total{result=\"miss\"}";
    let entries = "introspectd_token_cache_entries";
    let kept = p.token(&p.key, "/p");
    let (t1, t2) = (p.token(&p.key, "/p"), p.token(&p.key, "/p"));
    let rules = [
        (t1.clone(), Rule::Token(t1.clone())),
        (
            t2.clone(),
            Rule::Jti(pb::RevokedJti {
                issuer: p.issuer("/p"),
                jti: jti_of(&t2),
            }),
        ),
    ];
    for t in [&kept, &t1, &t2] {
        assert!(replicas[1].validate(t).await.valid);
        assert!(replicas[1].validate(t).await.valid, "now from the cache");
    }
    for (token, rule) in rules {
        let m = replicas[1].metrics().await;
        let (held, hits, misses) = (sample(&m, entries), sample(&m, hit), sample(&m, miss));
        assert_eq!(held, 3.0, "the three tokens in replica 2's cache");
        let done = replicas[0].revoke(rule).await;
        assert!(done.fleet_wide, "{}", done.message);
        let purged = wait_metrics(&replicas[1..], Duration::from_secs(1), |m| {
            sample(m, entries) == held - 1.0
        })
        .await;
        assert!(purged, "replica 2 purged the revoked token within 1 s");
        assert_eq!(
            code(&replicas[1].validate(&token).await),
            pb::ErrorCode::Revoked,
            "refused at replica 2's next call"
        );
        let m = replicas[1].metrics().await;
        assert_eq!(sample(&m, hit), hits, "not served from the cache");
        assert_eq!(sample(&m, miss), misses + 1.0, "verified again");
        assert!(replicas[1].validate(&kept).await.valid, "the others stay");
        assert_eq!(sample(&replicas[1].metrics().await, hit), hits + 1.0);
    }
    stop(replicas).await;
}

// ---- Redis killed mid-run ----------------------------------------------------------

fn offer(
    accepted: &mut std::collections::HashMap<String, usize>,
    t: &str,
    r: &pb::ValidateResponse,
) {
    if r.valid {
        *accepted.entry(t.to_string()).or_default() += 1;
    }
}

/// A persistent Redis (so a kill keeps its data), the provider, three replicas.
async fn persistent_fleet(on_unavailable: &str) -> (RedisServer, Provider, Vec<Replica>) {
    let redis = RedisServer::start_with(Options {
        persistent: true,
        ..Options::default()
    });
    let p = Provider::start().await;
    let extra = format!("  on_unavailable: {on_unavailable}\n");
    let replicas = start_replicas(&p, &Store::Single(redis.url()), 3, &extra).await;
    (redis, p, replicas)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_with_local_fallback_keeps_answering_and_shares_again_when_back() {
    let (mut redis, p, replicas) = persistent_fleet("local").await;
    let used = p.token(&p.key, "/r");
    assert!(replicas[0].validate(&used).await.valid);

    redis.kill();
    let start = Instant::now();
    let mut answered = 0;
    let mut slowest = Duration::ZERO;
    while start.elapsed() < Duration::from_secs(2) {
        for r in &replicas {
            let call = Instant::now();
            let fresh = r.validate(&p.token(&p.key, "/r")).await;
            slowest = slowest.max(call.elapsed());
            assert!(
                fresh.valid,
                "no false rejection while Redis is down: {:?}",
                fresh.error
            );
            assert!(r.validate(&p.token(&p.key, "/p")).await.valid);
            answered += 2;
        }
    }
    assert!(
        slowest < Duration::from_secs(1),
        "a dead Redis stalls no call until op_timeout (2 s here): the slowest took {slowest:?}"
    );
    assert_eq!(
        code(&replicas[0].validate(&used).await),
        pb::ErrorCode::Replayed,
        "a replica remembers what it saw"
    );
    assert!(
        wait_metrics(&replicas, Duration::from_secs(3), |m| sample(
            m,
            "introspectd_shared_state_up"
        ) == 0.0)
        .await
    );
    let fallbacks = total(
        &replicas,
        "introspectd_shared_state_fallbacks_total{facet=\"replay\"}",
    )
    .await;
    assert!(fallbacks > 0.0, "the fallback shows in a metric");
    assert_eq!(
        health_of(&replicas[1], "introspect.v1.SharedState").await,
        NOT_SERVING
    );
    assert_eq!(
        health_of(&replicas[1], "introspect.v1.TokenService").await,
        SERVING,
        "still in rotation"
    );

    redis.restart();
    let back = Instant::now();
    assert!(
        wait_metrics(&replicas, Duration::from_secs(10), |m| sample(
            m,
            "introspectd_shared_state_up"
        ) == 1.0)
        .await,
        "sharing recovers"
    );
    let recovered = back.elapsed();
    assert_eq!(
        health_of(&replicas[1], "introspect.v1.SharedState").await,
        SERVING
    );
    let t = p.token(&p.key, "/r");
    assert!(replicas[2].validate(&t).await.valid);
    assert_eq!(
        code(&replicas[0].validate(&t).await),
        pb::ErrorCode::Replayed,
        "shared again"
    );
    assert_eq!(
        code(&replicas[1].validate(&used).await),
        pb::ErrorCode::Replayed,
        "the record survived (AOF)"
    );
    println!(
        "fleet: Redis killed with on_unavailable: local: {answered} validations answered in 2 s (slowest {slowest:.1?}), none falsely rejected, {fallbacks} replay fallbacks counted; sharing again {recovered:.1?} after Redis returned"
    );
    stop(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_with_fail_closed_refuses_and_nothing_is_accepted_twice() {
    let (mut redis, p, replicas) = persistent_fleet("fail_closed").await;
    let mut accepted: std::collections::HashMap<String, usize> = Default::default();
    let mut tokens = Vec::new();
    for _ in 0..30 {
        tokens.push(p.token(&p.key, "/r"));
    }
    for t in &tokens[..10] {
        let r = replicas[0].validate(t).await;
        offer(&mut accepted, t, &r);
    }
    redis.kill();
    assert!(
        wait_metrics(&replicas, Duration::from_secs(3), |m| sample(
            m,
            "introspectd_shared_state_up"
        ) == 0.0)
        .await
    );
    let mut refused = 0;
    for (i, t) in tokens.iter().enumerate() {
        let r = replicas[i % 3].validate(t).await;
        if code(&r) == pb::ErrorCode::StateUnavailable {
            refused += 1;
        }
        offer(&mut accepted, t, &r);
    }
    assert_eq!(
        refused,
        tokens.len(),
        "every replay-detecting answer is STATE_UNAVAILABLE while Redis is down"
    );
    assert_eq!(
        code(&replicas[1].validate(&p.token(&p.key, "/p")).await),
        pb::ErrorCode::StateUnavailable,
        "revocation checks refuse too"
    );
    assert_eq!(
        replicas[2].check(&p.token(&p.key, "/r")).await,
        (503, "state_unavailable".into()),
        "Envoy's Check: the server's fault, not the token's"
    );
    let refusals = total(
        &replicas,
        "introspectd_shared_state_refusals_total{facet=\"revocation\"}",
    )
    .await;
    assert!(refusals > 0.0);

    redis.restart();
    assert!(
        wait_metrics(&replicas, Duration::from_secs(10), |m| sample(
            m,
            "introspectd_shared_state_up"
        ) == 1.0)
        .await
    );
    for round in 0..2 {
        for (i, t) in tokens.iter().enumerate() {
            let r = replicas[(i + round) % 3].validate(t).await;
            offer(&mut accepted, t, &r);
        }
    }
    let twice = accepted.values().filter(|n| **n > 1).count();
    println!(
        "fleet: Redis killed with on_unavailable: fail_closed: {refused} of {} refused with STATE_UNAVAILABLE while down; {} tokens accepted once, {twice} accepted twice",
        tokens.len(),
        accepted.len()
    );
    assert_eq!(twice, 0, "nothing is accepted twice");
    assert_eq!(
        accepted.len(),
        tokens.len(),
        "a refusal did not use a token up: each is accepted once after recovery"
    );
    stop(replicas).await;
}
