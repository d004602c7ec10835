//! What the fleet agent keeps in the state store, and what a gateway runs when it starts.
//!
//! One record, [`AgentRecord`], under one key of the store's `fleet` table, rewritten whole (in
//! one commit) at every step, so the store never holds half a step: the trusted root, the desired
//! documents accepted per scope, the anti-rollback floors, the function set last committed, the
//! update under way with its stage, and the last outcomes.
//!
//! **Stages.** An update moves `fetched → verified → compiled → shadow → active`, then ends
//! committed (the floors raised) or rolled back (with the reason). Until it is active nothing of
//! it runs; once active its whole set runs. [`AgentRecord::at_start`] decides what runs after a
//! restart: an update not yet active starts again from its artifacts on disk, with the committed
//! set running meanwhile (its artifacts are checked again before they compile); an active one resumes its probation once, and is rolled back if the
//! gateway restarts again before the probation ends — a candidate that brings the gateway down
//! does not keep doing it. Either way the gateway runs one whole set, never half of two.

use std::collections::BTreeMap;

use minicbor::{Decode, Encode};
use weir_fleet::{Desired, Floors, FunctionTarget, HealthGates, Signed, TrustedRoot};

/// The key the record is stored under.
pub const RECORD_KEY: &str = "agent";
/// Outcomes kept for status.
const OUTCOMES_KEPT: usize = 8;

/// Where an update is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Encode, Decode)]
#[cbor(index_only)]
pub enum Stage {
    /// Its document is accepted; its targets and artifacts are being fetched.
    #[n(0)]
    Fetched,
    /// Every target verified and every artifact is on disk with its signed length and digest.
    #[n(1)]
    Verified,
    /// Every component compiled and of the world its uses need.
    #[n(2)]
    Compiled,
    /// The candidates run beside the running versions, their output compared, never sent.
    #[n(3)]
    Shadow,
    /// The candidates run in place of the previous versions, on probation.
    #[n(4)]
    Active,
}

impl Stage {
    /// Its name in status.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Fetched => "fetched",
            Stage::Verified => "verified",
            Stage::Compiled => "compiled",
            Stage::Shadow => "shadow",
            Stage::Active => "active",
        }
    }
}

/// A function set the fleet installed: per function, the target it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
#[cbor(map)]
pub struct Installed {
    /// The desired document's key (`desired.gateway.<id>` or `desired.group.<name>`).
    #[n(0)]
    pub scope_key: String,
    /// Its revision.
    #[n(1)]
    pub revision: u64,
    /// What each function runs.
    #[n(2)]
    pub functions: BTreeMap<String, FunctionTarget>,
    /// The floors the document asks for once it is committed.
    #[n(3)]
    pub floors: BTreeMap<String, u64>,
}

impl Installed {
    /// The set `document`, accepted under `scope_key`, asks for.
    pub fn of(scope_key: &str, document: &Desired) -> Self {
        Installed {
            scope_key: scope_key.to_owned(),
            revision: document.revision,
            functions: document.functions.clone(),
            floors: document.floors.clone(),
        }
    }
}

/// The update under way.
#[derive(Clone, Debug, PartialEq, Encode, Decode)]
#[cbor(map)]
pub struct Update {
    /// The set it installs.
    #[n(0)]
    pub target: Installed,
    /// Where it is.
    #[n(1)]
    pub stage: Stage,
    /// Restarts of the gateway while it was active.
    #[n(2)]
    pub restarts: u32,
    /// The gates its candidates pass.
    #[n(3)]
    pub health: HealthGates,
}

/// How an update ended.
#[derive(Clone, Debug, PartialEq, Eq, Encode, Decode, serde::Serialize, serde::Deserialize)]
#[cbor(map)]
pub struct Outcome {
    /// The desired document's key.
    #[n(0)]
    pub scope_key: String,
    /// Its revision.
    #[n(1)]
    pub revision: u64,
    /// Committed, or rolled back.
    #[n(2)]
    pub committed: bool,
    /// Why it was rolled back (empty when committed).
    #[n(3)]
    pub reason: String,
    /// When, in seconds since the epoch (0: the clock was not synced).
    #[n(4)]
    pub at: u64,
}

/// Everything the agent keeps.
#[derive(Clone, Debug, Default, PartialEq, Encode, Decode)]
#[cbor(map)]
pub struct AgentRecord {
    /// The trusted root, as signed.
    #[n(0)]
    #[cbor(with = "minicbor::bytes")]
    pub root: Vec<u8>,
    /// The accepted desired document per scope key, as signed.
    #[n(1)]
    pub held: BTreeMap<String, minicbor::bytes::ByteVec>,
    /// The anti-rollback floors.
    #[n(2)]
    pub floors: BTreeMap<String, u64>,
    /// The set last committed (empty: the configured components).
    #[n(3)]
    pub committed: Installed,
    /// The update under way.
    #[n(4)]
    pub update: Option<Update>,
    /// The newest outcomes, oldest first.
    #[n(5)]
    pub outcomes: Vec<Outcome>,
}

/// A stored record that does not decode.
#[derive(Debug, thiserror::Error)]
#[error("the fleet agent's record in the state store does not decode: {0}")]
pub struct RecordError(String);

impl AgentRecord {
    /// Its stored bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        minicbor::to_vec(self).expect("writing to a Vec cannot fail")
    }

    /// Reads stored bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, RecordError> {
        minicbor::decode(bytes).map_err(|e| RecordError(e.to_string()))
    }

    /// The trusted root: the stored one, else `file` (the operator's root file) installed; a
    /// root file that is the stored root's next version is taken (and stored from then on).
    pub fn trusted_root(&mut self, file: &Signed) -> Result<TrustedRoot, weir_fleet::Refusal> {
        if self.root.is_empty() {
            let root = TrustedRoot::install(file)?;
            self.root = file.to_bytes();
            return Ok(root);
        }
        let stored = TrustedRoot::install(&Signed::from_bytes(&self.root)?)?;
        match stored.update(file) {
            Ok(newer) => {
                self.root = file.to_bytes();
                Ok(newer)
            }
            Err(_) => Ok(stored),
        }
    }

    /// The floors as the acceptance rules take them.
    pub fn floors(&self) -> Floors {
        Floors(self.floors.clone())
    }

    /// The accepted desired document for `scope_key`, decoded (verified when it was accepted).
    pub fn held(&self, scope_key: &str, root: &TrustedRoot) -> Option<Desired> {
        let signed = Signed::from_bytes(self.held.get(scope_key)?).ok()?;
        signed.verify(root).ok()
    }

    /// What runs now: the active update's set, else the committed one.
    pub fn running(&self) -> &Installed {
        match &self.update {
            Some(update) if update.stage == Stage::Active => &update.target,
            _ => &self.committed,
        }
    }

    /// Decides what runs after a restart (see the module docs); returns the outcome of an update
    /// this rolls back.
    pub fn at_start(&mut self, now: u64) -> Option<Outcome> {
        let update = self.update.as_mut()?;
        match update.stage {
            Stage::Active if update.restarts >= 1 => {
                let reason = "the gateway restarted twice during the probation".to_owned();
                Some(self.end_update(false, reason, now))
            }
            Stage::Active => {
                update.restarts += 1;
                None
            }
            // Not running yet: compiled again from the artifacts on disk (checked again there).
            Stage::Compiled | Stage::Shadow => {
                update.stage = Stage::Verified;
                None
            }
            Stage::Fetched | Stage::Verified => None,
        }
    }

    /// Ends the update: committed (its set becomes the committed one and the floors rise, see
    /// [`Floors::raise_on_commit`]) or rolled back for `reason`.
    pub fn end_update(&mut self, committed: bool, reason: String, now: u64) -> Outcome {
        let update = self.update.take().expect("an update is under way");
        if committed {
            let mut floors = self.floors();
            floors.raise_on_commit(&update.target.functions, &update.target.floors);
            self.floors = floors.0;
            self.committed = update.target.clone();
        }
        let outcome = Outcome {
            scope_key: update.target.scope_key,
            revision: update.target.revision,
            committed,
            reason: if committed { String::new() } else { reason },
            at: now,
        };
        self.outcomes.push(outcome.clone());
        if self.outcomes.len() > OUTCOMES_KEPT {
            self.outcomes.remove(0);
        }
        outcome
    }

    /// Whether the revision of `scope_key` was already tried and rolled back.
    pub fn rolled_back(&self, scope_key: &str, revision: u64) -> bool {
        self.outcomes.iter().any(|o| !o.committed && o.scope_key == scope_key && o.revision == revision)
    }
}

#[cfg(test)]
#[path = "record/tests.rs"]
mod tests;
