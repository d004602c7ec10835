//! `unit-convert`: converts the values of chosen series to another unit.
//!
//! Either a named conversion (`conversion = "celsius_to_fahrenheit"`), which knows its source and
//! target units, or a linear one (`scale`, `offset`, and the new `unit`): `out = in × scale + offset`.
//!
//! Safety rule: a series whose unit is known and is not the conversion's source unit is left
//! unchanged (and a warning is logged), so a misrouted series is never converted twice. A series
//! without a unit is converted and gets the target unit. Series the `series` pattern does not match
//! pass through unchanged.

mod conversion;

pub use conversion::{NamedConversion, Params, UnitConvert};

weir_sdk::export_operator!(UnitConvert);
