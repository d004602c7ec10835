//! The resource limiter of one instance: caps on linear memory, tables and core instances.
//!
//! **Invariant:** a grow beyond a cap is refused and recorded in [`Limiter::hit`] before the
//! engine turns the refusal into a trap, so the fault is classified by the limit that stopped
//! the call (see [`super::fault::classify`]), not by the engine's error text. The state-write
//! budget records its hits here too (see [`super::host::InstanceState`]).

use crate::config::FunctionLimits;

/// Which limit stopped a call, recorded by the limiter so faults can be told apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LimitHit {
    /// Linear memory would have grown beyond the cap.
    Memory {
        /// Bytes asked for.
        desired: usize,
        /// The cap.
        limit: usize,
    },
    /// A table would have grown beyond the cap.
    Table {
        /// Elements asked for.
        desired: usize,
        /// The cap.
        limit: usize,
    },
    /// Uncommitted state writes (host memory) would have grown beyond the cap.
    StateWrites {
        /// Bytes they would have held.
        desired: u64,
        /// The cap.
        limit: u64,
    },
}

/// Resource limits of one instance.
#[derive(Debug)]
pub struct Limiter {
    memory_bytes: usize,
    table_elements: usize,
    instances: usize,
    /// Set when a limit refused a grow; read when classifying the fault.
    pub hit: Option<LimitHit>,
}

impl Limiter {
    /// The caps `limits` set, nothing hit yet.
    pub fn new(limits: &FunctionLimits) -> Self {
        Self {
            memory_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
            table_elements: limits.table_elements as usize,
            instances: limits.instances as usize,
            hit: None,
        }
    }
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.memory_bytes {
            self.hit = Some(LimitHit::Memory { desired, limit: self.memory_bytes });
            wasmtime::bail!("memory limit of {} bytes reached (growing to {desired} bytes)", self.memory_bytes);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.table_elements {
            self.hit = Some(LimitHit::Table { desired, limit: self.table_elements });
            wasmtime::bail!("table limit of {} elements reached (growing to {desired})", self.table_elements);
        }
        Ok(true)
    }

    // A component is several core instances (module, adapters, shims).
    fn instances(&self) -> usize {
        self.instances
    }

    fn tables(&self) -> usize {
        32
    }

    fn memories(&self) -> usize {
        8
    }
}
