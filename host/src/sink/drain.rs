//! The outbox drain of one sink, without I/O: which records to reserve, read and publish, which
//! confirmations to commit, when to ask the broker what it stored, and when to stop.
//!
//! [`Drain`] is a state machine in the manner of a sans-I/O protocol core. Its one entry point,
//! [`Drain::step`], takes an [`Event`] and the time, and returns the next [`Action`]; the shell
//! (`sink/mod.rs`) carries the action out and answers with the event it led to. It holds no
//! broker client, no store handle and no clock (`now` is a parameter; the jitter of the retry
//! backoff comes from a generator seeded at construction), so `drain/tests.rs` drives it
//! against a model outbox and a scripted broker.
//!
//! **The protocol with the shell.** The shell does one thing at a time:
//! - every action but [`Action::Wait`], [`Action::Backoff`] and [`Action::Finish`] is answered
//!   by exactly one event, its result, before anything else is fed in;
//! - any action may be answered by [`Event::StopRequested`] instead: it was not carried out (a
//!   publish raced against the stop may still have reached the broker; it stays in the outbox);
//! - `Wait` ends with whatever happens first — a confirmation or failure of a publish in flight,
//!   new durable records, the stop, or the deadline ([`Event::Tick`]);
//! - `Backoff` follows a failure: the shell forgets every publish in flight (the drain sends
//!   them again), then waits until the deadline or the stop;
//! - `Finish`: the drain is over.
//!
//! Besides, the shell reports the pipeline's durable seq whenever it moved ([`Drain::durable`]),
//! whatever the drain waits for.
//!
//! A lost connection reaches the drain as the failure of the publishes in flight (JetStream's
//! acks fail; the MQTT connection fails every pending publish); the broker answering
//! [`Action::AskStored`] is the connection restored.
//!
//! **Invariants** (each checked by the model test):
//! - *Delete only what is confirmed.* A seq is named in a [`Save`] only after the broker
//!   confirmed it, reconciling found it stored, or the broker refused it for good.
//! - *Publish only what is reserved and durable.* A record is handed over only if a committed
//!   reservation covers its seq ([`Action::Reserve`] answered before the record is read again)
//!   and its seq is at most the highest durable seq ([`Event::Durable`]).
//! - *Resend after a failure.* After any failure — a refused hand-over, a failed or missing
//!   confirmation, an unanswered reconcile — nothing is sent before the broker has answered
//!   [`Action::AskStored`]; then every record neither confirmed nor found stored is sent again,
//!   under the same id.
//! - *Bounded in-flight set.* At most `max_in_flight` publishes await confirmation.
//! - *Bounded stop.* Once [`Event::StopRequested`] is in, nothing new is published and the drain
//!   finishes at the latest [`STOP_GRACE`] later (the shell's last save aside).

use std::collections::{BTreeSet, VecDeque};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rangemap::RangeInclusiveSet;

use super::{Confirmed, Found, OutgoingRecord, PublishError};
use crate::backoff::Retry;
use crate::config::{Backoff, Drain as DrainPolicy};
use lanes::{Backlog, Fill, Read};
pub(super) use save::Save;

/// How long a stopping sink waits for in-flight confirmations (in all).
pub(super) const STOP_GRACE: Duration = Duration::from_secs(5);
/// Longest wait for one confirmation; past it the record is sent again (a broker that lost a
/// PUBACK on a live connection would otherwise stall the stream).
pub(super) const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
/// Reservations reach this many in-flight sets (`max_in_flight`) past the last record read, so most
/// reads need no reservation commit.
const RESERVE_AHEAD: u64 = 4;
/// How often an idle drain looks at the outbox again (in case a notification was missed while
/// records were sent again), and how long a failed save waits before it is tried again.
const IDLE_LOOK: Duration = Duration::from_secs(1);

/// Names one publish, so that its confirmation finds it (and a confirmation of a publish given
/// up on finds nothing).
pub(super) type Ticket = u64;

/// What the drain needs to know of its sink.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    /// The stream (pipeline), for logs.
    pub stream: String,
    /// The sink's kind (`jetstream`, `mqtt`, `console`), for logs.
    pub kind: &'static str,
    /// Publishes awaiting confirmation at most.
    pub max_in_flight: usize,
    /// In which order a backlog is sent.
    pub order: DrainPolicy,
    /// Delays after failures.
    pub retry: Backoff,
}

/// What the store said when the sink started.
#[derive(Clone, Debug, Default)]
pub(super) struct Start {
    /// The broker's position of the last confirmed record.
    pub position: u64,
    /// Seqs covered by committed reservations.
    pub reserved: Vec<RangeInclusive<u64>>,
    /// The highest durable seq.
    pub publishable: u64,
    /// Seed of the backoff's jitter.
    pub seed: u64,
}

/// What happened: the result of the last action, or something the shell noticed while waiting.
#[derive(Debug)]
pub(super) enum Event {
    /// A wait ended at its deadline.
    Tick,
    /// The pipeline made every record through this seq durable.
    Durable(u64),
    /// Stop: publish nothing new, give the publishes in flight [`STOP_GRACE`].
    StopRequested,
    /// Answers [`Action::AskStored`].
    Stored(Result<Found, PublishError>),
    /// Answers [`Action::MeasureBacklog`]: records in the outbox, and the stream's last seq
    /// (`None`: unreadable).
    Backlog { records: u64, last_seq: Option<u64> },
    /// Answers [`Action::Read`].
    Read(Result<Vec<OutgoingRecord>, String>),
    /// Answers [`Action::Reserve`].
    Reserved(Result<(), String>),
    /// Answers [`Action::Publish`]: the broker took the record (its confirmation comes later) or
    /// refused it.
    Sent(Result<(), PublishError>),
    /// The broker confirmed a publish.
    Confirmed(Ticket, Confirmed),
    /// A publish failed after it was handed over (no confirmation, a lost connection).
    Failed(Ticket, PublishError),
    /// Answers [`Action::Save`].
    Saved(Result<(), String>),
}

/// What the shell is to do next.
#[derive(Debug)]
pub(super) enum Action {
    /// Ask the broker which records of the stream it stored after `position`.
    AskStored { position: u64 },
    /// Count the records waiting in the outbox and read the stream's last seq.
    MeasureBacklog,
    /// Read up to `limit` outbox records after seq `after`.
    Read { after: u64, limit: usize },
    /// Commit a reservation of these seqs.
    Reserve(RangeInclusive<u64>),
    /// Hand this record to the broker.
    Publish(Ticket, OutgoingRecord),
    /// Commit this in one transaction.
    Save(Save),
    /// Forget every publish in flight, then wait until `until` (or the stop).
    Backoff { until: Instant },
    /// Wait for a confirmation, new records or the stop, at most until `until`.
    Wait { until: Instant },
    /// The drain is over.
    Finish,
}

/// The action whose answer the drain waits for.
#[derive(Debug)]
enum Awaiting {
    Stored,
    Backlog,
    Read(Read),
    Reserved(Read, RangeInclusive<u64>),
    Sent { ticket: Ticket, seq: u64 },
    Saved,
}

/// A publish handed over and not confirmed yet.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    ticket: Ticket,
    seq: u64,
    /// When it counts as failed without a confirmation.
    deadline: Instant,
}

/// The drain of one sink: cursors, reservations, publishes in flight, outcomes to commit.
#[derive(Debug)]
pub(super) struct Drain {
    settings: Settings,
    retry: Retry,
    rng: StdRng,
    next_ticket: Ticket,
    awaiting: Option<Awaiting>,
    in_flight: VecDeque<InFlight>,
    /// Highest seq handed to the broker (or found stored) in this connection, live lane.
    cursor: u64,
    /// The rate-capped backlog, under `live_first` after a (re)connection found one.
    backlog: Option<Backlog>,
    /// The broker's position of the last confirmed record.
    position: u64,
    /// Seqs covered by committed reservations (a superset of the store's: the store forgets
    /// ranges whose records are all gone, and such seqs never hold a record again).
    reserved: RangeInclusiveSet<u64>,
    /// Records confirmed, found stored by reconciling, or refused for good, whose deletion is not
    /// committed yet: never sent again.
    settled: BTreeSet<u64>,
    /// Outcomes not committed yet, and since when the oldest confirmation waits.
    unsaved: Save,
    unsaved_since: Option<Instant>,
    /// Save now, whatever the grouping says (records found stored by reconciling).
    save_now: bool,
    /// The save being committed (put back into `unsaved` if it fails).
    saving: Option<Save>,
    /// After a failed save: the next one not before this.
    save_blocked_until: Option<Instant>,
    /// The highest seq the pipeline made durable: records above it may still be undone by a
    /// crash (`durability = "relaxed"`), so they are not published yet.
    publishable: u64,
    /// Ask the broker what it has before sending anything (again).
    must_reconcile: bool,
    /// Measure the backlog before the next refill (`live_first`, after reconciling).
    measure_backlog: bool,
    fill: Fill,
    /// Records read and reserved, waiting to be handed over.
    queue: VecDeque<OutgoingRecord>,
    /// Something happened that may let the in-flight set be refilled.
    fill_wanted: bool,
    /// After a failed outbox read: no refill before this.
    paused_until: Option<Instant>,
    /// After a failure: the backoff to announce.
    backoff: Option<Instant>,
    /// Set by the stop: the end of the grace for publishes in flight.
    stop_deadline: Option<Instant>,
    /// The last save at the stop was tried.
    final_save: bool,
}

impl Drain {
    /// A drain that reconciles before it sends anything: the previous run may have died between
    /// a publish and its confirmation.
    pub(super) fn new(settings: Settings, start: Start) -> Self {
        Self {
            retry: Retry::new(settings.retry),
            settings,
            rng: StdRng::seed_from_u64(start.seed),
            next_ticket: 0,
            awaiting: None,
            in_flight: VecDeque::new(),
            cursor: 0,
            backlog: None,
            position: start.position,
            reserved: start.reserved.into_iter().collect(),
            settled: BTreeSet::new(),
            unsaved: Save::default(),
            unsaved_since: None,
            save_now: false,
            saving: None,
            save_blocked_until: None,
            publishable: start.publishable,
            must_reconcile: true,
            measure_backlog: false,
            fill: Fill::Idle,
            queue: VecDeque::new(),
            fill_wanted: true,
            paused_until: None,
            backoff: None,
            stop_deadline: None,
            final_save: false,
        }
    }

    /// Takes in what happened at `now` and says what to do next.
    pub(super) fn step(&mut self, now: Instant, event: Event) -> Action {
        self.handle(now, event);
        self.next(now)
    }

    /// The pipeline made every record through `seq` durable. A level, not an event: the shell
    /// reports it whenever it moved, between any two steps (a backlog measured after a long
    /// outage must end at the records made durable during it), and wakes a waiting drain with
    /// [`Event::Durable`].
    pub(super) fn durable(&mut self, seq: u64) {
        if seq > self.publishable {
            self.publishable = seq;
            self.fill_wanted = true;
        }
    }

    /// Publishes handed over and awaiting confirmation.
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    fn stopping(&self) -> bool {
        self.stop_deadline.is_some()
    }

    fn handle(&mut self, now: Instant, event: Event) {
        match event {
            Event::Tick => self.fill_wanted = true,
            Event::Durable(seq) => self.durable(seq),
            Event::StopRequested => self.stop(now),
            Event::Confirmed(ticket, confirmed) => self.confirmed(now, ticket, confirmed),
            Event::Failed(ticket, error) => self.confirmation_failed(now, ticket, error),
            answer => self.answer(now, answer),
        }
    }

    /// The result of the action the drain waits for.
    fn answer(&mut self, now: Instant, event: Event) {
        match (self.awaiting.take(), event) {
            (Some(Awaiting::Stored), Event::Stored(Ok(found))) => self.reconciled(now, found),
            (Some(Awaiting::Stored), Event::Stored(Err(e))) => {
                let delay = self.retry.next_delay(&mut self.rng);
                tracing::warn!(stage = "sink", pipeline = %self.settings.stream, error = %e, retry_in = ?delay,
                    "cannot ask the broker what it stored");
                self.backoff = Some(now + delay);
            }
            (Some(Awaiting::Backlog), Event::Backlog { records, last_seq }) => {
                self.backlog_measured(now, records, last_seq);
            }
            (Some(Awaiting::Read(read)), Event::Read(result)) => match result {
                Ok(records) => self.read(read, records),
                Err(e) => self.read_failed(now, &e),
            },
            (Some(Awaiting::Reserved(read, seqs)), Event::Reserved(result)) => match result {
                Ok(()) => {
                    self.reserved.insert(seqs);
                    self.fill = Fill::Read(read);
                }
                Err(e) => self.read_failed(now, &format!("cannot reserve records to publish: {e}")),
            },
            (Some(Awaiting::Sent { ticket, seq }), Event::Sent(result)) => match result {
                Ok(()) => {
                    self.unsaved.published += 1;
                    self.in_flight.push_back(InFlight { ticket, seq, deadline: now + CONFIRM_TIMEOUT });
                }
                Err(e) if e.permanent => self.refused(now, seq, e.reason),
                Err(e) => self.failed(now, seq, &e),
            },
            (Some(Awaiting::Saved), Event::Saved(result)) => self.saved(now, result),
            (awaiting, event) => {
                tracing::error!(stage = "sink", pipeline = %self.settings.stream, ?awaiting, ?event,
                    "the sink's drain got an answer it did not ask for");
                if cfg!(debug_assertions) {
                    panic!("the shell answered {awaiting:?} with {event:?}");
                }
            }
        }
    }

    /// Stops publishing; what is in flight gets [`STOP_GRACE`].
    fn stop(&mut self, now: Instant) {
        if self.stopping() {
            return;
        }
        self.stop_deadline = Some(now + STOP_GRACE);
        // The action answered by the stop was not carried out.
        if let Some(Awaiting::Saved) = self.awaiting.take() {
            self.restore_unsaved(now);
        }
        self.fill = Fill::Idle;
        self.queue.clear();
        self.backoff = None;
        self.measure_backlog = false;
    }

    fn confirmed(&mut self, now: Instant, ticket: Ticket, confirmed: Confirmed) {
        let Some(flight) = self.take_in_flight(ticket) else { return };
        self.retry.reset();
        if self.settled.insert(flight.seq) {
            self.unsaved.confirmed.push(flight.seq);
            self.unsaved_since.get_or_insert(now);
        }
        if let Some(position) = confirmed.position.filter(|&p| p > self.position) {
            self.position = position;
            self.unsaved.position = Some(position);
        }
        self.fill_wanted = true;
    }

    fn confirmation_failed(&mut self, now: Instant, ticket: Ticket, error: PublishError) {
        let Some(index) = self.in_flight.iter().position(|flight| flight.ticket == ticket) else {
            return;
        };
        let seq = self.in_flight[index].seq;
        if error.permanent {
            self.in_flight.remove(index);
            self.refused(now, seq, error.reason);
        } else if self.stopping() {
            tracing::info!(stage = "sink", pipeline = %self.settings.stream, seq, error = %error,
                "unconfirmed at shutdown; stays in the outbox");
            self.in_flight.clear();
        } else {
            self.failed(now, seq, &error);
        }
    }

    /// The publish of `ticket`, no longer in flight; `None` for one given up on (a late or
    /// repeated confirmation).
    fn take_in_flight(&mut self, ticket: Ticket) -> Option<InFlight> {
        let index = self.in_flight.iter().position(|flight| flight.ticket == ticket)?;
        self.in_flight.remove(index)
    }

    /// The broker will never take record `seq`: it goes to the dead letters.
    fn refused(&mut self, now: Instant, seq: u64, reason: String) {
        if self.settled.insert(seq) {
            self.unsaved.dead.push((seq, reason));
            self.unsaved_since.get_or_insert(now);
        }
        self.fill_wanted = true;
    }

    /// After a failure: forgets what is in flight, backs off, and reconciles (which starts the
    /// cursors over, so every unconfirmed record is sent again).
    fn failed(&mut self, now: Instant, failed_seq: u64, error: &PublishError) {
        let first_unconfirmed = self.in_flight.iter().map(|flight| flight.seq).fold(failed_seq, u64::min);
        self.in_flight.clear();
        self.queue.clear();
        self.fill = Fill::Idle;
        let delay = self.retry.next_delay(&mut self.rng);
        tracing::warn!(stage = "sink", pipeline = %self.settings.stream, kind = self.settings.kind, error = %error,
            seq = first_unconfirmed, retry_in = ?delay, failures = self.retry.failures(),
            "publish failed; unconfirmed records will be sent again");
        self.backoff = Some(now + delay);
        self.must_reconcile = true;
    }

    /// The broker said which records it stored after the position: they are settled, and the
    /// cursors start over, so everything else still in the outbox is sent (again).
    fn reconciled(&mut self, now: Instant, found: Found) {
        self.must_reconcile = false;
        let new: Vec<u64> = found.records.into_iter().filter(|&seq| self.settled.insert(seq)).collect();
        if let Some(&first) = new.first() {
            tracing::info!(stage = "sink", pipeline = %self.settings.stream, records = new.len(), first,
                "records already stored centrally; not sending them again");
            self.unsaved.confirmed.extend(new);
            self.unsaved_since.get_or_insert(now);
            self.save_now = true;
        }
        if found.position > self.position {
            self.position = found.position;
            self.unsaved.position = Some(found.position);
        }
        self.cursor = 0;
        self.backlog = None;
        self.measure_backlog = matches!(self.settings.order, DrainPolicy::LiveFirst { .. });
        self.fill_wanted = true;
    }

    /// The next thing to do.
    fn next(&mut self, now: Instant) -> Action {
        if let Some(awaiting) = self.awaiting.take() {
            // The shell fed in something else before the answer: the action counts as not
            // carried out.
            tracing::error!(stage = "sink", pipeline = %self.settings.stream, ?awaiting,
                "the sink's drain went on without the answer it waited for");
            if cfg!(debug_assertions) {
                panic!("the shell left {awaiting:?} unanswered");
            }
            if let Awaiting::Saved = awaiting {
                self.restore_unsaved(now);
            }
        }
        if self.stopping() {
            return self.next_while_stopping(now);
        }
        if self.paused_until.is_some_and(|until| until <= now) {
            self.paused_until = None;
            self.fill_wanted = true;
        }
        if let Some(flight) = self.in_flight.iter().copied().min_by_key(|flight| flight.deadline)
            && flight.deadline <= now
        {
            let error = PublishError::transient(format!("no confirmation within {}s", CONFIRM_TIMEOUT.as_secs()));
            self.failed(now, flight.seq, &error);
        }
        if let Some(until) = self.backoff.take() {
            return Action::Backoff { until };
        }
        if self.must_reconcile {
            self.awaiting = Some(Awaiting::Stored);
            return Action::AskStored { position: self.position };
        }
        // Records found stored by reconciling leave the outbox before the backlog is measured.
        if self.save_due(now) {
            return self.save();
        }
        if self.measure_backlog {
            self.measure_backlog = false;
            self.awaiting = Some(Awaiting::Backlog);
            return Action::MeasureBacklog;
        }
        if let Some(action) = self.refill(now) {
            return action;
        }
        if self.in_flight.is_empty() && !self.unsaved.is_empty() && self.save_allowed(now) {
            return self.save();
        }
        Action::Wait { until: self.wake_at(now) }
    }

    /// Stopping: wait for what is in flight until the deadline, save, finish.
    fn next_while_stopping(&mut self, now: Instant) -> Action {
        let deadline = self.stop_deadline.unwrap_or(now);
        if let Some(front) = self.in_flight.front()
            && now >= deadline
        {
            tracing::info!(stage = "sink", pipeline = %self.settings.stream, seq = front.seq, in_flight = self.in_flight.len(),
                "unconfirmed at shutdown; stays in the outbox");
            self.in_flight.clear();
        }
        if self.in_flight.is_empty() {
            if !self.unsaved.is_empty() && !self.final_save {
                self.final_save = true;
                return self.save();
            }
            return Action::Finish;
        }
        if self.save_due(now) {
            return self.save();
        }
        let mut until = deadline;
        if let Some(at) = self.save_at() {
            until = until.min(at);
        }
        Action::Wait { until }
    }

    /// When to look again if nothing happens: a confirmation's deadline, the next save, the
    /// backlog's budget, the end of a pause, or a while.
    fn wake_at(&self, now: Instant) -> Instant {
        let mut until = self.in_flight.iter().map(|flight| flight.deadline).min().unwrap_or(now + IDLE_LOOK);
        if let Some(at) = self.save_at() {
            until = until.min(at);
        }
        let can_refill = self.in_flight.len() <= self.settings.max_in_flight / 2;
        if let Some(backlog) = &self.backlog
            && can_refill
        {
            until = until.min(backlog.next_send_at.max(self.paused_until.unwrap_or(now)));
        }
        if let Some(paused_until) = self.paused_until {
            until = until.min(paused_until);
        }
        debug_assert!(until > now, "the drain would wait for nothing: {self:#?}");
        until.max(now + Duration::from_millis(1))
    }
}

mod lanes;
mod save;
#[cfg(test)]
mod tests;
