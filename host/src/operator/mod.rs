//! Operators: the chain of functions a pipeline runs over every batch, in order.
//!
//! An [`Operator`] is anything that turns a batch into a batch — today the WebAssembly functions of
//! [`crate::sandbox`]; built-in operators implement the same trait.
//!
//! Failure of one batch: when operator *k* refuses or faults, the chain stops there. Operators
//! before *k* processed the batch successfully and keep their state writes; *k*'s call is undone;
//! the batch as *k* received it is handed back in [`ChainFailure`] so the pipeline can dead-letter
//! it with the reason. Later batches run through the whole chain again (a faulted instance is
//! replaced by the sandbox). Nothing here is fatal.

use crate::batch::Batch;
pub use crate::batch::CallContext;
use crate::state::StateWrite;

/// Why an operator did not produce an output batch.
#[derive(Debug, Clone, thiserror::Error)]
pub enum OperatorFailure {
    /// The function returned a domain error for this batch.
    #[error("refused the batch: {reason}")]
    Refused {
        /// The function's reason.
        reason: String,
    },
    /// The function trapped, ran out of time or memory, or returned a malformed batch.
    #[error("faulted: {fault}")]
    Fault {
        /// What happened.
        fault: crate::sandbox::Fault,
    },
    /// The function is quarantined after faulting too often in a row; it was not called.
    #[error("quarantined for another {}", humantime::format_duration(crate::sandbox::round_to_millis(*.remaining)))]
    Quarantined {
        /// Time left in the quarantine.
        remaining: std::time::Duration,
    },
}

/// Turns a batch into a batch.
///
/// `Send` because the pipeline runs its chain on a blocking thread.
pub trait Operator: Send {
    /// Name of this use in the pipeline (the function's state namespace).
    fn name(&self) -> &str;

    /// The function version behind it (`<id>@<digest prefix>`), when it is a function.
    fn function(&self) -> Option<&str> {
        None
    }

    /// Processes one batch. On failure, the input comes back with the reason.
    // The error hands the input batch back for dead-lettering; boxing it would allocate on a
    // path that is rare but not exceptional.
    #[allow(clippy::result_large_err)]
    fn process(&mut self, batch: Batch, ctx: &CallContext) -> Result<Batch, (Batch, OperatorFailure)>;

    /// State writes of successful calls since the last take, for the pipeline's next commit.
    fn take_state_writes(&mut self) -> Vec<StateWrite>;
}

/// A batch the chain could not finish.
#[derive(Debug)]
pub struct ChainFailure {
    /// Name of the operator that failed.
    pub operator: String,
    /// The function version behind it, when it is a function.
    pub function: Option<String>,
    /// Why.
    pub failure: OperatorFailure,
    /// The batch as that operator received it.
    pub input: Batch,
}

/// The operators of one pipeline.
pub struct Chain {
    operators: Vec<Box<dyn Operator>>,
    skip_quarantined: bool,
    skipped: usize,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.operators.iter().map(|o| o.name())).finish()
    }
}

impl Chain {
    /// A chain running `operators` in order. With `skip_quarantined`, a quarantined operator is
    /// passed over (the batch goes on to the next one unchanged); without, it fails the batch.
    pub fn new(operators: Vec<Box<dyn Operator>>, skip_quarantined: bool) -> Self {
        Self { operators, skip_quarantined, skipped: 0 }
    }

    /// Names of the operators, in order.
    pub fn names(&self) -> Vec<&str> {
        self.operators.iter().map(|o| o.name()).collect()
    }

    /// Runs `batch` through every operator. An empty batch stops early (nothing to do).
    #[allow(clippy::result_large_err)] // see `Operator::process`
    pub fn process(&mut self, mut batch: Batch, ctx: &CallContext) -> Result<Batch, ChainFailure> {
        for operator in &mut self.operators {
            if batch.is_empty() {
                break;
            }
            batch = match operator.process(batch, ctx) {
                Ok(output) => output,
                Err((input, OperatorFailure::Quarantined { .. })) if self.skip_quarantined => {
                    self.skipped += input.len();
                    input
                }
                Err((input, failure)) => {
                    return Err(ChainFailure {
                        operator: operator.name().to_owned(),
                        function: operator.function().map(str::to_owned),
                        failure,
                        input,
                    });
                }
            };
        }
        Ok(batch)
    }

    /// Readings that went past a quarantined operator unprocessed since the last take.
    pub fn take_skipped(&mut self) -> usize {
        std::mem::take(&mut self.skipped)
    }

    /// Every operator's state writes since the last take.
    pub fn take_state_writes(&mut self) -> Vec<StateWrite> {
        self.operators.iter_mut().flat_map(|o| o.take_state_writes()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{BatchBuilder, Series};

    /// Doubles values; refuses batches holding a negative value.
    struct Doubler {
        name: &'static str,
        calls: usize,
    }

    impl Operator for Doubler {
        fn name(&self) -> &str {
            self.name
        }

        fn process(&mut self, batch: Batch, _: &CallContext) -> Result<Batch, (Batch, OperatorFailure)> {
            self.calls += 1;
            if batch.values().iter().any(|v| *v < 0.0) {
                return Err((batch, OperatorFailure::Refused { reason: "negative".into() }));
            }
            let (series, idx, ts, values) = batch.into_columns();
            Ok(Batch::from_columns(series, idx, ts, values.into_iter().map(|v| v * 2.0).collect()).expect("same shape"))
        }

        fn take_state_writes(&mut self) -> Vec<StateWrite> {
            Vec::new()
        }
    }

    fn batch(values: &[f64]) -> Batch {
        let mut builder = BatchBuilder::new();
        let index = builder.intern(&Series::named("s"));
        for v in values {
            builder.push(index, 0, *v);
        }
        builder.finish()
    }

    const CTX: CallContext = CallContext { processing_time: 0, watermark: 0 };

    #[test]
    fn runs_operators_in_order() {
        let mut chain = Chain::new(
            vec![Box::new(Doubler { name: "a", calls: 0 }), Box::new(Doubler { name: "b", calls: 0 })],
            false,
        );
        assert_eq!(chain.process(batch(&[1.0, 2.0]), &CTX).expect("positive values").values(), [4.0, 8.0]);
        assert_eq!(chain.names(), ["a", "b"]);
    }

    #[test]
    fn failure_names_the_operator_and_returns_its_input() {
        let mut chain = Chain::new(
            vec![Box::new(Doubler { name: "a", calls: 0 }), Box::new(Doubler { name: "b", calls: 0 })],
            false,
        );
        let failure = chain.process(batch(&[-1.0]), &CTX).expect_err("negative values are refused");
        assert_eq!(failure.operator, "a");
        assert_eq!(failure.input.values(), [-1.0]);
    }
}
