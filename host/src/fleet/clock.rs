//! Whether the gateway's wall clock can be trusted, as `[fleet] clock_synced` says to tell.
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
        Ok(since) if clock_synced(how) => Clock::Synced(since.as_secs()),
        _ => Clock::NotSynced,
    }
}

/// Whether `how` says the wall clock is synced now.
pub fn clock_synced(how: &ClockSynced) -> bool {
    match how {
        ClockSynced::Always => true,
        ClockSynced::Kernel => kernel_synced(),
        ClockSynced::WhenFileExists(path) => path.exists(),
    }
}

/// Seconds since the epoch by the wall clock, synced or not (0 before 1970): for timestamps in
/// status, never for decisions.
pub fn wall_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The kernel's view: synced unless `adjtimex` reports `TIME_ERROR` or `STA_UNSYNC` (the state
/// the kernel starts in and an NTP daemon clears).
fn kernel_synced() -> bool {
    // SAFETY: `timex` is plain data that zeroes are valid for; `modes = 0` makes `adjtimex` only
    // read the kernel's clock state into it, changing nothing.
    #[allow(unsafe_code)]
    let (state, status) = unsafe {
        let mut timex: libc::timex = std::mem::zeroed();
        let state = libc::adjtimex(&mut timex);
        (state, timex.status)
    };
    state != libc::TIME_ERROR && state != -1 && status & libc::STA_UNSYNC == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_says_when_the_clock_is_synced() {
        let dir = tempfile::tempdir().expect("temp dir");
        let marker = dir.path().join("synchronized");
        let how = ClockSynced::WhenFileExists(marker.clone());
        assert_eq!(now(&how), Clock::NotSynced);
        std::fs::write(&marker, b"").expect("write");
        assert!(matches!(now(&how), Clock::Synced(t) if t > 1_700_000_000));
    }

    #[test]
    fn always_is_synced_and_the_kernel_answers() {
        assert!(matches!(now(&ClockSynced::Always), Clock::Synced(_)));
        // Whether this machine is synced is its own business; the call must answer either way.
        let _ = now(&ClockSynced::Kernel);
    }
}
