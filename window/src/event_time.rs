//! Event-time windows per series: tumbling, sliding (hopping) and session windows, with a
//! watermark, corrections for late readings and a side output for readings too late to use.
//!
//! Per series, `max_ts` is the highest event time seen and the **watermark** is `max_ts −
//! allowed_lateness`. A window `[start, end)`:
//! - is **emitted** (revision 0) once `max_ts ≥ end`: in-order readings can no longer reach it;
//! - stays **open for corrections** while `end > watermark`: a reading that reaches it then is
//!   merged in and the window is emitted again with the next revision (at most once per
//!   [`Windows::flush`], however many readings arrived);
//! - is **closed** (forgotten) once `end ≤ watermark`. A reading whose every window is closed is
//!   **too late**: it goes to the side output, counted, and changes nothing.
//!
//! A series that receives nothing for `idle_timeout` (processing time) has its pending windows
//! emitted anyway; one idle for `idle_timeout + allowed_lateness` is forgotten.
//!
//! Session windows span a series' readings whose gaps are shorter than `gap`: `[first, last +
//! gap)`. A late reading can extend a session backwards or join two; the joined session keeps the
//! identity (`key`) of the earlier one and is emitted with its next revision, and the other, if
//! it had been emitted, is emitted once more as **retracted**.
//!
//! **Invariant (order-insensitive within lateness):** readings that arrive no more than
//! `allowed_lateness` behind their series' `max_ts` give the same final windows — the last
//! revision of each key — as the same readings sorted by time (see [`super::aggregate`] for what
//! "the same" means for floating-point sums). A window whose readings all arrive in time order is
//! emitted exactly once.
//!
//! With [`WindowSpec::custom_aggregate`], every window also keeps a [`CustomPartial`] for a
//! custom aggregate ([`crate::accumulator`]); call [`Windows::fold_custom`] before
//! [`Windows::flush`] so that emissions carry it complete.
//!
//! The whole state is plain data ([`Windows`] is serde), committed with the group that produced
//! it.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::accumulator::{Accumulator, CustomFailure, CustomPartial};
use super::aggregate::Aggregate;
use crate::Nanos;

/// The kind of window and its sizes, ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowKind {
    /// Back-to-back windows of `width`, aligned to the Unix epoch.
    Tumbling { width: u64 },
    /// Windows of `width` starting every `slide` (aligned to the epoch); a reading belongs to
    /// `width / slide` of them.
    Sliding { width: u64, slide: u64 },
    /// Readings no more than `gap` apart share a window.
    Session { gap: u64 },
}

/// How a pipeline windows its readings (validated by `config`: sizes positive, `slide ≤ width`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSpec {
    /// The kind and sizes.
    pub kind: WindowKind,
    /// How far behind its series' newest reading a reading may arrive and still count, ns.
    pub allowed_lateness: u64,
    /// Processing time after which a quiet series' pending windows are emitted, ns.
    pub idle_timeout: u64,
    /// Whether windows also keep a custom aggregate's partial ([`crate::accumulator`]).
    pub custom_aggregate: bool,
}

/// One emission of a window.
#[derive(Clone, Debug)]
pub struct WindowResult {
    /// The series.
    pub series: String,
    /// The window's identity within its series: its start (for a session, the start it was
    /// created with).
    pub key: Nanos,
    /// First event time covered.
    pub start: Nanos,
    /// End of the window (exclusive).
    pub end: Nanos,
    /// 0 for the first emission, then one more per correction.
    pub revision: u32,
    /// Set when this session was joined into another (`aggregate` is then empty).
    pub retracted: bool,
    /// The aggregate of the window's readings.
    pub aggregate: Aggregate,
    /// The custom aggregate's partial, with [`WindowSpec::custom_aggregate`] (none when retracted).
    pub custom: Option<CustomPartial>,
}

/// A reading that arrived after every window it belongs to had closed.
#[derive(Clone, Debug, PartialEq)]
pub struct TooLate {
    /// The series.
    pub series: String,
    /// Its event time.
    pub ts: Nanos,
    /// Its value.
    pub value: f64,
    /// The series' watermark when it arrived.
    pub watermark: Nanos,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct OpenWindow {
    start: Nanos,
    end: Nanos,
    aggregate: Aggregate,
    /// The revision emitted last, if any.
    emitted: Option<u32>,
    /// Changed since it was last emitted.
    changed: bool,
    /// The custom aggregate, with [`WindowSpec::custom_aggregate`].
    #[serde(default)]
    custom: Option<CustomPartial>,
}

impl OpenWindow {
    fn new(start: Nanos, end: Nanos) -> Self {
        Self { start, end, aggregate: Aggregate::default(), emitted: None, changed: false, custom: None }
    }

    fn add(&mut self, spec: &WindowSpec, ts: Nanos, value: f64) {
        if spec.custom_aggregate {
            // A window opened before custom aggregation was configured misses what it held.
            let held = self.aggregate.count();
            self.custom.get_or_insert_with(|| CustomPartial::already_missing(held)).add(ts, value);
        }
        self.aggregate.add(ts, value);
        self.changed = true;
    }

    /// Merges `other` (a session joined into this one).
    fn absorb(&mut self, spec: &WindowSpec, other: OpenWindow) {
        if spec.custom_aggregate {
            let held = self.aggregate.count();
            let custom = self.custom.get_or_insert_with(|| CustomPartial::already_missing(held));
            custom.join(other.custom.unwrap_or_else(|| CustomPartial::already_missing(other.aggregate.count())));
        }
        self.aggregate.merge(&other.aggregate);
        self.start = self.start.min(other.start);
        self.end = self.end.max(other.end);
        self.changed = true;
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct SeriesWindows {
    max_ts: Nanos,
    /// Processing time of the last reading.
    last_seen: Nanos,
    /// By key.
    windows: BTreeMap<Nanos, OpenWindow>,
    /// Emitted sessions joined into another since the last flush: key, start, end, revision.
    retractions: Vec<(Nanos, Nanos, Nanos, u32)>,
}

/// The windows of every series of one pipeline.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Windows {
    series: HashMap<String, SeriesWindows>,
    /// Readings sent to the side output so far.
    pub too_late: u64,
}

fn saturating(ns: u64) -> Nanos {
    Nanos::try_from(ns).unwrap_or(Nanos::MAX)
}

impl WindowKind {
    /// The `[start, end)` of the fixed windows holding `ts` (none for sessions).
    fn fixed_windows(self, ts: Nanos) -> impl Iterator<Item = (Nanos, Nanos)> {
        let (width, slide) = match self {
            Self::Tumbling { width } => (saturating(width), saturating(width)),
            Self::Sliding { width, slide } => (saturating(width), saturating(slide)),
            Self::Session { .. } => (0, 1),
        };
        let last_start = ts.div_euclid(slide) * slide;
        (0..)
            .map(move |i| last_start - i * slide)
            .take_while(move |start| *start > ts.saturating_sub(width))
            .map(move |start| (start, start.saturating_add(width)))
    }
}

impl SeriesWindows {
    fn watermark(&self, spec: &WindowSpec) -> Nanos {
        self.max_ts.saturating_sub(saturating(spec.allowed_lateness))
    }
}

impl Windows {
    /// Whether `series` has windows or a clock here (it is forgotten after being idle).
    pub fn is_tracking(&self, series: &str) -> bool {
        self.series.contains_key(series)
    }

    /// Adds one reading of `series` at event time `ts`, arriving at processing time `now`.
    /// Returns it as [`TooLate`] if every window it belongs to has closed.
    pub fn add(&mut self, spec: &WindowSpec, series: &str, ts: Nanos, value: f64, now: Nanos) -> Result<(), TooLate> {
        let state = self.series.entry(series.to_owned()).or_insert_with(|| SeriesWindows {
            max_ts: ts,
            last_seen: now,
            windows: BTreeMap::new(),
            retractions: Vec::new(),
        });
        let watermark = state.watermark(spec);
        let accepted = match spec.kind {
            WindowKind::Session { gap } => add_to_session(state, spec, saturating(gap), watermark, ts, value),
            kind => {
                let mut accepted = false;
                for (start, end) in kind.fixed_windows(ts).filter(|(_, end)| *end > watermark) {
                    state.windows.entry(start).or_insert_with(|| OpenWindow::new(start, end)).add(spec, ts, value);
                    accepted = true;
                }
                accepted
            }
        };
        if !accepted {
            self.too_late += 1;
            return Err(TooLate { series: series.to_owned(), ts, value, watermark });
        }
        state.max_ts = state.max_ts.max(ts);
        state.last_seen = now;
        Ok(())
    }

    /// Folds the readings added since the last call (and sessions joined since) into each
    /// window's custom partial, with one `add` per window. What `accumulator` refuses is counted
    /// missing in its window and returned, ordered by series, then key.
    pub fn fold_custom(&mut self, accumulator: &mut dyn Accumulator) -> Vec<CustomFailure> {
        let mut failures = Vec::new();
        let mut names: Vec<&String> = self.series.keys().collect();
        names.sort();
        let names: Vec<String> = names.into_iter().cloned().collect();
        for name in names {
            let state = self.series.get_mut(&name).expect("listed above");
            for (key, window) in &mut state.windows {
                if let Some(custom) = &mut window.custom {
                    custom.fold(accumulator, &name, *key, &mut failures);
                }
            }
        }
        failures
    }

    /// Emits what is due at processing time `now` — windows `max_ts` passed, corrections, idle
    /// series' pending windows, retractions — and closes what the watermark passed. Results are
    /// ordered by series, then key.
    pub fn flush(&mut self, spec: &WindowSpec, now: Nanos) -> Vec<WindowResult> {
        let mut results = Vec::new();
        let idle_after = saturating(spec.idle_timeout);
        let forget_after = idle_after.saturating_add(saturating(spec.allowed_lateness));
        let mut names: Vec<&String> = self.series.keys().collect();
        names.sort();
        let names: Vec<String> = names.into_iter().cloned().collect();
        for name in names {
            let state = self.series.get_mut(&name).expect("listed above");
            let quiet_for = now.saturating_sub(state.last_seen);
            let idle = quiet_for >= idle_after;
            let watermark = state.watermark(spec);
            for (key, start, end, revision) in state.retractions.drain(..) {
                let aggregate = Aggregate::default();
                results.push(WindowResult {
                    series: name.clone(),
                    key,
                    start,
                    end,
                    revision,
                    retracted: true,
                    aggregate,
                    custom: None,
                });
            }
            for (key, window) in &mut state.windows {
                let due = window.end <= state.max_ts || idle;
                if due && (window.changed || window.emitted.is_none()) {
                    let revision = window.emitted.map_or(0, |r| r + 1);
                    window.emitted = Some(revision);
                    window.changed = false;
                    results.push(WindowResult {
                        series: name.clone(),
                        key: *key,
                        start: window.start,
                        end: window.end,
                        revision,
                        retracted: false,
                        aggregate: window.aggregate.clone(),
                        custom: window.custom.clone(),
                    });
                }
            }
            state.windows.retain(|_, window| window.end > watermark);
            if quiet_for >= forget_after {
                self.series.remove(&name);
            }
        }
        results.sort_by(|a, b| (&a.series, a.key).cmp(&(&b.series, b.key)));
        results
    }
}

/// Adds a reading to the session it belongs to, creating, extending or joining sessions; false
/// if it would only form a session that is already closed.
fn add_to_session(
    state: &mut SeriesWindows,
    spec: &WindowSpec,
    gap: Nanos,
    watermark: Nanos,
    ts: Nanos,
    value: f64,
) -> bool {
    // Sessions are disjoint and each key lies inside its session, so key order is time order.
    let touching: Vec<Nanos> = state
        .windows
        .iter()
        .filter(|(_, w)| w.start.saturating_sub(gap) < ts && ts < w.end)
        .map(|(key, _)| *key)
        .collect();
    let Some((&kept, joined)) = touching.split_first() else {
        if ts.saturating_add(gap) <= watermark {
            return false;
        }
        state.windows.entry(ts).or_insert_with(|| OpenWindow::new(ts, ts.saturating_add(gap))).add(spec, ts, value);
        return true;
    };
    let mut absorbed = Vec::new();
    for key in joined {
        let other = state.windows.remove(key).expect("listed above");
        if let Some(revision) = other.emitted {
            state.retractions.push((*key, other.start, other.end, revision + 1));
        }
        absorbed.push(other);
    }
    let session = state.windows.get_mut(&kept).expect("listed above");
    for other in absorbed {
        session.absorb(spec, other);
    }
    session.add(spec, ts, value);
    session.start = session.start.min(ts);
    session.end = session.end.max(ts.saturating_add(gap));
    true
}

#[cfg(test)]
mod tests;
