//! weir host library: everything the `weir` binary runs. See ARCHITECTURE.md for the map.
//!
//! Data flow (one module per stage): [`source`] → [`decode`] → [`operator`] (functions run by
//! [`sandbox`]) → [`encode`] → outbox in [`state`] → [`sink`]; [`pipeline`] wires one pipeline,
//! [`gateway`] runs them all, [`shutdown`] stops them in order.

pub mod backoff;
pub mod batch;
pub mod coarsen;
pub mod config;
pub mod decode;
pub mod encode;
pub mod fleet;
pub mod gateway;
pub mod observe;
pub mod operator;
pub mod pipeline;
pub mod preflight;
pub mod sandbox;
pub mod service;
pub mod shutdown;
pub mod sink;
pub mod source;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod window;

#[cfg(test)]
mod fuzz_tests;
