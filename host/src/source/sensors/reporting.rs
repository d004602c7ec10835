//! Which of a device's quantities a sample reports: all of them, or with `on_change` only those
//! that moved by at least that much since they were last reported, or whose `heartbeat` passed
//! (so a quiet quantity still shows it is alive).
//!
//! Pure: the current instant comes in as a parameter.

use std::collections::HashMap;
use std::time::Instant;

use crate::config::Reporting;

/// One device's last reported value and time, per quantity.
#[derive(Debug)]
pub struct Reported {
    policy: Reporting,
    last: HashMap<&'static str, (f64, Instant)>,
}

impl Reported {
    /// Nothing reported yet.
    pub fn new(policy: Reporting) -> Self {
        Self { policy, last: HashMap::new() }
    }

    /// Whether `quantity` at `value` is reported at `now` (and if so, it is noted as reported).
    pub fn report(&mut self, quantity: &'static str, value: f64, now: Instant) -> bool {
        let Some(threshold) = self.policy.on_change else { return true };
        let quiet = self.last.get(quantity).is_some_and(|(last, when)| {
            (value - last).abs() < threshold && now.duration_since(*when) < self.policy.heartbeat
        });
        if !quiet {
            self.last.insert(quantity, (value, now));
        }
        !quiet
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn without_on_change_every_sample_is_reported() {
        let mut reported = Reported::new(Reporting { on_change: None, heartbeat: Duration::from_secs(60) });
        let now = Instant::now();
        assert!((0..3).all(|_| reported.report("t", 20.0, now)));
    }

    #[test]
    fn with_on_change_a_quantity_is_reported_when_it_moved_or_its_heartbeat_passed() {
        let policy = Reporting { on_change: Some(0.5), heartbeat: Duration::from_secs(60) };
        let mut reported = Reported::new(policy);
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(reported.report("t", 20.0, at(0)), "the first value");
        assert!(!reported.report("t", 20.4, at(1)), "moved less than 0.5");
        assert!(reported.report("h", 40.0, at(1)), "each quantity on its own");
        assert!(reported.report("t", 20.5, at(2)), "moved 0.5 from the last reported");
        assert!(!reported.report("t", 20.1, at(3)), "0.4 from 20.5, not from 20.4");
        assert!(reported.report("t", 20.1, at(62)), "the heartbeat passed");
        assert!(!reported.report("t", 20.1, at(63)), "the heartbeat starts again");
    }
}
