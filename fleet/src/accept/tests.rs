use proptest::prelude::*;

use super::*;
use crate::document::World;
use crate::testing::{NOW, TestFleet};

fn me() -> GatewayIdentity {
    GatewayIdentity { id: "gw-1".into(), groups: vec!["north".into(), "pumps".into()] }
}

fn code(result: Result<Verdict, Refusal>) -> &'static str {
    match result {
        Ok(Verdict::Newer) => "newer",
        Ok(Verdict::Held) => "held",
        Err(refusal) => refusal.code(),
    }
}

#[test]
fn a_document_for_this_gateway_or_one_of_its_groups_is_accepted() {
    let fleet = TestFleet::new();
    let clock = Clock::Synced(NOW);
    for scope in [Scope::Gateway("gw-1".into()), Scope::Group("pumps".into())] {
        let desired = fleet.desired(scope, 1, &[]);
        assert_eq!(code(check_desired(&desired, &me(), None, &Floors::default(), clock, &fleet.trusted())), "newer");
    }
    for scope in [Scope::Gateway("gw-2".into()), Scope::Group("south".into())] {
        let desired = fleet.desired(scope, 1, &[]);
        let refused = check_desired(&desired, &me(), None, &Floors::default(), clock, &fleet.trusted());
        assert_eq!(code(refused), "not-for-this-gateway");
    }
}

#[test]
fn revisions_only_go_up() {
    let fleet = TestFleet::new();
    let scope = Scope::Gateway("gw-1".into());
    let held = fleet.desired(scope.clone(), 5, &[]);
    let check = |desired: &Desired| {
        check_desired(desired, &me(), Some(&held), &Floors::default(), Clock::Synced(NOW), &fleet.trusted())
    };
    assert_eq!(code(check(&fleet.desired(scope.clone(), 4, &[]))), "revision-went-back");
    assert_eq!(code(check(&held.clone())), "held");
    let mut reused = held.clone();
    reused.expires += 1;
    assert_eq!(code(check(&reused)), "revision-reused");
    assert_eq!(code(check(&fleet.desired(scope, 6, &[]))), "newer");
}

#[test]
fn an_expired_document_is_refused_only_by_a_synced_clock() {
    let fleet = TestFleet::new();
    let scope = Scope::Gateway("gw-1".into());
    let desired = fleet.desired(scope, 3, &[]);
    let at = |clock| code(check_desired(&desired, &me(), None, &Floors::default(), clock, &fleet.trusted()));
    assert_eq!(at(Clock::Synced(desired.expires - 1)), "newer");
    assert_eq!(at(Clock::Synced(desired.expires)), "expired");
    assert_eq!(at(Clock::Synced(fleet.root.expires + 1)), "root-expired");
    // Without a synced clock a newer revision waits, and the refusal says it will clear.
    let waiting = check_desired(&desired, &me(), None, &Floors::default(), Clock::NotSynced, &fleet.trusted());
    assert!(waiting.as_ref().is_err_and(Refusal::is_pending), "{waiting:?}");
}

#[test]
fn without_a_synced_clock_the_held_document_is_never_refused() {
    let fleet = TestFleet::new();
    let held = fleet.desired(Scope::Group("north".into()), 3, &[]);
    let result = check_desired(&held, &me(), Some(&held), &Floors::default(), Clock::NotSynced, &fleet.trusted());
    assert_eq!(code(result), "held");
}

#[test]
fn settings_that_cannot_hold_are_refused() {
    let fleet = TestFleet::new();
    let v2 = fleet.target("unit-convert", "2.0.0", b"v2", 2);
    let check = |desired: &Desired| {
        code(check_desired(desired, &me(), None, &Floors::default(), Clock::Synced(NOW), &fleet.trusted()))
    };
    let mut floor_above_own = fleet.desired(Scope::Gateway("gw-1".into()), 1, &[&v2]);
    floor_above_own.floors.insert("unit-convert".into(), 3);
    assert_eq!(check(&floor_above_own), "ill-formed");
    for tolerance in [f64::NAN, f64::INFINITY, -1.0] {
        let mut desired = fleet.desired(Scope::Gateway("gw-1".into()), 1, &[&v2]);
        desired.health.tolerance = tolerance;
        assert_eq!(check(&desired), "ill-formed", "{tolerance}");
    }
    let mut share = fleet.desired(Scope::Gateway("gw-1".into()), 1, &[&v2]);
    share.health.max_divergent_ppm = 1_000_001;
    assert_eq!(check(&share), "ill-formed");
    let mut fine = fleet.desired(Scope::Gateway("gw-1".into()), 1, &[&v2]);
    fine.floors.insert("unit-convert".into(), 2);
    assert_eq!(check(&fine), "newer");
}

#[test]
fn the_same_revision_is_held_only_when_signed_the_same() {
    let fleet = TestFleet::new();
    let mut held = fleet.desired(Scope::Gateway("gw-1".into()), 5, &[]);
    held.health.tolerance = 0.0;
    let mut negative_zero = held.clone();
    negative_zero.health.tolerance = -0.0;
    let check = |desired: &Desired| {
        code(check_desired(desired, &me(), Some(&held), &Floors::default(), Clock::Synced(NOW), &fleet.trusted()))
    };
    assert_eq!(check(&held.clone()), "held");
    // Equal as numbers, different as signed bytes.
    assert_eq!(check(&negative_zero), "revision-reused");
}

#[test]
fn a_version_below_the_floor_is_refused() {
    let fleet = TestFleet::new();
    let old = fleet.target("unit-convert", "1.0.0", b"v1", 1);
    let desired = fleet.desired(Scope::Gateway("gw-1".into()), 9, &[&old]);
    let floors = Floors([("unit-convert".to_owned(), 2)].into());
    let refused = check_desired(&desired, &me(), None, &floors, Clock::Synced(NOW), &fleet.trusted());
    assert_eq!(code(refused), "below-floor");
}

#[test]
fn the_floor_rises_at_commit_so_rolling_back_to_the_committed_version_stays_possible() {
    let fleet = TestFleet::new();
    let scope = Scope::Gateway("gw-1".into());
    let v1 = fleet.target("unit-convert", "1.0.0", b"v1", 1);
    let v2 = fleet.target("unit-convert", "2.0.0", b"v2", 2);
    let mut floors = Floors::default();
    let first = fleet.desired(scope.clone(), 1, &[&v1]);
    floors.raise_on_commit(&first.functions, &first.floors);
    assert_eq!(floors.of("unit-convert"), 1);
    // v2 is installed and on probation: the floor has not moved, v1 is still acceptable.
    let second = fleet.desired(scope.clone(), 2, &[&v2]);
    assert_eq!(
        code(check_desired(&second, &me(), Some(&first), &floors, Clock::Synced(NOW), &fleet.trusted())),
        "newer"
    );
    let back_to_v1 = fleet.desired(scope.clone(), 3, &[&v1]);
    assert_eq!(
        code(check_desired(&back_to_v1, &me(), Some(&second), &floors, Clock::Synced(NOW), &fleet.trusted())),
        "newer"
    );
    // Once v2 is committed, v1 is below the floor.
    floors.raise_on_commit(&second.functions, &second.floors);
    assert_eq!(
        code(check_desired(&back_to_v1, &me(), Some(&second), &floors, Clock::Synced(NOW), &fleet.trusted())),
        "below-floor"
    );
}

#[test]
fn a_target_must_match_its_entry_in_the_desired_document() {
    let fleet = TestFleet::new();
    let running = semver::Version::new(0, 1, 0);
    let ours = fleet.target("unit-convert", "2.0.0", b"ours", 2);
    let entry = ours.entry();
    assert_eq!(check_target("unit-convert", &entry, &ours, &running), Ok(()));
    // A target from another document: same function, other bytes.
    let theirs = fleet.target("unit-convert", "2.0.0", b"theirs", 2);
    assert_eq!(check_target("unit-convert", &entry, &theirs, &running).map_err(|r| r.code()), Err("target-mismatch"));
    // Another function's target under this name.
    let other = Target { function: "threshold-alert".into(), ..ours.clone() };
    assert_eq!(check_target("unit-convert", &entry, &other, &running).map_err(|r| r.code()), Err("target-mismatch"));
    let decoder = Target { world: World::Decoder, ..ours.clone() };
    assert!(matches!(
        check_target("unit-convert", &entry, &decoder, &running),
        Err(Refusal::TargetMismatch { field: "world", .. })
    ));
    let newer_weir = Target { min_weir: "9.0.0".into(), ..ours };
    assert_eq!(
        check_target("unit-convert", &entry, &newer_weir, &running).map_err(|r| r.code()),
        Err("needs-newer-weir")
    );
}

/// One set of keys for every case: making keys is what would take the time.
static FLEET: std::sync::LazyLock<TestFleet> = std::sync::LazyLock::new(TestFleet::new);

proptest! {
    #[test]
    fn floors_never_go_down(commits in proptest::collection::vec((0u64..20, 0u64..20), 1..20)) {
        let fleet = &*FLEET;
        let mut floors = Floors::default();
        let mut highest = 0;
        for (revision, (counter, asked)) in commits.into_iter().enumerate() {
            let target = fleet.target("f", "v", b"x", counter);
            let mut desired = fleet.desired(Scope::Gateway("gw-1".into()), revision as u64, &[&target]);
            desired.floors.insert("f".into(), asked);
            floors.raise_on_commit(&desired.functions, &desired.floors);
            highest = highest.max(counter).max(asked);
            prop_assert_eq!(floors.of("f"), highest);
        }
    }
}
