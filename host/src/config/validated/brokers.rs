//! `[brokers.<name>]`, validated: how to reach a broker — its address, TLS settings and
//! credentials, the files they name already read. Sources and sinks carry the one they use.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::{BrokerUrl, Name, Secret};

/// `[brokers.<name>]` — how to reach a broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerConfig {
    /// The `<name>` of `[brokers.<name>]`.
    pub name: Name,
    /// `url = "mqtt://10.0.0.5:1883"` — protocol, TLS or not, host and port.
    pub url: BrokerUrl,
    /// `[brokers.<name>.tls]` — present exactly when the URL asks for TLS (the table may be
    /// left out: the system's roots then verify the server, with no client certificate).
    pub tls: Option<TlsConfig>,
    /// `username = "gw07"` — if the broker wants one.
    pub username: Option<String>,
    /// The password, read from `password_file = "/etc/weir/plant.pass"` (its line break
    /// removed).
    pub password: Option<Secret<String>>,
    /// `credentials_file` or `nkey_file` — how a NATS client proves who it is.
    pub nats_credentials: Option<NatsCredentials>,
    /// `keep_alive = "30s"` — MQTT keep-alive interval.
    pub keep_alive: Duration,
    /// `reconnect_min = "100ms"` and `reconnect_max = "30s"` — reconnect delays.
    pub reconnect: Backoff,
}

/// `[brokers.<name>.tls]` — how the server is verified and how this gateway proves who it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// `ca_file = "/etc/weir/central-ca.pem"` — the certificates a server's chain must lead to;
    /// `None`: the system's roots.
    pub ca: Option<PemFile>,
    /// `cert_file` and `key_file` — a client certificate for mutual TLS.
    pub client_identity: Option<ClientIdentity>,
    /// `server_name = "central.example.com"` — the name the server's certificate must carry,
    /// instead of the URL's host (for a broker reached by an address its certificate does not
    /// name).
    pub server_name: Option<String>,
}

/// A PEM file, read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PemFile {
    /// Where it was read from, for messages.
    pub path: PathBuf,
    /// Its contents.
    pub pem: Vec<u8>,
}

/// `cert_file = "/etc/weir/gw07.pem"` and `key_file = "/etc/weir/gw07.key"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The certificate chain, the gateway's own certificate first.
    pub certificates: PemFile,
    /// Where the private key was read from, for messages.
    pub key_path: PathBuf,
    /// The private key (PEM).
    pub key: Secret<Vec<u8>>,
}

/// How a NATS client authenticates beyond a username and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NatsCredentials {
    /// `credentials_file = "/etc/weir/gw07.creds"` — a user JWT and its nkey seed, as `nsc`
    /// writes them.
    File(Secret<String>),
    /// `nkey_file = "/etc/weir/gw07.nk"` — an nkey seed (`SU…`).
    Nkey(Secret<String>),
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
