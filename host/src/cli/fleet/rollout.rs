//! `weir fleet plan | rollout | pause | resume | abort`: a release brought to many gateways in
//! waves.
//!
//! `rollout` writes the rollout's state to the bucket (`rollout.<id>`) before anything else and
//! drives it from there: each step re-reads the state and the gateways' statuses, writes what
//! the step needs and saves the state only if nobody changed it meanwhile (a `pause` from
//! another terminal wins). A rollout whose command died goes on with `resume`.
//!
//! A gateway's part is noted in the state (with what it ran before) before its document is
//! written, so `abort` reverts every gateway a driver may be writing to at that moment; a driver
//! whose save then loses to the abort reverts the documents it wrote after it. A document
//! written but not yet noted as written is recognised by the rollout named in it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use weir_fleet::{FunctionTarget, RolloutTag, Scope, SigningKey};
use weir_host::fleet::central::{self, Central, CentralError};
use weir_host::fleet::rollout::{self, Next, Part, PartOutcome, Release, Rollout, State, Threshold};
use weir_host::fleet::status::GatewayStatus;

use super::bucket::{self, Edit};
use super::documents::seconds_from_now;
use super::read_signing_key;
use super::server::{Gates, Server, runtime, split_pair};

/// Which gateways.
#[derive(Debug, clap::Args)]
pub(super) struct Selection {
    /// A gateway (repeat; in this order).
    #[arg(long = "gateway", value_name = "ID")]
    gateways: Vec<String>,
    /// Every gateway whose status lists this group.
    #[arg(long)]
    group: Option<String>,
    /// Every gateway that ever wrote a status.
    #[arg(long)]
    all: bool,
}

impl Selection {
    /// The gateways selected, with the statuses of all.
    pub(super) async fn resolve(
        &self,
        central: &Central,
    ) -> anyhow::Result<(Vec<String>, BTreeMap<String, GatewayStatus>)> {
        let statuses = statuses(central).await?;
        let chosen: Vec<String> = match (&self.gateways[..], &self.group, self.all) {
            (gateways, None, false) if !gateways.is_empty() => gateways.to_vec(),
            ([], Some(group), false) => {
                statuses.values().filter(|s| s.groups.contains(group)).map(|s| s.gateway.clone()).collect()
            }
            ([], None, true) => statuses.keys().cloned().collect(),
            _ => bail!("give --gateway (repeated), --group or --all"),
        };
        ensure!(!chosen.is_empty(), "no gateway selected (a gateway is known once it wrote a status)");
        Ok((chosen, statuses))
    }
}

async fn statuses(central: &Central) -> anyhow::Result<BTreeMap<String, GatewayStatus>> {
    Ok(central
        .statuses()
        .await?
        .into_iter()
        .filter_map(|(gateway, bytes)| Some((gateway, GatewayStatus::from_json(&bytes).ok()?)))
        .collect())
}

/// `NAME=VERSION` pairs, resolved to their published targets.
async fn release(central: &Central, pairs: &[String]) -> anyhow::Result<BTreeMap<String, FunctionTarget>> {
    ensure!(!pairs.is_empty(), "give at least one --function NAME=VERSION");
    let mut release = BTreeMap::new();
    for pair in pairs {
        let (function, version) = split_pair(pair)?;
        release.insert(function.to_owned(), bucket::find_target(central, function, version).await?.entry());
    }
    Ok(release)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// `weir fleet plan`.
#[derive(Debug, clap::Args)]
pub struct Plan {
    /// A function and the published version to bring, `NAME=VERSION` (repeat).
    #[arg(long = "function", value_name = "NAME=VERSION")]
    functions: Vec<String>,
    #[command(flatten)]
    selection: Selection,
    #[command(flatten)]
    server: Server,
}

impl Plan {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        runtime()?.block_on(async {
            let central = self.server.connect().await?;
            let release = release(&central, &self.functions).await?;
            let (gateways, statuses) = self.selection.resolve(&central).await?;
            let mut out = std::io::stdout().lock();
            let (mut changing, mut problems) = (0, 0);
            for gateway in &gateways {
                let Some(status) = statuses.get(gateway) else {
                    writeln!(out, "{gateway}: never heard from — its document is written, it takes it when it comes")?;
                    changing += 1;
                    continue;
                };
                let mut changes = Vec::new();
                for (function, entry) in &release {
                    let floor = status.floors.get(function).copied().unwrap_or(0);
                    let running = status.running.get(function);
                    let from = running
                        .map_or("configured component".to_owned(), |r| format!("{} (#{})", r.version, r.counter));
                    if running.is_some_and(|r| r.sha256 == hex::encode(entry.sha256) && r.counter == entry.counter) {
                        changes.push(format!("{function} {from}, unchanged"));
                    } else if entry.counter < floor {
                        problems += 1;
                        changes.push(format!(
                            "{function} {from} → {} REFUSED: counter {} below its floor {floor}",
                            entry.version, entry.counter
                        ));
                    } else {
                        changes.push(format!("{function} {from} → {} (#{})", entry.version, entry.counter));
                    }
                }
                let stale = if status.is_stale(now()) { " [STALE: it takes the change when it is back]" } else { "" };
                if changes.iter().any(|c| c.contains('→')) {
                    changing += 1;
                }
                writeln!(out, "{gateway}{stale}: {}", changes.join("; "))?;
            }
            writeln!(out, "{changing} of {} gateway(s) change; {problems} refusal(s) foreseen", gateways.len())?;
            anyhow::Ok(if problems == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        })
    }
}

/// The keys a rollout signs with.
#[derive(Debug, clap::Args)]
pub(super) struct Keys {
    /// A desired key (repeat up to the desired role's threshold).
    #[arg(long = "desired-key", value_name = "FILE.key", required = true)]
    desired: Vec<PathBuf>,
    /// A targets key (repeat up to the targets role's threshold): reverting a wave signs the
    /// previous release again above the floors.
    #[arg(long = "targets-key", value_name = "FILE.key", required = true)]
    targets: Vec<PathBuf>,
    /// How long the documents written are valid.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30days")]
    expires_in: Duration,
}

pub(super) struct Signers {
    pub(super) desired: Vec<SigningKey>,
    pub(super) targets: Vec<SigningKey>,
    pub(super) expires: u64,
}

impl Keys {
    pub(super) fn read(&self) -> anyhow::Result<Signers> {
        let read = |paths: &[PathBuf]| paths.iter().map(|p| read_signing_key(p)).collect::<anyhow::Result<Vec<_>>>();
        Ok(Signers {
            desired: read(&self.desired)?,
            targets: read(&self.targets)?,
            expires: seconds_from_now(self.expires_in)?,
        })
    }
}

/// `weir fleet rollout`.
#[derive(Debug, clap::Args)]
pub struct Start {
    /// The rollout's id (letters, digits, `-`, `_`).
    #[arg(long)]
    id: String,
    /// A function and the published version to bring, `NAME=VERSION` (repeat).
    #[arg(long = "function", value_name = "NAME=VERSION")]
    functions: Vec<String>,
    #[command(flatten)]
    selection: Selection,
    /// The waves' sizes, cumulative: `1,10%,100%` is one canary, then up to a tenth of all, then
    /// the rest.
    #[arg(long, value_delimiter = ',', value_parser = Threshold::parse, default_value = "1,10%,100%")]
    waves: Vec<Threshold>,
    /// Commits in a wave (a number or a share) before the next wave starts.
    #[arg(long, value_parser = Threshold::parse, default_value = "100%")]
    success_threshold: Threshold,
    /// Rollbacks in a wave (a number or a share) that stop the rollout and revert the wave.
    #[arg(long, value_parser = Threshold::parse, default_value = "1")]
    failure_threshold: Threshold,
    /// How long a wave may take before the rollout pauses.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
    wave_timeout: Duration,
    #[command(flatten)]
    gates: Gates,
    #[command(flatten)]
    keys: Keys,
    #[command(flatten)]
    server: Server,
}

impl Start {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        ensure!(
            !self.id.is_empty() && self.id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "--id {:?}: letters, digits, `-` and `_` only",
            self.id
        );
        let signers = self.keys.read()?;
        runtime()?.block_on(async {
            let central = self.server.connect().await?;
            let release = release(&central, &self.functions).await?;
            let (gateways, _) = self.selection.resolve(&central).await?;
            let started = now();
            let state = Rollout {
                id: self.id.clone(),
                started,
                release: release.iter().map(|(f, e)| (f.clone(), Release::of(e))).collect(),
                health: self.gates.health(),
                waves: rollout::waves(&gateways, &self.waves),
                success_threshold: self.success_threshold,
                failure_threshold: self.failure_threshold,
                wave_timeout: self.wave_timeout.as_secs(),
                current: 0,
                current_since: started,
                state: State::Running,
                parts: BTreeMap::new(),
            };
            let key = central::rollout_key(&self.id);
            central.replace_document(&key, serde_json::to_vec(&state)?, 0).await.map_err(|e| match e {
                CentralError::Conflict { .. } => {
                    anyhow::anyhow!("rollout {} exists: `weir fleet resume {}` carries it on", self.id, self.id)
                }
                other => other.into(),
            })?;
            let waves: Vec<String> = state.waves.iter().map(|w| w.len().to_string()).collect();
            writeln!(
                std::io::stdout().lock(),
                "rollout {}: {} gateway(s) in waves of {}",
                self.id,
                gateways.len(),
                waves.join(", ")
            )?;
            drive(&central, &self.id, &signers).await
        })
    }
}

/// `weir fleet resume`.
#[derive(Debug, clap::Args)]
pub struct Resume {
    /// The rollout.
    id: String,
    #[command(flatten)]
    keys: Keys,
    #[command(flatten)]
    server: Server,
}

impl Resume {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let signers = self.keys.read()?;
        runtime()?.block_on(async {
            let central = self.server.connect().await?;
            change_state(&central, &self.id, |r| match &r.state {
                State::Running => Ok(()),
                State::Paused { .. } => {
                    r.state = State::Running;
                    // The wave's clock starts again.
                    r.current_since = now();
                    Ok(())
                }
                other => bail!("rollout {} is {other:?}: nothing to resume", r.id),
            })
            .await?;
            drive(&central, &self.id, &signers).await
        })
    }
}

/// `weir fleet pause`.
#[derive(Debug, clap::Args)]
pub struct Pause {
    /// The rollout.
    id: String,
    #[command(flatten)]
    server: Server,
}

impl Pause {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        runtime()?.block_on(async {
            let central = self.server.connect().await?;
            change_state(&central, &self.id, |r| {
                ensure!(r.state == State::Running, "rollout {} is {:?}, not running", r.id, r.state);
                r.state = State::Paused { reason: "paused by the fleet manager".into() };
                Ok(())
            })
            .await?;
            writeln!(
                std::io::stdout().lock(),
                "rollout {} paused; `weir fleet resume {}` carries it on",
                self.id,
                self.id
            )?;
            anyhow::Ok(ExitCode::SUCCESS)
        })
    }
}

/// `weir fleet abort`.
#[derive(Debug, clap::Args)]
pub struct Abort {
    /// The rollout.
    id: String,
    #[command(flatten)]
    keys: Keys,
    #[command(flatten)]
    server: Server,
}

impl Abort {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let signers = self.keys.read()?;
        runtime()?.block_on(async {
            let central = self.server.connect().await?;
            // Stopped first (a driving command sees it at its next step), then reverted.
            change_state(&central, &self.id, |r| {
                ensure!(
                    matches!(r.state, State::Running | State::Paused { .. }),
                    "rollout {} is {:?}: nothing to abort",
                    r.id,
                    r.state
                );
                r.state = State::Aborted;
                Ok(())
            })
            .await?;
            let (mut state, _) = load(&central, &self.id).await?;
            revert_wave(&central, &mut state, &signers).await?;
            // Merged, not replaced: a driver may have noted reverts of its own meanwhile.
            let parts = state.parts.clone();
            change_state(&central, &self.id, |r| {
                r.parts.extend(parts.iter().map(|(g, p)| (g.clone(), p.clone())));
                Ok(())
            })
            .await?;
            writeln!(std::io::stdout().lock(), "rollout {} aborted; wave {} reverted", self.id, state.current + 1)?;
            anyhow::Ok(ExitCode::SUCCESS)
        })
    }
}

async fn load(central: &Central, id: &str) -> anyhow::Result<(Rollout, u64)> {
    let key = central::rollout_key(id);
    let (bytes, revision) = central.document(&key).await?.with_context(|| format!("no rollout {id}"))?;
    Ok((serde_json::from_slice(&bytes).with_context(|| format!("{key} does not decode"))?, revision))
}

async fn save(central: &Central, state: &Rollout, revision: u64) -> Result<u64, CentralError> {
    let bytes = serde_json::to_vec(state).expect("a rollout serialises");
    central.replace_document(&central::rollout_key(&state.id), bytes, revision).await
}

/// Changes a rollout's state, retried when someone else wrote it meanwhile.
async fn change_state(
    central: &Central,
    id: &str,
    mut change: impl FnMut(&mut Rollout) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    loop {
        let (mut state, revision) = load(central, id).await?;
        change(&mut state)?;
        match save(central, &state, revision).await {
            Ok(_) => return Ok(()),
            Err(CentralError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Drives the rollout until it is done, stopped or paused (see the module docs). A step that
/// fails — the server away for a moment, a request timed out — is taken again from the state on
/// the server: every step can be repeated.
async fn drive(central: &Central, id: &str, signers: &Signers) -> anyhow::Result<ExitCode> {
    let mut shown = String::new();
    let mut failures = 0;
    loop {
        match step(central, id, signers, &mut shown).await {
            Ok(Some(exit)) => return Ok(exit),
            Ok(None) => failures = 0,
            Err(e) if failures < 30 => {
                failures += 1;
                eprintln!("rollout {id}: {e:#}; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                return Err(
                    e.context(format!("rollout {id}: the server did not answer; `weir fleet resume {id}` carries on"))
                );
            }
        }
    }
}

/// One step of the rollout; `Some` when it is over (done, stopped, paused).
async fn step(central: &Central, id: &str, signers: &Signers, shown: &mut String) -> anyhow::Result<Option<ExitCode>> {
    let (mut state, mut revision) = load(central, id).await?;
    state.observe(&statuses(central).await?);
    let next = state.next(now());
    let mut written = Vec::new();
    match &next {
        Next::Idle => {
            let verdict = match &state.state {
                State::Done => "done",
                State::Paused { .. } => "paused",
                State::Aborted => "aborted",
                State::Failed { .. } => "failed",
                State::Running => "running",
            };
            writeln!(std::io::stdout().lock(), "rollout {id} {verdict}: {:?}", state.state)?;
            return Ok(Some(if state.state == State::Done { ExitCode::SUCCESS } else { ExitCode::FAILURE }));
        }
        Next::Assign(gateways) => {
            // Noted before written: an abort from here on reverts these gateways too.
            for gateway in gateways {
                intend(central, &mut state, gateway).await?;
            }
            revision = match save(central, &state, revision).await {
                Ok(saved) => saved,
                Err(CentralError::Conflict { .. }) => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            for gateway in gateways {
                if assign(central, &mut state, gateway, signers).await? {
                    written.push(gateway.clone());
                }
            }
        }
        Next::Wait => {}
        Next::Advance => {
            state.current += 1;
            state.current_since = now();
        }
        Next::Finish => state.state = State::Done,
        Next::Stop(reason) => {
            state.state = State::Failed { reason: reason.clone() };
            revert_wave(central, &mut state, signers).await?;
        }
        Next::Pause(reason) => state.state = State::Paused { reason: reason.clone() },
    }
    let line = progress_line(&state);
    if line != *shown {
        writeln!(std::io::stdout().lock(), "{line}")?;
        *shown = line;
    }
    match save(central, &state, revision).await {
        Ok(_) => {}
        // Someone else changed it (a pause, say): read it again. An abort (or a failure another
        // driver saw) may have reverted the wave before this step's documents were written.
        Err(CentralError::Conflict { .. }) => revert_if_stopped(central, id, &state, &written, signers).await?,
        Err(e) => return Err(e.into()),
    }
    if next == Next::Wait {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(None)
}

/// Notes `gateway`'s part with what it runs now, before its document is written; a document
/// this rollout already wrote (before a crash of the command) is adopted instead.
async fn intend(central: &Central, state: &mut Rollout, gateway: &str) -> anyhow::Result<()> {
    let wave = state.current;
    let current = bucket::current(central, &Scope::Gateway(gateway.to_owned())).await?;
    let part = state.parts.entry(gateway.to_owned()).or_insert_with(|| pending(wave));
    if let Some((document, _)) = &current
        && document.rollout.as_ref().is_some_and(|tag| tag.id == state.id)
    {
        part.assigned = Some(document.revision);
        return Ok(());
    }
    part.previous = state
        .release
        .keys()
        .map(|function| {
            let entry = current.as_ref().and_then(|(d, _)| d.functions.get(function));
            (function.clone(), entry.map(Release::of))
        })
        .collect();
    Ok(())
}

/// Writes the release into the document of `gateway` (noted by [`intend`]) and notes its
/// revision; false when it was already written.
async fn assign(central: &Central, state: &mut Rollout, gateway: &str, signers: &Signers) -> anyhow::Result<bool> {
    if state.parts.get(gateway).is_some_and(|p| p.assigned.is_some()) {
        return Ok(false);
    }
    let edit = Edit {
        set: state.release.iter().filter_map(|(f, r)| Some((f.clone(), r.entry()?))).collect(),
        health: Some(state.health.clone()),
        rollout: Some(RolloutTag { id: state.id.clone(), wave: u32::try_from(state.current).unwrap_or(u32::MAX) }),
        ..Edit::default()
    };
    let scope = Scope::Gateway(gateway.to_owned());
    let written = bucket::write_next(central, &scope, &signers.desired, signers.expires, edit).await?;
    let part = state.parts.get_mut(gateway).expect("noted by `intend`");
    part.assigned = Some(written.revision);
    part.assigned_at = now();
    Ok(true)
}

fn pending(wave: usize) -> Part {
    Part { wave, assigned: None, assigned_at: 0, previous: BTreeMap::new(), outcome: PartOutcome::Pending }
}

/// After a step's save lost to another writer: if the rollout was stopped meanwhile, the
/// documents this step wrote may have landed after the stop reverted the wave; they are
/// reverted again, from what this step noted they ran before.
async fn revert_if_stopped(
    central: &Central,
    id: &str,
    ours: &Rollout,
    written: &[String],
    signers: &Signers,
) -> anyhow::Result<()> {
    if written.is_empty() {
        return Ok(());
    }
    let (now_stored, _) = load(central, id).await?;
    if !matches!(now_stored.state, State::Aborted | State::Failed { .. }) {
        return Ok(());
    }
    let mut state = ours.clone();
    revert_gateways(central, &mut state, written, signers).await?;
    let reverted: Vec<(String, Part)> =
        written.iter().filter_map(|g| Some((g.clone(), state.parts.get(g)?.clone()))).collect();
    change_state(central, id, |r| {
        r.parts.extend(reverted.iter().cloned());
        Ok(())
    })
    .await
}

/// Puts each gateway of the current wave that the rollout noted back on what it ran before
/// (see [`revert_gateways`]).
async fn revert_wave(central: &Central, state: &mut Rollout, signers: &Signers) -> anyhow::Result<()> {
    let wave = state.wave().to_vec();
    revert_gateways(central, state, &wave, signers).await
}

/// Puts each of `gateways` the rollout noted (written or about to be) back on what it ran
/// before: previous fleet releases signed again above the floors the release may have raised,
/// configured components by taking the function out of the document.
async fn revert_gateways(
    central: &Central,
    state: &mut Rollout,
    gateways: &[String],
    signers: &Signers,
) -> anyhow::Result<()> {
    let mut resigned: BTreeMap<(String, String), FunctionTarget> = BTreeMap::new();
    for gateway in gateways {
        let Some(part) = state.parts.get(gateway).cloned() else { continue };
        let mut edit = Edit::default();
        for (function, previous) in &part.previous {
            match previous {
                None => edit.remove.push(function.clone()),
                Some(release) => {
                    let key = (function.clone(), release.sha256.clone());
                    let entry = match resigned.get(&key) {
                        Some(entry) => entry.clone(),
                        None => {
                            let entry = bucket::republish(central, function, release, &signers.targets).await?;
                            resigned.insert(key, entry.clone());
                            entry
                        }
                    };
                    edit.set.insert(function.clone(), entry);
                }
            }
        }
        bucket::write_next(central, &Scope::Gateway(gateway.clone()), &signers.desired, signers.expires, edit).await?;
        if let Some(part) = state.parts.get_mut(gateway)
            && !matches!(part.outcome, PartOutcome::RolledBack { .. })
        {
            part.outcome = PartOutcome::Reverted;
        }
    }
    Ok(())
}

/// One line of where the rollout is.
fn progress_line(state: &Rollout) -> String {
    let waves: Vec<String> = (0..state.waves.len()).map(|i| wave_bar(state, i)).collect();
    format!("rollout {} {:?}: {}", state.id, state.state, waves.join("  "))
}

/// `wave 2 [####··] 4/6` with failures and reverts named.
pub fn wave_bar(state: &Rollout, index: usize) -> String {
    let (committed, failed, pending, reverted) = state.tally(index);
    let total = committed + failed + pending + reverted;
    let width = 10;
    let filled = (committed * width).checked_div(total).unwrap_or(0);
    let failed_cells = ((failed + reverted) * width).checked_div(total).unwrap_or(0);
    let bar: String = "#".repeat(filled) + &"x".repeat(failed_cells) + &"·".repeat(width - filled - failed_cells);
    let mut text = format!("wave {} [{bar}] {committed}/{total}", index + 1);
    if failed > 0 {
        text += &format!(", {failed} rolled back");
    }
    if reverted > 0 {
        text += &format!(", {reverted} reverted");
    }
    text
}
