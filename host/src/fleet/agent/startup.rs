//! What runs when the gateway starts: the agent's record read, a restart mid-update resolved
//! (see `record`), and the function set it says runs compiled — all of it, or the set before it,
//! never half of each.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::Agent;
use super::steps::load;
use crate::backoff::Retry;
use crate::config::{FleetConfig, FunctionConfig, FunctionId, GatewayId};
use crate::fleet::artifacts::LocalArtifacts;
use crate::fleet::record::{AgentRecord, Installed, RECORD_KEY, Stage};
use crate::fleet::status::GatewayStatus;
use crate::fleet::{CompiledSet, Managed, clock};
use crate::sandbox::Sandbox;
use crate::state::{Committer, StateStore};

/// Reads the fleet's record, decides what runs (see the module docs) and puts those versions in
/// `compiled`, the set the pipelines are built with; returns the agent to run once they are.
/// An error leaves `compiled` as configured: the gateway runs without fleet updates.
#[allow(clippy::too_many_arguments)]
pub async fn prepare(
    settings: &FleetConfig,
    gateway: &GatewayId,
    data_dir: &std::path::Path,
    store: &StateStore,
    committer: &Committer,
    sandbox: &Arc<Sandbox>,
    functions: &BTreeMap<FunctionId, FunctionConfig>,
    compiled: &mut CompiledSet,
) -> Result<Agent, String> {
    let stored = store.fleet_record(RECORD_KEY).map_err(|e| e.to_string())?;
    let mut record = match &stored {
        Some(bytes) => AgentRecord::from_bytes(bytes).map_err(|e| e.to_string())?,
        None => AgentRecord::default(),
    };
    let root = record
        .trusted_root(&settings.root)
        .map_err(|refusal| format!("the trusted root {} is unusable: {refusal}", settings.root_path.display()))?;
    let weir = semver::Version::parse(env!("CARGO_PKG_VERSION")).expect("the crate's version is semver");
    let configured: CompiledSet = compiled.clone();
    let artifacts = LocalArtifacts::new(data_dir);
    if let Some(outcome) = record.at_start(clock::wall_seconds()) {
        tracing::error!(
            stage = "fleet",
            document = outcome.scope_key,
            revision = outcome.revision,
            reason = outcome.reason,
            "update rolled back at start"
        );
    }
    let loader = SetLoader { sandbox, artifacts: &artifacts, functions, configured: &configured };
    let loaded = match loader.load(record.running()).await {
        Ok(loaded) => loaded,
        Err(reason) if record.update.as_ref().is_some_and(|u| u.stage == Stage::Active) => {
            let outcome = record.end_update(false, format!("cannot start it again: {reason}"), clock::wall_seconds());
            tracing::error!(
                stage = "fleet",
                document = outcome.scope_key,
                revision = outcome.revision,
                reason = outcome.reason,
                "update rolled back at start"
            );
            loader.load(record.running()).await.unwrap_or_else(|reason| {
                tracing::error!(
                    stage = "fleet",
                    reason,
                    "the committed fleet functions cannot start; the configured components run"
                );
                CompiledSet::new()
            })
        }
        Err(reason) => {
            tracing::error!(
                stage = "fleet",
                reason,
                "the committed fleet functions cannot start; the configured components run"
            );
            CompiledSet::new()
        }
    };
    // During a probation the committed set is what a rollback goes back to.
    let (previous, candidates) = if record.update.as_ref().is_some_and(|u| u.stage == Stage::Active) {
        let committed = loader.load(&record.committed).await.unwrap_or_default();
        let previous =
            loaded.keys().map(|id| (id.clone(), committed.get(id).unwrap_or(&configured[id]).clone())).collect();
        (previous, loaded.clone())
    } else {
        (CompiledSet::new(), CompiledSet::new())
    };
    for (id, function) in &loaded {
        compiled.insert(id.clone(), Arc::clone(function));
    }
    let mut agent = Agent {
        me: weir_fleet::GatewayIdentity {
            id: gateway.to_string(),
            groups: settings.groups.iter().map(ToString::to_string).collect(),
        },
        status: GatewayStatus {
            gateway: gateway.to_string(),
            groups: settings.groups.iter().map(ToString::to_string).collect(),
            weir: weir.to_string(),
            heartbeat_seconds: settings.heartbeat.as_secs(),
            ..GatewayStatus::default()
        },
        weir,
        committer: committer.clone(),
        sandbox: Arc::clone(sandbox),
        functions: functions.clone(),
        configured,
        loaded,
        previous,
        candidates,
        record,
        root,
        artifacts,
        managed: Managed::default(),
        uses: Arc::default(),
        waiting_for_clock: BTreeMap::new(),
        progress: String::new(),
        retry_at: None,
        retry: Retry::new(settings.broker.reconnect),
        settings: settings.clone(),
    };
    agent.refresh_managed();
    if stored.as_deref() != Some(agent.record.to_bytes().as_slice()) {
        agent.persist().await;
    }
    Ok(agent)
}

/// Compiles a whole installed set from the kept artifacts.
struct SetLoader<'a> {
    sandbox: &'a Arc<Sandbox>,
    artifacts: &'a LocalArtifacts,
    functions: &'a BTreeMap<FunctionId, FunctionConfig>,
    configured: &'a CompiledSet,
}

impl SetLoader<'_> {
    /// Every configured function of `set`, compiled; the first that cannot be fails it all.
    async fn load(&self, set: &Installed) -> Result<CompiledSet, String> {
        let mut loaded = CompiledSet::new();
        for (name, entry) in &set.functions {
            let Some((id, config)) = self.functions.iter().find(|(id, _)| id.as_str() == name) else { continue };
            let (sandbox, artifacts, config, entry) =
                (Arc::clone(self.sandbox), self.artifacts.clone(), config.clone(), entry.clone());
            let expected = self.configured[id].world();
            let function = tokio::task::spawn_blocking(move || load(&sandbox, &artifacts, &config, &entry, expected))
                .await
                .map_err(|e| format!("compiling panicked: {e}"))?
                .map_err(|e| format!("{name}: {e}"))?;
            loaded.insert(id.clone(), function);
        }
        Ok(loaded)
    }
}
