//! The cap on open connections (`server.max_connections`). A connection is *pending*
//! from accept until its first request arrives, then *established*. At the cap a new
//! connection takes the place of the oldest pending one (which is closed), so sockets
//! that never ask anything cannot lock real clients out; when every connection is
//! established the new one is refused, so established connections are never degraded.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, MutexGuard,
        atomic::{AtomicBool, Ordering},
    },
};

use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
struct State {
    open: usize,
    next_id: u64,
    /// Pending connections by age (ids increase), each with what closes it and the flag
    /// that says its place was handed to a newer connection.
    pending: BTreeMap<u64, (CancellationToken, Arc<AtomicBool>)>,
}

/// Open connections of one listener against its cap (cheap to share behind an `Arc`).
#[derive(Debug)]
pub struct Admission {
    max: usize,
    state: Mutex<State>,
}

/// What happened to a new connection.
#[derive(Debug)]
pub enum Admitted {
    /// It has a place, which it holds until the [`Slot`] is dropped.
    Yes {
        /// Its place.
        slot: Slot,
        /// True when an older pending connection was closed to make room.
        evicted: bool,
    },
    /// Every place is held by an established connection.
    Refused,
}

/// One connection's place. Dropping it frees the place (unless the place was handed to
/// a newer connection by eviction).
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    id: u64,
    evict: CancellationToken,
    handed_over: Arc<AtomicBool>,
}

impl Admission {
    /// A cap of `max` open connections (at least one).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: max.max(1),
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Admits a new connection, evicting the oldest pending one at the cap.
    pub fn admit(self: &Arc<Self>) -> Admitted {
        let mut st = self.lock();
        let evicted = if st.open < self.max {
            st.open += 1;
            false
        } else if let Some((_, (token, handed_over))) = st.pending.pop_first() {
            // The old connection's place passes to the new one: `open` is unchanged.
            handed_over.store(true, Ordering::SeqCst);
            token.cancel();
            true
        } else {
            return Admitted::Refused;
        };
        let id = st.next_id;
        st.next_id += 1;
        let evict = CancellationToken::new();
        let handed_over = Arc::new(AtomicBool::new(false));
        st.pending.insert(id, (evict.clone(), handed_over.clone()));
        Admitted::Yes {
            slot: Slot {
                admission: self.clone(),
                id,
                evict,
                handed_over,
            },
            evicted,
        }
    }

    /// Connections holding a place now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    /// Connections still waiting for their first request.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }
}

impl Slot {
    /// The first request arrived: the connection can no longer be evicted.
    pub fn established(&self) {
        self.admission.lock().pending.remove(&self.id);
    }

    /// Resolves when a newer connection took this one's place.
    pub async fn evicted(&self) {
        self.evict.cancelled().await
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut st = self.admission.lock();
        if self.handed_over.load(Ordering::SeqCst) {
            return;
        }
        st.pending.remove(&self.id);
        st.open = st.open.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(a: &Arc<Admission>) -> (Slot, bool) {
        match a.admit() {
            Admitted::Yes { slot, evicted } => (slot, evicted),
            Admitted::Refused => panic!("refused"),
        }
    }

    #[test]
    fn pending_connections_are_evicted_oldest_first_and_established_ones_never() {
        let a = Admission::new(3);
        let (first, _) = slot(&a);
        let (second, _) = slot(&a);
        let (third, _) = slot(&a);
        first.established();
        assert_eq!((a.open(), a.pending()), (3, 2));

        let (fourth, evicted) = slot(&a);
        assert!(evicted);
        assert!(second.evict.is_cancelled(), "the oldest pending one goes");
        assert!(!third.evict.is_cancelled());
        drop(second);
        assert_eq!(a.open(), 3, "an evicted place was handed over, not freed");

        third.established();
        fourth.established();
        assert!(matches!(a.admit(), Admitted::Refused), "all established");
        assert!(!first.evict.is_cancelled());

        drop(first);
        assert_eq!(a.open(), 2);
        let (fifth, evicted) = slot(&a);
        assert!(!evicted, "a freed place is reused without eviction");
        let (_sixth, evicted) = slot(&a);
        assert!(
            evicted && fifth.evict.is_cancelled(),
            "the pending fifth makes room"
        );
        assert_eq!(a.open(), 3);
    }

    #[test]
    fn dropping_pending_connections_frees_their_places() {
        let a = Admission::new(2);
        let (x, _) = slot(&a);
        let (y, _) = slot(&a);
        drop(x);
        drop(y);
        assert_eq!((a.open(), a.pending()), (0, 0));
        let (_z, evicted) = slot(&a);
        assert!(!evicted);
    }
}
