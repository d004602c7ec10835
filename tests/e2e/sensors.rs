//! Sensors on the gateway's own buses, end to end: the real binary samples simulated I²C parts
//! (BME280, TMP102, ADS1115, INA219 answering from their register maps), forwards their readings
//! to a real JetStream, and lives through scripted faults — a TMP102 that stops acknowledging
//! (degraded, then down, re-initialised, recovered), an INA219 whose transfers fail with
//! "Remote I/O error" (and which reports only on change), and a slow ADS1115 on its own bus
//! whose missed ticks are skipped — while the other devices go on untouched. The health shows in
//! `/api/status`, `/readyz`, `/metrics` and `weir outbox stats`, whose text form is checked too.
//! A bus whose node cannot be opened is tried again while the others go on.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use weir_e2e::*;

/// The gateway, its status page on `port` and, when given, the central JetStream, as every test
/// here starts them.
fn header(central: Option<&NatsServer>, port: u16) -> String {
    let broker = central.map(|nats| format!("[brokers.central]\nurl = \"{}\"\n\n", nats.url())).unwrap_or_default();
    format!(
        "[gateway]\nid = \"gw-e2e\"\ndata_dir = \"{{data_dir}}\"\nfunctions_dir = \"{{functions_dir}}\"\n\n\
         {broker}[http]\nlisten = \"127.0.0.1:{port}\"\n"
    )
}

fn config(nats: &NatsServer, port: u16) -> String {
    format!(
        r#"{header}
[pipelines.bench.source.sensors.buses.i2c1]
simulated = "i2c"

[pipelines.bench.source.sensors.buses.i2c2]
simulated = "i2c"

[[pipelines.bench.source.sensors.devices]]
name = "room"
bus = "i2c1"
driver = "bme280"
interval = "200ms"

[[pipelines.bench.source.sensors.devices]]
name = "probe"
bus = "i2c1"
driver = "tmp102"
interval = "100ms"
max_backoff = "400ms"

[pipelines.bench.source.sensors.devices.simulation]
faults = [{{ fault = "nack", at = "2s", for = "3s" }}]

[[pipelines.bench.source.sensors.devices]]
name = "feed"
bus = "i2c1"
driver = "ina219"
address = 0x41
interval = "250ms"
retries = 1
reinit_after = 1000
on_change = 1.0
heartbeat = "1s"

[pipelines.bench.source.sensors.devices.simulation]
faults = [{{ fault = "remote_io", at = "1s", for = "1s" }}]

[[pipelines.bench.source.sensors.devices]]
name = "adc"
bus = "i2c2"
driver = "ads1115"
interval = "100ms"
channels = [0, 2]

[pipelines.bench.source.sensors.devices.simulation]
inputs = [0.25, 0.0, 1.75]
faults = [{{ fault = "slow", at = "1s", for = "1s", delay = "120ms" }}]

[pipelines.bench.batch]
linger = "200ms"

[pipelines.bench.sink.jetstream]
broker = "central"
subject = "central.sensors"
"#,
        header = header(Some(nats), port),
    )
}

fn sensor<'a>(status: &'a Value, device: &str) -> Result<&'a Value> {
    status["sensors"]
        .as_array()
        .and_then(|sensors| sensors.iter().find(|s| s["device"] == device))
        .with_context(|| format!("no sensor {device} in {status:#}"))
}

fn api_status(port: u16) -> Result<Value> {
    let (code, body) = http_get(port, "/api/status")?;
    ensure!(code == 200, "/api/status answered {code}: {body}");
    Ok(serde_json::from_str(&body)?)
}

#[tokio::test]
async fn simulated_sensors_reach_jetstream_and_their_faults_degrade_and_recover_one_device_at_a_time() -> Result<()> {
    let nats = NatsServer::start()?;
    let stream = create_stream(&nats.client().await?, "SENSORS", &["central.sensors"]).await?;
    let port = free_port();
    let gateway = Weir::start(&config(&nats, port))?;
    let started = Instant::now();
    gateway.wait_for_log("serving the status page", 1).await?;

    // The probe stops acknowledging from 2 s to 5 s: /readyz names it while it is down.
    let mut down_reason = None;
    while started.elapsed() < Duration::from_secs(30) && down_reason.is_none() {
        let (code, body) = http_get(port, "/readyz")?;
        if code == 503 && body.contains("sensor probe down") {
            down_reason = Some(body);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let down_reason = down_reason.context("/readyz never named the probe while it was down")?;
    ensure!(down_reason.contains("nack"), "{down_reason}");

    // After the faults: every device is ok again, and the probe was re-initialised.
    let mut status = api_status(port)?;
    while started.elapsed() < Duration::from_secs(60) {
        status = api_status(port)?;
        let all_ok = status["sensors"].as_array().is_some_and(|s| s.len() == 4 && s.iter().all(|s| s["state"] == "ok"));
        if all_ok && started.elapsed() > Duration::from_secs(6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (code, body) = http_get(port, "/readyz")?;
    ensure!(code == 200, "ready again once the probe recovered: {body}");
    let probe = sensor(&status, "probe")?;
    ensure!(probe["state"] == "ok", "{probe:#}");
    ensure!(probe["reinits"].as_u64() >= Some(1), "{probe:#}");
    ensure!(probe["failed_samples"].as_u64() >= Some(3), "{probe:#}");
    ensure!(probe["faults"]["nack"].as_u64() >= Some(9), "each failed sample's three attempts count: {probe:#}");
    ensure!(probe["last_fault"].as_str().is_some_and(|f| f.starts_with("nack: ")), "{probe:#}");
    let feed = sensor(&status, "feed")?;
    ensure!(feed["faults"]["io"].as_u64() >= Some(2), "{feed:#}");
    ensure!(feed["last_fault"].as_str().is_some_and(|f| f.contains("Remote I/O error")), "{feed:#}");
    ensure!(feed["reinits"] == 0, "reinit_after = 1000: {feed:#}");
    let adc = sensor(&status, "adc")?;
    ensure!(adc["faults"]["slow"].as_u64() >= Some(1), "{adc:#}");
    ensure!(adc["skipped_ticks"].as_u64() >= Some(1), "a 120 ms transfer on a 100 ms grid skips ticks: {adc:#}");
    let room = sensor(&status, "room")?;
    ensure!(room["failed_samples"] == 0 && room["faults"].is_null(), "the room's faults: {room:#}");
    ensure!(room["bus"] == "simulated i2c 0x76" && room["part"] == "bme280", "{room:#}");

    // The readings as the central stream holds them.
    let wanted = |records: &[CentralRecord]| {
        let readings = all_readings(records);
        let after = |series: &str| {
            readings.iter().filter(|r| r.series == series && r.ts > readings[0].ts + 6_000_000_000).count()
        };
        !readings.is_empty() && after("probe/temperature") >= 5 && after("room/temperature") >= 5
    };
    let central = collect_stream(&stream, wanted).await?;
    let readings = all_readings(&central);
    let of = |series: &str| readings.iter().filter(|r| r.series == series).cloned().collect::<Vec<Reading>>();
    for (series, unit, expected, tolerance) in [
        ("room/temperature", "Cel", 25.08, 0.05),
        ("room/pressure", "hPa", 1006.53, 0.2),
        ("probe/temperature", "Cel", 21.5, 0.2),
        ("feed/bus_voltage", "V", 12.0, 1e-9),
        ("feed/current", "A", 0.4, 0.01),
        ("adc/a0", "V", 0.25, 0.001),
        ("adc/a2", "V", 1.75, 0.001),
    ] {
        let got = of(series);
        ensure!(!got.is_empty(), "no {series} in the central stream");
        ensure!(got.iter().all(|r| r.unit.as_deref() == Some(unit)), "{series}: {:?}", got[0]);
        ensure!(
            got.iter().all(|r| (r.value - expected).abs() <= tolerance),
            "{series} strays from {expected}: {:?}",
            got.iter().map(|r| r.value).collect::<Vec<_>>()
        );
    }
    ensure!(of("adc/a1").is_empty(), "channel 1 is not read");
    // The feed reports on change: its steady readings only with the 1 s heartbeat, not at each
    // of its four samples a second.
    let feed_samples = sensor(&status, "feed")?["samples"].as_u64().context("samples")? as usize;
    let feed_sent = of("feed/bus_voltage").len();
    ensure!(feed_sent >= 3 && feed_sent * 2 < feed_samples, "{feed_sent} readings sent of {feed_samples} samples");
    let room_values: Vec<f64> = of("room/temperature").iter().map(|r| r.value).collect();
    ensure!(room_values.windows(2).any(|w| w[0] != w[1]), "live readings move: {room_values:?}");
    // The probe's readings have a gap where it did not answer, and come back after it.
    let probe = of("probe/temperature");
    let gap = probe.windows(2).map(|w| w[1].ts - w[0].ts).max().unwrap_or(0);
    ensure!(gap >= 2_500_000_000, "the longest gap between probe readings is {gap} ns");
    let now_ns = time::OffsetDateTime::now_utc().unix_timestamp_nanos() as i64;
    ensure!(probe.iter().all(|r| (now_ns - r.ts).abs() < 120_000_000_000), "event times are the wall clock's");
    // Unsynced clocks are flagged on every reading; synced ones on none.
    let synced = status["gateway"]["clock_synced"].as_bool().context("clock_synced")?;
    let flagged = central
        .iter()
        .flat_map(|r| r.record.batch.series().to_vec())
        .filter(|s| s.tags.contains(&("clock".to_owned(), "unsynced".to_owned())))
        .count();
    let series_count: usize = central.iter().map(|r| r.record.batch.series().len()).sum();
    ensure!(flagged == if synced { 0 } else { series_count }, "{flagged} of {series_count} flagged, synced {synced}");

    // The metrics and the stats name the same faults.
    let (_, metrics) = http_get(port, "/metrics")?;
    ensure!(metrics.contains(r#"weir_sensor_faults_total{pipeline="bench",device="probe",kind="nack"}"#), "{metrics}");
    ensure!(metrics.contains(r#"weir_sensor_state{pipeline="bench",device="room",state="ok"} 1"#), "{metrics}");
    ensure!(metrics.contains(r#"weir_sensor_reinits_total{pipeline="bench",device="probe"}"#), "{metrics}");
    tokio::time::sleep(Duration::from_secs(6)).await;
    let stats = gateway.outbox_stats()?;
    let probe_stats = stats["sensors"].as_array().and_then(|s| s.iter().find(|s| s["device"] == "probe")).cloned();
    ensure!(probe_stats.is_some_and(|p| p["faults"]["nack"].as_u64() >= Some(9)), "{stats:#}");
    let text = weir(&["outbox", "stats", "--data-dir", gateway.data_dir().to_str().context("UTF-8")?])?;
    let text = String::from_utf8(text.stdout)?;
    ensure!(text.contains("sensor probe in bench (tmp102 on simulated i2c 0x48): OK;"), "{text}");
    ensure!(text.lines().any(|l| l.starts_with("sensor feed") && l.contains("io ")), "{text}");
    Ok(())
}

/// A Linux bus whose node is missing: its device is down (and `/readyz` says why) while a device
/// on another bus goes on, and the node is tried again. Once a file appears at that path,
/// opening it through linux-embedded-hal gets as far as the kernel's refusal of the I²C request
/// that selects a device (ENOTTY: a file that is no adapter) — the reason follows.
#[tokio::test]
async fn a_bus_that_cannot_be_opened_is_tried_again_while_the_other_buses_go_on() -> Result<()> {
    let nodes = tempfile::tempdir()?;
    let node = nodes.path().join("i2c-9");
    let port = free_port();
    let config = format!(
        r#"{header}
[pipelines.local.source.sensors.buses.board]
i2c = "{node}"

[pipelines.local.source.sensors.buses.sim]
simulated = "i2c"

[[pipelines.local.source.sensors.devices]]
name = "probe"
bus = "board"
driver = "tmp102"
interval = "200ms"
max_backoff = "1s"

[[pipelines.local.source.sensors.devices]]
name = "room"
bus = "sim"
driver = "bme280"
interval = "200ms"

[pipelines.local.sink.console]
"#,
        header = header(None, port),
        node = node.display()
    );
    let gateway = Weir::start(&config)?;
    gateway.wait_for_log("serving the status page", 1).await?;
    gateway.wait_for_log("bus not opened", 1).await?;

    let reasons = loop {
        let (code, body) = http_get(port, "/readyz")?;
        if code == 503 && body.contains("sensor probe down") {
            break body;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(reasons.contains("cannot open") && reasons.contains("i2c-9"), "{reasons}");
    ensure!(!reasons.contains("source disconnected"), "the room still samples: {reasons}");
    let room_samples = |status: &Value| sensor(status, "room").map(|room| room["samples"].as_u64().unwrap_or(0));
    let before = room_samples(&api_status(port)?)?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    ensure!(room_samples(&api_status(port)?)? > before, "the room goes on sampling");

    std::fs::write(&node, b"")?;
    let started = Instant::now();
    let probe = loop {
        let status = api_status(port)?;
        let probe = sensor(&status, "probe")?.clone();
        let fault = probe["last_fault"].as_str().unwrap_or_default().to_owned();
        if fault.contains("ENOTTY") && probe["state"] == "down" {
            break probe;
        }
        ensure!(started.elapsed() < PATIENCE, "the probe's fault never changed: {probe:#}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    ensure!(probe["faults"]["io"].as_u64() >= Some(2), "every attempt counts: {probe:#}");
    ensure!(sensor(&api_status(port)?, "room")?["state"] == "ok");
    ensure!(gateway.log().matches("bus not opened").count() == 1, "logged once, not per attempt");
    Ok(())
}

/// SPI and GPIO: a simulated BME280 on its own SPI chip select (read through the same driver as
/// on I²C, over the SPI register protocol) whose transfers fail for a while, and two simulated
/// GPIO lines read as digital inputs, one active low, reported on change and stuck for a while;
/// beside them a spidev node and a GPIO chip that are missing, then present but not what they
/// should be, whose reasons follow the real Linux paths as far as they go without hardware.
#[tokio::test]
async fn spi_and_gpio_devices_reach_jetstream_and_missing_nodes_say_why() -> Result<()> {
    let nats = NatsServer::start()?;
    let stream = create_stream(&nats.client().await?, "YARD", &["central.yard"]).await?;
    let nodes = tempfile::tempdir()?;
    let (spidev, gpiochip) = (nodes.path().join("spidev9.0"), nodes.path().join("gpiochip9"));
    let port = free_port();
    let config = format!(
        r#"{header}
[pipelines.yard.source.sensors.buses.spi_sim]
simulated = "spi"

[pipelines.yard.source.sensors.buses.pins]
simulated = "gpio"

[pipelines.yard.source.sensors.buses.spi_board]
spi = "{spidev}"

[pipelines.yard.source.sensors.buses.pins_board]
gpio = "{gpiochip}"

[[pipelines.yard.source.sensors.devices]]
name = "hut"
bus = "spi_sim"
driver = "bme280"
interval = "200ms"
max_backoff = "400ms"

[pipelines.yard.source.sensors.devices.simulation]
faults = [{{ fault = "remote_io", at = "2s", for = "2s" }}]

[[pipelines.yard.source.sensors.devices]]
name = "door"
bus = "pins"
driver = "digital_input"
line = 3
interval = "50ms"
on_change = 0.5
heartbeat = "1h"

[pipelines.yard.source.sensors.devices.simulation]
toggle_every = "500ms"
faults = [{{ fault = "stuck", at = "3s", for = "2s" }}]

[[pipelines.yard.source.sensors.devices]]
name = "float"
bus = "pins"
driver = "digital_input"
line = 4
active_low = true
interval = "100ms"

[pipelines.yard.source.sensors.devices.simulation]
toggle_every = "500ms"

[[pipelines.yard.source.sensors.devices]]
name = "gauge"
bus = "spi_board"
driver = "bme280"
interval = "1s"
max_backoff = "1s"

[[pipelines.yard.source.sensors.devices]]
name = "contact"
bus = "pins_board"
driver = "digital_input"
line = 0
interval = "1s"
max_backoff = "1s"

[pipelines.yard.batch]
linger = "200ms"

[pipelines.yard.sink.jetstream]
broker = "central"
subject = "central.yard"
"#,
        header = header(Some(&nats), port),
        spidev = spidev.display(),
        gpiochip = gpiochip.display(),
    );
    let gateway = Weir::start(&config)?;
    let started = Instant::now();
    gateway.wait_for_log("serving the status page", 1).await?;

    // The hut's transfers fail from 2 s to 4 s: it goes down, then is initialised again.
    let mut saw_down = false;
    let mut status = api_status(port)?;
    while started.elapsed() < Duration::from_secs(40) {
        status = api_status(port)?;
        saw_down |= sensor(&status, "hut")?["state"] == "down";
        if saw_down && sensor(&status, "hut")?["state"] == "ok" && started.elapsed() > Duration::from_secs(6) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let hut = sensor(&status, "hut")?;
    ensure!(saw_down && hut["state"] == "ok", "the hut went down and recovered: {hut:#}");
    ensure!(hut["reinits"].as_u64() >= Some(1) && hut["faults"]["io"].as_u64() >= Some(3), "{hut:#}");
    ensure!(hut["last_fault"].as_str().is_some_and(|f| f.contains("Remote I/O error")), "{hut:#}");
    ensure!(hut["bus"] == "simulated spi" && hut["part"] == "bme280", "{hut:#}");
    let door = sensor(&status, "door")?;
    ensure!(door["bus"] == "simulated gpio line 3" && door["state"] == "ok", "{door:#}");
    ensure!(door["faults"].is_null(), "a line that holds its level is not a fault unless stuck_after says so");
    for (device, node) in [("gauge", &spidev), ("contact", &gpiochip)] {
        let missing = sensor(&status, device)?;
        let fault = missing["last_fault"].as_str().unwrap_or_default();
        ensure!(missing["state"] == "down" && fault.contains("cannot open"), "{missing:#}");
        ensure!(fault.contains(&node.display().to_string()), "{missing:#}");
    }

    let wanted = |records: &[CentralRecord]| {
        let readings = all_readings(records);
        let count = |series: &str| readings.iter().filter(|r| r.series == series).count();
        count("door/state") >= 10 && count("hut/temperature") >= 15 && count("float/state") >= 40
    };
    let central = collect_stream(&stream, wanted).await?;
    let readings = all_readings(&central);
    let of = |series: &str| readings.iter().filter(|r| r.series == series).cloned().collect::<Vec<Reading>>();
    for (series, unit, expected, tolerance) in
        [("hut/temperature", "Cel", 25.08, 0.05), ("hut/pressure", "hPa", 1006.53, 0.2)]
    {
        let got = of(series);
        ensure!(got.iter().all(|r| r.unit.as_deref() == Some(unit)), "{series}: {:?}", got.first());
        ensure!(got.iter().all(|r| (r.value - expected).abs() <= tolerance), "{series} strays from {expected}");
    }
    // The door reports on change only: its readings alternate, 0 first (the line starts low);
    // while stuck (3 s to 5 s) it reports nothing, so one gap is longer than the toggling.
    let door = of("door/state");
    ensure!(door.iter().all(|r| r.unit.as_deref() == Some("1")), "{:?}", door.first());
    ensure!(door[0].value == 0.0 && door.windows(2).all(|w| w[0].value != w[1].value), "{door:?}");
    let gap = door.windows(2).map(|w| w[1].ts - w[0].ts).max().unwrap_or(0);
    ensure!(gap >= 1_500_000_000, "the longest gap between door changes is {gap} ns");
    // The float is active low: 1 while its line is low, at first.
    let float = of("float/state");
    ensure!(float[0].value == 1.0 && float.iter().any(|r| r.value == 0.0), "{float:?}");

    // Files at the nodes' paths that are no spidev and no GPIO chip: Linux refuses their ioctls.
    std::fs::write(&spidev, b"")?;
    std::fs::write(&gpiochip, b"")?;
    let refused = |fault: &str| fault.contains("ENOTTY") || fault.contains("Inappropriate ioctl");
    let deadline = Instant::now() + PATIENCE;
    loop {
        let status = api_status(port)?;
        let faults: Vec<String> = ["gauge", "contact"]
            .iter()
            .map(|d| sensor(&status, d).map(|s| s["last_fault"].as_str().unwrap_or_default().to_owned()))
            .collect::<Result<_>>()?;
        if faults.iter().all(|f| refused(f)) {
            ensure!(faults[0].contains("cannot configure"), "the spidev opens, its settings are refused: {faults:?}");
            break;
        }
        ensure!(Instant::now() < deadline, "the missing nodes' faults never changed: {faults:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(sensor(&api_status(port)?, "door")?["state"] == "ok", "the simulated buses go on");
    Ok(())
}
