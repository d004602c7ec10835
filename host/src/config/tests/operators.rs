//! `[[pipelines.<name>.operators]]`: one name per use.

use super::*;

#[test]
fn refuses_a_function_used_twice_without_names() {
    let text = valid_but("function = \"unit-convert\"", "function = \"threshold-alert\"");
    insta::assert_snapshot!(invalid(&text));
}
