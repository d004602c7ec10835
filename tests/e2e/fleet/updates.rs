//! Fleet updates on a gateway with real brokers: a release that faults and one that computes
//! wrong values are stopped in shadow (nothing of them reaches the central broker), a good one
//! replaces the running version, passes its probation and is committed (its floor raised), and
//! the central broker receives every reading once, each converted by a version that was right.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use weir_e2e::fleet::Fleet;
use weir_e2e::*;

const BASE_MS: i64 = 1_700_000_000_000;
const GATEWAY: &str = "gw-e2e";

/// `[fleet]` and a pipeline: MQTT `plant/readings` → unit-convert (× 2) → JetStream
/// `central.readings`, one message per batch.
pub fn fleet_gateway(mqtt: &Mosquitto, nats: &NatsServer, fleet: &Fleet, clock_synced: &str) -> String {
    format!(
        r#"{brokers}
[fleet]
broker = "central"
root = "{root}"
heartbeat = "1s"
clock_synced = "{clock_synced}"

[functions.unit-convert]
component = "weir_fn_unit_convert.wasm"

[pipelines.readings.source.mqtt]
broker = "plant"
topics = ["plant/readings"]

[pipelines.readings.decode.json]
series = "/sensor"
time = "/ts"
value = "/value"

[[pipelines.readings.operators]]
function = "unit-convert"
params = {{ scale = 2.0 }}

[pipelines.readings.batch]
max_messages = 1

[pipelines.readings.sink.jetstream]
broker = "central"
subject = "central.readings"
"#,
        brokers = gateway_with_quick_central(&mqtt.url(), &nats.url()),
        root = fleet.root().display(),
    )
}

/// Publishes readings `0, 1, 2, …` (value = index) every few milliseconds until stopped;
/// returns how many it published.
pub struct Feeder {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<Result<()>>,
}

impl Feeder {
    pub async fn start(mqtt: &Mosquitto) -> Result<Self> {
        let plant = MqttClient::connect(mqtt, "plant").await?;
        let (stop, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicI64::new(0)));
        let (stopping, counting) = (Arc::clone(&stop), Arc::clone(&sent));
        let task = tokio::spawn(async move {
            let mut i = 0;
            while !stopping.load(Ordering::SeqCst) {
                let reading = json!({"sensor": "oven/temp", "ts": BASE_MS + i, "value": i as f64});
                plant.publish("plant/readings", reading.to_string()).await?;
                i += 1;
                counting.store(i, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        });
        Ok(Feeder { stop, sent, task })
    }

    pub async fn stop(self) -> Result<i64> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await??;
        Ok(self.sent.load(Ordering::SeqCst))
    }
}

#[tokio::test]
async fn bad_releases_are_stopped_in_shadow_and_a_good_one_is_committed_with_nothing_lost() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let fleet = Fleet::new(&nats).await?;
    let stream = create_stream(&nats.client().await?, "READINGS", &["central.readings"]).await?;
    fleet.publish("weir_fixture_unit_convert_faulty.wasm", "unit-convert", "1.1.0", 2)?;
    fleet.publish("weir_fixture_unit_convert_skewed.wasm", "unit-convert", "1.2.0", 3)?;
    let next = fleet.publish("weir_fixture_unit_convert_next.wasm", "unit-convert", "1.3.0", 4)?;

    let weir = Weir::start(&fleet_gateway(&mqtt, &nats, &fleet, "always"))?;
    weir.wait_for_log("subscribed", 1).await?;
    fleet.wait_for(GATEWAY, "a first heartbeat", |_| true).await?;
    let feeder = Feeder::start(&mqtt).await?;
    let gates = ["--shadow-batches", "20", "--probation-batches", "20"];

    // A release that panics on every batch: it never leaves its shadow.
    fleet.assign(GATEWAY, &[&["--function", "unit-convert=1.1.0"][..], &gates].concat())?;
    let status =
        fleet.wait_for(GATEWAY, "revision 1 rolled back", |s| s.outcomes.iter().any(|o| o.revision == 1)).await?;
    let outcome = &status.outcomes[0];
    assert!(
        !outcome.committed && outcome.reason.contains("in shadow") && outcome.reason.contains("fault"),
        "{outcome:?}"
    );
    assert!(status.running.is_empty(), "the configured component still runs: {status:#?}");

    // A release that is off by a half and never faults: only the comparison shows it.
    fleet.assign(GATEWAY, &[&["--function", "unit-convert=1.2.0"][..], &gates].concat())?;
    let status =
        fleet.wait_for(GATEWAY, "revision 2 rolled back", |s| s.outcomes.iter().any(|o| o.revision == 2)).await?;
    let outcome = status.outcomes.iter().find(|o| o.revision == 2).expect("found above");
    assert!(!outcome.committed && outcome.reason.contains("readings differ"), "{outcome:?}");

    // A good release: shadow, active, probation, committed, its floor raised.
    fleet.assign(GATEWAY, &[&["--function", "unit-convert=1.3.0"][..], &gates].concat())?;
    let status =
        fleet.wait_for(GATEWAY, "revision 3 committed", |s| s.outcomes.iter().any(|o| o.revision == 3)).await?;
    let outcome = status.outcomes.iter().find(|o| o.revision == 3).expect("found above");
    assert!(outcome.committed, "{outcome:?}");
    assert_eq!(status.running["unit-convert"].sha256, hex::encode(next.sha256));
    assert_eq!(status.floors.get("unit-convert"), Some(&4));
    assert!(status.update.is_none());

    // Every reading reached the central broker once, in order, converted right.
    let sent = feeder.stop().await?;
    let records = collect_stream(&stream, |records| all_readings(records).len() as i64 >= sent).await?;
    let values: Vec<f64> = all_readings(&records).iter().map(|r| r.value).collect();
    assert_eq!(values, (0..sent).map(|i| 2.0 * i as f64).collect::<Vec<_>>());
    let (code, data_dir, _keep) = weir.stop()?;
    assert_eq!(code, 0);
    assert!(dead_letters(&data_dir)?.is_empty(), "nothing was dead-lettered");
    Ok(())
}
