//! The state store against a real redb file: namespaces, outbox order and reopen, dead-letter
//! capacity, the single-open rule, relaxed durability.

use super::*;

fn store(capacity: u64) -> (tempfile::TempDir, StateStore, Committer, JoinHandle<()>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (store, committer, thread) =
        open(dir.path(), StoreOptions { durability: Durability::Sync, dead_letter_capacity: capacity }).expect("open");
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
        stage: "decode".into(),
        reason: reason.into(),
        at: 1,
        content: DeadLetterContent::Message { topic: "t".into(), payload: vec![0xff], received_at: 1 },
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
async fn outbox_records_survive_reopen_and_leave_when_confirmed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = StoreOptions { durability: Durability::Sync, dead_letter_capacity: 10 };
    {
        let (_, committer, thread) = open(dir.path(), options).expect("open");
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

#[test]
fn a_second_open_of_the_same_data_dir_is_refused() {
    let (dir, _store, _committer, _thread) = store(1);
    let err = open(dir.path(), StoreOptions { durability: Durability::Sync, dead_letter_capacity: 1 })
        .expect_err("already open");
    assert!(matches!(err, StoreError::InUse { .. }), "{err}");
}

#[tokio::test]
async fn relaxed_commits_become_durable_after_the_committer_stops() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = StoreOptions { durability: Durability::Relaxed, dead_letter_capacity: 10 };
    {
        let (_, committer, thread) = open(dir.path(), options).expect("open");
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
async fn recent_deliveries_keep_the_newest_window_per_source() {
    let (_dir, store, committer, _thread) = store(10);
    let record = |source: &str, id: u8| DeliveryRecord { source: source.into(), identity: vec![id], window: 3 };
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
