//! TLS for the gRPC listener: the rustls server configuration built from
//! `server.tls` (certificate chain, private key, optional client CA for mutual TLS, ALPN
//! h2), and the reloader that re-reads the files and swaps the configuration in when
//! they change, keeping the current one when the new files are bad.

use std::{path::Path, sync::Arc, time::Duration};

use arc_swap::ArcSwap;
use rustls::{RootCertStore, ServerConfig, crypto::CryptoProvider, server::WebPkiClientVerifier};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{Instrument, info, info_span, warn};

use crate::{
    config::{ConfigError, TlsSettings},
    metrics::Metrics,
};

/// The bytes of the TLS files, as last read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Files {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

const CERT_KEY: &str = "server.tls.cert_file";
const KEY_KEY: &str = "server.tls.key_file";
const CA_KEY: &str = "server.tls.client_ca_file";

fn read(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path)
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))
}

async fn read_async(key: &str, path: &Path) -> Result<Vec<u8>, ConfigError> {
    tokio::fs::read(path)
        .await
        .map_err(|e| ConfigError::new(key, format!("cannot read {}: {e}", path.display())))
}

impl Files {
    fn read(s: &TlsSettings) -> Result<Self, ConfigError> {
        Ok(Self {
            cert: read(CERT_KEY, &s.cert_file)?,
            key: read(KEY_KEY, &s.key_file)?,
            client_ca: s
                .client_ca_file
                .as_deref()
                .map(|p| read(CA_KEY, p))
                .transpose()?,
        })
    }

    async fn read_async(s: &TlsSettings) -> Result<Self, ConfigError> {
        let client_ca = match &s.client_ca_file {
            Some(p) => Some(read_async(CA_KEY, p).await?),
            None => None,
        };
        Ok(Self {
            cert: read_async(CERT_KEY, &s.cert_file).await?,
            key: read_async(KEY_KEY, &s.key_file).await?,
            client_ca,
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Builds the server configuration from PEM contents; errors name the key whose file is
/// at fault. Never includes key material in a message.
fn build(s: &TlsSettings, files: &Files) -> Result<ServerConfig, ConfigError> {
    let cert_path = s.cert_file.display();
    let chain = CertificateDer::pem_slice_iter(&files.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            ConfigError::new(
                CERT_KEY,
                format!("{cert_path} is not a PEM certificate chain: {e}"),
            )
        })?;
    if chain.is_empty() {
        return Err(ConfigError::new(
            CERT_KEY,
            format!("no PEM certificate in {cert_path}"),
        ));
    }
    let key_path = s.key_file.display();
    let key = PrivateKeyDer::from_pem_slice(&files.key).map_err(|e| {
        ConfigError::new(
            KEY_KEY,
            format!("no usable PEM private key in {key_path}: {e}"),
        )
    })?;

    let provider = provider();
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::new("server.tls", format!("TLS versions: {e}")))?;
    let builder = match (&s.client_ca_file, &files.client_ca) {
        (Some(path), Some(pem)) => {
            let path = path.display();
            let mut roots = RootCertStore::empty();
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                let cert = cert.map_err(|e| {
                    ConfigError::new(
                        CA_KEY,
                        format!("{path} is not a PEM certificate bundle: {e}"),
                    )
                })?;
                roots.add(cert).map_err(|e| {
                    ConfigError::new(
                        CA_KEY,
                        format!("a certificate in {path} is not a usable CA: {e}"),
                    )
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(ConfigError::new(
                    CA_KEY,
                    format!("no PEM certificate in {path}"),
                ));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| {
                    ConfigError::new(CA_KEY, format!("cannot verify clients with {path}: {e}"))
                })?;
            builder.with_client_cert_verifier(verifier)
        }
        _ => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).map_err(|e| {
        ConfigError::new(
            KEY_KEY,
            format!(
                "the key in {key_path} cannot be used with the certificate in {cert_path}: {e}"
            ),
        )
    })?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The current TLS configuration, swapped in place when the files change.
#[derive(Debug)]
pub struct TlsConfig {
    settings: TlsSettings,
    current: ArcSwap<ServerConfig>,
}

impl TlsConfig {
    /// Reads and checks the files: a problem is a configuration error naming the key.
    pub fn load(settings: &TlsSettings) -> Result<Arc<Self>, ConfigError> {
        let files = Files::read(settings)?;
        let config = build(settings, &files)?;
        Ok(Arc::new(Self {
            settings: settings.clone(),
            current: ArcSwap::from_pointee(config),
        }))
    }

    /// The configuration a new connection's handshake uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// True when clients must present a certificate.
    pub fn mutual(&self) -> bool {
        self.settings.client_ca_file.is_some()
    }

    /// How long one handshake may take.
    pub fn handshake_timeout(&self) -> Duration {
        self.settings.handshake_timeout
    }

    /// Re-reads the files every `reload_interval` until `cancel` fires; changed contents
    /// that build a good configuration replace the current one, bad ones are logged once
    /// (per distinct content) and the current configuration stays.
    pub fn spawn_reloader(
        self: &Arc<Self>,
        metrics: Option<Arc<Metrics>>,
        tasks: &TaskTracker,
        cancel: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let span = info_span!("tls_reloader", cert_file = %self.settings.cert_file.display());
        tasks.spawn(
            async move {
                // What the running configuration was built from (or the last bad attempt),
                // so each distinct content is tried and logged once.
                let mut seen = Files::read_async(&this.settings).await.ok();
                let mut tick = tokio::time::interval(this.settings.reload_interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    this.reload_once(&mut seen, metrics.as_deref()).await;
                }
            }
            .instrument(span),
        )
    }

    async fn reload_once(&self, seen: &mut Option<Files>, metrics: Option<&Metrics>) {
        let files = match Files::read_async(&self.settings).await {
            Ok(f) => f,
            // A file briefly missing while a secret volume is updated is normal; try again
            // next tick without a log line each time.
            Err(e) => {
                tracing::debug!(error = %e, "TLS files not readable; keeping the current certificate");
                return;
            }
        };
        if seen.as_ref() == Some(&files) {
            return;
        }
        match build(&self.settings, &files) {
            Ok(config) => {
                self.current.store(Arc::new(config));
                info!("TLS files changed; new connections use the new certificate");
                if let Some(m) = metrics {
                    m.record_tls_reload(true);
                }
            }
            Err(e) => {
                warn!(error = %e, "changed TLS files are not usable; keeping the current certificate");
                if let Some(m) = metrics {
                    m.record_tls_reload(false);
                }
            }
        }
        *seen = Some(files);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn settings(dir: &Path, ca: bool) -> TlsSettings {
        TlsSettings {
            cert_file: dir.join("tls.crt"),
            key_file: dir.join("tls.key"),
            client_ca_file: ca.then(|| dir.join("ca.crt")),
            reload_interval: Duration::from_millis(50),
            handshake_timeout: Duration::from_secs(1),
        }
    }

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    #[test]
    fn bad_files_name_their_key() {
        crate::install_crypto();
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = self_signed("localhost");
        let (_, other_key) = self_signed("other");
        let s = settings(dir.path(), true);

        let err = TlsConfig::load(&s).unwrap_err();
        assert_eq!(err.key, "server.tls.cert_file", "{err}");

        write(dir.path(), "tls.crt", "not a certificate");
        write(dir.path(), "tls.key", &key);
        write(dir.path(), "ca.crt", &cert);
        assert_eq!(TlsConfig::load(&s).unwrap_err().key, "server.tls.cert_file");

        write(dir.path(), "tls.crt", &cert);
        write(dir.path(), "tls.key", "garbage");
        assert_eq!(TlsConfig::load(&s).unwrap_err().key, "server.tls.key_file");

        write(dir.path(), "tls.key", &other_key);
        let err = TlsConfig::load(&s).unwrap_err();
        assert_eq!(err.key, "server.tls.key_file");
        assert!(
            !err.message.contains("PRIVATE KEY"),
            "key material never in a message: {err}"
        );

        write(dir.path(), "tls.key", &key);
        write(dir.path(), "ca.crt", "");
        assert_eq!(
            TlsConfig::load(&s).unwrap_err().key,
            "server.tls.client_ca_file"
        );

        write(dir.path(), "ca.crt", &cert);
        let ok = TlsConfig::load(&s).expect("loads");
        assert!(ok.mutual());
        assert_eq!(ok.current().alpn_protocols, vec![b"h2".to_vec()]);
    }

    #[tokio::test]
    async fn reload_swaps_good_files_and_keeps_the_current_config_on_bad_ones() {
        crate::install_crypto();
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = self_signed("one");
        write(dir.path(), "tls.crt", &cert);
        write(dir.path(), "tls.key", &key);
        let tls = TlsConfig::load(&settings(dir.path(), false)).expect("loads");
        let first = tls.current();
        let mut seen = Files::read(&tls.settings).ok();

        tls.reload_once(&mut seen, None).await;
        assert!(
            Arc::ptr_eq(&first, &tls.current()),
            "unchanged files: no swap"
        );

        write(dir.path(), "tls.crt", "broken");
        tls.reload_once(&mut seen, None).await;
        assert!(
            Arc::ptr_eq(&first, &tls.current()),
            "bad files: the current config stays"
        );

        let (cert2, key2) = self_signed("two");
        write(dir.path(), "tls.crt", &cert2);
        write(dir.path(), "tls.key", &key2);
        tls.reload_once(&mut seen, None).await;
        assert!(
            !Arc::ptr_eq(&first, &tls.current()),
            "good new files are swapped in"
        );
    }
}
