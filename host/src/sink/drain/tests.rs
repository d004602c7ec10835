//! The drain against a model: a model store (the outbox, durability, reservations, and a
//! full-outbox policy that coarsens unreserved records) and a scripted broker that drops
//! publishes, loses acks, confirms out of order, repeats confirmations, refuses records too
//! large for it, loses the connection (whose buffered publishes may still arrive later) and
//! answers reconciliation with a subset of what it holds. The script also stops the drain at any
//! point; a stopped drain is started again from what the model store holds, as the gateway does.
//!
//! Checked at every action: a record is published only if it is durable, covered by a committed
//! reservation, still in the outbox as read, not after the stop, and not after a failure before
//! the broker was asked what it stored; never more than `max_in_flight` publishes are
//! outstanding; a save deletes only records the broker stored (or refused for good), each once;
//! a stop finishes within the grace. At the end, once the broker is well again: the outbox is
//! empty, and the broker holds — counting each id once — exactly the records that stayed in the
//! outbox, each with the body it had, and nothing a coarsening replaced.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use proptest::prelude::*;
use rangemap::RangeInclusiveSet;

use super::*;

/// The record id's prefix: gateway `gw`, stream `s`.
const ID_PREFIX: &str = "gw.s.";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flavor {
    /// Confirmations carry the broker's position; the broker can be asked what it stored.
    JetStream,
    /// No positions; the broker cannot be asked.
    Mqtt,
}

/// What the world does next, while the drain waits (or, for faults, to its next request).
#[derive(Clone, Debug)]
enum Move {
    /// The pipeline commits records (not durable yet); the last one too large for the broker.
    Append { records: u8, oversized: bool },
    /// Everything committed becomes durable.
    Durable,
    /// The full-outbox policy merges the oldest run of unreserved records into one.
    Coarsen,
    /// The broker stores a pending publish and confirms it.
    Confirm(u8),
    /// The broker stores a pending publish; its ack is lost.
    LoseAck(u8),
    /// A pending publish is lost before the broker: no answer ever.
    LosePublish(u8),
    /// A pending publish fails (perhaps after all stored).
    Fail { index: u8, stored: bool },
    /// An answer already given comes again.
    Repeat(u8),
    /// The connection is lost: each publish outstanding is stored, kept in the client's buffer
    /// (stored later, perhaps), or lost, by the bits of `stored` and `buffered`.
    Cut { stored: u8, buffered: u8 },
    /// The oldest publish in a dead connection's buffer reaches the broker.
    LateStore,
    /// Time passes until the drain's deadline.
    Elapse,
    /// The gateway stops (the drain is started again afterwards).
    Stop,
    /// The next store operation fails.
    StoreFault,
    /// The next hand-over fails.
    HandOverFault,
    /// The next question to the broker fails.
    AskFault,
    /// The next answer to the question leaves out the records whose index bit is clear.
    Subset(u8),
}

fn a_move() -> impl Strategy<Value = Move> {
    prop_oneof![
        5 => (1u8..4, proptest::bool::weighted(0.05)).prop_map(|(records, oversized)| Move::Append { records, oversized }),
        3 => Just(Move::Durable),
        1 => Just(Move::Coarsen),
        8 => any::<u8>().prop_map(Move::Confirm),
        1 => any::<u8>().prop_map(Move::LoseAck),
        1 => any::<u8>().prop_map(Move::LosePublish),
        1 => (any::<u8>(), any::<bool>()).prop_map(|(index, stored)| Move::Fail { index, stored }),
        1 => any::<u8>().prop_map(Move::Repeat),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(stored, buffered)| Move::Cut { stored, buffered }),
        1 => Just(Move::LateStore),
        3 => Just(Move::Elapse),
        1 => Just(Move::Stop),
        1 => Just(Move::StoreFault),
        1 => Just(Move::HandOverFault),
        1 => Just(Move::AskFault),
        1 => any::<u8>().prop_map(Move::Subset),
    ]
}

fn an_order() -> impl Strategy<Value = DrainPolicy> {
    prop_oneof![
        Just(DrainPolicy::Fifo),
        (8u64..200).prop_map(|backlog_bytes_per_second| DrainPolicy::LiveFirst { backlog_bytes_per_second }),
    ]
}

/// A publish the broker has seen.
#[derive(Clone, Debug)]
struct Publish {
    ticket: Ticket,
    seq: u64,
    body: Bytes,
}

fn is_oversized(body: &[u8]) -> bool {
    body.starts_with(b"big")
}

fn bit(mask: u8, index: usize) -> bool {
    mask & (1 << (index % 8)) != 0
}

/// The store, the broker and the script's faults.
struct World {
    flavor: Flavor,
    max_in_flight: usize,
    now: Instant,
    moves: VecDeque<Move>,

    /// The outbox: seq → body.
    records: BTreeMap<u64, Bytes>,
    last_seq: u64,
    durable: u64,
    reserved: RangeInclusiveSet<u64>,
    position: u64,
    dead: BTreeSet<u64>,
    /// What each seq should end up as centrally: the record as it stands or stood when it left.
    expected: BTreeMap<u64, Bytes>,

    /// What the broker stored, in order (position = index + 1).
    log: Vec<(u64, Bytes)>,
    /// Publishes awaiting an answer.
    pending: Vec<Publish>,
    /// Publishes that will never be answered (the drain's timeout has to notice).
    silent: Vec<Publish>,
    /// Publishes the drain gave up on that may still reach the broker.
    buffered: Vec<Publish>,
    /// Answers given, to be repeated.
    answered: Vec<(Ticket, Result<Confirmed, PublishError>)>,

    store_faults: u32,
    hand_over_faults: u32,
    ask_faults: u32,
    subset: Option<u8>,

    /// Since the last failure, the broker was not asked what it stored.
    must_ask: bool,
    /// Records this run of the drain was told the broker holds (confirmed, or found by
    /// reconciling): never to be sent again.
    told_stored: BTreeSet<u64>,
    /// When the stop was requested.
    stop_at: Option<Instant>,
    /// The script is played out and the world calm: this stop is the last.
    last_stop: bool,
}

impl World {
    fn new(flavor: Flavor, max_in_flight: usize, moves: Vec<Move>) -> Self {
        Self {
            flavor,
            max_in_flight,
            now: Instant::now(),
            moves: moves.into(),
            records: BTreeMap::new(),
            last_seq: 0,
            durable: 0,
            reserved: RangeInclusiveSet::new(),
            position: 0,
            dead: BTreeSet::new(),
            expected: BTreeMap::new(),
            log: Vec::new(),
            pending: Vec::new(),
            silent: Vec::new(),
            buffered: Vec::new(),
            answered: Vec::new(),
            store_faults: 0,
            hand_over_faults: 0,
            ask_faults: 0,
            subset: None,
            must_ask: true,
            told_stored: BTreeSet::new(),
            stop_at: None,
            last_stop: false,
        }
    }

    fn start(&self) -> Start {
        Start {
            position: self.position,
            reserved: self.reserved.iter().cloned().collect(),
            publishable: self.durable,
            seed: self.last_seq,
        }
    }

    fn append(&mut self, records: u8, oversized: bool) {
        for i in 0..records {
            self.last_seq += 1;
            let seq = self.last_seq;
            let body = if oversized && i + 1 == records { format!("big{seq}") } else { format!("r{seq}") };
            let body = Bytes::from(body);
            self.records.insert(seq, body.clone());
            self.expected.insert(seq, body);
        }
    }

    /// Merges the oldest run (2 to 4 records) of unreserved records into one, at the run's
    /// first seq, as a full outbox's policy does.
    fn coarsen(&mut self) {
        let mut run: Vec<u64> = Vec::new();
        for &seq in self.records.keys() {
            if self.reserved.contains(&seq) {
                if run.len() >= 2 {
                    break;
                }
                run.clear();
                continue;
            }
            run.push(seq);
            if run.len() == 4 {
                break;
            }
        }
        let (Some(&first), Some(&last)) = (run.first(), run.last()) else { return };
        if run.len() < 2 {
            return;
        }
        for seq in &run {
            self.records.remove(seq);
            self.expected.remove(seq);
        }
        let body = Bytes::from(format!("c{first}-{last}"));
        self.records.insert(first, body.clone());
        self.expected.insert(first, body);
    }

    /// The broker stores a publish; its position.
    fn store(&mut self, publish: &Publish) -> Result<u64, TestCaseError> {
        if let Some((_, earlier)) = self.log.iter().find(|(seq, _)| *seq == publish.seq) {
            prop_assert_eq!(earlier, &publish.body, "two different records under id {}", publish.seq);
        }
        self.log.push((publish.seq, publish.body.clone()));
        Ok(self.log.len() as u64)
    }

    fn confirmation(&self, position: u64) -> Confirmed {
        match self.flavor {
            Flavor::JetStream => Confirmed { position: Some(position) },
            Flavor::Mqtt => Confirmed { position: None },
        }
    }

    /// The drain gave up on what is outstanding (a backoff, a restart): it may still arrive.
    fn give_up_outstanding(&mut self) {
        self.buffered.append(&mut self.pending);
        self.silent.clear();
    }

    fn stopping(&self) -> bool {
        self.stop_at.is_some()
    }

    fn calm(&self) -> bool {
        self.moves.is_empty()
            && self.records.is_empty()
            && self.durable == self.last_seq
            && self.pending.is_empty()
            && self.silent.is_empty()
    }

    /// The script's next move; once it is played out, the broker behaves.
    fn next_move(&mut self) -> Move {
        if let Some(next) = self.moves.pop_front() {
            return next;
        }
        if self.calm() {
            self.last_stop = true;
            Move::Stop
        } else if !self.pending.is_empty() {
            Move::Confirm(0)
        } else if self.durable < self.last_seq {
            Move::Durable
        } else {
            Move::Elapse
        }
    }

    /// The stop, if it is the next move: it then answers the action.
    fn stop_first(&mut self) -> bool {
        if matches!(self.moves.front(), Some(Move::Stop)) && !self.stopping() {
            self.moves.pop_front();
            self.stop_at = Some(self.now);
            return true;
        }
        false
    }

    /// Carries out one action of the drain and says what came of it.
    fn perform(&mut self, action: Action) -> Result<Event, TestCaseError> {
        match action {
            Action::AskStored { position } => self.ask(position),
            Action::MeasureBacklog => {
                prop_assert!(!self.stopping(), "measured the backlog after the stop");
                Ok(Event::Backlog { records: self.records.len() as u64, last_seq: Some(self.last_seq) })
            }
            Action::Read { after, limit } => {
                prop_assert!(!self.stopping(), "read the outbox after the stop");
                if take(&mut self.store_faults) {
                    return Ok(Event::Read(Err("disk failed".into())));
                }
                let records = self.records.range(after + 1..).take(limit);
                let records = records.map(|(&seq, body)| OutgoingRecord {
                    seq,
                    id: format!("{ID_PREFIX}{seq}"),
                    body: body.clone(),
                });
                Ok(Event::Read(Ok(records.collect())))
            }
            Action::Reserve(seqs) => {
                prop_assert!(!self.stopping(), "reserved after the stop");
                if take(&mut self.store_faults) {
                    return Ok(Event::Reserved(Err("disk failed".into())));
                }
                self.reserved.insert(seqs);
                Ok(Event::Reserved(Ok(())))
            }
            Action::Publish(ticket, record) => self.publish(ticket, record),
            Action::Save(save) => self.save(&save),
            Action::Backoff { until } => {
                prop_assert!(until > self.now, "a backoff of nothing");
                prop_assert!(!self.stopping(), "backed off after the stop");
                self.give_up_outstanding();
                self.must_ask = true;
                if self.stop_first() {
                    return Ok(Event::StopRequested);
                }
                self.now = until;
                Ok(Event::Tick)
            }
            Action::Wait { until } => {
                prop_assert!(until > self.now, "a wait for nothing");
                self.wait(until)
            }
            Action::Finish => unreachable!("the driver handles the finish"),
        }
    }

    fn ask(&mut self, position: u64) -> Result<Event, TestCaseError> {
        prop_assert!(!self.stopping(), "asked the broker after the stop");
        prop_assert!(self.pending.is_empty() && self.silent.is_empty(), "asked with publishes outstanding");
        if self.stop_first() {
            return Ok(Event::StopRequested);
        }
        if take(&mut self.ask_faults) {
            return Ok(Event::Stored(Err(PublishError::transient("no answer"))));
        }
        self.must_ask = false;
        if self.flavor == Flavor::Mqtt {
            return Ok(Event::Stored(Ok(Found::default())));
        }
        let subset = self.subset.take().unwrap_or(u8::MAX);
        let mut found = Found::default();
        let after = self.log.iter().enumerate().skip(usize::try_from(position).unwrap_or(usize::MAX));
        for (index, (seq, _)) in after.filter(|(index, _)| bit(subset, *index)) {
            self.told_stored.insert(*seq);
            found.records.push(*seq);
            found.position = index as u64 + 1;
        }
        Ok(Event::Stored(Ok(found)))
    }

    fn publish(&mut self, ticket: Ticket, record: OutgoingRecord) -> Result<Event, TestCaseError> {
        let seq = record.seq;
        prop_assert!(!self.stopping(), "published {} after the stop", seq);
        prop_assert!(!self.must_ask, "sent {} after a failure before asking the broker", seq);
        prop_assert!(seq <= self.durable, "published {} before it was durable ({})", seq, self.durable);
        prop_assert!(self.reserved.contains(&seq), "published {} without a reservation", seq);
        prop_assert!(!self.told_stored.contains(&seq), "sent {} again though the broker said it holds it", seq);
        prop_assert_eq!(self.records.get(&seq), Some(&record.body), "published {} not as the outbox holds it", seq);
        prop_assert_eq!(&record.id, &format!("{ID_PREFIX}{seq}"));
        let outstanding = self.pending.len() + self.silent.len();
        prop_assert!(
            outstanding < self.max_in_flight,
            "{} publishes outstanding, in-flight set {}",
            outstanding + 1,
            self.max_in_flight
        );
        let publish = Publish { ticket, seq, body: record.body };
        if is_oversized(&publish.body) {
            return Ok(Event::Sent(Err(PublishError { reason: "too large".into(), permanent: true })));
        }
        if self.stop_first() {
            // Raced against the stop: it may have got out.
            self.buffered.push(publish);
            return Ok(Event::StopRequested);
        }
        if take(&mut self.hand_over_faults) {
            self.buffered.push(publish);
            return Ok(Event::Sent(Err(PublishError::transient("connection lost"))));
        }
        self.pending.push(publish);
        Ok(Event::Sent(Ok(())))
    }

    fn save(&mut self, save: &Save) -> Result<Event, TestCaseError> {
        if take(&mut self.store_faults) {
            return Ok(Event::Saved(Err("disk failed".into())));
        }
        for &seq in &save.confirmed {
            prop_assert!(
                self.log.iter().any(|(stored, _)| *stored == seq),
                "deleted {} before the broker stored it",
                seq
            );
            // A record deleted already may be named again only when a dead connection's copy of
            // it reached the broker after it was confirmed, and reconciling found that copy:
            // deleting it again changes nothing.
            let late_copy = self.log.iter().filter(|(stored, _)| *stored == seq).count() > 1;
            prop_assert!(self.records.remove(&seq).is_some() || late_copy, "deleted {} twice", seq);
        }
        for (seq, _) in &save.dead {
            let body = self.records.remove(seq);
            prop_assert!(body.is_some_and(|body| is_oversized(&body)), "dead-lettered {} the broker would take", seq);
            self.dead.insert(*seq);
        }
        if let Some(position) = save.position {
            prop_assert!(self.flavor == Flavor::JetStream && position <= self.log.len() as u64);
            self.position = self.position.max(position);
        }
        Ok(Event::Saved(Ok(())))
    }

    /// Plays moves until one is an event for the waiting drain.
    fn wait(&mut self, until: Instant) -> Result<Event, TestCaseError> {
        loop {
            match self.next_move() {
                Move::Append { records, oversized } => self.append(records, oversized),
                Move::Durable if self.durable < self.last_seq => {
                    self.durable = self.last_seq;
                    return Ok(Event::Durable(self.durable));
                }
                Move::Durable => {}
                Move::Coarsen => self.coarsen(),
                Move::Confirm(index) if !self.pending.is_empty() => {
                    let publish = self.pending.remove(usize::from(index) % self.pending.len());
                    let position = self.store(&publish)?;
                    let confirmed = self.confirmation(position);
                    if !self.stopping() {
                        // (After the stop's deadline the drain no longer listens.)
                        self.told_stored.insert(publish.seq);
                    }
                    self.answered.push((publish.ticket, Ok(confirmed)));
                    return Ok(Event::Confirmed(publish.ticket, confirmed));
                }
                Move::LoseAck(index) if !self.pending.is_empty() => {
                    let publish = self.pending.remove(usize::from(index) % self.pending.len());
                    self.store(&publish)?;
                    self.silent.push(publish);
                }
                Move::LosePublish(index) if !self.pending.is_empty() => {
                    let publish = self.pending.remove(usize::from(index) % self.pending.len());
                    self.silent.push(publish);
                }
                Move::Fail { index, stored } if !self.pending.is_empty() => {
                    let publish = self.pending.remove(usize::from(index) % self.pending.len());
                    if stored {
                        self.store(&publish)?;
                    }
                    let error = PublishError::transient("no ack");
                    self.answered.push((publish.ticket, Err(error.clone())));
                    return Ok(Event::Failed(publish.ticket, error));
                }
                Move::Repeat(index) if !self.answered.is_empty() => {
                    let (ticket, answer) = self.answered[usize::from(index) % self.answered.len()].clone();
                    return Ok(match answer {
                        Ok(confirmed) => Event::Confirmed(ticket, confirmed),
                        Err(error) => Event::Failed(ticket, error),
                    });
                }
                Move::Cut { stored, buffered } if !self.pending.is_empty() => {
                    let mut outstanding = std::mem::take(&mut self.pending);
                    outstanding.append(&mut self.silent);
                    let failed = outstanding[0].ticket;
                    for (index, publish) in outstanding.into_iter().enumerate() {
                        if bit(stored, index) {
                            self.store(&publish)?;
                        } else if bit(buffered, index) {
                            self.buffered.push(publish);
                        }
                    }
                    return Ok(Event::Failed(failed, PublishError::transient("connection lost")));
                }
                Move::LateStore if !self.buffered.is_empty() => {
                    let publish = self.buffered.remove(0);
                    self.store(&publish)?;
                }
                Move::Elapse => {
                    self.now = until;
                    return Ok(Event::Tick);
                }
                Move::Stop if !self.stopping() => {
                    self.stop_at = Some(self.now);
                    return Ok(Event::StopRequested);
                }
                Move::StoreFault => self.store_faults += 1,
                Move::HandOverFault => self.hand_over_faults += 1,
                Move::AskFault => self.ask_faults += 1,
                Move::Subset(mask) => self.subset = Some(mask),
                // Nothing to do it to.
                Move::Confirm(_)
                | Move::LoseAck(_)
                | Move::LosePublish(_)
                | Move::Fail { .. }
                | Move::Repeat(_)
                | Move::Cut { .. }
                | Move::LateStore
                | Move::Stop => {}
            }
        }
    }

    /// The drain finished: it was told to stop, in time.
    fn finished(&mut self) -> Result<(), TestCaseError> {
        let Some(stop_at) = self.stop_at.take() else {
            return Err(TestCaseError::fail("the drain finished unasked"));
        };
        prop_assert!(self.now <= stop_at + STOP_GRACE, "stopped {:?} after the request", self.now - stop_at);
        self.give_up_outstanding();
        self.must_ask = true;
        // A new sink holds none of the old one's confirmations (and its tickets start over) and
        // knows only what the store kept.
        self.answered.clear();
        self.told_stored.clear();
        Ok(())
    }

    /// Everything arrived, once per id, as it stood in the outbox.
    fn check_end(&self) -> Result<(), TestCaseError> {
        prop_assert!(self.records.is_empty(), "left in the outbox: {:?}", self.records.keys().collect::<Vec<_>>());
        let central: BTreeMap<u64, &Bytes> = self.log.iter().map(|(seq, body)| (*seq, body)).collect();
        for (seq, body) in &self.expected {
            if is_oversized(body) {
                prop_assert!(self.dead.contains(seq), "{} too large, yet not dead-lettered", seq);
                prop_assert!(!central.contains_key(seq));
            } else {
                prop_assert_eq!(central.get(seq).copied(), Some(body), "record {} centrally", seq);
            }
        }
        for seq in central.keys() {
            prop_assert!(self.expected.contains_key(seq), "{} reached the broker, though coarsened away", seq);
        }
        let refused: BTreeSet<u64> =
            self.expected.iter().filter(|(_, body)| is_oversized(body)).map(|(seq, _)| *seq).collect();
        prop_assert_eq!(&self.dead, &refused);
        Ok(())
    }
}

/// Uses up one fault, if one is due.
fn take(faults: &mut u32) -> bool {
    let due = *faults > 0;
    *faults = faults.saturating_sub(1);
    due
}

fn run(
    flavor: Flavor,
    order: DrainPolicy,
    max_in_flight: usize,
    waiting: u8,
    moves: Vec<Move>,
) -> Result<(), TestCaseError> {
    let settings = Settings {
        stream: "s".into(),
        kind: "model",
        max_in_flight,
        order,
        retry: Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) },
    };
    let steps_allowed = 200 * (moves.len() + 50) + 5_000 * usize::from(waiting);
    let mut world = World::new(flavor, max_in_flight, moves);
    world.append(waiting, false);
    world.durable = world.last_seq;
    let mut drain = Drain::new(settings.clone(), world.start());
    let mut action = drain.step(world.now, Event::Tick);
    for _ in 0..steps_allowed {
        prop_assert!(drain.in_flight() <= max_in_flight);
        // The durable seq moving while the drain is busy with something else.
        if !matches!(action, Action::Wait { .. } | Action::Finish) && matches!(world.moves.front(), Some(Move::Durable))
        {
            world.moves.pop_front();
            world.durable = world.last_seq;
            drain.durable(world.durable);
        }
        let event = if let Action::Finish = action {
            world.finished()?;
            if world.last_stop {
                return world.check_end();
            }
            drain = Drain::new(settings.clone(), world.start());
            Event::Tick
        } else {
            world.perform(action)?
        };
        action = drain.step(world.now, event);
    }
    Err(TestCaseError::fail(format!(
        "not drained after {steps_allowed} steps: {} records left, {} pending",
        world.records.len(),
        world.pending.len()
    )))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_record_reaches_the_broker_once_whatever_the_broker_does(
        flavor in prop_oneof![Just(Flavor::JetStream), Just(Flavor::Mqtt)],
        order in an_order(),
        max_in_flight in 1usize..7,
        waiting in 0u8..25,
        moves in proptest::collection::vec(a_move(), 0..200),
    ) {
        run(flavor, order, max_in_flight, waiting, moves)?;
    }
}

// --- cases worth keeping -------------------------------------------------------------------------

fn jetstream_fifo(max_in_flight: usize, waiting: u8, moves: Vec<Move>) -> Result<(), TestCaseError> {
    run(Flavor::JetStream, DrainPolicy::Fifo, max_in_flight, waiting, moves)
}

#[test]
fn an_idle_outbox_drains_and_stops() {
    jetstream_fifo(4, 0, vec![]).expect("drains");
    jetstream_fifo(4, 10, vec![]).expect("drains");
}

#[test]
fn a_record_whose_ack_was_lost_is_found_stored_not_sent_again() {
    let moves = vec![Move::LoseAck(0), Move::Elapse, Move::Elapse];
    jetstream_fifo(1, 1, moves).expect("drains");
}

#[test]
fn records_a_cut_connection_delivers_late_are_stored_once_per_id() {
    let moves = vec![
        Move::Cut { stored: 0b10, buffered: 0b01 },
        Move::Elapse,
        Move::LateStore,
        Move::Repeat(0),
        Move::Confirm(1),
        Move::Confirm(0),
    ];
    jetstream_fifo(4, 6, moves).expect("drains");
}

#[test]
fn a_stop_while_acks_are_missing_ends_within_the_grace() {
    let moves = vec![Move::LosePublish(0), Move::Stop, Move::Elapse, Move::Elapse];
    jetstream_fifo(2, 2, moves).expect("drains");
}

#[test]
fn coarsening_never_touches_a_reserved_record() {
    let moves = vec![
        Move::Append { records: 3, oversized: false },
        Move::Coarsen,
        Move::Durable,
        Move::Append { records: 3, oversized: true },
        Move::Coarsen,
        Move::Confirm(0),
        Move::Coarsen,
        Move::Durable,
    ];
    jetstream_fifo(2, 3, moves).expect("drains");
}

#[test]
fn live_first_sends_fresh_records_before_the_backlog() {
    let settings = Settings {
        stream: "s".into(),
        kind: "model",
        max_in_flight: 8,
        order: DrainPolicy::LiveFirst { backlog_bytes_per_second: 1 },
        retry: Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) },
    };
    let mut world = World::new(Flavor::JetStream, 8, vec![]);
    world.append(5, false);
    world.durable = 5;
    let mut drain = Drain::new(settings, world.start());
    let mut action = drain.step(world.now, Event::Tick);
    let mut published = Vec::new();
    while published.len() < 4 {
        if let Action::Publish(_, record) = &action {
            published.push(record.seq);
        }
        if let Action::Wait { .. } = action {
            world.append(1, false);
            world.durable = world.last_seq;
            action = drain.step(world.now, Event::Durable(world.durable));
            continue;
        }
        let event = world.perform(action).expect("performs");
        action = drain.step(world.now, event);
    }
    // The backlog's first record goes at once, then the budget (1 B/s) holds it back.
    assert_eq!(published, [1, 6, 7, 8], "fresh records overtake the backlog");
}

#[test]
fn a_late_copy_of_a_deleted_record_found_when_reconciling_deletes_nothing_more() {
    // Record 1's first hand-over fails but gets out; its resend is confirmed and deleted; then
    // the first copy reaches the broker, after the position, and reconciling finds it.
    let moves = vec![
        Move::HandOverFault,
        Move::Append { records: 1, oversized: false },
        Move::Durable,
        Move::Confirm(0),
        Move::HandOverFault,
        Move::LateStore,
        Move::Append { records: 2, oversized: false },
    ];
    jetstream_fifo(1, 0, moves).expect("drains");
}

#[test]
fn a_backlog_measured_after_an_outage_ends_at_the_records_made_durable_during_it() {
    let settings = Settings {
        stream: "s".into(),
        kind: "model",
        max_in_flight: 8,
        order: DrainPolicy::LiveFirst { backlog_bytes_per_second: 1 },
        retry: Backoff { min: Duration::from_millis(100), max: Duration::from_secs(5) },
    };
    let mut world = World::new(Flavor::JetStream, 8, vec![]);
    world.ask_faults = 1;
    let mut drain = Drain::new(settings, world.start());
    let mut action = drain.step(world.now, Event::Tick);
    let mut published = Vec::new();
    while published.len() < 4 {
        match &action {
            Action::Publish(_, record) => published.push(record.seq),
            // The outage: records committed and made durable meanwhile.
            Action::Backoff { .. } => {
                world.append(5, false);
                world.durable = world.last_seq;
                drain.durable(world.durable);
            }
            Action::Wait { .. } => {
                world.append(1, false);
                world.durable = world.last_seq;
                action = drain.step(world.now, Event::Durable(world.durable));
                continue;
            }
            _ => {}
        }
        let event = world.perform(action).expect("performs");
        action = drain.step(world.now, event);
    }
    assert_eq!(published, [1, 6, 7, 8], "the backlog is 1..=5; fresh records overtake it");
}
