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
use super::shadow::{ShadowReport, ShadowRequest};
use crate::config::FunctionId;
use crate::state::stats::FunctionStatus;

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
    /// The candidate to run in shadow, if one is asked for.
    shadow: Option<ShadowRequest>,
    /// How the shadow has done since it was asked for.
    shadow_report: ShadowReport,
}

impl UseHandle {
    pub(super) fn new(record: FaultRecord, function_id: FunctionId, pipeline: String, use_name: String) -> Self {
        let shared = Shared { record, next_version: None, shadow: None, shadow_report: ShadowReport::default() };
        Self { shared: Arc::new(Mutex::new(shared)), function_id, pipeline, use_name }
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

    /// How the use is doing, as `weir outbox stats`, the status page and `/readyz` show it.
    pub fn status(&self) -> FunctionStatus {
        let record = self.snapshot();
        FunctionStatus {
            pipeline: self.pipeline.clone(),
            use_name: self.use_name.clone(),
            function: record.function.clone(),
            consecutive_faults: record.consecutive_faults,
            faults: record.faults,
            faults_by_kind: record.faults_by_kind.iter().map(|(kind, n)| (kind.name().to_owned(), *n)).collect(),
            quarantines: record.quarantines,
            quarantined_for_seconds: self.quarantined_for().map(|left| left.as_secs_f64()),
            last_fault: record.last_fault.as_ref().map(ToString::to_string),
        }
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

    /// Asks the use to run `candidate` in shadow from its next input on, its outputs compared
    /// with the running version's within `tolerance` (see `shadow`); the report starts over.
    pub fn begin_shadow(&self, candidate: Arc<CompiledFunction>, tolerance: f64) {
        let mut shared = self.lock();
        shared.shadow = Some(ShadowRequest { candidate, tolerance });
        shared.shadow_report = ShadowReport::default();
    }

    /// Ends the shadow run, if any: the use drops the candidate at its next input.
    pub fn end_shadow(&self) {
        self.lock().shadow = None;
    }

    /// How the shadow has done since it began.
    pub fn shadow_report(&self) -> ShadowReport {
        self.lock().shadow_report.clone()
    }

    /// The shadow asked for now (taken by the use's wrapper at each input).
    pub(super) fn shadow_request(&self) -> Option<ShadowRequest> {
        self.lock().shadow.clone()
    }

    /// Updates the shadow's report, if `candidate` is still the one asked for.
    pub(super) fn report_shadow(&self, candidate: &Arc<CompiledFunction>, update: impl FnOnce(&mut ShadowReport)) {
        let mut shared = self.lock();
        if shared.shadow.as_ref().is_some_and(|s| Arc::ptr_eq(&s.candidate, candidate)) {
            update(&mut shared.shadow_report);
        }
    }

    /// The staged version, if any (taken by the instance).
    pub(super) fn take_next_version(&self) -> Option<Arc<CompiledFunction>> {
        self.lock().next_version.take()
    }
}
