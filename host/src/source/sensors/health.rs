//! One device's health: what failed and how often, and what to do next — retry, initialise it
//! again, or wait before the next attempt.
//!
//! States (docs/sensors.md):
//! - `starting`: not yet sampled since the gateway started;
//! - `ok`: the last sample succeeded;
//! - `degraded`: the last sample failed (after its retries), or was stuck, or the device was
//!   initialised again and has not given a good sample since;
//! - `down`: initialising it failed; attempts continue with capped exponential backoff.
//!
//! Every failed attempt counts once under its [`FaultKind`]; a sample whose every attempt failed
//! counts once more as a failed sample. After `reinit_after` failed samples in a row the device
//! is initialised again (a part that browned out or was re-plugged lost its configuration).
//!
//! Pure: wall-clock time and randomness come in as parameters.

use std::time::Duration;

use rand::Rng;

use crate::backoff::Retry;
use crate::batch::Nanos;
use crate::config::{Backoff, HealthPolicy};
use crate::state::stats::SensorStatus;

/// What went wrong with one attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    /// The device did not acknowledge (absent, unpowered, wrong address).
    Nack,
    /// The bus failed (arbitration lost, overrun, a held line).
    Bus,
    /// Another I/O error (the kernel's "Remote I/O error" among them).
    Io,
    /// The device answered with something its driver refuses (wrong chip id, no conversion).
    Data,
    /// The values did not change for `stuck_after` samples.
    Stuck,
    /// A sample took longer than the device's interval (it was kept).
    Slow,
}

impl FaultKind {
    /// Its name in stats, metrics and logs.
    pub fn name(self) -> &'static str {
        match self {
            Self::Nack => "nack",
            Self::Bus => "bus",
            Self::Io => "io",
            Self::Data => "data",
            Self::Stuck => "stuck",
            Self::Slow => "slow",
        }
    }
}

/// A failed attempt: its kind and what the driver said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fault {
    /// What kind of failure.
    pub kind: FaultKind,
    /// The driver's or the bus's words.
    pub detail: String,
}

impl Fault {
    /// A fault of `kind`.
    pub fn new(kind: FaultKind, detail: impl Into<String>) -> Self {
        Self { kind, detail: detail.into() }
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.kind.name(), self.detail)
    }
}

/// What the bus thread does after a failed sample.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Sample again at the next tick.
    Continue,
    /// Initialise the device again before its next sample.
    Reinitialise,
}

/// One device's health.
#[derive(Debug)]
pub struct Health {
    policy: HealthPolicy,
    status: SensorStatus,
    initialised: bool,
    failures_in_a_row: u32,
    init_retry: Retry,
    last_values: Vec<f64>,
    repeats: u32,
}

impl Health {
    /// A device not yet initialised, sampled every `interval`; `status` names it.
    pub fn new(policy: HealthPolicy, interval: Duration, status: SensorStatus) -> Self {
        let backoff = Backoff { min: interval.min(policy.max_backoff), max: policy.max_backoff };
        let status = SensorStatus { state: "starting".to_owned(), ..status };
        Self {
            policy,
            status,
            initialised: false,
            failures_in_a_row: 0,
            init_retry: Retry::new(backoff),
            last_values: Vec::new(),
            repeats: 0,
        }
    }

    /// Its status now.
    pub fn status(&self) -> &SensorStatus {
        &self.status
    }

    /// True when the device must be initialised before it is sampled.
    pub fn needs_init(&self) -> bool {
        !self.initialised
    }

    fn enter(&mut self, state: &str, now: Nanos) {
        if self.status.state != state {
            self.status.state = state.to_owned();
            self.status.since = now;
        }
    }

    /// One attempt (at initialising or sampling) failed.
    pub fn attempt_failed(&mut self, fault: &Fault) {
        *self.status.faults.entry(fault.kind.name().to_owned()).or_insert(0) += 1;
        self.status.last_fault = Some(fault.to_string());
    }

    /// The device was initialised.
    pub fn initialised(&mut self, now: Nanos) {
        self.initialised = true;
        self.init_retry.reset();
        if self.status.state == "down" {
            self.enter("degraded", now);
        }
    }

    /// Initialising failed (the fault is counted): the device is down; returns how long to
    /// wait before the next attempt.
    pub fn init_failed(&mut self, fault: &Fault, now: Nanos, rng: &mut impl Rng) -> Duration {
        self.attempt_failed(fault);
        self.enter("down", now);
        self.init_retry.next_delay(rng)
    }

    /// A sample succeeded with `values`; a stuck sample counts as a failed one (its readings are
    /// kept) and says what to do next.
    pub fn sampled(&mut self, values: &[f64], now: Nanos) -> AfterFailure {
        self.status.samples += 1;
        self.status.last_sample_at = Some(now);
        let same = values.len() == self.last_values.len()
            && values.iter().zip(&self.last_values).all(|(a, b)| a.to_bits() == b.to_bits());
        self.repeats = if same { self.repeats.saturating_add(1) } else { 1 };
        if !same {
            self.last_values = values.to_vec();
        }
        if let Some(limit) = self.policy.stuck_after
            && self.repeats >= limit
        {
            self.attempt_failed(&Fault::new(
                FaultKind::Stuck,
                format!("the same values for {} samples in a row", self.repeats),
            ));
            return self.failed_in_a_row(now);
        }
        self.failures_in_a_row = 0;
        self.enter("ok", now);
        AfterFailure::Continue
    }

    /// Every attempt at a sample failed (each already counted).
    pub fn sample_failed(&mut self, now: Nanos) -> AfterFailure {
        self.status.failed_samples += 1;
        self.failed_in_a_row(now)
    }

    fn failed_in_a_row(&mut self, now: Nanos) -> AfterFailure {
        self.failures_in_a_row += 1;
        self.enter("degraded", now);
        if self.failures_in_a_row >= self.policy.reinit_after {
            self.failures_in_a_row = 0;
            self.repeats = 0;
            self.initialised = false;
            self.status.reinits += 1;
            AfterFailure::Reinitialise
        } else {
            AfterFailure::Continue
        }
    }

    /// `ticks` passed while the bus was busy.
    pub fn skipped(&mut self, ticks: u64) {
        self.status.skipped_ticks += ticks;
    }

    /// A sample took `took`, longer than the interval (its readings are kept).
    pub fn slow(&mut self, took: Duration) {
        self.attempt_failed(&Fault::new(
            FaultKind::Slow,
            format!("a sample took {}", humantime::format_duration(took)),
        ));
    }

    /// Immediate retries allowed after a failed attempt.
    pub fn retries(&self) -> u32 {
        self.policy.retries
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    fn health(stuck_after: Option<u32>) -> Health {
        let policy = HealthPolicy { retries: 2, reinit_after: 3, stuck_after, max_backoff: Duration::from_secs(8) };
        Health::new(policy, Duration::from_secs(1), SensorStatus::default())
    }

    fn nack() -> Fault {
        Fault::new(FaultKind::Nack, "no acknowledge")
    }

    #[test]
    fn failures_degrade_then_reinitialise_and_a_good_sample_recovers() {
        let mut health = health(None);
        assert!(health.needs_init());
        health.initialised(1);
        assert_eq!(health.sampled(&[20.0], 2), AfterFailure::Continue);
        assert_eq!(health.status().state, "ok");
        for attempt in 0..3 {
            health.attempt_failed(&nack());
            let next = health.sample_failed(10 + attempt);
            assert_eq!(health.status().state, "degraded");
            assert_eq!(next == AfterFailure::Reinitialise, attempt == 2, "attempt {attempt}");
        }
        assert!(health.needs_init());
        assert_eq!(health.status().reinits, 1);
        assert_eq!(health.status().failed_samples, 3);
        assert_eq!(health.status().faults["nack"], 3);
        assert_eq!(health.status().since, 10, "degraded since the first failure");

        let mut rng = StdRng::seed_from_u64(1);
        let waits: Vec<Duration> = (0..5).map(|t| health.init_failed(&nack(), 20 + t, &mut rng)).collect();
        assert_eq!(health.status().state, "down");
        assert!(waits.windows(2).all(|w| w[1] >= w[0] / 2), "capped exponential backoff: {waits:?}");
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(8)));
        health.initialised(30);
        assert_eq!(health.status().state, "degraded", "initialised, no good sample yet");
        health.sampled(&[21.0], 31);
        assert_eq!((health.status().state.as_str(), health.status().since), ("ok", 31));
    }

    #[test]
    fn identical_samples_count_as_stuck_and_lead_to_reinitialisation() {
        let mut health = health(Some(4));
        health.initialised(0);
        let outcomes: Vec<AfterFailure> = (0..6).map(|t| health.sampled(&[1.0, 2.0], t)).collect();
        // Samples 4, 5 and 6 are the 4th, 5th and 6th identical ones: three stuck samples in a row.
        assert_eq!(outcomes[..3], [AfterFailure::Continue; 3]);
        assert_eq!(outcomes[3..], [AfterFailure::Continue, AfterFailure::Continue, AfterFailure::Reinitialise]);
        assert_eq!(health.status().faults["stuck"], 3);
        assert_eq!(health.status().samples, 6, "stuck samples are kept");
        health.initialised(7);
        assert_eq!(health.sampled(&[1.5, 2.0], 8), AfterFailure::Continue);
        assert_eq!(health.status().state, "ok");
    }
}
