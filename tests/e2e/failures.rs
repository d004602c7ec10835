//! Bad input, misbehaving functions and damaged compiled functions: dead-lettered with a reason
//! or compiled again, nothing else disturbed. A central broker that never answers does not keep
//! weir from stopping.

use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;
use weir_e2e::*;

const BASE_MS: i64 = 1_700_000_000_000;

fn config(mqtt: &Mosquitto, nats: &NatsServer) -> String {
    format!(
        r#"
{header}

[functions.faulty]
component = "weir_fixture_faulty.wasm"
timeout = "200ms"
{READINGS_PIPELINE}
[pipelines.readings.sink.jetstream]
broker = "central"
subject = "central.readings"

[pipelines.cursed.source.mqtt]
broker = "plant"
topics = ["plant/cursed"]

[pipelines.cursed.decode.json]
series = "/sensor"
time = "/ts"
value = "/value"

[[pipelines.cursed.operators]]
function = "faulty"
params = {{ mode = "panic", trigger = 666.0 }}

[pipelines.cursed.batch]
max_messages = 1

[pipelines.cursed.sink.jetstream]
broker = "central"
subject = "central.cursed"
"#,
        header = gateway_with_brokers(&mqtt.url(), &nats.url())
    )
}

fn reading(sensor: &str, i: i64, value: f64) -> String {
    json!({"sensor": sensor, "ts": BASE_MS + i, "value": value}).to_string()
}

#[tokio::test]
async fn malformed_payloads_are_dead_lettered_with_reasons_and_later_data_still_flows() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "READINGS", &["central.readings"]).await?;
    let weir = Weir::start(&config(&mqtt, &nats))?;
    weir.wait_for_log("subscribed", 2).await?;
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    plant.publish("plant/readings", reading("tank/level", 0, 1.0)).await?;
    plant.publish("plant/readings", "{not json").await?;
    plant.publish("plant/readings", json!({"sensor": "tank/level", "ts": BASE_MS + 2}).to_string()).await?;
    plant.publish("plant/readings", vec![0xff, 0x00, 0x13]).await?;
    plant.publish("plant/readings", reading("tank/level", 4, 2.0)).await?;

    let records = collect_stream(&stream, |records| all_readings(records).len() >= 2).await?;
    let values: Vec<f64> = all_readings(&records).iter().map(|r| r.value).collect();
    assert_eq!(values, [1.0, 2.0]);

    let (code, data_dir, _keep) = weir.stop()?;
    assert_eq!(code, 0);
    let letters = dead_letters(&data_dir)?;
    let summary: Vec<(String, String, String)> = letters
        .iter()
        .map(|l| {
            (
                l["stage"].as_str().unwrap_or_default().to_owned(),
                l["reason"].as_str().unwrap_or_default().to_owned(),
                l["payload_hex"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(summary.len(), 3, "{summary:#?}");
    assert!(summary[0].1.starts_with("payload is not valid JSON (line 1, column 2)"), "{summary:#?}");
    assert_eq!(letters[0]["payload_text"], "{not json");
    assert_eq!(summary[1].1, "field /value is missing");
    assert!(summary[2].1.starts_with("payload is not valid JSON"), "{summary:#?}");
    assert_eq!(summary[2].2, "ff0013", "binary payloads are kept byte for byte");
    assert!(summary.iter().all(|(stage, _, _)| stage == "decode"));
    Ok(())
}

/// A message over the source's `max_message_size` (4 MiB by default) used to fail the MQTT
/// connection before it could be acknowledged, so the broker sent it again on every reconnect
/// and everything behind it waited. Now it is dead-lettered with its topic, size and a prefix,
/// acknowledged, and the pipeline goes on.
#[tokio::test]
async fn a_message_over_the_size_limit_is_dead_lettered_and_the_pipeline_goes_on() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "READINGS", &["central.readings"]).await?;
    let weir = Weir::start(&config(&mqtt, &nats))?;
    weir.wait_for_log("subscribed", 2).await?;
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    let huge = 5 * 1024 * 1024;
    plant.publish("plant/readings", reading("tank/level", 0, 1.0)).await?;
    plant.publish("plant/readings", vec![b'x'; huge]).await?;
    plant.publish("plant/readings", reading("tank/level", 2, 2.0)).await?;
    plant.wait_for_pubacks(3).await?;

    let records = collect_stream(&stream, |records| all_readings(records).len() >= 2).await?;
    let values: Vec<f64> = all_readings(&records).iter().map(|r| r.value).collect();
    assert_eq!(values, [1.0, 2.0], "the message behind the huge one went through");
    assert!(!weir.log().contains("MQTT connection lost"), "no reconnect loop: {}", weir.log());

    let (code, data_dir, _keep) = weir.stop()?;
    assert_eq!(code, 0);
    let letters = dead_letters(&data_dir)?;
    let [letter] = letters.as_slice() else { panic!("one dead letter: {letters:#?}") };
    assert_eq!(letter["stage"], "source");
    assert_eq!(letter["topic"], "plant/readings");
    assert_eq!(letter["size"], huge);
    assert_eq!(letter["truncated"], true);
    let reason = letter["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("5242880 bytes") && reason.contains("max_message_size (4194304 bytes)"), "{reason}");
    let kept = letter["payload_text"].as_str().unwrap_or_default();
    assert_eq!(kept.len(), 64 * 1024, "a 64 KiB prefix is kept");
    assert!(kept.bytes().all(|b| b == b'x'));
    let stats = outbox_stats_at(&data_dir)?;
    assert_eq!(stream_counter(&stats, "readings", "dead_lettered"), 1, "{stats}");
    assert_eq!(stream_counter(&stats, "readings", "acked_in"), 3, "all three acknowledged: {stats}");
    Ok(())
}

/// A central server that accepts messages of at most 8 KiB: a batch whose record would be larger
/// is sent as several records, and the one reading too large by itself is dead-lettered alone —
/// the good readings batched with it are not.
#[tokio::test]
async fn records_are_sized_to_the_central_limit_and_only_what_cannot_fit_is_dead_lettered() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start_with("max_payload: 8192\n")?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "READINGS", &["central.readings"]).await?;
    let config = config(&mqtt, &nats).replace(
        "[pipelines.readings.batch]\nmax_messages = 1",
        "[pipelines.readings.batch]\nmax_messages = 1000\nlinger = \"500ms\"",
    );
    let weir = Weir::start(&config)?;
    weir.wait_for_log("subscribed", 2).await?;
    weir.wait_for_log("records are sized to it", 2).await?;
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    let good = 400;
    for i in 0..good {
        plant.publish("plant/readings", reading(&format!("tank/{}", i % 5), i, i as f64)).await?;
        if i == good / 2 {
            plant.publish("plant/readings", reading(&"x".repeat(10_000), i, -1.0)).await?;
        }
    }
    plant.wait_for_pubacks(good as usize + 1).await?;

    let records = collect_stream(&stream, |records| all_readings(records).len() >= good as usize).await?;
    let mut values: Vec<f64> = all_readings(&records).iter().map(|r| r.value).collect();
    values.sort_by(f64::total_cmp);
    assert_eq!(values, (0..good).map(|i| i as f64).collect::<Vec<_>>(), "every good reading arrived once");
    assert!(records.len() > 2, "the batches were split into {} records", records.len());
    let seqs: Vec<u64> = records.iter().map(|r| r.record.header.seq).collect();
    assert_eq!(seqs, (1..=records.len() as u64).collect::<Vec<_>>(), "consecutive seqs");

    let (code, data_dir, _keep) = weir.stop()?;
    assert_eq!(code, 0);
    let letters = dead_letters(&data_dir)?;
    let [letter] = letters.as_slice() else { panic!("one dead letter: {letters:#?}") };
    assert_eq!(letter["stage"], "encode");
    assert_eq!(letter["readings"], 1, "{letter}");
    assert!(
        letter["reason"].as_str().unwrap_or_default().contains("more than the sink accepts (7168 bytes)"),
        "{letter}"
    );
    assert_eq!(letter["samples"][0]["value"], -1.0);
    Ok(())
}

#[tokio::test]
async fn a_trapping_function_dead_letters_its_batch_while_its_pipeline_and_others_go_on() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let readings_stream = create_stream(&central, "READINGS", &["central.readings"]).await?;
    let cursed_stream = create_stream(&central, "CURSED", &["central.cursed"]).await?;
    let weir = Weir::start(&config(&mqtt, &nats))?;
    weir.wait_for_log("subscribed", 2).await?;
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    for i in 0..20 {
        let value = if i == 5 || i == 12 { 666.0 } else { f64::from(i) };
        plant.publish("plant/cursed", reading("oven/temp", i64::from(i), value)).await?;
        plant.publish("plant/readings", reading("tank/level", i64::from(i), f64::from(i))).await?;
    }

    let cursed = collect_stream(&cursed_stream, |records| all_readings(records).len() >= 18).await?;
    let expected: Vec<f64> = (0..20).filter(|i| *i != 5 && *i != 12).map(f64::from).collect();
    assert_eq!(all_readings(&cursed).iter().map(|r| r.value).collect::<Vec<_>>(), expected);
    let steady = collect_stream(&readings_stream, |records| all_readings(records).len() >= 20).await?;
    assert_eq!(
        all_readings(&steady).iter().map(|r| r.value).collect::<Vec<_>>(),
        (0..20).map(f64::from).collect::<Vec<_>>()
    );

    let log = weir.log();
    assert!(log.contains("function faulted; its instance is replaced"), "{log}");
    let (code, data_dir, _keep) = weir.stop()?;
    assert_eq!(code, 0, "the host survived the traps");
    let letters = dead_letters(&data_dir)?;
    assert_eq!(letters.len(), 2, "{letters:#?}");
    for letter in &letters {
        assert_eq!(letter["pipeline"], "cursed");
        assert_eq!(letter["stage"], "operator faulty");
        let reason = letter["reason"].as_str().unwrap_or_default();
        assert!(reason.starts_with("faulted: panicked") && reason.contains("value 666 is cursed"), "{reason}");
        assert_eq!(letter["samples"][0]["value"], 666.0, "the batch the function refused is kept");
        assert_eq!(letter["samples"][0]["series"], "oven/temp");
    }
    Ok(())
}

/// Longest orderly stop accepted while the central broker does not answer: the sink's grace
/// (5 s) and the MQTT connection's (3 s), with room for a slow machine. A correctness bound:
/// without it a stop waits for `ack_timeout` (here an hour).
const STOP_BOUND: Duration = Duration::from_secs(15);

/// Runs a pipeline from mosquitto to `sink` (TOML of a `[pipelines.readings.sink.*]` table)
/// whose broker never answers, publishes readings, and checks that SIGTERM ends weir in time
/// with every record still in the outbox.
async fn stops_in_time_while_the_central_broker_is_silent(central: &str, sink: &str) -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let config = format!("{header}{READINGS_PIPELINE}\n{sink}\n", header = gateway_with_brokers(&mqtt.url(), central));
    let mut weir = Weir::start(&config)?;
    weir.wait_for_log("subscribed", 1).await?;
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    for i in 0..5 {
        plant.publish("plant/readings", reading("tank/level", i, 1.0)).await?;
    }
    // The running gateway's snapshot (rewritten every 5 s) shows what was committed.
    let started = Instant::now();
    let committed =
        |weir: &Weir| weir.outbox_stats().ok().and_then(|s| stream_stats(&s, "readings")["records"].as_u64());
    while committed(&weir) < Some(5) {
        anyhow::ensure!(started.elapsed() < PATIENCE, "the records never reached the outbox; log:\n{}", weir.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let stopping = Instant::now();
    let code = weir.terminate()?;
    let took = stopping.elapsed();
    assert_eq!(code, 0, "{}", weir.log());
    assert!(took < STOP_BOUND, "weir took {took:?} to stop; log:\n{}", weir.log());
    let stats = weir.outbox_stats()?;
    let readings = stream_stats(&stats, "readings");
    assert_eq!(readings["records"], 5, "unconfirmed records stay in the outbox: {stats:#}");
    assert_eq!(readings["last_seq"], 5, "{stats:#}");
    Ok(())
}

#[tokio::test]
async fn sigterm_stops_weir_in_time_while_jetstream_is_unreachable_whatever_the_ack_timeout() -> Result<()> {
    // Nothing listens on the central port.
    let central = format!("nats://127.0.0.1:{}", free_port());
    let sink = "[pipelines.readings.sink.jetstream]\nbroker = \"central\"\nsubject = \"central.readings\"\nack_timeout = \"1h\"";
    stops_in_time_while_the_central_broker_is_silent(&central, sink).await
}

#[tokio::test]
async fn sigterm_stops_weir_in_time_while_the_mqtt_sink_broker_hangs_after_connecting() -> Result<()> {
    // Connected, the window of one publish full and never confirmed: the connection waits for
    // nothing but its keep-alive (30 s) unless the stop cuts it.
    let central = MuteMqttBroker::start()?;
    let sink = "[pipelines.readings.sink.mqtt]\nbroker = \"central\"\ntopic = \"central/readings\"\nmax_in_flight = 1";
    stops_in_time_while_the_central_broker_is_silent(&central.url(), sink).await
}

/// No broker: simulated boiler temperatures converted to °F by a function, printed.
const CONVERTING: &str = r#"
[gateway]
id = "gw"
data_dir = "{data_dir}"
functions_dir = "{functions_dir}"

[functions.unit-convert]
component = "weir_fn_unit_convert.wasm"

[pipelines.boiler.source.simulated]
payload = "json"
devices = 2
interval = "100ms"
topic_prefix = "plant1/boiler"
seed = 1
sensors = ["temperature"]

[pipelines.boiler.decode.json]
series = "/sensor"
time = "/ts"
time_unit = "ms"
value = "/value"
unit_field = "/unit"

[[pipelines.boiler.operators]]
function = "unit-convert"
params = { series = "plant1/boiler/+/temperature", conversion = "celsius_to_fahrenheit" }

[pipelines.boiler.batch]
linger = "200ms"

[pipelines.boiler.sink.console]
"#;

/// Where the native code starts in a cached artifact: the `.text` section of the ELF object
/// wasmtime serialises, found past whatever header weir puts before it.
fn native_code_offset(artifact: &[u8]) -> usize {
    let start = artifact.windows(4).position(|w| w == b"\x7fELF").expect("wasmtime artifacts are ELF objects");
    let elf = &artifact[start..];
    let field = |offset: usize, len: usize| {
        let mut bytes = [0; 8];
        bytes[..len].copy_from_slice(&elf[offset..offset + len]);
        usize::try_from(u64::from_le_bytes(bytes)).expect("offsets fit in usize")
    };
    let (table, entry, count, names) = (field(0x28, 8), field(0x3a, 2), field(0x3c, 2), field(0x3e, 2));
    let header = |index: usize| table + index * entry;
    let names = field(header(names) + 0x18, 8);
    let text = (0..count)
        .find(|&index| elf[names + field(header(index), 4)..].starts_with(b".text\0"))
        .expect("a .text section");
    start + field(header(text) + 0x18, 8)
}

#[tokio::test]
async fn a_damaged_compiled_function_is_compiled_again_instead_of_crashing_the_gateway() -> Result<()> {
    let mut weir = Weir::start(CONVERTING)?;
    weir.wait_for_stdout("[degF]", 1).await?;
    assert_eq!(weir.terminate()?, 0);
    let artifacts: Vec<_> = std::fs::read_dir(weir.data_dir().join("compiled"))?
        .map(|entry| entry.map(|e| e.path()))
        .filter(|path| path.as_ref().map_or(true, |p| p.extension().is_some_and(|e| e == "cwasm")))
        .collect::<Result<_, _>>()?;
    assert_eq!(artifacts.len(), 1, "{artifacts:?}");
    // 16 bytes of native code flipped: run as they are, they crash the process (SIGSEGV).
    let mut bytes = std::fs::read(&artifacts[0])?;
    let code = native_code_offset(&bytes);
    for byte in &mut bytes[code..code + 16] {
        *byte = !*byte;
    }
    std::fs::write(&artifacts[0], &bytes)?;

    let printed = weir.stdout().matches("[degF]").count();
    weir.start_again()?;
    weir.wait_for_stdout("[degF]", printed + 1).await?;
    let log = weir.log();
    assert!(log.contains("compiled function rejected, compiling again"), "{log}");
    assert_eq!(weir.terminate()?, 0);
    assert_ne!(std::fs::read(&artifacts[0])?, bytes, "the damaged artifact is replaced");
    Ok(())
}
