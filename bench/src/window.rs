//! `weir-bench window`: the window stage alone, and what windows and downsampling make of a
//! realistic signal.
//!
//! - **Throughput:** `WindowStage::process` over batches of readings of many series, some out of
//!   order, including the state checkpoint each batch commits (encoded, not written).
//! - **Compression:** one day of a temperature-like signal per series at 1 Hz (a daily and an
//!   hourly swing, sensor noise, a step every six hours), sent as CBOR records of ten minutes: the
//!   readings themselves, 1-minute windows, and the points each downsampler keeps — points in,
//!   points out, bytes per reading.
//!
//! Pure computation in memory; owns nothing.

use std::io::Write;
use std::time::{Duration, Instant};

use weir_host::batch::{Batch, BatchBuilder, Nanos, Series};
use weir_host::config::{Encoding, WindowConfig};
use weir_host::window::WindowStage;
use weir_host::window::downsample::{Band, Deadband, Point, SwingingDoor, lttb};
use weir_host::window::event_time::{WindowKind, WindowSpec, Windows};
use weir_record::{Record, RecordHeader, WindowSeries, WindowValue};

const SECOND: Nanos = 1_000_000_000;
/// First event time of the generated signals, s.
const EPOCH_S: i64 = 1_700_000_000;

/// The window stage alone (readings/s for each kind of window), and what windows and
/// downsampling make of a day of a realistic signal (points in/out, bytes per reading).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Readings per window kind.
    #[arg(long, default_value_t = 2_000_000)]
    readings: usize,
    /// Series the readings are spread over.
    #[arg(long, default_value_t = 100)]
    series: usize,
    /// Readings per batch.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

impl Args {
    /// Measures each window kind, then the compression of a day's signal, and prints a table of each.
    pub fn execute(self) -> anyhow::Result<()> {
        let Self { readings, series, batch } = self;
        let mut out = std::io::stdout().lock();
        let second = SECOND as u64;
        writeln!(
            out,
            "Window stage alone: {readings} readings of {series} series, 1 s apart, batches of {batch}, 1 in 10 late by 3 s"
        )?;
        writeln!(out)?;
        writeln!(out, "| window | readings/s | emissions | state checkpoint |")?;
        writeln!(out, "|--------|------------|-----------|------------------|")?;
        for (name, kind) in [
            ("tumbling 10 s", WindowKind::Tumbling { width: 10 * second }),
            ("sliding 60 s every 10 s", WindowKind::Sliding { width: 60 * second, slide: 10 * second }),
            // Readings 1 s apart: every reading is a session of its own, the most windows per reading.
            ("session, gap 0.9 s", WindowKind::Session { gap: 9 * second / 10 }),
        ] {
            let result = throughput(kind, series, batch, readings);
            writeln!(
                out,
                "| {name} | {:.0} | {} | {} B |",
                result.readings_per_second(),
                result.emissions,
                result.checkpoint_bytes
            )?;
        }
        writeln!(out)?;
        writeln!(out, "One day at 1 Hz of a temperature-like signal, 10 series, in records of 10 minutes:")?;
        writeln!(out)?;
        writeln!(out, "| sent as | points in | points out | bytes/reading |")?;
        writeln!(out, "|---------|-----------|------------|---------------|")?;
        for c in compression(10) {
            writeln!(out, "| {} | {} | {} | {:.3} |", c.method, c.points_in, c.points_out, c.bytes_per_reading)?;
        }
        Ok(())
    }
}

/// One throughput measurement.
#[derive(Clone, Debug)]
pub struct ThroughputResult {
    /// Readings processed.
    pub readings: u64,
    /// Window emissions.
    pub emissions: u64,
    /// Bytes of the last state checkpoint.
    pub checkpoint_bytes: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl ThroughputResult {
    /// Readings per second.
    pub fn readings_per_second(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64()
    }
}

/// `total` readings of `series` series, one per second each, in batches of `batch`; every tenth
/// reading is 3 s late.
fn batches(series: usize, batch: usize, total: usize) -> Vec<Batch> {
    let names: Vec<Series> = (0..series).map(|i| Series::named(format!("plant/sensor/{i}")).with_unit("Cel")).collect();
    let mut out = Vec::new();
    let mut builder = BatchBuilder::new();
    for n in 0..total {
        let (second, s) = ((n / series) as i64, n % series);
        let late = if n % 10 == 0 { 3 } else { 0 };
        let index = builder.intern(&names[s]);
        builder.push(index, (EPOCH_S + second - late) * SECOND, signal(s, second));
        if (n + 1) % batch == 0 {
            out.push(std::mem::replace(&mut builder, BatchBuilder::new()).finish());
        }
    }
    let rest = builder.finish();
    if !rest.is_empty() {
        out.push(rest);
    }
    out
}

/// Runs a window stage of `kind` (5 s lateness) over `total` readings of `series` series.
pub fn throughput(kind: WindowKind, series: usize, batch: usize, total: usize) -> ThroughputResult {
    let config = WindowConfig {
        spec: WindowSpec {
            kind,
            allowed_lateness: 5 * SECOND as u64,
            idle_timeout: 3600 * SECOND as u64,
            custom_aggregate: false,
        },
        keep_readings: false,
        aggregate: None,
    };
    let input = batches(series, batch, total);
    let mut stage = WindowStage::detached(config, "bench", None);
    let (mut emissions, mut checkpoint_bytes) = (0, 0);
    let started = Instant::now();
    for batch in &input {
        let output = stage.process(batch, 0);
        emissions += output.emissions() as u64;
        if let Some(value) = output.checkpoint.and_then(|c| c.value) {
            checkpoint_bytes = value.len();
        }
    }
    ThroughputResult { readings: total as u64, emissions, checkpoint_bytes, elapsed: started.elapsed() }
}

/// A temperature-like signal at second `t` of series `s`: a daily and an hourly swing, noise
/// within ±0.05, and 2 degrees more every other six hours, at the sensor's 0.01 resolution.
pub fn signal(s: usize, t: i64) -> f64 {
    let (seconds, phase) = (t as f64, s as f64);
    let daily = 4.0 * (std::f64::consts::TAU * seconds / 86_400.0 + phase).sin();
    let hourly = 0.5 * (std::f64::consts::TAU * seconds / 3_600.0 + phase).sin();
    // A deterministic hash as noise: uniform in [-0.05, 0.05].
    let mut x = (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ (s as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    x ^= x >> 29;
    let noise = (x % 1001) as f64 / 10_000.0 - 0.05;
    let step = if (t / 21_600) % 2 == 1 { 2.0 } else { 0.0 };
    ((40.0 + daily + hourly + noise + step) * 100.0).round() / 100.0
}

/// Points in, points out and encoded bytes per reading of one way of sending a signal.
#[derive(Clone, Debug)]
pub struct Compression {
    /// What was sent.
    pub method: String,
    /// Readings in.
    pub points_in: usize,
    /// Points (readings or windows) out.
    pub points_out: usize,
    /// Encoded bytes per reading in.
    pub bytes_per_reading: f64,
}

const DAY: i64 = 86_400;
const RECORD_SECONDS: i64 = 600;

fn header(seq: u64) -> RecordHeader {
    RecordHeader { gateway: "bench".into(), stream: "signal".into(), seq, encoded_at: 0 }
}

/// Bytes of each series' `kept` points sent in records of [`RECORD_SECONDS`].
fn readings_bytes(kept: &[Vec<Point>]) -> usize {
    (0..DAY / RECORD_SECONDS)
        .map(|r| {
            let mut builder = BatchBuilder::new();
            let from = (EPOCH_S + r * RECORD_SECONDS) * SECOND;
            let to = from + RECORD_SECONDS * SECOND;
            for (s, points) in kept.iter().enumerate() {
                let index = builder.intern(&Series::named(format!("plant/sensor/{s}")).with_unit("Cel"));
                for p in points.iter().filter(|p| p.ts >= from && p.ts < to) {
                    builder.push(index, p.ts, p.value);
                }
            }
            let batch = builder.finish();
            if batch.is_empty() {
                0
            } else {
                weir_record::write_readings(Encoding::Cbor, &header(r as u64 + 1), &batch)
                    .expect("bench readings encode")
                    .len()
            }
        })
        .sum()
}

/// Runs a streaming downsampler over each series.
fn streamed<D>(
    points: &[Vec<Point>],
    new: impl Fn() -> D,
    push: impl Fn(&mut D, Point, &mut Vec<Point>),
    finish: impl Fn(&mut D, &mut Vec<Point>),
) -> Vec<Vec<Point>> {
    points
        .iter()
        .map(|series_points| {
            let mut downsampler = new();
            let mut out = Vec::new();
            for p in series_points {
                push(&mut downsampler, *p, &mut out);
            }
            finish(&mut downsampler, &mut out);
            out
        })
        .collect()
}

/// 1-minute tumbling windows of `points`, sent as they close in records of [`RECORD_SECONDS`]:
/// windows out and bytes.
fn windowed(points: &[Vec<Point>]) -> (usize, usize) {
    let spec = WindowSpec {
        kind: WindowKind::Tumbling { width: 60 * SECOND as u64 },
        allowed_lateness: 0,
        idle_timeout: u64::MAX,
        custom_aggregate: false,
    };
    let mut windows = Windows::default();
    let (mut count, mut bytes, mut seq) = (0, 0, 0);
    for t in 0..DAY {
        for (s, series_points) in points.iter().enumerate() {
            let p = series_points[t as usize];
            windows.add(&spec, &format!("plant/sensor/{s}"), p.ts, p.value, 0).expect("in order");
        }
        if (t + 1) % RECORD_SECONDS != 0 {
            continue;
        }
        // At the day's end every series goes idle: its last window is sent too.
        let now = if t == DAY - 1 { Nanos::MAX / 2 } else { 0 };
        let mut emitted: Vec<WindowSeries> = Vec::new();
        for result in windows.flush(&spec, now) {
            if emitted.last().is_none_or(|s| s.series.name != result.series) {
                let series = Series::named(result.series.clone()).with_unit("Cel");
                emitted.push(WindowSeries { series, windows: Vec::new() });
            }
            emitted.last_mut().expect("pushed above").windows.push(WindowValue::of(&result));
        }
        count += emitted.iter().map(|s| s.windows.len()).sum::<usize>();
        seq += 1;
        let record = Record {
            header: header(seq),
            batch: Batch::new(),
            aggregates: Vec::new(),
            windows: emitted,
            coarsened: None,
            dropped: None,
        };
        bytes += weir_record::write(Encoding::Cbor, &record).expect("bench windows encode").len();
    }
    (count, bytes)
}

/// One day of [`signal`] at 1 Hz for `series` series, sent each way.
pub fn compression(series: usize) -> Vec<Compression> {
    let points: Vec<Vec<Point>> =
        (0..series).map(|s| (0..DAY).map(|t| Point::new((EPOCH_S + t) * SECOND, signal(s, t))).collect()).collect();
    let points_in = series * DAY as usize;
    let mut results = Vec::new();
    let mut add = |method: String, points_out: usize, bytes: usize| {
        results.push(Compression { method, points_in, points_out, bytes_per_reading: bytes as f64 / points_in as f64 });
    };
    add("readings as they are".into(), points_in, readings_bytes(&points));
    let (windows, bytes) = windowed(&points);
    add("1-minute windows: count, sum, min, max, m2, first, last, sketch".into(), windows, bytes);
    for band in [0.1, 0.5] {
        let kept = streamed(&points, || Deadband::new(Band::Absolute(band)), Deadband::push, Deadband::finish);
        add(format!("deadband ±{band}"), kept.iter().map(Vec::len).sum(), readings_bytes(&kept));
    }
    for max_error in [0.1, 0.5] {
        let kept = streamed(&points, || SwingingDoor::new(max_error), SwingingDoor::push, SwingingDoor::finish);
        add(format!("swinging door, max error {max_error}"), kept.iter().map(Vec::len).sum(), readings_bytes(&kept));
    }
    let kept: Vec<Vec<Point>> = points
        .iter()
        .map(|series_points| series_points.chunks(60).flat_map(|minute| lttb(minute, 4)).collect())
        .collect();
    add("LTTB, 4 points per minute".into(), kept.iter().map(Vec::len).sum(), readings_bytes(&kept));
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bench_runs_and_windows_send_less_than_readings() {
        let result = throughput(WindowKind::Tumbling { width: 10 * SECOND as u64 }, 4, 100, 2_000);
        assert_eq!(result.readings, 2_000);
        assert!(result.emissions > 0 && result.checkpoint_bytes > 0);
        let compression = compression(1);
        assert_eq!(compression[0].points_out, 86_400);
        assert_eq!(compression[1].points_out, 1_440, "one window per minute of the day");
        assert!(compression[1..].iter().all(|c| c.bytes_per_reading < compression[0].bytes_per_reading));
    }
}
