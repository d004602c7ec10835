//! `[pipelines.<name>.outbox]`: sizes, policies and the drain.

use super::*;

#[test]
fn refuses_outbox_settings_that_cannot_work() {
    insta::assert_snapshot!(invalid(&valid_but("max_bytes = \"16MiB\"", "max_bytes = \"16KiB\"")));
    insta::assert_snapshot!(invalid(&valid_but("when_full = \"drop_oldest\"", "when_full = \"drop_newest\"")));
    insta::assert_snapshot!(invalid(&valid_but("drain = \"live_first\"", "drain = \"fifo\"")));
    insta::assert_snapshot!(invalid(&valid_but("backlog_rate = \"32KiB/s\"", "backlog_rate = \"32KiB\"")));
}
