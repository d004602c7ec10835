//! The model of a record: what a gateway forwards, independent of its encoding.
//!
//! A [`Record`] carries readings (a [`Batch`]), or summarises other records, or both: a
//! *coarsened* record carries aggregate windows ([`AggregateSeries`]) and the [`Span`] of original
//! records it replaced; a *drop marker* carries only the span of records dropped. A pipeline with
//! a window stage adds its emissions ([`WindowSeries`]: one [`WindowValue`] per emission, with its
//! quantile [`Sketch`]).
//!
//! **Invariant (mergeable):** every statistic of a [`Window`] (from `weir-window`'s `moments`)
//! merges exactly, in any order and grouping, up to floating-point rounding of sums — so windows
//! coarsened once can be coarsened again, and a consumer can merge them further, with the same
//! results as aggregating the original readings (up to that rounding).

use serde::{Deserialize, Serialize};

pub use weir_window::aggregate::TimedValue;
pub use weir_window::moments::{Window, window_start};

use crate::batch::{Batch, Nanos, Series};
use crate::sketch::Sketch;

/// Identity and metadata of a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    /// Gateway that produced it.
    pub gateway: String,
    /// Stream (pipeline) within the gateway.
    pub stream: String,
    /// Position in the stream: starts at 1, increases by one per record.
    pub seq: u64,
    /// Processing time at which the record was encoded.
    pub encoded_at: Nanos,
}

impl RecordHeader {
    /// The end-to-end id `<gateway>.<stream>.<seq>`, used as `Nats-Msg-Id` and for dedup.
    pub fn record_id(&self) -> String {
        format!("{}.{}.{}", self.gateway, self.stream, self.seq)
    }
}

/// A record: readings, or a summary of other records, or both.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Its header.
    pub header: RecordHeader,
    /// Its readings.
    pub batch: Batch,
    /// Aggregate windows (coarsened records).
    pub aggregates: Vec<AggregateSeries>,
    /// Event-time window emissions (pipelines with a window stage).
    pub windows: Vec<WindowSeries>,
    /// Set on a coarsened record: the original records it replaces and the window width.
    pub coarsened: Option<Coarsened>,
    /// Set on a drop marker: the original records that were dropped.
    pub dropped: Option<Span>,
}

/// What a coarsened record replaced, and how.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coarsened {
    /// The original records it stands for.
    pub span: Span,
    /// Width of its aggregate windows, ns.
    pub width: u64,
}

/// What a record is, as far as the outbox is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    /// Readings as processed.
    Readings,
    /// Aggregates replacing original records, in windows of this width (ns).
    Coarsened {
        /// The window width, ns.
        width: u64,
    },
    /// A marker for dropped records.
    Dropped,
}

impl Record {
    /// A record of readings.
    pub fn of_readings(header: RecordHeader, batch: Batch) -> Self {
        Self { header, batch, aggregates: Vec::new(), windows: Vec::new(), coarsened: None, dropped: None }
    }

    /// What the record is.
    pub fn kind(&self) -> RecordKind {
        match (&self.coarsened, &self.dropped) {
            (Some(coarsened), _) => RecordKind::Coarsened { width: coarsened.width },
            (None, Some(_)) => RecordKind::Dropped,
            (None, None) => RecordKind::Readings,
        }
    }

    /// The original records this record stands for: its span when it summarises, else itself.
    pub fn span(&self) -> Span {
        if let Some(coarsened) = &self.coarsened {
            return coarsened.span.clone();
        }
        if let Some(dropped) = &self.dropped {
            return dropped.clone();
        }
        let times = self.batch.timestamps().iter().fold(None, |range: Option<(Nanos, Nanos)>, &ts| {
            Some(range.map_or((ts, ts), |(lo, hi)| (lo.min(ts), hi.max(ts))))
        });
        Span::of_record(self.header.seq, self.batch.len() as u64, times, self.header.encoded_at)
    }
}

/// Which original records a coarsened record or a drop marker stands for, exactly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    /// Seq of the first original record.
    pub first_seq: u64,
    /// Seq of the last original record.
    pub last_seq: u64,
    /// How many original records (seqs between the two that no record used are not counted).
    pub records: u64,
    /// How many readings the original records held.
    pub readings: u64,
    /// Earliest event time among those readings (none when there were none).
    pub earliest: Option<Nanos>,
    /// Latest event time among those readings.
    pub latest: Option<Nanos>,
    /// When the oldest of the original records was encoded (processing time).
    pub first_encoded_at: Nanos,
}

impl Span {
    /// The span of one original record.
    pub fn of_record(seq: u64, readings: u64, times: Option<(Nanos, Nanos)>, encoded_at: Nanos) -> Self {
        Self {
            first_seq: seq,
            last_seq: seq,
            records: 1,
            readings,
            earliest: times.map(|(earliest, _)| earliest),
            latest: times.map(|(_, latest)| latest),
            first_encoded_at: encoded_at,
        }
    }

    /// Extends this span by `later`, which follows it in seq order.
    pub fn merge(&mut self, later: &Span) {
        self.first_seq = self.first_seq.min(later.first_seq);
        self.last_seq = self.last_seq.max(later.last_seq);
        self.records += later.records;
        self.readings += later.readings;
        self.earliest = min_option(self.earliest, later.earliest);
        self.latest = self.latest.max(later.latest);
        self.first_encoded_at = self.first_encoded_at.min(later.first_encoded_at);
    }
}

fn min_option(a: Option<Nanos>, b: Option<Nanos>) -> Option<Nanos> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One series' windows of one width, ascending by start, each start once.
#[derive(Clone, Debug, PartialEq)]
pub struct AggregateSeries {
    /// The series.
    pub series: Series,
    /// Width of every window, ns (a positive multiple of a second).
    pub width: u64,
    /// The windows.
    pub windows: Vec<Window>,
}

/// One emission of an event-time window (the window stage's output), as a record carries it.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowValue {
    /// The window's identity within its series: its start (a session: the start it was created
    /// with). A later revision of the same key replaces this one.
    pub key: Nanos,
    /// First event time covered, ns.
    pub start: Nanos,
    /// End (exclusive), ns.
    pub end: Nanos,
    /// 0 for the first emission, one more per correction.
    pub revision: u32,
    /// Count, sum, min, max, m2 of the window's readings (`start` as above). A count of 0 means
    /// the window holds nothing now: a session joined into another, or only NaN readings.
    pub stats: Window,
    /// The earliest reading (none when the count is 0).
    pub first: Option<TimedValue>,
    /// The latest reading.
    pub last: Option<TimedValue>,
    /// The quantile sketch (none when the count is 0).
    pub sketch: Sketch,
    /// The custom aggregate, in pipelines whose window has one.
    pub custom: Option<CustomWindow>,
}

/// A window's custom aggregate (a function of the `accumulator` world) as a record carries it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CustomWindow {
    /// What the function's `finish` returned, sorted by name; none when it failed, or when the
    /// window holds nothing now.
    pub values: Option<Vec<(String, f64)>>,
    /// The partial (the function's own bytes), so that a consumer with the same function can
    /// merge windows further; empty when there is none.
    pub partial: Vec<u8>,
    /// Readings of the window that the partial leaves out because the function refused them.
    pub missing: u64,
}

/// One series' window emissions, by key then revision.
#[derive(Clone, Debug, PartialEq)]
pub struct WindowSeries {
    /// The series.
    pub series: Series,
    /// The emissions.
    pub windows: Vec<WindowValue>,
}

impl WindowValue {
    /// The value of `result` from the window stage.
    pub fn of(result: &weir_window::event_time::WindowResult) -> Self {
        let aggregate = &result.aggregate;
        let empty = Window { start: result.start, count: 0, sum: f64::NAN, min: f64::NAN, max: f64::NAN, m2: f64::NAN };
        let stats = aggregate.moments().map_or(empty, |m| Window { start: result.start, ..m });
        let counted = stats.count > 0;
        Self {
            key: result.key,
            start: result.start,
            end: result.end,
            revision: result.revision,
            stats,
            first: aggregate.first(),
            last: aggregate.last(),
            sketch: if counted { Sketch::of(aggregate) } else { Sketch::None },
            custom: None,
        }
    }
}
