//! The service manager's notification protocol (systemd's `sd_notify`), for weir run as a
//! `Type=notify` service: `READY=1` once the pipelines run, `RELOADING=1` … `READY=1` around a
//! SIGHUP reload, `STOPPING=1` when shutdown begins, and — when the unit sets `WatchdogSec=` —
//! `WATCHDOG=1` at half that interval for as long as the committer answers: an empty commit
//! goes through its thread (and, with `durability = "sync"`, to the disk) within the interval,
//! and the runtime that runs the pipelines schedules this task. A committer stuck on a dead
//! disk, or a runtime whose threads are all blocked, stops the pings, and the service manager
//! restarts weir.
//!
//! **Invariant:** without `NOTIFY_SOCKET` (not run by a service manager) nothing is sent; a
//! notification that fails is logged, never fatal.

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;

use crate::state::Committer;

/// Tells the service manager the gateway runs, with a one-line status.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// Tells the service manager a reload (SIGHUP) has begun; [`ready`] ends it.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// Until `shutdown`: feeds the service manager's watchdog while the committer answers, then
/// says the gateway is stopping.
pub async fn watch(committer: Committer, shutdown: CancellationToken) {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    match sd_notify::watchdog_enabled() {
        None => shutdown.cancelled().await,
        Some(timeout) => feed_watchdog(&committer, timeout / 2, &shutdown).await,
    }
    send(&[NotifyState::Stopping]);
}

async fn feed_watchdog(committer: &Committer, period: Duration, shutdown: &CancellationToken) {
    let mut late = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(period) => {}
        }
        match committer.answers_within(period).await {
            Ok(()) => {
                if late {
                    tracing::info!(stage = "service", "the committer answers again; feeding the watchdog");
                    late = false;
                }
                send(&[NotifyState::Watchdog]);
            }
            Err(reason) => {
                tracing::error!(stage = "service", reason, "not feeding the watchdog");
                late = true;
            }
        }
    }
}

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(stage = "service", error = %e, "cannot notify the service manager");
    }
}
