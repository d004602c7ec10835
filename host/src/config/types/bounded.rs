//! Sizes, durations, rates and counts, each written with its unit and held within bounds.
//!
//! Every bound keeps each use of the value (`Instant + Duration`, timers, allocation, doubling)
//! far from overflow and refuses values no deployment means; a value outside is refused with the
//! range allowed, and the TOML parser adds its position.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// A size written with a unit (`"64MiB"`, `"512KiB"`, `"10MB"`); bare numbers are refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;

        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size with a unit, such as \"64MiB\" or \"512KiB\"")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<ByteSize, E> {
                parse_size(text).map_err(E::custom)
            }
        }

        deserializer.deserialize_str(SizeVisitor)
    }
}

fn parse_size(text: &str) -> Result<ByteSize, String> {
    let parsed = bytesize::ByteSize::from_str(text.trim())
        .map_err(|_| format!("size {text:?} is not valid: write a number and a unit, such as \"64MiB\""))?;
    if !text.trim_end().ends_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(format!("size {text:?} needs a unit, such as \"{text}B\" or \"{text}KiB\""));
    }
    Ok(ByteSize(parsed.as_u64()))
}

/// A positive rate in bytes per second, written with a size unit and `/s` (`"64KiB/s"`), at most
/// [`ByteRate::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteRate(pub u64);

impl ByteRate {
    /// The fastest rate accepted: 1GiB/s.
    pub const MAX: u64 = GIB;
}

impl<'de> Deserialize<'de> for ByteRate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let refuse =
            || de::Error::custom(format!("rate {text:?} is not valid: write a size per second, such as \"64KiB/s\""));
        let size = text.trim().strip_suffix("/s").ok_or_else(refuse)?;
        if !size.trim_end().ends_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(refuse());
        }
        let bytes = bytesize::ByteSize::from_str(size.trim()).map_err(|_| refuse())?.as_u64();
        if bytes == 0 {
            return Err(de::Error::custom(format!("rate {text:?} must be above zero")));
        }
        if bytes > ByteRate::MAX {
            return Err(de::Error::custom(format!("rate {text:?} is out of range: use at most 1GiB/s")));
        }
        Ok(ByteRate(bytes))
    }
}

/// Milliseconds in a second, a minute, an hour and a day: units of [`DurationIn`] bounds.
pub const SECOND: u64 = 1000;
/// See [`SECOND`].
pub const MINUTE: u64 = 60 * SECOND;
/// See [`SECOND`].
pub const HOUR: u64 = 60 * MINUTE;
/// See [`SECOND`].
pub const DAY: u64 = 24 * HOUR;

/// Bytes in a KiB, MiB, GiB and TiB: units of [`SizeIn`] and [`ByteRate`] bounds.
pub const KIB: u64 = 1024;
/// See [`KIB`].
pub const MIB: u64 = 1024 * KIB;
/// See [`KIB`].
pub const GIB: u64 = 1024 * MIB;
/// See [`KIB`].
pub const TIB: u64 = 1024 * GIB;

/// A duration written with a unit (`"250ms"`, `"30s"`, `"1h"`), from `MIN_MS` to `MAX_MS`
/// milliseconds. The bounds keep every use of the value (`Instant + Duration`, timers, doubling)
/// far from overflow, and refuse values no deployment means.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct DurationIn<const MIN_MS: u64, const MAX_MS: u64>(pub Duration);

impl<const MIN_MS: u64, const MAX_MS: u64> DurationIn<MIN_MS, MAX_MS> {
    /// The duration.
    pub fn get(self) -> Duration {
        self.0
    }
}

impl<'de, const MIN_MS: u64, const MAX_MS: u64> Deserialize<'de> for DurationIn<MIN_MS, MAX_MS> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor<const MIN_MS: u64, const MAX_MS: u64>;

        impl<const MIN_MS: u64, const MAX_MS: u64> Visitor<'_> for DurationVisitor<MIN_MS, MAX_MS> {
            type Value = DurationIn<MIN_MS, MAX_MS>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Self::Value, E> {
                let duration =
                    humantime::parse_duration(text).map_err(|_| E::invalid_value(de::Unexpected::Str(text), &self))?;
                if duration < Duration::from_millis(MIN_MS) || duration > Duration::from_millis(MAX_MS) {
                    return Err(E::custom(format!(
                        "duration {text:?} is out of range: use {} to {}",
                        show_duration(MIN_MS),
                        show_duration(MAX_MS)
                    )));
                }
                Ok(DurationIn(duration))
            }
        }

        deserializer.deserialize_str(DurationVisitor::<MIN_MS, MAX_MS>)
    }
}

/// `ms` milliseconds in the largest unit that divides it (`"31days"`, `"24h"`, `"1m"`, `"0s"`).
fn show_duration(ms: u64) -> String {
    match ms {
        0 => "0s".to_owned(),
        ms if ms.is_multiple_of(DAY) && ms > DAY => format!("{}days", ms / DAY),
        ms if ms.is_multiple_of(HOUR) => format!("{}h", ms / HOUR),
        ms if ms.is_multiple_of(MINUTE) => format!("{}m", ms / MINUTE),
        ms if ms.is_multiple_of(SECOND) => format!("{}s", ms / SECOND),
        ms => format!("{ms}ms"),
    }
}

/// A size written with a unit (`"64MiB"`), from `MIN` to `MAX` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SizeIn<const MIN: u64, const MAX: u64>(pub u64);

impl<const MIN: u64, const MAX: u64> SizeIn<MIN, MAX> {
    /// The size in bytes.
    pub fn get(self) -> u64 {
        self.0
    }
}

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for SizeIn<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let ByteSize(bytes) = parse_size(&text).map_err(de::Error::custom)?;
        if !(MIN..=MAX).contains(&bytes) {
            return Err(de::Error::custom(format!(
                "size {text:?} is out of range: use {} to {}",
                show_size(MIN),
                show_size(MAX)
            )));
        }
        Ok(Self(bytes))
    }
}

/// `bytes` in the largest binary unit that divides it (`"4GiB"`, `"64KiB"`, `"1B"`).
pub fn show_size(bytes: u64) -> String {
    let units = [(TIB, "TiB"), (GIB, "GiB"), (MIB, "MiB"), (KIB, "KiB")];
    match units.iter().find(|(unit, _)| bytes >= *unit && bytes.is_multiple_of(*unit)) {
        Some((unit, name)) => format!("{}{name}", bytes / unit),
        None => format!("{bytes}B"),
    }
}

/// A count (a bare integer) from `MIN` to `MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(try_from = "i64")]
pub struct CountIn<const MIN: u64, const MAX: u64>(u64);

impl<const MIN: u64, const MAX: u64> TryFrom<i64> for CountIn<MIN, MAX> {
    type Error = String;

    fn try_from(count: i64) -> Result<Self, String> {
        u64::try_from(count)
            .ok()
            .filter(|c| (MIN..=MAX).contains(c))
            .map(Self)
            .ok_or_else(|| format!("{count} is out of range: use {MIN} to {MAX}"))
    }
}

impl<const MIN: u64, const MAX: u64> CountIn<MIN, MAX> {
    /// The count.
    pub fn get(self) -> u64 {
        self.0
    }

    /// The count as usize (every bound used fits).
    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).expect("count bounds fit in usize")
    }

    /// The count as u32 (every bound used fits).
    pub fn as_u32(self) -> u32 {
        u32::try_from(self.0).expect("count bounds of u32 fields fit in u32")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_need_units() {
        let parse = |s: &str| ByteSize::deserialize(de::value::StrDeserializer::<de::value::Error>::new(s));
        assert_eq!(parse("64MiB").expect("valid").0, 64 * 1024 * 1024);
        assert_eq!(parse("1 KiB").expect("valid").0, 1024);
        assert!(parse("64").is_err());
        assert!(parse("lots").is_err());
    }
}
