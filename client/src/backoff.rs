//! Jittered exponential backoff between retries.
//!
//! The delay before retry *n* is `min(initial · 2ⁿ, max)` scaled by a random
//! factor in `[0.5, 1.5)`, so clients that failed together do not retry
//! together.

use std::time::Duration;

/// The delay sequence of one request's retries.
///
/// Invariants:
/// - `initial <= base <= max`;
/// - every delay lies in `[base / 2, base · 3 / 2)` for the current `base`.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Backoff {
        assert!(initial <= max, "backoff initial {initial:?} above max {max:?}");
        Backoff { base: initial, max }
    }

    /// The next delay, jittered with `unit` (uniform in `[0, 1)`), and
    /// doubles the base for the one after.
    pub(crate) fn next_delay_with(&mut self, unit: f64) -> Duration {
        assert!((0.0..1.0).contains(&unit), "jitter unit {unit} outside [0, 1)");
        let delay = self.base.mul_f64(0.5 + unit);
        self.base = self.base.saturating_mul(2).min(self.max);
        delay
    }

    /// The next delay with random jitter.
    pub(crate) fn next_delay(&mut self) -> Duration {
        self.next_delay_with(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_within_jitter_bounds() {
        let initial = Duration::from_millis(20);
        let max = Duration::from_secs(1);
        for unit in [0.0, 0.25, 0.5, 0.999_999] {
            let mut backoff = Backoff::new(initial, max);
            let mut base = initial;
            for _ in 0..12 {
                let delay = backoff.next_delay_with(unit);
                assert!(delay >= base / 2, "{delay:?} below half of {base:?}");
                assert!(delay < base * 3 / 2, "{delay:?} above 1.5x {base:?}");
                base = (base * 2).min(max);
            }
            assert_eq!(base, max);
        }
    }

    #[test]
    fn random_jitter_stays_in_bounds() {
        let mut backoff = Backoff::new(Duration::from_millis(20), Duration::from_secs(1));
        for _ in 0..100 {
            let delay = backoff.next_delay();
            assert!(delay >= Duration::from_millis(10), "{delay:?}");
            assert!(delay < Duration::from_millis(1500), "{delay:?}");
        }
    }
}
