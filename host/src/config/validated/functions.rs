//! `[functions.<id>]`, validated: a function and the limits every instance of it runs under; and
//! a use of a function in a pipeline (an operator, a decoder, a window's custom aggregate).

use std::path::PathBuf;
use std::time::Duration;

use crate::config::defaults;
use crate::config::{FunctionId, Name};

/// `[functions.<id>]` — a function and the limits every instance of it runs under.
#[derive(Clone, Debug)]
pub struct FunctionConfig {
    /// The `<id>` of `[functions.<id>]`.
    pub id: FunctionId,
    /// `component = "threshold_alert.wasm"` — the component file, made absolute against
    /// `gateway.functions_dir` (or `--functions-dir`, or the file's directory).
    pub component: PathBuf,
    /// Per-instance limits: `memory`, `timeout`, `fuel`, … of the same table.
    pub limits: FunctionLimits,
    /// `quarantine_after` and `quarantine_for` of the same table: when a faulting function is
    /// taken out of service, and for how long.
    pub quarantine: QuarantineConfig,
}

/// Limits of one function instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FunctionLimits {
    /// `memory = "32MiB"` — linear memory cap in bytes; growing beyond it traps.
    pub memory_bytes: u64,
    /// `timeout = "100ms"` — wall time per call before the call is interrupted.
    pub timeout: Duration,
    /// `fuel = 50_000_000` — fuel per call (about one unit per WebAssembly instruction), when
    /// metered; unset, it is not.
    pub fuel: Option<u64>,
    /// `table_elements = 100_000` — largest size of any table, in elements.
    pub table_elements: u32,
    /// `instances = 32` — core module instances the component may create.
    pub instances: u32,
    /// `state_writes = "8MiB"` — bytes of state (keys and values) the instance may write
    /// between two commits.
    pub state_write_bytes: u64,
    /// `state_quota = "16MiB"` — bytes of state (keys and values) one use of the function may
    /// keep: a write that would go beyond it is refused with `quota-exceeded`.
    pub state_quota_bytes: u64,
}

impl FunctionLimits {
    /// The limits of a function that sets none.
    pub const DEFAULT: Self = Self {
        memory_bytes: defaults::MEMORY,
        timeout: defaults::TIMEOUT,
        fuel: None,
        table_elements: defaults::TABLE_ELEMENTS,
        instances: defaults::INSTANCES,
        state_write_bytes: defaults::STATE_WRITES,
        state_quota_bytes: defaults::STATE_QUOTA,
    };
}

/// Quarantine of a function that keeps faulting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuarantineConfig {
    /// `quarantine_after = 5` — consecutive faults (of one use) that quarantine it.
    pub after: u32,
    /// `quarantine_for = "1m"` — how long the first quarantine lasts; each further one in a row
    /// lasts twice as long, up to [`QuarantineConfig::LONGEST`].
    pub first: Duration,
}

impl QuarantineConfig {
    /// The longest quarantine.
    pub const LONGEST: Duration = Duration::from_secs(3600);

    /// The quarantine of a function that sets none.
    pub const DEFAULT: Self = Self { after: defaults::QUARANTINE_AFTER, first: defaults::QUARANTINE_FOR };

    /// How long the `n`-th quarantine in a row (from 1) lasts.
    pub fn period(&self, n: u32) -> Duration {
        let doubled = self.first.saturating_mul(1_u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX));
        doubled.min(Self::LONGEST.max(self.first))
    }
}

/// A function used in a pipeline: `[[pipelines.<name>.operators]]`,
/// `[pipelines.<name>.decode.function]` or `[pipelines.<name>.window.aggregate]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FunctionUse {
    /// Name of this use, the function's state namespace within the pipeline: an operator's
    /// `name = "boiler-high"` (default: the function id), `decoder-<id>` for a decoder,
    /// `window-aggregate` for a window's aggregate.
    pub name: Name,
    /// `function = "threshold-alert"` — which function.
    pub function: FunctionId,
    /// `params = { above = 80.0 }` — parameters, as a JSON object (`{}` when unset).
    pub params_json: String,
}

/// `[[pipelines.<name>.operators]]` — an operator of the chain (a function use).
pub type OperatorConfig = FunctionUse;
