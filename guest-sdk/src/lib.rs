//! Write weir stream functions in plain Rust.
//!
//! A weir function is a WebAssembly component that the weir host runs over batches of sensor
//! readings. This crate hides the component plumbing: implement [`Operator`] (transform batches),
//! [`Decoder`] (turn a raw message into readings) or [`Accumulator`] (a custom window aggregate),
//! export it with [`export_operator!`], [`export_decoder!`] or [`export_accumulator!`], and build
//! for `wasm32-wasip2`.
//!
//! Parameters come from the host configuration as a JSON object and are deserialized into your
//! `Params` type (derive `serde::Deserialize`). State, logging and time are reached through the
//! [`Context`] each call receives. Return an [`Error`] for input you cannot handle: the host
//! dead-letters that input with your reason and keeps your instance. A panic is a fault: the host
//! dead-letters the batch and starts a fresh instance (your [`State`] survives, fields of your
//! struct do not).
//!
//! # Example
//!
//! An operator that drops readings outside a plausible range, tested natively with
//! [`testing::TestHost`]:
//!
//! ```
//! use serde::Deserialize;
//! use weir_sdk::{Batch, Context, Error, Operator, Series, Timestamp};
//!
//! #[derive(Deserialize)]
//! struct Params {
//!     min: f64,
//!     max: f64,
//! }
//!
//! struct Plausible {
//!     params: Params,
//! }
//!
//! impl Operator for Plausible {
//!     type Params = Params;
//!
//!     fn init(params: Params, _ctx: &mut Context<'_>) -> Result<Self, Error> {
//!         if params.min > params.max {
//!             return Err(Error::invalid_params("min must not exceed max"));
//!         }
//!         Ok(Self { params })
//!     }
//!
//!     fn process(&mut self, mut batch: Batch, _ctx: &mut Context<'_>) -> Result<Batch, Error> {
//!         batch.retain(|s| (self.params.min..=self.params.max).contains(&s.value));
//!         Ok(batch)
//!     }
//! }
//!
//! // In a function crate, this line makes the type the component's export:
//! // weir_sdk::export_operator!(Plausible);
//!
//! let mut host = weir_sdk::testing::TestHost::new();
//! let mut op: Plausible = host.init_operator(r#"{"min": -40, "max": 125}"#).unwrap();
//! let mut input = Batch::new();
//! let temp = input.intern_series(Series::new("boiler/temp").with_unit("Cel"));
//! input.push(temp, Timestamp::from_secs(1), 21.5);
//! input.push(temp, Timestamp::from_secs(2), 900.0); // a broken sensor
//! let output = host.process(&mut op, input).unwrap();
//! assert_eq!(output.iter().map(|s| s.value).collect::<Vec<_>>(), [21.5]);
//!
//! assert!(host.init_operator::<Plausible>(r#"{"min": 1, "max": 0}"#).is_err());
//! ```
//!
//! The host's window helpers — aggregates, event-time windows, downsamplers — are in [`window`].

#![deny(missing_docs)]

mod accumulator;
mod batch;
mod context;
mod error;
mod series_filter;
pub mod testing;

#[doc(hidden)]
#[path = "export.rs"]
pub mod __private;

pub use accumulator::{Accumulator, AccumulatorProtocol};
pub use batch::{Batch, Message, Sample, SampleMut, Series, SeriesId, Timestamp};
pub use context::{Context, Level, State, StateError};
pub use error::Error;
pub use series_filter::{InvalidSeriesFilter, SeriesFilter};
/// The host's window helpers, the same code and guarantees inside a function: mergeable
/// aggregates with a quantile sketch ([`window::aggregate::Aggregate`]), event-time windows with
/// watermark and corrections ([`window::event_time::Windows`]), and the deadband, swinging-door
/// and LTTB downsamplers ([`window::downsample`]). Times are nanoseconds
/// ([`Timestamp::as_nanos`]). Keep their state in [`State`] (they are serde) to carry it across
/// instances.
pub use weir_window as window;

/// A function that transforms batches of readings: filter, map, enrich, detect.
///
/// The host creates one instance per use in a pipeline, calls [`init`](Operator::init) once, then
/// [`process`](Operator::process) for every batch, reusing the instance while it stays healthy.
pub trait Operator: Sized + 'static {
    /// The function's parameters, deserialized from the JSON object the host passes.
    type Params: serde::de::DeserializeOwned;

    /// Creates the instance. Refuse unusable parameters with [`Error::InvalidParams`].
    fn init(params: Self::Params, ctx: &mut Context<'_>) -> Result<Self, Error>;

    /// Transforms one batch. The output may hold fewer, more or different readings.
    fn process(&mut self, batch: Batch, ctx: &mut Context<'_>) -> Result<Batch, Error>;
}

/// A function that turns one raw message (a proprietary payload) into readings.
pub trait Decoder: Sized + 'static {
    /// The function's parameters, deserialized from the JSON object the host passes.
    type Params: serde::de::DeserializeOwned;

    /// Creates the instance. Refuse unusable parameters with [`Error::InvalidParams`].
    fn init(params: Self::Params, ctx: &mut Context<'_>) -> Result<Self, Error>;

    /// Decodes one message. Refuse malformed payloads with [`Error::InvalidInput`].
    fn decode(&mut self, message: Message, ctx: &mut Context<'_>) -> Result<Batch, Error>;
}
