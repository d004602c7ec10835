//! Configuration: what is accepted, and how refusals read (snapshots under `snapshots/`). One
//! module per table, like `validate/`; the configuration as a whole, its syntax and the bounds of
//! its values here.

mod brokers;
mod decode;
mod downsample;
mod functions;
mod operators;
mod outbox;
mod sensors;
mod source;
mod window;

use std::path::Path;
use std::time::Duration;

use weir_window::event_time::{WindowKind, WindowSpec};

use super::error::ConfigFile;
use super::*;

/// A functions directory holding (empty) files for every component the configs below name.
fn functions_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["threshold.wasm", "convert.wasm", "frames.wasm"] {
        std::fs::write(dir.path().join(name), b"").expect("write placeholder");
    }
    dir
}

fn parse_with(text: &str, functions: &Path) -> Result<Config, ConfigError> {
    let overrides = Overrides { data_dir: None, functions_dir: Some(functions.to_owned()) };
    parse("weir.toml", text, Path::new("/etc/weir"), &overrides)
}

/// A valid configuration with two brokers, three functions and two pipelines (also a seed of the
/// configuration fuzzing, `crate::fuzz_tests`).
pub(crate) const VALID: &str = r#"
[gateway]
id = "plant1-gw07"
data_dir = "/var/lib/weir"

[brokers.plant]
url = "mqtt://10.0.0.5:1883"
keep_alive = "20s"

[brokers.central]
url = "nats://central.example:4222"
reconnect_max = "1m"

[functions.threshold-alert]
component = "threshold.wasm"
memory = "8MiB"
timeout = "50ms"

[functions.unit-convert]
component = "convert.wasm"

[functions.frame-decoder]
component = "frames.wasm"

[pipelines.boiler.source.mqtt]
broker = "plant"
topics = ["plant1/+/temp", "plant1/boiler/#"]
qos = 1

[pipelines.boiler.decode.json]
series = "/sensor"
time = "/ts"
value = "/value"

[[pipelines.boiler.operators]]
function = "threshold-alert"
params = { above = 80.0, hysteresis = 2.0 }

[[pipelines.boiler.operators]]
function = "unit-convert"
params = { conversion = "celsius_to_fahrenheit" }

[pipelines.boiler.batch]
max_messages = 500
linger = "250ms"

[pipelines.boiler.sink.jetstream]
broker = "central"
subject = "weir.plant1.boiler"

[pipelines.boiler.window]
kind = "sliding"
width = "1m"
slide = "15s"
allowed_lateness = "10s"

[pipelines.boiler.outbox]
max_bytes = "16MiB"
when_full = "drop_oldest"
drain = "live_first"
backlog_rate = "32KiB/s"

[pipelines.press.source.jetstream]
broker = "central"
stream = "FRAMES"
consumer = "gw07"
subjects = ["frames.>"]

[pipelines.press.decode.function]
function = "frame-decoder"
params = { series_prefix = "press" }

[pipelines.press.downsample]
method = "swinging_door"
max_error = 0.05

[pipelines.press.sink.mqtt]
broker = "plant"
topic = "weir/press"
"#;

fn invalid(text: &str) -> String {
    let functions = functions_dir();
    let error = parse_with(text, functions.path()).expect_err("the config is invalid");
    let rendered = error.to_string();
    rendered.replace(functions.path().to_str().expect("UTF-8 temp path"), "[FUNCTIONS]")
}

/// `VALID` with `from` replaced by `to` (which must occur).
fn valid_but(from: &str, to: &str) -> String {
    assert!(VALID.contains(from), "{from:?} is not in the valid config");
    VALID.replacen(from, to, 1)
}

#[test]
fn a_full_configuration_is_accepted_and_resolved() {
    let functions = functions_dir();
    let config = parse_with(VALID, functions.path()).expect("valid");
    assert_eq!(config.gateway.id.as_str(), "plant1-gw07");
    assert_eq!(config.functions.len(), 3);
    let threshold = &config.functions[&"threshold-alert".parse().expect("valid id")];
    assert_eq!(
        threshold.limits,
        FunctionLimits { memory_bytes: 8 << 20, timeout: Duration::from_millis(50), ..FunctionLimits::DEFAULT }
    );
    assert_eq!(threshold.component, functions.path().join("threshold.wasm"));

    let boiler = config.pipelines.iter().find(|p| p.name.as_str() == "boiler").expect("boiler pipeline");
    let SourceConfig::Mqtt { broker, topics, qos, client_id, max_inflight, .. } = &boiler.source else {
        panic!("boiler reads MQTT")
    };
    assert_eq!((broker.url.port, broker.keep_alive), (1883, Duration::from_secs(20)));
    assert_eq!(topics.len(), 2);
    assert_eq!((*qos, client_id.as_str(), *max_inflight), (Qos::AtLeastOnce, "weir-plant1-gw07-boiler", 20));
    assert_eq!(boiler.operators[0].params_json, r#"{"above":80.0,"hysteresis":2.0}"#);
    assert_eq!(boiler.operators[1].name.as_str(), "unit-convert");
    assert_eq!(boiler.batch.max_messages, 500);
    assert!(matches!(&boiler.sink, SinkConfig::JetStream { subject, .. } if subject.as_str() == "weir.plant1.boiler"));

    assert_eq!(
        boiler.outbox,
        OutboxConfig {
            max_bytes: 16 << 20,
            when_full: WhenFull::DropOldest,
            drain: Drain::LiveFirst { backlog_bytes_per_second: 32 << 10 }
        }
    );

    let minute = 60_000_000_000;
    assert_eq!(
        boiler.window,
        Some(WindowConfig {
            spec: WindowSpec {
                kind: WindowKind::Sliding { width: minute, slide: minute / 4 },
                allowed_lateness: minute / 6,
                idle_timeout: minute + minute / 6,
                custom_aggregate: false,
            },
            keep_readings: false,
            aggregate: None,
        }),
        "idle timeout defaults to the width plus the lateness"
    );

    let press = config.pipelines.iter().find(|p| p.name.as_str() == "press").expect("press pipeline");
    assert_eq!(press.window, None);
    assert_eq!(
        press.downsample,
        Some(DownsampleConfig {
            method: DownsampleMethod::SwingingDoor { max_error: 0.05 },
            idle_timeout: 60_000_000_000
        })
    );
    assert_eq!(boiler.downsample, None);
    assert_eq!(
        press.outbox,
        OutboxConfig { max_bytes: 128 << 20, when_full: WhenFull::Reaggregate, drain: Drain::Fifo },
        "outbox defaults"
    );
    assert!(matches!(&press.decode, DecodeConfig::Function(used) if used.name.as_str() == "decoder-frame-decoder"));
    assert!(
        matches!(&press.sink, SinkConfig::Mqtt { client_id, .. } if client_id.as_str() == "weir-plant1-gw07-press-out")
    );
}

#[test]
fn functions_run_compiled_where_a_compiler_exists_unless_told_to_interpret() {
    let functions = functions_dir();
    let default = parse_with(VALID, functions.path()).expect("valid");
    assert_eq!(default.gateway.wasm_execution, WasmExecution::default_here());
    assert_eq!(WasmExecution::default_here() == WasmExecution::Compiled, WasmExecution::COMPILER_HERE);
    let text =
        valid_but("data_dir = \"/var/lib/weir\"\n", "data_dir = \"/var/lib/weir\"\nwasm_execution = \"interpreted\"\n");
    let interpreted = parse_with(&text, functions.path()).expect("valid");
    assert_eq!(interpreted.gateway.wasm_execution, WasmExecution::Interpreted);
    let compiled =
        valid_but("data_dir = \"/var/lib/weir\"\n", "data_dir = \"/var/lib/weir\"\nwasm_execution = \"compiled\"\n");
    match (parse_with(&compiled, functions.path()), WasmExecution::COMPILER_HERE) {
        (Ok(config), true) => assert_eq!(config.gateway.wasm_execution, WasmExecution::Compiled),
        (Err(refusal), false) => {
            assert!(refusal.to_string().contains("field `gateway.wasm_execution`: there is no WebAssembly compiler"));
        }
        (result, compiler_here) => panic!("a compiler here: {compiler_here}, yet {result:?}"),
    }
}

#[test]
fn the_built_in_default_is_valid() {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["threshold_alert", "unit_convert", "moving_average", "frame_decoder"] {
        std::fs::write(dir.path().join(format!("weir_fn_{name}.wasm")), b"").expect("write placeholder");
    }
    let overrides = Overrides { data_dir: None, functions_dir: Some(dir.path().to_owned()) };
    let config = parse("<built-in default>", DEFAULT_CONFIG, Path::new("."), &overrides).expect("valid");
    assert_eq!(config.pipelines.len(), 4);
    assert_eq!(config.functions.len(), 4);
    let climate = config.pipelines.iter().find(|p| p.name.as_str() == "climate").expect("the sensors pipeline");
    let SourceConfig::Sensors(sensors) = &climate.source else { panic!("climate reads sensors") };
    assert!(matches!(sensors.buses[0].kind, BusKind::Simulated(BusProtocol::I2c)), "simulated: runs anywhere");
    let loopback: std::net::SocketAddr = "127.0.0.1:9464".parse().expect("an address");
    assert_eq!(config.http.map(|http| http.listen), Some(loopback), "the demo serves metrics on loopback only");
}

#[test]
fn the_http_listener_is_off_unless_configured_and_takes_an_ip_address() {
    let dir = functions_dir();
    assert_eq!(parse_with(VALID, dir.path()).expect("valid").http, None);
    let on = format!("{VALID}\n[http]\nlisten = \"0.0.0.0:9464\"\n");
    let listen = parse_with(&on, dir.path()).expect("valid").http.expect("configured").listen;
    assert_eq!(listen, "0.0.0.0:9464".parse().expect("an address"));
    let refused = invalid(&format!("{VALID}\n[http]\nlisten = \"gateway.local:9464\"\n"));
    assert!(refused.contains("http.listen") && refused.contains("invalid socket address"), "{refused}");
}

#[test]
fn readiness_has_defaults_and_refuses_a_share_above_the_whole_outbox() {
    let dir = functions_dir();
    let on = format!("{VALID}\n[http]\nlisten = \"127.0.0.1:0\"\n");
    let ready = parse_with(&on, dir.path()).expect("valid").http.expect("configured").ready;
    assert_eq!(ready.confirmed_within, Duration::from_secs(300));
    assert_eq!(ready.oldest_below, Duration::from_secs(900));
    assert_eq!(ready.outbox_percent, 80);
    let set = format!("{on}ready_confirmed_within = \"30s\"\nready_oldest_below = \"2h\"\nready_outbox_percent = 95\n");
    let ready = parse_with(&set, dir.path()).expect("valid").http.expect("configured").ready;
    assert_eq!((ready.confirmed_within.as_secs(), ready.oldest_below.as_secs(), ready.outbox_percent), (30, 7200, 95));
    let refused = invalid(&format!("{on}ready_outbox_percent = 120\n"));
    assert!(refused.contains("http.ready_outbox_percent"), "{refused}");
}

#[test]
fn refuses_toml_syntax_errors() {
    insta::assert_snapshot!(invalid(&valid_but("[pipelines.boiler.batch]", "[pipelines.boiler.batch")));
}

#[test]
fn refuses_unknown_fields_with_the_allowed_ones() {
    insta::assert_snapshot!(invalid(&valid_but("qos = 1", "qso = 1")));
}

#[test]
fn refuses_values_of_the_wrong_type() {
    insta::assert_snapshot!(invalid(&valid_but("max_messages = 500", "max_messages = \"many\"")));
}

#[test]
fn refuses_sizes_without_units_and_bad_durations() {
    insta::assert_snapshot!(invalid(&valid_but("memory = \"8MiB\"", "memory = \"8\"")));
    insta::assert_snapshot!(invalid(&valid_but("timeout = \"50ms\"", "timeout = \"50 parsecs\"")));
}

#[test]
fn credentials_are_hidden_wherever_a_refusal_quotes_a_url() {
    assert_eq!(
        redact_credentials("url = \"mqtt://u:p@h:1\" # nats://tok@x"),
        "url = \"mqtt://u:***@h:1\" # nats://***@x"
    );
    assert_eq!(redact_credentials("mqtt://host:1883 and no credentials"), "mqtt://host:1883 and no credentials");
    let file = ConfigFile::new("f", "url = \"mqtt://u:longpassword@h\"\n");
    let rendered = file.refusal(vec![file.problem(Some(6..31), "brokers.b.url", "refused")]).to_string();
    assert_eq!(
        rendered,
        "error: f:1:7: field `brokers.b.url`: refused\n  |\n1 | url = \"mqtt://u:***@h\"\n  |       ^^^^^^^^^^^^^^^^\n"
    );
}

/// A configuration with one simulated source, for its own bounds.
const SIMULATED: &str = r#"
[gateway]
id = "gw"
data_dir = "/tmp/x"

[pipelines.sim.source.simulated]
payload = "json"
devices = 8
interval = "250ms"
topic_prefix = "sim"

[pipelines.sim.decode.json]
value = "/value"

[pipelines.sim.sink.console]
"#;

#[test]
fn refuses_durations_sizes_and_counts_out_of_bounds() {
    let huge = "\"500000000000years\"";
    let cases = [
        // Each of these once panicked the running gateway (overflow, or an allocation abort).
        valid_but("linger = \"250ms\"", &format!("linger = {huge}")),
        valid_but("timeout = \"50ms\"", &format!("timeout = {huge}")),
        valid_but("timeout = \"50ms\"", &format!("timeout = \"50ms\"\nquarantine_for = {huge}")),
        SIMULATED.replace("devices = 8", "devices = 4000000000"),
        // Zero where zero means nothing.
        valid_but("timeout = \"50ms\"", "timeout = \"0s\""),
        valid_but("slide = \"15s\"", "slide = \"0s\""),
        SIMULATED.replace("interval = \"250ms\"", "interval = \"0s\""),
        valid_but("timeout = \"50ms\"", "timeout = \"50ms\"\nfuel = 0"),
        valid_but("timeout = \"50ms\"", "timeout = \"50ms\"\ninstances = 0"),
        valid_but("timeout = \"50ms\"", "timeout = \"50ms\"\nstate_quota = \"0B\""),
        valid_but("timeout = \"50ms\"", "timeout = \"50ms\"\nquarantine_after = 0"),
        valid_but("subject = \"weir.plant1.boiler\"", "subject = \"weir.plant1.boiler\"\nack_timeout = \"0s\""),
        // Beyond what a deployment needs, or what the protocol can carry.
        valid_but("memory = \"8MiB\"", "memory = \"64KiB\""),
        valid_but("memory = \"8MiB\"", "memory = \"8GiB\""),
        valid_but("keep_alive = \"20s\"", "keep_alive = \"500ms\""),
        valid_but("keep_alive = \"20s\"", "keep_alive = \"1day\""),
        valid_but("reconnect_max = \"1m\"", "reconnect_max = \"2h\""),
        valid_but("qos = 1", "qos = 1\nmax_inflight = 70000"),
        valid_but("max_messages = 500", "max_messages = 4000000000"),
        valid_but("width = \"1m\"", "width = \"1y\""),
        valid_but("max_bytes = \"16MiB\"", "max_bytes = \"16KiB\""),
        valid_but("max_bytes = \"16MiB\"", "max_bytes = \"2TiB\""),
        valid_but("backlog_rate = \"32KiB/s\"", "backlog_rate = \"2GiB/s\""),
        valid_but("method = \"swinging_door\"\nmax_error = 0.05", "method = \"lttb\"\npoints = 2\nwindow = \"1m\""),
    ];
    let refusals: Vec<String> = cases.iter().map(|text| invalid(text)).collect();
    insta::assert_snapshot!(refusals.join("\n"));
}

#[test]
fn accepts_the_bounds_themselves() {
    let functions = functions_dir();
    let text = valid_but("linger = \"250ms\"", "linger = \"1h\"")
        .replacen("timeout = \"50ms\"", "timeout = \"1m\"\nquarantine_for = \"24h\"\nmemory = \"4GiB\"", 1)
        .replacen("memory = \"8MiB\"\n", "", 1)
        .replacen("keep_alive = \"20s\"", "keep_alive = \"65535s\"", 1);
    let config = parse_with(&text, functions.path()).expect("the bounds are allowed");
    let threshold = &config.functions[&"threshold-alert".parse().expect("valid id")];
    assert_eq!((threshold.limits.timeout, threshold.limits.memory_bytes), (Duration::from_secs(60), 4 << 30));
    assert_eq!(threshold.quarantine.first, Duration::from_secs(24 * 3600));
    let simulated = SIMULATED.replace("devices = 8", "devices = 65535").replace("\"250ms\"", "\"1ms\"");
    let config = parse("weir.toml", &simulated, Path::new("/etc/weir"), &Overrides::default()).expect("valid");
    let SourceConfig::Simulated(sim) = &config.pipelines[0].source else { panic!("a simulated source") };
    assert_eq!((sim.devices, sim.interval), (65535, Duration::from_millis(1)));
}

#[test]
fn refuses_a_config_without_pipelines() {
    let text = "[gateway]\nid = \"gw\"\ndata_dir = \"/tmp/x\"\n";
    insta::assert_snapshot!(invalid(text));
}

#[test]
fn reports_unreadable_files_with_their_path() {
    let error = load(Path::new("/nonexistent/weir.toml"), &Overrides::default()).expect_err("no such file");
    assert!(error.to_string().starts_with("cannot read config file /nonexistent/weir.toml"), "{error}");
}

#[test]
fn problems_found_after_validation_point_at_the_field_they_are_about() {
    let functions = functions_dir();
    let with_aggregate = VALID.replacen(
        "allowed_lateness = \"10s\"\n",
        "allowed_lateness = \"10s\"\n\n[pipelines.boiler.window.aggregate]\nfunction = \"unit-convert\"\n",
        1,
    );
    let config = parse_with(&with_aggregate, functions.path()).expect("valid");
    let locations = &config.locations;
    let name = |n: &str| Name::try_from(n.to_owned()).expect("valid name");
    let id = |n: &str| n.parse::<FunctionId>().expect("valid id");
    let line_of =
        |needle: &str| with_aggregate[..with_aggregate.find(needle).expect("in the text")].matches('\n').count() + 1;
    let at = |p: Problem| (p.field, p.line);

    assert_eq!(at(locations.data_dir("x")), ("gateway.data_dir".to_owned(), line_of("data_dir = ")));
    assert_eq!(
        at(locations.component(&id("frame-decoder"), "x")),
        ("functions.frame-decoder.component".to_owned(), line_of("component = \"frames.wasm\""))
    );
    // Written memory is pointed at; the default at the function's component.
    assert_eq!(
        at(locations.memory(&id("threshold-alert"), "x")),
        ("functions.threshold-alert.memory".to_owned(), line_of("memory = "))
    );
    assert_eq!(
        at(locations.memory(&id("frame-decoder"), "x")),
        ("functions.frame-decoder.memory".to_owned(), line_of("component = \"frames.wasm\""))
    );
    assert_eq!(
        at(locations.use_params(&name("boiler"), &name("threshold-alert"), "x")),
        ("pipelines.boiler.operators[0].params".to_owned(), line_of("params = { above"))
    );
    assert_eq!(
        at(locations.use_params(&name("press"), &name("decoder-frame-decoder"), "x")),
        ("pipelines.press.decode.function.params".to_owned(), line_of("params = { series_prefix"))
    );
    assert_eq!(
        at(locations.use_function(&name("press"), &name("decoder-frame-decoder"), "x")),
        ("pipelines.press.decode.function.function".to_owned(), line_of("function = \"frame-decoder\""))
    );
    // Without params, a params problem points at the use's function.
    assert_eq!(
        at(locations.use_params(&name("boiler"), &name("window-aggregate"), "x")),
        ("pipelines.boiler.window.aggregate.params".to_owned(), line_of("aggregate]\nfunction") + 1)
    );

    let overridden = Overrides { data_dir: Some("/srv/weir".into()), functions_dir: Some(functions.path().to_owned()) };
    let config = parse("weir.toml", VALID, Path::new("/etc/weir"), &overridden).expect("valid");
    assert_eq!(at(config.locations.data_dir("x")), ("--data-dir".to_owned(), 0));
}
