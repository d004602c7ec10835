//! The gateway's side of the fleet: the agent that takes signed function updates from the
//! central NATS server, tries them and keeps or rolls them back by itself.
//!
//! ```text
//! desired.gateway.<id> / desired.group.<g>  (watched: value first, then changes)
//!   │ verified under the trusted root, accepted by weir_fleet::accept      refusal → status
//!   ▼
//! update: fetched → verified → compiled → active (probation) → committed | rolled back
//!   │ targets verified and paired with the document; artifacts streamed through the signed
//!   │ length and digest check into <data_dir>/fleet/artifacts; compiled through the sandbox
//!   │ (and its compiled-artifact cache's own check); staged in every use (hot swap with state)
//!   ▼
//! status bucket: a heartbeat with what runs, the update's stage, outcomes, refusals
//! ```
//!
//! Parts: the buckets (`central`, the only module here that talks to NATS), the persisted
//! record and what runs after a restart (`record`), the kept artifacts (`artifacts`), the health
//! gates judged (`health`), the clock (`clock`), the status document (`status`), and the agent
//! that drives it all (`agent`). What runs at start is decided by [`prepare`] before the
//! pipelines are built, so a gateway restarted mid-update starts with one whole function set.

mod agent;
mod artifacts;
pub mod central;
mod clock;
mod health;
mod record;
pub mod rollout;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, PoisonError};

pub use agent::Agent;
pub use record::{Outcome, Stage};

use crate::config::FunctionId;

/// The functions whose versions the fleet decides now: a SIGHUP reload leaves them alone.
#[derive(Clone, Debug, Default)]
pub struct Managed(Arc<Mutex<BTreeSet<FunctionId>>>);

impl Managed {
    /// Whether the fleet decides `function`'s version.
    pub fn contains(&self, function: &FunctionId) -> bool {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).contains(function)
    }

    fn set(&self, functions: BTreeSet<FunctionId>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = functions;
    }
}

/// A compiled function set, by function.
pub type CompiledSet = BTreeMap<FunctionId, Arc<crate::sandbox::CompiledFunction>>;

pub use agent::prepare;
