//! The typed batch view that functions read and build.
//!
//! A [`Batch`] stores readings column by column — series index, timestamp, value — next to a
//! series dictionary, exactly as they cross the component boundary. The accessors here hide the
//! columns behind [`Sample`]s while keeping the invariant the host checks on every returned batch:
//! **all columns have the same length and every series index points into the dictionary.**

use std::fmt;

/// A point in time: nanoseconds since the Unix epoch (UTC).
///
/// Event time (when a reading was taken) and processing time (when the gateway handled it) use the
/// same type; the function's [`Context`](crate::Context) says which is which.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    /// The Unix epoch itself.
    pub const EPOCH: Self = Self(0);

    /// A timestamp `nanos` nanoseconds after the epoch.
    pub const fn from_nanos(nanos: i64) -> Self {
        Self(nanos)
    }

    /// A timestamp `millis` milliseconds after the epoch (saturating).
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis.saturating_mul(1_000_000))
    }

    /// A timestamp `secs` seconds after the epoch (saturating).
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(1_000_000_000))
    }

    /// Nanoseconds since the epoch.
    pub const fn as_nanos(self) -> i64 {
        self.0
    }

    /// Seconds from `earlier` to `self`, negative when `earlier` is later.
    pub fn seconds_since(self, earlier: Timestamp) -> f64 {
        // i128 so that the difference of two extreme timestamps cannot overflow.
        (i128::from(self.0) - i128::from(earlier.0)) as f64 / 1e9
    }
}

/// Identifies one entry of a batch's series dictionary. Only meaningful for the batch it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SeriesId(u32);

impl SeriesId {
    /// Position of the series in [`Batch::series`].
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

/// What a series is: its name, the unit of its values, and descriptive tags.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Series {
    /// Name such as `plant1/boiler/temp`; unique within one batch.
    pub name: String,
    /// Unit of the values (UCUM-style: `Cel`, `[degF]`, `Pa`), if known.
    pub unit: Option<String>,
    /// Key/value labels; keys are unique.
    pub tags: Vec<(String, String)>,
}

impl Series {
    /// A series with this name, no unit and no tags.
    pub fn new(name: impl Into<String>) -> Self {
        Self { name: name.into(), unit: None, tags: Vec::new() }
    }

    /// The same series with its unit set.
    #[must_use]
    pub fn with_unit(mut self, unit: impl Into<String>) -> Self {
        self.unit = Some(unit.into());
        self
    }

    /// The same series with a tag added (or replaced, when the key exists).
    #[must_use]
    pub fn with_tag(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        let key = key.into();
        let value = value.into();
        match self.tags.iter_mut().find(|(k, _)| *k == key) {
            Some((_, existing)) => *existing = value,
            None => self.tags.push((key, value)),
        }
        self
    }

    /// The value of tag `key`, if present.
    pub fn tag(&self, key: &str) -> Option<&str> {
        self.tags.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// One reading, borrowed from a batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sample<'a> {
    /// Which dictionary entry the reading belongs to.
    pub series_id: SeriesId,
    /// The series itself.
    pub series: &'a Series,
    /// Event time of the reading.
    pub ts: Timestamp,
    /// The reading's value.
    pub value: f64,
}

/// One reading whose value may be changed in place (see [`Batch::for_each_mut`]).
#[derive(Debug)]
pub struct SampleMut<'a> {
    /// Which dictionary entry the reading belongs to.
    pub series_id: SeriesId,
    /// The series itself.
    pub series: &'a Series,
    /// Event time of the reading.
    pub ts: Timestamp,
    /// The reading's value, writable.
    pub value: &'a mut f64,
}

/// Readings travelling together, with the dictionary of the series they belong to.
#[derive(Clone, Default, PartialEq)]
pub struct Batch {
    series: Vec<Series>,
    series_idx: Vec<u32>,
    ts: Vec<i64>,
    value: Vec<f64>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `readings` readings.
    pub fn with_capacity(readings: usize) -> Self {
        Self {
            series: Vec::new(),
            series_idx: Vec::with_capacity(readings),
            ts: Vec::with_capacity(readings),
            value: Vec::with_capacity(readings),
        }
    }

    /// Number of readings.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// True when the batch holds no readings.
    pub fn is_empty(&self) -> bool {
        self.value.is_empty()
    }

    /// The series dictionary (it may hold series without readings).
    pub fn series(&self) -> &[Series] {
        &self.series
    }

    /// The series with this id.
    ///
    /// # Panics
    /// If `id` does not come from this batch's dictionary.
    pub fn series_by_id(&self, id: SeriesId) -> &Series {
        &self.series[id.index()]
    }

    /// Mutable access to a series description, for example to change its unit.
    ///
    /// # Panics
    /// If `id` does not come from this batch's dictionary.
    pub fn series_mut(&mut self, id: SeriesId) -> &mut Series {
        &mut self.series[id.index()]
    }

    /// The id of the series called `name`, if the dictionary has it.
    pub fn find_series(&self, name: &str) -> Option<SeriesId> {
        self.series.iter().position(|s| s.name == name).map(series_id_at)
    }

    /// The id of `series` in the dictionary, adding it when no series of that name exists yet.
    /// An existing entry keeps its unit and tags.
    pub fn intern_series(&mut self, series: Series) -> SeriesId {
        match self.find_series(&series.name) {
            Some(id) => id,
            None => {
                self.series.push(series);
                series_id_at(self.series.len() - 1)
            }
        }
    }

    /// Appends one reading.
    ///
    /// # Panics
    /// If `series` does not come from this batch's dictionary.
    pub fn push(&mut self, series: SeriesId, ts: Timestamp, value: f64) {
        assert!(series.index() < self.series.len(), "series id {} is not in this batch", series.0);
        self.series_idx.push(series.0);
        self.ts.push(ts.as_nanos());
        self.value.push(value);
    }

    /// The reading at position `index`, if any.
    pub fn get(&self, index: usize) -> Option<Sample<'_>> {
        let series_idx = *self.series_idx.get(index)?;
        Some(Sample {
            series_id: SeriesId(series_idx),
            series: &self.series[series_idx as usize],
            ts: Timestamp(self.ts[index]),
            value: self.value[index],
        })
    }

    /// The readings in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Sample<'_>> + '_ {
        (0..self.len()).map(|i| {
            let series_idx = self.series_idx[i];
            Sample {
                series_id: SeriesId(series_idx),
                series: &self.series[series_idx as usize],
                ts: Timestamp(self.ts[i]),
                value: self.value[i],
            }
        })
    }

    /// Keeps only the readings for which `keep` returns true, preserving their order.
    pub fn retain(&mut self, mut keep: impl FnMut(Sample<'_>) -> bool) {
        let mut kept = 0;
        for i in 0..self.len() {
            let series_idx = self.series_idx[i];
            let sample = Sample {
                series_id: SeriesId(series_idx),
                series: &self.series[series_idx as usize],
                ts: Timestamp(self.ts[i]),
                value: self.value[i],
            };
            if keep(sample) {
                self.series_idx[kept] = series_idx;
                self.ts[kept] = self.ts[i];
                self.value[kept] = self.value[i];
                kept += 1;
            }
        }
        self.series_idx.truncate(kept);
        self.ts.truncate(kept);
        self.value.truncate(kept);
    }

    /// Calls `f` on every reading with its value writable, in order.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(SampleMut<'_>)) {
        for i in 0..self.value.len() {
            let series_idx = self.series_idx[i];
            f(SampleMut {
                series_id: SeriesId(series_idx),
                series: &self.series[series_idx as usize],
                ts: Timestamp(self.ts[i]),
                value: &mut self.value[i],
            });
        }
    }

    /// Appends every reading of `other`, merging its series into this dictionary by name.
    pub fn extend_from(&mut self, other: &Batch) {
        let remap: Vec<SeriesId> = other.series.iter().map(|s| self.intern_series(s.clone())).collect();
        self.series_idx.reserve(other.len());
        self.ts.reserve(other.len());
        self.value.reserve(other.len());
        for sample in other.iter() {
            self.series_idx.push(remap[sample.series_id.index()].0);
            self.ts.push(sample.ts.as_nanos());
            self.value.push(sample.value);
        }
    }

    /// Splits the batch into its columns: dictionary, series indexes, timestamps, values.
    pub(crate) fn into_columns(self) -> (Vec<Series>, Vec<u32>, Vec<i64>, Vec<f64>) {
        (self.series, self.series_idx, self.ts, self.value)
    }

    /// Builds a batch from columns, checking the batch invariant.
    pub(crate) fn from_columns(
        series: Vec<Series>,
        series_idx: Vec<u32>,
        ts: Vec<i64>,
        value: Vec<f64>,
    ) -> Result<Self, String> {
        if series_idx.len() != ts.len() || ts.len() != value.len() {
            return Err(format!(
                "column lengths differ: {} series indexes, {} timestamps, {} values",
                series_idx.len(),
                ts.len(),
                value.len()
            ));
        }
        if let Some(bad) = series_idx.iter().find(|&&i| i as usize >= series.len()) {
            return Err(format!("series index {bad} is outside a dictionary of {}", series.len()));
        }
        Ok(Self { series, series_idx, ts, value })
    }
}

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter().map(|s| (s.series.name.as_str(), s.ts.as_nanos(), s.value))).finish()
    }
}

impl<'a> IntoIterator for &'a Batch {
    type Item = Sample<'a>;
    type IntoIter = Box<dyn ExactSizeIterator<Item = Sample<'a>> + 'a>;

    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

fn series_id_at(position: usize) -> SeriesId {
    SeriesId(u32::try_from(position).expect("a batch dictionary never holds more than u32::MAX series"))
}

/// One raw message, as a decoder function receives it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// MQTT topic or NATS subject.
    pub topic: String,
    /// The payload bytes.
    pub payload: Vec<u8>,
    /// When the gateway received the message (processing time).
    pub received_at: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_batch() -> Batch {
        let mut batch = Batch::new();
        let a = batch.intern_series(Series::new("a").with_unit("Cel"));
        let b = batch.intern_series(Series::new("b"));
        batch.push(a, Timestamp::from_secs(1), 1.0);
        batch.push(b, Timestamp::from_secs(2), 2.0);
        batch.push(a, Timestamp::from_secs(3), 3.0);
        batch
    }

    #[test]
    fn retain_keeps_order_and_columns_aligned() {
        let mut batch = sample_batch();
        batch.retain(|s| s.series.name == "a");
        let kept: Vec<_> = batch.iter().map(|s| (s.ts.as_nanos(), s.value)).collect();
        assert_eq!(kept, vec![(1_000_000_000, 1.0), (3_000_000_000, 3.0)]);
    }

    #[test]
    fn intern_series_reuses_existing_names() {
        let mut batch = sample_batch();
        let again = batch.intern_series(Series::new("a").with_unit("K"));
        assert_eq!(again.index(), 0);
        assert_eq!(batch.series().len(), 2);
        assert_eq!(batch.series()[0].unit.as_deref(), Some("Cel"), "existing entry keeps its unit");
    }

    #[test]
    fn extend_from_merges_dictionaries_by_name() {
        let mut left = sample_batch();
        let mut right = Batch::new();
        let b = right.intern_series(Series::new("b"));
        let c = right.intern_series(Series::new("c"));
        right.push(c, Timestamp::from_secs(4), 4.0);
        right.push(b, Timestamp::from_secs(5), 5.0);
        left.extend_from(&right);
        let names: Vec<_> = left.iter().map(|s| s.series.name.clone()).collect();
        assert_eq!(names, ["a", "b", "a", "c", "b"]);
        assert_eq!(left.series().len(), 3);
    }

    #[test]
    fn from_columns_rejects_broken_invariants() {
        let err = Batch::from_columns(vec![Series::new("a")], vec![0, 1], vec![0, 0], vec![0.0, 0.0])
            .expect_err("index 1 is outside the dictionary");
        assert!(err.contains("series index 1"), "{err}");
        let err = Batch::from_columns(vec![Series::new("a")], vec![0], vec![0, 0], vec![0.0])
            .expect_err("columns differ in length");
        assert!(err.contains("column lengths differ"), "{err}");
    }
}
