//! `WatchKeys`: the snapshot-then-live stream of key events, the cap on concurrent
//! subscribers, the resynchronisation of a subscriber that falls behind, and the end of
//! every stream on shutdown.
//!
//! A stream is a state machine that pulls from its broadcast receiver only when tonic
//! asks for the next message, which hyper does only when the HTTP/2 flow-control window
//! of the client has room. So a client that stops reading costs at most one window of
//! buffered bytes server-side; meanwhile its receiver falls behind the bounded bus
//! ([`crate::events::BUS_CAPACITY`]) without slowing the publisher or anyone else, and
//! when it reads again it gets a fresh snapshot (EXISTING ... SYNCED) instead of the
//! events it missed.

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex, MutexGuard},
    time::SystemTime,
};

use tokio::sync::broadcast::{self, error::RecvError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{BoundaryError, KeyEventStream, convert, pb};
use crate::{
    events::{KeyEvent, KeyEventKind},
    registry::{Registry, RequestError},
    transport::Peer,
};

/// The caps on open WatchKeys streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatcherLimits {
    /// `server.max_watchers`: across every caller.
    pub total: usize,
    /// `server.max_watchers_per_connection`.
    pub per_connection: usize,
    /// `server.max_watchers_per_peer`: per client IP address.
    pub per_peer: usize,
}

impl WatcherLimits {
    /// Only the global cap (per connection and per peer as large as it).
    pub fn total(total: usize) -> Self {
        Self {
            total,
            per_connection: total,
            per_peer: total,
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_connection: HashMap<u64, usize>,
    by_peer: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct WatchersInner {
    limits: WatcherLimits,
    counts: Mutex<Counts>,
}

impl WatchersInner {
    fn lock(&self) -> MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Counts open WatchKeys streams against the global, per-connection and per-peer caps
/// (cheap to clone; clones share the counts). A connection or address is only in the
/// maps while it has a stream open, so they are bounded by the global cap.
#[derive(Debug, Clone)]
pub struct Watchers {
    inner: Arc<WatchersInner>,
}

/// One open stream's place in the counts; dropping it (the stream ended, or the client
/// went away and tonic dropped the stream) frees the place at once.
#[derive(Debug)]
pub struct WatcherSlot {
    inner: Arc<WatchersInner>,
    peer: Option<(u64, IpAddr)>,
}

impl Drop for WatcherSlot {
    fn drop(&mut self) {
        let mut c = self.inner.lock();
        c.total = c.total.saturating_sub(1);
        if let Some((conn, ip)) = self.peer {
            decrement(&mut c.by_connection, conn);
            decrement(&mut c.by_peer, ip);
        }
    }
}

/// Lowers a count, forgetting the key at zero.
fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl Watchers {
    /// Counts against `limits`.
    pub fn new(limits: WatcherLimits) -> Self {
        Self {
            inner: Arc::new(WatchersInner {
                limits,
                counts: Mutex::new(Counts::default()),
            }),
        }
    }

    /// Takes a place for a stream on `peer`'s connection (unknown in handler tests), or
    /// fails naming the cap that is reached.
    pub fn try_acquire(&self, peer: Option<Peer>) -> Result<WatcherSlot, BoundaryError> {
        let l = self.inner.limits;
        let mut c = self.inner.lock();
        if c.total >= l.total {
            return Err(BoundaryError::Exhausted(format!(
                "at most {} WatchKeys streams may be open",
                l.total
            )));
        }
        let peer = peer.map(|p| (p.connection, p.addr.ip().to_canonical()));
        if let Some((conn, ip)) = peer {
            if c.by_connection.get(&conn).copied().unwrap_or(0) >= l.per_connection {
                return Err(BoundaryError::Exhausted(format!(
                    "at most {} WatchKeys streams may be open on one connection",
                    l.per_connection
                )));
            }
            if c.by_peer.get(&ip).copied().unwrap_or(0) >= l.per_peer {
                return Err(BoundaryError::Exhausted(format!(
                    "at most {} WatchKeys streams may be open from one address",
                    l.per_peer
                )));
            }
            *c.by_connection.entry(conn).or_default() += 1;
            *c.by_peer.entry(ip).or_default() += 1;
        }
        c.total += 1;
        Ok(WatcherSlot {
            inner: self.inner.clone(),
            peer,
        })
    }

    /// Streams open now.
    pub fn active(&self) -> usize {
        self.inner.lock().total
    }
}

/// Checks the requested tenants (each must be configured) and removes duplicates.
pub fn parse_tenants(
    registry: &Registry,
    req: &pb::WatchKeysRequest,
) -> Result<Vec<String>, BoundaryError> {
    super::check_list("tenants", &req.tenants)?;
    let mut tenants: Vec<String> = Vec::new();
    for t in &req.tenants {
        if registry.tenant(t).is_none() {
            return Err(RequestError::UnknownTenant(t.clone()).into());
        }
        if !tenants.contains(t) {
            tenants.push(t.clone());
        }
    }
    Ok(tenants)
}

/// Opens a WatchKeys stream: checks the request, takes a subscriber place (on `peer`'s
/// connection), subscribes.
pub fn open(
    registry: &Registry,
    watchers: &Watchers,
    shutdown: Option<CancellationToken>,
    req: &pb::WatchKeysRequest,
    peer: Option<Peer>,
) -> Result<KeyEventStream, BoundaryError> {
    let tenants = parse_tenants(registry, req)?;
    let slot = watchers.try_acquire(peer)?;
    debug!(tenants = ?tenants, active = watchers.active(), "WatchKeys stream opened");
    let feed = Feed::start(registry.clone(), tenants, shutdown, slot);
    Ok(Box::pin(futures::stream::unfold(
        feed,
        |mut feed| async move {
            let event = feed.next().await?;
            Some((Ok(convert::key_event(&event)), feed))
        },
    )))
}

/// The state of one stream.
struct Feed {
    registry: Registry,
    tenants: Vec<String>,
    rx: broadcast::Receiver<Arc<KeyEvent>>,
    /// The snapshot being sent (bounded by the configured key sets, not by the traffic).
    queue: VecDeque<KeyEvent>,
    shutdown: Option<CancellationToken>,
    _slot: WatcherSlot,
}

impl Drop for Feed {
    fn drop(&mut self) {
        debug!(tenants = ?self.tenants, "WatchKeys stream closed");
    }
}

fn synced(message: String) -> KeyEvent {
    KeyEvent {
        kind: KeyEventKind::Synced,
        tenant: String::new(),
        policy: None,
        issuer: String::new(),
        key: None,
        observed_at: SystemTime::now(),
        message,
    }
}

async fn cancelled(token: &Option<CancellationToken>) {
    match token {
        Some(t) => t.cancelled().await,
        None => std::future::pending().await,
    }
}

impl Feed {
    fn start(
        registry: Registry,
        tenants: Vec<String>,
        shutdown: Option<CancellationToken>,
        slot: WatcherSlot,
    ) -> Self {
        let (rx, snapshot) = registry.subscribe(&tenants);
        let mut queue = VecDeque::from(snapshot);
        queue.push_back(synced(String::new()));
        Self {
            registry,
            tenants,
            rx,
            queue,
            shutdown,
            _slot: slot,
        }
    }

    /// Replaces the lagging receiver and queues a fresh snapshot, taken atomically with
    /// the new subscription, so nothing after it is missed or repeated.
    fn resync(&mut self, missed: u64) {
        let (rx, snapshot) = self.registry.subscribe(&self.tenants);
        self.rx = rx;
        self.queue = VecDeque::from(snapshot);
        self.queue.push_back(synced(format!(
            "resynchronised: this subscriber fell behind by {missed} events"
        )));
    }

    fn wants(&self, e: &KeyEvent) -> bool {
        self.tenants.is_empty() || self.tenants.contains(&e.tenant)
    }

    /// The next event to send, or `None` when the stream ends (shutdown).
    async fn next(&mut self) -> Option<KeyEvent> {
        loop {
            if self
                .shutdown
                .as_ref()
                .is_some_and(CancellationToken::is_cancelled)
            {
                return None;
            }
            if let Some(e) = self.queue.pop_front() {
                return Some(e);
            }
            let received = tokio::select! {
                biased;
                _ = cancelled(&self.shutdown) => return None,
                r = self.rx.recv() => r,
            };
            match received {
                Ok(e) if self.wants(&e) => return Some(KeyEvent::clone(&e)),
                Ok(_) => {}
                Err(RecvError::Lagged(missed)) => {
                    warn!(missed, tenants = ?self.tenants, "WatchKeys subscriber fell behind; resending a snapshot");
                    self.resync(missed);
                }
                // The registry owns the sender, so this only happens when it is gone.
                Err(RecvError::Closed) => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{BTreeMap, BTreeSet},
        sync::atomic::{AtomicBool, Ordering},
        time::Duration,
    };

    use futures::StreamExt as _;
    use serde_json::{Value, json};
    use tonic::{Request, Status};

    use super::*;
    use crate::{
        config,
        grpc::{Limits, TokenServiceImpl, pb::token_service_server::TokenService as _},
        keys::{KeySet, testing::ec_jwk},
        registry::{KeySetId, KeySetState},
    };

    /// Two tenants whose keys come from files (refreshable, but nothing runs the
    /// refreshers here: the tests install key sets themselves).
    fn registry() -> Registry {
        let yaml = "tenants:\n  - id: a\n    issuer: https://a.example\n    audiences: [x]\n    jwks_file: /nonexistent/a.json\n  - id: b\n    issuer: https://b.example\n    audiences: [x]\n    jwks_file: /nonexistent/b.json\n";
        let settings = config::load_str(yaml, &|_| None, &[]).expect("config");
        Registry::new(&settings).expect("registry")
    }

    fn state(r: &Registry, tenant: &str) -> Arc<KeySetState> {
        r.key_set(&KeySetId {
            tenant: tenant.into(),
            policy: None,
        })
        .expect("key set")
    }

    fn set(state: &KeySetState, jwks: &[&Value]) -> KeySet {
        let doc = json!({"keys": jwks});
        KeySet::from_jwks(&doc, &state.ingest_options())
            .expect("jwks")
            .0
    }

    fn service(r: &Registry, max_watchers: usize) -> TokenServiceImpl {
        TokenServiceImpl::new(
            r.clone(),
            Limits {
                max_token_bytes: 1024,
                watchers: WatcherLimits::total(max_watchers),
            },
        )
    }

    async fn watch(svc: &TokenServiceImpl, tenants: &[&str]) -> Result<KeyEventStream, Status> {
        let req = pb::WatchKeysRequest {
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
        };
        svc.watch_keys(Request::new(req))
            .await
            .map(|r| r.into_inner())
    }

    async fn next(s: &mut KeyEventStream) -> pb::KeyEvent {
        tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("an event in time")
            .expect("stream open")
            .expect("event ok")
    }

    fn kind(e: &pb::KeyEvent) -> pb::KeyEventType {
        pb::KeyEventType::try_from(e.r#type).expect("known type")
    }

    #[tokio::test]
    async fn snapshot_then_synced_then_live_events_filtered_by_tenant() {
        let r = registry();
        let (a, b) = (state(&r, "a"), state(&r, "b"));
        let (k1, k2) = (ec_jwk("k1"), ec_jwk("k2"));
        r.install_keys(&a, set(&a, &[&k1]));
        let svc = service(&r, 8);
        let mut s = watch(&svc, &["a"]).await.expect("stream");
        let first = next(&mut s).await;
        assert_eq!(
            (kind(&first), first.key_id.as_str(), first.tenant.as_str()),
            (pb::KeyEventType::Existing, "k1", "a")
        );
        assert_eq!(kind(&next(&mut s).await), pb::KeyEventType::Synced);
        r.install_keys(&b, set(&b, &[&k2]));
        r.install_keys(&a, set(&a, &[&k2]));
        let added = next(&mut s).await;
        assert_eq!(
            (kind(&added), added.key_id.as_str(), added.tenant.as_str()),
            (pb::KeyEventType::Added, "k2", "a")
        );
        let removed = next(&mut s).await;
        assert_eq!(
            (kind(&removed), removed.key_id.as_str()),
            (pb::KeyEventType::Removed, "k1")
        );
        let jwk: Value = serde_json::from_str(&removed.jwk).expect("removed carries its jwk");
        assert_eq!(jwk["x"], k1["x"]);
    }

    #[tokio::test]
    async fn unknown_tenant_is_invalid_argument_and_takes_no_place() {
        let r = registry();
        let svc = service(&r, 8);
        let err = watch(&svc, &["a", "nope"]).await.err().expect("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains("nope"));
        assert_eq!(svc.watchers().active(), 0);
    }

    #[tokio::test]
    async fn the_cap_refuses_and_a_dropped_stream_frees_its_place() {
        let r = registry();
        let svc = service(&r, 2);
        let s1 = watch(&svc, &[]).await.expect("first");
        let _s2 = watch(&svc, &[]).await.expect("second");
        let err = watch(&svc, &[]).await.err().expect("third refused");
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        drop(s1);
        assert_eq!(svc.watchers().active(), 1);
        let _s3 = watch(&svc, &[]).await.expect("a freed place is reusable");
    }

    #[test]
    fn per_connection_and_per_peer_caps() {
        let w = Watchers::new(WatcherLimits {
            total: 5,
            per_connection: 2,
            per_peer: 3,
        });
        let peer = |connection: u64, ip: [u8; 4]| {
            Some(Peer {
                connection,
                addr: std::net::SocketAddr::from((ip, 1000 + connection as u16)),
            })
        };
        let a1 = w.try_acquire(peer(1, [10, 0, 0, 1])).expect("1");
        let _a2 = w.try_acquire(peer(1, [10, 0, 0, 1])).expect("2");
        let err = w
            .try_acquire(peer(1, [10, 0, 0, 1]))
            .expect_err("per connection");
        assert!(err.to_string().contains("one connection"), "{err}");
        let _a3 = w
            .try_acquire(peer(2, [10, 0, 0, 1]))
            .expect("same peer, new connection");
        let err = w.try_acquire(peer(3, [10, 0, 0, 1])).expect_err("per peer");
        assert!(err.to_string().contains("one address"), "{err}");
        let _b1 = w.try_acquire(peer(4, [10, 0, 0, 2])).expect("another peer");
        let _b2 = w.try_acquire(None).expect("unknown peer: global cap only");
        let err = w.try_acquire(peer(5, [10, 0, 0, 3])).expect_err("global");
        assert!(err.to_string().contains("at most 5"), "{err}");
        drop(a1);
        assert_eq!(w.active(), 4);
        let _a4 = w
            .try_acquire(peer(3, [10, 0, 0, 1]))
            .expect("a freed place");
        assert!(
            w.inner
                .lock()
                .by_connection
                .get(&1)
                .is_some_and(|n| *n == 1)
        );
    }

    #[tokio::test]
    async fn shutdown_ends_streams_and_a_lagging_stream_is_resynchronised() {
        let r = registry();
        let a = state(&r, "a");
        let token = CancellationToken::new();
        let svc = service(&r, 8).with_shutdown(token.clone());
        let mut s = watch(&svc, &[]).await.expect("stream");
        assert_eq!(kind(&next(&mut s).await), pb::KeyEventType::Synced);
        // Fall behind by more than the bus holds without reading.
        let (k1, k2) = (ec_jwk("k1"), ec_jwk("k2"));
        for i in 0..crate::events::BUS_CAPACITY {
            let k = if i.is_multiple_of(2) { &k1 } else { &k2 };
            r.install_keys(&a, set(&a, &[k]));
        }
        let mut seen = Vec::new();
        loop {
            let e = next(&mut s).await;
            let k = kind(&e);
            seen.push((k, e.key_id.clone()));
            if k == pb::KeyEventType::Synced {
                assert!(e.message.contains("fell behind"), "{}", e.message);
                break;
            }
        }
        let last = if crate::events::BUS_CAPACITY.is_multiple_of(2) {
            "k2"
        } else {
            "k1"
        };
        assert_eq!(
            seen,
            vec![
                (pb::KeyEventType::Existing, last.to_string()),
                (pb::KeyEventType::Synced, String::new())
            ]
        );
        token.cancel();
        let end = tokio::time::timeout(Duration::from_secs(10), s.next())
            .await
            .expect("ends in time");
        assert!(end.is_none(), "the stream ends without an error");
        drop(s);
        assert_eq!(svc.watchers().active(), 0);
    }

    type Mirror = BTreeMap<(String, String), String>;

    /// Applies one event to a subscriber's view, checking that nothing is duplicated or
    /// missed: an ADDED key must be new, a REMOVED key must be known.
    fn apply(mirror: &mut Mirror, staging: &mut Option<Mirror>, e: &pb::KeyEvent) {
        let id = (e.tenant.clone(), e.key_id.clone());
        match kind(e) {
            pb::KeyEventType::Existing => {
                let st = staging.get_or_insert_with(Mirror::new);
                assert!(
                    st.insert(id, e.thumbprint.clone()).is_none(),
                    "duplicate EXISTING {e:?}"
                );
            }
            pb::KeyEventType::Synced => *mirror = staging.take().unwrap_or_default(),
            pb::KeyEventType::Added => {
                assert!(staging.is_none(), "ADDED inside a snapshot");
                assert!(
                    mirror.insert(id, e.thumbprint.clone()).is_none(),
                    "duplicate ADDED {e:?}"
                );
            }
            pb::KeyEventType::Removed => {
                assert!(
                    mirror.remove(&id).is_some(),
                    "REMOVED for a key never seen {e:?}"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Rotates keys in a tight loop on another thread while subscribers keep joining;
    /// every subscriber's reconstruction must end equal to the registry's final state.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_event_is_lost_or_duplicated_between_snapshot_and_live_events() {
        let r = registry();
        let (a, b) = (state(&r, "a"), state(&r, "b"));
        let pool: Vec<Value> = (0..6).map(|i| ec_jwk(&format!("k{i}"))).collect();
        let svc = service(&r, 64);
        let stop = Arc::new(AtomicBool::new(false));
        let rotator = {
            let (r, a, b, stop) = (r.clone(), a.clone(), b.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0usize;
                // Rotates until every subscriber has joined. Readers may fall behind the
                // bus meanwhile; their resynchronisation must keep the same guarantee.
                while !stop.load(Ordering::SeqCst) {
                    let j = i % 6;
                    r.install_keys(
                        &a,
                        set(&a, &[&pool[j], &pool[(j + 1) % 6], &pool[(j + 3) % 6]]),
                    );
                    r.install_keys(&b, set(&b, &[&pool[(j + 2) % 6]]));
                    i += 1;
                }
                i
            })
        };
        let mut readers = Vec::new();
        for n in 0..24 {
            let mut s = watch(&svc, &[]).await.expect("stream");
            let stop = stop.clone();
            readers.push(tokio::spawn(async move {
                let (mut mirror, mut staging) = (Mirror::new(), None);
                let mut synced = false;
                while !(synced && stop.load(Ordering::SeqCst)) {
                    let Ok(Some(e)) =
                        tokio::time::timeout(Duration::from_millis(200), s.next()).await
                    else {
                        continue;
                    };
                    let e = e.expect("event");
                    synced |= kind(&e) == pb::KeyEventType::Synced;
                    apply(&mut mirror, &mut staging, &e);
                }
                // Drain what was published before the rotator stopped.
                while let Ok(Some(e)) =
                    tokio::time::timeout(Duration::from_millis(300), s.next()).await
                {
                    apply(&mut mirror, &mut staging, &e.expect("event"));
                }
                (n, mirror)
            }));
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        stop.store(true, Ordering::SeqCst);
        let rotations = rotator.join().expect("rotator");
        assert!(rotations > 0);
        let mut want = Mirror::new();
        for e in r.snapshot(&[]) {
            let k = e.key.expect("key");
            want.insert((e.tenant, k.kid), k.thumbprint);
        }
        assert_eq!(
            want.keys()
                .map(|(t, _)| t.as_str())
                .collect::<BTreeSet<_>>()
                .len(),
            2
        );
        for h in readers {
            let (n, mirror) = h.await.expect("reader");
            assert_eq!(
                mirror, want,
                "subscriber {n} ended with a different key set"
            );
        }
    }
}
