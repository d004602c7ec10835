//! Refilling the drain's in-flight set: the live lane (records after the cursor, through the highest
//! durable seq) and, under `drain = "live_first"`, the backlog that waited at the (re)connection,
//! sent behind fresher records at a capped byte rate.
//!
//! A refill reads the lane; if what it read is not covered by a committed reservation, it
//! reserves first (with room for the next reads) and reads again, so a record is only handed
//! over once the full-outbox policy can no longer touch it. Records found settled (confirmed,
//! found stored or refused, their deletion not committed yet) are skipped.

use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use super::{Action, Awaiting, Drain, RESERVE_AHEAD};
use crate::config::Drain as DrainPolicy;
use crate::sink::OutgoingRecord;

/// Which lane a read serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lane {
    /// Records after the cursor, through the highest durable seq.
    Live,
    /// Under `live_first`: the records that waited at the (re)connection, rate-capped.
    Backlog,
}

/// One outbox read: up to `limit` records after `after` and at most `through`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Read {
    lane: Lane,
    after: u64,
    through: u64,
    limit: usize,
}

/// Where the current refill of the in-flight set stands.
#[derive(Clone, Debug)]
pub(super) enum Fill {
    /// No refill under way.
    Idle,
    /// This read is next.
    Read(Read),
    /// What the read found is not reserved yet: this reservation is next, then the read again.
    Reserve(Read, RangeInclusive<u64>),
    /// Records read from the lane wait in the queue to be handed over.
    Send(Lane),
    /// The backlog is next, as far as its byte budget and the in-flight set allow.
    Backlog,
}

/// Under `drain = "live_first"`: the records that were already in the outbox at the last
/// (re)connection, sent behind fresher ones at a capped byte rate.
#[derive(Debug)]
pub(super) struct Backlog {
    /// Highest backlog seq handed to the broker in this connection.
    cursor: u64,
    /// The stream's last seq at the (re)connection: the backlog's end.
    end: u64,
    /// When the byte budget allows the next backlog record.
    pub(super) next_send_at: Instant,
    bytes_per_second: u64,
}

impl Backlog {
    /// Spends the budget for `bytes` just sent.
    pub(super) fn charge(&mut self, now: Instant, bytes: usize) {
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_second.max(1) as f64);
        self.next_send_at = self.next_send_at.max(now) + cost;
    }
}

impl Drain {
    /// Under `live_first`, after a (re)connection: records committed from now on go first, the
    /// ones already waiting follow as a rate-capped backlog.
    pub(super) fn backlog_measured(&mut self, now: Instant, records: u64, last_seq: Option<u64>) {
        let DrainPolicy::LiveFirst { backlog_bytes_per_second } = self.settings.order else { return };
        let Some(last_seq) = last_seq else { return };
        if records == 0 {
            return;
        }
        let end = last_seq.min(self.publishable);
        tracing::info!(stage = "sink", pipeline = %self.settings.stream, records, through_seq = end, backlog_bytes_per_second,
            "backlog waiting; fresh records go first");
        self.cursor = end;
        self.backlog = Some(Backlog { cursor: 0, end, next_send_at: now, bytes_per_second: backlog_bytes_per_second });
    }

    /// What a read found: the reserved ones are queued to be sent; if none is reserved, a
    /// reservation (with room for the next reads) comes first, then the read again.
    pub(super) fn read(&mut self, read: Read, mut records: Vec<OutgoingRecord>) {
        records.retain(|record| record.seq <= read.through);
        let Some(last) = records.last().map(|record| record.seq) else {
            self.fill = match read.lane {
                Lane::Live => Fill::Backlog,
                Lane::Backlog => {
                    tracing::info!(stage = "sink", pipeline = %self.settings.stream, through_seq = read.through, "backlog sent");
                    self.backlog = None;
                    Fill::Idle
                }
            };
            return;
        };
        let reserved = records.iter().take_while(|record| self.reserved.contains(&record.seq)).count();
        if reserved > 0 {
            records.truncate(reserved);
            self.queue = records.into();
            self.fill = Fill::Send(read.lane);
            return;
        }
        let ahead = (self.settings.max_in_flight as u64).saturating_mul(RESERVE_AHEAD);
        let seqs = read.after + 1..=last.saturating_add(ahead).min(read.through);
        self.fill = Fill::Reserve(read, seqs);
    }

    pub(super) fn read_failed(&mut self, now: Instant, error: &str) {
        let delay = self.retry.next_delay(&mut self.rng);
        tracing::error!(stage = "sink", pipeline = %self.settings.stream, error, retry_in = ?delay, "cannot read the outbox");
        self.paused_until = Some(now + delay);
        self.queue.clear();
        self.fill = Fill::Idle;
    }

    /// The next step of refilling the in-flight set: the live lane first, then the backlog as far as
    /// its byte budget allows. `None` when there is nothing to refill now.
    pub(super) fn refill(&mut self, now: Instant) -> Option<Action> {
        loop {
            match std::mem::replace(&mut self.fill, Fill::Idle) {
                Fill::Idle => {
                    // Refill once half the in-flight set is confirmed, so the outbox is read (and
                    // reserved) in runs of records rather than one read per confirmation.
                    let backlog_due = self.backlog.as_ref().is_some_and(|backlog| backlog.next_send_at <= now);
                    let wanted = self.fill_wanted || backlog_due;
                    if !wanted || self.paused_until.is_some() || self.in_flight.len() > self.settings.max_in_flight / 2
                    {
                        return None;
                    }
                    self.fill_wanted = false;
                    let want = self.settings.max_in_flight - self.in_flight.len();
                    let read = Read { lane: Lane::Live, after: self.cursor, through: self.publishable, limit: want };
                    self.fill = Fill::Read(read);
                }
                Fill::Read(read) => {
                    self.awaiting = Some(Awaiting::Read(read));
                    return Some(Action::Read { after: read.after, limit: read.limit });
                }
                Fill::Reserve(read, seqs) => {
                    self.awaiting = Some(Awaiting::Reserved(read, seqs.clone()));
                    return Some(Action::Reserve(seqs));
                }
                Fill::Send(lane) => {
                    let Some(record) = self.queue.pop_front() else {
                        self.fill = Fill::Backlog;
                        continue;
                    };
                    self.fill = Fill::Send(lane);
                    let settled = self.settled.contains(&record.seq);
                    match (lane, &mut self.backlog) {
                        (Lane::Live, _) => self.cursor = record.seq,
                        (Lane::Backlog, Some(backlog)) => {
                            backlog.cursor = record.seq;
                            if !settled {
                                backlog.charge(now, record.body.len());
                            }
                        }
                        (Lane::Backlog, None) => {}
                    }
                    // Confirmed, found stored or refused; its deletion is waiting to be committed.
                    if settled {
                        continue;
                    }
                    let ticket = self.next_ticket;
                    self.next_ticket += 1;
                    self.awaiting = Some(Awaiting::Sent { ticket, seq: record.seq });
                    return Some(Action::Publish(ticket, record));
                }
                Fill::Backlog => match &self.backlog {
                    Some(backlog)
                        if self.in_flight.len() < self.settings.max_in_flight && backlog.next_send_at <= now =>
                    {
                        let read = Read { lane: Lane::Backlog, after: backlog.cursor, through: backlog.end, limit: 1 };
                        self.fill = Fill::Read(read);
                    }
                    _ => return None,
                },
            }
        }
    }
}
