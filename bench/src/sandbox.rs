//! `weir-bench sandbox`: what running an operator as WebAssembly costs.
//!
//! - **WASM vs native:** `unit-convert` (°C → °F over every reading) called through the sandbox,
//!   against the same crate compiled into the host and called through the SDK's native test host,
//!   at several batch sizes. Both sides clone their input batch per call.
//! - **Boundary crossing:** the `identity` fixture (returns its input): the whole cost of a call
//!   is lowering the batch into the guest, the call, and lifting the result back.
//! - **A hostile neighbour:** `unit-convert` at 1024 readings per batch again, while another
//!   thread keeps calling the `faulty` fixture in its endless-loop mode (each call interrupted at
//!   its 10 ms time limit, its instance replaced): what one bad function costs the others.
//! - **Instances:** instantiating a pre-linked component and running its `init` (what replacing
//!   a faulted instance costs), and the pause of a hot swap (`FunctionInstance::replace`).
//!
//! Owns a temporary data directory (state store, compiled-artifact cache), removed at the end.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_host::batch::{Batch, BatchBuilder, CallContext, Series};
use weir_host::config::{FunctionConfig, FunctionLimits, QuarantineConfig};
use weir_host::operator::Operator;
use weir_host::sandbox::{CompiledFunction, FunctionOperator, Sandbox, SandboxOptions, StateLimits};
use weir_host::state::{self, StoreOptions};

use crate::report::{print_machine, verdict};

const CTX: CallContext = CallContext { processing_time: 1_700_000_000_000_000_000, watermark: 0 };
const CONVERT_PARAMS: &str = r#"{"conversion": "celsius_to_fahrenheit"}"#;

/// A WebAssembly operator against the same code native, per batch size; the cost of crossing
/// the boundary; instantiation and hot-swap times.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where the built components are.
    #[arg(long, default_value = "target/functions")]
    functions_dir: PathBuf,
    /// Readings per measurement round.
    #[arg(long, default_value_t = 2_000_000)]
    readings: usize,
}

impl Args {
    /// Measures and prints the batch-size table, the neighbour line and the instance table.
    pub fn execute(self) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        print_machine(&mut out)?;
        let shapes = [(1, 1), (64, 16), (1024, 16), (16384, 16), (1024, 1), (1024, 100)];
        let result = run(&self.functions_dir, &shapes, self.readings)?;
        writeln!(
            out,
            "| batch | series | native ns/reading | WASM ns/reading | native/WASM (target ≥ 0.5) | boundary ns/reading |"
        )?;
        writeln!(
            out,
            "|------:|-------:|------------------:|----------------:|---------------------------:|--------------------:|"
        )?;
        for row in &result.batches {
            writeln!(
                out,
                "| {} | {} | {:.2} | {:.2} | {:.2} ({}) | {:.2}{} |",
                row.batch,
                row.series,
                row.native_ns,
                row.wasm_ns,
                row.speed_ratio(),
                verdict(row.speed_ratio() >= 0.5),
                row.identity_ns,
                if row.batch == 1024 && row.series == 16 {
                    format!(" (target ≤ 15: {})", verdict(row.identity_ns <= 15.0))
                } else {
                    String::new()
                }
            )?;
        }
        let (alone, beside) = result.neighbour;
        writeln!(out)?;
        writeln!(
            out,
            "unit-convert at 1024 readings per batch: {alone:.2} ns/reading alone, {beside:.2} ns/reading while a \
             neighbour faulted {} times at its 10 ms time limit ({:+.0} %)",
            result.neighbour_faults,
            (beside / alone - 1.0) * 100.0
        )?;
        let i = result.instances;
        writeln!(out)?;
        writeln!(out, "| instances | median | target |")?;
        writeln!(out, "|-----------|-------:|--------|")?;
        writeln!(
            out,
            "| store and instance of a loaded function | {:.1} µs | ≤ 10 µs ({}) |",
            i.instantiate_us,
            verdict(i.instantiate_us <= 10.0)
        )?;
        writeln!(out, "| the same, ready for calls (`init` parses the parameters) | {:.1} µs | — |", i.start_us)?;
        writeln!(
            out,
            "| hot swap (replace the running version) | {:.1} µs | ≤ 5 ms ({}) |",
            i.hot_swap_us,
            verdict(i.hot_swap_us <= 5000.0)
        )?;
        writeln!(out, "| load a function from the compiled cache | {:.1} µs | — |", i.load_cached_us)?;
        Ok(())
    }
}

/// Why the bench could not run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxBenchError {
    /// A component is missing or does not load.
    #[error("{0}")]
    Setup(String),
}

fn setup(error: impl std::fmt::Display) -> SandboxBenchError {
    SandboxBenchError::Setup(error.to_string())
}

/// One batch shape's figures, nanoseconds per reading.
#[derive(Clone, Copy, Debug)]
pub struct BatchCost {
    /// Readings per batch.
    pub batch: usize,
    /// Series in its dictionary.
    pub series: usize,
    /// `unit-convert` compiled into the host.
    pub native_ns: f64,
    /// `unit-convert` as WebAssembly.
    pub wasm_ns: f64,
    /// The `identity` fixture as WebAssembly: the boundary crossing alone.
    pub identity_ns: f64,
}

impl BatchCost {
    /// Native time over WebAssembly time: 1.0 is parity.
    pub fn speed_ratio(&self) -> f64 {
        self.native_ns / self.wasm_ns
    }
}

/// Instance figures, microseconds (median of the runs).
#[derive(Clone, Copy, Debug)]
pub struct InstanceCost {
    /// A store and an instance of a loaded function, without `init`.
    pub instantiate_us: f64,
    /// A fresh instance of a loaded function ready for calls: `init` (which parses its
    /// parameters) included.
    pub start_us: f64,
    /// Replacing the running version of a use (the hot-swap pause of its pipeline).
    pub hot_swap_us: f64,
    /// Loading a function whose compiled artifact is in the cache.
    pub load_cached_us: f64,
}

/// Everything `weir-bench sandbox` measures.
#[derive(Clone, Debug)]
pub struct SandboxBench {
    /// Per batch size.
    pub batches: Vec<BatchCost>,
    /// `unit-convert` as WebAssembly at 1024 readings per batch, ns per reading: alone, and while
    /// a neighbour spins into its time limit over and over.
    pub neighbour: (f64, f64),
    /// Faults the neighbour had meanwhile.
    pub neighbour_faults: u64,
    /// Instances.
    pub instances: InstanceCost,
}

struct Harness {
    _dir: tempfile::TempDir,
    sandbox: Sandbox,
    functions_dir: PathBuf,
}

impl Harness {
    fn new(functions_dir: &Path) -> Result<Self, SandboxBenchError> {
        let dir = tempfile::tempdir().map_err(setup)?;
        let (store, _committer, _thread) = state::open(dir.path(), StoreOptions::default()).map_err(setup)?;
        let options = SandboxOptions {
            max_instances: 64,
            max_memory_bytes: FunctionLimits::DEFAULT.memory_bytes,
            max_core_instances: FunctionLimits::DEFAULT.instances,
            fuel: false,
            state_limits: StateLimits { max_key: 1024, max_value: 1 << 20 },
            execution: weir_host::config::WasmExecution::default_here(),
        };
        let sandbox = Sandbox::new(options, &dir.path().join("compiled"), store).map_err(setup)?;
        Ok(Self { _dir: dir, sandbox, functions_dir: functions_dir.to_owned() })
    }

    fn load(&self, id: &str, file: &str) -> Result<Arc<CompiledFunction>, SandboxBenchError> {
        self.load_path(id, &self.functions_dir.join(file))
    }

    fn load_path(&self, id: &str, component: &Path) -> Result<Arc<CompiledFunction>, SandboxBenchError> {
        let config = FunctionConfig {
            id: id.parse().map_err(setup)?,
            component: component.to_owned(),
            limits: FunctionLimits { timeout: Duration::from_secs(10), ..FunctionLimits::DEFAULT },
            quarantine: QuarantineConfig::DEFAULT,
        };
        self.sandbox.load(&config).map_err(setup)
    }

    fn operator(&self, function: &Arc<CompiledFunction>, params: &str) -> Result<FunctionOperator, SandboxBenchError> {
        self.sandbox.operator(function, "bench", "op", params).map_err(setup)
    }
}

/// `readings` temperatures over `series` series, 1 s apart.
fn host_batch(readings: usize, series: usize) -> Batch {
    let mut builder = BatchBuilder::new();
    let series: Vec<u32> =
        (0..series).map(|i| builder.intern(&Series::named(format!("plant/oven/{i}")).with_unit("Cel"))).collect();
    for i in 0..readings {
        builder.push(
            series[i % series.len()],
            1_700_000_000_000_000_000 + i as i64 * 1_000_000_000,
            20.0 + (i % 50) as f64,
        );
    }
    builder.finish()
}

fn sdk_batch(readings: usize, series: usize) -> weir_sdk::Batch {
    let mut batch = weir_sdk::Batch::with_capacity(readings);
    let series: Vec<weir_sdk::SeriesId> = (0..series)
        .map(|i| batch.intern_series(weir_sdk::Series::new(format!("plant/oven/{i}")).with_unit("Cel")))
        .collect();
    for i in 0..readings {
        let ts = weir_sdk::Timestamp::from_nanos(1_700_000_000_000_000_000 + i as i64 * 1_000_000_000);
        batch.push(series[i % series.len()], ts, 20.0 + (i % 50) as f64);
    }
    batch
}

/// Calls `call` until about `budget` of readings were processed (at least 3 calls), returns ns
/// per reading of the fastest of 3 rounds (the least disturbed by the rest of the machine).
fn ns_per_reading(batch: usize, readings_per_round: usize, mut call: impl FnMut()) -> f64 {
    let calls = (readings_per_round / batch).max(3);
    call(); // warm-up
    (0..3)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..calls {
                call();
            }
            started.elapsed().as_nanos() as f64 / (calls * batch) as f64
        })
        .fold(f64::INFINITY, f64::min)
}

/// Runs the bench with components from `functions_dir` over batches of each `(readings, series)`
/// shape; `readings_per_round` sets the work per measurement (a million readings gives stable
/// figures).
pub fn run(
    functions_dir: &Path,
    shapes: &[(usize, usize)],
    readings_per_round: usize,
) -> Result<SandboxBench, SandboxBenchError> {
    let harness = Harness::new(functions_dir)?;
    let convert = harness.load("unit-convert", "weir_fn_unit_convert.wasm")?;
    let identity = harness.load("identity", "weir_fixture_identity.wasm")?;
    let mut wasm_convert = harness.operator(&convert, CONVERT_PARAMS)?;
    let mut wasm_identity = harness.operator(&identity, "{}")?;
    let mut test_host = weir_sdk::testing::TestHost::new();
    let mut native_convert: weir_fn_unit_convert::UnitConvert =
        test_host.init_operator(CONVERT_PARAMS).map_err(|e| setup(format!("native unit-convert: {e}")))?;

    let mut batches = Vec::new();
    for &(batch, series) in shapes {
        let input = host_batch(batch, series);
        let native_input = sdk_batch(batch, series);
        let native_ns = ns_per_reading(batch, readings_per_round, || {
            let out = test_host.process(&mut native_convert, native_input.clone()).expect("native unit-convert runs");
            std::hint::black_box(out);
        });
        let wasm_ns = ns_per_reading(batch, readings_per_round, || {
            let out = wasm_convert.process(input.clone(), &CTX).expect("unit-convert runs");
            std::hint::black_box(out);
        });
        let identity_ns = ns_per_reading(batch, readings_per_round, || {
            let out = wasm_identity.process(input.clone(), &CTX).expect("identity runs");
            std::hint::black_box(out);
        });
        batches.push(BatchCost { batch, series, native_ns, wasm_ns, identity_ns });
    }
    let (neighbour, neighbour_faults) = with_hostile_neighbour(&harness, &mut wasm_convert, readings_per_round)?;
    let instances = instance_costs(&harness, &convert, functions_dir)?;
    Ok(SandboxBench { batches, neighbour, neighbour_faults, instances })
}

fn with_hostile_neighbour(
    harness: &Harness,
    convert: &mut FunctionOperator,
    readings_per_round: usize,
) -> Result<((f64, f64), u64), SandboxBenchError> {
    const BATCH: usize = 1024;
    let input = host_batch(BATCH, 16);
    let mut measure = || {
        ns_per_reading(BATCH, readings_per_round, || {
            std::hint::black_box(convert.process(input.clone(), &CTX).expect("unit-convert runs"));
        })
    };
    let alone = measure();
    let faulty_config = FunctionConfig {
        id: "faulty".parse().map_err(setup)?,
        component: harness.functions_dir.join("weir_fixture_faulty.wasm"),
        limits: FunctionLimits { timeout: Duration::from_millis(10), ..FunctionLimits::DEFAULT },
        quarantine: QuarantineConfig { after: u32::MAX, first: Duration::from_secs(1) },
    };
    let faulty = harness.sandbox.load(&faulty_config).map_err(setup)?;
    let mut spinner = harness.operator(&faulty, r#"{"mode": "spin", "trigger": 666}"#)?;
    let handle = spinner.instance_mut().handle();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let trigger = {
        let mut builder = BatchBuilder::new();
        let series = builder.intern(&Series::named("plant/cursed"));
        builder.push(series, 0, 666.0);
        builder.finish()
    };
    let beside = std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = spinner.process(trigger.clone(), &CTX);
            }
        });
        let beside = measure();
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        beside
    });
    Ok(((alone, beside), handle.snapshot().faults))
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

fn instance_costs(
    harness: &Harness,
    convert: &Arc<CompiledFunction>,
    functions_dir: &Path,
) -> Result<InstanceCost, SandboxBenchError> {
    const RUNS: usize = 200;
    let mut instantiate = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let op = harness.operator(convert, CONVERT_PARAMS)?;
        instantiate.push(started.elapsed().as_secs_f64() * 1e6);
        drop(op);
    }

    // Two versions of unit-convert: the second has a custom section appended.
    let dir = tempfile::tempdir().map_err(setup)?;
    let mut bytes = std::fs::read(functions_dir.join("weir_fn_unit_convert.wasm")).map_err(setup)?;
    bytes.extend_from_slice(&[0, 3, 1, b'v', b'2']);
    let second_path = dir.path().join("unit_convert_v2.wasm");
    std::fs::write(&second_path, &bytes).map_err(setup)?;
    let second = harness.load_path("unit-convert", &second_path)?;
    let mut op = harness.operator(convert, CONVERT_PARAMS)?;
    let input = host_batch(64, 16);
    let mut swaps = Vec::with_capacity(RUNS);
    for run in 0..RUNS {
        let next = if run % 2 == 0 { &second } else { convert };
        let started = Instant::now();
        op.instance_mut().replace(next).map_err(setup)?;
        swaps.push(started.elapsed().as_secs_f64() * 1e6);
        op.process(input.clone(), &CTX).map_err(|(_, e)| setup(e))?;
    }

    let mut loads = Vec::with_capacity(20);
    for _ in 0..20 {
        let started = Instant::now();
        harness.load_path("unit-convert", &second_path)?;
        loads.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let bare = harness.sandbox.instantiation_times(convert, RUNS).map_err(setup)?;
    Ok(InstanceCost {
        instantiate_us: median(bare.iter().map(|d| d.as_secs_f64() * 1e6).collect()),
        start_us: median(instantiate),
        hot_swap_us: median(swaps),
        load_cached_us: median(loads),
    })
}
