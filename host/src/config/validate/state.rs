//! `[state]`: the state store's durability and the sizes it keeps. Every value was checked
//! against its bounds when it was read (see `raw`), so nothing here can be refused.

use crate::config::defaults;
use crate::config::raw::RawState;
use crate::config::types::{CountIn, SizeIn};
use crate::config::{Durability, StateConfig};

/// The state store's settings, defaults filled in.
pub(super) fn state(raw: &RawState) -> StateConfig {
    StateConfig {
        durability: raw.durability.unwrap_or(Durability::Sync),
        max_key: raw.max_key.map_or(defaults::MAX_KEY, |s| u32::try_from(s.get()).expect("bounded to 64KiB")),
        max_value: raw.max_value.map_or(defaults::MAX_VALUE, |s| u32::try_from(s.get()).expect("bounded to 64MiB")),
        dead_letter_capacity: raw.dead_letter_capacity.map_or(defaults::DEAD_LETTERS, CountIn::get),
        dead_letter_max_bytes: raw.dead_letter_max_bytes.map_or(defaults::DEAD_LETTER_BYTES, SizeIn::get),
    }
}
