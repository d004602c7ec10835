//! Tests against the real components built by `cargo xtask build-functions`, run compiled or —
//! with `WEIR_TEST_WASM_EXECUTION=interpreted`, as CI runs them a second time — on the
//! interpreter.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;
use crate::batch::{Batch, BatchBuilder, CallContext, Message};
use crate::config::{Durability, FunctionConfig, FunctionLimits, QuarantineConfig, WasmExecution};
use crate::decode::{Decode, DecodeError};
use crate::operator::{Operator, OperatorFailure};
use crate::state::{self, StoreOptions};

fn functions_dir() -> PathBuf {
    let dir = std::env::var_os("WEIR_FUNCTIONS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/functions"));
    assert!(
        dir.join("weir_fn_threshold_alert.wasm").is_file(),
        "no components in {}: run `cargo xtask build-functions`",
        dir.display()
    );
    dir
}

/// How these tests run functions: this machine's default unless `WEIR_TEST_WASM_EXECUTION` says
/// `compiled` or `interpreted`.
fn execution() -> WasmExecution {
    match std::env::var("WEIR_TEST_WASM_EXECUTION").as_deref() {
        Ok("interpreted") => WasmExecution::Interpreted,
        Ok("compiled") => WasmExecution::Compiled,
        Ok(other) => panic!("WEIR_TEST_WASM_EXECUTION={other:?}: expected compiled or interpreted"),
        Err(_) => WasmExecution::default_here(),
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    sandbox: Sandbox,
    store: StateStore,
    committer: state::Committer,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, committer, _thread) = state::open(
        dir.path(),
        StoreOptions { durability: Durability::Sync, dead_letter_capacity: 10, ..StoreOptions::default() },
    )
    .expect("store");
    let options = SandboxOptions {
        max_instances: 16,
        max_memory_bytes: 64 << 20,
        max_core_instances: 32,
        fuel: true,
        state_limits: StateLimits { max_key: 1024, max_value: 64 * 1024 },
        execution: execution(),
    };
    let sandbox = Sandbox::new(options, &dir.path().join("compiled"), store.clone()).expect("sandbox");
    Fixture { _dir: dir, sandbox, store, committer }
}

fn function(id: &str, file: &str, limits: FunctionLimits) -> FunctionConfig {
    FunctionConfig {
        id: id.parse().expect("valid id"),
        component: functions_dir().join(file),
        limits,
        quarantine: QuarantineConfig { after: 1000, first: Duration::from_secs(60) },
    }
}

/// Generous on time: the time limit is wall-clock, and on a loaded machine under the interpreter an
/// ordinary start or call can take a few hundred milliseconds. Only the test of the limit itself
/// sets a tight one.
const LIMITS: FunctionLimits =
    FunctionLimits { memory_bytes: 16 << 20, timeout: Duration::from_secs(10), ..FunctionLimits::DEFAULT };
const CTX: CallContext = CallContext { processing_time: 1_700_000_000_000_000_000, watermark: 0 };

fn batch(values: &[f64]) -> Batch {
    let mut builder = BatchBuilder::new();
    let index = builder.intern(&crate::batch::Series::named("plant/t").with_unit("Cel"));
    for (i, v) in values.iter().enumerate() {
        builder.push(index, i as i64 * 1_000_000_000, *v);
    }
    builder.finish()
}

fn faulty(fixture: &Fixture, mode: &str) -> FunctionOperator {
    let compiled = fixture.sandbox.load(&function("faulty", "weir_fixture_faulty.wasm", LIMITS)).expect("loads");
    fixture
        .sandbox
        .operator(&compiled, "p", "faulty", &format!(r#"{{"mode": "{mode}", "trigger": 666}}"#))
        .expect("starts")
}

fn passed_counter(writes: &[state::StateWrite]) -> Option<u64> {
    writes
        .iter()
        .rev()
        .find(|w| w.key == b"passed")
        .and_then(|w| w.value.clone())
        .map(|v| u64::from_le_bytes(v.try_into().expect("8 bytes")))
}

#[test]
fn operator_component_processes_batches() {
    let fixture = fixture();
    let compiled = fixture.sandbox.load(&function("unit-convert", "weir_fn_unit_convert.wasm", LIMITS)).expect("loads");
    assert_eq!(compiled.world(), WorldKind::Operator);
    let mut op = fixture
        .sandbox
        .operator(&compiled, "p", "convert", r#"{"conversion": "celsius_to_fahrenheit"}"#)
        .expect("starts");
    let out = op.process(batch(&[0.0, 100.0]), &CTX).expect("converts");
    assert_eq!(out.values(), [32.0, 212.0]);
    assert_eq!(out.series()[0].unit.as_deref(), Some("[degF]"));
}

#[test]
fn init_refusing_its_params_stops_the_start() {
    let fixture = fixture();
    let compiled = fixture.sandbox.load(&function("unit-convert", "weir_fn_unit_convert.wasm", LIMITS)).expect("loads");
    let err =
        fixture.sandbox.operator(&compiled, "p", "convert", r#"{"conversion": "furlongs"}"#).expect_err("bad params");
    assert!(err.to_string().contains("init refused: invalid params"), "{err}");
}

#[test]
fn components_are_checked_against_the_world_they_are_used_as() {
    let fixture = fixture();
    let decoder =
        fixture.sandbox.load(&function("frame-decoder", "weir_fn_frame_decoder.wasm", LIMITS)).expect("loads");
    assert_eq!(decoder.world(), WorldKind::Decoder);
    let err = fixture.sandbox.operator(&decoder, "p", "x", "{}").expect_err("a decoder is not an operator");
    assert!(matches!(err, SandboxError::WorldMismatch { .. }), "{err}");
}

/// The cached artifact of a loaded function version (not its tag), in the fixture's `compiled/`
/// directory.
fn cached_artifact(fixture: &Fixture, version: &FunctionVersion) -> PathBuf {
    let prefix = version.digest_hex();
    let mut files = std::fs::read_dir(fixture._dir.path().join("compiled"))
        .expect("cache directory")
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "cwasm"))
        .filter(|path| path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix)));
    let file = files.next().expect("the version is cached");
    assert!(files.next().is_none(), "one file per version");
    file
}

#[test]
fn an_artifact_planted_under_a_functions_name_is_not_run_but_compiled_again() {
    let fixture = fixture();
    let convert = function("unit-convert", "weir_fn_unit_convert.wasm", LIMITS);
    let a = fixture.sandbox.load(&convert).expect("loads");
    let b = fixture.sandbox.load(&function("identity", "weir_fixture_identity.wasm", LIMITS)).expect("loads");
    let (a_file, b_file) = (cached_artifact(&fixture, a.version()), cached_artifact(&fixture, b.version()));
    let planted = std::fs::read(&b_file).expect("reads");
    std::fs::write(&a_file, &planted).expect("plants identity's artifact under unit-convert's name");

    let a = fixture.sandbox.load(&convert).expect("loads");
    let mut op = fixture
        .sandbox
        .operator(&a, "p", "convert", r#"{"conversion": "celsius_to_fahrenheit"}"#)
        .expect("unit-convert's own code accepts its params");
    let out = op.process(batch(&[0.0, 100.0]), &CTX).expect("converts");
    assert_eq!(out.values(), [32.0, 212.0], "unit-convert runs, not the planted identity");
    assert_ne!(std::fs::read(&a_file).expect("cached again"), planted, "the planted file is replaced");
}

#[test]
fn decoder_component_decodes_frames_and_refuses_corrupt_ones() {
    let fixture = fixture();
    let compiled =
        fixture.sandbox.load(&function("frame-decoder", "weir_fn_frame_decoder.wasm", LIMITS)).expect("loads");
    let mut decoder = fixture.sandbox.decoder(&compiled, "p", "frames", "{}").expect("starts");
    let frame = [
        0x01, 0x00, 0x07, 0x65, 0x53, 0xf1, 0x00, 0x02, 0x00, 0x00, 0x00, 0x08, 0x66, 0x02, 0x01, 0xf4, 0x27, 0x94,
        0x1e, 0x7c,
    ];
    let message =
        |payload: &[u8]| Message { topic: "f".into(), payload: bytes::Bytes::copy_from_slice(payload), received_at: 0 };
    let batch = decoder.decode(&message(&frame), &CTX).expect("valid frame");
    assert_eq!(batch.values(), [21.5, 1013.2]);
    let err = decoder.decode(&message(&frame[..12]), &CTX).expect_err("truncated");
    assert!(matches!(&err, DecodeError::Refused { reason, .. } if reason.contains("declares 2 readings")), "{err}");
    assert!(decoder.decode(&message(&frame), &CTX).is_ok(), "a refusal keeps the instance");
}

#[test]
fn panic_is_a_fault_with_its_message_and_the_next_call_gets_a_fresh_instance() {
    let fixture = fixture();
    let mut op = faulty(&fixture, "panic");
    op.process(batch(&[1.0, 2.0]), &CTX).expect("no trigger");
    let (input, failure) = op.process(batch(&[3.0, 666.0]), &CTX).expect_err("trigger");
    assert_eq!(input.values(), [3.0, 666.0], "the input comes back for the dead letter");
    assert!(
        matches!(&failure, OperatorFailure::Fault { fault: Fault::Panic { message } } if message.contains("value 666 is cursed")),
        "{failure}"
    );
    assert_eq!(op.instance_mut().consecutive_faults(), 1);
    op.process(batch(&[4.0]), &CTX).expect("a new instance serves the next batch");
    assert_eq!(op.instance_mut().consecutive_faults(), 0);
    // 2 readings before the fault + 1 after; the faulted call's write (of 4) is gone.
    assert_eq!(passed_counter(&op.take_state_writes()), Some(3));
}

#[test]
fn endless_loop_is_interrupted_at_the_time_limit() {
    let fixture = fixture();
    let limits = FunctionLimits { timeout: Duration::from_secs(1), ..LIMITS };
    let mut op = faulty_with(&fixture, "spin", &function("faulty", "weir_fixture_faulty.wasm", limits));
    let started = std::time::Instant::now();
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("spins");
    assert_eq!(fault(&failure), &Fault::Timeout { limit: limits.timeout });
    assert_eq!(failure.to_string(), "faulted: timed out: the call ran longer than its limit of 1s");
    assert!(started.elapsed() < Duration::from_secs(10), "interrupted, not left running");
    op.process(batch(&[1.0]), &CTX).expect("recovers");
}

#[test]
fn unbounded_allocation_stops_at_the_memory_limit() {
    let fixture = fixture();
    let mut op = faulty(&fixture, "allocate");
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("allocates");
    assert!(
        matches!(fault(&failure), Fault::Memory { desired, limit } if *desired > *limit && *limit == 16 << 20),
        "{failure}"
    );
    assert!(failure.to_string().starts_with("faulted: memory limit: tried to grow linear memory to "), "{failure}");
    op.process(batch(&[1.0]), &CTX).expect("recovers");
}

#[test]
fn exit_is_a_fault_and_domain_errors_keep_the_instance() {
    let fixture = fixture();
    let mut op = faulty(&fixture, "exit");
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("exits");
    assert_eq!(fault(&failure), &Fault::Exit { code: 1 });
    assert!(failure.to_string().contains("called exit (status 1"), "{failure}");

    let mut op = faulty(&fixture, "refuse");
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("refuses");
    assert!(matches!(&failure, OperatorFailure::Refused { reason } if reason.contains("666 refused")), "{failure}");
    assert_eq!(op.instance_mut().consecutive_faults(), 0, "a refusal is not a fault");
    assert_eq!(passed_counter(&op.take_state_writes()), None, "the refused call's write is discarded");
}

#[tokio::test]
async fn state_is_read_back_after_commit_and_survives_new_instances() {
    let fixture = fixture();
    let compiled =
        fixture.sandbox.load(&function("moving-average", "weir_fn_moving_average.wasm", LIMITS)).expect("loads");
    let params = r#"{"window": 2}"#;
    let mut first = fixture.sandbox.operator(&compiled, "p", "avg", params).expect("starts");
    assert_eq!(first.process(batch(&[2.0, 4.0]), &CTX).expect("ok").values(), [2.0, 3.0]);
    let writes = first.take_state_writes();
    assert!(writes.iter().all(|w| w.namespace == "p/avg"));
    fixture.committer.commit(state::ChangeSet { state_writes: writes, ..Default::default() }).await.expect("commit");
    drop(first);
    let mut second = fixture.sandbox.operator(&compiled, "p", "avg", params).expect("starts");
    assert_eq!(second.process(batch(&[6.0]), &CTX).expect("ok").values(), [5.0], "window [4, 6] from committed state");
    let mut other_use = fixture.sandbox.operator(&compiled, "p", "avg2", params).expect("starts");
    assert_eq!(other_use.process(batch(&[6.0]), &CTX).expect("ok").values(), [6.0], "namespaces are separate");
    assert!(fixture.store.function_state_get("p/avg", b"window/plant/t").expect("read").is_some());
}

#[test]
fn replacing_the_version_keeps_uncommitted_state() {
    let fixture = fixture();
    let compiled =
        fixture.sandbox.load(&function("moving-average", "weir_fn_moving_average.wasm", LIMITS)).expect("loads");
    let mut op = fixture.sandbox.operator(&compiled, "p", "avg", r#"{"window": 3}"#).expect("starts");
    op.process(batch(&[3.0, 6.0]), &CTX).expect("ok");
    let reloaded =
        fixture.sandbox.load(&function("moving-average", "weir_fn_moving_average.wasm", LIMITS)).expect("loads again");
    op.instance_mut().replace(&reloaded).expect("replaces");
    assert_eq!(op.process(batch(&[9.0]), &CTX).expect("ok").values(), [6.0], "window [3, 6, 9] spans the swap");
    let unit_convert =
        fixture.sandbox.load(&function("frame-decoder", "weir_fn_frame_decoder.wasm", LIMITS)).expect("loads");
    assert!(op.instance_mut().replace(&unit_convert).is_err(), "a decoder cannot replace an operator");
    assert_eq!(op.process(batch(&[12.0]), &CTX).expect("old version still runs").values(), [9.0]);
}

#[test]
fn compiled_components_are_cached_and_reused() {
    let fixture = fixture();
    let config = function("threshold-alert", "weir_fn_threshold_alert.wasm", LIMITS);
    let compiled = fixture.sandbox.load(&config).expect("compiles");
    let artifacts = std::fs::read_dir(fixture._dir.path().join("compiled"))
        .expect("cache dir")
        .filter(|entry| entry.as_ref().expect("entry").path().extension().is_some_and(|e| e == "cwasm"))
        .count();
    assert_eq!(artifacts, 1, "one artifact per component and engine");
    let file = cached_artifact(&fixture, compiled.version());
    let modified = std::fs::metadata(&file).and_then(|m| m.modified()).expect("mtime");
    fixture.sandbox.load(&config).expect("loads from the cache");
    assert_eq!(std::fs::metadata(&file).and_then(|m| m.modified()).expect("mtime"), modified, "not written again");
}

#[test]
fn a_read_only_cache_is_read_and_never_written() {
    let fixture = fixture();
    let cache_dir = fixture._dir.path().join("compiled");
    let config = function("threshold-alert", "weir_fn_threshold_alert.wasm", LIMITS);
    let options = SandboxOptions {
        execution: execution(),
        ..SandboxOptions::for_functions([&config], 1, StateLimits { max_key: 1024, max_value: 1024 })
    };
    let store = StateStore::in_memory().expect("in-memory store");
    let before: Vec<_> = std::fs::read_dir(&cache_dir).expect("cache dir").map(|e| e.expect("entry").path()).collect();
    let reader = Sandbox::with_cache(options, CompiledCache::ReadOnly(&cache_dir), store).expect("sandbox");
    reader.load(&config).expect("compiles");
    let after: Vec<_> = std::fs::read_dir(&cache_dir).expect("cache dir").map(|e| e.expect("entry").path()).collect();
    assert_eq!(before, after, "nothing written");
}

#[test]
fn files_that_are_not_webassembly_are_refused_in_plain_words() {
    let fixture = fixture();
    let dir = tempfile::tempdir().expect("temp dir");
    for (bytes, reason) in [(&b""[..], "the file is empty"), (b"hello\n", "not a WebAssembly binary")] {
        let path = dir.path().join("f.wasm");
        std::fs::write(&path, bytes).expect("written");
        let config = FunctionConfig { component: path, ..function("f", "weir_fn_threshold_alert.wasm", LIMITS) };
        let err = fixture.sandbox.load(&config).expect_err("not a component");
        assert!(matches!(&err, SandboxError::Compile { reason: r, .. } if r.starts_with(reason)), "{err}");
    }
}

#[test]
fn a_failed_start_says_whether_init_or_instantiation_failed() {
    let fixture = fixture();
    let compiled = fixture.sandbox.load(&function("unit-convert", "weir_fn_unit_convert.wasm", LIMITS)).expect("loads");
    let err = fixture.sandbox.operator(&compiled, "p", "c", r#"{"conversion": "furlongs"}"#).expect_err("refused");
    assert!(matches!(err, SandboxError::Start { phase: StartPhase::Init, .. }), "{err}");
}

#[test]
fn accumulator_component_creates_adds_merges_and_finishes() {
    use crate::window::accumulator::Accumulator;
    let fixture = fixture();
    let compiled =
        fixture.sandbox.load(&function("band-histogram", "weir_fn_band_histogram.wasm", LIMITS)).expect("loads");
    assert_eq!(compiled.world(), WorldKind::Accumulator);
    let err = fixture.sandbox.operator(&compiled, "p", "x", "{}").expect_err("an accumulator is not an operator");
    assert!(matches!(err, SandboxError::WorldMismatch { .. }), "{err}");
    let err =
        fixture.sandbox.accumulator(&compiled, "p", "window-aggregate", r#"{"edges": []}"#).expect_err("no edges");
    assert!(err.to_string().contains("init refused: invalid params"), "{err}");

    let mut histogram =
        fixture.sandbox.accumulator(&compiled, "p", "window-aggregate", r#"{"edges": [0, 10]}"#).expect("starts");
    let empty = histogram.create().expect("create");
    let a = histogram.add(&empty, &[1, 2, 3], &[-5.0, 5.0, 15.0]).expect("add");
    let b = histogram.add(&empty, &[4], &[7.0]).expect("add");
    let merged = histogram.merge(&a, &b).expect("merge");
    let values = histogram.finish(&merged, 0, 10).expect("finish");
    let want = [("below_0", 1.0), ("0_to_10", 2.0), ("from_10", 1.0), ("nan", 0.0)];
    assert_eq!(values, want.map(|(name, count)| (name.to_owned(), count)));

    let refused = histogram.add(b"\xff not a partial", &[1], &[1.0]).expect_err("a foreign partial");
    assert!(refused.contains("refused: invalid input"), "{refused}");
    assert_eq!(histogram.instance_mut().consecutive_faults(), 0, "a refusal is not a fault");
}

fn faulty_with(fixture: &Fixture, mode: &str, config: &FunctionConfig) -> FunctionOperator {
    let compiled = fixture.sandbox.load(config).expect("loads");
    fixture
        .sandbox
        .operator(&compiled, "p", "faulty", &format!(r#"{{"mode": "{mode}", "trigger": 666}}"#))
        .expect("starts")
}

fn fault(failure: &OperatorFailure) -> &Fault {
    match failure {
        OperatorFailure::Fault { fault } => fault,
        other => panic!("expected a fault, got {other}"),
    }
}

fn fault_reason(failure: &OperatorFailure) -> String {
    fault(failure).to_string()
}

#[test]
fn endless_recursion_overflows_the_stack_in_linear_memory() {
    let fixture = fixture();
    let mut op = faulty(&fixture, "recurse");
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("recurses");
    // The fixture's frames live on the shadow stack in linear memory (1 MiB, below the data), so
    // they run off the bottom of memory before the engine's own stack limit is reached.
    assert_eq!(
        fault_reason(&failure),
        "trap: out of bounds memory access (for a Rust or C function, usually its stack overflowing)"
    );
    op.process(batch(&[1.0]), &CTX).expect("recovers");
}

#[test]
fn unbounded_state_writes_through_the_import_stop_at_the_state_write_limit() {
    let fixture = fixture();
    let limits = FunctionLimits { state_write_bytes: 1 << 20, ..LIMITS };
    let mut op = faulty_with(&fixture, "flood_state", &function("faulty", "weir_fixture_faulty.wasm", limits));
    op.process(batch(&[1.0, 2.0]), &CTX).expect("no trigger");
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("floods");
    assert!(matches!(fault(&failure), Fault::StateWrites { limit: 1_048_576, .. }), "{failure}");
    let reason = fault_reason(&failure);
    assert!(reason.starts_with("state write limit: tried to hold"), "{reason}");
    assert!(reason.ends_with("the limit is 1048576 bytes"), "{reason}");
    op.process(batch(&[3.0]), &CTX).expect("recovers");
    // Only the successful calls' writes are kept: the counter, not the flood.
    let writes = op.take_state_writes();
    assert_eq!(passed_counter(&writes), Some(3));
    assert_eq!(writes.len(), 1, "{} writes", writes.len());
    // Taking the writes frees the budget: the next batches may write again.
    for _ in 0..100 {
        op.process(batch(&[1.0]), &CTX).expect("within the budget again");
        op.take_state_writes();
    }
}

#[tokio::test]
async fn writes_beyond_the_state_quota_are_refused_counting_committed_state() {
    let fixture = fixture();
    let quota = 256 << 10;
    let limits = FunctionLimits { state_write_bytes: 4 << 20, state_quota_bytes: quota, ..LIMITS };
    let mut op = faulty_with(&fixture, "flood_state", &function("faulty", "weir_fixture_faulty.wasm", limits));
    // Uncommitted writes count: 64 KiB values fit three times beside the counter, not four.
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("floods");
    // The guest sees `quota-exceeded` and gives up the batch: a refusal, not a fault.
    assert!(
        matches!(&failure, OperatorFailure::Refused { reason } if reason.contains("state quota of 262144 bytes exceeded")),
        "{failure}"
    );
    op.process(batch(&[1.0]), &CTX).expect("writes within the quota are taken");
    // Committed state counts: fill the namespace to within 100 bytes of the quota.
    let filler = state::StateWrite {
        namespace: "p/faulty".to_owned(),
        key: b"filler".to_vec(),
        value: Some(vec![0; usize::try_from(quota).expect("small") - 100 - b"filler".len()]),
    };
    let mut writes = op.take_state_writes();
    writes.push(filler);
    fixture.committer.commit(state::ChangeSet { state_writes: writes, ..Default::default() }).await.expect("commit");
    let held = fixture.store.function_state_usage("p/faulty").expect("read");
    assert_eq!(held, quota - 100 + b"passed".len() as u64 + 8);
    // Overwriting the counter does not grow the state: still taken at the brim.
    op.process(batch(&[2.0]), &CTX).expect("an overwrite of the same size fits");
    assert_eq!(passed_counter(&op.take_state_writes()), Some(2));
    // With a write budget of two values, only the committed filler can make the first value
    // refused rather than the third trap.
    let tight = FunctionLimits { state_write_bytes: 128 << 10, state_quota_bytes: quota, ..LIMITS };
    let mut tight = faulty_with(&fixture, "flood_state", &function("faulty", "weir_fixture_faulty.wasm", tight));
    let (_, failure) = tight.process(batch(&[666.0]), &CTX).expect_err("no room for one more value");
    assert!(matches!(&failure, OperatorFailure::Refused { reason } if reason.contains("quota")), "{failure}");
    // Deleting committed state makes room again.
    let delete = state::StateWrite { namespace: "p/faulty".to_owned(), key: b"filler".to_vec(), value: None };
    fixture
        .committer
        .commit(state::ChangeSet { state_writes: vec![delete], ..Default::default() })
        .await
        .expect("commit");
    assert_eq!(fixture.store.function_state_usage("p/faulty").expect("read"), b"passed".len() as u64 + 8);
}

#[test]
fn a_huge_allocation_request_through_wasi_random_is_refused_not_served() {
    let fixture = fixture();
    let mut op = faulty(&fixture, "huge_random");
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("asks for 2^62 bytes");
    assert_eq!(fault(&failure).kind(), FaultKind::Runtime);
    let reason = fault_reason(&failure);
    assert_eq!(reason, "error: requested len 4611686018427387904 exceeds limit 65536");
    op.process(batch(&[1.0]), &CTX).expect("recovers");
}

#[test]
fn a_malformed_returned_batch_is_a_fault() {
    let fixture = fixture();
    let mut op = faulty(&fixture, "malformed");
    let (input, failure) = op.process(batch(&[1.0, 666.0]), &CTX).expect_err("malformed output");
    assert_eq!(input.values(), [1.0, 666.0]);
    assert!(matches!(fault(&failure), Fault::MalformedResult { what: Malformed::Batch { .. } }), "{failure}");
    let reason = fault_reason(&failure);
    assert!(reason.starts_with("returned a malformed batch"), "{reason}");
    assert_eq!(op.process(batch(&[5.0]), &CTX).expect("recovers").values(), [5.0]);
}

#[test]
fn fuel_stops_an_endless_loop_before_the_time_limit() {
    let fixture = fixture();
    let limits = FunctionLimits { fuel: Some(5_000_000), timeout: Duration::from_secs(30), ..LIMITS };
    let mut op = faulty_with(&fixture, "spin", &function("faulty", "weir_fixture_faulty.wasm", limits));
    op.process(batch(&[1.0; 100]), &CTX).expect("an ordinary batch fits in the fuel");
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("spins");
    assert_eq!(fault(&failure), &Fault::FuelExhausted { fuel: 5_000_000 });
    assert_eq!(fault_reason(&failure), "fuel exhausted: the call used all of its 5000000 units");
    op.process(batch(&[1.0]), &CTX).expect("each call gets its fuel afresh");
}

#[test]
fn a_function_that_keeps_faulting_is_quarantined_then_tried_again() {
    let fixture = fixture();
    let quarantine = QuarantineConfig { after: 3, first: Duration::from_millis(300) };
    let config = FunctionConfig { quarantine, ..function("faulty", "weir_fixture_faulty.wasm", LIMITS) };
    let mut op = faulty_with(&fixture, "panic", &config);
    let health = op.instance_mut().handle();
    for n in 1..=3 {
        op.process(batch(&[666.0]), &CTX).expect_err("panics");
        assert_eq!(health.snapshot().consecutive_faults, n);
    }
    let left = health.quarantined_for().expect("quarantined after 3 faults in a row");
    assert!(left <= Duration::from_millis(300));
    // Quarantined: the function is not called, even with a harmless batch.
    let (input, failure) = op.process(batch(&[1.0]), &CTX).expect_err("quarantined");
    assert_eq!(input.values(), [1.0]);
    assert!(matches!(failure, OperatorFailure::Quarantined { .. }), "{failure}");
    assert!(failure.to_string().starts_with("quarantined for another "), "{failure}");
    assert_eq!(health.snapshot().faults, 3, "a refused call is not a fault");

    // After the period a trial call is made; a fault quarantines again, for twice as long.
    std::thread::sleep(Duration::from_millis(320));
    op.process(batch(&[666.0]), &CTX).expect_err("the trial panics");
    let record = health.snapshot();
    assert_eq!((record.faults, record.quarantines), (4, 2));
    assert!(health.quarantined_for().expect("quarantined again") > Duration::from_millis(300));

    // A new version lifts the quarantine at once.
    let reloaded = fixture.sandbox.load(&function("faulty", "weir_fixture_faulty.wasm", LIMITS)).expect("loads");
    op.instance_mut().replace(&reloaded).expect("replaces");
    assert_eq!(health.quarantined_for(), None);
    assert_eq!(op.process(batch(&[2.0]), &CTX).expect("runs again").values(), [2.0]);
    assert_eq!(health.snapshot().consecutive_faults, 0);
}

/// Resident set size of this process, bytes (Linux).
fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).expect("resident pages");
    pages * 4096
}

/// Calls of the hostile loop; `WEIR_HOSTILE_CALLS` sets more for longer runs.
fn hostile_calls() -> usize {
    std::env::var("WEIR_HOSTILE_CALLS").ok().and_then(|n| n.parse().ok()).unwrap_or(10_000)
}

#[test]
fn ten_thousand_hostile_calls_are_each_stopped_with_a_typed_fault_and_nothing_leaks() {
    let fixture = fixture();
    // Fuel, not wall time, stops the endless loop here: on a busy machine a memory bomb can take
    // longer than a tight time limit to reach its memory limit, and would fault the wrong way.
    let limits = FunctionLimits {
        fuel: Some(20_000_000),
        state_write_bytes: 1 << 20,
        memory_bytes: 8 << 20,
        timeout: Duration::from_secs(10),
        ..LIMITS
    };
    // Never quarantined: every call must reach the function.
    let quarantine = QuarantineConfig { after: u32::MAX, first: Duration::from_secs(1) };
    let config = FunctionConfig { quarantine, ..function("faulty", "weir_fixture_faulty.wasm", limits) };
    // (mode, its fault's kind, what its fault says)
    let hostile = [
        ("panic", FaultKind::Panic, "panicked: "),
        ("spin", FaultKind::FuelExhausted, "fuel exhausted"),
        ("allocate", FaultKind::Memory, "memory limit"),
        ("recurse", FaultKind::Trap, "stack overflowing"),
        ("flood_state", FaultKind::StateWrites, "state write limit"),
        ("malformed", FaultKind::MalformedResult, "returned a malformed batch"),
        ("huge_random", FaultKind::Runtime, "exceeds limit 65536"),
        ("exit", FaultKind::Exit, "the function called exit"),
    ];
    let mut operators: Vec<(FunctionOperator, FaultKind, &str)> =
        hostile.iter().map(|(mode, kind, expected)| (faulty_with(&fixture, mode, &config), *kind, *expected)).collect();
    let mut healthy = faulty_with(&fixture, "panic", &config);

    let calls = hostile_calls();
    let mut resident_after_warm_up = 0;
    let mut passed_by_healthy = 0_u64;
    for call in 0..calls {
        let (op, kind, expected) = &mut operators[call % hostile.len()];
        let (input, failure) = op.process(batch(&[1.0, 666.0]), &CTX).expect_err("every hostile call faults");
        assert_eq!(input.len(), 2, "call {call}: the input comes back whole");
        assert_eq!(fault(&failure).kind(), *kind, "call {call}: {failure}");
        let reason = fault_reason(&failure);
        assert!(reason.contains(*expected), "call {call}: {reason}");
        op.take_state_writes();

        // A healthy neighbour in the same engine is undisturbed.
        let value = (call % 600) as f64;
        let out = healthy.process(batch(&[value]), &CTX).expect("the neighbour runs");
        assert_eq!(out.values(), [value]);
        passed_by_healthy += 1;
        if call == hostile.len() * 20 {
            resident_after_warm_up = resident_bytes();
        }
    }
    assert_eq!(passed_counter(&healthy.take_state_writes()), Some(passed_by_healthy));
    for (op, kind, _) in &mut operators {
        let record = op.instance_mut().handle().snapshot();
        assert!(record.faults >= (calls / hostile.len()) as u64, "{}", record.faults);
        assert_eq!(record.faults_by_kind.get(kind), Some(&record.faults), "every fault of one kind");
    }
    // Every fault discards an instance; none may leak. The pool bounds memories, so growth would
    // mean host-side leaks (stores, state writes, log buffers).
    let growth = resident_bytes().saturating_sub(resident_after_warm_up);
    assert!(growth < 64 << 20, "resident memory grew by {growth} bytes over {calls} hostile calls");
}

/// A copy of `file` with a custom section appended: the same behaviour, another version.
fn another_version_of(file: &str, dir: &Path) -> PathBuf {
    let mut bytes = std::fs::read(functions_dir().join(file)).expect("component");
    let name = b"weir-test-version";
    let payload = b"2";
    bytes.push(0); // custom section id
    bytes.push(u8::try_from(1 + name.len() + payload.len()).expect("short section"));
    bytes.push(u8::try_from(name.len()).expect("short name"));
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    let path = dir.join(format!("v2-{file}"));
    std::fs::write(&path, bytes).expect("write the copy");
    path
}

#[test]
fn a_staged_version_is_taken_up_at_the_next_call_with_the_state_and_lifts_a_quarantine() {
    let fixture = fixture();
    let quarantine = QuarantineConfig { after: 1, first: Duration::from_secs(3600) };
    let v1_config = FunctionConfig { quarantine, ..function("faulty", "weir_fixture_faulty.wasm", LIMITS) };
    let mut op = faulty_with(&fixture, "panic", &v1_config);
    let handle = op.instance_mut().handle();
    let v1 = op.instance_mut().version().clone();
    op.process(batch(&[1.0, 2.0]), &CTX).expect("v1 runs");

    let dir = tempfile::tempdir().expect("temp dir");
    let v2_config =
        FunctionConfig { component: another_version_of("weir_fixture_faulty.wasm", dir.path()), ..v1_config };
    let v2 = fixture.sandbox.load(&v2_config).expect("v2 loads");
    assert_ne!(v2.version(), &v1, "another digest");

    // Quarantined for an hour after one fault...
    op.process(batch(&[666.0]), &CTX).expect_err("v1 panics");
    assert!(handle.quarantined_for().is_some());
    // ...until a new version is staged: the pipeline stops holding at once.
    handle.stage_version(Arc::clone(&v2));
    assert_eq!(handle.quarantined_for(), None);
    assert_eq!(op.process(batch(&[3.0]), &CTX).expect("v2 runs").values(), [3.0]);
    assert_eq!(op.instance_mut().version(), v2.version());
    assert_eq!(handle.snapshot().function, v2.version().to_string());
    // v1's successful calls' uncommitted state carried over into v2: 2 + 1 readings.
    assert_eq!(passed_counter(&op.take_state_writes()), Some(3));

    // A staged version that cannot start leaves the running one in place.
    let decoder =
        fixture.sandbox.load(&function("frame-decoder", "weir_fn_frame_decoder.wasm", LIMITS)).expect("loads");
    handle.stage_version(decoder);
    assert_eq!(op.process(batch(&[4.0]), &CTX).expect("v2 still runs").values(), [4.0]);
    assert_eq!(op.instance_mut().version(), v2.version());
}
