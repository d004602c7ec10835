//! The window stage end to end: readings over MQTT, slightly out of order, into tumbling
//! windows; the windowed aggregates that arrive on JetStream are compared with values computed
//! here from the readings themselves (not with weir's code), and the quantile sketches are read
//! with the DDSketch library. The windows also carry a custom aggregate, the `band-histogram`
//! function's counts per value band, compared with counts made here.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use weir_e2e::*;
use weir_record::Sketch;

const SERIES: usize = 3;
const READINGS_PER_SERIES: i64 = 90;
/// Event time of the first reading, ms.
const T0_MS: i64 = 1_700_000_000_000;
const WIDTH_MS: i64 = 10_000;
/// Band edges of the custom aggregate (values run from -10 to 15).
const EDGES: [f64; 4] = [-5.0, 0.0, 5.0, 10.0];
/// Quantiles checked against the exact ones.
const QUANTILES: [f64; 3] = [0.5, 0.9, 0.99];
/// How close DataDog's Python library comes: it reads every bin one bin low (`1 - 2/(γ(1+γ))`
/// for γ = 1.01/0.99 is 2.96 %).
const PYTHON_ACCURACY: f64 = 0.03;

fn value(i: i64, series: usize) -> f64 {
    // Multiples of 0.25: sums are exact whatever the order of addition.
    ((i * 37 + series as i64 * 11) % 101) as f64 / 4.0 - 10.0
}

/// A pipeline `name` reading JSON readings (`{"s": series, "t": ms, "v": value}`) from the plant
/// broker's `<name>/#` topics.
fn json_from_mqtt(name: &str) -> String {
    format!(
        r#"[pipelines.{name}.source.mqtt]
broker = "plant"
topics = ["{name}/#"]

[pipelines.{name}.decode.json]
series = "/s"
time = "/t"
value = "/v"
"#
    )
}

fn config(plant: &str, central: &str) -> String {
    format!(
        r#"{header}
# A generous time limit: this flow also runs with an ARM weir under qemu, where the emulator
# translates the function's code on its first calls.
[functions.band-histogram]
component = "weir_fn_band_histogram.wasm"
timeout = "5s"

{pipeline}
[pipelines.win.batch]
max_messages = 2
linger = "20ms"

[pipelines.win.window]
kind = "tumbling"
width = "10s"
allowed_lateness = "5s"
idle_timeout = "2s"

[pipelines.win.window.aggregate]
function = "band-histogram"
params = {{ edges = {EDGES:?} }}

[pipelines.win.sink.jetstream]
broker = "central"
subject = "central.win"
"#,
        header = gateway_with_brokers(plant, central),
        pipeline = json_from_mqtt("win")
    )
}

/// A window as computed here: the readings it holds.
type Expected = BTreeMap<(String, i64), Vec<(i64, f64)>>;

fn expected() -> Expected {
    let mut windows: Expected = BTreeMap::new();
    for series in 0..SERIES {
        for i in 0..READINGS_PER_SERIES {
            let ts_ms = T0_MS + i * 1000;
            let start_ms = ts_ms - ts_ms.rem_euclid(WIDTH_MS);
            windows
                .entry((format!("win/{series}"), start_ms * 1_000_000))
                .or_default()
                .push((ts_ms * 1_000_000, value(i, series)));
        }
    }
    windows
}

/// The custom aggregate of a window equals the band counts of its readings, made here.
fn check_bands(got: &weir_record::WindowValue, points: &[(i64, f64)], context: &str) -> Result<()> {
    let custom = got.custom.as_ref().with_context(|| format!("{context}: no custom aggregate"))?;
    ensure!(custom.missing == 0 && !custom.partial.is_empty(), "{context}: {custom:?}");
    let mut want: BTreeMap<String, f64> = BTreeMap::new();
    let names: Vec<String> = std::iter::once(format!("below_{}", EDGES[0]))
        .chain(EDGES.windows(2).map(|pair| format!("{}_to_{}", pair[0], pair[1])))
        .chain(std::iter::once(format!("from_{}", EDGES[EDGES.len() - 1])))
        .collect();
    for name in names.iter().chain(std::iter::once(&"nan".to_owned())) {
        want.insert(name.clone(), 0.0);
    }
    for (_, value) in points {
        let band = EDGES.iter().filter(|edge| *edge <= value).count();
        *want.get_mut(&names[band]).expect("a band") += 1.0;
    }
    let got: BTreeMap<String, f64> = custom.values.clone().context("finished values")?.into_iter().collect();
    ensure!(got == want, "{context}: bands {got:?}, counted here {want:?}");
    Ok(())
}

/// Final values: the highest revision of each (series, key).
fn final_windows(records: &[CentralRecord]) -> BTreeMap<(String, i64), weir_record::WindowValue> {
    let mut finals: BTreeMap<(String, i64), weir_record::WindowValue> = BTreeMap::new();
    for series in records.iter().flat_map(|r| &r.record.windows) {
        for window in &series.windows {
            let key = (series.series.name.clone(), window.key);
            if finals.get(&key).is_none_or(|kept| kept.revision < window.revision) {
                finals.insert(key, window.clone());
            }
        }
    }
    finals
}

/// Reads the stream until every expected window arrived complete (the last ones after the idle
/// timeout), then again after a pause in which anything emitted twice, or late, would arrive.
async fn collect_windows(
    stream: &async_nats::jetstream::stream::Stream,
    expected: &Expected,
) -> Result<Vec<CentralRecord>> {
    let records = collect_stream(stream, |records| {
        let finals = final_windows(records);
        expected.iter().all(|(key, points)| finals.get(key).is_some_and(|w| w.stats.count == points.len() as u64))
    })
    .await?;
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let total = (stream.clone().info().await?.state.messages as usize).max(records.len());
    collect_stream(stream, |all| all.len() >= total).await
}

/// How often each emission — (series, key, revision) — arrived.
fn emissions(records: &[CentralRecord]) -> BTreeMap<(String, i64, u32), usize> {
    let mut emissions = BTreeMap::new();
    for series in records.iter().flat_map(|r| &r.record.windows) {
        for window in &series.windows {
            *emissions.entry((series.series.name.clone(), window.key, window.revision)).or_default() += 1;
        }
    }
    emissions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windowed_aggregates_arrive_with_the_values_computed_from_the_readings() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    let gateway = Weir::start(&config(&mqtt.url(), &nats.url()))?;
    gateway.wait_for_log("subscribed", 1).await?;

    // Each reading is sent up to 3 s of event time late: out of order, within the 5 s lateness.
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    let mut sends = Vec::new();
    for series in 0..SERIES {
        for i in 0..READINGS_PER_SERIES {
            let delay_ms = (i * 7919 + series as i64 * 104_729) % 3001;
            sends.push((T0_MS + i * 1000 + delay_ms, series, i));
        }
    }
    sends.sort();
    for (_, series, i) in &sends {
        let body = format!(r#"{{"s":"win/{series}","t":{},"v":{}}}"#, T0_MS + i * 1000, value(*i, *series));
        plant.publish(&format!("win/{series}"), body).await?;
    }
    // Two readings of a window long closed: beyond the lateness.
    for _ in 0..2 {
        plant.publish("win/0", format!(r#"{{"s":"win/0","t":{},"v":1}}"#, T0_MS + 5_000)).await?;
    }
    plant.wait_for_pubacks(sends.len() + 2).await?;

    let expected = expected();
    let records = collect_windows(&stream, &expected).await?;
    let finals = final_windows(&records);
    ensure!(finals.len() == expected.len(), "{} windows arrived, {} expected", finals.len(), expected.len());

    let revisions = emissions(&records);
    ensure!(revisions.keys().all(|(series, _, _)| series.starts_with("win/")), "no readings of other series");
    ensure!(revisions.values().all(|n| *n == 1), "no window revision was emitted twice");
    ensure!(records.iter().all(|r| r.record.batch.is_empty()), "windows only: readings are not sent");

    let mut published = Vec::new();
    for ((series, start), points) in &expected {
        let got = &finals[&(series.clone(), *start)];
        let n = points.len() as f64;
        let sum: f64 = points.iter().map(|(_, v)| v).sum();
        let mean = sum / n;
        let m2: f64 = points.iter().map(|(_, v)| (v - mean) * (v - mean)).sum();
        let min = points.iter().map(|(_, v)| *v).fold(f64::INFINITY, f64::min);
        let max = points.iter().map(|(_, v)| *v).fold(f64::NEG_INFINITY, f64::max);
        let context = format!("{series} window at {start}");
        ensure!(got.start == *start && got.end == start + WIDTH_MS * 1_000_000, "{context}: range");
        ensure!(
            (got.stats.count, got.stats.sum, got.stats.min, got.stats.max) == (points.len() as u64, sum, min, max),
            "{context}: {:?}",
            got.stats
        );
        ensure!((got.stats.m2 - m2).abs() <= 1e-9 * m2.max(1.0), "{context}: m2 {} vs {m2}", got.stats.m2);
        let first = got.first.context("first")?;
        let last = got.last.context("last")?;
        ensure!(
            (first.ts, first.value) == points[0] && (last.ts, last.value) == points[points.len() - 1],
            "{context}: first/last"
        );
        let mut sorted: Vec<f64> = points.iter().map(|(_, v)| *v).collect();
        sorted.sort_by(f64::total_cmp);
        let exact: Vec<f64> = QUANTILES.iter().map(|q| sorted[(q * (sorted.len() - 1) as f64) as usize]).collect();
        for (q, want) in QUANTILES.iter().zip(&exact) {
            let estimate = got.sketch.quantile(*q).context("the sketch reads")?.context("a quantile")?;
            ensure!((estimate - want).abs() <= 0.01 * want.abs() + 1e-9, "{context}: p{q}: {estimate} vs {want}");
        }
        let Sketch::Protobuf(bytes) = &got.sketch else { bail!("{context}: the sketch is not DDSketch protobuf") };
        published.push((context.clone(), bytes.clone(), exact));
        check_bands(got, points, &context)?;
    }
    // DataDog's Python library reads the same bytes (one bin low: within 3 %, docs/windows.md).
    let sketches: Vec<Vec<u8>> = published.iter().map(|(_, bytes, _)| bytes.clone()).collect();
    let answers = python::ddsketch_quantiles(&sketches, &QUANTILES)?;
    for ((context, _, exact), answer) in published.iter().zip(&answers) {
        for ((q, want), estimate) in QUANTILES.iter().zip(exact).zip(answer) {
            ensure!(
                (estimate - want).abs() <= PYTHON_ACCURACY * want.abs() + 1e-9,
                "{context}: Python's p{q}: {estimate} vs {want}"
            );
        }
    }

    let corrections = finals.values().filter(|w| w.revision > 0).count();
    ensure!(corrections > 0, "small batches of out-of-order readings make some windows corrected");
    let (code, data_dir, _keep) = gateway.stop()?;
    ensure!(code == 0, "weir stops cleanly");
    let stats = outbox_stats_at(&data_dir)?;
    let counter = |name: &str| stream_counter(&stats, "win", name);
    ensure!(counter("readings_too_late") == 2, "the two readings beyond the lateness are counted: {stats}");
    ensure!(counter("windows_emitted") == revisions.len() as u64, "every emission is counted: {stats}");
    eprintln!(
        "{} windows, {} emissions ({corrections} windows corrected), 2 readings too late",
        finals.len(),
        revisions.len()
    );
    Ok(())
}

/// Swinging door over MQTT: fewer readings arrive, and every reading left out is within the
/// configured error of the line through the readings that arrived around it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swinging_door_sends_fewer_readings_within_its_error() -> Result<()> {
    const MAX_ERROR: f64 = 0.5;
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    let config = format!(
        r#"{header}
{pipeline}
[pipelines.thin.batch]
max_messages = 10
linger = "20ms"

[pipelines.thin.downsample]
method = "swinging_door"
max_error = {MAX_ERROR}
idle_timeout = "1s"

[pipelines.thin.sink.jetstream]
broker = "central"
subject = "central.thin"
"#,
        header = gateway_with_brokers(&mqtt.url(), &nats.url()),
        pipeline = json_from_mqtt("thin")
    );
    let gateway = Weir::start(&config)?;
    gateway.wait_for_log("subscribed", 1).await?;

    // A slow ramp with noise within ±0.1, a 5-degree step halfway, then a ramp down.
    let published: Vec<(i64, f64)> = (0..300i64)
        .map(|i| {
            let noise = ((i * 7919) % 21 - 10) as f64 / 100.0;
            let trend = if i < 150 { 20.0 + i as f64 * 0.02 } else { 28.0 - (i - 150) as f64 * 0.03 };
            (T0_MS + i * 1000, ((trend + noise) * 100.0).round() / 100.0)
        })
        .collect();
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    for (t, v) in &published {
        plant.publish("thin/t", format!(r#"{{"s":"thin/t","t":{t},"v":{v}}}"#)).await?;
    }
    plant.wait_for_pubacks(published.len()).await?;

    let last_ns = published[published.len() - 1].0 * 1_000_000;
    let records = collect_stream(&stream, |records| all_readings(records).iter().any(|r| r.ts == last_ns)).await?;
    let kept: Vec<(i64, f64)> = all_readings(&records).iter().map(|r| (r.ts / 1_000_000, r.value)).collect();
    ensure!(kept.windows(2).all(|w| w[0].0 < w[1].0), "kept readings arrive once each, in order");
    ensure!(kept.first() == published.first() && kept.last() == published.last(), "first and last kept");
    ensure!(kept.len() * 4 < published.len(), "{} of {} readings kept", kept.len(), published.len());
    for (t, v) in &published {
        let after = kept.iter().position(|(kt, _)| kt >= t).context("a kept reading at or after every reading")?;
        let (t1, v1) = kept[after];
        let line = if t1 == *t {
            v1
        } else {
            let (t0, v0) = kept[after - 1];
            v0 + (v1 - v0) * (t - t0) as f64 / (t1 - t0) as f64
        };
        ensure!((v - line).abs() <= MAX_ERROR + 1e-9, "reading at {t} ({v}) is {} from the line", (v - line).abs());
    }
    let (code, data_dir, _keep) = gateway.stop()?;
    ensure!(code == 0, "weir stops cleanly");
    let stats = outbox_stats_at(&data_dir)?;
    let counter = |name: &str| stream_counter(&stats, "thin", name);
    ensure!(counter("downsampled_in") == published.len() as u64, "points in counted: {stats}");
    ensure!(counter("downsampled_out") == kept.len() as u64, "points out counted: {stats}");
    let bytes: usize = records.iter().map(|r| r.payload_len).sum();
    ensure!(counter("bytes_committed") == bytes as u64, "encoded bytes counted ({bytes} arrived): {stats}");
    eprintln!(
        "swinging door, max error {MAX_ERROR}: {} readings in, {} out, {:.3} bytes per reading in",
        published.len(),
        kept.len(),
        bytes as f64 / published.len() as f64
    );
    Ok(())
}

/// SIGKILL at random instants while readings stream into windows: the window state (with the
/// custom aggregate's partials) commits with each batch, so the final windows equal those
/// computed from the readings, and no emission (window and revision) arrives twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_survive_sigkill_without_repeating_an_emission() -> Result<()> {
    use rand::Rng;
    const KILLS: usize = 8;
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    let mut gateway = Weir::start(&config(&mqtt.url(), &nats.url()))?;
    gateway.wait_for_log("subscribed", 1).await?;

    let plant = MqttClient::connect(&mqtt, "plant").await?;
    let publisher = tokio::spawn(async move {
        for i in 0..READINGS_PER_SERIES {
            for series in 0..SERIES {
                let body = format!(r#"{{"s":"win/{series}","t":{},"v":{}}}"#, T0_MS + i * 1000, value(i, series));
                plant.publish(&format!("win/{series}"), body).await?;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        plant.wait_for_pubacks(SERIES * READINGS_PER_SERIES as usize).await?;
        anyhow::Ok(plant)
    });
    let mut rng = rand::rng();
    for _ in 0..KILLS {
        tokio::time::sleep(std::time::Duration::from_millis(rng.random_range(100..400))).await;
        gateway.kill_and_restart()?;
    }
    let _plant = publisher.await??;

    let expected = expected();
    let records = collect_windows(&stream, &expected).await?;
    let emissions = emissions(&records);
    ensure!(emissions.values().all(|n| *n == 1), "an emission arrived twice: {emissions:?}");
    let finals = final_windows(&records);
    ensure!(finals.len() == expected.len(), "{} windows, {} expected", finals.len(), expected.len());
    for (key, points) in &expected {
        let got = &finals[key];
        let sum: f64 = points.iter().map(|(_, v)| v).sum();
        ensure!((got.stats.count, got.stats.sum) == (points.len() as u64, sum), "{key:?}: {:?}", got.stats);
        check_bands(got, points, &format!("{key:?}"))?;
    }
    ensure!(gateway.runs() == u32::try_from(KILLS + 1)?, "weir ran {} times", gateway.runs());
    eprintln!("{KILLS} kills: {} windows, {} emissions, none twice", finals.len(), emissions.len());
    assert_eq!(gateway.stop()?.0, 0);
    Ok(())
}
