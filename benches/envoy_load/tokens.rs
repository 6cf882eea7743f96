//! Signing keys made for the run and the distinct tokens the load cycles through: RS256
//! (RSA 2048) and ES256 (P-256), signed with aws-lc-rs, published as one JWKS that both
//! introspectd (`jwks_file`) and Envoy's jwt_authn (`local_jwks`) read, and tokens
//! bound to the DPoP client's key (`benches/common/dpop_client.rs`) for the DPoP mode.

use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{self as sig, EcdsaKeyPair, KeyPair as _},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

/// The issuer of every token.
pub(crate) const ISSUER: &str = "https://bench.introspectd.test";
/// The audience of every token.
pub(crate) const AUDIENCE: &str = "https://api.bench.test";

/// A signature algorithm under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256, RSA 2048.
    Rs256,
    /// ECDSA P-256 with SHA-256.
    Es256,
}

impl Alg {
    /// The JOSE name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// The run's keys.
pub(crate) struct Keys {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
    rng: SystemRandom,
}

impl Keys {
    /// Fresh keys.
    pub(crate) fn generate() -> anyhow::Result<Self> {
        let rng = SystemRandom::new();
        let rsa = RsaKeyPair::generate(KeySize::Rsa2048)?;
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)?;
        let ec = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())?;
        Ok(Self { rsa, ec, rng })
    }

    /// The public JWKS.
    pub(crate) fn jwks(&self) -> Value {
        let public = self.rsa.public_key();
        let p = self.ec.public_key().as_ref();
        json!({"keys": [
            {"kty": "RSA", "kid": "rs", "alg": "RS256", "use": "sig",
             "n": URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
             "e": URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())},
            {"kty": "EC", "kid": "es", "alg": "ES256", "use": "sig", "crv": "P-256",
             "x": URL_SAFE_NO_PAD.encode(&p[1..33]), "y": URL_SAFE_NO_PAD.encode(&p[33..65])},
        ]})
    }

    /// `count` distinct valid tokens (each its own `sub` and `jti`), valid for an hour;
    /// bound to the DPoP key with thumbprint `jkt` when given.
    pub(crate) fn tokens(
        &self,
        alg: Alg,
        count: usize,
        jkt: Option<&str>,
    ) -> anyhow::Result<Vec<String>> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let kid = match alg {
            Alg::Rs256 => "rs",
            Alg::Es256 => "es",
        };
        let header = URL_SAFE_NO_PAD
            .encode(json!({"alg": alg.name(), "kid": kid, "typ": "JWT"}).to_string());
        (0..count)
            .map(|i| {
                let mut claims = json!({"iss": ISSUER, "aud": AUDIENCE, "sub": format!("user-{i}"),
                    "jti": format!("{}-{i}-{}", alg.name(), jkt.is_some()), "scope": "read write",
                    "client_id": "bench", "iat": now, "nbf": now, "exp": now + 3600});
                if let Some(jkt) = jkt {
                    claims["cnf"] = json!({"jkt": jkt});
                }
                let input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(claims.to_string()));
                let signature = match alg {
                    Alg::Rs256 => {
                        let mut s = vec![0; self.rsa.public_modulus_len()];
                        self.rsa.sign(
                            &sig::RSA_PKCS1_SHA256,
                            &self.rng,
                            input.as_bytes(),
                            &mut s,
                        )?;
                        s
                    }
                    Alg::Es256 => self.ec.sign(&self.rng, input.as_bytes())?.as_ref().to_vec(),
                };
                Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature)))
            })
            .collect()
    }
}
