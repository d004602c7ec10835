//! `decode = "<kind>"` or `[pipelines.<name>.decode.<kind>]`: a field mapping that says where the
//! reading is, or a decoder function that is defined and whose use can be named `decoder-<id>`.

use std::collections::BTreeMap;
use std::ops::Range;

use toml::Spanned;

use super::Validator;
use crate::config::raw::{RawDecode, RawFieldMapping};
use crate::config::{DecodeConfig, FieldMapping, FunctionConfig, FunctionId, Name, ValueFields};

/// What the name of a decoder function's use starts with; its function id follows.
const DECODER_USE: &str = "decoder-";

impl Validator<'_> {
    /// The decoder of `pipeline`, or `None` when it is wrong; `field` is
    /// `pipelines.<name>.decode`.
    pub(super) fn decode(
        &mut self,
        pipeline: &Name,
        raw: Spanned<RawDecode>,
        field: &str,
        functions: &BTreeMap<FunctionId, FunctionConfig>,
    ) -> Option<DecodeConfig> {
        let span = raw.span();
        match raw.into_inner() {
            RawDecode::Json(mapping) => {
                self.field_mapping(mapping, span, &format!("{field}.json")).map(DecodeConfig::Json)
            }
            RawDecode::Cbor(mapping) => {
                self.field_mapping(mapping, span, &format!("{field}.cbor")).map(DecodeConfig::Cbor)
            }
            RawDecode::SenmlJson => Some(DecodeConfig::SenmlJson),
            RawDecode::SenmlCbor => Some(DecodeConfig::SenmlCbor),
            RawDecode::WeirRecord => Some(DecodeConfig::WeirRecord),
            RawDecode::Raw(number) => Some(DecodeConfig::RawNumber {
                encoding: number.encoding,
                series_prefix: number.series_prefix,
                unit: number.unit,
            }),
            RawDecode::Function(used) => {
                let known = self.function_ref(&used.function, &format!("{field}.function.function"), functions);
                let id = used.function.get_ref();
                let Ok(use_name) = Name::try_from(format!("{DECODER_USE}{id}")) else {
                    let message = format!(
                        "function id {:?} is too long for a decoder: its use is named `{DECODER_USE}<id>`, at most {} \
                         characters, so a decoder's id has at most {}",
                        id.as_str(),
                        Name::MAX_LEN,
                        Name::MAX_LEN - DECODER_USE.len()
                    );
                    self.problem(Some(used.function.span()), format!("{field}.function.function"), message);
                    return None;
                };
                known.then(|| {
                    let field = format!("{field}.function");
                    DecodeConfig::Function(self.function_use(
                        pipeline,
                        use_name,
                        field,
                        &used.function,
                        used.params.as_ref(),
                    ))
                })
            }
        }
    }

    /// A JSON or CBOR field mapping with exactly one of `value` and `values`; `span` is the
    /// decode table's.
    fn field_mapping(&mut self, raw: RawFieldMapping, span: Range<usize>, field: &str) -> Option<FieldMapping> {
        let values = match (raw.value, raw.values) {
            (Some(one), None) => ValueFields::One(one),
            (None, Some(many)) if !many.is_empty() => {
                ValueFields::Many(many.into_iter().map(|(name, pointer)| (name.as_str().to_owned(), pointer)).collect())
            }
            (Some(_), Some(_)) => {
                self.problem(Some(span), field, "set either `value` or `values`, not both");
                return None;
            }
            (None, _) => {
                self.problem(
                    Some(span),
                    field,
                    "say where the reading is: `value = \"/field\"` or `values = { name = \"/field\", ... }`",
                );
                return None;
            }
        };
        Some(FieldMapping {
            series: raw.series,
            series_prefix: raw.series_prefix,
            time: raw.time,
            time_unit: raw.time_unit,
            values,
            unit: raw.unit,
            unit_field: raw.unit_field,
        })
    }
}
