//! The gateway seen from outside: `/metrics` scraped from a gateway fed by a real broker and
//! parsed by the reference Prometheus client's parser, `/healthz`, and the metrics table of
//! docs/operations.md against what is exposed.

use std::collections::BTreeSet;

use anyhow::{Context, Result, ensure};
use serde_json::json;
use weir_e2e::python::{PrometheusSample, prometheus_samples};
use weir_e2e::*;
use weir_host::observe::metrics::METRICS;

fn config(mqtt: &Mosquitto, nats: &NatsServer, port: u16) -> String {
    format!(
        r#"{brokers}
[http]
listen = "127.0.0.1:{port}"

[functions.unit-convert]
component = "weir_fn_unit_convert.wasm"
fuel = 1000000000

{READINGS_PIPELINE}
[[pipelines.readings.operators]]
function = "unit-convert"
params = {{ scale = 2.0 }}

[pipelines.readings.sink.jetstream]
broker = "central"
subject = "central.readings"
"#,
        brokers = gateway_with_brokers(&mqtt.url(), &nats.url()),
    )
}

fn value(samples: &[PrometheusSample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| s.name == name && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v)))
        .map(|s| s.value)
}

#[tokio::test]
async fn metrics_count_what_flowed_and_parse_with_the_reference_parser() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let stream = create_stream(&nats.client().await?, "READINGS", &["central.readings"]).await?;
    let port = free_port();
    let weir = Weir::start(&config(&mqtt, &nats, port))?;
    weir.wait_for_log("subscribed", 1).await?;

    let plant = MqttClient::connect(&mqtt, "plant").await?;
    for i in 0..20 {
        let reading = json!({"sensor": "boiler/t", "ts": 1_700_000_000_000i64 + i, "value": i});
        plant.publish("plant/readings", reading.to_string()).await?;
    }
    plant.publish("plant/readings", &b"{not json"[..]).await?;
    plant.wait_for_pubacks(21).await?;
    collect_stream(&stream, |records| all_readings(records).len() >= 20).await?;

    // The counters are read from the store at each scrape: wait for the last commit's counts.
    let mut samples = Vec::new();
    for _ in 0..100 {
        let (status, text) = http_get(port, "/metrics")?;
        ensure!(status == 200, "/metrics answered {status}: {text}");
        samples = prometheus_samples(&text).with_context(|| format!("the exposition:\n{text}"))?;
        let readings = [("pipeline", "readings")];
        if value(&samples, "weir_readings_in_total", &readings) == Some(20.0)
            && value(&samples, "weir_dead_lettered_total", &readings) == Some(1.0)
            && value(&samples, "weir_confirmed_total", &readings).is_some_and(|n| n >= 1.0)
            // Acknowledging follows the commit the counters come from.
            && value(&samples, "weir_messages_unacknowledged", &readings) == Some(0.0)
        {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let readings = [("pipeline", "readings")];
    ensure!(value(&samples, "weir_readings_in_total", &readings) == Some(20.0), "{samples:#?}");
    ensure!(value(&samples, "weir_messages_acked_total", &readings) == Some(21.0), "{samples:#?}");
    ensure!(value(&samples, "weir_dead_lettered_total", &readings) == Some(1.0), "{samples:#?}");
    ensure!(value(&samples, "weir_readings_committed_total", &readings) == Some(20.0), "{samples:#?}");
    ensure!(value(&samples, "weir_outbox_records", &readings).is_some(), "{samples:#?}");
    ensure!(value(&samples, "weir_process_resident_memory_bytes", &[]).is_some_and(|b| b > 1e6), "{samples:#?}");
    ensure!(value(&samples, "weir_process_open_fds", &[]).is_some_and(|n| n >= 3.0), "{samples:#?}");
    let calls = value(&samples, "weir_function_calls_total", &[("pipeline", "readings"), ("function", "unit-convert")]);
    ensure!(calls.is_some_and(|n| n >= 1.0), "{samples:#?}");
    ensure!(value(&samples, "weir_function_quarantined", &[("function", "unit-convert")]) == Some(0.0), "{samples:#?}");
    ensure!(value(&samples, "weir_source_connected", &readings) == Some(1.0), "{samples:#?}");
    // Everything taken was acknowledged; the metered function used fuel.
    ensure!(value(&samples, "weir_messages_unacknowledged", &readings) == Some(0.0), "{samples:#?}");
    let fuel = value(&samples, "weir_function_fuel_total", &[("function", "unit-convert")]);
    ensure!(fuel.is_some_and(|f| f > 0.0), "{samples:#?}");
    ensure!(value(&samples, "weir_uplink_connected", &readings) == Some(1.0), "{samples:#?}");
    ensure!(value(&samples, "weir_uplink_last_confirmed_timestamp_seconds", &readings).is_some_and(|t| t > 1.7e9));
    let stage = [("pipeline", "readings"), ("stage", "decode")];
    ensure!(value(&samples, "weir_dead_letters_by_stage_total", &stage) == Some(1.0), "{samples:#?}");
    // Histograms: observations counted, and every bucket list ends in +Inf with the count.
    for (name, labels) in [
        ("weir_publish_seconds_count", &readings[..]),
        ("weir_commit_seconds_count", &[("durable", "yes")][..]),
        ("weir_function_call_seconds_count", &[("function", "unit-convert")][..]),
    ] {
        let count = value(&samples, name, labels).with_context(|| format!("no {name}"))?;
        ensure!(count >= 1.0, "{name} = {count}");
        let family = name.trim_end_matches("_count");
        let infinite = samples.iter().find(|s| {
            s.name == format!("{family}_bucket")
                && s.labels.get("le").map(String::as_str) == Some("+Inf")
                && labels.iter().all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        });
        ensure!(infinite.is_some_and(|s| s.value == count), "{family}: +Inf bucket {infinite:?}, count {count}");
    }

    // Every family exposed is in the table, with its type; no label names a topic or series.
    let kinds: BTreeSet<(String, String)> = samples.iter().map(|s| (s.family.clone(), s.kind.clone())).collect();
    for (family, kind) in &kinds {
        let metric = METRICS
            .iter()
            .find(|m| m.name == family.as_str() || m.name.strip_suffix("_total") == Some(family.as_str()))
            .with_context(|| format!("{family} is exposed but not in the table"))?;
        let expected = match metric.kind {
            weir_host::observe::metrics::Kind::Counter => "counter",
            weir_host::observe::metrics::Kind::Gauge => "gauge",
            weir_host::observe::metrics::Kind::Histogram => "histogram",
        };
        ensure!(kind == expected, "{family} is a {kind}, the table says {expected}");
    }
    for sample in &samples {
        for label in sample.labels.keys() {
            let bounded = ["pipeline", "use", "function", "version", "kind", "stage", "durable", "le"];
            ensure!(bounded.contains(&label.as_str()), "{sample:?}");
        }
    }

    let (status, body) = http_get(port, "/healthz")?;
    ensure!(status == 200 && body.contains("\"ok\""), "{status} {body}");
    let (status, _) = http_get(port, "/nothing-here")?;
    ensure!(status == 404);
    let (code, _, _keep) = weir.stop()?;
    ensure!(code == 0);
    Ok(())
}

#[test]
fn the_operations_guide_lists_every_metric() -> Result<()> {
    let guide = std::fs::read_to_string(workspace().join("docs/operations.md"))?;
    for metric in METRICS {
        ensure!(guide.contains(&format!("| `{}`", metric.name)), "docs/operations.md does not list {}", metric.name);
    }
    Ok(())
}

#[test]
fn logs_written_to_the_journal_carry_their_priority_and_no_timestamp() -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("stderr");
    let stderr = std::fs::File::create(&path)?;
    let stat = stderr.metadata()?;
    let run = |journal_stream: &str| -> Result<String> {
        let stderr = std::fs::File::options().append(true).open(&path)?;
        std::fs::File::create(&path)?;
        // A filter that does not parse is reported as a warning by any command.
        std::process::Command::new(weir_bin())
            .args(["outbox", "stats", "--data-dir"])
            .arg(dir.path().join("none"))
            .env("RUST_LOG", "weir_host=loud")
            .env("JOURNAL_STREAM", journal_stream)
            .stderr(stderr)
            .status()?;
        Ok(std::fs::read_to_string(&path)?)
    };
    let journal = run(&format!("{}:{}", stat.dev(), stat.ino()))?;
    let warning = journal.lines().find(|l| l.contains("RUST_LOG is not a log filter")).context(journal.clone())?;
    ensure!(warning.starts_with("<4>") && warning.contains("WARN"), "{warning}");
    ensure!(!warning.contains(&format!("{}-", time::OffsetDateTime::now_utc().year())), "no timestamp: {warning}");
    // Another stream (stderr redirected away from the journal): plain lines with their time.
    let elsewhere = run("1:1")?;
    let warning = elsewhere.lines().find(|l| l.contains("RUST_LOG is not a log filter")).context(elsewhere.clone())?;
    ensure!(!warning.starts_with('<') && warning.contains(&format!("{}-", time::OffsetDateTime::now_utc().year())));
    Ok(())
}
