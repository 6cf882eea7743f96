//! DPoP proofs across a fleet: with `shared_state`, a proof's replay record is the
//! fleet's (namespace `dpop`), so the same proof presented to two replicas is accepted
//! once; without it, each replica remembers only the proofs it saw (the control).

use futures::future::join_all;
use introspectd::grpc::pb;
use serde_json::json;

use crate::{
    common::{dpop::DpopKey, *},
    replicas::*,
    servers::RedisServer,
};

const URI: &str = "https://api.example.com/v1/items";

/// A DPoP-bound token of tenant `plain` (no token replay detection, so the token itself
/// may be used again: only the proof is one-time).
fn bound_token(p: &Provider, key: &DpopKey) -> String {
    let mut c = claims(&p.issuer("/p"), "api://demo");
    c["cnf"] = json!({"jkt": key.jkt()});
    p.key.token(&c)
}

async fn validate_with(r: &Replica, token: &str, proof: &str) -> pb::ValidateResponse {
    r.tokens
        .clone()
        .validate(pb::ValidateRequest {
            token: token.into(),
            authorization_scheme: "DPoP".into(),
            dpop_proofs: vec![proof.into()],
            http_method: "GET".into(),
            http_uri: URI.into(),
            ..Default::default()
        })
        .await
        .expect("Validate RPC ok")
        .into_inner()
}

/// `proofs` proofs each used on replica 1 then presented to replica 2, then `raced`
/// proofs each sent to every replica at once. Returns (second presentations accepted,
/// raced proofs accepted more than once).
async fn proof_replays(
    replicas: &[Replica],
    p: &Provider,
    proofs: usize,
    raced: usize,
) -> (usize, usize) {
    let key = DpopKey::es256();
    let t = bound_token(p, &key);
    let mut accepted = 0;
    for _ in 0..proofs {
        let proof = key.proof("GET", URI, &t);
        let first = validate_with(&replicas[0], &t, &proof).await;
        assert!(first.valid, "first use: {:?}", first.error);
        let again = validate_with(&replicas[1], &t, &proof).await;
        if again.valid {
            accepted += 1;
        } else {
            assert_eq!(code(&again), pb::ErrorCode::InvalidDpopProof);
            let message = again.error.map(|e| e.message).unwrap_or_default();
            assert!(message.contains("used before"), "{message}");
            assert!(
                again.www_authenticate.starts_with("DPoP "),
                "{}",
                again.www_authenticate
            );
        }
    }
    let mut twice = 0;
    for _ in 0..raced {
        let proof = key.proof("GET", URI, &t);
        let answers = join_all(replicas.iter().map(|r| validate_with(r, &t, &proof))).await;
        if answers.iter().filter(|a| a.valid).count() > 1 {
            twice += 1;
        }
        assert!(answers.iter().any(|a| a.valid), "one replica accepts it");
    }
    (accepted, twice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dpop_proof_is_accepted_once_across_the_fleet() {
    let redis = RedisServer::start();
    let p = Provider::start().await;
    let replicas = start_replicas(&p, &Store::Single(redis.url()), 3, "").await;
    let (accepted, twice) = proof_replays(&replicas, &p, 50, 30).await;
    println!(
        "fleet: DPoP: {accepted} of 50 proofs used on replica 1 accepted again on replica 2; {twice} of 30 proofs raced on three replicas accepted more than once"
    );
    assert_eq!(
        accepted, 0,
        "a proof used on replica 1 is refused on replica 2"
    );
    assert_eq!(
        twice, 0,
        "raced on all three, a proof is accepted exactly once"
    );
    let fallbacks = total(
        &replicas,
        "introspectd_shared_state_fallbacks_total{facet=\"replay\"}",
    )
    .await;
    assert_eq!(fallbacks, 0.0, "Redis answered throughout");
    stop(replicas).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_shared_state_a_proof_is_remembered_per_replica() {
    // The control: the refusals above are the fleet's record, not each replica's.
    let p = Provider::start().await;
    let replicas = start_replicas(&p, &Store::None, 2, "").await;
    let (accepted, _) = proof_replays(&replicas, &p, 5, 0).await;
    assert_eq!(accepted, 5, "another replica accepts a used proof");
    let key = DpopKey::es256();
    let t = bound_token(&p, &key);
    let proof = key.proof("GET", URI, &t);
    assert!(validate_with(&replicas[0], &t, &proof).await.valid);
    assert_eq!(
        code(&validate_with(&replicas[0], &t, &proof).await),
        pb::ErrorCode::InvalidDpopProof,
        "the same replica remembers it"
    );
    stop(replicas).await;
}

/// The proof replay rule while Redis is down: `local` decides with each replica's own
/// record (and counts the fallback), `fail_closed` refuses with STATE_UNAVAILABLE rather
/// than risk accepting a proof twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_proofs_follow_on_unavailable() {
    for policy in ["local", "fail_closed"] {
        let mut redis = RedisServer::start();
        let p = Provider::start().await;
        let extra = format!("  on_unavailable: {policy}\n");
        let replicas = start_replicas(&p, &Store::Single(redis.url()), 2, &extra).await;
        let key = DpopKey::es256();
        let t = bound_token(&p, &key);
        redis.kill();
        assert!(
            wait_metrics(&replicas, std::time::Duration::from_secs(3), |m| sample(
                m,
                "introspectd_shared_state_up"
            ) == 0.0)
            .await,
            "{policy}: the replicas notice"
        );
        let proof = key.proof("GET", URI, &t);
        let first = validate_with(&replicas[0], &t, &proof).await;
        let again = validate_with(&replicas[0], &t, &proof).await;
        if policy == "local" {
            assert!(first.valid, "{policy}: {:?}", first.error);
            assert_eq!(
                code(&again),
                pb::ErrorCode::InvalidDpopProof,
                "{policy}: the replica's own record still refuses a replay"
            );
            let fallbacks = total(
                &replicas,
                "introspectd_shared_state_fallbacks_total{facet=\"replay\"}",
            )
            .await;
            assert!(fallbacks >= 1.0, "{policy}: counted");
        } else {
            for r in [&first, &again] {
                assert!(!r.valid, "{policy}: accepted");
                assert_eq!(code(r), pb::ErrorCode::StateUnavailable, "{policy}");
            }
        }
        stop(replicas).await;
    }
}
