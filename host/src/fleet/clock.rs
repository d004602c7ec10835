//! The wall clock as the fleet agent reads it: trusted only when synced (see
//! `telemetry::clock`), as `[fleet] clock_synced` says to tell.
//!
//! Many gateways boot without a real-time clock and start in 1970 or at the last shutdown's
//! time until NTP corrects them. Fleet documents expire by the wall clock, so until it is synced
//! the agent accepts no newer revision and keeps running what it runs (see `weir_fleet::accept`).

use std::time::{SystemTime, UNIX_EPOCH};

use weir_fleet::Clock;

use crate::config::ClockSynced;

/// The wall clock now, if `how` says it is synced.
pub fn now(how: &ClockSynced) -> Clock {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) if crate::telemetry::clock::is_synced(how) => Clock::Synced(since.as_secs()),
        _ => Clock::NotSynced,
    }
}

/// Seconds since the epoch by the wall clock, synced or not (0 before 1970): for timestamps in
/// status, never for decisions.
pub fn wall_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_time_is_given_only_when_the_clock_is_synced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let how = ClockSynced::WhenFileExists(dir.path().join("synchronized"));
        assert_eq!(now(&how), Clock::NotSynced);
        assert!(matches!(now(&ClockSynced::Always), Clock::Synced(t) if t > 1_700_000_000));
    }
}
