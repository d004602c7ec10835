//! `decode = "<kind>"` or `[pipelines.<name>.decode.<kind>]` as written: how payloads become
//! readings.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::RawFunctionUse;
use crate::config::types::{JsonPointer, Name};

/// How payloads become readings; exactly one kind.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RawDecode {
    /// `[pipelines.<name>.decode.json]` — JSON with a field mapping.
    Json(RawFieldMapping),
    /// `[pipelines.<name>.decode.cbor]` — CBOR with a field mapping.
    Cbor(RawFieldMapping),
    /// `decode = "senml_json"` — RFC 8428 JSON.
    SenmlJson,
    /// `decode = "senml_cbor"` — RFC 8428 CBOR.
    SenmlCbor,
    /// `decode = "weir_record"` — readings in weir's record format (what a `sensors` source
    /// writes, or another gateway forwards).
    WeirRecord,
    /// `[pipelines.<name>.decode.raw]` — the payload is one number.
    Raw(RawNumber),
    /// `[pipelines.<name>.decode.function]` — a WebAssembly decoder function.
    Function(RawFunctionUse),
}

/// Which fields of a JSON/CBOR object hold series, time and value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFieldMapping {
    /// `series = "/sensor"` — JSON pointer (or top-level field name) to the series name; default:
    /// the topic.
    pub series: Option<JsonPointer>,
    /// `series_prefix = "plant1/"` — prepended to every series name.
    #[serde(default)]
    pub series_prefix: String,
    /// `time = "/ts"` — timestamp field; default: receive time.
    pub time: Option<JsonPointer>,
    /// `time_unit = "ms"` — `s`, `ms`, `us`, `ns` for numbers; strings are RFC 3339 (default `ms`).
    #[serde(default)]
    pub time_unit: TimeUnit,
    /// `value = "/value"` — one reading per object.
    pub value: Option<JsonPointer>,
    /// `values = { temperature = "/t", humidity = "/h" }` — several readings per object, series
    /// `<series>/<key>`.
    pub values: Option<BTreeMap<Name, JsonPointer>>,
    /// `unit = "Cel"` — unit of every reading.
    pub unit: Option<String>,
    /// `unit_field = "/unit"` — field holding the unit (takes precedence over `unit`).
    pub unit_field: Option<JsonPointer>,
}

/// Unit of numeric timestamps.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeUnit {
    /// Seconds (fractions allowed).
    S,
    /// Milliseconds.
    #[default]
    Ms,
    /// Microseconds.
    Us,
    /// Nanoseconds.
    Ns,
}

/// `[pipelines.<name>.decode.raw]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNumber {
    /// `encoding = "text"` — `text` (ASCII number), `f32_be`, `f32_le`, `f64_be`, `f64_le`.
    #[serde(default)]
    pub encoding: NumberEncoding,
    /// `series_prefix = "plant1/"` — prepended to the topic to name the series.
    #[serde(default)]
    pub series_prefix: String,
    /// `unit = "Cel"`
    pub unit: Option<String>,
}

/// How a raw number is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NumberEncoding {
    /// ASCII decimal, surrounding whitespace ignored.
    #[default]
    Text,
    /// IEEE 754 binary32, big-endian.
    F32Be,
    /// IEEE 754 binary32, little-endian.
    F32Le,
    /// IEEE 754 binary64, big-endian.
    F64Be,
    /// IEEE 754 binary64, little-endian.
    F64Le,
}
