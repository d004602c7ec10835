//! Glue between the WIT bindings and the SDK's public traits. Not part of the public API: the
//! `export_operator!` / `export_decoder!` macros are its only users.
//!
//! `wit_bindgen::generate!` runs here and nowhere else. The generated types stay in this module;
//! conversions to and from the SDK's own types happen at the boundary, by moving the column
//! vectors (no per-reading work).
//!
//! Invariant: a function's instance lives in a thread-local slot created by the export macro;
//! `init` fills it, `process`/`decode` borrow it. A component instance is single-threaded, so the
//! slot is never contended.

// Generated bindings are full of `unsafe` (raw ABI glue); this is the one place the SDK allows it.
#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod operator_world {
    wit_bindgen::generate!({
        world: "operator",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_operator_world",
    });
}

#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod decoder_world {
    wit_bindgen::generate!({
        world: "decoder",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_decoder_world",
        with: {
            "weir:stream/types@0.1.0": super::operator_world::weir::stream::types,
            "weir:stream/log@0.1.0": super::operator_world::weir::stream::log,
            "weir:stream/clock@0.1.0": super::operator_world::weir::stream::clock,
            "weir:stream/state@0.1.0": super::operator_world::weir::stream::state,
        },
    });
}

#[allow(unsafe_code, missing_docs, clippy::all)]
pub mod accumulator_world {
    wit_bindgen::generate!({
        world: "accumulator",
        path: "../wit",
        pub_export_macro: true,
        export_macro_name: "export_accumulator_world",
        with: {
            "weir:stream/types@0.1.0": super::operator_world::weir::stream::types,
            "weir:stream/log@0.1.0": super::operator_world::weir::stream::log,
        },
    });
}

use operator_world::weir::stream::{clock, log, state, types as wit};

use crate::accumulator::{Accumulator, AccumulatorProtocol};
use crate::batch::{Batch, Message, Series, Timestamp};
use crate::context::{Context, Host, Level, StateError};
use crate::{Decoder, Error, Operator};

/// The host capabilities as the WIT imports provide them.
struct WitHost;

impl Host for WitHost {
    fn log(&mut self, level: Level, message: &str) {
        let level = match level {
            Level::Trace => log::Level::Trace,
            Level::Debug => log::Level::Debug,
            Level::Info => log::Level::Info,
            Level::Warn => log::Level::Warn,
            Level::Error => log::Level::Error,
        };
        log::log(level, message);
    }

    fn watermark(&self) -> Timestamp {
        Timestamp::from_nanos(clock::watermark())
    }

    fn processing_time(&self) -> Timestamp {
        Timestamp::from_nanos(clock::processing_time())
    }

    fn state_get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        state::get(key)
    }

    fn state_set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        state::set(key, value).map_err(|e| match e {
            state::StateError::KeyTooLarge(limit) => StateError::KeyTooLarge { limit },
            state::StateError::ValueTooLarge(limit) => StateError::ValueTooLarge { limit },
            state::StateError::QuotaExceeded(quota) => StateError::QuotaExceeded { quota },
        })
    }

    fn state_delete(&mut self, key: &[u8]) {
        state::delete(key);
    }

    fn state_range(&mut self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        state::range(start, end, limit)
    }
}

fn to_wit_error(error: Error) -> wit::Error {
    match error {
        Error::InvalidParams(reason) => wit::Error::InvalidParams(reason),
        Error::InvalidInput(reason) => wit::Error::InvalidInput(reason),
        Error::Failed(reason) => wit::Error::Failed(reason),
    }
}

fn from_wit_batch(batch: wit::Batch) -> Result<Batch, Error> {
    let series = batch.series.into_iter().map(|s| Series { name: s.name, unit: s.unit, tags: s.tags }).collect();
    Batch::from_columns(series, batch.series_idx, batch.ts, batch.value).map_err(Error::InvalidInput)
}

fn to_wit_batch(batch: Batch) -> wit::Batch {
    let (series, series_idx, ts, value) = batch.into_columns();
    wit::Batch {
        series: series.into_iter().map(|s| wit::Series { name: s.name, unit: s.unit, tags: s.tags }).collect(),
        series_idx,
        ts,
        value,
    }
}

pub(crate) fn parse_params<P: serde::de::DeserializeOwned>(params: &str) -> Result<P, Error> {
    let params = if params.trim().is_empty() { "{}" } else { params };
    serde_json::from_str(params).map_err(Error::invalid_params)
}

const NOT_INITIALISED: &str = "the host called the function before `init` succeeded";

/// `init` of the operator world.
pub fn init_operator<O: Operator>(slot: &mut Option<O>, params: &str) -> Result<(), wit::Error> {
    let params = parse_params(params).map_err(to_wit_error)?;
    let operator = O::init(params, &mut Context::new(&mut WitHost)).map_err(to_wit_error)?;
    *slot = Some(operator);
    Ok(())
}

/// `process` of the operator world.
pub fn process<O: Operator>(slot: &mut Option<O>, input: wit::Batch) -> Result<wit::Batch, wit::Error> {
    let operator = slot.as_mut().ok_or_else(|| wit::Error::Failed(NOT_INITIALISED.to_owned()))?;
    let input = from_wit_batch(input).map_err(to_wit_error)?;
    let output = operator.process(input, &mut Context::new(&mut WitHost)).map_err(to_wit_error)?;
    Ok(to_wit_batch(output))
}

/// `init` of the decoder world.
pub fn init_decoder<D: Decoder>(slot: &mut Option<D>, params: &str) -> Result<(), wit::Error> {
    let params = parse_params(params).map_err(to_wit_error)?;
    let decoder = D::init(params, &mut Context::new(&mut WitHost)).map_err(to_wit_error)?;
    *slot = Some(decoder);
    Ok(())
}

/// `decode` of the decoder world.
pub fn decode<D: Decoder>(slot: &mut Option<D>, input: wit::Message) -> Result<wit::Batch, wit::Error> {
    let decoder = slot.as_mut().ok_or_else(|| wit::Error::Failed(NOT_INITIALISED.to_owned()))?;
    let message =
        Message { topic: input.topic, payload: input.payload, received_at: Timestamp::from_nanos(input.received_at) };
    let output = decoder.decode(message, &mut Context::new(&mut WitHost)).map_err(to_wit_error)?;
    Ok(to_wit_batch(output))
}

/// `init` of the accumulator world.
pub fn init_accumulator<A: Accumulator>(
    slot: &mut Option<AccumulatorProtocol<A>>,
    params: &str,
) -> Result<(), wit::Error> {
    *slot = Some(AccumulatorProtocol::init(params).map_err(to_wit_error)?);
    Ok(())
}

/// Runs one accumulator export on the initialised instance.
pub fn accumulate<A: Accumulator, R>(
    slot: &Option<AccumulatorProtocol<A>>,
    call: impl FnOnce(&AccumulatorProtocol<A>) -> Result<R, Error>,
) -> Result<R, wit::Error> {
    let accumulator = slot.as_ref().ok_or_else(|| wit::Error::Failed(NOT_INITIALISED.to_owned()))?;
    call(accumulator).map_err(to_wit_error)
}

/// Exports a type implementing [`Operator`](crate::Operator) as the component's operator world.
///
/// Use it once per function crate, at the crate root: `weir_sdk::export_operator!(MyOperator);`
#[macro_export]
macro_rules! export_operator {
    ($operator:ty) => {
        // Native builds (unit tests with `testing::TestHost`) export nothing.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::operator_world as world;

            ::std::thread_local! {
                static INSTANCE: ::std::cell::RefCell<::std::option::Option<$operator>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct WeirOperatorExport;

            impl world::Guest for WeirOperatorExport {
                fn init(params: ::std::string::String) -> ::std::result::Result<(), world::weir::stream::types::Error> {
                    INSTANCE.with(|slot| $crate::__private::init_operator(&mut slot.borrow_mut(), &params))
                }

                fn process(
                    input: world::weir::stream::types::Batch,
                ) -> ::std::result::Result<world::weir::stream::types::Batch, world::weir::stream::types::Error>
                {
                    INSTANCE.with(|slot| $crate::__private::process(&mut slot.borrow_mut(), input))
                }
            }

    world::export_operator_world!(WeirOperatorExport with_types_in $crate::__private::operator_world);
        };
    };
}

/// Exports a type implementing [`Decoder`](crate::Decoder) as the component's decoder world.
///
/// Use it once per function crate, at the crate root: `weir_sdk::export_decoder!(MyDecoder);`
#[macro_export]
macro_rules! export_decoder {
    ($decoder:ty) => {
        // Native builds (unit tests with `testing::TestHost`) export nothing.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::decoder_world as world;
            use $crate::__private::operator_world::weir::stream::types as wit;

            ::std::thread_local! {
                static INSTANCE: ::std::cell::RefCell<::std::option::Option<$decoder>> =
                    const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct WeirDecoderExport;

            impl world::Guest for WeirDecoderExport {
                fn init(params: ::std::string::String) -> ::std::result::Result<(), wit::Error> {
                    INSTANCE.with(|slot| $crate::__private::init_decoder(&mut slot.borrow_mut(), &params))
                }

                fn decode(input: wit::Message) -> ::std::result::Result<wit::Batch, wit::Error> {
                    INSTANCE.with(|slot| $crate::__private::decode(&mut slot.borrow_mut(), input))
                }
            }

    world::export_decoder_world!(WeirDecoderExport with_types_in $crate::__private::decoder_world);
        };
    };
}

/// Exports a type implementing [`Accumulator`](crate::Accumulator) as the component's
/// accumulator world (a custom window aggregate).
///
/// Use it once per function crate, at the crate root: `weir_sdk::export_accumulator!(MyAggregate);`
#[macro_export]
macro_rules! export_accumulator {
    ($accumulator:ty) => {
        // Native builds (unit tests with `AccumulatorProtocol`) export nothing.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::accumulator_world as world;
            use $crate::__private::operator_world::weir::stream::types as wit;

            ::std::thread_local! {
                static INSTANCE: ::std::cell::RefCell<
                    ::std::option::Option<$crate::AccumulatorProtocol<$accumulator>>,
                > = const { ::std::cell::RefCell::new(::std::option::Option::None) };
            }

            struct WeirAccumulatorExport;

            impl world::Guest for WeirAccumulatorExport {
                fn init(params: ::std::string::String) -> ::std::result::Result<(), wit::Error> {
                    INSTANCE.with(|slot| $crate::__private::init_accumulator(&mut slot.borrow_mut(), &params))
                }

                fn create() -> ::std::result::Result<::std::vec::Vec<u8>, wit::Error> {
                    INSTANCE.with(|slot| $crate::__private::accumulate(&slot.borrow(), |a| a.create()))
                }

                fn add(
                    partial: ::std::vec::Vec<u8>,
                    ts: ::std::vec::Vec<i64>,
                    value: ::std::vec::Vec<f64>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, wit::Error> {
                    INSTANCE
                        .with(|slot| $crate::__private::accumulate(&slot.borrow(), |a| a.add(&partial, &ts, &value)))
                }

                fn merge(
                    first: ::std::vec::Vec<u8>,
                    second: ::std::vec::Vec<u8>,
                ) -> ::std::result::Result<::std::vec::Vec<u8>, wit::Error> {
                    INSTANCE.with(|slot| $crate::__private::accumulate(&slot.borrow(), |a| a.merge(&first, &second)))
                }

                fn finish(
                    partial: ::std::vec::Vec<u8>,
                    start: i64,
                    end: i64,
                ) -> ::std::result::Result<::std::vec::Vec<(::std::string::String, f64)>, wit::Error> {
                    INSTANCE
                        .with(|slot| $crate::__private::accumulate(&slot.borrow(), |a| a.finish(&partial, start, end)))
                }
            }

    world::export_accumulator_world!(WeirAccumulatorExport with_types_in $crate::__private::accumulator_world);
        };
    };
}
