//! Data flows end to end: real brokers, the real binary, the built functions.

use std::collections::BTreeMap;

use anyhow::Result;
use futures::StreamExt;
use serde_json::json;
use weir_e2e::*;

/// Readings grouped per series, in arrival order: records keep each series' order (not the order
/// across series).
fn by_series(readings: Vec<Reading>) -> BTreeMap<String, Vec<Reading>> {
    let mut grouped: BTreeMap<String, Vec<Reading>> = BTreeMap::new();
    for reading in readings {
        grouped.entry(reading.series.clone()).or_default().push(reading);
    }
    grouped
}

/// The threshold-alert rule, written independently of the function: readings pass while the
/// series is above `above`, until one falls to `above - hysteresis`.
fn expected_alarm_filter(values: &[f64], above: f64, hysteresis: f64) -> Vec<bool> {
    let mut in_alarm = false;
    values
        .iter()
        .map(|&v| {
            in_alarm = if in_alarm { v > above - hysteresis } else { v > above };
            in_alarm
        })
        .collect()
}

fn fahrenheit(celsius: f64) -> f64 {
    celsius * 1.8 + 32.0
}

const BASE_MS: i64 = 1_700_000_000_000;

fn two_pipeline_config(mqtt: &Mosquitto, nats: &NatsServer) -> String {
    format!(
        r#"
{header}

# Generous time limits: this flow also runs with an ARM weir under qemu, where the emulator
# translates each function's code on its first calls.
[functions.threshold-alert]
component = "weir_fn_threshold_alert.wasm"
timeout = "5s"

[functions.unit-convert]
component = "weir_fn_unit_convert.wasm"
timeout = "5s"

[pipelines.json.source.mqtt]
broker = "plant"
topics = ["plant/json/#"]

[pipelines.json.decode.json]
series = "/sensor"
time = "/ts"
value = "/value"
unit_field = "/unit"

[[pipelines.json.operators]]
function = "threshold-alert"
params = {{ series = "+/+/temp", above = 80.0, hysteresis = 5.0 }}

[[pipelines.json.operators]]
function = "unit-convert"
params = {{ series = "+/+/temp", conversion = "celsius_to_fahrenheit" }}

[pipelines.json.batch]
linger = "50ms"

[pipelines.json.sink.jetstream]
broker = "central"
subject = "central.json"

[pipelines.senml]
decode = "senml_json"

[pipelines.senml.source.mqtt]
broker = "plant"
topics = ["plant/senml/#"]

[[pipelines.senml.operators]]
function = "threshold-alert"
params = {{ series = "+/+/temp", above = 80.0, hysteresis = 5.0 }}

[[pipelines.senml.operators]]
function = "unit-convert"
params = {{ series = "+/+/temp", conversion = "celsius_to_fahrenheit" }}

[pipelines.senml.batch]
linger = "50ms"

[pipelines.senml.sink.jetstream]
broker = "central"
subject = "central.senml"
"#,
        header = gateway_with_brokers(&mqtt.url(), &nats.url())
    )
}

#[tokio::test]
async fn mqtt_json_and_senml_through_threshold_and_unit_convert_arrive_in_jetstream_value_by_value() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let json_stream = create_stream(&central, "CENTRAL_JSON", &["central.json"]).await?;
    let senml_stream = create_stream(&central, "CENTRAL_SENML", &["central.senml"]).await?;
    let weir = Weir::start(&two_pipeline_config(&mqtt, &nats))?;
    weir.wait_for_log("subscribed", 2).await?;

    let temps = [70.0, 81.0, 78.0, 76.0, 74.0, 85.0, 90.0, 60.0, 80.5, 79.9];
    let pressures = [1.5, 1.625];
    let plant = MqttClient::connect(&mqtt, "plant-publisher").await?;
    for (i, value) in temps.iter().enumerate() {
        let ts = BASE_MS + i as i64 * 1000;
        plant
            .publish(
                "plant/json/boiler",
                json!({"sensor": "boiler/a/temp", "ts": ts, "value": value, "unit": "Cel"}).to_string(),
            )
            .await?;
        let pack = json!([
            {"bn": "kiln/b/", "bt": ts as f64 / 1000.0, "n": "temp", "u": "Cel", "v": value},
            {"n": "humidity", "u": "%RH", "v": 40.0 + i as f64},
        ]);
        plant.publish("plant/senml/kiln", pack.to_string()).await?;
    }
    for (i, value) in pressures.iter().enumerate() {
        let ts = BASE_MS + i as i64 * 1000;
        plant
            .publish(
                "plant/json/boiler",
                json!({"sensor": "boiler/a/pressure", "ts": ts, "value": value, "unit": "bar"}).to_string(),
            )
            .await?;
    }

    // What the central site must see, computed here from the inputs.
    let passes = expected_alarm_filter(&temps, 80.0, 5.0);
    let alarm_readings = |series: &str| -> Vec<Reading> {
        temps
            .iter()
            .enumerate()
            .filter(|(i, _)| passes[*i])
            .map(|(i, v)| Reading {
                series: series.to_owned(),
                unit: Some("[degF]".into()),
                ts: (BASE_MS + i as i64 * 1000) * 1_000_000,
                value: fahrenheit(*v),
            })
            .collect()
    };
    let mut expected_json = by_series(alarm_readings("boiler/a/temp"));
    expected_json.insert(
        "boiler/a/pressure".into(),
        pressures
            .iter()
            .enumerate()
            .map(|(i, v)| Reading {
                series: "boiler/a/pressure".into(),
                unit: Some("bar".into()),
                ts: (BASE_MS + i as i64 * 1000) * 1_000_000,
                value: *v,
            })
            .collect(),
    );
    let mut expected_senml = by_series(alarm_readings("kiln/b/temp"));
    expected_senml.insert(
        "kiln/b/humidity".into(),
        (0..temps.len())
            .map(|i| Reading {
                series: "kiln/b/humidity".into(),
                unit: Some("%RH".into()),
                ts: (BASE_MS + i as i64 * 1000) * 1_000_000,
                value: 40.0 + i as f64,
            })
            .collect(),
    );
    let count = |expected: &BTreeMap<String, Vec<Reading>>| expected.values().map(Vec::len).sum::<usize>();

    let json_count = count(&expected_json);
    let json_records = collect_stream(&json_stream, |records| all_readings(records).len() >= json_count).await?;
    assert_eq!(by_series(all_readings(&json_records)), expected_json);
    let senml_count = count(&expected_senml);
    let senml_records = collect_stream(&senml_stream, |records| all_readings(records).len() >= senml_count).await?;
    assert_eq!(by_series(all_readings(&senml_records)), expected_senml);

    // Every record carries its end-to-end id, and seqs count up from 1 without gaps.
    for (index, central) in json_records.iter().enumerate() {
        let seq = index as u64 + 1;
        assert_eq!(central.record.header.seq, seq);
        assert_eq!(central.message_id.as_deref(), Some(format!("gw-e2e.json.{seq}").as_str()));
    }

    let (code, _, _) = weir.stop()?;
    assert_eq!(code, 0, "orderly stop");
    Ok(())
}

#[tokio::test]
async fn nats_core_in_mqtt_out() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let config = format!(
        r#"
{header}

[functions.unit-convert]
component = "weir_fn_unit_convert.wasm"

[pipelines.hall.source.nats]
broker = "plant"
subjects = ["sensors.>"]

[pipelines.hall.decode.raw]
unit = "Cel"

[[pipelines.hall.operators]]
function = "unit-convert"
params = {{ conversion = "celsius_to_kelvin" }}

[pipelines.hall.batch]
linger = "50ms"

[pipelines.hall.sink.mqtt]
broker = "central"
topic = "central/weir/hall"
"#,
        header = gateway_with_brokers(&nats.url(), &mqtt.url())
    );
    let mut central = MqttClient::connect(&mqtt, "central-consumer").await?;
    central.client.subscribe("central/weir/#", rumqttc::QoS::AtLeastOnce).await?;
    let weir = Weir::start(&config)?;
    weir.wait_for_log("NATS subscribed", 1).await?;
    weir.wait_for_log("MQTT sink connected", 1).await?;

    let plant = nats.client().await?;
    let before = weir_host::telemetry::now_nanos();
    for (subject, payload) in
        [("sensors.hall.temp", "21.5"), ("sensors.hall.temp", "22"), ("sensors.lab.temp", " 19.25\n")]
    {
        plant.publish(subject, payload.into()).await?;
    }
    plant.flush().await?;

    let mut got = Vec::new();
    while got.len() < 3 {
        let publish = tokio::time::timeout(PATIENCE, central.received.recv()).await?.expect("the poller runs");
        assert_eq!(publish.topic, "central/weir/hall");
        let record = weir_record::read(&publish.payload)?;
        assert_eq!(
            (record.header.gateway.as_str(), record.header.stream.as_str()),
            ("gw-e2e", "hall"),
            "the id travels in the payload"
        );
        got.extend(readings(&record));
    }
    let after = weir_host::telemetry::now_nanos();
    let simplified: Vec<(String, Option<String>, f64)> =
        got.iter().map(|r| (r.series.clone(), r.unit.clone(), r.value)).collect();
    let mut expected = vec![
        ("sensors.hall.temp".to_owned(), Some("K".to_owned()), 21.5 + 273.15),
        ("sensors.hall.temp".to_owned(), Some("K".to_owned()), 22.0 + 273.15),
        ("sensors.lab.temp".to_owned(), Some("K".to_owned()), 19.25 + 273.15),
    ];
    let mut simplified_sorted = simplified.clone();
    simplified_sorted.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    expected.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    assert_eq!(simplified_sorted, expected);
    assert!(got.iter().all(|r| (before..=after).contains(&r.ts)), "raw numbers carry the receive time");

    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}

#[tokio::test]
async fn jetstream_pull_consumer_in_jetstream_out_acknowledged_after_commit() -> Result<()> {
    let nats = NatsServer::start()?;
    let client = nats.client().await?;
    let ingest = create_stream(&client, "INGEST", &["ingest.>"]).await?;
    let output = create_stream(&client, "CENTRAL", &["central.>"]).await?;
    let config = format!(
        r#"
[gateway]
id = "gw-e2e"
data_dir = "{{data_dir}}"

[brokers.nats]
url = "{nats}"

[pipelines.relay]
decode = "senml_json"

[pipelines.relay.source.jetstream]
broker = "nats"
stream = "INGEST"
consumer = "weir-relay"
subjects = ["ingest.>"]

[pipelines.relay.batch]
linger = "50ms"

[pipelines.relay.sink.jetstream]
broker = "nats"
subject = "central.relay"
"#,
        nats = nats.url()
    );
    let context = async_nats::jetstream::new(client.clone());
    for i in 0..5 {
        let pack =
            json!([{"bn": "line/", "n": "speed", "u": "m/s", "t": 1.7e9 + f64::from(i), "v": f64::from(i) * 0.5}]);
        context.publish("ingest.line", pack.to_string().into()).await?.await?;
    }
    let weir = Weir::start(&config)?;
    let records = collect_stream(&output, |records| all_readings(records).len() >= 5).await?;
    let values: Vec<f64> = all_readings(&records).iter().map(|r| r.value).collect();
    assert_eq!(values, [0.0, 0.5, 1.0, 1.5, 2.0]);

    // The consumer ends with nothing awaiting acknowledgement: weir acked after committing.
    let mut consumer: async_nats::jetstream::consumer::PullConsumer =
        ingest.get_consumer("weir-relay").await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let started = std::time::Instant::now();
    loop {
        let info = consumer.info().await?;
        if info.num_ack_pending == 0 && info.ack_floor.stream_sequence == 5 {
            break;
        }
        assert!(started.elapsed() < PATIENCE, "acks never reached the stream: {info:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}

#[tokio::test]
async fn binary_frames_through_the_wasm_decoder_and_a_stateful_function() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "FRAMES_OUT", &["central.frames"]).await?;
    let config = format!(
        r#"
{header}

[functions.frame-decoder]
component = "weir_fn_frame_decoder.wasm"

[functions.moving-average]
component = "weir_fn_moving_average.wasm"

[pipelines.press.source.mqtt]
broker = "plant"
topics = ["frames/#"]

[pipelines.press.decode.function]
function = "frame-decoder"
params = {{ series_prefix = "site" }}

[[pipelines.press.operators]]
function = "moving-average"
params = {{ series = "site/+/temperature", window = 2 }}

[pipelines.press.batch]
linger = "50ms"

[pipelines.press.sink.jetstream]
broker = "central"
subject = "central.frames"
"#,
        header = gateway_with_brokers(&mqtt.url(), &nats.url())
    );
    let weir = Weir::start(&config)?;
    weir.wait_for_log("subscribed", 1).await?;
    let plant = MqttClient::connect(&mqtt, "frame-publisher").await?;
    let base = 1_700_000_000u32;
    plant.publish("frames/7", wsf_frame(7, base, &[(0, 0, 2150), (2, 0, 10132)])).await?;
    let mut corrupt = wsf_frame(7, base + 1, &[(0, 0, 2160)]);
    corrupt[9] ^= 0xff;
    plant.publish("frames/7", corrupt).await?;
    plant.publish("frames/7", wsf_frame(7, base + 2, &[(0, 500, 2200), (1, 500, 4012)])).await?;

    let records = collect_stream(&stream, |records| all_readings(records).len() >= 4).await?;
    let second = i64::from(base) * 1_000_000_000;
    let expected = by_series(vec![
        Reading { series: "site/7/temperature".into(), unit: Some("Cel".into()), ts: second, value: 21.5 },
        Reading {
            series: "site/7/pressure".into(),
            unit: Some("hPa".into()),
            ts: second,
            value: f64::from(10132i16) * 0.1,
        },
        // The moving average over the last two temperatures: state carried from the first frame.
        Reading {
            series: "site/7/temperature".into(),
            unit: Some("Cel".into()),
            ts: second + 2_500_000_000,
            value: (21.5 + 22.0) / 2.0,
        },
        Reading {
            series: "site/7/humidity".into(),
            unit: Some("%".into()),
            ts: second + 2_500_000_000,
            value: f64::from(4012i16) * 0.01,
        },
    ]);
    assert_eq!(by_series(all_readings(&records)), expected);

    let (code, data_dir, _keep) = weir.stop()?;
    assert_eq!(code, 0);
    let letters = dead_letters(&data_dir)?;
    assert_eq!(letters.len(), 1, "{letters:#?}");
    assert_eq!(letters[0]["stage"], "decode");
    let reason = letters[0]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("frame-decoder") && reason.contains("CRC mismatch"), "{reason}");
    assert_eq!(letters[0]["topic"], "frames/7");
    Ok(())
}

#[tokio::test]
async fn subscribers_see_records_as_they_are_confirmed() -> Result<()> {
    // Guards against a sink that only publishes at shutdown: records must arrive while weir runs.
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL_JSON", &["central.json"]).await?;
    let weir = Weir::start(&two_pipeline_config(&mqtt, &nats))?;
    weir.wait_for_log("subscribed", 2).await?;
    let plant = MqttClient::connect(&mqtt, "plant-publisher").await?;
    let mut live = central.subscribe("central.json").await?;
    plant.publish("plant/json/x", json!({"sensor": "boiler/z/level", "ts": BASE_MS, "value": 3.5}).to_string()).await?;
    let message = tokio::time::timeout(PATIENCE, live.next()).await?.expect("subscription open");
    let record = weir_record::read(&message.payload)?;
    assert_eq!(readings(&record)[0].value, 3.5);
    assert_eq!(stream.clone().info().await?.state.messages, 1);
    drop(weir);
    Ok(())
}

#[tokio::test]
async fn mqtt_sources_resubscribe_after_the_broker_restarts_at_qos_0_and_1() -> Result<()> {
    let mut mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    let pipeline = |name: &str, qos: u8| {
        format!(
            r#"
[pipelines.{name}.source.mqtt]
broker = "plant"
topics = ["plant/{name}"]
qos = {qos}

[pipelines.{name}.decode.raw]
series_prefix = "{name}/"

[pipelines.{name}.batch]
linger = "20ms"

[pipelines.{name}.sink.jetstream]
broker = "central"
subject = "central.{name}"
"#
        )
    };
    let config = format!(
        "[gateway]\nid = \"gw-e2e\"\ndata_dir = \"{{data_dir}}\"\n\n[brokers.plant]\nurl = \"{}\"\nreconnect_max = \"500ms\"\n\n[brokers.central]\nurl = \"{}\"\n{}{}",
        mqtt.url(),
        nats.url(),
        pipeline("acked", 1),
        pipeline("fire-and-forget", 0)
    );
    let weir = Weir::start(&config)?;
    weir.wait_for_log("subscribed", 2).await?;
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    plant.publish("plant/acked", "1").await?;
    plant.publish("plant/fire-and-forget", "10").await?;
    collect_stream(&stream, |records| all_readings(records).len() >= 2).await?;
    drop(plant);

    mqtt.restart()?;
    // The broker lost every session: weir must reconnect and subscribe again by itself.
    weir.wait_for_log("subscribed", 4).await?;
    let plant = MqttClient::connect(&mqtt, "plant-again").await?;
    plant.publish("plant/acked", "2").await?;
    plant.publish("plant/fire-and-forget", "20").await?;

    let records = collect_stream(&stream, |records| all_readings(records).len() >= 4).await?;
    let mut got: Vec<(String, f64)> = all_readings(&records).into_iter().map(|r| (r.series, r.value)).collect();
    got.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let expected = [
        ("acked/plant/acked", 1.0),
        ("acked/plant/acked", 2.0),
        ("fire-and-forget/plant/fire-and-forget", 10.0),
        ("fire-and-forget/plant/fire-and-forget", 20.0),
    ];
    assert_eq!(got, expected.map(|(s, v)| (s.to_owned(), v)));
    assert!(weir.log().contains("MQTT connection lost"), "the outage was noticed");
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}
