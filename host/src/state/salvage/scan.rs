//! Reading outbox records straight out of a damaged file's bytes, whatever became of redb's
//! tree structure above them.
//!
//! redb keeps an outbox record's body contiguous in a leaf page (a leaf of its own, of
//! contiguous pages, when it is larger than one page). So at every offset where a CBOR record
//! envelope can start — a map of 6 to 10 entries, then key 0 with format version 1, then key 1
//! with a text string (the gateway) — the scan decodes one CBOR item with
//! [`weir_record::read_cbor_prefix`] (which stops after the item, rejects anything malformed and
//! allocates in proportion to the bytes it is given) and keeps it if it decodes as a record
//! that names a stream and a seq (and, for a summary, a span starting at that seq).
//!
//! What it finds includes stale copies: redb is copy-on-write, so freed pages can still hold
//! records that were confirmed and deleted, or older versions of a summary. Copies the caller
//! already knows to be stale (below a stream's outbox floor) are only counted; sorting out the
//! rest is the caller's job (see `salvage`). A flipped bit inside a float keeps a record decodable: the
//! record format has no checksum, so such a record is taken as it reads, like any record redb
//! itself returns without verifying its page.
//!
//! Bounds: the file is read in chunks of [`CHUNK`] bytes plus [`MAX_RECORD`] bytes of overlap,
//! so reading takes no more than their sum whatever the file's size; what is kept is one copy
//! of each distinct record that is not known to be stale (about the outbox's size, plus stale
//! copies when no floor is known). A record longer than [`MAX_RECORD`] is not found.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use weir_record::{FORMAT_VERSION, OLDEST_FORMAT_VERSION, Record};

/// Bytes of the file scanned per read.
const CHUNK: usize = 8 << 20;
/// The longest record the scan finds.
pub(super) const MAX_RECORD: usize = 8 << 20;

/// One record found, with the number of identical copies seen.
pub(super) struct Found {
    pub(super) body: Vec<u8>,
    pub(super) record: Record,
    pub(super) copies: u32,
}

/// What the scan found.
#[derive(Default)]
pub(super) struct Scanned {
    /// Every distinct record body found, by (stream, seq); identical copies are counted once.
    pub(super) records: BTreeMap<(String, u64), Vec<Found>>,
    /// Per stream: copies found of stale records, not kept.
    pub(super) stale: BTreeMap<String, u64>,
}

/// Scans the file at `path` for outbox records.
/// Copies of records `stale(stream, seq)` names are counted, not kept (memory stays in
/// proportion to the outbox, not to the file's history).
pub(super) fn scan(path: &Path, stale: impl Fn(&str, u64) -> bool) -> std::io::Result<Scanned> {
    let mut file = std::fs::File::open(path)?;
    let length = file.metadata()?.len();
    let mut found = Scanned::default();
    let mut buffer = Vec::new();
    let mut start = 0u64;
    while start < length {
        buffer.clear();
        file.seek(SeekFrom::Start(start))?;
        (&mut file).take((CHUNK + MAX_RECORD) as u64).read_to_end(&mut buffer)?;
        scan_bytes(&buffer, CHUNK.min(buffer.len()), &stale, &mut found);
        start += CHUNK as u64;
    }
    Ok(found)
}

/// Scans the records that start in `bytes[..starts]` (and may end anywhere in `bytes`).
pub(super) fn scan_bytes(bytes: &[u8], starts: usize, stale: &impl Fn(&str, u64) -> bool, found: &mut Scanned) {
    for at in 0..starts {
        if !envelope_starts(&bytes[at..]) {
            continue;
        }
        let window = &bytes[at..bytes.len().min(at + MAX_RECORD)];
        let Ok((record, length)) = weir_record::read_cbor_prefix(window) else { continue };
        if !plausible(&record) {
            continue;
        }
        let body = &window[..length];
        if stale(&record.header.stream, record.header.seq) {
            *found.stale.entry(record.header.stream).or_default() += 1;
            continue;
        }
        let copies = found.records.entry((record.header.stream.clone(), record.header.seq)).or_default();
        match copies.iter_mut().find(|f| f.body == body) {
            Some(same) => same.copies += 1,
            None => copies.push(Found { body: body.to_vec(), record, copies: 1 }),
        }
    }
}

/// A CBOR map of 6..=10 entries, key 0 = a version the reader takes, key 1 = a text string.
fn envelope_starts(bytes: &[u8]) -> bool {
    matches!(bytes, [0xa6..=0xaa, 0x00, version, 0x01, 0x60..=0x7b, ..]
        if (OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&u64::from(*version)))
}

/// Names a stream and a seq, and a summary's span starts at that seq.
fn plausible(record: &Record) -> bool {
    let header = &record.header;
    let span = record.span();
    !header.stream.is_empty() && header.seq > 0 && span.first_seq == header.seq && span.last_seq >= span.first_seq
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Series};
    use crate::config::Encoding;
    use weir_record::RecordHeader;

    fn body(stream: &str, seq: u64) -> Vec<u8> {
        let mut batch = BatchBuilder::new();
        let series = batch.intern(&Series::named("t"));
        for i in 0..5 {
            batch.push(series, i * 1_000_000_000, 20.5 + i as f64);
        }
        let header = RecordHeader { gateway: "gw".into(), stream: stream.into(), seq, encoded_at: 7 };
        weir_record::write_readings(Encoding::Cbor, &header, &batch.finish()).expect("encode")
    }

    /// Whole records are found wherever they lie, counted per identical copy; a cut-off one,
    /// one with a broken envelope and plain noise are not.
    #[test]
    fn finds_every_whole_record_and_nothing_else() {
        let (a1, a2, b9) = (body("a", 1), body("a", 2), body("b", 9));
        let mut bytes = vec![0xa7, 0x00, 0x01, 0x01, 0x62, b'g'];
        bytes.extend_from_slice(&a1);
        bytes.extend_from_slice(&a2);
        bytes.extend_from_slice(&[0u8; 17]);
        bytes.extend_from_slice(&a1);
        bytes.extend_from_slice(&b9[..b9.len() - 3]);
        let mut broken = body("b", 10);
        broken[2] = 3; // format version 3
        bytes.extend_from_slice(&broken);
        let mut broken = body("b", 11);
        let end = broken.len();
        broken[end - 16..].fill(0xff); // a break code inside the readings
        bytes.extend_from_slice(&broken);
        let mut found = Scanned::default();
        scan_bytes(&bytes, bytes.len(), &|_: &str, _| false, &mut found);
        let keys: Vec<(&str, u64, u32)> = found
            .records
            .iter()
            .flat_map(|((s, seq), f)| f.iter().map(move |f| (s.as_str(), *seq, f.copies)))
            .collect();
        assert_eq!(keys, vec![("a", 1, 2), ("a", 2, 1)]);
        assert_eq!(found.records[&("a".to_owned(), 2)][0].body, a2);
        let mut without_stale = Scanned::default();
        scan_bytes(&bytes, bytes.len(), &|stream: &str, seq| stream == "a" && seq < 2, &mut without_stale);
        assert_eq!(without_stale.records.keys().collect::<Vec<_>>(), vec![&("a".to_owned(), 2)]);
        assert_eq!(without_stale.stale, BTreeMap::from([("a".to_owned(), 2)]), "both copies of a1, as stale");
    }

    /// A record is found by the chunk it starts in, even when it ends in the next.
    #[test]
    fn records_across_chunk_boundaries_are_found_once() {
        let record = body("a", 3);
        let mut bytes = vec![0u8; 10];
        bytes.extend_from_slice(&record);
        let mut found = Scanned::default();
        let keep_all = |_: &str, _: u64| false;
        scan_bytes(&bytes, 10, &keep_all, &mut found);
        assert!(found.records.is_empty(), "starts after the first chunk");
        scan_bytes(&bytes, 11, &keep_all, &mut found);
        assert_eq!(found.records[&("a".to_owned(), 3)][0].copies, 1);
    }
}
