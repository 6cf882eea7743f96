//! The `--dev` issuer for newcomers: an ES256 signing key created on first use and kept
//! in a local file (like `dotnet user-jwts`), a tenant that trusts it, and token minting.

use std::{
    io::Write as _,
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, bail};
use aws_lc_rs::{
    rand::SystemRandom,
    signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::config::{KeySource, ServerSettings, Settings, TenantSettings, ValidationPolicy};
use crate::jwt::claims::MAX_NUMERIC_DATE;

/// Issuer of development tokens.
pub const DEV_ISSUER: &str = "https://introspectd.localhost/dev";
/// Audience of development tokens.
pub const DEV_AUDIENCE: &str = "introspectd-dev";
/// Tenant id of the development issuer.
pub const DEV_TENANT: &str = "dev";
/// Default listen address of `serve --dev` (loopback only).
pub const DEV_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 50051));

/// The development signing key.
pub struct DevKey {
    /// Key id.
    pub kid: String,
    pkcs8: Vec<u8>,
    /// The public JWK.
    pub public_jwk: Value,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    kid: String,
    alg: String,
    pkcs8: String,
}

/// Where the key lives: `$XDG_DATA_HOME/introspectd/dev-signing-key.json`, else
/// `~/.local/share/introspectd/...`, else `./.introspectd/...`.
pub fn default_key_path() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("introspectd").join("dev-signing-key.json")
}

impl DevKey {
    /// Loads the key at `path`, creating it (mode 0600) on first use.
    pub fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        match std::fs::read(path) {
            Ok(bytes) => {
                return Self::parse(&bytes).with_context(|| format!("reading {}", path.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
        let pkcs8 = doc.as_ref().to_vec();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
            .map_err(|_| anyhow::anyhow!("generated key does not parse"))?;
        let kid = format!(
            "dev-{}",
            &URL_SAFE_NO_PAD.encode(&pair.public_key().as_ref()[1..9])
        );
        let file = KeyFile {
            kid,
            alg: "ES256".into(),
            pkcs8: URL_SAFE_NO_PAD.encode(&pkcs8),
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // A name no other writer uses: another process, or another thread of this one.
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let tmp = path.with_extension(format!(
            "tmp{}-{}",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts
                .open(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(&serde_json::to_vec_pretty(&file)?)?;
        }
        // Publish without clobbering: a hard link fails when the path exists, in one
        // step, so when another process (`serve --dev` and `token` started together)
        // created the key meanwhile, both keep theirs. A check-then-rename let both
        // rename, each reading its own key before the other replaced it.
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("writing {}", path.display())),
        }
        let bytes = std::fs::read(path)?;
        Self::parse(&bytes)
    }

    fn parse(bytes: &[u8]) -> anyhow::Result<Self> {
        let file: KeyFile = serde_json::from_slice(bytes).context("not a dev key file")?;
        if file.alg != "ES256" {
            bail!("dev key algorithm {} is not ES256", file.alg);
        }
        let pkcs8 = URL_SAFE_NO_PAD
            .decode(&file.pkcs8)
            .context("pkcs8 is not base64url")?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
            .map_err(|_| anyhow::anyhow!("the dev key is not a P-256 PKCS#8 key"))?;
        let point = pair.public_key().as_ref();
        if point.len() != 65 {
            bail!("unexpected public key encoding");
        }
        let public_jwk = json!({
            "kty": "EC", "crv": "P-256", "kid": file.kid, "alg": "ES256", "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        });
        Ok(Self {
            kid: file.kid,
            pkcs8,
            public_jwk,
        })
    }

    /// Mints a token for the dev issuer.
    pub fn mint(
        &self,
        sub: &str,
        audiences: &[String],
        scope: Option<&str>,
        ttl: Duration,
        extra: &Map<String, Value>,
    ) -> anyhow::Result<String> {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)?
            .as_secs();
        let mut claims = Map::new();
        claims.insert("iss".into(), DEV_ISSUER.into());
        claims.insert("sub".into(), sub.into());
        let aud: Value = match audiences {
            [] => DEV_AUDIENCE.into(),
            [one] => one.clone().into(),
            many => many.to_vec().into(),
        };
        claims.insert("aud".into(), aud);
        claims.insert("iat".into(), now.into());
        claims.insert("nbf".into(), now.into());
        let exp = now
            .checked_add(ttl.as_secs())
            .filter(|e| i64::try_from(*e).is_ok_and(|e| e <= MAX_NUMERIC_DATE))
            .context("the ttl reaches past the year 9999")?;
        claims.insert("exp".into(), exp.into());
        claims.insert("jti".into(), format!("{:016x}", fastrand::u64(..)).into());
        if let Some(s) = scope {
            claims.insert("scope".into(), s.into());
        }
        for (k, v) in extra {
            claims.insert(k.clone(), v.clone());
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, &claims, &EncodingKey::from_ec_der(&self.pkcs8))
            .context("signing the token")
    }

    /// Settings that trust only the dev issuer, listening on `listen`, without a
    /// metrics listener; everything else at its default.
    pub fn settings(&self, listen: SocketAddr) -> Settings {
        let keys = KeySource::Static {
            jwks: json!({"keys": [self.public_jwk.clone()]}),
        };
        // `..Settings::default()`: a section added to the configuration needs nothing here.
        #[allow(clippy::needless_update)]
        Settings {
            server: ServerSettings {
                listen,
                metrics_listen: None,
                // The operator view on a loopback dev server (`introspectd issuers`);
                // elsewhere it would need server.admin_auth.
                admin: listen.ip().is_loopback(),
                ..ServerSettings::default()
            },
            tenants: vec![TenantSettings {
                audiences: vec![DEV_AUDIENCE.into()],
                policy: ValidationPolicy {
                    algorithms: vec![Algorithm::ES256],
                    ..ValidationPolicy::default()
                },
                ..TenantSettings::new(DEV_TENANT, DEV_ISSUER, keys)
            }],
            ..Settings::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k/dev.json");
        let a = DevKey::load_or_create(&path).expect("create");
        let b = DevKey::load_or_create(&path).expect("load");
        assert_eq!(a.kid, b.kid);
        assert_eq!(a.public_jwk, b.public_jwk);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o077, 0, "key file is private");
        }
    }

    #[test]
    fn writers_racing_to_create_the_key_all_end_up_with_the_same_one() {
        for _ in 0..20 {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("dev.json");
            let start = std::sync::Barrier::new(8);
            let kids: Vec<String> = std::thread::scope(|s| {
                let racers: Vec<_> = (0..8)
                    .map(|_| {
                        s.spawn(|| {
                            start.wait();
                            DevKey::load_or_create(&path).expect("key").kid
                        })
                    })
                    .collect();
                racers
                    .into_iter()
                    .map(|r| r.join().expect("racer"))
                    .collect()
            });
            let on_disk = DevKey::load_or_create(&path).expect("key").kid;
            assert!(kids.iter().all(|k| *k == on_disk), "{kids:?} vs {on_disk}");
            let leftovers = std::fs::read_dir(dir.path()).expect("dir").count();
            assert_eq!(leftovers, 1, "no temporary file is left behind");
        }
    }

    #[test]
    fn a_ttl_past_9999_is_an_error_not_an_overflow() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = DevKey::load_or_create(&dir.path().join("k.json")).expect("key");
        for ttl in [Duration::MAX, Duration::from_secs(300_000_000_000)] {
            let err = key
                .mint("s", &[], None, ttl, &Map::new())
                .expect_err("refused");
            assert!(err.to_string().contains("9999"), "{err}");
        }
        assert!(
            key.mint("s", &[], None, Duration::from_secs(60), &Map::new())
                .is_ok()
        );
    }
}
