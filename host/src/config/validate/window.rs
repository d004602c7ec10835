//! `[pipelines.<name>.window]`: the sizes its kind needs and none it does not (`width` for
//! tumbling and sliding windows, `slide` for sliding ones and no longer than `width`, `gap` for
//! sessions), and a custom aggregate that names a defined function (its use named
//! `window-aggregate`).

use std::collections::BTreeMap;

use toml::Spanned;
use weir_window::event_time::{WindowKind, WindowSpec};

use super::{Validator, nanos};
use crate::config::raw::{RawWindow, WindowKindName, WindowLength};
use crate::config::{FunctionConfig, FunctionId, Name, WindowConfig};

impl Validator<'_> {
    /// The window of `pipeline`, or `None` when it is wrong; `field` is
    /// `pipelines.<name>.window`.
    pub(super) fn window(
        &mut self,
        pipeline: &Name,
        raw: &Spanned<RawWindow>,
        field: &str,
        functions: &BTreeMap<FunctionId, FunctionConfig>,
    ) -> Option<WindowConfig> {
        let window = raw.get_ref();
        let problems_before = self.problems.len();
        let kind = match window.kind {
            WindowKindName::Tumbling => {
                let width = self.window_length(raw, field, "width", window.width, true);
                self.window_length(raw, field, "slide", window.slide, false);
                self.window_length(raw, field, "gap", window.gap, false);
                WindowKind::Tumbling { width }
            }
            WindowKindName::Sliding => {
                let width = self.window_length(raw, field, "width", window.width, true);
                let slide = self.window_length(raw, field, "slide", window.slide, true);
                self.window_length(raw, field, "gap", window.gap, false);
                if slide > width {
                    let message = "`slide` must not be longer than `width`";
                    self.problem(Some(raw.span()), format!("{field}.slide"), message);
                }
                WindowKind::Sliding { width, slide }
            }
            WindowKindName::Session => {
                self.window_length(raw, field, "width", window.width, false);
                self.window_length(raw, field, "slide", window.slide, false);
                let gap = self.window_length(raw, field, "gap", window.gap, true);
                WindowKind::Session { gap }
            }
        };
        let mut failed = self.problems.len() > problems_before;
        let aggregate = window.aggregate.as_ref().map(|used| {
            failed |= !self.function_ref(&used.function, &format!("{field}.aggregate.function"), functions);
            let name = Name::try_from("window-aggregate".to_owned()).expect("a valid name");
            self.function_use(pipeline, name, format!("{field}.aggregate"), &used.function, used.params.as_ref())
        });
        if failed {
            return None;
        }
        let allowed_lateness = window.allowed_lateness.map_or(0, |d| nanos(d.get()));
        let length = match kind {
            WindowKind::Tumbling { width } | WindowKind::Sliding { width, .. } => width,
            WindowKind::Session { gap } => gap,
        };
        let idle_timeout = window.idle_timeout.map_or(length.saturating_add(allowed_lateness), |d| nanos(d.get()));
        Some(WindowConfig {
            spec: WindowSpec { kind, allowed_lateness, idle_timeout, custom_aggregate: aggregate.is_some() },
            keep_readings: window.keep_readings,
            aggregate,
        })
    }

    /// The length `name` (`width`, `slide` or `gap`) in nanoseconds; a problem when the window's
    /// kind `wanted` it and it is missing, or did not and it is set (0 then).
    fn window_length(
        &mut self,
        raw: &Spanned<RawWindow>,
        field: &str,
        name: &str,
        value: Option<WindowLength>,
        wanted: bool,
    ) -> u64 {
        let kind = match raw.get_ref().kind {
            WindowKindName::Tumbling => "tumbling",
            WindowKindName::Sliding => "sliding",
            WindowKindName::Session => "session",
        };
        let message = match (value, wanted) {
            (Some(length), true) => return nanos(length.get()),
            (None, false) => return 0,
            (None, true) => format!("{kind} windows need `{name}`"),
            (Some(_), false) => format!("`{name}` does not apply to {kind} windows"),
        };
        self.problem(Some(raw.span()), format!("{field}.{name}"), message);
        0
    }
}
