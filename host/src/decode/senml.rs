//! SenML (RFC 8428) packs in JSON and CBOR → readings.
//!
//! Base fields (`bn`, `bt`, `bu`, `bv`, `bs`) carry over to later records until changed, as the
//! RFC's resolution rules say: name = `bn` + `n`, time = `bt` + `t` (seconds; a resolved time
//! below 2²⁸ is relative to the receive time), unit = `u` or else `bu`, value = `bv` + `v`.
//! Readings come from `v`, from `vb` (true = 1, false = 0) and, for records with neither, from the
//! sum `s` (+ `bs`). String (`vs`) and data (`vd`) values are not numeric and are skipped, as are
//! records that only set base fields. A field whose name ends in `_` ("must understand") is
//! refused, as the RFC requires of fields a receiver does not know. A value that is NaN or
//! ±infinity — in CBOR, or a base value and an offset that add up beyond the largest float — is
//! refused (see [`super`]).
//!
//! In CBOR, fields are keyed by the RFC's integer labels (`bn` = -2, …, `vd` = 8).

use serde_json::{Map, Value};

use super::fields::seconds_to_nanos;
use super::{Decode, DecodeError, cbor_value, finite, kind_of, parse_json};
use crate::batch::{Batch, BatchBuilder, CallContext, Message, Series};

/// Resolved times below this many seconds are relative to "now" (RFC 8428 §4.5.3).
const RELATIVE_TIME_LIMIT: f64 = 268_435_456.0;

/// RFC 8428 §6 CBOR labels.
const CBOR_LABELS: [(&str, &str); 15] = [
    ("-1", "bver"),
    ("-2", "bn"),
    ("-3", "bt"),
    ("-4", "bu"),
    ("-5", "bv"),
    ("-6", "bs"),
    ("0", "n"),
    ("1", "u"),
    ("2", "v"),
    ("3", "vs"),
    ("4", "vb"),
    ("5", "s"),
    ("6", "t"),
    ("7", "ut"),
    ("8", "vd"),
];

/// Fields this decoder understands; any other field ending in `_` is refused.
const KNOWN_FIELDS: [&str; 15] =
    ["bver", "bn", "bt", "bu", "bv", "bs", "n", "u", "v", "vs", "vb", "s", "t", "ut", "vd"];

/// Decodes SenML JSON packs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SenmlJsonDecoder;

/// Decodes SenML CBOR packs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SenmlCborDecoder;

impl Decode for SenmlJsonDecoder {
    fn decode(&mut self, message: &Message, _ctx: &CallContext) -> Result<Batch, DecodeError> {
        resolve(&parse_json(&message.payload)?, message)
    }
}

impl Decode for SenmlCborDecoder {
    fn decode(&mut self, message: &Message, _ctx: &CallContext) -> Result<Batch, DecodeError> {
        let mut pack = cbor_value::read(&message.payload)?;
        if let Value::Array(records) = &mut pack {
            for record in records.iter_mut() {
                if let Value::Object(fields) = record {
                    *fields = relabel(std::mem::take(fields));
                }
            }
        }
        resolve(&pack, message)
    }
}

/// Replaces CBOR integer labels by the JSON field names.
fn relabel(fields: Map<String, Value>) -> Map<String, Value> {
    fields
        .into_iter()
        .map(|(key, value)| {
            let name = CBOR_LABELS.iter().find(|(label, _)| *label == key).map_or(key, |(_, name)| (*name).to_owned());
            (name, value)
        })
        .collect()
}

/// The base values in force while walking a pack.
#[derive(Default)]
struct Base {
    name: String,
    time: f64,
    unit: Option<String>,
    value: f64,
    sum: f64,
}

fn resolve(pack: &Value, message: &Message) -> Result<Batch, DecodeError> {
    let Value::Array(records) = pack else {
        return Err(DecodeError::Shape { expected: "a SenML pack (an array of records)", found: kind_of(pack) });
    };
    let mut base = Base::default();
    let mut out = BatchBuilder::new();
    for (index, record) in records.iter().enumerate() {
        let refuse = |reason: String| DecodeError::Senml { index, reason };
        let Value::Object(fields) = record else {
            return Err(refuse(format!("must be an object, found {}", kind_of(record))));
        };
        if let Some(unknown) = fields.keys().find(|k| k.ends_with('_') && !KNOWN_FIELDS.contains(&k.as_str())) {
            return Err(refuse(format!("must-understand field {unknown:?} is not supported")));
        }
        let text = |field: &str| -> Result<Option<&str>, DecodeError> {
            match fields.get(field) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(other) => Err(refuse(format!("`{field}` must be a string, found {}", kind_of(other)))),
            }
        };
        let number = |field: &str| -> Result<Option<f64>, DecodeError> {
            match fields.get(field) {
                None => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(other) => Err(refuse(format!("`{field}` must be a number, found {}", kind_of(other)))),
            }
        };
        if let Some(bn) = text("bn")? {
            base.name = bn.to_owned();
        }
        if let Some(bt) = number("bt")? {
            base.time = bt;
        }
        if let Some(bu) = text("bu")? {
            base.unit = Some(bu.to_owned());
        }
        if let Some(bv) = number("bv")? {
            base.value = bv;
        }
        if let Some(bs) = number("bs")? {
            base.sum = bs;
        }
        let vb = match fields.get("vb") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(other) => {
                return Err(refuse(format!("`vb` must be a boolean, found {}", kind_of(other))));
            }
        };
        let value = match (number("v")?, vb, number("s")?) {
            (Some(v), _, _) => base.value + v,
            (None, Some(b), _) => {
                if b {
                    1.0
                } else {
                    0.0
                }
            }
            (None, None, Some(s)) => base.sum + s,
            (None, None, None) => continue, // base-only, string or data record
        };
        let value = finite(value, || format!("SenML record {index}: the value"))?;
        let name = format!("{}{}", base.name, text("n")?.unwrap_or_default());
        if !valid_name(&name) {
            return Err(refuse(format!(
                "name {name:?} is not a valid SenML name (letters, digits, `-:./_`, starting with a letter or digit)"
            )));
        }
        let seconds = base.time + number("t")?.unwrap_or(0.0);
        let ts = if seconds.abs() < RELATIVE_TIME_LIMIT {
            seconds_to_nanos(seconds).and_then(|offset| message.received_at.checked_add(offset))
        } else {
            seconds_to_nanos(seconds)
        }
        .ok_or_else(|| refuse(format!("time {seconds} s is outside the representable range")))?;
        let unit = text("u")?.map(str::to_owned).or_else(|| base.unit.clone());
        let index = out.intern(&Series { name, unit, tags: Vec::new() });
        out.push(index, ts, value);
    }
    Ok(out.finish())
}

fn valid_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "-:./_".contains(c))
}

#[cfg(test)]
mod tests {
    const CTX: CallContext = CallContext { processing_time: 0, watermark: 0 };
    use bytes::Bytes;
    use serde_json::json;

    use super::*;

    const NOW: i64 = 1_700_000_000_000_000_000;

    fn message(payload: impl Into<Bytes>) -> Message {
        Message { topic: "t".into(), payload: payload.into(), received_at: NOW }
    }

    fn readings(batch: &Batch) -> Vec<(String, Option<String>, i64, f64)> {
        batch.iter().map(|s| (s.series.name.clone(), s.series.unit.clone(), s.ts, s.value)).collect()
    }

    #[test]
    fn resolves_base_fields_as_rfc_8428_example() {
        // RFC 8428 §5.1.2-style pack: base name, base time, base unit carried over.
        let pack = json!([
            {"bn": "urn:dev:ow:10e2073a01080063:", "bt": 1.320067464e9, "bu": "%RH", "v": 20},
            {"n": "lon", "u": "lon", "v": 24.30621},
            {"n": "temp", "u": "Cel", "t": 60, "v": 23.1},
            {"n": "door", "vb": true},
            {"n": "label", "vs": "ignored"},
        ]);
        let batch = SenmlJsonDecoder.decode(&message(pack.to_string()), &CTX).expect("valid pack");
        let base = 1_320_067_464_000_000_000;
        assert_eq!(
            readings(&batch),
            [
                ("urn:dev:ow:10e2073a01080063:".into(), Some("%RH".into()), base, 20.0),
                ("urn:dev:ow:10e2073a01080063:lon".into(), Some("lon".into()), base, 24.30621),
                ("urn:dev:ow:10e2073a01080063:temp".into(), Some("Cel".into()), base + 60_000_000_000, 23.1),
                ("urn:dev:ow:10e2073a01080063:door".into(), Some("%RH".into()), base, 1.0),
            ]
        );
    }

    #[test]
    fn small_times_are_relative_to_receive_time_and_base_value_adds() {
        let pack = json!([{"bn": "dev/", "bv": 100, "n": "a", "v": 5, "t": -10}, {"n": "b", "s": 7, "bs": 1}]);
        let batch = SenmlJsonDecoder.decode(&message(pack.to_string()), &CTX).expect("valid pack");
        assert_eq!(
            readings(&batch),
            [("dev/a".into(), None, NOW - 10_000_000_000, 105.0), ("dev/b".into(), None, NOW, 8.0)]
        );
    }

    #[test]
    fn refuses_what_the_rfc_refuses() {
        let cases = [
            (json!({"n": "a", "v": 1}), "must be a SenML pack"),
            (json!([{"n": "a", "v": "1"}]), "`v` must be a number"),
            (json!([{"n": "a", "v": 1, "foo_": 1}]), "must-understand field \"foo_\""),
            (json!([{"n": " bad", "v": 1}]), "not a valid SenML name"),
            (json!([{"v": 1}]), "not a valid SenML name"),
        ];
        for (pack, expected) in cases {
            let err = SenmlJsonDecoder.decode(&message(pack.to_string()), &CTX).expect_err(expected);
            assert!(err.to_string().contains(expected), "{pack}: {err}");
        }
    }

    #[test]
    fn nan_and_infinity_are_not_readings() {
        let pack = json!([{"n": "a", "bv": 1e308, "v": 1e308}]);
        let err = SenmlJsonDecoder.decode(&message(pack.to_string()), &CTX).expect_err("overflows");
        assert_eq!(err.to_string(), "SenML record 0: the value is inf: NaN and infinity are not readings");
        let pack = json!([{"n": "a", "bs": -1e308, "s": -1e308}]);
        let err = SenmlJsonDecoder.decode(&message(pack.to_string()), &CTX).expect_err("overflows");
        assert!(matches!(err, DecodeError::NotFinite { value, .. } if value == f64::NEG_INFINITY), "{err}");
        let err = SenmlJsonDecoder.decode(&message(r#"[{"n": "a", "v": 1e999}]"#), &CTX).expect_err("too large");
        assert!(matches!(err, DecodeError::Json { .. }), "{err}");
        for (value, shown) in [(f64::NAN, "NaN"), (f64::INFINITY, "inf"), (f64::NEG_INFINITY, "-inf")] {
            let mut payload = Vec::new();
            let mut e = minicbor::Encoder::new(&mut payload);
            e.array(1).and_then(|e| e.map(2)?.u8(0)?.str("a")?.u8(2)?.f64(value)).expect("encoding to a Vec");
            let err = SenmlCborDecoder.decode(&message(payload), &CTX).expect_err("not a reading");
            assert_eq!(
                err.to_string(),
                format!("the CBOR float at byte 6 is {shown}: NaN and infinity are not readings")
            );
        }
    }

    #[test]
    fn cbor_packs_use_integer_labels() {
        let mut payload = Vec::new();
        let mut e = minicbor::Encoder::new(&mut payload);
        e.array(2)
            .and_then(|e| {
                e.map(3)?
                    .i8(-2)?
                    .str("dev/")?
                    .i8(-3)?
                    .f64(1.7e9)?
                    .u8(0)?
                    .str("t")?
                    .map(2)?
                    .u8(2)?
                    .f32(21.5)?
                    .u8(1)?
                    .str("Cel")
            })
            .expect("encoding to a Vec");
        // First record has no value: base fields only.
        let batch = SenmlCborDecoder.decode(&message(payload), &CTX).expect("valid pack");
        assert_eq!(readings(&batch), [("dev/".into(), Some("Cel".into()), 1_700_000_000_000_000_000, 21.5)]);
    }
}
