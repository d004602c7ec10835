//! The gateway process: opens the state store, starts every pipeline with the functions the
//! configuration's check loaded (see `preflight`, which refuses components that do not load,
//! uses of the wrong world, params `init` refuses and an unusable data directory before anything
//! starts), and stops them in order when asked.
//!
//! A pipeline that passed the check but cannot start with its stored state (a function whose
//! `init` refuses what it finds there) is reported and left out; the others run. The gateway
//! fails only when no pipeline can start, or the state store cannot be opened.
//!
//! Function updates: on SIGHUP the gateway reads every function's component file again; a file
//! whose bytes changed is compiled, checked against its world and staged in every use of the
//! function, which takes it up at its next call with its state (hot swap, see
//! `sandbox::UseHandle`). A file that does not load leaves the running version in place. A
//! SIGHUP that arrives while the gateway starts (its handler is installed first thing, see
//! `shutdown`) is kept, and acted on once the pipelines run: the files are read again then, so a
//! component replaced during the start is not missed. Several count as one.
//!
//! With `[fleet]` configured, the fleet agent (see `fleet`) decides which versions of the
//! functions it manages run — at start, before the pipelines are built, and through the same
//! staging afterwards; a SIGHUP leaves those functions alone.
//!
//! With `[http]` configured, the status page, metrics, health, readiness and tap endpoints (see
//! `observe`) are served beside the pipelines, each of which shows itself through its live view;
//! a listener that cannot bind is reported and the data keeps flowing.
//!
//! A task that panics stops the gateway in order and makes [`run`] fail
//! ([`GatewayError::Panicked`]), so the process exits non-zero and a supervisor restarts it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{ClockSynced, Config, DecodeConfig, FunctionConfig, FunctionId, OnQuarantine, PipelineConfig};
use crate::decode::{self, Decode};
use crate::fleet;
use crate::observe;
use crate::operator::{Chain, Operator};
use crate::pipeline::{self, PipelineParts, Shared};
use crate::preflight::Prepared;
use crate::sandbox::{CompiledFunction, Sandbox, UseHandle};
use crate::service;
use crate::shutdown::{Hangups, Tasks};
use crate::state::{self, Committer, OutboxLimits, StateStore, StoreError, StoreOptions};
use crate::window::WindowAccumulator;

/// How often a running gateway rewrites `<data_dir>/stats.json`.
const STATS_EVERY: Duration = Duration::from_secs(5);

/// Why the gateway could not run.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The state store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Every pipeline failed to start.
    #[error("no pipeline could start:\n  {}", .0.join("\n  "))]
    NoPipeline(Vec<String>),
    /// A task panicked (a bug in weir); the gateway stopped in order.
    #[error("stopped because a task panicked (a bug in weir; the panic is in the log): {}", .0.join(", "))]
    Panicked(Vec<String>),
}

/// Runs the gateway until `shutdown` is cancelled and everything has stopped; `hangups` ask for
/// the functions to be read again (see the module docs). `prepared` is what the configuration's
/// check (`preflight::check` in [`preflight::Mode::Run`](crate::preflight::Mode::Run)) returned.
pub async fn run(
    config: Config,
    prepared: Prepared,
    shutdown: CancellationToken,
    hangups: Hangups,
) -> Result<(), GatewayError> {
    let started = std::time::Instant::now();
    if config.http.is_some() {
        // Before anything records: a handle taken before the recorder exists records nothing.
        observe::metrics::handle();
    }
    let data_dir = config.gateway.data_dir.clone();
    let (store, committer, committer_thread) = open_store(&config)?;

    // The engine and the functions the check loaded, now with the state store.
    let sandbox = Arc::new(prepared.sandbox.with_store(store.clone()));
    let mut functions = prepared.functions;
    // The fleet's versions run in place of the configured components it manages.
    let fleet = match &config.fleet {
        Some(settings) => {
            let id = &config.gateway.id;
            match fleet::prepare(
                settings,
                id,
                &data_dir,
                &store,
                &committer,
                &sandbox,
                &config.functions,
                &mut functions,
            )
            .await
            {
                Ok(agent) => Some(agent),
                Err(e) => {
                    tracing::error!(stage = "fleet", error = %e, "the fleet agent cannot start; no function updates from the fleet");
                    None
                }
            }
        }
        None => None,
    };
    let managed = fleet.as_ref().map(fleet::Agent::managed).unwrap_or_default();
    let running: BTreeMap<FunctionId, [u8; 32]> =
        functions.iter().map(|(id, f)| (id.clone(), f.version().digest)).collect();

    // Instantiating runs guest code (`init`): off the async threads.
    let builder = Arc::clone(&sandbox);
    let pipelines = config.pipelines.clone();
    let built = tokio::task::spawn_blocking(move || {
        let compiled: BTreeMap<FunctionId, Result<Arc<CompiledFunction>, String>> =
            functions.into_iter().map(|(id, f)| (id, Ok(f))).collect();
        pipelines.into_iter().map(|p| build(&builder, &compiled, p)).collect::<Vec<_>>()
    })
    .await
    .expect("building pipelines does not panic");

    // Without a fleet, the kernel says whether the clock is synced (as the fleet's default does).
    let clock = config.fleet.as_ref().map_or(ClockSynced::Kernel, |fleet| fleet.clock_synced.clone());
    let sensors = observe::SensorBoard::default();
    let shared = Shared {
        gateway: config.gateway.id.to_string(),
        store: store.clone(),
        committer: committer.clone(),
        sensors: sensors.clone(),
        clock: clock.clone(),
    };
    let tasks = Tasks::new(shutdown.clone());
    let (functions, live, failures) = start_pipelines(built, &shared, &shutdown, &tasks);
    for failure in &failures {
        tracing::error!(stage = "pipeline", "pipeline not started: {failure}");
    }
    tasks.close();
    if tasks.is_empty() {
        drop(shared);
        return Err(GatewayError::NoPipeline(failures));
    }
    let functions = Arc::new(functions);
    // The pipelines' companions run until shutdown, watched for panics like the pipelines.
    let companions = Tasks::sharing_panics(&tasks);
    if let Some(http) = &config.http {
        // A listener that cannot start leaves the data flowing: it is reported, not fatal.
        match observe::bind(http.listen).await {
            Ok(listener) => {
                let observed = observe::Observed {
                    store: store.clone(),
                    committer: committer.clone(),
                    functions: Arc::clone(&functions),
                    live,
                    readiness: http.ready,
                    gateway: config.gateway.id.to_string(),
                    config_sha256: config.locations.text_sha256(),
                    clock,
                    sensors: sensors.clone(),
                    started,
                };
                companions.spawn("http", observe::serve(listener, observed, shutdown.clone()));
            }
            Err(e) => {
                tracing::error!(stage = "http", address = %http.listen, error = %e, "cannot listen; no metrics or health endpoints");
            }
        }
    }
    companions.spawn("service manager", service::watch(committer, shutdown.clone()));
    companions.spawn(
        "stats snapshots",
        write_stats_snapshots(
            store.clone(),
            data_dir.clone(),
            Arc::clone(&functions),
            sensors.clone(),
            shutdown.clone(),
        ),
    );
    companions.spawn(
        "function reloads",
        reload_on_hangup(
            Arc::clone(&sandbox),
            config.functions.clone(),
            running,
            Arc::clone(&functions),
            managed,
            hangups,
            shutdown.clone(),
        ),
    );
    if let Some(agent) = fleet {
        companions.spawn("fleet agent", agent.run(Arc::clone(&functions), shutdown.clone()));
    }
    companions.close();
    let started = config.pipelines.len() - failures.len();
    service::ready(&format!("{started} of {} pipelines running", config.pipelines.len()));
    tasks.wait().await;
    // Every pipeline has ended (also when they ended on their own): stop the companions.
    shutdown.cancel();
    companions.wait().await;

    // Every pipeline is done: the last commits are in, and the last snapshot shows them.
    write_stats_snapshot(&store, &data_dir, &functions, &sensors);
    // Closing the committer ends its thread.
    drop(shared);
    drop(sandbox);
    let _ = tokio::task::spawn_blocking(move || committer_thread.join()).await;
    let panicked = tasks.panicked();
    if !panicked.is_empty() {
        tracing::error!(stage = "shutdown", tasks = %panicked.join(", "), "stopped after a panic");
        return Err(GatewayError::Panicked(panicked));
    }
    tracing::info!(stage = "shutdown", "stopped");
    Ok(())
}

/// Opens the state store with each pipeline's outbox limits.
fn open_store(config: &Config) -> Result<(StateStore, Committer, std::thread::JoinHandle<()>), GatewayError> {
    let outboxes = config
        .pipelines
        .iter()
        .map(|p| {
            let limits =
                OutboxLimits { max_bytes: p.outbox.max_bytes, when_full: p.outbox.when_full, encoding: p.encoding };
            (p.name.to_string(), limits)
        })
        .collect();
    let options = StoreOptions {
        durability: config.state.durability,
        dead_letter_capacity: config.state.dead_letter_capacity,
        dead_letter_max_bytes: config.state.dead_letter_max_bytes,
        outboxes,
    };
    let (store, committer, committer_thread) = state::open(&config.gateway.data_dir, options)?;
    tracing::info!(stage = "state", path = %store.path().display(), durability = ?config.state.durability, "state store open");
    Ok((store, committer, committer_thread))
}

/// Spawns every pipeline that was built; returns the handles of their function uses, their live
/// views and why the others did not start.
fn start_pipelines(
    built: Vec<Result<PipelineParts, String>>,
    shared: &Shared,
    shutdown: &CancellationToken,
    tasks: &Tasks,
) -> (Vec<UseHandle>, observe::Live, Vec<String>) {
    let mut failures = Vec::new();
    let mut functions: Vec<UseHandle> = Vec::new();
    let mut live = observe::Live::default();
    for result in built {
        match result {
            Ok(parts) => {
                functions.extend(parts.functions.iter().cloned());
                let name = parts.config.name.to_string();
                let summary = format!(
                    "{} → [{}] → {}",
                    source_kind(&parts.config),
                    parts.chain.names().join(", "),
                    parts.config.sink.kind()
                );
                let shown = observe::PipelineLive::new(observe::Facts::of(&parts.config, summary.clone()));
                match pipeline::spawn(parts, shared, &shown, shutdown, tasks) {
                    Ok(()) => {
                        tracing::info!(stage = "pipeline", pipeline = %name, flow = %summary, "pipeline running");
                        live.add(shown);
                    }
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
            }
            Err(failure) => failures.push(failure),
        }
    }
    (functions, live, failures)
}

/// Keeps `<data_dir>/stats.json` current for `weir outbox stats` (which cannot open the
/// database while the gateway holds it), until shutdown.
async fn write_stats_snapshots(
    store: StateStore,
    data_dir: PathBuf,
    functions: Arc<Vec<UseHandle>>,
    sensors: observe::SensorBoard,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(STATS_EVERY) => {}
        }
        let (store, data_dir, functions, sensors) =
            (store.clone(), data_dir.clone(), Arc::clone(&functions), sensors.clone());
        let _ =
            tokio::task::spawn_blocking(move || write_stats_snapshot(&store, &data_dir, &functions, &sensors)).await;
    }
}

fn write_stats_snapshot(store: &StateStore, data_dir: &Path, functions: &[UseHandle], sensors: &observe::SensorBoard) {
    let written = store.stats().map_err(|e| e.to_string()).and_then(|mut stats| {
        stats.functions = functions.iter().map(UseHandle::status).collect();
        stats.sensors = sensors.snapshot();
        state::stats::write_snapshot(data_dir, &stats).map_err(|e| e.to_string())
    });
    if let Err(e) = written {
        tracing::warn!(stage = "state", error = %e, "cannot write the stats snapshot");
    }
}

/// Reloads the function components on every SIGHUP until shutdown (see the module docs).
async fn reload_on_hangup(
    sandbox: Arc<Sandbox>,
    functions: BTreeMap<FunctionId, FunctionConfig>,
    mut running: BTreeMap<FunctionId, [u8; 32]>,
    uses: Arc<Vec<UseHandle>>,
    managed: fleet::Managed,
    mut hangups: Hangups,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            received = hangups.recv() => if received.is_none() { return },
        }
        tracing::info!(stage = "sandbox", "SIGHUP: reading the function components again");
        service::reloading();
        // The fleet decides the versions of the functions it manages.
        let functions: BTreeMap<FunctionId, FunctionConfig> =
            functions.iter().filter(|(id, _)| !managed.contains(id)).map(|(id, f)| (id.clone(), f.clone())).collect();
        let (sandbox, uses, before) = (Arc::clone(&sandbox), Arc::clone(&uses), running.clone());
        let reloaded =
            tokio::task::spawn_blocking(move || stage_changed_functions(&sandbox, &functions, &uses, before));
        match reloaded.await {
            Ok(now_running) => running = now_running,
            Err(e) => tracing::error!(stage = "sandbox", error = %e, "reloading the functions panicked"),
        }
        service::ready("functions reloaded");
    }
}

/// Loads every function whose component bytes differ from the version running and stages it in
/// every use of that function. Returns the digests now staged or running.
pub fn stage_changed_functions(
    sandbox: &Sandbox,
    functions: &BTreeMap<FunctionId, FunctionConfig>,
    uses: &[UseHandle],
    mut running: BTreeMap<FunctionId, [u8; 32]>,
) -> BTreeMap<FunctionId, [u8; 32]> {
    for (id, function) in functions {
        // Unchanged bytes (the common case): nothing to compile, load or log.
        match crate::sandbox::component_digest(&function.component) {
            Ok(digest) if running.get(id) == Some(&digest) => continue,
            Ok(_) => {}
            Err(e) => {
                tracing::error!(stage = "sandbox", function = %id, error = %e, "cannot read the component; the running version stays");
                continue;
            }
        }
        let loaded = match sandbox.load(function) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!(stage = "sandbox", function = %id, error = %e, "the new component does not load; the running version stays");
                continue;
            }
        };
        if running.get(id) == Some(&loaded.version().digest) {
            continue;
        }
        let mut staged = 0;
        for handle in uses.iter().filter(|handle| &handle.function_id == id) {
            handle.stage_version(Arc::clone(&loaded));
            staged += 1;
        }
        tracing::info!(stage = "sandbox", function = %loaded.version(), uses = staged, "new function version staged; each use takes it up at its next call");
        running.insert(id.clone(), loaded.version().digest);
    }
    running
}

fn source_kind(config: &PipelineConfig) -> &'static str {
    match config.source {
        crate::config::SourceConfig::Mqtt { .. } => "mqtt",
        crate::config::SourceConfig::Nats { .. } => "nats",
        crate::config::SourceConfig::JetStream { .. } => "jetstream",
        crate::config::SourceConfig::Simulated(_) => "simulated",
        crate::config::SourceConfig::Sensors(_) => "sensors",
    }
}

/// A pipeline's decoder, operator and window-aggregate instances.
pub fn build(
    sandbox: &Sandbox,
    compiled: &BTreeMap<FunctionId, Result<Arc<CompiledFunction>, String>>,
    config: PipelineConfig,
) -> Result<PipelineParts, String> {
    let name = config.name.to_string();
    let function = |id: &FunctionId| -> Result<&Arc<CompiledFunction>, String> {
        match compiled.get(id) {
            Some(Ok(function)) => Ok(function),
            Some(Err(e)) => Err(format!("{name}: {e}")),
            None => Err(format!("{name}: function {id} is not configured")),
        }
    };
    let mut functions = Vec::new();
    let decoder: Box<dyn Decode> = match &config.decode {
        DecodeConfig::Function(used) => {
            let mut instance = sandbox
                .decoder(function(&used.function)?, &name, used.name.as_str(), &used.params_json)
                .map_err(|e| format!("{name}: {e}"))?;
            functions.push(instance.instance_mut().handle());
            Box::new(instance)
        }
        builtin => decode::builtin(builtin).expect("every decode config but Function is built in"),
    };
    let mut operators: Vec<Box<dyn Operator>> = Vec::new();
    for used in &config.operators {
        let mut instance = sandbox
            .operator(function(&used.function)?, &name, used.name.as_str(), &used.params_json)
            .map_err(|e| format!("{name}: {e}"))?;
        functions.push(instance.instance_mut().handle());
        operators.push(Box::new(instance));
    }
    let window_aggregate: Option<WindowAccumulator> = match config.window.as_ref().and_then(|w| w.aggregate.as_ref()) {
        Some(used) => {
            let mut instance = sandbox
                .accumulator(function(&used.function)?, &name, used.name.as_str(), &used.params_json)
                .map_err(|e| format!("{name}: {e}"))?;
            functions.push(instance.instance_mut().handle());
            Some(Box::new(instance))
        }
        None => None,
    };
    let chain = Chain::new(operators, config.on_quarantine == OnQuarantine::Skip);
    Ok(PipelineParts { config, decoder, chain, window_aggregate, functions })
}
