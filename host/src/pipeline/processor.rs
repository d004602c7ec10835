//! The processor's async shell. It takes batches (and window ticks), runs each through the
//! stages ([`Processor`]) on a blocking thread, and performs what the bookkeeping
//! ([`Bookkeeping`]) answers: commits through the [`Committer`], retries after a backoff,
//! acknowledges upstream and tells the sink the seq it may publish through. Every decision —
//! which seqs, when to acknowledge, when to retry, give up or exit — is the bookkeeping's; this
//! file only connects it to the committer, the clock, the sources' acknowledgements and the sink.
//!
//! One batch at a time: the next batch is processed only once the commit of this one is
//! applied (or given up). Between batches, and while input is held for a quarantined function,
//! batches that become durable are acknowledged.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::observe::PipelineLive;
use crate::sandbox::UseHandle;
use crate::source::{self, Ack, Delivery};
use crate::state::{ChangeSet, Committer, DeadLetter, EXIT_DURABILITY_LOST};
use crate::telemetry::now_nanos;

use super::bookkeeping::{Action, Bookkeeping, Event};
use super::stages::Processor;

/// How long a stopping processor waits for its last commits to become durable before it gives
/// up acknowledging them (the broker then delivers them again).
const DURABLE_GRACE: Duration = Duration::from_secs(5);
/// Dead-letter reasons logged per batch at most (the rest are counted).
const LOGGED_DEAD_LETTERS: usize = 3;
/// Longest sleep while input is held for a quarantined function: a new version staged
/// meanwhile ends the quarantine.
const HOLD_RECHECK: Duration = Duration::from_secs(1);

/// The bookkeeping and what its actions are performed on.
struct Shell {
    pipeline: String,
    books: Bookkeeping<ChangeSet, Ack>,
    committer: Committer,
    /// The newest durable group.
    durable: watch::Receiver<u64>,
    /// The highest seq the sink may publish.
    committed: watch::Sender<u64>,
    intake: CancellationToken,
    /// Where the messages taken and acknowledged are counted.
    live: Option<PipelineLive>,
}

/// A batch run through the stages, ready for the bookkeeping.
struct Prepared {
    changes: ChangeSet,
    acks: Vec<Ack>,
    /// Its last record's seq, if it has records.
    seq: Option<u64>,
    messages: usize,
    readings_in: usize,
    readings_out: usize,
}

/// Runs the processor until its input ends, shutdown makes it give up a commit, or processing
/// panics; then waits a bounded time for its last commits to become durable, acknowledges those
/// that did, and cancels `done`. A panic is resumed after that, to reach [`crate::shutdown::Tasks`].
pub(super) async fn run_processor(
    processor: Processor,
    books: Bookkeeping<ChangeSet, Ack>,
    mut batches: mpsc::Receiver<Vec<Delivery>>,
    committer: Committer,
    committed: watch::Sender<u64>,
    intake: CancellationToken,
    done: [CancellationToken; 2],
) {
    let pipeline = processor.pipeline.clone();
    let holding = processor.holding_functions();
    // Window and downsampling stages also run without input, so that quiet series are sent.
    let mut ticks = processor.tick().map(|tick| {
        let mut ticks = tokio::time::interval(tick);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks
    });
    let durable = committer.durable_groups();
    let live = processor.live();
    let mut shell = Shell { pipeline, books, committer, durable, committed, intake, live };
    let mut processor = Some(processor);
    let mut panicked = None;
    loop {
        let deliveries = tokio::select! {
            batch = batches.recv() => match batch {
                Some(batch) => batch,
                None => break,
            },
            Ok(()) = shell.durable.changed(), if shell.books.waiting_for().is_some() => {
                shell.report_durable().await;
                continue;
            }
            _ = async { ticks.as_mut().expect("guarded by the branch condition").tick().await }, if ticks.is_some() => Vec::new(),
        };
        if !shell.hold_while_quarantined(&holding).await {
            tracing::warn!(stage = "pipeline", pipeline = %shell.pipeline, messages = deliveries.len(),
                "shutting down while holding input for a quarantined function; it is not acknowledged and will be redelivered");
            break;
        }
        let Some(core) = processor.take() else { break };
        if let Some(live) = &shell.live {
            live.taken(deliveries.len());
        }
        let next_seq = shell.books.next_seq();
        let prepared = match prepare(core, deliveries, next_seq).await {
            Ok((core, prepared)) => {
                processor = Some(core);
                prepared
            }
            Err(e) => {
                // A bug in host code (a panic): the deliveries stay unacknowledged and are redelivered.
                tracing::error!(stage = "pipeline", pipeline = %shell.pipeline, error = %e, "processing a batch panicked; the pipeline stops");
                panicked = e.try_into_panic().ok();
                break;
            }
        };
        let Some(prepared) = prepared else { continue };
        if !shell.commit(prepared).await {
            break;
        }
    }
    shell.finish().await;
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

/// Runs `deliveries` (none: a tick) through the stages on a blocking thread, numbering records
/// from `next_seq`; gives the core back with the batch ready to commit, or with `None` for a tick
/// that produced nothing.
async fn prepare(
    mut core: Processor,
    deliveries: Vec<Delivery>,
    next_seq: u64,
) -> Result<(Processor, Option<Prepared>), tokio::task::JoinError> {
    let tick = deliveries.is_empty();
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
    let now = now_nanos();
    let (core, mut processed, messages) = tokio::task::spawn_blocking(move || {
        let processed = core.process(&messages, now, next_seq);
        (core, processed, messages.len())
    })
    .await?;
    for refused in &oversized {
        processed.changes.dead_letters.push(core.dead_oversized(refused, now));
    }
    let changes = &processed.changes;
    if tick && changes.state_writes.is_empty() && changes.records.is_empty() && changes.dead_letters.is_empty() {
        return Ok((core, None));
    }
    log_dead_letters(&core.pipeline, &processed.changes.dead_letters);
    core.observe(&processed, messages);
    processed.changes.deliveries = records;
    processed.changes.counts = processed.counts(&core.pipeline, acks.len());
    let prepared = Prepared {
        seq: processed.seq,
        messages,
        readings_in: processed.readings_in,
        readings_out: processed.readings_out,
        changes: processed.changes,
        acks,
    };
    Ok((core, Some(prepared)))
}

impl Shell {
    /// Hands a prepared batch to the bookkeeping and performs what follows until its commit is
    /// applied. False when the pipeline is to stop.
    async fn commit(&mut self, prepared: Prepared) -> bool {
        let Prepared { changes, acks, seq, messages, readings_in, readings_out } = prepared;
        let dead_letters = changes.dead_letters.len();
        let records = changes.records.len() as u64;
        debug_assert_eq!(
            seq,
            (records > 0).then(|| self.books.next_seq() + records - 1),
            "the stages number records from the seq the bookkeeping gave"
        );
        if !self.perform(Event::Processed { changes, records, acks }).await {
            return false;
        }
        tracing::debug!(stage = "pipeline", pipeline = %self.pipeline, messages, readings_in, readings_out,
            dead_letters, seq, "batch committed");
        true
    }

    /// Reports `event` to the bookkeeping and performs the actions it answers, and those that
    /// follow from them, in order. False when the pipeline is to stop.
    async fn perform(&mut self, event: Event<ChangeSet, Ack>) -> bool {
        let mut actions = VecDeque::from(self.books.step(event, now_nanos()));
        while let Some(action) = actions.pop_front() {
            match action {
                Action::Commit { changes, seqs: _ } => actions.extend(self.commit_once(changes).await),
                Action::RetryAfter(delay) => {
                    let event = tokio::select! {
                        () = self.intake.cancelled() => Event::Stop,
                        () = tokio::time::sleep(delay) => Event::RetryDue,
                    };
                    actions.extend(self.books.step(event, now_nanos()));
                }
                Action::PublishThrough(seq) => {
                    self.committed.send_replace(seq);
                }
                Action::Acknowledge(acks) => {
                    if let Some(live) = &self.live {
                        live.acknowledged(acks.len());
                    }
                    if let Err(e) = source::acknowledge(acks).await {
                        tracing::warn!(stage = "pipeline", pipeline = %self.pipeline, error = %e, "acknowledgement failed");
                    }
                }
                Action::GiveUp => return false,
                Action::ExitDurabilityLost => std::process::exit(EXIT_DURABILITY_LOST),
            }
        }
        true
    }

    /// One attempt to commit `changes`; the bookkeeping's answer to its outcome. The newest
    /// durable group is reported first, so that the bookkeeping judges a failure by what is
    /// durable now.
    async fn commit_once(&mut self, changes: ChangeSet) -> Vec<Action<ChangeSet, Ack>> {
        let outcome = self.committer.commit_applied(changes).await;
        let now = now_nanos();
        let mut actions = Vec::new();
        let event = match outcome {
            Ok(applied) => Event::Applied { group: applied.group() },
            Err(failed) => {
                if self.intake.is_cancelled() {
                    actions.extend(self.books.step(Event::Stop, now));
                }
                Event::CommitFailed { changes: failed.changes, error: failed.error }
            }
        };
        let through = *self.durable.borrow_and_update();
        actions.extend(self.books.step(Event::Durable { through }, now));
        actions.extend(self.books.step(event, now));
        actions
    }

    /// Reports the newest durable group and performs the releases that follow.
    async fn report_durable(&mut self) {
        let through = *self.durable.borrow_and_update();
        self.perform(Event::Durable { through }).await;
    }

    /// Under `on_quarantine = "hold"`, waits until none of `functions` is quarantined,
    /// acknowledging meanwhile what becomes durable. False when shutdown came first.
    async fn hold_while_quarantined(&mut self, functions: &[UseHandle]) -> bool {
        let longest_quarantine = || {
            functions
                .iter()
                .filter_map(|health| health.quarantined_for().map(|left| (left, health)))
                .max_by_key(|(left, _)| *left)
        };
        while let Some((left, health)) = longest_quarantine() {
            let function = health.snapshot().function;
            self.books.step(Event::QuarantineEntered { function, left }, now_nanos());
            let waiting = self.books.waiting_for().is_some();
            tokio::select! {
                () = self.intake.cancelled() => return false,
                () = tokio::time::sleep(left.min(HOLD_RECHECK)) => {}
                Ok(()) = self.durable.changed(), if waiting => self.report_durable().await,
            }
        }
        self.books.step(Event::QuarantineLeft, now_nanos());
        true
    }

    /// At the end: waits (a bounded time) for the last commits to become durable, then
    /// releases them; what is still not durable stays unacknowledged.
    async fn finish(&mut self) {
        self.books.step(Event::Stop, now_nanos());
        let Some(last) = self.books.waiting_for() else { return };
        let made_durable = self.durable.wait_for(|durable| *durable >= last);
        if tokio::time::timeout(DURABLE_GRACE, made_durable).await.is_err() {
            tracing::warn!(stage = "pipeline", pipeline = %self.pipeline, batches = self.books.waiting(),
                "stopping before the last commits became durable; their input will be redelivered");
        }
        self.report_durable().await;
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
