//! Window: the stage between the operators and the encoder that sends less than it receives.
//! Its pure parts — event-time windows, mergeable aggregates, downsampling — are the
//! `weir-window` crate (`window/`), shared with the guest SDK and re-exported here; this
//! module is the pipeline's stage around them.
//!
//! [`WindowStage`] owns one pipeline's window state. Per batch it adds the operators' output,
//! emits what is due, and hands back the emissions, the readings that came too late, and the
//! state to commit — in the same change set as the record that carries the emissions, so after a
//! crash the state and what was sent agree and no window is emitted twice.
//!
//! With a custom aggregate (a function of the `accumulator` world), each window also keeps the
//! function's partial in that state; per batch the stage folds the new readings in (one `add`
//! per window touched) and calls `finish` for each emission. What the function refuses is
//! handed back as [`AggregateFailure`]s for the dead-letter table and counted missing in the
//! window.
//!
//! **Invariant:** the state committed is always the state after the emissions in the same
//! change set; it is stored under the namespace `<pipeline>/$window`, key `windows`, as CBOR.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
pub use weir_window::{accumulator, aggregate, downsample, event_time};

mod downsampling;
pub use downsampling::DownsampleStage;

use crate::batch::{Batch, BatchBuilder, Nanos, Series};
use crate::config::WindowConfig;
use crate::state::{StateStore, StateWrite, StoreError};
use accumulator::{Accumulator, CustomPartial};
use event_time::Windows;
use weir_record::{CustomWindow, WindowSeries, WindowValue};

/// The state key of a pipeline's windows.
const STATE_KEY: &[u8] = b"windows";

/// A series' unit and tags (its name is the key it is kept under).
type SeriesMeta = (Option<String>, Vec<(String, String)>);

/// What is committed: the windows and the units and tags of the series they hold.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    windows: Windows,
    /// By series name.
    series: BTreeMap<String, SeriesMeta>,
}

/// A window's custom aggregate, as the stage holds it: a function instance in the host.
pub type WindowAccumulator = Box<dyn Accumulator + Send>;

/// One pipeline's window stage.
pub struct WindowStage {
    config: WindowConfig,
    namespace: String,
    saved: Saved,
    accumulator: Option<WindowAccumulator>,
}

impl std::fmt::Debug for WindowStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowStage")
            .field("config", &self.config)
            .field("namespace", &self.namespace)
            .field("custom_aggregate", &self.accumulator.is_some())
            .finish_non_exhaustive()
    }
}

/// Readings (or a merge of readings) the custom aggregate refused.
#[derive(Debug)]
pub struct AggregateFailure {
    /// What the function said, with the series and window.
    pub reason: String,
    /// The readings refused; empty when the refused call was a merge or a `finish`, whose
    /// readings are already in a partial.
    pub readings: Batch,
}

/// What one batch (or tick) produced.
#[derive(Debug, Default)]
pub struct WindowOutput {
    /// Emissions, per series.
    pub emitted: Vec<WindowSeries>,
    /// Readings that arrived after every window they belong to had closed.
    pub too_late: Batch,
    /// What the custom aggregate refused.
    pub aggregate_failures: Vec<AggregateFailure>,
    /// The state after this batch, to commit with the record (none when nothing changed).
    pub checkpoint: Option<StateWrite>,
}

impl WindowOutput {
    /// Number of window emissions.
    pub fn emissions(&self) -> usize {
        self.emitted.iter().map(|s| s.windows.len()).sum()
    }
}

impl WindowStage {
    /// The stage of `pipeline`, with the state it last committed, and the custom aggregate's
    /// function when the configuration names one. A stored state that cannot be read (written
    /// by an incompatible version, or damaged) is reported and replaced by an empty one: windows
    /// in progress restart, nothing stops.
    pub fn load(
        mut config: WindowConfig,
        pipeline: &str,
        store: &StateStore,
        accumulator: Option<WindowAccumulator>,
    ) -> Result<Self, StoreError> {
        let namespace = format!("{pipeline}/$window");
        let saved = load_state(store, &namespace, STATE_KEY, "window", pipeline)?;
        config.spec.custom_aggregate = accumulator.is_some();
        Ok(Self { config, namespace, saved, accumulator })
    }

    /// A stage with empty state that is never stored (benchmarks).
    pub fn detached(mut config: WindowConfig, pipeline: &str, accumulator: Option<WindowAccumulator>) -> Self {
        config.spec.custom_aggregate = accumulator.is_some();
        Self { config, namespace: format!("{pipeline}/$window"), saved: Saved::default(), accumulator }
    }

    /// Whether records carry the readings too.
    pub fn keeps_readings(&self) -> bool {
        self.config.keep_readings
    }

    /// How often the pipeline should call [`Self::process`] without input, so that quiet series
    /// are emitted close to their idle timeout.
    pub fn tick(&self) -> std::time::Duration {
        let quarter = std::time::Duration::from_nanos(self.config.spec.idle_timeout / 4);
        quarter.clamp(std::time::Duration::from_millis(10), std::time::Duration::from_secs(1))
    }

    /// Adds `batch` (possibly empty: a tick) at processing time `now` and emits what is due.
    pub fn process(&mut self, batch: &Batch, now: Nanos) -> WindowOutput {
        let spec = &self.config.spec;
        let mut too_late = BatchBuilder::new();
        for sample in batch.iter() {
            let name = &sample.series.name;
            if !self.saved.series.contains_key(name) {
                self.saved.series.insert(name.clone(), (sample.series.unit.clone(), sample.series.tags.clone()));
            }
            if self.saved.windows.add(spec, name, sample.ts, sample.value, now).is_err() {
                let index = too_late.intern(sample.series);
                too_late.push(index, sample.ts, sample.value);
            }
        }
        let mut aggregate_failures = Vec::new();
        if let Some(accumulator) = &mut self.accumulator {
            for failure in self.saved.windows.fold_custom(accumulator.as_mut()) {
                let mut readings = BatchBuilder::new();
                if !failure.ts.is_empty() {
                    let (unit, tags) = self.series_meta(&failure.series);
                    let index = readings.intern(&Series { name: failure.series.clone(), unit, tags });
                    for (ts, value) in failure.ts.iter().zip(&failure.values) {
                        readings.push(index, *ts, *value);
                    }
                }
                let reason = format!(
                    "the window aggregate left out {} readings of {:?} in the window with key {}: {}",
                    failure.missing, failure.series, failure.key, failure.reason
                );
                aggregate_failures.push(AggregateFailure { reason, readings: readings.finish() });
            }
        }
        let results = self.saved.windows.flush(spec, now);

        let mut emitted: Vec<WindowSeries> = Vec::new();
        for result in &results {
            if emitted.last().is_none_or(|s| s.series.name != result.series) {
                let (unit, tags) = self.series_meta(&result.series);
                emitted.push(WindowSeries {
                    series: Series { name: result.series.clone(), unit, tags },
                    windows: Vec::new(),
                });
            }
            let mut value = WindowValue::of(result);
            if let Some(accumulator) = &mut self.accumulator {
                let custom = result.custom.as_ref().map(|custom| finish(accumulator.as_mut(), custom, result));
                value.custom = Some(match custom {
                    None => CustomWindow::default(), // retracted
                    Some(Ok(custom)) => custom,
                    Some(Err((custom, reason))) => {
                        aggregate_failures.push(AggregateFailure { reason, readings: Batch::new() });
                        custom
                    }
                });
            }
            emitted.last_mut().expect("pushed above").windows.push(value);
        }
        let windows = &self.saved.windows;
        self.saved.series.retain(|name, _| windows.is_tracking(name));
        let changed = !batch.is_empty() || !results.is_empty();
        let checkpoint = changed.then(|| state_write(&self.namespace, STATE_KEY, &self.saved));
        WindowOutput { emitted, too_late: too_late.finish(), aggregate_failures, checkpoint }
    }

    fn series_meta(&self, name: &str) -> SeriesMeta {
        self.saved.series.get(name).cloned().unwrap_or_default()
    }
}

/// The custom aggregate of an emitted window: its values from `finish`, or, when `finish`
/// fails, the window without values and the reason.
fn finish(
    accumulator: &mut dyn Accumulator,
    custom: &CustomPartial,
    result: &event_time::WindowResult,
) -> Result<CustomWindow, (CustomWindow, String)> {
    let mut window = CustomWindow {
        values: None,
        partial: custom.partial().map(<[u8]>::to_vec).unwrap_or_default(),
        missing: custom.missing(),
    };
    let Some(partial) = custom.partial() else { return Ok(window) };
    match accumulator.finish(partial, result.start, result.end) {
        Ok(mut values) => {
            values.sort_by(|a, b| a.0.cmp(&b.0));
            window.values = Some(values);
            Ok(window)
        }
        Err(reason) => {
            let reason = format!(
                "the window aggregate has no values for {:?} in [{}, {}): finish failed: {reason}",
                result.series, result.start, result.end
            );
            Err((window, reason))
        }
    }
}

/// A stage's state as last committed under `namespace`/`key`; empty when there is none, or when
/// it cannot be read (written by an incompatible version, or damaged: reported, and the stage
/// restarts rather than stopping the pipeline).
fn load_state<T: serde::de::DeserializeOwned + Default>(
    store: &StateStore,
    namespace: &str,
    key: &[u8],
    stage: &str,
    pipeline: &str,
) -> Result<T, StoreError> {
    Ok(match store.function_state_get(namespace, key)? {
        None => T::default(),
        Some(bytes) => minicbor_serde::from_slice(&bytes).unwrap_or_else(|e| {
            tracing::error!(stage, pipeline, error = %e, "the stored state cannot be read; the stage restarts empty");
            T::default()
        }),
    })
}

/// The write that commits a stage's `state` (CBOR) under `namespace`/`key`.
fn state_write<T: Serialize>(namespace: &str, key: &[u8], state: &T) -> StateWrite {
    let value = minicbor_serde::to_vec(state).expect("a stage's state is plain data");
    StateWrite { namespace: namespace.to_owned(), key: key.to_vec(), value: Some(value) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ChangeSet, StoreOptions, open};
    use event_time::{WindowKind, WindowSpec};

    const SECOND: Nanos = 1_000_000_000;

    fn config() -> WindowConfig {
        WindowConfig {
            spec: WindowSpec {
                kind: WindowKind::Tumbling { width: 10 * SECOND as u64 },
                allowed_lateness: 10 * SECOND as u64,
                idle_timeout: 30 * SECOND as u64,
                custom_aggregate: false,
            },
            keep_readings: false,
            aggregate: None,
        }
    }

    /// Readings of two series 1 s apart in event time, in batches of five seconds, out of order:
    /// every fifth reading arrives two batches late (within the 10 s lateness), so windows
    /// already emitted are corrected.
    fn batches() -> Vec<Batch> {
        let mut builders: Vec<BatchBuilder> = (0..14).map(|_| BatchBuilder::new()).collect();
        for i in 0..60i64 {
            let batch = (i / 5 + if i % 5 == 4 { 2 } else { 0 }) as usize;
            for (name, unit) in [("a", Some("Cel")), ("b", None)] {
                let series = Series { name: name.into(), unit: unit.map(str::to_owned), tags: Vec::new() };
                let index = builders[batch].intern(&series);
                builders[batch].push(index, i * SECOND, i as f64);
            }
        }
        builders.into_iter().map(BatchBuilder::finish).collect()
    }

    /// Emissions as (series, key, revision, count, sum).
    fn emissions(output: &WindowOutput) -> Vec<(String, Nanos, u32, u64, f64)> {
        output
            .emitted
            .iter()
            .flat_map(|s| {
                s.windows.iter().map(|w| (s.series.name.clone(), w.key, w.revision, w.stats.count, w.stats.sum))
            })
            .collect()
    }

    #[tokio::test]
    async fn after_a_crash_the_emissions_equal_an_uninterrupted_run_and_none_repeats() {
        let now = 0;
        let dir = tempfile::tempdir().expect("temp dir");
        let uninterrupted: Vec<_> = {
            let (store, _committer, _thread) = open(&dir.path().join("a"), StoreOptions::default()).expect("open");
            let mut stage = WindowStage::load(config(), "p", &store, None).expect("load");
            batches().iter().flat_map(|batch| emissions(&stage.process(batch, now))).collect()
        };

        // The same input with crashes: after batch 4 the process dies before committing, so batch 4
        // is redelivered to a stage loaded from the last commit; after batch 8 it dies right after
        // committing.
        let path = dir.path().join("b");
        let (mut sent, mut next) = (Vec::new(), 0);
        let (mut crashed_before_commit, mut crashed_after_commit) = (false, false);
        while next < batches().len() {
            let (store, committer, thread) = open(&path, StoreOptions::default()).expect("open");
            let mut stage = WindowStage::load(config(), "p", &store, None).expect("load");
            while next < batches().len() {
                let output = stage.process(&batches()[next], now);
                if next == 4 && !crashed_before_commit {
                    crashed_before_commit = true;
                    break; // nothing committed, nothing sent: the batch comes again
                }
                let state_writes = output.checkpoint.clone().into_iter().collect();
                committer.commit(ChangeSet { state_writes, ..ChangeSet::default() }).await.expect("commit");
                sent.extend(emissions(&output));
                next += 1;
                if next == 9 && !crashed_after_commit {
                    crashed_after_commit = true;
                    break;
                }
            }
            drop((store, committer));
            thread.join().expect("committer thread");
        }
        assert!(crashed_before_commit && crashed_after_commit);
        assert_eq!(sent, uninterrupted);
        assert!(sent.iter().any(|(_, _, revision, _, _)| *revision > 0), "the input makes corrections too");
    }

    /// A custom aggregate over little-endian u64 counts that refuses the value 666.
    struct Counter;

    impl Accumulator for Counter {
        fn create(&mut self) -> Result<Vec<u8>, String> {
            Ok(0u64.to_le_bytes().to_vec())
        }

        fn add(&mut self, partial: &[u8], _ts: &[Nanos], values: &[f64]) -> Result<Vec<u8>, String> {
            if values.contains(&666.0) {
                return Err("cursed".into());
            }
            let count = u64::from_le_bytes(partial.try_into().expect("8 bytes"));
            Ok((count + values.len() as u64).to_le_bytes().to_vec())
        }

        fn merge(&mut self, first: &[u8], second: &[u8]) -> Result<Vec<u8>, String> {
            let count = |p: &[u8]| u64::from_le_bytes(p.try_into().expect("8 bytes"));
            Ok((count(first) + count(second)).to_le_bytes().to_vec())
        }

        fn finish(&mut self, partial: &[u8], _: Nanos, _: Nanos) -> Result<Vec<(String, f64)>, String> {
            Ok(vec![("n".into(), u64::from_le_bytes(partial.try_into().expect("8 bytes")) as f64)])
        }
    }

    #[test]
    fn custom_aggregates_ride_with_their_windows_and_refused_readings_come_back() {
        let mut stage = WindowStage::detached(config(), "p", Some(Box::new(Counter)));
        let mut emitted = Vec::new();
        let mut failures = Vec::new();
        for (i, batch) in batches().into_iter().enumerate() {
            let batch = if i == 3 {
                // One cursed reading of series "a" in window [10 s, 20 s).
                let mut builder = BatchBuilder::new();
                builder.extend(&batch);
                let index = builder.intern(&Series { name: "a".into(), unit: Some("Cel".into()), tags: Vec::new() });
                builder.push(index, 15 * SECOND, 666.0);
                builder.finish()
            } else {
                batch
            };
            let out = stage.process(&batch, 0);
            failures.extend(out.aggregate_failures);
            emitted.extend(out.emitted);
        }
        emitted.extend(stage.process(&Batch::new(), Nanos::MAX / 2).emitted);

        assert_eq!(failures.len(), 1, "{failures:?}");
        assert!(failures[0].reason.contains("cursed"), "{}", failures[0].reason);
        assert!(failures[0].readings.values().contains(&666.0), "the refused readings come back");
        let refused = failures[0].readings.len() as u64;
        for series in &emitted {
            for window in &series.windows {
                let custom = window.custom.as_ref().expect("every window has its custom aggregate");
                let counted = custom.values.as_ref().expect("finished")[0].1 as u64;
                let cursed = series.series.name == "a" && window.start == 10 * SECOND;
                let missing = if cursed { refused } else { 0 };
                assert_eq!((counted + custom.missing, custom.missing), (window.stats.count, missing));
            }
        }
    }

    #[tokio::test]
    async fn units_and_tags_of_a_series_reach_its_windows() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (store, _committer, _thread) = open(dir.path(), StoreOptions::default()).expect("open");
        let mut stage = WindowStage::load(config(), "p", &store, None).expect("load");
        let mut emitted = Vec::new();
        for batch in batches() {
            emitted.extend(stage.process(&batch, 0).emitted);
        }
        let a = emitted.iter().find(|s| s.series.name == "a").expect("series a emitted");
        assert_eq!(a.series.unit.as_deref(), Some("Cel"));
        assert!(emitted.iter().filter(|s| s.series.name == "b").all(|s| s.series.unit.is_none()));
    }
}
