//! `server:`: the listeners, the limits on requests and connections, TLS, and the
//! shutdown grace, with their defaults.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::PathBuf,
    time::Duration,
};

use serde::Deserialize;

use super::{ConfigError, admin::AdminAuthSettings, de};

/// Default gRPC listen address.
pub const DEFAULT_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 50051));
/// Default Prometheus listen address.
pub const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 9464));
/// Default cap on a token's size, in bytes, after stripping `Bearer `.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Default cap on concurrent `WatchKeys` streams.
pub const DEFAULT_MAX_WATCHERS: usize = 1024;
/// Default time given to in-flight calls after shutdown begins.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(8);
/// Default cap on in-flight unary calls across all connections (0 = unlimited); calls
/// beyond it are answered RESOURCE_EXHAUSTED at once, never queued.
pub const DEFAULT_CONCURRENCY_LIMIT: usize = 1024;
/// Default deadline of one unary call.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default HTTP/2 keepalive ping interval.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Default HTTP/2 keepalive ping timeout.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on a decoded gRPC message, in bytes (raised to `max_token_bytes` + 1 KiB
/// when that is larger).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Room for the other fields of a request beside its token, in bytes.
const MESSAGE_OVERHEAD_BYTES: usize = 1024;
/// Default time a connection past `max_connection_age` gets to finish its calls.
pub const DEFAULT_MAX_CONNECTION_AGE_GRACE: Duration = Duration::from_secs(30);
/// Default period at which the TLS certificate, key and client CA files are re-read.
pub const DEFAULT_TLS_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Default bound on one TLS handshake.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `server.handshake_timeout`: from accept (or the end of the TLS handshake) to
/// the first request.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `server.max_connections`: open connections per listener.
pub const DEFAULT_MAX_CONNECTIONS: usize = 4096;
/// Default `server.max_concurrent_streams`: HTTP/2 streams per connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 128;
/// Default `server.max_watchers_per_connection`.
pub const DEFAULT_MAX_WATCHERS_PER_CONNECTION: usize = 16;
/// Default `server.max_watchers_per_peer` (per client IP address).
pub const DEFAULT_MAX_WATCHERS_PER_PEER: usize = 64;

/// `server:` settings. Every key is optional; [`Default`] holds the built-in values.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "a mapping of server keys")]
pub struct ServerSettings {
    /// gRPC listen address.
    #[serde(deserialize_with = "de::address")]
    pub listen: SocketAddr,
    /// Prometheus listen address; `None` (an empty string in the file) turns metrics off.
    #[serde(deserialize_with = "de::optional_address")]
    pub metrics_listen: Option<SocketAddr>,
    /// A plaintext listener serving only grpc.health.v1 (for kubelet gRPC probes when
    /// `tls` is on); `None`: none.
    #[serde(deserialize_with = "de::optional_address")]
    pub health_listen: Option<SocketAddr>,
    /// Larger tokens are INVALID_ARGUMENT, never parsed.
    pub max_token_bytes: usize,
    /// Cap on concurrent `WatchKeys` streams, over every caller.
    pub max_watchers: usize,
    /// Cap on concurrent `WatchKeys` streams on one connection.
    pub max_watchers_per_connection: usize,
    /// Cap on concurrent `WatchKeys` streams from one client IP address.
    pub max_watchers_per_peer: usize,
    /// Serve `introspect.v1.AdminService` on `listen` (default off).
    pub admin: bool,
    /// A listener serving AdminService and grpc.health.v1 alone; `None`: none.
    #[serde(deserialize_with = "de::optional_address")]
    pub admin_listen: Option<SocketAddr>,
    /// The token admin calls must carry; required when AdminService listens on a
    /// non-loopback address.
    pub admin_auth: Option<AdminAuthSettings>,
    /// Open connections per listener; at the cap a connection that has made no request
    /// yet is closed for the new one, else the new one is refused.
    pub max_connections: usize,
    /// HTTP/2 MAX_CONCURRENT_STREAMS, advertised and enforced per connection.
    pub max_concurrent_streams: u32,
    /// Deadline for a connection's HTTP/2 preface and first request, from accept (or
    /// from the end of the TLS handshake, which `tls.handshake_timeout` bounds).
    #[serde(deserialize_with = "de::duration")]
    pub handshake_timeout: Duration,
    /// TLS on the gRPC listener; plaintext when `None`.
    pub tls: Option<TlsSettings>,
    /// In-flight unary calls, across all connections, beyond which a call is answered
    /// RESOURCE_EXHAUSTED at once (0: unlimited). Streams and health checks are exempt.
    pub concurrency_limit: usize,
    /// Deadline of one unary call.
    #[serde(deserialize_with = "de::duration")]
    pub request_timeout: Duration,
    /// HTTP/2 keepalive ping interval.
    #[serde(deserialize_with = "de::duration")]
    pub keepalive_interval: Duration,
    /// HTTP/2 keepalive ping timeout.
    #[serde(deserialize_with = "de::duration")]
    pub keepalive_timeout: Duration,
    /// Cap on one decoded gRPC message as configured; `None`: derived, see
    /// [`ServerSettings::decoding_limit`].
    pub max_message_bytes: Option<usize>,
    /// Connections older than this are asked to reconnect (GOAWAY); `None`: never.
    #[serde(deserialize_with = "de::some_duration")]
    pub max_connection_age: Option<Duration>,
    /// Time a connection past its age gets to finish its calls before it is closed.
    #[serde(deserialize_with = "de::duration")]
    pub max_connection_age_grace: Duration,
    /// Time in-flight calls get after shutdown begins.
    #[serde(deserialize_with = "de::duration")]
    pub shutdown_grace: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            metrics_listen: Some(DEFAULT_METRICS_LISTEN),
            health_listen: None,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            max_watchers: DEFAULT_MAX_WATCHERS,
            max_watchers_per_connection: DEFAULT_MAX_WATCHERS_PER_CONNECTION,
            max_watchers_per_peer: DEFAULT_MAX_WATCHERS_PER_PEER,
            admin: false,
            admin_listen: None,
            admin_auth: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            tls: None,
            concurrency_limit: DEFAULT_CONCURRENCY_LIMIT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
            max_message_bytes: None,
            max_connection_age: None,
            max_connection_age_grace: DEFAULT_MAX_CONNECTION_AGE_GRACE,
            shutdown_grace: DEFAULT_SHUTDOWN_GRACE,
        }
    }
}

impl ServerSettings {
    /// Cap on one decoded gRPC message: as configured, else the larger of
    /// [`DEFAULT_MAX_MESSAGE_BYTES`] and `max_token_bytes` + 1 KiB.
    pub fn decoding_limit(&self) -> usize {
        self.max_message_bytes.unwrap_or_else(|| {
            DEFAULT_MAX_MESSAGE_BYTES
                .max(self.max_token_bytes.saturating_add(MESSAGE_OVERHEAD_BYTES))
        })
    }

    /// Checks the rules between keys that their types cannot express.
    pub(super) fn validated(self) -> Result<Self, ConfigError> {
        if self.max_token_bytes == 0 {
            return Err(ConfigError::new(
                "server.max_token_bytes",
                "must be greater than 0",
            ));
        }
        if self.decoding_limit() < self.max_token_bytes {
            return Err(ConfigError::new(
                "server.max_message_bytes",
                "must be at least server.max_token_bytes",
            ));
        }
        for (key, value) in [
            ("server.max_connections", self.max_connections),
            (
                "server.max_concurrent_streams",
                self.max_concurrent_streams as usize,
            ),
            (
                "server.max_watchers_per_connection",
                self.max_watchers_per_connection,
            ),
            ("server.max_watchers_per_peer", self.max_watchers_per_peer),
        ] {
            if value == 0 {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::new(
                "server.handshake_timeout",
                "must be greater than 0",
            ));
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        super::admin::check_exposure(&self)?;
        Ok(self)
    }
}

/// `server.tls:` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of server.tls keys")]
pub struct TlsSettings {
    /// PEM certificate chain.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle; when set, clients must present a certificate it signed.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// How often the three files are re-read; a change is applied without a restart.
    #[serde(
        default = "default_tls_reload_interval",
        deserialize_with = "de::duration"
    )]
    pub reload_interval: Duration,
    /// Bound on one TLS handshake; slower clients are disconnected.
    #[serde(
        default = "default_tls_handshake_timeout",
        deserialize_with = "de::duration"
    )]
    pub handshake_timeout: Duration,
}

fn default_tls_reload_interval() -> Duration {
    DEFAULT_TLS_RELOAD_INTERVAL
}

fn default_tls_handshake_timeout() -> Duration {
    DEFAULT_TLS_HANDSHAKE_TIMEOUT
}

impl TlsSettings {
    fn validate(&self) -> Result<(), ConfigError> {
        for (key, value) in [
            ("server.tls.reload_interval", self.reload_interval),
            ("server.tls.handshake_timeout", self.handshake_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::new(key, "must be greater than 0"));
            }
        }
        Ok(())
    }
}
