//! The record format: round trips (also as a property), the published CDDL, compactness, refusals.

use minicbor::Encoder;
use proptest::prelude::*;

use super::*;

fn header(seq: u64) -> RecordHeader {
    RecordHeader { gateway: "gw-1".into(), stream: "boiler".into(), seq, encoded_at: 1_700_000_000_123_456_789 }
}

fn batch(readings: &[(&str, Nanos, f64)]) -> Batch {
    let mut builder = BatchBuilder::new();
    for (name, ts, value) in readings {
        let index = builder.intern(&Series::named(*name).with_unit("Cel"));
        builder.push(index, *ts, *value);
    }
    builder.finish()
}

/// Readings per series, in order — what the format promises to preserve.
fn per_series(batch: &Batch) -> Vec<(String, Vec<(Nanos, u64)>)> {
    let mut out: Vec<(String, Vec<(Nanos, u64)>)> = Vec::new();
    for sample in batch.iter() {
        let bits = if sample.value.is_nan() { f64::NAN.to_bits() } else { sample.value.to_bits() };
        match out.iter_mut().find(|(name, _)| *name == sample.series.name) {
            Some((_, readings)) => readings.push((sample.ts, bits)),
            None => out.push((sample.series.name.clone(), vec![(sample.ts, bits)])),
        }
    }
    out
}

#[test]
fn cbor_round_trip_keeps_every_reading_and_header() {
    let input = batch(&[("a", 1_000, 1.5), ("b", 2_000, -0.1), ("a", 3_500, 1e300), ("a", 2_000, f64::NAN)]);
    let bytes = write_readings(Encoding::Cbor, &header(7), &input).expect("encodable");
    let decoded = read(&bytes).expect("decodable");
    assert_eq!(decoded.header, header(7));
    assert_eq!(per_series(&decoded.batch), per_series(&input));
    assert_eq!(decoded.batch.series()[0].unit.as_deref(), Some("Cel"));
}

#[test]
fn json_round_trip_turns_non_finite_values_into_nan() {
    let input = batch(&[("a", 1, 2.5), ("a", 2, f64::INFINITY)]);
    let bytes = write_readings(Encoding::Json, &header(1), &input).expect("encodable");
    let text = std::str::from_utf8(&bytes).expect("JSON is UTF-8");
    assert!(text.contains("\"values\":[2.5,null]"), "{text}");
    let decoded = read(&bytes).expect("decodable");
    assert_eq!(decoded.batch.values()[0], 2.5);
    assert!(decoded.batch.values()[1].is_nan());
}

#[test]
fn encoded_record_matches_the_documented_cddl() {
    let schema = include_str!("../../docs/batch.cddl");
    let mut input = batch(&[("plant1/boiler/temp", 1_700_000_000_000_000_000, 21.5), ("p", 5, 1013.25)]);
    let mut builder = BatchBuilder::new();
    builder.extend(&input);
    let tagged = Series { name: "tagged".into(), unit: None, tags: vec![("site".into(), "north".into())] };
    let index = builder.intern(&tagged);
    builder.push(index, 10, 0.1);
    builder.push(index, 20, 0.2);
    input = builder.finish();
    let bytes = write_readings(Encoding::Cbor, &header(3), &input).expect("encodable");
    cddl::validate_cbor_from_slice(schema, &bytes, None).expect("the encoder's output follows docs/batch.cddl");
}

/// A coarsened record of two series and a drop marker, as the outbox writes them.
fn summaries() -> (Record, Record) {
    let second = 1_000_000_000;
    let window = |start: Nanos, count: u64, sum: f64| Window { start, count, sum, min: -1.5, max: 30.25, m2: 0.75 };
    let span = Span {
        first_seq: 3,
        last_seq: 9,
        records: 7,
        readings: 9,
        earliest: Some(1_700_000_000 * second),
        latest: Some(1_700_000_600 * second),
        first_encoded_at: 1_700_000_001 * second,
    };
    let coarsened = Record {
        header: header(3),
        batch: Batch::new(),
        aggregates: vec![
            AggregateSeries {
                series: Series::named("plant1/boiler/temp").with_unit("Cel"),
                width: 60 * second as u64,
                windows: vec![window(1_699_999_980 * second, 4, 80.5), window(1_700_000_580 * second, 3, f64::NAN)],
            },
            AggregateSeries {
                series: Series { name: "p".into(), unit: None, tags: vec![("site".into(), "north".into())] },
                width: 60 * second as u64,
                windows: vec![window(1_700_000_040 * second, 2, 1.0)],
            },
        ],
        windows: Vec::new(),
        coarsened: Some(Coarsened { span: span.clone(), width: 60 * second as u64 }),
        dropped: None,
    };
    let marker = Record {
        header: header(10),
        batch: Batch::new(),
        aggregates: Vec::new(),
        windows: Vec::new(),
        coarsened: None,
        dropped: Some(Span { first_seq: 10, last_seq: 12, earliest: None, latest: None, ..span }),
    };
    (coarsened, marker)
}

/// Equality that treats NaN statistics as equal.
fn same_record(a: &Record, b: &Record) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

#[test]
fn coarsened_records_and_drop_markers_round_trip_in_both_encodings() {
    let (coarsened, marker) = summaries();
    for record in [&coarsened, &marker] {
        let cbor = write(Encoding::Cbor, record).expect("encodable");
        assert!(same_record(&read(&cbor).expect("decodable CBOR"), record), "CBOR round trip of {record:?}");
        let json = write(Encoding::Json, record).expect("encodable");
        let from_json = read(&json).expect("decodable JSON");
        assert_eq!(from_json.coarsened, record.coarsened);
        assert_eq!(from_json.dropped, record.dropped);
        assert_eq!(from_json.aggregates.len(), record.aggregates.len());
    }
    assert_eq!(coarsened.kind(), RecordKind::Coarsened { width: 60_000_000_000 });
    assert_eq!(marker.kind(), RecordKind::Dropped);
    assert_eq!(coarsened.span().records, 7, "a summary's span is the span it carries");
}

#[test]
fn coarsened_records_and_drop_markers_match_the_documented_cddl() {
    let schema = include_str!("../../docs/batch.cddl");
    let (coarsened, marker) = summaries();
    for record in [coarsened, marker] {
        let bytes = write(Encoding::Cbor, &record).expect("encodable");
        cddl::validate_cbor_from_slice(schema, &bytes, None)
            .unwrap_or_else(|e| panic!("{:?} does not follow docs/batch.cddl: {e}", record.kind()));
    }
}

#[test]
fn regular_series_encode_in_a_few_bytes_per_reading() {
    // 600 readings one second apart, values with one decimal between 20 and 30 (exact in f32).
    let readings: Vec<(&str, Nanos, f64)> = (0..600)
        .map(|i| {
            (
                "plant1/boiler/3/temperature",
                1_700_000_000_000_000_000 + i * 1_000_000_000,
                f64::from(200 + (i % 100) as i32) / 8.0,
            )
        })
        .collect();
    let bytes = write_readings(Encoding::Cbor, &header(1), &batch(&readings)).expect("encodable");
    let per_reading = bytes.len() as f64 / readings.len() as f64;
    // dt = 1 tick of 1 s (1 byte) + a half float (3 bytes) per reading, plus the envelope.
    assert!(per_reading < 4.2, "{per_reading} bytes per reading ({} bytes)", bytes.len());
}

#[test]
fn refuses_other_versions_and_broken_input() {
    let mut other_version = Vec::new();
    let mut e = Encoder::new(&mut other_version);
    e.map(1).and_then(|e| e.u8(0)?.u8(3)).expect("encoding to a Vec");
    let err = read(&other_version).expect_err("version 3");
    assert!(err.to_string().contains("version 3 is not supported"), "{err}");

    let good = write_readings(Encoding::Cbor, &header(1), &batch(&[("a", 1, 1.0)])).expect("encodable");
    assert!(matches!(read(&good[..good.len() - 1]), Err(ReadError::Syntax { .. })));
}

#[test]
fn time_spans_beyond_i64_are_refused_not_panicked() {
    let err = write_readings(Encoding::Cbor, &header(1), &batch(&[("a", i64::MIN, 1.0), ("a", i64::MAX, 2.0)]))
        .expect_err("the delta does not fit in i64 nanoseconds");
    assert!(matches!(err, WriteError::TimeSpan { .. }));
}

fn arbitrary_batch() -> impl Strategy<Value = Batch> {
    let reading = (
        prop::sample::select(vec!["a", "b/c", "d"]),
        -4_000_000_000_000_000_000i64..4_000_000_000_000_000_000,
        prop_oneof![any::<f64>(), (-1000i32..1000).prop_map(|v| f64::from(v) / 4.0)],
    );
    prop::collection::vec(reading, 1..200).prop_map(|readings| batch(&readings))
}

proptest! {
    #[test]
    fn any_batch_round_trips_through_cbor(input in arbitrary_batch(), seq in 1u64..u64::MAX) {
        let decoded = read(&write_readings(Encoding::Cbor, &header(seq), &input).expect("timestamps within ±4e18 ns")).expect("decodable");
        prop_assert_eq!(decoded.header.seq, seq);
        prop_assert_eq!(per_series(&decoded.batch), per_series(&input));
    }
}

/// A record of window emissions as the window stage produces them: a window, its correction, and
/// a retracted session.
fn windowed() -> Record {
    use weir_window::event_time::{WindowKind, WindowSpec, Windows};
    let second = 1_000_000_000;
    let spec = WindowSpec {
        kind: WindowKind::Session { gap: 5 * second as u64 },
        allowed_lateness: 60 * second as u64,
        idle_timeout: u64::MAX,
        custom_aggregate: false,
    };
    let mut windows = Windows::default();
    for ts in [0, 8, 20] {
        windows.add(&spec, "s", ts * second, ts as f64 + 0.5, 0).expect("in time");
    }
    let mut results = windows.flush(&spec, 0);
    windows.add(&spec, "s", 4 * second, 4.0, 1).expect("within the lateness");
    results.extend(windows.flush(&spec, 1));
    assert!(results.iter().any(|r| r.retracted), "the late reading joins two sessions");
    Record {
        header: header(5),
        batch: Batch::new(),
        aggregates: Vec::new(),
        windows: vec![WindowSeries {
            series: Series::named("s").with_unit("Cel"),
            windows: results.iter().map(WindowValue::of).collect(),
        }],
        coarsened: None,
        dropped: None,
    }
}

#[test]
fn window_emissions_round_trip_in_both_encodings_and_match_the_cddl() {
    let record = windowed();
    let cbor = write(Encoding::Cbor, &record).expect("encodable");
    assert!(same_record(&read(&cbor).expect("decodable CBOR"), &record), "CBOR round trip");
    let schema = include_str!("../../docs/batch.cddl");
    cddl::validate_cbor_from_slice(schema, &cbor, None).expect("window blocks follow docs/batch.cddl");
    let json = write(Encoding::Json, &record).expect("encodable");
    let from_json = read(&json).expect("decodable JSON");
    let counted = |r: &Record| -> Vec<(Nanos, u32, u64, Sketch)> {
        r.windows[0].windows.iter().map(|w| (w.key, w.revision, w.stats.count, w.sketch.clone())).collect()
    };
    assert_eq!(counted(&from_json), counted(&record));
    let retracted = record.windows[0].windows.iter().find(|w| w.stats.count == 0).expect("a retracted session");
    assert!(retracted.first.is_none() && retracted.sketch.is_none() && retracted.revision == 1);
}

#[test]
fn custom_aggregates_round_trip_in_both_encodings_and_match_the_cddl() {
    let mut record = windowed();
    for (i, window) in record.windows[0].windows.iter_mut().enumerate() {
        window.custom = Some(if window.stats.count == 0 {
            CustomWindow::default()
        } else {
            CustomWindow {
                values: (i != 1).then(|| vec![("above".to_owned(), 1.5), ("n".to_owned(), window.stats.count as f64)]),
                partial: vec![0xa1, i as u8, 0x00],
                missing: i as u64,
            }
        });
    }
    assert!(record.windows[0].windows.iter().any(|w| w.custom.as_ref().is_some_and(|c| c.values.is_none())));
    let cbor = write(Encoding::Cbor, &record).expect("encodable");
    assert!(same_record(&read(&cbor).expect("decodable CBOR"), &record), "CBOR round trip");
    let schema = include_str!("../../docs/batch.cddl");
    cddl::validate_cbor_from_slice(schema, &cbor, None).expect("custom columns follow docs/batch.cddl");
    let json = write(Encoding::Json, &record).expect("encodable");
    let custom =
        |r: &Record| -> Vec<Option<CustomWindow>> { r.windows[0].windows.iter().map(|w| w.custom.clone()).collect() };
    assert_eq!(custom(&read(&json).expect("decodable JSON")), custom(&record));
    let without = write(Encoding::Cbor, &windowed()).expect("encodable");
    assert!(read(&without).expect("decodable").windows[0].windows.iter().all(|w| w.custom.is_none()));
}

/// `record` with every sketch replaced by one in DataDog's Java binary encoding, as format
/// version 1 carried them.
fn with_java_sketches(mut record: Record) -> Record {
    for window in &mut record.windows[0].windows {
        if window.sketch.is_none() {
            continue;
        }
        let mut sketch = sketches_ddsketch::DDSketch::new(sketches_ddsketch::Config::new(0.01, 2048, 1e-9));
        sketch.add(window.stats.max);
        window.sketch = Sketch::JavaBinary(sketch.to_java_bytes());
    }
    record
}

#[test]
fn sketches_of_version_1_records_keep_their_column_when_written_again() {
    // A version 1 record in its JSON form: the sketch under "sketch", Java binary, as hex.
    let v1 = with_java_sketches(windowed());
    let mut json: serde_json::Value =
        serde_json::from_slice(&write(Encoding::Json, &v1).expect("encodable")).expect("JSON");
    json["version"] = 1.into();
    json["windows"][0].as_object_mut().expect("a window block").remove("sketch_proto");
    let read_v1 = read(&serde_json::to_vec(&json).expect("JSON")).expect("a version 1 record reads");
    assert!(same_record(&read_v1, &v1));
    assert!(read_v1.windows[0].windows.iter().any(|w| matches!(w.sketch, Sketch::JavaBinary(_))));

    // Written again (a coarsened record carries windows over), in a block with a new window.
    let mut mixed = read_v1;
    let new = windowed().windows[0].windows[0].clone();
    assert!(matches!(new.sketch, Sketch::Protobuf(_)));
    mixed.windows[0].windows.push(new);
    let cbor = write(Encoding::Cbor, &mixed).expect("encodable");
    let schema = include_str!("../../docs/batch.cddl");
    cddl::validate_cbor_from_slice(schema, &cbor, None).expect("both sketch columns follow docs/batch.cddl");
    let again = read(&cbor).expect("decodable");
    let sketches = |r: &Record| -> Vec<Sketch> { r.windows[0].windows.iter().map(|w| w.sketch.clone()).collect() };
    assert_eq!(sketches(&again), sketches(&mixed));
    assert_eq!(sketches(&read(&write(Encoding::Json, &mixed).expect("encodable")).expect("JSON")), sketches(&mixed));
}

#[test]
fn a_window_record_s_sketch_gives_quantiles_within_one_percent() {
    let readings: Vec<f64> = (0..2000).map(|i| 20.0 + f64::from(i % 97) * 0.31 - f64::from(i % 13)).collect();
    let mut aggregate = weir_window::aggregate::Aggregate::default();
    for (ts, value) in readings.iter().enumerate() {
        aggregate.add(ts as i64, *value);
    }
    let value = WindowValue {
        key: 0,
        start: 0,
        end: 60_000_000_000,
        revision: 0,
        stats: Window { start: 0, ..aggregate.moments().expect("readings") },
        first: aggregate.first(),
        last: aggregate.last(),
        sketch: Sketch::of(&aggregate),
        custom: None,
    };
    let record = Record {
        windows: vec![WindowSeries { series: Series::named("t"), windows: vec![value] }],
        ..Record::of_readings(header(1), Batch::new())
    };
    let read_back = read(&write(Encoding::Cbor, &record).expect("encodable")).expect("decodable");
    let mut sorted = readings;
    sorted.sort_by(f64::total_cmp);
    for q in [0.05, 0.5, 0.9, 0.99] {
        let exact = sorted[(q * (sorted.len() - 1) as f64) as usize];
        let estimate = read_back.windows[0].windows[0].sketch.quantile(q).expect("reads").expect("not empty");
        assert!((estimate - exact).abs() <= 0.01 * exact.abs(), "q {q}: {estimate} vs {exact}");
    }
}
