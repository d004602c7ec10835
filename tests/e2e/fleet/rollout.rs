//! A rollout across five gateway processes, on Debian's nats-server 2.9 and on a current one:
//! a faulting and a skewed release stopped at the canary (rolled back there, the other four
//! never touched), then a good release in waves (one canary, one more, the rest) while one
//! gateway is offline and another is killed mid-update; the offline one catches up when it
//! returns, the killed one comes back consistent, and no gateway's central stream lost or
//! repeated a record.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use weir_e2e::fleet::Fleet;
use weir_e2e::*;
use weir_host::fleet::status::GatewayStatus;

const GATEWAYS: [&str; 5] = ["gw1", "gw2", "gw3", "gw4", "gw5"];

/// A gateway of the group `plant`: simulated boiler temperatures → unit-convert → JetStream
/// `central.<id>`.
pub(super) fn gateway(id: &str, nats: &NatsServer, fleet: &Fleet) -> String {
    format!(
        r#"[gateway]
id = "{id}"
data_dir = "{{data_dir}}"
functions_dir = "{{functions_dir}}"

[brokers.central]
url = "{url}"
reconnect_min = "20ms"
reconnect_max = "250ms"

[fleet]
broker = "central"
root = "{root}"
groups = ["plant"]
heartbeat = "1s"
clock_synced = "always"

[functions.unit-convert]
component = "weir_fn_unit_convert.wasm"

[pipelines.boiler.source.simulated]
payload = "json"
devices = 1
interval = "40ms"
topic_prefix = "plant/boiler"
sensors = ["temperature"]

[pipelines.boiler.decode.json]
series = "/sensor"
time = "/ts"
time_unit = "ms"
value = "/value"

[[pipelines.boiler.operators]]
function = "unit-convert"
params = {{ conversion = "celsius_to_kelvin" }}

[pipelines.boiler.batch]
max_messages = 1

[pipelines.boiler.sink.jetstream]
broker = "central"
subject = "central.{id}"
"#,
        url = nats.url(),
        root = fleet.root().display(),
    )
}

/// `weir fleet rollout` for `version` to the group, run to its end in the background (killed
/// if the test ends first); returns whether it succeeded and what it printed.
fn rollout(fleet: &Fleet, id: &str, version: &str, extra: &[&str]) -> tokio::task::JoinHandle<Result<(bool, String)>> {
    let desired = fleet.key_file("desired.key").to_str().expect("UTF-8").to_owned();
    let targets = fleet.key_file("targets.key").to_str().expect("UTF-8").to_owned();
    let function = format!("unit-convert={version}");
    let mut command = tokio::process::Command::new(weir_bin());
    command
        .args(["fleet", "rollout", "--id", id, "--function", &function, "--group", "plant", "--waves", "1,10%,100%"])
        .args([
            "--shadow-batches",
            "10",
            "--wave-timeout",
            "120s",
            "--desired-key",
            &desired,
            "--targets-key",
            &targets,
        ])
        .args(extra)
        .args(["--server", fleet.server()])
        .env("RUST_LOG", "warn")
        .kill_on_drop(true);
    tokio::spawn(async move {
        let output = command.output().await?;
        Ok((
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr),
        ))
    })
}

/// How long from the canary's first fault in shadow to its update ending, from its log.
fn fault_to_rollback(log: &str) -> Option<Duration> {
    let time = |line: &str| -> Option<time::OffsetDateTime> {
        time::OffsetDateTime::parse(line.split_whitespace().next()?, &time::format_description::well_known::Rfc3339)
            .ok()
    };
    let fault = log.lines().find(|l| l.contains("function faulted") && l.contains("(shadow)")).and_then(time)?;
    let ended = log.lines().find(|l| l.contains("update refused")).and_then(time)?;
    Some((ended - fault).unsigned_abs())
}

async fn five_gateways(release: NatsRelease) -> Result<()> {
    let nats = NatsServer::start_release(release)?;
    let fleet = Fleet::new(&nats).await?;
    fleet.publish("weir_fixture_unit_convert_faulty.wasm", "unit-convert", "1.1.0", 2)?;
    fleet.publish("weir_fixture_unit_convert_skewed.wasm", "unit-convert", "1.2.0", 3)?;
    let good = fleet.publish("weir_fixture_unit_convert_next.wasm", "unit-convert", "1.3.0", 4)?;
    let client = nats.client().await?;
    let mut streams = Vec::new();
    let mut gateways = Vec::new();
    for id in GATEWAYS {
        streams.push(create_stream(&client, &format!("CENTRAL_{id}"), &[&format!("central.{id}")]).await?);
        gateways.push(Weir::start(&gateway(id, &nats, &fleet))?);
    }
    for id in GATEWAYS {
        fleet.wait_for(id, "a first status", |_| true).await?;
    }

    // A release that faults: stopped at the canary, the others never assigned.
    let (ok, output) = rollout(&fleet, "bad-1", "1.1.0", &["--probation-batches", "10"]).await??;
    ensure!(!ok && output.contains("wave 1 failed"), "{output}");
    let canary = fleet.status("gw1").await?.context("gw1 status")?;
    let outcome = canary.outcomes.last().context("an outcome")?;
    ensure!(!outcome.committed && outcome.reason.contains("in shadow"), "{outcome:?}");
    for id in &GATEWAYS[1..] {
        let status = fleet.status(id).await?.context("status")?;
        ensure!(status.desired.is_none() && status.outcomes.is_empty(), "{id} was touched: {status:#?}");
    }
    let fault_to_rollback =
        fault_to_rollback(&gateways[0].log()).context("the canary logged its fault and rollback")?;
    eprintln!("{release:?}: canary's first fault in shadow to its update ending: {fault_to_rollback:?}");

    // A release that is wrong but never faults: stopped at the canary by the comparison.
    let (ok, output) = rollout(&fleet, "bad-2", "1.2.0", &["--probation-batches", "10"]).await??;
    let canary_log = || gateways[0].log().lines().filter(|l| l.contains("fleet")).collect::<Vec<_>>().join("\n");
    ensure!(!ok && output.contains("readings differ"), "{output}\ncanary:\n{}", canary_log());

    // The good release, in waves, with gw5 offline and gw3 killed mid-update.
    gateways[4].terminate()?;
    let started = Instant::now();
    // A probation long enough (some seconds) to kill gw3 in the middle of it.
    let mut good_rollout =
        rollout(&fleet, "good", "1.3.0", &["--success-threshold", "60%", "--probation-batches", "100"]);
    let probation = |s: &GatewayStatus| s.update.as_ref().is_some_and(|u| u.stage == "active");
    // Two waves of a few seconds each come first; on a loaded machine they take longer.
    let reached = tokio::select! {
        reached = fleet.wait_for_within("gw3", "its probation", Duration::from_secs(240), probation) => reached,
        ended = &mut good_rollout => {
            let (_, output) = ended??;
            Err(anyhow::anyhow!("the rollout ended before gw3's probation: {output}"))
        }
    };
    if let Err(e) = reached {
        let status = fleet.command(&["status"]).unwrap_or_else(|e| e.to_string());
        let logs: Vec<String> = gateways
            .iter()
            .zip(GATEWAYS)
            .map(|(weir, id)| {
                let log = weir.log();
                let fleet_lines: Vec<&str> = log.lines().filter(|l| l.contains("fleet")).collect();
                format!("{id}:\n{}", fleet_lines.join("\n"))
            })
            .collect();
        anyhow::bail!("{e}\nfleet status:\n{status}\n{}", logs.join("\n"));
    }
    gateways[2].kill_and_restart()?;
    let (ok, output) = good_rollout.await??;
    ensure!(ok, "{output}");
    let rollout_time = started.elapsed();
    // gw3 may still be finishing after the wave passed at 60 %.
    let committed =
        |s: &GatewayStatus| s.update.is_none() && s.running.get("unit-convert").is_some_and(|r| r.version == "1.3.0");
    for id in &GATEWAYS[..4] {
        fleet.wait_for(id, "1.3.0 committed", committed).await?;
    }
    gateways[4].start_again()?;
    let back = fleet.wait_for("gw5", "1.3.0 committed after coming back", committed).await?;
    // gw3 resumed its probation after the kill and committed.
    let gw3 = fleet.status("gw3").await?.context("gw3 status")?;
    ensure!(gw3.outcomes.iter().any(|o| o.committed && o.revision == 1), "{gw3:#?}");
    ensure!(gateways[2].runs() == 2 && !gateways[2].log().contains("update rolled back at start"), "gw3 resumed");
    eprintln!(
        "{release:?}: rollout of five gateways in three waves: {rollout_time:?} (gw5 offline, gw3 killed mid-update)"
    );
    assert_eq!(back.floors.get("unit-convert"), Some(&good.counter));

    // Every gateway's stream: each record once, none missing before the last.
    for (id, weir) in GATEWAYS.iter().zip(gateways) {
        let (code, _, _keep) = weir.stop()?;
        assert_eq!(code, 0, "{id} stopped in order");
    }
    for (id, stream) in GATEWAYS.iter().zip(&streams) {
        let mut stream = stream.clone();
        let last = stream.info().await?.state.last_sequence;
        let mut seqs = BTreeSet::new();
        for sequence in 1..=last {
            let message = stream.get_raw_message(sequence).await?;
            let record = weir_record::read(&message.payload)?;
            ensure!(seqs.insert(record.header.seq), "{id}: record {} arrived twice", record.header.seq);
        }
        let expected: BTreeSet<u64> = (1..=seqs.len() as u64).collect();
        ensure!(seqs == expected, "{id}: records missing: {:?}", expected.difference(&seqs).collect::<Vec<_>>());
    }
    Ok(())
}

#[tokio::test]
async fn a_rollout_across_five_gateways_on_debian_nats_server() -> Result<()> {
    five_gateways(NatsRelease::Debian).await
}

#[tokio::test]
async fn a_rollout_across_five_gateways_on_a_current_nats_server() -> Result<()> {
    five_gateways(NatsRelease::Current).await
}
