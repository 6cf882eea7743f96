//! A DPoP client for the tests, independent of the service's code: proof keys made and
//! used with aws-lc-rs directly, RFC 7638 thumbprints computed by hand, proofs built
//! member by member so a test can break any one of them.

use aws_lc_rs::{
    digest,
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

use super::{FakeIdp, Harness, TestKey, claims, now, settings_with_env, start};

/// The secret of nonce-requiring tenants in the tests (`NONCE_SECRET` in their env).
pub const NONCE_SECRET: &str = "a-dpop-nonce-secret-of-32-bytes!!";

/// The service with tenant `demo` (`extra` lines added to it) of a fake provider whose
/// ES256 key signs the access tokens; `NONCE_SECRET` is in its environment with `env`.
pub struct Fixture {
    /// The provider.
    pub idp: FakeIdp,
    /// Its signing key.
    pub issuer: TestKey,
    /// The service.
    pub h: Harness,
}

impl Fixture {
    /// Starts both and waits until `service` is SERVING.
    pub async fn start(extra: &str, env: &[(&str, &str)], service: &str) -> Self {
        Self::start_with(|_| extra.to_string(), env, service).await
    }

    /// The same, with tenant lines that name the provider's URLs.
    pub async fn start_with(
        extra: impl FnOnce(&FakeIdp) -> String,
        env: &[(&str, &str)],
        service: &str,
    ) -> Self {
        let idp = FakeIdp::start().await;
        let issuer = TestKey::ec("issuer-1");
        idp.serve_oidc(&[&issuer]);
        let mut env = env.to_vec();
        env.push(("NONCE_SECRET", NONCE_SECRET));
        let h = start(settings_with_env(
            &super::oidc_tenant(&idp, &extra(&idp)),
            &env,
        ))
        .await;
        h.wait_health(service, 1).await;
        Self { idp, issuer, h }
    }

    /// An access token bound by `cnf` (null: unbound).
    pub fn token(&self, cnf: Value) -> String {
        let mut c = claims(&self.idp.issuer(), "api://demo");
        if !cnf.is_null() {
            c["cnf"] = cnf;
        }
        self.issuer.token(&c)
    }
}

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A client's DPoP key.
pub struct DpopKey {
    pub alg: &'static str,
    pub jwk: Value,
    signer: Signer,
}

/// base64url SHA-256.
pub fn b64_sha256(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, bytes).as_ref())
}

impl DpopKey {
    pub fn es256() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("keygen");
        let kp = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("parse");
        let p = kp.public_key().as_ref().to_vec();
        Self {
            alg: "ES256",
            jwk: json!({"kty": "EC", "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])}),
            signer: Signer::Ec(kp),
        }
    }

    /// An RSA key signing `alg` (PS256 or RS256).
    pub fn rsa(alg: &'static str) -> Self {
        let kp = RsaKeyPair::generate(KeySize::Rsa2048).expect("keygen");
        let public = kp.public_key();
        Self {
            alg,
            jwk: json!({"kty": "RSA",
                "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
                "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())}),
            signer: Signer::Rsa(kp),
        }
    }

    pub fn ed25519() -> Self {
        let kp = Ed25519KeyPair::generate().expect("keygen");
        Self {
            alg: "EdDSA",
            jwk: json!({"kty": "OKP", "crv": "Ed25519", "x": URL_SAFE_NO_PAD.encode(kp.public_key().as_ref())}),
            signer: Signer::Ed(kp),
        }
    }

    /// RFC 7638: the required members in lexicographic order, no whitespace.
    pub fn jkt(&self) -> String {
        let j = &self.jwk;
        let canonical = match j["kty"].as_str() {
            Some("EC") => format!(
                r#"{{"crv":"{}","kty":"EC","x":"{}","y":"{}"}}"#,
                j["crv"].as_str().unwrap_or_default(),
                j["x"].as_str().unwrap_or_default(),
                j["y"].as_str().unwrap_or_default()
            ),
            Some("RSA") => format!(
                r#"{{"e":"{}","kty":"RSA","n":"{}"}}"#,
                j["e"].as_str().unwrap_or_default(),
                j["n"].as_str().unwrap_or_default()
            ),
            _ => format!(
                r#"{{"crv":"Ed25519","kty":"OKP","x":"{}"}}"#,
                j["x"].as_str().unwrap_or_default()
            ),
        };
        b64_sha256(canonical.as_bytes())
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ec(kp) => kp.sign(&rng, message).expect("sign").as_ref().to_vec(),
            Signer::Rsa(kp) => {
                let enc: &'static dyn sig::RsaEncoding = if self.alg == "RS256" {
                    &sig::RSA_PKCS1_SHA256
                } else {
                    &sig::RSA_PSS_SHA256
                };
                let mut out = vec![0; kp.public_modulus_len()];
                kp.sign(enc, &rng, message, &mut out).expect("sign");
                out
            }
            Signer::Ed(kp) => kp.sign(message).as_ref().to_vec(),
        }
    }

    /// The standard claims of a proof for `method` `uri` carrying `token`.
    pub fn claims(method: &str, uri: &str, token: &str) -> Value {
        json!({"jti": format!("p{}", fastrand::u64(..)), "htm": method, "htu": uri,
            "iat": now(), "ath": b64_sha256(token.as_bytes())})
    }

    /// A proof with header `{typ, alg, jwk}` and `claims`, each member replaced by
    /// `header`'s (null removes it).
    pub fn proof_from(&self, header: Value, claims: &Value) -> String {
        let mut h = json!({"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk});
        if let (Value::Object(into), Value::Object(from)) = (&mut h, header) {
            for (k, v) in from {
                if v.is_null() {
                    into.remove(&k);
                } else {
                    into.insert(k, v);
                }
            }
        }
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(h.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(self.sign(input.as_bytes()))
        )
    }

    /// A valid proof for `method` `uri` carrying `token`, claims changed by `change`.
    pub fn proof_with(&self, method: &str, uri: &str, token: &str, change: Value) -> String {
        let mut c = Self::claims(method, uri, token);
        if let (Value::Object(into), Value::Object(from)) = (&mut c, change) {
            for (k, v) in from {
                if v.is_null() {
                    into.remove(&k);
                } else {
                    into.insert(k, v);
                }
            }
        }
        self.proof_from(Value::Null, &c)
    }

    pub fn proof(&self, method: &str, uri: &str, token: &str) -> String {
        self.proof_with(method, uri, token, Value::Null)
    }
}
