//! The state a fleet of replicas shares, on Redis (or Valkey, or Redis Cluster): the
//! implementations of the core's [`crate::shared`] traits (replay records, introspection
//! answers, fetch coordination with published key sets, revocation rules), the
//! connection they run on, the key layout, and the background tasks that keep this
//! replica's view current (probe, subscription, re-reads). Only `app` builds one, and
//! only when `shared_state` is configured.
//!
//! Nothing here holds a lock across a Redis call: every operation takes its own handle
//! on the multiplexed connection and is bounded by `op_timeout`.

mod conn;
mod fetch;
mod integrity;
pub mod keys;
mod monitor;
mod records;
mod revocation;
mod scripts;
pub mod stats;

use std::{
    collections::HashMap,
    fmt,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64},
    },
    time::Duration,
};

use redis::PushInfo;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument as _, info_span};

pub use fetch::PUBLICATION_RETENTION;
pub use monitor::{DOWN_PROBE_INTERVAL, PROBE_INTERVAL};
pub use records::MIN_REPLAY_TTL;

use self::{conn::Link, keys::Layout, stats::Stats};
use crate::{
    config::{ConfigError, SharedStateSettings},
    registry::Revocations,
    shared::{Shared, SharedHealth},
};

/// Milliseconds of `d`, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads the CA bundle of `shared_state.tls_ca_file`: at least one PEM certificate.
fn read_ca(path: &Path) -> Result<Vec<u8>, ConfigError> {
    const KEY: &str = "shared_state.tls_ca_file";
    let pem = std::fs::read(path)
        .map_err(|e| ConfigError::new(KEY, format!("cannot read {}: {e}", path.display())))?;
    use rustls_pki_types::{CertificateDer, pem::PemObject as _};
    let certs = CertificateDer::pem_slice_iter(&pem)
        .filter(Result::is_ok)
        .count();
    if certs == 0 {
        return Err(ConfigError::new(
            KEY,
            format!("{} holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}

struct Inner {
    settings: SharedStateSettings,
    ca: Option<Vec<u8>>,
    link: Link,
    layout: Layout,
    replica: String,
    health: Arc<SharedHealth>,
    stats: Arc<Stats>,
    /// The last announced generation of every configured key set (nothing else: an
    /// announcement for an unknown name creates nothing).
    announced: HashMap<String, watch::Sender<u64>>,
    revocations: Arc<Revocations>,
    integrity: integrity::Integrity,
    applied_seq: AtomicU64,
    subscribed: AtomicBool,
    resync: Arc<AtomicBool>,
    wake: Arc<Notify>,
    push_tx: mpsc::Sender<PushInfo>,
    push_rx: std::sync::Mutex<Option<mpsc::Receiver<PushInfo>>>,
}

/// A handle on the fleet's shared state (cheap to clone).
#[derive(Clone)]
pub struct Fleet {
    inner: Arc<Inner>,
}

impl fmt::Debug for Fleet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Fleet")
            .field("replica", &self.inner.replica)
            .field("prefix", &self.inner.layout.prefix())
            .field("up", &self.inner.health.is_up())
            .field("link", &self.inner.link)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// A fleet handle for `settings`; `key_sets` are the configured key sets whose
    /// fetches are coordinated (named as `KeySetId` displays them), `revocations` the
    /// rules this replica checks. Connects only once [`Fleet::spawn`] runs.
    pub fn new(
        settings: &SharedStateSettings,
        key_sets: impl IntoIterator<Item = String>,
        revocations: Arc<Revocations>,
    ) -> Result<Self, ConfigError> {
        let ca = settings.tls_ca_file.as_deref().map(read_ca).transpose()?;
        let announced: HashMap<String, watch::Sender<u64>> = key_sets
            .into_iter()
            .map(|k| (k, watch::Sender::new(0)))
            .collect();
        let stats = Arc::new(Stats::new(announced.keys().map(String::as_str)));
        let (push_tx, push_rx) = mpsc::channel(monitor::PUSH_QUEUE);
        let wake = Arc::new(Notify::new());
        Ok(Self {
            inner: Arc::new(Inner {
                link: Link::new(settings.op_timeout, stats.clone(), wake.clone()),
                layout: Layout::new(&settings.key_prefix),
                replica: settings.replica_name.clone(),
                health: Arc::new(SharedHealth::new(settings.on_unavailable)),
                stats,
                announced,
                revocations,
                integrity: integrity::Integrity::new(
                    settings.integrity_key.as_ref().map(|k| k.expose()),
                ),
                applied_seq: AtomicU64::new(0),
                subscribed: AtomicBool::new(false),
                resync: Arc::new(AtomicBool::new(true)),
                wake,
                push_tx,
                push_rx: std::sync::Mutex::new(Some(push_rx)),
                settings: settings.clone(),
                ca,
            }),
        })
    }

    /// Starts the monitor and the dispatcher on `tasks`; they stop when `cancel` fires.
    /// A second call starts nothing.
    pub fn spawn(&self, tasks: &TaskTracker, cancel: &CancellationToken) {
        let taken = self
            .inner
            .push_rx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(pushes) = taken else {
            return;
        };
        let span = info_span!("shared_state", replica = %self.inner.replica);
        tasks.spawn(
            self.clone()
                .run_monitor(cancel.clone())
                .instrument(span.clone()),
        );
        tasks.spawn(
            self.clone()
                .run_dispatcher(pushes, cancel.clone())
                .instrument(span),
        );
    }

    /// The handles the core takes.
    pub fn shared(&self) -> Shared {
        Shared {
            health: self.inner.health.clone(),
            replay: Arc::new(self.clone()),
            answers: Arc::new(self.clone()),
            fetch: Arc::new(self.clone()),
            revocation: Arc::new(self.clone()),
        }
    }

    /// Waits until the shared state is available, at most `limit`; true if it is.
    pub async fn wait_ready(&self, limit: Duration) -> bool {
        let mut rx = self.inner.health.watch();
        matches!(
            tokio::time::timeout(limit, rx.wait_for(|up| *up)).await,
            Ok(Ok(_))
        )
    }

    /// Availability and fallback counters.
    pub fn health(&self) -> &Arc<SharedHealth> {
        &self.inner.health
    }

    /// Operation counters and latencies.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// True when values read back are checked against integrity tags.
    pub fn integrity_enabled(&self) -> bool {
        self.inner.integrity.enabled()
    }

    /// Values in Redis refused for a missing or wrong integrity tag.
    pub fn integrity_refusals(&self) -> u64 {
        self.inner.integrity.refused()
    }

    /// This replica's name.
    pub fn replica(&self) -> &str {
        &self.inner.replica
    }

    /// The key prefix.
    pub fn key_prefix(&self) -> &str {
        self.inner.layout.prefix()
    }
}
