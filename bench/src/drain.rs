//! `weir-bench drain`: an outbox drained to JetStream by the real sink (needs a NATS server with
//! JetStream; the stream `WEIR_BENCH` is created and deleted): how fast records are filled in
//! with durable commits, and how fast the sink publishes, has them confirmed and deletes them.
//!
//! Owns a temporary data directory, removed at the end, and the `WEIR_BENCH` stream.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::runtime::Runtime;
use weir_host::config::{self, Overrides};
use weir_host::observe::{Facts, PipelineLive};
use weir_host::sink::{self, RecordLimit, Sink};
use weir_host::state::{self, ChangeSet, OutboxRecord, StoreOptions};

use crate::commit::record;
use crate::report::{print_machine, verdict};

/// Outbox drain to JetStream with the real sink (needs a NATS server with JetStream; the stream
/// WEIR_BENCH is created and deleted).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The NATS server.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// Where the temporary database goes.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Records to drain.
    #[arg(long, default_value_t = 50_000)]
    records: usize,
    /// Readings per record.
    #[arg(long, default_value_t = 100)]
    readings: usize,
    /// Publishes awaiting their ack at once (the sink's `max_in_flight`).
    #[arg(long, default_value_t = 64)]
    max_in_flight: usize,
}

impl Args {
    /// Fills and drains on `runtime`, then prints the fill and drain rates against their targets.
    pub fn execute(self, runtime: &Runtime) -> anyhow::Result<()> {
        let Self { nats, dir, records, readings, max_in_flight } = self;
        let mut out = std::io::stdout().lock();
        print_machine(&mut out)?;
        let result = runtime.block_on(drain(&dir, &nats, records, readings, max_in_flight))?;
        writeln!(out, "max_in_flight = {max_in_flight}")?;
        writeln!(out)?;
        let fill_rate = result.readings as f64 / result.fill.as_secs_f64();
        let drain_rate = result.records_per_second();
        writeln!(
            out,
            "| records | readings/record | fill: readings/s (bulk, target ≥ 500 000) | drain: records/s (target ≥ 150 000) | drain: readings/s |"
        )?;
        writeln!(
            out,
            "|--------:|----------------:|------------------------------------------:|------------------------------------:|------------------:|"
        )?;
        writeln!(
            out,
            "| {} | {readings} | {fill_rate:.0} ({}) | {drain_rate:.0} ({}) | {:.0} |",
            result.records,
            verdict(fill_rate >= 500_000.0),
            verdict(drain_rate >= 150_000.0),
            result.readings as f64 / result.drain.as_secs_f64()
        )?;
        Ok(())
    }
}

/// What was measured.
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
    parent: &Path,
    nats_url: &str,
    records: usize,
    readings_per_record: usize,
    max_in_flight: usize,
) -> anyhow::Result<DrainResult> {
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
    let config = config::parse("weir-bench drain", &text, parent, &Overrides::default())?;
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

    let sink = Sink {
        gateway: "bench".into(),
        stream: STREAM.into(),
        config: pipeline.sink.clone(),
        order: pipeline.outbox.drain,
        store: store.clone(),
        committer: committer.clone(),
        record_limit: RecordLimit::new(sink::default_record_limit(&pipeline.sink)),
        live: PipelineLive::new(Facts::of(&pipeline, "outbox → jetstream".to_owned())),
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
