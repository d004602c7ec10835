//! The gateway's Prometheus metrics: every name, its type, unit and help in one table
//! ([`METRICS`]), the recorder they are kept in, and what is read into it when scraped.
//!
//! Three sources, one exposition:
//! - the store's counters and outbox usage ([`crate::state::stats::Stats`]), read at each scrape
//!   into absolute counters and gauges: they count what was committed, so they match the data
//!   after any crash and do not restart from zero with the process;
//! - the function uses' fault records, the sensors' statuses, the pipelines' live views
//!   (connections, last confirmation, watermark) and the process's own figures, read the same way;
//! - histograms and the dead letters by stage, recorded where they happen (the committer, the
//!   sink, the sandbox, the processor) through the `metrics` facade; these start from zero with
//!   the process.
//!
//! **Invariants:** every metric weir exposes is in [`METRICS`] (and so in the table of
//! docs/operations.md); labels are bounded — pipeline, function, use, version, kind, stage (a
//! pipeline's stages and operator uses), durable, device and state (a configured sensor) — never
//! a topic, a series or a message. The recorder keeps no per-scrape history: upkeep runs on a timer
//! ([`UPKEEP_EVERY`]), so memory does not grow when nobody scrapes.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::live::{LinkState, Live};
use crate::sandbox::UseHandle;
use crate::state::Counter;
use crate::state::stats::{SensorStatus, Stats};

/// How often the recorder's upkeep runs.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// What a metric counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (`_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Observations in buckets ([`BUCKETS`]).
    Histogram,
}

/// The histograms' bucket bounds, seconds (and change sets, for the commit groups): 100 µs to
/// 30 s.
pub const BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// One metric: its name, kind, unit, labels and help.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    /// Its name, `weir_…`.
    pub name: &'static str,
    /// Counter or gauge.
    pub kind: Kind,
    /// Its unit, if it has one.
    pub unit: Option<Unit>,
    /// Its labels.
    pub labels: &'static [&'static str],
    /// What it counts.
    pub help: &'static str,
}

const PIPELINE: &[&str] = &["pipeline"];
const FUNCTION_USE: &[&str] = &["pipeline", "use", "function", "version"];

const fn counter(name: &'static str, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: Kind::Counter, unit: None, labels, help }
}

const fn histogram(name: &'static str, unit: Unit, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: Kind::Histogram, unit: Some(unit), labels, help }
}

const fn gauge(name: &'static str, unit: Option<Unit>, labels: &'static [&'static str], help: &'static str) -> Metric {
    Metric { name, kind: Kind::Gauge, unit, labels, help }
}

/// Every metric, in the order of docs/operations.md.
pub const METRICS: &[Metric] = &[
    gauge("weir_build_info", None, &["version"], "Always 1; its label is the weir version running."),
    gauge("weir_uptime_seconds", Some(Unit::Seconds), &[], "Seconds since the gateway started."),
    gauge("weir_process_resident_memory_bytes", Some(Unit::Bytes), &[], "Resident memory of the process."),
    gauge("weir_process_open_fds", Some(Unit::Count), &[], "Open file descriptors of the process."),
    counter("weir_messages_acked_total", PIPELINE, "Input messages committed, and so acknowledged upstream."),
    counter("weir_readings_in_total", PIPELINE, "Readings decoded from the input."),
    counter("weir_dead_lettered_total", PIPELINE, "Dead letters written (undecodable messages, refused batches)."),
    counter("weir_readings_too_late_total", PIPELINE, "Readings that arrived after their windows closed."),
    counter("weir_readings_skipped_total", PIPELINE, "Readings passed around a quarantined operator."),
    counter("weir_downsampled_in_total", PIPELINE, "Readings given to the downsampler."),
    counter("weir_downsampled_out_total", PIPELINE, "Readings the downsampler kept."),
    counter("weir_windows_emitted_total", PIPELINE, "Window emissions committed (first emissions and corrections)."),
    counter("weir_records_committed_total", PIPELINE, "Records appended to the outbox."),
    counter("weir_readings_committed_total", PIPELINE, "Readings in the records appended to the outbox."),
    counter("weir_bytes_committed_total", PIPELINE, "Encoded bytes of the records appended to the outbox."),
    gauge("weir_outbox_records", Some(Unit::Count), PIPELINE, "Records waiting in the outbox."),
    gauge("weir_outbox_bytes", Some(Unit::Bytes), PIPELINE, "Disk bytes charged for the records waiting."),
    gauge(
        "weir_outbox_oldest_age_seconds",
        Some(Unit::Seconds),
        PIPELINE,
        "Age of the oldest record waiting (0 when none).",
    ),
    counter("weir_outbox_records_coarsened_total", PIPELINE, "Records merged into coarser ones by a full outbox."),
    counter("weir_outbox_readings_coarsened_total", PIPELINE, "Readings in the records merged by a full outbox."),
    counter("weir_outbox_records_dropped_total", PIPELINE, "Records dropped by a full outbox."),
    counter("weir_outbox_readings_dropped_total", PIPELINE, "Readings in the records dropped by a full outbox."),
    counter("weir_outbox_refused_full_total", PIPELINE, "Change sets refused because the outbox was full."),
    counter("weir_outbox_records_unrecovered_total", PIPELINE, "Records lost to a damaged database file."),
    counter("weir_published_total", PIPELINE, "Publishes handed to the central broker (re-sends included)."),
    counter("weir_confirmed_total", PIPELINE, "Records the central broker confirmed."),
    counter("weir_commit_groups_total", &[], "Write transactions committed to the state store."),
    histogram(
        "weir_commit_seconds",
        Unit::Seconds,
        &["durable"],
        "Time to apply and commit one group of change sets (durable: with its fsync).",
    ),
    histogram("weir_commit_group_change_sets", Unit::Count, &[], "Change sets committed together in one group."),
    counter(
        "weir_dead_letters_by_stage_total",
        &["pipeline", "stage"],
        "Dead letters written by the stage that refused (since the process started).",
    ),
    gauge(
        "weir_messages_unacknowledged",
        Some(Unit::Count),
        PIPELINE,
        "Messages the processor took and has not acknowledged upstream yet (not committed or not durable).",
    ),
    gauge("weir_source_connected", None, PIPELINE, "1 while the pipeline's source is connected to its broker."),
    gauge("weir_uplink_connected", None, PIPELINE, "1 while the pipeline's sink is connected to the central broker."),
    gauge(
        "weir_uplink_last_confirmed_timestamp_seconds",
        Some(Unit::Seconds),
        PIPELINE,
        "When the central broker last confirmed a record (0: not since the start).",
    ),
    histogram(
        "weir_publish_seconds",
        Unit::Seconds,
        PIPELINE,
        "From handing a record to the central broker to its confirmation.",
    ),
    gauge(
        "weir_watermark_timestamp_seconds",
        Some(Unit::Seconds),
        PIPELINE,
        "The highest event time the pipeline has seen.",
    ),
    counter("weir_function_calls_total", FUNCTION_USE, "Calls of the version running in a use."),
    counter("weir_function_faults_total", &["pipeline", "use", "function", "kind"], "Calls that faulted, by kind."),
    counter("weir_function_quarantines_total", &["pipeline", "use", "function"], "Quarantines of a use."),
    gauge("weir_function_quarantined", None, &["pipeline", "use", "function"], "1 while a use is quarantined."),
    counter(
        "weir_function_fuel_total",
        &["pipeline", "use", "function"],
        "Fuel the calls of a use consumed, for a function with a fuel limit (since the process started).",
    ),
    histogram(
        "weir_function_call_seconds",
        Unit::Seconds,
        &["pipeline", "use", "function"],
        "Time of each call of a use (since the process started).",
    ),
    counter("weir_sensor_samples_total", SENSOR, "Samples a sensor gave (since the process started)."),
    counter(
        "weir_sensor_failed_samples_total",
        SENSOR,
        "Samples lost because every attempt at them failed (since the process started).",
    ),
    counter(
        "weir_sensor_faults_total",
        &["pipeline", "device", "kind"],
        "Failed attempts at a sensor by kind: nack, bus, io, data, stuck, slow (since the process started).",
    ),
    counter("weir_sensor_reinits_total", SENSOR, "Times a sensor was initialised again after failing."),
    counter("weir_sensor_skipped_ticks_total", SENSOR, "Sampling ticks skipped because the bus was stalled or busy."),
    gauge(
        "weir_sensor_state",
        None,
        &["pipeline", "device", "state"],
        "1 for a sensor's current state (starting, ok, degraded, down), 0 for the others.",
    ),
];

/// The labels of a sensor's metrics.
const SENSOR: &[&str] = &["pipeline", "device"];

/// A sensor's states, for `weir_sensor_state`.
const SENSOR_STATES: [&str; 4] = ["starting", "ok", "degraded", "down"];

/// The metric of a store counter, if it is exposed.
fn of_counter(counter: Counter) -> Option<&'static str> {
    Some(match counter {
        Counter::AckedIn => "weir_messages_acked_total",
        Counter::ReadingsIn => "weir_readings_in_total",
        Counter::DeadLettered => "weir_dead_lettered_total",
        Counter::RecordsCommitted => "weir_records_committed_total",
        Counter::ReadingsCommitted => "weir_readings_committed_total",
        Counter::BytesCommitted => "weir_bytes_committed_total",
        Counter::Published => "weir_published_total",
        Counter::Confirmed => "weir_confirmed_total",
        Counter::RecordsCoarsened => "weir_outbox_records_coarsened_total",
        Counter::RecordsDropped => "weir_outbox_records_dropped_total",
        Counter::RefusedFull => "weir_outbox_refused_full_total",
        Counter::RecordsUnrecovered => "weir_outbox_records_unrecovered_total",
        Counter::WindowsEmitted => "weir_windows_emitted_total",
        Counter::ReadingsTooLate => "weir_readings_too_late_total",
        Counter::DownsampledIn => "weir_downsampled_in_total",
        Counter::DownsampledOut => "weir_downsampled_out_total",
        Counter::ReadingsSkipped => "weir_readings_skipped_total",
        Counter::ReadingsCoarsened => "weir_outbox_readings_coarsened_total",
        Counter::ReadingsDropped => "weir_outbox_readings_dropped_total",
        // Per pipeline in the store; per use (and by kind) from the fault records instead.
        Counter::FunctionFaults | Counter::FunctionQuarantines => return None,
    })
}

/// The process's recorder, installed as the global one on first use. The gateway calls it before
/// it builds anything that keeps a metric's handle (sinks, function instances): a handle taken
/// before the recorder is installed records nothing.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder: PrometheusRecorder =
            PrometheusBuilder::new().set_buckets(BUCKETS).expect("the bucket list is not empty").build_recorder();
        let handle = recorder.handle();
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                stage = "http",
                "another metrics recorder is installed; /metrics shows only what weir reads at each scrape"
            );
        }
        describe();
        handle.clone()
    })
}

fn describe() {
    for metric in METRICS {
        let help = metric.help;
        match (metric.kind, metric.unit) {
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(metric.name, unit, help),
            (Kind::Counter, None) => metrics::describe_counter!(metric.name, help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(metric.name, unit, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(metric.name, help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(metric.name, unit, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(metric.name, help),
        }
    }
}

/// What a scrape reads: the store's stats, the function uses, the process.
#[derive(Debug)]
pub struct Reading<'a> {
    /// The store's stats.
    pub stats: &'a Stats,
    /// Every function use of the pipelines.
    pub functions: &'a [UseHandle],
    /// The pipelines' live views.
    pub live: &'a Live,
    /// The sensors' statuses.
    pub sensors: &'a [SensorStatus],
    /// Write transactions committed.
    pub commit_groups: u64,
    /// Seconds since the gateway started.
    pub uptime: Duration,
}

/// Sets every metric from `reading`.
pub fn record(reading: &Reading<'_>) {
    metrics::gauge!("weir_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    metrics::gauge!("weir_uptime_seconds").set(reading.uptime.as_secs_f64());
    if let Some(bytes) = process::resident_bytes() {
        metrics::gauge!("weir_process_resident_memory_bytes").set(bytes as f64);
    }
    if let Some(open) = process::open_fds() {
        metrics::gauge!("weir_process_open_fds").set(open as f64);
    }
    metrics::counter!("weir_commit_groups_total").absolute(reading.commit_groups);
    let flag = |up: bool| if up { 1.0 } else { 0.0 };
    for pipeline in reading.live.pipelines() {
        let name = pipeline.name().to_owned();
        metrics::gauge!("weir_messages_unacknowledged", "pipeline" => name.clone())
            .set(pipeline.unacknowledged() as f64);
        metrics::gauge!("weir_source_connected", "pipeline" => name.clone())
            .set(flag(pipeline.source().state().0 == LinkState::Up));
        metrics::gauge!("weir_uplink_connected", "pipeline" => name.clone())
            .set(flag(pipeline.uplink().state().0 == LinkState::Up));
        metrics::gauge!("weir_uplink_last_confirmed_timestamp_seconds", "pipeline" => name.clone())
            .set(pipeline.confirmed_at().map_or(0.0, |at| at as f64 / 1e9));
        if let Some(watermark) = pipeline.watermark() {
            metrics::gauge!("weir_watermark_timestamp_seconds", "pipeline" => name).set(watermark as f64 / 1e9);
        }
    }
    for stream in &reading.stats.streams {
        let pipeline = stream.stream.clone();
        metrics::gauge!("weir_outbox_records", "pipeline" => pipeline.clone()).set(stream.records as f64);
        metrics::gauge!("weir_outbox_bytes", "pipeline" => pipeline.clone()).set(stream.bytes as f64);
        metrics::gauge!("weir_outbox_oldest_age_seconds", "pipeline" => pipeline.clone())
            .set(stream.oldest_age_seconds.unwrap_or(0.0));
        for counter in Counter::ALL {
            let Some(name) = of_counter(counter) else { continue };
            let value = stream.counters.iter().find(|(n, _)| n == counter.name()).map_or(0, |(_, v)| *v);
            metrics::counter!(name, "pipeline" => pipeline.clone()).absolute(value);
        }
    }
    for sensor in reading.sensors {
        let (pipeline, device) = (sensor.pipeline.clone(), sensor.device.clone());
        let labels = [("pipeline", pipeline.clone()), ("device", device.clone())];
        metrics::counter!("weir_sensor_samples_total", &labels).absolute(sensor.samples);
        metrics::counter!("weir_sensor_failed_samples_total", &labels).absolute(sensor.failed_samples);
        metrics::counter!("weir_sensor_reinits_total", &labels).absolute(sensor.reinits);
        metrics::counter!("weir_sensor_skipped_ticks_total", &labels).absolute(sensor.skipped_ticks);
        for (kind, faults) in &sensor.faults {
            metrics::counter!("weir_sensor_faults_total", "pipeline" => pipeline.clone(), "device" => device.clone(),
                "kind" => kind.clone())
            .absolute(*faults);
        }
        for state in SENSOR_STATES {
            metrics::gauge!("weir_sensor_state", "pipeline" => pipeline.clone(), "device" => device.clone(),
                "state" => state)
            .set(if sensor.state == state { 1.0 } else { 0.0 });
        }
    }
    for handle in reading.functions {
        let record = handle.snapshot();
        let (pipeline, use_name, function) =
            (handle.pipeline.clone(), handle.use_name.clone(), handle.function_id.to_string());
        let version = record.function.split_once('@').map_or("", |(_, digest)| digest).to_owned();
        metrics::counter!("weir_function_calls_total", "pipeline" => pipeline.clone(), "use" => use_name.clone(),
            "function" => function.clone(), "version" => version)
        .absolute(record.version_calls.calls);
        for (kind, faults) in &record.faults_by_kind {
            metrics::counter!("weir_function_faults_total", "pipeline" => pipeline.clone(), "use" => use_name.clone(),
                "function" => function.clone(), "kind" => kind.name())
            .absolute(*faults);
        }
        metrics::counter!("weir_function_quarantines_total", "pipeline" => pipeline.clone(),
            "use" => use_name.clone(), "function" => function.clone())
        .absolute(record.quarantines);
        let quarantined = if handle.quarantined_for().is_some() { 1.0 } else { 0.0 };
        metrics::gauge!("weir_function_quarantined", "pipeline" => pipeline, "use" => use_name, "function" => function)
            .set(quarantined);
    }
}

/// The process's own figures, from `/proc/self` (none elsewhere).
mod process {
    /// Resident memory: `/proc/self/statm`'s second field, in pages.
    pub fn resident_bytes() -> Option<u64> {
        let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
        let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
        Some(pages * rustix::param::page_size() as u64)
    }

    /// Open file descriptors: the entries of `/proc/self/fd`, less the one reading it.
    pub fn open_fds() -> Option<u64> {
        let entries = std::fs::read_dir("/proc/self/fd").ok()?;
        Some((entries.count() as u64).saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn names_are_unique_prefixed_and_counters_end_in_total() {
        let mut seen = BTreeSet::new();
        for metric in METRICS {
            assert!(seen.insert(metric.name), "{} twice", metric.name);
            assert!(metric.name.starts_with("weir_"), "{}", metric.name);
            assert_eq!(metric.kind == Kind::Counter, metric.name.ends_with("_total"), "{}", metric.name);
            if metric.kind == Kind::Histogram {
                assert!(metric.unit.is_some(), "{}: a histogram has a unit", metric.name);
            }
            assert!(
                metric.labels.iter().all(|l| {
                    ["pipeline", "use", "function", "version", "kind", "stage", "durable", "device", "state"]
                        .contains(l)
                }),
                "{}: unbounded label",
                metric.name
            );
        }
    }

    #[test]
    fn every_exposed_store_counter_is_in_the_table() {
        for counter in Counter::ALL {
            if let Some(name) = of_counter(counter) {
                assert!(METRICS.iter().any(|m| m.name == name), "{name} is not in METRICS");
            }
        }
    }

    #[test]
    fn the_process_figures_are_read() {
        assert!(process::resident_bytes().is_some_and(|b| b > 0));
        assert!(process::open_fds().is_some_and(|n| n >= 3));
    }
}
