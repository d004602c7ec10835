//! Reconnect delays: capped exponential backoff with jitter.
//!
//! The n-th consecutive failure waits a random time in `[d/2, d]`, `d = min(max, min × 2ⁿ)`. The
//! jitter keeps a fleet of gateways that lost the same broker from reconnecting in lock-step.
//! Pure: the random source is a parameter.

use std::time::Duration;

use rand::Rng;

use crate::config::Backoff;

/// Delays for one connection's consecutive failures.
#[derive(Clone, Debug)]
pub struct Retry {
    policy: Backoff,
    failures: u32,
}

impl Retry {
    /// No failures yet.
    pub fn new(policy: Backoff) -> Self {
        Self { policy, failures: 0 }
    }

    /// The connection works again: the next failure starts from the minimum delay.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The delay before the next attempt, counting one more failure.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.policy.min.saturating_mul(1 << self.failures.min(20)).min(self.policy.max);
        self.failures = self.failures.saturating_add(1);
        let low = ceiling / 2;
        low + rng.random_range(Duration::ZERO..=ceiling - low)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_with_jitter_and_reset() {
        let policy = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(2) };
        let mut retry = Retry::new(policy);
        let mut rng = StdRng::seed_from_u64(7);
        let ceilings = [100, 200, 400, 800, 1600, 2000, 2000];
        for ceiling in ceilings {
            let delay = retry.next_delay(&mut rng);
            let ceiling = Duration::from_millis(ceiling);
            assert!(delay >= ceiling / 2 && delay <= ceiling, "{delay:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
        }
        assert_eq!(retry.failures(), 7);
        retry.reset();
        assert!(retry.next_delay(&mut rng) <= Duration::from_millis(100));
    }

    #[test]
    fn many_failures_never_overflow() {
        let mut retry = Retry::new(Backoff { min: Duration::from_secs(1), max: Duration::from_secs(60) });
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..1000 {
            assert!(retry.next_delay(&mut rng) <= Duration::from_secs(60));
        }
    }
}
