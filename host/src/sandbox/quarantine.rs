//! Fault accounting of one function use, and its quarantine.
//!
//! A use that faults `after` times in a row is quarantined: for the quarantine's period no call
//! reaches the function (callers get [`Admission::Quarantined`] and apply their pipeline's
//! policy). When the period ends, the next call is a trial: success ends the quarantine and
//! resets every count; a fault quarantines the use again at once, for twice as long (up to
//! [`QuarantineConfig::LONGEST`]). A new version of the function ([`FaultRecord::new_version`])
//! ends a quarantine too.
//!
//! The record is shared through the use's [`super::UseHandle`], so the pipeline can see a
//! quarantine before it takes input (the `hold` policy) and the gateway can report it.
//!
//! Faults are recorded as [`Fault`] values: counted by [`FaultKind`], and whether one counts
//! toward quarantine is [`Fault::counts_toward_quarantine`]'s decision — the record never reads a
//! fault's words.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::fault::{Fault, FaultKind};
use crate::config::QuarantineConfig;

/// May a call go ahead?
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Yes.
    Admitted,
    /// No: the use is quarantined for this much longer.
    Quarantined(Duration),
}

/// The fault history of one use of a function in a pipeline.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    config: QuarantineConfig,
    /// The version running, `<id>@<digest prefix>`.
    pub function: String,
    /// Faults in a row that count toward quarantine (reset by a success).
    pub consecutive_faults: u32,
    /// Faults since the process started.
    pub faults: u64,
    /// Those faults by kind.
    pub faults_by_kind: BTreeMap<FaultKind, u64>,
    /// Quarantines since the process started.
    pub quarantines: u64,
    /// Quarantines in a row without a success between them.
    streak: u32,
    /// End of the current quarantine.
    until: Option<Instant>,
    /// The last fault.
    pub last_fault: Option<Fault>,
    /// How the running version has done since it was taken up.
    pub version_calls: VersionCalls,
}

/// How one version of a function has done in one use since it was taken up: what the fleet's
/// health gates read during a probation.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VersionCalls {
    /// Calls made (each a batch, a message or a window's fold).
    pub calls: u64,
    /// Those that faulted.
    pub faults: u64,
    /// The longest call.
    pub slowest: Duration,
}

impl FaultRecord {
    /// A clean record for `function`.
    pub fn new(function: String, config: QuarantineConfig) -> Self {
        Self {
            config,
            function,
            consecutive_faults: 0,
            faults: 0,
            faults_by_kind: BTreeMap::new(),
            quarantines: 0,
            streak: 0,
            until: None,
            last_fault: None,
            version_calls: VersionCalls::default(),
        }
    }

    /// Counts a call of the running version that took `took` (faulted or not).
    pub fn called(&mut self, took: Duration) {
        self.version_calls.calls += 1;
        self.version_calls.slowest = self.version_calls.slowest.max(took);
    }

    /// Whether a call may start at `now`.
    pub fn admit(&self, now: Instant) -> Admission {
        match self.until {
            Some(until) if until > now => Admission::Quarantined(until - now),
            _ => Admission::Admitted,
        }
    }

    /// The quarantine left at `now`, if any.
    pub fn quarantined_for(&self, now: Instant) -> Option<Duration> {
        match self.admit(now) {
            Admission::Quarantined(left) => Some(left),
            Admission::Admitted => None,
        }
    }

    /// Records a successful call: the fault streak and any quarantine end.
    pub fn success(&mut self) {
        self.consecutive_faults = 0;
        self.streak = 0;
        self.until = None;
    }

    /// Records a fault at `now`. Returns the quarantine period when this fault starts one.
    pub fn fault(&mut self, now: Instant, fault: &Fault) -> Option<Duration> {
        self.faults += 1;
        self.version_calls.faults += 1;
        *self.faults_by_kind.entry(fault.kind()).or_default() += 1;
        self.last_fault = Some(fault.clone());
        if !fault.counts_toward_quarantine() {
            return None;
        }
        self.consecutive_faults = self.consecutive_faults.saturating_add(1);
        if self.consecutive_faults < self.config.after {
            return None;
        }
        self.streak = self.streak.saturating_add(1);
        self.quarantines += 1;
        let period = self.config.period(self.streak);
        self.until = Some(now + period);
        Some(period)
    }

    /// A new version replaced the faulting one: its record starts clean (totals stay).
    pub fn new_version(&mut self, function: String) {
        self.function = function;
        self.version_calls = VersionCalls::default();
        self.success();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: QuarantineConfig = QuarantineConfig { after: 3, first: Duration::from_secs(10) };

    fn panic(message: &str) -> Fault {
        Fault::Panic { message: message.to_owned() }
    }

    const TIMEOUT: Fault = Fault::Timeout { limit: Duration::from_millis(100) };

    #[test]
    fn quarantines_after_consecutive_faults_and_doubles_on_a_failed_trial() {
        let t0 = Instant::now();
        let mut record = FaultRecord::new("f@1".into(), CONFIG);
        assert_eq!(record.fault(t0, &panic("a")), None);
        assert_eq!(record.fault(t0, &TIMEOUT), None);
        assert_eq!(record.fault(t0, &panic("c")), Some(Duration::from_secs(10)));
        assert_eq!(record.admit(t0 + Duration::from_secs(4)), Admission::Quarantined(Duration::from_secs(6)));
        // The trial after the period faults: quarantined again at once, for twice as long.
        let trial = t0 + Duration::from_secs(10);
        assert_eq!(record.admit(trial), Admission::Admitted);
        assert_eq!(record.fault(trial, &panic("d")), Some(Duration::from_secs(20)));
        assert_eq!((record.faults, record.quarantines, record.last_fault.clone()), (4, 2, Some(panic("d"))));
        // A successful trial ends it all.
        let later = trial + Duration::from_secs(20);
        record.success();
        assert_eq!(record.admit(later), Admission::Admitted);
        assert_eq!(record.fault(later, &panic("e")), None, "the streak starts again from zero");
    }

    #[test]
    fn faults_of_every_kind_make_one_streak_and_are_counted_by_kind() {
        let t0 = Instant::now();
        let mut record = FaultRecord::new("f@1".into(), CONFIG);
        let host = Fault::Host { description: "state store failed during a guest call: disk".into() };
        let malformed = Fault::MalformedResult { what: super::super::Malformed::AggregateName { name: String::new() } };
        assert_eq!(record.fault(t0, &TIMEOUT), None);
        assert_eq!(record.fault(t0, &host), None);
        assert_eq!(record.fault(t0, &malformed), Some(Duration::from_secs(10)), "three kinds, one streak");
        let trial = t0 + Duration::from_secs(10);
        assert_eq!(record.fault(trial, &TIMEOUT), Some(Duration::from_secs(20)), "a failed trial, of any kind");
        let by_kind: Vec<(FaultKind, u64)> = record.faults_by_kind.iter().map(|(k, n)| (*k, *n)).collect();
        assert_eq!(by_kind, [(FaultKind::Timeout, 2), (FaultKind::Host, 1), (FaultKind::MalformedResult, 1)]);
        assert_eq!((record.faults, record.quarantines), (4, 2));
        assert_eq!(record.last_fault.as_ref().map(Fault::kind), Some(FaultKind::Timeout));
    }

    #[test]
    fn a_success_between_faults_resets_the_count() {
        let t0 = Instant::now();
        let mut record = FaultRecord::new("f@1".into(), CONFIG);
        for _ in 0..10 {
            assert_eq!(record.fault(t0, &panic("x")), None);
            assert_eq!(record.fault(t0, &TIMEOUT), None);
            record.success();
        }
        assert_eq!(record.quarantines, 0);
        assert_eq!(record.faults, 20, "the totals stay");
    }

    #[test]
    fn a_new_version_lifts_the_quarantine() {
        let t0 = Instant::now();
        let mut record = FaultRecord::new("f@1".into(), QuarantineConfig { after: 1, ..CONFIG });
        assert!(record.fault(t0, &panic("x")).is_some());
        record.new_version("f@2".into());
        assert_eq!(record.admit(t0), Admission::Admitted);
        assert_eq!(record.function, "f@2");
    }

    #[test]
    fn periods_double_up_to_an_hour() {
        let config = QuarantineConfig { after: 1, first: Duration::from_secs(60) };
        let periods: Vec<u64> = (1..=8).map(|n| config.period(n).as_secs()).collect();
        assert_eq!(periods, [60, 120, 240, 480, 960, 1920, 3600, 3600]);
        assert_eq!(config.period(u32::MAX), QuarantineConfig::LONGEST);
        let long = QuarantineConfig { after: 1, first: Duration::from_secs(7200) };
        assert_eq!(long.period(3), Duration::from_secs(7200), "a first period above an hour is kept");
    }
}
