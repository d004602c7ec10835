//! The store's errors: [`StoreError`], one enum for every operation on the store, and the
//! shorthand that turns any redb error into it, naming what was being done.

use std::path::PathBuf;

/// Why the state store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the database.
    #[error("data dir {path} is in use by another weir process (only one may open it)")]
    InUse {
        /// The database file.
        path: PathBuf,
    },
    /// The data directory cannot be created or read.
    #[error("cannot use data dir {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// redb reported an error.
    #[error("state database {operation} failed: {source}")]
    Database {
        /// What was being done.
        operation: &'static str,
        /// redb's error.
        source: Box<redb::Error>,
    },
    /// A stored value could not be decoded.
    #[error("stored {what} is unreadable: {reason}")]
    Unreadable {
        /// Which kind of entry.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The commit of a change set failed; nothing of it was applied.
    #[error("commit failed: {reason}")]
    CommitFailed {
        /// Why.
        reason: String,
    },
    /// The change set's records do not fit in their stream's outbox and its policy could not
    /// make room (`block`, or nothing left to coarsen or drop); nothing of it was applied.
    #[error("the outbox of {stream} is full ({max_bytes} bytes)")]
    OutboxFull {
        /// The stream.
        stream: String,
        /// Its cap.
        max_bytes: u64,
    },
    /// The committer thread is gone (the store is shutting down or crashed).
    #[error("the state committer has stopped")]
    CommitterStopped,
    /// The database is being reopened after a failed commit (a full disk, an I/O error).
    #[error("the state database is being reopened after a failed commit")]
    Reopening,
}

pub(super) fn db_error(operation: &'static str) -> impl FnOnce(redb::Error) -> StoreError {
    move |source| StoreError::Database { operation, source: Box::new(source) }
}

/// Shorthand: convert any redb error type into [`StoreError`].
pub(super) trait OrStore<T> {
    fn or_store(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T, E: Into<redb::Error>> OrStore<T> for Result<T, E> {
    fn or_store(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|e| db_error(operation)(e.into()))
    }
}
