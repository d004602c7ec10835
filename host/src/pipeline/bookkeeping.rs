//! The processor's bookkeeping, without I/O: the seqs a batch's records take, the change set
//! handed to the committer, what a refused commit leads to, when a batch's acknowledgements and
//! records may leave the process, and whether input is held for a quarantined function.
//!
//! Events in ([`Event`]), actions out ([`Action`]); the async shell (`processor.rs`) performs
//! the actions and reports what came of them. No tokio and no clock: time arrives as `now`, and
//! the jitter of retry delays comes from a random source given at construction. Generic over the
//! change set `C` and a delivery's acknowledgement `A`, which it only carries.
//!
//! A batch's way through (one batch at a time; the shell processes the next one only once the
//! commit of this one is answered):
//!
//! ```text
//! Processed ─▶ Commit ─▶ Applied ─▶ … Durable ─▶ PublishThrough + Acknowledge
//!                 ▲    └▶ CommitFailed ─▶ RetryAfter ─▶ RetryDue ─┘
//! ```
//!
//! **Invariant (seqs):** a batch's records take the seqs from *last committed + 1* on
//! ([`Bookkeeping::next_seq`]); last committed advances only when the commit that stores them is
//! applied. A refused change set is committed again, whole and with the same seqs, after a
//! backoff — never skipped, its seqs never given to another batch.
//!
//! **Invariant (acknowledge after durable):** a batch's acknowledgements, and the seq through
//! which the sink may publish, are released only once a durable commit covers the batch's
//! commit, batch by batch in commit order — which is arrival order — and each only once.
//!
//! **Invariant (durability lost):** a commit that fails while this pipeline has applied commits
//! no durable commit covers yet ends the process ([`Action::ExitDurabilityLost`], status
//! [`crate::state::EXIT_DURABILITY_LOST`]): the committer goes back to the last durable state,
//! which undoes them while their seqs were already handed on; a restart resumes from there, and
//! nothing acknowledged is lost. (The committer, which sees every pipeline's commits, exits on
//! such a failure itself; this is the same rule as this pipeline sees it.)
//!
//! What ends the pipeline: a shutdown (a refused commit is then not retried: its input stays
//! unacknowledged and is delivered again) or a committer that stopped ([`Action::GiveUp`]).

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::backoff::Retry;
use crate::batch::Nanos;
use crate::config::Backoff;
use crate::state::StoreError;

/// Delays between attempts to commit a batch the store refused.
const COMMIT_RETRY: Backoff = Backoff { min: Duration::from_millis(100), max: Duration::from_secs(10) };
/// Delays between attempts to commit a batch a full outbox (`when_full = "block"`) refused:
/// short, because room appears as soon as the sink gets a confirmation.
const FULL_RETRY: Backoff = Backoff { min: Duration::from_millis(50), max: Duration::from_secs(1) };

/// What happened, as the shell reports it.
#[derive(Debug)]
pub(super) enum Event<C, A> {
    /// A batch was processed into `changes`, holding `records` records numbered from
    /// [`Bookkeeping::next_seq`]; `acks` are its deliveries' acknowledgements, in arrival order.
    Processed {
        /// What to commit.
        changes: C,
        /// Records in `changes`.
        records: u64,
        /// Acknowledgements owed for the batch.
        acks: Vec<A>,
    },
    /// The committer applied the change set in hand, in write transaction (group) `group`.
    Applied {
        /// The group that applied it.
        group: u64,
    },
    /// A durable commit covers every group up to `through`.
    Durable {
        /// The newest durable group.
        through: u64,
    },
    /// The committer did not apply the change set in hand, and gave it back.
    CommitFailed {
        /// The change set, unapplied.
        changes: C,
        /// Why.
        error: StoreError,
    },
    /// The delay of the last [`Action::RetryAfter`] has passed.
    RetryDue,
    /// A function of the pipeline is quarantined and holds its input (`on_quarantine = "hold"`):
    /// nothing is processed until [`Event::QuarantineLeft`].
    QuarantineEntered {
        /// The function (`id@digest`).
        function: String,
        /// How long its quarantine lasts still.
        left: Duration,
    },
    /// No function holds the input any more.
    QuarantineLeft,
    /// Shutdown was requested: a refused commit is not retried.
    Stop,
}

/// What the shell is to do.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Action<C, A> {
    /// Hand `changes` to the committer; its records hold `seqs`.
    Commit {
        /// The change set.
        changes: C,
        /// The seqs of its records, if it has any.
        seqs: Option<RangeInclusive<u64>>,
    },
    /// Wait this long, then report [`Event::RetryDue`] (or [`Event::Stop`] if shutdown comes first).
    RetryAfter(Duration),
    /// Let the sink publish every record up to this seq.
    PublishThrough(u64),
    /// Acknowledge these deliveries upstream, in this order.
    Acknowledge(Vec<A>),
    /// Stop the pipeline: the change set in hand was not committed, and its input stays
    /// unacknowledged (the broker delivers it again).
    GiveUp,
    /// End the process with [`crate::state::EXIT_DURABILITY_LOST`].
    ExitDurabilityLost,
}

/// A batch between processing and the answer to its commit.
#[derive(Debug)]
struct InHand<A> {
    seqs: Option<RangeInclusive<u64>>,
    acks: Vec<A>,
}

/// Where the batch in hand is.
#[derive(Debug)]
enum Commit<C, A> {
    /// No batch in hand.
    Idle,
    /// Its change set is with the committer.
    InFlight(InHand<A>),
    /// Its change set was refused and waits for a retry.
    BackingOff(InHand<A>, C),
}

/// An applied batch whose acknowledgements (and records) wait for a durable commit.
#[derive(Debug)]
struct Waiting<A> {
    group: u64,
    last_seq: Option<u64>,
    acks: Vec<A>,
}

/// The processor's bookkeeping for one pipeline. See the module documentation.
#[derive(Debug)]
pub(super) struct Bookkeeping<C, A> {
    pipeline: String,
    /// Highest seq a commit of this pipeline stored.
    last_seq: u64,
    /// Newest group known to be durable.
    durable: u64,
    commit: Commit<C, A>,
    /// Applied batches not yet covered by a durable commit, in commit order.
    waiting: VecDeque<Waiting<A>>,
    /// The function whose quarantine holds the input, if one does.
    held_by: Option<String>,
    stopping: bool,
    retry: Retry,
    full_retry: Retry,
    /// When the outbox first refused the batch in hand for being full.
    full_since: Option<Nanos>,
    rng: StdRng,
}

impl<C, A> Bookkeeping<C, A> {
    /// The bookkeeping of `pipeline`, whose highest stored seq is `last_seq`; `rng` makes the
    /// jitter of retry delays.
    pub(super) fn new(pipeline: &str, last_seq: u64, rng: StdRng) -> Self {
        Self {
            pipeline: pipeline.to_owned(),
            last_seq,
            durable: 0,
            commit: Commit::Idle,
            waiting: VecDeque::new(),
            held_by: None,
            stopping: false,
            retry: Retry::new(COMMIT_RETRY),
            full_retry: Retry::new(FULL_RETRY),
            full_since: None,
            rng,
        }
    }

    /// The same, with a random source seeded from the thread's.
    pub(super) fn seeded(pipeline: &str, last_seq: u64) -> Self {
        Self::new(pipeline, last_seq, StdRng::from_rng(&mut rand::rng()))
    }

    /// The seq the next batch's first record takes.
    pub(super) fn next_seq(&self) -> u64 {
        self.last_seq + 1
    }

    /// The newest group whose batch waits for a durable commit, if one does.
    pub(super) fn waiting_for(&self) -> Option<u64> {
        self.waiting.back().map(|batch| batch.group)
    }

    /// Applied batches waiting for a durable commit.
    pub(super) fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Takes in one event at time `now`; returns what to do, in order.
    pub(super) fn step(&mut self, event: Event<C, A>, now: Nanos) -> Vec<Action<C, A>> {
        match event {
            Event::Processed { changes, records, acks } => self.processed(changes, records, acks),
            Event::Applied { group } => self.applied(group, now),
            Event::Durable { through } => self.release(through),
            Event::CommitFailed { changes, error } => self.refused(changes, &error, now),
            Event::RetryDue => self.retry_due(),
            Event::QuarantineEntered { function, left } => {
                if self.held_by.is_none() {
                    tracing::warn!(stage = "pipeline", pipeline = %self.pipeline, function = %function,
                        for_ = ?crate::sandbox::round_to_millis(left),
                        "holding input: a function of this pipeline is quarantined (on_quarantine = \"hold\")");
                }
                self.held_by = Some(function);
                Vec::new()
            }
            Event::QuarantineLeft => {
                if self.held_by.take().is_some() {
                    tracing::info!(stage = "pipeline", pipeline = %self.pipeline,
                        "quarantine over: taking input again, the next call is a trial");
                }
                Vec::new()
            }
            Event::Stop => self.stop(),
        }
    }

    fn processed(&mut self, changes: C, records: u64, acks: Vec<A>) -> Vec<Action<C, A>> {
        assert!(
            matches!(self.commit, Commit::Idle),
            "one batch at a time: the shell processes a batch only once the previous commit was answered"
        );
        assert!(self.held_by.is_none(), "no batch is processed while a quarantined function holds the input");
        let seqs = (records > 0).then(|| self.next_seq()..=self.last_seq + records);
        self.commit = Commit::InFlight(InHand { seqs: seqs.clone(), acks });
        vec![Action::Commit { changes, seqs }]
    }

    fn applied(&mut self, group: u64, now: Nanos) -> Vec<Action<C, A>> {
        let Commit::InFlight(batch) = std::mem::replace(&mut self.commit, Commit::Idle) else {
            panic!("a commit is applied only after it was handed to the committer");
        };
        if let Some(since) = self.full_since.take() {
            let blocked_for = Duration::from_nanos(u64::try_from(now.saturating_sub(since)).unwrap_or(0));
            tracing::info!(stage = "pipeline", pipeline = %self.pipeline, blocked_for = ?blocked_for,
                "the outbox has room again; ingesting");
        }
        self.retry.reset();
        self.full_retry.reset();
        let last_seq = batch.seqs.map(|seqs| *seqs.end());
        if let Some(seq) = last_seq {
            self.last_seq = seq;
        }
        self.waiting.push_back(Waiting { group, last_seq, acks: batch.acks });
        self.release(self.durable)
    }

    /// Releases, in commit order, every waiting batch a durable commit through `through` covers.
    fn release(&mut self, through: u64) -> Vec<Action<C, A>> {
        self.durable = self.durable.max(through);
        let mut actions = Vec::new();
        while self.waiting.front().is_some_and(|batch| batch.group <= self.durable) {
            let batch = self.waiting.pop_front().expect("guarded by the loop condition");
            actions.extend(batch.last_seq.map(Action::PublishThrough));
            if !batch.acks.is_empty() {
                actions.push(Action::Acknowledge(batch.acks));
            }
        }
        actions
    }

    fn refused(&mut self, changes: C, error: &StoreError, now: Nanos) -> Vec<Action<C, A>> {
        let Commit::InFlight(batch) = std::mem::replace(&mut self.commit, Commit::Idle) else {
            panic!("a commit is refused only after it was handed to the committer");
        };
        let full = matches!(error, StoreError::OutboxFull { .. });
        if !full && !matches!(error, StoreError::CommitterStopped) && !self.waiting.is_empty() {
            tracing::error!(stage = "pipeline", pipeline = %self.pipeline, error = %error, undurable = self.waiting.len(),
                "a commit failed while earlier commits were not durable yet (durability = \"relaxed\"); \
                 exiting so that a restart resumes from the last durable state (nothing acknowledged is lost)");
            return vec![Action::ExitDurabilityLost];
        }
        if self.stopping || matches!(error, StoreError::CommitterStopped) {
            return self.give_up(&batch);
        }
        let delay = if full {
            if self.full_since.is_none() {
                self.full_since = Some(now);
                tracing::warn!(stage = "pipeline", pipeline = %self.pipeline, error = %error,
                    "the outbox is full and its policy is `block`: input stays unacknowledged until the sink frees room");
            }
            self.full_retry.next_delay(&mut self.rng)
        } else {
            let delay = self.retry.next_delay(&mut self.rng);
            tracing::error!(stage = "pipeline", pipeline = %self.pipeline, error = %error, retry_in = ?delay,
                "commit failed; retrying");
            delay
        };
        self.commit = Commit::BackingOff(batch, changes);
        vec![Action::RetryAfter(delay)]
    }

    fn retry_due(&mut self) -> Vec<Action<C, A>> {
        let Commit::BackingOff(batch, changes) = std::mem::replace(&mut self.commit, Commit::Idle) else {
            panic!("a retry is due only after a refused commit");
        };
        let seqs = batch.seqs.clone();
        self.commit = Commit::InFlight(batch);
        vec![Action::Commit { changes, seqs }]
    }

    fn stop(&mut self) -> Vec<Action<C, A>> {
        self.stopping = true;
        match std::mem::replace(&mut self.commit, Commit::Idle) {
            Commit::BackingOff(batch, _) => self.give_up(&batch),
            // The answer to a commit in flight decides (see `refused`).
            other => {
                self.commit = other;
                Vec::new()
            }
        }
    }

    fn give_up(&self, batch: &InHand<A>) -> Vec<Action<C, A>> {
        tracing::error!(stage = "pipeline", pipeline = %self.pipeline, deliveries = batch.acks.len(),
            "shutting down with an uncommitted batch; it is not acknowledged and will be redelivered");
        vec![Action::GiveUp]
    }
}

#[cfg(test)]
mod tests;
