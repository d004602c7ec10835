//! `[pipelines.<name>.outbox]`: its size, what it does when full, and how it drains; a
//! `backlog_rate` only with the `live_first` drain it paces.

use super::Validator;
use crate::config::defaults;
use crate::config::raw::{DrainOrder, RawOutbox};
use crate::config::types::SizeIn;
use crate::config::{Drain, OutboxConfig};

impl Validator<'_> {
    /// A pipeline's outbox, defaults filled in; `field` is `pipelines.<name>.outbox`.
    pub(super) fn outbox(&mut self, raw: RawOutbox, field: &str) -> OutboxConfig {
        let max_bytes = raw.max_bytes.map_or(defaults::OUTBOX_MAX_BYTES, SizeIn::get);
        let drain = match (raw.drain.unwrap_or_default(), raw.backlog_rate) {
            (DrainOrder::Fifo, None) => Drain::Fifo,
            (DrainOrder::Fifo, Some(rate)) => {
                self.problem(
                    Some(rate.span()),
                    format!("{field}.backlog_rate"),
                    "`backlog_rate` applies only to `drain = \"live_first\"`",
                );
                Drain::Fifo
            }
            (DrainOrder::LiveFirst, rate) => {
                Drain::LiveFirst { backlog_bytes_per_second: rate.map_or(defaults::BACKLOG_RATE, |r| r.get_ref().0) }
            }
        };
        OutboxConfig { max_bytes, when_full: raw.when_full.unwrap_or_default(), drain }
    }
}
