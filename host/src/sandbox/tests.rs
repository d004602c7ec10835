//! Tests against the real components built by `cargo xtask build-functions`.

use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::batch::{Batch, BatchBuilder, CallContext, Message};
use crate::config::{Durability, FunctionConfig, FunctionLimits};
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
        state_limits: StateLimits { max_key: 1024, max_value: 64 * 1024 },
    };
    let sandbox = Sandbox::new(options, &dir.path().join("compiled"), store.clone()).expect("sandbox");
    Fixture { _dir: dir, sandbox, store, committer }
}

fn function(id: &str, file: &str, limits: FunctionLimits) -> FunctionConfig {
    FunctionConfig { id: id.parse().expect("valid id"), component: functions_dir().join(file), limits }
}

const LIMITS: FunctionLimits = FunctionLimits { memory_bytes: 16 << 20, timeout: Duration::from_millis(200) };
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
        matches!(&failure, OperatorFailure::Fault { reason } if reason.contains("panicked") && reason.contains("value 666 is cursed")),
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
    let mut op = faulty(&fixture, "spin");
    let started = std::time::Instant::now();
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("spins");
    assert!(matches!(&failure, OperatorFailure::Fault { reason } if reason.contains("timed out")), "{failure}");
    assert!(started.elapsed() < Duration::from_secs(10), "interrupted, not left running");
    op.process(batch(&[1.0]), &CTX).expect("recovers");
}

#[test]
fn unbounded_allocation_stops_at_the_memory_limit() {
    let fixture = fixture();
    let mut op = faulty(&fixture, "allocate");
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("allocates");
    assert!(matches!(&failure, OperatorFailure::Fault { reason } if reason.contains("memory limit")), "{failure}");
    op.process(batch(&[1.0]), &CTX).expect("recovers");
}

#[test]
fn exit_is_a_fault_and_domain_errors_keep_the_instance() {
    let fixture = fixture();
    let mut op = faulty(&fixture, "exit");
    let (_, failure) = op.process(batch(&[666.0]), &CTX).expect_err("exits");
    assert!(
        matches!(&failure, OperatorFailure::Fault { reason } if reason.contains("called exit (status 1")),
        "{failure}"
    );

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
    fixture.sandbox.load(&config).expect("compiles");
    let cached: Vec<_> = std::fs::read_dir(&fixture.sandbox.cache_dir).expect("cache dir").collect();
    assert_eq!(cached.len(), 1, "one artifact per component and engine");
    fixture.sandbox.load(&config).expect("loads from the cache");
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
