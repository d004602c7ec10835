//! Reads any CBOR item into a `serde_json::Value`, so CBOR payloads share the field mapping and
//! SenML code paths with JSON.
//!
//! Mapping: integers and floats → numbers (integers beyond ±2⁶⁴ become floats), text → string,
//! byte strings → lowercase hex string, map keys → strings (integers written in decimal), tags are
//! dropped (their content kept), `undefined` → null. Nesting — arrays, maps and tags, each a
//! level — is limited to [`MAX_DEPTH`] so a hostile payload cannot exhaust the stack; trailing
//! bytes after the item are an error. A float that is NaN or ±infinity is refused wherever it is
//! ([`DecodeError::NotFinite`], with its byte offset): JSON has no such numbers, and they are not
//! readings.

use minicbor::Decoder;
use minicbor::data::Type;
use serde_json::{Map, Number, Value};

use super::{DecodeError, finite};

/// Deepest nesting of arrays, maps and tags accepted.
pub const MAX_DEPTH: usize = 32;

/// Decodes `payload`, which must hold exactly one CBOR item.
pub fn read(payload: &[u8]) -> Result<Value, DecodeError> {
    let mut decoder = Decoder::new(payload);
    let value = read_item(&mut decoder, 0)?;
    if decoder.position() != payload.len() {
        return Err(DecodeError::Cbor {
            offset: decoder.position(),
            reason: format!("{} bytes after the end of the item", payload.len() - decoder.position()),
        });
    }
    Ok(value)
}

fn cbor_error(decoder: &Decoder<'_>, error: &minicbor::decode::Error) -> DecodeError {
    chunk_error(decoder.position(), error)
}

/// An error inside a string or byte-string chunk, where the decoder itself is borrowed.
fn chunk_error(fallback_offset: usize, error: &minicbor::decode::Error) -> DecodeError {
    DecodeError::Cbor { offset: error.position().unwrap_or(fallback_offset), reason: error.to_string() }
}

fn read_item(d: &mut Decoder<'_>, depth: usize) -> Result<Value, DecodeError> {
    if depth > MAX_DEPTH {
        return Err(DecodeError::Cbor {
            offset: d.position(),
            reason: format!("nested deeper than {MAX_DEPTH} levels"),
        });
    }
    let datatype = d.datatype().map_err(|e| cbor_error(d, &e))?;
    let fail = |d: &Decoder<'_>, e: minicbor::decode::Error| cbor_error(d, &e);
    Ok(match datatype {
        Type::Bool => Value::Bool(d.bool().map_err(|e| fail(d, e))?),
        Type::Null | Type::Undefined => {
            d.skip().map_err(|e| fail(d, e))?;
            Value::Null
        }
        Type::U8 | Type::U16 | Type::U32 | Type::U64 | Type::I8 | Type::I16 | Type::I32 | Type::I64 | Type::Int => {
            let int = i128::from(d.int().map_err(|e| fail(d, e))?);
            if let Ok(small) = i64::try_from(int) {
                Value::Number(small.into())
            } else if let Ok(large) = u64::try_from(int) {
                Value::Number(large.into())
            } else {
                float(int as f64)
            }
        }
        Type::F16 | Type::F32 | Type::F64 => {
            let offset = d.position();
            let value = d.f64().map_err(|e| fail(d, e))?;
            float(finite(value, || format!("the CBOR float at byte {offset}"))?)
        }
        Type::Bytes | Type::BytesIndef => {
            let start = d.position();
            let mut bytes = Vec::new();
            for chunk in d.bytes_iter().map_err(|e| chunk_error(start, &e))? {
                bytes.extend_from_slice(chunk.map_err(|e| chunk_error(start, &e))?);
            }
            Value::String(hex::encode(bytes))
        }
        Type::String | Type::StringIndef => {
            let start = d.position();
            let mut text = String::new();
            for chunk in d.str_iter().map_err(|e| chunk_error(start, &e))? {
                text.push_str(chunk.map_err(|e| chunk_error(start, &e))?);
            }
            Value::String(text)
        }
        Type::Array | Type::ArrayIndef => {
            let len = d.array().map_err(|e| fail(d, e))?;
            let mut items = Vec::with_capacity(len.unwrap_or(0).min(1024) as usize);
            match len {
                Some(n) => {
                    for _ in 0..n {
                        items.push(read_item(d, depth + 1)?);
                    }
                }
                None => {
                    while d.datatype().map_err(|e| fail(d, e))? != Type::Break {
                        items.push(read_item(d, depth + 1)?);
                    }
                    d.skip().map_err(|e| fail(d, e))?;
                }
            }
            Value::Array(items)
        }
        Type::Map | Type::MapIndef => {
            let len = d.map().map_err(|e| fail(d, e))?;
            let mut map = Map::new();
            let mut entry = |d: &mut Decoder<'_>| -> Result<(), DecodeError> {
                let key = match read_item(d, depth + 1)? {
                    Value::String(key) => key,
                    Value::Number(n) => n.to_string(),
                    other => {
                        return Err(DecodeError::Cbor {
                            offset: d.position(),
                            reason: format!("map key must be text or an integer, found {}", super::kind_of(&other)),
                        });
                    }
                };
                let value = read_item(d, depth + 1)?;
                map.insert(key, value);
                Ok(())
            };
            match len {
                Some(n) => {
                    for _ in 0..n {
                        entry(d)?;
                    }
                }
                None => {
                    while d.datatype().map_err(|e| fail(d, e))? != Type::Break {
                        entry(d)?;
                    }
                    d.skip().map_err(|e| fail(d, e))?;
                }
            }
            Value::Object(map)
        }
        Type::Tag => {
            d.tag().map_err(|e| fail(d, e))?;
            // A tag nests its content like an array of one: tags around tags are bounded too.
            read_item(d, depth + 1)?
        }
        Type::Simple | Type::Break | Type::Unknown(_) => {
            return Err(DecodeError::Cbor {
                offset: d.position(),
                reason: format!("unexpected CBOR item of type {datatype}"),
            });
        }
    })
}

fn float(value: f64) -> Value {
    Value::Number(Number::from_f64(value).expect("only finite floats are read"))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn encode(
        build: impl FnOnce(
            &mut minicbor::Encoder<&mut Vec<u8>>,
        ) -> Result<(), minicbor::encode::Error<std::convert::Infallible>>,
    ) -> Vec<u8> {
        let mut buffer = Vec::new();
        build(&mut minicbor::Encoder::new(&mut buffer)).expect("writing to a Vec cannot fail");
        buffer
    }

    #[test]
    fn reads_maps_arrays_numbers_text_and_bytes() {
        let payload = encode(|e| {
            e.map(4)?.str("t")?.f32(21.5)?.u8(2)?.i64(-7)?.str("list")?.begin_array()?.u8(1)?.str("x")?.end()?;
            e.str("raw")?.bytes(&[0xde, 0xad])?;
            Ok(())
        });
        assert_eq!(read(&payload).expect("valid CBOR"), json!({"t": 21.5, "2": -7, "list": [1, "x"], "raw": "dead"}));
    }

    #[test]
    fn refuses_nan_and_infinity_naming_the_byte() {
        let floats: [(f64, &str); 3] = [(f64::NAN, "NaN"), (f64::INFINITY, "inf"), (f64::NEG_INFINITY, "-inf")];
        for (value, shown) in floats {
            for payload in [
                encode(|e| e.map(1)?.str("v")?.f64(value).map(|_| ())),
                encode(|e| e.map(1)?.str("v")?.f32(value as f32).map(|_| ())),
                encode(|e| e.map(1)?.str("v")?.f16(value as f32).map(|_| ())),
            ] {
                let err = read(&payload).expect_err("not a reading");
                assert_eq!(
                    err.to_string(),
                    format!("the CBOR float at byte 3 is {shown}: NaN and infinity are not readings")
                );
            }
        }
    }

    #[test]
    fn refuses_trailing_bytes_truncation_and_deep_nesting() {
        let mut trailing = encode(|e| e.u8(1).map(|_| ()));
        trailing.push(0);
        assert!(matches!(read(&trailing), Err(DecodeError::Cbor { .. })));
        let truncated = &encode(|e| e.str("hello").map(|_| ()))[..3];
        assert!(matches!(read(truncated), Err(DecodeError::Cbor { .. })));
        let deep = vec![0x81; MAX_DEPTH + 2];
        let err = read(&deep).expect_err("too deep");
        assert!(err.to_string().contains("nested deeper"), "{err}");
    }

    #[test]
    fn tags_count_as_nesting_so_a_run_of_tags_cannot_exhaust_the_stack() {
        // 64 KiB of one-byte tags (0xc6) around a zero: each tag was read by one more recursion
        // at the same depth, and the thread overflowed its stack.
        let mut tagged = vec![0xc6; 64 * 1024];
        tagged.push(0x00);
        let err = read(&tagged).expect_err("too deep");
        assert!(err.to_string().contains("nested deeper than 32 levels"), "{err}");
        // A few tags, around items and inside them, are read through as before.
        let shallow = [0xc6, 0xa1, 0x61, b'v', 0xc1, 0xc2, 0x81, 0x07];
        assert_eq!(read(&shallow).expect("shallow tags"), json!({"v": [7]}));
    }
}
