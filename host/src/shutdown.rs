//! Shutdown: the root of the cancellation tree, cancelled by SIGINT or SIGTERM.
//!
//! `weir run` installs its signal handlers ([`Signals::install`]) before it does anything else —
//! before reading the configuration or compiling functions — so no signal meant for it takes
//! the default action (which for SIGHUP is to terminate) while it starts. A stop signal received
//! during the start is acted on as soon as the gateway runs; a SIGHUP is kept and handled once
//! the functions are loaded (see `gateway`).
//!
//! Order (each pipeline, see `pipeline::spawn`): sources stop reading → the batcher flushes →
//! the processor commits and acknowledges its last batch → source connections close → sinks
//! finish in-flight publishes → the committer finishes its last commit and the database closes.
//!
//! A task that panics (a bug in weir, never a condition of the input) stops the gateway the same
//! orderly way, and the process then exits non-zero so that a supervisor restarts it (see
//! [`Tasks`]).

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Exit status after a second signal cut the orderly stop short.
pub const ABORTED: i32 = 130;

/// Drives `work` to completion. The first SIGINT/SIGTERM (also one received before this is
/// called, once `signals` were installed) cancels `token` (work is expected to wind down); a
/// second one exits the process at once.
pub async fn run_until_signalled<F: Future>(work: F, token: CancellationToken, mut signals: StopSignals) -> F::Output {
    tokio::pin!(work);
    tokio::select! {
        output = &mut work => return output,
        () = signals.recv() => {}
    }
    tracing::info!(stage = "shutdown", "stopping: finishing in-flight work (signal again to abort)");
    token.cancel();
    tokio::select! {
        output = &mut work => output,
        () = signals.recv() => {
            tracing::warn!(stage = "shutdown", "second signal: exiting now; unacknowledged input will be redelivered");
            std::process::exit(ABORTED);
        }
    }
}

/// The gateway's tasks: a [`TaskTracker`] that watches each task for a panic.
///
/// A task that panics is logged with its name and the panic message, `stop` is cancelled so the
/// other tasks wind down in order (unacknowledged input stays with the brokers), and
/// [`Tasks::panicked`] names it, so the gateway can exit non-zero.
#[derive(Clone, Debug)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
    panicked: Arc<Mutex<Vec<String>>>,
}

impl Tasks {
    /// An empty set of tasks; a panic in any of them cancels `stop`.
    pub fn new(stop: CancellationToken) -> Self {
        Self { tracker: TaskTracker::new(), stop, panicked: Arc::default() }
    }

    /// A second, separately awaited set whose panics count with (and stop the same as) `tasks`'.
    pub fn sharing_panics(tasks: &Self) -> Self {
        Self { tracker: TaskTracker::new(), stop: tasks.stop.clone(), panicked: Arc::clone(&tasks.panicked) }
    }

    /// Runs `task` on the tokio runtime as task `name`.
    pub fn spawn<F>(&self, name: impl Into<String>, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.tracker.spawn(self.watched(name.into(), task));
    }

    /// `task`, with a panic caught, logged and recorded as described on [`Tasks`].
    fn watched<F>(&self, name: String, task: F) -> impl Future<Output = ()> + Send + 'static
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let (stop, panicked) = (self.stop.clone(), Arc::clone(&self.panicked));
        async move {
            // The task's state is dropped with the panic; everything it shared is stopped below.
            if let Err(payload) = AssertUnwindSafe(task).catch_unwind().await {
                tracing::error!(stage = "shutdown", task = %name, panic = panic_message(payload.as_ref()),
                    "a task panicked (a bug in weir): stopping the gateway");
                panicked.lock().unwrap_or_else(PoisonError::into_inner).push(name);
                stop.cancel();
            }
        }
    }

    /// No more tasks will be spawned: [`Tasks::wait`] can finish.
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Whether no task is running.
    pub fn is_empty(&self) -> bool {
        self.tracker.is_empty()
    }

    /// Waits until the set is closed and every task has ended.
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }

    /// The names of the tasks that panicked so far.
    pub fn panicked(&self) -> Vec<String> {
        self.panicked.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The message a panic was raised with.
pub fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}

/// The signals `weir run` answers. Each is listened for from the moment [`Signals::install`]
/// returns, which `weir run` calls before anything else: a signal that arrives before anything
/// waits for it is kept (several of one kind count as one) until something does, instead of
/// killing the process with the default action.
#[derive(Debug)]
pub struct Signals {
    /// SIGINT and SIGTERM: stop.
    pub stop: StopSignals,
    /// SIGHUP: read the function components again.
    pub hangups: Hangups,
}

impl Signals {
    /// Starts listening; must run inside the tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let hangups = Hangups { signal: signal(SignalKind::hangup())? };
            let interrupt = signal(SignalKind::interrupt())?;
            let terminate = signal(SignalKind::terminate())?;
            Ok(Self { stop: StopSignals { interrupt, terminate }, hangups })
        }
        #[cfg(not(unix))]
        {
            Ok(Self { stop: StopSignals {}, hangups: Hangups {} })
        }
    }
}

/// SIGINT and SIGTERM (Ctrl-C elsewhere).
#[derive(Debug)]
pub struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Waits for the next SIGINT or SIGTERM (at once if one came since the last wait).
    async fn recv(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            Some(()) = self.interrupt.recv() => {}
            Some(()) = self.terminate.recv() => {}
            else => std::future::pending().await,
        }
        #[cfg(not(unix))]
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// SIGHUP (never, where there is none).
#[derive(Debug)]
pub struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    /// Waits for the next SIGHUP: at once if one came since the last wait (or since
    /// [`Signals::install`]). `None`: none will come any more.
    pub async fn recv(&mut self) -> Option<()> {
        #[cfg(unix)]
        {
            self.signal.recv().await
        }
        #[cfg(not(unix))]
        {
            std::future::pending().await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_stops_the_others_in_order_and_is_named() {
        let stop = CancellationToken::new();
        let tasks = Tasks::new(stop.clone());
        let (finished_tx, finished_rx) = tokio::sync::oneshot::channel();
        let waiting = stop.clone();
        tasks.spawn("orderly", async move {
            waiting.cancelled().await;
            finished_tx.send("flushed").expect("the test waits");
        });
        tasks.spawn("buggy", async {
            tokio::task::yield_now().await;
            panic!("boom");
        });
        tasks.close();
        tasks.wait().await;
        assert!(stop.is_cancelled(), "a panic stops the gateway");
        assert_eq!(finished_rx.await, Ok("flushed"), "the other tasks finish their work");
        assert_eq!(tasks.panicked(), ["buggy"]);
    }

    #[tokio::test]
    async fn tasks_that_end_normally_stop_nothing() {
        let stop = CancellationToken::new();
        let tasks = Tasks::new(stop.clone());
        tasks.spawn("quick", async {});
        tasks.close();
        tasks.wait().await;
        assert!(!stop.is_cancelled());
        assert!(tasks.panicked().is_empty());
    }
}
