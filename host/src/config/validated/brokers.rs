//! `[brokers.<name>]`, validated: how to reach a broker. Sources and sinks carry the one they
//! use.

use std::time::Duration;

use crate::config::{BrokerUrl, Name};

/// `[brokers.<name>]` — how to reach a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// The `<name>` of `[brokers.<name>]`.
    pub name: Name,
    /// `url = "mqtt://10.0.0.5:1883"` — protocol, host and port.
    pub url: BrokerUrl,
    /// `username = "gw07"` — if the broker wants one.
    pub username: Option<String>,
    /// The password, read from `password_file = "/etc/weir/plant.pass"` (its line break
    /// removed).
    pub password: Option<String>,
    /// `keep_alive = "30s"` — MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// `reconnect_min = "100ms"` and `reconnect_max = "30s"` — reconnect delays.
    pub reconnect: Backoff,
}

/// Capped exponential backoff with jitter: the n-th consecutive failure waits a random time in
/// `[d/2, d]` with `d = min(max, min × 2ⁿ)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// First delay (`reconnect_min` of a broker).
    pub min: Duration,
    /// Largest delay (`reconnect_max` of a broker).
    pub max: Duration,
}
