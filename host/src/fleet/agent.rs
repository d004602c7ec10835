//! The fleet agent: one task per gateway that follows the desired documents for this gateway
//! and its groups, and carries an update through its stages (see `record`).
//!
//! It reacts to three things: a watched document's value (verified, accepted or refused), a tick
//! every second (the update's next step, the probation's verdict, a root rotation, documents
//! waiting for the clock) and the heartbeat (its status written to the status bucket). It works
//! offline: what it accepted is in the state store, an update whose artifacts are on disk goes
//! on without the server, and talking to the server again is retried with backoff, each gateway
//! at its own jittered pace.
//!
//! **Invariants:** the record is committed before what it says is done (a stage is persisted
//! before its versions are staged in the uses), so after a crash the gateway runs either the
//! set before or the set after; nothing fetched is compiled before its signed length and digest
//! checked; a document is accepted only under the trusted root, never by where it was read.

mod startup;
mod steps;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use weir_fleet::{Desired, GatewayIdentity, Refusal, Signed, TrustedRoot, Verdict};

use super::artifacts::LocalArtifacts;
use super::central::{self, Central, Watched};
use super::record::{AgentRecord, RECORD_KEY, Stage};
use super::status::{DocumentRef, GatewayStatus, RunningFunction, UpdateStatus};
use super::{CompiledSet, Managed, clock};
use crate::backoff::Retry;
use crate::config::{FleetConfig, FunctionConfig, FunctionId};
use crate::sandbox::{Sandbox, UseHandle};
use crate::state::{ChangeSet, Committer};

pub use startup::prepare;

/// How often the agent looks at its update and probation: a failing candidate is caught within
/// this of its failure.
const TICK: Duration = Duration::from_millis(250);

/// The fleet agent of one gateway.
#[derive(Debug)]
pub struct Agent {
    settings: FleetConfig,
    me: GatewayIdentity,
    weir: semver::Version,
    committer: Committer,
    sandbox: Arc<Sandbox>,
    /// The configured functions.
    functions: BTreeMap<FunctionId, FunctionConfig>,
    /// Their configured components, compiled.
    configured: CompiledSet,
    /// What runs now, per function the fleet manages or managed.
    loaded: CompiledSet,
    /// During a probation: what runs if it fails.
    previous: CompiledSet,
    /// From `compiled` on: the candidates.
    candidates: CompiledSet,
    record: AgentRecord,
    root: TrustedRoot,
    artifacts: LocalArtifacts,
    status: GatewayStatus,
    managed: Managed,
    /// Every function use of the gateway's pipelines (set when the agent runs).
    uses: Arc<Vec<UseHandle>>,
    /// Accepted-looking documents that wait for the clock to be synced, by key.
    waiting_for_clock: BTreeMap<String, Vec<u8>>,
    /// What the update waits for or how far it is, in words.
    progress: String,
    /// When the update may next try what failed for want of the server.
    retry_at: Option<Instant>,
    retry: Retry,
}

/// What woke the agent.
enum Wake {
    /// A document arrived (or was removed) under a watched key.
    Document(String, Watched),
    /// Time to take the update's next step.
    Tick,
    /// Time to write the status.
    Heartbeat,
}

impl Agent {
    /// The functions whose versions the fleet decides, for the SIGHUP reload to leave alone.
    pub fn managed(&self) -> Managed {
        self.managed.clone()
    }

    /// Runs until `shutdown`: watches the documents, drives the update, writes the heartbeat.
    pub async fn run(mut self, uses: Arc<Vec<UseHandle>>, shutdown: CancellationToken) {
        self.uses = Arc::clone(&uses);
        let (documents, mut arrived) = mpsc::channel::<(String, Watched)>(16);
        let central = connect(self.settings.broker.clone(), self.me.id.clone(), shutdown.clone());
        tokio::pin!(central);
        let mut central_ready: Option<Central> = None;
        let mut tick = tokio::time::interval(TICK);
        let mut heartbeat = tokio::time::interval(self.settings.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.consider();
        loop {
            let event = tokio::select! {
                () = shutdown.cancelled() => break,
                connected = &mut central, if central_ready.is_none() => {
                    let Some(connected) = connected else { break };
                    for key in self.watched_keys() {
                        tokio::spawn(watch(connected.clone(), key, documents.clone(), self.retry_policy(), shutdown.clone()));
                    }
                    central_ready = Some(connected);
                    continue;
                }
                Some((key, value)) = arrived.recv() => Wake::Document(key, value),
                _ = tick.tick() => Wake::Tick,
                _ = heartbeat.tick() => Wake::Heartbeat,
            };
            // What a wake-up does may wait on the server; stopping does not wait for it (each
            // step persists its record before acting, and a restart resumes from the record).
            let handled = self.handle(event, central_ready.as_ref(), &uses);
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = handled => {}
            }
        }
    }

    async fn handle(&mut self, event: Wake, central: Option<&Central>, uses: &[UseHandle]) {
        match event {
            Wake::Document(key, value) => {
                self.document(&key, value).await;
                self.publish_status(central).await;
            }
            Wake::Tick => {
                if self.step(central, uses).await {
                    self.publish_status(central).await;
                }
            }
            Wake::Heartbeat => {
                if let Some(central) = central {
                    self.rotate_root(central).await;
                }
                self.publish_status(central).await;
            }
        }
    }

    fn retry_policy(&self) -> crate::config::Backoff {
        self.settings.broker.reconnect
    }

    /// The document keys this gateway follows, in precedence order.
    fn watched_keys(&self) -> Vec<String> {
        let gateway = weir_fleet::Scope::Gateway(self.me.id.clone());
        std::iter::once(central::desired_key(&gateway))
            .chain(self.me.groups.iter().map(|g| central::desired_key(&weir_fleet::Scope::Group(g.clone()))))
            .collect()
    }

    /// A watched document's value: verified, checked, and kept when accepted.
    async fn document(&mut self, key: &str, value: Watched) {
        let Watched::Value(bytes) = value else {
            tracing::info!(stage = "fleet", key, "document removed from the bucket; the accepted one stays in force");
            return;
        };
        match self.accept(key, &bytes) {
            Ok(Verdict::Held) => {}
            Ok(Verdict::Newer) => {
                self.waiting_for_clock.remove(key);
                self.record.held.insert(key.to_owned(), bytes.into());
                self.persist().await;
                self.consider();
            }
            Err(refusal) => {
                if refusal.is_pending() {
                    self.waiting_for_clock.insert(key.to_owned(), bytes);
                }
                self.refused(key.to_owned(), &refusal);
            }
        }
    }

    /// Whether the document read under `key` is accepted.
    fn accept(&self, key: &str, bytes: &[u8]) -> Result<Verdict, Refusal> {
        let document: Desired = Signed::from_bytes(bytes)?.verify(&self.root)?;
        if central::desired_key(&document.scope) != key {
            return Err(Refusal::NotForThisGateway { scope: document.scope });
        }
        let held = self.record.held(key, &self.root);
        let now = clock::now(&self.settings.clock_synced);
        weir_fleet::check_desired(&document, &self.me, held.as_ref(), &self.record.floors(), now, &self.root)
    }

    fn refused(&mut self, what: String, refusal: &Refusal) {
        tracing::warn!(stage = "fleet", what, code = refusal.code(), reason = %refusal, "fleet document refused");
        self.status.refused(what, refusal.code(), refusal.to_string(), clock::wall_seconds());
    }

    /// The document in force: this gateway's own, else its first group's that has one.
    fn in_force(&self) -> Option<(String, Desired)> {
        self.watched_keys().into_iter().find_map(|key| self.record.held(&key, &self.root).map(|d| (key, d)))
    }

    /// Starts an update when the document in force asks for another set than runs or is being
    /// installed. A newer document replaces an update that runs nothing yet; an active one
    /// finishes its probation first.
    fn consider(&mut self) {
        let Some((key, document)) = self.in_force() else { return };
        let running = self.record.running();
        if running.scope_key == key && running.revision == document.revision {
            return;
        }
        if let Some(update) = &self.record.update {
            let same = update.target.scope_key == key && update.target.revision == document.revision;
            if same || update.stage == Stage::Active {
                return;
            }
        }
        if self.record.rolled_back(&key, document.revision) {
            return;
        }
        if self.record.update.as_ref().is_some_and(|u| u.stage == Stage::Shadow) {
            for handle in self.uses.iter() {
                handle.end_shadow();
            }
        }
        tracing::info!(stage = "fleet", document = key, revision = document.revision, "update started");
        self.record.update = Some(super::record::Update {
            target: super::record::Installed::of(&key, &document),
            stage: Stage::Fetched,
            restarts: 0,
            health: document.health.clone(),
        });
        self.candidates.clear();
        self.retry_at = None;
        self.retry.reset();
    }

    /// Commits the record; retried until it is durable (the committer reopens a failed store).
    async fn persist(&mut self) {
        let bytes = self.record.to_bytes();
        let mut retry = Retry::new(self.settings.broker.reconnect);
        loop {
            let change =
                ChangeSet { fleet: vec![(RECORD_KEY.to_owned(), Some(bytes.clone()))], ..ChangeSet::default() };
            match self.committer.commit(change).await {
                Ok(()) => return,
                Err(e) => {
                    let delay = retry.next_delay(&mut rand::rng());
                    tracing::error!(stage = "fleet", error = %e.error, retry_in = ?delay, "cannot commit the fleet record");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// Takes the next root from the bucket when there is one (`root.<version + 1>`), one
    /// version at a time, each checked by the one before.
    async fn rotate_root(&mut self, central: &Central) {
        loop {
            let next = central::root_key(self.root.root().version + 1);
            let Ok(Some((bytes, _))) = central.document(&next).await else { return };
            match Signed::from_bytes(&bytes).and_then(|signed| self.root.update(&signed)) {
                Ok(newer) => {
                    tracing::info!(stage = "fleet", version = newer.root().version, "trusted root rotated");
                    self.root = newer;
                    self.record.root = bytes;
                    self.persist().await;
                }
                Err(refusal) => {
                    self.refused(next, &refusal);
                    return;
                }
            }
        }
    }

    /// Writes the status to the bucket (when connected).
    async fn publish_status(&mut self, central: Option<&Central>) {
        self.refresh_status();
        let Some(central) = central else { return };
        if let Err(e) = central.put_status(&self.me.id, self.status.to_json()).await {
            tracing::debug!(stage = "fleet", error = %e, "status not written");
        }
    }

    fn refresh_status(&mut self) {
        let in_force = self.in_force().map(|(key, document)| document_ref(key, &document));
        let status = &mut self.status;
        status.at = clock::wall_seconds();
        status.clock_synced = matches!(clock::now(&self.settings.clock_synced), weir_fleet::Clock::Synced(_));
        status.root_version = self.root.root().version;
        let running = self.record.running();
        status.desired = in_force;
        status.running = running
            .functions
            .iter()
            .map(|(name, entry)| {
                let function = RunningFunction {
                    version: entry.version.clone(),
                    sha256: hex::encode(entry.sha256),
                    counter: entry.counter,
                };
                (name.clone(), function)
            })
            .collect();
        status.update = self.record.update.as_ref().map(|update| UpdateStatus {
            document: DocumentRef {
                key: update.target.scope_key.clone(),
                revision: update.target.revision,
                rollout: None,
            },
            stage: update.stage.name().to_owned(),
            progress: self.progress.clone(),
        });
        status.outcomes.clone_from(&self.record.outcomes);
        status.floors.clone_from(&self.record.floors);
    }
}

/// Connects to the broker and opens the buckets, retrying with backoff until it works or the
/// gateway stops.
async fn connect(broker: crate::config::BrokerConfig, gateway: String, shutdown: CancellationToken) -> Option<Central> {
    let who =
        crate::source::NatsClient { name: format!("weir {gateway} fleet"), stage: "fleet", pipeline: String::new() };
    let mut retry = Retry::new(broker.reconnect);
    let client = match crate::source::nats_connect(&broker, who, None).await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(stage = "fleet", error = %e, "cannot use the fleet's broker settings; no fleet updates");
            shutdown.cancelled().await;
            return None;
        }
    };
    loop {
        match Central::open(client.clone()).await {
            Ok(central) => {
                tracing::info!(stage = "fleet", broker = %broker.url, "fleet buckets open");
                return Some(central);
            }
            Err(e) => {
                let delay = retry.next_delay(&mut rand::rng());
                tracing::warn!(stage = "fleet", error = %e, retry_in = ?delay, "cannot open the fleet's buckets");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

fn document_ref(key: String, document: &Desired) -> DocumentRef {
    DocumentRef {
        key,
        revision: document.revision,
        rollout: document.rollout.as_ref().map(|tag| (tag.id.clone(), tag.wave)),
    }
}

/// Follows one key: its value now, then each change, forwarded to the agent; after a failure
/// (the connection lost, the server restarted) it watches again after a jittered backoff, so
/// a fleet reconnecting at once does not storm the server.
async fn watch(
    central: Central,
    key: String,
    documents: mpsc::Sender<(String, Watched)>,
    policy: crate::config::Backoff,
    shutdown: CancellationToken,
) {
    let mut retry = Retry::new(policy);
    loop {
        match central.watch_document(&key).await {
            Ok(mut changes) => loop {
                let next = tokio::select! {
                    () = shutdown.cancelled() => return,
                    next = changes.next() => next,
                };
                match next {
                    Some(Ok(value)) => {
                        retry.reset();
                        if documents.send((key.clone(), value)).await.is_err() {
                            return;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::warn!(stage = "fleet", key, error = %e, "watch failed");
                        break;
                    }
                    None => break,
                }
            },
            Err(e) => tracing::warn!(stage = "fleet", key, error = %e, "cannot watch"),
        }
        let delay = retry.next_delay(&mut rand::rng());
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}
