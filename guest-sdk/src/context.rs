//! What a function may ask of the host during a call: durable state, logging and time.
//!
//! A [`Context`] is handed to every `init`, `process` and `decode` call. Behind it sits either the
//! real host (the WIT imports, inside a component) or [`TestHost`](crate::testing::TestHost) (native
//! unit tests); the function cannot tell them apart. Both give the same guarantee: state written
//! during a call that returns an error is discarded.

use std::fmt;

use crate::batch::Timestamp;

/// Severity of a log record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    /// Very verbose diagnostics.
    Trace,
    /// Diagnostics useful while developing a function.
    Debug,
    /// Normal, noteworthy events.
    Info,
    /// Something unexpected that the function handled.
    Warn,
    /// Something the function could not handle.
    Error,
}

/// Why the host refused a state write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StateError {
    /// The key is longer than the host allows.
    KeyTooLarge {
        /// The host's limit, in bytes.
        limit: u32,
    },
    /// The value is longer than the host allows.
    ValueTooLarge {
        /// The host's limit, in bytes.
        limit: u32,
    },
    /// The function's state would grow beyond its quota.
    QuotaExceeded {
        /// The quota, in bytes.
        quota: u64,
    },
}

impl fmt::Display for StateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::KeyTooLarge { limit } => {
                write!(f, "state key longer than the host's limit of {limit} bytes")
            }
            Self::ValueTooLarge { limit } => {
                write!(f, "state value longer than the host's limit of {limit} bytes")
            }
            Self::QuotaExceeded { quota } => write!(f, "state quota of {quota} bytes exceeded"),
        }
    }
}

impl std::error::Error for StateError {}

/// The host capabilities behind a [`Context`]. Implemented by the WIT imports and by the test host.
pub(crate) trait Host {
    fn log(&mut self, level: Level, message: &str);
    fn watermark(&self) -> Timestamp;
    fn processing_time(&self) -> Timestamp;
    fn state_get(&mut self, key: &[u8]) -> Option<Vec<u8>>;
    fn state_set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError>;
    fn state_delete(&mut self, key: &[u8]);
    fn state_range(&mut self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)>;
}

/// The host, as one call of a function sees it.
pub struct Context<'h> {
    host: &'h mut dyn Host,
}

impl fmt::Debug for Context<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl<'h> Context<'h> {
    pub(crate) fn new(host: &'h mut dyn Host) -> Self {
        Self { host }
    }

    /// The function's durable key/value state.
    pub fn state(&mut self) -> State<'_> {
        State { host: &mut *self.host }
    }

    /// Event time up to which the host believes the pipeline's input is complete.
    pub fn watermark(&self) -> Timestamp {
        self.host.watermark()
    }

    /// Processing time at which the host started this call.
    pub fn processing_time(&self) -> Timestamp {
        self.host.processing_time()
    }

    /// Writes a record to the host's log, labelled with this function's identity.
    pub fn log(&mut self, level: Level, message: impl AsRef<str>) {
        self.host.log(level, message.as_ref());
    }

    /// Writes a debug record.
    pub fn debug(&mut self, message: impl AsRef<str>) {
        self.log(Level::Debug, message);
    }

    /// Writes an info record.
    pub fn info(&mut self, message: impl AsRef<str>) {
        self.log(Level::Info, message);
    }

    /// Writes a warning.
    pub fn warn(&mut self, message: impl AsRef<str>) {
        self.log(Level::Warn, message);
    }
}

/// The function's own durable key/value namespace.
///
/// Keys and values are bytes; the function chooses their encoding. Writes become durable together
/// with the output of the current call, or not at all.
pub struct State<'c> {
    host: &'c mut dyn Host,
}

impl fmt::Debug for State<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

/// How many entries [`State::scan_prefix`] asks the host for at a time.
const SCAN_PAGE: u32 = 256;

impl State<'_> {
    /// The value stored under `key`, if any.
    pub fn get(&mut self, key: impl AsRef<[u8]>) -> Option<Vec<u8>> {
        self.host.state_get(key.as_ref())
    }

    /// Stores `value` under `key`.
    pub fn set(&mut self, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), StateError> {
        self.host.state_set(key.as_ref(), value.as_ref())
    }

    /// Removes `key` (absent keys are fine).
    pub fn delete(&mut self, key: impl AsRef<[u8]>) {
        self.host.state_delete(key.as_ref());
    }

    /// Up to `limit` entries with `start <= key < end` (unbounded when `end` is `None`), ascending.
    pub fn range(&mut self, start: impl AsRef<[u8]>, end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.host.state_range(start.as_ref(), end, limit)
    }

    /// Every entry whose key starts with `prefix`, ascending, fetched page by page.
    pub fn scan_prefix(&mut self, prefix: impl AsRef<[u8]>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let prefix = prefix.as_ref();
        let end = prefix_successor(prefix);
        let mut start = prefix.to_vec();
        let mut entries = Vec::new();
        loop {
            let page = self.host.state_range(&start, end.as_deref(), SCAN_PAGE);
            let full_page = page.len() == SCAN_PAGE as usize;
            if let Some((last_key, _)) = page.last() {
                start = last_key.clone();
                start.push(0);
            }
            entries.extend(page);
            if !full_page {
                return entries;
            }
        }
    }
}

/// The smallest key greater than every key starting with `prefix`; `None` when there is none
/// (empty prefix or all `0xff`).
fn prefix_successor(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::prefix_successor;

    #[test]
    fn prefix_successor_bumps_the_last_byte_that_can_grow() {
        assert_eq!(prefix_successor(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_successor(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_successor(&[0xff, 0xff]), None);
        assert_eq!(prefix_successor(b""), None);
    }
}
