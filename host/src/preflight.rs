//! Everything about a validated configuration that can be known without brokers, checked the
//! same way by `weir check` and, before it opens the state store or starts a pipeline, by
//! `weir run`: one implementation, so `check` passes exactly what `run` accepts.
//!
//! What is checked, after the file parsed and validated (see `config`):
//! - the data directory: an existing directory this process can write in, or a path that can be
//!   created (its nearest existing ancestor is a writable directory). `run` creates it; `check`
//!   creates nothing and leaves nothing behind (it writes and removes a temporary file to see
//!   that writing works). The compiled-function cache inside it, if there, must be a directory.
//! - the WebAssembly engine, sized from the configuration as `run` sizes it: when it cannot be
//!   created (its pooling allocator reserves address space for every memory slot, which a
//!   `ulimit -v` or a 32-bit machine may not have), the memory limit or the number of uses that
//!   makes it fail is named.
//! - every broker's TLS configuration, built from its `[tls]` files as the clients will use it
//!   (certificates that parse, a key that fits its certificate, system roots present when no
//!   `ca_file` is given, a usable `server_name`), and its NATS credentials or nkey seed parsed
//!   as the NATS client parses them; a problem names the setting, never a secret.
//! - every function: its component file is read (not empty), compiled with that engine and
//!   checked to implement one of the worlds; each use must use it as that world (a decoder is not
//!   an operator), and is started — instantiated, and `init` called with the use's `params` —
//!   against an empty state store held in memory.
//!
//! Every problem carries file, line, column and field like the validator's (a component problem
//! at the function's `component`, a params problem at the use's `params`), and all are reported
//! together.
//!
//! `init` sees empty state here; a function whose `init` depends on its stored state can still
//! refuse to start in `run` (that pipeline is then left out, see `gateway`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{Config, ConfigError, DecodeConfig, FunctionId, Locations, PipelineConfig, Problem};
use crate::sandbox::{
    self, CompiledCache, CompiledFunction, Sandbox, SandboxError, SandboxOptions, StartPhase, StateLimits, WorldKind,
};
use crate::state::{self, StateStore, StoreError};
use crate::tls::TlsField;

/// The problems of each broker's TLS configuration and NATS credentials (see the module docs).
fn broker_problems(config: &Config) -> Vec<Problem> {
    let mut problems = Vec::new();
    for (name, broker) in &config.brokers {
        if let Some(tls) = &broker.tls
            && let Err(problem) = crate::tls::client_config(tls, name.as_str())
        {
            let setting = match problem.field {
                TlsField::Ca => "tls.ca_file",
                TlsField::Certificate => "tls.cert_file",
                TlsField::Key => "tls.key_file",
                TlsField::ServerName => "tls.server_name",
            };
            problems.push(config.locations.broker_setting(name, setting, problem.message));
        }
        if let Some(credentials) = &broker.nats_credentials
            && let Err(reason) = crate::source::check_nats_credentials(credentials)
        {
            let setting = match credentials {
                crate::config::NatsCredentials::File(_) => "credentials_file",
                crate::config::NatsCredentials::Nkey(_) => "nkey_file",
            };
            problems.push(config.locations.broker_setting(name, setting, reason));
        }
    }
    problems
}

/// Name of the compiled-function cache inside the data directory.
pub const COMPILED_DIR: &str = "compiled";

/// Who is checking: what may be created in the data directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `weir check`: creates nothing, writes no compiled function to the cache.
    Check,
    /// `weir run`: creates the data directory and caches what it compiles.
    Run,
}

/// Why the check could not be made or was failed.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// The configuration cannot run: the problems, with file, line and field.
    #[error(transparent)]
    Refused(#[from] ConfigError),
    /// The in-memory store the functions start against could not be created.
    #[error("cannot prepare the function check: {0}")]
    Store(#[from] StoreError),
}

/// A configuration that passed: its engine and every function it uses, loaded.
#[derive(Debug)]
pub struct Prepared {
    /// The engine; its instances see an empty in-memory store (give it the real one with
    /// [`Sandbox::with_store`]).
    pub sandbox: Sandbox,
    /// Every function the pipelines use, compiled and checked against its world.
    pub functions: BTreeMap<FunctionId, Arc<CompiledFunction>>,
}

/// Runs every check (see the module docs) and reports all problems found together.
pub fn check(config: &Config, mode: Mode) -> Result<Prepared, PreflightError> {
    let locations = &config.locations;
    let mut problems = broker_problems(config);
    let data_dir = &config.gateway.data_dir;
    let cache_dir = data_dir.join(COMPILED_DIR);
    let cache = match usable_data_dir(data_dir, mode) {
        Ok(()) if mode == Mode::Run => CompiledCache::ReadWrite(&cache_dir),
        Ok(()) if cache_dir.is_dir() => CompiledCache::ReadOnly(&cache_dir),
        Ok(()) => CompiledCache::None,
        Err(message) => {
            problems.push(locations.data_dir(message));
            CompiledCache::None
        }
    };

    let uses = config.pipelines.iter().map(|p| p.function_uses().count()).sum::<usize>();
    let state_limits = StateLimits { max_key: config.state.max_key, max_value: config.state.max_value };
    let options = SandboxOptions {
        execution: config.gateway.wasm_execution,
        ..SandboxOptions::for_functions(config.functions.values(), uses, state_limits)
    };
    let sandbox = match Sandbox::with_cache(options, cache, StateStore::in_memory()?) {
        Ok(sandbox) => sandbox,
        Err(SandboxError::Engine { reason }) => {
            problems.extend(engine_problems(config, &options, uses, &reason));
            return Err(locations.refusal(problems).into());
        }
        Err(other) => {
            problems.push(locations.data_dir(other.to_string()));
            return Err(locations.refusal(problems).into());
        }
    };

    let mut functions = BTreeMap::new();
    for (id, function) in &config.functions {
        match sandbox.load(function) {
            Ok(loaded) => {
                functions.insert(id.clone(), loaded);
            }
            Err(e) => problems.push(locations.component(id, load_problem(&function.component, e))),
        }
    }
    let mut cannot_instantiate = BTreeSet::new();
    for pipeline in &config.pipelines {
        for (used, expected) in pipeline.function_uses().zip(expected_worlds(pipeline)) {
            let Some(function) = functions.get(&used.function) else { continue };
            let (name, use_name, params) = (pipeline.name.as_str(), used.name.as_str(), used.params_json.as_str());
            let started = match expected {
                WorldKind::Operator => sandbox.operator(function, name, use_name, params).map(drop),
                WorldKind::Decoder => sandbox.decoder(function, name, use_name, params).map(drop),
                WorldKind::Accumulator => sandbox.accumulator(function, name, use_name, params).map(drop),
            };
            match started {
                Ok(()) => {}
                Err(SandboxError::WorldMismatch { function, expected, actual }) => {
                    problems.push(locations.use_function(
                        &pipeline.name,
                        &used.name,
                        format!(
                            "function {:?} is {} (its component implements weir:stream/{}), but {} is needed here",
                            function.as_str(),
                            world_name(actual),
                            world_id(actual),
                            world_name(expected)
                        ),
                    ));
                }
                Err(SandboxError::Start { phase: StartPhase::Init, function, reason, .. }) => {
                    problems.push(locations.use_params(
                        &pipeline.name,
                        &used.name,
                        format!("{function} does not start with these params: {reason}"),
                    ));
                }
                Err(e) => {
                    if cannot_instantiate.insert(used.function.clone()) {
                        problems.push(locations.component(&used.function, e.to_string()));
                    }
                }
            }
        }
    }
    if problems.is_empty() { Ok(Prepared { sandbox, functions }) } else { Err(locations.refusal(problems).into()) }
}

/// The world each of `pipeline`'s function uses needs, in the order of `function_uses`.
fn expected_worlds(pipeline: &PipelineConfig) -> impl Iterator<Item = WorldKind> + '_ {
    let decoder = matches!(pipeline.decode, DecodeConfig::Function(_)).then_some(WorldKind::Decoder);
    let aggregate = pipeline.window.as_ref().and_then(|w| w.aggregate.as_ref()).map(|_| WorldKind::Accumulator);
    decoder.into_iter().chain(pipeline.operators.iter().map(|_| WorldKind::Operator)).chain(aggregate)
}

fn world_name(world: WorldKind) -> &'static str {
    match world {
        WorldKind::Operator => "an operator",
        WorldKind::Decoder => "a decoder",
        WorldKind::Accumulator => "an accumulator",
    }
}

fn world_id(world: WorldKind) -> &'static str {
    match world {
        WorldKind::Operator => "operator",
        WorldKind::Decoder => "decoder",
        WorldKind::Accumulator => "accumulator",
    }
}

/// What is wrong with a component that does not load, said about its file.
fn load_problem(path: &Path, error: SandboxError) -> String {
    match error {
        SandboxError::Read { source, .. } => format!("cannot read {}: {source}", path.display()),
        SandboxError::Compile { reason, .. } => {
            format!("{} is not a loadable WebAssembly component: {reason}", path.display())
        }
        SandboxError::WrongWorld { operator_reason, decoder_reason, accumulator_reason, .. } => format!(
            "{} implements none of the weir:stream@0.1.0 worlds: not an operator ({operator_reason}), not a decoder \
             ({decoder_reason}), not an accumulator ({accumulator_reason})",
            path.display()
        ),
        other => other.to_string(),
    }
}

/// The settings to blame when the engine for `options` cannot be created: the memory limits
/// from the smallest that fails up, or, when even the smallest fails, the number of uses.
fn engine_problems(config: &Config, options: &SandboxOptions, uses: usize, reason: &str) -> Vec<Problem> {
    let locations: &Locations = &config.locations;
    let smallest = SandboxOptions { max_memory_bytes: 1 << 20, ..*options };
    if let Err(reason) = sandbox::engine_fits(&smallest) {
        return vec![locations.whole(
            "pipelines",
            format!(
                "{uses} use(s) of functions need room for {} instances (every use twice, plus 4), and the \
                 WebAssembly engine cannot reserve it on this machine (is the address space limited?): {reason}",
                options.max_instances
            ),
        )];
    }
    let memories: BTreeSet<u64> = config.functions.values().map(|f| f.limits.memory_bytes).collect();
    let failing = memories.iter().copied().find_map(|memory| {
        sandbox::engine_fits(&SandboxOptions { max_memory_bytes: memory, ..*options }).err().map(|e| (memory, e))
    });
    match failing {
        Some((memory, reason)) => config
            .functions
            .values()
            .filter(|f| f.limits.memory_bytes >= memory)
            .map(|f| {
                locations.memory(
                    &f.id,
                    format!(
                        "the WebAssembly engine cannot give instances {} of memory on this machine: {reason}",
                        crate::config::types::show_size(f.limits.memory_bytes)
                    ),
                )
            })
            .collect(),
        None => vec![locations.whole("functions", format!("the WebAssembly engine cannot be created: {reason}"))],
    }
}

/// Whether `path` can be the data directory (see the module docs); what is wrong when not. In
/// [`Mode::Run`] it is created.
fn usable_data_dir(path: &Path, mode: Mode) -> Result<(), String> {
    // A relative path's last ancestor is "": the working directory.
    let nearest = path
        .ancestors()
        .map(|a| if a.as_os_str().is_empty() { Path::new(".") } else { a })
        .find(|a| std::fs::metadata(a).is_ok())
        .unwrap_or(Path::new("."));
    if nearest != path {
        if !nearest.is_dir() {
            return Err(format!("{} cannot be created: {} is not a directory", path.display(), nearest.display()));
        }
        match mode {
            Mode::Check => {
                return writable(nearest).map_err(|e| {
                    format!("{} cannot be created: cannot write in {}: {e}", path.display(), nearest.display())
                });
            }
            Mode::Run => {
                std::fs::create_dir_all(path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
            }
        }
    }
    if !path.is_dir() {
        return Err(format!("{} is not a directory", path.display()));
    }
    writable(path).map_err(|e| format!("cannot write in {}: {e}", path.display()))?;
    for (name, want_dir) in [(COMPILED_DIR, true), (state::DATABASE_FILE, false)] {
        let inside: PathBuf = path.join(name);
        match std::fs::metadata(&inside) {
            Ok(meta) if meta.is_dir() != want_dir => {
                let kind = if want_dir { "a directory" } else { "a file" };
                return Err(format!("{} is in the way: it must be {kind}", inside.display()));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether a file can be created in `dir`: creates one and removes it.
fn writable(dir: &Path) -> std::io::Result<()> {
    tempfile::Builder::new().prefix(".weir-check-").tempfile_in(dir)?.close()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_data_dir_that_does_not_exist_is_checked_where_it_would_be_created_and_not_created() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let data = dir.path().join("a/b/data");
        assert_eq!(usable_data_dir(&data, Mode::Check), Ok(()));
        assert!(!dir.path().join("a").exists(), "check creates nothing");
        assert_eq!(std::fs::read_dir(dir.path()).expect("listable").count(), 0, "check leaves nothing behind");
        assert_eq!(usable_data_dir(&data, Mode::Run), Ok(()));
        assert!(data.is_dir(), "run creates it");
        assert_eq!(std::fs::read_dir(&data).expect("listable").count(), 0, "the probe is removed");
    }

    #[test]
    fn a_data_dir_that_is_a_file_or_under_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let file = dir.path().join("file");
        std::fs::write(&file, "x").expect("written");
        for mode in [Mode::Check, Mode::Run] {
            let error = usable_data_dir(&file, mode).expect_err("a file");
            assert!(error.ends_with("file is not a directory"), "{error}");
            let error = usable_data_dir(&file.join("data"), mode).expect_err("under a file");
            assert!(error.contains("data cannot be created:") && error.ends_with("file is not a directory"), "{error}");
        }
    }

    #[test]
    fn a_data_dir_nobody_can_write_in_is_refused() {
        // Not even root can create files in /proc.
        for mode in [Mode::Check, Mode::Run] {
            let error = usable_data_dir(Path::new("/proc"), mode).expect_err("not writable");
            assert!(error.starts_with("cannot write in /proc:"), "{error}");
        }
        let error = usable_data_dir(Path::new("/proc/weir-data"), Mode::Check).expect_err("not creatable");
        assert!(error.starts_with("/proc/weir-data cannot be created: cannot write in /proc:"), "{error}");
        let error = usable_data_dir(Path::new("/proc/weir-data"), Mode::Run).expect_err("not creatable");
        assert!(error.starts_with("cannot create /proc/weir-data:"), "{error}");
    }

    #[test]
    fn a_cache_or_database_of_the_wrong_kind_is_in_the_way() {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join(COMPILED_DIR), "x").expect("written");
        let error = usable_data_dir(dir.path(), Mode::Check).expect_err("compiled is a file");
        assert!(error.ends_with("compiled is in the way: it must be a directory"), "{error}");
        std::fs::remove_file(dir.path().join(COMPILED_DIR)).expect("removed");
        std::fs::create_dir(dir.path().join(state::DATABASE_FILE)).expect("created");
        let error = usable_data_dir(dir.path(), Mode::Check).expect_err("the database is a directory");
        assert!(error.ends_with("weir.redb is in the way: it must be a file"), "{error}");
    }
}
