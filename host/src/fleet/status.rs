//! A gateway's fleet status: what it writes to the status bucket every heartbeat (JSON, so a
//! fleet manager can also read it with the `nats` tool), and what `weir fleet status` shows.
//!
//! A status says when it was written and how often the gateway writes one, so a reader tells a
//! silent gateway (stale) from a healthy one without trusting the gateway's word.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::record::Outcome;

/// Refusals kept in a status, newest last.
pub const REFUSALS_KEPT: usize = 16;

/// One gateway's status.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GatewayStatus {
    /// Its `[gateway] id`.
    pub gateway: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// The weir version it runs.
    pub weir: String,
    /// When this status was written, seconds since the epoch by the gateway's clock.
    pub at: u64,
    /// Seconds until the next status; a reader counts the gateway stale after about twice this.
    pub heartbeat_seconds: u64,
    /// Whether its clock is synced.
    pub clock_synced: bool,
    /// The trusted root's version.
    pub root_version: u64,
    /// The desired document it follows (`desired.gateway.<id>` or `desired.group.<name>`) and
    /// its revision, if any.
    pub desired: Option<DocumentRef>,
    /// What each fleet-managed function runs now.
    pub running: BTreeMap<String, RunningFunction>,
    /// The update under way, if any.
    pub update: Option<UpdateStatus>,
    /// The newest outcomes, oldest first.
    pub outcomes: Vec<Outcome>,
    /// The newest refusals, oldest first.
    pub refusals: Vec<RefusalStatus>,
    /// The anti-rollback floors.
    pub floors: BTreeMap<String, u64>,
}

/// A desired document by its key and revision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocumentRef {
    /// Its key in the documents bucket.
    pub key: String,
    /// Its revision.
    pub revision: u64,
    /// The rollout and wave that wrote it, if any.
    pub rollout: Option<(String, u32)>,
}

/// The version a function runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunningFunction {
    /// The version label.
    pub version: String,
    /// The component's sha256, hex.
    pub sha256: String,
    /// Its security counter.
    pub counter: u64,
}

/// The update under way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// The document it installs.
    pub document: DocumentRef,
    /// Its stage (`fetched`, `verified`, `compiled`, `shadow`, `active`).
    pub stage: String,
    /// What it waits for or how far it is, in words.
    pub progress: String,
}

/// Something the gateway refused, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalStatus {
    /// What was refused (a document's key, an artifact's function and version).
    pub what: String,
    /// The refusal's code (`signatures`, `artifact-digest`, …).
    pub code: String,
    /// Why, in words.
    pub reason: String,
    /// When, seconds since the epoch by the gateway's clock.
    pub at: u64,
}

impl GatewayStatus {
    /// Notes a refusal, keeping the newest [`REFUSALS_KEPT`]; the same refusal of the same thing
    /// again only moves it to the end.
    pub fn refused(&mut self, what: String, code: &str, reason: String, at: u64) {
        self.refusals.retain(|r| !(r.what == what && r.code == code));
        self.refusals.push(RefusalStatus { what, code: code.to_owned(), reason, at });
        if self.refusals.len() > REFUSALS_KEPT {
            self.refusals.remove(0);
        }
    }

    /// Its bytes in the status bucket.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a status serialises")
    }

    /// Reads a status from the bucket.
    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// Whether a reader at `now` should count the gateway stale: no status for more than two
    /// heartbeats (and ten seconds of slack for clocks and the bucket).
    pub fn is_stale(&self, now: u64) -> bool {
        now > self.at.saturating_add(self.heartbeat_seconds.saturating_mul(2)).saturating_add(10)
    }
}
