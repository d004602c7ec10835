use std::collections::{BTreeMap, BTreeSet};

use weir_fleet::{RoleKeys, Root, SigningKey, World};

use super::*;

fn entry(counter: u64) -> FunctionTarget {
    FunctionTarget {
        version: format!("1.{counter}.0"),
        sha256: [counter as u8; 32],
        length: 10,
        world: World::Operator,
        counter,
    }
}

fn installed(revision: u64, counter: u64) -> Installed {
    Installed {
        scope_key: "desired.gateway.gw1".into(),
        revision,
        functions: BTreeMap::from([("unit-convert".to_owned(), entry(counter))]),
        floors: BTreeMap::new(),
    }
}

fn updating(stage: Stage) -> AgentRecord {
    AgentRecord {
        committed: installed(1, 2),
        update: Some(Update { target: installed(2, 3), stage, restarts: 0, health: HealthGates::default() }),
        ..AgentRecord::default()
    }
}

#[test]
fn a_restart_before_activation_runs_the_committed_set_and_compiles_again() {
    for stage in [Stage::Compiled, Stage::Shadow] {
        let mut record = updating(stage);
        assert_eq!(record.at_start(100), None);
        assert_eq!(record.update.as_ref().map(|u| u.stage), Some(Stage::Verified));
        assert_eq!(record.running(), &installed(1, 2));
    }
    for stage in [Stage::Fetched, Stage::Verified] {
        let mut record = updating(stage);
        assert_eq!(record.at_start(100), None);
        assert_eq!(record.update.as_ref().map(|u| u.stage), Some(stage));
        assert_eq!(record.running(), &installed(1, 2));
    }
}

#[test]
fn a_restart_during_probation_resumes_once_then_rolls_back() {
    let mut record = updating(Stage::Active);
    assert_eq!(record.at_start(100), None, "the first restart resumes the probation");
    assert_eq!(record.running(), &installed(2, 3));
    let outcome = record.at_start(200).expect("the second restart rolls back");
    assert!(!outcome.committed && outcome.reason.contains("restarted twice"), "{outcome:?}");
    assert_eq!(record.running(), &installed(1, 2));
    assert!(record.update.is_none());
    assert!(record.rolled_back("desired.gateway.gw1", 2));
    assert!(record.floors.is_empty(), "a rollback raises no floor");
}

#[test]
fn floors_rise_only_when_an_update_is_committed() {
    let mut record = updating(Stage::Active);
    record.update.as_mut().expect("update").target.floors.insert("moving-average".into(), 7);
    assert!(record.floors.is_empty());
    let outcome = record.end_update(true, "ignored".into(), 300);
    assert!(outcome.committed && outcome.reason.is_empty());
    assert_eq!(record.floors, BTreeMap::from([("moving-average".into(), 7), ("unit-convert".into(), 3)]));
    assert_eq!(record.committed.functions, installed(2, 3).functions);
    assert_eq!(record.committed.revision, 2);
}

#[test]
fn outcomes_are_bounded_and_the_record_round_trips() {
    let mut record = AgentRecord::default();
    for revision in 0..20 {
        record.update = Some(Update {
            target: installed(revision, 1),
            stage: Stage::Fetched,
            restarts: 0,
            health: HealthGates::default(),
        });
        record.end_update(false, format!("r{revision}"), revision);
    }
    assert_eq!(record.outcomes.len(), OUTCOMES_KEPT);
    assert_eq!(record.outcomes.last().map(|o| o.revision), Some(19));
    assert_eq!(AgentRecord::from_bytes(&record.to_bytes()).expect("decodes"), record);
    assert!(AgentRecord::from_bytes(b"\xff\x00").is_err());
}

fn root(version: u64, key: &SigningKey, signers: &[&SigningKey]) -> Signed {
    let role = RoleKeys { keys: BTreeSet::from([key.public().id()]), threshold: 1 };
    let document = Root {
        version,
        expires: u64::MAX,
        keys: BTreeMap::from([(key.public().id(), key.public())]),
        root: role.clone(),
        targets: role.clone(),
        desired: role,
    };
    Signed::sign(&document, signers)
}

#[test]
fn the_stored_root_is_kept_unless_the_file_is_its_successor() {
    let key = SigningKey::generate().expect("key");
    let first = root(1, &key, &[&key]);
    let mut record = AgentRecord::default();
    assert_eq!(record.trusted_root(&first).expect("installed").root().version, 1);
    assert_eq!(record.root, first.to_bytes());

    // A file with the next version, signed by the trusted root keys, is taken and stored.
    let second = root(2, &key, &[&key]);
    assert_eq!(record.trusted_root(&second).expect("rotated").root().version, 2);
    assert_eq!(record.root, second.to_bytes());

    // An older file (an operator restoring an old image) does not take the gateway back.
    assert_eq!(record.trusted_root(&first).expect("kept").root().version, 2);
    // Nor does a root signed by a stranger, whatever its version.
    let stranger = SigningKey::generate().expect("key");
    assert_eq!(record.trusted_root(&root(3, &stranger, &[&stranger])).expect("kept").root().version, 2);
    assert_eq!(record.root, second.to_bytes());
}
