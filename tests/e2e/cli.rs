//! The command line: config refusals, the built-in demo, signals while starting, the dead-letter
//! viewer, inspecting what a crash left, printing into a pipe that closes early, and the logs
//! (no colour codes off a terminal; `--log-format json`).

use std::io::BufRead;
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

/// A gateway of one simulated pipeline whose operators are `operators` (TOML), using the
/// functions `functions` (TOML), its state in `data_dir`.
fn config_with(data_dir: &str, functions: &str, operators: &str) -> String {
    format!(
        r#"[gateway]
id = "gw"
data_dir = "{data_dir}"
functions_dir = "{}"
{functions}
[pipelines.sim]
decode = "senml_json"

[pipelines.sim.source.simulated]
payload = "senml_json"
devices = 1
interval = "1s"
topic_prefix = "sim"
{operators}
[pipelines.sim.sink.console]
"#,
        functions_dir().display()
    )
}

/// `weir check` and `weir run` of the file at `path` both refuse it (status 2) and print every
/// one of `expected`; `check` creates no data directory, `run` starts no pipeline and creates no
/// database. Returns check's stderr.
fn check_and_run_refuse(path: &std::path::Path, data_dir: &std::path::Path, expected: &[String]) -> Result<String> {
    let path = path.to_str().expect("UTF-8 path");
    let existed = data_dir.exists();
    let output = weir(&["check", "--config", path])?;
    let stderr = String::from_utf8(output.stderr)?;
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    for wanted in expected {
        assert!(stderr.contains(wanted.as_str()), "check does not say {wanted:?}:\n{stderr}");
    }
    assert_eq!(data_dir.exists(), existed, "check created the data directory");
    let output = Command::new(weir_bin()).args(["run", "--config", path]).env("RUST_LOG", "info").output()?;
    let run_stderr = String::from_utf8(output.stderr)?;
    assert_eq!(output.status.code(), Some(2), "{run_stderr}");
    for wanted in expected {
        assert!(run_stderr.contains(wanted.as_str()), "run does not say {wanted:?}:\n{run_stderr}");
    }
    assert!(!run_stderr.contains("pipeline running"), "{run_stderr}");
    assert!(!data_dir.join("weir.redb").exists(), "run created the database");
    Ok(stderr)
}

#[test]
fn check_and_run_refuse_components_that_cannot_run_with_file_line_and_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (text, empty) = (dir.path().join("text.wasm"), dir.path().join("empty.wasm"));
    std::fs::write(&text, "this is not WebAssembly\n")?;
    std::fs::write(&empty, "")?;
    let data_dir = dir.path().join("data");
    let functions = format!(
        r#"
[functions.text]
component = "{}"

[functions.empty]
component = "{}"

[functions.frame-decoder]
component = "weir_fn_frame_decoder.wasm"

[functions.threshold-alert]
component = "weir_fn_threshold_alert.wasm"
"#,
        text.display(),
        empty.display()
    );
    let operators = r#"
[[pipelines.sim.operators]]
function = "text"

[[pipelines.sim.operators]]
function = "empty"

[[pipelines.sim.operators]]
function = "frame-decoder"

[[pipelines.sim.operators]]
function = "threshold-alert"
params = { hysteresis = 2.0 }
"#;
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config_with(data_dir.to_str().expect("UTF-8 path"), &functions, operators))?;
    let file = path.display();
    let stderr = check_and_run_refuse(
        &path,
        &data_dir,
        &[
            format!(
                "error: {file}:7:13: field `functions.text.component`: {} is not a loadable WebAssembly component: not a WebAssembly binary",
                text.display()
            ),
            format!(
                "error: {file}:10:13: field `functions.empty.component`: {} is not a loadable WebAssembly component: the file is empty",
                empty.display()
            ),
            format!(
                "error: {file}:34:12: field `pipelines.sim.operators[2].function`: function \"frame-decoder\" is a decoder (its component implements weir:stream/decoder), but an operator is needed here"
            ),
            format!("error: {file}:38:10: field `pipelines.sim.operators[3].params`: threshold-alert@"),
            "does not start with these params: init refused: invalid params: set `above`, `below` or both".to_owned(),
        ],
    )?;
    // All of them at once, and the quoted line shows what to fix.
    assert_eq!(stderr.matches("error: ").count(), 4, "{stderr}");
    assert!(stderr.contains("38 | params = { hysteresis = 2.0 }"), "{stderr}");
    Ok(())
}

#[test]
fn check_and_run_refuse_a_data_dir_that_cannot_hold_state_naming_the_field() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file_in_the_way = dir.path().join("file");
    std::fs::write(&file_in_the_way, "x")?;
    let path = dir.path().join("weir.toml");
    let file = path.display();
    let cases = [
        (file_in_the_way.clone(), format!("{} is not a directory", file_in_the_way.display())),
        (
            file_in_the_way.join("data"),
            format!("{0}/data cannot be created: {0} is not a directory", file_in_the_way.display()),
        ),
        // Nobody, root included, creates files in /proc.
        (std::path::PathBuf::from("/proc"), "cannot write in /proc:".to_owned()),
    ];
    for (data_dir, message) in cases {
        std::fs::write(&path, config_with(data_dir.to_str().expect("UTF-8 path"), "", ""))?;
        check_and_run_refuse(&path, &data_dir, &[format!("error: {file}:3:12: field `gateway.data_dir`: {message}")])?;
        assert_eq!(std::fs::read_to_string(&file_in_the_way)?, "x");
    }

    // Given on the command line, the data directory is named as the option.
    std::fs::write(&path, config_with(dir.path().join("data").to_str().expect("UTF-8 path"), "", ""))?;
    let output = weir(&["check", "--config", path.to_str().expect("UTF-8 path"), "--data-dir", "/proc"])?;
    let stderr = String::from_utf8(output.stderr)?;
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.starts_with(&format!("error: {file}: field `--data-dir`: cannot write in /proc:")), "{stderr}");
    Ok(())
}

#[test]
fn check_and_run_refuse_memory_limits_the_address_space_cannot_hold_naming_them() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let functions = "\n[functions.threshold-alert]\ncomponent = \"weir_fn_threshold_alert.wasm\"\nmemory = \"4GiB\"\n";
    let operators = "\n[[pipelines.sim.operators]]\nfunction = \"threshold-alert\"\nparams = { above = 80.0 }\n";
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config_with(data_dir.to_str().expect("UTF-8 path"), functions, operators))?;
    // One use: 6 instances, 12 memories of up to 4 GiB each; 8 GB holds too few.
    for command in ["check", "run"] {
        let output = Command::new("sh")
            .args(["-c", "ulimit -v 8000000 && exec \"$0\" \"$@\""])
            .arg(weir_bin())
            .args([command, "--config", path.to_str().expect("UTF-8 path")])
            .env("RUST_LOG", "info")
            .output()?;
        let stderr = String::from_utf8(output.stderr)?;
        assert_eq!(output.status.code(), Some(2), "{command}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "error: {}:8:10: field `functions.threshold-alert.memory`: the WebAssembly engine cannot give instances 4GiB of memory on this machine",
                path.display()
            )),
            "{command}: {stderr}"
        );
        assert!(!stderr.contains("pipeline running"), "{stderr}");
    }
    assert!(!data_dir.join("weir.redb").exists(), "run created the database");
    Ok(())
}

#[test]
fn check_refuses_uses_that_not_even_the_smallest_memories_fit_naming_the_pipelines() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data_dir = dir.path().join("data");
    let functions = "\n[functions.threshold-alert]\ncomponent = \"weir_fn_threshold_alert.wasm\"\n";
    let operators: String = (0..60)
        .map(|n| {
            format!(
                "\n[[pipelines.sim.operators]]\nname = \"alert-{n}\"\nfunction = \"threshold-alert\"\nparams = {{ above = 80.0 }}\n"
            )
        })
        .collect();
    let path = dir.path().join("weir.toml");
    std::fs::write(&path, config_with(data_dir.to_str().expect("UTF-8 path"), functions, &operators))?;
    // 60 uses: 124 instances, whose smallest pool (1 MiB memories, stacks, tables) needs more
    // than 400 MB; weir itself runs in far less.
    let output = Command::new("sh")
        .args(["-c", "ulimit -v 400000 && exec \"$0\" \"$@\""])
        .arg(weir_bin())
        .args(["check", "--config", path.to_str().expect("UTF-8 path")])
        .output()?;
    let stderr = String::from_utf8(output.stderr)?;
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let expected = format!(
        "error: {}: field `pipelines`: 60 use(s) of functions need room for 124 instances (every use twice, plus 4), and the WebAssembly engine cannot reserve it",
        path.display()
    );
    assert!(stderr.contains(&expected), "{stderr}");
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

/// Malformed messages published in [`crashed_gateway`], each a dead letter.
const MALFORMED: usize = 30;
/// Readings published in [`crashed_gateway`], each a record kept in the outbox.
const READINGS: u64 = 5;

/// A gateway that took `READINGS` readings into its outbox (the central broker is unreachable)
/// and `MALFORMED` undecodable 4 KiB payloads into its dead letters, then was killed with
/// SIGKILL. Returns it stopped, with its data directory as the crash left it.
async fn crashed_gateway() -> Result<Weir> {
    let mqtt = Mosquitto::start()?;
    let central = format!("nats://127.0.0.1:{}", free_port());
    let config = format!(
        "{header}{READINGS_PIPELINE}\n[pipelines.readings.sink.jetstream]\nbroker = \"central\"\nsubject = \"central.readings\"\n",
        header = gateway_with_brokers(&mqtt.url(), &central)
    );
    let mut weir = Weir::start(&config)?;
    weir.wait_for_log("subscribed", 1).await?;
    let plant = MqttClient::connect(&mqtt, "plant").await?;
    for i in 0..READINGS {
        plant.publish("plant/readings", format!(r#"{{"sensor": "tank", "ts": {i}, "value": 1.0}}"#)).await?;
    }
    for i in 0..MALFORMED {
        plant.publish("plant/readings", format!("{i} not json {}", "x".repeat(4096))).await?;
    }
    // The running gateway's snapshot (rewritten every 5 s) shows what was committed.
    let started = Instant::now();
    loop {
        let stats = weir.outbox_stats().ok();
        let records = stats.as_ref().and_then(|s| stream_stats(s, "readings")["records"].as_u64());
        let letters = stats.as_ref().and_then(|s| s["dead_letters_kept"].as_u64());
        if records == Some(READINGS) && letters == Some(MALFORMED as u64) {
            break;
        }
        anyhow::ensure!(started.elapsed() < PATIENCE, "never committed everything; log:\n{}", weir.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    weir.kill()?;
    Ok(weir)
}

#[tokio::test]
async fn outbox_stats_and_dead_letters_read_what_a_crash_left_without_changing_it() -> Result<()> {
    let gateway = crashed_gateway().await?;
    let data_dir = gateway.data_dir();
    let database = data_dir.join("weir.redb");
    let before = std::fs::read(&database)?;

    let stats = outbox_stats_at(&data_dir)?;
    let readings = stream_stats(&stats, "readings");
    assert_eq!(readings["records"], READINGS, "{stats:#}");
    assert_eq!(readings["last_seq"], READINGS, "{stats:#}");
    assert_eq!(stats["dead_letters_kept"], MALFORMED, "{stats:#}");
    let text = weir(&["outbox", "stats", "--data-dir", data_dir.to_str().expect("UTF-8 path")])?;
    assert!(text.status.success(), "{}", String::from_utf8_lossy(&text.stderr));
    assert!(String::from_utf8(text.stdout)?.contains("read through an in-memory repair"));

    let letters = dead_letters(&data_dir)?;
    assert_eq!(letters.len(), 20, "the newest 20 by default");
    assert!(letters.iter().all(|l| l["stage"] == "decode"), "{letters:#?}");
    assert!(
        letters[19]["payload_text"].as_str().is_some_and(|t| t.starts_with(&format!("{} not json", MALFORMED - 1)))
    );

    assert!(std::fs::read(&database)? == before, "inspecting changed the database file");
    Ok(())
}

#[tokio::test]
async fn dead_letters_into_a_pipe_closed_early_ends_quietly() -> Result<()> {
    let gateway = crashed_gateway().await?;
    let data_dir = gateway.data_dir();
    // About 250 KiB of JSON: far more than a pipe holds, so weir is still writing when the
    // reader goes away.
    let mut child = Command::new(weir_bin())
        .args(["dead-letters", "--json", "--limit", "1000", "--data-dir"])
        .arg(&data_dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    stdout.read_line(&mut first)?;
    assert!(first.contains(r#""stage":"decode""#), "{first}");
    drop(stdout);
    let output = child.wait_with_output()?;
    let stderr = String::from_utf8(output.stderr)?;
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(output.status.code(), Some(0), "a closed pipe ends the listing quietly: {stderr}");
    Ok(())
}

/// Runs `weir <global_args> run` on a gateway of one simulated pipeline, its stderr into a file
/// (as under systemd with a log file, or a collector reading a pipe), until it logs that the
/// pipeline runs; stops it with SIGTERM and returns everything it logged.
fn log_of_a_short_run(global_args: &[&str]) -> Result<String> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("weir.toml");
    std::fs::write(&config, config_with(dir.path().join("data").to_str().expect("UTF-8 path"), "", ""))?;
    let stderr_path = dir.path().join("stderr");
    let mut child = Command::new(weir_bin())
        .args(global_args)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path)?)
        .stdin(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    let log = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    while !log().contains("pipeline running") {
        assert!(started.elapsed() < PATIENCE, "no pipeline started:\n{}", log());
        assert!(child.try_wait()?.is_none(), "weir exited:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    let status = child.wait()?;
    assert!(status.success(), "{status}: {}", log());
    Ok(log())
}

#[test]
fn logs_into_a_file_carry_no_colour_codes() -> Result<()> {
    let log = log_of_a_short_run(&[])?;
    assert!(log.contains("pipeline running") && log.contains("stopped"), "{log}");
    assert!(!log.contains("\x1b["), "escape codes in a log that is no terminal:\n{log:?}");
    Ok(())
}

#[test]
fn log_format_json_writes_one_object_per_line_with_level_message_fields_and_target() -> Result<()> {
    let log = log_of_a_short_run(&["--log-format", "json"])?;
    assert!(!log.contains("\x1b["), "{log:?}");
    let events = log
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).map_err(|e| anyhow::anyhow!("{e}: {line:?}")))
        .collect::<Result<Vec<_>>>()?;
    for event in &events {
        assert!(event["timestamp"].is_string(), "{event}");
        assert!(["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&event["level"].as_str().unwrap_or_default()));
        assert!(event["fields"]["message"].is_string(), "{event}");
        assert!(event["target"].as_str().is_some_and(|t| !t.is_empty()), "{event}");
    }
    let running = events
        .iter()
        .find(|e| e["fields"]["message"] == "pipeline running")
        .unwrap_or_else(|| panic!("no `pipeline running` event:\n{log}"));
    assert_eq!(running["level"], "INFO", "{running}");
    assert_eq!(running["fields"]["stage"], "pipeline", "{running}");
    assert_eq!(running["fields"]["pipeline"], "sim", "{running}");
    assert!(events.iter().any(|e| e["fields"]["message"] == "stopped"), "{log}");
    Ok(())
}
