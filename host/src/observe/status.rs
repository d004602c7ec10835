//! The gateway's status at one moment, gathered from the store's stats, the pipelines' live
//! views and the function uses: what `/api/status` returns, what the status page shows and what
//! `/readyz` judges (see `ready`), so all three agree.
//!
//! **Invariant:** gathering reads only; it takes the store's read transaction and each view's
//! lock briefly, and runs on the blocking pool.

use serde::Serialize;

use super::live::{Facts, LinkState, Live};
use super::view::Bucket;
use crate::batch::Nanos;
use crate::sandbox::UseHandle;
use crate::state::stats::{FunctionStatus, SensorStatus, StreamStats};
use crate::state::{StateStore, StoreError};
use crate::telemetry::now_nanos;

/// Dead letters the status shows.
const DEAD_LETTERS_SHOWN: usize = 10;
/// The span the rates are averaged over, seconds.
const RATE_SPAN_SECONDS: i64 = 60;

/// This gateway.
#[derive(Clone, Debug, Serialize)]
pub struct Gateway {
    /// Its id.
    pub id: String,
    /// The weir version running.
    pub version: &'static str,
    /// The sha256 of its configuration file's text.
    pub config_sha256: String,
    /// Seconds since it started.
    pub uptime_seconds: f64,
    /// Whether its wall clock is synced.
    pub clock_synced: bool,
    /// The wall clock now, ns.
    pub now: Nanos,
}

/// A connection's state and since when.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Connection {
    /// Its state.
    pub state: LinkState,
    /// Since when, ns.
    pub since: Nanos,
}

/// What flowed per second over the last minute.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct PerSecond {
    /// Input messages.
    pub messages: f64,
    /// Readings decoded.
    pub readings_in: f64,
    /// Readings sent.
    pub readings_sent: f64,
}

/// One pipeline.
#[derive(Clone, Debug, Serialize)]
pub struct Pipeline {
    /// What does not change while it runs.
    pub facts: Facts,
    /// Its source's connection.
    pub source: Connection,
    /// Its sink's connection to the central broker.
    pub uplink: Connection,
    /// When the central broker last confirmed a record, ns (none since the start).
    pub confirmed_at: Option<Nanos>,
    /// When the pipeline started, ns.
    pub started_at: Nanos,
    /// The highest event time seen.
    pub watermark: Option<Nanos>,
    /// Flow per bucket, oldest first.
    pub rates: Vec<Bucket>,
    /// Flow per second over the last minute.
    pub per_second: PerSecond,
    /// Its outbox and counters, as the store has them (none before its first commit).
    pub outbox: Option<StreamStats>,
    /// The series the page can show.
    pub series: Vec<String>,
    /// Series seen beyond those kept for the page.
    pub untracked_series: u64,
    /// The quarantined functions holding its input (`on_quarantine = "hold"`).
    pub held_by: Vec<String>,
}

/// A dead letter, as shown.
#[derive(Clone, Debug, Serialize)]
pub struct DeadLetterLine {
    /// Its id (`weir dead-letters show <id>`).
    pub id: u64,
    /// When, ns.
    pub at: Nanos,
    /// Its pipeline.
    pub pipeline: String,
    /// The stage that refused.
    pub stage: String,
    /// Why.
    pub reason: String,
    /// The function version that refused or faulted, if one did.
    pub function: Option<String>,
}

/// The gateway's status.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The gateway.
    pub gateway: Gateway,
    /// Its pipelines.
    pub pipelines: Vec<Pipeline>,
    /// Its function uses.
    pub functions: Vec<FunctionStatus>,
    /// Its sensors, by pipeline and device.
    pub sensors: Vec<SensorStatus>,
    /// The newest dead letters, newest first.
    pub dead_letters: Vec<DeadLetterLine>,
    /// Dead letters kept.
    pub dead_letters_kept: u64,
}

/// Gathers the status now. `gateway` is filled in by the caller but for the clock.
pub fn gather(
    gateway: Gateway,
    store: &StateStore,
    live: &Live,
    functions: &[UseHandle],
    sensors: &super::SensorBoard,
) -> Result<Status, StoreError> {
    let stats = store.stats()?;
    let now = now_nanos();
    let functions: Vec<FunctionStatus> = functions.iter().map(UseHandle::status).collect();
    let pipelines = live
        .pipelines()
        .iter()
        .map(|pipeline| {
            let name = pipeline.name();
            let (source, source_since) = pipeline.source().state();
            let (uplink, uplink_since) = pipeline.uplink().state();
            let view = pipeline.view();
            let (messages, readings_in, readings_sent) = view.rates.per_second(now, RATE_SPAN_SECONDS);
            let held_by = if pipeline.facts().holds_when_quarantined {
                functions
                    .iter()
                    .filter(|f| f.pipeline == name && f.quarantined_for_seconds.is_some())
                    .map(|f| format!("{} ({})", f.use_name, f.function))
                    .collect()
            } else {
                Vec::new()
            };
            Pipeline {
                facts: pipeline.facts().clone(),
                source: Connection { state: source, since: source_since },
                uplink: Connection { state: uplink, since: uplink_since },
                confirmed_at: pipeline.confirmed_at(),
                started_at: pipeline.started_at(),
                watermark: pipeline.watermark(),
                rates: view.rates.buckets(now),
                per_second: PerSecond { messages, readings_in, readings_sent },
                outbox: stats.streams.iter().find(|s| s.stream == name).cloned(),
                series: view.series.keys(),
                untracked_series: view.series.untracked,
                held_by,
            }
        })
        .collect();
    let mut dead_letters: Vec<DeadLetterLine> = store
        .dead_letters(DEAD_LETTERS_SHOWN)?
        .into_iter()
        .map(|(id, letter)| DeadLetterLine {
            id,
            at: letter.at,
            pipeline: letter.pipeline,
            stage: letter.stage.to_string(),
            reason: letter.reason,
            function: letter.function,
        })
        .collect();
    dead_letters.reverse();
    Ok(Status {
        gateway: Gateway { now, ..gateway },
        pipelines,
        functions,
        sensors: sensors.snapshot(),
        dead_letters,
        dead_letters_kept: stats.dead_letters_kept,
    })
}
