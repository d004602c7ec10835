//! Choosing series by name with MQTT-style patterns.
//!
//! Series names are `/`-separated like MQTT topics, and patterns use the same wildcards: `+`
//! matches exactly one level, `#` (last level only) matches any number of remaining levels,
//! including none. `plant1/+/temp` matches `plant1/boiler/temp`; `plant1/#` matches `plant1` and
//! everything below it.

use std::fmt;

use serde::Deserialize;

/// A validated series-name pattern. Deserializes from a string, so it can sit in a params struct.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct SeriesFilter {
    pattern: String,
}

/// Why a pattern was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InvalidSeriesFilter {
    pattern: String,
    reason: &'static str,
}

impl fmt::Display for InvalidSeriesFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid series filter {:?}: {}", self.pattern, self.reason)
    }
}

impl std::error::Error for InvalidSeriesFilter {}

impl SeriesFilter {
    /// The filter that matches every series (`#`).
    pub fn all() -> Self {
        Self { pattern: "#".to_owned() }
    }

    /// Parses and validates `pattern`.
    pub fn new(pattern: impl Into<String>) -> Result<Self, InvalidSeriesFilter> {
        let pattern = pattern.into();
        let refuse = |reason| Err(InvalidSeriesFilter { pattern: pattern.clone(), reason });
        if pattern.is_empty() {
            return refuse("it is empty");
        }
        let levels: Vec<&str> = pattern.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            if level.contains('#') && (*level != "#" || i != levels.len() - 1) {
                return refuse("`#` must be a whole level and the last one");
            }
            if level.contains('+') && *level != "+" {
                return refuse("`+` must be a whole level");
            }
        }
        Ok(Self { pattern })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.pattern
    }

    /// True when `series_name` matches the pattern.
    pub fn matches(&self, series_name: &str) -> bool {
        let mut names = series_name.split('/');
        for level in self.pattern.split('/') {
            match level {
                "#" => return true,
                "+" => {
                    if names.next().is_none() {
                        return false;
                    }
                }
                literal => {
                    if names.next() != Some(literal) {
                        return false;
                    }
                }
            }
        }
        names.next().is_none()
    }
}

impl Default for SeriesFilter {
    fn default() -> Self {
        Self::all()
    }
}

impl TryFrom<String> for SeriesFilter {
    type Error = InvalidSeriesFilter;

    fn try_from(pattern: String) -> Result<Self, Self::Error> {
        Self::new(pattern)
    }
}

#[cfg(test)]
mod tests {
    use super::SeriesFilter;

    fn matches(pattern: &str, name: &str) -> bool {
        SeriesFilter::new(pattern).expect("test patterns are valid").matches(name)
    }

    #[test]
    fn wildcards_follow_mqtt_rules() {
        assert!(matches("plant1/+/temp", "plant1/boiler/temp"));
        assert!(!matches("plant1/+/temp", "plant1/boiler/inner/temp"));
        assert!(matches("plant1/#", "plant1"));
        assert!(matches("plant1/#", "plant1/a/b/c"));
        assert!(matches("#", "anything/at/all"));
        assert!(!matches("plant1/boiler", "plant1/boiler/temp"));
        assert!(!matches("plant1/boiler/temp", "plant1/boiler"));
        assert!(matches("+", "x"));
        assert!(!matches("+", "x/y"));
    }

    #[test]
    fn misplaced_wildcards_are_refused() {
        for bad in ["", "a/#/b", "a#", "a/b+", "#/a"] {
            assert!(SeriesFilter::new(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
