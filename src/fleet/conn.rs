//! The connection to Redis: one multiplexed connection per server (redis-rs
//! `ConnectionManager`, which reconnects with exponential backoff and resubscribes), or a
//! cluster connection (one multiplexed connection per node, slots refreshed on MOVED);
//! RESP3, so pub/sub pushes arrive on the same connection. Every operation runs through
//! [`Link::exec`]: bounded by its timeout, timed, and counted.

use std::{future::Future, sync::Arc, time::Duration};

use arc_swap::ArcSwapOption;
use redis::{
    Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, PushInfo, RedisFuture, RedisResult,
    TlsCertificates, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClientBuilder,
    cluster_async::ClusterConnection,
};
use tokio::{sync::Notify, time::Instant};

use super::stats::{Op, Stats};
use crate::{
    config::{RedisEndpoints, SharedStateSettings},
    shared::SharedError,
};

/// Bound on establishing one connection.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest pause between two reconnection attempts.
pub(super) const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(2);
/// Cluster: retries of one command (a redirection, a node that went away) and the
/// shortest and longest pause before one, in milliseconds. Short, so that a command to
/// a dead node fails well within `op_timeout` instead of waiting out the client's
/// default schedule (over a second); the monitor's probes do the patient reconnecting.
const CLUSTER_RETRIES: u32 = 2;
const CLUSTER_MIN_RETRY_WAIT_MS: u64 = 5;
const CLUSTER_MAX_RETRY_WAIT_MS: u64 = 50;
/// Shortest bound on operations that move whole documents (a published JWKS, every
/// revocation rule); `op_timeout` applies when longer.
pub(super) const MIN_BULK_TIMEOUT: Duration = Duration::from_secs(1);

/// A connection to one server or to a cluster (cheap to clone: a handle).
#[derive(Clone)]
pub(super) enum Conn {
    /// One server.
    Single(ConnectionManager),
    /// A Redis Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

impl Conn {
    /// Subscribes to `channel` (pushes go to the sender given at connection time, and
    /// the subscription is renewed after every reconnection).
    pub(super) async fn subscribe(&mut self, channel: &str) -> RedisResult<()> {
        match self {
            Conn::Single(c) => c.subscribe(channel).await,
            Conn::Cluster(c) => c.subscribe(channel).await,
        }
    }
}

/// Where pushes (pub/sub messages, disconnections) go; must not block.
pub(super) type PushSink = Arc<dyn Fn(PushInfo) + Send + Sync>;

fn connection_info(url: &str, settings: &SharedStateSettings) -> RedisResult<ConnectionInfo> {
    let info = url.into_connection_info()?;
    let mut redis = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3)
        .set_lib_name("introspectd", env!("CARGO_PKG_VERSION"));
    if let Some(p) = &settings.password {
        redis = redis.set_password(String::from_utf8_lossy(p.expose()));
    }
    Ok(info.set_redis_settings(redis))
}

fn certificates(ca: Option<&[u8]>) -> TlsCertificates {
    TlsCertificates {
        client_tls: None,
        root_cert: ca.map(<[u8]>::to_vec),
    }
}

/// Opens the connection the settings describe. A single server's connection is lazy (it
/// connects on first use and keeps reconnecting); a cluster's needs one seed node to
/// answer now.
pub(super) async fn connect(
    settings: &SharedStateSettings,
    ca: Option<&[u8]>,
    push: PushSink,
) -> RedisResult<Conn> {
    let sender = move |info: PushInfo| -> Result<(), ()> {
        push(info);
        Ok(())
    };
    match &settings.endpoints {
        RedisEndpoints::Single(url) => {
            let info = connection_info(url, settings)?;
            let client = match ca {
                Some(_) => redis::Client::build_with_tls(info, certificates(ca))?,
                None => redis::Client::open(info)?,
            };
            // One connection attempt per reconnection, no retries inside: a command
            // sent while the server is gone would otherwise wait out the whole retry
            // schedule (seconds) and stall its caller until `op_timeout`. It fails at
            // once instead, and the monitor's probes drive the next attempts.
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(None)
                .set_number_of_retries(0)
                .set_max_delay(MAX_RECONNECT_DELAY)
                .set_push_sender(sender)
                .set_automatic_resubscription();
            Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                client, config,
            )?))
        }
        RedisEndpoints::Cluster(nodes) => {
            let infos = nodes
                .iter()
                .map(|u| connection_info(u, settings))
                .collect::<RedisResult<Vec<_>>>()?;
            let mut builder = ClusterClientBuilder::new(infos)
                .use_protocol(redis::ProtocolVersion::RESP3)
                .push_sender(sender)
                .connection_timeout(CONNECT_TIMEOUT)
                .retries(CLUSTER_RETRIES)
                .min_retry_wait(CLUSTER_MIN_RETRY_WAIT_MS)
                .max_retry_wait(CLUSTER_MAX_RETRY_WAIT_MS);
            if let Some(p) = &settings.password {
                builder = builder.password(String::from_utf8_lossy(p.expose()));
            }
            if ca.is_some() {
                builder = builder.certs(certificates(ca));
            }
            let client = builder.build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        }
    }
}

/// The current connection (absent until a cluster's seed nodes answered) and the bounds
/// every operation runs under.
pub(super) struct Link {
    conn: ArcSwapOption<Conn>,
    op_timeout: Duration,
    stats: Arc<Stats>,
    /// Woken when an operation fails, so the monitor probes at once.
    failed: Arc<Notify>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("connected", &self.conn.load().is_some())
            .field("op_timeout", &self.op_timeout)
            .finish()
    }
}

impl Link {
    /// A link without a connection yet.
    pub(super) fn new(op_timeout: Duration, stats: Arc<Stats>, failed: Arc<Notify>) -> Self {
        Self {
            conn: ArcSwapOption::empty(),
            op_timeout,
            stats,
            failed,
        }
    }

    /// Installs the connection.
    pub(super) fn set(&self, conn: Conn) {
        self.conn.store(Some(Arc::new(conn)));
    }

    /// True once a connection is installed (it may still be reconnecting).
    pub(super) fn is_set(&self) -> bool {
        self.conn.load().is_some()
    }

    /// True when the connection is to a Redis Cluster.
    pub(super) fn is_cluster(&self) -> bool {
        matches!(self.conn.load().as_deref(), Some(Conn::Cluster(_)))
    }

    /// A handle on the connection, if there is one.
    pub(super) fn conn(&self) -> Option<Conn> {
        self.conn.load_full().map(|c| Conn::clone(&c))
    }

    /// The bound of `op`.
    pub(super) fn timeout_of(&self, op: Op) -> Duration {
        if op.is_bulk() {
            self.op_timeout.max(MIN_BULK_TIMEOUT)
        } else {
            self.op_timeout
        }
    }

    /// Runs one operation on the connection, bounded by its timeout, timed and counted.
    /// The closure gets its own handle, so nothing is held while it runs.
    pub(super) async fn exec<T, F, Fut>(&self, op: Op, f: F) -> Result<T, SharedError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let Some(conn) = self.conn() else {
            self.stats.record_op(op, "error", Duration::ZERO);
            return Err(SharedError::Unavailable("not connected yet".into()));
        };
        let timeout = self.timeout_of(op);
        let start = Instant::now();
        let outcome = tokio::time::timeout(timeout, f(conn)).await;
        let elapsed = start.elapsed();
        match outcome {
            Ok(Ok(v)) => {
                self.stats.record_op(op, "ok", elapsed);
                Ok(v)
            }
            Ok(Err(e)) => {
                self.stats.record_op(op, "error", elapsed);
                self.failed.notify_one();
                Err(classify(&e))
            }
            Err(_) => {
                self.stats.record_op(op, "timeout", elapsed);
                self.failed.notify_one();
                Err(SharedError::Unavailable(format!(
                    "{} timed out after {}",
                    op.as_str(),
                    humantime::format_duration(timeout)
                )))
            }
        }
    }
}

/// A terse description of a Redis error: its kind and code, never a value or a key.
fn classify(e: &redis::RedisError) -> SharedError {
    let what = match e.code() {
        Some(code) => format!("{:?} ({code})", e.kind()),
        None => format!("{:?}", e.kind()),
    };
    if e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_connection_refusal() {
        SharedError::Unavailable(format!("connection: {what}"))
    } else {
        SharedError::Unavailable(format!("redis error: {what}"))
    }
}
