//! Whether the wall clock is synced, told the way `[fleet] clock_synced` says: the kernel's NTP
//! status, a file that exists once it is, or always (a battery-backed real-time clock).
//!
//! Many gateways boot without a real-time clock and start in 1970 or at the last shutdown's
//! time until NTP corrects them. The fleet agent trusts document expiry only on a synced clock;
//! the status page shows it.

use crate::config::ClockSynced;

/// Whether `how` says the wall clock is synced now.
pub fn is_synced(how: &ClockSynced) -> bool {
    match how {
        ClockSynced::Always => true,
        ClockSynced::Kernel => kernel_synced(),
        ClockSynced::WhenFileExists(path) => path.exists(),
    }
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
        assert!(!is_synced(&how));
        std::fs::write(&marker, b"").expect("write");
        assert!(is_synced(&how));
    }

    #[test]
    fn always_is_synced_and_the_kernel_answers() {
        assert!(is_synced(&ClockSynced::Always));
        // Whether this machine is synced is its own business; the call must answer either way.
        let _ = is_synced(&ClockSynced::Kernel);
    }
}
