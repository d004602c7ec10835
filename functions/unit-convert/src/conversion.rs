//! The operator and its conversions; `lib.rs` exports it from the component (a module of its
//! own so the fleet's test releases of unit-convert can build on the same code).

use serde::Deserialize;
use weir_sdk::{Batch, Context, Error, Operator, SeriesFilter};

/// A conversion with a fixed source and target unit (UCUM-style symbols).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamedConversion {
    /// °C → °F.
    CelsiusToFahrenheit,
    /// °F → °C.
    FahrenheitToCelsius,
    /// °C → K.
    CelsiusToKelvin,
    /// K → °C.
    KelvinToCelsius,
    /// Pa → hPa.
    PascalToHectopascal,
    /// hPa → Pa.
    HectopascalToPascal,
    /// bar → psi.
    BarToPsi,
    /// psi → bar.
    PsiToBar,
    /// m/s → km/h.
    MetersPerSecondToKilometersPerHour,
    /// km/h → m/s.
    KilometersPerHourToMetersPerSecond,
}

/// Pounds per square inch in one bar.
const PSI_PER_BAR: f64 = 14.503_773_773_022;

impl NamedConversion {
    /// Source and target unit.
    pub fn units(self) -> (&'static str, &'static str) {
        match self {
            Self::CelsiusToFahrenheit => ("Cel", "[degF]"),
            Self::FahrenheitToCelsius => ("[degF]", "Cel"),
            Self::CelsiusToKelvin => ("Cel", "K"),
            Self::KelvinToCelsius => ("K", "Cel"),
            Self::PascalToHectopascal => ("Pa", "hPa"),
            Self::HectopascalToPascal => ("hPa", "Pa"),
            Self::BarToPsi => ("bar", "[psi]"),
            Self::PsiToBar => ("[psi]", "bar"),
            Self::MetersPerSecondToKilometersPerHour => ("m/s", "km/h"),
            Self::KilometersPerHourToMetersPerSecond => ("km/h", "m/s"),
        }
    }

    /// The converted value.
    pub fn apply(self, value: f64) -> f64 {
        match self {
            Self::CelsiusToFahrenheit => value * 1.8 + 32.0,
            Self::FahrenheitToCelsius => (value - 32.0) / 1.8,
            Self::CelsiusToKelvin => value + 273.15,
            Self::KelvinToCelsius => value - 273.15,
            Self::PascalToHectopascal => value / 100.0,
            Self::HectopascalToPascal => value * 100.0,
            Self::BarToPsi => value * PSI_PER_BAR,
            Self::PsiToBar => value / PSI_PER_BAR,
            Self::MetersPerSecondToKilometersPerHour => value * 3.6,
            Self::KilometersPerHourToMetersPerSecond => value / 3.6,
        }
    }
}

/// Parameters, from the pipeline configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {
    /// Series to convert (MQTT-style pattern); default: all.
    #[serde(default)]
    pub series: SeriesFilter,
    /// A named conversion; excludes `scale`/`offset`.
    pub conversion: Option<NamedConversion>,
    /// Linear conversion factor.
    pub scale: Option<f64>,
    /// Linear conversion offset, added after scaling; default 0.
    pub offset: Option<f64>,
    /// Source unit of a linear conversion (series with another known unit are left alone).
    pub from_unit: Option<String>,
    /// Unit after a linear conversion.
    pub unit: Option<String>,
}

/// What the operator does to a matching value.
#[derive(Clone, Debug, PartialEq)]
enum Conversion {
    Named(NamedConversion),
    Linear { scale: f64, offset: f64, from_unit: Option<String>, to_unit: Option<String> },
}

impl Conversion {
    fn apply(&self, value: f64) -> f64 {
        match self {
            Self::Named(named) => named.apply(value),
            Self::Linear { scale, offset, .. } => value * scale + offset,
        }
    }

    fn source_unit(&self) -> Option<&str> {
        match self {
            Self::Named(named) => Some(named.units().0),
            Self::Linear { from_unit, .. } => from_unit.as_deref(),
        }
    }

    fn target_unit(&self) -> Option<&str> {
        match self {
            Self::Named(named) => Some(named.units().1),
            Self::Linear { to_unit, .. } => to_unit.as_deref(),
        }
    }
}

/// The operator.
#[derive(Debug)]
pub struct UnitConvert {
    series: SeriesFilter,
    conversion: Conversion,
}

impl Operator for UnitConvert {
    type Params = Params;

    fn init(params: Params, _ctx: &mut Context<'_>) -> Result<Self, Error> {
        let conversion = match params.conversion {
            Some(named) => {
                let linear_given = params.scale.is_some()
                    || params.offset.is_some()
                    || params.from_unit.is_some()
                    || params.unit.is_some();
                if linear_given {
                    return Err(Error::invalid_params(
                        "`conversion` names its own units; do not combine it with scale, offset, from_unit or unit",
                    ));
                }
                Conversion::Named(named)
            }
            None => {
                if params.scale.is_none() && params.offset.is_none() {
                    return Err(Error::invalid_params("set `conversion`, or `scale` and/or `offset`"));
                }
                let scale = params.scale.unwrap_or(1.0);
                let offset = params.offset.unwrap_or(0.0);
                if !(scale.is_finite() && offset.is_finite()) || scale == 0.0 {
                    return Err(Error::invalid_params("`scale` must be finite and non-zero, `offset` finite"));
                }
                Conversion::Linear { scale, offset, from_unit: params.from_unit, to_unit: params.unit }
            }
        };
        Ok(Self { series: params.series, conversion })
    }

    fn process(&mut self, mut batch: Batch, ctx: &mut Context<'_>) -> Result<Batch, Error> {
        // Decide per dictionary entry, then rewrite values column-wise.
        let mut convert = vec![false; batch.series().len()];
        let mut mismatched = Vec::new();
        for (index, series) in batch.series().iter().enumerate() {
            if !self.series.matches(&series.name) {
                continue;
            }
            match (series.unit.as_deref(), self.conversion.source_unit()) {
                (Some(actual), Some(expected)) if actual != expected => {
                    mismatched.push(format!("{} is in {actual}, not {expected}", series.name));
                }
                _ => convert[index] = true,
            }
        }
        for reason in mismatched {
            ctx.warn(format!("left unconverted: {reason}"));
        }
        let conversion = &self.conversion;
        batch.for_each_mut(|sample| {
            if convert[sample.series_id.index()] {
                *sample.value = conversion.apply(*sample.value);
            }
        });
        if let Some(to_unit) = conversion.target_unit() {
            // Relabel each converted series once (not once per reading).
            let mut relabel = Vec::new();
            let mut seen = vec![false; convert.len()];
            for sample in batch.iter() {
                let index = sample.series_id.index();
                if convert[index] && !seen[index] {
                    seen[index] = true;
                    relabel.push(sample.series_id);
                }
            }
            for id in relabel {
                batch.series_mut(id).unit = Some(to_unit.to_owned());
            }
        }
        Ok(batch)
    }
}

#[cfg(test)]
mod tests {
    use weir_sdk::Series;
    use weir_sdk::testing::{self, TestHost};

    use super::*;

    fn one_reading(series: Series, value: f64) -> Batch {
        testing::batch(series, &[value])
    }

    fn convert(params: &str, series: Series, value: f64) -> (f64, Option<String>) {
        let mut host = TestHost::new();
        let mut op: UnitConvert = host.init_operator(params).expect("valid params");
        let out = host.process(&mut op, one_reading(series, value)).expect("conversion succeeds");
        let sample = out.get(0).expect("one reading in, one out");
        (sample.value, sample.series.unit.clone())
    }

    #[test]
    fn named_conversion_converts_and_sets_the_unit() {
        let (value, unit) =
            convert(r#"{"conversion": "celsius_to_fahrenheit"}"#, Series::new("t").with_unit("Cel"), 100.0);
        assert_eq!(value, 212.0);
        assert_eq!(unit.as_deref(), Some("[degF]"));
    }

    #[test]
    fn named_conversions_round_trip() {
        use NamedConversion::*;
        let pairs = [
            (CelsiusToFahrenheit, FahrenheitToCelsius),
            (CelsiusToKelvin, KelvinToCelsius),
            (PascalToHectopascal, HectopascalToPascal),
            (BarToPsi, PsiToBar),
            (MetersPerSecondToKilometersPerHour, KilometersPerHourToMetersPerSecond),
        ];
        for (there, back) in pairs {
            assert_eq!(there.units().1, back.units().0);
            for v in [-40.0, 0.0, 21.5, 1013.25] {
                let round = back.apply(there.apply(v));
                assert!((round - v).abs() < 1e-9, "{there:?}/{back:?} on {v}: {round}");
            }
        }
    }

    #[test]
    fn series_in_another_unit_is_left_alone_with_a_warning() {
        let mut host = TestHost::new();
        let mut op: UnitConvert =
            host.init_operator(r#"{"conversion": "celsius_to_fahrenheit"}"#).expect("valid params");
        let out = host
            .process(&mut op, one_reading(Series::new("t").with_unit("[degF]"), 70.0))
            .expect("mismatch is not an error");
        assert_eq!(out.get(0).map(|s| s.value), Some(70.0));
        assert!(host.logs().iter().any(|(_, line)| line.contains("left unconverted")));
    }

    #[test]
    fn linear_conversion_uses_scale_offset_and_unit() {
        let (value, unit) = convert(r#"{"scale": 0.1, "offset": -5, "unit": "V"}"#, Series::new("raw"), 120.0);
        assert!((value - 7.0).abs() < 1e-12);
        assert_eq!(unit.as_deref(), Some("V"));
    }

    #[test]
    fn unmatched_series_pass_through() {
        let (value, unit) =
            convert(r#"{"conversion": "pascal_to_hectopascal", "series": "a/#"}"#, Series::new("b/p"), 5.0);
        assert_eq!((value, unit), (5.0, None));
    }

    #[test]
    fn refuses_ambiguous_or_empty_params() {
        let mut host = TestHost::new();
        for bad in [
            r#"{}"#,
            r#"{"conversion": "celsius_to_fahrenheit", "scale": 2}"#,
            r#"{"conversion": "celsius_to_fahrenheit", "unit": "K"}"#,
            r#"{"conversion": "furlongs_to_feet"}"#,
            r#"{"scale": 0}"#,
        ] {
            let err = host.init_operator::<UnitConvert>(bad).expect_err(bad);
            assert!(matches!(err, Error::InvalidParams(_)), "{bad}: {err}");
        }
    }
}
