//! `weir fleet publish | push | assign | status`: the commands that talk to the fleet's NATS
//! server (its buckets are described in `weir_host::fleet::central`).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use sha2::{Digest, Sha256};
use weir_fleet::{Desired, HealthGates, Kind, Root, Scope, Signed, Target, World};
use weir_host::config::FunctionId;
use weir_host::fleet::central::{self, Central, ServerAddress};
use weir_host::fleet::status::GatewayStatus;

use super::bucket::{self, Edit};
use super::documents::{seconds_from_now, when};
use super::{read_signed, read_signing_key};

/// Where the fleet's server is.
#[derive(Debug, clap::Args)]
pub struct Server {
    /// The NATS server with JetStream holding the fleet's buckets.
    #[arg(long, env = "WEIR_FLEET_SERVER", value_name = "URL")]
    server: String,
    /// A NATS credentials file (user JWT and nkey seed).
    #[arg(long, env = "WEIR_FLEET_CREDENTIALS", value_name = "FILE")]
    credentials: Option<PathBuf>,
}

impl Server {
    pub(super) async fn connect(&self) -> anyhow::Result<Central> {
        let address = ServerAddress { url: self.server.clone(), credentials: self.credentials.clone() };
        Ok(Central::connect(&address).await?)
    }
}

/// The async runtime these commands need.
pub(super) fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("cannot start the async runtime")
}

/// `weir fleet publish`.
#[derive(Debug, clap::Args)]
pub struct Publish {
    /// The function's component (.wasm).
    component: PathBuf,
    /// The function's name, as gateways' configurations declare it (`[functions.<name>]`).
    #[arg(long)]
    function: FunctionId,
    /// The version's label.
    #[arg(long)]
    version: String,
    /// The security counter: raise it with every release; a gateway never goes below the
    /// highest it committed.
    #[arg(long)]
    counter: u64,
    /// The world it implements: operator, decoder or accumulator.
    #[arg(long, default_value = "operator", value_parser = parse_world)]
    world: World,
    /// The oldest weir that runs it.
    #[arg(long, default_value = env!("CARGO_PKG_VERSION"))]
    min_weir: semver::Version,
    /// A targets key to sign with (repeat up to the targets role's threshold).
    #[arg(long = "key", value_name = "FILE.key", required = true)]
    keys: Vec<PathBuf>,
    #[command(flatten)]
    server: Server,
}

fn parse_world(text: &str) -> Result<World, String> {
    match text {
        "operator" => Ok(World::Operator),
        "decoder" => Ok(World::Decoder),
        "accumulator" => Ok(World::Accumulator),
        other => Err(format!("{other:?} is none of operator, decoder, accumulator")),
    }
}

impl Publish {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let bytes =
            std::fs::read(&self.component).with_context(|| format!("cannot read {}", self.component.display()))?;
        ensure!(bytes.starts_with(b"\0asm"), "{} is not a WebAssembly binary", self.component.display());
        let target = Target {
            function: self.function.to_string(),
            version: self.version.clone(),
            sha256: Sha256::digest(&bytes).into(),
            length: bytes.len() as u64,
            world: self.world,
            counter: self.counter,
            min_weir: self.min_weir.to_string(),
        };
        let keys = self.keys.iter().map(|p| read_signing_key(p)).collect::<anyhow::Result<Vec<_>>>()?;
        let signed = Signed::sign(&target, &keys.iter().collect::<Vec<_>>());
        let key = central::target_key(&target.function, target.counter, &target.sha256);
        runtime()?.block_on(async {
            let central = self.server.connect().await?;
            let highest = bucket::highest_counter(&central, &target.function).await?;
            ensure!(
                target.counter > highest,
                "counter {} is not above {highest}, the highest published for {}: security counters only go up \
                 (a gateway never takes a version below the highest it committed)",
                target.counter,
                target.function
            );
            central.put_artifact(&target.sha256, &bytes).await?;
            central.put_document(&key, signed.to_bytes()).await?;
            anyhow::Ok(())
        })?;
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "published {} {} ({} bytes, sha256 {}, counter {}) as {key}",
            target.function,
            target.version,
            target.length,
            hex::encode(target.sha256),
            target.counter
        )?;
        Ok(ExitCode::SUCCESS)
    }
}

/// `weir fleet push`.
#[derive(Debug, clap::Args)]
pub struct Push {
    /// A signed document (signed by several holders with `weir fleet sign`).
    file: PathBuf,
    /// For a target: its component, stored beside it.
    #[arg(long)]
    artifact: Option<PathBuf>,
    #[command(flatten)]
    server: Server,
}

impl Push {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let signed = read_signed(&self.file)?;
        // Decoded only to learn its key; gateways verify it.
        let (key, artifact) = match signed.kind {
            Kind::Root => {
                let root: Root = minicbor::decode(&signed.body).context("the root does not decode")?;
                (central::root_key(root.version), None)
            }
            Kind::Target => {
                let target: Target = minicbor::decode(&signed.body).context("the target does not decode")?;
                let artifact = match &self.artifact {
                    Some(path) => {
                        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
                        let digest: [u8; 32] = Sha256::digest(&bytes).into();
                        ensure!(
                            digest == target.sha256 && bytes.len() as u64 == target.length,
                            "{} is not the component the target signs (length or sha256 differ)",
                            path.display()
                        );
                        Some((target.sha256, bytes))
                    }
                    None => None,
                };
                (central::target_key(&target.function, target.counter, &target.sha256), artifact)
            }
            Kind::Desired => {
                let desired: Desired =
                    minicbor::decode(&signed.body).context("the desired document does not decode")?;
                (central::desired_key(&desired.scope), None)
            }
        };
        runtime()?.block_on(async {
            let central = self.server.connect().await?;
            if let Some((sha256, bytes)) = &artifact {
                central.put_artifact(sha256, bytes).await?;
            }
            central.put_document(&key, signed.to_bytes()).await?;
            anyhow::Ok(())
        })?;
        writeln!(std::io::stdout().lock(), "pushed {} as {key}", self.file.display())?;
        Ok(ExitCode::SUCCESS)
    }
}

/// `weir fleet assign`.
#[derive(Debug, clap::Args)]
pub struct Assign {
    /// The gateway the document is for.
    #[arg(long, conflicts_with = "group", required_unless_present = "group")]
    gateway: Option<String>,
    /// The group the document is for.
    #[arg(long)]
    group: Option<String>,
    /// A function and the published version it runs, `NAME=VERSION` (repeat); the other
    /// functions of the current document stay as they are.
    #[arg(long = "function", value_name = "NAME=VERSION")]
    functions: Vec<String>,
    /// A function to take out of the document (it runs its configured component again).
    #[arg(long = "remove", value_name = "NAME")]
    removed: Vec<String>,
    /// Raise a function's floor once committed, `NAME=COUNTER` (repeat).
    #[arg(long = "floor", value_name = "NAME=COUNTER")]
    floors: Vec<String>,
    /// How long the document is valid.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30days")]
    expires_in: Duration,
    #[command(flatten)]
    gates: Gates,
    /// A desired key to sign with (repeat up to the desired role's threshold).
    #[arg(long = "key", value_name = "FILE.key", required = true)]
    keys: Vec<PathBuf>,
    #[command(flatten)]
    server: Server,
}

/// The health gates a document sets (defaults: the documented ones).
#[derive(Debug, clap::Args)]
pub struct Gates {
    /// Batches a candidate runs in shadow before it replaces the running version.
    #[arg(long, default_value_t = HealthGates::default().shadow_batches)]
    shadow_batches: u32,
    /// Batches after promotion before the version is committed.
    #[arg(long, default_value_t = HealthGates::default().probation_batches)]
    probation_batches: u32,
    /// Share of calls, in parts per million, that may fault.
    #[arg(long, default_value_t = HealthGates::default().max_faulted_ppm)]
    max_faulted_ppm: u32,
    /// The longest a call may take, in microseconds.
    #[arg(long, default_value_t = HealthGates::default().max_call_micros)]
    max_call_micros: u64,
    /// Share of outputs, in parts per million, that may differ from the running version's.
    #[arg(long, default_value_t = HealthGates::default().max_divergent_ppm)]
    max_divergent_ppm: u32,
    /// How far apart two outputs may be and still count as equal.
    #[arg(long, default_value_t = HealthGates::default().tolerance)]
    tolerance: f64,
}

impl Gates {
    pub(super) fn health(&self) -> HealthGates {
        HealthGates {
            shadow_batches: self.shadow_batches,
            max_faulted_ppm: self.max_faulted_ppm,
            max_call_micros: self.max_call_micros,
            max_divergent_ppm: self.max_divergent_ppm,
            tolerance: self.tolerance,
            probation_batches: self.probation_batches,
        }
    }
}

impl Assign {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let scope = match (&self.gateway, &self.group) {
            (Some(id), None) => Scope::Gateway(id.clone()),
            (None, Some(group)) => Scope::Group(group.clone()),
            _ => bail!("give --gateway or --group"),
        };
        let keys = self.keys.iter().map(|p| read_signing_key(p)).collect::<anyhow::Result<Vec<_>>>()?;
        let key = central::desired_key(&scope);
        let written = runtime()?.block_on(async {
            let central = self.server.connect().await?;
            let mut edit = Edit { health: Some(self.gates.health()), remove: self.removed.clone(), ..Edit::default() };
            for assignment in &self.functions {
                let (function, version) = split_pair(assignment)?;
                let target = bucket::find_target(&central, function, version).await?;
                edit.set.insert(function.to_owned(), target.entry());
            }
            for floor in &self.floors {
                let (function, counter) = split_pair(floor)?;
                let counter = counter.parse::<u64>().with_context(|| format!("{floor}: not a counter"))?;
                edit.floors.insert(function.to_owned(), counter);
            }
            bucket::write_next(&central, &scope, &keys, seconds_from_now(self.expires_in)?, edit).await
        })?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{key}: revision {}, expires {}", written.revision, when(written.expires))?;
        for (function, entry) in &written.functions {
            writeln!(out, "  {function} {} (counter {})", entry.version, entry.counter)?;
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// `NAME=VALUE`.
pub(super) fn split_pair(pair: &str) -> anyhow::Result<(&str, &str)> {
    pair.split_once('=').with_context(|| format!("{pair:?} is not NAME=VALUE"))
}

/// `weir fleet status`.
#[derive(Debug, clap::Args)]
pub struct Status {
    /// Keep showing it, refreshed every two seconds.
    #[arg(long)]
    watch: bool,
    /// Print the statuses as JSON lines instead.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    server: Server,
}

impl Status {
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        runtime()?.block_on(async {
            let central = self.server.connect().await?;
            loop {
                let statuses = central.statuses().await?;
                let mut out = std::io::stdout().lock();
                if self.watch && !self.json {
                    // Clear the screen and go home, so each refresh replaces the last.
                    write!(out, "\x1b[2J\x1b[H")?;
                }
                for (gateway, bytes) in statuses {
                    match GatewayStatus::from_json(&bytes) {
                        Ok(status) if self.json => writeln!(out, "{}", String::from_utf8_lossy(&status.to_json()))?,
                        Ok(status) => print_status(&mut out, &status)?,
                        Err(e) => writeln!(out, "{gateway}: unreadable status ({e})")?,
                    }
                }
                if !self.json {
                    for key in central.document_keys("rollout.").await? {
                        let Some((bytes, _)) = central.document(&key).await? else { continue };
                        match serde_json::from_slice::<weir_host::fleet::rollout::Rollout>(&bytes) {
                            Ok(rollout) => {
                                writeln!(out, "rollout {}: {:?}", rollout.id, rollout.state)?;
                                for index in 0..rollout.waves.len() {
                                    let current = if index == rollout.current { " <" } else { "" };
                                    writeln!(out, "  {}{current}", super::rollout::wave_bar(&rollout, index))?;
                                }
                            }
                            Err(e) => writeln!(out, "{key}: unreadable ({e})")?,
                        }
                    }
                }
                out.flush()?;
                drop(out);
                if !self.watch {
                    return anyhow::Ok(ExitCode::SUCCESS);
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        })
    }
}

/// One gateway's status in a few lines.
fn print_status(out: &mut impl Write, status: &GatewayStatus) -> anyhow::Result<()> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let health = if status.is_stale(now) { "STALE" } else { "ok" };
    let desired = status.desired.as_ref().map_or("none".to_owned(), |d| format!("{} r{}", d.key, d.revision));
    writeln!(out, "{} [{health}] last seen {}s ago, desired {desired}", status.gateway, now.saturating_sub(status.at))?;
    let running: Vec<String> =
        status.running.iter().map(|(f, r)| format!("{f} {} (#{})", r.version, r.counter)).collect();
    writeln!(
        out,
        "  running: {}",
        if running.is_empty() { "configured components".into() } else { running.join(", ") }
    )?;
    if let Some(update) = &status.update {
        writeln!(out, "  update r{}: {} — {}", update.document.revision, update.stage, update.progress)?;
    }
    if let Some(outcome) = status.outcomes.last() {
        let result =
            if outcome.committed { "committed".to_owned() } else { format!("rolled back: {}", outcome.reason) };
        writeln!(out, "  last: {} r{} {result}", outcome.scope_key, outcome.revision)?;
    }
    for refusal in &status.refusals {
        writeln!(out, "  refused {} [{}]: {}", refusal.what, refusal.code, refusal.reason)?;
    }
    if !status.clock_synced {
        writeln!(out, "  clock not synced: newer revisions wait")?;
    }
    Ok(())
}
