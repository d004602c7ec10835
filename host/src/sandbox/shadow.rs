//! Shadow runs: a candidate version of a function running beside the version in service, on a
//! copy of every input, its output compared and never passed on.
//!
//! The fleet agent asks for one through the use's handle ([`super::UseHandle::begin_shadow`]);
//! the use starts the candidate at its next call, on its own thread, with the same params. The
//! candidate reads the use's committed state as it was, and its own writes stay with it: they
//! are never committed (a scratch namespace over the real one), and each batch gets the state
//! write budget anew. Its faults are its own: they count in the shadow's report, never toward
//! the use's quarantine, and its refusals or faults change nothing the pipeline sees.
//!
//! What is compared are the readings out: the same series and event time, in the same order,
//! with values at most the tolerance apart. A reading only one side has is divergent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::CompiledFunction;
use super::instance::FunctionInstance;
use crate::batch::Batch;

/// How a shadow has done so far.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShadowReport {
    /// Inputs it was given (batches for an operator, messages for a decoder).
    pub inputs: u64,
    /// Of those, the calls that faulted.
    pub faults: u64,
    /// The longest call.
    pub slowest: Duration,
    /// Readings compared (the larger side of each input's two outputs).
    pub compared: u64,
    /// Of those, the readings that differ beyond the tolerance or that only one side has.
    pub divergent: u64,
    /// Why the candidate could not start, if it could not (then nothing else counts).
    pub not_started: Option<String>,
}

/// What the agent staged: the candidate and the tolerance its outputs are compared with.
#[derive(Clone, Debug)]
pub(super) struct ShadowRequest {
    pub(super) candidate: Arc<CompiledFunction>,
    pub(super) tolerance: f64,
}

/// A running shadow, owned by the use's wrapper on the pipeline's thread.
#[derive(Debug)]
pub(super) struct Shadow {
    pub(super) instance: FunctionInstance,
    pub(super) candidate: Arc<CompiledFunction>,
    pub(super) tolerance: f64,
}

/// One shadow call's outcome, for the report.
pub(super) enum ShadowCall {
    /// It returned readings.
    Output(Batch),
    /// It refused the input (a domain error).
    Refused,
    /// It faulted.
    Faulted,
}

impl ShadowReport {
    /// Counts one input: the candidate's `call` (which took `took`) beside the running
    /// version's output, when it had one (a running version that failed is not the
    /// candidate's to answer for: only the candidate's faults count then).
    pub(super) fn count(&mut self, call: &ShadowCall, took: Duration, running: Option<&Batch>, tolerance: f64) {
        self.inputs += 1;
        self.slowest = self.slowest.max(took);
        match (call, running) {
            (ShadowCall::Faulted, _) => self.faults += 1,
            (_, None) => {}
            (ShadowCall::Refused, Some(running)) => {
                self.compared += running.len() as u64;
                self.divergent += running.len() as u64;
            }
            (ShadowCall::Output(candidate), Some(running)) => {
                let (compared, divergent) = compare(running, candidate, tolerance);
                self.compared += compared;
                self.divergent += divergent;
            }
        }
    }
}

/// Readings compared and those that differ, between two outputs of one input.
pub(super) fn compare(running: &Batch, candidate: &Batch, tolerance: f64) -> (u64, u64) {
    let compared = running.len().max(candidate.len()) as u64;
    let same = running
        .iter()
        .zip(candidate.iter())
        .filter(|(a, b)| {
            a.series.name == b.series.name
                && a.series.unit == b.series.unit
                && a.ts == b.ts
                && ((a.value - b.value).abs() <= tolerance || a.value.to_bits() == b.value.to_bits())
        })
        .count() as u64;
    (compared, compared - same)
}

/// Brings the use's shadow in line with what its handle asks for: started when a candidate is
/// asked for (a candidate that cannot start is reported), dropped when none is. Whether a
/// shadow runs for this input.
pub(super) fn sync(instance: &FunctionInstance, shadow: &mut Option<Shadow>) -> bool {
    let handle = instance.handle_ref();
    let Some(request) = handle.shadow_request() else {
        *shadow = None;
        return false;
    };
    if shadow.as_ref().is_some_and(|running| Arc::ptr_eq(&running.candidate, &request.candidate)) {
        return true;
    }
    match instance.shadow(&request.candidate) {
        Ok(started) => {
            tracing::info!(stage = "sandbox", pipeline = %handle.pipeline, operator = %handle.use_name,
                candidate = %request.candidate.version(), "candidate running in shadow");
            *shadow = Some(Shadow { instance: started, candidate: request.candidate, tolerance: request.tolerance });
            true
        }
        Err(e) => {
            handle.report_shadow(&request.candidate, |report| report.not_started = Some(e.to_string()));
            *shadow = None;
            false
        }
    }
}

impl Shadow {
    /// Counts one input in the report the handle of `beside` (the use in service) keeps.
    pub(super) fn report(&self, beside: &FunctionInstance, call: &ShadowCall, took: Duration, running: Option<&Batch>) {
        beside.handle_ref().report_shadow(&self.candidate, |report| report.count(call, took, running, self.tolerance));
    }
}

/// Times a call.
pub(super) fn timed<R>(call: impl FnOnce() -> R) -> (R, Duration) {
    let started = Instant::now();
    let result = call();
    (result, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::Series;

    fn batch(values: &[f64]) -> Batch {
        let n = values.len();
        Batch::from_columns(
            vec![Series::named("t").with_unit("Cel")],
            vec![0; n],
            (0..n as i64).collect(),
            values.to_vec(),
        )
        .expect("valid batch")
    }

    #[test]
    fn equal_outputs_within_the_tolerance_do_not_diverge() {
        assert_eq!(compare(&batch(&[1.0, 2.0]), &batch(&[1.0, 2.0 + 1e-12]), 1e-9), (2, 0));
        assert_eq!(compare(&batch(&[1.0, 2.0]), &batch(&[1.0, 2.5]), 1e-9), (2, 1));
    }

    #[test]
    fn readings_only_one_side_has_diverge() {
        assert_eq!(compare(&batch(&[1.0, 2.0, 3.0]), &batch(&[1.0]), 0.0), (3, 2));
        assert_eq!(compare(&batch(&[]), &batch(&[4.0]), 0.0), (1, 1));
    }

    #[test]
    fn another_unit_or_time_diverges() {
        let one = |unit: &str, ts: i64| {
            Batch::from_columns(vec![Series::named("t").with_unit(unit)], vec![0], vec![ts], vec![1.0])
                .expect("valid batch")
        };
        assert_eq!(compare(&one("Cel", 0), &one("K", 0), 1.0), (1, 1));
        assert_eq!(compare(&one("Cel", 0), &one("Cel", 5), 1.0), (1, 1));
        assert_eq!(compare(&one("Cel", 0), &one("Cel", 0), 0.0), (1, 0));
    }

    #[test]
    fn the_report_counts_faults_refusals_and_divergence() {
        let mut report = ShadowReport::default();
        let running = batch(&[1.0, 2.0]);
        report.count(&ShadowCall::Output(batch(&[1.0, 2.0])), Duration::from_millis(1), Some(&running), 0.0);
        report.count(&ShadowCall::Refused, Duration::from_millis(3), Some(&running), 0.0);
        report.count(&ShadowCall::Faulted, Duration::from_millis(2), Some(&running), 0.0);
        report.count(&ShadowCall::Output(batch(&[9.0])), Duration::from_millis(1), None, 0.0);
        assert_eq!(
            report,
            ShadowReport {
                inputs: 4,
                faults: 1,
                slowest: Duration::from_millis(3),
                compared: 4,
                divergent: 2,
                not_started: None
            }
        );
    }
}
