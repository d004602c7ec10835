//! Validating newtypes for configuration values: an identifier, URL, topic or size that exists
//! is a valid one. Each deserializes from the TOML value and refuses bad input with a message
//! saying what is allowed; the TOML parser attaches the position.
//!
//! Three kinds: identifiers and protocol addresses (`names.rs`); sizes, durations, rates and
//! counts held within bounds (`bounded.rs`); and secrets read from files, never printed
//! (`secret.rs`).

mod bounded;
mod names;
mod secret;

pub use bounded::{
    ByteRate, ByteSize, CountIn, DAY, DurationIn, GIB, HOUR, KIB, MIB, MINUTE, SECOND, SizeIn, TIB, show_size,
};
pub use names::{
    BrokerUrl, FunctionId, GatewayId, JsonPointer, MqttClientId, MqttTopic, Name, NatsSubject, NatsSubjectFilter,
    Protocol, TopicFilter,
};
pub use secret::Secret;
