//! The CBOR form of a record (docs/batch-format.md, docs/batch.cddl): integer keys, columns
//! per series, each number in the shortest IEEE float that holds it exactly.
//!
//! **Invariant:** reading allocates at most in proportion to the input (every length is checked
//! against what follows before anything is reserved beyond a small cap) and skips keys it does not
//! know, so later versions can add keys.

use std::collections::BTreeMap;

use minicbor::data::Type;
use minicbor::{Decoder, Encoder};

use crate::FORMAT_VERSION;
use crate::batch::{Nanos, Series};
use crate::blocks::{AggregateBlock, Parts, ReadError, SeriesBlock, Summaries, WindowBlock};
use crate::model::{Coarsened, RecordHeader, Span};

/// CBOR envelope keys.
mod key {
    pub const VERSION: u8 = 0;
    pub const GATEWAY: u8 = 1;
    pub const STREAM: u8 = 2;
    pub const SEQ: u8 = 3;
    pub const ENCODED_AT: u8 = 4;
    pub const SERIES: u8 = 5;
    pub const AGGREGATES: u8 = 6;
    pub const COARSENED: u8 = 7;
    pub const DROPPED: u8 = 8;
    pub const WINDOWS: u8 = 9;
}

/// Keys of a span map (and of the coarsened marker, which adds `WIDTH`).
mod span_key {
    pub const FIRST_SEQ: u64 = 0;
    pub const LAST_SEQ: u64 = 1;
    pub const RECORDS: u64 = 2;
    pub const READINGS: u64 = 3;
    pub const EARLIEST: u64 = 4;
    pub const LATEST: u64 = 5;
    pub const FIRST_ENCODED_AT: u64 = 6;
    pub const WIDTH: u64 = 7;
}

/// Keys of an aggregate block's statistics map.
mod stat_key {
    pub const COUNT: u64 = 0;
    pub const SUM: u64 = 1;
    pub const MIN: u64 = 2;
    pub const MAX: u64 = 3;
    pub const M2: u64 = 4;
}

/// Keys of a window block's column map.
mod window_key {
    pub const KEY: u64 = 0;
    pub const START: u64 = 1;
    pub const END: u64 = 2;
    pub const REVISION: u64 = 3;
    pub const COUNT: u64 = 4;
    pub const SUM: u64 = 5;
    pub const MIN: u64 = 6;
    pub const MAX: u64 = 7;
    pub const M2: u64 = 8;
    pub const FIRST_TS: u64 = 9;
    pub const FIRST: u64 = 10;
    pub const LAST_TS: u64 = 11;
    pub const LAST: u64 = 12;
    /// DataDog's Java binary sketch: written only for sketches read from format version 1.
    pub const SKETCH_JAVA: u64 = 13;
    pub const CUSTOM: u64 = 14;
    pub const CUSTOM_PARTIAL: u64 = 15;
    pub const CUSTOM_MISSING: u64 = 16;
    /// The DDSketch protobuf sketch.
    pub const SKETCH_PROTO: u64 = 17;
}

type CborResult = Result<(), minicbor::encode::Error<std::convert::Infallible>>;

/// The CBOR form of `header` and `summaries`.
pub(crate) fn write(header: &RecordHeader, summaries: &Summaries<'_>) -> Vec<u8> {
    let &Summaries { ref blocks, ref aggregates, ref windows, coarsened, dropped } = summaries;
    let mut buffer = Vec::with_capacity(
        64 + blocks.iter().map(|b| 16 + b.name.len() + 8 * b.values.len()).sum::<usize>()
            + aggregates.iter().map(|a| 16 + a.name.len() + 40 * a.count.len()).sum::<usize>()
            + windows.iter().map(|w| 16 + w.name.len() + 120 * w.count.len()).sum::<usize>(),
    );
    let mut e = Encoder::new(&mut buffer);
    let written: CborResult = (|| {
        let optional = u64::from(!aggregates.is_empty())
            + u64::from(!windows.is_empty())
            + u64::from(coarsened.is_some())
            + u64::from(dropped.is_some());
        e.map(6 + optional)?;
        e.u8(key::VERSION)?.u64(FORMAT_VERSION)?;
        e.u8(key::GATEWAY)?.str(&header.gateway)?;
        e.u8(key::STREAM)?.str(&header.stream)?;
        e.u8(key::SEQ)?.u64(header.seq)?;
        e.u8(key::ENCODED_AT)?.i64(header.encoded_at)?;
        e.u8(key::SERIES)?.array(blocks.len() as u64)?;
        for block in blocks {
            e.array(7)?;
            write_series(&mut e, &block.name, block.unit.as_deref(), &block.tags)?;
            e.i64(block.t0)?.i64(block.tick)?;
            e.array(block.dt.len() as u64)?;
            for dt in &block.dt {
                e.i64(*dt)?;
            }
            write_floats(&mut e, &block.values)?;
        }
        if !aggregates.is_empty() {
            e.u8(key::AGGREGATES)?.array(aggregates.len() as u64)?;
            for block in aggregates {
                e.array(7)?;
                write_series(&mut e, &block.name, block.unit.as_deref(), &block.tags)?;
                e.u64(block.width)?.i64(block.start0)?;
                e.array(block.dstart.len() as u64)?;
                for d in &block.dstart {
                    e.u64(*d)?;
                }
                e.map(5)?;
                e.u64(stat_key::COUNT)?.array(block.count.len() as u64)?;
                for c in &block.count {
                    e.u64(*c)?;
                }
                for (stat, column) in [
                    (stat_key::SUM, &block.sum),
                    (stat_key::MIN, &block.min),
                    (stat_key::MAX, &block.max),
                    (stat_key::M2, &block.m2),
                ] {
                    e.u64(stat)?;
                    write_floats(&mut e, column)?;
                }
            }
        }
        if !windows.is_empty() {
            e.u8(key::WINDOWS)?.array(windows.len() as u64)?;
            for block in windows {
                write_window_block(&mut e, block)?;
            }
        }
        if let Some(coarsened) = coarsened {
            e.u8(key::COARSENED)?;
            write_span(&mut e, &coarsened.span, Some(coarsened.width))?;
        }
        if let Some(dropped) = dropped {
            e.u8(key::DROPPED)?;
            write_span(&mut e, dropped, None)?;
        }
        Ok(())
    })();
    written.expect("writing CBOR into a Vec cannot fail");
    buffer
}

fn write_series(
    e: &mut Encoder<&mut Vec<u8>>,
    name: &str,
    unit: Option<&str>,
    tags: &[(String, String)],
) -> CborResult {
    e.str(name)?;
    match unit {
        Some(unit) => e.str(unit)?,
        None => e.null()?,
    };
    e.map(tags.len() as u64)?;
    for (k, v) in tags {
        e.str(k)?.str(v)?;
    }
    Ok(())
}

fn write_window_block(e: &mut Encoder<&mut Vec<u8>>, block: &WindowBlock) -> CborResult {
    e.array(4)?;
    write_series(e, &block.name, block.unit.as_deref(), &block.tags)?;
    let has_custom = !block.custom_partial.is_empty();
    let has_java_sketches = !block.sketch_java.is_empty();
    e.map(14 + u64::from(has_java_sketches) + if has_custom { 3 } else { 0 })?;
    for (k, column) in [(window_key::KEY, &block.key), (window_key::START, &block.start), (window_key::END, &block.end)]
    {
        e.u64(k)?.array(column.len() as u64)?;
        for t in column {
            e.i64(*t)?;
        }
    }
    e.u64(window_key::REVISION)?.array(block.revision.len() as u64)?;
    for r in &block.revision {
        e.u32(*r)?;
    }
    e.u64(window_key::COUNT)?.array(block.count.len() as u64)?;
    for c in &block.count {
        e.u64(*c)?;
    }
    for (k, column) in [
        (window_key::SUM, &block.sum),
        (window_key::MIN, &block.min),
        (window_key::MAX, &block.max),
        (window_key::M2, &block.m2),
    ] {
        e.u64(k)?;
        write_floats(e, column)?;
    }
    for (k_ts, times, k_value, values) in [
        (window_key::FIRST_TS, &block.first_ts, window_key::FIRST, &block.first),
        (window_key::LAST_TS, &block.last_ts, window_key::LAST, &block.last),
    ] {
        e.u64(k_ts)?.array(times.len() as u64)?;
        for t in times {
            match t {
                Some(t) => e.i64(*t)?,
                None => e.null()?,
            };
        }
        e.u64(k_value)?;
        write_floats(e, values)?;
    }
    e.u64(window_key::SKETCH_PROTO)?.array(block.sketch_proto.len() as u64)?;
    for sketch in &block.sketch_proto {
        e.bytes(sketch)?;
    }
    if has_java_sketches {
        e.u64(window_key::SKETCH_JAVA)?.array(block.sketch_java.len() as u64)?;
        for sketch in &block.sketch_java {
            e.bytes(sketch)?;
        }
    }
    if has_custom {
        e.u64(window_key::CUSTOM)?.array(block.custom.len() as u64)?;
        for values in &block.custom {
            match values {
                None => {
                    e.null()?;
                }
                Some(values) => {
                    e.map(values.len() as u64)?;
                    for (name, value) in values {
                        e.str(name)?;
                        write_shortest_float(e, value.unwrap_or(f64::NAN))?;
                    }
                }
            }
        }
        e.u64(window_key::CUSTOM_PARTIAL)?.array(block.custom_partial.len() as u64)?;
        for partial in &block.custom_partial {
            e.bytes(partial)?;
        }
        e.u64(window_key::CUSTOM_MISSING)?.array(block.custom_missing.len() as u64)?;
        for missing in &block.custom_missing {
            e.u64(*missing)?;
        }
    }
    Ok(())
}

fn write_floats(e: &mut Encoder<&mut Vec<u8>>, values: &[Option<f64>]) -> CborResult {
    e.array(values.len() as u64)?;
    for value in values {
        write_shortest_float(e, value.unwrap_or(f64::NAN))?;
    }
    Ok(())
}

fn write_span(e: &mut Encoder<&mut Vec<u8>>, span: &Span, width: Option<u64>) -> CborResult {
    e.map(7 + u64::from(width.is_some()))?;
    e.u64(span_key::FIRST_SEQ)?.u64(span.first_seq)?;
    e.u64(span_key::LAST_SEQ)?.u64(span.last_seq)?;
    e.u64(span_key::RECORDS)?.u64(span.records)?;
    e.u64(span_key::READINGS)?.u64(span.readings)?;
    for (k, time) in [(span_key::EARLIEST, span.earliest), (span_key::LATEST, span.latest)] {
        e.u64(k)?;
        match time {
            Some(t) => e.i64(t)?,
            None => e.null()?,
        };
    }
    e.u64(span_key::FIRST_ENCODED_AT)?.i64(span.first_encoded_at)?;
    if let Some(width) = width {
        e.u64(span_key::WIDTH)?.u64(width)?;
    }
    Ok(())
}

/// Writes `value` as the shortest IEEE float that represents it exactly.
fn write_shortest_float<W: minicbor::encode::Write>(
    e: &mut Encoder<W>,
    value: f64,
) -> Result<(), minicbor::encode::Error<W::Error>> {
    let single = value as f32;
    if f64::from(single) == value || value.is_nan() {
        let half = half::f16::from_f32(single);
        if half.to_f32() == single || value.is_nan() {
            e.f16(single)?;
        } else {
            e.f32(single)?;
        }
    } else {
        e.f64(value)?;
    }
    Ok(())
}

/// The parts of the CBOR record at the start of `bytes`, and its length.
pub(crate) fn read(bytes: &[u8]) -> Result<(Parts, usize), ReadError> {
    let syntax = |e: minicbor::decode::Error| ReadError::Syntax { syntax: "CBOR", reason: e.to_string() };
    let format = |reason: &str| ReadError::Format { reason: reason.to_owned() };
    let mut d = Decoder::new(bytes);
    let entries = d.map().map_err(syntax)?.ok_or_else(|| format("envelope must be a definite-length map"))?;
    let (mut version, mut gateway, mut stream, mut seq, mut encoded_at, mut blocks) =
        (None, None, None, None, None, None);
    let (mut aggregates, mut windows, mut coarsened, mut dropped) = (Vec::new(), Vec::new(), None, None);
    for _ in 0..entries {
        match d.u64().map_err(syntax)? {
            k if k == u64::from(key::VERSION) => version = Some(d.u64().map_err(syntax)?),
            k if k == u64::from(key::GATEWAY) => gateway = Some(d.str().map_err(syntax)?.to_owned()),
            k if k == u64::from(key::STREAM) => stream = Some(d.str().map_err(syntax)?.to_owned()),
            k if k == u64::from(key::SEQ) => seq = Some(d.u64().map_err(syntax)?),
            k if k == u64::from(key::ENCODED_AT) => encoded_at = Some(d.i64().map_err(syntax)?),
            k if k == u64::from(key::SERIES) => blocks = Some(read_series_blocks(&mut d).map_err(syntax)?),
            k if k == u64::from(key::AGGREGATES) => aggregates = read_aggregate_blocks(&mut d).map_err(syntax)?,
            k if k == u64::from(key::WINDOWS) => windows = read_window_blocks(&mut d).map_err(syntax)?,
            k if k == u64::from(key::COARSENED) => {
                let (span, width) = read_span(&mut d).map_err(syntax)?;
                let width = width.ok_or_else(|| format("the coarsened marker (key 7) has no window width"))?;
                coarsened = Some(Coarsened { span, width });
            }
            k if k == u64::from(key::DROPPED) => dropped = Some(read_span(&mut d).map_err(syntax)?.0),
            _ => d.skip().map_err(syntax)?, // keys from later versions
        }
    }
    crate::check_version(version.ok_or_else(|| format("format version (key 0) is missing"))?)?;
    let header = RecordHeader {
        gateway: gateway.ok_or_else(|| format("gateway (key 1) is missing"))?,
        stream: stream.ok_or_else(|| format("stream (key 2) is missing"))?,
        seq: seq.ok_or_else(|| format("seq (key 3) is missing"))?,
        encoded_at: encoded_at.ok_or_else(|| format("encoded-at (key 4) is missing"))?,
    };
    let blocks = blocks.ok_or_else(|| format("series (key 5) is missing"))?;
    Ok((Parts { header, blocks, aggregates, windows, coarsened, dropped }, d.position()))
}

fn definite(len: Option<u64>) -> Result<u64, minicbor::decode::Error> {
    len.ok_or_else(|| minicbor::decode::Error::message("arrays and maps must have a definite length"))
}

/// Name, unit and tags: the first three elements of both kinds of block.
fn read_series(d: &mut Decoder<'_>) -> Result<Series, minicbor::decode::Error> {
    let name = d.str()?.to_owned();
    let unit = if d.datatype()? == Type::Null {
        d.null()?;
        None
    } else {
        Some(d.str()?.to_owned())
    };
    let tag_count = definite(d.map()?)?;
    let mut tags = Vec::with_capacity(tag_count.min(64) as usize);
    for _ in 0..tag_count {
        tags.push((d.str()?.to_owned(), d.str()?.to_owned()));
    }
    Ok(Series { name, unit, tags })
}

fn read_floats(d: &mut Decoder<'_>) -> Result<Vec<Option<f64>>, minicbor::decode::Error> {
    let count = definite(d.array()?)?;
    (0..count).map(|_| d.f64().map(Some)).collect()
}

fn read_series_blocks(d: &mut Decoder<'_>) -> Result<Vec<SeriesBlock>, minicbor::decode::Error> {
    let count = definite(d.array()?)?;
    let mut blocks = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        if definite(d.array()?)? != 7 {
            return Err(minicbor::decode::Error::message("a series block has 7 elements"));
        }
        let Series { name, unit, tags } = read_series(d)?;
        let t0 = d.i64()?;
        let tick = d.i64()?;
        let dt_count = definite(d.array()?)?;
        let dt = (0..dt_count).map(|_| d.i64()).collect::<Result<Vec<_>, _>>()?;
        let values = read_floats(d)?;
        blocks.push(SeriesBlock { name, unit, tags, t0, tick, dt, values });
    }
    Ok(blocks)
}

fn read_aggregate_blocks(d: &mut Decoder<'_>) -> Result<Vec<AggregateBlock>, minicbor::decode::Error> {
    let count = definite(d.array()?)?;
    let mut blocks = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        if definite(d.array()?)? != 7 {
            return Err(minicbor::decode::Error::message("an aggregate block has 7 elements"));
        }
        let Series { name, unit, tags } = read_series(d)?;
        let mut block = AggregateBlock { name, unit, tags, ..AggregateBlock::default() };
        block.width = d.u64()?;
        block.start0 = d.i64()?;
        let dstart_count = definite(d.array()?)?;
        block.dstart = (0..dstart_count).map(|_| d.u64()).collect::<Result<_, _>>()?;
        for _ in 0..definite(d.map()?)? {
            match d.u64()? {
                stat_key::COUNT => {
                    let n = definite(d.array()?)?;
                    block.count = (0..n).map(|_| d.u64()).collect::<Result<_, _>>()?;
                }
                stat_key::SUM => block.sum = read_floats(d)?,
                stat_key::MIN => block.min = read_floats(d)?,
                stat_key::MAX => block.max = read_floats(d)?,
                stat_key::M2 => block.m2 = read_floats(d)?,
                _ => d.skip()?, // statistics from later versions
            }
        }
        blocks.push(block);
    }
    Ok(blocks)
}

fn read_window_blocks(d: &mut Decoder<'_>) -> Result<Vec<WindowBlock>, minicbor::decode::Error> {
    let count = definite(d.array()?)?;
    let mut blocks = Vec::with_capacity(count.min(4096) as usize);
    let times = |d: &mut Decoder<'_>| -> Result<Vec<Nanos>, minicbor::decode::Error> {
        let n = definite(d.array()?)?;
        (0..n).map(|_| d.i64()).collect()
    };
    let optional_times = |d: &mut Decoder<'_>| -> Result<Vec<Option<Nanos>>, minicbor::decode::Error> {
        let n = definite(d.array()?)?;
        (0..n)
            .map(|_| {
                if d.datatype()? == Type::Null {
                    d.null()?;
                    Ok(None)
                } else {
                    d.i64().map(Some)
                }
            })
            .collect()
    };
    for _ in 0..count {
        if definite(d.array()?)? != 4 {
            return Err(minicbor::decode::Error::message("a window block has 4 elements"));
        }
        let Series { name, unit, tags } = read_series(d)?;
        let mut block = WindowBlock { name, unit, tags, ..WindowBlock::default() };
        for _ in 0..definite(d.map()?)? {
            match d.u64()? {
                window_key::KEY => block.key = times(d)?,
                window_key::START => block.start = times(d)?,
                window_key::END => block.end = times(d)?,
                window_key::REVISION => {
                    let n = definite(d.array()?)?;
                    block.revision = (0..n).map(|_| d.u32()).collect::<Result<_, _>>()?;
                }
                window_key::COUNT => {
                    let n = definite(d.array()?)?;
                    block.count = (0..n).map(|_| d.u64()).collect::<Result<_, _>>()?;
                }
                window_key::SUM => block.sum = read_floats(d)?,
                window_key::MIN => block.min = read_floats(d)?,
                window_key::MAX => block.max = read_floats(d)?,
                window_key::M2 => block.m2 = read_floats(d)?,
                window_key::FIRST_TS => block.first_ts = optional_times(d)?,
                window_key::FIRST => block.first = read_floats(d)?,
                window_key::LAST_TS => block.last_ts = optional_times(d)?,
                window_key::LAST => block.last = read_floats(d)?,
                window_key::SKETCH_PROTO => {
                    let n = definite(d.array()?)?;
                    block.sketch_proto = (0..n).map(|_| d.bytes().map(<[u8]>::to_vec)).collect::<Result<_, _>>()?;
                }
                window_key::SKETCH_JAVA => {
                    let n = definite(d.array()?)?;
                    block.sketch_java = (0..n).map(|_| d.bytes().map(<[u8]>::to_vec)).collect::<Result<_, _>>()?;
                }
                window_key::CUSTOM => {
                    let n = definite(d.array()?)?;
                    block.custom = (0..n).map(|_| read_custom_values(d)).collect::<Result<_, _>>()?;
                }
                window_key::CUSTOM_PARTIAL => {
                    let n = definite(d.array()?)?;
                    block.custom_partial = (0..n).map(|_| d.bytes().map(<[u8]>::to_vec)).collect::<Result<_, _>>()?;
                }
                window_key::CUSTOM_MISSING => {
                    let n = definite(d.array()?)?;
                    block.custom_missing = (0..n).map(|_| d.u64()).collect::<Result<_, _>>()?;
                }
                _ => d.skip()?, // columns from later versions
            }
        }
        blocks.push(block);
    }
    Ok(blocks)
}

/// One window's custom values: null, or a map from name to number.
fn read_custom_values(d: &mut Decoder<'_>) -> Result<Option<BTreeMap<String, Option<f64>>>, minicbor::decode::Error> {
    if d.datatype()? == Type::Null {
        d.null()?;
        return Ok(None);
    }
    let n = definite(d.map()?)?;
    let mut values = BTreeMap::new();
    for _ in 0..n {
        let name = d.str()?.to_owned();
        values.insert(name, Some(d.f64()?));
    }
    Ok(Some(values))
}

fn read_span(d: &mut Decoder<'_>) -> Result<(Span, Option<u64>), minicbor::decode::Error> {
    let missing = || minicbor::decode::Error::message("a span needs keys 0 to 6");
    let optional_time = |d: &mut Decoder<'_>| -> Result<Option<Nanos>, minicbor::decode::Error> {
        if d.datatype()? == Type::Null {
            d.null()?;
            Ok(None)
        } else {
            d.i64().map(Some)
        }
    };
    let (mut first_seq, mut last_seq, mut records, mut readings, mut first_encoded_at, mut width) =
        (None, None, None, None, None, None);
    let (mut earliest, mut latest) = (None, None);
    for _ in 0..definite(d.map()?)? {
        match d.u64()? {
            span_key::FIRST_SEQ => first_seq = Some(d.u64()?),
            span_key::LAST_SEQ => last_seq = Some(d.u64()?),
            span_key::RECORDS => records = Some(d.u64()?),
            span_key::READINGS => readings = Some(d.u64()?),
            span_key::EARLIEST => earliest = optional_time(d)?,
            span_key::LATEST => latest = optional_time(d)?,
            span_key::FIRST_ENCODED_AT => first_encoded_at = Some(d.i64()?),
            span_key::WIDTH => width = Some(d.u64()?),
            _ => d.skip()?,
        }
    }
    let span = Span {
        first_seq: first_seq.ok_or_else(missing)?,
        last_seq: last_seq.ok_or_else(missing)?,
        records: records.ok_or_else(missing)?,
        readings: readings.ok_or_else(missing)?,
        earliest,
        latest,
        first_encoded_at: first_encoded_at.ok_or_else(missing)?,
    };
    Ok((span, width))
}
