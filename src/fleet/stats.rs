//! What the fleet counts, for `/metrics`: every Redis operation by kind and outcome with
//! its latency, waits for another replica's fetch, fetches avoided by taking another
//! replica's publication, and announcements received. Label values come from closed sets
//! (operation kinds) or from configuration (key sets); nothing a request sends.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use prometheus_client::metrics::histogram::Histogram;

/// Bucket bounds of Redis operation latencies, in seconds.
pub const OP_SECONDS_BUCKETS: [f64; 12] = [
    0.0002, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];
/// Bucket bounds of waits for another replica's fetch, in seconds.
pub const LOCK_WAIT_SECONDS_BUCKETS: [f64; 9] =
    [0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// One kind of Redis operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// The availability probe (also reads the revocation sequence number).
    Probe,
    /// Subscribing to the announcement channel.
    Subscribe,
    /// Recording a replay value.
    Replay,
    /// Asking whether a replay value was recorded.
    ReplayPeek,
    /// Reading an introspection answer.
    AnswerGet,
    /// Storing an introspection answer.
    AnswerPut,
    /// Claiming the right to ask the upstream.
    AnswerClaim,
    /// Giving up that claim.
    AnswerRelease,
    /// Asking for the fleet's fetch turn of a key set.
    FetchTurn,
    /// Reading a published key set.
    FetchPublished,
    /// Publishing a fetched key set.
    Publish,
    /// Recording a failed fetch.
    PublishFailure,
    /// Adding a revocation rule.
    Revoke,
    /// Reading every revocation rule.
    RevocationSync,
    /// Loading the Lua scripts (on every master) when Redis becomes available.
    ScriptLoad,
}

impl Op {
    /// Every kind, in label order.
    pub const ALL: [Op; 15] = [
        Op::Probe,
        Op::Subscribe,
        Op::Replay,
        Op::ReplayPeek,
        Op::AnswerGet,
        Op::AnswerPut,
        Op::AnswerClaim,
        Op::AnswerRelease,
        Op::FetchTurn,
        Op::FetchPublished,
        Op::Publish,
        Op::PublishFailure,
        Op::Revoke,
        Op::RevocationSync,
        Op::ScriptLoad,
    ];

    /// Outcome label values, in index order.
    pub const OUTCOMES: [&'static str; 3] = ["ok", "error", "timeout"];

    /// Stable label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Probe => "probe",
            Op::Subscribe => "subscribe",
            Op::Replay => "replay_record",
            Op::ReplayPeek => "replay_peek",
            Op::AnswerGet => "answer_get",
            Op::AnswerPut => "answer_put",
            Op::AnswerClaim => "answer_claim",
            Op::AnswerRelease => "answer_release",
            Op::FetchTurn => "fetch_turn",
            Op::FetchPublished => "fetch_published",
            Op::Publish => "publish",
            Op::PublishFailure => "publish_failure",
            Op::Revoke => "revoke",
            Op::RevocationSync => "revocation_sync",
            Op::ScriptLoad => "script_load",
        }
    }

    /// Operations that move whole documents get a longer bound.
    pub fn is_bulk(self) -> bool {
        matches!(
            self,
            Op::FetchTurn
                | Op::FetchPublished
                | Op::Publish
                | Op::RevocationSync
                | Op::Subscribe
                | Op::ScriptLoad
        )
    }

    fn index(self) -> usize {
        Op::ALL.iter().position(|o| *o == self).unwrap_or(0)
    }
}

fn outcome_index(outcome: &str) -> usize {
    Op::OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(1)
}

/// The fleet's counters and histograms.
#[derive(Debug)]
pub struct Stats {
    counts: Vec<[AtomicU64; 3]>,
    latency: Vec<Histogram>,
    lock_waits: AtomicU64,
    lock_wait_seconds: Histogram,
    avoided: HashMap<String, AtomicU64>,
    announcements: AtomicU64,
}

impl Stats {
    /// Counters for every operation kind and for the key sets named (configured ones).
    pub fn new<'a>(key_sets: impl IntoIterator<Item = &'a str>) -> Self {
        Self {
            counts: Op::ALL.iter().map(|_| Default::default()).collect(),
            latency: Op::ALL
                .iter()
                .map(|_| Histogram::new(OP_SECONDS_BUCKETS))
                .collect(),
            lock_waits: AtomicU64::new(0),
            lock_wait_seconds: Histogram::new(LOCK_WAIT_SECONDS_BUCKETS),
            avoided: key_sets
                .into_iter()
                .map(|k| (k.to_string(), AtomicU64::new(0)))
                .collect(),
            announcements: AtomicU64::new(0),
        }
    }

    /// Counts one operation and its latency.
    pub fn record_op(&self, op: Op, outcome: &str, elapsed: Duration) {
        let i = op.index();
        if let Some(c) = self.counts.get(i) {
            c[outcome_index(outcome)].fetch_add(1, Ordering::Relaxed);
        }
        if let Some(h) = self.latency.get(i) {
            h.observe(elapsed.as_secs_f64());
        }
    }

    /// Operations of `op` with `outcome` so far.
    pub fn ops(&self, op: Op, outcome: &str) -> u64 {
        self.counts
            .get(op.index())
            .map_or(0, |c| c[outcome_index(outcome)].load(Ordering::Relaxed))
    }

    /// The latency histogram of `op`.
    pub fn latency(&self, op: Op) -> Option<&Histogram> {
        self.latency.get(op.index())
    }

    /// Counts one wait for another replica's fetch.
    pub fn record_lock_wait(&self, waited: Duration) {
        self.lock_waits.fetch_add(1, Ordering::Relaxed);
        self.lock_wait_seconds.observe(waited.as_secs_f64());
    }

    /// Waits so far.
    pub fn lock_waits(&self) -> u64 {
        self.lock_waits.load(Ordering::Relaxed)
    }

    /// The wait-time histogram.
    pub fn lock_wait_seconds(&self) -> &Histogram {
        &self.lock_wait_seconds
    }

    /// Counts a fetch of `key_set` avoided by taking another replica's publication.
    pub fn record_avoided(&self, key_set: &str) {
        if let Some(c) = self.avoided.get(key_set) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Fetches avoided per key set, sorted by key set.
    pub fn avoided(&self) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .avoided
            .iter()
            .map(|(k, c)| (k.as_str(), c.load(Ordering::Relaxed)))
            .collect();
        v.sort();
        v
    }

    /// Counts one announcement received from another replica.
    pub fn record_announcement(&self) {
        self.announcements.fetch_add(1, Ordering::Relaxed);
    }

    /// Announcements received so far.
    pub fn announcements(&self) -> u64 {
        self.announcements.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_operation_and_outcome_and_only_configured_key_sets() {
        let s = Stats::new(["a", "b/p"]);
        s.record_op(Op::Replay, "ok", Duration::from_micros(300));
        s.record_op(Op::Replay, "timeout", Duration::from_millis(50));
        s.record_op(Op::Probe, "error", Duration::ZERO);
        assert_eq!(s.ops(Op::Replay, "ok"), 1);
        assert_eq!(s.ops(Op::Replay, "timeout"), 1);
        assert_eq!(s.ops(Op::Probe, "error"), 1);
        assert_eq!(s.ops(Op::AnswerGet, "ok"), 0);
        s.record_avoided("b/p");
        s.record_avoided("not-configured");
        assert_eq!(s.avoided(), vec![("a", 0), ("b/p", 1)]);
        s.record_lock_wait(Duration::from_millis(3));
        assert_eq!(s.lock_waits(), 1);
    }

    #[test]
    fn labels_are_distinct() {
        let names: std::collections::HashSet<&str> = Op::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), Op::ALL.len());
        for (i, op) in Op::ALL.iter().enumerate() {
            assert_eq!(op.index(), i);
        }
    }
}
