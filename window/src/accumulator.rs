//! Custom window aggregates: where a window keeps the state of an aggregate defined outside this
//! crate — by a WebAssembly function implementing the `accumulator` world of `weir:stream`.
//!
//! Such an aggregate is an [`Accumulator`]: `create`, `add`, `merge` over opaque **partials**
//! (bytes the accumulator defines). Calls into it are expensive and can fail, so a window does not
//! call it per reading. Each window's [`CustomPartial`] holds the partial of the readings folded
//! in so far, plus the readings added since (and the partials of sessions joined into it since);
//! [`crate::event_time::Windows::fold_custom`] folds them in with one `add` per window and batch.
//!
//! **Invariant (nothing silently lost):** every reading a window accepted is, after a fold,
//! either in the window's partial or counted in its [`CustomPartial::missing`] — because the
//! accumulator refused it (then it is also reported in a [`CustomFailure`], with its reading when
//! there is one to give back).
//!
//! A [`CustomPartial`] is plain data, committed with the window state: after a crash the folds
//! replay from the same partials.

use serde::{Deserialize, Serialize};

use crate::Nanos;

/// A mergeable aggregate over opaque partials. The window stage relies on what the `accumulator`
/// world asks of it: adding in batches equals adding at once in any order, and `merge(p, q)`
/// equals adding `q`'s readings to `p`.
pub trait Accumulator {
    /// The partial of no readings.
    fn create(&mut self) -> Result<Vec<u8>, String>;
    /// `partial` with the readings added (parallel slices).
    fn add(&mut self, partial: &[u8], ts: &[Nanos], values: &[f64]) -> Result<Vec<u8>, String>;
    /// One partial holding the readings of both.
    fn merge(&mut self, first: &[u8], second: &[u8]) -> Result<Vec<u8>, String>;
    /// The aggregate's named values for the window `[start, end)` whose partial this is.
    fn finish(&mut self, partial: &[u8], start: Nanos, end: Nanos) -> Result<Vec<(String, f64)>, String>;
}

/// A custom aggregate's state in one window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CustomPartial {
    /// The partial of the `folded` readings; none before the first fold.
    #[serde(with = "serde_bytes")]
    partial: Option<Vec<u8>>,
    /// Readings in `partial`.
    folded: u64,
    /// Event times of readings added since the last fold.
    pending_ts: Vec<Nanos>,
    /// Their values.
    pending_values: Vec<f64>,
    /// Sessions joined into this one since the last fold.
    joined: Vec<CustomPartial>,
    /// Readings the window accepted that are not in `partial`: the accumulator refused them.
    missing: u64,
}

/// Readings the accumulator refused, or a merge it refused.
#[derive(Clone, Debug, PartialEq)]
pub struct CustomFailure {
    /// The series.
    pub series: String,
    /// The window's key.
    pub key: Nanos,
    /// The accumulator's reason.
    pub reason: String,
    /// The readings refused (event times), when the failure was an `add` or `create`; empty when
    /// it was a `merge`, whose readings were already in a partial.
    pub ts: Vec<Nanos>,
    /// Their values.
    pub values: Vec<f64>,
    /// Readings this failure left out of the window's custom aggregate.
    pub missing: u64,
}

impl CustomPartial {
    /// A window that already held `missing` readings when custom aggregation started.
    pub(crate) fn already_missing(missing: u64) -> Self {
        Self { missing, ..Self::default() }
    }

    /// The partial; none until a fold created one.
    pub fn partial(&self) -> Option<&[u8]> {
        self.partial.as_deref()
    }

    /// Readings in the partial.
    pub fn folded(&self) -> u64 {
        self.folded
    }

    /// Readings the window holds that its partial leaves out (the accumulator refused them).
    pub fn missing(&self) -> u64 {
        self.missing
    }

    /// Whether readings or joined sessions wait to be folded.
    pub fn is_pending(&self) -> bool {
        !self.pending_ts.is_empty() || !self.joined.is_empty()
    }

    pub(crate) fn add(&mut self, ts: Nanos, value: f64) {
        self.pending_ts.push(ts);
        self.pending_values.push(value);
    }

    pub(crate) fn join(&mut self, other: CustomPartial) {
        self.joined.push(other);
    }

    /// Readings held in every form: folded, pending, joined, missing.
    fn readings(&self) -> u64 {
        self.folded
            + self.pending_ts.len() as u64
            + self.missing
            + self.joined.iter().map(CustomPartial::readings).sum::<u64>()
    }

    /// Folds pending readings and joined sessions into the partial; what the accumulator refuses
    /// is counted missing and reported (with `series` and `key`) in `failures`.
    pub(crate) fn fold(
        &mut self,
        accumulator: &mut dyn Accumulator,
        series: &str,
        key: Nanos,
        failures: &mut Vec<CustomFailure>,
    ) {
        if !self.is_pending() {
            return;
        }
        let ts = std::mem::take(&mut self.pending_ts);
        let values = std::mem::take(&mut self.pending_values);
        let joined = std::mem::take(&mut self.joined);
        let failure = |reason: String, ts: Vec<Nanos>, values: Vec<f64>, missing: u64| CustomFailure {
            series: series.to_owned(),
            key,
            reason,
            ts,
            values,
            missing,
        };

        let mut partial = match self.partial.take() {
            Some(partial) => partial,
            None => match accumulator.create() {
                Ok(partial) => partial,
                Err(reason) => {
                    // Without a partial nothing can be folded: everything waiting is missing.
                    let lost = ts.len() as u64 + joined.iter().map(CustomPartial::readings).sum::<u64>();
                    self.missing += lost;
                    failures.push(failure(format!("create failed: {reason}"), ts, values, lost));
                    return;
                }
            },
        };
        if !ts.is_empty() {
            match accumulator.add(&partial, &ts, &values) {
                Ok(added) => {
                    partial = added;
                    self.folded += ts.len() as u64;
                }
                Err(reason) => {
                    let lost = ts.len() as u64;
                    self.missing += lost;
                    failures.push(failure(format!("add failed: {reason}"), ts, values, lost));
                }
            }
        }
        for mut other in joined {
            other.fold(accumulator, series, key, failures);
            self.missing += other.missing;
            let Some(other_partial) = other.partial else { continue };
            match accumulator.merge(&partial, &other_partial) {
                Ok(merged) => {
                    partial = merged;
                    self.folded += other.folded;
                }
                Err(reason) => {
                    self.missing += other.folded;
                    failures.push(failure(format!("merge failed: {reason}"), Vec::new(), Vec::new(), other.folded));
                }
            }
        }
        self.partial = Some(partial);
    }
}

/// A native accumulator for tests: exact for integer values.
#[cfg(test)]
pub(crate) mod test_accumulator {
    use super::*;

    /// Partials are little-endian (count, sum) of readings; values of 666 are refused.
    #[derive(Default)]
    pub(crate) struct CountSum {
        pub(crate) calls: usize,
        pub(crate) fail_merges: bool,
    }

    pub(crate) fn decode(partial: &[u8]) -> (u64, f64) {
        let count = u64::from_le_bytes(partial[..8].try_into().expect("8 bytes"));
        let sum = f64::from_le_bytes(partial[8..16].try_into().expect("8 bytes"));
        (count, sum)
    }

    fn encode(count: u64, sum: f64) -> Vec<u8> {
        [count.to_le_bytes(), sum.to_le_bytes()].concat()
    }

    impl Accumulator for CountSum {
        fn create(&mut self) -> Result<Vec<u8>, String> {
            self.calls += 1;
            Ok(encode(0, 0.0))
        }

        fn add(&mut self, partial: &[u8], _ts: &[Nanos], values: &[f64]) -> Result<Vec<u8>, String> {
            self.calls += 1;
            if values.contains(&666.0) {
                return Err("cursed value".into());
            }
            let (count, sum) = decode(partial);
            Ok(encode(count + values.len() as u64, sum + values.iter().sum::<f64>()))
        }

        fn merge(&mut self, first: &[u8], second: &[u8]) -> Result<Vec<u8>, String> {
            self.calls += 1;
            if self.fail_merges {
                return Err("no merging today".into());
            }
            let ((c1, s1), (c2, s2)) = (decode(first), decode(second));
            Ok(encode(c1 + c2, s1 + s2))
        }

        fn finish(&mut self, partial: &[u8], _start: Nanos, _end: Nanos) -> Result<Vec<(String, f64)>, String> {
            let (count, sum) = decode(partial);
            Ok(vec![("count".into(), count as f64), ("sum".into(), sum)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_accumulator::{CountSum, decode};
    use super::*;

    #[test]
    fn one_add_per_fold_and_refused_readings_are_missing_and_given_back() {
        let mut accumulator = CountSum::default();
        let mut custom = CustomPartial::default();
        let mut failures = Vec::new();
        for value in [1.0, 2.0, 3.0] {
            custom.add(0, value);
        }
        custom.fold(&mut accumulator, "s", 0, &mut failures);
        assert_eq!(accumulator.calls, 2, "create, then one add for three readings");
        assert_eq!(decode(custom.partial().expect("folded")), (3, 6.0));

        custom.add(1, 666.0);
        custom.add(2, 4.0);
        custom.fold(&mut accumulator, "s", 0, &mut failures);
        assert_eq!(decode(custom.partial().expect("kept")), (3, 6.0), "a refused add changes nothing");
        assert_eq!((custom.folded(), custom.missing()), (3, 2));
        assert_eq!(failures.len(), 1);
        assert_eq!(
            (failures[0].ts.as_slice(), failures[0].values.as_slice()),
            ([1, 2].as_slice(), [666.0, 4.0].as_slice())
        );
        assert!(!custom.is_pending());
    }

    #[test]
    fn joined_sessions_are_folded_then_merged() {
        let mut accumulator = CountSum::default();
        let mut failures = Vec::new();
        let mut kept = CustomPartial::default();
        kept.add(0, 1.0);
        kept.fold(&mut accumulator, "s", 0, &mut failures);
        let mut other = CustomPartial::default();
        other.add(5, 10.0);
        other.fold(&mut accumulator, "s", 5, &mut failures);
        other.add(6, 20.0); // still pending when joined
        kept.join(other);
        kept.add(3, 100.0);
        kept.fold(&mut accumulator, "s", 0, &mut failures);
        assert!(failures.is_empty());
        assert_eq!(decode(kept.partial().expect("folded")), (4, 131.0));
        assert_eq!((kept.folded(), kept.missing()), (4, 0));
    }

    #[test]
    fn a_refused_merge_counts_the_joined_readings_missing() {
        let mut accumulator = CountSum { fail_merges: true, ..CountSum::default() };
        let mut failures = Vec::new();
        let mut kept = CustomPartial::default();
        kept.add(0, 1.0);
        let mut other = CustomPartial::default();
        other.add(5, 10.0);
        other.add(6, 20.0);
        kept.join(other);
        kept.fold(&mut accumulator, "s", 0, &mut failures);
        assert_eq!((kept.folded(), kept.missing()), (1, 2));
        assert_eq!((failures.len(), failures[0].missing, failures[0].ts.len()), (1, 2, 0));
    }

    #[test]
    fn serialises_partials_as_bytes() {
        let mut custom = CustomPartial::default();
        custom.add(1, 2.0);
        custom.fold(&mut CountSum::default(), "s", 0, &mut Vec::new());
        let json = serde_json::to_value(&custom).expect("serialises");
        let back: CustomPartial = serde_json::from_value(json).expect("deserialises");
        assert_eq!(back, custom);
    }
}
