//! The gateway seen from outside: the HTTP listener (`[http]`) and what it serves, read-only.
//!
//! - `/metrics`: Prometheus text (see `metrics`, whose table names every metric);
//! - `/healthz`: 200 while the process answers: the async runtime runs this handler and the
//!   committer's thread commits an empty change set within [`HEALTH_TIMEOUT`]; 503 with a JSON
//!   body saying why otherwise;
//! - `/readyz`: 200 while every pipeline does its job (see `ready`); 503 with a JSON body
//!   listing each reason otherwise;
//! - `/`: the status page (`page`); `/api/status`: the same status as JSON (`status`);
//! - `/tap/{pipeline}`: what a pipeline processes, live, as JSON lines (`live`), for `weir tap`.
//!
//! `live` holds what the pipelines show while they run; `view` its bounded charts and series.
//!
//! **Invariants:** nothing served here changes the gateway's data or state; a request never
//! blocks an async thread (store reads run on the blocking pool); the listener stops with the
//! gateway, and a tap ends when it stops. The listener is off unless `[http]` is configured: a
//! gateway opens no port nobody asked for (the shipped configuration asks for loopback only).

mod live;
pub mod metrics;
mod page;
mod ready;
mod status;
mod view;

pub use live::{Facts, Link, LinkState, Live, PipelineLive, SensorBoard, Tapped};
pub use view::Flow;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::config::{ClockSynced, Readiness};
use crate::sandbox::UseHandle;
use crate::state::{Committer, StateStore};

/// How long `/healthz` waits for the committer.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);

/// What the endpoints read.
#[derive(Clone, Debug)]
pub struct Observed {
    /// The state store (stats).
    pub store: StateStore,
    /// The committer (liveness).
    pub committer: Committer,
    /// Every function use of the pipelines.
    pub functions: Arc<Vec<UseHandle>>,
    /// The pipelines' live views.
    pub live: Live,
    /// When `/readyz` fails.
    pub readiness: Readiness,
    /// This gateway's id.
    pub gateway: String,
    /// The sha256 of its configuration's text.
    pub config_sha256: String,
    /// How it knows its wall clock is synced.
    pub clock: ClockSynced,
    /// When the gateway started.
    pub started: Instant,
    /// The sensors on the gateway's own buses.
    pub sensors: SensorBoard,
}

/// Binds `listen`; the error says why it could not.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

/// Serves the endpoints on `listener` until `shutdown`, and runs the metrics' upkeep meanwhile.
pub async fn serve(listener: tokio::net::TcpListener, observed: Observed, shutdown: CancellationToken) {
    let handle = metrics::handle();
    let address = listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(stage = "http", address = %address, "serving the status page, /metrics, /healthz, /readyz and the tap");
    let app = Router::new()
        .route("/", get(serve_page))
        .route("/api/status", get(serve_status))
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(serve_health))
        .route("/readyz", get(serve_ready))
        .route("/tap/{pipeline}", get(serve_tap))
        .with_state(Arc::new(Served { observed, shutdown: shutdown.clone() }));
    let shutdown_requested = shutdown.cancelled_owned();
    let serving = async move { axum::serve(listener, app).with_graceful_shutdown(shutdown_requested).await };
    tokio::select! {
        served = serving => if let Err(e) = served {
            tracing::error!(stage = "http", error = %e, "the HTTP listener failed; no metrics, health or status");
        },
        () = upkeep(handle) => {}
    }
}

/// What the handlers share: what they read, and the gateway's stop (which ends taps).
struct Served {
    observed: Observed,
    shutdown: CancellationToken,
}

/// Drains what the recorder buffered, every [`metrics::UPKEEP_EVERY`], whether or not anyone
/// scrapes.
async fn upkeep(handle: &metrics_exporter_prometheus::PrometheusHandle) {
    let mut every = tokio::time::interval(metrics::UPKEEP_EVERY);
    loop {
        every.tick().await;
        handle.run_upkeep();
    }
}

/// Runs `read` on the blocking pool; a failure is a 500 with its reason.
async fn blocking<T: Send + 'static>(
    served: &Arc<Served>,
    what: &'static str,
    read: impl FnOnce(&Observed) -> Result<T, String> + Send + 'static,
) -> Result<T, Response> {
    let served = Arc::clone(served);
    let outcome = tokio::task::spawn_blocking(move || read(&served.observed)).await;
    let problem = match outcome {
        Ok(Ok(value)) => return Ok(value),
        Ok(Err(e)) => e,
        Err(e) => format!("the reading task failed: {e}"),
    };
    tracing::error!(stage = "http", error = %problem, "cannot read the {what}");
    Err((StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the {what}: {problem}\n")).into_response())
}

/// The status now.
fn gather(observed: &Observed) -> Result<status::Status, String> {
    let gateway = status::Gateway {
        id: observed.gateway.clone(),
        version: env!("CARGO_PKG_VERSION"),
        config_sha256: observed.config_sha256.clone(),
        uptime_seconds: observed.started.elapsed().as_secs_f64(),
        clock_synced: crate::telemetry::clock::is_synced(&observed.clock),
        now: 0,
    };
    status::gather(gateway, &observed.store, &observed.live, &observed.functions, &observed.sensors)
        .map_err(|e| e.to_string())
}

async fn serve_metrics(State(served): State<Arc<Served>>) -> Response {
    let rendered = blocking(&served, "stats", |observed| {
        let stats = observed.store.stats().map_err(|e| e.to_string())?;
        metrics::record(&metrics::Reading {
            stats: &stats,
            functions: &observed.functions,
            live: &observed.live,
            sensors: &observed.sensors.snapshot(),
            commit_groups: observed.store.commit_groups(),
            uptime: observed.started.elapsed(),
        });
        Ok(metrics::handle().render())
    })
    .await;
    match rendered {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Err(response) => response,
    }
}

async fn serve_health(State(served): State<Arc<Served>>) -> Response {
    let problem = served.observed.committer.answers_within(HEALTH_TIMEOUT).await.err();
    judged(problem.as_slice())
}

async fn serve_ready(State(served): State<Arc<Served>>) -> Response {
    let readiness = served.observed.readiness;
    match blocking(&served, "status", move |observed| Ok(ready::problems(&gather(observed)?, &readiness))).await {
        Ok(problems) => judged(&problems),
        Err(response) => response,
    }
}

/// 200 `{"status":"ok"}` without problems; 503 with them.
fn judged(problems: &[String]) -> Response {
    let (status, body) = if problems.is_empty() {
        (StatusCode::OK, serde_json::json!({ "status": "ok" }))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "status": "failing", "reasons": problems }))
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

async fn serve_status(State(served): State<Arc<Served>>) -> Response {
    match blocking(&served, "status", gather).await {
        Ok(status) => axum::Json(status).into_response(),
        Err(response) => response,
    }
}

/// The series the page shows: `?pipeline=…&series=…`.
#[derive(Debug, serde::Deserialize)]
struct Picked {
    pipeline: Option<String>,
    series: Option<String>,
}

async fn serve_page(State(served): State<Arc<Served>>, Query(picked): Query<Picked>) -> Response {
    let readiness = served.observed.readiness;
    let rendered = blocking(&served, "status", move |observed| {
        let status = gather(observed)?;
        let problems = ready::problems(&status, &readiness);
        let trace = match (&picked.pipeline, &picked.series) {
            (Some(pipeline), Some(series)) => observed
                .live
                .pipeline(pipeline)
                .and_then(|live| live.view().series.trace(series).cloned())
                .map(|trace| (pipeline.clone(), series.clone(), trace)),
            _ => None,
        };
        let picked = trace.as_ref().map(|(pipeline, series, trace)| (pipeline.as_str(), series.as_str(), trace));
        Ok(page::render(&status, &problems, picked))
    })
    .await;
    match rendered {
        Ok(html) => Html(html).into_response(),
        Err(response) => response,
    }
}

/// Streams what `pipeline` processes as JSON lines until the watcher hangs up or the gateway
/// stops. A watcher that falls behind gets a `missed` line instead of what it missed.
async fn serve_tap(State(served): State<Arc<Served>>, Path(pipeline): Path<String>) -> Response {
    let Some(live) = served.observed.live.pipeline(&pipeline) else {
        let known: Vec<&str> = served.observed.live.pipelines().iter().map(PipelineLive::name).collect();
        let body = format!("no pipeline {pipeline:?}; the pipelines are: {}\n", known.join(", "));
        return (StatusCode::NOT_FOUND, body).into_response();
    };
    let Some(watcher) = live.watch() else {
        let body = format!("{} watchers already tap {pipeline}; try again later\n", live::TAP_WATCHERS);
        return (StatusCode::TOO_MANY_REQUESTS, body).into_response();
    };
    tracing::info!(stage = "http", pipeline, "tap opened");
    let stop = served.shutdown.clone();
    let lines = futures::stream::unfold((watcher, stop), |(mut watcher, stop)| async move {
        let events: Arc<[Tapped]> = tokio::select! {
            () = stop.cancelled() => return None,
            received = watcher.recv() => match received {
                Ok(events) => events,
                Err(broadcast::error::RecvError::Lagged(batches)) => Arc::new([Tapped::Missed { batches }]),
                Err(broadcast::error::RecvError::Closed) => return None,
            },
        };
        let mut text = String::new();
        for event in events.iter() {
            if let Ok(line) = serde_json::to_string(event) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(text)), (watcher, stop)))
    });
    ([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(lines)).into_response()
}
