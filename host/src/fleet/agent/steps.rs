//! The update's steps, one per tick: fetch and verify, compile, activate, judge the probation,
//! then commit or roll back. Each step persists the record before the next one can see it.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use weir_fleet::{FunctionTarget, Signed, Target};

use super::Agent;
use crate::config::{FunctionConfig, FunctionId};
use crate::fleet::central::{self, Central, FetchError};
use crate::fleet::health::{self, Judgement, ShadowProgress, UseProgress};
use crate::fleet::record::Stage;
use crate::fleet::{artifacts::LocalArtifacts, clock};
use crate::sandbox::{CompiledFunction, Sandbox, UseHandle, WorldKind};

/// What a step came to.
enum Step {
    /// Nothing changed.
    Idle,
    /// The record changed.
    Changed,
}

impl Agent {
    /// One tick (see the module docs of `agent`). Returns whether the status changed.
    pub(super) async fn step(&mut self, central: Option<&Central>, uses: &[UseHandle]) -> bool {
        if !self.waiting_for_clock.is_empty()
            && matches!(clock::now(&self.settings.clock_synced), weir_fleet::Clock::Synced(_))
        {
            for (key, bytes) in std::mem::take(&mut self.waiting_for_clock) {
                self.document(&key, central::Watched::Value(bytes)).await;
            }
        }
        let Some(stage) = self.record.update.as_ref().map(|u| u.stage) else { return false };
        let step = match stage {
            Stage::Fetched => self.fetch(central).await,
            Stage::Verified => self.compile().await,
            Stage::Compiled => self.begin_shadow(uses).await,
            Stage::Shadow => self.judge_shadow(uses).await,
            Stage::Active => self.judge(uses).await,
        };
        matches!(step, Step::Changed)
    }

    /// The functions the update changes: those whose entry differs from what runs, and those
    /// the fleet ran that the new document leaves out (back to their configured component).
    fn changed(&self) -> Vec<(FunctionId, Option<FunctionTarget>)> {
        let Some(update) = &self.record.update else { return Vec::new() };
        let running = &self.record.running().functions;
        let mut changed = Vec::new();
        for id in self.functions.keys() {
            let wanted = update.target.functions.get(id.as_str());
            if wanted != running.get(id.as_str()) {
                changed.push((id.clone(), wanted.cloned()));
            }
        }
        changed
    }

    /// Fetches and verifies each changed function's target and artifact.
    async fn fetch(&mut self, central: Option<&Central>) -> Step {
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return Step::Idle;
        }
        for (function, entry) in self.changed() {
            let Some(entry) = entry else { continue };
            let floor = self.record.floors().of(function.as_str());
            if entry.counter < floor {
                let refusal = weir_fleet::Refusal::BelowFloor {
                    function: function.to_string(),
                    version: entry.version.clone(),
                    counter: entry.counter,
                    floor,
                };
                return self.abandon(function.as_str(), &refusal).await;
            }
            let Some(central) = central else {
                self.progress = "waiting for the fleet's server".into();
                return Step::Idle;
            };
            let key = central::target_key(function.as_str(), entry.counter, &entry.sha256);
            let signed = match central.document(&key).await {
                Ok(Some((bytes, _))) => Signed::from_bytes(&bytes),
                Ok(None) => return self.later(format!("waiting for the target {key} to be published")),
                Err(e) => return self.later(e.to_string()),
            };
            let checked = signed.and_then(|signed| {
                let target: Target = signed.verify(&self.root)?;
                weir_fleet::check_target(function.as_str(), &entry, &target, &self.weir)?;
                Ok(target)
            });
            if let Err(refusal) = checked {
                return self.abandon(&key, &refusal).await;
            }
            if self.artifacts.read(function.as_str(), &entry).is_ok() {
                continue;
            }
            self.progress = format!("fetching {function} {}", entry.version);
            match self.artifacts.fetch(central, function.as_str(), &entry).await {
                Ok(()) => {
                    tracing::info!(stage = "fleet", function = %function, version = entry.version, "artifact fetched and verified");
                }
                Err(FetchError::Refused(refusal)) => {
                    return self.abandon(&format!("{function} {} artifact", entry.version), &refusal).await;
                }
                Err(FetchError::Transport(e)) => return self.later(e),
            }
        }
        self.advance(Stage::Verified, "every artifact verified").await
    }

    /// Compiles each changed function from its verified artifact (or takes its configured
    /// component back).
    async fn compile(&mut self) -> Step {
        self.candidates.clear();
        for (function, entry) in self.changed() {
            let candidate = match entry {
                None => Ok(Arc::clone(&self.configured[&function])),
                Some(entry) => {
                    let (sandbox, artifacts, config) =
                        (Arc::clone(&self.sandbox), self.artifacts.clone(), self.functions[&function].clone());
                    let expected = self.configured[&function].world();
                    tokio::task::spawn_blocking(move || load(&sandbox, &artifacts, &config, &entry, expected))
                        .await
                        .unwrap_or_else(|e| Err(LoadError::Unusable(format!("compiling panicked: {e}"))))
                }
            };
            match candidate {
                Ok(candidate) => {
                    self.candidates.insert(function, candidate);
                }
                Err(LoadError::Artifact(e)) => {
                    // Changed or lost on disk since it was verified: fetched again.
                    tracing::warn!(stage = "fleet", function = %function, error = %e, "kept artifact unusable; fetching it again");
                    if let Some(entry) =
                        self.record.update.as_ref().and_then(|u| u.target.functions.get(function.as_str()))
                    {
                        let _ = std::fs::remove_file(self.artifacts.path(&entry.sha256));
                    }
                    return self.advance(Stage::Fetched, "fetching an artifact again").await;
                }
                Err(LoadError::Unusable(reason)) => {
                    return self.give_up(function.as_str(), "does-not-load", &reason).await;
                }
            }
        }
        self.advance(Stage::Compiled, "compiled").await
    }

    /// The candidates that run in shadow: all but custom window aggregates, whose partials
    /// cannot be compared (they are judged on probation only).
    fn shadowed(&self) -> impl Iterator<Item = (&FunctionId, &Arc<CompiledFunction>)> {
        self.candidates.iter().filter(|(_, candidate)| candidate.world() != WorldKind::Accumulator)
    }

    /// Starts every candidate in shadow beside the version in service, in each of its uses.
    async fn begin_shadow(&mut self, uses: &[UseHandle]) -> Step {
        let Some(gates) = self.record.update.as_ref().map(|u| u.health.clone()) else { return Step::Idle };
        if gates.shadow_batches == 0 || self.shadowed().next().is_none() {
            return self.activate(uses).await;
        }
        let step = self.advance(Stage::Shadow, "in shadow").await;
        for (id, candidate) in self.shadowed() {
            for handle in uses.iter().filter(|handle| &handle.function_id == id) {
                handle.begin_shadow(Arc::clone(candidate), gates.tolerance);
            }
        }
        step
    }

    /// Judges the shadow runs: every candidate passed → they replace the running versions; one
    /// failed → the update ends there, nothing of it having run for real.
    async fn judge_shadow(&mut self, uses: &[UseHandle]) -> Step {
        let Some(gates) = self.record.update.as_ref().map(|u| u.health.clone()) else { return Step::Idle };
        let mut waiting = Vec::new();
        let mut failed = None;
        for (id, _) in self.shadowed() {
            let progress: Vec<ShadowProgress> = uses
                .iter()
                .filter(|handle| &handle.function_id == id)
                .map(|handle| ShadowProgress {
                    name: format!("{}/{}", handle.pipeline, handle.use_name),
                    report: handle.shadow_report(),
                })
                .collect();
            match health::shadow(&gates, &progress) {
                Judgement::Passed => {}
                Judgement::Waiting { calls, needed } => waiting.push(format!("{id}: {calls} of {needed} batches")),
                Judgement::Failed(why) => {
                    failed = Some((id.clone(), why));
                    break;
                }
            }
        }
        if failed.is_some() || waiting.is_empty() {
            for handle in uses {
                handle.end_shadow();
            }
        }
        if let Some((id, why)) = failed {
            return self.give_up(id.as_str(), "shadow", &format!("in shadow: {why}")).await;
        }
        if waiting.is_empty() {
            return self.activate(uses).await;
        }
        self.note_progress(format!("shadow: {}", waiting.join(", ")))
    }

    /// Puts the candidates in place of the running versions, persisted first.
    async fn activate(&mut self, uses: &[UseHandle]) -> Step {
        self.previous = self
            .candidates
            .keys()
            .map(|id| (id.clone(), Arc::clone(self.loaded.get(id).unwrap_or(&self.configured[id]))))
            .collect();
        let step = self.advance(Stage::Active, "on probation").await;
        stage_in(uses, &self.candidates);
        self.loaded.extend(self.candidates.iter().map(|(id, f)| (id.clone(), Arc::clone(f))));
        self.refresh_managed();
        step
    }

    /// Judges the probation of every candidate: commits when all passed, rolls back at the
    /// first failure.
    async fn judge(&mut self, uses: &[UseHandle]) -> Step {
        let Some(gates) = self.record.update.as_ref().map(|u| u.health.clone()) else { return Step::Idle };
        let mut waiting = Vec::new();
        for (id, candidate) in &self.candidates {
            let label = candidate.version().to_string();
            let progress: Vec<UseProgress> = uses
                .iter()
                .filter(|handle| &handle.function_id == id)
                .map(|handle| {
                    let record = handle.snapshot();
                    UseProgress {
                        name: format!("{}/{}", handle.pipeline, handle.use_name),
                        taken_up: record.function == label && !handle.has_staged_version(),
                        calls: record.version_calls,
                        quarantined: handle.quarantined_for().is_some(),
                    }
                })
                .collect();
            match health::probation(&gates, &progress) {
                Judgement::Passed => {}
                Judgement::Waiting { calls, needed } => waiting.push(format!("{id}: {calls} of {needed} calls")),
                Judgement::Failed(why) => return self.roll_back(uses, format!("{id} {why}")).await,
            }
        }
        if waiting.is_empty() {
            return self.commit().await;
        }
        self.note_progress(format!("probation: {}", waiting.join(", ")))
    }

    fn note_progress(&mut self, progress: String) -> Step {
        if progress == self.progress {
            return Step::Idle;
        }
        self.progress = progress;
        Step::Changed
    }

    async fn commit(&mut self) -> Step {
        let outcome = self.record.end_update(true, String::new(), clock::wall_seconds());
        self.persist().await;
        tracing::info!(
            stage = "fleet",
            document = outcome.scope_key,
            revision = outcome.revision,
            "update committed; floors raised"
        );
        let keep: BTreeSet<[u8; 32]> = self.record.committed.functions.values().map(|e| e.sha256).collect();
        self.artifacts.keep_only(&keep);
        self.end_update();
        Step::Changed
    }

    async fn roll_back(&mut self, uses: &[UseHandle], reason: String) -> Step {
        stage_in(uses, &self.previous);
        self.loaded.extend(self.previous.iter().map(|(id, f)| (id.clone(), Arc::clone(f))));
        self.fail_update(reason, "update rolled back").await
    }

    /// Ends an update that ran nothing, refused for `refusal` of `what`.
    async fn abandon(&mut self, what: &str, refusal: &weir_fleet::Refusal) -> Step {
        self.give_up(what, refusal.code(), &refusal.to_string()).await
    }

    /// Ends an update that ran nothing: `what` was refused with `code` for `reason`.
    async fn give_up(&mut self, what: &str, code: &str, reason: &str) -> Step {
        self.status.refused(what.to_owned(), code, reason.to_owned(), clock::wall_seconds());
        self.fail_update(format!("{what}: {reason} [{code}]"), "update refused").await
    }

    /// Ends the update as not committed for `reason`, persisted, and logs it as `what_happened`.
    async fn fail_update(&mut self, reason: String, what_happened: &str) -> Step {
        let outcome = self.record.end_update(false, reason, clock::wall_seconds());
        self.persist().await;
        tracing::error!(
            stage = "fleet",
            document = outcome.scope_key,
            revision = outcome.revision,
            reason = outcome.reason,
            "{what_happened}"
        );
        self.end_update();
        Step::Changed
    }

    /// After an update ended: nothing staged, the managed set as committed, and the next
    /// document in force considered.
    fn end_update(&mut self) {
        self.candidates.clear();
        self.previous.clear();
        self.progress.clear();
        self.refresh_managed();
        self.consider();
    }

    /// Tries again after a backoff: the server is away or not ready.
    fn later(&mut self, why: String) -> Step {
        let delay = self.retry.next_delay(&mut rand::rng());
        tracing::warn!(stage = "fleet", reason = why, retry_in = ?delay, "update waits");
        self.retry_at = Some(Instant::now() + delay);
        let changed = why != self.progress;
        self.progress = why;
        if changed { Step::Changed } else { Step::Idle }
    }

    async fn advance(&mut self, stage: Stage, progress: &str) -> Step {
        if let Some(update) = &mut self.record.update {
            update.stage = stage;
        }
        self.persist().await;
        self.progress = progress.to_owned();
        self.retry.reset();
        self.retry_at = None;
        Step::Changed
    }

    pub(super) fn refresh_managed(&self) {
        let running = &self.record.running().functions;
        self.managed.set(self.functions.keys().filter(|id| running.contains_key(id.as_str())).cloned().collect());
    }
}

/// Stages each function of `set` in every use of it.
fn stage_in(uses: &[UseHandle], set: &crate::fleet::CompiledSet) {
    for handle in uses {
        if let Some(function) = set.get(&handle.function_id) {
            handle.stage_version(Arc::clone(function));
        }
    }
}

/// Why a kept artifact cannot run.
#[derive(Debug)]
pub(super) enum LoadError {
    /// The file is missing or not the signed bytes any more.
    Artifact(crate::fleet::artifacts::LocalError),
    /// It does not compile, or implements another world than its uses need.
    Unusable(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Artifact(e) => e.fmt(f),
            LoadError::Unusable(reason) => f.write_str(reason),
        }
    }
}

/// Reads the kept artifact `entry` names, checks it again, and compiles it with the function's
/// configured limits; refuses it unless it implements `expected`, the world its uses need.
pub(super) fn load(
    sandbox: &Sandbox,
    artifacts: &LocalArtifacts,
    config: &FunctionConfig,
    entry: &FunctionTarget,
    expected: WorldKind,
) -> Result<Arc<CompiledFunction>, LoadError> {
    let function = config.id.as_str();
    let bytes = artifacts.read(function, entry).map_err(LoadError::Artifact)?;
    let config = FunctionConfig { component: artifacts.path(&entry.sha256), ..config.clone() };
    let compiled = sandbox.load_bytes(&config, &bytes).map_err(|e| LoadError::Unusable(e.to_string()))?;
    if compiled.world() != expected || world_name(expected) != entry.world.name() {
        return Err(LoadError::Unusable(format!(
            "{function} {} implements the {} world (signed: {}), its uses need {}",
            entry.version,
            world_name(compiled.world()),
            entry.world.name(),
            world_name(expected)
        )));
    }
    Ok(compiled)
}

fn world_name(world: WorldKind) -> &'static str {
    match world {
        WorldKind::Operator => "operator",
        WorldKind::Decoder => "decoder",
        WorldKind::Accumulator => "accumulator",
    }
}
