//! `band-histogram`: a custom window aggregate (the `accumulator` world) that counts, per window,
//! the readings in each value band.
//!
//! `edges` split the real line into bands: below the first edge, between consecutive edges
//! (lower edge included), and from the last edge up. NaN readings are counted apart. The partial
//! is the counts, so adding and merging are additions: exact, and independent of order and
//! grouping — the laws the host relies on.

use serde::{Deserialize, Serialize};
use weir_sdk::{Accumulator, Error, Timestamp};

/// Most edges accepted.
pub const MAX_EDGES: usize = 64;

/// Parameters, from the pipeline configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Band edges, finite and strictly increasing.
    pub edges: Vec<f64>,
}

/// Counts per band: what the host keeps per window.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Counts {
    /// One count per band, lowest band first; empty until the first reading.
    bands: Vec<u64>,
    /// NaN readings.
    nan: u64,
}

/// The accumulator.
#[derive(Debug)]
pub struct BandHistogram {
    edges: Vec<f64>,
}

impl BandHistogram {
    /// The band holding `value` (not NaN).
    fn band(&self, value: f64) -> usize {
        self.edges.partition_point(|edge| *edge <= value)
    }

    /// Names of the bands, lowest first: `below_<e0>`, `<e0>_to_<e1>`, …, `from_<en>`.
    fn band_names(&self) -> Vec<String> {
        let first = self.edges.first().expect("init refuses no edges");
        let last = self.edges.last().expect("init refuses no edges");
        std::iter::once(format!("below_{first}"))
            .chain(self.edges.windows(2).map(|pair| format!("{}_to_{}", pair[0], pair[1])))
            .chain(std::iter::once(format!("from_{last}")))
            .collect()
    }

    fn check(&self, counts: &Counts) -> Result<(), Error> {
        if counts.bands.is_empty() || counts.bands.len() == self.edges.len() + 1 {
            Ok(())
        } else {
            Err(Error::invalid_input(format!(
                "the partial has {} bands, these parameters make {}: it was written with other edges",
                counts.bands.len(),
                self.edges.len() + 1
            )))
        }
    }
}

impl Accumulator for BandHistogram {
    type Params = Params;
    type Partial = Counts;

    fn init(params: Params) -> Result<Self, Error> {
        let edges = params.edges;
        if edges.is_empty() || edges.len() > MAX_EDGES {
            return Err(Error::invalid_params(format!("`edges` needs 1 to {MAX_EDGES} values, not {}", edges.len())));
        }
        if edges.iter().any(|e| !e.is_finite()) || edges.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(Error::invalid_params("`edges` must be finite and strictly increasing"));
        }
        Ok(Self { edges })
    }

    fn add(&self, counts: &mut Counts, _ts: &[i64], values: &[f64]) -> Result<(), Error> {
        self.check(counts)?;
        if counts.bands.is_empty() {
            counts.bands = vec![0; self.edges.len() + 1];
        }
        for value in values {
            if value.is_nan() {
                counts.nan += 1;
            } else {
                counts.bands[self.band(*value)] += 1;
            }
        }
        Ok(())
    }

    fn merge(&self, counts: &mut Counts, other: Counts) -> Result<(), Error> {
        self.check(counts)?;
        self.check(&other)?;
        if counts.bands.is_empty() {
            counts.bands = vec![0; self.edges.len() + 1];
        }
        for (count, more) in counts.bands.iter_mut().zip(&other.bands) {
            *count += more;
        }
        counts.nan += other.nan;
        Ok(())
    }

    fn finish(&self, counts: &Counts, _start: Timestamp, _end: Timestamp) -> Result<Vec<(String, f64)>, Error> {
        self.check(counts)?;
        let mut values: Vec<(String, f64)> = self
            .band_names()
            .into_iter()
            .enumerate()
            .map(|(band, name)| (name, counts.bands.get(band).copied().unwrap_or(0) as f64))
            .collect();
        values.push(("nan".to_owned(), counts.nan as f64));
        Ok(values)
    }
}

weir_sdk::export_accumulator!(BandHistogram);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use weir_sdk::AccumulatorProtocol;

    use super::*;

    const PARAMS: &str = r#"{"edges": [0, 10, 20.5]}"#;

    fn histogram() -> AccumulatorProtocol<BandHistogram> {
        AccumulatorProtocol::init(PARAMS).expect("valid params")
    }

    fn values() -> impl Strategy<Value = Vec<f64>> {
        prop::collection::vec(prop_oneof![9 => -30.0f64..40.0, 1 => Just(f64::NAN), 1 => Just(10.0)], 0..60)
    }

    fn finish(partial: &[u8]) -> Vec<(String, f64)> {
        histogram().finish(partial, 0, 1).expect("a partial it wrote")
    }

    #[test]
    fn counts_each_band_with_its_lower_edge() {
        let h = histogram();
        let partial =
            h.add(&h.create().expect("create"), &[0; 6], &[-1.0, 0.0, 9.9, 10.0, 20.5, f64::NAN]).expect("add");
        assert_eq!(
            finish(&partial),
            [
                ("below_0".to_owned(), 1.0),
                ("0_to_10".to_owned(), 2.0),
                ("10_to_20.5".to_owned(), 1.0),
                ("from_20.5".to_owned(), 1.0),
                ("nan".to_owned(), 1.0)
            ]
        );
    }

    #[test]
    fn refuses_bad_edges_and_partials_of_other_edges() {
        for params in [r#"{"edges": []}"#, r#"{"edges": [2, 1]}"#, r#"{"edges": [1, 1]}"#, r#"{}"#] {
            assert!(AccumulatorProtocol::<BandHistogram>::init(params).is_err(), "{params}");
        }
        let other = AccumulatorProtocol::<BandHistogram>::init(r#"{"edges": [5]}"#).expect("valid");
        let foreign = other.add(&other.create().expect("create"), &[0], &[1.0]).expect("add");
        let h = histogram();
        assert!(matches!(h.add(&foreign, &[0], &[1.0]), Err(Error::InvalidInput(_))));
        assert!(matches!(h.merge(&h.create().expect("create"), &foreign), Err(Error::InvalidInput(_))));
        assert!(matches!(h.add(b"not cbor at all", &[0], &[1.0]), Err(Error::InvalidInput(_))));
    }

    proptest! {
        #[test]
        fn adding_in_batches_in_any_order_equals_adding_at_once(values in values(), cut in any::<prop::sample::Index>()) {
            let h = histogram();
            let ts = vec![0; values.len()];
            let at_once = h.add(&h.create().expect("create"), &ts, &values).expect("add");
            let cut = cut.index(values.len() + 1);
            let mut reversed = values.clone();
            reversed.reverse();
            let (late, early) = reversed.split_at(values.len() - cut);
            let in_two = h.add(&h.add(&h.create().expect("create"), &ts[..late.len()], late).expect("add"), &ts[..early.len()], early).expect("add");
            prop_assert_eq!(finish(&in_two), finish(&at_once));
        }

        #[test]
        fn merging_equals_adding_the_union(a in values(), b in values()) {
            let h = histogram();
            let empty = h.create().expect("create");
            let partial = |values: &[f64]| h.add(&empty, &vec![0; values.len()], values).expect("add");
            let union: Vec<f64> = a.iter().chain(&b).copied().collect();
            prop_assert_eq!(finish(&h.merge(&partial(&a), &partial(&b)).expect("merge")), finish(&partial(&union)));
            prop_assert_eq!(finish(&h.merge(&empty, &partial(&b)).expect("merge")), finish(&partial(&b)));
        }
    }
}
