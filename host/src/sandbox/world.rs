//! The three worlds as the host sees them: a component linked and checked against one world
//! ([`Pre`]), its exports once instantiated ([`Exports`]), and the host traits each world is used
//! through — [`FunctionOperator`] ([`Operator`]), [`FunctionDecoder`] ([`Decode`]) and
//! [`FunctionAccumulator`] ([`Accumulator`]).
//!
//! Each call goes through its [`FunctionInstance`]; what comes back is sorted into three classes:
//! a result, a refusal (a WIT `error` the function returned: its call's state writes are dropped,
//! the instance stays, nothing is counted) and a [`Fault`] (the instance is replaced and the fault
//! counted). A result the host cannot take — a batch breaking the batch invariant, aggregate
//! names given twice — is a fault too ([`Fault::MalformedResult`]).

use wasmtime::Store;
use wasmtime::component::InstancePre;

use super::WorldKind;
use super::bindings::{accumulator, decoder, operator, types};
use super::fault::{Fault, Malformed};
use super::host::InstanceState;
use super::instance::{CallFailure, FunctionInstance, round_to_millis};
use super::shadow::{self, Shadow, ShadowCall};
use crate::batch::{Batch, CallContext, Message, Series};
use crate::decode::{Decode, DecodeError};
use crate::operator::{Operator, OperatorFailure};
use crate::state::StateWrite;
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

/// The exports of a live instance, of the world its component was checked against.
pub(super) enum Exports {
    Operator(operator::Operator),
    Decoder(decoder::Decoder),
    Accumulator(accumulator::Accumulator),
}

/// Words for a domain error.
pub(super) fn describe_error(error: &types::Error) -> String {
    match error {
        types::Error::InvalidParams(reason) => format!("invalid params: {reason}"),
        types::Error::InvalidInput(reason) => format!("invalid input: {reason}"),
        types::Error::Failed(reason) => reason.clone(),
    }
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

/// An operator use backed by a function instance, and the candidate running in its shadow when
/// the fleet asks for one (see `shadow`).
#[derive(Debug)]
pub struct FunctionOperator {
    instance: FunctionInstance,
    shadow: Option<Shadow>,
}

impl FunctionOperator {
    pub(super) fn new(instance: FunctionInstance) -> Self {
        Self { instance, shadow: None }
    }

    /// The instance behind this operator (for version replacement and fault counts).
    pub fn instance_mut(&mut self) -> &mut FunctionInstance {
        &mut self.instance
    }
}

/// One `process` call, sorted into a result, a refusal or a fault.
fn process_with(
    instance: &mut FunctionInstance,
    ctx: &CallContext,
    input: &types::Batch,
) -> Result<Batch, OperatorFailure> {
    let outcome = instance.call(ctx, |exports, store| match exports {
        Exports::Operator(operator) => operator.call_process(store, input),
        Exports::Decoder(_) | Exports::Accumulator(_) => {
            unreachable!("Sandbox::operator only wraps operator-world components")
        }
    });
    match outcome {
        Err(CallFailure::Fault(fault)) => Err(OperatorFailure::Fault { fault }),
        Err(CallFailure::Quarantined(remaining)) => Err(OperatorFailure::Quarantined { remaining }),
        Ok(Err(error)) => {
            instance.complete(false);
            Err(OperatorFailure::Refused { reason: describe_error(&error) })
        }
        Ok(Ok(output)) => match from_wit_batch(output) {
            Ok(output) => {
                instance.complete(true);
                Ok(output)
            }
            Err(invalid) => {
                let fault = Fault::MalformedResult { what: Malformed::Batch { invalid } };
                instance.fault(&fault);
                Err(OperatorFailure::Fault { fault })
            }
        },
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
        let shadowing = shadow::sync(&self.instance, &mut self.shadow);
        let input = to_wit_batch(batch);
        let result = process_with(&mut self.instance, ctx, &input);
        if let Some(shadow) = self.shadow.as_mut().filter(|_| shadowing) {
            let (candidate, took) = shadow::timed(|| process_with(&mut shadow.instance, ctx, &input));
            let call = match candidate {
                Ok(output) => ShadowCall::Output(output),
                Err(OperatorFailure::Refused { .. }) => ShadowCall::Refused,
                Err(_) => ShadowCall::Faulted,
            };
            shadow.report(&self.instance, &call, took, result.as_ref().ok());
        }
        result.map_err(|failure| {
            let input = from_wit_batch(input).expect("the input was a valid batch before the call borrowed it");
            (input, failure)
        })
    }

    fn take_state_writes(&mut self) -> Vec<StateWrite> {
        self.instance.take_state_writes()
    }
}

/// A decoder backed by a function instance, and the candidate running in its shadow when the
/// fleet asks for one (see `shadow`).
#[derive(Debug)]
pub struct FunctionDecoder {
    instance: FunctionInstance,
    shadow: Option<Shadow>,
}

impl FunctionDecoder {
    pub(super) fn new(instance: FunctionInstance) -> Self {
        Self { instance, shadow: None }
    }

    /// The instance behind this decoder (for version replacement and fault counts).
    pub fn instance_mut(&mut self) -> &mut FunctionInstance {
        &mut self.instance
    }
}

/// One `decode` call, sorted into readings, a refusal or a fault.
fn decode_with(
    instance: &mut FunctionInstance,
    ctx: &CallContext,
    input: &types::Message,
) -> Result<Batch, DecodeError> {
    let function = instance.labels.function.clone();
    let outcome = instance.call(ctx, |exports, store| match exports {
        Exports::Decoder(decoder) => decoder.call_decode(store, input),
        Exports::Operator(_) | Exports::Accumulator(_) => {
            unreachable!("Sandbox::decoder only wraps decoder-world components")
        }
    });
    match outcome {
        Err(CallFailure::Fault(fault)) => Err(DecodeError::Fault { function, fault }),
        Err(CallFailure::Quarantined(remaining)) => Err(DecodeError::Quarantined { function, remaining }),
        Ok(Err(error)) => {
            instance.complete(false);
            Err(DecodeError::Refused { function, reason: describe_error(&error) })
        }
        Ok(Ok(output)) => match from_wit_batch(output) {
            Ok(batch) => {
                instance.complete(true);
                // NaN and infinity are not readings, whichever decoder made them.
                for (i, value) in batch.values().iter().enumerate() {
                    crate::decode::finite(*value, || format!("reading {i} of decoder function {function}"))?;
                }
                Ok(batch)
            }
            Err(invalid) => {
                let fault = Fault::MalformedResult { what: Malformed::Batch { invalid } };
                instance.fault(&fault);
                Err(DecodeError::Fault { function, fault })
            }
        },
    }
}

impl Decode for FunctionDecoder {
    fn decode(&mut self, message: &Message, ctx: &CallContext) -> Result<Batch, DecodeError> {
        let shadowing = shadow::sync(&self.instance, &mut self.shadow);
        let input = types::Message {
            topic: message.topic.clone(),
            payload: message.payload.to_vec(),
            received_at: message.received_at,
        };
        let result = decode_with(&mut self.instance, ctx, &input);
        if let Some(shadow) = self.shadow.as_mut().filter(|_| shadowing) {
            let (candidate, took) = shadow::timed(|| decode_with(&mut shadow.instance, ctx, &input));
            let call = match candidate {
                Ok(output) => ShadowCall::Output(output),
                Err(DecodeError::Refused { .. }) => ShadowCall::Refused,
                Err(_) => ShadowCall::Faulted,
            };
            shadow.report(&self.instance, &call, took, result.as_ref().ok());
        }
        result
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

    /// Runs one export; a refusal or fault comes back as its reason, in words (the accumulator
    /// trait is shared with the guest SDK, which knows no faults; the instance is replaced after
    /// a fault).
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
            Err(CallFailure::Fault(fault)) => Err(format!("{} faulted: {fault}", self.instance.labels.function)),
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
            let fault = Fault::MalformedResult { what: Malformed::AggregateName { name: name.clone() } };
            self.instance.fault(&fault);
            return Err(format!("{} faulted: {fault}", self.instance.labels.function));
        }
        Ok(values)
    }
}
