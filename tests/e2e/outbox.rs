//! A bounded outbox with the central broker away, and a damaged data file, with the real binary
//! and real brokers.
//!
//! The oracle of a full outbox: what arrives centrally accounts for every committed reading
//! exactly once — as itself, inside a coarsened record's windows, or inside a drop marker's span
//! — and the outbox never held more than its cap (`weir outbox stats`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use weir_e2e::*;
use weir_record::RecordKind;

/// The smallest outbox the config accepts.
const CAP: u64 = 64 << 10;

fn config(plant: &str, central: &str, outbox: &str) -> String {
    format!(
        r#"{header}
[pipelines.load.source.mqtt]
broker = "plant"
topics = ["load/#"]
max_inflight = 100

[pipelines.load.decode.json]
series = "/s"
time = "/t"
value = "/v"

[pipelines.load.batch]
max_messages = 10
linger = "20ms"

[pipelines.load.sink.jetstream]
broker = "central"
subject = "central.load"
ack_timeout = "1s"

[pipelines.load.outbox]
{outbox}
"#,
        header = gateway_with_quick_central(plant, central)
    )
}

/// Reading `i`: one of 8 series, one per second, value `i`.
fn payload(i: usize) -> (String, String) {
    let series = format!("load/{}", i % 8);
    (series.clone(), format!(r#"{{"s":"{series}","t":{},"v":{i}}}"#, i as u64 * 1000))
}

async fn publish(plant: &MqttClient, range: std::ops::Range<usize>) -> Result<()> {
    for i in range {
        let (series, body) = payload(i);
        plant.publish(&series, body).await?;
    }
    Ok(())
}

/// Waits until weir's counters say `readings` readings were committed (acknowledged upstream).
async fn wait_committed(weir: &Weir, readings: u64) -> Result<serde_json::Value> {
    let started = Instant::now();
    loop {
        if let Ok(stats) = weir.outbox_stats()
            && stream_counter(&stats, "load", "readings_committed") >= readings
        {
            return Ok(stats);
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("weir did not commit {readings} readings; its log:\n{}", weir.log());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// How the central records account for readings: as themselves, coarsened or dropped.
#[derive(Debug, Default)]
struct Accounted {
    raw: BTreeMap<(String, i64), usize>,
    coarsened: u64,
    coarsened_sum: f64,
    dropped: u64,
    raw_sum: f64,
    coarsened_records: usize,
    markers: usize,
}

/// Checks that the records' spans tile seqs 1..=last with no overlap, and tallies them.
fn account(records: &[CentralRecord]) -> Result<Accounted> {
    let mut accounted = Accounted::default();
    let mut covered = BTreeSet::new();
    for central in records {
        let record = &central.record;
        let span = record.span();
        for seq in span.first_seq..=span.last_seq {
            ensure!(covered.insert(seq), "seq {seq} is covered twice (record {})", record.header.seq);
        }
        match record.kind() {
            RecordKind::Readings => {
                for reading in readings(record) {
                    accounted.raw_sum += reading.value;
                    *accounted.raw.entry((reading.series, reading.ts)).or_default() += 1;
                }
            }
            RecordKind::Coarsened { .. } => {
                accounted.coarsened_records += 1;
                let windows: Vec<_> = record.aggregates.iter().flat_map(|series| &series.windows).collect();
                let counted: u64 = windows.iter().map(|w| w.count).sum();
                ensure!(
                    counted == span.readings,
                    "a coarsened record's windows hold {counted} of {} readings",
                    span.readings
                );
                accounted.coarsened += span.readings;
                accounted.coarsened_sum += windows.iter().map(|w| w.sum).sum::<f64>();
            }
            RecordKind::Dropped => {
                accounted.markers += 1;
                accounted.dropped += span.readings;
            }
        }
    }
    let last = covered.last().copied().unwrap_or(0);
    ensure!(covered.len() as u64 == last, "seqs 1..={last} are not all covered: {} covered", covered.len());
    ensure!(accounted.raw.values().all(|n| *n == 1), "a reading arrived twice");
    Ok(accounted)
}

/// Fills a 64 KiB outbox far past its cap with the central broker away, then lets it drain.
async fn fill_past_the_cap_then_drain(when_full: &str, readings: usize) -> Result<(Accounted, serde_json::Value)> {
    let mqtt = Mosquitto::start_with("max_inflight_messages 100\nmax_queued_messages 100000")?;
    let mut nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    nats.stop(true)?;
    let mut weir =
        Weir::start(&config(&mqtt.url(), &nats.url(), &format!("max_bytes = \"64KiB\"\nwhen_full = \"{when_full}\"")))?;
    weir.wait_for_log("subscribed", 1).await?;
    let plant = MqttClient::connect(&mqtt, "load-publisher").await?;
    publish(&plant, 0..readings).await?;
    let full = wait_committed(&weir, readings as u64).await?;
    let held = stream_stats(&full, "load")["bytes"].as_u64().unwrap_or(u64::MAX);
    ensure!(held <= CAP, "{when_full}: the outbox holds {held} bytes, cap {CAP}");
    let file = std::fs::metadata(weir.data_dir().join("weir.redb"))?.len();
    eprintln!(
        "{when_full}: {readings} readings committed with central away; outbox {held} bytes, {} records; data file {file} bytes",
        stream_stats(&full, "load")["records"]
    );

    nats.start_again()?;
    let records = collect_stream(&stream, |records| {
        account(records).is_ok_and(|a| a.raw.len() as u64 + a.coarsened + a.dropped >= readings as u64)
    })
    .await?;
    let accounted = account(&records)?;
    ensure!(
        accounted.raw.len() as u64 + accounted.coarsened + accounted.dropped == readings as u64,
        "{when_full}: {} raw + {} coarsened + {} dropped != {readings} committed",
        accounted.raw.len(),
        accounted.coarsened,
        accounted.dropped
    );
    // Let the sink save its last confirmations, then read the counters from the database.
    tokio::time::sleep(Duration::from_millis(500)).await;
    ensure!(weir.terminate()? == 0, "weir exits cleanly");
    let stats = weir.outbox_stats()?;
    ensure!(
        stream_counter(&stats, "load", "confirmed") == records.len() as u64,
        "confirmed counts every central record"
    );
    ensure!(stream_stats(&stats, "load")["records"] == 0, "the outbox drained");
    eprintln!(
        "{when_full}: central got {} records: {} raw readings, {} coarsened into {} records, {} dropped under {} markers",
        records.len(),
        accounted.raw.len(),
        accounted.coarsened,
        accounted.coarsened_records,
        accounted.dropped,
        accounted.markers
    );
    Ok((accounted, stats))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reaggregate_keeps_the_cap_and_every_reading_arrives_raw_or_in_a_window() -> Result<()> {
    let readings = 20_000;
    let (accounted, stats) = fill_past_the_cap_then_drain("reaggregate", readings).await?;
    ensure!(accounted.coarsened > 0 && accounted.coarsened_records > 0, "the cap forced coarsening");
    ensure!(accounted.dropped == 0, "coarsening sufficed");
    let total: f64 = (0..readings).map(|i| i as f64).sum();
    ensure!(
        accounted.raw_sum + accounted.coarsened_sum == total,
        "window sums and raw values add up to the readings' sum"
    );
    ensure!(stream_counter(&stats, "load", "readings_coarsened") == accounted.coarsened);
    ensure!(stream_counter(&stats, "load", "readings_dropped") == 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drop_oldest_keeps_the_cap_and_counts_every_dropped_reading() -> Result<()> {
    let readings = 20_000;
    let (accounted, stats) = fill_past_the_cap_then_drain("drop_oldest", readings).await?;
    ensure!(accounted.dropped > 0 && accounted.coarsened == 0, "the cap forced drops, never coarsening");
    ensure!(accounted.markers >= 1);
    ensure!(stream_counter(&stats, "load", "readings_dropped") == accounted.dropped, "the counter is exact");
    // The newest readings survive: reading i has time i s, and the dropped ones are the oldest.
    let oldest_raw = accounted.raw.keys().map(|(_, ts)| *ts).min().unwrap_or(0);
    ensure!(oldest_raw >= accounted.dropped as i64 * 1_000_000_000, "drop_oldest dropped the oldest readings");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_stops_acknowledging_until_the_central_broker_is_back() -> Result<()> {
    let readings = 20_000;
    let mqtt = Mosquitto::start_with("max_inflight_messages 100\nmax_queued_messages 100000")?;
    let mut nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    nats.stop(true)?;
    let weir = Weir::start(&config(&mqtt.url(), &nats.url(), "max_bytes = \"64KiB\"\nwhen_full = \"block\""))?;
    weir.wait_for_log("subscribed", 1).await?;
    let plant = MqttClient::connect(&mqtt, "load-publisher").await?;
    publish(&plant, 0..readings).await?;
    weir.wait_for_log("the outbox is full and its policy is `block`", 1).await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let blocked = weir.outbox_stats()?;
    let committed = stream_counter(&blocked, "load", "readings_committed");
    ensure!(committed < readings as u64, "ingest stopped: {committed} of {readings} committed");
    let held = stream_stats(&blocked, "load")["bytes"].as_u64().unwrap_or(u64::MAX);
    ensure!(held <= CAP, "the outbox holds {held} bytes, cap {CAP}");
    let refused = stream_counter(&blocked, "load", "refused_full");
    ensure!(refused == 1, "one change set held and retried for 6 s counts once, not {refused} times");

    nats.start_again()?;
    let records = collect_stream(&stream, |records| all_readings(records).len() >= readings).await?;
    let accounted = account(&records)?;
    ensure!(
        accounted.raw.len() == readings && accounted.coarsened + accounted.dropped == 0,
        "every reading arrived raw"
    );
    eprintln!("block: ingest held at {committed} readings ({held} bytes), then all {readings} arrived raw");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_first_sends_fresh_records_ahead_of_the_rate_capped_backlog() -> Result<()> {
    let (backlog, live) = (2_000, 200);
    let mqtt = Mosquitto::start_with("max_inflight_messages 100")?;
    let mut nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    nats.stop(true)?;
    let weir = Weir::start(&config(&mqtt.url(), &nats.url(), "drain = \"live_first\"\nbacklog_rate = \"4KiB/s\""))?;
    weir.wait_for_log("subscribed", 1).await?;
    let plant = MqttClient::connect(&mqtt, "load-publisher").await?;
    publish(&plant, 0..backlog).await?;
    wait_committed(&weir, backlog as u64).await?;

    nats.start_again()?;
    weir.wait_for_log("backlog waiting; fresh records go first", 1).await?;
    publish(&plant, backlog..backlog + live).await?;
    let records = collect_stream(&stream, |records| all_readings(records).len() >= backlog + live).await?;
    let accounted = account(&records)?;
    ensure!(accounted.raw.len() == backlog + live, "every reading arrived once");
    let is_live =
        |record: &CentralRecord| readings(&record.record).iter().any(|r| r.ts >= backlog as i64 * 1_000_000_000);
    let first_live = records.iter().position(is_live).unwrap_or(usize::MAX);
    let last_backlog = records.iter().rposition(|r| !is_live(r)).unwrap_or(0);
    ensure!(
        first_live < last_backlog,
        "fresh records went ahead of the backlog: first fresh at {first_live}, last backlog at {last_backlog} of {}",
        records.len()
    );
    weir.wait_for_log("backlog sent", 1).await?;
    eprintln!(
        "live_first: first fresh record at position {first_live}, last backlog record at {last_backlog} of {}",
        records.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_data_file_is_moved_aside_reported_and_ingest_goes_on() -> Result<()> {
    let mqtt = Mosquitto::start_with("max_inflight_messages 100")?;
    let nats = NatsServer::start()?;
    let central = nats.client().await?;
    let stream = create_stream(&central, "CENTRAL", &["central.>"]).await?;
    let mut weir = Weir::start(&config(&mqtt.url(), &nats.url(), ""))?;
    weir.wait_for_log("subscribed", 1).await?;
    let plant = MqttClient::connect(&mqtt, "load-publisher").await?;
    publish(&plant, 0..1_000).await?;
    let before = collect_stream(&stream, |records| all_readings(records).len() >= 1_000).await?;
    ensure!(weir.terminate()? == 0);

    for (damage, change) in [
        ("truncated", Box::new(|bytes: &mut Vec<u8>| bytes.truncate(bytes.len() / 2)) as Box<dyn Fn(&mut Vec<u8>)>),
        ("zeroed header", Box::new(|bytes: &mut Vec<u8>| bytes[..4096].fill(0))),
        (
            "bits flipped across the file",
            Box::new(|bytes: &mut Vec<u8>| {
                let len = bytes.len();
                for eighth in 1..8 {
                    bytes[len * eighth / 8..len * eighth / 8 + 16].iter_mut().for_each(|b| *b ^= 0xa5);
                }
            }),
        ),
    ] {
        let file = weir.data_dir().join("weir.redb");
        let mut bytes = std::fs::read(&file)?;
        change(&mut bytes);
        std::fs::write(&file, bytes)?;
        let recoveries_before = weir.log().matches("recovered from a damaged state database").count();
        weir.start_again()?;
        weir.wait_for_log("recovered from a damaged state database", recoveries_before + 1).await?;
        weir.wait_for_log("MQTT connected", weir.runs() as usize).await?;
        ensure!(weir.terminate()? == 0, "{damage}: weir runs and stops cleanly after recovering");
        let stats = weir.outbox_stats()?;
        let recoveries = stats["recoveries"].as_array().map_or(0, Vec::len);
        ensure!(recoveries >= 1, "{damage}: weir outbox stats reports the recovery");
        let streams = stats["recoveries"][recoveries - 1]["outbox"].as_array().cloned().unwrap_or_default();
        ensure!(
            streams.iter().all(|s| s["stream"] == "load" && s["loss_basis"].is_string()),
            "{damage}: the report says what came back of each stream's outbox: {stats:#}"
        );
        if !streams.is_empty() {
            let data_dir = weir.data_dir().to_str().expect("UTF-8 path").to_owned();
            let text = String::from_utf8(weir_e2e::weir(&["outbox", "stats", "--data-dir", &data_dir])?.stdout)?;
            ensure!(text.contains("outbox load: ") && text.contains("loss basis: "), "{damage}: {text}");
        }
    }
    let damaged = std::fs::read_dir(weir.data_dir().join("damaged"))?.count();
    ensure!(damaged == 2, "the newest two damaged files are kept, found {damaged}");

    // Ingest goes on, and new records never reuse an id the central broker already holds.
    weir.start_again()?;
    weir.wait_for_log("MQTT connected", weir.runs() as usize).await?;
    publish(&plant, 1_000..1_500).await?;
    let after = collect_stream(&stream, |records| all_readings(records).len() >= 1_500).await?;
    let ids: BTreeSet<_> = after.iter().map(|r| r.message_id.clone()).collect();
    ensure!(ids.len() == after.len(), "no message id stored twice");
    ensure!(after.len() > before.len(), "new records arrived");
    ensure!(weir.terminate()? == 0);
    Ok(())
}
