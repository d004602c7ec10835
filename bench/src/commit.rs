//! `weir-bench commit`: how many group commits per second the state store sustains on this
//! machine, and how many readings per second that carries, in `sync` and `relaxed` durability,
//! with producers shaped like pipelines (each commits one record per change set and waits for
//! it, as a pipeline does before acknowledging).
//!
//! Owns nothing but a temporary data directory, removed at the end. [`record`] is the record a
//! pipeline would commit, shared with `drain`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::runtime::Runtime;
use weir_host::batch::{BatchBuilder, Series};
use weir_host::config::{Durability, Encoding};
use weir_host::state::{self, ChangeSet, OutboxRecord, StoreError, StoreOptions};
use weir_record::RecordHeader;

/// Group commits per second of the state store, and the readings they carry, in `sync` and
/// `relaxed` durability, with 1 and 8 producers shaped like pipelines.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the temporary database goes (the disk being measured).
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Seconds per configuration.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Readings per record.
    #[arg(long, default_value_t = 100)]
    readings: usize,
}

impl Args {
    /// Runs every configuration in turn on `runtime` and prints one table row each.
    pub fn execute(self, runtime: &Runtime) -> anyhow::Result<()> {
        let Self { dir, seconds, readings } = self;
        let mut out = std::io::stdout().lock();
        writeln!(out, "| durability | producers | readings/record | change sets/s | groups/s | readings/s | MB/s |")?;
        writeln!(out, "|------------|-----------|-----------------|---------------|----------|------------|------|")?;
        for durability in [Durability::Sync, Durability::Relaxed] {
            for producers in [1, 8] {
                let bench = CommitBench {
                    durability,
                    producers,
                    readings_per_record: readings,
                    duration: Duration::from_secs(seconds),
                };
                let result = runtime.block_on(commit(&dir, bench))?;
                let seconds = result.elapsed.as_secs_f64();
                writeln!(
                    out,
                    "| {durability:?} | {producers} | {readings} | {:.0} | {:.0} | {:.0} | {:.2} |",
                    result.change_sets as f64 / seconds,
                    result.groups_per_second(),
                    result.readings_per_second(),
                    result.bytes as f64 / seconds / 1e6
                )?;
            }
        }
        Ok(())
    }
}

/// What to measure.
#[derive(Clone, Copy, Debug)]
pub struct CommitBench {
    /// `sync` or `relaxed`.
    pub durability: Durability,
    /// Concurrent producers (pipelines), one stream each.
    pub producers: usize,
    /// Readings per record.
    pub readings_per_record: usize,
    /// How long to run.
    pub duration: Duration,
}

/// What was measured.
#[derive(Clone, Copy, Debug)]
pub struct CommitBenchResult {
    /// Change sets committed.
    pub change_sets: u64,
    /// Write transactions they were grouped into.
    pub groups: u64,
    /// Readings in their records.
    pub readings: u64,
    /// Encoded record bytes.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl CommitBenchResult {
    /// Group commits per second.
    pub fn groups_per_second(&self) -> f64 {
        self.groups as f64 / self.elapsed.as_secs_f64()
    }

    /// Readings committed per second.
    pub fn readings_per_second(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64()
    }
}

/// Runs the benchmark in a temporary directory under `parent`.
pub async fn commit(parent: &Path, bench: CommitBench) -> Result<CommitBenchResult, StoreError> {
    let dir = tempfile::tempdir_in(parent).map_err(|source| StoreError::DataDir { path: parent.to_owned(), source })?;
    let options = StoreOptions { durability: bench.durability, ..StoreOptions::default() };
    let (store, committer, thread) = state::open(dir.path(), options)?;
    let started = Instant::now();
    let mut producers = Vec::new();
    for producer in 0..bench.producers {
        let committer = committer.clone();
        producers.push(tokio::spawn(async move {
            let stream = format!("bench-{producer}");
            let (mut change_sets, mut readings, mut bytes) = (0_u64, 0_u64, 0_u64);
            let mut seq = 0;
            while started.elapsed() < bench.duration {
                seq += 1;
                let body = record(&stream, seq, bench.readings_per_record);
                bytes += body.len() as u64;
                let changes = ChangeSet {
                    records: vec![OutboxRecord { stream: stream.clone(), seq, body }],
                    // Keep the outbox short, as a draining sink does.
                    confirmed: seq.checked_sub(64).map(|old| vec![(stream.clone(), old)]).unwrap_or_default(),
                    ..ChangeSet::default()
                };
                // As a pipeline does: the next change set is committed while this one waits
                // for durability (at once under `sync`, at the next flush under `relaxed`).
                committer.commit_applied(changes).await.map_err(|e| e.error)?;
                change_sets += 1;
                readings += bench.readings_per_record as u64;
            }
            Ok::<_, StoreError>((change_sets, readings, bytes))
        }));
    }
    let mut result = CommitBenchResult { change_sets: 0, groups: 0, readings: 0, bytes: 0, elapsed: Duration::ZERO };
    for producer in producers {
        let (change_sets, readings, bytes) = producer.await.expect("a bench producer does not panic")?;
        result.change_sets += change_sets;
        result.readings += readings;
        result.bytes += bytes;
    }
    result.elapsed = started.elapsed();
    result.groups = store.commit_groups();
    drop(committer);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    Ok(result)
}

/// A record of `readings` readings over 16 series, as a pipeline would commit it.
pub fn record(stream: &str, seq: u64, readings: usize) -> Vec<u8> {
    let mut batch = BatchBuilder::new();
    let series: Vec<u32> =
        (0..16).map(|i| batch.intern(&Series::named(format!("sensor/{i}")).with_unit("Cel"))).collect();
    let base = seq as i64 * readings as i64 * 1_000_000;
    for i in 0..readings {
        batch.push(series[i % series.len()], base + i as i64 * 1_000_000, 20.0 + (i % 50) as f64 * 0.1);
    }
    let header = RecordHeader { gateway: "bench".into(), stream: stream.to_owned(), seq, encoded_at: base };
    weir_record::write_readings(Encoding::Cbor, &header, &batch.finish()).expect("bench readings encode")
}
