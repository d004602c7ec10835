//! The machine's rules one at a time; `model.rs` checks them together against a scripted broker.

use super::*;

const LIMITS: Limits =
    Limits { held_messages: 4, held_bytes: 1_000, owed_acks: 2, max_message_size: 16, dedup_horizon: 100 };

fn publish(pkid: u16, payload: &str, dup: bool) -> Publish {
    Publish {
        topic: "t".to_owned(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        qos: PublishQos::AtLeastOnce { pkid, dup },
        received_at: 7,
    }
}

fn connected(session_present: bool) -> Admission {
    let mut core = Admission::new(LIMITS);
    core.handle(Event::Connected { session_present });
    while core.poll_action().is_some() {}
    core
}

fn actions(core: &mut Admission) -> Vec<Action> {
    std::iter::from_fn(|| core.poll_action()).collect()
}

/// Receives `publish` and hands it to the pipeline: its ticket, `None` at most once.
fn deliver(core: &mut Admission, publish: Publish) -> (Content, Option<Ticket>) {
    core.handle(Event::Publish(publish));
    take(core)
}

fn pubacks(actions: &[Action]) -> Vec<u16> {
    actions
        .iter()
        .map(|action| match action {
            Action::PubAck { pkid } => *pkid,
            other => panic!("expected a PUBACK, got {other:?}"),
        })
        .collect()
}

#[test]
fn an_identity_is_the_packet_id_and_a_digest_of_topic_and_payload() {
    // The store keeps these bytes across versions: they must not change.
    let identity = identity(0x0102, "t", b"x");
    let hex: String = identity.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, "01026fca3fcfeb33651f070e9903370a0703");
}

#[test]
fn subscribes_only_when_the_broker_has_no_session() {
    let mut core = Admission::new(LIMITS);
    core.handle(Event::Connected { session_present: false });
    assert!(matches!(actions(&mut core).as_slice(), [Action::Subscribe]));
    core.handle(Event::ConnectionLost);
    core.handle(Event::Connected { session_present: true });
    assert!(actions(&mut core).is_empty());
}

#[test]
fn pubacks_follow_commits_in_arrival_order() {
    let mut core = connected(true);
    let (_, first) = deliver(&mut core, publish(1, "a", false));
    let (_, second) = deliver(&mut core, publish(2, "b", false));
    assert!(actions(&mut core).is_empty(), "nothing acknowledged before its commit");
    core.handle(Event::Acknowledged(first.expect("QoS 1")));
    core.handle(Event::Acknowledged(second.expect("QoS 1")));
    assert_eq!(pubacks(&actions(&mut core)), [1, 2]);
}

#[test]
fn an_acknowledgement_ahead_of_an_earlier_delivery_waits_for_it() {
    let mut core = connected(true);
    let (_, first) = deliver(&mut core, publish(1, "a", false));
    let (_, second) = deliver(&mut core, publish(2, "b", false));
    core.handle(Event::Acknowledged(second.expect("QoS 1")));
    assert!(actions(&mut core).is_empty());
    core.handle(Event::Acknowledged(first.expect("QoS 1")));
    assert_eq!(pubacks(&actions(&mut core)), [1, 2]);
}

#[test]
fn pubacks_wait_for_room_in_the_client() {
    let mut core = connected(true);
    let tickets: Vec<_> = (1..=3).map(|pkid| deliver(&mut core, publish(pkid, "x", false)).1.expect("QoS 1")).collect();
    for ticket in &tickets[..2] {
        core.handle(Event::Acknowledged(*ticket));
    }
    assert_eq!(pubacks(&actions(&mut core)), [1, 2]);
    assert!(!core.takes_acks(), "two PUBACKs fill the client");
    core.handle(Event::Acknowledged(tickets[2]));
    assert!(actions(&mut core).is_empty());
    core.handle(Event::PubAckWritten);
    assert_eq!(pubacks(&actions(&mut core)), [3]);
}

#[test]
fn a_delivery_owed_on_a_lost_connection_gets_no_puback_and_its_copy_is_not_processed_again() {
    let mut core = connected(true);
    let (_, ticket) = deliver(&mut core, publish(1, "a", false));
    core.handle(Event::ConnectionLost);
    core.handle(Event::Connected { session_present: true });
    // The copy arrives first: the original is still in the pipeline.
    let (content, copy) = deliver(&mut core, publish(1, "a", true));
    assert!(matches!(content, Content::Copy));
    core.handle(Event::Acknowledged(ticket.expect("QoS 1")));
    assert!(actions(&mut core).is_empty(), "no PUBACK on a connection the message did not come on");
    core.handle(Event::Acknowledged(copy.expect("QoS 1")));
    assert_eq!(pubacks(&actions(&mut core)), [1]);
}

#[test]
fn a_copy_of_a_committed_message_is_handed_over_without_its_message() {
    let mut core = connected(true);
    core.handle(Event::Publish(publish(1, "a", true)));
    let Some(Action::LoadRecent(again)) = core.poll_action() else { panic!("expected a load") };
    core.handle(Event::RecentLoaded(Some(HashSet::from([identity(1, "t", b"a")]))));
    core.handle(Event::Publish(again));
    core.handle(Event::PipelineReady);
    let Some(Action::Deliver(handover)) = core.poll_action() else { panic!("expected a delivery") };
    assert!(matches!(handover.content, Content::Copy));
    assert_eq!(handover.owed.expect("QoS 1").identity, identity(1, "t", b"a"));
    // Loaded once per connection.
    core.handle(Event::Publish(publish(2, "b", true)));
    core.handle(Event::PipelineReady);
    assert!(matches!(core.poll_action(), Some(Action::Deliver(Handover { content: Content::Message(_), .. }))));
}

#[test]
fn a_copy_settled_without_puback_is_remembered_as_committed() {
    let mut core = connected(true);
    let (_, ticket) = deliver(&mut core, publish(1, "a", false));
    core.handle(Event::ConnectionLost);
    core.handle(Event::Connected { session_present: true });
    core.handle(Event::Publish(publish(9, "z", true)));
    let Some(Action::LoadRecent(again)) = core.poll_action() else { panic!("expected a load") };
    core.handle(Event::RecentLoaded(Some(HashSet::new())));
    core.handle(Event::Publish(again));
    core.handle(Event::PipelineReady);
    core.handle(Event::Acknowledged(ticket.expect("QoS 1")));
    assert!(matches!(actions(&mut core).as_slice(), [Action::Deliver(_)]), "no PUBACK across connections");
    // The broker sends the committed message again on this connection.
    let (content, _) = deliver(&mut core, publish(1, "a", true));
    assert!(matches!(content, Content::Copy));
}

#[test]
fn unreadable_recent_identities_process_the_copy_and_the_next_copy_loads_again() {
    let mut core = connected(true);
    core.handle(Event::Publish(publish(1, "a", true)));
    let Some(Action::LoadRecent(again)) = core.poll_action() else { panic!("expected a load") };
    core.handle(Event::RecentLoaded(None));
    core.handle(Event::Publish(again));
    core.handle(Event::PipelineReady);
    assert!(matches!(core.poll_action(), Some(Action::Deliver(Handover { content: Content::Message(_), .. }))));
    core.handle(Event::Publish(publish(2, "b", true)));
    assert!(matches!(core.poll_action(), Some(Action::LoadRecent(_))));
}

#[test]
fn an_oversized_message_is_handed_over_as_a_prefix_to_dead_letter() {
    let mut core = connected(true);
    let (content, ticket) = deliver(&mut core, publish(1, "seventeen bytes!!", false));
    let Content::Oversized(oversized) = content else { panic!("expected an oversized message") };
    assert_eq!((oversized.size, oversized.limit), (17, 16));
    assert!(ticket.is_some(), "acknowledged like any other");
}

#[test]
fn at_most_once_messages_owe_nothing() {
    let mut core = connected(true);
    let mut message = publish(0, "a", false);
    message.qos = PublishQos::AtMostOnce;
    let (content, ticket) = deliver(&mut core, message);
    assert!(matches!(content, Content::Message(_)));
    assert_eq!(ticket, None);
}

/// Hands the oldest held message to the pipeline: its content and ticket.
fn take(core: &mut Admission) -> (Content, Option<Ticket>) {
    core.handle(Event::PipelineReady);
    match actions(core).as_mut_slice() {
        [Action::Deliver(handover)] => {
            let content = std::mem::replace(&mut handover.content, Content::Copy);
            (content, handover.owed.as_ref().map(|owed| owed.ticket))
        }
        other => panic!("expected one delivery, got {other:?}"),
    }
}

#[test]
fn a_full_held_queue_ignores_what_else_comes_and_reconnects_once_what_it_held_is_acknowledged() {
    let mut core = connected(true);
    for pkid in 1..=6 {
        core.handle(Event::Publish(publish(pkid, "x", false)));
    }
    assert!(actions(&mut core).is_empty());
    assert_eq!(core.footprint(), (4, 4, 0, 0), "the first four are kept, the fifth and sixth ignored");
    let tickets: Vec<Ticket> = (0..4).filter_map(|_| take(&mut core).1).collect();
    for ticket in tickets {
        core.handle(Event::Acknowledged(ticket));
    }
    assert_eq!(pubacks(&actions(&mut core)), [1, 2], "as many as the client holds");
    core.handle(Event::PubAckWritten);
    core.handle(Event::PubAckWritten);
    let rest = actions(&mut core);
    assert!(
        matches!(
            rest.as_slice(),
            [Action::PubAck { pkid: 3 }, Action::PubAck { pkid: 4 }, Action::Shed { ignored: 2 }]
        ),
        "PUBACKs for everything held, then the reconnect behind them: {rest:?}"
    );
    core.handle(Event::Publish(publish(7, "x", false)));
    assert!(!core.has_held(), "ignored until the next connection");
    core.handle(Event::ConnectionLost);
    core.handle(Event::Connected { session_present: true });
    core.handle(Event::Publish(publish(5, "x", true)));
    assert!(matches!(actions(&mut core).as_slice(), [Action::LoadRecent(_)]), "taken again on the next connection");
}

#[test]
fn a_saturation_by_at_most_once_messages_ends_without_a_reconnect() {
    let mut core = connected(true);
    let at_most_once = |n: u16| Publish { qos: PublishQos::AtMostOnce, ..publish(n, "y", false) };
    for n in 1..=5 {
        core.handle(Event::Publish(at_most_once(n)));
    }
    assert_eq!(core.footprint().0, 4);
    for _ in 0..4 {
        take(&mut core);
    }
    assert!(actions(&mut core).is_empty(), "nothing to send again: no reconnect");
    core.handle(Event::Publish(at_most_once(6)));
    assert!(core.has_held(), "taking messages again");
}

#[test]
fn one_message_larger_than_the_held_bytes_is_still_held() {
    let mut core = Admission::new(Limits { held_bytes: 8, ..LIMITS });
    core.handle(Event::Connected { session_present: true });
    core.handle(Event::Publish(Publish { payload: Bytes::from(vec![b'z'; 12]), ..publish(1, "", false) }));
    assert_eq!(core.footprint().0, 1, "alone, it fits");
    core.handle(Event::Publish(publish(2, "z", false)));
    assert_eq!(core.footprint().0, 1, "the next one does not");
}

#[test]
fn held_messages_do_not_outlive_their_connection() {
    let mut core = connected(true);
    core.handle(Event::Publish(publish(1, "x", false)));
    core.handle(Event::ConnectionLost);
    assert!(!core.has_held());
}

#[test]
fn a_closed_pipeline_takes_nothing_more_but_its_acknowledgements_still_go_out() {
    let mut core = connected(true);
    let (_, ticket) = deliver(&mut core, publish(1, "a", false));
    core.handle(Event::Publish(publish(2, "b", false)));
    core.handle(Event::PipelineClosed);
    assert!(!core.has_held());
    core.handle(Event::Publish(publish(3, "c", false)));
    assert!(!core.has_held());
    core.handle(Event::Acknowledged(ticket.expect("QoS 1")));
    core.handle(Event::Stop);
    assert!(matches!(actions(&mut core).as_slice(), [Action::PubAck { pkid: 1 }, Action::Disconnect]));
}

#[test]
fn the_dedup_window_covers_both_queues_and_the_pipeline_and_never_falls_below_its_floor() {
    assert_eq!(Limits::new(20, 100, 1).dedup_horizon, MIN_DEDUP_HORIZON as u32);
    let large = Limits::new(10_000, 5_000, 1);
    assert_eq!(large.owed_acks, 20_000);
    assert_eq!(large.dedup_horizon, 45_000);
}
