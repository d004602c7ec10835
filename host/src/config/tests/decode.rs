//! `decode = "<kind>"` or `[pipelines.<name>.decode.<kind>]`: a decoder function's use name.

use super::*;

#[test]
fn refuses_a_decoder_function_id_too_long_to_name_its_use() {
    let functions = functions_dir();
    // `decoder-<id>` is the use's name, and names have at most 64 characters.
    let longest = "f".repeat(Name::MAX_LEN - "decoder-".len());
    let config = parse_with(&VALID.replace("frame-decoder", &longest), functions.path()).expect("valid");
    let press = config.pipelines.iter().find(|p| p.name.as_str() == "press").expect("press pipeline");
    assert!(matches!(&press.decode, DecodeConfig::Function(used) if used.function.as_str() == longest));

    let too_long = format!("{longest}f");
    insta::assert_snapshot!(invalid(&VALID.replace("frame-decoder", &too_long)));
}
