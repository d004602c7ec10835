//! The status page in a real browser, the tap and `/readyz`, on a gateway fed by a real
//! mosquitto and forwarding to a real JetStream: headless Chromium loads `/` with a series
//! picked, the test reads the values through the DOM it built and compares them with what the
//! central stream received, and saves a screenshot (`target/test-artifacts/status-page.png`).
//! Then `weir tap` watches the pipeline while readings flow, and `/readyz` fails with the
//! reason when the uplink and then the source go away.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use scraper::{Html, Selector};
use serde_json::{Value, json};
use sha2::Digest;
use weir_e2e::*;

/// Readings published for the series shown.
const READINGS: i64 = 60;

fn config(mqtt: &Mosquitto, nats: &NatsServer, port: u16) -> String {
    format!(
        r#"{brokers}
[http]
listen = "127.0.0.1:{port}"
ready_confirmed_within = "2s"

[functions.unit-convert]
component = "weir_fn_unit_convert.wasm"

{READINGS_PIPELINE}
[[pipelines.readings.operators]]
function = "unit-convert"
params = {{ scale = 1.0 }}

[pipelines.readings.window]
kind = "tumbling"
width = "2s"
idle_timeout = "1s"
keep_readings = true

[pipelines.readings.downsample]
method = "deadband"
absolute = 2.5
idle_timeout = "1s"

[pipelines.readings.sink.jetstream]
broker = "central"
subject = "central.readings"
"#,
        brokers = gateway_with_brokers(&mqtt.url(), &nats.url()),
    )
}

fn select<'a>(dom: &'a Html, css: &str) -> Result<scraper::ElementRef<'a>> {
    let selector = Selector::parse(css).map_err(|e| anyhow::anyhow!("selector {css}: {e}"))?;
    dom.select(&selector).next().with_context(|| format!("no {css} in the page"))
}

fn text(dom: &Html, css: &str) -> Result<String> {
    Ok(select(dom, css)?.text().collect::<String>().trim().to_owned())
}

fn attribute(dom: &Html, css: &str, name: &str) -> Result<String> {
    select(dom, css)?.attr(name).map(str::to_owned).with_context(|| format!("{css} has no {name}"))
}

fn counter(pipeline: &Value, name: &str) -> u64 {
    let counters = pipeline["outbox"]["counters"].as_array().cloned().unwrap_or_default();
    counters.iter().find(|c| c[0] == name).and_then(|c| c[1].as_u64()).unwrap_or(0)
}

/// `/api/status`'s pipeline `readings` once `settled` says so.
async fn status_when(port: u16, settled: impl Fn(&Value) -> bool) -> Result<Value> {
    let mut last = Value::Null;
    for _ in 0..600 {
        let (code, body) = http_get(port, "/api/status")?;
        ensure!(code == 200, "/api/status answered {code}: {body}");
        let status: Value = serde_json::from_str(&body)?;
        last = status["pipelines"][0].clone();
        if settled(&last) {
            return Ok(last);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the pipeline did not settle: {last:#}")
}

#[tokio::test]
async fn the_status_page_shows_the_flow_in_a_real_browser_and_the_tap_and_readiness_follow_it() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let mut nats = NatsServer::start()?;
    let stream = create_stream(&nats.client().await?, "READINGS", &["central.readings"]).await?;
    let port = free_port();
    let weir = Weir::start(&config(&mqtt, &nats, port))?;
    weir.wait_for_log("subscribed", 1).await?;

    let plant = MqttClient::connect(&mqtt, "plant").await?;
    let start_ms = time::OffsetDateTime::now_utc().unix_timestamp() * 1000 - 40_000;
    for i in 0..READINGS {
        let reading = json!({"sensor": "boiler/t", "ts": start_ms + i * 500, "value": 20 + (i % 12)});
        plant.publish("plant/readings", reading.to_string()).await?;
    }
    plant.publish("plant/readings", &b"{not json"[..]).await?;
    plant.wait_for_pubacks(READINGS as usize + 1).await?;

    // Everything committed is confirmed and every window has closed (the idle timeouts), and it
    // stays so for longer than the idle timeouts: nothing more is coming.
    let settled = |p: &Value| {
        counter(p, "readings_in") == READINGS as u64
            && counter(p, "windows_emitted") >= 15
            && p["outbox"]["records"] == 0
            && counter(p, "confirmed") == counter(p, "records_committed")
            && p["source"]["state"] == "up"
    };
    let mut pipeline = status_when(port, settled).await?;
    loop {
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let again = status_when(port, settled).await?;
        if counter(&again, "records_committed") == counter(&pipeline, "records_committed") {
            break;
        }
        pipeline = again;
    }
    let records = counter(&pipeline, "records_committed") as usize;
    let central = collect_stream(&stream, |got| got.len() >= records).await?;
    let sent_centrally = all_readings(&central).iter().filter(|r| r.series == "boiler/t").count();
    let (code, body) = http_get(port, "/readyz")?;
    ensure!(code == 200 && body.contains("\"ok\""), "{code} {body}");

    // The page as the browser built it.
    let url = format!("http://127.0.0.1:{port}/?pipeline=readings&series=boiler%2Ft");
    let dom = Html::parse_document(&browser::dump_dom(&url)?);
    ensure!(attribute(&dom, "body", "data-ready")? == "1");
    ensure!(text(&dom, "#gateway-id")? == "gw-e2e");
    ensure!(text(&dom, "#version")? == env!("CARGO_PKG_VERSION"));
    let config_text = std::fs::read(weir.data_dir().parent().context("the config's directory")?.join("weir.toml"))?;
    ensure!(attribute(&dom, "#config-sha256", "title")? == hex::encode(sha2::Sha256::digest(&config_text)));
    ensure!(["true", "false"].contains(&attribute(&dom, "#clock", "data-synced")?.as_str()));
    ensure!(attribute(&dom, "#ready", "data-ready")? == "true");
    let row = "#pipelines tr[data-pipeline=readings]";
    ensure!(attribute(&dom, &format!("{row} td[data-field=source]"), "data-state")? == "up");
    ensure!(attribute(&dom, &format!("{row} td[data-field=uplink]"), "data-state")? == "up");
    ensure!(text(&dom, &format!("{row} td[data-field=confirmed]"))?.ends_with(" ago"));
    ensure!(select(&dom, &format!("{row} svg.spark rect"))?.attr("height").is_some());
    let outbox = "#outbox tr[data-pipeline=readings]";
    ensure!(text(&dom, &format!("{outbox} td[data-field=records]"))? == "0");
    ensure!(text(&dom, &format!("{outbox} td[data-field=confirmed]"))? == records.to_string());
    let function = "#functions tr[data-use='readings/unit-convert']";
    ensure!(text(&dom, &format!("{function} td[data-field=faults]"))? == "0");
    ensure!(text(&dom, &format!("{function} td[data-field=quarantined]"))? == "no");
    ensure!(text(&dom, "#dead-letters tr[data-id] td[data-field=stage]")? == "decode");
    ensure!(text(&dom, "#dead-letters tr[data-id] td[data-field=reason]")?.contains("JSON"));
    ensure!(select(&dom, "#series-list a[data-series='boiler/t']").is_ok());
    ensure!(text(&dom, "#series-title")?.starts_with("readings / boiler/t"));
    let chart = "#series-chart";
    ensure!(attribute(&dom, chart, "data-raw-points")? == READINGS.to_string(), "every raw reading is drawn");
    let sent: usize = attribute(&dom, chart, "data-sent-points")?.parse()?;
    ensure!(sent == sent_centrally, "the page shows {sent} readings sent, the central stream has {sent_centrally}");
    ensure!(sent > 0 && sent < READINGS as usize, "downsampling kept {sent} of {READINGS}");
    let bands: usize = attribute(&dom, chart, "data-bands")?.parse()?;
    ensure!(bands >= 15, "{bands} window bands");
    ensure!(dom.select(&Selector::parse("#series-chart rect.band").expect("a selector")).count() == bands);

    let screenshot = workspace().join("target/test-artifacts/status-page.png");
    browser::screenshot(&url, &screenshot, 1280, 1400)?;
    let (_, page) = http_get(port, "/?pipeline=readings&series=boiler%2Ft")?;
    println!("status page: {} bytes of HTML; screenshot at {}", page.len(), screenshot.display());

    // The tap: what flows while it watches, and nothing of the data changes.
    let mut tap = std::process::Command::new(weir_bin())
        .args(["tap", "readings", "--json", "--kind", "message", "--kind", "record", "--limit", "4"])
        .env("WEIR_HTTP", format!("127.0.0.1:{port}"))
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut watched = std::io::BufReader::new(tap.stdout.take().context("the tap's stdout")?);
    let mut header = String::new();
    std::io::BufRead::read_line(&mut watched, &mut header)?;
    ensure!(header.starts_with("# tapping readings"), "{header}");
    // Read off the test's runtime, which the MQTT client needs to publish meanwhile.
    let watching = tokio::task::spawn_blocking(move || {
        std::io::BufRead::lines(watched).map(|line| Ok(serde_json::from_str(&line?)?)).collect::<Result<Vec<Value>>>()
    });
    for i in 0..3 {
        let reading = json!({"sensor": "boiler/t", "ts": start_ms + 40_000 + i * 500, "value": 50});
        plant.publish("plant/readings", reading.to_string()).await?;
    }
    plant.wait_for_pubacks(READINGS as usize + 4).await?;
    let lines = tokio::time::timeout(PATIENCE, watching).await.context("the tap saw too little")???;
    ensure!(tap.wait()?.success());
    let messages: Vec<&Value> = lines.iter().filter(|l| l["kind"] == "message").collect();
    ensure!(lines.len() == 4 && messages.len() >= 2, "{lines:#?}");
    ensure!(
        messages
            .iter()
            .all(|m| m["topic"] == "plant/readings" && m["payload"].as_str().is_some_and(|p| p.contains("boiler/t")))
    );
    status_when(port, |p| counter(p, "readings_in") == READINGS as u64 + 3).await?;
    let (code, _) = http_get(port, "/tap/nothing")?;
    ensure!(code == 404);

    // Readiness: the uplink goes away while records wait, then the source.
    nats.stop(true)?;
    for i in 0..3 {
        let reading = json!({"sensor": "boiler/t", "ts": start_ms + 50_000 + i * 500, "value": 70 + i});
        plant.publish("plant/readings", reading.to_string()).await?;
    }
    let mut reasons = String::new();
    for _ in 0..300 {
        let (code, body) = http_get(port, "/readyz")?;
        if code == 503 && body.contains("the uplink confirmed nothing for") {
            reasons = body;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let failing: Value = serde_json::from_str(&reasons).with_context(|| format!("/readyz never failed: {reasons}"))?;
    ensure!(failing["status"] == "failing", "{failing}");
    ensure!(failing["reasons"][0].as_str().is_some_and(|r| r.starts_with("readings: the uplink")), "{failing}");
    drop(plant);
    drop(mqtt);
    let mut source_down = false;
    for _ in 0..300 {
        let (_, body) = http_get(port, "/readyz")?;
        if body.contains("readings: source disconnected") {
            source_down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(source_down, "/readyz never named the lost source");
    let dom = Html::parse_document(&browser::dump_dom(&format!("http://127.0.0.1:{port}/"))?);
    ensure!(attribute(&dom, "#ready", "data-ready")? == "false");
    ensure!(text(&dom, "#not-ready")?.contains("source disconnected"));
    let (code, _, _keep) = weir.stop()?;
    ensure!(code == 0);
    Ok(())
}
