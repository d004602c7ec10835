//! `[pipelines.<name>.window]`: the sizes each kind takes, a custom aggregate.

use super::*;

#[test]
fn refuses_window_settings_that_do_not_fit_the_kind() {
    insta::assert_snapshot!(invalid(&valid_but("kind = \"sliding\"", "kind = \"tumbling\"")));
    insta::assert_snapshot!(invalid(&valid_but("slide = \"15s\"", "slide = \"2m\"")));
    insta::assert_snapshot!(invalid(&valid_but(
        "kind = \"sliding\"\nwidth = \"1m\"",
        "kind = \"session\"\nwidth = \"1m\""
    )));
    insta::assert_snapshot!(invalid(&valid_but("kind = \"sliding\"", "kind = \"hopping\"")));
}

#[test]
fn a_window_may_name_a_custom_aggregate_function() {
    let functions = functions_dir();
    let with_aggregate = VALID.replacen(
        "allowed_lateness = \"10s\"\n",
        "allowed_lateness = \"10s\"\n\n[pipelines.boiler.window.aggregate]\nfunction = \"unit-convert\"\nparams = { edges = [1.5] }\n",
        1,
    );
    let config = parse_with(&with_aggregate, functions.path()).expect("valid");
    let boiler = config.pipelines.iter().find(|p| p.name.as_str() == "boiler").expect("boiler pipeline");
    let window = boiler.window.as_ref().expect("a window");
    assert!(window.spec.custom_aggregate);
    let aggregate = window.aggregate.as_ref().expect("an aggregate");
    assert_eq!(
        (aggregate.name.as_str(), aggregate.function.as_str(), aggregate.params_json.as_str()),
        ("window-aggregate", "unit-convert", r#"{"edges":[1.5]}"#)
    );
    let unknown =
        with_aggregate.replacen("aggregate]\nfunction = \"unit-convert\"", "aggregate]\nfunction = \"histogram\"", 1);
    insta::assert_snapshot!(invalid(&unknown));
}
