//! What one function instance can reach: the capabilities of `weir:stream` (log, clock, state),
//! a deny-by-default WASI context, and its resource limits. This is the `Store` data.
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
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::{clock, log, state, types};
use crate::config::FunctionLimits;
use crate::state::{StateStore, state_entry_bytes};

/// Lines a function may log (imports and stdout/stderr together) per call before the rest are
/// dropped and counted.
pub const LOG_LINES_PER_CALL: u32 = 100;
/// Bytes of stderr kept to explain a fault (a panic message, typically).
const STDERR_TAIL_BYTES: usize = 2048;
/// Longest log line kept; longer lines are cut.
const MAX_LINE_BYTES: usize = 4096;
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

/// Log output of an instance: line splitting, the per-call budget, the stderr tail.
#[derive(Debug, Default)]
pub struct OutputCapture {
    stdout_partial: Vec<u8>,
    stderr_partial: Vec<u8>,
    stderr_tail: Vec<u8>,
    lines_this_call: u32,
    dropped_this_call: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stream {
    Stdout,
    Stderr,
}

/// Shared between the instance state and the WASI output streams.
#[derive(Clone, Debug)]
pub struct Output {
    capture: Arc<Mutex<OutputCapture>>,
    labels: Arc<InstanceLabels>,
}

impl Output {
    fn new(labels: Arc<InstanceLabels>) -> Self {
        Self { capture: Arc::default(), labels }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputCapture> {
        // A poisoned lock only means a log line was lost mid-write; the buffers stay usable.
        self.capture.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Emits one line if the call's budget allows.
    fn emit(&self, level: tracing::Level, line: &str) {
        let mut capture = self.lock();
        if capture.lines_this_call >= LOG_LINES_PER_CALL {
            capture.dropped_this_call += 1;
            return;
        }
        capture.lines_this_call += 1;
        drop(capture);
        let line = truncate(line, MAX_LINE_BYTES);
        let l = &self.labels;
        match level {
            tracing::Level::ERROR => {
                tracing::error!(stage = "function", function = %l.function, pipeline = %l.pipeline, operator = %l.operator, "{line}");
            }
            tracing::Level::WARN => {
                tracing::warn!(stage = "function", function = %l.function, pipeline = %l.pipeline, operator = %l.operator, "{line}");
            }
            tracing::Level::INFO => {
                tracing::info!(stage = "function", function = %l.function, pipeline = %l.pipeline, operator = %l.operator, "{line}");
            }
            tracing::Level::DEBUG => {
                tracing::debug!(stage = "function", function = %l.function, pipeline = %l.pipeline, operator = %l.operator, "{line}");
            }
            tracing::Level::TRACE => {
                tracing::trace!(stage = "function", function = %l.function, pipeline = %l.pipeline, operator = %l.operator, "{line}");
            }
        }
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut lines = Vec::new();
        {
            let mut capture = self.lock();
            if stream == Stream::Stderr {
                capture.stderr_tail.extend_from_slice(bytes);
                let excess = capture.stderr_tail.len().saturating_sub(STDERR_TAIL_BYTES);
                capture.stderr_tail.drain(..excess);
            }
            let partial = match stream {
                Stream::Stdout => &mut capture.stdout_partial,
                Stream::Stderr => &mut capture.stderr_partial,
            };
            partial.extend_from_slice(bytes);
            while let Some(end) = partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = partial.drain(..=end).collect();
                lines.push(String::from_utf8_lossy(&line[..end]).into_owned());
            }
            if partial.len() > MAX_LINE_BYTES {
                lines.push(String::from_utf8_lossy(partial).into_owned());
                partial.clear();
            }
        }
        let level = if stream == Stream::Stderr { tracing::Level::WARN } else { tracing::Level::INFO };
        for line in lines {
            self.emit(level, &line);
        }
    }

    /// Starts a new call: resets the budget and the stderr tail.
    fn begin_call(&self) {
        let mut capture = self.lock();
        capture.lines_this_call = 0;
        capture.dropped_this_call = 0;
        capture.stderr_tail.clear();
    }

    /// Ends a call: reports dropped lines, returns the stderr written during the call.
    fn end_call(&self) -> String {
        let mut capture = self.lock();
        let dropped = std::mem::take(&mut capture.dropped_this_call);
        let tail = String::from_utf8_lossy(&capture.stderr_tail).into_owned();
        drop(capture);
        if dropped > 0 {
            let l = &self.labels;
            tracing::warn!(stage = "function", function = %l.function, pipeline = %l.pipeline, operator = %l.operator,
                dropped, "log lines over the budget of {LOG_LINES_PER_CALL} per call were dropped");
        }
        tail
    }
}

fn truncate(line: &str, max: usize) -> &str {
    if line.len() <= max {
        return line;
    }
    let mut cut = max;
    while !line.is_char_boundary(cut) {
        cut -= 1;
    }
    &line[..cut]
}

/// One WASI output stream (stdout or stderr) of an instance.
#[derive(Clone, Debug)]
struct GuestStream {
    output: Output,
    stream: Stream,
}

impl IsTerminal for GuestStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestStream {
    async fn ready(&mut self) {}
}

impl OutputStream for GuestStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        self.output.write(self.stream, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

impl tokio::io::AsyncWrite for GuestStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        self.output.write(self.stream, buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

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
            .stdout(GuestStream { output: output.clone(), stream: Stream::Stdout })
            .stderr(GuestStream { output: output.clone(), stream: Stream::Stderr })
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
            limiter: Limiter {
                memory_bytes: usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX),
                table_elements: limits.table_elements as usize,
                instances: limits.instances as usize,
                hit: None,
            },
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
