//! weir host library: everything the `weir` binary runs. See ARCHITECTURE.md for the map.

pub mod batch;
pub mod config;
pub mod decode;
pub mod encode;
pub mod operator;
pub mod sandbox;
pub mod state;
pub mod telemetry;
