//! The bookkeeping driven directly: scenarios for each rule, and a model-based property test in
//! which a scripted committer and broker play against it over several lives of the process.

use rand::SeedableRng;

use super::*;

/// Change sets are batch numbers, acknowledgements delivery numbers.
type Books = Bookkeeping<u64, u64>;
type Act = Action<u64, u64>;

fn at(last_seq: u64) -> Books {
    Bookkeeping::new("p", last_seq, StdRng::seed_from_u64(1))
}

fn failed() -> StoreError {
    StoreError::CommitFailed { reason: "disk full".into() }
}

fn full() -> StoreError {
    StoreError::OutboxFull { stream: "p".into(), max_bytes: 4096 }
}

fn processed(books: &mut Books, batch: u64, records: u64, acks: &[u64]) -> Vec<Act> {
    books.step(Event::Processed { changes: batch, records, acks: acks.to_vec() }, 0)
}

#[test]
fn records_take_the_seqs_after_the_last_committed_one_which_advances_only_when_applied() {
    let mut books = at(41);
    assert_eq!(books.next_seq(), 42);
    assert_eq!(processed(&mut books, 1, 3, &[]), [Action::Commit { changes: 1, seqs: Some(42..=44) }]);
    assert_eq!(books.next_seq(), 42, "not before the commit is applied");
    books.step(Event::Applied { group: 1 }, 0);
    assert_eq!(books.next_seq(), 45);
    assert_eq!(processed(&mut books, 2, 0, &[]), [Action::Commit { changes: 2, seqs: None }], "no records, no seqs");
    books.step(Event::Applied { group: 2 }, 0);
    assert_eq!(books.next_seq(), 45);
}

#[test]
fn a_refused_commit_is_retried_whole_with_its_seqs_after_a_backoff() {
    let mut books = at(0);
    processed(&mut books, 7, 2, &[1, 2]);
    let [Action::RetryAfter(delay)] = books.step(Event::CommitFailed { changes: 7, error: failed() }, 0)[..] else {
        panic!("a retry after a backoff");
    };
    assert!(delay >= COMMIT_RETRY.min / 2 && delay <= COMMIT_RETRY.min, "{delay:?}");
    assert_eq!(books.next_seq(), 1, "a refused commit does not advance the seq");
    assert_eq!(books.step(Event::RetryDue, 0), [Action::Commit { changes: 7, seqs: Some(1..=2) }]);
    let [Action::RetryAfter(longer)] = books.step(Event::CommitFailed { changes: 7, error: failed() }, 0)[..] else {
        panic!("another retry");
    };
    assert!(longer >= COMMIT_RETRY.min, "the backoff grows: {longer:?}");
    books.step(Event::RetryDue, 0);
    assert_eq!(
        books.step(Event::Applied { group: 1 }, 0),
        [],
        "applied, but nothing leaves before a durable commit covers it"
    );
    assert_eq!(
        books.step(Event::Durable { through: 1 }, 0),
        [Action::PublishThrough(2), Action::Acknowledge(vec![1, 2])]
    );
}

#[test]
fn acknowledgements_wait_for_a_durable_commit_and_leave_batch_by_batch_in_arrival_order() {
    let mut books = at(0);
    for (batch, acks) in [(1, [1, 2]), (2, [3, 4]), (3, [5, 6])] {
        processed(&mut books, batch, 1, &acks);
        assert_eq!(books.step(Event::Applied { group: batch }, 0), []);
    }
    assert_eq!(books.waiting_for(), Some(3));
    assert_eq!(
        books.step(Event::Durable { through: 2 }, 0),
        [
            Action::PublishThrough(1),
            Action::Acknowledge(vec![1, 2]),
            Action::PublishThrough(2),
            Action::Acknowledge(vec![3, 4])
        ]
    );
    assert_eq!(books.step(Event::Durable { through: 2 }, 0), [], "nothing twice");
    assert_eq!(
        books.step(Event::Durable { through: 9 }, 0),
        [Action::PublishThrough(3), Action::Acknowledge(vec![5, 6])]
    );
    assert_eq!(books.waiting_for(), None);
}

#[test]
fn a_commit_already_covered_by_a_durable_one_is_released_when_applied() {
    let mut books = at(0);
    processed(&mut books, 1, 1, &[10]);
    books.step(Event::Durable { through: 4 }, 0);
    assert_eq!(books.step(Event::Applied { group: 4 }, 0), [Action::PublishThrough(1), Action::Acknowledge(vec![10])]);
}

#[test]
fn a_commit_failing_while_earlier_ones_are_not_durable_exits() {
    let mut books = at(0);
    processed(&mut books, 1, 1, &[1]);
    books.step(Event::Applied { group: 1 }, 0);
    processed(&mut books, 2, 1, &[2]);
    assert_eq!(books.step(Event::CommitFailed { changes: 2, error: failed() }, 0), [Action::ExitDurabilityLost]);
}

#[test]
fn a_full_outbox_is_waited_out_even_with_commits_not_yet_durable() {
    let mut books = at(0);
    processed(&mut books, 1, 1, &[1]);
    books.step(Event::Applied { group: 1 }, 0);
    processed(&mut books, 2, 1, &[2]);
    let [Action::RetryAfter(delay)] = books.step(Event::CommitFailed { changes: 2, error: full() }, 0)[..] else {
        panic!("a retry, not an exit");
    };
    assert!(delay <= FULL_RETRY.min, "{delay:?}");
}

#[test]
fn shutdown_gives_up_a_refused_batch_instead_of_retrying_it() {
    let mut books = at(0);
    processed(&mut books, 1, 1, &[1]);
    books.step(Event::CommitFailed { changes: 1, error: failed() }, 0);
    assert_eq!(books.step(Event::Stop, 0), [Action::GiveUp], "during the backoff");

    let mut books = at(0);
    processed(&mut books, 1, 1, &[1]);
    assert_eq!(books.step(Event::Stop, 0), [], "the answer to the commit in flight decides");
    assert_eq!(books.step(Event::CommitFailed { changes: 1, error: full() }, 0), [Action::GiveUp]);

    let mut books = at(0);
    processed(&mut books, 1, 1, &[1]);
    books.step(Event::Stop, 0);
    books.step(Event::Applied { group: 1 }, 0);
    assert_eq!(processed(&mut books, 2, 1, &[2]).len(), 1, "batches drained after shutdown are still committed");
}

#[test]
fn a_stopped_committer_ends_the_pipeline() {
    let mut books = at(0);
    processed(&mut books, 1, 1, &[1]);
    assert_eq!(
        books.step(Event::CommitFailed { changes: 0, error: StoreError::CommitterStopped }, 0),
        [Action::GiveUp]
    );
}

#[test]
#[should_panic(expected = "no batch is processed while a quarantined function holds the input")]
fn nothing_is_processed_while_a_quarantine_holds_the_input() {
    let mut books = at(0);
    let entered = Event::QuarantineEntered { function: "f@1".into(), left: Duration::from_secs(3) };
    assert_eq!(books.step(entered, 0), []);
    processed(&mut books, 1, 1, &[1]);
}

#[test]
fn input_is_taken_again_once_the_quarantine_is_over() {
    let mut books = at(0);
    books.step(Event::QuarantineEntered { function: "f@1".into(), left: Duration::from_secs(3) }, 0);
    assert_eq!(books.step(Event::QuarantineLeft, 0), []);
    assert_eq!(processed(&mut books, 1, 1, &[1]), [Action::Commit { changes: 1, seqs: Some(1..=1) }]);
}

mod model {
    //! The bookkeeping against a scripted committer (groups, durable now or later, refusals,
    //! another pipeline's commits) and a broker that redelivers what was not acknowledged when
    //! the process restarts — after a shutdown, or after the exit on lost durability, from what
    //! was durable. Checked throughout: seqs are consecutive from 1 and a seq that may have left
    //! the process never names another batch; an acknowledgement and the publishable seq leave
    //! only once a durable commit covers them, in arrival order; no delivery is acknowledged
    //! twice; the exit happens exactly when a commit fails while this pipeline's earlier
    //! commits are not durable; at the end, everything applied has been released.

    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    use super::*;

    /// How the committer answers one attempt to commit.
    #[derive(Clone, Copy, Debug)]
    enum Refusal {
        /// The transaction failed.
        Failed,
        /// The outbox is full (`block`).
        Full,
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// A batch of `deliveries` new deliveries (after any redelivered ones) is processed into
        /// `records` records; the committer refuses it as `refusals` say (shutdown coming during
        /// the last backoff if `shutdown_in_backoff`), then applies it in a new group, durable at
        /// once or not; the shell reports the durable group before or after the answer.
        Batch {
            deliveries: u64,
            records: u64,
            refusals: Vec<Refusal>,
            shutdown_in_backoff: bool,
            durable_now: bool,
            durable_first: bool,
        },
        /// A durable commit covers every group so far (the relaxed flush).
        Flush,
        /// Other pipelines' change sets commit in `groups` groups, the last durable or not.
        Others { groups: u64, durable: bool },
        /// A function's quarantine holds the input for a while; a flush may come meanwhile.
        Quarantine { flush_meanwhile: bool },
        /// Shutdown, and a start again from what is durable.
        Restart,
    }

    fn step() -> impl Strategy<Value = Step> {
        let refusal = prop_oneof![Just(Refusal::Failed), Just(Refusal::Full)];
        let batch = (
            0u64..4,
            0u64..4,
            prop::collection::vec(refusal, 0..3),
            prop::bool::weighted(0.1),
            any::<bool>(),
            any::<bool>(),
        )
            .prop_map(|(deliveries, records, refusals, shutdown_in_backoff, durable_now, durable_first)| Step::Batch {
                deliveries,
                records,
                refusals,
                shutdown_in_backoff,
                durable_now,
                durable_first,
            });
        prop_oneof![
            10 => batch,
            3 => Just(Step::Flush),
            2 => (1u64..3, any::<bool>()).prop_map(|(groups, durable)| Step::Others { groups, durable }),
            1 => any::<bool>().prop_map(|flush_meanwhile| Step::Quarantine { flush_meanwhile }),
            1 => Just(Step::Restart),
        ]
    }

    /// A commit of this pipeline the committer applied.
    #[derive(Debug)]
    struct Stored {
        group: u64,
        batch: u64,
        seqs: Option<RangeInclusive<u64>>,
        deliveries: Vec<u64>,
    }

    /// The committer, the broker, and the process's current life.
    struct World {
        seed: u64,
        books: Books,
        /// Groups committed in this life (every pipeline's), and the newest durable one.
        group: u64,
        durable: u64,
        /// This pipeline's applied commits; those of earlier lives carry group 0 (durable).
        store: Vec<Stored>,
        next_batch: u64,
        next_delivery: u64,
        /// Delivered and not acknowledged: redelivered at the next start.
        unacknowledged: BTreeSet<u64>,
        /// Redelivered at this start, arriving before new deliveries.
        redelivered: Vec<u64>,
        acknowledged: BTreeSet<u64>,
        /// Every seq that may have left the process (publishable), and its batch.
        published: BTreeMap<u64, u64>,
        /// This life: arrivals, acknowledgements, the publishable seq.
        arrivals: Vec<u64>,
        acknowledged_now: Vec<u64>,
        publish_through: u64,
        exits: usize,
    }

    impl World {
        fn new(seed: u64) -> Self {
            Self {
                seed,
                books: Bookkeeping::new("p", 0, StdRng::seed_from_u64(seed)),
                group: 0,
                durable: 0,
                store: Vec::new(),
                next_batch: 0,
                next_delivery: 0,
                unacknowledged: BTreeSet::new(),
                redelivered: Vec::new(),
                acknowledged: BTreeSet::new(),
                published: BTreeMap::new(),
                arrivals: Vec::new(),
                acknowledged_now: Vec::new(),
                publish_through: 0,
                exits: 0,
            }
        }

        fn last_stored_seq(&self) -> u64 {
            self.store.iter().rev().find_map(|s| s.seqs.as_ref().map(|seqs| *seqs.end())).unwrap_or(0)
        }

        fn ours_undurable(&self) -> bool {
            self.store.iter().any(|s| s.group > self.durable)
        }

        /// The process ends (shutdown or exit) and starts again: the committer is back at the
        /// last durable state, the broker redelivers what was not acknowledged.
        fn restart(&mut self) -> Result<(), TestCaseError> {
            let durable = self.durable;
            self.store.retain(|s| s.group <= durable);
            for stored in &mut self.store {
                stored.group = 0;
            }
            self.group = 0;
            self.durable = 0;
            let last_seq = self.last_stored_seq();
            self.seed += 1;
            self.books = Bookkeeping::new("p", last_seq, StdRng::seed_from_u64(self.seed));
            self.redelivered = self.unacknowledged.iter().copied().collect();
            self.arrivals.clear();
            self.acknowledged_now.clear();
            // Everything stored is durable: the sink may publish all of it from the start.
            self.publish_through = last_seq;
            self.publish(last_seq)
        }

        /// Notes that every seq up to `through` may leave the process.
        fn publish(&mut self, through: u64) -> Result<(), TestCaseError> {
            for stored in &self.store {
                for seq in stored.seqs.clone().into_iter().flatten().filter(|seq| *seq <= through) {
                    let batch = *self.published.entry(seq).or_insert(stored.batch);
                    prop_assert_eq!(batch, stored.batch, "seq {} left the process for two batches", seq);
                }
            }
            Ok(())
        }

        fn feed(&mut self, event: Event<u64, u64>) -> Vec<Act> {
            self.books.step(event, 0)
        }

        /// Checks and applies releases; anything else is unexpected here.
        fn observe(&mut self, actions: Vec<Act>) -> Result<(), TestCaseError> {
            for action in actions {
                match action {
                    Action::PublishThrough(seq) => {
                        prop_assert!(
                            seq > self.publish_through,
                            "publishable seq goes back: {} after {}",
                            seq,
                            self.publish_through
                        );
                        let stored = self.store.iter().find(|s| s.seqs.as_ref().is_some_and(|seqs| *seqs.end() == seq));
                        let stored =
                            stored.ok_or_else(|| TestCaseError::fail(format!("{seq} ends no stored batch")))?;
                        prop_assert!(stored.group <= self.durable, "seq {} published before durable", seq);
                        self.publish_through = seq;
                        self.publish(seq)?;
                    }
                    Action::Acknowledge(acks) => {
                        for ack in acks {
                            let stored = self.store.iter().rev().find(|s| s.deliveries.contains(&ack));
                            let stored =
                                stored.ok_or_else(|| TestCaseError::fail(format!("{ack} acked uncommitted")))?;
                            prop_assert!(stored.group <= self.durable, "delivery {} acked before durable", ack);
                            prop_assert!(self.acknowledged.insert(ack), "delivery {} acked twice", ack);
                            self.unacknowledged.remove(&ack);
                            self.acknowledged_now.push(ack);
                        }
                        prop_assert!(
                            self.arrivals.starts_with(&self.acknowledged_now),
                            "acks {:?} out of arrival order {:?}",
                            self.acknowledged_now,
                            self.arrivals
                        );
                    }
                    other => prop_assert!(false, "unexpected {:?}", other),
                }
            }
            Ok(())
        }

        fn report_durable(&mut self) -> Result<(), TestCaseError> {
            let actions = self.feed(Event::Durable { through: self.durable });
            self.observe(actions)
        }

        fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
            match step {
                Step::Batch { deliveries, records, refusals, shutdown_in_backoff, durable_now, durable_first } => {
                    self.batch(deliveries, records, &refusals, shutdown_in_backoff, durable_now, durable_first)
                }
                Step::Flush => {
                    self.durable = self.group;
                    self.report_durable()
                }
                Step::Others { groups, durable } => {
                    self.group += groups;
                    if durable {
                        self.durable = self.group;
                    }
                    self.report_durable()
                }
                Step::Quarantine { flush_meanwhile } => {
                    let entered = Event::QuarantineEntered { function: "f@1".into(), left: Duration::from_secs(1) };
                    prop_assert_eq!(self.feed(entered), vec![]);
                    if flush_meanwhile {
                        self.durable = self.group;
                        self.report_durable()?;
                    }
                    prop_assert_eq!(self.feed(Event::QuarantineLeft), vec![]);
                    Ok(())
                }
                Step::Restart => {
                    prop_assert_eq!(self.feed(Event::Stop), vec![]);
                    self.restart()
                }
            }
        }

        fn batch(
            &mut self,
            deliveries: u64,
            records: u64,
            refusals: &[Refusal],
            shutdown_in_backoff: bool,
            durable_now: bool,
            durable_first: bool,
        ) -> Result<(), TestCaseError> {
            let mut acks = std::mem::take(&mut self.redelivered);
            acks.extend(self.next_delivery..self.next_delivery + deliveries);
            self.next_delivery += deliveries;
            self.unacknowledged.extend(&acks);
            self.arrivals.extend(&acks);
            self.next_batch += 1;
            let batch = self.next_batch;

            let first = self.books.next_seq();
            prop_assert_eq!(first, self.last_stored_seq() + 1, "seqs continue the stored ones");
            let seqs = (records > 0).then(|| first..=first + records - 1);
            let commit = Action::Commit { changes: batch, seqs: seqs.clone() };
            let answer = self.feed(Event::Processed { changes: batch, records, acks: acks.clone() });
            prop_assert_eq!(answer, vec![commit]);

            for (attempt, refusal) in refusals.iter().enumerate() {
                if !self.refuse(batch, *refusal)? {
                    return Ok(());
                }
                if shutdown_in_backoff && attempt + 1 == refusals.len() {
                    prop_assert_eq!(self.feed(Event::Stop), vec![Action::GiveUp]);
                    return self.restart();
                }
                let commit = Action::Commit { changes: batch, seqs: seqs.clone() };
                prop_assert_eq!(self.feed(Event::RetryDue), vec![commit], "retried whole, with its seqs");
            }

            self.group += 1;
            let group = self.group;
            if durable_now {
                self.durable = group;
            }
            self.store.push(Stored { group, batch, seqs, deliveries: acks });
            if durable_first {
                self.report_durable()?;
            }
            let actions = self.feed(Event::Applied { group });
            self.observe(actions)?;
            self.report_durable()
        }

        /// One refused attempt; false when the process ended with it.
        fn refuse(&mut self, batch: u64, refusal: Refusal) -> Result<bool, TestCaseError> {
            let (error, backoff) = match refusal {
                Refusal::Full => (full(), FULL_RETRY),
                // The committer itself exits when any pipeline's commits are not durable; the
                // answer reaches this pipeline only when its own are not.
                Refusal::Failed if self.group > self.durable && !self.ours_undurable() => {
                    self.exits += 1;
                    self.restart()?;
                    return Ok(false);
                }
                Refusal::Failed => (failed(), COMMIT_RETRY),
            };
            let exit_expected = matches!(refusal, Refusal::Failed) && self.ours_undurable();
            self.report_durable()?;
            let answer = self.feed(Event::CommitFailed { changes: batch, error });
            if exit_expected {
                prop_assert_eq!(answer, vec![Action::ExitDurabilityLost]);
                self.exits += 1;
                self.restart()?;
                return Ok(false);
            }
            let [Action::RetryAfter(delay)] = answer[..] else {
                return Err(TestCaseError::fail(format!("expected a retry, got {answer:?}")));
            };
            prop_assert!(delay >= backoff.min / 2 && delay <= backoff.max, "{:?} outside {:?}", delay, backoff);
            Ok(true)
        }

        /// At the end everything becomes durable: nothing may stay behind.
        fn settle(&mut self) -> Result<(), TestCaseError> {
            self.durable = self.group;
            self.report_durable()?;
            prop_assert_eq!(self.books.waiting_for(), None);
            prop_assert_eq!(self.publish_through, self.last_stored_seq());
            prop_assert_eq!(&self.acknowledged_now, &self.arrivals, "every delivery of this life acknowledged");
            let stored: Vec<u64> = self.store.iter().flat_map(|s| s.seqs.clone().into_iter().flatten()).collect();
            prop_assert_eq!(stored, (1..=self.last_stored_seq()).collect::<Vec<_>>(), "seqs 1..N, each once");
            Ok(())
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn bookkeeping_releases_only_what_is_durable_and_never_reuses_a_seq(
            seed in any::<u64>(),
            steps in prop::collection::vec(step(), 1..80),
        ) {
            let mut world = World::new(seed);
            for step in steps {
                world.run(step)?;
            }
            world.settle()?;
        }
    }

    /// A script that takes every path the property test is about: durable later, a relaxed
    /// flush, a failure retried, a full outbox, an exit with commits not durable and the restart.
    #[test]
    fn the_model_takes_every_path() {
        let batch = |refusals: Vec<Refusal>, durable_now| Step::Batch {
            deliveries: 2,
            records: 1,
            refusals,
            shutdown_in_backoff: false,
            durable_now,
            durable_first: false,
        };
        let mut world = World::new(3);
        let script = [
            batch(vec![], true),
            batch(vec![Refusal::Failed, Refusal::Full], false),
            batch(vec![], false),
            Step::Flush,
            batch(vec![], false),
            batch(vec![Refusal::Failed], true),
            batch(vec![], true),
        ];
        for step in script {
            world.run(step).expect("the script keeps the rules");
        }
        world.settle().expect("settles");
        assert_eq!(world.exits, 1);
        assert_eq!(world.last_stored_seq(), 4, "the undone commit's seq was given again after the restart");
        assert_eq!(
            world.acknowledged.len(),
            12,
            "every delivery acknowledged once, the undone batch's after redelivery"
        );
    }
}
