//! What one function instance can reach: the capabilities of `weir:stream` (log, clock, state),
//! a deny-by-default WASI context, its state-write budget and quota, its resource limiter
//! ([`super::limiter`]) and its output ([`super::output`]). This is the `Store` data.
//!
//! Invariants:
//! - State writes of the call in progress sit in `call_writes`; they move to `pending` (writes
//!   waiting for the pipeline's next commit) only when the call succeeds, and are dropped when it
//!   fails. Reads see `call_writes`, then `pending`, then the committed store.
//! - WASI gives no files, sockets, environment or arguments; stdout and stderr go to the host log;
//!   both WASI clocks read the processing time the host set for the call (frozen during it).
//! - A write that would make the use's state (committed, plus `pending` and `call_writes`) hold
//!   more than its quota is refused with `quota-exceeded`; writes that do not grow it are always
//!   taken. Uncommitted writes beyond the state-write budget trap the call.
//! - Host infrastructure errors (the state store failing) trap the call; they never reach the
//!   guest as values.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{clock, log, state, types};
use super::limiter::{LimitHit, Limiter};
use super::output::{Output, Stream};
use crate::config::FunctionLimits;
use crate::state::{StateStore, state_entry_bytes};

/// Most random bytes one `wasi:random` call may ask for; a larger request traps instead of making
/// the host allocate it.
const MAX_RANDOM_BYTES: u64 = 64 * 1024;

/// Who an instance is, for logs and fault reports.
#[derive(Clone, Debug)]
pub struct InstanceLabels {
    /// `<function id>@<digest prefix>`.
    pub function: String,
    /// Pipeline the instance serves.
    pub pipeline: String,
    /// Use name within the pipeline (the state namespace's last part).
    pub operator: String,
}

/// Per-key/value limits of function state.
#[derive(Clone, Copy, Debug)]
pub struct StateLimits {
    /// Longest key, bytes.
    pub max_key: u32,
    /// Longest value, bytes.
    pub max_value: u32,
}

/// Uncommitted writes, `None` marking a deletion.
pub type Writes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Processing time shared with the WASI clocks.
#[derive(Clone, Debug, Default)]
pub struct CallClock(Arc<AtomicI64>);

impl CallClock {
    fn set(&self, nanos: i64) {
        self.0.store(nanos, Ordering::Relaxed);
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.0.load(Ordering::Relaxed)).unwrap_or(0)
    }
}

impl HostWallClock for CallClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }

    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos())
    }
}

impl HostMonotonicClock for CallClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        self.nanos()
    }
}

/// Why a host capability could not serve the guest (traps the call).
#[derive(Debug, thiserror::Error)]
#[error("state store failed during a guest call: {0}")]
pub struct HostFailure(pub String);

/// The store data of one instance.
pub struct InstanceState {
    wasi: WasiCtx,
    table: ResourceTable,
    /// Resource limits.
    pub limiter: Limiter,
    output: Output,
    clock: CallClock,
    watermark: i64,
    store: StateStore,
    namespace: String,
    state_limits: StateLimits,
    /// Writes of successful calls not yet committed by the pipeline.
    pub pending: Writes,
    /// Writes of the call in progress.
    call_writes: Writes,
    /// Bytes (keys and values) written into `pending`, and by the call in progress.
    pending_bytes: u64,
    call_bytes: u64,
    /// The cap on `pending_bytes + call_bytes`.
    state_write_bytes: u64,
    /// The bytes this use's state may hold (committed plus uncommitted writes).
    state_quota_bytes: u64,
    /// The bytes the committed state holds, read at the first write of a call (the pipeline
    /// commits each batch before the next, so it is current then).
    committed_usage: Option<u64>,
    /// How `pending`, and the call in progress, change the bytes the state holds.
    pending_growth: i64,
    call_growth: i64,
    /// A host failure seen during the call (it also trapped the call).
    pub host_failure: Option<String>,
}

impl std::fmt::Debug for InstanceState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceState").field("namespace", &self.namespace).finish_non_exhaustive()
    }
}

impl InstanceState {
    /// State for a fresh instance. `pending` carries uncommitted writes over from a previous
    /// instance of the same use (after a fault, the successful calls before it still count).
    pub fn new(
        labels: Arc<InstanceLabels>,
        store: StateStore,
        namespace: String,
        state_limits: StateLimits,
        limits: &FunctionLimits,
        pending: Writes,
    ) -> Self {
        let output = Output::new(labels);
        let clock = CallClock::default();
        let wasi = WasiCtxBuilder::new()
            .stdout(output.stream(Stream::Stdout))
            .stderr(output.stream(Stream::Stderr))
            .wall_clock(clock.clone())
            .monotonic_clock(clock.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .max_random_size(MAX_RANDOM_BYTES)
            .build();
        let pending_bytes = pending.iter().map(|(k, v)| written_bytes(k, v.as_deref())).sum();
        Self {
            wasi,
            table: ResourceTable::new(),
            limiter: Limiter::new(limits),
            output,
            clock,
            watermark: 0,
            store,
            namespace,
            state_limits,
            pending,
            call_writes: Writes::new(),
            pending_bytes,
            call_bytes: 0,
            state_write_bytes: limits.state_write_bytes,
            state_quota_bytes: limits.state_quota_bytes,
            committed_usage: None,
            pending_growth: 0,
            call_growth: 0,
            host_failure: None,
        }
        .with_growth_of_pending()
    }

    /// Works out how much writes carried over from a previous instance change the state's size.
    fn with_growth_of_pending(mut self) -> Self {
        self.pending_growth = self
            .pending
            .iter()
            .map(|(key, value)| {
                let committed = self
                    .store
                    .function_state_get(&self.namespace, key)
                    .ok()
                    .flatten()
                    .map_or(0, |old| state_entry_bytes(key, &old));
                let written = value.as_deref().map_or(0, |v| state_entry_bytes(key, v));
                signed(written) - signed(committed)
            })
            .sum();
        self
    }

    /// Prepares a call at `processing_time` with the pipeline's `watermark`.
    pub fn begin_call(&mut self, processing_time: i64, watermark: i64) {
        self.clock.set(processing_time);
        self.watermark = watermark;
        self.call_writes.clear();
        self.call_bytes = 0;
        self.call_growth = 0;
        self.committed_usage = None;
        self.host_failure = None;
        self.limiter.hit = None;
        self.output.begin_call();
    }

    /// Ends a call. `succeeded` decides whether its state writes count. Returns the stderr the call
    /// wrote (to explain a fault).
    pub fn end_call(&mut self, succeeded: bool) -> String {
        let writes = std::mem::take(&mut self.call_writes);
        let bytes = std::mem::take(&mut self.call_bytes);
        let growth = std::mem::take(&mut self.call_growth);
        if succeeded {
            self.pending.extend(writes);
            self.pending_bytes += bytes;
            self.pending_growth += growth;
        }
        self.output.end_call()
    }

    /// A shadow's writes are never committed: they stay visible to its later calls, and the
    /// state write budget starts over with each input (as it does with each commit for the
    /// version in service).
    pub fn settle_scratch(&mut self) {
        self.pending_bytes = 0;
    }

    /// Hands over the writes of successful calls for the pipeline's commit.
    pub fn take_pending(&mut self) -> Writes {
        self.pending_bytes = 0;
        self.pending_growth = 0;
        std::mem::take(&mut self.pending)
    }

    /// Charges a write against the state write budget; beyond it the call traps (the guest could
    /// otherwise make the host hold any amount of memory).
    fn charge(&mut self, key: &[u8], value: Option<&[u8]>) -> wasmtime::Result<()> {
        let desired = self.pending_bytes + self.call_bytes + written_bytes(key, value);
        if desired > self.state_write_bytes {
            self.limiter.hit = Some(LimitHit::StateWrites { desired, limit: self.state_write_bytes });
            wasmtime::bail!("state write limit of {} bytes reached", self.state_write_bytes);
        }
        self.call_bytes = desired - self.pending_bytes;
        Ok(())
    }

    /// The bytes `key`'s entry takes as the call sees it (0 when absent).
    fn visible_bytes(&mut self, key: &[u8]) -> wasmtime::Result<u64> {
        Ok(self.read(key)?.map_or(0, |value| state_entry_bytes(key, &value)))
    }

    /// Whether growing the state by `growth` bytes stays within the quota.
    fn within_quota(&mut self, growth: u64) -> wasmtime::Result<bool> {
        let committed = match self.committed_usage {
            Some(committed) => committed,
            None => {
                let committed = self.store.function_state_usage(&self.namespace).map_err(|e| self.fail(&e))?;
                *self.committed_usage.insert(committed)
            }
        };
        let held = u64::try_from(signed(committed) + self.pending_growth + self.call_growth).unwrap_or(0);
        Ok(held.saturating_add(growth) <= self.state_quota_bytes)
    }

    fn read(&mut self, key: &[u8]) -> wasmtime::Result<Option<Vec<u8>>> {
        if let Some(value) = self.call_writes.get(key).or_else(|| self.pending.get(key)) {
            return Ok(value.clone());
        }
        self.store.function_state_get(&self.namespace, key).map_err(|e| self.fail(&e))
    }

    fn fail(&mut self, error: &dyn std::fmt::Display) -> wasmtime::Error {
        let reason = error.to_string();
        self.host_failure = Some(reason.clone());
        wasmtime::Error::new(HostFailure(reason))
    }
}

impl WasiView for InstanceState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl types::Host for InstanceState {}

impl log::Host for InstanceState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => tracing::Level::TRACE,
            log::Level::Debug => tracing::Level::DEBUG,
            log::Level::Info => tracing::Level::INFO,
            log::Level::Warn => tracing::Level::WARN,
            log::Level::Error => tracing::Level::ERROR,
        };
        self.output.emit(level, &message);
        Ok(())
    }
}

impl clock::Host for InstanceState {
    fn watermark(&mut self) -> wasmtime::Result<i64> {
        Ok(self.watermark)
    }

    fn processing_time(&mut self) -> wasmtime::Result<i64> {
        Ok(self.clock.0.load(Ordering::Relaxed))
    }
}

impl state::Host for InstanceState {
    fn get(&mut self, key: Vec<u8>) -> wasmtime::Result<Option<Vec<u8>>> {
        self.read(&key)
    }

    fn set(&mut self, key: Vec<u8>, value: Vec<u8>) -> wasmtime::Result<Result<(), state::StateError>> {
        let StateLimits { max_key, max_value } = self.state_limits;
        if key.len() > max_key as usize {
            return Ok(Err(state::StateError::KeyTooLarge(max_key)));
        }
        if value.len() > max_value as usize {
            return Ok(Err(state::StateError::ValueTooLarge(max_value)));
        }
        let previous = self.visible_bytes(&key)?;
        let next = state_entry_bytes(&key, &value);
        if next > previous && !self.within_quota(next - previous)? {
            return Ok(Err(state::StateError::QuotaExceeded(self.state_quota_bytes)));
        }
        self.charge(&key, Some(&value))?;
        self.call_writes.insert(key, Some(value));
        self.call_growth += signed(next) - signed(previous);
        Ok(Ok(()))
    }

    fn delete(&mut self, key: Vec<u8>) -> wasmtime::Result<()> {
        let previous = self.visible_bytes(&key)?;
        self.charge(&key, None)?;
        self.call_writes.insert(key, None);
        self.call_growth -= signed(previous);
        Ok(())
    }

    fn range(&mut self, start: Vec<u8>, end: Option<Vec<u8>>, limit: u32) -> wasmtime::Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let limit = limit as usize;
        let upper = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let bounds = (Bound::Included(start.as_slice()), upper);
        // Uncommitted writes can delete committed keys, so read enough committed entries to fill
        // `limit` even after every pending deletion in the range.
        let overlay_len =
            self.pending.range::<[u8], _>(bounds).count() + self.call_writes.range::<[u8], _>(bounds).count();
        let committed = self
            .store
            .function_state_range(&self.namespace, &start, end.as_deref(), limit.saturating_add(overlay_len))
            .map_err(|e| self.fail(&e))?;
        let mut merged: BTreeMap<Vec<u8>, Option<Vec<u8>>> = committed.into_iter().map(|(k, v)| (k, Some(v))).collect();
        for (k, v) in self.pending.range::<[u8], _>(bounds).chain(self.call_writes.range::<[u8], _>(bounds)) {
            merged.insert(k.clone(), v.clone());
        }
        Ok(merged.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).take(limit).collect())
    }
}

/// A byte count as a signed difference.
fn signed(bytes: u64) -> i64 {
    i64::try_from(bytes).unwrap_or(i64::MAX)
}

/// What a write costs against the state write budget: its key and value bytes.
fn written_bytes(key: &[u8], value: Option<&[u8]>) -> u64 {
    (key.len() + value.map_or(0, <[u8]>::len)) as u64
}
