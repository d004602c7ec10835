//! What a function instance writes: log lines through the `log` import and WASI stdout/stderr.
//!
//! Invariants:
//! - Output is cut into lines and logged with the instance's labels (`stage = "function"`);
//!   stdout at info, stderr at warn; a line longer than [`MAX_LINE_BYTES`] is cut.
//! - At most [`LOG_LINES_PER_CALL`] lines per call reach the log; the rest are dropped and
//!   counted in one warning when the call ends.
//! - The last [`STDERR_TAIL_BYTES`] of the call's stderr are kept to explain a fault (a panic
//!   message, typically); they are cleared when the next call begins.

use std::sync::{Arc, Mutex};

use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

use super::host::InstanceLabels;

/// Lines a function may log (imports and stdout/stderr together) per call before the rest are
/// dropped and counted.
pub const LOG_LINES_PER_CALL: u32 = 100;
/// Bytes of stderr kept to explain a fault (a panic message, typically).
const STDERR_TAIL_BYTES: usize = 2048;
/// Longest log line kept; longer lines are cut.
const MAX_LINE_BYTES: usize = 4096;

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
pub(super) enum Stream {
    /// WASI stdout: info lines.
    Stdout,
    /// WASI stderr: warning lines, and the tail kept to explain a fault.
    Stderr,
}

/// Shared between the instance state and the WASI output streams.
#[derive(Clone, Debug)]
pub struct Output {
    capture: Arc<Mutex<OutputCapture>>,
    labels: Arc<InstanceLabels>,
}

impl Output {
    pub(super) fn new(labels: Arc<InstanceLabels>) -> Self {
        Self { capture: Arc::default(), labels }
    }

    /// The WASI output stream writing into this output as `stream`.
    pub(super) fn stream(&self, stream: Stream) -> GuestStream {
        GuestStream { output: self.clone(), stream }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutputCapture> {
        // A poisoned lock only means a log line was lost mid-write; the buffers stay usable.
        self.capture.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Emits one line if the call's budget allows.
    pub(super) fn emit(&self, level: tracing::Level, line: &str) {
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
    pub(super) fn begin_call(&self) {
        let mut capture = self.lock();
        capture.lines_this_call = 0;
        capture.dropped_this_call = 0;
        capture.stderr_tail.clear();
    }

    /// Ends a call: reports dropped lines, returns the stderr written during the call.
    pub(super) fn end_call(&self) -> String {
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
pub(super) struct GuestStream {
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
