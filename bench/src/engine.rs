//! `weir-bench engine`: one pipeline's core end to end, from recorded messages to the outbox —
//! SenML JSON decode → `threshold-alert` (WebAssembly, passes the readings of series in alarm)
//! → 1 s tumbling event-time windows → CBOR → outbox, one `sync` commit per batch, as a pipeline
//! does before acknowledging. No broker: messages are generated up front (the "recording") and
//! fed in batches; the clock is wall time.
//!
//! With `--observed`, the pipeline also shows what it processes as a running gateway does — its
//! live view (rates, the series ring, the tap's check for watchers) and the Prometheus recorder
//! installed, so the histograms and counters recorded on the way cost what they cost in a
//! gateway; run with and without to measure that cost.
//!
//! Owns a temporary data directory, removed at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::runtime::Runtime;
use weir_host::batch::Message;
use weir_host::config::{self, Overrides};
use weir_host::observe::{Facts, PipelineLive, metrics};
use weir_host::pipeline::Engine;
use weir_host::sandbox::{Sandbox, SandboxOptions, StateLimits};
use weir_host::state::{self, StoreOptions};
use weir_host::{gateway, telemetry};

use crate::report::{print_machine, verdict};

/// One pipeline's core from recorded SenML: decode → WebAssembly filter → 1 s windows → CBOR →
/// outbox, one durable commit per batch.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the built components are.
    #[arg(long, default_value = "target/functions")]
    functions_dir: PathBuf,
    /// Readings in the recording.
    #[arg(long, default_value_t = 2_000_000)]
    readings: usize,
    /// Show what is processed in the live view and record the metrics, as a gateway does.
    #[arg(long)]
    observed: bool,
}

impl Args {
    /// Runs the recording on `runtime` and prints its one-row table.
    pub fn execute(self, runtime: &Runtime) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        print_machine(&mut out)?;
        let result = runtime.block_on(run(&self.functions_dir, self.readings, 100, 100, self.observed))?;
        let rate = result.readings_per_second();
        writeln!(
            out,
            "| observed | readings | messages | records | windows | bytes | seconds | readings/s (target ≥ 1 000 000) |"
        )?;
        writeln!(
            out,
            "|:--------:|---------:|---------:|--------:|--------:|------:|--------:|--------------------------------:|"
        )?;
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.3} | {rate:.0} ({}) |",
            if self.observed { "yes" } else { "no" },
            result.readings,
            result.messages,
            result.records,
            result.windows,
            result.bytes,
            result.elapsed.as_secs_f64(),
            verdict(rate >= 1e6)
        )?;
        Ok(())
    }
}

/// First event time of the recording, ms since the epoch.
const START_MS: i64 = 1_700_000_000_000;

/// What was measured.
#[derive(Clone, Copy, Debug)]
pub struct EngineResult {
    /// Readings decoded.
    pub readings: u64,
    /// Messages (SenML packs) decoded.
    pub messages: u64,
    /// Records committed.
    pub records: u64,
    /// Window emissions in them.
    pub windows: u64,
    /// Bytes of those records.
    pub bytes: u64,
    /// Wall time, commits included.
    pub elapsed: Duration,
}

impl EngineResult {
    /// Readings per second, end to end.
    pub fn readings_per_second(&self) -> f64 {
        self.readings as f64 / self.elapsed.as_secs_f64()
    }
}

const CONFIG: &str = r#"
[gateway]
id = "bench"
data_dir = "unused"

[functions.threshold-alert]
component = "weir_fn_threshold_alert.wasm"
timeout = "10s"

[pipelines.engine]
decode = "senml_json"

[pipelines.engine.source.simulated]
payload = "senml_json"
devices = 1
interval = "1h"
topic_prefix = "unused"

[[pipelines.engine.operators]]
function = "threshold-alert"
params = { above = 60.0, hysteresis = 5.0 }

[pipelines.engine.window]
kind = "tumbling"
width = "1s"
allowed_lateness = "2s"

[pipelines.engine.sink.console]
"#;

/// SenML packs of `per_message` readings, 100 series, one reading per series per 10 ms of event
/// time; values swing between 0 and 100 so series go in and out of alarm.
fn recording(total: usize, per_message: usize) -> Vec<Message> {
    let series = 100;
    let mut messages = Vec::with_capacity(total / per_message + 1);
    let mut n = 0;
    while n < total {
        let mut pack = String::with_capacity(per_message * 48);
        pack.push('[');
        for i in 0..per_message.min(total - n) {
            let reading = n + i;
            let (s, step) = (reading % series, reading / series);
            let time_ms = START_MS + step as i64 * 10;
            let value = 50.0 + 50.0 * ((step as f64 / 200.0) + s as f64).sin();
            if i > 0 {
                pack.push(',');
            }
            pack.push_str(&format!(
                r#"{{"n":"plant/line{}/sensor{}","u":"Cel","t":{}.{:03},"v":{:.2}}}"#,
                s / 10,
                s % 10,
                time_ms / 1000,
                time_ms % 1000,
                value
            ));
        }
        pack.push(']');
        n += per_message;
        messages.push(Message { topic: "plant/senml".into(), payload: Bytes::from(pack), received_at: 0 });
    }
    messages
}

/// Runs `total` readings in SenML packs of `per_message`, `messages_per_batch` packs per batch.
pub async fn run(
    functions_dir: &Path,
    total: usize,
    per_message: usize,
    messages_per_batch: usize,
    observed: bool,
) -> anyhow::Result<EngineResult> {
    let dir = tempfile::tempdir()?;
    let overrides = Overrides { data_dir: Some(dir.path().to_owned()), functions_dir: Some(functions_dir.to_owned()) };
    let config = config::parse("weir-bench engine", CONFIG, dir.path(), &overrides)?;
    let options = StoreOptions { durability: config::Durability::Sync, ..StoreOptions::default() };
    let (store, committer, thread) = state::open(dir.path(), options)?;
    let sandbox_options = SandboxOptions::for_functions(
        config.functions.values(),
        1,
        StateLimits { max_key: config.state.max_key, max_value: config.state.max_value },
    );
    let sandbox = Sandbox::new(sandbox_options, &dir.path().join("compiled"), store.clone())?;
    let compiled =
        config.functions.iter().map(|(id, f)| (id.clone(), sandbox.load(f).map_err(|e| e.to_string()))).collect();
    let pipeline = config.pipelines.into_iter().next().expect("the bench config has one pipeline");
    let facts = Facts::of(&pipeline, "recording → [threshold-alert] → outbox".to_owned());
    let parts = gateway::build(&sandbox, &compiled, pipeline).map_err(anyhow::Error::msg)?;
    let mut engine = Engine::new(parts, "bench", &store)?;
    if observed {
        metrics::handle();
        engine = engine.observed(PipelineLive::new(facts));
    }

    let messages = recording(total, per_message);
    let mut result =
        EngineResult { readings: 0, messages: 0, records: 0, windows: 0, bytes: 0, elapsed: Duration::ZERO };
    let started = Instant::now();
    for batch in messages.chunks(messages_per_batch) {
        let now = telemetry::now_nanos();
        let (changes, readings_in, windows) = engine.process(batch, now);
        result.readings += readings_in as u64;
        result.windows += windows as u64;
        result.messages += batch.len() as u64;
        result.records += changes.records.len() as u64;
        result.bytes += changes.records.iter().map(|r| r.body.len() as u64).sum::<u64>();
        committer.commit(changes).await.map_err(|failed| failed.error)?;
    }
    result.elapsed = started.elapsed();
    drop(engine);
    drop(committer);
    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    Ok(result)
}
