//! The state store against a real redb file: namespaces, outbox order and reopen, dead-letter
//! capacity, the single-open rule, relaxed durability.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTableMetadata};

use super::*;

fn store(capacity: u64) -> (tempfile::TempDir, StateStore, Committer, JoinHandle<()>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, committer, thread) = open(
        dir.path(),
        StoreOptions { durability: Durability::Sync, dead_letter_capacity: capacity, ..StoreOptions::default() },
    )
    .expect("open");
    (dir, store, committer, thread)
}

fn write(namespace: &str, key: &str, value: Option<&str>) -> StateWrite {
    StateWrite {
        namespace: namespace.into(),
        key: key.as_bytes().to_vec(),
        value: value.map(|v| v.as_bytes().to_vec()),
    }
}

fn letter(reason: &str) -> DeadLetter {
    DeadLetter {
        pipeline: "p".into(),
        stage: DeadLetterStage::Decode,
        reason: reason.into(),
        at: 1,
        content: DeadLetterContent::message("t", &[0xff], 1, 1),
        function: None,
    }
}

#[tokio::test]
async fn function_state_is_namespaced_and_ranged_in_key_order() {
    let (_dir, store, committer, _thread) = store(10);
    let changes = ChangeSet {
        state_writes: vec![
            write("p/a", "k2", Some("2")),
            write("p/a", "k1", Some("1")),
            write("p/ab", "k0", Some("other namespace")),
            write("p/a", "k3", Some("3")),
            write("p/a", "k3", None),
        ],
        ..ChangeSet::default()
    };
    committer.commit(changes).await.expect("commit");
    assert_eq!(store.function_state_get("p/a", b"k1").expect("read"), Some(b"1".to_vec()));
    assert_eq!(store.function_state_get("p/a", b"k3").expect("read"), None, "deleted in the same change set");
    let all = store.function_state_range("p/a", b"", None, 100).expect("read");
    assert_eq!(all, vec![(b"k1".to_vec(), b"1".to_vec()), (b"k2".to_vec(), b"2".to_vec())]);
    let bounded = store.function_state_range("p/a", b"k2", Some(b"k9"), 100).expect("read");
    assert_eq!(bounded.len(), 1);
    assert_eq!(store.function_state_range("p/a", b"", None, 1).expect("read").len(), 1);
}

#[tokio::test]
async fn function_state_usage_follows_inserts_overwrites_and_deletes_and_is_recounted_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let (store, committer, thread) = open(dir.path(), StoreOptions::default()).expect("open");
        let changes = ChangeSet {
            state_writes: vec![
                write("p/a", "k1", Some("12345")),
                write("p/a", "k2", Some("1")),
                write("p/b", "k1", Some("123")),
                write("p/a", "k1", Some("12")),
            ],
            ..ChangeSet::default()
        };
        committer.commit(changes).await.expect("commit");
        assert_eq!(store.function_state_usage("p/a").expect("read"), 4 + 3);
        assert_eq!(store.function_state_usage("p/b").expect("read"), 5);
        let changes = ChangeSet {
            state_writes: vec![write("p/a", "k2", None), write("p/a", "k9", None), write("p/b", "k1", None)],
            ..ChangeSet::default()
        };
        committer.commit(changes).await.expect("commit");
        assert_eq!(store.function_state_usage("p/a").expect("read"), 4, "deleting an absent key changes nothing");
        assert_eq!(store.function_state_usage("p/b").expect("read"), 0);
        drop((store, committer));
        thread.join().expect("committer exits");
        // A file whose count went wrong (or an earlier weir's, which kept none) is recounted.
        let db = Database::open(dir.path().join(DATABASE_FILE)).expect("open");
        let txn = db.begin_write().expect("write");
        txn.open_table(FUNCTION_STATE_USAGE).expect("table").insert("p/a", 999).expect("insert");
        txn.commit().expect("commit");
    }
    let (store, _committer, _thread) = open(dir.path(), StoreOptions::default()).expect("reopen");
    assert_eq!(store.function_state_usage("p/a").expect("read"), 4);
    assert_eq!(store.function_state_usage("p/b").expect("read"), 0);
}

#[tokio::test]
async fn outbox_records_survive_reopen_and_leave_when_confirmed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = StoreOptions { durability: Durability::Sync, dead_letter_capacity: 10, ..StoreOptions::default() };
    {
        let (_, committer, thread) = open(dir.path(), options.clone()).expect("open");
        let records = (1..=3).map(|seq| OutboxRecord { stream: "s".into(), seq, body: vec![seq as u8] }).collect();
        committer.commit(ChangeSet { records, ..ChangeSet::default() }).await.expect("commit");
        drop(committer);
        thread.join().expect("committer exits once every handle is dropped");
    }
    let (store, committer, _thread) = open(dir.path(), options).expect("reopen");
    assert_eq!(store.last_seq("s").expect("read"), 3);
    assert_eq!(store.outbox_after("s", 1, 10).expect("read"), vec![(2, vec![2]), (3, vec![3])]);
    committer.commit(ChangeSet { confirmed: vec![("s".into(), 2)], ..ChangeSet::default() }).await.expect("commit");
    assert_eq!(store.outbox_after("s", 0, 10).expect("read"), vec![(1, vec![1]), (3, vec![3])]);
    assert_eq!(store.outbox_len("s").expect("read"), 2);
    assert_eq!(store.last_seq("s").expect("read"), 3, "confirming never lowers the stream position");
    assert_eq!(store.outbox_len("other").expect("read"), 0);
}

#[tokio::test]
async fn dead_letters_keep_the_newest_up_to_capacity_and_count_evictions() {
    let (_dir, store, committer, _thread) = store(3);
    for i in 0..5 {
        committer
            .commit(ChangeSet { dead_letters: vec![letter(&format!("r{i}"))], ..ChangeSet::default() })
            .await
            .expect("commit");
    }
    let kept: Vec<String> = store.dead_letters(10).expect("read").into_iter().map(|(_, l)| l.reason).collect();
    assert_eq!(kept, ["r2", "r3", "r4"]);
    assert_eq!(store.dead_letter_counts().expect("read"), (3, 2));
    assert_eq!(store.dead_letters(10).expect("read")[0].1, letter("r2"));
}

#[tokio::test]
async fn dead_letters_keep_a_prefix_of_huge_payloads_and_stay_within_their_byte_cap() {
    let dir = tempfile::tempdir().expect("temp dir");
    let max_bytes = 1024 * 1024;
    let options = StoreOptions { dead_letter_max_bytes: max_bytes, ..StoreOptions::default() };
    let garbage = vec![0x5a_u8; 4 * 1024 * 1024];
    {
        let (store, committer, thread) = open(dir.path(), options.clone()).expect("open");
        for i in 0..40 {
            let mut letter = letter(&format!("g{i}"));
            letter.content = DeadLetterContent::message("t", &garbage, garbage.len() as u64, 1);
            committer.commit(ChangeSet { dead_letters: vec![letter], ..ChangeSet::default() }).await.expect("commit");
        }
        let letters = store.dead_letters(100).expect("read");
        let stored: u64 = letters.iter().map(|(_, l)| l.to_bytes().len() as u64).sum();
        assert!(stored <= max_bytes, "{stored} bytes kept, cap {max_bytes}");
        let (kept, evicted) = store.dead_letter_counts().expect("read");
        assert_eq!(kept + evicted, 40, "every letter is kept or counted as evicted");
        assert!(kept >= 10, "the cap holds about 15 letters of 64 KiB, kept {kept}");
        assert_eq!(letters.last().expect("kept").1.reason, "g39", "the newest are kept");
        let DeadLetterContent::Message { payload, size, .. } = &letters[0].1.content else { panic!("a message") };
        assert_eq!((payload.len(), *size), (DEAD_LETTER_PAYLOAD_PREFIX, Some(garbage.len() as u64)));
        drop((store, committer));
        thread.join().expect("committer exits");
    }
    // A store reopened with a smaller cap recounts what is held and evicts at the next commit.
    let smaller = StoreOptions { dead_letter_max_bytes: 200 * 1024, ..options };
    let (store, committer, _thread) = open(dir.path(), smaller).expect("reopen");
    committer.commit(ChangeSet { dead_letters: vec![letter("small")], ..ChangeSet::default() }).await.expect("commit");
    let stored: u64 = store.dead_letters(100).expect("read").iter().map(|(_, l)| l.to_bytes().len() as u64).sum();
    assert!(stored <= 200 * 1024, "{stored}");
}

#[test]
fn small_payloads_are_dead_lettered_whole() {
    let DeadLetterContent::Message { payload, size, .. } = DeadLetterContent::message("t", b"abc", 3, 7) else {
        panic!("a message")
    };
    assert_eq!((payload.as_slice(), size), (b"abc".as_slice(), None));
}

#[test]
fn a_second_open_of_the_same_data_dir_is_refused() {
    let (dir, _store, _committer, _thread) = store(1);
    let err = open(
        dir.path(),
        StoreOptions { durability: Durability::Sync, dead_letter_capacity: 1, ..StoreOptions::default() },
    )
    .expect_err("already open");
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
}

#[tokio::test]
async fn relaxed_commits_become_durable_after_the_committer_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = StoreOptions { durability: Durability::Relaxed, dead_letter_capacity: 10, ..StoreOptions::default() };
    {
        let (_, committer, thread) = open(dir.path(), options.clone()).expect("open");
        for i in 0..3 {
            committer
                .commit(ChangeSet {
                    state_writes: vec![write("n", &format!("k{i}"), Some("v"))],
                    ..ChangeSet::default()
                })
                .await
                .expect("commit");
        }
        drop(committer);
        thread.join().expect("committer exits");
    }
    let (store, _committer, _thread) = open(dir.path(), options).expect("reopen");
    assert_eq!(store.function_state_range("n", b"", None, 10).expect("read").len(), 3);
}

#[tokio::test]
async fn applied_commits_are_durable_at_once_under_sync_and_after_a_flush_under_relaxed() {
    for durability in [Durability::Sync, Durability::Relaxed] {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = StoreOptions { durability, ..StoreOptions::default() };
        let (_, committer, _thread) = open(dir.path(), options).expect("open");
        // Many producers at once, so that under `relaxed` some groups are left non-durable.
        let commits = (0..64).map(|i| {
            let committer = committer.clone();
            async move {
                let changes =
                    ChangeSet { state_writes: vec![write("n", &format!("k{i}"), Some("v"))], ..ChangeSet::default() };
                committer.commit_applied(changes).await.expect("commit")
            }
        });
        let applied = futures::future::join_all(commits).await;
        if durability == Durability::Sync {
            assert!(applied.iter().all(Applied::is_durable), "sync: durable when applied");
        }
        let newest = applied.iter().map(Applied::group).max().expect("64 commits");
        for one in applied {
            tokio::time::timeout(Duration::from_secs(5), one.durable())
                .await
                .expect("a durable flush covers every applied commit soon")
                .expect("the committer runs");
        }
        assert!(*committer.durable_groups().borrow() >= newest);
    }
}

#[tokio::test]
async fn recent_deliveries_keep_the_newest_window_per_source() {
    let (_dir, store, committer, _thread) = store(10);
    let record = |source: &str, id: u8| DeliveryRecord { source: source.into(), identity: vec![id], dedup_horizon: 3 };
    for id in 1..=5 {
        committer
            .commit(ChangeSet { deliveries: vec![record("a", id), record("b", id + 100)], ..ChangeSet::default() })
            .await
            .expect("commit");
    }
    let kept = store.recent_deliveries("a").expect("read");
    assert_eq!(kept, [vec![3], vec![4], vec![5]].into_iter().collect());
    assert_eq!(store.recent_deliveries("b").expect("read").len(), 3);
    assert!(store.recent_deliveries("c").expect("read").is_empty());
}

// --- a bounded outbox -------------------------------------------------------------------------

use crate::batch::{BatchBuilder, Series};
use crate::config::{Encoding, WhenFull};
use weir_record::{Record, RecordHeader, RecordKind};

const SECOND: i64 = 1_000_000_000;

/// A store whose stream "s" holds at most `max_bytes`.
fn bounded_store(max_bytes: u64, when_full: WhenFull) -> (tempfile::TempDir, StateStore, Committer, JoinHandle<()>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let limits = OutboxLimits { max_bytes, when_full, encoding: Encoding::Cbor };
    let options = StoreOptions {
        durability: Durability::Relaxed,
        dead_letter_capacity: 10,
        outboxes: HashMap::from([("s".to_owned(), limits)]),
        ..StoreOptions::default()
    };
    let (store, committer, thread) = open(dir.path(), options).expect("open");
    (dir, store, committer, thread)
}

/// Record `seq` of stream "s": `readings` readings of two series, one per second from
/// `seq * readings` seconds on.
fn readings_record(seq: u64, readings: usize) -> OutboxRecord {
    stream_record("s", seq, readings)
}

/// Like [`readings_record`], for any stream.
fn stream_record(stream: &str, seq: u64, readings: usize) -> OutboxRecord {
    let mut batch = BatchBuilder::new();
    let temperature = batch.intern(&Series::named("temperature").with_unit("Cel"));
    let humidity = batch.intern(&Series::named("humidity").with_unit("%RH"));
    for i in 0..readings {
        let ts = ((seq % 1_000_000) as i64 * readings as i64 + i as i64) * SECOND;
        batch.push(if i % 2 == 0 { temperature } else { humidity }, ts, 20.0 + (i % 7) as f64 * 0.37);
    }
    let header = RecordHeader { gateway: "gw".into(), stream: stream.into(), seq, encoded_at: seq as i64 };
    OutboxRecord {
        stream: stream.into(),
        seq,
        body: weir_record::write_readings(Encoding::Cbor, &header, &batch.finish()).expect("encode"),
    }
}

/// Every record of stream "s", decoded, in seq order.
fn outbox_records(store: &StateStore) -> Vec<(u64, Vec<u8>, Record)> {
    store
        .outbox_after("s", 0, usize::MAX)
        .expect("read")
        .into_iter()
        .map(|(seq, body)| {
            let record = weir_record::read(&body).expect("every outbox record decodes");
            (seq, body, record)
        })
        .collect()
}

/// Readings held as readings, in coarsened spans and in drop markers; checks on the way that
/// the records' spans tile seqs `1..=last` in order, each starting at its record's seq.
fn account(records: &[(u64, Vec<u8>, Record)], last: u64) -> (u64, u64, u64) {
    let (mut plain, mut coarsened, mut dropped) = (0, 0, 0);
    let mut next = 1;
    for (seq, _, record) in records {
        let span = record.span();
        assert_eq!(span.first_seq, *seq, "a record's span starts at its own seq");
        assert_eq!(span.first_seq, next, "spans tile the seqs without gaps or overlaps");
        next = span.last_seq + 1;
        match record.kind() {
            RecordKind::Readings => plain += record.batch.len() as u64,
            RecordKind::Coarsened { .. } => {
                let windowed: u64 = record.aggregates.iter().flat_map(|s| &s.windows).map(|w| w.count).sum();
                assert_eq!(windowed, span.readings, "every coarsened reading is in exactly one window");
                coarsened += span.readings;
            }
            RecordKind::Dropped => dropped += span.readings,
        }
    }
    assert_eq!(next, last + 1, "spans reach the last seq");
    (plain, coarsened, dropped)
}

#[tokio::test]
async fn reaggregate_keeps_the_cap_and_summarises_every_reading_exactly() {
    let max_bytes = 16 << 10;
    let (_dir, store, committer, _thread) = bounded_store(max_bytes, WhenFull::Reaggregate);
    let (records, per_record) = (400, 20);
    for seq in 1..=records {
        committer
            .commit(ChangeSet { records: vec![readings_record(seq, per_record)], ..ChangeSet::default() })
            .await
            .expect("commit");
        let usage = store.outbox_usage("s").expect("read");
        assert!(usage.bytes <= max_bytes, "{} bytes after record {seq}, cap {max_bytes}", usage.bytes);
    }
    let held = outbox_records(&store);
    let usage = store.outbox_usage("s").expect("read");
    assert_eq!(usage.records, held.len() as u64, "usage counts records exactly");
    assert_eq!(
        usage.bytes,
        outbox::STREAM_BASE + held.iter().map(|(_, body, _)| outbox::disk_bytes("s", body.len())).sum::<u64>(),
        "usage counts disk bytes exactly"
    );
    let (plain, coarsened, dropped) = account(&held, records);
    assert_eq!(plain + coarsened + dropped, records * per_record as u64, "no reading unaccounted for");
    assert!(coarsened > 0, "the outbox overflowed, so something was coarsened");
    assert_eq!(dropped, 0, "coarsening sufficed: nothing was dropped");
    assert_eq!(store.counter("s", Counter::ReadingsCoarsened).expect("read"), coarsened);
    let coarsened_records: u64 =
        held.iter().filter(|(_, _, r)| r.coarsened.is_some()).map(|(_, _, r)| r.span().records).sum();
    assert_eq!(store.counter("s", Counter::RecordsCoarsened).expect("read"), coarsened_records);
    assert_eq!(store.counter("s", Counter::ReadingsDropped).expect("read"), 0);
    let newest = &held.last().expect("records").2;
    assert_eq!(
        (newest.header.seq, newest.kind()),
        (records, RecordKind::Readings),
        "the newest records stay as they were"
    );
}

#[tokio::test]
async fn drop_oldest_keeps_the_cap_with_one_growing_marker() {
    let max_bytes = 8 << 10;
    let (_dir, store, committer, _thread) = bounded_store(max_bytes, WhenFull::DropOldest);
    let (records, per_record) = (300, 10);
    for seq in 1..=records {
        committer
            .commit(ChangeSet { records: vec![readings_record(seq, per_record)], ..ChangeSet::default() })
            .await
            .expect("commit");
        assert!(store.outbox_usage("s").expect("read").bytes <= max_bytes);
    }
    let held = outbox_records(&store);
    let (plain, coarsened, dropped) = account(&held, records);
    assert_eq!(coarsened, 0, "drop_oldest never coarsens");
    assert_eq!(plain + dropped, records * per_record as u64);
    let marker = &held[0].2;
    assert_eq!(marker.kind(), RecordKind::Dropped, "the oldest record is the one marker");
    assert!(held[1..].iter().all(|(_, _, r)| r.kind() == RecordKind::Readings), "one marker, extended each time");
    let span = marker.span();
    assert_eq!((span.first_seq, span.records, span.readings), (1, span.last_seq, dropped));
    assert_eq!(
        (span.earliest, span.latest),
        (Some(per_record as i64 * SECOND), Some(((span.last_seq + 1) as i64 * per_record as i64 - 1) * SECOND))
    );
    assert_eq!(store.counter("s", Counter::RecordsDropped).expect("read"), span.records);
    assert_eq!(store.counter("s", Counter::ReadingsDropped).expect("read"), dropped);
}

/// The bytes of every page of the data file's `outbox` B-tree, as redb counts them.
fn outbox_tree_bytes(store: &StateStore) -> u64 {
    let txn = store.db.get().expect("open").begin_read().expect("read");
    let stats = txn.open_table(OUTBOX).expect("open").stats().expect("stats");
    stats.stored_bytes() + stats.metadata_bytes() + stats.fragmented_bytes()
}

/// `disk_bytes` is an upper bound: with small, page-sized, multi-page and mixed records, one
/// stream or several sharing the B-tree, filling up under reaggregate and drop_oldest while a sink confirms the
/// oldest, the pages redb holds for the outbox never exceed the usage charged for it plus the
/// tree's root page. So the cap, counted in these bytes, bounds the outbox on disk.
#[tokio::test]
async fn the_outbox_on_disk_stays_within_the_bytes_charged_for_it() {
    let max_bytes = 96 << 10;
    let cases: [(&[&str], &[usize], WhenFull); 7] = [
        (&["s"], &[10], WhenFull::DropOldest),
        (&["s"], &[100], WhenFull::Reaggregate),
        (&["s"], &[200], WhenFull::DropOldest),
        (&["s"], &[1000], WhenFull::DropOldest),
        (&["s"], &[1000], WhenFull::Reaggregate),
        (&["s"], &[500, 5, 20, 700, 2], WhenFull::DropOldest),
        (&["alpha", "beta", "gamma"], &[60, 3, 450], WhenFull::Reaggregate),
    ];
    for (streams, sizes, when_full) in cases {
        let dir = tempfile::tempdir().expect("temp dir");
        let limits = OutboxLimits { max_bytes, when_full, encoding: Encoding::Cbor };
        let options = StoreOptions {
            durability: Durability::Relaxed,
            dead_letter_capacity: 10,
            outboxes: streams.iter().map(|s| ((*s).to_owned(), limits)).collect(),
            ..StoreOptions::default()
        };
        let (store, committer, _thread) = open(dir.path(), options).expect("open");
        let mean: usize = sizes.iter().map(|n| stream_record("s", 1, *n).body.len()).sum::<usize>() / sizes.len();
        let records = 3 * max_bytes / mean as u64;
        let mut peak = 0;
        for seq in 1..=records {
            let stream = streams[seq as usize % streams.len()];
            let readings = sizes[seq as usize % sizes.len()];
            let mut changes = ChangeSet { records: vec![stream_record(stream, seq, readings)], ..ChangeSet::default() };
            if seq % 7 == 0 {
                // A sink confirming the oldest record of another stream.
                let other = streams[(seq as usize + 1) % streams.len()];
                if let Some((oldest, _)) = store.outbox_after(other, 0, 1).expect("read").first() {
                    changes.confirmed.push((other.to_owned(), *oldest));
                }
            }
            committer.commit(changes).await.expect("commit");
            let charged: u64 = streams.iter().map(|s| store.outbox_usage(s).expect("read").bytes).sum();
            let on_disk = outbox_tree_bytes(&store);
            assert!(
                on_disk <= charged + 4096,
                "{streams:?}, records of {sizes:?} readings, {when_full:?}, after record {seq}: \
                 {on_disk} bytes of B-tree pages, {charged} charged"
            );
            peak = peak.max(on_disk);
        }
        assert!(peak > max_bytes / 3, "{streams:?}, {sizes:?}: the outbox filled up ({peak} bytes of pages at most)");
    }
}

#[tokio::test]
async fn block_refuses_whole_change_sets_until_confirmations_free_space() {
    let max_bytes = 4 << 10;
    let (_dir, store, committer, _thread) = bounded_store(max_bytes, WhenFull::Block);
    let mut seq = 0;
    let refused = loop {
        seq += 1;
        let changes = ChangeSet {
            records: vec![readings_record(seq, 10)],
            state_writes: vec![write("p/f", &format!("k{seq}"), Some("v"))],
            ..ChangeSet::default()
        };
        if let Err(refused) = committer.commit(changes).await {
            break refused;
        }
        assert!(seq < 1000, "a 4 KiB outbox fills up");
    };
    assert!(
        matches!(refused.error, StoreError::OutboxFull { ref stream, max_bytes: 4096 } if stream == "s"),
        "{}",
        refused.error
    );
    assert_eq!(refused.changes.records[0].seq, seq, "the refused change set comes back whole");
    assert_eq!(
        store.function_state_get("p/f", format!("k{seq}").as_bytes()).expect("read"),
        None,
        "nothing of it was applied"
    );
    assert_eq!(store.last_seq("s").expect("read"), seq - 1);
    assert_eq!(store.counter("s", Counter::RefusedFull).expect("read"), 1);
    let refused = committer.commit(refused.changes).await.expect_err("still full");
    assert!(refused.changes.refused_before);
    assert_eq!(store.counter("s", Counter::RefusedFull).expect("read"), 1, "a retry is not another refusal");
    let held = outbox_records(&store);
    assert!(held.iter().all(|(_, _, r)| r.kind() == RecordKind::Readings), "block never rewrites records");
    committer
        .commit(ChangeSet { confirmed: vec![("s".into(), 1), ("s".into(), 2)], ..ChangeSet::default() })
        .await
        .expect("commit");
    committer.commit(refused.changes).await.expect("fits once the sink confirmed records");
    assert_eq!(store.last_seq("s").expect("read"), seq);
}

#[tokio::test]
async fn records_reserved_for_publishing_are_never_coarsened_or_dropped() {
    for when_full in [WhenFull::Reaggregate, WhenFull::DropOldest] {
        // Ten records fit before the reservation: 4 KiB for the stream plus 10 × 458 bytes.
        let max_bytes = 12 << 10;
        let (_dir, store, committer, _thread) = bounded_store(max_bytes, when_full);
        let mut originals = Vec::new();
        for seq in 1..=10 {
            let record = readings_record(seq, 10);
            originals.push((seq, record.body.clone()));
            committer.commit(ChangeSet { records: vec![record], ..ChangeSet::default() }).await.expect("commit");
        }
        committer
            .commit(ChangeSet { reservations: vec![("s".into(), 1..=10)], ..ChangeSet::default() })
            .await
            .expect("reserve");
        for seq in 11..=200 {
            committer
                .commit(ChangeSet { records: vec![readings_record(seq, 10)], ..ChangeSet::default() })
                .await
                .expect("commit");
            assert!(store.outbox_usage("s").expect("read").bytes <= max_bytes);
        }
        let held = store.outbox_after("s", 0, 10).expect("read");
        assert_eq!(held, originals, "{when_full:?}: reserved records are untouched");
        let eleventh = weir_record::read(&store.outbox_after("s", 10, 1).expect("read")[0].1).expect("decodes");
        assert_ne!(eleventh.kind(), RecordKind::Readings, "{when_full:?}: the oldest unreserved record was summarised");
        assert_eq!(eleventh.span().first_seq, 11, "{when_full:?}: summaries start after the reservation");
        committer
            .commit(ChangeSet {
                confirmed: (1..=10).map(|seq| ("s".to_owned(), seq)).collect(),
                ..ChangeSet::default()
            })
            .await
            .expect("confirm");
        assert_eq!(
            store.reservations("s").expect("read"),
            Vec::<RangeInclusive<u64>>::new(),
            "confirmed reservations are forgotten"
        );
    }
}

#[tokio::test]
async fn a_reservation_beyond_the_last_record_outlives_its_confirmations() {
    let (_dir, store, committer, _thread) = bounded_store(1 << 20, WhenFull::Reaggregate);
    committer.commit(ChangeSet { records: vec![readings_record(1, 1)], ..ChangeSet::default() }).await.expect("commit");
    committer
        .commit(ChangeSet { reservations: vec![("s".into(), 1..=5)], ..ChangeSet::default() })
        .await
        .expect("reserve");
    committer.commit(ChangeSet { confirmed: vec![("s".into(), 1)], ..ChangeSet::default() }).await.expect("confirm");
    assert_eq!(store.reservations("s").expect("read"), vec![1..=5], "seqs 2..=5 may still be published when appended");
}

// --- the outbox against a reference model ------------------------------------------------------

mod model {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    /// What the pipeline and the sink do to one stream.
    #[derive(Clone, Debug)]
    enum Op {
        /// The pipeline commits a record of this many readings.
        Append(usize),
        /// The sink reserves the next this-many seqs (read from the outbox, about to publish).
        Reserve(u64),
        /// The broker confirms the oldest reserved record still held.
        Confirm,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![6 => (1usize..40).prop_map(Op::Append), 1 => (1u64..8).prop_map(Op::Reserve), 2 => Just(Op::Confirm)]
    }

    fn policy() -> impl Strategy<Value = WhenFull> {
        prop_oneof![Just(WhenFull::Reaggregate), Just(WhenFull::DropOldest), Just(WhenFull::Block)]
    }

    /// The reference: every record ever committed, as committed, and what became of it.
    #[derive(Default)]
    struct Reference {
        originals: BTreeMap<u64, (Vec<u8>, u64)>,
        /// Seqs and readings of records the broker confirmed (the span of what was confirmed).
        confirmed: BTreeSet<u64>,
        confirmed_readings: u64,
        /// Readings of confirmed drop markers.
        confirmed_dropped: u64,
        reserved_through: u64,
        /// Records as they were when reserved (or appended inside a reservation): the sink may
        /// have published them, so they must stay exactly so until confirmed.
        reserved_bodies: BTreeMap<u64, Vec<u8>>,
    }

    fn run(when_full: WhenFull, max_bytes: u64, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (_dir, store, committer, _thread) = bounded_store(max_bytes, when_full);
        let mut reference = Reference::default();
        let mut next_seq = 1;
        for op in ops {
            match op {
                Op::Append(readings) => {
                    let record = readings_record(next_seq, readings);
                    let bytes = outbox::disk_bytes("s", record.body.len());
                    let before = store.outbox_usage("s").expect("read");
                    let body = record.body.clone();
                    match runtime
                        .block_on(committer.commit(ChangeSet { records: vec![record], ..ChangeSet::default() }))
                    {
                        Ok(()) => {
                            if next_seq <= reference.reserved_through {
                                reference.reserved_bodies.insert(next_seq, body.clone());
                            }
                            reference.originals.insert(next_seq, (body, readings as u64));
                            next_seq += 1;
                        }
                        Err(refused) => {
                            prop_assert!(matches!(refused.error, StoreError::OutboxFull { .. }), "{}", refused.error);
                            prop_assert!(before.bytes > 0 && before.bytes + bytes > max_bytes, "refused with room");
                            if when_full != WhenFull::Block {
                                // Only reserved records and markers are left to make room from.
                                let held = outbox_records(&store);
                                let reserved = store.reservations("s").expect("read");
                                prop_assert!(held.iter().all(|(seq, _, r)| r.kind() == RecordKind::Dropped
                                    || reserved.iter().any(|range| range.contains(seq))));
                            }
                        }
                    }
                }
                Op::Reserve(count) => {
                    let from = reference.reserved_through + 1;
                    reference.reserved_through += count;
                    let changes = ChangeSet {
                        reservations: vec![("s".into(), from..=reference.reserved_through)],
                        ..ChangeSet::default()
                    };
                    runtime.block_on(committer.commit(changes)).expect("reserve");
                    for (seq, body) in store.outbox_after("s", from - 1, usize::MAX).expect("read") {
                        if seq <= reference.reserved_through {
                            reference.reserved_bodies.insert(seq, body);
                        }
                    }
                }
                Op::Confirm => {
                    let Some((seq, _)) = store.outbox_after("s", 0, 1).expect("read").pop() else { continue };
                    if seq > reference.reserved_through {
                        continue;
                    }
                    let record =
                        weir_record::read(&store.outbox_after("s", seq - 1, 1).expect("read")[0].1).expect("decodes");
                    let span = record.span();
                    reference.confirmed.extend(span.first_seq..=span.last_seq);
                    reference.confirmed_readings += span.readings;
                    if record.kind() == RecordKind::Dropped {
                        reference.confirmed_dropped += span.readings;
                    }
                    reference.reserved_bodies.remove(&seq);
                    let changes = ChangeSet { confirmed: vec![("s".into(), seq)], ..ChangeSet::default() };
                    runtime.block_on(committer.commit(changes)).expect("confirm");
                }
            }
            check(&store, &reference, when_full, max_bytes, next_seq - 1)?;
        }
        Ok(())
    }

    fn check(
        store: &StateStore,
        reference: &Reference,
        when_full: WhenFull,
        max_bytes: u64,
        last: u64,
    ) -> Result<(), TestCaseError> {
        let held = outbox_records(store);
        let usage = store.outbox_usage("s").expect("read");
        prop_assert_eq!(usage.records, held.len() as u64);
        let charged: u64 = held.iter().map(|(_, body, _)| outbox::disk_bytes("s", body.len())).sum();
        prop_assert_eq!(usage.bytes, charged + if held.is_empty() { 0 } else { outbox::STREAM_BASE });
        // A record always fits in an empty outbox, whatever the cap.
        let largest =
            reference.originals.values().map(|(body, _)| outbox::disk_bytes("s", body.len())).max().unwrap_or(0);
        let bound = max_bytes.max(outbox::STREAM_BASE + largest);
        prop_assert!(usage.bytes <= bound, "{} bytes held, cap {max_bytes}", usage.bytes);
        // Every committed seq is confirmed or covered by exactly one held record's span.
        let mut covered = reference.confirmed.clone();
        let (mut plain, mut coarsened, mut dropped) = (0, 0, 0);
        for (seq, body, record) in &held {
            let span = record.span();
            prop_assert_eq!(span.first_seq, *seq);
            for s in span.first_seq..=span.last_seq {
                prop_assert!(covered.insert(s) || !reference.originals.contains_key(&s), "seq {} covered twice", s);
            }
            match record.kind() {
                RecordKind::Readings => {
                    prop_assert_eq!(&reference.originals[seq].0, body, "a plain record is its original");
                    plain += record.batch.len() as u64;
                }
                RecordKind::Coarsened { .. } => coarsened += span.readings,
                RecordKind::Dropped => dropped += span.readings,
            }
        }
        let committed: BTreeSet<u64> = (1..=last).collect();
        prop_assert_eq!(covered, committed, "spans and confirmations tile the committed seqs");
        let total: u64 = reference.originals.values().map(|(_, readings)| readings).sum();
        prop_assert_eq!(plain + coarsened + dropped + reference.confirmed_readings, total, "readings conserved");
        for (seq, body) in &reference.reserved_bodies {
            let now = held.iter().find(|(held_seq, _, _)| held_seq == seq).map(|(_, body, _)| body);
            prop_assert_eq!(now, Some(body), "reserved record {} is held exactly as it was when reserved", seq);
        }
        prop_assert_eq!(
            store.counter("s", Counter::ReadingsDropped).expect("read"),
            dropped + reference.confirmed_dropped
        );
        prop_assert!(store.counter("s", Counter::ReadingsCoarsened).expect("read") >= coarsened);
        if when_full == WhenFull::Block {
            prop_assert_eq!(coarsened + dropped, 0, "block never summarises");
        }
        if when_full == WhenFull::DropOldest {
            prop_assert_eq!(coarsened, 0, "drop_oldest never coarsens");
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn the_outbox_conserves_every_committed_reading(
            when_full in policy(),
            max_bytes in prop_oneof![Just(4096u64), Just(8192), Just(32768)],
            ops in proptest::collection::vec(op(), 1..120),
        ) {
            run(when_full, max_bytes, ops)?;
        }
    }
}

// --- damaged files ------------------------------------------------------------------------------

mod damaged {
    use std::collections::BTreeMap;

    use super::*;

    const RECORDS: u64 = 300;
    const CONFIRMED: u64 = 20;

    /// A data dir holding `RECORDS` records of stream "s" (the first `CONFIRMED` confirmed),
    /// function state and a sink position, closed cleanly.
    fn populated() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (_store, committer, thread) = open(dir.path(), StoreOptions::default()).expect("open");
        runtime.block_on(async {
            for seq in 1..=RECORDS {
                let changes = ChangeSet {
                    records: vec![readings_record(seq, 12)],
                    state_writes: vec![write("p/f", &format!("k{}", seq % 17), Some(&format!("v{seq}")))],
                    ..ChangeSet::default()
                };
                committer.commit(changes).await.expect("commit");
            }
            let confirmed = (1..=CONFIRMED).map(|seq| ("s".to_owned(), seq)).collect();
            let changes = ChangeSet { confirmed, sink_positions: vec![("s".into(), 77)], ..ChangeSet::default() };
            committer.commit(changes).await.expect("confirm");
        });
        drop(committer);
        thread.join().expect("committer");
        dir
    }

    fn database(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join(DATABASE_FILE)
    }

    /// Opens the damaged data dir; checks the host can go on and nothing is reused or wrong.
    /// Returns whether a recovery happened.
    fn reopen_and_check(dir: &tempfile::TempDir, damage: &str) -> bool {
        let (store, committer, _thread) = open(dir.path(), StoreOptions::default())
            .unwrap_or_else(|e| panic!("{damage}: a damaged file must not stop the host: {e}"));
        let recoveries = store.recoveries().expect("read");
        let held = outbox_records(&store);
        assert!(store.last_seq("s").expect("read") >= RECORDS, "{damage}: seqs never start over");
        match recoveries.as_slice() {
            [] => {
                assert_eq!(held.len() as u64, RECORDS - CONFIRMED, "{damage}: undetected damage changed nothing");
                assert_eq!(store.last_seq("s").expect("read"), RECORDS);
            }
            [recovery] => {
                assert!(recovery.damaged_file.exists(), "{damage}: the damaged file is kept");
                assert!(recovery.damaged_file.starts_with(dir.path().join(DAMAGED_DIR)));
                if recovery.outbox_loss_known {
                    let lost: u64 = recovery.outbox_records_lost.iter().map(|(_, n)| n).sum();
                    assert_eq!(
                        held.len() as u64 + lost,
                        RECORDS - CONFIRMED,
                        "{damage}: every record held or counted lost"
                    );
                    assert_eq!(store.counter("s", Counter::RecordsUnrecovered).expect("read"), lost);
                }
                for (seq, _, record) in &held {
                    assert_eq!(
                        (record.header.stream.as_str(), record.header.seq),
                        ("s", *seq),
                        "{damage}: only whole records"
                    );
                }
            }
            more => panic!("{damage}: one damage, one recovery: {more:?}"),
        }
        // The host keeps ingesting: a new record commits and takes a fresh seq.
        let next = store.last_seq("s").expect("read") + 1;
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        runtime
            .block_on(committer.commit(ChangeSet { records: vec![readings_record(next, 3)], ..ChangeSet::default() }))
            .unwrap_or_else(|e| panic!("{damage}: commits go on: {e}"));
        assert_eq!(store.last_seq("s").expect("read"), next);
        !recoveries.is_empty()
    }

    fn damage(damage: &str, change: impl FnOnce(&mut Vec<u8>)) -> bool {
        let dir = populated();
        let mut bytes = std::fs::read(database(&dir)).expect("read file");
        change(&mut bytes);
        std::fs::write(database(&dir), &bytes).expect("write file");
        reopen_and_check(&dir, damage)
    }

    #[test]
    fn bit_flips_are_recovered_from_or_harmless() {
        let mut recovered = 0;
        for tenth in 1..10 {
            let label = format!("bits flipped at {tenth}/10");
            recovered += usize::from(damage(&label, |bytes| {
                let at = bytes.len() * tenth / 10;
                for byte in &mut bytes[at..at + 16] {
                    *byte ^= 0x5a;
                }
            }));
        }
        assert!(recovered > 0, "flips across the file hit live pages at least once");
    }

    #[test]
    fn zeroed_pages_are_recovered_from_or_harmless() {
        let mut recovered = 0;
        for tenth in 0..10 {
            let label = format!("page zeroed at {tenth}/10");
            recovered += usize::from(damage(&label, |bytes| {
                let at = (bytes.len() * tenth / 10) & !4095;
                let end = (at + 4096).min(bytes.len());
                bytes[at..end].fill(0);
            }));
        }
        assert!(recovered > 0, "zeroed pages across the file hit live pages at least once");
    }

    #[test]
    fn truncated_files_are_recovered_from() {
        for keep in [0, 100, 4096, 20_000] {
            let label = format!("truncated to {keep} bytes");
            assert!(damage(&label, |bytes| bytes.truncate(keep)), "{label}: detected");
        }
        let label = "truncated to half";
        assert!(damage(label, |bytes| bytes.truncate(bytes.len() / 2)), "{label}: detected");
    }

    const STREAMS: [&str; 3] = ["a", "b", "c"];
    const PER_STREAM: u64 = 120;
    const CONFIRMED_PER_STREAM: u64 = 15;

    /// A data dir holding `PER_STREAM` records in each of `STREAMS` (the first
    /// `CONFIRMED_PER_STREAM` of each confirmed), closed cleanly; and the bodies still held.
    fn populated_streams() -> (tempfile::TempDir, BTreeMap<(String, u64), Vec<u8>>) {
        let dir = tempfile::tempdir().expect("temp dir");
        let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        let (_store, committer, thread) = open(dir.path(), StoreOptions::default()).expect("open");
        let mut held = BTreeMap::new();
        runtime.block_on(async {
            for seq in 1..=PER_STREAM {
                let records: Vec<OutboxRecord> =
                    STREAMS.iter().map(|s| stream_record(s, seq, 4 + (seq % 9) as usize)).collect();
                for record in &records {
                    held.insert((record.stream.clone(), record.seq), record.body.clone());
                }
                committer.commit(ChangeSet { records, ..ChangeSet::default() }).await.expect("commit");
            }
            let confirmed: Vec<(String, u64)> =
                STREAMS.iter().flat_map(|s| (1..=CONFIRMED_PER_STREAM).map(|seq| ((*s).to_owned(), seq))).collect();
            for key in &confirmed {
                held.remove(key);
            }
            committer.commit(ChangeSet { confirmed, ..ChangeSet::default() }).await.expect("confirm");
        });
        drop(committer);
        thread.join().expect("committer");
        (dir, held)
    }

    /// What reopening after one damage pattern gave back.
    #[derive(Debug)]
    struct Outcome {
        /// Records held before whose bytes lie somewhere in the file entirely undamaged.
        intact: usize,
        /// Records held after the recovery that equal one held before.
        recovered: usize,
        /// Intact records not recovered.
        missed: usize,
        /// Seqs the report says were restored from equally likely differing copies.
        conflicting: u64,
        /// Records held after the recovery that differ from every record held before.
        corrupt: usize,
        /// Records held before with no record at their seq after.
        unrecovered: u64,
        /// Records confirmed before the damage that came back.
        stale_restored: usize,
        loss_known: bool,
        lost: u64,
        recovered_any: bool,
    }

    /// Damages the file of a populated data dir (`damaged` lists the byte positions changed, or
    /// the length kept), reopens it, and compares what it holds with what it held.
    fn outcome(change: impl FnOnce(&mut Vec<u8>) -> Vec<std::ops::Range<usize>>) -> Outcome {
        let (dir, before) = populated_streams();
        let original = std::fs::read(database(&dir)).expect("read file");
        let mut bytes = original.clone();
        let damaged = change(&mut bytes);
        std::fs::write(database(&dir), &bytes).expect("write file");
        let undamaged = |at: usize, len: usize| {
            at + len <= bytes.len() && damaged.iter().all(|r| r.end <= at || r.start >= at + len)
        };
        let intact: Vec<&(String, u64)> = before
            .iter()
            .filter(|(_, body)| {
                original
                    .windows(body.len())
                    .enumerate()
                    .any(|(at, w)| w == body.as_slice() && undamaged(at, body.len()))
            })
            .map(|(key, _)| key)
            .collect();
        let (store, _committer, _thread) = open(dir.path(), StoreOptions::default()).expect("recovers");
        let mut after = BTreeMap::new();
        for stream in STREAMS {
            for (seq, body) in store.outbox_after(stream, 0, usize::MAX).expect("read") {
                after.insert((stream.to_owned(), seq), body);
            }
        }
        let recovered = after.iter().filter(|(key, body)| before.get(*key) == Some(*body)).count();
        let corrupt = after.iter().filter(|(key, body)| before.get(*key).is_some_and(|b| b != *body)).count()
            + after.keys().filter(|key| !before.contains_key(*key) && key.1 > CONFIRMED_PER_STREAM).count();
        let missed = intact.iter().filter(|key| after.get(**key) != before.get(**key)).count();
        let recoveries = store.recoveries().expect("read");
        let recovery = recoveries.last();
        Outcome {
            intact: intact.len(),
            recovered,
            missed,
            corrupt,
            conflicting: recovery.map_or(0, |r| r.outbox.iter().map(|s| s.conflicting).sum()),
            unrecovered: before.keys().filter(|key| !after.contains_key(*key)).count() as u64,
            stale_restored: after.keys().filter(|key| key.1 <= CONFIRMED_PER_STREAM).count(),
            loss_known: recovery.is_some_and(|r| r.outbox_loss_known),
            lost: recovery.map_or(0, |r| r.outbox_records_lost.iter().map(|(_, n)| n).sum()),
            recovered_any: recovery.is_some(),
        }
    }

    /// Changes a file's bytes; returns the byte ranges changed (or cut off).
    type Damage = Box<dyn FnOnce(&mut Vec<u8>) -> Vec<std::ops::Range<usize>>>;

    fn flip_bytes(seed: u64) -> impl FnOnce(&mut Vec<u8>) -> Vec<std::ops::Range<usize>> {
        move |bytes| {
            let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            let mut next = move || {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state
            };
            (0..64)
                .map(|_| {
                    let at = (next() % bytes.len() as u64) as usize;
                    bytes[at] ^= (next() % 255 + 1) as u8;
                    at..at + 1
                })
                .collect()
        }
    }

    /// Every record with an intact copy somewhere in the file comes back exactly (unless the
    /// report names its seq as restored from conflicting copies), nothing already confirmed
    /// comes back once the floor is known, and a known loss counts exactly the records that
    /// did not come back.
    #[test]
    fn salvage_recovers_every_intact_record() {
        let mut patterns: Vec<(String, Damage)> = Vec::new();
        for seed in 1..=6 {
            patterns.push((format!("64 bytes flipped, seed {seed}"), Box::new(flip_bytes(seed))));
        }
        for tenth in [3, 5, 7] {
            patterns.push((
                format!("page zeroed at {tenth}/10"),
                Box::new(move |bytes: &mut Vec<u8>| {
                    let at = (bytes.len() * tenth / 10) & !4095;
                    let end = (at + 4096).min(bytes.len());
                    bytes[at..end].fill(0);
                    std::iter::once(at..end).collect()
                }),
            ));
        }
        for quarter in [1, 2, 3] {
            patterns.push((
                format!("truncated at {quarter}/4"),
                Box::new(move |bytes: &mut Vec<u8>| {
                    let keep = bytes.len() * quarter / 4;
                    let end = bytes.len();
                    bytes.truncate(keep);
                    std::iter::once(keep..end).collect()
                }),
            ));
        }
        for (label, change) in patterns {
            let flips = label.contains("flipped");
            let outcome = outcome(change);
            eprintln!("{label}: {outcome:?}");
            assert!(outcome.recovered_any || outcome.missed == 0, "{label}: undetected damage changed nothing");
            assert!(outcome.missed as u64 <= outcome.conflicting, "{label}: every intact record is recovered");
            if !flips {
                assert_eq!((outcome.missed, outcome.corrupt), (0, 0), "{label}: exactly the intact records");
                assert_eq!(outcome.recovered, outcome.intact, "{label}: exactly the intact records");
            }
            if outcome.loss_known {
                assert_eq!(outcome.lost, outcome.unrecovered, "{label}: the loss is counted exactly");
                assert_eq!(outcome.stale_restored, 0, "{label}: confirmed records stay confirmed");
            }
        }
    }

    #[test]
    fn only_the_newest_damaged_files_are_kept() {
        let dir = populated();
        for round in 0..(DAMAGED_KEPT + 2) {
            std::fs::write(database(&dir), b"not a database").expect("write file");
            let (store, committer, thread) = open(dir.path(), StoreOptions::default()).expect("recovers");
            assert_eq!(
                store.recoveries().expect("read").len(),
                1,
                "round {round}: reported (earlier reports were in the replaced file)"
            );
            drop((store, committer));
            thread.join().expect("committer");
            std::thread::sleep(Duration::from_millis(20));
        }
        let kept = std::fs::read_dir(dir.path().join(DAMAGED_DIR)).expect("damaged dir").count();
        assert_eq!(kept, DAMAGED_KEPT);
    }
}

/// The outbox floor is the first record's seq until confirmations raise it to the lowest seq
/// still held (past the last seq when nothing is held); confirming out of order does not raise
/// it past a record still held.
#[tokio::test]
async fn the_outbox_floor_follows_the_lowest_seq_held() {
    let (_dir, store, committer, _thread) = store(10);
    let floor = || {
        let txn = store.db.get().expect("open").begin_read().expect("read");
        let counters = txn.open_table(COUNTERS).expect("counters");
        counters.get(outbox_floor_key("s").as_str()).expect("read").map(|v| v.value())
    };
    assert_eq!(floor(), None);
    let records = (4..=8).map(|seq| readings_record(seq, 2)).collect();
    committer.commit(ChangeSet { records, ..ChangeSet::default() }).await.expect("commit");
    assert_eq!(floor(), Some(4), "the first record's seq");
    for (confirmed, expected) in [(vec![4, 6], 5), (vec![5], 7), (vec![7, 8], 9)] {
        let confirmed = confirmed.into_iter().map(|seq| ("s".to_owned(), seq)).collect();
        committer.commit(ChangeSet { confirmed, ..ChangeSet::default() }).await.expect("confirm");
        assert_eq!(floor(), Some(expected));
    }
}

/// A data file from before the outbox counted disk bytes (usage in encoded bytes, no model
/// counter) is recounted at open.
#[tokio::test]
async fn usage_counted_in_encoded_bytes_is_recounted_at_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bodies: Vec<Vec<u8>> = (1..=5).map(|seq| readings_record(seq, 10 * seq as usize).body).collect();
    {
        let (_, committer, thread) = open(dir.path(), StoreOptions::default()).expect("open");
        let records = bodies
            .iter()
            .zip(1..)
            .map(|(body, seq)| OutboxRecord { stream: "s".into(), seq, body: body.clone() })
            .collect();
        committer.commit(ChangeSet { records, ..ChangeSet::default() }).await.expect("commit");
        drop(committer);
        thread.join().expect("committer exits");
    }
    {
        let db = Database::create(dir.path().join(DATABASE_FILE)).expect("reopen");
        let txn = db.begin_write().expect("write");
        {
            let encoded: u64 = bodies.iter().map(|b| b.len() as u64).sum();
            txn.open_table(OUTBOX_USAGE).expect("usage").insert("s", (5, encoded)).expect("write");
            txn.open_table(COUNTERS).expect("counters").remove(outbox::USAGE_MODEL).expect("write");
        }
        txn.commit().expect("commit");
    }
    let (store, _committer, _thread) = open(dir.path(), StoreOptions::default()).expect("open");
    let charged: u64 = bodies.iter().map(|b| outbox::disk_bytes("s", b.len())).sum();
    assert_eq!(store.outbox_usage("s").expect("read"), Usage { records: 5, bytes: outbox::STREAM_BASE + charged });
}
