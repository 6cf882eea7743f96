//! Every rule of the DPoP and binding decision, one refusal at a time, with real keys
//! (aws-lc signers) and the production key checker.

use std::time::Duration;

use aws_lc_rs::{
    rand::SystemRandom,
    rsa::{KeyPair as RsaKeyPair, KeySize},
    signature::{self as sig, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _},
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::Algorithm;
use serde_json::{Map, Value, json};

use super::{
    binding::{self, BindingKind, Confirmation, Mode, SenderPolicy},
    *,
};
use crate::{
    jwt::ErrorCode,
    keys::{IngestOptions, SUPPORTED_ALGORITHMS, VerifyingKey},
    registry::proof_keys::EmbeddedKeys,
};

const TOKEN: &str = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln";
const NOW: f64 = 1_800_000_000.0;
const URI: &str = "https://api.example.com/v1/items";
const ALGS: [Algorithm; 3] = [Algorithm::ES256, Algorithm::PS256, Algorithm::EdDSA];

enum Signer {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

struct ProofKey {
    alg: &'static str,
    jwk: Value,
    signer: Signer,
}

impl ProofKey {
    fn es256() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .expect("keygen");
        let kp = EcdsaKeyPair::from_pkcs8(&sig::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref())
            .expect("parse");
        let p = kp.public_key().as_ref().to_vec();
        let jwk = json!({"kty":"EC","crv":"P-256","x":URL_SAFE_NO_PAD.encode(&p[1..33]),"y":URL_SAFE_NO_PAD.encode(&p[33..65])});
        Self {
            alg: "ES256",
            jwk,
            signer: Signer::Ec(kp),
        }
    }

    fn rsa(size: KeySize) -> Self {
        let kp = RsaKeyPair::generate(size).expect("keygen");
        let public = kp.public_key();
        let jwk = json!({"kty":"RSA",
            "n":URL_SAFE_NO_PAD.encode(public.modulus().big_endian_without_leading_zero()),
            "e":URL_SAFE_NO_PAD.encode(public.exponent().big_endian_without_leading_zero())});
        Self {
            alg: "PS256",
            jwk,
            signer: Signer::Rsa(kp),
        }
    }

    fn ed25519() -> Self {
        let kp = Ed25519KeyPair::generate().expect("keygen");
        let jwk = json!({"kty":"OKP","crv":"Ed25519","x":URL_SAFE_NO_PAD.encode(kp.public_key().as_ref())});
        Self {
            alg: "EdDSA",
            jwk,
            signer: Signer::Ed(kp),
        }
    }

    fn jkt(&self) -> String {
        let opts = IngestOptions {
            allow_symmetric: false,
            algorithms: &SUPPORTED_ALGORITHMS,
        };
        VerifyingKey::from_jwk(self.jwk.as_object().expect("obj"), &opts)
            .expect("key")
            .thumbprint
            .clone()
    }

    fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let rng = SystemRandom::new();
        match &self.signer {
            Signer::Ec(kp) => kp.sign(&rng, msg).expect("sign").as_ref().to_vec(),
            Signer::Rsa(kp) => {
                let mut out = vec![0; kp.public_modulus_len()];
                kp.sign(&sig::RSA_PSS_SHA256, &rng, msg, &mut out)
                    .expect("sign");
                out
            }
            Signer::Ed(kp) => kp.sign(msg).as_ref().to_vec(),
        }
    }

    fn claims(&self) -> Value {
        json!({"jti": "j-1", "htm": "GET", "htu": URI, "iat": NOW as i64,
            "ath": sha256_b64url(TOKEN.as_bytes())})
    }

    /// A proof with the standard header and claims, each changed by `header` and `claims`
    /// (a null value removes the member).
    fn proof_with(&self, header: Value, claims: Value) -> String {
        let mut h = json!({"typ": "dpop+jwt", "alg": self.alg, "jwk": self.jwk});
        let mut c = self.claims();
        merge(&mut h, header);
        merge(&mut c, claims);
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(h.to_string()),
            URL_SAFE_NO_PAD.encode(c.to_string())
        );
        let s = URL_SAFE_NO_PAD.encode(self.sign(input.as_bytes()));
        format!("{input}.{s}")
    }

    fn proof(&self) -> String {
        self.proof_with(Value::Null, Value::Null)
    }
}

fn merge(into: &mut Value, from: Value) {
    if let (Value::Object(into), Value::Object(from)) = (into, from) {
        for (k, v) in from {
            if v.is_null() {
                into.remove(&k);
            } else {
                into.insert(k, v);
            }
        }
    }
}

fn cnf(v: Value) -> Map<String, Value> {
    json!({"sub": "u", "cnf": v})
        .as_object()
        .expect("obj")
        .clone()
}

fn dpop(proofs: &[String]) -> Presentation {
    RawPresentation {
        scheme: "DPoP",
        proofs,
        method: "GET",
        uri: URI,
        ..Default::default()
    }
    .parse()
    .expect("presentation")
}

fn policy(nonce: Option<&NonceKey>) -> SenderPolicy<'_> {
    SenderPolicy {
        mode: Mode::Optional,
        algorithms: &ALGS,
        max_age: Duration::from_secs(60),
        clock_skew: Duration::from_secs(5),
        nonce,
    }
}

/// Decides with the token alone and with its SHA-256 taken beforehand (as Validate does);
/// both must come to the same decision.
fn run(
    claims: &Map<String, Value>,
    p: &Presentation,
    pol: &SenderPolicy<'_>,
) -> Result<Accepted, Refused> {
    let keys = EmbeddedKeys::default();
    let decide = |token| binding::decide(claims.get("cnf"), token, p, pol, NOW, &keys);
    let sha256 = token_sha256();
    let hashed = decide(AccessToken::with_sha256(TOKEN, &sha256));
    let plain = decide(AccessToken::new(TOKEN));
    assert_eq!(
        hashed.as_ref().map(|a| &a.binding).map_err(|r| &r.error),
        plain.as_ref().map(|a| &a.binding).map_err(|r| &r.error),
        "a token hashed beforehand is decided as one hashed by the rule"
    );
    plain
}

fn token_sha256() -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, TOKEN.as_bytes());
    d.as_ref().try_into().expect("a SHA-256 is 32 bytes")
}

fn refusal(claims: &Map<String, Value>, p: &Presentation, pol: &SenderPolicy<'_>) -> BindingError {
    run(claims, p, pol).expect_err("refused").error
}

#[test]
fn valid_proofs_of_every_default_algorithm() {
    for key in [
        ProofKey::es256(),
        ProofKey::rsa(KeySize::Rsa2048),
        ProofKey::ed25519(),
    ] {
        let claims = cnf(json!({"jkt": key.jkt()}));
        let ok = run(&claims, &dpop(&[key.proof()]), &policy(None)).expect(key.alg);
        assert_eq!(ok.binding.kind, BindingKind::Dpop);
        assert_eq!(ok.binding.jkt.as_deref(), Some(key.jkt().as_str()));
        let used = ok.proof_use.expect("replay entry");
        assert_eq!(used.expires, NOW + 61.0);
        assert_eq!(
            used.key,
            binding::replay_key(&htu::normalise(URI).expect("uri"), "j-1")
        );
        assert_eq!(ok.nonce, None);
    }
}

#[test]
fn header_rules() {
    let key = ProofKey::es256();
    let claims = cnf(json!({"jkt": key.jkt()}));
    let p = |h: Value| dpop(&[key.proof_with(h, Value::Null)]);
    let pol = policy(None);
    assert_eq!(
        refusal(&claims, &p(json!({"typ": "JWT"})), &pol),
        BindingError::ProofType
    );
    assert_eq!(
        refusal(&claims, &p(json!({"typ": null})), &pol),
        BindingError::ProofType
    );
    assert_eq!(
        refusal(&claims, &p(json!({"typ": "dpop+jwt "})), &pol),
        BindingError::ProofType
    );
    assert!(run(&claims, &p(json!({"typ": "application/DPoP+JWT"})), &pol).is_ok());
    for alg in ["none", "HS256", "ES384", "RS256", "es256"] {
        assert!(
            matches!(
                refusal(&claims, &p(json!({"alg": alg})), &pol),
                BindingError::ProofAlgorithm(_)
            ),
            "{alg}"
        );
    }
    assert_eq!(
        refusal(&claims, &p(json!({"crit": ["exp"]})), &pol),
        BindingError::ProofHeader("crit")
    );
    assert_eq!(
        refusal(&claims, &p(json!({"jwk": null})), &pol),
        BindingError::MissingJwk
    );
    assert!(matches!(
        refusal(&claims, &p(json!({"jwk": "x"})), &pol),
        BindingError::MalformedProof(_)
    ));
    let mut private = key.jwk.clone();
    private["d"] = json!("AAAA");
    assert_eq!(
        refusal(&claims, &p(json!({"jwk": private})), &pol),
        BindingError::PrivateJwk("d".into())
    );
    let mut off_curve = key.jwk.clone();
    off_curve["y"] = off_curve["x"].clone();
    assert!(matches!(
        refusal(&claims, &p(json!({"jwk": off_curve})), &pol),
        BindingError::UnusableJwk(_)
    ));
    let other = ProofKey::es256();
    assert_eq!(
        refusal(&claims, &p(json!({"jwk": other.jwk})), &pol),
        BindingError::ProofSignature
    );
    let oct = json!({"kty": "oct", "k": URL_SAFE_NO_PAD.encode([1u8; 32])});
    assert_eq!(
        refusal(&claims, &p(json!({"jwk": oct})), &pol),
        BindingError::PrivateJwk("k".into())
    );
}

#[test]
fn small_rsa_keys_are_refused() {
    let weak = ProofKey::rsa(KeySize::Rsa2048);
    let mut small = weak.jwk.clone();
    // The same exponent with a 1024-bit modulus: refused before any signature check.
    small["n"] = json!(URL_SAFE_NO_PAD.encode([0xC5u8; 128]));
    let claims = cnf(json!({"jkt": weak.jkt()}));
    let e = refusal(
        &claims,
        &dpop(&[weak.proof_with(json!({"jwk": small}), Value::Null)]),
        &policy(None),
    );
    assert!(
        matches!(e, BindingError::UnusableJwk(ref why) if why.contains("under 2048")),
        "{e:?}"
    );
}

#[test]
fn framing_and_claim_rules() {
    let key = ProofKey::es256();
    let claims = cnf(json!({"jkt": key.jkt()}));
    let pol = policy(None);
    let good = key.proof();
    for bad in [
        "not.a.jws".to_string(),
        good.replacen('.', "..", 1),
        format!("{good}.x"),
        "x".repeat(MAX_PROOF_BYTES + 1),
    ] {
        assert!(matches!(
            refusal(&claims, &dpop(&[bad]), &pol),
            BindingError::MalformedProof(_)
        ));
    }
    let mut forged = good.clone();
    forged.pop();
    forged.push(if good.ends_with('A') { 'Q' } else { 'A' });
    assert!(matches!(
        refusal(&claims, &dpop(&[forged]), &pol),
        BindingError::ProofSignature | BindingError::MalformedProof(_)
    ));
    let c = |v: Value| dpop(&[key.proof_with(Value::Null, v)]);
    for name in ["jti", "htm", "htu", "iat"] {
        let mut remove = Map::new();
        remove.insert(name.into(), Value::Null);
        assert_eq!(
            refusal(&claims, &c(Value::Object(remove)), &pol),
            BindingError::MissingProofClaim(name),
            "{name}"
        );
    }
    assert_eq!(
        refusal(&claims, &c(json!({"jti": 7})), &pol),
        BindingError::BadProofClaim("jti")
    );
    assert_eq!(
        refusal(&claims, &c(json!({"jti": ""})), &pol),
        BindingError::BadProofClaim("jti")
    );
    assert_eq!(
        refusal(&claims, &c(json!({"jti": "j".repeat(257)})), &pol),
        BindingError::BadProofClaim("jti")
    );
    assert_eq!(
        refusal(&claims, &c(json!({"iat": "1800000000"})), &pol),
        BindingError::BadProofClaim("iat")
    );
    assert_eq!(
        refusal(&claims, &c(json!({"ath": 1})), &pol),
        BindingError::BadProofClaim("ath")
    );
    assert_eq!(
        refusal(&claims, &c(json!({"nonce": ["n"]})), &pol),
        BindingError::BadProofClaim("nonce")
    );
    let dup = {
        let h = URL_SAFE_NO_PAD
            .encode(json!({"typ": "dpop+jwt", "alg": "ES256", "jwk": key.jwk}).to_string());
        let body = format!(
            r#"{{"jti":"a","jti":"b","htm":"GET","htu":"{URI}","iat":{}}}"#,
            NOW as i64
        );
        let input = format!("{h}.{}", URL_SAFE_NO_PAD.encode(body));
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes()))
        )
    };
    assert!(matches!(
        refusal(&claims, &dpop(&[dup]), &pol),
        BindingError::MalformedProof(_)
    ));
}

#[test]
fn request_rules() {
    let key = ProofKey::es256();
    let claims = cnf(json!({"jkt": key.jkt()}));
    let pol = policy(None);
    let c = |v: Value| dpop(&[key.proof_with(Value::Null, v)]);
    assert_eq!(
        refusal(&claims, &c(json!({"htm": "POST"})), &pol),
        BindingError::MethodMismatch
    );
    assert_eq!(
        refusal(&claims, &c(json!({"htm": "get"})), &pol),
        BindingError::MethodMismatch
    );
    for htu in [
        "https://api.example.com/v1/items/",
        "https://api.example.com/V1/items",
        "https://api.example.com:8443/v1/items",
        "http://api.example.com/v1/items",
        "https://evil.example.com/v1/items",
        "https://api.example.com/v1/items%3Fx",
        "https://evil.example.com/v1/items?https://api.example.com/v1/items",
        "/v1/items",
        "not a uri",
    ] {
        assert_eq!(
            refusal(&claims, &c(json!({"htu": htu})), &pol),
            BindingError::UriMismatch,
            "{htu}"
        );
    }
    for htu in [
        "https://API.example.com:443/v1/items",
        "https://api.example.com/v1/items?page=2",
        "https://api.example.com/v1/%69tems#x",
    ] {
        assert!(run(&claims, &c(json!({"htu": htu})), &pol).is_ok(), "{htu}");
    }
}

#[test]
fn time_and_ath_rules() {
    let key = ProofKey::es256();
    let claims = cnf(json!({"jkt": key.jkt()}));
    let pol = policy(None);
    let c = |v: Value| dpop(&[key.proof_with(Value::Null, v)]);
    assert!(
        run(&claims, &c(json!({"iat": NOW - 60.0})), &pol).is_ok(),
        "exactly max_age"
    );
    assert_eq!(
        refusal(&claims, &c(json!({"iat": NOW - 61.0})), &pol),
        BindingError::ProofTooOld { age: 61, max: 60 }
    );
    assert!(
        run(&claims, &c(json!({"iat": NOW + 5.0})), &pol).is_ok(),
        "within skew"
    );
    assert_eq!(
        refusal(&claims, &c(json!({"iat": NOW + 6.0})), &pol),
        BindingError::ProofFromFuture(6)
    );
    assert_eq!(
        refusal(&claims, &c(json!({"iat": 1e300})), &pol),
        BindingError::ProofFromFuture(u64::MAX)
    );
    assert_eq!(
        refusal(&claims, &c(json!({"ath": null})), &pol),
        BindingError::MissingAth
    );
    assert_eq!(
        refusal(
            &claims,
            &c(json!({"ath": sha256_b64url(b"another token")})),
            &pol
        ),
        BindingError::AthMismatch
    );
}

#[test]
fn proof_count_and_key_binding() {
    let key = ProofKey::es256();
    let claims = cnf(json!({"jkt": key.jkt()}));
    let pol = policy(None);
    assert_eq!(
        refusal(&claims, &dpop(&[]), &pol),
        BindingError::MissingProof
    );
    assert_eq!(
        refusal(&claims, &dpop(&[key.proof(), key.proof()]), &pol),
        BindingError::MultipleProofs(2)
    );
    let other = ProofKey::es256();
    let r = run(&claims, &dpop(&[other.proof()]), &pol).expect_err("refused");
    assert_eq!(r.error, BindingError::KeyMismatch);
    assert_eq!(r.error.code(), ErrorCode::BindingMismatch);
    assert!(r.dpop_challenge);
}

#[test]
fn scheme_rules() {
    let key = ProofKey::es256();
    let bound = cnf(json!({"jkt": key.jkt()}));
    let unbound = json!({"sub": "u"}).as_object().expect("obj").clone();
    let bearer = Presentation::default();
    let pol = policy(None);
    let r = run(&bound, &bearer, &pol).expect_err("bound as bearer");
    assert_eq!(r.error, BindingError::BoundTokenAsBearer);
    assert!(r.dpop_challenge, "tells the client to use DPoP");
    // A bearer-scheme call with a proof attached is still a bearer call.
    let mut with_proof = dpop(&[key.proof()]);
    with_proof.scheme = Scheme::Bearer;
    assert_eq!(
        refusal(&bound, &with_proof, &pol),
        BindingError::BoundTokenAsBearer
    );
    assert_eq!(
        refusal(&unbound, &dpop(&[key.proof()]), &pol),
        BindingError::UnboundTokenAsDpop
    );
    assert_eq!(
        run(&unbound, &bearer, &pol).expect("bearer").binding.kind,
        BindingKind::None
    );
    let required = SenderPolicy {
        mode: Mode::Required,
        ..pol
    };
    let r = run(&unbound, &bearer, &required).expect_err("required");
    assert_eq!(
        (r.error, r.dpop_challenge),
        (BindingError::BindingRequired, false)
    );
    let off = SenderPolicy {
        mode: Mode::Off,
        ..pol
    };
    assert_eq!(
        run(&bound, &bearer, &off).expect("off").binding.kind,
        BindingKind::None
    );
    assert_eq!(
        run(&unbound, &dpop(&[]), &off).expect("off").binding.kind,
        BindingKind::None
    );
}

#[test]
fn confirmation_forms() {
    let thumb = sha256_b64url(b"cert");
    assert_eq!(
        Confirmation::from_cnf(cnf(json!({})).get("cnf")),
        Ok(Confirmation::default())
    );
    assert_eq!(
        Confirmation::from_cnf(cnf(json!({"x5t#S256": thumb})).get("cnf")).map(|c| c.x5t_s256),
        Ok(Some(thumb.clone()))
    );
    let hex: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"cert")
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    for (v, want) in [
        (
            json!({"x5t#S256": hex}),
            BindingError::MalformedConfirmation("x5t#S256"),
        ),
        (
            json!({"jkt": format!("{thumb}=")}),
            BindingError::MalformedConfirmation("jkt"),
        ),
        (
            json!({"jkt": 5}),
            BindingError::MalformedConfirmation("jkt"),
        ),
        (
            json!("jkt"),
            BindingError::MalformedConfirmation("(not an object)"),
        ),
        (
            json!({"jwk": {"kty": "EC"}}),
            BindingError::UnsupportedConfirmation("`jwk`".into()),
        ),
        (
            json!({"jkt": thumb, "kid": "k"}),
            BindingError::UnsupportedConfirmation("`kid`".into()),
        ),
    ] {
        assert_eq!(
            Confirmation::from_cnf(cnf(v.clone()).get("cnf")),
            Err(want),
            "{v}"
        );
    }
}

#[test]
fn certificate_binding() {
    let der = b"client certificate DER";
    let thumb = sha256_b64url(der);
    let claims = cnf(json!({"x5t#S256": thumb}));
    let pol = policy(None);
    let with_cert = |bytes: &[u8]| {
        RawPresentation {
            certificate_der: bytes,
            ..Default::default()
        }
        .parse()
        .expect("presentation")
    };
    let ok = run(&claims, &with_cert(der), &pol).expect("bound certificate");
    assert_eq!(ok.binding.kind, BindingKind::Mtls);
    assert_eq!(ok.binding.x5t_s256.as_deref(), Some(thumb.as_str()));
    assert_eq!(
        refusal(&claims, &Presentation::default(), &pol),
        BindingError::MissingCertificate
    );
    assert_eq!(
        refusal(&claims, &with_cert(b"another"), &pol),
        BindingError::CertificateMismatch
    );
    let mut as_dpop = with_cert(der);
    as_dpop.scheme = Scheme::Dpop;
    assert_eq!(
        refusal(&claims, &as_dpop, &pol),
        BindingError::UnboundTokenAsDpop
    );
    // Bound to both: both must be proven.
    let key = ProofKey::es256();
    let both = cnf(json!({"x5t#S256": thumb, "jkt": key.jkt()}));
    let mut p = dpop(&[key.proof()]);
    assert_eq!(refusal(&both, &p, &pol), BindingError::MissingCertificate);
    p.certificate = Some(thumb.clone());
    let ok = run(&both, &p, &pol).expect("both");
    assert_eq!(
        (ok.binding.kind, ok.binding.x5t_s256.is_some()),
        (BindingKind::Dpop, true)
    );
}

#[test]
fn nonce_rules() {
    let key = ProofKey::es256();
    let claims = cnf(json!({"jkt": key.jkt()}));
    let nonces = NonceKey::new(&[3; 32], Duration::from_secs(60), "t");
    let pol = policy(Some(&nonces));
    let r = run(&claims, &dpop(&[key.proof()]), &pol).expect_err("nonce required");
    assert_eq!(r.error, BindingError::NonceRequired);
    assert_eq!(r.error.code(), ErrorCode::UseDpopNonce);
    let fresh = r.nonce.expect("a nonce to retry with");
    assert_eq!(fresh, nonces.mint(NOW));
    let with = |n: &str| dpop(&[key.proof_with(Value::Null, json!({"nonce": n}))]);
    let ok = run(&claims, &with(&fresh), &pol).expect("with nonce");
    assert_eq!(
        ok.nonce.as_deref(),
        Some(fresh.as_str()),
        "valid answers carry the nonce too"
    );
    let stale = nonces.mint(NOW - 180.0);
    assert_eq!(
        refusal(&claims, &with(&stale), &pol),
        BindingError::NonceStale
    );
    let forged = NonceKey::new(&[4; 32], Duration::from_secs(60), "t").mint(NOW);
    assert_eq!(
        refusal(&claims, &with(&forged), &pol),
        BindingError::NonceInvalid
    );
    assert_eq!(
        refusal(&claims, &with("abc"), &pol),
        BindingError::NonceInvalid
    );
    // Without dpop_nonce, a nonce in the proof is not needed and not checked.
    assert!(run(&claims, &with("anything"), &policy(None)).is_ok());
    // Bearer calls get no nonce.
    let unbound = json!({"sub": "u"}).as_object().expect("obj").clone();
    assert_eq!(
        run(&unbound, &Presentation::default(), &pol)
            .expect("bearer")
            .nonce,
        None
    );
}

#[test]
fn every_binding_error_has_a_distinct_message() {
    let all = [
        BindingError::MissingProof,
        BindingError::MultipleProofs(2),
        BindingError::MalformedProof("x".into()),
        BindingError::ProofType,
        BindingError::ProofAlgorithm("`x`".into()),
        BindingError::ProofHeader("crit"),
        BindingError::MissingJwk,
        BindingError::PrivateJwk("d".into()),
        BindingError::UnusableJwk("x".into()),
        BindingError::ProofSignature,
        BindingError::MissingProofClaim("jti"),
        BindingError::BadProofClaim("jti"),
        BindingError::MethodMismatch,
        BindingError::UriMismatch,
        BindingError::ProofTooOld { age: 1, max: 0 },
        BindingError::ProofFromFuture(1),
        BindingError::ProofReplayed,
        BindingError::ReplayStoreFull,
        BindingError::MissingAth,
        BindingError::AthMismatch,
        BindingError::NonceRequired,
        BindingError::NonceStale,
        BindingError::NonceInvalid,
        BindingError::KeyMismatch,
        BindingError::BoundTokenAsBearer,
        BindingError::UnboundTokenAsDpop,
        BindingError::BindingRequired,
        BindingError::UnsupportedConfirmation("`x`".into()),
        BindingError::MalformedConfirmation("jkt"),
        BindingError::MissingCertificate,
        BindingError::CertificateMismatch,
    ];
    let messages: std::collections::HashSet<String> = all.iter().map(ToString::to_string).collect();
    assert_eq!(messages.len(), all.len());
    for e in &all {
        assert!(e.to_string().len() < 200);
    }
}

#[test]
fn remembered_proof_keys_still_check_every_signature_and_failed_keys_are_not_kept() {
    let keys = EmbeddedKeys::default();
    let pol = policy(None);
    let key = ProofKey::es256();
    let claims = cnf(json!({"jkt": key.jkt()}));
    let decide = |p: &Presentation| {
        binding::decide(
            claims.get("cnf"),
            AccessToken::new(TOKEN),
            p,
            &pol,
            NOW,
            &keys,
        )
    };
    for _ in 0..2 {
        let ok = decide(&dpop(&[key.proof()])).expect("a valid proof");
        assert_eq!(ok.binding.jkt.as_deref(), Some(key.jkt().as_str()));
    }
    assert_eq!(keys.remembered(), 1, "one client key, checked once");
    // The same (remembered) key under a proof whose signature is another key's.
    let other = ProofKey::es256();
    let forged = {
        let good = key.proof();
        let (input, _) = good.rsplit_once('.').expect("jws");
        format!(
            "{input}.{}",
            URL_SAFE_NO_PAD.encode(other.sign(input.as_bytes()))
        )
    };
    assert_eq!(
        decide(&dpop(&[forged])).expect_err("forged").error,
        BindingError::ProofSignature
    );
    // A key with a private member is refused each time it comes.
    let mut private = key.jwk.clone();
    private["d"] = json!("AAAA");
    for _ in 0..2 {
        let p = key.proof_with(json!({"jwk": private}), Value::Null);
        assert_eq!(
            decide(&dpop(&[p])).expect_err("private").error,
            BindingError::PrivateJwk("d".into())
        );
    }
    assert_eq!(keys.remembered(), 1, "a refused key is not remembered");
}
