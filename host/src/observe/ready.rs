//! Whether the gateway is ready — does its job now — judged from its [`Status`] and the
//! `[http]` readiness settings. Pure: what `/readyz` answers, testable without a gateway.
//!
//! A pipeline is ready when:
//! - its source is connected;
//! - its uplink confirmed something within `ready_confirmed_within`, or has nothing to send
//!   (an empty outbox), counting from the pipeline's start when nothing was confirmed since;
//! - its outbox holds less than `ready_outbox_percent` of `max_bytes` (the high-water mark);
//! - its oldest waiting record is younger than `ready_oldest_below`;
//! - no quarantined function holds its input.
//!
//! The gateway is ready when every pipeline is. Each failing condition is one reason, naming the
//! pipeline.

use std::time::Duration;

use super::live::LinkState;
use super::status::{Pipeline, Status};
use crate::batch::Nanos;
use crate::config::Readiness;

/// Why the gateway is not ready: one line per failing condition; empty when it is ready.
pub fn problems(status: &Status, readiness: &Readiness) -> Vec<String> {
    let now = status.gateway.now;
    let mut problems: Vec<String> =
        status.pipelines.iter().flat_map(|pipeline| pipeline_problems(pipeline, readiness, now)).collect();
    for sensor in status.sensors.iter().filter(|sensor| sensor.state == "down") {
        let ago = seconds(Duration::from_nanos(u64::try_from(now - sensor.since).unwrap_or(0)));
        let fault = sensor.last_fault.as_deref().unwrap_or("no fault recorded");
        problems.push(format!("{}: sensor {} down for {ago} ({fault})", sensor.pipeline, sensor.device));
    }
    problems
}

fn pipeline_problems(pipeline: &Pipeline, readiness: &Readiness, now: Nanos) -> Vec<String> {
    let name = &pipeline.facts.name;
    let mut problems = Vec::new();
    let ago = |since: Nanos| seconds(Duration::from_nanos(u64::try_from(now - since).unwrap_or(0)));
    match pipeline.source.state {
        LinkState::Up => {}
        LinkState::Connecting => {
            problems.push(format!("{name}: source not connected yet ({} since the start)", ago(pipeline.source.since)));
        }
        LinkState::Down => {
            problems.push(format!("{name}: source disconnected for {}", ago(pipeline.source.since)));
        }
    }
    let Some(outbox) = &pipeline.outbox else { return problems };
    if outbox.records > 0 {
        let since = pipeline.confirmed_at.unwrap_or(pipeline.started_at);
        let silent = Duration::from_nanos(u64::try_from(now - since).unwrap_or(0));
        if silent >= readiness.confirmed_within {
            let what = if pipeline.confirmed_at.is_some() {
                "confirmed nothing for"
            } else {
                "confirmed nothing since the start,"
            };
            problems.push(format!(
                "{name}: the uplink {what} {} with {} records waiting (limit {})",
                seconds(silent),
                outbox.records,
                seconds(readiness.confirmed_within)
            ));
        }
    }
    let high_water = pipeline.facts.max_bytes.saturating_mul(readiness.outbox_percent) / 100;
    if outbox.bytes >= high_water {
        problems.push(format!(
            "{name}: the outbox holds {} bytes, above its high-water mark of {} bytes ({} % of max_bytes)",
            outbox.bytes, high_water, readiness.outbox_percent
        ));
    }
    if let Some(age) = outbox.oldest_age_seconds
        && age >= readiness.oldest_below.as_secs_f64()
    {
        problems.push(format!(
            "{name}: the oldest waiting record is {} old (limit {})",
            seconds(Duration::from_secs_f64(age)),
            seconds(readiness.oldest_below)
        ));
    }
    for function in &pipeline.held_by {
        problems.push(format!("{name}: input held by the quarantined function {function}"));
    }
    problems
}

/// A duration as whole seconds, `"75s"`.
fn seconds(duration: Duration) -> String {
    format!("{}s", duration.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::live::Facts;
    use crate::observe::status::{Connection, Gateway, PerSecond};
    use crate::state::stats::StreamStats;

    const SECOND: Nanos = 1_000_000_000;
    const NOW: Nanos = 1_000_000 * SECOND;

    fn readiness() -> Readiness {
        Readiness {
            confirmed_within: Duration::from_secs(300),
            oldest_below: Duration::from_secs(900),
            outbox_percent: 80,
        }
    }

    fn ready_pipeline() -> Pipeline {
        Pipeline {
            facts: Facts {
                name: "p".into(),
                flow: "mqtt → [] → jetstream".into(),
                max_bytes: 1000,
                when_full: "reaggregate".into(),
                holds_when_quarantined: true,
            },
            source: Connection { state: LinkState::Up, since: NOW - 100 * SECOND },
            uplink: Connection { state: LinkState::Up, since: NOW - 100 * SECOND },
            confirmed_at: Some(NOW - 10 * SECOND),
            started_at: NOW - 1000 * SECOND,
            watermark: None,
            rates: Vec::new(),
            per_second: PerSecond { messages: 0.0, readings_in: 0.0, readings_sent: 0.0 },
            outbox: Some(StreamStats {
                stream: "p".into(),
                records: 3,
                bytes: 100,
                oldest_seq: Some(1),
                oldest_encoded_at: Some(NOW - 20 * SECOND),
                oldest_age_seconds: Some(20.0),
                last_seq: 3,
                sink_position: 0,
                counters: Vec::new(),
            }),
            series: Vec::new(),
            untracked_series: 0,
            held_by: Vec::new(),
        }
    }

    fn judge(pipeline: Pipeline) -> Vec<String> {
        let gateway = Gateway {
            id: "gw".into(),
            version: "0",
            config_sha256: String::new(),
            uptime_seconds: 0.0,
            clock_synced: true,
            now: NOW,
        };
        let status = Status {
            gateway,
            pipelines: vec![pipeline],
            functions: Vec::new(),
            sensors: Vec::new(),
            dead_letters: Vec::new(),
            dead_letters_kept: 0,
        };
        problems(&status, &readiness())
    }

    #[test]
    fn a_flowing_pipeline_is_ready() {
        assert_eq!(judge(ready_pipeline()), Vec::<String>::new());
    }

    #[test]
    fn each_condition_fails_on_its_own_with_its_reason() {
        let mut down = ready_pipeline();
        down.source = Connection { state: LinkState::Down, since: NOW - 42 * SECOND };
        assert_eq!(judge(down), ["p: source disconnected for 42s"]);

        let mut silent = ready_pipeline();
        silent.confirmed_at = Some(NOW - 301 * SECOND);
        assert_eq!(judge(silent), ["p: the uplink confirmed nothing for 301s with 3 records waiting (limit 300s)"]);

        let mut never = ready_pipeline();
        never.confirmed_at = None;
        let reasons = judge(never);
        assert!(reasons[0].contains("confirmed nothing since the start, 1000s"), "{reasons:?}");

        let mut full = ready_pipeline();
        full.outbox.as_mut().expect("an outbox").bytes = 800;
        assert!(judge(full)[0].contains("above its high-water mark of 800 bytes"));

        let mut old = ready_pipeline();
        old.outbox.as_mut().expect("an outbox").oldest_age_seconds = Some(901.0);
        assert_eq!(judge(old), ["p: the oldest waiting record is 901s old (limit 900s)"]);

        let mut held = ready_pipeline();
        held.held_by = vec!["convert (unit-convert@abc)".into()];
        assert_eq!(judge(held), ["p: input held by the quarantined function convert (unit-convert@abc)"]);
    }

    #[test]
    fn an_uplink_with_nothing_to_send_need_not_have_confirmed_anything() {
        let mut idle = ready_pipeline();
        idle.confirmed_at = None;
        let outbox = idle.outbox.as_mut().expect("an outbox");
        outbox.records = 0;
        outbox.oldest_age_seconds = None;
        assert_eq!(judge(idle), Vec::<String>::new());
    }
}
