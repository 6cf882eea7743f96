//! The fleet's Redis operations on their own (no introspectd server): replay records,
//! answers and fill claims, fetch turns and publications with announcements, revocation
//! rules with pub/sub and re-reads, reconnection after a kill, TLS, and the same on a
//! Redis Cluster.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use introspectd::{
    config::{OnUnavailable, RedisEndpoints, SharedStateSettings},
    fleet::Fleet,
    registry::Revocations,
    shared::{
        AnswerKey, AnswerStore as _, FetchCoordination as _, Publication, ReplayOutcome,
        ReplayRecord, ReplayStore as _, Revocation, RevocationRule, RevocationStore as _, Turn,
        TurnRequest,
    },
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::servers::{Options, RedisCluster, RedisServer, make_tls};

fn settings(endpoints: RedisEndpoints, replica: &str) -> SharedStateSettings {
    SharedStateSettings {
        endpoints,
        password: None,
        key_prefix: "test:".into(),
        op_timeout: Duration::from_millis(200),
        on_unavailable: OnUnavailable::Local,
        replica_name: replica.into(),
        tls_ca_file: None,
        integrity_key: None,
    }
}

/// A started fleet handle and what it needs to stay alive.
struct Member {
    fleet: Fleet,
    revocations: Arc<Revocations>,
    cancel: CancellationToken,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn member(s: SharedStateSettings) -> Member {
    let m = started(s);
    assert!(
        wait(Duration::from_secs(10), || m.fleet.health().is_up()).await,
        "shared state becomes available"
    );
    m
}

/// A member whose tasks run, whether or not its Redis answers yet.
fn started(s: SharedStateSettings) -> Member {
    let revocations = Revocations::new();
    let fleet = Fleet::new(
        &s,
        ["okta".to_string(), "b2c/B2C_1_x".to_string()],
        revocations.clone(),
    )
    .expect("fleet");
    let cancel = CancellationToken::new();
    fleet.spawn(&TaskTracker::new(), &cancel);
    Member {
        fleet,
        revocations,
        cancel,
    }
}

async fn wait(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cond()
}

fn rec<'a>(namespace: &'a str, key: &'a str, expires: SystemTime, peek: bool) -> ReplayRecord<'a> {
    ReplayRecord {
        namespace,
        key,
        expires,
        peek,
    }
}

fn answer_key(digest: &[u8; 32]) -> AnswerKey<'_> {
    AnswerKey {
        tenant: "t",
        digest,
    }
}

fn in_secs(s: u64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(s)
}

fn now() -> i64 {
    introspectd::shared::unix_secs(SystemTime::now())
}

async fn replay_and_answers(a: &Member, b: &Member) {
    let (fa, fb) = (&a.fleet, &b.fleet);
    let key = format!("https://i\0{}", fastrand::u64(..));
    assert_eq!(
        fa.record(rec("jti", &key, in_secs(60), true)).await,
        Ok(ReplayOutcome::Fresh)
    );
    assert_eq!(
        fa.record(rec("jti", &key, in_secs(60), false)).await,
        Ok(ReplayOutcome::Fresh)
    );
    assert_eq!(
        fb.record(rec("jti", &key, in_secs(60), false)).await,
        Ok(ReplayOutcome::Replayed)
    );
    assert_eq!(
        fb.record(rec("jti", &key, in_secs(60), true)).await,
        Ok(ReplayOutcome::Replayed)
    );
    assert_eq!(
        fb.record(rec("dpop", &key, in_secs(60), false)).await,
        Ok(ReplayOutcome::Fresh),
        "namespaces are apart"
    );

    let digest = [fastrand::u8(..); 32];
    assert_eq!(fa.get(answer_key(&digest)).await, Ok(None));
    assert_eq!(
        fa.claim_fill(answer_key(&digest), Duration::from_secs(5))
            .await,
        Ok(true)
    );
    assert_eq!(
        fb.claim_fill(answer_key(&digest), Duration::from_secs(5))
            .await,
        Ok(false),
        "one filler"
    );
    fb.release_fill(answer_key(&digest))
        .await
        .expect("release is a no-op for a non-owner");
    assert_eq!(
        fb.claim_fill(answer_key(&digest), Duration::from_secs(5))
            .await,
        Ok(false)
    );
    fa.put(
        answer_key(&digest),
        b"{\"active\":true}".to_vec(),
        Duration::from_secs(5),
    )
    .await
    .expect("put");
    assert_eq!(
        fb.get(answer_key(&digest)).await,
        Ok(Some(b"{\"active\":true}".to_vec()))
    );
    assert_eq!(
        fb.claim_fill(answer_key(&digest), Duration::from_secs(5))
            .await,
        Ok(true),
        "put released the claim"
    );
}

async fn fetch_turns(a: &Member, b: &Member) {
    let (fa, fb) = (&a.fleet, &b.fleet);
    let request = TurnRequest {
        known: 0,
        max_age: Duration::ZERO,
        cooldown: Duration::from_secs(30),
        wait: Duration::from_secs(2),
    };
    let mut announced = fb.announcements("okta").expect("configured key set");
    assert_eq!(fa.turn("okta", request).await, Ok(Turn::Fetch));
    let waiting = {
        let fb = fb.clone();
        tokio::spawn(async move { fb.turn("okta", request).await })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let generation = fa
        .publish(
            "okta",
            Publication {
                jwks: "{\"keys\":[]}".into(),
                metadata: None,
            },
        )
        .await
        .expect("publish");
    let Ok(Ok(Turn::Adopt(p))) = waiting.await else {
        panic!("the waiting replica takes the publication");
    };
    assert_eq!(
        (p.generation, p.replica.as_str(), p.jwks.as_str()),
        (generation, fa.replica(), "{\"keys\":[]}")
    );
    assert!(
        wait(Duration::from_secs(1), || *announced.borrow_and_update()
            == generation)
        .await,
        "announced"
    );
    let again = TurnRequest {
        known: generation,
        ..request
    };
    assert_eq!(
        fb.turn("okta", again).await,
        Ok(Turn::Skip),
        "within the cooldown: keep the keys"
    );
    assert_eq!(
        fa.published("okta", 0)
            .await
            .map(|p| p.map(|p| p.generation)),
        Ok(Some(generation))
    );
    assert_eq!(fa.published("okta", generation).await, Ok(None));
    let fresh = TurnRequest {
        known: 0,
        max_age: Duration::from_secs(60),
        ..request
    };
    assert!(
        matches!(fb.turn("okta", fresh).await, Ok(Turn::Adopt(_))),
        "a young publication is taken"
    );
    assert!(
        fb.stats()
            .avoided()
            .iter()
            .any(|(k, n)| *k == "okta" && *n >= 3)
    );
    assert!(fb.stats().lock_waits() >= 1);

    let short = TurnRequest {
        cooldown: Duration::from_millis(300),
        ..request
    };
    assert_eq!(fa.turn("b2c/B2C_1_x", short).await, Ok(Turn::Fetch));
    fa.publish_failure("b2c/B2C_1_x", "HTTP status 503")
        .await
        .expect("failure recorded");
    assert_eq!(
        fb.turn("b2c/B2C_1_x", short).await,
        Ok(Turn::Failed("HTTP status 503".into()))
    );
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        fb.turn("b2c/B2C_1_x", short).await,
        Ok(Turn::Fetch),
        "after the cooldown another replica may fetch"
    );
}

async fn revocations(a: &Member, b: &Member) {
    let rule = Revocation {
        rule: RevocationRule::Jti {
            iss: "https://i".into(),
            jti: format!("j{}", fastrand::u64(..)),
        },
        expires_at: now() + 60,
    };
    let before = b.revocations.len();
    let heard = b.fleet.stats().announcements();
    let start = tokio::time::Instant::now();
    a.fleet.add(&rule).await.expect("revoke");
    assert_eq!(
        a.revocations.len(),
        before + 1,
        "applied on the replica that took the call"
    );
    assert!(
        wait(Duration::from_secs(1), || b.revocations.len() == before + 1).await,
        "announced within 1 s"
    );
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "by pub/sub, not the probe: {:?}",
        start.elapsed()
    );
    assert!(b.fleet.stats().announcements() > heard);
}

async fn suite(a: &Member, b: &Member) {
    replay_and_answers(a, b).await;
    fetch_turns(a, b).await;
    revocations(a, b).await;
}

#[tokio::test]
async fn standalone_server() {
    let redis = RedisServer::start();
    let a = member(settings(RedisEndpoints::Single(redis.url()), "a")).await;
    let b = member(settings(RedisEndpoints::Single(redis.url()), "b")).await;
    suite(&a, &b).await;
    let keys = redis.cli(&["--scan"]);
    assert!(
        keys.lines().all(|k| k.starts_with("test:")),
        "every key under the prefix:\n{keys}"
    );
}

#[tokio::test]
async fn cluster_of_three_masters() {
    let cluster = RedisCluster::start();
    let a = member(settings(RedisEndpoints::Cluster(cluster.urls()), "a")).await;
    let b = member(settings(
        RedisEndpoints::Cluster(cluster.urls()[1..].to_vec()),
        "b",
    ))
    .await;
    suite(&a, &b).await;
    let spread = cluster
        .nodes
        .iter()
        .filter(|n| !n.cli(&["--scan"]).trim().is_empty())
        .count();
    assert!(spread >= 2, "keys live on several masters");
}

#[tokio::test]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = make_tls(dir.path());
    let redis = RedisServer::start_with(Options {
        tls: Some(tls.clone()),
        ..Options::default()
    });
    let mut s = settings(RedisEndpoints::Single(redis.url()), "a");
    s.tls_ca_file = Some(tls.ca.clone());
    let a = member(s.clone()).await;
    let b = member(SharedStateSettings {
        replica_name: "b".into(),
        ..s.clone()
    })
    .await;
    replay_and_answers(&a, &b).await;
    revocations(&a, &b).await;

    // Without the CA, the server's certificate is not trusted: never available.
    s.tls_ca_file = None;
    let untrusted = Fleet::new(&s, [], Revocations::new()).expect("fleet");
    let cancel = CancellationToken::new();
    untrusted.spawn(&TaskTracker::new(), &cancel);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!untrusted.health().is_up());
    cancel.cancel();
}

#[tokio::test]
async fn password_from_the_settings() {
    let redis = RedisServer::start_with(Options {
        password: Some("pa55".into()),
        ..Options::default()
    });
    let mut s = settings(RedisEndpoints::Single(redis.url()), "a");
    s.password = Some(introspectd::config::Secret::new("pa55"));
    let a = member(s.clone()).await;
    assert_eq!(
        a.fleet.record(rec("jti", "k", in_secs(5), false)).await,
        Ok(ReplayOutcome::Fresh)
    );
    // An ACL user limited to the prefix's keys and channel is enough.
    redis.cli(&[
        "ACL",
        "SETUSER",
        "fleet",
        "on",
        ">u5er-pass",
        "resetkeys",
        "~test:*",
        "resetchannels",
        "&test:events",
        "+@all",
    ]);
    let mut user = settings(
        RedisEndpoints::Single(format!("redis://fleet@127.0.0.1:{}", redis.port)),
        "u",
    );
    user.password = Some(introspectd::config::Secret::new("u5er-pass"));
    let u = member(user).await;
    suite(&u, &a).await;
    s.password = Some(introspectd::config::Secret::new("wrong"));
    let wrong = Fleet::new(&s, [], Revocations::new()).expect("fleet");
    let cancel = CancellationToken::new();
    wrong.spawn(&TaskTracker::new(), &cancel);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !wrong.health().is_up(),
        "a wrong password is never available"
    );
    cancel.cancel();
}

#[tokio::test]
async fn a_killed_server_is_noticed_and_sharing_resumes_when_it_returns() {
    let mut redis = RedisServer::start_with(Options {
        persistent: true,
        ..Options::default()
    });
    let a = member(settings(RedisEndpoints::Single(redis.url()), "a")).await;
    let b = member(settings(RedisEndpoints::Single(redis.url()), "b")).await;
    redis.kill();
    assert!(
        wait(Duration::from_secs(3), || !a.fleet.health().is_up()
            && !b.fleet.health().is_up())
        .await,
        "both notice"
    );
    let err = a.fleet.record(rec("jti", "k1", in_secs(60), false)).await;
    assert!(err.is_err(), "operations fail fast: {err:?}");
    // A rule recorded while b is cut off reaches b through the re-read, not pub/sub.
    redis.restart();
    assert!(
        wait(Duration::from_secs(10), || a.fleet.health().is_up()
            && b.fleet.health().is_up())
        .await,
        "both recover"
    );
    revocations(&a, &b).await;
    let rule = Revocation {
        rule: RevocationRule::Token {
            sha256: "ab".repeat(32),
        },
        expires_at: now() + 60,
    };
    // Write the rule behind the fleet's back (as a replica that died before announcing
    // would leave it): the sequence-number probe finds it.
    redis.cli(&[
        "ZADD",
        "test:revocation:{rules}:set",
        &((now() + 60) * 1000).to_string(),
        &serde_json::to_string(&rule.rule).expect("json"),
    ]);
    redis.cli(&["INCR", "test:revocation:{rules}:seq"]);
    let before = b.revocations.len();
    assert!(
        wait(Duration::from_secs(3), || b.revocations.len() == before + 1).await,
        "the probe's re-read picks it up"
    );
}

#[tokio::test]
async fn revocation_rules_outlive_a_restart_that_lost_them() {
    // No persistence: the restarted server is empty. The replicas that remember the
    // rules record them again, so a replica that joins later still gets them.
    let mut redis = RedisServer::start();
    let a = member(settings(RedisEndpoints::Single(redis.url()), "a")).await;
    let b = member(settings(RedisEndpoints::Single(redis.url()), "b")).await;
    revocations(&a, &b).await;
    revocations(&b, &a).await;
    assert_eq!(a.revocations.len(), 2);
    redis.restart();
    assert_eq!(
        redis.cli(&["ZCARD", "test:revocation:{rules}:set"]).trim(),
        "0",
        "the server lost them"
    );
    assert!(
        wait(Duration::from_secs(10), || a.fleet.health().is_up()
            && b.fleet.health().is_up())
        .await,
        "both recover"
    );
    assert!(
        wait(Duration::from_secs(3), || redis
            .cli(&["ZCARD", "test:revocation:{rules}:set"])
            .trim()
            == "2")
        .await,
        "recorded again"
    );
    assert_eq!(
        (a.revocations.len(), b.revocations.len()),
        (2, 2),
        "still in force"
    );
    let c = member(settings(RedisEndpoints::Single(redis.url()), "c")).await;
    assert!(
        wait(Duration::from_secs(2), || c.revocations.len() == 2).await,
        "a new replica gets them"
    );
}

#[tokio::test]
async fn with_an_integrity_key_values_planted_in_redis_are_refused() {
    let redis = RedisServer::start();
    let mut s = settings(RedisEndpoints::Single(redis.url()), "a");
    s.integrity_key = Some(introspectd::config::Secret::new(vec![9u8; 32]));
    let a = member(s.clone()).await;
    let b = member(SharedStateSettings {
        replica_name: "b".into(),
        ..s.clone()
    })
    .await;
    // What the replicas write themselves round-trips.
    replay_and_answers(&a, &b).await;
    fetch_turns(&a, &b).await;

    // A planted answer and a planted publication are refused, as if absent.
    let digest = [3u8; 32];
    let key = format!(
        "test:answer:{{t:{}}}:value",
        base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, digest)
    );
    redis.cli(&["SET", &key, "{\"active\":true,\"sub\":\"mallory\"}"]);
    assert_eq!(a.fleet.get(answer_key(&digest)).await, Ok(None));
    redis.cli(&[
        "HSET",
        "test:jwks:{okta}:published",
        "generation",
        "999",
        "jwks",
        "{\"keys\":[]}",
        "metadata",
        "",
        "replica",
        "mallory",
        "at_ms",
        "1",
        "tag",
        "",
    ]);
    assert!(a.fleet.published("okta", 0).await.is_err());
    let request = TurnRequest {
        known: 0,
        max_age: Duration::from_secs(60),
        cooldown: Duration::from_secs(30),
        wait: Duration::from_millis(100),
    };
    assert!(
        a.fleet.turn("okta", request).await.is_err(),
        "the caller fetches alone instead"
    );
    assert!(a.fleet.integrity_refusals() >= 3);

    // A replica without the key (misconfigured) cannot read the others' answers either.
    let mut keyless = s.clone();
    keyless.integrity_key = None;
    keyless.replica_name = "c".into();
    let c = member(keyless).await;
    let digest = [4u8; 32];
    a.fleet
        .put(
            answer_key(&digest),
            b"{\"active\":true}".to_vec(),
            Duration::from_secs(5),
        )
        .await
        .expect("put");
    assert_ne!(
        c.fleet.get(answer_key(&digest)).await,
        Ok(Some(b"{\"active\":true}".to_vec()))
    );
}

/// A member started while its Redis does not answer starts anyway, says so, fails
/// operations within `op_timeout`, and shares once Redis is there.
async fn start_without_redis_then_join(s: SharedStateSettings, up: impl FnOnce()) -> Member {
    let m = started(s);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!m.fleet.health().is_up(), "reported unavailable");
    let start = std::time::Instant::now();
    let r = m.fleet.record(rec("jti", "k0", in_secs(60), false)).await;
    assert!(r.is_err(), "{r:?}");
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "fails fast: {:?}",
        start.elapsed()
    );
    up();
    assert!(
        wait(Duration::from_secs(20), || m.fleet.health().is_up()).await,
        "available once Redis answers"
    );
    m
}

#[tokio::test]
async fn a_replica_started_before_its_redis_joins_when_it_answers() {
    let mut redis = RedisServer::start();
    redis.kill();
    let s = settings(RedisEndpoints::Single(redis.url()), "a");
    let a = start_without_redis_then_join(s, || redis.restart()).await;
    let b = member(settings(RedisEndpoints::Single(redis.url()), "b")).await;
    replay_and_answers(&a, &b).await;
}

#[tokio::test]
async fn a_whole_cluster_killed_and_restarted_is_rejoined_by_old_and_new_members() {
    let mut cluster = RedisCluster::start();
    let a = member(settings(RedisEndpoints::Cluster(cluster.urls()), "a")).await;
    for n in &mut cluster.nodes {
        n.kill();
    }
    let mut slowest = Duration::ZERO;
    for i in 0..20 {
        let start = std::time::Instant::now();
        let r = a
            .fleet
            .record(rec("jti", &format!("k{i}"), in_secs(60), false))
            .await;
        assert!(r.is_err(), "{r:?}");
        slowest = slowest.max(start.elapsed());
    }
    assert!(
        slowest < Duration::from_millis(150),
        "a dead cluster fails operations at once, not at op_timeout (200 ms): {slowest:?}"
    );
    assert!(
        wait(Duration::from_secs(5), || !a.fleet.health().is_up()).await,
        "the outage is noticed"
    );
    let s = settings(RedisEndpoints::Cluster(cluster.urls()), "b");
    let b = start_without_redis_then_join(s, || {
        for n in &mut cluster.nodes {
            n.restart();
        }
    })
    .await;
    assert!(
        wait(Duration::from_secs(20), || a.fleet.health().is_up()).await,
        "the old member reconnects"
    );
    // The restarted nodes may need a moment to agree the cluster is whole again.
    assert!(
        wait(Duration::from_secs(20), || cluster.nodes.iter().all(|n| n
            .cli(&["cluster", "info"])
            .contains("cluster_state:ok")))
        .await
    );
    // Every operation succeeds within op_timeout at once: the probe remade each
    // master's connection, not the first caller to need it.
    replay_and_answers(&a, &b).await;
}
