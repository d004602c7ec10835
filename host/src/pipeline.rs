//! One pipeline, wired stage by stage. Read [`spawn`] top to bottom to follow the data:
//!
//! ```text
//! source ──Delivery──▶ batcher ──Vec<Delivery>──▶ processor ──commit──▶ outbox ──▶ sink
//!                                                  decode → operators → window → encode
//!                                                  then: acknowledge upstream
//! ```
//!
//! The processor is a pure core ([`Processor::process`], run on a blocking thread because
//! decoder and operator functions are WebAssembly calls) inside an async shell ([`run_processor`])
//! that commits and acknowledges.
//!
//! **Invariant (acknowledge after commit):** for every batch, the processor commits — in one
//! change set — its outbox record, its dead letters, the function state written while processing
//! it, the window state after it, and its stream position; only after that commit returns does
//! it acknowledge the batch's deliveries upstream, in arrival order. A crash before the commit
//! makes the broker redeliver; after it, nothing acknowledged is lost.
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
//! - a failed commit → nothing acknowledged (the broker redelivers), seq not advanced;
//! - a failed acknowledgement → logged (the broker redelivers; duplicates, never loss).

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::batch::{Batch, BatchBuilder, CallContext, Message, Nanos};
use crate::config::{BatchConfig, Encoding, OnQuarantine, PipelineConfig};
use crate::decode::Decode;
use crate::encode;
use crate::operator::Chain;
use crate::sandbox::UseHandle;
use crate::shutdown::Tasks;
use crate::sink::{RecordLimit, Sink};
use crate::source::{self, Delivery};
use crate::state::{
    Applied, ChangeSet, Committer, Counter, DeadLetter, DeadLetterContent, DeadLetterStage, OutboxRecord, StateStore,
    StoreError,
};
use crate::window::{DownsampleStage, WindowAccumulator, WindowStage};
use weir_record::{Record, RecordHeader};

/// Delays between attempts to commit a batch the store refused.
const COMMIT_RETRY: crate::config::Backoff =
    crate::config::Backoff { min: Duration::from_millis(100), max: Duration::from_secs(10) };
/// Delays between attempts to commit a batch a full outbox (`when_full = "block"`) refused:
/// short, because room appears as soon as the sink gets a confirmation.
const FULL_RETRY: crate::config::Backoff =
    crate::config::Backoff { min: Duration::from_millis(50), max: Duration::from_secs(1) };
/// Dead-letter reasons logged per batch at most (the rest are counted).
const LOGGED_DEAD_LETTERS: usize = 3;

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
}

/// Starts a pipeline's tasks on `tasks`. They run until `shutdown` is cancelled, then stop in
/// order: source intake, batcher (flushes), processor (commits, acknowledges), source connection,
/// sink (in-flight publishes). A task that panics stops the gateway (see [`Tasks`]); the others
/// still stop in this order, as a panicking task drops its channel ends.
pub fn spawn(
    parts: PipelineParts,
    shared: &Shared,
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
    source::spawn(config, &shared.store, delivery_tx, intake.clone(), source_close.clone(), tasks);

    // deliveries → batches of deliveries
    let (batch_tx, batch_rx) = mpsc::channel::<Vec<Delivery>>(1);
    let limits = BatchLimits::new(config.batch, source::ack_window(&config.source));
    tasks.spawn(format!("{name} batcher"), run_batcher(delivery_rx, batch_tx, limits));

    // batches (and window ticks) → decode → operators → window → encode → commit → acknowledge
    let (committed_tx, committed_rx) = watch::channel::<u64>(shared.store.last_seq(&name)?);
    let sink_config = config.sink.clone();
    let drain = config.outbox.drain;
    let record_limit = RecordLimit::new(match shared.store.sink_record_limit(&name)? {
        Some(announced) => announced,
        None => crate::sink::default_record_limit(&config.sink),
    });
    let processor = Processor::new(parts, &shared.gateway, &shared.store, record_limit.clone())?;
    let done = [source_close, sink_stop.clone()];
    let processing = run_processor(processor, batch_rx, shared.committer.clone(), committed_tx, intake.clone(), done);
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
    };
    tasks.spawn(format!("{} sink", sink.stream), sink.run(committed_rx, sink_stop));
    Ok(())
}

/// When a batch closes.
#[derive(Clone, Copy, Debug)]
struct BatchLimits {
    max_messages: usize,
    max_bytes: u64,
    linger: Duration,
}

impl BatchLimits {
    fn new(config: BatchConfig, ack_window: Option<usize>) -> Self {
        let max_messages = ack_window.map_or(config.max_messages, |window| config.max_messages.min(window));
        Self { max_messages, max_bytes: config.max_bytes, linger: config.linger }
    }
}

/// Groups deliveries into batches: a batch closes at `max_messages`, at `max_bytes` of payload, or
/// `linger` after its first message. Ends (after sending the last partial batch) when the source
/// closes its channel.
async fn run_batcher(
    mut deliveries: mpsc::Receiver<Delivery>,
    batches: mpsc::Sender<Vec<Delivery>>,
    limits: BatchLimits,
) {
    while let Some(first) = deliveries.recv().await {
        let deadline = tokio::time::Instant::now() + limits.linger;
        let mut bytes = first.payload_len();
        let mut batch = vec![first];
        while batch.len() < limits.max_messages && bytes < limits.max_bytes {
            match tokio::time::timeout_at(deadline, deliveries.recv()).await {
                Ok(Some(delivery)) => {
                    bytes += delivery.payload_len();
                    batch.push(delivery);
                }
                Ok(None) | Err(_) => break,
            }
        }
        if batches.send(batch).await.is_err() {
            return;
        }
    }
}

/// The pure core of the processor: decode → operators → window → encode, for one batch of messages.
struct Processor {
    pipeline: String,
    gateway: String,
    encoding: Encoding,
    decoder: Box<dyn Decode>,
    chain: Chain,
    /// Highest seq committed.
    last_seq: u64,
    /// Highest event time seen.
    watermark: Nanos,
    /// The window stage, if the pipeline has one.
    window: Option<WindowStage>,
    /// The downsampling stage, if the pipeline has one.
    downsample: Option<DownsampleStage>,
    /// The fault records of the pipeline's function uses.
    functions: Vec<UseHandle>,
    /// Their fault and quarantine totals when last counted.
    fault_totals: FaultTotals,
    /// What to do while one of them is quarantined.
    on_quarantine: OnQuarantine,
    /// The largest record body the sink can publish.
    record_limit: RecordLimit,
}

/// Faults and quarantines of a pipeline's functions, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FaultTotals {
    faults: u64,
    quarantines: u64,
}

impl FaultTotals {
    fn of(functions: &[UseHandle]) -> Self {
        functions.iter().map(UseHandle::snapshot).fold(Self::default(), |sum, record| Self {
            faults: sum.faults + record.faults,
            quarantines: sum.quarantines + record.quarantines,
        })
    }
}

/// What one batch produced, to be committed together.
#[derive(Debug, Default)]
struct Processed {
    changes: ChangeSet,
    /// The seq of the record in `changes`, if one was produced.
    seq: Option<u64>,
    readings_in: usize,
    readings_out: usize,
    windows_emitted: usize,
    readings_too_late: usize,
    downsampled_in: usize,
    downsampled_out: usize,
    readings_skipped: usize,
    function_faults: u64,
    function_quarantines: u64,
}

impl Processor {
    fn new(
        parts: PipelineParts,
        gateway: &str,
        store: &StateStore,
        record_limit: RecordLimit,
    ) -> Result<Self, StoreError> {
        let config = parts.config;
        let name = config.name.to_string();
        Ok(Self {
            last_seq: store.last_seq(&name)?,
            gateway: gateway.to_owned(),
            encoding: config.encoding,
            decoder: parts.decoder,
            chain: parts.chain,
            watermark: Nanos::MIN,
            window: match config.window {
                Some(window) => Some(WindowStage::load(window, &name, store, parts.window_aggregate)?),
                None => None,
            },
            downsample: config.downsample.map(|d| DownsampleStage::load(d, &name, store)).transpose()?,
            fault_totals: FaultTotals::of(&parts.functions),
            functions: parts.functions,
            on_quarantine: config.on_quarantine,
            record_limit,
            pipeline: name,
        })
    }

    /// Processes one batch of messages; with none (a tick of the window stage), only emits the
    /// windows that are due.
    fn process(&mut self, messages: &[Message], now: Nanos) -> Processed {
        let mut processed = self.run_stages(messages, now);
        let totals = FaultTotals::of(&self.functions);
        processed.function_faults = totals.faults - self.fault_totals.faults;
        processed.function_quarantines = totals.quarantines - self.fault_totals.quarantines;
        self.fault_totals = totals;
        processed
    }

    /// The functions whose quarantine holds this pipeline's input: all of them under
    /// `on_quarantine = "hold"`, none under `skip`.
    fn holding_functions(&self) -> Vec<UseHandle> {
        match self.on_quarantine {
            OnQuarantine::Hold => self.functions.clone(),
            OnQuarantine::Skip => Vec::new(),
        }
    }

    fn run_stages(&mut self, messages: &[Message], now: Nanos) -> Processed {
        let ctx = CallContext { processing_time: now, watermark: self.watermark };
        let mut processed = Processed::default();
        let output = if messages.is_empty() {
            Batch::new()
        } else {
            let mut decoded = BatchBuilder::new();
            for message in messages {
                match self.decoder.decode(message, &ctx) {
                    Ok(piece) => decoded.extend(&piece),
                    Err(error) => {
                        let letter = self.dead_message(message, &error.to_string(), error.function(), now);
                        processed.changes.dead_letters.push(letter);
                    }
                }
            }
            processed.changes.state_writes = self.decoder.take_state_writes();
            let batch = decoded.finish();
            processed.readings_in = batch.len();
            if let Some(latest) = batch.max_timestamp() {
                self.watermark = self.watermark.max(latest);
            }

            let outcome = self.chain.process(batch, &ctx);
            processed.changes.state_writes.extend(self.chain.take_state_writes());
            processed.readings_skipped = self.chain.take_skipped();
            match outcome {
                Ok(output) => output,
                Err(failure) => {
                    let stage = DeadLetterStage::Operator { name: failure.operator };
                    let mut letter = self.dead_batch(stage, &failure.failure.to_string(), &failure.input, now);
                    letter.function = failure.function;
                    processed.changes.dead_letters.push(letter);
                    return processed;
                }
            }
        };

        let mut readings = output;
        let mut windows = Vec::new();
        if let Some(stage) = &mut self.window {
            let out = stage.process(&readings, now);
            let keeps_readings = stage.keeps_readings();
            processed.windows_emitted = out.emissions();
            processed.readings_too_late = out.too_late.len();
            if !out.too_late.is_empty() {
                let reason = format!(
                    "{} readings arrived after every window they belong to had closed (beyond the allowed lateness)",
                    out.too_late.len()
                );
                let letter = self.dead_batch(DeadLetterStage::Window, &reason, &out.too_late, now);
                processed.changes.dead_letters.push(letter);
            }
            for failure in &out.aggregate_failures {
                let letter = self.dead_batch(DeadLetterStage::WindowAggregate, &failure.reason, &failure.readings, now);
                processed.changes.dead_letters.push(letter);
            }
            processed.changes.state_writes.extend(out.checkpoint);
            windows = out.emitted;
            if !keeps_readings {
                readings = Batch::new();
            }
        }
        if let Some(stage) = &mut self.downsample {
            let out = stage.process(&readings, now);
            processed.downsampled_in = out.points_in;
            processed.downsampled_out = out.kept.len();
            processed.changes.state_writes.extend(out.checkpoint);
            readings = out.kept;
        }
        if readings.is_empty() && windows.is_empty() {
            return processed;
        }
        let seq = self.last_seq + 1;
        let header =
            RecordHeader { gateway: self.gateway.clone(), stream: self.pipeline.clone(), seq, encoded_at: now };
        let record =
            Record { header, batch: readings, aggregates: Vec::new(), windows, coarsened: None, dropped: None };
        // Sized to what the sink can publish: split into several records (consecutive seqs) if
        // needed; only a part too large by itself is dead-lettered, alone.
        let fitted = encode::fit(self.encoding, record, self.record_limit.get());
        for record in fitted.records {
            processed.readings_out += record.readings;
            processed.seq = Some(record.seq);
            processed.changes.records.push(OutboxRecord {
                stream: self.pipeline.clone(),
                seq: record.seq,
                body: record.body,
            });
        }
        for unfit in fitted.unfit {
            let mut letter = self.dead_batch(DeadLetterStage::Encode, &unfit.reason, &unfit.batch, now);
            if unfit.windows > 0 {
                letter.reason = format!("{} ({} window emission(s))", letter.reason, unfit.windows);
            }
            processed.changes.dead_letters.push(letter);
        }
        processed
    }

    fn dead_message(&self, message: &Message, reason: &str, function: Option<&str>, now: Nanos) -> DeadLetter {
        DeadLetter {
            pipeline: self.pipeline.clone(),
            stage: DeadLetterStage::Decode,
            reason: reason.to_owned(),
            function: function.map(str::to_owned),
            at: now,
            content: DeadLetterContent::message(
                &message.topic,
                &message.payload,
                message.payload.len() as u64,
                message.received_at,
            ),
        }
    }

    /// The dead letter of a message the source refused for its size: the prefix it kept.
    fn dead_oversized(&self, oversized: &source::Oversized, now: Nanos) -> DeadLetter {
        let message = &oversized.prefix;
        DeadLetter {
            pipeline: self.pipeline.clone(),
            stage: DeadLetterStage::Source,
            reason: format!(
                "message of {} bytes is larger than max_message_size ({} bytes); its first {} bytes are kept",
                oversized.size,
                oversized.limit,
                message.payload.len()
            ),
            function: None,
            at: now,
            content: DeadLetterContent::message(&message.topic, &message.payload, oversized.size, message.received_at),
        }
    }

    fn dead_batch(&self, stage: DeadLetterStage, reason: &str, batch: &Batch, now: Nanos) -> DeadLetter {
        let header =
            RecordHeader { gateway: self.gateway.clone(), stream: self.pipeline.clone(), seq: 0, encoded_at: now };
        // CBOR can only fail on time spans the JSON form cannot hold either; keep the reason then.
        let record = weir_record::write_readings(Encoding::Cbor, &header, batch).unwrap_or_default();
        DeadLetter {
            pipeline: self.pipeline.clone(),
            stage,
            reason: reason.to_owned(),
            function: None,
            at: now,
            content: DeadLetterContent::Batch { record, readings: batch.len() as u64 },
        }
    }
}

/// The processor's async shell: runs each batch through the core on a blocking thread, commits,
/// acknowledges, tells the sink. Cancels `done` when it ends.
async fn run_processor(
    processor: Processor,
    mut batches: mpsc::Receiver<Vec<Delivery>>,
    committer: Committer,
    committed: watch::Sender<u64>,
    intake: CancellationToken,
    done: [CancellationToken; 2],
) {
    let pipeline = processor.pipeline.clone();
    let holding = processor.holding_functions();
    // Window and downsampling stages also run without input, so that quiet series are sent.
    let tick =
        [processor.window.as_ref().map(WindowStage::tick), processor.downsample.as_ref().map(DownsampleStage::tick)]
            .into_iter()
            .flatten()
            .min();
    let mut ticks = tick.map(|tick| {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let mut processor = Some(processor);
    let mut awaiting = AwaitingDurability::new(&committer);
    let mut panicked = None;
    loop {
        let deliveries = tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => break,
            },
            Ok(()) = awaiting.durable.changed(), if awaiting.is_waiting() => {
                awaiting.release(&committed, &pipeline).await;
                continue;
            }
            _ = async { ticks.as_mut().expect("guarded by the branch condition").tick().await }, if ticks.is_some() => Vec::new(),
        };
        let tick = deliveries.is_empty();
        if !hold_while_quarantined(&holding, &pipeline, &intake).await {
            tracing::warn!(stage = "pipeline", pipeline = %pipeline, messages = deliveries.len(),
                "shutting down while holding input for a quarantined function; it is not acknowledged and will be redelivered");
            break;
        }
        let Some(mut core) = processor.take() else { break };
        let mut records = Vec::new();
        let mut messages = Vec::with_capacity(deliveries.len());
        let mut acks = Vec::with_capacity(deliveries.len());
        let mut oversized = Vec::new();
        for delivery in deliveries {
            records.extend(delivery.record);
            match delivery.oversized {
                Some(refused) => oversized.push(refused),
                None => messages.extend(delivery.message),
            }
            acks.push(delivery.ack);
        }
        let now = crate::telemetry::now_nanos();
        let joined = tokio::task::spawn_blocking(move || {
            let processed = core.process(&messages, now);
            (core, processed, messages.len())
        })
        .await;
        let (returned, processed, message_count) = match joined {
            Ok(result) => result,
            Err(e) => {
                // A bug in host code (a panic): the deliveries stay unacknowledged and are redelivered.
                tracing::error!(stage = "pipeline", pipeline = %pipeline, error = %e, "processing a batch panicked; the pipeline stops");
                panicked = e.try_into_panic().ok();
                break;
            }
        };
        let core = processor.insert(returned);
        let mut processed = processed;
        for refused in &oversized {
            processed.changes.dead_letters.push(core.dead_oversized(refused, now));
        }
        let changes = &processed.changes;
        if tick && changes.state_writes.is_empty() && changes.records.is_empty() && changes.dead_letters.is_empty() {
            continue;
        }
        processed.changes.deliveries = records;
        log_dead_letters(&pipeline, &processed.changes.dead_letters);
        let dead_letters = processed.changes.dead_letters.len();
        processed.changes.counts = [
            (Counter::AckedIn, acks.len()),
            (Counter::ReadingsIn, processed.readings_in),
            (Counter::DeadLettered, dead_letters),
            (Counter::RecordsCommitted, processed.changes.records.len()),
            (Counter::ReadingsCommitted, processed.readings_out),
            (Counter::BytesCommitted, processed.changes.records.iter().map(|r| r.body.len()).sum()),
            (Counter::WindowsEmitted, processed.windows_emitted),
            (Counter::ReadingsTooLate, processed.readings_too_late),
            (Counter::DownsampledIn, processed.downsampled_in),
            (Counter::DownsampledOut, processed.downsampled_out),
            (Counter::ReadingsSkipped, processed.readings_skipped),
            (Counter::FunctionFaults, usize::try_from(processed.function_faults).unwrap_or(usize::MAX)),
            (Counter::FunctionQuarantines, usize::try_from(processed.function_quarantines).unwrap_or(usize::MAX)),
        ]
        .into_iter()
        .map(|(counter, by)| (pipeline.clone(), counter, by as u64))
        .collect();
        let Some(applied) = commit_with_retry(&committer, processed.changes, &pipeline, &intake).await else {
            tracing::error!(stage = "pipeline", pipeline = %pipeline, messages = message_count,
                "shutting down with an uncommitted batch; it is not acknowledged and will be redelivered");
            break;
        };
        if let Some(seq) = processed.seq {
            core.last_seq = seq;
        }
        tracing::debug!(stage = "pipeline", pipeline = %pipeline, messages = message_count, readings_in = processed.readings_in,
            readings_out = processed.readings_out, dead_letters, seq = processed.seq, "batch committed");
        awaiting.push(applied, acks, processed.seq);
        awaiting.release(&committed, &pipeline).await;
    }
    awaiting.finish(&committed, &pipeline).await;
    // Drop the WebAssembly instances off the async threads, like every other call into them.
    let _ = tokio::task::spawn_blocking(move || drop(processor)).await;
    for token in done {
        token.cancel();
    }
    // The rest of the pipeline is told to stop; now the panic reaches `Tasks`, which stops the
    // gateway.
    if let Some(payload) = panicked {
        std::panic::resume_unwind(payload);
    }
}

/// The processor core alone — decode → operators → window → encode, no source, batcher or sink —
/// for `weir-bench engine`.
pub struct Engine(Processor);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Engine").field(&self.0.pipeline).finish()
    }
}

impl Engine {
    /// The core of the pipeline `parts` describes, with its window state from `store`.
    pub fn new(parts: PipelineParts, gateway: &str, store: &StateStore) -> Result<Self, StoreError> {
        Processor::new(parts, gateway, store, RecordLimit::new(u64::MAX)).map(Self)
    }

    /// Processes one batch of messages at processing time `now`: the change set a pipeline would
    /// commit for it (its record already holds the next seq), the readings decoded and the
    /// windows emitted.
    pub fn process(&mut self, messages: &[Message], now: Nanos) -> (ChangeSet, usize, usize) {
        let processed = self.0.process(messages, now);
        if let Some(seq) = processed.seq {
            self.0.last_seq = seq;
        }
        (processed.changes, processed.readings_in, processed.windows_emitted)
    }
}

/// Under `on_quarantine = "hold"`, waits until none of the pipeline's functions is quarantined.
/// Returns false when shutdown came first.
async fn hold_while_quarantined(functions: &[UseHandle], pipeline: &str, shutdown: &CancellationToken) -> bool {
    let mut held = false;
    let longest_quarantine = || {
        functions
            .iter()
            .filter_map(|health| health.quarantined_for().map(|left| (left, health.snapshot().function)))
            .max_by_key(|(left, _)| *left)
    };
    while let Some((left, function)) = longest_quarantine() {
        if !held {
            tracing::warn!(stage = "pipeline", pipeline, function = %function, for_ = ?crate::sandbox::round_to_millis(left),
                "holding input: a function of this pipeline is quarantined (on_quarantine = \"hold\")");
            held = true;
        }
        // Wake up at least every second: a new version staged meanwhile ends the quarantine.
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(left.min(Duration::from_secs(1))) => {}
        }
    }
    if held {
        tracing::info!(stage = "pipeline", pipeline, "quarantine over: taking input again, the next call is a trial");
    }
    true
}

/// Commits `changes`, retrying with backoff while the store refuses (a full outbox under
/// `block`, a full or failing disk): the pipeline stalls — which stops acknowledgements, so the
/// broker holds the input — instead of dropping the batch. Gives up (returns `None`) only once
/// shutdown was requested.
async fn commit_with_retry(
    committer: &Committer,
    mut changes: ChangeSet,
    pipeline: &str,
    shutdown: &CancellationToken,
) -> Option<Applied> {
    let mut retry = crate::backoff::Retry::new(COMMIT_RETRY);
    let mut full_retry = crate::backoff::Retry::new(FULL_RETRY);
    let mut full_since: Option<std::time::Instant> = None;
    loop {
        match committer.commit_applied(changes).await {
            Ok(applied) => {
                if let Some(since) = full_since {
                    tracing::info!(stage = "pipeline", pipeline, blocked_for = ?since.elapsed(), "the outbox has room again; ingesting");
                }
                return Some(applied);
            }
            Err(failed) => {
                if shutdown.is_cancelled() || matches!(failed.error, StoreError::CommitterStopped) {
                    return None;
                }
                let delay = if matches!(failed.error, StoreError::OutboxFull { .. }) {
                    if full_since.is_none() {
                        full_since = Some(std::time::Instant::now());
                        tracing::warn!(stage = "pipeline", pipeline, error = %failed.error,
                            "the outbox is full and its policy is `block`: input stays unacknowledged until the sink frees room");
                    }
                    full_retry.next_delay(&mut rand::rng())
                } else {
                    let delay = retry.next_delay(&mut rand::rng());
                    tracing::error!(stage = "pipeline", pipeline, error = %failed.error, retry_in = ?delay, "commit failed; retrying");
                    delay
                };
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
                changes = failed.changes;
            }
        }
    }
}

/// How long a stopping processor waits for its last commits to become durable before it gives
/// up acknowledging them (the broker then delivers them again).
const DURABLE_GRACE: Duration = Duration::from_secs(5);

/// Committed batches whose acknowledgements (and records, for the sink) wait for a durable
/// commit to cover them — at once under `durability = "sync"`, after the next durable flush
/// under `relaxed`.
///
/// **Invariant:** nothing derived from a commit leaves the process before that commit is
/// durable: not an acknowledgement upstream (a crash would lose acknowledged input) and not a
/// record (a crash would roll its seq back, and the seq would be given to another record whose
/// id the central broker already knows). Batches are released in commit order, so
/// acknowledgements keep arrival order.
struct AwaitingDurability {
    durable: watch::Receiver<u64>,
    batches: std::collections::VecDeque<(Applied, Vec<source::Ack>, Option<u64>)>,
}

impl AwaitingDurability {
    fn new(committer: &Committer) -> Self {
        Self { durable: committer.durable_groups(), batches: std::collections::VecDeque::new() }
    }

    fn is_waiting(&self) -> bool {
        !self.batches.is_empty()
    }

    fn push(&mut self, applied: Applied, acks: Vec<source::Ack>, seq: Option<u64>) {
        self.batches.push_back((applied, acks, seq));
    }

    /// Acknowledges, and tells the sink about, every batch a durable commit covers.
    async fn release(&mut self, committed: &watch::Sender<u64>, pipeline: &str) {
        self.durable.borrow_and_update();
        while self.batches.front().is_some_and(|(applied, _, _)| applied.is_durable()) {
            let (_, acks, seq) = self.batches.pop_front().expect("guarded by the loop condition");
            if let Some(seq) = seq {
                committed.send_replace(seq);
            }
            if let Err(e) = source::acknowledge(acks).await {
                tracing::warn!(stage = "pipeline", pipeline, error = %e, "acknowledgement failed");
            }
        }
    }

    /// At the end: waits (a bounded time) for the last commits to become durable, then
    /// releases them; what is still not durable stays unacknowledged.
    async fn finish(&mut self, committed: &watch::Sender<u64>, pipeline: &str) {
        if let Some((last, _, _)) = self.batches.back() {
            let last = last.clone();
            if tokio::time::timeout(DURABLE_GRACE, last.durable()).await.is_err() {
                tracing::warn!(
                    stage = "pipeline",
                    pipeline,
                    batches = self.batches.len(),
                    "stopping before the last commits became durable; their input will be redelivered"
                );
            }
        }
        self.release(committed, pipeline).await;
    }
}

fn log_dead_letters(pipeline: &str, letters: &[DeadLetter]) {
    for letter in letters.iter().take(LOGGED_DEAD_LETTERS) {
        tracing::warn!(stage = "pipeline", pipeline, dead_letter_stage = %letter.stage, reason = %letter.reason, "dead-lettered");
    }
    if letters.len() > LOGGED_DEAD_LETTERS {
        tracing::warn!(
            stage = "pipeline",
            pipeline,
            more = letters.len() - LOGGED_DEAD_LETTERS,
            "more dead letters in this batch"
        );
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::RawNumberDecoder;
    use crate::operator::{Operator, OperatorFailure};
    use crate::state::StateWrite;

    fn delivery(payload: &'static str) -> Delivery {
        Delivery::unacknowledged(Message { topic: "t".into(), payload: Bytes::from(payload), received_at: 5 })
    }

    #[tokio::test(start_paused = true)]
    async fn batches_close_at_the_message_limit_at_linger_and_when_the_source_ends() {
        let (deliveries, incoming) = mpsc::channel(16);
        let (batches_tx, mut batches) = mpsc::channel(16);
        let limits = BatchLimits { max_messages: 3, max_bytes: u64::MAX, linger: Duration::from_millis(100) };
        tokio::spawn(run_batcher(incoming, batches_tx, limits));
        for payload in ["1", "2", "3", "4"] {
            deliveries.send(delivery(payload)).await.expect("batcher runs");
        }
        assert_eq!(batches.recv().await.expect("a full batch").len(), 3);
        // The fourth waits for the linger (paused time advances by itself when idle).
        let started = tokio::time::Instant::now();
        assert_eq!(batches.recv().await.expect("a lingering batch").len(), 1);
        assert!(started.elapsed() >= Duration::from_millis(100));
        deliveries.send(delivery("5")).await.expect("batcher runs");
        drop(deliveries);
        assert_eq!(batches.recv().await.expect("the last partial batch").len(), 1);
        assert!(batches.recv().await.is_none(), "the batcher ends with its source");
    }

    #[test]
    fn ack_window_caps_the_batch_size() {
        let config = BatchConfig { max_messages: 1000, max_bytes: 1, linger: Duration::ZERO, queue: 1 };
        assert_eq!(BatchLimits::new(config, Some(20)).max_messages, 20);
        assert_eq!(BatchLimits::new(config, None).max_messages, 1000);
    }

    /// Refuses batches holding a negative value; writes one state entry per call.
    struct RefuseNegative;

    impl Operator for RefuseNegative {
        fn name(&self) -> &str {
            "refuse-negative"
        }

        fn process(&mut self, batch: Batch, _: &CallContext) -> Result<Batch, (Batch, OperatorFailure)> {
            if batch.values().iter().any(|v| *v < 0.0) {
                Err((batch, OperatorFailure::Refused { reason: "negative".into() }))
            } else {
                Ok(batch)
            }
        }

        fn take_state_writes(&mut self) -> Vec<StateWrite> {
            vec![StateWrite { namespace: "p/refuse-negative".into(), key: b"k".to_vec(), value: None }]
        }
    }

    fn processor(last_seq: u64) -> Processor {
        Processor {
            pipeline: "p".into(),
            gateway: "gw".into(),
            encoding: Encoding::Cbor,
            decoder: Box::new(RawNumberDecoder::new(crate::config::NumberEncoding::Text, String::new(), None)),
            chain: Chain::new(vec![Box::new(RefuseNegative)], false),
            last_seq,
            watermark: Nanos::MIN,
            window: None,
            downsample: None,
            functions: Vec::new(),
            fault_totals: FaultTotals::default(),
            on_quarantine: OnQuarantine::Hold,
            record_limit: RecordLimit::new(u64::MAX),
        }
    }

    fn messages(payloads: &[&'static str]) -> Vec<Message> {
        payloads.iter().flat_map(|p| delivery(p).message).collect()
    }

    #[test]
    fn a_batch_becomes_one_record_with_the_next_seq_and_bad_messages_become_dead_letters() {
        let mut core = processor(41);
        let processed = core.process(&messages(&["1.5", "hot", "2.5"]), 100);
        assert_eq!(processed.seq, Some(42));
        assert_eq!((processed.readings_in, processed.readings_out), (2, 2));
        let record = &processed.changes.records[0];
        assert_eq!((record.stream.as_str(), record.seq), ("p", 42));
        let decoded = weir_record::read(&record.body).expect("a valid record");
        assert_eq!(decoded.batch.values(), [1.5, 2.5]);
        assert_eq!(decoded.header.record_id(), "gw.p.42");
        let [letter] = processed.changes.dead_letters.as_slice() else { panic!("one dead letter") };
        assert_eq!(letter.stage, DeadLetterStage::Decode);
        assert!(letter.reason.contains("\"hot\" is not a decimal number"), "{}", letter.reason);
        assert_eq!(processed.changes.state_writes.len(), 1, "operator state writes travel with the batch");
        assert_eq!(core.last_seq, 41, "seq advances only after the commit");
    }

    #[test]
    fn a_refused_batch_is_dead_lettered_whole_and_takes_no_seq() {
        let mut core = processor(0);
        let processed = core.process(&messages(&["1", "-1"]), 100);
        assert_eq!(processed.seq, None);
        assert!(processed.changes.records.is_empty());
        let [letter] = processed.changes.dead_letters.as_slice() else { panic!("one dead letter") };
        assert_eq!(letter.stage, DeadLetterStage::Operator { name: "refuse-negative".into() });
        assert_eq!(letter.stage.to_string(), "operator refuse-negative");
        assert_eq!(letter.reason, "refused the batch: negative");
        let DeadLetterContent::Batch { record, readings } = &letter.content else { panic!("a batch dead letter") };
        assert_eq!(*readings, 2);
        assert_eq!(weir_record::read(record).expect("a valid record").batch.values(), [1.0, -1.0]);
    }

    #[test]
    fn nothing_decoded_means_no_record() {
        let mut core = processor(7);
        let processed = core.process(&messages(&["x"]), 100);
        assert_eq!(processed.seq, None);
        assert_eq!(processed.changes.dead_letters.len(), 1);
    }
}
