//! Stateless DPoP nonces (RFC 9449 section 9): a nonce names a time window and carries
//! an HMAC of it under the tenant's secret, so any replica holding the secret checks it
//! without storing anything. A nonce is accepted in the window it was minted in and the
//! next one; older ones are stale, anything else is forged.

use std::{fmt, time::Duration};

use aws_lc_rs::{constant_time, hmac};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Domain separation of the MAC input, so the secret cannot be used to forge anything else.
const CONTEXT: &[u8] = b"introspectd dpop nonce v1";
/// Bytes of the MAC kept in a nonce (128 bits).
const TAG_BYTES: usize = 16;
/// Bytes of a decoded nonce: the window number and the tag.
const NONCE_BYTES: usize = 8 + TAG_BYTES;

/// Outcome of checking a nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceCheck {
    /// Minted by this secret in the current or the previous window.
    Valid,
    /// Minted by this secret, but more than two windows ago.
    Stale,
    /// Not minted by this secret for this tenant (or not a nonce at all).
    Forged,
}

/// Mints and checks the nonces of one tenant.
pub struct NonceKey {
    key: hmac::Key,
    window_secs: u64,
    tenant: String,
}

impl fmt::Debug for NonceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NonceKey")
            .field("window_secs", &self.window_secs)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl NonceKey {
    /// A key from the tenant's secret; `window` is rounded to whole seconds (at least 1).
    pub fn new(secret: &[u8], window: Duration, tenant: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            window_secs: window.as_secs().max(1),
            tenant: tenant.to_string(),
        }
    }

    fn window_of(&self, now_secs: f64) -> u64 {
        if now_secs.is_finite() && now_secs > 0.0 {
            (now_secs as u64) / self.window_secs
        } else {
            0
        }
    }

    fn tag(&self, window: u64) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(CONTEXT);
        ctx.update(&[0]);
        ctx.update(self.tenant.as_bytes());
        ctx.update(&[0]);
        ctx.update(&window.to_be_bytes());
        ctx.sign()
    }

    /// The nonce of the window `now_secs` falls in.
    pub fn mint(&self, now_secs: f64) -> String {
        let window = self.window_of(now_secs);
        let mut raw = [0u8; NONCE_BYTES];
        raw[..8].copy_from_slice(&window.to_be_bytes());
        raw[8..].copy_from_slice(&self.tag(window).as_ref()[..TAG_BYTES]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Checks a nonce a proof carried.
    pub fn check(&self, nonce: &str, now_secs: f64) -> NonceCheck {
        let Ok(raw) = URL_SAFE_NO_PAD.decode(nonce) else {
            return NonceCheck::Forged;
        };
        let Ok(raw) = <[u8; NONCE_BYTES]>::try_from(raw.as_slice()) else {
            return NonceCheck::Forged;
        };
        let mut window = [0u8; 8];
        window.copy_from_slice(&raw[..8]);
        let window = u64::from_be_bytes(window);
        let expected = self.tag(window);
        if constant_time::verify_slices_are_equal(&expected.as_ref()[..TAG_BYTES], &raw[8..])
            .is_err()
        {
            return NonceCheck::Forged;
        }
        let current = self.window_of(now_secs);
        if window == current || window.checked_add(1) == Some(current) {
            NonceCheck::Valid
        } else if window < current {
            NonceCheck::Stale
        } else {
            // A valid MAC for a window not yet begun: never minted by a replica whose
            // clock is right, so it is treated like a forgery.
            NonceCheck::Forged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: &[u8], tenant: &str) -> NonceKey {
        NonceKey::new(secret, Duration::from_secs(60), tenant)
    }

    #[test]
    fn valid_for_its_window_and_the_next() {
        let k = key(&[7; 32], "t");
        let minted_at = 1_000_000.0 * 60.0 + 59.5;
        let n = k.mint(minted_at);
        assert_eq!(n.len(), 32);
        assert_eq!(k.check(&n, minted_at), NonceCheck::Valid);
        assert_eq!(
            k.check(&n, minted_at + 0.5),
            NonceCheck::Valid,
            "next window"
        );
        assert_eq!(k.check(&n, minted_at + 60.4), NonceCheck::Valid);
        assert_eq!(
            k.check(&n, minted_at + 60.5),
            NonceCheck::Stale,
            "two windows on"
        );
        assert_eq!(k.check(&n, minted_at + 6000.0), NonceCheck::Stale);
        assert_eq!(
            k.check(&n, minted_at - 60.0),
            NonceCheck::Forged,
            "from the future"
        );
    }

    #[test]
    fn a_nonce_is_the_same_for_the_whole_window() {
        let k = key(&[7; 32], "t");
        assert_eq!(k.mint(120.0), k.mint(179.9));
        assert_ne!(k.mint(120.0), k.mint(180.0));
    }

    #[test]
    fn forged_nonces() {
        let k = key(&[7; 32], "t");
        let now = 5_000_000.0;
        let n = k.mint(now);
        let other_secret = key(&[8; 32], "t").mint(now);
        let other_tenant = key(&[7; 32], "u").mint(now);
        let mut flipped = URL_SAFE_NO_PAD.decode(&n).expect("b64");
        flipped[NONCE_BYTES - 1] ^= 1;
        let flipped = URL_SAFE_NO_PAD.encode(flipped);
        let mut moved = URL_SAFE_NO_PAD.decode(&n).expect("b64");
        moved[7] ^= 1;
        let moved = URL_SAFE_NO_PAD.encode(moved);
        for bad in [
            other_secret.as_str(),
            other_tenant.as_str(),
            flipped.as_str(),
            moved.as_str(),
            "",
            "not base64!",
            &n[..31],
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert_eq!(k.check(bad, now), NonceCheck::Forged, "{bad}");
        }
        assert_eq!(k.check(&format!("{n}A"), now), NonceCheck::Forged);
    }

    #[test]
    fn debug_hides_the_key() {
        let shown = format!("{:?}", key(b"super-secret-value-of-32-bytes!!", "t"));
        assert!(!shown.contains("super"), "{shown}");
    }
}
