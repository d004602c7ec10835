//! When a device is next sampled, on the monotonic clock.
//!
//! Ticks lie on a grid `start + k·interval`. After a stall — a slow bus, a full pipeline, a
//! suspended machine — the ticks that passed are **skipped** and counted, not made up in a burst:
//! a burst would give samples that all describe the same moment. Wall-clock steps (NTP, a
//! manual `date`) never move the grid.
//!
//! Pure: the current instant comes in as a parameter.

use std::time::{Duration, Instant};

/// One device's ticks.
#[derive(Clone, Debug)]
pub struct Schedule {
    interval: Duration,
    next: Instant,
}

impl Schedule {
    /// A schedule whose first tick is `first`.
    pub fn new(first: Instant, interval: Duration) -> Self {
        Self { interval, next: first }
    }

    /// The next tick.
    pub fn due(&self) -> Instant {
        self.next
    }

    /// Moves past the tick just served, at `now`, to the first tick of the grid after `now`;
    /// returns how many ticks were skipped on the way.
    pub fn advance(&mut self, now: Instant) -> u64 {
        self.next += self.interval;
        if self.next > now {
            return 0;
        }
        let behind = now.duration_since(self.next).as_nanos();
        let skipped = behind / self.interval.as_nanos() + 1;
        let skipped = u32::try_from(skipped).unwrap_or(u32::MAX);
        self.next += self.interval * skipped;
        u64::from(skipped)
    }

    /// Waits `delay` before the next attempt: the first tick of the grid at or after
    /// `now + delay` (the ticks waited out are not skipped ones: they were given up on purpose).
    pub fn postpone(&mut self, now: Instant, delay: Duration) {
        let target = now + delay;
        while self.next < target {
            let behind = target.duration_since(self.next).as_nanos();
            let steps = u32::try_from(behind.div_ceil(self.interval.as_nanos())).unwrap_or(u32::MAX).max(1);
            self.next += self.interval * steps;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn ticks_follow_the_grid_and_a_stall_skips_instead_of_bursting() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, SECOND);
        assert_eq!(schedule.due(), start);
        // Served 10 ms late: the next tick stays on the grid.
        assert_eq!(schedule.advance(start + Duration::from_millis(10)), 0);
        assert_eq!(schedule.due(), start + SECOND);
        // A stall of 3.5 s after the tick at 1 s: the ticks at 2, 3 and 4 s passed.
        assert_eq!(schedule.advance(start + Duration::from_millis(4_500)), 3);
        assert_eq!(schedule.due(), start + 5 * SECOND);
        // Exactly on a tick: that tick has passed too.
        assert_eq!(schedule.advance(start + 6 * SECOND), 1);
        assert_eq!(schedule.due(), start + 7 * SECOND);
    }

    #[test]
    fn a_postponement_lands_on_the_grid() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start, SECOND);
        schedule.postpone(start, Duration::from_millis(2_500));
        assert_eq!(schedule.due(), start + 3 * SECOND);
        schedule.postpone(start + 3 * SECOND, Duration::ZERO);
        assert_eq!(schedule.due(), start + 3 * SECOND, "no wait: the due tick stands");
    }
}
