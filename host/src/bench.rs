//! Bench: `weir bench commit` — how many group commits per second the state store sustains on
//! this machine, and how many readings per second that carries, with producers shaped like
//! pipelines (each commits one record per change set and waits for it, as a pipeline does
//! before acknowledging); `weir bench window` ([`window`]) — the window stage alone and the
//! compression of windows and downsampling. Figures go to docs/BENCHMARKS.md.
//!
//! Owns nothing but a temporary data directory, removed at the end.

pub mod engine;
pub mod footprint;
pub mod sandbox;
pub mod window;

use std::time::{Duration, Instant};

use crate::batch::{BatchBuilder, Series};
use crate::config::{Durability, Encoding};
use crate::state::{self, ChangeSet, OutboxRecord, StoreError, StoreOptions};
use weir_record::RecordHeader;

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
pub async fn commit(parent: &std::path::Path, bench: CommitBench) -> Result<CommitBenchResult, StoreError> {
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
fn record(stream: &str, seq: u64, readings: usize) -> Vec<u8> {
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

/// What `weir bench drain` measured.
#[derive(Clone, Copy, Debug)]
pub struct DrainResult {
    /// Records filled in and drained.
    pub records: u64,
    /// Readings in them.
    pub readings: u64,
    /// Filling the outbox (change sets of 100 records, durable commits).
    pub fill: Duration,
    /// From starting the sink until the last record was confirmed and deleted.
    pub drain: Duration,
}

impl DrainResult {
    /// Records confirmed per second while draining.
    pub fn records_per_second(&self) -> f64 {
        self.records as f64 / self.drain.as_secs_f64()
    }
}

/// Fills an outbox with `records` records of `readings_per_record` readings, then drains it to
/// JetStream at `nats_url` (stream `WEIR_BENCH`, created or replaced) with the real sink:
/// publishes with `Nats-Msg-Id`, at most `max_in_flight` awaiting their ack, confirmed records
/// deleted in group commits.
pub async fn drain(
    parent: &std::path::Path,
    nats_url: &str,
    records: usize,
    readings_per_record: usize,
    max_in_flight: usize,
) -> anyhow::Result<DrainResult> {
    use anyhow::Context;
    const STREAM: &str = "drain";
    const SUBJECT: &str = "weir.bench.drain";

    let client = async_nats::connect(nats_url).await.with_context(|| format!("cannot reach NATS at {nats_url}"))?;
    let jetstream = async_nats::jetstream::new(client);
    let _ = jetstream.delete_stream("WEIR_BENCH").await;
    jetstream
        .create_stream(async_nats::jetstream::stream::Config {
            name: "WEIR_BENCH".into(),
            subjects: vec![SUBJECT.into()],
            ..Default::default()
        })
        .await
        .context("cannot create the WEIR_BENCH stream")?;

    let text = format!(
        "[gateway]\nid = \"bench\"\ndata_dir = \"unused\"\n\n[brokers.central]\nurl = \"{nats_url}\"\n\n\
         [pipelines.{STREAM}.source.simulated]\npayload = \"json\"\ndevices = 1\ninterval = \"1h\"\ntopic_prefix = \"unused\"\n\n[pipelines.{STREAM}.decode.json]\n\
         series = \"/s\"\ntime = \"/t\"\nvalue = \"/v\"\n\n[pipelines.{STREAM}.sink.jetstream]\n\
         broker = \"central\"\nsubject = \"{SUBJECT}\"\nmax_in_flight = {max_in_flight}\n"
    );
    let config = crate::config::parse("weir bench drain", &text, parent, &crate::config::Overrides::default())?;
    let pipeline = config.pipelines.into_iter().next().expect("the bench config has one pipeline");

    let dir = tempfile::tempdir_in(parent)?;
    let (store, committer, thread) = state::open(dir.path(), StoreOptions::default())?;
    let started = Instant::now();
    let mut seq = 0;
    while seq < records as u64 {
        let group: Vec<OutboxRecord> = (seq + 1..=(seq + 100).min(records as u64))
            .map(|s| OutboxRecord { stream: STREAM.to_owned(), seq: s, body: record(STREAM, s, readings_per_record) })
            .collect();
        seq += group.len() as u64;
        committer.commit(ChangeSet { records: group, ..ChangeSet::default() }).await.map_err(|e| e.error)?;
    }
    let fill = started.elapsed();

    let sink = crate::sink::Sink {
        gateway: "bench".into(),
        stream: STREAM.into(),
        config: pipeline.sink.clone(),
        order: pipeline.outbox.drain,
        store: store.clone(),
        committer: committer.clone(),
        record_limit: crate::sink::RecordLimit::new(crate::sink::default_record_limit(&pipeline.sink)),
    };
    let (_committed_tx, committed_rx) = tokio::sync::watch::channel(seq);
    let stop = tokio_util::sync::CancellationToken::new();
    let started = Instant::now();
    let running = tokio::spawn(sink.run(committed_rx, stop.clone()));
    while store.outbox_len(STREAM)? > 0 {
        anyhow::ensure!(started.elapsed() < Duration::from_secs(600), "the outbox did not drain within 10 minutes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let drain = started.elapsed();
    stop.cancel();
    let _ = running.await;
    drop((store, committer));
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    let _ = jetstream.delete_stream("WEIR_BENCH").await;
    Ok(DrainResult { records: seq, readings: seq * readings_per_record as u64, fill, drain })
}
