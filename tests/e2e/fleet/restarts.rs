//! A gateway killed (SIGKILL) at each stage of an update it cannot finish quickly, and started
//! again: while it fetches an artifact that is not uploaded yet, and while the candidate runs in
//! shadow (its kept artifact then damaged on disk before the restart). Each time it comes back
//! in the stage it was in or earlier, never with half a set; the update then commits, and the
//! central broker holds every reading once, in order, converted right.

use anyhow::{Context, Result, ensure};
use weir_e2e::fleet::{self, Fleet};
use weir_e2e::*;
use weir_host::fleet::status::GatewayStatus;

use super::updates::{Feeder, fleet_gateway};

const GATEWAY: &str = "gw-e2e";

fn in_stage(stage: &'static str) -> impl Fn(&GatewayStatus) -> bool {
    move |s: &GatewayStatus| s.update.as_ref().is_some_and(|u| u.stage == stage)
}

#[tokio::test]
async fn a_gateway_killed_while_fetching_and_in_shadow_comes_back_consistent() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let fleet = Fleet::new(&nats).await?;
    let stream = create_stream(&nats.client().await?, "READINGS", &["central.readings"]).await?;
    let next = fleet.publish("weir_fixture_unit_convert_next.wasm", "unit-convert", "1.3.0", 4)?;
    let artifact = std::fs::read(functions_dir().join("weir_fixture_unit_convert_next.wasm"))?;
    // Signed and published, but its upload has not arrived yet.
    fleet.remove_artifact(&next.sha256).await?;

    let mut weir = Weir::start(&fleet_gateway(&mqtt, &nats, &fleet, "always"))?;
    weir.wait_for_log("subscribed", 1).await?;
    fleet.wait_for(GATEWAY, "a first heartbeat", |_| true).await?;
    let feeder = Feeder::start(&mqtt).await?;
    // A shadow long enough (seconds of readings) to be killed in.
    fleet.assign(
        GATEWAY,
        &["--function", "unit-convert=1.3.0", "--shadow-batches", "1500", "--probation-batches", "20"],
    )?;

    // Killed while it waits for the artifact: back in the same stage, still waiting.
    let fetching = |s: &GatewayStatus| {
        in_stage("fetched")(s) && s.update.as_ref().is_some_and(|u| u.progress.contains("cannot fetch"))
    };
    fleet.wait_for(GATEWAY, "waiting for the artifact", fetching).await?;
    weir.kill_and_restart()?;
    weir.wait_for_log("subscribed", 1).await?;
    let restarted = fleet::now();
    let back = fleet
        .wait_for(GATEWAY, "waiting for the artifact again", |s| {
            s.at > restarted && fetching(s) && s.running.is_empty()
        })
        .await?;
    ensure!(back.outcomes.is_empty(), "nothing ended: {back:#?}");

    // The upload arrives: verified, compiled, in shadow; killed there.
    fleet.replace_artifact(&next.sha256, &artifact).await?;
    fleet.wait_for(GATEWAY, "the candidate in shadow", in_stage("shadow")).await?;
    weir.kill()?;
    // Someone with access to the disk flips a bit of the kept, verified artifact.
    let kept = weir.data_dir().join("fleet/artifacts").join(format!("{}.wasm", hex::encode(next.sha256)));
    let mut bytes = std::fs::read(&kept).with_context(|| format!("the kept artifact {}", kept.display()))?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x10;
    std::fs::write(&kept, &bytes)?;
    weir.start_again()?;

    // Not compiled from the damaged file: fetched again, through shadow again, committed.
    let status =
        fleet.wait_for(GATEWAY, "revision 1 committed", |s| s.outcomes.iter().any(|o| o.revision == 1)).await?;
    let outcome = status.outcomes.iter().find(|o| o.revision == 1).expect("found above");
    ensure!(outcome.committed, "{outcome:?}");
    ensure!(status.running["unit-convert"].sha256 == hex::encode(next.sha256), "{status:#?}");
    ensure!(status.floors.get("unit-convert") == Some(&4), "{status:#?}");
    let log = weir.log();
    ensure!(log.contains("kept artifact unusable; fetching it again"), "the damaged artifact was noticed:\n{log}");
    ensure!(!log.contains("update rolled back at start"), "nothing was rolled back:\n{log}");
    ensure!(std::fs::read(&kept)? == artifact, "the kept artifact is the signed one again");

    // Every reading reached the central broker once, in order, converted right.
    let sent = feeder.stop().await?;
    let records = collect_stream(&stream, |records| all_readings(records).len() as i64 >= sent).await?;
    let values: Vec<f64> = all_readings(&records).iter().map(|r| r.value).collect();
    ensure!(values == (0..sent).map(|i| 2.0 * i as f64).collect::<Vec<_>>(), "{} readings of {sent}", values.len());
    let (code, data_dir, _keep) = weir.stop()?;
    ensure!(code == 0);
    ensure!(dead_letters(&data_dir)?.is_empty(), "nothing was dead-lettered");
    Ok(())
}
