//! Identifiers and addresses: names of brokers, pipelines, uses, functions and the gateway;
//! broker URLs (plain or TLS), MQTT topics, filters and client ids, NATS subjects, JSON pointers. Each follows
//! its protocol's rules, so one that exists can be used as it is.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;

use crate::config::redact_credentials;

/// Longest identifier accepted (names, function ids, gateway id).
const MAX_IDENT_LEN: usize = 64;

fn check_identifier(what: &str, value: &str) -> Result<(), String> {
    let valid_start = value.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let valid_rest = value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if valid_start && valid_rest && value.len() <= MAX_IDENT_LEN {
        Ok(())
    } else {
        Err(format!(
            "{what} {value:?} is not valid: use 1 to {MAX_IDENT_LEN} lowercase letters, digits, `-` or `_`, \
             starting with a letter or digit"
        ))
    }
}

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(String);

        impl $name {
            /// Longest identifier accepted, in bytes.
            pub const MAX_LEN: usize = MAX_IDENT_LEN;

            /// The identifier as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = String;

            fn try_from(value: String) -> Result<Self, String> {
                check_identifier($what, &value)?;
                Ok(Self(value))
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(value: &str) -> Result<Self, String> {
                Self::try_from(value.to_owned())
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

identifier!(
    /// Name of a broker, pipeline or operator.
    Name,
    "name"
);
identifier!(
    /// Identity of a function (`threshold-alert`); with its component digest it is a version.
    FunctionId,
    "function id"
);
identifier!(
    /// Identity of this gateway, used in client ids and record ids.
    GatewayId,
    "gateway id"
);

/// Protocol of a broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// MQTT 3.1.1 over TCP.
    Mqtt,
    /// NATS (core and JetStream) over TCP.
    Nats,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mqtt => "mqtt",
            Self::Nats => "nats",
        })
    }
}

/// `mqtt://host:port` or `nats://host:port`, or over TLS `mqtts://host:port` or
/// `tls://host:port` (NATS's own scheme for TLS).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct BrokerUrl {
    /// Which protocol the scheme names.
    pub protocol: Protocol,
    /// Whether the scheme asks for TLS (`mqtts`, `ssl`, `tls`): then the connection is TLS or
    /// none at all, never plaintext.
    pub tls: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port (scheme default when omitted).
    pub port: u16,
}

impl BrokerUrl {
    /// `host:port`, bracketing IPv6 addresses.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (self.protocol, self.tls) {
            (Protocol::Mqtt, false) => "mqtt",
            (Protocol::Mqtt, true) => "mqtts",
            (Protocol::Nats, false) => "nats",
            (Protocol::Nats, true) => "tls",
        };
        write!(f, "{scheme}://{}", self.authority())
    }
}

impl TryFrom<String> for BrokerUrl {
    type Error = String;

    fn try_from(url: String) -> Result<Self, String> {
        // Every message shows the URL with any password hidden.
        let shown = redact_credentials(&url);
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("broker url {shown:?} has no scheme: write mqtt://host:port or nats://host:port"))?;
        let (protocol, tls, default_port) = match scheme {
            "mqtt" | "tcp" => (Protocol::Mqtt, false, 1883),
            "mqtts" | "ssl" => (Protocol::Mqtt, true, 8883),
            "nats" => (Protocol::Nats, false, 4222),
            "tls" => (Protocol::Nats, true, 4222),
            other => {
                return Err(format!(
                    "broker url {shown:?}: unknown scheme {other:?}, expected mqtt or mqtts (MQTT), \
                     nats or tls (NATS)"
                ));
            }
        };
        if let Some((userinfo, _)) = rest.rsplit_once('@') {
            let username = match userinfo.split_once(':') {
                Some((user, _)) => format!("username = {user:?}"),
                None => "username".to_owned(),
            };
            return Err(format!(
                "broker url {shown:?}: credentials do not go in the url; write `{username}` and \
                 `password_file = \"<file holding the password>\"` in this broker's table"
            ));
        }
        if rest.contains(['/', '?']) {
            return Err(format!("broker url {shown:?}: only scheme://host[:port] is accepted"));
        }
        let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
            let (host, after) = bracketed
                .split_once(']')
                .ok_or_else(|| format!("broker url {shown:?}: unclosed `[` in IPv6 address"))?;
            (host, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("broker url {shown:?} has no host"));
        }
        let port = match port {
            Some(port) => {
                port.parse().map_err(|_| format!("broker url {shown:?}: port {port:?} is not a number 1-65535"))?
            }
            None => default_port,
        };
        if port == 0 {
            return Err(format!("broker url {shown:?}: port 0 is not usable"));
        }
        Ok(Self { protocol, tls, host: host.to_owned(), port })
    }
}

/// An MQTT subscription filter (`plant1/+/temp`, `plant1/#`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct TopicFilter(String);

impl TopicFilter {
    /// The filter as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TopicFilter {
    type Error = String;

    fn try_from(filter: String) -> Result<Self, String> {
        if filter.is_empty() || filter.len() > usize::from(u16::MAX) || filter.contains('\0') {
            return Err(format!("topic filter {filter:?} must be 1 to 65535 bytes without NUL"));
        }
        let levels: Vec<&str> = filter.split('/').collect();
        for (i, level) in levels.iter().enumerate() {
            if level.contains('#') && (*level != "#" || i + 1 != levels.len()) {
                return Err(format!("topic filter {filter:?}: `#` must be a whole level and the last one"));
            }
            if level.contains('+') && *level != "+" {
                return Err(format!("topic filter {filter:?}: `+` must be a whole level"));
            }
        }
        Ok(Self(filter))
    }
}

/// An MQTT topic to publish to (no wildcards).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MqttTopic(String);

impl MqttTopic {
    /// The topic as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MqttTopic {
    type Error = String;

    fn try_from(topic: String) -> Result<Self, String> {
        if topic.is_empty() || topic.len() > usize::from(u16::MAX) || topic.contains(['\0', '+', '#']) {
            return Err(format!("topic {topic:?} must be 1 to 65535 bytes without `+`, `#` or NUL"));
        }
        Ok(Self(topic))
    }
}

/// An MQTT client id: the key under which the broker keeps a client's session.
///
/// MQTT 3.1.1 (§1.5.3, §3.1.3.1) makes it a UTF-8 string of at most 65 535 bytes that must not
/// contain U+0000 and should not contain control characters or Unicode noncharacters (brokers
/// such as mosquitto refuse those as malformed). A connection with an id outside these rules is
/// refused on every attempt, so it is refused here instead. An empty id is refused too: a
/// persistent session needs a name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct MqttClientId(String);

impl MqttClientId {
    /// Longest client id MQTT can carry, in bytes of UTF-8.
    pub const MAX_BYTES: usize = u16::MAX as usize;

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for MqttClientId {
    type Error = String;

    fn try_from(id: String) -> Result<Self, String> {
        if id.is_empty() || id.len() > Self::MAX_BYTES {
            let shown: String = id.chars().take(32).collect();
            let ellipsis = if shown.len() < id.len() { "…" } else { "" };
            return Err(format!(
                "client id {shown:?}{ellipsis} is {} bytes long: MQTT allows 1 to {} bytes",
                id.len(),
                Self::MAX_BYTES
            ));
        }
        let noncharacter = |c: char| matches!(u32::from(c), 0xFDD0..=0xFDEF) || u32::from(c) & 0xFFFE == 0xFFFE;
        if let Some(bad) = id.chars().find(|&c| c.is_control() || noncharacter(c)) {
            return Err(format!(
                "client id {id:?} contains {:?} (U+{:04X}): MQTT client ids must not contain NUL, control \
                 characters or Unicode noncharacters",
                bad,
                u32::from(bad)
            ));
        }
        Ok(Self(id))
    }
}

impl fmt::Display for MqttClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn check_nats_subject(subject: &str, wildcards_allowed: bool) -> Result<(), String> {
    let tokens: Vec<&str> = subject.split('.').collect();
    if subject.is_empty() || subject.chars().any(char::is_whitespace) {
        return Err(format!("subject {subject:?} must be non-empty and contain no whitespace"));
    }
    for (i, token) in tokens.iter().enumerate() {
        if token.is_empty() {
            return Err(format!("subject {subject:?} has an empty token (`..` or a leading/trailing `.`)"));
        }
        let wildcard = token.contains(['*', '>']);
        if wildcard && !wildcards_allowed {
            return Err(format!("subject {subject:?}: wildcards `*` and `>` are not allowed when publishing"));
        }
        if wildcard && !(*token == "*" || (*token == ">" && i + 1 == tokens.len())) {
            return Err(format!("subject {subject:?}: `*` must be a whole token and `>` the whole last token"));
        }
    }
    Ok(())
}

/// A NATS subject that may contain wildcards (subscriptions, stream filters).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct NatsSubjectFilter(String);

impl NatsSubjectFilter {
    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NatsSubjectFilter {
    type Error = String;

    fn try_from(subject: String) -> Result<Self, String> {
        check_nats_subject(&subject, true)?;
        Ok(Self(subject))
    }
}

/// A NATS subject to publish to (no wildcards).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct NatsSubject(String);

impl NatsSubject {
    /// The subject as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NatsSubject {
    type Error = String;

    fn try_from(subject: String) -> Result<Self, String> {
        check_nats_subject(&subject, false)?;
        Ok(Self(subject))
    }
}

/// An RFC 6901 JSON pointer (`/reading/value`); a bare field name `value` means `/value`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct JsonPointer(String);

impl JsonPointer {
    /// The pointer in RFC 6901 form.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JsonPointer {
    type Error = String;

    fn try_from(pointer: String) -> Result<Self, String> {
        if pointer.is_empty() {
            return Err("field pointer must not be empty (write `/field` or `field`)".to_owned());
        }
        if pointer.starts_with('/') {
            let bad_escape =
                pointer.match_indices('~').any(|(i, _)| !matches!(pointer.as_bytes().get(i + 1), Some(b'0' | b'1')));
            if bad_escape {
                return Err(format!("field pointer {pointer:?}: `~` must be followed by 0 or 1 (RFC 6901)"));
            }
            Ok(Self(pointer))
        } else {
            Ok(Self(format!("/{}", pointer.replace('~', "~0").replace('/', "~1"))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_accept_lowercase_digits_dash_underscore() {
        assert!(Name::from_str("boiler-1_a").is_ok());
        for bad in ["", "Boiler", "-x", "a b", "a.b", &"x".repeat(65)] {
            assert!(Name::from_str(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mqtt_client_ids_follow_mqtt_string_rules() {
        let longest = "é".repeat(MqttClientId::MAX_BYTES / 2) + "x";
        assert_eq!(longest.len(), MqttClientId::MAX_BYTES);
        for good in ["gw07-boiler", "Gateway 7 / Kessel", "ü", longest.as_str()] {
            assert!(MqttClientId::try_from(good.to_owned()).is_ok(), "{good:?}");
        }
        let too_long = longest.clone() + "x";
        for bad in ["", "a\0b", "tab\there", "del\u{7f}", "c1\u{85}", "non\u{fdd0}char", "\u{1fffe}", &too_long] {
            assert!(MqttClientId::try_from(bad.to_owned()).is_err(), "{:?}", &bad[..bad.len().min(20)]);
        }
    }

    #[test]
    fn broker_urls_parse_scheme_host_and_default_port() {
        let url = BrokerUrl::try_from("mqtt://10.0.0.5".to_owned()).expect("valid");
        assert_eq!((url.protocol, url.host.as_str(), url.port), (Protocol::Mqtt, "10.0.0.5", 1883));
        let url = BrokerUrl::try_from("nats://[::1]:4333".to_owned()).expect("valid");
        assert_eq!((url.host.as_str(), url.port, url.authority()), ("::1", 4333, "[::1]:4333".to_owned()));
        for (tls_url, protocol, port, shown) in [
            ("mqtts://h", Protocol::Mqtt, 8883, "mqtts://h:8883"),
            ("ssl://h:1", Protocol::Mqtt, 1, "mqtts://h:1"),
            ("tls://h", Protocol::Nats, 4222, "tls://h:4222"),
        ] {
            let url = BrokerUrl::try_from(tls_url.to_owned()).expect("valid");
            assert_eq!((url.protocol, url.tls, url.port, url.to_string()), (protocol, true, port, shown.to_owned()));
        }
        for bad in ["localhost:1883", "http://x", "mqtt://", "mqtt://h:0", "mqtt://h:99999", "mqtt://u:p@h", "wss://h"]
        {
            assert!(BrokerUrl::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn topic_filters_and_subjects_follow_protocol_rules() {
        assert!(TopicFilter::try_from("a/+/b/#".to_owned()).is_ok());
        assert!(TopicFilter::try_from("a/#/b".to_owned()).is_err());
        assert!(TopicFilter::try_from("a/b+".to_owned()).is_err());
        assert!(MqttTopic::try_from("a/+".to_owned()).is_err());
        assert!(NatsSubjectFilter::try_from("a.*.>".to_owned()).is_ok());
        assert!(NatsSubjectFilter::try_from("a.>.b".to_owned()).is_err());
        assert!(NatsSubjectFilter::try_from("a..b".to_owned()).is_err());
        assert!(NatsSubject::try_from("a.*".to_owned()).is_err());
        assert!(NatsSubject::try_from("weir.plant1.boiler".to_owned()).is_ok());
    }

    #[test]
    fn json_pointers_accept_bare_field_names() {
        assert_eq!(JsonPointer::try_from("value".to_owned()).expect("valid").as_str(), "/value");
        assert_eq!(JsonPointer::try_from("a/b".to_owned()).expect("valid").as_str(), "/a~1b");
        assert!(JsonPointer::try_from("/a~2".to_owned()).is_err());
    }
}
