//! One pipeline, wired stage by stage. Read [`spawn`] top to bottom to follow the data:
//!
//! ```text
//! source ──Delivery──▶ batcher ──Vec<Delivery>──▶ processor ──commit──▶ outbox ──▶ sink
//!                                                  decode → operators → window → encode
//!                                                  then: acknowledge upstream
//! ```
//!
//! - `batcher.rs` groups deliveries into batches;
//! - `stages.rs` is the processor's core: decode → operators → window → downsample → encode, one
//!   batch into one change set (run on a blocking thread: decoder and operator functions are
//!   WebAssembly calls); also [`Engine`], that core alone for `weir-bench engine`;
//! - `bookkeeping.rs` is the processor's bookkeeping, without I/O: seqs, commits and their
//!   retries, acknowledgements and the sink's publishable seq released once durable, input held
//!   for a quarantined function;
//! - `processor.rs` is the processor's async shell around both: it commits, acknowledges and
//!   tells the sink what the bookkeeping says.
//!
//! **Invariant (acknowledge after commit):** for every batch, the processor commits — in one
//! change set — its outbox record, its dead letters, the function state written while processing
//! it, the window state after it, and its stream position; only once a durable commit covers it
//! does it acknowledge the batch's deliveries upstream, in arrival order, and let the sink read
//! its records. A crash before that makes the broker redeliver; after it, nothing acknowledged
//! is lost.
//!
//! What fails where, per batch (nothing here stops the pipeline):
//! - a message that does not decode → dead letter (message + reason), the rest of the batch goes on;
//! - an operator that refuses or faults → dead letter (its input batch + reason + function
//!   version); operators before it keep their state writes;
//! - a function quarantined after faulting too often in a row → `on_quarantine`: `hold` stops
//!   taking input (nothing is acknowledged, the broker keeps it) until the quarantine ends and a
//!   trial call is made; `skip` passes batches around a quarantined operator (counted) and
//!   dead-letters what a quarantined decoder or window aggregate would have handled;
//! - an encode failure → dead letter (batch + reason);
//! - a failed commit → nothing acknowledged, seq not advanced; retried with backoff, never
//!   skipped (the pipeline stalls, the broker keeps the input); under `durability = "relaxed"`,
//!   a commit that fails while earlier ones are not durable yet ends the process with status 75;
//! - a failed acknowledgement → logged (the broker redelivers; duplicates, never loss).

mod batcher;
mod bookkeeping;
mod processor;
mod stages;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::config::PipelineConfig;
use crate::decode::Decode;
use crate::observe::PipelineLive;
use crate::operator::Chain;
use crate::sandbox::UseHandle;
use crate::shutdown::Tasks;
use crate::sink::{RecordLimit, Sink};
use crate::source::{self, Delivery};
use crate::state::{Committer, StateStore, StoreError};
use crate::window::WindowAccumulator;

use batcher::{BatchLimits, run_batcher};
use bookkeeping::Bookkeeping;
use processor::run_processor;
pub use stages::Engine;
use stages::Processor;

/// What a pipeline runs: its configuration and its ready decoder and operators.
pub struct PipelineParts {
    /// The pipeline's configuration.
    pub config: PipelineConfig,
    /// Its decoder (built-in or function).
    pub decoder: Box<dyn Decode>,
    /// Its operator chain.
    pub chain: Chain,
    /// Its window's custom aggregate, if the window has one.
    pub window_aggregate: Option<WindowAccumulator>,
    /// The fault records of every function use above (decoder, operators, window aggregate).
    pub functions: Vec<UseHandle>,
}

impl std::fmt::Debug for PipelineParts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PipelineParts")
            .field("name", &self.config.name)
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

/// What every pipeline shares.
#[derive(Clone, Debug)]
pub struct Shared {
    /// This gateway's id.
    pub gateway: String,
    /// Reads of the state store.
    pub store: StateStore,
    /// Writes to the state store.
    pub committer: Committer,
    /// Where sensors on the gateway's buses publish their status.
    pub sensors: crate::observe::SensorBoard,
    /// How to tell whether the wall clock is synced.
    pub clock: crate::config::ClockSynced,
}

/// Starts a pipeline's tasks on `tasks`. They run until `shutdown` is cancelled, then stop in
/// order: source intake, batcher (flushes), processor (commits, acknowledges), source connection,
/// sink (in-flight publishes). A task that panics stops the gateway (see [`Tasks`]); the others
/// still stop in this order, as a panicking task drops its channel ends.
pub fn spawn(
    parts: PipelineParts,
    shared: &Shared,
    live: &PipelineLive,
    shutdown: &CancellationToken,
    tasks: &Tasks,
) -> Result<(), StoreError> {
    let config = &parts.config;
    let name = config.name.to_string();
    let intake = shutdown.child_token();
    let source_close = CancellationToken::new();
    let sink_stop = CancellationToken::new();

    // source → deliveries
    let (delivery_tx, delivery_rx) = mpsc::channel::<Delivery>(config.batch.queue);
    let connection = live.source().clone();
    let sensors = source::sensors::SensorContext {
        gateway: shared.gateway.clone(),
        board: shared.sensors.clone(),
        clock: shared.clock.clone(),
    };
    source::spawn(
        config,
        &shared.store,
        delivery_tx,
        intake.clone(),
        source_close.clone(),
        connection,
        &sensors,
        tasks,
    );

    // deliveries → batches of deliveries
    let (batch_tx, batch_rx) = mpsc::channel::<Vec<Delivery>>(1);
    let limits = BatchLimits::new(config.batch, source::in_flight_limit(&config.source));
    tasks.spawn(format!("{name} batcher"), run_batcher(delivery_rx, batch_tx, limits));

    // batches (and window ticks) → decode → operators → window → encode → commit → acknowledge,
    // and the highest seq the sink may publish
    let last_seq = shared.store.last_seq(&name)?;
    let (committed_tx, committed_rx) = watch::channel::<u64>(last_seq);
    let sink_config = config.sink.clone();
    let drain = config.outbox.drain;
    let record_limit = RecordLimit::new(match shared.store.sink_record_limit(&name)? {
        Some(announced) => announced,
        None => crate::sink::default_record_limit(&config.sink),
    });
    let books = Bookkeeping::seeded(&name, last_seq);
    let processor = Processor::new(parts, &shared.gateway, &shared.store, record_limit.clone(), Some(live.clone()))?;
    let done = [source_close, sink_stop.clone()];
    let processing =
        run_processor(processor, books, batch_rx, shared.committer.clone(), committed_tx, intake.clone(), done);
    tasks.spawn(format!("{name} processor"), processing);

    // outbox → sink
    let sink = Sink {
        gateway: shared.gateway.clone(),
        stream: name,
        config: sink_config,
        order: drain,
        store: shared.store.clone(),
        committer: shared.committer.clone(),
        record_limit,
        live: live.clone(),
    };
    tasks.spawn(format!("{} sink", sink.stream), sink.run(committed_rx, sink_stop));
    Ok(())
}
