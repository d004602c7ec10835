//! A window's quantile sketch as records carry it, and reading it back.
//!
//! Gateways write DataDog's DDSketch **protobuf** message (`DDSketch` of DataDog's
//! `ddsketch.proto`: a logarithmic index mapping without interpolation, the positive and negative
//! values as contiguous bin counts, the zero count). It is the one form DataDog's Java, Go and
//! Python libraries all read (`DDSketchProtoBinding.fromProto`, `ddsketch.FromProto`,
//! `DDSketchProto.from_proto`); their own binary encodings are not read across languages.
//! Records of format version 1 carried DataDog's Java binary encoding instead, under another
//! window column; such sketches are kept as they were read ([`Sketch::JavaBinary`]) and
//! written back under that column, so no column ever changes meaning.
//!
//! **Index convention.** Bin `i` holds the values in `[γ^i, γ^(i+1))` (index offset 0), and a
//! reader answers a bin with `2γ^(i+1)/(1+γ)` — the convention of the Java and Go libraries and of
//! [`Bins::quantile`] here: within the sketch's relative accuracy (1 %). The Python library
//! (3.0.1) rounds indices the other way (bin `i` as `(γ^(i-1), γ^i]`) and so answers every bin
//! one bin low: its quantiles are within 3 % (`1 - 2/(γ(1+γ))`), not 1 %.
//!
//! Pure: no I/O.

use std::collections::BTreeMap;

use prost::Message as _;
use serde::Deserialize;
use weir_window::aggregate::Aggregate;

/// A window's quantile sketch, as a record carries it.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Sketch {
    /// No sketch: the window holds no reading now.
    #[default]
    None,
    /// DataDog's DDSketch protobuf message (window column 17). What gateways write.
    Protobuf(Vec<u8>),
    /// DataDog's Java binary encoding (window column 13), as records of format version 1
    /// carried it; kept as read.
    JavaBinary(Vec<u8>),
}

/// Why a sketch cannot be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SketchError {
    /// The bytes are not a DDSketch protobuf message.
    #[error("not a DDSketch protobuf message: {reason}")]
    Protobuf {
        /// The parser's message.
        reason: String,
    },
    /// The message uses an interpolated index mapping, which no gateway writes.
    #[error("the sketch's index mapping is interpolated ({interpolation}); only the logarithmic mapping is read")]
    Interpolated {
        /// The interpolation's protobuf enum value.
        interpolation: i32,
    },
    /// The index mapping's base is not above 1.
    #[error("the sketch's index mapping has base {gamma}, which is not above 1")]
    Gamma {
        /// The base read.
        gamma: f64,
    },
    /// Not DataDog's Java binary encoding.
    #[error("not a DDSketch in DataDog's Java binary encoding: {reason}")]
    JavaBinary {
        /// The parser's message.
        reason: String,
    },
}

impl Sketch {
    /// The published form of a window aggregate's sketch (none when it holds no reading).
    pub fn of(aggregate: &Aggregate) -> Self {
        let bins = Bins::of(aggregate);
        if bins.count() == 0.0 { Self::None } else { Self::Protobuf(bins.to_protobuf()) }
    }

    /// The bytes as carried (empty for [`Sketch::None`]).
    pub fn bytes(&self) -> &[u8] {
        match self {
            Self::None => &[],
            Self::Protobuf(bytes) | Self::JavaBinary(bytes) => bytes,
        }
    }

    /// True when there is no sketch.
    pub fn is_none(&self) -> bool {
        matches!(self, Self::None)
    }

    /// The estimated value at quantile `q` in `[0, 1]` (none for no sketch or an empty one).
    pub fn quantile(&self, q: f64) -> Result<Option<f64>, SketchError> {
        match self {
            Self::None => Ok(None),
            Self::Protobuf(bytes) => Ok(Bins::from_protobuf(bytes)?.quantile(q)),
            Self::JavaBinary(bytes) => {
                let sketch = sketches_ddsketch::DDSketch::from_java_bytes(bytes)
                    .map_err(|e| SketchError::JavaBinary { reason: e.to_string() })?;
                Ok(sketch.quantile(q.clamp(0.0, 1.0)).ok().flatten())
            }
        }
    }
}

/// One sign's bins: the count of bin `first_index + i` is `counts[i]`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Store {
    /// Index of the first bin.
    pub first_index: i32,
    /// Counts of consecutive bins.
    pub counts: Vec<f64>,
}

impl Store {
    fn total(&self) -> f64 {
        self.counts.iter().sum()
    }

    /// The index of the bin holding the reading of rank `rank` (0-based, ascending index).
    fn index_at_rank(&self, rank: f64) -> i32 {
        let mut seen = 0.0;
        for (i, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen > rank {
                return self.first_index + i as i32;
            }
        }
        self.first_index + self.counts.len().saturating_sub(1) as i32
    }
}

/// A sketch's bins and index mapping, decoded.
#[derive(Clone, Debug, PartialEq)]
pub struct Bins {
    /// The mapping's base: bin `i` holds magnitudes in `[γ^(i-offset), γ^(i-offset+1))`.
    pub gamma: f64,
    /// The mapping's index offset.
    pub index_offset: f64,
    /// Readings whose magnitude is too small to index (counted as 0).
    pub zero_count: f64,
    /// Bins of the positive readings.
    pub positive: Store,
    /// Bins of the negative readings, by magnitude.
    pub negative: Store,
}

/// The parts of `sketches_ddsketch::DDSketch`'s serde form that define its bins.
#[derive(Deserialize)]
struct SketchParts {
    config: ConfigParts,
    store: StoreParts,
    negative_store: StoreParts,
    zero_count: u64,
}

#[derive(Deserialize)]
struct ConfigParts {
    gamma: f64,
}

/// Bin `i` of `bins` is the count of index `i + offset`.
#[derive(Deserialize)]
struct StoreParts {
    bins: Vec<u64>,
    offset: i32,
}

impl StoreParts {
    fn trimmed(self) -> Store {
        let first = self.bins.iter().position(|&c| c > 0);
        let last = self.bins.iter().rposition(|&c| c > 0);
        match (first, last) {
            (Some(first), Some(last)) => Store {
                first_index: self.offset + first as i32,
                counts: self.bins[first..=last].iter().map(|&c| c as f64).collect(),
            },
            _ => Store::default(),
        }
    }
}

impl Bins {
    /// The bins of a window aggregate's sketch.
    pub fn of(aggregate: &Aggregate) -> Self {
        // The sketch crate exposes its bins only through its serde form.
        let parts: SketchParts = serde_json::to_value(aggregate.sketch())
            .and_then(serde_json::from_value)
            .expect("the sketch crate's serde form has its config, stores and zero count");
        Self {
            gamma: parts.config.gamma,
            index_offset: 0.0,
            zero_count: parts.zero_count as f64,
            positive: parts.store.trimmed(),
            negative: parts.negative_store.trimmed(),
        }
    }

    /// Readings counted.
    pub fn count(&self) -> f64 {
        self.zero_count + self.positive.total() + self.negative.total()
    }

    /// The `DDSketch` protobuf message.
    pub fn to_protobuf(&self) -> Vec<u8> {
        let store = |store: &Store| {
            (!store.counts.is_empty()).then(|| proto::Store {
                bin_counts: BTreeMap::new(),
                contiguous_bin_counts: store.counts.clone(),
                contiguous_bin_index_offset: store.first_index,
            })
        };
        proto::DdSketch {
            mapping: Some(proto::IndexMapping {
                gamma: self.gamma,
                index_offset: self.index_offset,
                interpolation: proto::Interpolation::None as i32,
            }),
            positive_values: store(&self.positive),
            negative_values: store(&self.negative),
            zero_count: self.zero_count,
        }
        .encode_to_vec()
    }

    /// Reads a `DDSketch` protobuf message (logarithmic mapping; bins as a map, contiguous, or both).
    pub fn from_protobuf(bytes: &[u8]) -> Result<Self, SketchError> {
        let message = proto::DdSketch::decode(bytes).map_err(|e| SketchError::Protobuf { reason: e.to_string() })?;
        let mapping = message.mapping.unwrap_or_default();
        if mapping.interpolation != proto::Interpolation::None as i32 {
            return Err(SketchError::Interpolated { interpolation: mapping.interpolation });
        }
        if mapping.gamma.is_nan() || mapping.gamma <= 1.0 {
            return Err(SketchError::Gamma { gamma: mapping.gamma });
        }
        Ok(Self {
            gamma: mapping.gamma,
            index_offset: mapping.index_offset,
            zero_count: message.zero_count,
            positive: message.positive_values.map(proto::Store::into_contiguous).unwrap_or_default(),
            negative: message.negative_values.map(proto::Store::into_contiguous).unwrap_or_default(),
        })
    }

    /// The value a reader reports for bin `index`: `2γ^(i-offset+1)/(1+γ)`, within the
    /// sketch's relative accuracy of every magnitude in the bin.
    fn value(&self, index: i32) -> f64 {
        self.gamma.powf(f64::from(index) - self.index_offset) * 2.0 * self.gamma / (1.0 + self.gamma)
    }

    /// The estimated value at quantile `q` in `[0, 1]`, as DataDog's Java and Go libraries
    /// compute it; none when the sketch is empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let count = self.count();
        if count <= 0.0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * (count - 1.0);
        let negative = self.negative.total();
        Some(if rank < negative {
            -self.value(self.negative.index_at_rank(negative - 1.0 - rank))
        } else if rank < negative + self.zero_count {
            0.0
        } else {
            self.value(self.positive.index_at_rank(rank - negative - self.zero_count))
        })
    }
}

/// DataDog's `ddsketch.proto`, declared with prost's derive (field numbers as published).
mod proto {
    use std::collections::BTreeMap;

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct DdSketch {
        #[prost(message, optional, tag = "1")]
        pub mapping: Option<IndexMapping>,
        #[prost(message, optional, tag = "2")]
        pub positive_values: Option<Store>,
        #[prost(message, optional, tag = "3")]
        pub negative_values: Option<Store>,
        #[prost(double, tag = "4")]
        pub zero_count: f64,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct IndexMapping {
        #[prost(double, tag = "1")]
        pub gamma: f64,
        #[prost(double, tag = "2")]
        pub index_offset: f64,
        #[prost(enumeration = "Interpolation", tag = "3")]
        pub interpolation: i32,
    }

    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub(super) enum Interpolation {
        None = 0,
        Linear = 1,
        Quadratic = 2,
        Cubic = 3,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub(super) struct Store {
        #[prost(btree_map = "sint32, double", tag = "1")]
        pub bin_counts: BTreeMap<i32, f64>,
        #[prost(double, repeated, tag = "2")]
        pub contiguous_bin_counts: Vec<f64>,
        #[prost(sint32, tag = "3")]
        pub contiguous_bin_index_offset: i32,
    }

    impl Store {
        /// Both forms of bins as one contiguous run (a reader adds them, as DataDog's do).
        pub(super) fn into_contiguous(self) -> super::Store {
            let contiguous = self.contiguous_bin_counts.iter().enumerate().filter(|(_, c)| **c != 0.0).map(|(i, c)| {
                (self.contiguous_bin_index_offset.saturating_add(i32::try_from(i).unwrap_or(i32::MAX)), *c)
            });
            let mut counts: BTreeMap<i32, f64> = BTreeMap::new();
            for (index, count) in self.bin_counts.into_iter().filter(|(_, c)| *c != 0.0).chain(contiguous) {
                *counts.entry(index).or_default() += count;
            }
            let (Some((&first, _)), Some((&last, _))) = (counts.first_key_value(), counts.last_key_value()) else {
                return super::Store::default();
            };
            let span = usize::try_from(i64::from(last) - i64::from(first) + 1).unwrap_or(usize::MAX);
            // Bins far apart in a map would make a huge run: keep it dense only when it is small.
            let mut run = vec![0.0; span.min(1 << 20)];
            for (index, count) in counts {
                let slot = (i64::from(index) - i64::from(first)) as usize;
                if let Some(cell) = run.get_mut(slot) {
                    *cell += count;
                }
            }
            super::Store { first_index: first, counts: run }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aggregate_of(values: impl IntoIterator<Item = f64>) -> Aggregate {
        let mut aggregate = Aggregate::default();
        for (ts, value) in values.into_iter().enumerate() {
            aggregate.add(ts as i64, value);
        }
        aggregate
    }

    fn exact_quantile(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64) as usize]
    }

    #[test]
    fn a_sketch_read_back_gives_quantiles_within_one_percent() {
        let values: Vec<f64> =
            (1..=5000).map(|i| if i % 7 == 0 { -f64::from(i) } else { f64::from(i) * 0.37 }).collect();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let sketch = Sketch::of(&aggregate_of(values));
        assert!(matches!(sketch, Sketch::Protobuf(_)));
        for q in [0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99] {
            let estimate = sketch.quantile(q).expect("reads").expect("not empty");
            let exact = exact_quantile(&sorted, q);
            assert!((estimate - exact).abs() <= 0.01 * exact.abs(), "q {q}: {estimate} vs exact {exact}");
        }
    }

    #[test]
    fn zeros_and_an_empty_aggregate() {
        assert_eq!(Sketch::of(&Aggregate::default()), Sketch::None);
        let sketch = Sketch::of(&aggregate_of([0.0, 0.0, 0.0, 5.0]));
        assert_eq!(sketch.quantile(0.5).expect("reads"), Some(0.0));
        let high = sketch.quantile(1.0).expect("reads").expect("not empty");
        assert!((high - 5.0).abs() <= 0.05, "{high}");
    }

    #[test]
    fn bins_given_as_a_map_read_like_contiguous_ones() {
        let contiguous =
            Bins::from_protobuf(&Bins::of(&aggregate_of([1.0, 2.0, 2.0, 40.0])).to_protobuf()).expect("reads");
        let mut message = proto::DdSketch::decode(contiguous.to_protobuf().as_slice()).expect("decodes");
        let store = message.positive_values.as_mut().expect("positive values");
        for (i, count) in std::mem::take(&mut store.contiguous_bin_counts).into_iter().enumerate() {
            if count != 0.0 {
                store.bin_counts.insert(store.contiguous_bin_index_offset + i as i32, count);
            }
        }
        let mapped = Bins::from_protobuf(&message.encode_to_vec()).expect("reads");
        for q in [0.0, 0.3, 0.6, 1.0] {
            assert_eq!(mapped.quantile(q), contiguous.quantile(q));
        }
    }

    #[test]
    fn other_bytes_and_interpolated_mappings_are_refused() {
        assert!(matches!(Sketch::Protobuf(vec![0xff, 0xff, 0xff]).quantile(0.5), Err(SketchError::Protobuf { .. })));
        let interpolated = proto::DdSketch {
            mapping: Some(proto::IndexMapping { gamma: 1.02, index_offset: 0.0, interpolation: 3 }),
            ..Default::default()
        };
        assert_eq!(
            Bins::from_protobuf(&interpolated.encode_to_vec()),
            Err(SketchError::Interpolated { interpolation: 3 })
        );
        assert!(matches!(Bins::from_protobuf(&[]), Err(SketchError::Gamma { .. })));
    }

    #[test]
    fn java_binary_sketches_of_earlier_records_still_read() {
        let mut sketch = sketches_ddsketch::DDSketch::new(sketches_ddsketch::Config::new(0.01, 2048, 1e-9));
        for i in 1..=100 {
            sketch.add(f64::from(i));
        }
        let median = Sketch::JavaBinary(sketch.to_java_bytes()).quantile(0.5).expect("reads").expect("not empty");
        assert!((median - 50.0).abs() <= 0.51, "{median}");
    }
}
