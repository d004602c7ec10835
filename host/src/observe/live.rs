//! What each running pipeline shows of itself while it runs, in memory only: whether its source
//! and its uplink are connected, when the central broker last confirmed a record, its watermark,
//! its flow and recent series (see `view`), and the tap — the stream of what it processes that
//! `weir tap` watches.
//!
//! The pipeline's stages write here ([`PipelineLive`] is cloned into the source, the processor's
//! core and the sink); the HTTP endpoints read.
//!
//! **Invariants:** a writer never waits for a reader: links and times are atomics, the view's
//! lock is held only to copy into or out of it, and the tap is a bounded broadcast channel that
//! drops what a slow watcher cannot take — so watching never slows, holds or changes the data.
//! Nothing is built for the tap while nobody watches. Memory is bounded (see `view`).
//!
//! The [`SensorBoard`] holds the sensors' statuses, written by their bus threads.

use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::broadcast;

use super::view::{Band, Flow, Rates, SeriesRing, Stage, series_key};
use crate::batch::{Batch, Message, Nanos};
use crate::config::{OnQuarantine, PipelineConfig, WhenFull};
use crate::state::stats::SensorStatus;
use crate::telemetry::now_nanos;
use weir_record::WindowSeries;

/// Batches of tap events a watcher may fall behind by before it misses some.
const TAP_CAPACITY: usize = 256;
/// Watchers of one pipeline's tap at once; more are turned away.
pub const TAP_WATCHERS: usize = 8;
/// Payload bytes a tapped message shows.
const TAP_PAYLOAD_PREFIX: usize = 256;

/// The state of a connection, as the page and `/readyz` show it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LinkState {
    /// Not connected yet since the start.
    Connecting,
    /// Connected.
    Up,
    /// Lost; reconnecting.
    Down,
}

/// A connection's state and since when, shared between the task owning the connection and the
/// readers.
#[derive(Clone, Debug)]
pub struct Link(Arc<(AtomicU8, AtomicI64)>);

impl Default for Link {
    fn default() -> Self {
        Self(Arc::new((AtomicU8::new(0), AtomicI64::new(now_nanos()))))
    }
}

impl Link {
    /// The connection is up.
    pub fn up(&self) {
        self.set(1);
    }

    /// The connection is lost.
    pub fn down(&self) {
        self.set(2);
    }

    fn set(&self, state: u8) {
        if self.0.0.swap(state, Ordering::Relaxed) != state {
            self.0.1.store(now_nanos(), Ordering::Relaxed);
        }
    }

    /// Its state, and since when (ns since the epoch).
    pub fn state(&self) -> (LinkState, Nanos) {
        let state = match self.0.0.load(Ordering::Relaxed) {
            0 => LinkState::Connecting,
            1 => LinkState::Up,
            _ => LinkState::Down,
        };
        (state, self.0.1.load(Ordering::Relaxed))
    }
}

/// One event of the tap.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Tapped {
    /// An input message, before decoding.
    Message {
        /// Its topic or subject.
        topic: String,
        /// Its payload's size.
        bytes: usize,
        /// The start of its payload, as text (invalid UTF-8 replaced).
        payload: String,
    },
    /// A reading: decoded (`stage = "decoded"`) or in a record (`"sent"`).
    Reading {
        /// Where in the pipeline.
        stage: &'static str,
        /// Its series (name and tags).
        series: String,
        /// Event time, ns since the epoch.
        ts: Nanos,
        /// Value.
        value: f64,
    },
    /// A window emission.
    Window {
        /// Its series.
        series: String,
        /// Its span, ns.
        start: Nanos,
        /// End (exclusive).
        end: Nanos,
        /// 0 for the first emission, one more per correction.
        revision: u32,
        /// Readings in it.
        count: u64,
        /// Mean of its readings.
        mean: f64,
    },
    /// A record for the outbox, as its batch is processed (before its commit).
    Record {
        /// Its seq.
        seq: u64,
        /// Its encoded size.
        bytes: usize,
    },
    /// A dead letter written.
    DeadLetter {
        /// The stage that refused.
        stage: String,
        /// Why.
        reason: String,
    },
    /// The watcher fell behind and missed this many batches of events.
    Missed {
        /// Batches missed.
        batches: u64,
    },
}

/// The facts of a pipeline that do not change while it runs.
#[derive(Clone, Debug, Serialize)]
pub struct Facts {
    /// Its name.
    pub name: String,
    /// Its flow: source kind → operators → sink kind.
    pub flow: String,
    /// The outbox's byte limit.
    pub max_bytes: u64,
    /// What a full outbox does.
    pub when_full: String,
    /// Whether a quarantined function holds the input.
    pub holds_when_quarantined: bool,
}

impl Facts {
    /// The facts of `config`; `flow` is its summary.
    pub fn of(config: &PipelineConfig, flow: String) -> Self {
        Self {
            name: config.name.to_string(),
            flow,
            max_bytes: config.outbox.max_bytes,
            when_full: match config.outbox.when_full {
                WhenFull::Reaggregate => "reaggregate",
                WhenFull::DropOldest => "drop_oldest",
                WhenFull::Block => "block",
            }
            .to_owned(),
            holds_when_quarantined: config.on_quarantine == OnQuarantine::Hold,
        }
    }
}

/// What one pipeline shows while it runs. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct PipelineLive(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    facts: Facts,
    source: Link,
    uplink: Link,
    /// When the central broker last confirmed a record, ns (0: not since the start).
    confirmed_at: AtomicI64,
    /// When the pipeline started, ns.
    started_at: Nanos,
    /// The highest event time seen (`Nanos::MIN`: none yet).
    watermark: AtomicI64,
    /// Messages the processor took and has not acknowledged yet.
    unacknowledged: AtomicU64,
    view: Mutex<View>,
    tap: broadcast::Sender<Arc<[Tapped]>>,
}

/// The view's parts behind one lock.
#[derive(Debug, Default)]
pub struct View {
    /// Flow per bucket.
    pub rates: Rates,
    /// Recent series.
    pub series: SeriesRing,
}

impl PipelineLive {
    /// A pipeline starting now.
    pub fn new(facts: Facts) -> Self {
        Self(Arc::new(Shared {
            facts,
            source: Link::default(),
            uplink: Link::default(),
            confirmed_at: AtomicI64::new(0),
            started_at: now_nanos(),
            watermark: AtomicI64::new(Nanos::MIN),
            unacknowledged: AtomicU64::new(0),
            view: Mutex::new(View::default()),
            tap: broadcast::channel(TAP_CAPACITY).0,
        }))
    }

    /// Its facts.
    pub fn facts(&self) -> &Facts {
        &self.0.facts
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.0.facts.name
    }

    /// Its source's connection.
    pub fn source(&self) -> &Link {
        &self.0.source
    }

    /// Its sink's connection to the central broker.
    pub fn uplink(&self) -> &Link {
        &self.0.uplink
    }

    /// The central broker confirmed a record now.
    pub fn confirmed(&self) {
        self.0.confirmed_at.store(now_nanos(), Ordering::Relaxed);
        self.0.uplink.up();
    }

    /// When the central broker last confirmed a record, ns; `None` not since the start.
    pub fn confirmed_at(&self) -> Option<Nanos> {
        Some(self.0.confirmed_at.load(Ordering::Relaxed)).filter(|at| *at != 0)
    }

    /// When the pipeline started, ns.
    pub fn started_at(&self) -> Nanos {
        self.0.started_at
    }

    /// The highest event time seen.
    pub fn watermark(&self) -> Option<Nanos> {
        Some(self.0.watermark.load(Ordering::Relaxed)).filter(|w| *w != Nanos::MIN)
    }

    /// The processor took `messages` messages.
    pub fn taken(&self, messages: usize) {
        self.0.unacknowledged.fetch_add(messages as u64, Ordering::Relaxed);
    }

    /// The processor acknowledged `messages` messages upstream.
    pub fn acknowledged(&self, messages: usize) {
        let by = messages as u64;
        let _ =
            self.0.unacknowledged.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| Some(n.saturating_sub(by)));
    }

    /// Messages the processor took and has not acknowledged upstream yet.
    pub fn unacknowledged(&self) -> u64 {
        self.0.unacknowledged.load(Ordering::Relaxed)
    }

    /// The view, locked (held only to copy out of it).
    pub fn view(&self) -> MutexGuard<'_, View> {
        self.0.view.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new watcher of the tap; `None` when [`TAP_WATCHERS`] already watch.
    pub fn watch(&self) -> Option<broadcast::Receiver<Arc<[Tapped]>>> {
        (self.0.tap.receiver_count() < TAP_WATCHERS).then(|| self.0.tap.subscribe())
    }

    /// Whether anyone watches the tap (nothing is built for it otherwise).
    pub fn tapped(&self) -> bool {
        self.0.tap.receiver_count() > 0
    }

    /// Sends `events` to the tap's watchers, if any.
    pub fn tap(&self, events: Vec<Tapped>) {
        if !events.is_empty() && self.tapped() {
            // No watcher left since: nothing to do.
            let _ = self.0.tap.send(events.into());
        }
    }

    /// The tap events of `messages`.
    pub fn tapped_messages(messages: &[Message]) -> Vec<Tapped> {
        messages
            .iter()
            .map(|m| Tapped::Message {
                topic: m.topic.clone(),
                bytes: m.payload.len(),
                payload: String::from_utf8_lossy(&m.payload[..m.payload.len().min(TAP_PAYLOAD_PREFIX)]).into_owned(),
            })
            .collect()
    }

    /// Readings were decoded.
    pub fn decoded(&self, batch: &Batch) {
        if let Some(latest) = batch.max_timestamp() {
            self.0.watermark.fetch_max(latest, Ordering::Relaxed);
        }
        self.view().series.add_batch(Stage::Raw, batch);
        if self.tapped() {
            self.tap(readings("decoded", batch));
        }
    }

    /// Readings and window emissions go into a record.
    pub fn sending(&self, batch: &Batch, windows: &[WindowSeries]) {
        let mut view = self.view();
        view.series.add_batch(Stage::Sent, batch);
        for series in windows {
            for window in &series.windows {
                let stats = &window.stats;
                if stats.count == 0 {
                    continue;
                }
                let mean = stats.sum / stats.count as f64;
                let band = Band {
                    start: window.start,
                    end: window.end,
                    count: stats.count,
                    min: stats.min,
                    mean,
                    max: stats.max,
                };
                view.series.add_band(&series.series, band);
            }
        }
        drop(view);
        if self.tapped() {
            let mut events = readings("sent", batch);
            for series in windows {
                let key = series_key(&series.series);
                events.extend(series.windows.iter().map(|w| Tapped::Window {
                    series: key.clone(),
                    start: w.start,
                    end: w.end,
                    revision: w.revision,
                    count: w.stats.count,
                    mean: if w.stats.count == 0 { f64::NAN } else { w.stats.sum / w.stats.count as f64 },
                }));
            }
            self.tap(events);
        }
    }

    /// A batch was processed with this flow.
    pub fn flowed(&self, flow: &Flow) {
        self.view().rates.add(now_nanos(), flow);
    }
}

fn readings(stage: &'static str, batch: &Batch) -> Vec<Tapped> {
    let keys: Vec<String> = batch.series().iter().map(series_key).collect();
    batch
        .iter()
        .zip(batch.series_idx())
        .map(|(sample, &index)| Tapped::Reading {
            stage,
            series: keys[index as usize].clone(),
            ts: sample.ts,
            value: sample.value,
        })
        .collect()
}

/// How every sensor on the gateway's own buses is doing: bus threads write their devices'
/// statuses, the stats snapshot, the status page, `/readyz` and the metrics read them.
#[derive(Clone, Debug, Default)]
pub struct SensorBoard(Arc<Mutex<Vec<SensorStatus>>>);

impl SensorBoard {
    fn lock(&self) -> MutexGuard<'_, Vec<SensorStatus>> {
        // Each write replaces one whole status: a panicked writer leaves nothing half-written.
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a device's status; returns its slot.
    pub fn add(&self, status: SensorStatus) -> usize {
        let mut statuses = self.lock();
        statuses.push(status);
        statuses.len() - 1
    }

    /// The status in `slot`.
    pub fn get(&self, slot: usize) -> Option<SensorStatus> {
        self.lock().get(slot).cloned()
    }

    /// Replaces the status in `slot`.
    pub fn set(&self, slot: usize, status: &SensorStatus) {
        if let Some(kept) = self.lock().get_mut(slot) {
            kept.clone_from(status);
        }
    }

    /// Every status, by pipeline and device.
    pub fn snapshot(&self) -> Vec<SensorStatus> {
        let mut statuses = self.lock().clone();
        statuses.sort_by(|a, b| (&a.pipeline, &a.device).cmp(&(&b.pipeline, &b.device)));
        statuses
    }
}

/// Every pipeline's live view, by name.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pipelines: Vec<PipelineLive>,
}

impl Live {
    /// Adds a pipeline.
    pub fn add(&mut self, pipeline: PipelineLive) {
        self.pipelines.push(pipeline);
    }

    /// Every pipeline, in the configuration's order.
    pub fn pipelines(&self) -> &[PipelineLive] {
        &self.pipelines
    }

    /// The pipeline called `name`.
    pub fn pipeline(&self, name: &str) -> Option<&PipelineLive> {
        self.pipelines.iter().find(|p| p.name() == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Series};

    fn facts() -> Facts {
        Facts {
            name: "p".into(),
            flow: "simulated → [] → console".into(),
            max_bytes: 1 << 20,
            when_full: "reaggregate".into(),
            holds_when_quarantined: true,
        }
    }

    #[test]
    fn links_report_their_state_and_since_when() {
        let live = PipelineLive::new(facts());
        assert_eq!(live.source().state().0, LinkState::Connecting);
        live.source().up();
        let (state, since) = live.source().state();
        assert_eq!(state, LinkState::Up);
        live.source().up();
        assert_eq!(live.source().state().1, since, "staying up does not move the time");
        live.source().down();
        assert_eq!(live.source().state().0, LinkState::Down);
        assert_eq!(live.confirmed_at(), None);
        live.confirmed();
        assert!(live.confirmed_at().is_some());
        assert_eq!(live.uplink().state().0, LinkState::Up);
    }

    #[test]
    fn the_tap_builds_nothing_without_a_watcher_and_delivers_to_one() {
        let live = PipelineLive::new(facts());
        let mut builder = BatchBuilder::new();
        let index = builder.intern(&Series::named("t"));
        builder.push(index, 5, 1.5);
        let batch = builder.finish();
        assert!(!live.tapped());
        live.decoded(&batch);
        assert_eq!(live.watermark(), Some(5));
        let mut watcher = live.watch().expect("room for a watcher");
        live.decoded(&batch);
        let events = watcher.try_recv().expect("a batch of events");
        assert!(
            matches!(&events[0], Tapped::Reading { stage: "decoded", series, ts: 5, value } if series == "t" && *value == 1.5)
        );
        assert!(watcher.try_recv().is_err(), "only what came after watching");
    }

    #[test]
    fn a_slow_watcher_misses_batches_instead_of_holding_the_pipeline() {
        let live = PipelineLive::new(facts());
        let mut watcher = live.watch().expect("room for a watcher");
        for seq in 0..(TAP_CAPACITY as u64 + 10) {
            live.tap(vec![Tapped::Record { seq, bytes: 1 }]);
        }
        assert!(matches!(watcher.try_recv(), Err(broadcast::error::TryRecvError::Lagged(10))));
    }

    #[test]
    fn watchers_are_limited_and_a_place_frees_when_one_leaves() {
        let live = PipelineLive::new(facts());
        let watchers: Vec<_> = (0..TAP_WATCHERS).map(|_| live.watch().expect("room")).collect();
        assert!(live.watch().is_none());
        drop(watchers);
        assert!(live.watch().is_some());
    }
}
