//! A rollout: one release (a version of one or more functions) brought to many gateways in
//! waves, its state kept in the fleet's bucket (`rollout.<id>`, JSON) so the command driving it
//! can die and `weir fleet resume` carries on where it was.
//!
//! Pure: what the driver does next follows from the state and the gateways' statuses
//! ([`Rollout::observe`], [`Rollout::next`]); the driver (`weir fleet rollout`) writes the
//! documents and the state.
//!
//! A wave is done when each of its gateways committed the release or rolled it back (or is
//! still pending). The rollout stops — and its wave is reverted — as soon as the wave's
//! failures reach the failure threshold; it moves to the next wave once the wave's commits reach
//! the success threshold. A gateway that is offline stays pending: when the others are enough
//! the rollout moves on, and the gateway catches up when it returns (its document is written).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use weir_fleet::{FunctionTarget, HealthGates, World};

use super::status::GatewayStatus;

/// A release's entry for one function, as the rollout keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    /// The version label.
    pub version: String,
    /// The component's sha256, hex.
    pub sha256: String,
    /// Its length in bytes.
    pub length: u64,
    /// Its world's name.
    pub world: String,
    /// Its security counter.
    pub counter: u64,
}

impl Release {
    /// From a desired document's entry.
    pub fn of(entry: &FunctionTarget) -> Self {
        Release {
            version: entry.version.clone(),
            sha256: hex::encode(entry.sha256),
            length: entry.length,
            world: entry.world.name().to_owned(),
            counter: entry.counter,
        }
    }

    /// Back to a desired document's entry.
    pub fn entry(&self) -> Option<FunctionTarget> {
        let world = match self.world.as_str() {
            "operator" => World::Operator,
            "decoder" => World::Decoder,
            "accumulator" => World::Accumulator,
            _ => return None,
        };
        let sha256 = hex::decode(&self.sha256).ok()?.try_into().ok()?;
        Some(FunctionTarget {
            version: self.version.clone(),
            sha256,
            length: self.length,
            world,
            counter: self.counter,
        })
    }
}

/// How many of a wave: a number of gateways, or a share of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Threshold {
    /// This many gateways.
    Count(u32),
    /// This share, in percent (rounded up to a whole gateway).
    Percent(u32),
}

impl Threshold {
    /// Reads `3` or `25%`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let number = |t: &str| t.trim().parse::<u32>().map_err(|_| format!("{text:?} is not a number or a percentage"));
        match text.strip_suffix('%') {
            Some(percent) => {
                let percent = number(percent)?;
                if percent == 0 || percent > 100 {
                    return Err(format!("{text:?}: a share is 1% to 100%"));
                }
                Ok(Threshold::Percent(percent))
            }
            None => Ok(Threshold::Count(number(text)?)),
        }
    }

    /// The number of gateways it means out of `of`.
    pub fn of(self, of: usize) -> usize {
        match self {
            Threshold::Count(n) => n as usize,
            Threshold::Percent(p) => (of * p as usize).div_ceil(100),
        }
    }
}

impl std::fmt::Display for Threshold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Threshold::Count(n) => write!(f, "{n}"),
            Threshold::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Splits `gateways` into waves; each size is cumulative (`1, 10%, 100%`: one canary, then up
/// to a tenth of all, then the rest), and each wave has at least one gateway; what the sizes
/// leave over goes into a last wave.
pub fn waves(gateways: &[String], sizes: &[Threshold]) -> Vec<Vec<String>> {
    let mut waves = Vec::new();
    let mut taken = 0;
    for size in sizes {
        if taken >= gateways.len() {
            break;
        }
        let upto = size.of(gateways.len()).clamp(taken + 1, gateways.len());
        waves.push(gateways[taken..upto].to_vec());
        taken = upto;
    }
    if taken < gateways.len() {
        waves.push(gateways[taken..].to_vec());
    }
    waves
}

/// Where a rollout is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    /// Being driven.
    Running,
    /// Stopped by `weir fleet pause` (or a wave that waited too long): `resume` carries on.
    Paused { reason: String },
    /// Stopped by `weir fleet abort`: its wave reverted.
    Aborted,
    /// Stopped by the failure threshold: its wave reverted.
    Failed { reason: String },
    /// Every wave done.
    Done,
}

/// One gateway's part in a rollout.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    /// Its wave.
    pub wave: usize,
    /// The revision of its desired document that carries the release, once written.
    pub assigned: Option<u64>,
    /// When it was written, seconds since the epoch.
    pub assigned_at: u64,
    /// What it ran of each released function before (`None`: its configured component).
    pub previous: BTreeMap<String, Option<Release>>,
    /// How it went.
    pub outcome: PartOutcome,
}

/// How one gateway's part went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum PartOutcome {
    /// Not written yet, or written and not finished.
    Pending,
    /// The gateway committed the release.
    Committed,
    /// The gateway rolled it back (or refused it), for this reason.
    RolledBack { reason: String },
    /// The rollout stopped and put its previous versions back.
    Reverted,
}

/// A rollout's state, as kept in the bucket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rollout {
    /// Its id.
    pub id: String,
    /// When it started, seconds since the epoch.
    pub started: u64,
    /// The release, per function.
    pub release: BTreeMap<String, Release>,
    /// The health gates every document the rollout writes carries.
    pub health: HealthGates,
    /// The gateways, wave by wave.
    pub waves: Vec<Vec<String>>,
    /// Commits in a wave that let the next one start.
    pub success_threshold: Threshold,
    /// Failures in a wave that stop the rollout.
    pub failure_threshold: Threshold,
    /// How long a wave may take before the rollout pauses, seconds.
    pub wave_timeout: u64,
    /// The wave in progress.
    pub current: usize,
    /// When it started, seconds since the epoch.
    pub current_since: u64,
    /// Where the rollout is.
    pub state: State,
    /// Each gateway's part.
    pub parts: BTreeMap<String, Part>,
}

/// What the driver does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Next {
    /// Write the release into these gateways' documents.
    Assign(Vec<String>),
    /// Wait for the gateways.
    Wait,
    /// The current wave passed: start the next.
    Advance,
    /// Every wave passed.
    Finish,
    /// Stop: the wave failed (reason); revert it.
    Stop(String),
    /// The wave took too long: pause (reason).
    Pause(String),
    /// Nothing to drive (paused, aborted, failed or done).
    Idle,
}

impl Rollout {
    /// Takes each assigned gateway's outcome from its status: the outcome of the revision the
    /// rollout wrote for it.
    pub fn observe(&mut self, statuses: &BTreeMap<String, GatewayStatus>) {
        for (gateway, part) in &mut self.parts {
            let (Some(revision), PartOutcome::Pending) = (part.assigned, &part.outcome) else { continue };
            let Some(status) = statuses.get(gateway) else { continue };
            let key = super::central::desired_key(&weir_fleet::Scope::Gateway(gateway.clone()));
            if let Some(outcome) = status.outcomes.iter().find(|o| o.scope_key == key && o.revision == revision) {
                part.outcome = if outcome.committed {
                    PartOutcome::Committed
                } else {
                    PartOutcome::RolledBack { reason: outcome.reason.clone() }
                };
            }
        }
    }

    /// The current wave's gateways.
    pub fn wave(&self) -> &[String] {
        self.waves.get(self.current).map_or(&[], Vec::as_slice)
    }

    /// What the driver does next at `now`.
    pub fn next(&self, now: u64) -> Next {
        if self.state != State::Running {
            return Next::Idle;
        }
        let wave = self.wave();
        if wave.is_empty() {
            return Next::Finish;
        }
        let unassigned: Vec<String> =
            wave.iter().filter(|g| self.parts.get(*g).is_none_or(|p| p.assigned.is_none())).cloned().collect();
        if !unassigned.is_empty() {
            return Next::Assign(unassigned);
        }
        let count = |wanted: fn(&PartOutcome) -> bool| {
            wave.iter().filter(|g| self.parts.get(*g).is_some_and(|p| wanted(&p.outcome))).count()
        };
        let failed = count(|o| matches!(o, PartOutcome::RolledBack { .. }));
        let committed = count(|o| matches!(o, PartOutcome::Committed));
        let failure_limit = self.failure_threshold.of(wave.len()).max(1);
        if failed >= failure_limit {
            let reasons: Vec<String> = wave
                .iter()
                .filter_map(|g| match &self.parts.get(g)?.outcome {
                    PartOutcome::RolledBack { reason } => Some(format!("{g}: {reason}")),
                    _ => None,
                })
                .collect();
            return Next::Stop(format!(
                "wave {} failed on {failed} of {} gateway(s): {}",
                self.current + 1,
                wave.len(),
                reasons.join("; ")
            ));
        }
        if committed >= self.success_threshold.of(wave.len()).max(1) {
            return if self.current + 1 >= self.waves.len() { Next::Finish } else { Next::Advance };
        }
        if now > self.current_since.saturating_add(self.wave_timeout) {
            let pending: Vec<&str> = wave
                .iter()
                .filter(|g| self.parts.get(*g).is_some_and(|p| p.outcome == PartOutcome::Pending))
                .map(String::as_str)
                .collect();
            return Next::Pause(format!(
                "wave {} waited more than {} s for {}",
                self.current + 1,
                self.wave_timeout,
                pending.join(", ")
            ));
        }
        Next::Wait
    }

    /// Counts of the parts of wave `index`: (committed, rolled back, pending, reverted).
    pub fn tally(&self, index: usize) -> (usize, usize, usize, usize) {
        let mut tally = (0, 0, 0, 0);
        for gateway in self.waves.get(index).into_iter().flatten() {
            match self.parts.get(gateway).map(|p| &p.outcome) {
                Some(PartOutcome::Committed) => tally.0 += 1,
                Some(PartOutcome::RolledBack { .. }) => tally.1 += 1,
                Some(PartOutcome::Reverted) => tally.3 += 1,
                Some(PartOutcome::Pending) | None => tally.2 += 1,
            }
        }
        tally
    }
}

#[cfg(test)]
#[path = "rollout/tests.rs"]
mod tests;
