//! The health gates, judged: whether a candidate in shadow may replace the running version,
//! and whether a version on probation has shown enough to be committed, must be rolled back,
//! or has more to show. Pure: the agent feeds it what each use of the function reported.
//!
//! A candidate fails as soon as the outcome is certain: more faults than `max_faulted_ppm`
//! allows over its batches (`shadow_batches` in shadow, `probation_batches` on probation); one
//! call slower than `max_call_micros`; on probation, a use quarantined; in shadow, a candidate
//! that does not start. It passes once every use of it made its batches without failing — and,
//! in shadow, with at most `max_divergent_ppm` of the readings compared differing from the
//! running version's beyond the tolerance.

use std::time::Duration;

use weir_fleet::HealthGates;

use crate::sandbox::{ShadowReport, VersionCalls};

/// What one use of the function did since it took the version up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UseProgress {
    /// `<pipeline>/<use>`.
    pub name: String,
    /// Whether it runs the version under judgement yet (a use takes a staged version up at
    /// its next call).
    pub taken_up: bool,
    /// Its calls.
    pub calls: VersionCalls,
    /// Whether it is quarantined now.
    pub quarantined: bool,
}

/// The verdict.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Judgement {
    /// Every use passed.
    Passed,
    /// More calls are needed; how far the slowest use is.
    Waiting { calls: u64, needed: u64 },
    /// A gate failed: why.
    Failed(String),
}

/// Judges a function's probation over its uses.
pub fn probation(gates: &HealthGates, uses: &[UseProgress]) -> Judgement {
    let needed = u64::from(gates.probation_batches);
    let allowed_faults = u64::from(gates.max_faulted_ppm).saturating_mul(needed.max(1)) / 1_000_000;
    let slowest_allowed = Duration::from_micros(gates.max_call_micros);
    let mut fewest = u64::MAX;
    for used in uses {
        if !used.taken_up {
            fewest = 0;
            continue;
        }
        let calls = &used.calls;
        if calls.faults > allowed_faults {
            return Judgement::Failed(format!(
                "{} fault(s) in {} call(s) in {} ({} allowed in {needed})",
                calls.faults, calls.calls, used.name, allowed_faults
            ));
        }
        if calls.slowest > slowest_allowed {
            return Judgement::Failed(format!(
                "a call took {} µs in {} (at most {} µs allowed)",
                calls.slowest.as_micros(),
                used.name,
                gates.max_call_micros
            ));
        }
        if used.quarantined {
            return Judgement::Failed(format!("quarantined in {}", used.name));
        }
        fewest = fewest.min(calls.calls);
    }
    if fewest >= needed { Judgement::Passed } else { Judgement::Waiting { calls: fewest, needed } }
}

/// What one use's shadow of the candidate did.
#[derive(Clone, Debug, PartialEq)]
pub struct ShadowProgress {
    /// `<pipeline>/<use>`.
    pub name: String,
    /// Its report.
    pub report: ShadowReport,
}

/// Judges a candidate's shadow run over its uses.
pub fn shadow(gates: &HealthGates, uses: &[ShadowProgress]) -> Judgement {
    let needed = u64::from(gates.shadow_batches);
    let allowed_faults = u64::from(gates.max_faulted_ppm).saturating_mul(needed.max(1)) / 1_000_000;
    let slowest_allowed = Duration::from_micros(gates.max_call_micros);
    let mut fewest = u64::MAX;
    let (mut compared, mut divergent) = (0u64, 0u64);
    for used in uses {
        let report = &used.report;
        if let Some(why) = &report.not_started {
            return Judgement::Failed(format!("does not start in {}: {why}", used.name));
        }
        if report.faults > allowed_faults {
            return Judgement::Failed(format!(
                "{} fault(s) in {} shadow batch(es) in {} ({allowed_faults} allowed in {needed})",
                report.faults, report.inputs, used.name
            ));
        }
        if report.slowest > slowest_allowed {
            return Judgement::Failed(format!(
                "a shadow call took {} µs in {} (at most {} µs allowed)",
                report.slowest.as_micros(),
                used.name,
                gates.max_call_micros
            ));
        }
        fewest = fewest.min(report.inputs);
        compared += report.compared;
        divergent += report.divergent;
    }
    if fewest < needed {
        return Judgement::Waiting { calls: if fewest == u64::MAX { 0 } else { fewest }, needed };
    }
    let allowed = u128::from(gates.max_divergent_ppm) * u128::from(compared);
    if u128::from(divergent) * 1_000_000 > allowed {
        return Judgement::Failed(format!(
            "{divergent} of {compared} readings differ from the running version's by more than {} (at most {} ppm allowed)",
            gates.tolerance, gates.max_divergent_ppm
        ));
    }
    Judgement::Passed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gates(max_faulted_ppm: u32, probation_batches: u32) -> HealthGates {
        HealthGates { max_faulted_ppm, probation_batches, max_call_micros: 10_000, ..HealthGates::default() }
    }

    fn progress(calls: u64, faults: u64, slowest_micros: u64) -> UseProgress {
        UseProgress {
            name: "p/u".into(),
            taken_up: true,
            calls: VersionCalls { calls, faults, slowest: Duration::from_micros(slowest_micros) },
            quarantined: false,
        }
    }

    #[test]
    fn passes_once_every_use_made_its_calls() {
        let g = gates(0, 10);
        assert_eq!(
            probation(&g, &[progress(10, 0, 5), progress(4, 0, 5)]),
            Judgement::Waiting { calls: 4, needed: 10 }
        );
        assert_eq!(probation(&g, &[progress(10, 0, 5), progress(12, 0, 5)]), Judgement::Passed);
    }

    #[test]
    fn a_use_that_has_not_taken_the_version_up_holds_the_verdict() {
        let mut idle = progress(0, 0, 0);
        idle.taken_up = false;
        assert_eq!(probation(&gates(0, 1), &[progress(5, 0, 1), idle]), Judgement::Waiting { calls: 0, needed: 1 });
    }

    #[test]
    fn fails_at_the_first_fault_beyond_the_share_allowed() {
        // 100 000 ppm of 20 calls: two faults allowed.
        let g = gates(100_000, 20);
        assert_eq!(probation(&g, &[progress(3, 2, 5)]), Judgement::Waiting { calls: 3, needed: 20 });
        assert!(matches!(probation(&g, &[progress(3, 3, 5)]), Judgement::Failed(why) if why.contains("3 fault(s)")));
        // None allowed: the first fails it.
        assert!(matches!(probation(&gates(0, 20), &[progress(1, 1, 5)]), Judgement::Failed(_)));
    }

    fn shadowed(inputs: u64, faults: u64, compared: u64, divergent: u64) -> ShadowProgress {
        ShadowProgress {
            name: "p/u".into(),
            report: ShadowReport {
                inputs,
                faults,
                slowest: Duration::from_micros(5),
                compared,
                divergent,
                not_started: None,
            },
        }
    }

    #[test]
    fn a_shadow_passes_with_its_batches_and_little_enough_divergence() {
        let mut g = gates(0, 5);
        g.shadow_batches = 10;
        g.max_divergent_ppm = 10_000;
        assert_eq!(shadow(&g, &[shadowed(4, 0, 40, 0)]), Judgement::Waiting { calls: 4, needed: 10 });
        assert_eq!(shadow(&g, &[shadowed(10, 0, 200, 2)]), Judgement::Passed, "1 % allowed, 1 % seen");
        assert!(matches!(shadow(&g, &[shadowed(10, 0, 200, 3)]), Judgement::Failed(why) if why.contains("3 of 200")));
        // Divergence is judged once the batches are in, faults at once.
        assert_eq!(shadow(&g, &[shadowed(9, 0, 10, 10)]), Judgement::Waiting { calls: 9, needed: 10 });
        assert!(matches!(shadow(&g, &[shadowed(1, 1, 0, 0)]), Judgement::Failed(why) if why.contains("fault")));
    }

    #[test]
    fn a_candidate_that_does_not_start_fails_its_shadow() {
        let mut progress = shadowed(0, 0, 0, 0);
        progress.report.not_started = Some("init refused".into());
        assert!(matches!(shadow(&gates(0, 1), &[progress]), Judgement::Failed(why) if why.contains("init refused")));
    }

    #[test]
    fn fails_on_a_slow_call_or_a_quarantine() {
        let g = gates(0, 5);
        assert!(matches!(probation(&g, &[progress(1, 0, 10_001)]), Judgement::Failed(why) if why.contains("µs")));
        let mut quarantined = progress(1, 0, 1);
        quarantined.quarantined = true;
        assert!(matches!(probation(&g, &[quarantined]), Judgement::Failed(why) if why.contains("quarantined")));
    }
}
