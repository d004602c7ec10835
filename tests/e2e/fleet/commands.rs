//! The fleet manager's commands around a rollout, on three gateway processes: `plan`, a rollout
//! paused from another terminal and resumed, one aborted in its second wave (that wave back on
//! the previous release, signed again above the floors the first wave raised), `rollback` of
//! one gateway to an earlier release, and `floor raise`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use weir_e2e::fleet::Fleet;
use weir_e2e::*;
use weir_host::fleet::status::GatewayStatus;

use super::rollout::gateway;

const GATEWAYS: [&str; 3] = ["gw1", "gw2", "gw3"];

/// `weir fleet rollout` in the background (killed if the test ends first).
fn rollout(fleet: &Fleet, id: &str, version: &str) -> tokio::task::JoinHandle<Result<(bool, String)>> {
    let function = format!("unit-convert={version}");
    let mut command = tokio::process::Command::new(weir_bin());
    command
        .args(["fleet", "rollout", "--id", id, "--function", &function, "--group", "plant", "--waves", "1,100%"])
        .args(["--shadow-batches", "5", "--probation-batches", "100", "--wave-timeout", "120s"])
        .args(keys(fleet))
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

fn keys(fleet: &Fleet) -> Vec<String> {
    let path = |name: &str| fleet.key_file(name).to_str().expect("UTF-8").to_owned();
    vec!["--desired-key".into(), path("desired.key"), "--targets-key".into(), path("targets.key")]
}

fn runs(version: &str, counter: u64) -> impl Fn(&GatewayStatus) -> bool {
    let version = version.to_owned();
    move |s: &GatewayStatus| {
        s.update.is_none()
            && s.running.get("unit-convert").is_some_and(|r| r.version == version && r.counter == counter)
    }
}

fn on_probation(rollout: &'static str) -> impl Fn(&GatewayStatus) -> bool {
    move |s: &GatewayStatus| {
        s.update.as_ref().is_some_and(|u| u.stage == "active")
            && s.desired.as_ref().and_then(|d| d.rollout.as_ref()).is_some_and(|(id, _)| id == rollout)
    }
}

#[tokio::test]
async fn plan_pause_resume_abort_rollback_and_floor_raise() -> Result<()> {
    let nats = NatsServer::start()?;
    let fleet = Fleet::new(&nats).await?;
    fleet.publish("weir_fn_unit_convert.wasm", "unit-convert", "1.0.0", 1)?;
    fleet.publish("weir_fixture_unit_convert_next.wasm", "unit-convert", "1.1.0", 2)?;
    let client = nats.client().await?;
    let mut gateways = Vec::new();
    for id in GATEWAYS {
        create_stream(&client, &format!("CENTRAL_{id}"), &[&format!("central.{id}")]).await?;
        gateways.push(Weir::start(&gateway(id, &nats, &fleet))?);
    }
    for id in GATEWAYS {
        fleet.wait_for(id, "a first status", |_| true).await?;
    }

    let plan = fleet.command(&["plan", "--function", "unit-convert=1.0.0", "--group", "plant"])?;
    ensure!(plan.contains("gw2: unit-convert configured component → 1.0.0 (#1)"), "{plan}");
    ensure!(plan.contains("3 of 3 gateway(s) change; 0 refusal(s) foreseen"), "{plan}");

    // Paused from another terminal while the canary is on probation: the driving command stops;
    // resumed, the rollout finishes.
    let first = rollout(&fleet, "first", "1.0.0");
    fleet.wait_for("gw1", "the canary on probation", on_probation("first")).await?;
    fleet.command(&["pause", "first"])?;
    let (ok, output) = first.await??;
    ensure!(!ok && output.contains("rollout first paused"), "{output}");
    let resumed = fleet
        .command(&[&["resume", "first"][..], &keys(&fleet).iter().map(String::as_str).collect::<Vec<_>>()].concat())?;
    ensure!(resumed.contains("rollout first done"), "{resumed}");
    for id in GATEWAYS {
        fleet.wait_for(id, "1.0.0 committed", runs("1.0.0", 1)).await?;
    }

    // Aborted in its second wave: the canary keeps 1.1.0 (committed, its floor 2), the second
    // wave goes back to 1.0.0 signed again with counter 3, above every one published.
    let second = rollout(&fleet, "second", "1.1.0");
    fleet.wait_for("gw1", "1.1.0 committed", runs("1.1.0", 2)).await?;
    fleet
        .wait_for_within("gw2", "the second wave on probation", Duration::from_secs(120), on_probation("second"))
        .await?;
    let aborted = fleet
        .command(&[&["abort", "second"][..], &keys(&fleet).iter().map(String::as_str).collect::<Vec<_>>()].concat())?;
    ensure!(aborted.contains("rollout second aborted; wave 2 reverted"), "{aborted}");
    let (ok, output) = second.await??;
    ensure!(!ok && output.contains("aborted"), "{output}");
    for id in ["gw2", "gw3"] {
        fleet.wait_for_within(id, "1.0.0 again, counter 3", Duration::from_secs(120), runs("1.0.0", 3)).await?;
    }
    let status = fleet.command(&["status"])?;
    ensure!(status.contains("rollout second: Aborted") && status.contains("2 reverted"), "{status}");

    // gw3 back to 1.1.0 on purpose: signed again above 3.
    let rolled = fleet.command(
        &[
            &["rollback", "--function", "unit-convert", "--to", "1.1.0", "--gateway", "gw3"][..],
            &keys(&fleet).iter().map(String::as_str).collect::<Vec<_>>(),
        ]
        .concat(),
    )?;
    ensure!(rolled.contains("gw3: revision") && rolled.contains("counter 4"), "{rolled}");
    fleet.wait_for_within("gw3", "1.1.0 with counter 4", Duration::from_secs(120), runs("1.1.0", 4)).await?;

    // A floor above what a gateway's document names is refused; one for a function the fleet
    // does not manage yet is raised when the gateway commits the document.
    let desired_key = fleet.key_file("desired.key");
    let desired_key = desired_key.to_str().context("UTF-8")?;
    let too_high = fleet.command(&[
        "floor",
        "raise",
        "--function",
        "unit-convert",
        "--counter",
        "9",
        "--gateway",
        "gw2",
        "--key",
        desired_key,
    ]);
    ensure!(
        too_high.as_ref().is_err_and(|e| e.to_string().contains("roll out a version with counter 9")),
        "{too_high:?}"
    );
    fleet.command(&[
        "floor",
        "raise",
        "--function",
        "moving-average",
        "--counter",
        "7",
        "--gateway",
        "gw2",
        "--key",
        desired_key,
    ])?;
    let gw2 = fleet.wait_for("gw2", "the floor raised", |s| s.floors.get("moving-average") == Some(&7)).await?;
    ensure!(gw2.floors.get("unit-convert") == Some(&3), "{gw2:#?}");

    for weir in gateways {
        let (code, _, _keep) = weir.stop()?;
        ensure!(code == 0);
    }
    Ok(())
}
