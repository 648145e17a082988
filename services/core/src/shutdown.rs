//! One shutdown mechanism for every service.
//!
//! Tasks are spawned by name through [`Shutdown::spawn`]; a task that fails cancels
//! the rest. SIGINT or SIGTERM starts a drain: consumers stop fetching, finish and ack
//! what they hold, then return. [`Shutdown::wait`] gives them a grace period; a second
//! signal exits at once.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio_util::{
    sync::{CancellationToken, WaitForCancellationFuture},
    task::TaskTracker,
};

use crate::Error;

/// Cancellation plus the set of tasks that must finish before the process exits.
#[derive(Clone, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
    failure: Arc<Mutex<Option<String>>>,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Self {
        Self::default()
    }

    /// A scope that is cancelled with this one but can also be cancelled alone, with
    /// its own tasks; used to stop one service of several in a process.
    pub fn child(&self) -> Self {
        Self {
            token: self.token.child_token(),
            tracker: TaskTracker::new(),
            failure: Arc::default(),
        }
    }

    /// Starts the drain.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Whether the drain has started.
    pub fn is_shutting_down(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Completes when the drain starts.
    pub fn cancelled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Sleeps for `duration`, or less if the drain starts first.
    pub async fn sleep(&self, duration: Duration) {
        tokio::select! {
            () = self.token.cancelled() => {}
            () = tokio::time::sleep(duration) => {}
        }
    }

    /// Runs `task` in the background; if it fails, the error is logged once and every
    /// other task is cancelled.
    pub fn spawn<F, E>(&self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        let token = self.token.clone();
        let failure = self.failure.clone();
        self.tracker.spawn(async move {
            match task.await {
                Ok(()) => tracing::debug!(task = name, "task finished"),
                Err(err) => {
                    tracing::error!(task = name, error = %err, "task failed; shutting down");
                    failure
                        .lock()
                        .expect("failure lock")
                        .get_or_insert_with(|| format!("{name}: {err}"));
                    token.cancel();
                }
            }
        });
    }

    /// Triggers the drain on SIGINT or SIGTERM; a second signal exits immediately.
    pub fn listen_for_signals(&self) {
        let token = self.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested; draining (send the signal again to exit now)");
            token.cancel();
            wait_for_signal().await;
            tracing::warn!("second signal; exiting without draining");
            std::process::exit(130);
        });
    }

    /// Waits for the drain to start, then for every task to finish within `grace`.
    /// Returns the first task failure, if any.
    pub async fn wait(&self, grace: Duration) -> Result<(), Error> {
        self.token.cancelled().await;
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_err()
        {
            return Err(Error::Shutdown(format!(
                "tasks did not finish within the {}s shutdown grace period",
                grace.as_secs()
            )));
        }
        match self.failure.lock().expect("failure lock").take() {
            Some(failure) => Err(Error::Shutdown(format!("a task failed: {failure}"))),
            None => Ok(()),
        }
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_task_cancels_the_others() {
        let shutdown = Shutdown::new();
        let watcher = shutdown.clone();
        shutdown.spawn("waits", async move {
            watcher.cancelled().await;
            Ok::<(), String>(())
        });
        shutdown.spawn("fails", async { Err::<(), _>("boom".to_owned()) });
        let err = shutdown.wait(Duration::from_secs(5)).await.unwrap_err();
        assert!(err.to_string().contains("fails: boom"), "{err}");
    }

    #[tokio::test]
    async fn a_child_stops_alone_and_with_its_parent() {
        let parent = Shutdown::new();
        let child = parent.child();
        child.trigger();
        assert!(child.is_shutting_down());
        assert!(!parent.is_shutting_down());
        let second = parent.child();
        parent.trigger();
        assert!(second.is_shutting_down());
        second.wait(Duration::from_secs(1)).await.unwrap();
    }

    #[tokio::test]
    async fn tasks_that_overrun_the_grace_period_are_reported() {
        let shutdown = Shutdown::new();
        shutdown.spawn("stuck", async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<(), String>(())
        });
        shutdown.trigger();
        let err = shutdown.wait(Duration::from_millis(50)).await.unwrap_err();
        assert!(err.to_string().contains("grace"), "{err}");
    }
}
