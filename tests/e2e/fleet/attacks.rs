//! What a gateway refuses, each before anything is compiled, with its reason in the status the
//! fleet manager reads: a document waiting for an unsynced clock, signatures by an unknown key
//! or too few, a document for another gateway, a replayed older revision, an expired document,
//! a version below the floor, a flipped bit in an artifact, an artifact longer than signed, a
//! target of another function mixed into a document.

use anyhow::Result;
use weir_e2e::fleet::{Fleet, compiled, desired, now, signed, with_function};
use weir_e2e::*;
use weir_fleet::{HealthGates, Signed, SigningKey, Target};
use weir_host::fleet::status::GatewayStatus;

use super::updates::{Feeder, fleet_gateway};

const GATEWAY: &str = "gw-e2e";
const KEY: &str = "desired.gateway.gw-e2e";

fn quick() -> HealthGates {
    HealthGates { shadow_batches: 5, probation_batches: 5, ..HealthGates::default() }
}

fn refused<'a>(status: &'a GatewayStatus, code: &str) -> Option<&'a weir_host::fleet::status::RefusalStatus> {
    status.refusals.iter().find(|r| r.code == code)
}

/// Waits for a refusal with `code` and checks its reason says `words`.
async fn refusal(fleet: &Fleet, code: &str, words: &str) -> Result<()> {
    let status = fleet.wait_for(GATEWAY, &format!("a `{code}` refusal"), |s| refused(s, code).is_some()).await?;
    let reason = &refused(&status, code).expect("waited for it").reason;
    assert!(reason.contains(words), "`{code}`: {reason:?} does not say {words:?}");
    Ok(())
}

#[tokio::test]
async fn every_attack_is_refused_before_compiling_with_its_reason_in_status() -> Result<()> {
    let mqtt = Mosquitto::start()?;
    let nats = NatsServer::start()?;
    let fleet = Fleet::new(&nats).await?;
    let synced = tempfile::tempdir()?;
    let synced_file = synced.path().join("synchronized");
    let first = fleet.publish("weir_fixture_unit_convert_next.wasm", "unit-convert", "2.0.0", 5)?;
    let weir = Weir::start(&fleet_gateway(&mqtt, &nats, &fleet, synced_file.to_str().expect("UTF-8")))?;
    weir.wait_for_log("subscribed", 1).await?;
    let feeder = Feeder::start(&mqtt).await?;
    let desired_key = fleet.key("desired")?;

    // The clock is not synced: the document waits, and is taken once it is.
    let r1 = desired(GATEWAY, 1, &[&first], quick());
    fleet.put(KEY, signed(&r1, &[&desired_key])).await?;
    refusal(&fleet, "clock-not-synced", "waits for the clock").await?;
    std::fs::write(&synced_file, b"")?;
    let status = fleet.wait_for(GATEWAY, "revision 1 committed", |s| s.outcomes.iter().any(|o| o.committed)).await?;
    assert_eq!(status.floors.get("unit-convert"), Some(&5));

    // Signatures: by a key the root does not list, or none at all.
    let stranger = SigningKey::generate()?;
    let r2 = desired(GATEWAY, 2, &[&first], quick());
    fleet.put(KEY, signed(&r2, &[&stranger])).await?;
    refusal(&fleet, "signatures", "0 valid signature(s)").await?;

    // A document for another gateway, put where this one reads.
    let other = desired("gw-other", 2, &[&first], quick());
    fleet.put(KEY, signed(&other, &[&desired_key])).await?;
    refusal(&fleet, "not-for-this-gateway", "gw-other").await?;

    // Revision 2 is accepted; revision 1 replayed afterwards is refused.
    fleet.put(KEY, signed(&r2, &[&desired_key])).await?;
    fleet.wait_for(GATEWAY, "revision 2 in force", |s| s.desired.as_ref().is_some_and(|d| d.revision == 2)).await?;
    fleet.put(KEY, signed(&r1, &[&desired_key])).await?;
    refusal(&fleet, "revision-went-back", "older than the accepted revision 2").await?;

    // An expired document.
    let mut expired = desired(GATEWAY, 3, &[&first], quick());
    expired.expires = now() - 60;
    fleet.put(KEY, signed(&expired, &[&desired_key])).await?;
    refusal(&fleet, "expired", "revision 3 expired").await?;

    // A version below the floor (5, raised when revision 1 was committed).
    let refused = fleet.command_line(&[
        "publish".into(),
        functions_dir().join("weir_fixture_identity.wasm").to_str().expect("UTF-8").into(),
        "--function".into(),
        "unit-convert".into(),
        "--version".into(),
        "1.0.0".into(),
        "--counter".into(),
        "1".into(),
        "--key".into(),
        fleet.key_file("targets.key").to_str().expect("UTF-8").into(),
    ])?;
    assert!(!refused.status.success(), "publish refuses a counter below one published");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("security counters only go up"));
    let old = fleet.publish_unchecked("weir_fixture_identity.wasm", "unit-convert", "1.0.0", 1).await?;
    fleet.put(KEY, signed(&desired(GATEWAY, 3, &[&old], quick()), &[&desired_key])).await?;
    refusal(&fleet, "below-floor", "below this gateway's floor 5").await?;

    // A flipped bit in a published artifact: refused as it streams in, never compiled.
    let flipped = fleet.publish("weir_fixture_unit_convert_skewed.wasm", "unit-convert", "2.1.0", 6)?;
    let mut bytes = std::fs::read(functions_dir().join("weir_fixture_unit_convert_skewed.wasm"))?;
    bytes[1000] ^= 0x04;
    fleet.replace_artifact(&flipped.sha256, &bytes).await?;
    fleet.put(KEY, signed(&desired(GATEWAY, 3, &[&flipped], quick()), &[&desired_key])).await?;
    refusal(&fleet, "artifact-digest", "sha256").await?;

    // An artifact longer than its target signs.
    let longer = fleet.publish("weir_fixture_unit_convert_faulty.wasm", "unit-convert", "2.2.0", 7)?;
    let mut bytes = std::fs::read(functions_dir().join("weir_fixture_unit_convert_faulty.wasm"))?;
    bytes.extend_from_slice(&[0; 4096]);
    fleet.replace_artifact(&longer.sha256, &bytes).await?;
    fleet.put(KEY, signed(&desired(GATEWAY, 4, &[&longer], quick()), &[&desired_key])).await?;
    refusal(&fleet, "artifact-too-long", "longer than").await?;

    // Another function's signed target, put under unit-convert's name with its artifact.
    let foreign = fleet.publish("weir_fn_threshold_alert.wasm", "threshold-alert", "9.0.0", 9)?;
    let foreign_target =
        fleet.documents().await?.get(format!("target.threshold-alert.9.{}", hex::encode(foreign.sha256))).await?;
    let foreign_target = foreign_target.expect("published above");
    let decoded: Target = minicbor_target(&foreign_target)?;
    fleet.put(&format!("target.unit-convert.9.{}", hex::encode(decoded.sha256)), foreign_target.to_vec()).await?;
    let mixed = with_function(desired(GATEWAY, 5, &[], quick()), "unit-convert", decoded.entry());
    fleet.put(KEY, signed(&mixed, &[&desired_key])).await?;
    refusal(&fleet, "target-mismatch", "function").await?;

    // Through all of it the committed release kept running, and nothing refused was compiled.
    let status = fleet.status(GATEWAY).await?.expect("a status");
    for refusal in &status.refusals {
        eprintln!("refused {} [{}]: {}", refusal.what, refusal.code, refusal.reason);
    }
    assert_eq!(status.running["unit-convert"].version, "2.0.0");
    feeder.stop().await?;
    let (code, data_dir, _keep) = weir.stop()?;
    assert_eq!(code, 0);
    for never in [&old, &flipped, &longer, &foreign] {
        assert!(!compiled(&data_dir, &never.sha256), "{} {} was compiled", never.function, never.version);
    }
    assert!(compiled(&data_dir, &first.sha256));
    Ok(())
}

/// A signed target's body, decoded (the test knows it is one).
fn minicbor_target(bytes: &[u8]) -> Result<Target> {
    Ok(minicbor::decode(&Signed::from_bytes(bytes)?.body)?)
}
