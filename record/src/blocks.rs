//! The encoded form of a record's parts, shared by CBOR and JSON: columns per series
//! ([`SeriesBlock`], [`AggregateBlock`], [`WindowBlock`]), built from the model when writing and
//! checked into the model when reading.
//!
//! **Invariant:** a block read back becomes a model value only when its columns agree (one entry
//! per reading or window, times that do not overflow); anything else is a [`ReadError`].

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::batch::{Batch, BatchBuilder, Nanos, Series};
use crate::model::{
    AggregateSeries, Coarsened, CustomWindow, Record, RecordHeader, Span, TimedValue, Window, WindowSeries, WindowValue,
};
use crate::sketch::Sketch;

/// Ticks tried for time deltas, coarsest first (nanoseconds per tick).
const TICKS: [i64; 4] = [1_000_000_000, 1_000_000, 1_000, 1];

/// Why a batch cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// Two consecutive readings of a series are further apart than the format can express.
    #[error("series {series:?}: consecutive event times {earlier} and {later} are more than 292 years apart")]
    TimeSpan {
        /// The series.
        series: String,
        /// First event time (ns).
        earlier: Nanos,
        /// Second event time (ns).
        later: Nanos,
    },
}

/// Why bytes are not a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// Not well-formed CBOR or JSON.
    #[error("record is not well-formed {syntax}: {reason}")]
    Syntax {
        /// `CBOR` or `JSON`.
        syntax: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// Well-formed, but not a record of a supported version.
    #[error("record does not follow the batch format: {reason}")]
    Format {
        /// What is wrong.
        reason: String,
    },
}

/// One series' readings, as encoded.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SeriesBlock {
    pub(crate) name: String,
    pub(crate) unit: Option<String>,
    pub(crate) tags: Vec<(String, String)>,
    pub(crate) t0: Nanos,
    pub(crate) tick: i64,
    pub(crate) dt: Vec<i64>,
    pub(crate) values: Vec<Option<f64>>,
}

/// One series' aggregate windows, as encoded: columns per statistic.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct AggregateBlock {
    pub(crate) name: String,
    pub(crate) unit: Option<String>,
    pub(crate) tags: Vec<(String, String)>,
    pub(crate) width: u64,
    pub(crate) start0: Nanos,
    pub(crate) dstart: Vec<u64>,
    pub(crate) count: Vec<u64>,
    pub(crate) sum: Vec<Option<f64>>,
    pub(crate) min: Vec<Option<f64>>,
    pub(crate) max: Vec<Option<f64>>,
    pub(crate) m2: Vec<Option<f64>>,
}

/// One series' window emissions, as encoded: columns, one entry per emission.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct WindowBlock {
    pub(crate) name: String,
    pub(crate) unit: Option<String>,
    pub(crate) tags: Vec<(String, String)>,
    pub(crate) key: Vec<Nanos>,
    pub(crate) start: Vec<Nanos>,
    pub(crate) end: Vec<Nanos>,
    pub(crate) revision: Vec<u32>,
    pub(crate) count: Vec<u64>,
    pub(crate) sum: Vec<Option<f64>>,
    pub(crate) min: Vec<Option<f64>>,
    pub(crate) max: Vec<Option<f64>>,
    pub(crate) m2: Vec<Option<f64>>,
    pub(crate) first_ts: Vec<Option<Nanos>>,
    pub(crate) first: Vec<Option<f64>>,
    pub(crate) last_ts: Vec<Option<Nanos>>,
    pub(crate) last: Vec<Option<f64>>,
    /// Quantile sketches, DDSketch protobuf (CBOR column 17); hex in JSON. Empty bytes for a
    /// window without one (or with a sketch of the older form).
    #[serde(rename = "sketch_proto", default, with = "crate::json::hex_column")]
    pub(crate) sketch_proto: Vec<Vec<u8>>,
    /// Quantile sketches in DataDog's Java binary encoding (CBOR column 13), as format version 1
    /// wrote them; hex in JSON. Empty unless a window of the block carries one.
    #[serde(rename = "sketch", default, skip_serializing_if = "Vec::is_empty", with = "crate::json::hex_column")]
    pub(crate) sketch_java: Vec<Vec<u8>>,
    /// The custom aggregate's values (all three custom columns are empty when the pipeline has
    /// none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) custom: Vec<Option<BTreeMap<String, Option<f64>>>>,
    /// Its partials; hex in JSON.
    #[serde(default, skip_serializing_if = "Vec::is_empty", with = "crate::json::hex_column")]
    pub(crate) custom_partial: Vec<Vec<u8>>,
    /// Readings the partials leave out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) custom_missing: Vec<u64>,
}

/// Everything of a record besides its header, as encoded.
#[derive(Default)]
pub(crate) struct Summaries<'a> {
    pub(crate) blocks: Vec<SeriesBlock>,
    pub(crate) aggregates: Vec<AggregateBlock>,
    pub(crate) windows: Vec<WindowBlock>,
    pub(crate) coarsened: Option<&'a Coarsened>,
    pub(crate) dropped: Option<&'a Span>,
}

/// The parts of a record as read, before checking.
pub(crate) struct Parts {
    pub(crate) header: RecordHeader,
    pub(crate) blocks: Vec<SeriesBlock>,
    pub(crate) aggregates: Vec<AggregateBlock>,
    pub(crate) windows: Vec<WindowBlock>,
    pub(crate) coarsened: Option<Coarsened>,
    pub(crate) dropped: Option<Span>,
}

/// The blocks of a record's parts, for writing.
pub(crate) fn summaries(record: &Record) -> Result<Summaries<'_>, WriteError> {
    Ok(Summaries {
        blocks: readings(&record.batch)?,
        aggregates: record.aggregates.iter().map(aggregate_block).collect(),
        windows: record.windows.iter().map(window_block).collect(),
        coarsened: record.coarsened.as_ref(),
        dropped: record.dropped.as_ref(),
    })
}

/// The series blocks of a batch.
pub(crate) fn readings(batch: &Batch) -> Result<Vec<SeriesBlock>, WriteError> {
    group(batch).into_iter().map(|(series, readings)| block(batch, series, &readings)).collect()
}

/// Groups readings per series (order of first appearance), keeping their order.
pub(crate) fn group(batch: &Batch) -> Vec<(&Series, Vec<usize>)> {
    let mut position: HashMap<u32, usize> = HashMap::new();
    let mut groups: Vec<(&Series, Vec<usize>)> = Vec::new();
    for (reading, &series_idx) in batch.series_idx().iter().enumerate() {
        let slot = *position.entry(series_idx).or_insert_with(|| {
            groups.push((&batch.series()[series_idx as usize], Vec::new()));
            groups.len() - 1
        });
        groups[slot].1.push(reading);
    }
    groups
}

pub(crate) fn block(batch: &Batch, series: &Series, readings: &[usize]) -> Result<SeriesBlock, WriteError> {
    let ts: Vec<Nanos> = readings.iter().map(|&i| batch.timestamps()[i]).collect();
    let deltas: Vec<i128> = ts.windows(2).map(|w| i128::from(w[1]) - i128::from(w[0])).collect();
    let tick = TICKS
        .into_iter()
        .find(|&tick| deltas.iter().all(|d| d % i128::from(tick) == 0))
        .expect("a tick of 1 ns divides every delta");
    let dt = deltas
        .iter()
        .enumerate()
        .map(|(i, d)| {
            i64::try_from(d / i128::from(tick)).map_err(|_| WriteError::TimeSpan {
                series: series.name.clone(),
                earlier: ts[i],
                later: ts[i + 1],
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(SeriesBlock {
        name: series.name.clone(),
        unit: series.unit.clone(),
        tags: series.tags.clone(),
        t0: ts[0],
        tick,
        dt,
        values: readings.iter().map(|&i| Some(batch.values()[i])).collect(),
    })
}

pub(crate) fn window_block(series: &WindowSeries) -> WindowBlock {
    let windows = &series.windows;
    let stat = |f: fn(&WindowValue) -> f64| windows.iter().map(|w| Some(f(w)).filter(|_| w.stats.count > 0)).collect();
    WindowBlock {
        name: series.series.name.clone(),
        unit: series.series.unit.clone(),
        tags: series.series.tags.clone(),
        key: windows.iter().map(|w| w.key).collect(),
        start: windows.iter().map(|w| w.start).collect(),
        end: windows.iter().map(|w| w.end).collect(),
        revision: windows.iter().map(|w| w.revision).collect(),
        count: windows.iter().map(|w| w.stats.count).collect(),
        sum: stat(|w| w.stats.sum),
        min: stat(|w| w.stats.min),
        max: stat(|w| w.stats.max),
        m2: stat(|w| w.stats.m2),
        first_ts: windows.iter().map(|w| w.first.map(|f| f.ts)).collect(),
        first: windows.iter().map(|w| w.first.map(|f| f.value)).collect(),
        last_ts: windows.iter().map(|w| w.last.map(|l| l.ts)).collect(),
        last: windows.iter().map(|w| w.last.map(|l| l.value)).collect(),
        sketch_proto: windows
            .iter()
            .map(|w| match &w.sketch {
                Sketch::Protobuf(bytes) => bytes.clone(),
                Sketch::None | Sketch::JavaBinary(_) => Vec::new(),
            })
            .collect(),
        sketch_java: if windows.iter().any(|w| matches!(w.sketch, Sketch::JavaBinary(_))) {
            windows
                .iter()
                .map(|w| match &w.sketch {
                    Sketch::JavaBinary(bytes) => bytes.clone(),
                    Sketch::None | Sketch::Protobuf(_) => Vec::new(),
                })
                .collect()
        } else {
            Vec::new()
        },
        ..custom_columns(windows)
    }
}

pub(crate) fn aggregate_block(aggregate: &AggregateSeries) -> AggregateBlock {
    let windows = &aggregate.windows;
    let column = |stat: fn(&Window) -> f64| windows.iter().map(|w| Some(stat(w))).collect();
    AggregateBlock {
        name: aggregate.series.name.clone(),
        unit: aggregate.series.unit.clone(),
        tags: aggregate.series.tags.clone(),
        width: aggregate.width,
        start0: windows.first().map_or(0, |w| w.start),
        dstart: windows
            .windows(2)
            .map(|pair| (pair[1].start - pair[0].start).unsigned_abs() / aggregate.width)
            .collect(),
        count: windows.iter().map(|w| w.count).collect(),
        sum: column(|w| w.sum),
        min: column(|w| w.min),
        max: column(|w| w.max),
        m2: column(|w| w.m2),
    }
}

/// The custom columns of a window block: empty when no window has a custom aggregate.
pub(crate) fn custom_columns(windows: &[WindowValue]) -> WindowBlock {
    if windows.iter().all(|w| w.custom.is_none()) {
        return WindowBlock::default();
    }
    let none = CustomWindow::default();
    let custom = || windows.iter().map(|w| w.custom.as_ref().unwrap_or(&none));
    WindowBlock {
        custom: custom()
            .map(|c| c.values.as_ref().map(|v| v.iter().map(|(k, v)| (k.clone(), Some(*v))).collect()))
            .collect(),
        custom_partial: custom().map(|c| c.partial.clone()).collect(),
        custom_missing: custom().map(|c| c.missing).collect(),
        ..WindowBlock::default()
    }
}

pub(crate) fn record_of(parts: Parts) -> Result<Record, ReadError> {
    let mut builder = BatchBuilder::new();
    for block in parts.blocks {
        if block.values.is_empty() || block.dt.len() + 1 != block.values.len() || block.tick <= 0 {
            return Err(ReadError::Format {
                reason: format!(
                    "series {:?}: {} values need {} time deltas and a positive tick",
                    block.name,
                    block.values.len(),
                    block.values.len().saturating_sub(1)
                ),
            });
        }
        let series = Series { name: block.name, unit: block.unit, tags: block.tags };
        let index = builder.intern(&series);
        let mut ts = block.t0;
        for (i, value) in block.values.into_iter().enumerate() {
            if i > 0 {
                ts = block.dt[i - 1].checked_mul(block.tick).and_then(|d| ts.checked_add(d)).ok_or_else(|| {
                    ReadError::Format { reason: format!("series {:?}: event time overflows", series.name) }
                })?;
            }
            builder.push(index, ts, value.unwrap_or(f64::NAN));
        }
    }
    let aggregates = parts.aggregates.into_iter().map(aggregate_series).collect::<Result<_, _>>()?;
    let windows = parts.windows.into_iter().map(window_series).collect::<Result<_, _>>()?;
    Ok(Record {
        header: parts.header,
        batch: builder.finish(),
        aggregates,
        windows,
        coarsened: parts.coarsened,
        dropped: parts.dropped,
    })
}

fn aggregate_series(block: AggregateBlock) -> Result<AggregateSeries, ReadError> {
    let windows = block.count.len();
    let columns = [&block.sum, &block.min, &block.max, &block.m2];
    if windows == 0 || block.dstart.len() + 1 != windows || columns.iter().any(|c| c.len() != windows) {
        return Err(ReadError::Format {
            reason: format!(
                "aggregates of {:?}: every statistic needs one value per window and one start delta fewer",
                block.name
            ),
        });
    }
    let width = i64::try_from(block.width).ok().filter(|w| *w > 0).ok_or_else(|| ReadError::Format {
        reason: format!("aggregates of {:?}: window width {} is not a positive i64", block.name, block.width),
    })?;
    let mut start = block.start0;
    let mut out = Vec::with_capacity(windows);
    for i in 0..windows {
        if i > 0 {
            start = i64::try_from(block.dstart[i - 1])
                .ok()
                .and_then(|d| d.checked_mul(width))
                .and_then(|d| start.checked_add(d))
                .ok_or_else(|| ReadError::Format {
                    reason: format!("aggregates of {:?}: window start overflows", block.name),
                })?;
        }
        let stat = |column: &Vec<Option<f64>>| column[i].unwrap_or(f64::NAN);
        out.push(Window {
            start,
            count: block.count[i],
            sum: stat(&block.sum),
            min: stat(&block.min),
            max: stat(&block.max),
            m2: stat(&block.m2),
        });
    }
    Ok(AggregateSeries {
        series: Series { name: block.name, unit: block.unit, tags: block.tags },
        width: block.width,
        windows: out,
    })
}

fn window_series(block: WindowBlock) -> Result<WindowSeries, ReadError> {
    let n = block.key.len();
    let lengths = [
        block.start.len(),
        block.end.len(),
        block.revision.len(),
        block.count.len(),
        block.sum.len(),
        block.min.len(),
        block.max.len(),
        block.m2.len(),
        block.first_ts.len(),
        block.first.len(),
        block.last_ts.len(),
        block.last.len(),
    ];
    let sketch_columns = [block.sketch_proto.len(), block.sketch_java.len()];
    let custom_lengths = [block.custom.len(), block.custom_partial.len(), block.custom_missing.len()];
    let has_custom = custom_lengths.iter().any(|len| *len > 0);
    if lengths.iter().any(|len| *len != n)
        || sketch_columns.iter().any(|len| *len != 0 && *len != n)
        || (has_custom && custom_lengths.iter().any(|len| *len != n))
    {
        return Err(ReadError::Format {
            reason: format!("windows of {:?}: every column needs one entry per window", block.name),
        });
    }
    let timed =
        |ts: Option<Nanos>, value: Option<f64>| ts.map(|ts| TimedValue { ts, value: value.unwrap_or(f64::NAN) });
    let stat = |column: &Vec<Option<f64>>, i: usize| column[i].unwrap_or(f64::NAN);
    let windows = (0..n)
        .map(|i| WindowValue {
            key: block.key[i],
            start: block.start[i],
            end: block.end[i],
            revision: block.revision[i],
            stats: Window {
                start: block.start[i],
                count: block.count[i],
                sum: stat(&block.sum, i),
                min: stat(&block.min, i),
                max: stat(&block.max, i),
                m2: stat(&block.m2, i),
            },
            first: timed(block.first_ts[i], block.first[i]),
            last: timed(block.last_ts[i], block.last[i]),
            sketch: sketch_at(&block, i),
            custom: has_custom.then(|| CustomWindow {
                values: block.custom[i]
                    .as_ref()
                    .map(|values| values.iter().map(|(k, v)| (k.clone(), v.unwrap_or(f64::NAN))).collect()),
                partial: block.custom_partial[i].clone(),
                missing: block.custom_missing[i],
            }),
        })
        .collect();
    Ok(WindowSeries { series: Series { name: block.name, unit: block.unit, tags: block.tags }, windows })
}

/// Window `i`'s sketch: the protobuf one, else one of the older form, else none.
fn sketch_at(block: &WindowBlock, i: usize) -> Sketch {
    match (block.sketch_proto.get(i), block.sketch_java.get(i)) {
        (Some(proto), _) if !proto.is_empty() => Sketch::Protobuf(proto.clone()),
        (_, Some(java)) if !java.is_empty() => Sketch::JavaBinary(java.clone()),
        _ => Sketch::None,
    }
}
