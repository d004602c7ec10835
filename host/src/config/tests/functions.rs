//! `[functions.<id>]` and the references to a function: unknown ids, missing components, limits
//! and quarantine.

use super::*;

#[test]
fn refuses_unknown_functions_and_missing_components_reporting_all_problems() {
    let text = valid_but("function = \"unit-convert\"", "function = \"unit-konvert\"")
        .replace("component = \"frames.wasm\"", "component = \"missing.wasm\"");
    insta::assert_snapshot!(invalid(&text));
}

#[test]
fn function_limits_and_quarantine_are_read_and_checked() {
    let functions = functions_dir();
    let governed = valid_but(
        "timeout = \"50ms\"",
        "timeout = \"50ms\"\nfuel = 1_000_000\ntable_elements = 500\ninstances = 4\nstate_writes = \"1MiB\"\nstate_quota = \"2MiB\"\nquarantine_after = 2\nquarantine_for = \"10s\"",
    );
    let governed = governed.replacen(
        "[[pipelines.boiler.operators]]",
        "[pipelines.boiler]\non_quarantine = \"skip\"\n\n[[pipelines.boiler.operators]]",
        1,
    );
    let config = parse_with(&governed, functions.path()).expect("valid");
    let threshold = &config.functions[&"threshold-alert".parse().expect("valid id")];
    assert_eq!(
        threshold.limits,
        FunctionLimits {
            memory_bytes: 8 << 20,
            timeout: Duration::from_millis(50),
            fuel: Some(1_000_000),
            table_elements: 500,
            instances: 4,
            state_write_bytes: 1 << 20,
            state_quota_bytes: 2 << 20,
        }
    );
    assert_eq!(threshold.quarantine, QuarantineConfig { after: 2, first: Duration::from_secs(10) });
    let boiler = config.pipelines.iter().find(|p| p.name.as_str() == "boiler").expect("boiler pipeline");
    assert_eq!(boiler.on_quarantine, OnQuarantine::Skip);
    let unit_convert = &config.functions[&"unit-convert".parse().expect("valid id")];
    assert_eq!((unit_convert.limits, unit_convert.quarantine), (FunctionLimits::DEFAULT, QuarantineConfig::DEFAULT));

    insta::assert_snapshot!(invalid(&valid_but(
        "[[pipelines.boiler.operators]]",
        "[pipelines.boiler]\non_quarantine = \"restart\"\n\n[[pipelines.boiler.operators]]"
    )));
}
