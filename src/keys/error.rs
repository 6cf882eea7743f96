//! [`KeyError`]: why a key, or a whole key document, was not ingested.

use jsonwebtoken::Algorithm;

use super::{MAX_KEYS_PER_SET, MAX_RSA_BITS, MIN_RSA_BITS};

/// Why a key, or a whole document, was not ingested: one case per hygiene rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// An HMAC secret shorter than the algorithm's hash output.
    #[error("{alg:?} needs a key of at least {min} bytes, got {got}")]
    HmacTooShort {
        /// The algorithm.
        alg: Algorithm,
        /// Its minimum, in bytes.
        min: usize,
        /// The secret's length.
        got: usize,
    },
    /// The allow-list has no HMAC algorithm for a symmetric key.
    #[error("no HMAC algorithm is allowed for this key")]
    NoHmacAlgorithm,
    /// A required member (`kty`, `crv`) is absent.
    #[error("no {0}")]
    Missing(&'static str),
    /// A key material member is absent or not a string.
    #[error("no `{0}`")]
    MissingMember(&'static str),
    /// A key material member is not base64url.
    #[error("`{0}` is not base64url")]
    NotBase64url(&'static str),
    /// A `kty` this service does not verify with.
    #[error("kty `{0}` is not supported")]
    UnsupportedKeyType(String),
    /// `kid` of the wrong JSON type.
    #[error("kid is not a string")]
    KidNotString,
    /// `use` other than `sig`.
    #[error("use is not `sig`")]
    NotForSignatures,
    /// `key_ops` without `verify`.
    #[error("key_ops does not include `verify`")]
    NotForVerifying,
    /// An `alg` outside the supported set.
    #[error("alg `{0}` is not a supported signature algorithm")]
    UnsupportedAlgorithm(String),
    /// `alg` of the wrong JSON type.
    #[error("alg is not a string")]
    AlgorithmNotString,
    /// An `oct` key in a fetched set.
    #[error("symmetric (oct) keys are never taken from a fetched key set")]
    SymmetricFetched,
    /// A private or symmetric member in a public key.
    #[error("has the private member `{0}`")]
    PrivateMember(&'static str),
    /// The declared `alg` is of another family than the key.
    #[error("alg {0:?} does not fit the key type")]
    AlgorithmMismatch(Algorithm),
    /// The declared (or only possible) `alg` is not in the tenant's allow-list.
    #[error("alg {0:?} is not allowed")]
    AlgorithmNotAllowed(Algorithm),
    /// No allowed algorithm is of the key's family.
    #[error("no allowed algorithm fits the key type")]
    NoAllowedAlgorithm,
    /// An empty or all-zero RSA modulus.
    #[error("RSA modulus is empty or zero")]
    RsaEmptyModulus,
    /// An RSA modulus under [`MIN_RSA_BITS`].
    #[error("RSA modulus of {0} bits is under {MIN_RSA_BITS}")]
    RsaTooSmall(usize),
    /// An RSA modulus over [`MAX_RSA_BITS`].
    #[error("RSA modulus of {0} bits is over {MAX_RSA_BITS}")]
    RsaTooLarge(usize),
    /// An even RSA modulus.
    #[error("RSA modulus is even")]
    RsaEvenModulus,
    /// An RSA exponent that is even, under 3 or over 64 bits.
    #[error("RSA public exponent must be odd and at least 3")]
    RsaBadExponent,
    /// An RSA modulus from a ROCA-vulnerable generator.
    #[error("RSA modulus has the ROCA fingerprint (CVE-2017-15361)")]
    RsaRoca,
    /// aws-lc refused the RSA key.
    #[error("RSA key rejected: {0}")]
    RsaRejected(String),
    /// A curve this service does not verify with.
    #[error("curve `{0}` is not supported")]
    UnsupportedCurve(String),
    /// The declared `alg` is not the curve's.
    #[error("alg {alg:?} does not fit curve {crv}")]
    CurveMismatch {
        /// The declared algorithm.
        alg: Algorithm,
        /// The curve.
        crv: String,
    },
    /// EC coordinates of the wrong length.
    #[error("coordinates of a {crv} key are {size} bytes each")]
    CoordinateLength {
        /// The curve.
        crv: String,
        /// The length they must have.
        size: usize,
    },
    /// An EC point off its curve.
    #[error("the point is not on curve {0}")]
    NotOnCurve(String),
    /// An Ed25519 key of the wrong length.
    #[error("an Ed25519 key is 32 bytes")]
    Ed25519Length,
    /// aws-lc refused the Ed25519 key.
    #[error("invalid Ed25519 key")]
    Ed25519Invalid,
    /// The document has no `keys` array.
    #[error("the document has no `keys` array")]
    NoKeysArray,
    /// An entry of `keys` that is not an object.
    #[error("not a JSON object")]
    NotAnObject,
    /// The same key twice.
    #[error("exact duplicate")]
    Duplicate,
    /// A `kid` held by different keys.
    #[error("kid is shared by different keys, so it is ambiguous")]
    AmbiguousKid,
    /// Past [`MAX_KEYS_PER_SET`].
    #[error("more than {MAX_KEYS_PER_SET} keys")]
    TooManyKeys,
    /// An `oct` key beside public keys.
    #[error("symmetric key in a set with public keys")]
    SymmetricBesidePublic,
}
