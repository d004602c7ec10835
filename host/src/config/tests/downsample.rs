//! `[pipelines.<name>.downsample]`: each method with its settings, the readings it needs.

use super::*;

#[test]
fn refuses_downsampling_that_cannot_work() {
    insta::assert_snapshot!(invalid(&valid_but("max_error = 0.05", "absolute = 0.05")));
    insta::assert_snapshot!(invalid(&valid_but("max_error = 0.05", "max_error = -1.0")));
    let with_window = VALID.replacen(
        "[pipelines.press.downsample]",
        "[pipelines.press.window]\nkind = \"tumbling\"\nwidth = \"1m\"\n\n[pipelines.press.downsample]",
        1,
    );
    insta::assert_snapshot!(invalid(&with_window));
    insta::assert_snapshot!(invalid(&valid_but(
        "method = \"swinging_door\"\nmax_error = 0.05",
        "method = \"lttb\"\npoints = 2\nwindow = \"1m\""
    )));
    insta::assert_snapshot!(invalid(&valid_but(
        "method = \"swinging_door\"\nmax_error = 0.05",
        "method = \"lttb\"\npoints = 20"
    )));
}

#[test]
fn lttb_downsamples_per_window() {
    let functions = functions_dir();
    let text =
        valid_but("method = \"swinging_door\"\nmax_error = 0.05", "method = \"lttb\"\npoints = 20\nwindow = \"1m\"");
    let config = parse_with(&text, functions.path()).expect("valid");
    let press = config.pipelines.iter().find(|p| p.name.as_str() == "press").expect("press pipeline");
    let method = press.downsample.expect("downsampling").method;
    assert_eq!(method, DownsampleMethod::Lttb { points: 20, window: 60_000_000_000 });
}
