//! `decode = "<kind>"` or `[pipelines.<name>.decode.<kind>]`, validated: how a pipeline's
//! payloads become readings.

use crate::config::{FunctionUse, JsonPointer, NumberEncoding, TimeUnit};

/// A pipeline's decoder.
#[derive(Clone, Debug)]
pub enum DecodeConfig {
    /// `[pipelines.<name>.decode.json]` — JSON with a field mapping.
    Json(FieldMapping),
    /// `[pipelines.<name>.decode.cbor]` — CBOR with a field mapping.
    Cbor(FieldMapping),
    /// `decode = "senml_json"` — SenML JSON (RFC 8428).
    SenmlJson,
    /// `decode = "senml_cbor"` — SenML CBOR (RFC 8428).
    SenmlCbor,
    /// `decode = "weir_record"` — the readings of a weir record (docs/batch-format.md); the
    /// decoder of every `sensors` source.
    WeirRecord,
    /// `[pipelines.<name>.decode.raw]` — one raw number per message.
    RawNumber {
        /// `encoding = "text"` — how it is written.
        encoding: NumberEncoding,
        /// `series_prefix = "plant1/"` — prepended to the topic to name the series.
        series_prefix: String,
        /// `unit = "Cel"` — unit of every reading.
        unit: Option<String>,
    },
    /// `[pipelines.<name>.decode.function]` — a WebAssembly decoder function, its use named
    /// `decoder-<id>`.
    Function(FunctionUse),
}

/// Which fields of an object hold series, time and value(s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldMapping {
    /// `series = "/sensor"` — series name field; `None`: the topic.
    pub series: Option<JsonPointer>,
    /// `series_prefix = "plant1/"` — prepended to every series name.
    pub series_prefix: String,
    /// `time = "/ts"` — timestamp field; `None`: receive time.
    pub time: Option<JsonPointer>,
    /// `time_unit = "ms"` — unit of numeric timestamps.
    pub time_unit: TimeUnit,
    /// `value = "/value"` or `values = { … }` — where the values are.
    pub values: ValueFields,
    /// `unit = "Cel"` — unit of every reading.
    pub unit: Option<String>,
    /// `unit_field = "/unit"` — field holding the unit (wins over `unit`).
    pub unit_field: Option<JsonPointer>,
}

/// One value field, or several named ones (exactly one of `value` and `values`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueFields {
    /// `value = "/value"` — one reading per object.
    One(JsonPointer),
    /// `values = { temperature = "/t", humidity = "/h" }` — one reading per entry, series
    /// `<series>/<name>`.
    Many(Vec<(String, JsonPointer)>),
}
