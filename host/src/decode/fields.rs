//! JSON and CBOR objects → readings, through a field mapping (which fields hold the series name,
//! the time and the value or values).
//!
//! A payload is one object or an array of objects. Per object: the series name comes from the
//! `series` field (or the topic), prefixed with `series_prefix`; the event time from the `time`
//! field (or the receive time); and one reading from `value`, or one per entry of `values`, named
//! `<series>/<entry>`. Booleans count as 1 and 0; `null` values mean "no reading"; in `values`, an
//! absent field means "not measured this time". Anything else that does not fit is an error
//! naming the field; so is NaN or ±infinity (which only CBOR can carry: it is refused as the
//! payload is read, see [`super`]).

use serde_json::Value;

use super::{Decode, DecodeError, at_item, cbor_value, finite, kind_of, parse_json};
use crate::batch::Batch;
use crate::batch::{BatchBuilder, CallContext, Message, Nanos, Series};
use crate::config::{FieldMapping, JsonPointer, TimeUnit, ValueFields};

/// Which encoding the objects arrive in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Syntax {
    Json,
    Cbor,
}

/// Decodes JSON or CBOR objects with a field mapping.
#[derive(Debug, Clone)]
pub struct FieldMappingDecoder {
    syntax: Syntax,
    mapping: FieldMapping,
}

impl FieldMappingDecoder {
    /// A decoder for JSON payloads.
    pub fn json(mapping: FieldMapping) -> Self {
        Self { syntax: Syntax::Json, mapping }
    }

    /// A decoder for CBOR payloads.
    pub fn cbor(mapping: FieldMapping) -> Self {
        Self { syntax: Syntax::Cbor, mapping }
    }

    fn object(
        &self,
        object: &Value,
        item: Option<usize>,
        message: &Message,
        out: &mut BatchBuilder,
    ) -> Result<(), DecodeError> {
        if !object.is_object() {
            return Err(DecodeError::Shape { expected: "an object or an array of objects", found: kind_of(object) });
        }
        let name = match &self.mapping.series {
            None => message.topic.clone(),
            Some(pointer) => match lookup(object, pointer, item)? {
                Value::String(name) => name.clone(),
                Value::Number(n) => n.to_string(),
                other => return Err(field_type(pointer, "a string", other, item)),
            },
        };
        let name = format!("{}{name}", self.mapping.series_prefix);
        let ts = match &self.mapping.time {
            None => message.received_at,
            Some(pointer) => timestamp(lookup(object, pointer, item)?, self.mapping.time_unit, item)?,
        };
        let unit = match &self.mapping.unit_field {
            None => self.mapping.unit.clone(),
            Some(pointer) => match object.pointer(pointer.as_str()) {
                None | Some(Value::Null) => self.mapping.unit.clone(),
                Some(Value::String(unit)) => Some(unit.clone()),
                Some(other) => return Err(field_type(pointer, "a string", other, item)),
            },
        };
        let series = |name: String| Series { name, unit: unit.clone(), tags: Vec::new() };
        match &self.mapping.values {
            ValueFields::One(pointer) => {
                if let Some(value) = number(lookup(object, pointer, item)?, pointer, item)? {
                    let index = out.intern(&series(name));
                    out.push(index, ts, value);
                }
            }
            ValueFields::Many(fields) => {
                let mut found_any = false;
                for (suffix, pointer) in fields {
                    let Some(field) = object.pointer(pointer.as_str()) else {
                        continue;
                    };
                    found_any = true;
                    if let Some(value) = number(field, pointer, item)? {
                        let index = out.intern(&series(format!("{name}/{suffix}")));
                        out.push(index, ts, value);
                    }
                }
                if !found_any {
                    let pointers: Vec<&str> = fields.iter().map(|(_, p)| p.as_str()).collect();
                    return Err(DecodeError::MissingField { pointer: pointers.join(" | "), item });
                }
            }
        }
        Ok(())
    }
}

impl Decode for FieldMappingDecoder {
    fn decode(&mut self, message: &Message, _ctx: &CallContext) -> Result<Batch, DecodeError> {
        let document = match self.syntax {
            Syntax::Json => parse_json(&message.payload)?,
            Syntax::Cbor => cbor_value::read(&message.payload)?,
        };
        let mut out = BatchBuilder::new();
        match &document {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.object(item, Some(i), message, &mut out)?;
                }
            }
            object => self.object(object, None, message, &mut out)?,
        }
        Ok(out.finish())
    }
}

fn lookup<'v>(object: &'v Value, pointer: &JsonPointer, item: Option<usize>) -> Result<&'v Value, DecodeError> {
    object
        .pointer(pointer.as_str())
        .ok_or_else(|| DecodeError::MissingField { pointer: pointer.as_str().to_owned(), item })
}

fn field_type(pointer: &JsonPointer, expected: &'static str, found: &Value, item: Option<usize>) -> DecodeError {
    DecodeError::FieldType { pointer: pointer.as_str().to_owned(), expected, found: kind_of(found).to_owned(), item }
}

/// The reading a field holds: `None` for null.
fn number(field: &Value, pointer: &JsonPointer, item: Option<usize>) -> Result<Option<f64>, DecodeError> {
    match field {
        Value::Number(n) => {
            n.as_f64().map(|v| finite(v, || format!("field {}{}", pointer.as_str(), at_item(item)))).transpose()
        }
        Value::Bool(b) => Ok(Some(if *b { 1.0 } else { 0.0 })),
        Value::Null => Ok(None),
        other => Err(field_type(pointer, "a number, a boolean or null", other, item)),
    }
}

/// Event time from a timestamp field.
pub(super) fn timestamp(field: &Value, unit: TimeUnit, item: Option<usize>) -> Result<Nanos, DecodeError> {
    let unusable = |reason: &str| DecodeError::Timestamp { value: field.to_string(), reason: reason.to_owned(), item };
    match field {
        Value::Number(n) => {
            let nanos_per_unit: i64 = match unit {
                TimeUnit::S => 1_000_000_000,
                TimeUnit::Ms => 1_000_000,
                TimeUnit::Us => 1_000,
                TimeUnit::Ns => 1,
            };
            if let Some(whole) = n.as_i64() {
                return whole
                    .checked_mul(nanos_per_unit)
                    .ok_or_else(|| unusable("outside the representable range (years 1678-2262)"));
            }
            let float = n.as_f64().ok_or_else(|| unusable("not a finite number"))?;
            seconds_to_nanos(float * nanos_per_unit as f64 / 1e9)
                .ok_or_else(|| unusable("outside the representable range (years 1678-2262)"))
        }
        Value::String(text) => {
            let parsed = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| unusable(&format!("not an RFC 3339 date-time: {e}")))?;
            i64::try_from(parsed.unix_timestamp_nanos())
                .map_err(|_| unusable("outside the representable range (years 1678-2262)"))
        }
        _ => Err(unusable("must be a number or an RFC 3339 string")),
    }
}

/// Nanoseconds for a (fractional) number of seconds, if representable.
pub(super) fn seconds_to_nanos(seconds: f64) -> Option<Nanos> {
    let nanos = (seconds * 1e9).round();
    (nanos.is_finite() && nanos >= i64::MIN as f64 && nanos <= i64::MAX as f64).then_some(nanos as i64)
}

#[cfg(test)]
mod tests {
    const CTX: CallContext = CallContext { processing_time: 0, watermark: 0 };
    use bytes::Bytes;
    use serde_json::json;

    use super::*;

    fn pointer(p: &str) -> JsonPointer {
        JsonPointer::try_from(p.to_owned()).expect("test pointers are valid")
    }

    fn mapping(values: ValueFields) -> FieldMapping {
        FieldMapping {
            series: Some(pointer("/sensor")),
            series_prefix: String::new(),
            time: Some(pointer("/ts")),
            time_unit: TimeUnit::Ms,
            values,
            unit: Some("Cel".into()),
            unit_field: None,
        }
    }

    fn message(payload: impl Into<Bytes>) -> Message {
        Message { topic: "plant/boiler".into(), payload: payload.into(), received_at: 42 }
    }

    fn readings(batch: &Batch) -> Vec<(String, Nanos, f64)> {
        batch.iter().map(|s| (s.series.name.clone(), s.ts, s.value)).collect()
    }

    #[test]
    fn one_value_per_object_and_arrays_of_objects() {
        let mut decoder = FieldMappingDecoder::json(mapping(ValueFields::One(pointer("value"))));
        let payload = json!([{"sensor": "a", "ts": 1000, "value": 1.5}, {"sensor": "b", "ts": 2000, "value": true}]);
        let batch = decoder.decode(&message(payload.to_string()), &CTX).expect("valid payload");
        assert_eq!(readings(&batch), [("a".into(), 1_000_000_000, 1.5), ("b".into(), 2_000_000_000, 1.0)]);
        assert_eq!(batch.series()[0].unit.as_deref(), Some("Cel"));
    }

    #[test]
    fn several_values_per_object_skip_absent_fields() {
        let values = ValueFields::Many(vec![("t".into(), pointer("/temp")), ("h".into(), pointer("/hum"))]);
        let mut decoder = FieldMappingDecoder::json(mapping(values));
        let batch = decoder
            .decode(
                &message(json!({"sensor": "dev1", "ts": "2024-05-01T12:00:00+02:00", "temp": 21.0}).to_string()),
                &CTX,
            )
            .expect("valid payload");
        assert_eq!(readings(&batch), [("dev1/t".into(), 1_714_557_600_000_000_000, 21.0)]);
    }

    #[test]
    fn unit_can_come_from_a_field() {
        let mut m = mapping(ValueFields::One(pointer("/value")));
        m.unit_field = Some(pointer("/u"));
        let mut decoder = FieldMappingDecoder::json(m);
        let batch = decoder
            .decode(&message(json!({"sensor": "a", "ts": 1, "value": 1, "u": "K"}).to_string()), &CTX)
            .expect("valid payload");
        assert_eq!(batch.series()[0].unit.as_deref(), Some("K"));
        let batch = decoder
            .decode(&message(json!({"sensor": "a", "ts": 1, "value": 1}).to_string()), &CTX)
            .expect("valid payload");
        assert_eq!(batch.series()[0].unit.as_deref(), Some("Cel"), "the constant is the fallback");
    }

    #[test]
    fn topic_names_the_series_and_receive_time_is_the_default() {
        let mut m = mapping(ValueFields::One(pointer("/v")));
        m.series = None;
        m.time = None;
        m.series_prefix = "site/".into();
        let batch = FieldMappingDecoder::json(m).decode(&message(r#"{"v": 3}"#), &CTX).expect("valid payload");
        assert_eq!(readings(&batch), [("site/plant/boiler".into(), 42, 3.0)]);
    }

    #[test]
    fn errors_name_the_field_and_array_item() {
        let mut decoder = FieldMappingDecoder::json(mapping(ValueFields::One(pointer("/value"))));
        let cases = [
            (json!({"sensor": "a", "ts": 1}).to_string(), "field /value is missing"),
            (
                json!([{"sensor": "a", "ts": 1, "value": 1}, {"sensor": "a", "ts": 1, "value": "hot"}]).to_string(),
                "field /value must be a number, a boolean or null, found a string (array item 1)",
            ),
            (json!({"sensor": "a", "ts": "yesterday", "value": 1}).to_string(), "not an RFC 3339 date-time"),
            (json!({"sensor": "a", "ts": 1e30, "value": 1}).to_string(), "outside the representable range"),
            ("{\"sensor\": ".to_owned(), "payload is not valid JSON (line 1"),
            ("42".to_owned(), "payload must be an object or an array of objects, found a number"),
        ];
        for (payload, expected) in cases {
            let err = decoder.decode(&message(payload.clone()), &CTX).expect_err(&payload);
            assert!(err.to_string().contains(expected), "{payload}: {err}");
        }
    }

    #[test]
    fn nan_and_infinity_are_refused_in_cbor_and_json() {
        let mut decoder = FieldMappingDecoder::cbor(mapping(ValueFields::One(pointer("/value"))));
        for (value, shown) in [(f64::NAN, "NaN"), (f64::INFINITY, "inf"), (f64::NEG_INFINITY, "-inf")] {
            let mut payload = Vec::new();
            let mut e = minicbor::Encoder::new(&mut payload);
            e.map(3)
                .and_then(|e| e.str("sensor")?.str("c")?.str("ts")?.u64(5)?.str("value")?.f64(value))
                .expect("encoding to a Vec");
            let err = decoder.decode(&message(payload), &CTX).expect_err("not a reading");
            assert_eq!(
                err.to_string(),
                format!("the CBOR float at byte 20 is {shown}: NaN and infinity are not readings")
            );
        }
        // JSON cannot spell NaN or infinity; a number beyond the largest float is a syntax error.
        let mut decoder = FieldMappingDecoder::json(mapping(ValueFields::One(pointer("/value"))));
        for payload in [r#"{"sensor": "a", "ts": 1, "value": 1e999}"#, r#"{"sensor": "a", "ts": 1, "value": NaN}"#] {
            let err = decoder.decode(&message(payload), &CTX).expect_err(payload);
            assert!(matches!(err, DecodeError::Json { .. }), "{payload}: {err}");
        }
    }

    #[test]
    fn cbor_objects_use_the_same_mapping() {
        let mut payload = Vec::new();
        let mut e = minicbor::Encoder::new(&mut payload);
        e.map(3)
            .and_then(|e| e.str("sensor")?.str("c")?.str("ts")?.u64(5)?.str("value")?.f64(2.25))
            .expect("encoding to a Vec");
        let batch = FieldMappingDecoder::cbor(mapping(ValueFields::One(pointer("/value"))))
            .decode(&message(payload), &CTX)
            .expect("valid payload");
        assert_eq!(readings(&batch), [("c".into(), 5_000_000, 2.25)]);
    }
}
