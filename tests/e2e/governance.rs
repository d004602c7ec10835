//! Sandbox governance with the real binary: quarantine of a function that keeps faulting under
//! each `on_quarantine` policy, and replacing a running function's version on SIGHUP (hot swap)
//! without losing a reading or its state.

use anyhow::Result;
use serde_json::{Value, json};
use weir_e2e::*;

const BASE_MS: i64 = 1_700_000_000_000;

fn reading(i: i64, value: f64) -> String {
    json!({"sensor": "oven/temp", "ts": BASE_MS + i, "value": value}).to_string()
}

/// A pipeline reading `plant/<name>` through `function` (the `faulty` fixture: panics on 666) to
/// `central.<name>`, one message per batch.
fn pipeline(name: &str, function: &str, on_quarantine: &str) -> String {
    format!(
        r#"
[pipelines.{name}]
on_quarantine = "{on_quarantine}"

[pipelines.{name}.source.mqtt]
broker = "plant"
topics = ["plant/{name}"]

[pipelines.{name}.decode.json]
series = "/sensor"
time = "/ts"
value = "/value"

[[pipelines.{name}.operators]]
function = "{function}"
name = "faulty"
params = {{ mode = "panic", trigger = 666.0 }}

[pipelines.{name}.batch]
max_messages = 1

[pipelines.{name}.sink.jetstream]
broker = "central"
subject = "central.{name}"
"#
    )
}

fn function_status<'a>(stats: &'a Value, pipeline: &str) -> &'a Value {
    stats["functions"]
        .as_array()
        .and_then(|functions| functions.iter().find(|f| f["pipeline"] == pipeline))
        .unwrap_or_else(|| panic!("no function status for {pipeline} in {stats:#}"))
}

fn values(records: &[CentralRecord]) -> Vec<f64> {
    all_readings(records).iter().map(|r| r.value).collect()
}

#[tokio::test]
async fn a_function_faulting_in_a_row_is_quarantined_and_its_pipeline_holds_or_skips_as_configured() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let held_stream = create_stream(&central, "HELD", &["central.held"]).await?;
    let skipped_stream = create_stream(&central, "SKIPPED", &["central.skipped"]).await?;
    let config = format!(
        "{}{}{}{}{}",
        gateway_with_brokers(&mqtt.url(), &nats.url()),
        "\n[functions.faulty]\ncomponent = \"weir_fixture_faulty.wasm\"\nquarantine_after = 2\nquarantine_for = \"2s\"\n",
        "\n[functions.faulty-long]\ncomponent = \"weir_fixture_faulty.wasm\"\nquarantine_after = 2\nquarantine_for = \"1h\"\n",
        pipeline("held", "faulty", "hold"),
        pipeline("skipped", "faulty-long", "skip"),
    );
    let weir = Weir::start(&config)?;
    weir.wait_for_log("subscribed", 2).await?;
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    // Two faults in a row quarantine the function in both pipelines; 666 at i = 6 comes while
    // quarantined (skip: passed on unprocessed) or after (hold: processed, faults again).
    let sent: Vec<f64> = (0..10).map(|i| if [2, 3, 6].contains(&i) { 666.0 } else { f64::from(i) }).collect();
    for (i, value) in sent.iter().enumerate().take(4) {
        plant.publish("plant/held", reading(i as i64, *value)).await?;
        plant.publish("plant/skipped", reading(i as i64, *value)).await?;
    }
    weir.wait_for_log("function quarantined", 2).await?;
    let quarantined_at = std::time::Instant::now();
    for (i, value) in sent.iter().enumerate().skip(4) {
        plant.publish("plant/held", reading(i as i64, *value)).await?;
        plant.publish("plant/skipped", reading(i as i64, *value)).await?;
    }

    // skip: everything but the two faulted readings, the later 666 passing the quarantined
    // function unprocessed.
    let skipped = collect_stream(&skipped_stream, |records| all_readings(records).len() >= 8).await?;
    assert_eq!(values(&skipped), [0.0, 1.0, 4.0, 5.0, 666.0, 7.0, 8.0, 9.0]);
    // hold: nothing until the quarantine ends; then the trial call (4) succeeds and all flows,
    // with the 666 at i = 6 faulting (one fault, not in a row: no new quarantine).
    let held = collect_stream(&held_stream, |records| all_readings(records).len() >= 7).await?;
    assert!(quarantined_at.elapsed() >= std::time::Duration::from_millis(1500), "held for the quarantine");
    assert_eq!(values(&held), [0.0, 1.0, 4.0, 5.0, 7.0, 8.0, 9.0]);
    let log = weir.log();
    assert!(log.contains("holding input: a function of this pipeline is quarantined"), "{log}");
    assert!(log.contains("quarantine over: taking input again"), "{log}");

    let (code, data_dir, _keep) = weir.stop()?;
    assert_eq!(code, 0);
    let stats = outbox_stats_at(&data_dir)?;
    assert_eq!(stream_counter(&stats, "held", "function_faults"), 3);
    assert_eq!(stream_counter(&stats, "held", "function_quarantines"), 1);
    assert_eq!(stream_counter(&stats, "held", "readings_skipped"), 0);
    assert_eq!(stream_counter(&stats, "skipped", "function_faults"), 2);
    assert_eq!(stream_counter(&stats, "skipped", "function_quarantines"), 1);
    assert_eq!(stream_counter(&stats, "skipped", "readings_skipped"), 6);
    let snapshot: Value = serde_json::from_slice(&std::fs::read(data_dir.join("stats.json"))?)?;
    let skipped_status = function_status(&snapshot, "skipped");
    assert!(skipped_status["quarantined_for_seconds"].as_f64().is_some(), "{skipped_status:#}");
    assert_eq!(skipped_status["consecutive_faults"], 2);
    let held_status = function_status(&snapshot, "held");
    assert_eq!(held_status["quarantined_for_seconds"], Value::Null, "{held_status:#}");
    assert_eq!(held_status["quarantines"], 1);

    let letters = dead_letters(&data_dir)?;
    assert_eq!(letters.len(), 5, "{letters:#?}");
    for letter in &letters {
        assert_eq!(letter["stage"], "operator faulty");
        let function = letter["function"].as_str().unwrap_or_default();
        let (id, digest) = function.split_once('@').unwrap_or_default();
        assert!(id.starts_with("faulty") && digest.len() == 12, "{letter:#}");
        assert_eq!(letter["samples"][0]["value"], 666.0);
    }
    Ok(())
}

#[tokio::test]
async fn sighup_swaps_in_a_changed_component_keeping_state_and_every_reading() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "SWAPPED", &["central.swapped"]).await?;
    let components = tempfile::tempdir()?;
    let component = components.path().join("faulty.wasm");
    let v1 = std::fs::read(functions_dir().join("weir_fixture_faulty.wasm"))?;
    std::fs::write(&component, &v1)?;
    let config = format!(
        "{}\n[functions.faulty]\ncomponent = \"{}\"\n{}",
        gateway_with_brokers(&mqtt.url(), &nats.url()),
        component.display(),
        pipeline("swapped", "faulty", "hold"),
    );
    let weir = Weir::start(&config)?;
    weir.wait_for_log("subscribed", 1).await?;
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    let total = 200;
    for i in 0..total / 2 {
        plant.publish("plant/swapped", reading(i, i as f64)).await?;
    }
    // The same function with a custom section appended: another version, same behaviour.
    let mut v2 = v1.clone();
    v2.extend_from_slice(&[0, 3, 1, b'v', b'2']);
    std::fs::write(&component, &v2)?;
    weir.signal("HUP")?;
    for i in total / 2..total {
        plant.publish("plant/swapped", reading(i, i as f64)).await?;
    }
    let records = collect_stream(&stream, |records| all_readings(records).len() >= total as usize).await?;
    assert_eq!(values(&records), (0..total).map(|i| i as f64).collect::<Vec<_>>(), "every reading once, in order");
    weir.wait_for_log("staged function version taken up", 1).await?;
    let log = weir.log();
    assert!(log.contains("new function version staged"), "{log}");

    let (code, data_dir, _keep) = weir.stop()?;
    assert_eq!(code, 0);
    let snapshot: Value = serde_json::from_slice(&std::fs::read(data_dir.join("stats.json"))?)?;
    let status = function_status(&snapshot, "swapped");
    let v2_digest = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&v2));
    assert_eq!(status["function"], format!("faulty@{}", &v2_digest[..12]), "{status:#}");
    // The function's own state (readings it passed) spans both versions.
    let (store, committer, thread) = weir_host::state::open(&data_dir, weir_host::state::StoreOptions::default())?;
    let passed = store.function_state_get("swapped/faulty", b"passed")?.expect("the counter was committed");
    assert_eq!(u64::from_le_bytes(passed.try_into().expect("8 bytes")), total as u64);
    drop((store, committer));
    thread.join().expect("the committer thread ends");
    Ok(())
}
