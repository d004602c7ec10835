//! Shutdown: the root of the cancellation tree, cancelled by SIGINT or SIGTERM.
//!
//! Order (each pipeline, see `pipeline::spawn`): sources stop reading → the batcher flushes →
//! the processor commits and acknowledges its last batch → source connections close → sinks
//! finish in-flight publishes → the committer finishes its last commit and the database closes.

use std::future::Future;

use tokio_util::sync::CancellationToken;

/// Exit status after a second signal cut the orderly stop short.
pub const ABORTED: i32 = 130;

/// Drives `work` to completion. The first SIGINT/SIGTERM cancels `token` (work is expected to
/// wind down); a second one exits the process at once.
pub async fn run_until_signalled<F: Future>(work: F, token: CancellationToken) -> F::Output {
    tokio::pin!(work);
    tokio::select! {
        output = &mut work => return output,
        () = signalled() => {}
    }
    tracing::info!(stage = "shutdown", "stopping: finishing in-flight work (signal again to abort)");
    token.cancel();
    tokio::select! {
        output = &mut work => output,
        () = signalled() => {
            tracing::warn!(stage = "shutdown", "second signal: exiting now; unacknowledged input will be redelivered");
            std::process::exit(ABORTED);
        }
    }
}

async fn signalled() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut terminate) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
