//! The shared handle of one running use of a function: how it is doing, and the version it
//! should run next.
//!
//! The instance itself belongs to its pipeline's processor thread; the handle is what the rest of
//! the gateway may touch. The pipeline reads the fault record to hold input while the use is
//! quarantined; the gateway reports it; a reload stages a new version in the handle, which the
//! instance takes up at its next call — so a swap never interrupts a call, happens between two
//! calls on the pipeline's own thread, and keeps the use's state (see
//! [`super::FunctionInstance::replace`]).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use super::CompiledFunction;
use super::quarantine::FaultRecord;
use crate::config::FunctionId;

/// One running use of a function in a pipeline, as the rest of the gateway sees it.
#[derive(Clone, Debug)]
pub struct UseHandle {
    shared: Arc<Mutex<Shared>>,
    /// The function.
    pub function_id: FunctionId,
    /// The pipeline the use belongs to.
    pub pipeline: String,
    /// The use's name in that pipeline.
    pub use_name: String,
}

#[derive(Debug)]
struct Shared {
    record: FaultRecord,
    next_version: Option<Arc<CompiledFunction>>,
}

impl UseHandle {
    pub(super) fn new(record: FaultRecord, function_id: FunctionId, pipeline: String, use_name: String) -> Self {
        Self { shared: Arc::new(Mutex::new(Shared { record, next_version: None })), function_id, pipeline, use_name }
    }

    /// A poisoned lock only means a panic elsewhere mid-update of plain counters; the data stays
    /// usable.
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the fault record.
    pub(super) fn with_record<R>(&self, f: impl FnOnce(&mut FaultRecord) -> R) -> R {
        f(&mut self.lock().record)
    }

    /// A copy of the fault record now.
    pub fn snapshot(&self) -> FaultRecord {
        self.lock().record.clone()
    }

    /// The quarantine left now, if the use is quarantined and no new version is waiting (a new
    /// version ends the quarantine when it is taken up).
    pub fn quarantined_for(&self) -> Option<Duration> {
        let shared = self.lock();
        if shared.next_version.is_some() {
            return None;
        }
        shared.record.quarantined_for(Instant::now())
    }

    /// Stages `function` to replace the running version at the use's next call. A version staged
    /// earlier and not yet taken up is dropped.
    pub fn stage_version(&self, function: Arc<CompiledFunction>) {
        self.lock().next_version = Some(function);
    }

    /// Whether a staged version waits to be taken up.
    pub fn has_staged_version(&self) -> bool {
        self.lock().next_version.is_some()
    }

    /// The staged version, if any (taken by the instance).
    pub(super) fn take_next_version(&self) -> Option<Arc<CompiledFunction>> {
        self.lock().next_version.take()
    }
}
