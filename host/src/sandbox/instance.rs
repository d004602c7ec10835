//! Warm instances: one per use of a function in a pipeline, reused across calls, replaced after a
//! fault or on a version change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::component::InstancePre;
use wasmtime::{Engine, Store, Trap};

use super::bindings::{accumulator, decoder, operator, types};
use super::handle::UseHandle;
use super::host::{InstanceLabels, InstanceState, LimitHit, StateLimits, Writes};
use super::quarantine::{Admission, FaultRecord};
use super::{CompiledFunction, SandboxError, StartPhase, WorldKind, deadline_ticks};
use crate::batch::{Batch, CallContext, Message, Series};
use crate::config::FunctionLimits;
use crate::decode::{Decode, DecodeError};
use crate::operator::{Operator, OperatorFailure};
use crate::state::{StateStore, StateWrite};
use crate::window::accumulator::Accumulator;

/// A linked component, checked against one world.
pub(super) enum Pre {
    Operator(operator::OperatorPre<InstanceState>),
    Decoder(decoder::DecoderPre<InstanceState>),
    Accumulator(accumulator::AccumulatorPre<InstanceState>),
}

impl Pre {
    /// Checks the component's exports against every world; the error gives each world's reason
    /// (operator, decoder, accumulator).
    pub(super) fn new(instance_pre: InstancePre<InstanceState>) -> Result<Self, [String; 3]> {
        let operator_error = match operator::OperatorPre::new(instance_pre.clone()) {
            Ok(pre) => return Ok(Self::Operator(pre)),
            Err(e) => format!("{e:#}"),
        };
        let decoder_error = match decoder::DecoderPre::new(instance_pre.clone()) {
            Ok(pre) => return Ok(Self::Decoder(pre)),
            Err(e) => format!("{e:#}"),
        };
        match accumulator::AccumulatorPre::new(instance_pre) {
            Ok(pre) => Ok(Self::Accumulator(pre)),
            Err(e) => Err([operator_error, decoder_error, format!("{e:#}")]),
        }
    }

    pub(super) fn world(&self) -> WorldKind {
        match self {
            Self::Operator(_) => WorldKind::Operator,
            Self::Decoder(_) => WorldKind::Decoder,
            Self::Accumulator(_) => WorldKind::Accumulator,
        }
    }
}

/// What every instance needs from the sandbox.
pub(super) struct Runtime {
    pub(super) engine: Engine,
    pub(super) store: StateStore,
    pub(super) state_limits: StateLimits,
    /// Whether the engine meters fuel (then every store needs some, metered function or not).
    pub(super) fuel_metering: bool,
}

enum Exports {
    Operator(operator::Operator),
    Decoder(decoder::Decoder),
    Accumulator(accumulator::Accumulator),
}

struct Live {
    store: Store<InstanceState>,
    exports: Exports,
}

/// Why a call produced no result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CallFailure {
    /// The function trapped, ran out of a limit, or could not be instantiated; the reason.
    Fault(String),
    /// The use is quarantined for this much longer; the function was not called.
    Quarantined(Duration),
}

/// One use of a function in a pipeline: a warm instance that is re-created after faults, and
/// quarantined after too many in a row (see [`super::quarantine`]).
///
/// Invariant: state writes of successful calls that the pipeline has not taken yet survive a
/// fault — they move from the discarded store into `carried`, and from there into the next one.
pub struct FunctionInstance {
    runtime: Runtime,
    function: Arc<CompiledFunction>,
    labels: Arc<InstanceLabels>,
    namespace: String,
    params_json: String,
    live: Option<Live>,
    carried: Writes,
    handle: UseHandle,
}

impl std::fmt::Debug for FunctionInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FunctionInstance")
            .field("function", &self.labels.function)
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

impl FunctionInstance {
    /// Instantiates and initialises; refuses to start when `init` fails.
    pub(super) fn start(
        runtime: Runtime,
        function: Arc<CompiledFunction>,
        labels: InstanceLabels,
        params_json: String,
    ) -> Result<Self, SandboxError> {
        let namespace = format!("{}/{}", labels.pipeline, labels.operator);
        let handle = UseHandle::new(
            FaultRecord::new(labels.function.clone(), function.quarantine),
            function.version.id.clone(),
            labels.pipeline.clone(),
            labels.operator.clone(),
        );
        let mut instance = Self {
            runtime,
            function,
            labels: Arc::new(labels),
            namespace,
            params_json,
            live: None,
            carried: Writes::new(),
            handle,
        };
        let now = crate::telemetry::now_nanos();
        instance.live = Some(instance.instantiate(now).map_err(|failure| instance.start_error(failure))?);
        Ok(instance)
    }

    fn start_error(&self, (phase, reason): (StartPhase, String)) -> SandboxError {
        SandboxError::Start {
            function: self.labels.function.clone(),
            use_name: self.labels.operator.clone(),
            phase,
            reason,
        }
    }

    /// The function version running.
    pub fn version(&self) -> &super::FunctionVersion {
        &self.function.version
    }

    /// Faults in a row (reset by a successful call).
    pub fn consecutive_faults(&self) -> u32 {
        self.handle.with_record(|record| record.consecutive_faults)
    }

    /// The shared handle of this use: its fault record, and where a new version is staged.
    pub fn handle(&self) -> UseHandle {
        self.handle.clone()
    }

    /// The state namespace of this use.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Replaces the running version with `function`, keeping parameters, namespace and
    /// uncommitted state writes. On failure the current version keeps running.
    pub fn replace(&mut self, function: &Arc<CompiledFunction>) -> Result<(), SandboxError> {
        if function.world() != self.function.world() {
            return Err(SandboxError::WorldMismatch {
                function: function.version.id.clone(),
                expected: self.function.world(),
                actual: function.world(),
            });
        }
        let previous = std::mem::replace(&mut self.function, Arc::clone(function));
        let previous_labels = Arc::clone(&self.labels);
        self.labels = Arc::new(InstanceLabels { function: function.version.to_string(), ..(*previous_labels).clone() });
        // The new instance starts from the same uncommitted writes; the old one keeps its copy
        // until the swap succeeds.
        self.carried =
            self.live.as_ref().map(|live| live.store.data().pending.clone()).unwrap_or_else(|| self.carried.clone());
        match self.instantiate(crate::telemetry::now_nanos()) {
            Ok(live) => {
                tracing::info!(stage = "sandbox", from = %previous.version, to = %function.version, namespace = %self.namespace, "function version replaced");
                self.live = Some(live);
                self.handle.with_record(|record| record.new_version(self.labels.function.clone()));
                Ok(())
            }
            Err(failure) => {
                self.function = previous;
                self.labels = previous_labels;
                self.carried.clear();
                Err(self.start_error(failure))
            }
        }
    }

    /// Creates a store and instance, and runs `init`; on failure, where and why.
    fn instantiate(&mut self, processing_time: i64) -> Result<Live, (StartPhase, String)> {
        let limits = self.function.limits;
        let state = InstanceState::new(
            Arc::clone(&self.labels),
            self.runtime.store.clone(),
            self.namespace.clone(),
            self.runtime.state_limits,
            &limits,
            std::mem::take(&mut self.carried),
        );
        let mut store = Store::new(&self.runtime.engine, state);
        store.limiter(|s| &mut s.limiter);
        arm_limits(&mut store, &limits, self.runtime.fuel_metering);
        store.data_mut().begin_call(processing_time, 0);
        let instantiated = match &self.function.pre {
            Pre::Operator(pre) => pre.instantiate(&mut store).map(Exports::Operator),
            Pre::Decoder(pre) => pre.instantiate(&mut store).map(Exports::Decoder),
            Pre::Accumulator(pre) => pre.instantiate(&mut store).map(Exports::Accumulator),
        };
        let exports = match instantiated {
            Ok(exports) => exports,
            Err(e) => {
                let tail = store.data_mut().end_call(false);
                self.carried = store.data_mut().take_pending();
                let reason = format!("instantiation failed: {}", describe_fault(&e, store.data(), &tail, &limits));
                return Err((StartPhase::Instantiate, reason));
            }
        };
        let init = match &exports {
            Exports::Operator(o) => o.call_init(&mut store, &self.params_json),
            Exports::Decoder(d) => d.call_init(&mut store, &self.params_json),
            Exports::Accumulator(a) => a.call_init(&mut store, &self.params_json),
        };
        let succeeded = matches!(init, Ok(Ok(())));
        let tail = store.data_mut().end_call(succeeded);
        let failure = match init {
            Ok(Ok(())) => return Ok(Live { store, exports }),
            Ok(Err(error)) => format!("init refused: {}", describe_error(&error)),
            Err(e) => format!("init faulted: {}", describe_fault(&e, store.data(), &tail, &limits)),
        };
        self.carried = store.data_mut().take_pending();
        Err((StartPhase::Init, failure))
    }

    /// Starts a call on the live instance (instantiating one if the last faulted). The call stays
    /// open until [`Self::complete`] or [`Self::fault`]; a trap closes it here and returns the
    /// reason. A quarantined use is not called at all.
    fn call<R>(
        &mut self,
        ctx: &CallContext,
        invoke: impl FnOnce(&Exports, &mut Store<InstanceState>) -> wasmtime::Result<R>,
    ) -> Result<R, CallFailure> {
        if let Some(next) = self.handle.take_next_version() {
            self.take_up(&next);
        }
        if let Admission::Quarantined(left) = self.handle.with_record(|record| record.admit(Instant::now())) {
            return Err(CallFailure::Quarantined(left));
        }
        if self.live.is_none() {
            match self.instantiate(ctx.processing_time) {
                Ok(live) => self.live = Some(live),
                Err((_, reason)) => {
                    self.record_fault(&reason);
                    return Err(CallFailure::Fault(reason));
                }
            }
        }
        let limits = self.function.limits;
        let live = self.live.as_mut().expect("an instance is live: created just above when missing");
        arm_limits(&mut live.store, &limits, self.runtime.fuel_metering);
        live.store.data_mut().begin_call(ctx.processing_time, ctx.watermark);
        match invoke(&live.exports, &mut live.store) {
            Ok(result) => Ok(result),
            Err(e) => {
                let tail = live.store.data_mut().end_call(false);
                let reason = describe_fault(&e, live.store.data(), &tail, &limits);
                tracing::warn!(stage = "sandbox", function = %self.labels.function, pipeline = %self.labels.pipeline,
                    operator = %self.labels.operator, reason = %reason, details = ?e, "function faulted; its instance is replaced");
                self.retire(&reason);
                Err(CallFailure::Fault(reason))
            }
        }
    }

    /// Closes the open call: its state writes count when `succeeded`. A refusal (`false`) is not a
    /// fault, nor a success that would end a fault streak.
    fn complete(&mut self, succeeded: bool) {
        if let Some(live) = &mut self.live {
            live.store.data_mut().end_call(succeeded);
        }
        if succeeded {
            self.handle.with_record(FaultRecord::success);
        }
    }

    /// Closes the open call as a fault found by the host (a malformed result): the instance goes.
    fn fault(&mut self, reason: &str) {
        if let Some(live) = &mut self.live {
            live.store.data_mut().end_call(false);
        }
        tracing::warn!(stage = "sandbox", function = %self.labels.function, pipeline = %self.labels.pipeline,
            operator = %self.labels.operator, reason, "function faulted; its instance is replaced");
        self.retire(reason);
    }

    /// Drops the live instance, keeping its uncommitted writes for the next one.
    fn retire(&mut self, reason: &str) {
        if let Some(mut live) = self.live.take() {
            self.carried = live.store.data_mut().take_pending();
        }
        self.record_fault(reason);
    }

    /// Counts a fault; reports the quarantine it starts, if it starts one.
    fn record_fault(&mut self, reason: &str) {
        let labels = &self.labels;
        self.handle.with_record(|record| {
            if let Some(period) = record.fault(Instant::now(), reason) {
                tracing::error!(stage = "sandbox", function = %labels.function, pipeline = %labels.pipeline,
                    operator = %labels.operator, consecutive_faults = record.consecutive_faults, quarantines = record.quarantines,
                    period = ?period, last_fault = %reason, "function quarantined: it faulted too often in a row");
            }
        });
    }

    /// Replaces the running version with one staged through the handle; a version that cannot
    /// start is reported and the current one keeps running.
    fn take_up(&mut self, next: &Arc<CompiledFunction>) {
        if next.version == self.function.version {
            return;
        }
        let started = Instant::now();
        match self.replace(next) {
            Ok(()) => {
                tracing::info!(stage = "sandbox", function = %self.labels.function, pipeline = %self.labels.pipeline,
                operator = %self.labels.operator, paused = ?started.elapsed(), "staged function version taken up");
            }
            Err(e) => {
                tracing::error!(stage = "sandbox", pipeline = %self.labels.pipeline, operator = %self.labels.operator,
                error = %e, "staged function version refused; the current version keeps running");
            }
        }
    }

    /// Uncommitted writes of successful calls, handed over for the pipeline's commit.
    pub fn take_state_writes(&mut self) -> Vec<StateWrite> {
        let pending = match &mut self.live {
            Some(live) => live.store.data_mut().take_pending(),
            None => std::mem::take(&mut self.carried),
        };
        pending.into_iter().map(|(key, value)| StateWrite { namespace: self.namespace.clone(), key, value }).collect()
    }
}

/// `d` without its sub-millisecond part (for messages).
pub(crate) fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Words for a domain error.
fn describe_error(error: &types::Error) -> String {
    match error {
        types::Error::InvalidParams(reason) => format!("invalid params: {reason}"),
        types::Error::InvalidInput(reason) => format!("invalid input: {reason}"),
        types::Error::Failed(reason) => reason.clone(),
    }
}

/// Creates a store and instantiates `function` in it `runs` times, without `init`; how long each
/// took (for `weir-bench sandbox`).
pub(super) fn time_instantiations(
    runtime: &Runtime,
    function: &CompiledFunction,
    runs: usize,
) -> Result<Vec<Duration>, String> {
    let labels = Arc::new(InstanceLabels {
        function: function.version.to_string(),
        pipeline: "bench".into(),
        operator: "bench".into(),
    });
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            let state = InstanceState::new(
                Arc::clone(&labels),
                runtime.store.clone(),
                "bench/bench".into(),
                runtime.state_limits,
                &function.limits,
                Writes::new(),
            );
            let mut store = Store::new(&runtime.engine, state);
            store.limiter(|s| &mut s.limiter);
            arm_limits(&mut store, &function.limits, runtime.fuel_metering);
            let instantiated = match &function.pre {
                Pre::Operator(pre) => pre.instantiate(&mut store).map(drop),
                Pre::Decoder(pre) => pre.instantiate(&mut store).map(drop),
                Pre::Accumulator(pre) => pre.instantiate(&mut store).map(drop),
            };
            instantiated.map_err(|e| format!("{e:#}"))?;
            let elapsed = started.elapsed();
            drop(store);
            Ok(elapsed)
        })
        .collect()
}

/// Sets the per-call limits that are spent by a call: the epoch deadline and the fuel (all there
/// is for a function without a fuel limit in an engine that meters).
fn arm_limits(store: &mut Store<InstanceState>, limits: &FunctionLimits, fuel_metering: bool) {
    store.set_epoch_deadline(deadline_ticks(limits.timeout));
    if fuel_metering {
        store.set_fuel(limits.fuel.unwrap_or(u64::MAX)).expect("the engine meters fuel");
    }
}

/// Words for a fault: which limit or trap, with the panic message when the guest panicked.
fn describe_fault(error: &wasmtime::Error, state: &InstanceState, stderr: &str, limits: &FunctionLimits) -> String {
    if let Some(hit) = state.limiter.hit {
        return match hit {
            LimitHit::Memory { desired, limit } => {
                format!("memory limit: tried to grow linear memory to {desired} bytes, the limit is {limit} bytes")
            }
            LimitHit::Table { desired, limit } => {
                format!("table limit: tried to grow a table to {desired} elements, the limit is {limit}")
            }
            LimitHit::StateWrites { desired, limit } => format!(
                "state write limit: tried to hold {desired} bytes of uncommitted state writes, the limit is {limit} bytes"
            ),
        };
    }
    if let Some(failure) = &state.host_failure {
        return format!("host failure: {failure}");
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return format!("the function called exit (status {}; WASI 0.2 only tells success from failure)", exit.0);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => {
            format!("timed out: the call ran longer than its limit of {:?}", limits.timeout)
        }
        Some(Trap::OutOfFuel) => {
            format!("fuel exhausted: the call used all of its {} units", limits.fuel.unwrap_or_default())
        }
        Some(Trap::StackOverflow) => "stack overflow".to_owned(),
        // Rust and C guests keep most stack frames in linear memory, below their data; recursing
        // too deep runs that stack off the bottom of memory, which is this trap.
        Some(Trap::MemoryOutOfBounds) => {
            "trap: out of bounds memory access (for a Rust or C function, usually its stack overflowing)".to_owned()
        }
        Some(Trap::UnreachableCodeReached) => match panic_message(stderr) {
            Some(message) => format!("panicked: {message}"),
            None => "trap: unreachable code reached (an abort or panic)".to_owned(),
        },
        Some(trap) => format!("trap: {trap}"),
        None => format!("error: {}", error.root_cause()),
    }
}

/// The message of a Rust panic as std prints it on stderr:
/// `thread '…' panicked at src/lib.rs:10:5:\n<message>\nnote: …`.
fn panic_message(stderr: &str) -> Option<String> {
    let start = stderr.rfind("panicked at ")? + "panicked at ".len();
    let rest = &stderr[start..];
    let rest = rest.split("\nnote: ").next().unwrap_or(rest);
    let message = rest.trim().replace('\n', " ");
    (!message.is_empty()).then_some(message)
}

fn to_wit_batch(batch: Batch) -> types::Batch {
    let (series, series_idx, ts, value) = batch.into_columns();
    types::Batch {
        series: series.into_iter().map(|s| types::Series { name: s.name, unit: s.unit, tags: s.tags }).collect(),
        series_idx,
        ts,
        value,
    }
}

fn from_wit_batch(batch: types::Batch) -> Result<Batch, crate::batch::InvalidBatch> {
    let series = batch.series.into_iter().map(|s| Series { name: s.name, unit: s.unit, tags: s.tags }).collect();
    Batch::from_columns(series, batch.series_idx, batch.ts, batch.value)
}

/// An operator use backed by a function instance.
#[derive(Debug)]
pub struct FunctionOperator {
    instance: FunctionInstance,
}

impl FunctionOperator {
    pub(super) fn new(instance: FunctionInstance) -> Self {
        Self { instance }
    }

    /// The instance behind this operator (for version replacement and fault counts).
    pub fn instance_mut(&mut self) -> &mut FunctionInstance {
        &mut self.instance
    }
}

impl Operator for FunctionOperator {
    fn name(&self) -> &str {
        &self.instance.labels.operator
    }

    fn function(&self) -> Option<&str> {
        Some(&self.instance.labels.function)
    }

    fn process(&mut self, batch: Batch, ctx: &CallContext) -> Result<Batch, (Batch, OperatorFailure)> {
        let input = to_wit_batch(batch);
        let restore = |input: types::Batch| {
            from_wit_batch(input).expect("the input was a valid batch before the call borrowed it")
        };
        let outcome = self.instance.call(ctx, |exports, store| match exports {
            Exports::Operator(operator) => operator.call_process(store, &input),
            Exports::Decoder(_) | Exports::Accumulator(_) => {
                unreachable!("Sandbox::operator only wraps operator-world components")
            }
        });
        match outcome {
            Err(CallFailure::Fault(reason)) => Err((restore(input), OperatorFailure::Fault { reason })),
            Err(CallFailure::Quarantined(remaining)) => {
                Err((restore(input), OperatorFailure::Quarantined { remaining }))
            }
            Ok(Err(error)) => {
                self.instance.complete(false);
                Err((restore(input), OperatorFailure::Refused { reason: describe_error(&error) }))
            }
            Ok(Ok(output)) => match from_wit_batch(output) {
                Ok(output) => {
                    self.instance.complete(true);
                    Ok(output)
                }
                Err(invalid) => {
                    let reason = format!("returned a malformed batch: {invalid}");
                    self.instance.fault(&reason);
                    Err((restore(input), OperatorFailure::Fault { reason }))
                }
            },
        }
    }

    fn take_state_writes(&mut self) -> Vec<StateWrite> {
        self.instance.take_state_writes()
    }
}

/// A decoder backed by a function instance.
#[derive(Debug)]
pub struct FunctionDecoder {
    instance: FunctionInstance,
}

impl FunctionDecoder {
    pub(super) fn new(instance: FunctionInstance) -> Self {
        Self { instance }
    }

    /// The instance behind this decoder (for version replacement and fault counts).
    pub fn instance_mut(&mut self) -> &mut FunctionInstance {
        &mut self.instance
    }
}

impl Decode for FunctionDecoder {
    fn decode(&mut self, message: &Message, ctx: &CallContext) -> Result<Batch, DecodeError> {
        let function = self.instance.labels.function.clone();
        let input = types::Message {
            topic: message.topic.clone(),
            payload: message.payload.to_vec(),
            received_at: message.received_at,
        };
        let outcome = self.instance.call(ctx, |exports, store| match exports {
            Exports::Decoder(decoder) => decoder.call_decode(store, &input),
            Exports::Operator(_) | Exports::Accumulator(_) => {
                unreachable!("Sandbox::decoder only wraps decoder-world components")
            }
        });
        match outcome {
            Err(CallFailure::Fault(reason)) => Err(DecodeError::Fault { function, reason }),
            Err(CallFailure::Quarantined(remaining)) => Err(DecodeError::Quarantined { function, remaining }),
            Ok(Err(error)) => {
                self.instance.complete(false);
                Err(DecodeError::Refused { function, reason: describe_error(&error) })
            }
            Ok(Ok(output)) => match from_wit_batch(output) {
                Ok(batch) => {
                    self.instance.complete(true);
                    // NaN and infinity are not readings, whichever decoder made them.
                    for (i, value) in batch.values().iter().enumerate() {
                        crate::decode::finite(*value, || format!("reading {i} of decoder function {function}"))?;
                    }
                    Ok(batch)
                }
                Err(invalid) => {
                    let reason = format!("returned a malformed batch: {invalid}");
                    self.instance.fault(&reason);
                    Err(DecodeError::Fault { function, reason })
                }
            },
        }
    }

    fn take_state_writes(&mut self) -> Vec<StateWrite> {
        self.instance.take_state_writes()
    }
}

/// Accumulator calls see no processing time (WASI clocks read zero) and no watermark: a custom
/// aggregate depends on its arguments only, so replaying a batch after a crash gives the same
/// partials.
const ACCUMULATOR_CALL: CallContext = CallContext { processing_time: 0, watermark: 0 };

/// A window's custom aggregate backed by a function instance.
#[derive(Debug)]
pub struct FunctionAccumulator {
    instance: FunctionInstance,
}

impl FunctionAccumulator {
    pub(super) fn new(instance: FunctionInstance) -> Self {
        Self { instance }
    }

    /// The instance behind this accumulator (for version replacement and fault counts).
    pub fn instance_mut(&mut self) -> &mut FunctionInstance {
        &mut self.instance
    }

    /// Runs one export; a refusal or fault comes back as its reason (the instance is replaced
    /// after a fault).
    fn run<R>(
        &mut self,
        invoke: impl FnOnce(
            &accumulator::Accumulator,
            &mut Store<InstanceState>,
        ) -> wasmtime::Result<Result<R, types::Error>>,
    ) -> Result<R, String> {
        let outcome = self.instance.call(&ACCUMULATOR_CALL, |exports, store| match exports {
            Exports::Accumulator(accumulator) => invoke(accumulator, store),
            Exports::Operator(_) | Exports::Decoder(_) => {
                unreachable!("Sandbox::accumulator only wraps accumulator-world components")
            }
        });
        match outcome {
            Err(CallFailure::Fault(reason)) => Err(format!("{} faulted: {reason}", self.instance.labels.function)),
            Err(CallFailure::Quarantined(remaining)) => Err(format!(
                "{} is quarantined for another {}",
                self.instance.labels.function,
                humantime::format_duration(round_to_millis(remaining))
            )),
            Ok(Err(error)) => {
                self.instance.complete(false);
                Err(format!("{} refused: {}", self.instance.labels.function, describe_error(&error)))
            }
            Ok(Ok(value)) => {
                self.instance.complete(true);
                Ok(value)
            }
        }
    }
}

impl Accumulator for FunctionAccumulator {
    fn create(&mut self) -> Result<Vec<u8>, String> {
        self.run(|accumulator, store| accumulator.call_create(store))
    }

    fn add(&mut self, partial: &[u8], ts: &[i64], values: &[f64]) -> Result<Vec<u8>, String> {
        self.run(|accumulator, store| accumulator.call_add(store, partial, ts, values))
    }

    fn merge(&mut self, first: &[u8], second: &[u8]) -> Result<Vec<u8>, String> {
        self.run(|accumulator, store| accumulator.call_merge(store, first, second))
    }

    fn finish(&mut self, partial: &[u8], start: i64, end: i64) -> Result<Vec<(String, f64)>, String> {
        let values = self.run(|accumulator, store| accumulator.call_finish(store, partial, start, end))?;
        let mut names = std::collections::BTreeSet::new();
        if let Some((name, _)) = values.iter().find(|(name, _)| name.is_empty() || !names.insert(name.as_str())) {
            let reason = format!("finish returned the name {name:?} twice or empty; names must be unique");
            self.instance.fault(&reason);
            return Err(format!("{} faulted: {reason}", self.instance.labels.function));
        }
        Ok(values)
    }
}

#[cfg(test)]
mod tests {
    use super::panic_message;

    #[test]
    fn extracts_the_panic_message_from_std_output() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:10:5:\nvalue 666 is cursed\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(panic_message(stderr).as_deref(), Some("src/lib.rs:10:5: value 666 is cursed"));
        assert_eq!(panic_message("nothing here"), None);
    }
}
