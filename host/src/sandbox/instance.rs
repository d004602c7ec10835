//! Warm instances: one per use of a function in a pipeline, reused across calls, replaced after a
//! fault or on a version change.
//!
//! **Invariant:** state writes of successful calls that the pipeline has not taken yet survive a
//! fault and a version change — they move from the discarded store into the next one. Every
//! fault is counted in the use's fault record ([`super::quarantine`]) by its [`Fault`] value.

use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::{Engine, Store};

use super::fault::{self, Aftermath, Fault, StartFailure};
use super::handle::UseHandle;
use super::host::{InstanceLabels, InstanceState, StateLimits, Writes};
use super::quarantine::{Admission, FaultRecord};
use super::world::{Exports, Pre, describe_error};
use super::{CompiledFunction, SandboxError, deadline_ticks};
use crate::batch::CallContext;
use crate::config::FunctionLimits;
use crate::state::{StateStore, StateWrite};

/// What every instance needs from the sandbox.
#[derive(Clone)]
pub(super) struct Runtime {
    pub(super) engine: Engine,
    pub(super) store: StateStore,
    pub(super) state_limits: StateLimits,
    /// Whether the engine meters fuel (then every store needs some, metered function or not).
    pub(super) fuel_metering: bool,
}

struct Live {
    store: Store<InstanceState>,
    exports: Exports,
}

/// Why a call produced no result.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CallFailure {
    /// The function trapped, ran out of a limit, or could not be instantiated.
    Fault(Fault),
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
    pub(super) labels: Arc<InstanceLabels>,
    namespace: String,
    params_json: String,
    live: Option<Live>,
    carried: Writes,
    handle: UseHandle,
    /// When the open call started, if one is open.
    call_started: Option<Instant>,
    /// A shadow's instance: its writes are never taken for a commit (see `shadow`).
    scratch: bool,
    /// Seconds per call of this use (`weir_function_call_seconds`).
    call_seconds: metrics::Histogram,
    /// Fuel its calls consumed, for a function with a fuel limit (`weir_function_fuel_total`).
    fuel_consumed: metrics::Counter,
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
        Self::assemble(runtime, function, labels, params_json, namespace, false)
    }

    /// A shadow of this use running `candidate` (see `shadow`): the same params, reading this
    /// use's state, its own writes kept to itself and never committed, its own fault record.
    pub(super) fn shadow(&self, candidate: &Arc<CompiledFunction>) -> Result<Self, SandboxError> {
        let labels = InstanceLabels {
            function: candidate.version.to_string(),
            pipeline: self.labels.pipeline.clone(),
            operator: format!("{} (shadow)", self.labels.operator),
        };
        let (runtime, params, namespace) = (self.runtime.clone(), self.params_json.clone(), self.namespace.clone());
        Self::assemble(runtime, Arc::clone(candidate), labels, params, namespace, true)
    }

    fn assemble(
        runtime: Runtime,
        function: Arc<CompiledFunction>,
        labels: InstanceLabels,
        params_json: String,
        namespace: String,
        scratch: bool,
    ) -> Result<Self, SandboxError> {
        let handle = UseHandle::new(
            FaultRecord::new(labels.function.clone(), function.quarantine),
            function.version.id.clone(),
            labels.pipeline.clone(),
            labels.operator.clone(),
        );
        let use_labels = [
            ("pipeline", labels.pipeline.clone()),
            ("use", labels.operator.clone()),
            ("function", function.version.id.to_string()),
        ];
        let call_seconds = metrics::histogram!("weir_function_call_seconds", &use_labels);
        let fuel_consumed = metrics::counter!("weir_function_fuel_total", &use_labels);
        let mut instance = Self {
            call_seconds,
            fuel_consumed,
            runtime,
            function,
            labels: Arc::new(labels),
            namespace,
            params_json,
            live: None,
            carried: Writes::new(),
            handle,
            call_started: None,
            scratch,
        };
        let now = crate::telemetry::now_nanos();
        instance.live = Some(instance.instantiate(now).map_err(|failure| instance.start_error(&failure))?);
        Ok(instance)
    }

    fn start_error(&self, failure: &StartFailure) -> SandboxError {
        SandboxError::Start {
            function: self.labels.function.clone(),
            use_name: self.labels.operator.clone(),
            phase: failure.phase(),
            reason: failure.to_string(),
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

    /// [`Self::handle`], borrowed.
    pub(super) fn handle_ref(&self) -> &UseHandle {
        &self.handle
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
                Err(self.start_error(&failure))
            }
        }
    }

    /// Creates a store and instance, and runs `init`; on failure, where and why.
    fn instantiate(&mut self, processing_time: i64) -> Result<Live, StartFailure> {
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
                return Err(StartFailure::Instantiate(classify(&e, store.data(), &tail, &limits)));
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
            Ok(Err(error)) => StartFailure::InitRefused { reason: describe_error(&error) },
            Err(e) => StartFailure::InitFaulted(classify(&e, store.data(), &tail, &limits)),
        };
        self.carried = store.data_mut().take_pending();
        Err(failure)
    }

    /// Starts a call on the live instance (instantiating one if the last faulted). The call stays
    /// open until [`Self::complete`] or [`Self::fault`]; a trap closes it here and returns the
    /// fault. A quarantined use is not called at all.
    pub(super) fn call<R>(
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
        self.call_started = Some(Instant::now());
        if self.live.is_none() {
            match self.instantiate(ctx.processing_time) {
                Ok(live) => self.live = Some(live),
                Err(failure) => {
                    let fault = Fault::NotStarted { failure: Box::new(failure) };
                    self.count_call();
                    self.record_fault(&fault);
                    return Err(CallFailure::Fault(fault));
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
                let fault = classify(&e, live.store.data(), &tail, &limits);
                tracing::warn!(stage = "sandbox", function = %self.labels.function, pipeline = %self.labels.pipeline,
                    operator = %self.labels.operator, kind = %fault.kind(), reason = %fault, details = ?e,
                    "function faulted; its instance is replaced");
                self.count_call();
                self.retire(&fault);
                Err(CallFailure::Fault(fault))
            }
        }
    }

    /// Closes the open call: its state writes count when `succeeded`. A refusal (`false`) is not a
    /// fault, nor a success that would end a fault streak.
    pub(super) fn complete(&mut self, succeeded: bool) {
        if let Some(live) = &mut self.live {
            live.store.data_mut().end_call(succeeded);
            if self.scratch {
                live.store.data_mut().settle_scratch();
            }
        }
        self.count_call();
        if succeeded {
            self.handle.with_record(FaultRecord::success);
        }
    }

    /// Closes the open call as a fault found by the host (a malformed result): the instance goes.
    pub(super) fn fault(&mut self, fault: &Fault) {
        if let Some(live) = &mut self.live {
            live.store.data_mut().end_call(false);
        }
        tracing::warn!(stage = "sandbox", function = %self.labels.function, pipeline = %self.labels.pipeline,
            operator = %self.labels.operator, kind = %fault.kind(), reason = %fault, "function faulted; its instance is replaced");
        self.count_call();
        self.retire(fault);
    }

    /// Counts the open call, with how long it took, in the running version's record.
    fn count_call(&mut self) {
        if let Some(started) = self.call_started.take() {
            let took = started.elapsed();
            // The shadow's calls are the candidate's, not the use's.
            if !self.scratch {
                self.call_seconds.record(took.as_secs_f64());
                // Armed with the limit before the call (see `arm_limits`): what is left tells.
                if let (Some(limit), Some(live)) = (self.function.limits.fuel, &self.live)
                    && let Ok(left) = live.store.get_fuel()
                {
                    self.fuel_consumed.increment(limit.saturating_sub(left));
                }
            }
            self.handle.with_record(|record| record.called(took));
        }
    }

    /// Drops the live instance, keeping its uncommitted writes for the next one.
    fn retire(&mut self, fault: &Fault) {
        if let Some(mut live) = self.live.take() {
            self.carried = live.store.data_mut().take_pending();
        }
        self.record_fault(fault);
    }

    /// Counts a fault; reports the quarantine it starts, if it starts one.
    fn record_fault(&mut self, fault: &Fault) {
        let labels = &self.labels;
        self.handle.with_record(|record| {
            if let Some(period) = record.fault(Instant::now(), fault) {
                tracing::error!(stage = "sandbox", function = %labels.function, pipeline = %labels.pipeline,
                    operator = %labels.operator, consecutive_faults = record.consecutive_faults, quarantines = record.quarantines,
                    period = ?period, last_fault = %fault, "function quarantined: it faulted too often in a row");
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

/// The fault behind `error`, with what the failed call left in `state` and on stderr.
fn classify(error: &wasmtime::Error, state: &InstanceState, stderr: &str, limits: &FunctionLimits) -> Fault {
    let aftermath =
        Aftermath { limit_hit: state.limiter.hit, host_failure: state.host_failure.as_deref(), stderr, limits };
    fault::classify(error, &aftermath)
}
