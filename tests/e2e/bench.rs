//! Every `weir-bench` command, run in a short mode: proof that the benchmarks work, not figures
//! (those come from release builds and go to docs/BENCHMARKS.md; tests never time anything).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use weir_e2e::*;

/// The `weir-bench` binary under test (`WEIR_BENCH_BIN`, else `target/debug/weir-bench`).
fn weir_bench_bin() -> PathBuf {
    let bin =
        std::env::var_os("WEIR_BENCH_BIN").map_or_else(|| workspace().join("target/debug/weir-bench"), PathBuf::from);
    assert!(bin.is_file(), "no weir-bench binary at {}: run the tests with `cargo xtask test`", bin.display());
    bin
}

/// Runs `weir-bench <args>` and returns its standard output, which must hold every header.
fn bench(args: &[&str], headers: &[&str]) -> Result<String> {
    let output = Command::new(weir_bench_bin())
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .context("cannot start weir-bench")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.success(), "weir-bench {args:?} failed:\n{stdout}\n{stderr}");
    for header in headers {
        ensure!(stdout.contains(header), "weir-bench {args:?} printed no {header:?}:\n{stdout}");
    }
    Ok(stdout)
}

/// The data row of a one-row markdown table whose header starts with `first_column`.
fn table_row<'a>(stdout: &'a str, first_column: &str) -> Vec<&'a str> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with(&format!("| {first_column}")));
    let row = lines.nth(2).unwrap_or_else(|| panic!("no row under {first_column}:\n{stdout}"));
    row.trim_matches('|').split('|').map(str::trim).collect()
}

#[test]
fn sandbox_bench_measures_every_batch_size_and_the_instance_costs() -> Result<()> {
    let dir = functions_dir();
    let stdout = bench(
        &["sandbox", "--functions-dir", dir.to_str().unwrap_or_default(), "--readings", "2000"],
        &["| batch |", "store and instance of a loaded function", "hot swap"],
    )?;
    for batch in ["| 1 |", "| 64 |", "| 1024 |", "| 16384 |"] {
        ensure!(stdout.contains(batch), "no row {batch}:\n{stdout}");
    }
    Ok(())
}

#[test]
fn engine_bench_runs_a_recording_through_decode_filter_windows_and_the_outbox() -> Result<()> {
    let dir = functions_dir();
    // Bare, and observed as a running gateway observes its pipelines (metrics, live view).
    for (observed, shown) in [(None, "no"), (Some("--observed"), "yes")] {
        let mut args = vec!["engine", "--functions-dir", dir.to_str().unwrap_or_default(), "--readings", "20000"];
        args.extend(observed);
        let stdout = bench(&args, &["| observed | readings |"])?;
        let row = table_row(&stdout, "observed");
        assert_eq!(row[0], shown, "{row:?}");
        assert_eq!(row[1], "20000", "every recorded reading decoded: {row:?}");
        assert!(row[3].parse::<u64>()? > 0 && row[4].parse::<u64>()? > 0, "records and windows committed: {row:?}");
    }
    Ok(())
}

#[tokio::test]
async fn drain_bench_empties_an_outbox_into_jetstream() -> Result<()> {
    let nats = NatsServer::start()?;
    let dir = tempfile::tempdir()?;
    let stdout = bench(
        &["drain", "--nats", &nats.url(), "--dir", dir.path().to_str().unwrap_or_default(), "--records", "500"],
        &["| records |"],
    )?;
    assert_eq!(table_row(&stdout, "records")[0], "500");
    Ok(())
}

#[test]
fn footprint_bench_starts_the_gateway_with_precompiled_functions() -> Result<()> {
    let dir = functions_dir();
    let weir = weir_bin();
    let stdout = bench(
        &[
            "footprint",
            "--functions-dir",
            dir.to_str().unwrap_or_default(),
            "--functions",
            "2",
            "--weir",
            weir.to_str().unwrap_or_default(),
        ],
        &["| functions |", "RSS per extra function", "binary:"],
    )?;
    assert_eq!(table_row(&stdout, "functions")[0], "2");
    Ok(())
}

#[test]
fn mqtt_ingest_bench_commits_every_qos_1_reading_through_a_real_mosquitto() -> Result<()> {
    let weir = weir_bin();
    let stdout = bench(
        &["mqtt-ingest", "--readings", "2000", "--sensors", "10", "--weir", weir.to_str().unwrap_or_default()],
        &["| QoS |", "CPU µs/reading"],
    )?;
    let qos_1 = stdout.lines().find(|l| l.starts_with("| 1 |")).context("a QoS 1 row")?;
    let columns: Vec<&str> = qos_1.trim_matches('|').split('|').map(str::trim).collect();
    assert_eq!((columns[1], columns[2]), ("2000", "2000"), "published and committed, each once: {qos_1}");
    Ok(())
}

#[test]
fn commit_and_window_benches_run() -> Result<()> {
    let dir = tempfile::tempdir()?;
    bench(&["commit", "--dir", dir.path().to_str().unwrap_or_default(), "--seconds", "1"], &["| durability |"])?;
    bench(&["window", "--readings", "20000", "--series", "10"], &["| window |", "| sent as |"])?;
    Ok(())
}
