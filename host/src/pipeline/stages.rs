//! The stages one batch runs through — decode → operators → window → downsample → encode — as
//! one core ([`Processor`]) that turns a batch of messages into the change set to commit for it:
//! its records (numbered from the seq it is given), dead letters, function, window and
//! downsampler state. It does no I/O of its own, but decoder and operator functions are
//! WebAssembly calls, so the shell runs it on a blocking thread. [`Engine`] is the same core
//! alone, for `weir-bench engine`.
//!
//! What fails where, per batch (nothing here stops the pipeline): see the [parent module](super).

use crate::batch::{Batch, BatchBuilder, CallContext, Message, Nanos};
use crate::config::{Encoding, OnQuarantine};
use crate::decode::Decode;
use crate::encode;
use crate::observe::{Flow, PipelineLive, Tapped};
use crate::operator::Chain;
use crate::sandbox::UseHandle;
use crate::sink::RecordLimit;
use crate::source;
use crate::state::{
    ChangeSet, Counter, DeadLetter, DeadLetterContent, DeadLetterStage, OutboxRecord, StateStore, StoreError,
};
use crate::window::{DownsampleStage, WindowStage};
use weir_record::{Record, RecordHeader};

use super::PipelineParts;

/// The processor's core: decode → operators → window → encode, for one batch of messages.
pub(super) struct Processor {
    pub(super) pipeline: String,
    gateway: String,
    encoding: Encoding,
    decoder: Box<dyn Decode>,
    chain: Chain,
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
    /// What the pipeline shows while it runs (the status page, the tap); none in the engine
    /// benchmark unless asked for.
    live: Option<PipelineLive>,
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
pub(super) struct Processed {
    pub(super) changes: ChangeSet,
    /// The seq of the last record in `changes`, if one was produced.
    pub(super) seq: Option<u64>,
    pub(super) readings_in: usize,
    pub(super) readings_out: usize,
    windows_emitted: usize,
    readings_too_late: usize,
    downsampled_in: usize,
    downsampled_out: usize,
    readings_skipped: usize,
    function_faults: u64,
    function_quarantines: u64,
}

impl Processed {
    /// The stream counters this batch adds to, for `acked_in` deliveries; counted in the
    /// commit of its change set.
    pub(super) fn counts(&self, pipeline: &str, acked_in: usize) -> Vec<(String, Counter, u64)> {
        let changes = &self.changes;
        [
            (Counter::AckedIn, acked_in),
            (Counter::ReadingsIn, self.readings_in),
            (Counter::DeadLettered, changes.dead_letters.len()),
            (Counter::RecordsCommitted, changes.records.len()),
            (Counter::ReadingsCommitted, self.readings_out),
            (Counter::BytesCommitted, changes.records.iter().map(|r| r.body.len()).sum()),
            (Counter::WindowsEmitted, self.windows_emitted),
            (Counter::ReadingsTooLate, self.readings_too_late),
            (Counter::DownsampledIn, self.downsampled_in),
            (Counter::DownsampledOut, self.downsampled_out),
            (Counter::ReadingsSkipped, self.readings_skipped),
            (Counter::FunctionFaults, usize::try_from(self.function_faults).unwrap_or(usize::MAX)),
            (Counter::FunctionQuarantines, usize::try_from(self.function_quarantines).unwrap_or(usize::MAX)),
        ]
        .into_iter()
        .map(|(counter, by)| (pipeline.to_owned(), counter, by as u64))
        .collect()
    }
}

impl Processor {
    pub(super) fn new(
        parts: PipelineParts,
        gateway: &str,
        store: &StateStore,
        record_limit: RecordLimit,
        live: Option<PipelineLive>,
    ) -> Result<Self, StoreError> {
        let config = parts.config;
        let name = config.name.to_string();
        Ok(Self {
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
            live,
            pipeline: name,
        })
    }

    /// Processes one batch of messages, numbering its records from `next_seq`; with none (a
    /// tick of the window stage), only emits the windows that are due.
    pub(super) fn process(&mut self, messages: &[Message], now: Nanos, next_seq: u64) -> Processed {
        let mut processed = self.run_stages(messages, now, next_seq);
        let totals = FaultTotals::of(&self.functions);
        processed.function_faults = totals.faults - self.fault_totals.faults;
        processed.function_quarantines = totals.quarantines - self.fault_totals.quarantines;
        self.fault_totals = totals;
        processed
    }

    /// What the pipeline shows while it runs, if it shows anything.
    pub(super) fn live(&self) -> Option<PipelineLive> {
        self.live.clone()
    }

    /// The functions whose quarantine holds this pipeline's input: all of them under
    /// `on_quarantine = "hold"`, none under `skip`.
    pub(super) fn holding_functions(&self) -> Vec<UseHandle> {
        match self.on_quarantine {
            OnQuarantine::Hold => self.functions.clone(),
            OnQuarantine::Skip => Vec::new(),
        }
    }

    /// How often the window and downsampling stages run without input, so that quiet series are
    /// sent; `None` without such stages.
    pub(super) fn tick(&self) -> Option<std::time::Duration> {
        [self.window.as_ref().map(WindowStage::tick), self.downsample.as_ref().map(DownsampleStage::tick)]
            .into_iter()
            .flatten()
            .min()
    }

    fn run_stages(&mut self, messages: &[Message], now: Nanos, next_seq: u64) -> Processed {
        let ctx = CallContext { processing_time: now, watermark: self.watermark };
        let mut processed = Processed::default();
        let output = if messages.is_empty() {
            Batch::new()
        } else {
            if let Some(live) = self.live.as_ref().filter(|live| live.tapped()) {
                live.tap(PipelineLive::tapped_messages(messages));
            }
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
            if let Some(live) = &self.live {
                live.decoded(&batch);
            }
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
        if let Some(live) = &self.live {
            live.sending(&readings, &windows);
        }
        let header = RecordHeader {
            gateway: self.gateway.clone(),
            stream: self.pipeline.clone(),
            seq: next_seq,
            encoded_at: now,
        };
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

    /// Shows a processed batch of `messages` messages — ready to commit, every dead letter in
    /// it — in the pipeline's flow and on its tap.
    pub(super) fn observe(&self, processed: &Processed, messages: usize) {
        let changes = &processed.changes;
        for letter in &changes.dead_letters {
            metrics::counter!("weir_dead_letters_by_stage_total", "pipeline" => self.pipeline.clone(),
                "stage" => letter.stage.to_string())
            .increment(1);
        }
        let Some(live) = &self.live else { return };
        live.flowed(&Flow {
            messages: messages as u64,
            readings_in: processed.readings_in as u64,
            readings_sent: processed.readings_out as u64,
            records: changes.records.len() as u64,
            bytes: changes.records.iter().map(|r| r.body.len() as u64).sum(),
            dead_letters: changes.dead_letters.len() as u64,
        });
        if live.tapped() {
            let records = changes.records.iter().map(|r| Tapped::Record { seq: r.seq, bytes: r.body.len() });
            let letters = changes
                .dead_letters
                .iter()
                .map(|l| Tapped::DeadLetter { stage: l.stage.to_string(), reason: l.reason.clone() });
            live.tap(records.chain(letters).collect());
        }
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
    pub(super) fn dead_oversized(&self, oversized: &source::Oversized, now: Nanos) -> DeadLetter {
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

/// The processor core alone — decode → operators → window → encode, no source, batcher or sink —
/// for `weir-bench engine`.
pub struct Engine {
    core: Processor,
    /// Highest seq of the records produced so far (as if each had been committed).
    last_seq: u64,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Engine").field(&self.core.pipeline).finish()
    }
}

impl Engine {
    /// The core of the pipeline `parts` describes, with its window state and last seq from `store`.
    pub fn new(parts: PipelineParts, gateway: &str, store: &StateStore) -> Result<Self, StoreError> {
        let last_seq = store.last_seq(parts.config.name.as_str())?;
        Ok(Self { core: Processor::new(parts, gateway, store, RecordLimit::new(u64::MAX), None)?, last_seq })
    }

    /// Shows what it processes in `live`, as a running pipeline does (for measuring what that
    /// costs).
    pub fn observed(mut self, live: PipelineLive) -> Self {
        self.core.live = Some(live);
        self
    }

    /// Processes one batch of messages at processing time `now`: the change set a pipeline would
    /// commit for it (its record already holds the next seq), the readings decoded and the
    /// windows emitted.
    pub fn process(&mut self, messages: &[Message], now: Nanos) -> (ChangeSet, usize, usize) {
        let processed = self.core.process(messages, now, self.last_seq + 1);
        self.core.observe(&processed, messages.len());
        if let Some(seq) = processed.seq {
            self.last_seq = seq;
        }
        (processed.changes, processed.readings_in, processed.windows_emitted)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::decode::RawNumberDecoder;
    use crate::operator::{Operator, OperatorFailure};
    use crate::state::StateWrite;

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

    fn processor() -> Processor {
        Processor {
            pipeline: "p".into(),
            gateway: "gw".into(),
            encoding: Encoding::Cbor,
            decoder: Box::new(RawNumberDecoder::new(crate::config::NumberEncoding::Text, String::new(), None)),
            chain: Chain::new(vec![Box::new(RefuseNegative)], false),
            watermark: Nanos::MIN,
            window: None,
            downsample: None,
            functions: Vec::new(),
            fault_totals: FaultTotals::default(),
            on_quarantine: OnQuarantine::Hold,
            record_limit: RecordLimit::new(u64::MAX),
            live: None,
        }
    }

    fn messages(payloads: &[&'static str]) -> Vec<Message> {
        payloads.iter().map(|p| Message { topic: "t".into(), payload: Bytes::from(*p), received_at: 5 }).collect()
    }

    #[test]
    fn a_batch_becomes_one_record_with_the_next_seq_and_bad_messages_become_dead_letters() {
        let mut core = processor();
        let processed = core.process(&messages(&["1.5", "hot", "2.5"]), 100, 42);
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
    }

    #[test]
    fn a_refused_batch_is_dead_lettered_whole_and_takes_no_seq() {
        let mut core = processor();
        let processed = core.process(&messages(&["1", "-1"]), 100, 1);
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
        let mut core = processor();
        let processed = core.process(&messages(&["x"]), 100, 8);
        assert_eq!(processed.seq, None);
        assert_eq!(processed.changes.dead_letters.len(), 1);
    }
}
