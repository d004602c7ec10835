//! Store and forward under faults: SIGKILL at random instants, brokers that go away, connections
//! cut around publishes and acks. The oracle is always the same: every reading the broker
//! accepted from the plant arrives centrally exactly once, and state-derived values are exactly
//! what an uninterrupted run computes.
//!
//! Sizes come from the environment for longer runs (docs/durability.md):
//! `WEIR_KILL_READINGS` (default 100 000), `WEIR_KILL_COUNT` (default 20).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rand::Rng;
use weir_e2e::proxy;
use weir_e2e::*;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Series the load is spread over.
const SERIES: usize = 16;
/// Moving-average window of the stateful function in the pipeline.
const WINDOW: usize = 4;

fn load_config(plant: &str, central: &str) -> String {
    tuned_config(plant, central, 100, "")
}

/// The load pipeline with `batch_messages` per batch (one record each), extra sink settings, and
/// a central broker weir reconnects to quickly.
fn tuned_config(plant: &str, central: &str, batch_messages: usize, sink_extra: &str) -> String {
    format!(
        r#"{header}
[functions.moving-average]
component = "weir_fn_moving_average.wasm"

[pipelines.load.source.mqtt]
broker = "plant"
topics = ["load/#"]
max_inflight = 100

[pipelines.load.decode.json]
series = "/s"
time = "/t"
value = "/v"

[[pipelines.load.operators]]
function = "moving-average"
params = {{ window = {WINDOW}, suffix = "/avg" }}

[pipelines.load.batch]
max_messages = {batch_messages}
linger = "20ms"

[pipelines.load.sink.jetstream]
broker = "central"
subject = "central.load"
{sink_extra}
"#,
        header = gateway_with_quick_central(plant, central)
    )
}

fn payload(i: usize) -> (String, String) {
    let series = format!("load/{}", i % SERIES);
    let body = format!(r#"{{"s":"{series}","t":{i},"v":{i}}}"#);
    (series, body)
}

/// What must arrive: each reading once, and the moving average over each series in order.
struct Expected {
    readings: usize,
    originals: BTreeMap<(String, i64), f64>,
    averages: BTreeMap<String, Vec<f64>>,
}

fn expected(readings: usize) -> Expected {
    let mut originals = BTreeMap::new();
    let mut windows: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut averages: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for i in 0..readings {
        let (series, _) = payload(i);
        let value = i as f64;
        originals.insert((series.clone(), i as i64 * 1_000_000), value);
        let window = windows.entry(series.clone()).or_default();
        window.push(value);
        if window.len() > WINDOW {
            window.remove(0);
        }
        let average = window.iter().sum::<f64>() / window.len() as f64;
        averages.entry(format!("{series}/avg")).or_default().push(average);
    }
    Expected { readings, originals, averages }
}

/// Checks what arrived against `expected`: nothing lost, nothing twice, averages exact.
fn verify(records: &[CentralRecord], expected: &Expected) -> Result<()> {
    let mut seen: BTreeMap<(String, i64), usize> = BTreeMap::new();
    let mut averages: BTreeMap<String, Vec<(i64, f64)>> = BTreeMap::new();
    for reading in all_readings(records) {
        if reading.series.ends_with("/avg") {
            averages.entry(reading.series).or_default().push((reading.ts, reading.value));
        } else {
            *seen.entry((reading.series, reading.ts)).or_default() += 1;
        }
    }
    let lost: Vec<_> = expected.originals.keys().filter(|k| !seen.contains_key(*k)).take(5).collect();
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).map(|(k, n)| (k.clone(), *n)).take(5).collect();
    let foreign = seen.keys().filter(|k| !expected.originals.contains_key(*k)).count();
    if !lost.is_empty() || !duplicated.is_empty() || foreign > 0 {
        bail!(
            "lost {} (first {lost:?}), duplicated {} (first {duplicated:?}), foreign {foreign}",
            expected.originals.keys().filter(|k| !seen.contains_key(*k)).count(),
            seen.values().filter(|n| **n > 1).count()
        );
    }
    for (series, want) in &expected.averages {
        let mut got = averages.remove(series).unwrap_or_default();
        got.sort_by_key(|(ts, _)| *ts);
        let got: Vec<f64> = got.into_iter().map(|(_, v)| v).collect();
        if &got != want {
            let first = got.iter().zip(want).position(|(g, w)| g != w);
            bail!(
                "averages of {series} differ from an uninterrupted run: {} vs {} values, first difference at {first:?}",
                got.len(),
                want.len()
            );
        }
    }
    let mut ids: Vec<u64> = records.iter().map(|r| r.record.header.seq).collect();
    ids.sort_unstable();
    let distinct = ids.windows(2).all(|w| w[0] < w[1]);
    if !distinct || ids.first() != Some(&1) || ids.last() != Some(&(records.len() as u64)) {
        bail!("record seqs are not 1..={} without repeats", records.len());
    }
    eprintln!("verified: {} readings, {} records, 0 lost, 0 duplicated", expected.readings, records.len());
    Ok(())
}

/// [`collect_all`], printing weir's log and outbox stats if it fails.
async fn collect_all_or_explain(
    stream: &async_nats::jetstream::stream::Stream,
    expected: &Expected,
    weir: &Weir,
) -> Result<Vec<CentralRecord>> {
    let collected = collect_all(stream, expected).await;
    if collected.is_err() {
        let log = weir.log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        eprintln!("weir's log, last lines of its last run, newest first:\n{}", tail.join("\n"));
        eprintln!("outbox stats: {}", weir.outbox_stats().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
    }
    collected
}

/// Collects the stream until every original reading arrived, then waits until nothing more comes
/// (a late duplicate would show up then).
async fn collect_all(
    stream: &async_nats::jetstream::stream::Stream,
    expected: &Expected,
) -> Result<Vec<CentralRecord>> {
    // Counted as records arrive, so that collecting stays linear in long runs.
    let (mut counted_records, mut originals) = (0, 0);
    let mut records = collect_stream(stream, |records| {
        originals += all_readings(&records[counted_records..]).iter().filter(|r| !r.series.ends_with("/avg")).count();
        counted_records = records.len();
        originals >= expected.readings
    })
    .await?;
    let mut quiet_since = Instant::now();
    while quiet_since.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let count = stream.clone().info().await?.state.messages as usize;
        if count > records.len() {
            records = collect_stream(stream, |r| r.len() >= count).await?;
            quiet_since = Instant::now();
        }
    }
    Ok(records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_loses_nothing_and_duplicates_nothing() -> Result<()> {
    sigkill_at_random_instants("sync", env_or("WEIR_KILL_READINGS", 100_000), env_or("WEIR_KILL_COUNT", 20)).await
}

/// `durability = "relaxed"` makes fewer commits durable, never fewer acknowledgements safe: input
/// is acknowledged, and records published, only once a durable commit covers them, so a crash
/// undoes nothing that left the process — and no record id is ever given out twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_relaxed_durability_loses_nothing_and_reuses_no_record_id() -> Result<()> {
    sigkill_at_random_instants(
        "relaxed",
        env_or("WEIR_RELAXED_KILL_READINGS", 30_000),
        env_or("WEIR_RELAXED_KILL_COUNT", 10),
    )
    .await
}

/// Publishes `readings` through the load pipeline (with `durability`) while SIGKILLing weir
/// `kills` times at random instants, then checks that every reading arrived once.
async fn sigkill_at_random_instants(durability: &str, readings: usize, kills: usize) -> Result<()> {
    let mqtt = Mosquitto::start_with("max_inflight_messages 100")?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    let config = format!("{}\n[state]\ndurability = \"{durability}\"\n", load_config(&mqtt.url(), &nats.url()));
    let mut weir = Weir::start(&config)?;
    weir.wait_for_log("subscribed", 1).await?;

    let plant = MqttClient::connect(&mqtt, "load-publisher").await?;
    let publisher = tokio::spawn(async move {
        publish_readings(&plant, readings).await?;
        anyhow::Ok(plant)
    });

    let started = Instant::now();
    let mut rng = rand::rng();
    for _ in 0..kills {
        let pause = Duration::from_millis(rng.random_range(200..1200));
        tokio::time::sleep(pause).await;
        weir.kill_and_restart()?;
    }
    let _plant = publisher.await??;
    eprintln!("{kills} kills in {:.1} s ({durability}); draining", started.elapsed().as_secs_f64());

    let expected = expected(readings);
    let records = collect_all_or_explain(&stream, &expected, &weir).await?;
    if let Err(e) = verify(&records, &expected) {
        eprintln!("outbox stats: {}", weir.outbox_stats().map(|s| s.to_string()).unwrap_or_else(|e| e.to_string()));
        return Err(e);
    }
    assert_eq!(weir.runs(), u32::try_from(kills + 1)?);
    let (code, _, _) = weir.stop()?;
    assert_eq!(code, 0, "the last run stops cleanly");
    Ok(())
}

/// Connects the load publisher and publishes `readings` with it (see [`publish_readings`]).
async fn publish_load(mqtt: &Mosquitto, readings: usize) -> Result<MqttClient> {
    let plant = MqttClient::connect(mqtt, "load-publisher").await?;
    publish_readings(&plant, readings).await?;
    Ok(plant)
}

/// Publishes `readings` (see [`payload`]) and waits for the broker to accept them all.
async fn publish_readings(plant: &MqttClient, readings: usize) -> Result<()> {
    publish_range(plant, 0..readings).await?;
    plant.wait_for_pubacks(readings).await
}

/// Publishes readings `range` (see [`payload`]), without waiting for the broker's PUBACKs.
async fn publish_range(plant: &MqttClient, range: std::ops::Range<usize>) -> Result<()> {
    for i in range {
        let (series, body) = payload(i);
        plant.publish(&series, body).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cuts_after_publishes_and_before_acks_lose_nothing_and_duplicate_nothing() -> Result<()> {
    let readings = env_or("WEIR_CUT_READINGS", 5000);
    let cuts = env_or("WEIR_CUT_COUNT", 100);
    let mqtt = Mosquitto::start_with("max_inflight_messages 100")?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    let plan =
        proxy::CutPlan { after_publish_every: 5, before_ack_every: 4, refuse_for: Duration::ZERO, max_cuts: cuts };
    let proxy = proxy::NatsProxy::start(nats.port, "central.load", plan).await?;
    // Ten readings per record and few in flight: enough publishes for every cut; a short ack
    // timeout keeps cuts cheap.
    let weir = Weir::start(&tuned_config(&mqtt.url(), &proxy.url(), 10, "ack_timeout = \"300ms\"\nmax_in_flight = 8"))?;
    weir.wait_for_log("subscribed", 1).await?;
    let _plant = publish_load(&mqtt, readings).await?;

    let expected = expected(readings);
    let records = collect_all(&stream, &expected).await?;
    assert!(proxy.cuts() >= cuts, "only {} cuts happened", proxy.cuts());
    verify(&records, &expected)?;
    eprintln!("{} connection cuts", proxy.cuts());
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_longer_than_the_duplicate_window_store_nothing_twice() -> Result<()> {
    let readings = 2000;
    let mqtt = Mosquitto::start_with("max_inflight_messages 100")?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    // JetStream forgets message ids after 1 s; every outage below lasts 2 s.
    let stream = create_stream_with_window(&central, "CENTRAL", &["central.>"], Duration::from_secs(1)).await?;
    let plan =
        proxy::CutPlan { after_publish_every: 0, before_ack_every: 5, refuse_for: Duration::from_secs(2), max_cuts: 6 };
    let proxy = proxy::NatsProxy::start(nats.port, "central.load", plan).await?;
    let weir = Weir::start(&tuned_config(&mqtt.url(), &proxy.url(), 10, "ack_timeout = \"300ms\"\nmax_in_flight = 8"))?;
    weir.wait_for_log("subscribed", 1).await?;
    let _plant = publish_load(&mqtt, readings).await?;

    let expected = expected(readings);
    let records = collect_all(&stream, &expected).await?;
    assert_eq!(proxy.cuts(), 6);
    verify(&records, &expected)?;
    // Each cut dropped the ack of a record the stream had stored; only asking the stream what it
    // has (not its duplicate window, long gone) kept those records from being stored twice.
    assert!(weir.log().matches("already stored centrally").count() >= 6, "{}", weir.log());
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_broker_stopped_and_restarted_loses_nothing_and_duplicates_nothing() -> Result<()> {
    let readings = 20_000;
    let mqtt = Mosquitto::start_with("max_inflight_messages 100")?;
    let mut nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    let weir = Weir::start(&tuned_config(&mqtt.url(), &nats.url(), 100, "ack_timeout = \"1s\""))?;
    weir.wait_for_log("subscribed", 1).await?;
    let plant = MqttClient::connect(&mqtt, "load-publisher").await?;
    publish_range(&plant, 0..readings / 2).await?;
    // Central goes away abruptly while records are in flight, stays away, comes back.
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.stop(true)?;
    publish_range(&plant, readings / 2..readings).await?;
    plant.wait_for_pubacks(readings).await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.start_again()?;

    let expected = expected(readings);
    let records = collect_all(&stream, &expected).await?;
    verify(&records, &expected)?;
    assert!(weir.log().contains("publish failed"), "the outage was noticed");
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}

/// A backlog at the plant broker larger than weir's local queue (100 000 messages). mosquitto
/// before 2.0.13 lets a whole queue into flight while its client acknowledges, so its packet ids
/// repeat: weir sheds the surplus by reconnecting, and every PUBACK still has to land on the
/// right message — every reading arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_larger_than_the_local_queue_drains_exactly_once() -> Result<()> {
    let Backlog { readings, mqtt, nats: _nats, stream, mut weir } = Backlog::start().await?;
    ensure!(weir.terminate()? == 0, "weir stops cleanly, leaving its session with the broker");

    let _plant = publish_load(&mqtt, readings).await?;
    weir.start_again()?;
    drains_once_after_shedding(readings, &stream, weir).await
}

/// The same broker flaw while weir ingests: a queue builds at the broker while weir is busy,
/// and the broker lets it into flight as weir acknowledges. weir processes what it holds, ignores
/// the rest and then reconnects, as often as needed — every reading arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backlog_that_builds_up_while_weir_ingests_drains_exactly_once() -> Result<()> {
    let Backlog { readings, mqtt, nats: _nats, stream, weir } = Backlog::start().await?;

    // A tenth while weir keeps up; then weir is paused (as a busy gateway would be, whatever
    // its speed), so that the broker's queue grows, and resumed.
    let plant = MqttClient::connect(&mqtt, "load-publisher").await?;
    publish_range(&plant, 0..readings / 10).await?;
    weir.signal("STOP")?;
    let resumed = publish_range(&plant, readings / 10..readings).await.and(plant.wait_for_pubacks(readings).await);
    weir.signal("CONT")?;
    resumed?;
    drains_once_after_shedding(readings, &stream, weir).await
}

/// The backlog tests' world: a plant broker that keeps 100 messages in flight, a central
/// JetStream stream, and weir subscribed.
struct Backlog {
    readings: usize,
    mqtt: Mosquitto,
    nats: NatsServer,
    stream: async_nats::jetstream::stream::Stream,
    weir: Weir,
}

impl Backlog {
    async fn start() -> Result<Self> {
        let readings = env_or("WEIR_BACKLOG_READINGS", 130_000);
        let mqtt = Mosquitto::start_with("max_inflight_messages 100")?;
        let nats = NatsServer::start()?;
        let central = nats.client().await?;
        let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
        let weir = Weir::start(&load_config(&mqtt.url(), &nats.url()))?;
        weir.wait_for_log("subscribed", 1).await?;
        Ok(Self { readings, mqtt, nats, stream, weir })
    }
}

/// Every one of `readings` arrives once, weir shed load on the way, and it stops cleanly.
async fn drains_once_after_shedding(
    readings: usize,
    stream: &async_nats::jetstream::stream::Stream,
    weir: Weir,
) -> Result<()> {
    let expected = expected(readings);
    let records = collect_all_or_explain(stream, &expected, &weir).await?;
    verify(&records, &expected)?;
    ensure!(weir.log().contains("reconnecting so it holds the backlog"), "the local queue overflowed");
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}

/// A data disk that fills up: commits fail (ENOSPC), nothing more is acknowledged, and the plant
/// broker keeps the input. redb refuses every transaction after an I/O error until the database
/// is reopened; weir reopens it itself and, once space returns, goes on — with records committed
/// before the disk filled and with everything the broker kept: every reading arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_data_disk_stalls_ingest_and_weir_resumes_by_itself_when_space_returns() -> Result<()> {
    let Some(disk) = SmallDisk::mount("24m")? else {
        eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
        return Ok(());
    };
    let data_dir = disk.path().join("data");
    let readings = 20_000;
    let mqtt = Mosquitto::start_with("max_inflight_messages 100")?;
    let mut nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    let config = load_config(&mqtt.url(), &nats.url()).replace("{data_dir}", data_dir.to_str().context("UTF-8")?);
    let weir = Weir::start(&config)?;
    weir.wait_for_log("subscribed", 1).await?;
    let plant = MqttClient::connect(&mqtt, "load-publisher").await?;
    publish_range(&plant, 0..readings / 4).await?;
    plant.wait_for_pubacks(readings / 4).await?;
    // Central goes away, so the outbox has to grow; the disk fills up.
    nats.stop(false)?;
    disk.fill()?;
    publish_range(&plant, readings / 4..readings).await?;
    plant.wait_for_pubacks(readings).await?;
    weir.wait_for_log("commit failed", 1).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    disk.free()?;
    nats.start_again()?;
    let expected = expected(readings);
    let records = collect_all_or_explain(&stream, &expected, &weir).await?;
    verify(&records, &expected)?;
    ensure!(weir.log().contains("state database reopened"), "{}", weir.log());
    assert_eq!(weir.stop()?.0, 0);
    Ok(())
}
