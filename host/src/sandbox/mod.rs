//! Sandbox: runs WebAssembly functions (components of `weir:stream@0.1.0`) under limits.
//!
//! **Boundary:** this is the only module that imports wasmtime.
//!
//! One [`Sandbox`] per process owns the `Engine` (pooling allocator, epoch interruption driven by
//! a ticker thread) and the linker. [`Sandbox::load`] turns a component file into a
//! [`CompiledFunction`] — one pre-instantiated component per function version — and
//! [`Sandbox::operator`] / [`Sandbox::decoder`] / [`Sandbox::accumulator`] create warm instances
//! that serve one use in one pipeline, reused across batches.
//!
//! Faults are values. A trap, an interrupted call (time limit), a refused memory grow, a host
//! failure or a malformed returned batch becomes a [`Fault`] (see [`fault`]); the instance is
//! discarded (a trap poisons its store) and re-created for the next call, carrying over the state
//! writes of its earlier successful calls. A function's domain error is not a fault: the instance
//! stays.
//!
//! Compiled artifacts are cached in `<data_dir>/compiled/` under the SHA-256 of the component
//! bytes and the engine's compatibility hash, each tagged with an HMAC under a key only this
//! gateway holds (see [`cache`]). Deserialising bytes of any other origin would be arbitrary code
//! execution, so **Invariant:** wasmtime only ever deserialises bytes whose tag verified for the
//! very component being loaded — copied into memory, or mapped from the open file they were
//! checked through when nobody else can change it; anything else in that directory is removed
//! and the component compiled again.
//!
//! Replacing the running version of a function is a first-class operation:
//! [`FunctionInstance::replace`] instantiates the new version with the same parameters and
//! namespace, so state carries over.

mod bindings;
mod cache;
mod engine;
mod fault;
mod handle;
mod host;
mod instance;
mod limiter;
mod output;
mod quarantine;
mod shadow;
mod world;

use std::collections::hash_map::DefaultHasher;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use cache::{Artifact, ArtifactCache};
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::{Component, HasSelf, Linker};

pub use engine::MemoryLayout;
pub use fault::{Fault, FaultKind, Malformed, StartFailure};
pub use handle::UseHandle;
use host::InstanceState;
pub use host::{InstanceLabels, StateLimits};
pub use instance::FunctionInstance;
pub(crate) use instance::round_to_millis;
pub use quarantine::{FaultRecord, VersionCalls};
pub use shadow::ShadowReport;
pub use world::{FunctionAccumulator, FunctionDecoder, FunctionOperator};

use crate::config::{FunctionConfig, FunctionId, FunctionLimits, QuarantineConfig, WasmExecution};
use crate::state::StateStore;

/// The first bytes of every WebAssembly binary, module or component.
const WASM_MAGIC: &[u8] = b"\0asm";

/// How often the epoch advances; call time limits are enforced to within one tick.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// A function's identity and the digest of its component bytes: one version.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct FunctionVersion {
    /// The function's id.
    pub id: FunctionId,
    /// SHA-256 of the component file.
    pub digest: [u8; 32],
}

impl FunctionVersion {
    /// The digest in hex.
    pub fn digest_hex(&self) -> String {
        hex::encode(self.digest)
    }
}

impl fmt::Display for FunctionVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, &self.digest_hex()[..12])
    }
}

impl fmt::Debug for FunctionVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Which world a component implements.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WorldKind {
    /// `weir:stream/operator`.
    Operator,
    /// `weir:stream/decoder`.
    Decoder,
    /// `weir:stream/accumulator`.
    Accumulator,
}

/// Why the sandbox could not set a function up.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The engine could not be created.
    #[error("cannot create the WebAssembly engine: {reason}")]
    Engine {
        /// Why.
        reason: String,
    },
    /// The component file cannot be read.
    #[error("cannot read component {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The bytes are not a valid component for this engine.
    #[error("function {function}: {path} is not a loadable WebAssembly component: {reason}")]
    Compile {
        /// The function.
        function: FunctionId,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The component implements none of the worlds.
    #[error(
        "function {function}: the component is not a weir:stream@0.1.0 operator ({operator_reason}), decoder ({decoder_reason}) or accumulator ({accumulator_reason})"
    )]
    WrongWorld {
        /// The function.
        function: FunctionId,
        /// Why it is not an operator.
        operator_reason: String,
        /// Why it is not a decoder.
        decoder_reason: String,
        /// Why it is not an accumulator.
        accumulator_reason: String,
    },
    /// A function is used in the wrong place (a decoder as an operator or the reverse).
    #[error("function {function} is {actual:?} but is used as {expected:?}")]
    WorldMismatch {
        /// The function.
        function: FunctionId,
        /// What the use needs.
        expected: WorldKind,
        /// What the component is.
        actual: WorldKind,
    },
    /// Instantiating or initialising failed.
    #[error("{function} ({use_name}) could not start: {reason}")]
    Start {
        /// The function version.
        function: String,
        /// The use.
        use_name: String,
        /// Whether instantiating or `init` failed.
        phase: StartPhase,
        /// Why.
        reason: String,
    },
}

/// Where starting an instance failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartPhase {
    /// Creating the instance (the component needs more than the engine offers, or its start
    /// function trapped): a problem of the component.
    Instantiate,
    /// `init`, which refused or faulted on the use's parameters.
    Init,
}

/// What a sandbox does with its cache of compiled functions.
#[derive(Clone, Copy, Debug)]
pub enum CompiledCache<'a> {
    /// Reads it and adds what it compiles (creating the directory).
    ReadWrite(&'a Path),
    /// Reads it if it exists, never writes (`weir check`, which leaves the data directory as it
    /// found it).
    ReadOnly(&'a Path),
    /// Compiles everything.
    None,
}

/// Sizing of the engine.
#[derive(Clone, Copy, Debug)]
pub struct SandboxOptions {
    /// Instances that may exist at once (every use, plus room for replacements).
    pub max_instances: u32,
    /// Largest memory cap of any function.
    pub max_memory_bytes: u64,
    /// Largest core-instance cap of any function.
    pub max_core_instances: u32,
    /// Whether any function is metered with fuel (metering slows every function down, so the
    /// engine only meters when asked to).
    pub fuel: bool,
    /// Per-key/value limits of function state.
    pub state_limits: StateLimits,
    /// Compiled to machine code, or interpreted.
    pub execution: WasmExecution,
}

impl SandboxOptions {
    /// Room for `functions`, used `uses` times in all (every use, plus as many again for
    /// instances being replaced, plus a few for tests of new versions).
    pub fn for_functions<'a>(
        functions: impl IntoIterator<Item = &'a FunctionConfig>,
        uses: usize,
        state_limits: StateLimits,
    ) -> Self {
        let mut options = Self {
            max_instances: u32::try_from(uses * 2 + 4).unwrap_or(u32::MAX),
            max_memory_bytes: 1 << 20,
            max_core_instances: 1,
            fuel: false,
            state_limits,
            execution: WasmExecution::default_here(),
        };
        for function in functions {
            options.max_memory_bytes = options.max_memory_bytes.max(function.limits.memory_bytes);
            options.max_core_instances = options.max_core_instances.max(function.limits.instances);
            options.fuel |= function.limits.fuel.is_some();
        }
        options
    }
}

/// The process-wide WebAssembly runtime.
pub struct Sandbox {
    engine: Engine,
    linker: Linker<InstanceState>,
    /// Where compiled functions are cached (and whether new ones are added), if anywhere.
    cache: ArtifactCache,
    store: StateStore,
    state_limits: StateLimits,
    fuel: bool,
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox").field("cache", &self.cache).finish_non_exhaustive()
    }
}

/// A function version compiled and linked, ready to instantiate.
pub struct CompiledFunction {
    version: FunctionVersion,
    limits: FunctionLimits,
    quarantine: QuarantineConfig,
    pre: world::Pre,
}

impl fmt::Debug for CompiledFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CompiledFunction")
            .field("version", &self.version)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl CompiledFunction {
    /// Its version.
    pub fn version(&self) -> &FunctionVersion {
        &self.version
    }

    /// Which world it implements.
    pub fn world(&self) -> WorldKind {
        self.pre.world()
    }
}

impl Sandbox {
    /// Creates the engine (and its epoch ticker). Compiled artifacts are cached in `cache_dir`.
    pub fn new(options: SandboxOptions, cache_dir: &Path, store: StateStore) -> Result<Self, SandboxError> {
        Self::with_cache(options, CompiledCache::ReadWrite(cache_dir), store)
    }

    /// Creates the engine (and its epoch ticker), using the compiled cache as `cache` says.
    pub fn with_cache(
        options: SandboxOptions,
        cache: CompiledCache<'_>,
        store: StateStore,
    ) -> Result<Self, SandboxError> {
        let engine_error = |e: wasmtime::Error| SandboxError::Engine { reason: format!("{e:#}") };
        let (engine, layout) = engine::engine(&options)?;
        tracing::info!(
            stage = "sandbox",
            execution = ?options.execution,
            ?layout,
            memories = options.max_instances.max(1).saturating_mul(2),
            reserved_mib = layout.reserved_bytes(&options) >> 20,
            "WebAssembly memory pool reserved"
        );
        start_epoch_ticker(&engine)?;

        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker).map_err(engine_error)?;
        bindings::operator::Operator::add_to_linker::<InstanceState, HasSelf<InstanceState>>(&mut linker, |s| s)
            .map_err(engine_error)?;
        let cache = match cache {
            CompiledCache::ReadWrite(dir) => {
                ArtifactCache::open(dir).map_err(|source| SandboxError::Read { path: dir.to_owned(), source })?
            }
            CompiledCache::ReadOnly(dir) => ArtifactCache::open_read_only(dir),
            CompiledCache::None => ArtifactCache::off(),
        };
        Ok(Self { engine, linker, cache, store, state_limits: options.state_limits, fuel: options.fuel })
    }

    /// The same engine, linker and cache, serving instances whose state is in `store`: functions
    /// loaded by either sandbox start in both.
    pub fn with_store(&self, store: StateStore) -> Self {
        Self {
            engine: self.engine.clone(),
            linker: self.linker.clone(),
            cache: self.cache.clone(),
            store,
            state_limits: self.state_limits,
            fuel: self.fuel,
        }
    }

    /// Compiles (or loads from the cache) the function's component and checks its world.
    pub fn load(&self, function: &FunctionConfig) -> Result<Arc<CompiledFunction>, SandboxError> {
        let path = &function.component;
        let bytes = std::fs::read(path).map_err(|source| SandboxError::Read { path: path.clone(), source })?;
        self.load_bytes(function, &bytes)
    }

    /// Compiles (or takes from the cache) and checks the component `bytes`, read by the caller
    /// from `function.component` (named in messages) — the fleet's verified artifacts come this
    /// way, so the bytes compiled are the bytes checked.
    pub fn load_bytes(&self, function: &FunctionConfig, bytes: &[u8]) -> Result<Arc<CompiledFunction>, SandboxError> {
        let path = &function.component;
        if function.limits.fuel.is_some() && !self.fuel {
            return Err(SandboxError::Compile {
                function: function.id.clone(),
                path: path.clone(),
                reason: "the function is metered with fuel, but this sandbox was created without fuel metering".into(),
            });
        }
        if bytes.is_empty() {
            return Err(SandboxError::Compile {
                function: function.id.clone(),
                path: path.clone(),
                reason: "the file is empty".into(),
            });
        }
        // The engine takes binaries only (no text format): anything else is refused in plain words
        // rather than with the parser's dump of the first bytes.
        if !bytes.starts_with(WASM_MAGIC) {
            return Err(SandboxError::Compile {
                function: function.id.clone(),
                path: path.clone(),
                reason: "not a WebAssembly binary (it does not start with \\0asm)".into(),
            });
        }
        let version = FunctionVersion { id: function.id.clone(), digest: Sha256::digest(bytes).into() };
        let component = self.compile_cached(&version, path, bytes)?;
        let instance_pre = self.linker.instantiate_pre(&component).map_err(|e| SandboxError::Compile {
            function: function.id.clone(),
            path: path.clone(),
            reason: format!("imports cannot be satisfied (only weir:stream@0.1.0 and wasi:* 0.2 are offered): {e:#}"),
        })?;
        let pre = world::Pre::new(instance_pre).map_err(|[operator_reason, decoder_reason, accumulator_reason]| {
            SandboxError::WrongWorld {
                function: function.id.clone(),
                operator_reason,
                decoder_reason,
                accumulator_reason,
            }
        })?;
        tracing::info!(stage = "sandbox", function = %version, world = ?pre.world(), "function loaded");
        Ok(Arc::new(CompiledFunction { version, limits: function.limits, quarantine: function.quarantine, pre }))
    }

    fn compile_cached(&self, version: &FunctionVersion, path: &Path, bytes: &[u8]) -> Result<Component, SandboxError> {
        let mut hasher = DefaultHasher::new();
        self.engine.precompile_compatibility_hash().hash(&mut hasher);
        let name = format!("{}-{:016x}", version.digest_hex(), hasher.finish());
        if let Some(artifact) = self.cache.load(&name) {
            // SAFETY: `artifact` holds the very bytes whose HMAC verified, under a key only this
            // gateway holds, for `name`: the digest of the component being loaded and this
            // engine's compatibility hash. Only `ArtifactCache::store` below makes such tags, over
            // what this engine's `Component::serialize` returned for a component it compiled from
            // bytes with that digest. Copied bytes are not read from the file again; a file used
            // in place is the open file the tag was checked through (named by its descriptor, not
            // its path), which nobody but this user — who can read the key — can change while
            // the component lives.
            #[allow(unsafe_code)]
            let deserialized = match &artifact {
                Artifact::InPlace(file) => unsafe {
                    Component::deserialize_file(&self.engine, Artifact::path_in_place(file))
                },
                Artifact::Copied(bytes) => unsafe { Component::deserialize(&self.engine, bytes) },
            };
            match deserialized {
                Ok(component) => return Ok(component),
                Err(e) => {
                    let file = self.cache.path(&name);
                    tracing::warn!(stage = "sandbox", file = %file.display(), error = %format!("{e:#}"), "cached function unusable, compiling again");
                    self.cache.remove(&file);
                }
            }
        }
        let component = Component::new(&self.engine, bytes).map_err(|e| SandboxError::Compile {
            function: version.id.clone(),
            path: path.to_owned(),
            reason: format!("{e:#}"),
        })?;
        let stored = component
            .serialize()
            .map_err(|e| format!("{e:#}"))
            .and_then(|artifact| self.cache.store(&name, &artifact).map_err(|e| e.to_string()));
        if let Err(error) = stored {
            tracing::warn!(stage = "sandbox", file = %self.cache.path(&name).display(), %error, "could not cache the compiled function");
        }
        Ok(component)
    }

    /// A warm operator instance of `function` for one use in a pipeline.
    pub fn operator(
        &self,
        function: &Arc<CompiledFunction>,
        pipeline: &str,
        use_name: &str,
        params_json: &str,
    ) -> Result<FunctionOperator, SandboxError> {
        self.expect_world(function, WorldKind::Operator)?;
        Ok(FunctionOperator::new(self.instance(function, pipeline, use_name, params_json)?))
    }

    /// A warm decoder instance of `function` for one pipeline.
    pub fn decoder(
        &self,
        function: &Arc<CompiledFunction>,
        pipeline: &str,
        use_name: &str,
        params_json: &str,
    ) -> Result<FunctionDecoder, SandboxError> {
        self.expect_world(function, WorldKind::Decoder)?;
        Ok(FunctionDecoder::new(self.instance(function, pipeline, use_name, params_json)?))
    }

    /// A warm accumulator instance of `function`: the custom aggregate of one pipeline's windows.
    pub fn accumulator(
        &self,
        function: &Arc<CompiledFunction>,
        pipeline: &str,
        use_name: &str,
        params_json: &str,
    ) -> Result<FunctionAccumulator, SandboxError> {
        self.expect_world(function, WorldKind::Accumulator)?;
        Ok(FunctionAccumulator::new(self.instance(function, pipeline, use_name, params_json)?))
    }

    /// How long creating a store and instantiating `function` in it takes, `runs` times, without
    /// running `init` (for `weir-bench sandbox`).
    pub fn instantiation_times(
        &self,
        function: &Arc<CompiledFunction>,
        runs: usize,
    ) -> Result<Vec<Duration>, SandboxError> {
        instance::time_instantiations(&self.runtime(), function, runs).map_err(|reason| SandboxError::Start {
            function: function.version.to_string(),
            use_name: "bench".into(),
            phase: StartPhase::Instantiate,
            reason,
        })
    }

    fn runtime(&self) -> instance::Runtime {
        instance::Runtime {
            engine: self.engine.clone(),
            store: self.store.clone(),
            state_limits: self.state_limits,
            fuel_metering: self.fuel,
        }
    }

    fn expect_world(&self, function: &CompiledFunction, expected: WorldKind) -> Result<(), SandboxError> {
        let actual = function.world();
        if actual == expected {
            Ok(())
        } else {
            Err(SandboxError::WorldMismatch { function: function.version.id.clone(), expected, actual })
        }
    }

    fn instance(
        &self,
        function: &Arc<CompiledFunction>,
        pipeline: &str,
        use_name: &str,
        params_json: &str,
    ) -> Result<FunctionInstance, SandboxError> {
        let labels = InstanceLabels {
            function: function.version.to_string(),
            pipeline: pipeline.to_owned(),
            operator: use_name.to_owned(),
        };
        FunctionInstance::start(self.runtime(), Arc::clone(function), labels, params_json.to_owned())
    }
}

/// Whether an engine for `options` can be created on this machine; the reason when not. (For
/// finding which setting makes [`Sandbox::new`] fail.)
pub fn engine_fits(options: &SandboxOptions) -> Result<(), String> {
    engine::engine(options).map(drop).map_err(|e| match e {
        SandboxError::Engine { reason } => reason,
        other => other.to_string(),
    })
}

/// The SHA-256 of a component file: the digest that names its version.
pub fn component_digest(path: &Path) -> Result<[u8; 32], SandboxError> {
    let bytes = std::fs::read(path).map_err(|source| SandboxError::Read { path: path.to_owned(), source })?;
    Ok(Sha256::digest(&bytes).into())
}

/// Advances the engine's epoch every [`EPOCH_TICK`] until the engine is dropped. Without it no
/// call could time out, so failing to start it fails the sandbox.
fn start_epoch_ticker(engine: &Engine) -> Result<(), SandboxError> {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("weir-epoch".into())
        .spawn(move || {
            loop {
                std::thread::sleep(EPOCH_TICK);
                match weak.upgrade() {
                    Some(engine) => engine.increment_epoch(),
                    None => break,
                }
            }
        })
        .map(drop)
        .map_err(|e| SandboxError::Engine { reason: format!("cannot start the epoch ticker thread: {e}") })
}

/// Epoch ticks for a time limit (rounded up, plus one so a call gets at least the full limit).
fn deadline_ticks(timeout: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos();
    u64::try_from(timeout.as_nanos().div_ceil(tick)).unwrap_or(u64::MAX).saturating_add(1)
}

#[cfg(test)]
mod tests;
