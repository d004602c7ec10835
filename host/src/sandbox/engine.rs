//! The wasmtime engine and the address space its memory pool reserves.
//!
//! The pooling allocator reserves, when the engine is made, one slot of address space for every
//! linear memory that may exist at once (every instance twice). A slot's size decides how
//! compiled code checks memory accesses, so it is one of two [`MemoryLayout`]s:
//!
//! - [`MemoryLayout::Guarded`], wasmtime's 64-bit default: 4 GiB per memory plus 32 MiB guard
//!   regions on both sides, so 32-bit WebAssembly addresses need almost no bounds checks. Twenty
//!   uses of functions reserve about 360 GiB — room an x86 server has, but not a 32-bit board (3 GiB),
//!   a 39-bit-VA aarch64 kernel with many functions (512 GiB), nor a process under `ulimit -v`.
//! - [`MemoryLayout::Compact`]: each slot holds the largest memory limit of any function, rounded
//!   up to a WebAssembly page, with a one-page guard after it; compiled code checks bounds
//!   explicitly.
//!
//! **Rule:** on 32-bit hosts the layout is compact. Elsewhere it is guarded unless the process's
//! address-space limit (`RLIMIT_AS`, read from `/proc/self/limits`) is under twice what the
//! guarded pool would reserve, or reserving it fails (as on a kernel with fewer address bits); then
//! compact. Where even the compact pool does not fit, making the engine fails with wasmtime's
//! reason, and the gateway refuses to start naming the setting to change (see `preflight`).
//! Compiled artifacts carry the engine's compatibility hash, so a change of layout recompiles.
//!
//! Functions run as machine code compiled by Cranelift, or — with
//! [`WasmExecution::Interpreted`], and always where Cranelift has no backend (32-bit ARM) — as
//! Pulley bytecode run by wasmtime's interpreter, which never maps memory executable. The
//! artifacts of the two differ (the compatibility hash includes the target).

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use super::{SandboxError, SandboxOptions};
use crate::config::WasmExecution;

/// A WebAssembly page.
const WASM_PAGE: u64 = 64 * 1024;
/// wasmtime's reservation and guard sizes per memory on 64-bit hosts.
const GUARDED_RESERVATION: u64 = 4 << 30;
const GUARDED_GUARD: u64 = 32 << 20;

/// How each memory slot of the pool is laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryLayout {
    /// 4 GiB plus guard regions per memory: almost no bounds checks.
    Guarded,
    /// The largest memory limit plus one guard page per memory: bounds checked.
    Compact,
}

impl MemoryLayout {
    /// Address space this layout reserves for the memories of `options`, at most (wasmtime
    /// shares some guard regions between slots).
    pub fn reserved_bytes(self, options: &SandboxOptions) -> u64 {
        let slot = match self {
            Self::Guarded => GUARDED_RESERVATION + 2 * GUARDED_GUARD,
            Self::Compact => compact_reservation(options) + 2 * WASM_PAGE,
        };
        slot.saturating_mul(u64::from(memories(options)))
    }
}

/// The engine for `options` and the layout it got, by the rule in the module doc.
pub(super) fn engine(options: &SandboxOptions) -> Result<(Engine, MemoryLayout), SandboxError> {
    let guarded_fits = cfg!(target_pointer_width = "64")
        && address_space_limit().is_none_or(|limit| MemoryLayout::Guarded.reserved_bytes(options) <= limit / 2);
    if guarded_fits && let Ok(engine) = engine_with(options, MemoryLayout::Guarded) {
        return Ok((engine, MemoryLayout::Guarded));
    }
    engine_with(options, MemoryLayout::Compact).map(|engine| (engine, MemoryLayout::Compact))
}

/// Linear memories that may exist at once: two per instance.
fn memories(options: &SandboxOptions) -> u32 {
    options.max_instances.max(1).saturating_mul(2)
}

/// The compact reservation: the largest memory limit, in whole WebAssembly pages.
fn compact_reservation(options: &SandboxOptions) -> u64 {
    options.max_memory_bytes.max(WASM_PAGE).div_ceil(WASM_PAGE) * WASM_PAGE
}

fn engine_with(options: &SandboxOptions, layout: MemoryLayout) -> Result<Engine, SandboxError> {
    let instances = options.max_instances.max(1);
    let core_instances = options.max_core_instances.clamp(1, 1000);
    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(instances)
        .total_core_instances(instances.saturating_mul(core_instances.min(8)))
        .max_core_instances_per_component(core_instances)
        .total_memories(memories(options))
        .total_tables(instances.saturating_mul(8))
        // Stacks for asynchronous calls (1 000 by default, 2 GiB of address space); calls here
        // are synchronous, so one per instance is more than enough.
        .total_stacks(instances)
        .max_memory_size(usize::try_from(options.max_memory_bytes).unwrap_or(usize::MAX));
    let mut config = Config::new();
    if options.execution == WasmExecution::Interpreted {
        let pulley = if cfg!(target_pointer_width = "64") { "pulley64" } else { "pulley32" };
        config.target(pulley).map_err(|e| SandboxError::Engine { reason: format!("{e:#}") })?;
    }
    config
        .epoch_interruption(true)
        .consume_fuel(options.fuel)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match layout {
        MemoryLayout::Guarded => config.memory_reservation(GUARDED_RESERVATION).memory_guard_size(GUARDED_GUARD),
        MemoryLayout::Compact => config
            .memory_reservation(compact_reservation(options))
            .memory_guard_size(WASM_PAGE)
            .memory_reservation_for_growth(0),
    };
    Engine::new(&config).map_err(|e| SandboxError::Engine { reason: format!("{e:#}") })
}

/// The process's soft address-space limit in bytes (`ulimit -v`), `None` when unlimited or not
/// known.
fn address_space_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_address_space_limit(&limits)
}

/// The soft limit on the `Max address space` line of `/proc/<pid>/limits`.
fn parse_address_space_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max address space"))?;
    line.trim_start_matches("Max address space").split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::StateLimits;

    fn options(uses: u32, memory: u64) -> SandboxOptions {
        SandboxOptions {
            max_instances: uses * 2 + 4,
            max_memory_bytes: memory,
            max_core_instances: 1,
            fuel: false,
            state_limits: StateLimits { max_key: 64, max_value: 64 },
            execution: WasmExecution::default_here(),
        }
    }

    #[test]
    fn the_address_space_limit_is_read_off_proc_limits() {
        let limited = "Limit                     Soft Limit           Hard Limit           Units     \n\
                       Max cpu time              unlimited            unlimited            seconds   \n\
                       Max address space         3221225472           unlimited            bytes     \n";
        assert_eq!(parse_address_space_limit(limited), Some(3 << 30));
        let unlimited = "Max address space         unlimited            unlimited            bytes     \n";
        assert_eq!(parse_address_space_limit(unlimited), None);
        assert_eq!(parse_address_space_limit(""), None);
    }

    #[test]
    fn reservations_follow_the_instances_and_the_largest_memory_limit() {
        // Ten uses: 24 instances, 48 memories.
        let ten = options(10, 10 << 20);
        assert_eq!(MemoryLayout::Guarded.reserved_bytes(&ten), 48 * ((4 << 30) + (64 << 20)));
        assert_eq!(MemoryLayout::Compact.reserved_bytes(&ten), 48 * ((10 << 20) + 2 * WASM_PAGE));
        // A limit that is not a whole number of pages is rounded up to one.
        assert_eq!(compact_reservation(&options(1, 100_000)), 2 * WASM_PAGE);
    }
}
