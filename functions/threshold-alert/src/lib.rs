//! `threshold-alert`: passes readings through only while their series is in alarm.
//!
//! A watched series enters the *high* alarm when a value rises above `above` and leaves it when a
//! value falls to `above - hysteresis` or below; the *low* alarm mirrors this around `below`. The
//! hysteresis band keeps a value hovering at the limit from toggling the alarm on every reading.
//! Readings of watched series pass only while their series is in alarm (the reading that raises
//! the alarm passes, the one that clears it does not). Readings of series the `series` pattern
//! does not match pass through unchanged. Non-finite values carry no information: they neither
//! change the alarm nor pass.
//!
//! The alarm of each series is kept in durable state, so a restart (or a replaced instance)
//! continues inside the hysteresis band exactly where it left off.

use serde::Deserialize;
use weir_sdk::{Batch, Context, Error, Operator, SeriesFilter};

/// Parameters, from the pipeline configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Series to watch (MQTT-style pattern); default: all.
    #[serde(default)]
    pub series: SeriesFilter,
    /// High limit: the alarm rises when a value exceeds it.
    pub above: Option<f64>,
    /// Low limit: the alarm rises when a value is below it.
    pub below: Option<f64>,
    /// Width of the band a value must cross back through to clear the alarm; default 0.
    #[serde(default)]
    pub hysteresis: f64,
}

/// Where a series stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alarm {
    /// Within limits.
    Normal,
    /// Above the high limit (and not yet back through the hysteresis band).
    High,
    /// Below the low limit (and not yet back through the hysteresis band).
    Low,
}

impl Alarm {
    fn from_state(bytes: Option<&[u8]>) -> Self {
        match bytes {
            Some([1]) => Self::High,
            Some([2]) => Self::Low,
            _ => Self::Normal,
        }
    }

    fn to_state(self) -> Option<[u8; 1]> {
        match self {
            Self::Normal => None,
            Self::High => Some([1]),
            Self::Low => Some([2]),
        }
    }
}

/// The operator.
#[derive(Debug)]
pub struct ThresholdAlert {
    params: Params,
}

impl ThresholdAlert {
    /// The alarm after seeing `value` in state `alarm`.
    pub fn next(&self, alarm: Alarm, value: f64) -> Alarm {
        if !value.is_finite() {
            return alarm;
        }
        let Params { above, below, hysteresis, .. } = self.params;
        let still_in = match alarm {
            Alarm::High => above.is_some_and(|limit| value > limit - hysteresis),
            Alarm::Low => below.is_some_and(|limit| value < limit + hysteresis),
            Alarm::Normal => false,
        };
        if still_in {
            alarm
        } else if above.is_some_and(|limit| value > limit) {
            Alarm::High
        } else if below.is_some_and(|limit| value < limit) {
            Alarm::Low
        } else {
            Alarm::Normal
        }
    }
}

fn state_key(series_name: &str) -> Vec<u8> {
    [b"alarm/".as_slice(), series_name.as_bytes()].concat()
}

impl Operator for ThresholdAlert {
    type Params = Params;

    fn init(params: Params, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        if params.above.is_none() && params.below.is_none() {
            return Err(Error::invalid_params("set `above`, `below` or both"));
        }
        if !(params.hysteresis.is_finite() && params.hysteresis >= 0.0) {
            return Err(Error::invalid_params("`hysteresis` must be a finite number >= 0"));
        }
        if let (Some(above), Some(below)) = (params.above, params.below)
            && below + params.hysteresis >= above - params.hysteresis
        {
            return Err(Error::invalid_params(
                "`below + hysteresis` must be less than `above - hysteresis`, or the alarms overlap",
            ));
        }
        Ok(Self { params })
    }

    fn process(&mut self, mut batch: Batch, ctx: &mut Context<'_>) -> Result<Batch, Error> {
        // Alarm of each dictionary entry: None = not watched, loaded lazily from state.
        let mut alarms: Vec<Option<(Alarm, Alarm)>> = vec![None; batch.series().len()];
        let mut state = ctx.state();
        batch.retain(|sample| {
            if !self.params.series.matches(&sample.series.name) {
                return true;
            }
            let (_, current) = alarms[sample.series_id.index()].get_or_insert_with(|| {
                let stored = Alarm::from_state(state.get(state_key(&sample.series.name)).as_deref());
                (stored, stored)
            });
            *current = self.next(*current, sample.value);
            *current != Alarm::Normal && sample.value.is_finite()
        });
        let changed = batch.series().iter().zip(&alarms).filter_map(|(series, alarm)| match alarm {
            Some((before, after)) if before != after => Some((series, *before, *after)),
            _ => None,
        });
        for (series, before, after) in changed {
            match after.to_state() {
                Some(bytes) => ctx.state().set(state_key(&series.name), bytes)?,
                None => ctx.state().delete(state_key(&series.name)),
            }
            ctx.info(format!("{}: alarm {before:?} -> {after:?}", series.name));
        }
        Ok(batch)
    }
}

weir_sdk::export_operator!(ThresholdAlert);

#[cfg(test)]
mod tests {
    use weir_sdk::testing::{self, TestHost, values};
    use weir_sdk::{Series, Timestamp};

    use super::*;

    fn batch(series: &str, values: &[f64]) -> Batch {
        testing::batch(Series::new(series), values)
    }

    #[test]
    fn passes_readings_only_while_in_alarm_with_hysteresis() {
        let mut host = TestHost::new();
        let mut op: ThresholdAlert = host.init_operator(r#"{"above": 80, "hysteresis": 5}"#).expect("valid params");
        let out = host.process(&mut op, batch("t", &[70.0, 81.0, 78.0, 76.0, 75.0, 79.0, 80.5])).expect("plain values");
        // 81 raises; 78 and 76 stay inside the band; 75 clears; 79 is below the limit; 80.5 raises.
        assert_eq!(values(&out), [81.0, 78.0, 76.0, 80.5]);
    }

    #[test]
    fn low_alarm_mirrors_high_alarm() {
        let mut host = TestHost::new();
        let mut op: ThresholdAlert = host.init_operator(r#"{"below": 10, "hysteresis": 1}"#).expect("valid params");
        let out = host.process(&mut op, batch("t", &[12.0, 9.0, 10.5, 11.0, 9.9])).expect("plain values");
        assert_eq!(values(&out), [9.0, 10.5, 9.9]);
    }

    #[test]
    fn alarm_survives_a_restart_inside_the_band() {
        let mut host = TestHost::new();
        let params = r#"{"above": 80, "hysteresis": 5}"#;
        let mut op: ThresholdAlert = host.init_operator(params).expect("valid params");
        host.process(&mut op, batch("t", &[85.0])).expect("plain values");
        drop(op);
        let mut restarted: ThresholdAlert = host.init_operator(params).expect("valid params");
        let out = host.process(&mut restarted, batch("t", &[78.0])).expect("plain values");
        assert_eq!(values(&out), [78.0], "78 is inside the band of an alarm raised before the restart");
    }

    #[test]
    fn unwatched_series_pass_and_non_finite_values_are_dropped() {
        let mut host = TestHost::new();
        let mut op: ThresholdAlert =
            host.init_operator(r#"{"above": 80, "series": "plant/+/temp"}"#).expect("valid params");
        let mut input = batch("plant/boiler/temp", &[90.0, f64::NAN, 91.0]);
        let other = input.intern_series(Series::new("plant/boiler/pressure"));
        input.push(other, Timestamp::from_secs(9), 1.0);
        let out = host.process(&mut op, input).expect("plain values");
        assert_eq!(values(&out), [90.0, 91.0, 1.0]);
    }

    #[test]
    fn refuses_params_that_cannot_work() {
        let mut host = TestHost::new();
        for bad in [
            r#"{}"#,
            r#"{"above": 1, "hysteresis": -1}"#,
            r#"{"above": 10, "below": 9, "hysteresis": 1}"#,
            r#"{"above": 10, "colour": "red"}"#,
            r#"{"above": 10, "series": "a/#/b"}"#,
        ] {
            let err = host.init_operator::<ThresholdAlert>(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidParams(_)), "{bad}: {err}");
        }
    }
}
