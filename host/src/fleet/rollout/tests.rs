use super::*;
use crate::fleet::record::Outcome;

fn names(n: usize) -> Vec<String> {
    (1..=n).map(|i| format!("gw{i}")).collect()
}

#[test]
fn waves_are_cumulative_and_never_empty() {
    let sizes = [Threshold::Count(1), Threshold::Percent(10), Threshold::Percent(100)];
    let five = waves(&names(5), &sizes);
    // 10 % of five rounds up to one gateway, already taken: the wave still gets one more.
    assert_eq!(five, vec![vec!["gw1"], vec!["gw2"], vec!["gw3", "gw4", "gw5"]]);
    let twenty = waves(&names(20), &sizes);
    assert_eq!(twenty.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 1, 18]);
    assert_eq!(waves(&names(3), &[Threshold::Count(1)]).iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(waves(&names(1), &sizes), vec![vec!["gw1"]]);
    assert!(waves(&[], &sizes).is_empty());
}

#[test]
fn thresholds_read_counts_and_shares() {
    assert_eq!(Threshold::parse("3"), Ok(Threshold::Count(3)));
    assert_eq!(Threshold::parse("25%"), Ok(Threshold::Percent(25)));
    assert!(Threshold::parse("0%").is_err() && Threshold::parse("101%").is_err() && Threshold::parse("x").is_err());
    assert_eq!(Threshold::Percent(25).of(5), 2);
    assert_eq!(Threshold::Percent(100).of(5), 5);
}

fn rollout(gateways: usize) -> Rollout {
    let release =
        Release { version: "1.3.0".into(), sha256: "00".repeat(32), length: 5, world: "operator".into(), counter: 4 };
    Rollout {
        id: "r1".into(),
        started: 0,
        release: BTreeMap::from([("unit-convert".to_owned(), release)]),
        health: HealthGates::default(),
        waves: waves(&names(gateways), &[Threshold::Count(1), Threshold::Percent(100)]),
        success_threshold: Threshold::Percent(100),
        failure_threshold: Threshold::Count(1),
        wave_timeout: 600,
        current: 0,
        current_since: 0,
        state: State::Running,
        parts: BTreeMap::new(),
    }
}

fn assign(rollout: &mut Rollout, gateway: &str, revision: u64) {
    let wave = rollout.waves.iter().position(|w| w.iter().any(|g| g == gateway)).expect("in a wave");
    rollout.parts.insert(
        gateway.to_owned(),
        Part {
            wave,
            assigned: Some(revision),
            assigned_at: 0,
            previous: BTreeMap::new(),
            outcome: PartOutcome::Pending,
        },
    );
}

fn status(gateway: &str, revision: u64, committed: bool) -> (String, GatewayStatus) {
    let outcome = Outcome {
        scope_key: format!("desired.gateway.{gateway}"),
        revision,
        committed,
        reason: if committed { String::new() } else { "in shadow: 1 fault(s)".into() },
        at: 1,
    };
    (gateway.to_owned(), GatewayStatus { gateway: gateway.into(), outcomes: vec![outcome], ..GatewayStatus::default() })
}

#[test]
fn a_canary_that_commits_lets_the_rest_follow() {
    let mut r = rollout(3);
    assert_eq!(r.next(1), Next::Assign(vec!["gw1".into()]));
    assign(&mut r, "gw1", 7);
    assert_eq!(r.next(1), Next::Wait);
    // An outcome of another revision says nothing about this rollout.
    r.observe(&BTreeMap::from([status("gw1", 6, false)]));
    assert_eq!(r.next(1), Next::Wait);
    r.observe(&BTreeMap::from([status("gw1", 7, true)]));
    assert_eq!(r.next(1), Next::Advance);
    r.current = 1;
    assert_eq!(r.next(1), Next::Assign(vec!["gw2".into(), "gw3".into()]));
    assign(&mut r, "gw2", 3);
    assign(&mut r, "gw3", 3);
    r.observe(&BTreeMap::from([status("gw2", 3, true), status("gw3", 3, true)]));
    assert_eq!(r.next(1), Next::Finish);
    assert_eq!(r.tally(1), (2, 0, 0, 0));
}

#[test]
fn a_failing_canary_stops_the_rollout_with_its_reason() {
    let mut r = rollout(3);
    assign(&mut r, "gw1", 7);
    r.observe(&BTreeMap::from([status("gw1", 7, false)]));
    match r.next(1) {
        Next::Stop(reason) => {
            assert!(reason.contains("wave 1 failed on 1 of 1") && reason.contains("fault"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_offline_gateway_stays_pending_and_a_share_below_all_moves_on() {
    let mut r = rollout(5);
    r.success_threshold = Threshold::Percent(75);
    r.current = 1;
    for g in ["gw2", "gw3", "gw4", "gw5"] {
        assign(&mut r, g, 2);
    }
    r.observe(&BTreeMap::from([status("gw2", 2, true), status("gw3", 2, true)]));
    assert_eq!(r.next(10), Next::Wait, "two of four is not 75 %");
    r.observe(&BTreeMap::from([status("gw4", 2, true)]));
    assert_eq!(r.next(10), Next::Finish, "gw5 is offline; three of four suffice");
    assert_eq!(r.tally(1), (3, 0, 1, 0));
}

#[test]
fn a_wave_that_waits_too_long_pauses_and_nothing_moves_unless_running() {
    let mut r = rollout(2);
    assign(&mut r, "gw1", 1);
    match r.next(601) {
        Next::Pause(reason) => assert!(reason.contains("gw1"), "{reason}"),
        other => panic!("{other:?}"),
    }
    r.state = State::Paused { reason: "asked".into() };
    assert_eq!(r.next(1), Next::Idle);
}

#[test]
fn a_release_round_trips_through_its_entry() {
    let entry = FunctionTarget { version: "2".into(), sha256: [7; 32], length: 9, world: World::Decoder, counter: 3 };
    assert_eq!(Release::of(&entry).entry(), Some(entry));
}
