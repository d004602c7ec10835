//! Readings: [`Series`], the columnar [`Batch`] and the [`BatchBuilder`] that merges pieces.
//!
//! A batch is columnar — a series dictionary plus parallel `series_idx` / `ts` / `value` columns —
//! because that is how it crosses the WebAssembly boundary in the gateway (bulk copies of flat
//! numeric lists) and how the record format compacts it.
//!
//! **Invariant:** the three columns always have the same length and every `series_idx` element
//! indexes into the dictionary. Every constructor checks it; nothing hands out mutable columns.

use std::collections::HashMap;
use std::fmt;

/// Nanoseconds since the Unix epoch (UTC); defined with the window stage, which guests share.
pub use weir_window::Nanos;

/// Description of one series: its name, the unit of its values and its tags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Series {
    /// Name such as `plant1/boiler/temp`; unique within one batch's dictionary.
    pub name: String,
    /// Unit of the values (UCUM-style), if known.
    pub unit: Option<String>,
    /// Key/value labels.
    pub tags: Vec<(String, String)>,
}

impl Series {
    /// A series with this name, no unit and no tags.
    pub fn named(name: impl Into<String>) -> Self {
        Self { name: name.into(), unit: None, tags: Vec::new() }
    }

    /// The same series with its unit set.
    #[must_use]
    pub fn with_unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }
}

/// A batch whose columns broke the batch invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidBatch {
    /// The columns have different lengths.
    #[error("column lengths differ: {series_idx} series indexes, {ts} timestamps, {value} values")]
    ColumnLengths {
        /// Length of `series_idx`.
        series_idx: usize,
        /// Length of `ts`.
        ts: usize,
        /// Length of `value`.
        value: usize,
    },
    /// A series index points outside the dictionary.
    #[error("series index {index} is outside a dictionary of {dictionary_len} series")]
    SeriesIndex {
        /// The offending index.
        index: u32,
        /// Size of the dictionary.
        dictionary_len: usize,
    },
    /// Two dictionary entries share a name.
    #[error("series {name:?} appears twice in the dictionary")]
    DuplicateSeries {
        /// The repeated name.
        name: String,
    },
}

/// Readings travelling together.
#[derive(Clone, Default, PartialEq)]
pub struct Batch {
    series: Vec<Series>,
    series_idx: Vec<u32>,
    ts: Vec<Nanos>,
    value: Vec<f64>,
}

/// One reading borrowed from a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// The reading's series.
    pub series: &'a Series,
    /// Event time.
    pub ts: Nanos,
    /// Value.
    pub value: f64,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a batch from its columns, checking the batch invariant and dictionary uniqueness.
    pub fn from_columns(
        series: Vec<Series>,
        series_idx: Vec<u32>,
        ts: Vec<Nanos>,
        value: Vec<f64>,
    ) -> Result<Self, InvalidBatch> {
        if series_idx.len() != ts.len() || ts.len() != value.len() {
            return Err(InvalidBatch::ColumnLengths { series_idx: series_idx.len(), ts: ts.len(), value: value.len() });
        }
        if let Some(&index) = series_idx.iter().find(|&&i| i as usize >= series.len()) {
            return Err(InvalidBatch::SeriesIndex { index, dictionary_len: series.len() });
        }
        let mut names = std::collections::HashSet::with_capacity(series.len());
        if let Some(dup) = series.iter().find(|s| !names.insert(s.name.as_str())) {
            return Err(InvalidBatch::DuplicateSeries { name: dup.name.clone() });
        }
        Ok(Self { series, series_idx, ts, value })
    }

    /// Splits the batch into its columns (dictionary, series indexes, timestamps, values).
    pub fn into_columns(self) -> (Vec<Series>, Vec<u32>, Vec<Nanos>, Vec<f64>) {
        (self.series, self.series_idx, self.ts, self.value)
    }

    /// Number of readings.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// True when there are no readings.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The series dictionary.
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// Per reading, its index in the dictionary.
    pub fn series_idx(&self) -> &[u32] {
        &self.series_idx
    }

    /// Per reading, its event time.
    pub fn timestamps(&self) -> &[Nanos] {
        &self.ts
    }

    /// Per reading, its value.
    pub fn values(&self) -> &[f64] {
        &self.value
    }

    /// The readings in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Sample<'_>> + '_ {
        (0..self.len()).map(|i| Sample {
            series: &self.series[self.series_idx[i] as usize],
            ts: self.ts[i],
            value: self.value[i],
        })
    }

    /// Highest event time in the batch, if it has readings.
    pub fn max_timestamp(&self) -> Option<Nanos> {
        self.ts.iter().copied().max()
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(|s| (s.series.name.as_str(), s.ts, s.value))).finish()
    }
}

/// Builds one batch from many pieces, merging their dictionaries by series name.
///
/// When two pieces describe the same series name differently (unit, tags), the first description
/// wins; series identity is the name.
#[derive(Debug, Default)]
pub struct BatchBuilder {
    batch: Batch,
    by_name: HashMap<String, u32>,
}

impl BatchBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// The dictionary index of `series`, adding it when its name is new.
    pub fn intern(&mut self, series: &Series) -> u32 {
        if let Some(&index) = self.by_name.get(&series.name) {
            return index;
        }
        let index = u32::try_from(self.batch.series.len()).expect("a batch never holds more than u32::MAX series");
        self.by_name.insert(series.name.clone(), index);
        self.batch.series.push(series.clone());
        index
    }

    /// Appends one reading of the series at dictionary index `series_index` (from [`Self::intern`]).
    pub fn push(&mut self, series_index: u32, ts: Nanos, value: f64) {
        debug_assert!((series_index as usize) < self.batch.series.len(), "index comes from intern()");
        self.batch.series_idx.push(series_index);
        self.batch.ts.push(ts);
        self.batch.value.push(value);
    }

    /// Appends every reading of `piece`.
    pub fn extend(&mut self, piece: &Batch) {
        let remap: Vec<u32> = piece.series.iter().map(|s| self.intern(s)).collect();
        self.batch.series_idx.extend(piece.series_idx.iter().map(|&i| remap[i as usize]));
        self.batch.ts.extend_from_slice(&piece.ts);
        self.batch.value.extend_from_slice(&piece.value);
    }

    /// Number of readings so far.
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    /// True when no reading was added.
    pub fn is_empty(&self) -> bool {
        self.batch.is_empty()
    }

    /// The finished batch.
    pub fn finish(self) -> Batch {
        self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_columns_checks_the_invariant() {
        let one = || vec![Series::named("a")];
        assert!(Batch::from_columns(one(), vec![0], vec![1], vec![1.0]).is_ok());
        assert_eq!(
            Batch::from_columns(one(), vec![0, 0], vec![1], vec![1.0]),
            Err(InvalidBatch::ColumnLengths { series_idx: 2, ts: 1, value: 1 })
        );
        assert_eq!(
            Batch::from_columns(one(), vec![3], vec![1], vec![1.0]),
            Err(InvalidBatch::SeriesIndex { index: 3, dictionary_len: 1 })
        );
        assert_eq!(
            Batch::from_columns(vec![Series::named("a"), Series::named("a")], vec![], vec![], vec![]),
            Err(InvalidBatch::DuplicateSeries { name: "a".into() })
        );
    }

    #[test]
    fn builder_merges_dictionaries_by_name_first_description_wins() {
        let first =
            Batch::from_columns(vec![Series::named("t").with_unit("Cel")], vec![0], vec![1], vec![1.0]).expect("valid");
        let second = Batch::from_columns(
            vec![Series::named("p"), Series::named("t").with_unit("K")],
            vec![1, 0],
            vec![2, 3],
            vec![2.0, 3.0],
        )
        .expect("valid");
        let mut builder = BatchBuilder::new();
        builder.extend(&first);
        builder.extend(&second);
        let merged = builder.finish();
        let got: Vec<_> = merged.iter().map(|s| (s.series.name.as_str(), s.ts, s.value)).collect();
        assert_eq!(got, [("t", 1, 1.0), ("t", 2, 2.0), ("p", 3, 3.0)]);
        assert_eq!(merged.series()[0].unit.as_deref(), Some("Cel"));
    }
}
