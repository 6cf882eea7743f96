//! The handshake between validation and a key set's refresher: generation counters for
//! requested and completed refreshes, the unknown-kid cooldown, the same cooldown for
//! forced (operator) refreshes, and single-flight joining. Holds no I/O; the refresher
//! (in `oidc`) does the fetching.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};

/// What a refresh should fetch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshKind {
    /// Discovery, then JWKS.
    Full,
    /// The JWKS only (an unknown kid).
    KeysOnly,
}

/// When the last on-demand refreshes were started.
#[derive(Debug, Default)]
struct Gates {
    kid_miss: Option<Instant>,
    forced: Option<Instant>,
}

/// What a forced refresh request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forced {
    /// Wait for this generation: a refresh just requested, or the one in flight joined.
    Requested(u64),
    /// The last forced refresh started less than the cooldown ago: nothing is fetched
    /// before `until`.
    Throttled {
        /// When a forced refresh may fetch again.
        until: Instant,
    },
}

/// Requests and completions of one key set's refreshes.
///
/// Generation 1 is the start-up fetch, requested at creation. Every later request takes
/// the next generation unless one is already in flight (`requested > done`), in which
/// case the caller joins it: concurrent callers share one fetch.
#[derive(Debug)]
pub struct RefreshControl {
    requested: AtomicU64,
    full: AtomicBool,
    wake: Notify,
    done: watch::Sender<u64>,
    gate: Mutex<Gates>,
    refreshable: bool,
}

impl RefreshControl {
    /// A control whose start-up fetch is pending; `refreshable: false` for key sets that
    /// never change (static keys), whose callers never wait.
    pub fn new(refreshable: bool) -> Self {
        let (done, _) = watch::channel(if refreshable { 0 } else { 1 });
        Self {
            requested: AtomicU64::new(1),
            full: AtomicBool::new(true),
            wake: Notify::new(),
            done,
            gate: Mutex::new(Gates::default()),
            refreshable,
        }
    }

    /// True when a refresher serves this key set.
    pub fn is_refreshable(&self) -> bool {
        self.refreshable
    }

    /// The last completed generation.
    pub fn completed(&self) -> u64 {
        *self.done.borrow()
    }

    /// True once the start-up fetch has finished, successfully or not.
    pub fn first_done(&self) -> bool {
        self.completed() >= 1
    }

    /// Waits until the start-up fetch has finished.
    pub async fn wait_first(&self) {
        let mut rx = self.done.subscribe();
        let _ = rx.wait_for(|d| *d >= 1).await;
    }

    /// An unknown kid was seen: returns the generation to wait for, joining a refresh in
    /// flight, or `None` when the cooldown since the last unknown-kid refresh has not
    /// passed (or nothing refreshes this set).
    pub fn kid_miss(&self, cooldown: Duration) -> Option<u64> {
        if !self.refreshable {
            return None;
        }
        let mut gates = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let requested = self.requested.load(Ordering::SeqCst);
        if requested > self.completed() {
            return Some(requested);
        }
        let now = Instant::now();
        // A cooldown too long to add to an Instant never ends.
        if let Some(t) = gates.kid_miss
            && t.checked_add(cooldown).is_none_or(|until| now < until)
        {
            return None;
        }
        gates.kid_miss = Some(now);
        let generation = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        Some(generation)
    }

    /// Asks for a full refresh (an operator's), joining one in flight; otherwise at most
    /// one per `cooldown`, so forced refreshes never bypass the failure backoff by more
    /// than one fetch per cooldown. `None` when nothing refreshes this set.
    pub fn force(&self, cooldown: Duration) -> Option<Forced> {
        if !self.refreshable {
            return None;
        }
        let mut gates = self.gate.lock().unwrap_or_else(|p| p.into_inner());
        let requested = self.requested.load(Ordering::SeqCst);
        if requested > self.completed() {
            return Some(Forced::Requested(requested));
        }
        let now = Instant::now();
        if let Some(t) = gates.forced {
            // Checked: a cooldown too long to add to an Instant never ends.
            match t.checked_add(cooldown) {
                Some(until) if now >= until => {}
                until => {
                    return Some(Forced::Throttled {
                        until: until.unwrap_or(now),
                    });
                }
            }
        }
        gates.forced = Some(now);
        self.full.store(true, Ordering::SeqCst);
        let generation = self.requested.fetch_add(1, Ordering::SeqCst) + 1;
        self.wake.notify_one();
        Some(Forced::Requested(generation))
    }

    /// Waits for generation `generation` to complete, at most `timeout`; true if it did.
    pub async fn wait(&self, generation: u64, timeout: Duration) -> bool {
        let mut rx = self.done.subscribe();
        matches!(
            tokio::time::timeout(timeout, rx.wait_for(|d| *d >= generation)).await,
            Ok(Ok(_))
        )
    }

    // ---- refresher side ----

    /// Resolves when a refresh was requested (a permit is stored if nobody waits yet).
    pub async fn requested(&self) {
        self.wake.notified().await
    }

    /// True when a request is pending that no fetch has served.
    pub fn pending(&self) -> bool {
        self.requested.load(Ordering::SeqCst) > self.completed()
    }

    /// Makes the next fetch a full one (schedule, recovery after a failure).
    pub fn want_full(&self) {
        self.full.store(true, Ordering::SeqCst);
    }

    /// Starts serving the requests made so far: returns the generation the coming fetch
    /// completes and what it should fetch.
    pub fn begin(&self) -> (u64, RefreshKind) {
        let generation = self.requested.load(Ordering::SeqCst);
        let kind = if self.full.swap(false, Ordering::SeqCst) {
            RefreshKind::Full
        } else {
            RefreshKind::KeysOnly
        };
        (generation, kind)
    }

    /// Marks every generation up to `generation` complete and wakes the waiters.
    pub fn complete(&self, generation: u64) {
        self.done.send_modify(|d| *d = (*d).max(generation));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn start_up_fetch_is_joined_not_repeated() {
        let c = RefreshControl::new(true);
        assert_eq!(c.kid_miss(Duration::from_secs(30)), Some(1));
        assert_eq!(c.kid_miss(Duration::from_secs(30)), Some(1));
        let (g, kind) = c.begin();
        assert_eq!((g, kind), (1, RefreshKind::Full));
        c.complete(g);
        assert!(c.first_done());
        assert!(c.wait(1, Duration::from_millis(1)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn cooldown_limits_kid_miss_refreshes() {
        let c = RefreshControl::new(true);
        let (g, _) = c.begin();
        c.complete(g);
        let cd = Duration::from_secs(30);
        assert_eq!(c.kid_miss(cd), Some(2));
        assert_eq!(c.kid_miss(cd), Some(2), "in flight: joined");
        let (g, kind) = c.begin();
        assert_eq!(kind, RefreshKind::KeysOnly);
        c.complete(g);
        assert_eq!(c.kid_miss(cd), None, "cooldown");
        tokio::time::advance(cd).await;
        assert_eq!(c.kid_miss(cd), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_is_bounded() {
        let c = RefreshControl::new(true);
        assert!(!c.wait(1, Duration::from_secs(5)).await);
    }

    #[tokio::test(start_paused = true)]
    async fn an_enormous_cooldown_cannot_overflow() {
        let c = RefreshControl::new(true);
        let (g, _) = c.begin();
        c.complete(g);
        assert_eq!(
            c.kid_miss(Duration::MAX),
            Some(2),
            "the first miss refreshes"
        );
        let (g, _) = c.begin();
        c.complete(g);
        assert_eq!(
            c.kid_miss(Duration::MAX),
            None,
            "and the cooldown never ends"
        );
    }

    #[test]
    fn static_sets_never_refresh() {
        let c = RefreshControl::new(false);
        assert!(c.first_done());
        assert_eq!(c.kid_miss(Duration::ZERO), None);
        assert_eq!(c.force(Duration::ZERO), None);
    }

    #[tokio::test(start_paused = true)]
    async fn forced_refreshes_join_or_wait_out_their_own_cooldown() {
        let c = RefreshControl::new(true);
        let cd = Duration::from_secs(30);
        assert_eq!(c.force(cd), Some(Forced::Requested(1)), "joins start-up");
        let (g, _) = c.begin();
        c.complete(g);
        assert_eq!(c.force(cd), Some(Forced::Requested(2)));
        assert_eq!(c.force(cd), Some(Forced::Requested(2)), "in flight: joined");
        let (g, kind) = c.begin();
        assert_eq!(kind, RefreshKind::Full);
        c.complete(g);
        let t = Instant::now();
        assert_eq!(
            c.force(cd),
            Some(Forced::Throttled { until: t + cd }),
            "the start of the last forced refresh counts"
        );
        assert_eq!(
            c.kid_miss(cd),
            Some(3),
            "kid misses have their own cooldown"
        );
        let (g, _) = c.begin();
        c.complete(g);
        tokio::time::advance(cd).await;
        assert_eq!(c.force(cd), Some(Forced::Requested(4)));
    }
}
