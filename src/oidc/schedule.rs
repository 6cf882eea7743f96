//! The refresh schedule as a pure function: the period with a little jitter after a
//! success; exponential backoff from 1 s, doubling, capped at 5 min and at the period,
//! with jitter, after failures.

use std::time::Duration;

/// First retry delay after a failure.
pub const MIN_BACKOFF: Duration = Duration::from_secs(1);
/// Longest retry delay.
pub const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// Delay until the next refresh. `jitter` is uniform in `[0, 1)`; successes land in
/// `[0.9, 1.0) x interval` so that replicas started together spread out, failures in
/// `[0.5, 1.0) x backoff` so that a recovering provider is not hit in lock-step.
pub fn next_refresh(
    success: bool,
    consecutive_failures: u32,
    interval: Duration,
    jitter: f64,
) -> Duration {
    // `clamp` keeps a NaN, which `mul_f64` would panic on.
    let jitter = if jitter.is_nan() {
        0.0
    } else {
        jitter.clamp(0.0, 1.0)
    };
    if success {
        return scale(interval, 1.0 - 0.1 * jitter);
    }
    let exponent = consecutive_failures.saturating_sub(1).min(20);
    let backoff = MIN_BACKOFF
        .saturating_mul(1u32 << exponent)
        .min(MAX_BACKOFF)
        .min(interval);
    scale(backoff, 0.5 + 0.5 * (1.0 - jitter))
}

/// `d` times `factor` (in `[0, 1]`), never more than `d`: `mul_f64` rounds through
/// `f64`, which can overshoot (and panic) near `Duration::MAX`.
fn scale(d: Duration, factor: f64) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor)
        .unwrap_or(d)
        .min(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H12: Duration = Duration::from_secs(12 * 3600);

    #[test]
    fn success_waits_about_the_interval() {
        assert_eq!(next_refresh(true, 0, H12, 0.0), H12);
        let d = next_refresh(true, 0, H12, 0.999);
        assert!(d < H12 && d >= H12.mul_f64(0.9));
    }

    #[test]
    fn failures_back_off_exponentially_with_caps() {
        let no_jitter = |n| next_refresh(false, n, H12, 0.0);
        assert_eq!(no_jitter(1), Duration::from_secs(1));
        assert_eq!(no_jitter(2), Duration::from_secs(2));
        assert_eq!(no_jitter(3), Duration::from_secs(4));
        assert_eq!(no_jitter(9), Duration::from_secs(256));
        assert_eq!(no_jitter(10), MAX_BACKOFF);
        assert_eq!(no_jitter(u32::MAX), MAX_BACKOFF);
        assert_eq!(
            next_refresh(false, 10, Duration::from_secs(20), 0.0),
            Duration::from_secs(20)
        );
        assert_eq!(next_refresh(false, 1, H12, 1.0), Duration::from_millis(500));
    }

    #[test]
    fn any_interval_and_jitter_is_safe() {
        for jitter in [f64::NAN, f64::INFINITY, -1.0, 0.5] {
            for interval in [Duration::ZERO, Duration::MAX, H12] {
                assert!(next_refresh(true, 0, interval, jitter) <= interval);
                assert!(next_refresh(false, 3, interval, jitter) <= interval);
            }
        }
    }
}
