//! `moving-average`: smooths each series with a simple moving average over its last `window`
//! readings.
//!
//! The last `window` values of every series are kept in durable state, so the average continues
//! seamlessly across restarts and replaced instances: the output after a restart is exactly the
//! output an uninterrupted run would have produced. Readings are taken in batch order (the order
//! the gateway received them). Non-finite values pass through unchanged and do not enter the
//! window.
//!
//! With `suffix` unset, values are replaced by their average. With `suffix = "/avg"`, the original
//! readings pass unchanged and an averaged reading is appended for each, in a series named
//! `<name>/avg` with the same unit and tags.

use std::collections::VecDeque;

use serde::Deserialize;
use weir_sdk::{Batch, Context, Error, Operator, Series, SeriesFilter};

/// Largest accepted window, in readings (bounds the state kept per series).
pub const MAX_WINDOW: u32 = 4096;

/// Parameters, from the pipeline configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Series to smooth (MQTT-style pattern); default: all.
    #[serde(default)]
    pub series: SeriesFilter,
    /// Number of readings averaged, 1..=4096.
    pub window: u32,
    /// When set, append averages as a new series `<name><suffix>` instead of replacing values.
    pub suffix: Option<String>,
}

/// The operator.
#[derive(Debug)]
pub struct MovingAverage {
    params: Params,
}

fn state_key(series_name: &str) -> Vec<u8> {
    [b"window/".as_slice(), series_name.as_bytes()].concat()
}

/// Window values as stored: little-endian f64s, oldest first.
fn decode_window(bytes: &[u8], window: usize) -> VecDeque<f64> {
    let values = bytes
        .chunks_exact(8)
        .map(|chunk| f64::from_le_bytes(chunk.try_into().expect("chunks_exact yields 8-byte chunks")));
    let mut values: VecDeque<f64> = values.collect();
    // A smaller window than before the restart keeps the newest values.
    while values.len() > window {
        values.pop_front();
    }
    values
}

fn encode_window(values: &VecDeque<f64>) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The running window of one series.
#[derive(Debug)]
struct Window {
    values: VecDeque<f64>,
    changed: bool,
}

impl Window {
    fn push(&mut self, value: f64, capacity: usize) -> f64 {
        if self.values.len() == capacity {
            self.values.pop_front();
        }
        self.values.push_back(value);
        self.changed = true;
        // Summing oldest to newest every time keeps the result a pure function of the window,
        // identical whether or not the instance restarted in between.
        self.values.iter().sum::<f64>() / self.values.len() as f64
    }
}

impl Operator for MovingAverage {
    type Params = Params;

    fn init(params: Params, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        if !(1..=MAX_WINDOW).contains(&params.window) {
            return Err(Error::invalid_params(format!("`window` must be between 1 and {MAX_WINDOW}")));
        }
        if params.suffix.as_deref() == Some("") {
            return Err(Error::invalid_params("`suffix` must not be empty (leave it out to replace values)"));
        }
        Ok(Self { params })
    }

    fn process(&mut self, mut batch: Batch, ctx: &mut Context<'_>) -> Result<Batch, Error> {
        let capacity = self.params.window as usize;
        let mut windows: Vec<Option<Window>> = (0..batch.series().len()).map(|_| None).collect();
        let mut averages = Vec::with_capacity(batch.len());
        let mut state = ctx.state();
        for sample in batch.iter() {
            if !self.params.series.matches(&sample.series.name) || !sample.value.is_finite() {
                averages.push(None);
                continue;
            }
            let window = windows[sample.series_id.index()].get_or_insert_with(|| Window {
                values: state
                    .get(state_key(&sample.series.name))
                    .map(|bytes| decode_window(&bytes, capacity))
                    .unwrap_or_default(),
                changed: false,
            });
            averages.push(Some(window.push(sample.value, capacity)));
        }
        for (series, window) in batch.series().iter().zip(&windows) {
            if let Some(window) = window.as_ref().filter(|w| w.changed) {
                state.set(state_key(&series.name), encode_window(&window.values))?;
            }
        }
        match &self.params.suffix {
            None => {
                let mut averages = averages.into_iter();
                batch.for_each_mut(|sample| {
                    if let Some(Some(average)) = averages.next() {
                        *sample.value = average;
                    }
                });
            }
            Some(suffix) => {
                let appended: Vec<_> = batch
                    .iter()
                    .zip(averages)
                    .filter_map(|(sample, average)| {
                        let series =
                            Series { name: format!("{}{suffix}", sample.series.name), ..sample.series.clone() };
                        average.map(|average| (series, sample.ts, average))
                    })
                    .collect();
                for (series, ts, average) in appended {
                    let id = batch.intern_series(series);
                    batch.push(id, ts, average);
                }
            }
        }
        Ok(batch)
    }
}

weir_sdk::export_operator!(MovingAverage);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{self, TestHost, values};

    use super::*;

    fn batch(values: &[f64]) -> Batch {
        testing::batch(Series::new("s").with_unit("Cel"), values)
    }

    #[test]
    fn averages_over_the_last_window_readings() {
        let mut host = TestHost::new();
        let mut op: MovingAverage = host.init_operator(r#"{"window": 3}"#).expect("valid params");
        let out = host.process(&mut op, batch(&[3.0, 6.0, 9.0, 12.0])).expect("plain values");
        assert_eq!(values(&out), [3.0, 4.5, 6.0, 9.0]);
    }

    #[test]
    fn restart_continues_exactly_where_an_uninterrupted_run_would_be() {
        let input: Vec<f64> = (0..40).map(|i| f64::from(i * 7 % 13)).collect();
        let params = r#"{"window": 5}"#;

        let mut host = TestHost::new();
        let mut op: MovingAverage = host.init_operator(params).expect("valid params");
        let uninterrupted = values(&host.process(&mut op, batch(&input)).expect("plain values"));

        let mut host = TestHost::new();
        let mut op: MovingAverage = host.init_operator(params).expect("valid params");
        let mut resumed = values(&host.process(&mut op, batch(&input[..17])).expect("plain values"));
        drop(op);
        let mut op: MovingAverage = host.init_operator(params).expect("valid params");
        resumed.extend(values(&host.process(&mut op, batch(&input[17..])).expect("plain values")));

        assert_eq!(uninterrupted, resumed);
    }

    #[test]
    fn suffix_appends_an_averaged_series_and_keeps_originals() {
        let mut host = TestHost::new();
        let mut op: MovingAverage = host.init_operator(r#"{"window": 2, "suffix": "/avg"}"#).expect("valid params");
        let out = host.process(&mut op, batch(&[2.0, 4.0])).expect("plain values");
        let got: Vec<_> = out.iter().map(|s| (s.series.name.clone(), s.value)).collect();
        assert_eq!(got, [("s".into(), 2.0), ("s".into(), 4.0), ("s/avg".into(), 2.0), ("s/avg".into(), 3.0)]);
        assert_eq!(out.series()[1].unit.as_deref(), Some("Cel"));
    }

    #[test]
    fn non_finite_values_pass_and_stay_out_of_the_window() {
        let mut host = TestHost::new();
        let mut op: MovingAverage = host.init_operator(r#"{"window": 2}"#).expect("valid params");
        let out = host.process(&mut op, batch(&[2.0, f64::INFINITY, 4.0])).expect("plain values");
        assert_eq!(values(&out), [2.0, f64::INFINITY, 3.0]);
    }

    #[test]
    fn refuses_bad_windows() {
        let mut host = TestHost::new();
        for bad in [r#"{"window": 0}"#, r#"{"window": 100000}"#, r#"{}"#, r#"{"window": 3, "suffix": ""}"#] {
            assert!(host.init_operator::<MovingAverage>(bad).is_err(), "{bad}");
        }
    }
}
