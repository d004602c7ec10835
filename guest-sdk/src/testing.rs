//! Run functions natively, without a component or a host, for unit tests.
//!
//! [`TestHost`] stands in for the weir host: it keeps state in memory with the same commit rule
//! (a call that returns an error leaves no state behind), records log lines, and lets the test set
//! the watermark and processing time. Dropping a function and calling [`TestHost::init_operator`]
//! again models a restart: the state survives, the in-memory instance does not.
//!
//! Parameters are passed as JSON text, exactly as the host passes them, so the test exercises the
//! same deserialization path as production.

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::batch::{Batch, Message, Series, Timestamp};
use crate::context::{Context, Host, Level, StateError};
use crate::{Decoder, Error, Operator};

/// An in-memory host for unit tests of operators and decoders.
#[derive(Debug, Default)]
pub struct TestHost {
    committed: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Writes of the call in progress: `None` marks a deletion.
    pending: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    logs: Vec<(Level, String)>,
    watermark: Timestamp,
    processing_time: Timestamp,
    max_value_len: Option<u32>,
}

impl TestHost {
    /// A host with empty state and both clocks at the epoch.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the watermark reported to functions.
    pub fn set_watermark(&mut self, watermark: Timestamp) {
        self.watermark = watermark;
    }

    /// Sets the processing time reported to functions.
    pub fn set_processing_time(&mut self, now: Timestamp) {
        self.processing_time = now;
    }

    /// Refuse state values longer than `limit` bytes, as a host with that limit would.
    pub fn limit_value_len(&mut self, limit: u32) {
        self.max_value_len = Some(limit);
    }

    /// The committed state.
    pub fn state(&self) -> &BTreeMap<Vec<u8>, Vec<u8>> {
        &self.committed
    }

    /// Every log record written so far.
    pub fn logs(&self) -> &[(Level, String)] {
        &self.logs
    }

    /// Initialises an operator with `params_json` (a JSON object, as in the host config).
    pub fn init_operator<O: Operator>(&mut self, params_json: &str) -> Result<O, Error> {
        let params = parse_params(params_json)?;
        self.call(|ctx| O::init(params, ctx))
    }

    /// Runs one `process` call.
    pub fn process<O: Operator>(&mut self, operator: &mut O, batch: Batch) -> Result<Batch, Error> {
        self.call(|ctx| operator.process(batch, ctx))
    }

    /// Initialises a decoder with `params_json` (a JSON object, as in the host config).
    pub fn init_decoder<D: Decoder>(&mut self, params_json: &str) -> Result<D, Error> {
        let params = parse_params(params_json)?;
        self.call(|ctx| D::init(params, ctx))
    }

    /// Runs one `decode` call.
    pub fn decode<D: Decoder>(&mut self, decoder: &mut D, message: Message) -> Result<Batch, Error> {
        self.call(|ctx| decoder.decode(message, ctx))
    }

    /// Runs `f` as one call: its state writes are committed if it succeeds and dropped otherwise.
    fn call<T>(&mut self, f: impl FnOnce(&mut Context<'_>) -> Result<T, Error>) -> Result<T, Error> {
        let result = f(&mut Context::new(self));
        let pending = std::mem::take(&mut self.pending);
        if result.is_ok() {
            for (key, value) in pending {
                match value {
                    Some(value) => self.committed.insert(key, value),
                    None => self.committed.remove(&key),
                };
            }
        }
        result
    }
}

/// A batch of `values` of one series, one second apart from the epoch: the usual test input.
pub fn batch(series: Series, values: &[f64]) -> Batch {
    let mut batch = Batch::with_capacity(values.len());
    let id = batch.intern_series(series);
    for (second, value) in (0..).zip(values) {
        batch.push(id, Timestamp::from_secs(second), *value);
    }
    batch
}

/// The values of a batch, in order: the usual test check.
pub fn values(batch: &Batch) -> Vec<f64> {
    batch.iter().map(|s| s.value).collect()
}

fn parse_params<P: serde::de::DeserializeOwned>(params_json: &str) -> Result<P, Error> {
    serde_json::from_str(params_json).map_err(Error::invalid_params)
}

impl Host for TestHost {
    fn log(&mut self, level: Level, message: &str) {
        self.logs.push((level, message.to_owned()));
    }

    fn watermark(&self) -> Timestamp {
        self.watermark
    }

    fn processing_time(&self) -> Timestamp {
        self.processing_time
    }

    fn state_get(&mut self, key: &[u8]) -> Option<Vec<u8>> {
        match self.pending.get(key) {
            Some(pending) => pending.clone(),
            None => self.committed.get(key).cloned(),
        }
    }

    fn state_set(&mut self, key: &[u8], value: &[u8]) -> Result<(), StateError> {
        if let Some(limit) = self.max_value_len
            && value.len() > limit as usize
        {
            return Err(StateError::ValueTooLarge { limit });
        }
        self.pending.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    fn state_delete(&mut self, key: &[u8]) {
        self.pending.insert(key.to_vec(), None);
    }

    fn state_range(&mut self, start: &[u8], end: Option<&[u8]>, limit: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        let upper = end.map_or(Bound::Unbounded, Bound::Excluded);
        let bounds = (Bound::Included(start), upper);
        // Merge committed entries with the call's pending writes; pending wins.
        let mut merged: BTreeMap<&[u8], Option<&Vec<u8>>> =
            self.committed.range::<[u8], _>(bounds).map(|(k, v)| (k.as_slice(), Some(v))).collect();
        for (k, v) in self.pending.range::<[u8], _>(bounds) {
            merged.insert(k.as_slice(), v.as_ref());
        }
        merged.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_vec(), v.clone()))).take(limit as usize).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts readings in state; fails (after writing) when asked to.
    struct Counter;

    #[derive(serde::Deserialize)]
    struct NoParams {}

    impl Operator for Counter {
        type Params = NoParams;

        fn init(_: NoParams, _: &mut Context<'_>) -> Result<Self, Error> {
            Ok(Self)
        }

        fn process(&mut self, batch: Batch, ctx: &mut Context<'_>) -> Result<Batch, Error> {
            let mut state = ctx.state();
            let seen = state.get("seen").map_or(0, |v| u64::from_le_bytes(v.try_into().unwrap_or([0; 8])));
            state.set("seen", (seen + batch.len() as u64).to_le_bytes())?;
            if batch.iter().any(|s| s.value.is_nan()) {
                return Err(Error::invalid_input("NaN"));
            }
            Ok(batch)
        }
    }

    fn batch_of(values: &[f64]) -> Batch {
        batch(Series::new("s"), values)
    }

    #[test]
    fn failed_calls_leave_no_state_behind() {
        let mut host = TestHost::new();
        let mut op: Counter = host.init_operator("{}").expect("no params needed");
        host.process(&mut op, batch_of(&[1.0, 2.0])).expect("plain numbers pass");
        host.process(&mut op, batch_of(&[f64::NAN])).expect_err("NaN is refused");
        assert_eq!(host.state().get(b"seen".as_slice()), Some(&2u64.to_le_bytes().to_vec()));
    }

    #[test]
    fn range_sees_pending_writes_and_deletions() {
        let mut host = TestHost::new();
        host.committed.insert(b"a".to_vec(), b"1".to_vec());
        host.committed.insert(b"b".to_vec(), b"2".to_vec());
        host.state_delete(b"a");
        host.state_set(b"c", b"3").expect("no limit set");
        let got = host.state_range(b"", None, 10);
        assert_eq!(got, vec![(b"b".to_vec(), b"2".to_vec()), (b"c".to_vec(), b"3".to_vec())]);
    }
}
