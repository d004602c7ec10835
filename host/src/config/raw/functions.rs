//! `[functions.<id>]` and the uses of a function in a pipeline (`[[pipelines.<name>.operators]]`,
//! `[pipelines.<name>.decode.function]`, `[pipelines.<name>.window.aggregate]`) as written.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

use crate::config::types::{CountIn, DAY, DurationIn, FunctionId, GIB, MIB, MINUTE, Name, SizeIn};

/// `[functions.<id>]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunction {
    /// `component = "threshold_alert.wasm"` — relative to `gateway.functions_dir`.
    pub component: Spanned<PathBuf>,
    /// `memory = "32MiB"` — linear memory cap; growing beyond it traps (1MiB, 16 pages, to
    /// 4GiB, all a 32-bit WebAssembly memory can address).
    pub memory: Option<Spanned<SizeIn<MIB, { 4 * GIB }>>>,
    /// `timeout = "100ms"` — wall time per call before it is interrupted (1ms to 1m).
    pub timeout: Option<DurationIn<1, MINUTE>>,
    /// `fuel = 50_000_000` — units of work (about one per WebAssembly instruction) per call
    /// (1 to 10¹²); unset: no fuel metering (the time limit still applies).
    pub fuel: Option<CountIn<1, 1_000_000_000_000>>,
    /// `table_elements = 100_000` — largest size of any table (function references; 1 to
    /// 10 000 000).
    pub table_elements: Option<CountIn<1, 10_000_000>>,
    /// `instances = 32` — core module instances one instance of the component may create (1 to
    /// 1000).
    pub instances: Option<CountIn<1, 1000>>,
    /// `state_writes = "8MiB"` — bytes of state one instance may write between two commits
    /// (keys and values); the call that goes beyond faults (0B to 1GiB).
    pub state_writes: Option<SizeIn<0, GIB>>,
    /// `state_quota = "16MiB"` — bytes of state (keys and values) each use of the function may
    /// keep; a write beyond it is refused with `quota-exceeded` (the call goes on; 1B to 1GiB).
    pub state_quota: Option<SizeIn<1, GIB>>,
    /// `quarantine_after = 5` — consecutive faults after which the function is quarantined (1 to
    /// 10 000).
    pub quarantine_after: Option<CountIn<1, 10_000>>,
    /// `quarantine_for = "1m"` — how long the first quarantine lasts; each further quarantine in
    /// a row lasts twice as long, up to an hour (or this, if longer; 1ms to 24h).
    pub quarantine_for: Option<DurationIn<1, DAY>>,
}

/// A use of a function: which one and with which parameters.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFunctionUse {
    /// `function = "threshold-alert"`
    pub function: Spanned<FunctionId>,
    /// `params = { above = 80.0 }` — passed to the function's `init` as a JSON object.
    pub params: Option<Spanned<toml::Table>>,
}

/// `[[pipelines.<name>.operators]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOperator {
    /// `function = "threshold-alert"`
    pub function: Spanned<FunctionId>,
    /// `name = "boiler-high"` — names the operator's state namespace; default: the function id.
    /// Required when a function appears twice in one pipeline.
    pub name: Option<Spanned<Name>>,
    /// `params = { above = 80.0 }`
    pub params: Option<Spanned<toml::Table>>,
}
