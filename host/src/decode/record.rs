//! A weir record → its readings: the decoder of every `sensors` source (which writes one record
//! per device and sample), and `decode = "weir_record"` for another gateway's forwarded records.
//!
//! Only readings decode: a coarsened record, a drop marker or window emissions carry summaries,
//! not readings, and are refused whole (forwarding them as readings would count them twice).

use super::{Decode, DecodeError, finite};
use crate::batch::{Batch, CallContext, Message};

/// Decodes weir records (CBOR or JSON, as `weir_record::read` takes them).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordDecoder;

impl Decode for RecordDecoder {
    fn decode(&mut self, message: &Message, _ctx: &CallContext) -> Result<Batch, DecodeError> {
        let record = weir_record::read(&message.payload).map_err(|e| DecodeError::Record { reason: e.to_string() })?;
        if record.coarsened.is_some() || record.dropped.is_some() || !record.aggregates.is_empty() {
            return Err(DecodeError::Record {
                reason: "a coarsened record or drop marker holds no readings".to_owned(),
            });
        }
        if !record.windows.is_empty() {
            return Err(DecodeError::Record {
                reason: "the record holds window emissions, not only readings".to_owned(),
            });
        }
        for (index, sample) in record.batch.iter().enumerate() {
            finite(sample.value, || format!("reading {index} of series {}", sample.series.name))?;
        }
        Ok(record.batch)
    }
}

#[cfg(test)]
mod tests {
    use weir_record::{Encoding, RecordHeader};

    use super::*;
    use crate::batch::{BatchBuilder, Series};

    fn message(payload: Vec<u8>) -> Message {
        Message { topic: "sensors/room".into(), payload: payload.into(), received_at: 5 }
    }

    #[test]
    fn a_record_of_readings_decodes_with_units_and_tags() {
        let mut builder = BatchBuilder::new();
        let mut series = Series::named("room/temperature").with_unit("Cel");
        series.tags.push(("clock".into(), "unsynced".into()));
        let index = builder.intern(&series);
        builder.push(index, 1_000, 21.5);
        let batch = builder.finish();
        let header = RecordHeader { gateway: "gw".into(), stream: "room".into(), seq: 1, encoded_at: 2 };
        for encoding in [Encoding::Cbor, Encoding::Json] {
            let payload = weir_record::write_readings(encoding, &header, &batch).expect("it works");
            let ctx = CallContext { processing_time: 0, watermark: 0 };
            let decoded = RecordDecoder.decode(&message(payload), &ctx).expect("it works");
            assert_eq!(decoded, batch);
        }
    }

    #[test]
    fn anything_else_is_refused_with_a_reason() {
        let ctx = CallContext { processing_time: 0, watermark: 0 };
        let error = RecordDecoder.decode(&message(b"{\"not\": \"a record\"}".to_vec()), &ctx).expect_err("it fails");
        assert!(matches!(error, DecodeError::Record { .. }), "{error}");
        let error = RecordDecoder.decode(&message(vec![0xff, 0x00]), &ctx).expect_err("it fails");
        assert!(error.to_string().starts_with("not a weir record"), "{error}");
    }
}
