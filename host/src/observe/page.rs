//! The status page at `/`: one HTML document rendered on the server from a [`Status`] (and, when
//! one is picked, a series' [`Trace`]), with inline SVG charts and a little CSS — no script, so
//! it works in any browser, from a saved file, and reloads itself every [`REFRESH_SECONDS`].
//!
//! Every value a test or a script may read carries an `id` or a `data-` attribute; the `<body>`
//! carries `data-ready="1"` once the document is complete. Everything shown is escaped (maud).

use maud::{DOCTYPE, Markup, PreEscaped, html};

use super::status::{Pipeline, Status};
use super::view::{Bucket, Trace};
use crate::batch::Nanos;
use crate::state::Counter;

/// How often the page reloads itself.
pub const REFRESH_SECONDS: u32 = 10;

const STYLE: &str = "
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#fafbfc}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.6em 0 .4em;border-bottom:1px solid #d7dce3}
table{border-collapse:collapse;width:100%;background:#fff}th,td{padding:.25em .6em;border-bottom:1px solid #eceff3;text-align:left;vertical-align:middle}
th{font-weight:600;color:#4a5465;font-size:.9em}td.n{text-align:right;font-variant-numeric:tabular-nums}
dl{display:flex;flex-wrap:wrap;gap:.3em 1.6em;margin:0}dt{color:#4a5465}dd{margin:0 0 0 .3em;font-weight:600}
.up{color:#13795b}.down{color:#b42318}.connecting{color:#a15c07}.bad{color:#b42318}.ok{color:#13795b}
.muted{color:#6b7486}a{color:#1d4ed8}svg{background:#fff}code{font-size:.9em}
.legend span{margin-right:1.2em}.sw{display:inline-block;width:1.4em;height:.7em;margin-right:.3em;vertical-align:middle}
";

/// The whole page. `ready` lists why the gateway is not ready (empty: ready); `picked` is the
/// series shown in the series view, with its pipeline, key and history.
pub fn render(status: &Status, ready: &[String], picked: Option<(&str, &str, &Trace)>) -> String {
    let gateway = &status.gateway;
    let page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { "weir · " (gateway.id) }
                style { (PreEscaped(STYLE)) }
            }
            body data-ready="1" {
                header id="gateway" {
                    h1 { "weir · " span id="gateway-id" { (gateway.id) } }
                    dl {
                        dt { "version" } dd id="version" { (gateway.version) }
                        dt { "configuration" } dd id="config-sha256" title=(gateway.config_sha256) {
                            code { (gateway.config_sha256.get(..12).unwrap_or(&gateway.config_sha256)) }
                        }
                        dt { "up for" } dd id="uptime" data-seconds=(gateway.uptime_seconds as u64) { (duration(gateway.uptime_seconds)) }
                        dt { "clock" } dd id="clock" data-synced=(gateway.clock_synced) {
                            @if gateway.clock_synced { span.ok { "synced" } } @else { span.bad { "not synced" } }
                        }
                        dt { "ready" } dd id="ready" data-ready=(ready.is_empty()) {
                            @if ready.is_empty() { span.ok { "yes" } } @else { span.bad { "no" } }
                        }
                    }
                    @if !ready.is_empty() {
                        ul id="not-ready" { @for reason in ready { li.bad { (reason) } } }
                    }
                }
                (pipelines(status))
                (outboxes(status))
                (functions(status))
                (sensors(status))
                (dead_letters(status))
                (series_view(status, picked))
            }
        }
    };
    page.into_string()
}

fn pipelines(status: &Status) -> Markup {
    let now = status.gateway.now;
    html! {
        h2 { "Pipelines" }
        table id="pipelines" {
            tr { th { "pipeline" } th { "flow" } th { "source" } th { "uplink" } th { "last confirmed" } th { "watermark" }
                 th { "messages/s" } th { "readings/s in" } th { "sent/s" } th { "readings in, last 10 min" } }
            @for p in &status.pipelines {
                tr data-pipeline=(p.facts.name) {
                    td { strong { (p.facts.name) } }
                    td.muted { (p.facts.flow) }
                    td data-field="source" data-state=(state_name(p.source.state)) class=(state_name(p.source.state)) { (state_name(p.source.state)) }
                    td data-field="uplink" data-state=(state_name(p.uplink.state)) class=(state_name(p.uplink.state)) { (state_name(p.uplink.state)) }
                    td data-field="confirmed" { (ago(now, p.confirmed_at)) }
                    td data-field="watermark" { (p.watermark.map_or_else(|| "—".to_owned(), clock_time)) }
                    td.n data-field="messages-per-second" { (format!("{:.1}", p.per_second.messages)) }
                    td.n data-field="readings-per-second" { (format!("{:.1}", p.per_second.readings_in)) }
                    td.n data-field="sent-per-second" { (format!("{:.1}", p.per_second.readings_sent)) }
                    td { (sparkline(&p.rates)) }
                }
            }
        }
    }
}

fn outboxes(status: &Status) -> Markup {
    html! {
        h2 { "Outbox" }
        table id="outbox" {
            tr { th { "pipeline" } th { "records" } th { "bytes" } th { "of max_bytes" } th { "oldest" } th { "when full" }
                 th { "coarsened" } th { "dropped" } th { "refused (full)" } th { "published" } th { "confirmed" } }
            @for p in &status.pipelines {
                @let outbox = p.outbox.as_ref();
                @let counter = |counter: Counter| outbox.and_then(|o| o.counters.iter().find(|(n, _)| n == counter.name())).map_or(0, |(_, v)| *v);
                @let (records, bytes) = outbox.map_or((0, 0), |o| (o.records, o.bytes));
                tr data-pipeline=(p.facts.name) {
                    td { strong { (p.facts.name) } }
                    td.n data-field="records" { (records) }
                    td.n data-field="bytes" { (bytes) }
                    td.n { (format!("{:.1} %", percent(bytes, p.facts.max_bytes))) }
                    td data-field="oldest-age" { (outbox.and_then(|o| o.oldest_age_seconds).map_or_else(|| "—".to_owned(), duration)) }
                    td { (p.facts.when_full) }
                    td.n data-field="coarsened" { (counter(Counter::RecordsCoarsened)) }
                    td.n data-field="dropped" { (counter(Counter::RecordsDropped)) }
                    td.n data-field="refused-full" { (counter(Counter::RefusedFull)) }
                    td.n data-field="published" { (counter(Counter::Published)) }
                    td.n data-field="confirmed" { (counter(Counter::Confirmed)) }
                }
            }
        }
    }
}

fn functions(status: &Status) -> Markup {
    html! {
        h2 { "Functions" }
        @if status.functions.is_empty() { p.muted { "No function runs in a pipeline." } }
        @else {
            table id="functions" {
                tr { th { "pipeline" } th { "use" } th { "function@version" } th { "faults" } th { "by kind" } th { "quarantined" } th { "last fault" } }
                @for f in &status.functions {
                    tr data-use=(format!("{}/{}", f.pipeline, f.use_name)) {
                        td { (f.pipeline) } td { strong { (f.use_name) } } td { code { (f.function) } }
                        td.n data-field="faults" { (f.faults) }
                        td { @for (kind, n) in &f.faults_by_kind { (kind) " " (n) " " } }
                        td data-field="quarantined" {
                            @match f.quarantined_for_seconds {
                                Some(left) => span.bad { (format!("{} left", duration(left))) },
                                None => span.ok { "no" },
                            }
                        }
                        td.muted { (f.last_fault.as_deref().unwrap_or("—")) }
                    }
                }
            }
        }
    }
}

/// The sensors on the gateway's own buses; shown only when there are some.
fn sensors(status: &Status) -> Markup {
    let now = status.gateway.now;
    html! {
        @if !status.sensors.is_empty() {
            h2 { "Sensors" }
            table id="sensors" {
                tr { th { "pipeline" } th { "device" } th { "part on bus" } th { "state" } th { "samples" } th { "failed" } th { "skipped ticks" } th { "reinits" } th { "faults" } th { "last fault" } }
                @for s in &status.sensors {
                    tr data-sensor=(format!("{}/{}", s.pipeline, s.device)) {
                        td { (s.pipeline) } td { strong { (s.device) } } td { (s.part) " on " code { (s.bus) } }
                        td data-field="state" data-state=(s.state) {
                            @match s.state.as_str() {
                                "ok" => span.ok { "ok" },
                                "down" => span.bad { "down" },
                                other => span.connecting { (other) },
                            }
                            " " span.muted { "since " (ago(now, Some(s.since))) }
                        }
                        td.n data-field="samples" { (s.samples) }
                        td.n data-field="failed" { (s.failed_samples) }
                        td.n data-field="skipped" { (s.skipped_ticks) }
                        td.n data-field="reinits" { (s.reinits) }
                        td { @for (kind, n) in &s.faults { (kind) " " (n) " " } }
                        td.muted { (s.last_fault.as_deref().unwrap_or("—")) }
                    }
                }
            }
        }
    }
}

fn dead_letters(status: &Status) -> Markup {
    let now = status.gateway.now;
    html! {
        h2 { "Dead letters " span.muted { "(" (status.dead_letters_kept) " kept; the newest)" } }
        @if status.dead_letters.is_empty() { p.muted id="dead-letters" data-count="0" { "None." } }
        @else {
            table id="dead-letters" data-count=(status.dead_letters.len()) {
                tr { th { "id" } th { "when" } th { "pipeline" } th { "stage" } th { "reason" } }
                @for letter in &status.dead_letters {
                    tr data-id=(letter.id) {
                        td.n { (letter.id) } td { (ago(now, Some(letter.at))) } td { (letter.pipeline) }
                        td data-field="stage" { (letter.stage) } td data-field="reason" { (letter.reason) }
                    }
                }
            }
        }
    }
}

fn series_view(status: &Status, picked: Option<(&str, &str, &Trace)>) -> Markup {
    html! {
        h2 { "Series" }
        p.muted { "Raw readings, what was sent after downsampling, and the windows' min–max band with its mean, over the last minutes (kept in memory)." }
        ul id="series-list" {
            @for p in &status.pipelines {
                @if !p.series.is_empty() {
                    li { strong { (p.facts.name) } ": "
                        @for key in &p.series {
                            a href=(series_link(p, key)) data-series=(key) { (key) } " "
                        }
                        @if p.untracked_series > 0 { span.muted { "(" (p.untracked_series) " more not kept)" } }
                    }
                }
            }
        }
        @if let Some((pipeline, key, trace)) = picked {
            h3 id="series-title" { (pipeline) " / " (key) @if let Some(unit) = &trace.unit { " (" (unit) ")" } }
            (chart(trace))
            p.legend {
                span { i.sw style="background:#c7d2fe" {} "window min–max" }
                span { i.sw style="background:#4338ca;height:2px" {} "window mean" }
                span { i.sw style="background:#9ca3af;height:2px" {} "raw" }
                span { i.sw style="background:#ea580c;border-radius:50%;width:.7em" {} "sent" }
            }
        }
    }
}

fn series_link(pipeline: &Pipeline, key: &str) -> String {
    let encode = |text: &str| -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    format!("?pipeline={}&series={}", encode(&pipeline.facts.name), encode(key))
}

/// Readings in per bucket, as bars.
fn sparkline(rates: &[Bucket]) -> Markup {
    let (width, height) = (180.0, 28.0);
    let peak = rates.iter().map(|b| b.flow.readings_in).max().unwrap_or(0).max(1) as f64;
    let step = width / rates.len().max(1) as f64;
    html! {
        svg.spark width=(width) height=(height) viewBox=(format!("0 0 {width} {height}")) role="img" aria-label="readings in per 10 s" {
            @for (i, bucket) in rates.iter().enumerate() {
                @let h = (bucket.flow.readings_in as f64 / peak * (height - 2.0)).max(if bucket.flow.readings_in > 0 { 1.0 } else { 0.0 });
                rect x=(format!("{:.1}", i as f64 * step)) y=(format!("{:.1}", height - h)) width=(format!("{:.1}", (step - 0.5).max(0.5))) height=(format!("{h:.1}")) fill="#6366f1" {}
            }
        }
    }
}

/// The series chart: bands, means, raw line, sent points.
fn chart(trace: &Trace) -> Markup {
    let (width, height, pad) = (900.0_f64, 280.0_f64, 36.0_f64);
    let times = trace
        .raw
        .iter()
        .map(|p| p.0)
        .chain(trace.sent.iter().map(|p| p.0))
        .chain(trace.bands.iter().flat_map(|b| [b.start, b.end]));
    let (t0, t1) = times.fold((Nanos::MAX, Nanos::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    let values = trace
        .raw
        .iter()
        .map(|p| p.1)
        .chain(trace.sent.iter().map(|p| p.1))
        .chain(trace.bands.iter().flat_map(|b| [b.min, b.max]))
        .filter(|v| v.is_finite());
    let (v0, v1) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let empty = t0 > t1 || v0 > v1;
    let span_t = if empty { 1.0 } else { ((t1 - t0) as f64).max(1.0) };
    let (v0, v1) = if empty {
        (0.0, 1.0)
    } else if v0 == v1 {
        (v0 - 1.0, v1 + 1.0)
    } else {
        (v0, v1)
    };
    let x = |t: Nanos| pad + (t - t0) as f64 / span_t * (width - 2.0 * pad);
    let y = |v: f64| height - pad - (v - v0) / (v1 - v0) * (height - 2.0 * pad);
    let raw_line: Vec<String> =
        trace.raw.iter().filter(|p| p.1.is_finite()).map(|p| format!("{:.1},{:.1}", x(p.0), y(p.1))).collect();
    html! {
        svg id="series-chart" width=(width) height=(height) viewBox=(format!("0 0 {width} {height}"))
            data-raw-points=(trace.raw.len()) data-sent-points=(trace.sent.len()) data-bands=(trace.bands.len())
            role="img" aria-label="series chart" {
            line x1=(pad) y1=(height - pad) x2=(width - pad) y2=(height - pad) stroke="#d7dce3" {}
            text x=(pad) y=(height - 10.0) font-size="11" fill="#6b7486" { (if empty { "—".to_owned() } else { clock_time(t0) }) }
            text x=(width - pad) y=(height - 10.0) font-size="11" fill="#6b7486" text-anchor="end" { (if empty { "—".to_owned() } else { clock_time(t1) }) }
            text x="4" y=(pad) font-size="11" fill="#6b7486" { (format!("{v1:.3}")) }
            text x="4" y=(height - pad) font-size="11" fill="#6b7486" { (format!("{v0:.3}")) }
            g.bands {
                @for band in &trace.bands {
                    rect.band x=(format!("{:.1}", x(band.start))) y=(format!("{:.1}", y(band.max))) width=(format!("{:.1}", (x(band.end) - x(band.start)).max(1.0)))
                        height=(format!("{:.1}", (y(band.min) - y(band.max)).max(1.0))) fill="#c7d2fe" fill-opacity="0.7" {}
                    line.mean x1=(format!("{:.1}", x(band.start))) x2=(format!("{:.1}", x(band.end))) y1=(format!("{:.1}", y(band.mean))) y2=(format!("{:.1}", y(band.mean))) stroke="#4338ca" stroke-width="2" {}
                }
            }
            polyline.raw points=(raw_line.join(" ")) fill="none" stroke="#9ca3af" stroke-width="1.2" {}
            g.sent {
                @for point in trace.sent.iter().filter(|p| p.1.is_finite()) {
                    circle cx=(format!("{:.1}", x(point.0))) cy=(format!("{:.1}", y(point.1))) r="2.6" fill="#ea580c" {}
                }
            }
        }
    }
}

fn state_name(state: super::live::LinkState) -> &'static str {
    match state {
        super::live::LinkState::Connecting => "connecting",
        super::live::LinkState::Up => "up",
        super::live::LinkState::Down => "down",
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 { 0.0 } else { part as f64 * 100.0 / whole as f64 }
}

/// `"3m 12s"`.
fn duration(seconds: f64) -> String {
    let whole = std::time::Duration::from_secs(seconds.max(0.0) as u64);
    humantime::format_duration(whole).to_string()
}

/// How long before `now`, `"12s ago"`; `"never"` for none.
fn ago(now: Nanos, at: Option<Nanos>) -> String {
    match at {
        None => "never".to_owned(),
        Some(at) => format!("{} ago", duration((now - at).max(0) as f64 / 1e9)),
    }
}

/// A wall-clock time of day, UTC, `"14:03:07Z"`.
fn clock_time(at: Nanos) -> String {
    let seconds = at.div_euclid(1_000_000_000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}Z", seconds / 3600, seconds / 60 % 60, seconds % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::observe::live::{Facts, LinkState};
    use crate::observe::status::{Connection, DeadLetterLine, Gateway, PerSecond};
    use crate::observe::view::Band;

    fn status(reason: &str, series: &str) -> Status {
        let gateway = Gateway {
            id: "gw<1>".into(),
            version: "0.1.0",
            config_sha256: "ab".repeat(32),
            uptime_seconds: 75.0,
            clock_synced: false,
            now: 1_000_000_000_000,
        };
        let pipeline = Pipeline {
            facts: Facts {
                name: "p".into(),
                flow: "mqtt → [] → jetstream".into(),
                max_bytes: 100,
                when_full: "block".into(),
                holds_when_quarantined: false,
            },
            source: Connection { state: LinkState::Up, since: 0 },
            uplink: Connection { state: LinkState::Down, since: 0 },
            confirmed_at: None,
            started_at: 0,
            watermark: Some(1_000_000_000_000),
            rates: Vec::new(),
            per_second: PerSecond { messages: 1.0, readings_in: 2.0, readings_sent: 0.5 },
            outbox: None,
            series: vec![series.to_owned()],
            untracked_series: 0,
            held_by: Vec::new(),
        };
        let letter = DeadLetterLine {
            id: 7,
            at: 0,
            pipeline: "p".into(),
            stage: "decode".into(),
            reason: reason.into(),
            function: None,
        };
        Status {
            gateway,
            pipelines: vec![pipeline],
            functions: Vec::new(),
            sensors: Vec::new(),
            dead_letters: vec![letter],
            dead_letters_kept: 1,
        }
    }

    #[test]
    fn what_the_input_controls_is_escaped() {
        let hostile = "<script>alert(1)</script>";
        let mut trace = Trace::default();
        trace.raw.push_back((1, 1.0));
        trace.bands.push_back(Band { start: 0, end: 2, count: 1, min: 1.0, mean: 1.0, max: 1.0 });
        let series = "t\"><img src=x onerror=alert(1)>";
        let html = render(&status(hostile, series), &[hostile.to_owned()], Some(("p", series, &trace)));
        assert!(!html.contains("<script>alert"), "a dead-letter reason is escaped");
        assert!(!html.contains("<img"), "a series name is escaped");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("gw&lt;1&gt;"));
        // The link to the series encodes it for the query string.
        assert!(html.contains("series=t%22%3E%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E"), "{html}");
    }

    #[test]
    fn the_page_is_complete_without_data() {
        let html = render(&status("r", "t"), &[], None);
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains(r#"<body data-ready="1">"#));
        assert!(html.contains(r#"id="ready" data-ready="true""#));
        assert!(!html.contains("series-chart"), "no series picked, no chart");
        let empty = chart(&Trace::default()).into_string();
        assert!(empty.contains(r#"data-raw-points="0""#) && !empty.contains("NaN"), "{empty}");
    }

    #[test]
    fn times_and_durations_read_well() {
        assert_eq!(clock_time((14 * 3600 + 3 * 60 + 7) * 1_000_000_000), "14:03:07Z");
        assert_eq!(duration(192.4), "3m 12s");
        assert_eq!(ago(10_000_000_000, Some(7_000_000_000)), "3s ago");
        assert_eq!(ago(0, None), "never");
    }
}
