//! The command line: config refusals, the built-in demo, signals while starting, the dead-letter
//! viewer.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Result;
use weir_e2e::*;

const BAD_CONFIG: &str = r#"[gateway]
id = "gw-1"
data_dir = "/tmp/weir-never-used"

[brokers.plant]
url = "mqtt://127.0.0.1:1883"

[pipelines.boiler.source.mqtt]
broker = "plant"
topics = ["plant/+/temp"]
qos = 1

[pipelines.boiler.decode.json]
value = "/value"

[pipelines.boiler.sink.jetstream]
broker = "plant"
subject = "central.boiler"
"#;

#[test]
fn check_refuses_a_bad_config_with_file_line_column_and_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, BAD_CONFIG)?;
    let output = weir(&["check", "--config", path.to_str().expect("UTF-8 path")])?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr)?;
    let expected = format!(
        "error: {}:17:10: field `pipelines.boiler.sink.jetstream.broker`: broker \"plant\" speaks mqtt, but this needs a nats broker\n   |\n17 | broker = \"plant\"\n   |          ^^^^^^^\n",
        path.display()
    );
    assert_eq!(stderr, expected);

    // `run` refuses the same way, before touching the data directory.
    let output = weir(&["run", "--config", path.to_str().expect("UTF-8 path")])?;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8(output.stderr)?.contains(":17:10: field `pipelines.boiler.sink.jetstream.broker`"));
    assert!(!std::path::Path::new("/tmp/weir-never-used").exists());
    Ok(())
}

/// `BAD_CONFIG` with its sink on a NATS broker: valid.
fn good_config() -> String {
    BAD_CONFIG
        .replace("[brokers.plant]", "[brokers.central]\nurl = \"nats://127.0.0.1:4222\"\n\n[brokers.plant]")
        .replace("broker = \"plant\"\nsubject", "broker = \"central\"\nsubject")
}

#[test]
fn check_accepts_a_good_config_and_summarises_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, good_config())?;
    let output = weir(&["check", "--config", path.to_str().expect("UTF-8 path")])?;
    let stdout = String::from_utf8(output.stdout)?;
    assert!(output.status.success(), "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(": ok — gateway gw-1, 1 pipeline(s), 0 function(s)"), "{stdout}");
    assert!(stdout.contains("boiler: [] → jetstream"), "{stdout}");
    Ok(())
}

#[test]
fn check_refuses_a_duration_that_would_overflow_with_file_line_and_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("weir.toml");
    // 500 billion years fits a `Duration` but not a deadline: accepted, it panicked the gateway
    // at its first message.
    std::fs::write(&path, good_config() + "\n[pipelines.boiler.batch]\nlinger = \"500000000000years\"\n")?;
    let output = weir(&["check", "--config", path.to_str().expect("UTF-8 path")])?;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8(output.stderr)?;
    let expected = format!(
        "error: {}:24:10: field `pipelines.boiler.batch.linger`: duration \"500000000000years\" is out of range: use 0s to 1h\n   |\n24 | linger = \"500000000000years\"\n   |          ^^^^^^^^^^^^^^^^^^^\n",
        path.display()
    );
    assert_eq!(stderr, expected);
    Ok(())
}

#[test]
fn the_built_in_configuration_runs_without_any_broker_and_stops_cleanly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let stdout_path = dir.path().join("stdout");
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(weir_bin())
        .args(["run", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--functions-dir")
        .arg(functions_dir())
        .stdout(std::fs::File::create(&stdout_path)?)
        .stderr(std::fs::File::create(&stderr_path)?)
        .stdin(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    let seen = |text: &str| std::fs::read_to_string(&stdout_path).unwrap_or_default().contains(text);
    while !(seen("vibration #2:") && seen("environment #2:")) {
        assert!(started.elapsed() < PATIENCE, "no records printed:\n{}", std::fs::read_to_string(&stderr_path)?);
        assert!(child.try_wait()?.is_none(), "weir exited:\n{}", std::fs::read_to_string(&stderr_path)?);
        std::thread::sleep(Duration::from_millis(100));
    }
    let stdout = std::fs::read_to_string(&stdout_path)?;
    assert!(stdout.contains("plant1/press/0/vibration/avg"), "the moving average runs:\n{stdout}");
    assert!(stdout.contains("plant1/hall/1/humidity"), "SenML decodes:\n{stdout}");
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    let status = child.wait()?;
    assert!(status.success(), "{status}: {}", std::fs::read_to_string(&stderr_path)?);
    assert!(std::fs::read_to_string(&stderr_path)?.contains("stopped"));
    Ok(())
}

/// The signals process `pid` catches (bit n - 1 for signal n), from `/proc/<pid>/status`.
fn caught_signals(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mask = status.lines().find_map(|line| line.strip_prefix("SigCgt:"));
    mask.and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok()).unwrap_or(0)
}

#[tokio::test]
async fn sighup_while_starting_neither_kills_the_gateway_nor_is_lost() -> Result<()> {
    const SIGTERM: u64 = 1 << (15 - 1);
    let mut gateway = Weir::start(
        r#"
[gateway]
id = "gw"
data_dir = "{data_dir}"
functions_dir = "{functions_dir}"

[functions.threshold-alert]
component = "weir_fn_threshold_alert.wasm"

[pipelines.sim]
decode = "senml_json"

[pipelines.sim.source.simulated]
payload = "senml_json"
devices = 1
interval = "1s"
topic_prefix = "sim"

[[pipelines.sim.operators]]
function = "threshold-alert"
params = { above = 85.0 }

[pipelines.sim.sink.console]
"#,
    )?;
    // As soon as weir handles a signal of its own — milliseconds after the start, long before
    // its functions are compiled and its pipelines run — a SIGHUP (`systemctl reload`) must not
    // kill it.
    let started = Instant::now();
    while caught_signals(gateway.pid()) & SIGTERM == 0 {
        assert!(started.elapsed() < PATIENCE, "weir never handled SIGTERM:\n{}", gateway.log());
        assert_eq!(gateway.exit_code()?, None, "weir exited while starting:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(1));
    }
    for _ in 0..5 {
        gateway.signal("HUP")?;
    }
    while !gateway.log().contains("pipeline running") {
        assert!(started.elapsed() < PATIENCE, "no pipeline started:\n{}", gateway.log());
        assert_eq!(gateway.exit_code()?, None, "a SIGHUP while starting killed weir:\n{}", gateway.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // The SIGHUPs were kept and handled, as one, once the functions were loaded.
    gateway.wait_for_log("SIGHUP: reading the function components again", 1).await?;
    assert_eq!(gateway.exit_code()?, None);
    assert_eq!(gateway.stop()?.0, 0);
    Ok(())
}

#[tokio::test]
async fn dead_letters_refuses_the_data_dir_of_a_running_gateway() -> Result<()> {
    let gateway = Weir::start(
        r#"
[gateway]
id = "gw"
data_dir = "{data_dir}"

[pipelines.sim]
decode = "senml_json"

[pipelines.sim.source.simulated]
payload = "senml_json"
devices = 1
interval = "1s"
topic_prefix = "sim"

[pipelines.sim.sink.console]
"#,
    )?;
    gateway.wait_for_log("pipeline running", 1).await?;
    let output = weir(&["dead-letters", "--data-dir", gateway.data_dir().to_str().expect("UTF-8 path")])?;
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr)?;
    assert!(stderr.contains("is in use by another weir process"), "{stderr}");
    assert_eq!(gateway.stop()?.0, 0);
    Ok(())
}
