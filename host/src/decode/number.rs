//! One raw number per message → one reading, named after the topic, at the receive time.
//!
//! Common for per-attribute MQTT topics (`plant1/boiler/temp` carrying `21.5`). The number is
//! ASCII text or a fixed-width IEEE 754 float; the width must match exactly. NaN and ±infinity
//! (`NaN`, `inf`, `1e999` as text, or their binary encodings) are refused like a non-number.

use super::{Decode, DecodeError, finite};
use crate::batch::{Batch, BatchBuilder, CallContext, Message, Series};
use crate::config::NumberEncoding;

/// Decodes single-number payloads.
#[derive(Debug, Clone)]
pub struct RawNumberDecoder {
    encoding: NumberEncoding,
    series_prefix: String,
    unit: Option<String>,
}

impl RawNumberDecoder {
    /// A decoder for numbers written as `encoding`.
    pub fn new(encoding: NumberEncoding, series_prefix: String, unit: Option<String>) -> Self {
        Self { encoding, series_prefix, unit }
    }

    fn value(&self, payload: &[u8]) -> Result<f64, DecodeError> {
        let fixed = |width: usize| -> Result<&[u8], DecodeError> {
            if payload.len() == width {
                Ok(payload)
            } else {
                Err(DecodeError::Number { reason: format!("expected exactly {width} bytes, got {}", payload.len()) })
            }
        };
        let array4 = |b: &[u8]| [b[0], b[1], b[2], b[3]];
        let array8 = |b: &[u8]| [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        let value = match self.encoding {
            NumberEncoding::Text => {
                let text = std::str::from_utf8(payload)
                    .map_err(|_| DecodeError::Number { reason: "payload is not UTF-8 text".to_owned() })?
                    .trim();
                text.parse::<f64>().map_err(|_| DecodeError::Number {
                    reason: format!("{:?} is not a decimal number", truncate(text)),
                })?
            }
            NumberEncoding::F32Be => f64::from(f32::from_be_bytes(array4(fixed(4)?))),
            NumberEncoding::F32Le => f64::from(f32::from_le_bytes(array4(fixed(4)?))),
            NumberEncoding::F64Be => f64::from_be_bytes(array8(fixed(8)?)),
            NumberEncoding::F64Le => f64::from_le_bytes(array8(fixed(8)?)),
        };
        finite(value, || "the payload".to_owned())
    }
}

/// At most 40 characters of `text`, for error messages.
fn truncate(text: &str) -> String {
    match text.char_indices().nth(40) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

impl Decode for RawNumberDecoder {
    fn decode(&mut self, message: &Message, _ctx: &CallContext) -> Result<Batch, DecodeError> {
        let value = self.value(&message.payload)?;
        let mut out = BatchBuilder::new();
        let series = Series {
            name: format!("{}{}", self.series_prefix, message.topic),
            unit: self.unit.clone(),
            tags: Vec::new(),
        };
        let index = out.intern(&series);
        out.push(index, message.received_at, value);
        Ok(out.finish())
    }
}

#[cfg(test)]
mod tests {
    const CTX: CallContext = CallContext { processing_time: 0, watermark: 0 };
    use bytes::Bytes;

    use super::*;

    fn decode(encoding: NumberEncoding, payload: impl Into<Bytes>) -> Result<f64, DecodeError> {
        let message = Message { topic: "a/b".into(), payload: payload.into(), received_at: 9 };
        let batch = RawNumberDecoder::new(encoding, "p/".into(), None).decode(&message, &CTX)?;
        assert_eq!(batch.series()[0].name, "p/a/b");
        assert_eq!(batch.timestamps(), [9]);
        Ok(batch.values()[0])
    }

    #[test]
    fn reads_text_and_binary_floats() {
        assert_eq!(decode(NumberEncoding::Text, " 21.5\n"), Ok(21.5));
        assert_eq!(decode(NumberEncoding::F32Be, 1.5f32.to_be_bytes().to_vec()), Ok(1.5));
        assert_eq!(decode(NumberEncoding::F64Le, (-2.25f64).to_le_bytes().to_vec()), Ok(-2.25));
    }

    #[test]
    fn refuses_nan_and_infinity_in_text_and_binary() {
        let texts = [("NaN", "NaN"), ("inf", "inf"), ("-infinity", "-inf"), ("1e999", "inf"), ("-1e999", "-inf")];
        for (text, shown) in texts {
            let err = decode(NumberEncoding::Text, text).expect_err(text);
            assert_eq!(err.to_string(), format!("the payload is {shown}: NaN and infinity are not readings"), "{text}");
        }
        let binary: [(NumberEncoding, Vec<u8>); 4] = [
            (NumberEncoding::F32Be, f32::NAN.to_be_bytes().to_vec()),
            (NumberEncoding::F32Le, f32::INFINITY.to_le_bytes().to_vec()),
            (NumberEncoding::F64Be, f64::NEG_INFINITY.to_be_bytes().to_vec()),
            (NumberEncoding::F64Le, f64::NAN.to_le_bytes().to_vec()),
        ];
        for (encoding, payload) in binary {
            let err = decode(encoding, payload).expect_err("not a reading");
            assert!(matches!(err, DecodeError::NotFinite { .. }), "{encoding:?}: {err}");
        }
        assert_eq!(decode(NumberEncoding::F64Be, f64::MAX.to_be_bytes().to_vec()), Ok(f64::MAX), "large is fine");
    }

    #[test]
    fn refuses_non_numbers_and_wrong_widths() {
        assert!(decode(NumberEncoding::Text, "hot").is_err());
        assert!(decode(NumberEncoding::Text, vec![0xff, 0xfe]).is_err());
        let err = decode(NumberEncoding::F64Be, vec![0; 4]).expect_err("4 bytes is not an f64");
        assert!(err.to_string().contains("exactly 8 bytes"), "{err}");
    }
}
