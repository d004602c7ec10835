//! The machine against a model of everything around it, under random scripts.
//!
//! The world:
//! - a broker with one persistent session for the source: a queue, and messages in flight with
//!   their packet ids, sent again with DUP, in order, on every new connection. Packet ids are
//!   either unique among the messages in flight and reused as soon as they are free, or handed
//!   out in a cycle that repeats them while in flight (mosquitto before 2.0.13 with more than
//!   65 535 messages in flight); a PUBACK applies to the oldest message in flight with its id.
//!   It may keep more in flight than the source's `max_inflight` says. It may lose the session
//!   on a reconnect.
//! - the connection: PUBLISHes in transit (lost when it is cut, as `super::super::events`
//!   drops them), PUBACKs and DISCONNECT queued in the client (lost when it is cut, as rumqttc
//!   drops them).
//! - the pipeline: a bounded queue of deliveries; it commits a prefix at a time and gives the
//!   tickets back through a bounded queue, in order (as weir's does) or backwards.
//! - the store: how often each message's content was committed (processed or dead-lettered),
//!   and the newest `dedup_horizon` identity commits.
//! - the process: it crashes (everything in memory gone) or stops in order (the pipeline
//!   commits part of what it holds, the source sends the last PUBACKs, then DISCONNECT).
//!
//! A script drives these in any order; after it the world runs fairly until the broker holds
//! nothing. Checked all along: a message the broker considers delivered (it applied a PUBACK to
//! it) is the one the PUBACK was meant for and had its content committed exactly once; no content
//! is committed twice; a PUBACK goes out only while a connection is up, for a delivery of that
//! connection whose commit was acknowledged, following that connection's deliveries in order and
//! without gaps; without a stored session the source subscribes; the held queue is exactly the
//! messages read and not yet handed over, below its limits; the client never holds more than
//! `owed_acks` PUBACKs; deliveries owed an acknowledgement are bounded by what the pipeline and
//! its queue hold. At the end: nothing is stuck.

use std::collections::{HashMap, HashSet, VecDeque};

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestCaseResult;

use super::*;

const TOPIC: &str = "plant/1/boiler";
const MAX_MESSAGE_SIZE: u64 = 16;

/// Numbers the messages the devices publish.
type MsgId = u32;

/// A message's payload: its id, repeated (over `MAX_MESSAGE_SIZE` when `large`).
fn payload(msg: MsgId, large: bool) -> Bytes {
    Bytes::from(msg.to_be_bytes().repeat(if large { 10 } else { 2 }))
}

fn msg_of(payload: &[u8]) -> MsgId {
    u32::from_be_bytes(payload[..4].try_into().expect("a payload starts with its message id"))
}

#[derive(Clone, Copy, Debug)]
struct Params {
    /// The source's `max_inflight`, which its limits follow.
    max_inflight: usize,
    /// What the broker keeps in flight.
    broker_in_flight_limit: usize,
    /// Packet ids are 1..=pkids.
    pkids: u16,
    unique_pkids: bool,
    /// Deliveries the pipeline holds (its queue and batches).
    pipeline_capacity: usize,
    held_messages: usize,
    held_bytes: u64,
    min_owed_acks: usize,
    /// The pipeline gives each batch's tickets back in order, or backwards.
    ordered_acks: bool,
}

impl Params {
    /// The source's limits, by the same rules with smaller floors.
    fn limits(&self) -> Limits {
        let owed_acks = (2 * self.max_inflight).max(self.min_owed_acks);
        Limits {
            held_messages: self.held_messages,
            held_bytes: self.held_bytes,
            owed_acks,
            max_message_size: MAX_MESSAGE_SIZE,
            dedup_horizon: u32::try_from(horizon(owed_acks, self.pipeline_capacity)).expect("small numbers"),
        }
    }
}

fn params() -> impl Strategy<Value = Params> {
    (
        (1..=4usize, 0..=3usize, any::<bool>(), 0..=3u16),
        (
            1..=4usize,
            2..=5usize,
            prop_oneof![Just(48u64), Just(1_000)],
            1..=3usize,
            prop_oneof![3 => Just(true), 1 => Just(false)],
        ),
    )
        .prop_map(
            |(
                (max_inflight, over, unique_pkids, spare),
                (pipeline_capacity, held_messages, held_bytes, min_owed_acks, ordered_acks),
            )| {
                let broker_in_flight_limit = max_inflight + over;
                let limit = u16::try_from(broker_in_flight_limit).expect("small numbers");
                // Cyclic ids: fewer than the messages in flight, so they repeat.
                let pkids = if unique_pkids { limit + spare } else { 1 + spare };
                Params {
                    max_inflight,
                    broker_in_flight_limit,
                    pkids,
                    unique_pkids,
                    pipeline_capacity,
                    held_messages,
                    held_bytes,
                    min_owed_acks,
                    ordered_acks,
                }
            },
        )
}

#[derive(Clone, Debug)]
enum Step {
    /// A device publishes a QoS 1 message (routed to the session if it is subscribed).
    Publish { large: bool },
    /// The broker sends a QoS 0 message at once.
    PublishAtMostOnce,
    /// The broker sends the next message: one in flight not yet sent on this connection, else
    /// a new one if its in-flight limit allows.
    BrokerSend,
    /// The source reads the next PUBLISH.
    Read,
    /// The pipeline takes a held message, if it has room.
    Take,
    /// The pipeline commits its oldest deliveries (as many as its acknowledgement queue takes).
    Commit { count: usize },
    /// The source takes an acknowledgement from the pipeline, if the client has room.
    Ack,
    /// The client writes its next request.
    Write,
    /// The connection fails.
    Cut,
    /// The client connects; the broker may have lost the session.
    Reconnect { session_kept: bool },
    /// The process is killed.
    Crash,
    /// The process stops in order; the pipeline commits `committed` of what it holds.
    Shutdown { committed: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => prop_oneof![4 => Just(false), 1 => Just(true)].prop_map(|large| Step::Publish { large }),
        1 => Just(Step::PublishAtMostOnce),
        10 => Just(Step::BrokerSend),
        10 => Just(Step::Read),
        8 => Just(Step::Take),
        5 => (1..=4usize).prop_map(|count| Step::Commit { count }),
        7 => Just(Step::Ack),
        6 => Just(Step::Write),
        2 => Just(Step::Cut),
        3 => prop_oneof![5 => Just(true), 1 => Just(false)].prop_map(|session_kept| Step::Reconnect { session_kept }),
        1 => Just(Step::Crash),
        1 => (0..=4usize).prop_map(|committed| Step::Shutdown { committed }),
    ]
}

#[derive(Default)]
struct Session {
    subscribed: bool,
    queue: VecDeque<(MsgId, bool)>,
    in_flight: Vec<InFlight>,
    /// The last id handed out in a cycle.
    last_pkid: u16,
}

struct InFlight {
    msg: MsgId,
    large: bool,
    pkid: u16,
    /// The last connection it was sent on.
    sent_on: u64,
}

/// A PUBLISH the source read on the current connection.
struct Read {
    msg: MsgId,
    /// `None` at most once.
    pkid: Option<u16>,
    dup: bool,
    large: bool,
}

/// A delivery in the pipeline.
struct Item {
    msg: MsgId,
    /// It carries content to commit (a message, or one to dead-letter), not only an identity.
    content: bool,
    owed: Option<(Ticket, Vec<u8>)>,
}

enum Request {
    PubAck { pkid: u16, msg: MsgId },
    Disconnect,
}

/// How often the world met each situation, so the script generator can be shown to reach them.
#[derive(Debug, Default)]
struct Seen {
    deliveries: usize,
    copies: usize,
    loads: usize,
    oversized: usize,
    at_most_once: usize,
    saturations: usize,
    sheds: usize,
    delivered: usize,
    repeated_pkids: usize,
    pubacks_lost: usize,
    sessions_lost: usize,
    crashes: usize,
    shutdowns: usize,
    evictions: usize,
}

struct World {
    seen: Seen,
    params: Params,
    limits: Limits,
    core: Admission,
    session: Option<Session>,
    next_msg: MsgId,
    connection: Option<u64>,
    connections: u64,
    /// PUBLISHes in transit on the current connection.
    wire: VecDeque<(MsgId, PublishQos, bool)>,
    client: VecDeque<Request>,
    // The current connection as the source saw it.
    read: Vec<Read>,
    /// Read and held: positions in `read`.
    unhanded: VecDeque<usize>,
    /// QoS 1 deliveries handed to the pipeline: positions in `read`, and tickets.
    handed: Vec<(usize, Ticket)>,
    /// How many of `handed` got their PUBACK.
    pubacked: usize,
    admitting: bool,
    shedding: bool,
    /// QoS 1 messages ignored on this connection while saturated.
    ignored_owed: usize,
    // The pipeline and the store.
    pipeline: VecDeque<Item>,
    acks: VecDeque<Ticket>,
    committed_tickets: HashSet<Ticket>,
    recent: VecDeque<Vec<u8>>,
    commits: HashMap<MsgId, u32>,
}

impl World {
    fn new(params: Params) -> Self {
        let limits = params.limits();
        Self {
            seen: Seen::default(),
            params,
            limits,
            core: Admission::new(limits),
            session: None,
            next_msg: 0,
            connection: None,
            connections: 0,
            wire: VecDeque::new(),
            client: VecDeque::new(),
            read: Vec::new(),
            unhanded: VecDeque::new(),
            handed: Vec::new(),
            pubacked: 0,
            admitting: true,
            shedding: false,
            ignored_owed: 0,
            pipeline: VecDeque::new(),
            acks: VecDeque::new(),
            committed_tickets: HashSet::new(),
            recent: VecDeque::new(),
            commits: HashMap::new(),
        }
    }

    fn run(&mut self, step: &Step) -> TestCaseResult {
        match *step {
            Step::Publish { large } => self.publish(large),
            Step::PublishAtMostOnce => self.publish_at_most_once(),
            Step::BrokerSend => self.broker_send(),
            Step::Read => self.read()?,
            Step::Take => self.take()?,
            Step::Commit { count } => self.commit(count)?,
            Step::Ack => self.ack()?,
            Step::Write => self.write()?,
            Step::Cut => self.cut()?,
            Step::Reconnect { session_kept } => self.reconnect(session_kept)?,
            Step::Crash => self.crash(),
            Step::Shutdown { committed } => self.shutdown(committed)?,
        }
        self.check_bounds()
    }

    fn new_msg(&mut self) -> MsgId {
        self.next_msg += 1;
        self.next_msg
    }

    fn publish(&mut self, large: bool) {
        let msg = self.new_msg();
        if let Some(session) = self.session.as_mut().filter(|s| s.subscribed) {
            session.queue.push_back((msg, large));
        }
    }

    fn publish_at_most_once(&mut self) {
        let msg = self.new_msg();
        if self.connection.is_some() && self.session.as_ref().is_some_and(|s| s.subscribed) {
            self.wire.push_back((msg, PublishQos::AtMostOnce, false));
        }
    }

    fn broker_send(&mut self) {
        let (Some(connection), Some(session)) = (self.connection, self.session.as_mut()) else { return };
        if let Some(again) = session.in_flight.iter_mut().find(|m| m.sent_on != connection) {
            again.sent_on = connection;
            self.wire.push_back((again.msg, PublishQos::AtLeastOnce { pkid: again.pkid, dup: true }, again.large));
            return;
        }
        if session.in_flight.len() >= self.params.broker_in_flight_limit {
            return;
        }
        let Some((msg, large)) = session.queue.pop_front() else { return };
        let pkid = if self.params.unique_pkids {
            (1..=self.params.pkids)
                .find(|p| session.in_flight.iter().all(|m| m.pkid != *p))
                .expect("more ids than the in-flight limit")
        } else {
            session.last_pkid = session.last_pkid % self.params.pkids + 1;
            session.last_pkid
        };
        if session.in_flight.iter().any(|m| m.pkid == pkid) {
            self.seen.repeated_pkids += 1;
        }
        session.in_flight.push(InFlight { msg, large, pkid, sent_on: connection });
        self.wire.push_back((msg, PublishQos::AtLeastOnce { pkid, dup: false }, large));
    }

    fn read(&mut self) -> TestCaseResult {
        let Some((msg, qos, large)) = self.wire.pop_front() else { return Ok(()) };
        let (pkid, dup) = match qos {
            PublishQos::AtMostOnce => (None, false),
            PublishQos::AtLeastOnce { pkid, dup } => (Some(pkid), dup),
        };
        let (held_before, bytes_before, ..) = self.core.footprint();
        let was_saturated = self.core.is_saturated();
        let position = self.read.len();
        self.read.push(Read { msg, pkid, dup, large });
        let publish = Publish { topic: TOPIC.to_owned(), payload: payload(msg, large), qos, received_at: 0 };
        self.core.handle(Event::Publish(publish));
        self.drain()?;
        if !self.admitting || self.shedding {
            return Ok(());
        }
        if self.core.footprint().0 > held_before {
            self.unhanded.push_back(position);
            return Ok(());
        }
        // Ignored: the held queue is full, or was on this connection.
        prop_assert!(self.core.is_saturated(), "message {} neither held nor ignored for saturation", msg);
        if !was_saturated {
            self.seen.saturations += 1;
            // At most: a copy holds no bytes.
            let size = payload(msg, large).len().min(crate::state::DEAD_LETTER_PAYLOAD_PREFIX) as u64;
            prop_assert!(
                held_before > 0
                    && (held_before >= self.limits.held_messages || bytes_before + size > self.limits.held_bytes),
                "saturated with {} messages ({} bytes) held",
                held_before,
                bytes_before
            );
        }
        self.ignored_owed += usize::from(pkid.is_some());
        Ok(())
    }

    fn take(&mut self) -> TestCaseResult {
        if self.pipeline.len() < self.params.pipeline_capacity && self.core.has_held() {
            self.core.handle(Event::PipelineReady);
            self.drain()?;
        }
        Ok(())
    }

    /// The pipeline commits up to `count` of its oldest deliveries and gives their tickets back.
    fn commit(&mut self, count: usize) -> TestCaseResult {
        let mut room = self.limits.owed_acks - self.acks.len();
        let mut tickets = Vec::new();
        for _ in 0..count {
            let Some(item) = self.pipeline.front() else { break };
            if item.owed.is_some() && room == 0 {
                break;
            }
            let item = self.pipeline.pop_front().expect("looked at above");
            if item.content {
                let commits = self.commits.entry(item.msg).or_default();
                *commits += 1;
                prop_assert_eq!(*commits, 1, "message {} processed twice", item.msg);
            }
            if let Some((ticket, identity)) = item.owed {
                self.recent.push_back(identity);
                if self.recent.len() > self.limits.dedup_horizon as usize {
                    self.seen.evictions += 1;
                    self.recent.pop_front();
                }
                self.committed_tickets.insert(ticket);
                tickets.push(ticket);
                room -= 1;
            }
        }
        if !self.params.ordered_acks {
            tickets.reverse();
        }
        self.acks.extend(tickets);
        Ok(())
    }

    fn ack(&mut self) -> TestCaseResult {
        if self.core.takes_acks()
            && let Some(ticket) = self.acks.pop_front()
        {
            self.core.handle(Event::Acknowledged(ticket));
            self.drain()?;
        }
        Ok(())
    }

    fn write(&mut self) -> TestCaseResult {
        match self.client.pop_front() {
            None => Ok(()),
            Some(Request::PubAck { pkid, msg }) => {
                self.broker_applies(pkid, msg)?;
                self.core.handle(Event::PubAckWritten);
                self.drain()
            }
            Some(Request::Disconnect) => self.cut(),
        }
    }

    /// The broker reads a PUBACK.
    fn broker_applies(&mut self, pkid: u16, msg: MsgId) -> TestCaseResult {
        let session = self.session.as_mut().expect("a connection has a session");
        let Some(oldest) = session.in_flight.iter().position(|m| m.pkid == pkid) else {
            return Err(TestCaseError::fail(format!("PUBACK {pkid} for no message in flight")));
        };
        let applied = session.in_flight.remove(oldest);
        self.seen.delivered += 1;
        prop_assert_eq!(applied.msg, msg, "the broker applied the PUBACK for {} to {}", msg, applied.msg);
        prop_assert_eq!(self.commits.get(&msg), Some(&1), "message {} delivered without being committed once", msg);
        Ok(())
    }

    fn cut(&mut self) -> TestCaseResult {
        if self.connection.take().is_none() {
            return Ok(());
        }
        self.forget_connection();
        self.core.handle(Event::ConnectionLost);
        self.drain()
    }

    fn forget_connection(&mut self) {
        self.seen.pubacks_lost += self.client.iter().filter(|r| matches!(r, Request::PubAck { .. })).count();
        self.connection = None;
        self.wire.clear();
        self.client.clear();
        self.read.clear();
        self.unhanded.clear();
        self.handed.clear();
        self.pubacked = 0;
        self.ignored_owed = 0;
    }

    fn reconnect(&mut self, session_kept: bool) -> TestCaseResult {
        if self.connection.is_some() {
            return Ok(());
        }
        let session_present = session_kept && self.session.is_some();
        if !session_present {
            self.seen.sessions_lost += usize::from(self.session.is_some());
            // Whatever the old session held is never delivered.
            self.session = Some(Session::default());
        }
        self.connections += 1;
        self.connection = Some(self.connections);
        self.shedding = false;
        self.core.handle(Event::Connected { session_present });
        if !session_present {
            prop_assert!(
                matches!(self.core.poll_action(), Some(Action::Subscribe)),
                "without a stored session the source subscribes"
            );
            self.session.as_mut().expect("made above").subscribed = true;
        }
        self.drain()
    }

    fn crash(&mut self) {
        self.seen.crashes += 1;
        self.forget_connection();
        self.pipeline.clear();
        self.acks.clear();
        self.committed_tickets.clear();
        self.core = Admission::new(self.limits);
        self.admitting = true;
        self.shedding = false;
    }

    fn shutdown(&mut self, committed: usize) -> TestCaseResult {
        self.seen.shutdowns += 1;
        self.core.handle(Event::PipelineClosed);
        self.admitting = false;
        self.unhanded.clear();
        self.drain()?;
        // The pipeline commits what it can; the rest is never acknowledged.
        self.commit(committed)?;
        self.pipeline.clear();
        // The source's last acknowledgements, then DISCONNECT behind them.
        while self.core.takes_acks()
            && let Some(ticket) = self.acks.pop_front()
        {
            self.core.handle(Event::Acknowledged(ticket));
            self.drain()?;
        }
        self.core.handle(Event::Stop);
        prop_assert!(matches!(self.core.poll_action(), Some(Action::Disconnect)), "stopping disconnects");
        prop_assert!(self.core.poll_action().is_none());
        while self.connection.is_some() {
            match self.client.pop_front() {
                Some(Request::PubAck { pkid, msg }) => self.broker_applies(pkid, msg)?,
                Some(Request::Disconnect) | None => self.forget_connection(),
            }
        }
        self.crash();
        Ok(())
    }

    /// Carries out the machine's actions, checking each.
    fn drain(&mut self) -> TestCaseResult {
        while let Some(action) = self.core.poll_action() {
            match action {
                Action::Subscribe => prop_assert!(false, "a subscription with the session present"),
                Action::LoadRecent(publish) => {
                    self.seen.loads += 1;
                    self.core.handle(Event::RecentLoaded(Some(self.recent.iter().cloned().collect())));
                    self.core.handle(Event::Publish(publish));
                }
                Action::Deliver(handover) => self.hand_to_pipeline(handover)?,
                Action::PubAck { pkid } => self.puback(pkid)?,
                Action::Shed { .. } => {
                    self.seen.sheds += 1;
                    prop_assert!(self.connection.is_some());
                    prop_assert!(self.ignored_owed > 0, "a reconnect with no QoS 1 message to send again");
                    prop_assert!(self.unhanded.is_empty(), "a reconnect before everything held was handed over");
                    prop_assert_eq!(self.pubacked, self.handed.len(), "a reconnect before every PUBACK was queued");
                    self.shedding = true;
                    self.client.push_back(Request::Disconnect);
                }
                Action::Disconnect => prop_assert!(false, "DISCONNECT before stopping"),
            }
        }
        Ok(())
    }

    fn hand_to_pipeline(&mut self, handover: Handover) -> TestCaseResult {
        prop_assert!(self.pipeline.len() < self.params.pipeline_capacity, "a delivery without room in the pipeline");
        let Some(position) = self.unhanded.pop_front() else {
            return Err(TestCaseError::fail("a delivery of a message not held"));
        };
        let read = &self.read[position];
        self.seen.deliveries += 1;
        self.seen.at_most_once += usize::from(read.pkid.is_none());
        let content = match &handover.content {
            Content::Message(message) => {
                prop_assert!(!read.large && msg_of(&message.payload) == read.msg, "not the oldest held message");
                true
            }
            Content::Oversized(oversized) => {
                prop_assert!(
                    read.large && msg_of(&oversized.prefix.payload) == read.msg,
                    "not the oldest held message"
                );
                self.seen.oversized += 1;
                true
            }
            Content::Copy => {
                prop_assert!(read.dup, "only a message sent again is taken for a copy");
                self.seen.copies += 1;
                false
            }
        };
        match (&handover.owed, read.pkid) {
            (Some(owed), Some(pkid)) => {
                prop_assert_eq!(&owed.identity, &identity(pkid, TOPIC, &payload(read.msg, read.large)));
                self.handed.push((position, owed.ticket));
            }
            (None, None) => {}
            _ => prop_assert!(false, "an acknowledgement is owed exactly for QoS 1"),
        }
        let owed = handover.owed.map(|owed| (owed.ticket, owed.identity));
        self.pipeline.push_back(Item { msg: read.msg, content, owed });
        Ok(())
    }

    fn puback(&mut self, pkid: u16) -> TestCaseResult {
        prop_assert!(self.connection.is_some(), "a PUBACK with no connection up");
        let Some(&(position, ticket)) = self.handed.get(self.pubacked) else {
            return Err(TestCaseError::fail(format!("PUBACK {pkid} for no delivery of this connection")));
        };
        let read = &self.read[position];
        prop_assert_eq!(Some(pkid), read.pkid, "PUBACKs follow the connection's deliveries in order");
        prop_assert!(self.committed_tickets.contains(&ticket), "a PUBACK before its delivery's commit");
        self.pubacked += 1;
        self.client.push_back(Request::PubAck { pkid, msg: read.msg });
        Ok(())
    }

    fn check_bounds(&self) -> TestCaseResult {
        let (held, held_bytes, owed, pubacks_in_client) = self.core.footprint();
        prop_assert_eq!(held, self.unhanded.len(), "the held queue is what was read and not handed over");
        prop_assert!(held <= 1 || (held <= self.limits.held_messages && held_bytes <= self.limits.held_bytes));
        let capacity = self.params.pipeline_capacity;
        prop_assert!(
            owed <= 2 * capacity + self.limits.owed_acks,
            "{} deliveries owed an acknowledgement, more than the pipeline and its queue hold",
            owed
        );
        let pubacks = self.client.iter().filter(|r| matches!(r, Request::PubAck { .. })).count();
        prop_assert_eq!(pubacks, pubacks_in_client, "the machine counts the PUBACKs in the client");
        prop_assert!(pubacks <= self.limits.owed_acks);
        Ok(())
    }

    fn is_idle(&self) -> bool {
        self.session.as_ref().is_none_or(|s| s.queue.is_empty() && s.in_flight.is_empty())
            && self.wire.is_empty()
            && self.pipeline.is_empty()
            && self.acks.is_empty()
            && !self.core.has_held()
    }

    /// Runs the world fairly, without faults, until the broker holds nothing.
    fn settle_down(&mut self) -> TestCaseResult {
        for _ in 0..50 + 20 * self.next_msg {
            if self.connection.is_none() {
                self.reconnect(true)?;
            }
            if self.is_idle() {
                return Ok(());
            }
            self.broker_send();
            self.read()?;
            self.take()?;
            self.commit(usize::MAX)?;
            while self.core.takes_acks() && !self.acks.is_empty() {
                self.ack()?;
            }
            while self.connection.is_some() && !self.client.is_empty() {
                self.write()?;
            }
            self.check_bounds()?;
        }
        Err(TestCaseError::fail("the broker still holds messages: a delivery is stuck"))
    }
}

fn run(params: Params, steps: &[Step]) -> Result<Seen, TestCaseError> {
    let mut world = World::new(params);
    for step in steps {
        world.run(step)?;
    }
    world.settle_down()?;
    Ok(world.seen)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn delivered_messages_are_committed_once_and_acknowledged_in_order_on_their_connection(
        params in params(),
        steps in vec(step(), 1..400),
    ) {
        run(params, &steps)?;
    }
}

/// The scripts reach every situation the properties are about, many times over.
#[test]
fn the_scripts_reach_every_situation() {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = (params(), vec(step(), 1..400));
    let mut total = Seen::default();
    for _ in 0..400 {
        let (params, steps) = strategy.new_tree(&mut runner).expect("a script").current();
        let seen = run(params, &steps).expect("the properties hold");
        total.deliveries += seen.deliveries;
        total.copies += seen.copies;
        total.loads += seen.loads;
        total.oversized += seen.oversized;
        total.at_most_once += seen.at_most_once;
        total.saturations += seen.saturations;
        total.sheds += seen.sheds;
        total.delivered += seen.delivered;
        total.repeated_pkids += seen.repeated_pkids;
        total.pubacks_lost += seen.pubacks_lost;
        total.sessions_lost += seen.sessions_lost;
        total.crashes += seen.crashes;
        total.shutdowns += seen.shutdowns;
        total.evictions += seen.evictions;
    }
    println!("{total:#?}");
    let Seen {
        deliveries,
        copies,
        loads,
        oversized,
        at_most_once,
        saturations,
        sheds,
        delivered,
        repeated_pkids,
        pubacks_lost,
        sessions_lost,
        crashes,
        shutdowns,
        evictions,
    } = total;
    for (situation, count) in [
        ("deliveries", deliveries),
        ("copies", copies),
        ("loads", loads),
        ("oversized", oversized),
        ("at most once", at_most_once),
        ("saturations", saturations),
        ("sheds", sheds),
        ("delivered", delivered),
        ("repeated packet ids", repeated_pkids),
        ("PUBACKs lost", pubacks_lost),
        ("sessions lost", sessions_lost),
        ("crashes", crashes),
        ("shutdowns", shutdowns),
        ("identities beyond the dedup horizon", evictions),
    ] {
        assert!(count >= 20, "{situation}: seen {count} times");
    }
}

/// Scripts of the situations the rules exist for, each run to the end like the random ones.
mod scenarios {
    use super::*;

    fn params(max_inflight: usize, unique_pkids: bool, pipeline_capacity: usize, held_messages: usize) -> Params {
        let limit = u16::try_from(max_inflight).expect("small numbers");
        Params {
            max_inflight,
            broker_in_flight_limit: max_inflight,
            pkids: if unique_pkids { limit } else { 1 },
            unique_pkids,
            pipeline_capacity,
            held_messages,
            held_bytes: 1_000,
            min_owed_acks: 1,
            ordered_acks: true,
        }
    }

    fn run_script(params: Params, steps: &[Step]) -> Seen {
        match run(params, steps) {
            Ok(seen) => seen,
            Err(e) => panic!("{e}"),
        }
    }

    use Step::{Ack, BrokerSend, Commit, Crash, Cut, Publish, Read, Reconnect, Take, Write};

    const CONNECT: Step = Reconnect { session_kept: true };
    const MESSAGE: Step = Publish { large: false };

    #[test]
    fn a_crash_between_commit_and_puback_does_not_process_the_redelivery_again() {
        let seen =
            run_script(params(1, true, 1, 2), &[CONNECT, MESSAGE, BrokerSend, Read, Take, Commit { count: 1 }, Crash]);
        assert_eq!((seen.loads, seen.copies, seen.delivered), (1, 1, 1));
    }

    #[test]
    fn a_copy_of_a_message_still_in_the_pipeline_goes_through_behind_it() {
        let steps = [CONNECT, MESSAGE, BrokerSend, Read, Take, Cut, CONNECT, BrokerSend, Read, Take];
        let seen = run_script(params(1, true, 2, 2), &steps);
        assert_eq!((seen.loads, seen.copies, seen.delivered), (0, 1, 1));
    }

    #[test]
    fn pubacks_lost_with_the_connection_bring_copies_that_are_not_processed_again() {
        let steps = [
            CONNECT,
            MESSAGE,
            MESSAGE,
            BrokerSend,
            BrokerSend,
            Read,
            Read,
            Take,
            Take,
            Commit { count: 2 },
            Ack,
            Ack,
            Cut,
        ];
        let seen = run_script(params(2, true, 2, 3), &steps);
        assert_eq!((seen.pubacks_lost, seen.copies, seen.delivered), (2, 2, 2));
    }

    #[test]
    fn with_packet_ids_repeating_in_flight_each_puback_reaches_its_message() {
        let mut steps = vec![CONNECT, MESSAGE, MESSAGE, MESSAGE, BrokerSend, BrokerSend, BrokerSend];
        steps.extend([Read, Read, Read, Take, Take, Take, Commit { count: 3 }, Ack, Write, Cut]);
        let seen = run_script(params(3, false, 3, 4), &steps);
        assert_eq!((seen.repeated_pkids, seen.copies, seen.delivered), (2, 2, 3));
    }

    #[test]
    fn a_full_held_queue_is_processed_then_the_broker_sends_the_rest_again() {
        let mut steps = vec![CONNECT, MESSAGE, MESSAGE, MESSAGE, MESSAGE];
        steps.extend([BrokerSend, BrokerSend, BrokerSend, BrokerSend, Read, Read, Read, Read]);
        let seen = run_script(params(4, true, 1, 2), &steps);
        // Nothing held is owed on the lost connection: no copies.
        assert_eq!((seen.saturations, seen.sheds, seen.copies, seen.delivered), (1, 1, 0, 4));
    }
}
