//! The open database, shared by the readers ([`StateStore`](super::StateStore)) and the
//! committer, and its reopening after a failed commit.
//!
//! **Invariant:** the slot holds the database except while the committer reopens it; a reader
//! then waits up to [`REOPEN_WAIT`] and fails with [`StoreError::Reopening`] (its caller retries),
//! and a reader never holds the database longer than one read, so the committer can close it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::Database;

use super::{StoreError, salvage};

/// How long a reopening committer waits for readers to let go of the database, and how long a
/// reader waits for the reopened one.
const REOPEN_WAIT: Duration = Duration::from_secs(2);

/// The open database, shared by readers and the committer. The committer replaces it when it
/// reopens the file after a failed commit (redb refuses every transaction after an I/O error
/// until the database is closed and opened again); meanwhile a read waits up to
/// [`REOPEN_WAIT`] for it and then fails with [`StoreError::Reopening`], which its caller retries.
#[derive(Debug, Default)]
pub(super) struct DatabaseSlot {
    db: std::sync::Mutex<Option<Arc<Database>>>,
    reopened: std::sync::Condvar,
}

impl DatabaseSlot {
    pub(super) fn new(db: Database) -> Self {
        Self { db: std::sync::Mutex::new(Some(Arc::new(db))), reopened: std::sync::Condvar::new() }
    }

    /// The database, waiting a while if it is being reopened.
    pub(super) fn get(&self) -> Result<Arc<Database>, StoreError> {
        let slot = self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (slot, _) = self
            .reopened
            .wait_timeout_while(slot, REOPEN_WAIT, |db| db.is_none())
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.clone().ok_or(StoreError::Reopening)
    }

    /// The database as it is now, without waiting.
    pub(super) fn current(&self) -> Option<Arc<Database>> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Takes the database out (readers wait from now on).
    fn take(&self) -> Option<Arc<Database>> {
        self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    fn put(&self, db: Database) {
        *self.db.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(db));
        self.reopened.notify_all();
    }

    /// After a failed commit: closes the database and opens it again, which is the only way on
    /// after an I/O error — redb refuses every later transaction until then — and brings it back
    /// to its last durable commit. If the file cannot be opened yet (the disk is still full),
    /// the next commit tries again; senders retry theirs with backoff, so the pipelines resume
    /// by themselves once the cause is gone. Readers see [`StoreError::Reopening`] meanwhile.
    pub(super) fn reopen(&self, path: &Path) {
        if let Some(old) = self.take() {
            // Readers hold the database only for one read; give them a moment to finish, or the
            // file stays locked (then the next attempt opens it).
            let deadline = Instant::now() + REOPEN_WAIT;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            drop(old);
        }
        match salvage::reopen(path) {
            Ok(db) => {
                tracing::warn!(stage = "state", file = %path.display(), "state database reopened after a failed commit");
                self.put(db);
            }
            Err(e) => {
                tracing::error!(stage = "state", file = %path.display(), error = %e,
                    "cannot reopen the state database yet; trying again at the next commit");
            }
        }
    }
}
