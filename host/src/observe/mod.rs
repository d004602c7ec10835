//! The gateway seen from outside: the HTTP listener (`[http]`) and what it serves, read-only.
//!
//! - `/metrics`: Prometheus text (see `metrics`, whose table names every metric);
//! - `/healthz`: 200 while the process answers: the async runtime runs this handler and the
//!   committer's thread commits an empty change set within [`HEALTH_TIMEOUT`]; 503 with a JSON
//!   body saying why otherwise.
//!
//! **Invariants:** nothing served here changes the gateway's data or state; a request never
//! blocks an async thread (store reads run on the blocking pool); the listener stops with the
//! gateway. The listener is off unless `[http]` is configured: a gateway opens no port nobody
//! asked for (the shipped configuration asks for loopback only).

pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::sync::CancellationToken;

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
    /// When the gateway started.
    pub started: Instant,
}

/// Binds `listen`; the error says why it could not.
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen).await
}

/// Serves the endpoints on `listener` until `shutdown`, and runs the metrics' upkeep meanwhile.
pub async fn serve(listener: tokio::net::TcpListener, observed: Observed, shutdown: CancellationToken) {
    let handle = metrics::handle();
    let address = listener.local_addr().map_or_else(|e| e.to_string(), |a| a.to_string());
    tracing::info!(stage = "http", address = %address, "serving /metrics and /healthz");
    let app = Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(serve_health))
        .with_state(Arc::new(observed));
    let shutdown_requested = shutdown.cancelled_owned();
    let serving = async move { axum::serve(listener, app).with_graceful_shutdown(shutdown_requested).await };
    tokio::select! {
        served = serving => if let Err(e) = served {
            tracing::error!(stage = "http", error = %e, "the HTTP listener failed; no metrics or health endpoints");
        },
        () = upkeep(handle) => {}
    }
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

async fn serve_metrics(State(observed): State<Arc<Observed>>) -> Response {
    let reading = Arc::clone(&observed);
    let rendered = tokio::task::spawn_blocking(move || {
        let stats = reading.store.stats().map_err(|e| e.to_string())?;
        metrics::record(&metrics::Reading {
            stats: &stats,
            functions: &reading.functions,
            uptime: reading.started.elapsed(),
        });
        Ok::<_, String>(metrics::handle().render())
    })
    .await;
    match rendered {
        Ok(Ok(text)) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response(),
        Ok(Err(e)) => {
            tracing::error!(stage = "http", error = %e, "cannot read the stats for /metrics");
            (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot read the stats: {e}\n")).into_response()
        }
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("reading the stats failed: {e}\n")).into_response(),
    }
}

async fn serve_health(State(observed): State<Arc<Observed>>) -> Response {
    let problem = observed.committer.answers_within(HEALTH_TIMEOUT).await.err();
    let (status, body) = match problem {
        None => (StatusCode::OK, serde_json::json!({ "status": "ok" })),
        Some(reason) => {
            (StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "status": "failing", "reasons": [reason] }))
        }
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}
