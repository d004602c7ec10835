//! Faults: function calls that did not return normally, as values.
//!
//! A [`Fault`] is what the sandbox makes of a call that trapped, hit a limit, called `exit`, met
//! a host failure or returned something the host cannot take. It travels as a value — in
//! [`crate::operator::OperatorFailure::Fault`], [`crate::decode::DecodeError::Fault`], the fault
//! record of its use — and nothing unwinds into the host. A function's domain error (a WIT
//! `error` it returned) is not a fault.
//!
//! **Invariant:** a fault's `Display` is the reason dead letters keep (in the database, so for
//! good), logs print and the stats snapshot shows; the words of each variant are pinned by the
//! tests below and change only on purpose.
//!
//! [`classify`] turns what a failed call left behind into a fault, in this order: a limit the
//! limiter or the state-write budget recorded, a host failure, `exit`, the trap code (an
//! `unreachable` trap with a Rust panic message on stderr is a panic), any other error.

use std::time::Duration;

use wasmtime::Trap;

use super::limiter::LimitHit;
use crate::batch::InvalidBatch;
use crate::config::FunctionLimits;

/// Why a function call did not return normally.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    /// The call ran longer than its time limit (the epoch deadline interrupted it).
    #[error("timed out: the call ran longer than its limit of {limit:?}")]
    Timeout {
        /// The time limit.
        limit: Duration,
    },
    /// The call used all of its fuel.
    #[error("fuel exhausted: the call used all of its {fuel} units")]
    FuelExhausted {
        /// The fuel each call gets.
        fuel: u64,
    },
    /// Linear memory would have grown beyond the function's memory limit.
    #[error("memory limit: tried to grow linear memory to {desired} bytes, the limit is {limit} bytes")]
    Memory {
        /// Bytes asked for.
        desired: usize,
        /// The limit.
        limit: usize,
    },
    /// A table would have grown beyond the function's table limit.
    #[error("table limit: tried to grow a table to {desired} elements, the limit is {limit}")]
    Table {
        /// Elements asked for.
        desired: usize,
        /// The limit.
        limit: usize,
    },
    /// Uncommitted state writes (host memory) would have grown beyond the state-write budget.
    #[error("state write limit: tried to hold {desired} bytes of uncommitted state writes, the limit is {limit} bytes")]
    StateWrites {
        /// Bytes they would have held.
        desired: u64,
        /// The budget.
        limit: u64,
    },
    /// The engine's stack limit was reached.
    #[error("stack overflow")]
    StackOverflow,
    /// Any other trap.
    #[error("trap: {description}")]
    Trap {
        /// The trap, with what it usually means for a function where that helps.
        description: String,
    },
    /// The guest panicked (an `unreachable` trap after a Rust panic message on stderr).
    #[error("panicked: {message}")]
    Panic {
        /// The panic's location and message, as std printed them.
        message: String,
    },
    /// The guest called `exit`.
    #[error("the function called exit (status {code}; WASI 0.2 only tells success from failure)")]
    Exit {
        /// The status it exited with.
        code: i32,
    },
    /// A host capability failed while serving the guest (the state store), which trapped the call.
    #[error("host failure: {description}")]
    Host {
        /// What failed.
        description: String,
    },
    /// The call failed with an error that is neither a trap nor a limit (a WASI call refusing its
    /// arguments, an instance the engine could not create).
    #[error("error: {description}")]
    Runtime {
        /// The error's root cause.
        description: String,
    },
    /// The call returned, but its result breaks the contract.
    #[error("{what}")]
    MalformedResult {
        /// What is wrong with it.
        what: Malformed,
    },
    /// The use's previous instance had faulted and no new one could be started for this call.
    #[error("{failure}")]
    NotStarted {
        /// Why the new instance did not start.
        failure: Box<StartFailure>,
    },
}

/// What is wrong with a result a function returned.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// The returned batch breaks the batch invariant.
    #[error("returned a malformed batch: {invalid}")]
    Batch {
        /// The broken invariant.
        invalid: InvalidBatch,
    },
    /// An accumulator's `finish` named two values alike, or one with the empty name.
    #[error("finish returned the name {name:?} twice or empty; names must be unique")]
    AggregateName {
        /// The repeated or empty name.
        name: String,
    },
}

/// Why an instance could not be started.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StartFailure {
    /// Creating the instance failed (its start function trapped, or the engine had no room).
    #[error("instantiation failed: {0}")]
    Instantiate(Fault),
    /// `init` refused the use's parameters (a domain error it returned).
    #[error("init refused: {reason}")]
    InitRefused {
        /// The function's reason.
        reason: String,
    },
    /// `init` faulted.
    #[error("init faulted: {0}")]
    InitFaulted(Fault),
}

impl StartFailure {
    /// Where starting failed.
    pub fn phase(&self) -> super::StartPhase {
        match self {
            Self::Instantiate(_) => super::StartPhase::Instantiate,
            Self::InitRefused { .. } | Self::InitFaulted(_) => super::StartPhase::Init,
        }
    }
}

/// A fault's kind, without its details: what fault counters are kept by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    /// [`Fault::Timeout`].
    Timeout,
    /// [`Fault::FuelExhausted`].
    FuelExhausted,
    /// [`Fault::Memory`].
    Memory,
    /// [`Fault::Table`].
    Table,
    /// [`Fault::StateWrites`].
    StateWrites,
    /// [`Fault::StackOverflow`].
    StackOverflow,
    /// [`Fault::Trap`].
    Trap,
    /// [`Fault::Panic`].
    Panic,
    /// [`Fault::Exit`].
    Exit,
    /// [`Fault::Host`].
    Host,
    /// [`Fault::Runtime`].
    Runtime,
    /// [`Fault::MalformedResult`].
    MalformedResult,
    /// [`Fault::NotStarted`].
    NotStarted,
}

impl FaultKind {
    /// The kind's name in the stats snapshot and logs (`timeout`, `memory`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::FuelExhausted => "fuel_exhausted",
            Self::Memory => "memory",
            Self::Table => "table",
            Self::StateWrites => "state_writes",
            Self::StackOverflow => "stack_overflow",
            Self::Trap => "trap",
            Self::Panic => "panic",
            Self::Exit => "exit",
            Self::Host => "host",
            Self::Runtime => "runtime",
            Self::MalformedResult => "malformed_result",
            Self::NotStarted => "not_started",
        }
    }
}

impl std::fmt::Display for FaultKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Fault {
    /// Its kind.
    pub fn kind(&self) -> FaultKind {
        match self {
            Self::Timeout { .. } => FaultKind::Timeout,
            Self::FuelExhausted { .. } => FaultKind::FuelExhausted,
            Self::Memory { .. } => FaultKind::Memory,
            Self::Table { .. } => FaultKind::Table,
            Self::StateWrites { .. } => FaultKind::StateWrites,
            Self::StackOverflow => FaultKind::StackOverflow,
            Self::Trap { .. } => FaultKind::Trap,
            Self::Panic { .. } => FaultKind::Panic,
            Self::Exit { .. } => FaultKind::Exit,
            Self::Host { .. } => FaultKind::Host,
            Self::Runtime { .. } => FaultKind::Runtime,
            Self::MalformedResult { .. } => FaultKind::MalformedResult,
            Self::NotStarted { .. } => FaultKind::NotStarted,
        }
    }

    /// Whether this fault counts toward the use's quarantine (see [`super::quarantine`]).
    ///
    /// Every kind does. Each one discarded the instance, and what the function does (limits
    /// reached, traps, `exit`, results it may not return, an instance that will not start again)
    /// is what quarantine exists to stop repeating. A host failure counts too: it poisoned the
    /// instance all the same, and a state store that keeps failing would fail the batch's commit
    /// anyway. A new kind has to be placed here.
    pub fn counts_toward_quarantine(&self) -> bool {
        match self.kind() {
            FaultKind::Timeout
            | FaultKind::FuelExhausted
            | FaultKind::Memory
            | FaultKind::Table
            | FaultKind::StateWrites
            | FaultKind::StackOverflow
            | FaultKind::Trap
            | FaultKind::Panic
            | FaultKind::Exit
            | FaultKind::Host
            | FaultKind::Runtime
            | FaultKind::MalformedResult
            | FaultKind::NotStarted => true,
        }
    }
}

impl From<LimitHit> for Fault {
    fn from(hit: LimitHit) -> Self {
        match hit {
            LimitHit::Memory { desired, limit } => Self::Memory { desired, limit },
            LimitHit::Table { desired, limit } => Self::Table { desired, limit },
            LimitHit::StateWrites { desired, limit } => Self::StateWrites { desired, limit },
        }
    }
}

/// What a failed call left behind, as the sandbox saw it.
pub(super) struct Aftermath<'a> {
    /// The limit the limiter or the state-write budget recorded, if one stopped the call.
    pub(super) limit_hit: Option<LimitHit>,
    /// The host failure that trapped the call, if one did.
    pub(super) host_failure: Option<&'a str>,
    /// What the call wrote on stderr (the end of it).
    pub(super) stderr: &'a str,
    /// The function's limits.
    pub(super) limits: &'a FunctionLimits,
}

/// The fault behind `error`, the error a call, an instantiation or `init` failed with.
pub(super) fn classify(error: &wasmtime::Error, aftermath: &Aftermath<'_>) -> Fault {
    if let Some(hit) = aftermath.limit_hit {
        return hit.into();
    }
    if let Some(failure) = aftermath.host_failure {
        return Fault::Host { description: failure.to_owned() };
    }
    if let Some(exit) = error.downcast_ref::<wasmtime_wasi::I32Exit>() {
        return Fault::Exit { code: exit.0 };
    }
    let trap = |description: &str| Fault::Trap { description: description.to_owned() };
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => Fault::Timeout { limit: aftermath.limits.timeout },
        Some(Trap::OutOfFuel) => Fault::FuelExhausted { fuel: aftermath.limits.fuel.unwrap_or_default() },
        Some(Trap::StackOverflow) => Fault::StackOverflow,
        // Rust and C guests keep most stack frames in linear memory, below their data; recursing
        // too deep runs that stack off the bottom of memory, which is this trap.
        Some(Trap::MemoryOutOfBounds) => {
            trap("out of bounds memory access (for a Rust or C function, usually its stack overflowing)")
        }
        Some(Trap::UnreachableCodeReached) => match panic_message(aftermath.stderr) {
            Some(message) => Fault::Panic { message },
            None => trap("unreachable code reached (an abort or panic)"),
        },
        Some(other) => trap(&other.to_string()),
        None => Fault::Runtime { description: error.root_cause().to_string() },
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_the_panic_message_from_std_output() {
        let stderr = "\nthread '<unnamed>' panicked at src/lib.rs:10:5:\nvalue 666 is cursed\nnote: run with `RUST_BACKTRACE=1` environment variable to display a backtrace\n";
        assert_eq!(panic_message(stderr).as_deref(), Some("src/lib.rs:10:5: value 666 is cursed"));
        assert_eq!(panic_message("nothing here"), None);
    }

    /// Dead letters already stored hold these words: each variant must keep saying them.
    #[test]
    fn every_fault_says_what_it_said_before_it_was_a_type() {
        let cases = [
            (
                Fault::Timeout { limit: Duration::from_millis(100) },
                "timed out: the call ran longer than its limit of 100ms",
            ),
            (Fault::FuelExhausted { fuel: 5_000_000 }, "fuel exhausted: the call used all of its 5000000 units"),
            (
                Fault::Memory { desired: 33_619_968, limit: 33_554_432 },
                "memory limit: tried to grow linear memory to 33619968 bytes, the limit is 33554432 bytes",
            ),
            (
                Fault::Table { desired: 100_001, limit: 100_000 },
                "table limit: tried to grow a table to 100001 elements, the limit is 100000",
            ),
            (
                Fault::StateWrites { desired: 1_048_600, limit: 1_048_576 },
                "state write limit: tried to hold 1048600 bytes of uncommitted state writes, the limit is 1048576 bytes",
            ),
            (Fault::StackOverflow, "stack overflow"),
            (
                Fault::Trap {
                    description:
                        "out of bounds memory access (for a Rust or C function, usually its stack overflowing)".into(),
                },
                "trap: out of bounds memory access (for a Rust or C function, usually its stack overflowing)",
            ),
            (
                Fault::Trap { description: "unreachable code reached (an abort or panic)".into() },
                "trap: unreachable code reached (an abort or panic)",
            ),
            // Other traps say what wasmtime says of them, prefix included.
            (
                Fault::Trap { description: Trap::IntegerDivisionByZero.to_string() },
                "trap: wasm trap: integer divide by zero",
            ),
            (
                Fault::Panic { message: "src/lib.rs:10:5: value 666 is cursed".into() },
                "panicked: src/lib.rs:10:5: value 666 is cursed",
            ),
            (Fault::Exit { code: 1 }, "the function called exit (status 1; WASI 0.2 only tells success from failure)"),
            (
                Fault::Host { description: "state store failed during a guest call: disk full".into() },
                "host failure: state store failed during a guest call: disk full",
            ),
            (
                Fault::Runtime { description: "requested len 4611686018427387904 exceeds limit 65536".into() },
                "error: requested len 4611686018427387904 exceeds limit 65536",
            ),
            (
                Fault::MalformedResult {
                    what: Malformed::Batch { invalid: InvalidBatch::ColumnLengths { series_idx: 2, ts: 1, value: 1 } },
                },
                "returned a malformed batch: column lengths differ: 2 series indexes, 1 timestamps, 1 values",
            ),
            (
                Fault::MalformedResult { what: Malformed::AggregateName { name: "p95".into() } },
                "finish returned the name \"p95\" twice or empty; names must be unique",
            ),
            (
                Fault::NotStarted {
                    failure: Box::new(StartFailure::Instantiate(Fault::Runtime { description: "no slot".into() })),
                },
                "instantiation failed: error: no slot",
            ),
            (
                Fault::NotStarted {
                    failure: Box::new(StartFailure::InitRefused { reason: "invalid params: x".into() }),
                },
                "init refused: invalid params: x",
            ),
            (
                Fault::NotStarted { failure: Box::new(StartFailure::InitFaulted(Fault::Exit { code: 3 })) },
                "init faulted: the function called exit (status 3; WASI 0.2 only tells success from failure)",
            ),
        ];
        for (fault, words) in cases {
            assert_eq!(fault.to_string(), words, "{fault:?}");
        }
    }

    #[test]
    fn limits_recorded_by_the_limiter_become_their_faults() {
        assert_eq!(Fault::from(LimitHit::Memory { desired: 2, limit: 1 }), Fault::Memory { desired: 2, limit: 1 });
        assert_eq!(Fault::from(LimitHit::Table { desired: 2, limit: 1 }), Fault::Table { desired: 2, limit: 1 });
        assert_eq!(
            Fault::from(LimitHit::StateWrites { desired: 2, limit: 1 }),
            Fault::StateWrites { desired: 2, limit: 1 }
        );
    }

    #[test]
    fn classification_prefers_a_recorded_limit_then_a_host_failure_over_the_trap() {
        let limits = FunctionLimits { fuel: Some(7), ..FunctionLimits::DEFAULT };
        let aftermath = |limit_hit, host_failure| Aftermath { limit_hit, host_failure, stderr: "", limits: &limits };
        let interrupted = wasmtime::Error::new(Trap::Interrupt);
        let hit = LimitHit::Memory { desired: 2, limit: 1 };
        assert_eq!(classify(&interrupted, &aftermath(Some(hit), Some("disk"))), Fault::Memory { desired: 2, limit: 1 });
        assert_eq!(classify(&interrupted, &aftermath(None, Some("disk"))), Fault::Host { description: "disk".into() });
        assert_eq!(classify(&interrupted, &aftermath(None, None)), Fault::Timeout { limit: limits.timeout });
        let out_of_fuel = wasmtime::Error::new(Trap::OutOfFuel);
        assert_eq!(classify(&out_of_fuel, &aftermath(None, None)), Fault::FuelExhausted { fuel: 7 });
        let exit = wasmtime::Error::new(wasmtime_wasi::I32Exit(1));
        assert_eq!(classify(&exit, &aftermath(None, None)), Fault::Exit { code: 1 });
        let other = wasmtime::Error::msg("requested len 9 exceeds limit 8");
        assert_eq!(
            classify(&other, &aftermath(None, None)),
            Fault::Runtime { description: "requested len 9 exceeds limit 8".into() }
        );
    }

    #[test]
    fn an_unreachable_trap_after_a_panic_message_is_a_panic() {
        let limits = FunctionLimits::DEFAULT;
        let unreachable = wasmtime::Error::new(Trap::UnreachableCodeReached);
        let stderr = "thread '<unnamed>' panicked at src/lib.rs:1:1:\nboom\n";
        let after_panic = Aftermath { limit_hit: None, host_failure: None, stderr, limits: &limits };
        assert_eq!(classify(&unreachable, &after_panic), Fault::Panic { message: "src/lib.rs:1:1: boom".into() });
        let silent = Aftermath { stderr: "", ..after_panic };
        assert_eq!(classify(&unreachable, &silent).kind(), FaultKind::Trap);
    }

    #[test]
    fn every_kind_counts_toward_quarantine_and_start_failures_name_their_phase() {
        let faults = [
            Fault::Timeout { limit: Duration::from_secs(1) },
            Fault::StackOverflow,
            Fault::Host { description: "disk".into() },
            Fault::MalformedResult { what: Malformed::AggregateName { name: String::new() } },
            Fault::NotStarted { failure: Box::new(StartFailure::InitRefused { reason: "no".into() }) },
        ];
        assert!(faults.iter().all(Fault::counts_toward_quarantine));
        assert_eq!(StartFailure::Instantiate(Fault::StackOverflow).phase(), super::super::StartPhase::Instantiate);
        assert_eq!(StartFailure::InitFaulted(Fault::StackOverflow).phase(), super::super::StartPhase::Init);
    }
}
